"""The dataset format loaders (coco, scienceqa, m3it, hf, alpaca): records, errors, laziness."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from vlgraft.data.records import IMAGE_PLACEHOLDER
from vlgraft.data.sources import load_records
from vlgraft.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Content-addressed images go to a per-test cache, not the user's."""
    monkeypatch.setenv("VLGRAFT_CACHE", str(tmp_path / "cache"))


def _png(path: Path | None = None, color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _jpeg(color=(0, 0, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="JPEG")
    return buf.getvalue()


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _raises(spec: str, *needles: str, error: type = DataError, **kw) -> str:
    with pytest.raises(error) as e:
        load_records(spec, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


# --- coco ---------------------------------------------------------------------------------------

def _coco(tmp_path: Path, annotations=None, name="captions.json") -> Path:
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", (0, 255, 0))
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "gone.png"}]
    if annotations is None:
        annotations = [{"id": 10, "image_id": 1, "caption": " A red square. "},
                       {"id": 11, "image_id": 1, "caption": "Something red."},
                       {"id": 12, "image_id": 2, "caption": "A green square."}]
    return _write_json(tmp_path / name, {"images": images, "annotations": annotations})


def test_coco(tmp_path):
    from vlgraft.data.formats.coco import CAPTION_PROMPT

    recs = load_records(f"coco:{_coco(tmp_path)}")
    assert [r.id for r in recs] == ["coco-1-10", "coco-1-11", "coco-2-12"]
    assert recs[0].turns == [("user", f"{IMAGE_PLACEHOLDER}\n{CAPTION_PROMPT}"), ("assistant", "A red square.")]
    assert recs[0].images[0] == str(tmp_path / "a.png") and Path(recs[2].images[0]).name == "b.png"
    assert recs[2].meta == {"image_id": 2, "annotation_id": 12}
    # image_root overrides the JSON's folder
    other = tmp_path / "imgs"
    _png(other / "a.png")
    _png(other / "b.png")
    assert load_records(f"coco:{tmp_path / 'captions.json'}",
                        image_root=str(other))[0].images[0] == str(other / "a.png")


@pytest.mark.parametrize("bad, needle", [
    ({"id": 13, "image_id": 99, "caption": "x"}, "unknown image_id"),
    ({"id": 13, "image_id": 1, "caption": "  "}, "caption"),
    ({"id": 13, "image_id": 1}, "caption"),
    ({"id": 13, "image_id": 3, "caption": "x"}, "gone.png"),
])
def test_coco_errors(tmp_path, bad, needle):
    good = {"id": 10, "image_id": 1, "caption": "ok"}
    p = _coco(tmp_path, [good, bad])
    _raises(f"coco:{p}", str(p), "annotation 13 (#1)", needle)


def test_coco_non_dict_annotation_and_lazy(tmp_path):
    good = [{"id": 10, "image_id": 1, "caption": "ok"}, {"id": 11, "image_id": 2, "caption": "ok"}]
    p = _coco(tmp_path, good + ["junk"])
    _raises(f"coco:{p}", str(p), "annotation #2", "object")
    assert [r.id for r in load_records(f"coco:{p}", limit=2)] == ["coco-1-10", "coco-2-11"]  # never reaches #2
    _raises(f"coco:{tmp_path / 'nope.json'}", "nope.json")


# --- scienceqa ----------------------------------------------------------------------------------

def _problems(tmp_path: Path, **override) -> Path:
    _png(tmp_path / "images" / "train" / "1" / "image.png")
    problems = {
        "1": {"question": "Which is red?", "choices": ["apple", "sky"], "answer": 0, "hint": "Look.",
              "image": "image.png", "subject": "natural science", "grade": "grade2", "category": "Colors",
              "split": "train", "lecture": "", "solution": ""},
        "2": {"question": "2 + 2?", "choices": ["3", "4", "5"], "answer": 1, "hint": "", "image": None,
              "subject": "language science", "grade": "grade1", "category": "Math", "split": "test"},
    }
    for qid, fields in override.items():
        problems[qid.lstrip("q")] = {**problems.get(qid.lstrip("q"), problems["2"]), **fields}
    return _write_json(tmp_path / "problems.json", problems)


def test_scienceqa(tmp_path):
    p = _problems(tmp_path)
    recs = load_records(f"scienceqa:{p}")
    assert [r.id for r in recs] == ["scienceqa-1", "scienceqa-2"]
    img, text = recs
    assert img.images[0] == str(tmp_path / "images" / "train" / "1" / "image.png") and Path(img.images[0]).is_file()
    assert img.turns == [("user", f"{IMAGE_PLACEHOLDER}\nContext: Look.\nQuestion: Which is red?\n"
                                  "Options: (A) apple (B) sky\nAnswer with the option's letter."), ("assistant", "A")]
    assert not text.images and not text.has_image
    assert text.turns[0][1] == "Question: 2 + 2?\nOptions: (A) 3 (B) 4 (C) 5\nAnswer with the option's letter."
    assert text.turns[1] == ("assistant", "B")
    assert text.meta == {"subject": "language science", "grade": "grade1", "category": "Math", "split": "test",
                         "answer": 1, "choices": ["3", "4", "5"], "hint": ""}
    assert img.meta["hint"] == "Look."
    assert [r.id for r in load_records(f"scienceqa:{p}#test")] == ["scienceqa-2"]


@pytest.mark.parametrize("fields, needle", [
    ({"answer": 3}, "'answer'"),
    ({"answer": True}, "'answer'"),
    ({"question": None}, "'question'"),
    ({"choices": ["only"]}, "'choices'"),
    ({"choices": "a,b"}, "'choices'"),
    ({"image": "missing.png", "split": "val"}, "missing.png"),
    ({"split": "dev"}, "unknown split"),
])
def test_scienceqa_errors(tmp_path, fields, needle):
    p = _problems(tmp_path, q7=fields)
    _raises(f"scienceqa:{p}", str(p), "problem '7'", needle)


def test_scienceqa_bad_split_spec(tmp_path):
    p = _problems(tmp_path)
    _raises(f"scienceqa:{p}#dev", str(p), "'split' must be one of train, val, test; got 'dev'", error=ConfigError)


# --- m3it ---------------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _m3it_rows() -> list[dict]:
    return [
        {"instruction": "What color is it?", "inputs": "", "outputs": "Red.", "image_base64_str": [_b64(_png())]},
        {"instruction": "Compare.", "inputs": "Be short.", "outputs": "Blue first.",
         "image_base64_str": [_b64(_jpeg()), _b64(_png())]},
        {"instruction": "Say hi.", "inputs": "", "outputs": "Hi.", "image_base64_str": []},
        {"instruction": "Again?", "inputs": "", "outputs": "Red.", "image_base64_str": [_b64(_png())]},
    ]


def test_m3it(tmp_path):
    from vlgraft.data.formats.image_store import image_store

    p = _write_jsonl(tmp_path / "m3it.jsonl", _m3it_rows())
    recs = load_records(f"m3it:{p}")
    assert [r.id for r in recs] == ["m3it-1", "m3it-2", "m3it-3", "m3it-4"]
    assert recs[0].turns == [("user", f"{IMAGE_PLACEHOLDER}\nWhat color is it?"), ("assistant", "Red.")]
    assert recs[1].turns[0] == ("user", f"{IMAGE_PLACEHOLDER}\n{IMAGE_PLACEHOLDER}\nCompare.\nBe short.")
    assert recs[1].meta["n_images"] == 2 and recs[0].meta["n_images"] == 1
    assert len(recs[1].images) == 2 and len(recs[0].images) == 1  # every image kept, in order
    assert Path(recs[0].images[0]).suffix == ".png" and Path(recs[1].images[0]).suffix == ".jpg"
    assert Path(recs[1].images[0]).read_bytes() == _jpeg()  # the first image, written as is
    assert recs[0].images[0] == recs[3].images[0]  # content-addressed: one file per distinct image
    assert Path(recs[0].images[0]).is_relative_to(image_store()) and str(tmp_path / "cache") in recs[0].images[0]
    assert not recs[2].images and recs[2].turns[0] == ("user", "Say hi.")
    assert not list(image_store().rglob(".tmp-*"))


@pytest.mark.parametrize("bad, needle", [
    ('{"instruction": "x", "outputs": ', "not valid JSON"),
    ({"instruction": "x", "inputs": "", "image_base64_str": []}, "'outputs'"),
    ({"instruction": "x", "outputs": "y", "image_base64_str": ["!!not base64!!"]}, "base64"),
    ({"instruction": "x", "outputs": "y", "image_base64_str": [_b64(b"not an image at all")]}, "image format"),
    ({"instruction": "x", "outputs": "y", "image_base64_str": [_b64(_png()[:-20])]}, "cannot be decoded"),
    ({"instruction": "x <image>", "outputs": "y", "image_base64_str": [_b64(_png())]}, "<image>"),
])
def test_m3it_errors(tmp_path, bad, needle):
    p = _write_jsonl(tmp_path / "bad.jsonl", _m3it_rows()[:2] + [bad])
    _raises(f"m3it:{p}", str(p), "line 3", needle)


def test_m3it_lazy(tmp_path):
    """The loader streams: with a limit, a broken later line is never read."""
    p = _write_jsonl(tmp_path / "m3it.jsonl", _m3it_rows()[:2] + ["{broken"])
    assert len(load_records(f"m3it:{p}", limit=2)) == 2
    _raises(f"m3it:{p}", "line 3")


# --- hf -----------------------------------------------------------------------------------------

def _llava_rows(img_a, img_b) -> dict:
    return {"id": ["r0", "r1", "r2"],
            "image": [img_a, img_b, None],
            "conversations": [[{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "Red."}],
                              [{"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "Blue."}],
                              [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]],
            "source": ["a", "b", "c"]}


def test_hf_saved_dataset_with_image_feature(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as HFImage

    png_path = tmp_path / "x.png"
    _png(png_path)
    rows = _llava_rows(str(png_path), {"bytes": _jpeg(), "path": None})
    conv = [{"from": Value("string"), "value": Value("string")}]
    feats = Features({"id": Value("string"), "image": HFImage(), "conversations": conv, "source": Value("string")})
    ds = Dataset.from_dict(rows, features=feats)
    ds.save_to_disk(str(tmp_path / "single"))
    recs = load_records(f"hf:{tmp_path / 'single'}")
    assert [r.id for r in recs] == ["r0", "r1", "r2"]
    assert all(Path(r.images[0]).is_file() for r in recs[:2]) and not recs[2].images
    assert Path(recs[1].images[0]).suffix == ".jpg" and Path(recs[1].images[0]).read_bytes() == _jpeg()
    assert recs[0].turns == [("user", "<image>\nColor?"), ("assistant", "Red.")] and recs[0].meta == {"source": "a"}

    DatasetDict({"train": ds, "test": ds.select([2])}).save_to_disk(str(tmp_path / "dict"))
    assert [r.id for r in load_records(f"hf:{tmp_path / 'dict'}#test")] == ["r2"]
    _raises(f"hf:{tmp_path / 'dict'}", str(tmp_path / "dict"), "#SPLIT", "train")
    _raises(f"hf:{tmp_path / 'dict'}#dev", "no split 'dev'")


def test_hf_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "pq"
    (data / "imgs").mkdir(parents=True)
    _png(data / "imgs" / "a.png")
    rows = _llava_rows("imgs/a.png", {"bytes": _png(color=(1, 2, 3)), "path": "ignored.png"})
    conv = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))
    img = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    # one file with path strings and an id column; one with HF Image structs, JSON-string turns and no id
    pq.write_table(pa.table({"id": rows["id"][:1], "image": rows["image"][:1],
                             "conversations": pa.array(rows["conversations"][:1], conv)}),
                   data / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"image": pa.array(rows["image"][1:], img),
                             "conversations": [json.dumps(c) for c in rows["conversations"][1:]]}),
                   data / "train-00001-of-00002.parquet")
    pq.write_table(pa.table({"id": ["t0"], "image": [None],
                             "conversations": pa.array([rows["conversations"][2]], conv)}),
                   data / "test-00000-of-00001.parquet")
    recs = load_records(f"hf:{data}#train")
    assert [r.id for r in recs] == ["r0", "1", "2"]  # no id column in the second file: the running index
    assert recs[0].images[0] == str(data / "imgs" / "a.png")
    assert Path(recs[1].images[0]).suffix == ".png" and Path(recs[1].images[0]).is_file() and not recs[2].images
    assert recs[1].turns == [("user", "What is this?\n<image>"), ("assistant", "Blue.")]
    assert [r.id for r in load_records(f"hf:{data}")] == ["t0", "r0", "2", "3"]  # all files, in name order
    assert [r.id for r in load_records(f"hf:{data / 'test-00000-of-00001.parquet'}")] == ["t0"]


@pytest.mark.parametrize("image, convs, needle", [
    ("missing.png", [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}], "missing.png"),
    (None, [{"from": "gpt", "value": "A"}], "alternate"),
    ("a.png", [{"from": "human", "value": "no placeholder"}, {"from": "gpt", "value": "A"}], "placeholders"),
])
def test_hf_errors(tmp_path, image, convs, needle):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _png(tmp_path / "a.png")
    good = [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]
    p = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": ["ok", "bad"], "image": ["a.png", image],
                             "conversations": [json.dumps(good), json.dumps(convs)]}), p)
    _raises(f"hf:{p}", str(p), "record 'bad' (#1)", needle)
    assert [r.id for r in load_records(f"hf:{p}", limit=1)] == ["ok"]


def test_hf_bad_inputs(tmp_path):
    _raises(f"hf:{tmp_path / 'nothing'}", "nothing")
    (tmp_path / "empty").mkdir()
    _raises(f"hf:{tmp_path / 'empty'}", "no parquet files")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    _raises(f"hf:{bad}", str(bad), "cannot read parquet")


# --- alpaca -------------------------------------------------------------------------------------

_ALPACA = [
    {"instruction": "Add 2 and 2.", "input": "", "output": "4"},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat", "category": "translation"},
    {"id": "custom", "instruction": "Name a color.", "output": "Red"},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_alpaca(tmp_path, suffix):
    p = tmp_path / f"alpaca{suffix}"
    _write_json(p, _ALPACA) if suffix == ".json" else _write_jsonl(p, _ALPACA)
    recs = load_records(f"alpaca:{p}")
    assert [r.id for r in recs] == ["alpaca-0", "alpaca-1", "custom"]
    assert all(not r.images and not r.has_image for r in recs)
    assert recs[0].turns == [("user", "Add 2 and 2."), ("assistant", "4")]
    assert recs[1].turns == [("user", "Translate to French.\n\ncat"), ("assistant", "chat")]
    assert recs[1].meta == {"category": "translation"} and recs[2].meta == {}


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("bad, needle", [
    ({"instruction": "x", "input": ""}, "'output'"),
    ({"input": "x", "output": "y"}, "'instruction'"),
    ({"instruction": "x", "input": 3, "output": "y"}, "'input'"),
    (["not", "an", "object"], "object"),
])
def test_alpaca_errors(tmp_path, suffix, bad, needle):
    p = tmp_path / f"bad{suffix}"
    rows = _ALPACA[:2] + [bad]
    _write_json(p, rows) if suffix == ".json" else _write_jsonl(p, rows)
    _raises(f"alpaca:{p}", str(p), "'alpaca-2' (#2", needle)
    assert len(load_records(f"alpaca:{p}", limit=2)) == 2


def test_alpaca_lazy_jsonl_and_bad_files(tmp_path):
    p = _write_jsonl(tmp_path / "a.jsonl", _ALPACA[:2] + ["{oops"])
    assert [r.id for r in load_records(f"alpaca:{p}", limit=2)] == ["alpaca-0", "alpaca-1"]
    _raises(f"alpaca:{p}", str(p), "line 3")
    _raises(f"alpaca:{_write_json(tmp_path / 'd.json', {'a': 1})}", "d.json", "JSON list")
