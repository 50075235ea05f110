"""Bad input of every kind, as a user gives it: each case must end with exit code 2, exactly one
``vlgraft: error:`` line (the last thing printed) naming the culprit, no traceback, and nothing left in
the output folder. Images of every mode Pillow reads must decode to the right pixels. Numeric options
are fuzzed against their declared ranges with hypothesis."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlgraft.cli import main
from vlgraft.config import Recipe, load_recipe, to_dict
from vlgraft.data.images import load_image, set_max_pixels
from vlgraft.errors import ConfigError


def _one_line_error(argv, capsys, *needles, absent: Path | None = None) -> str:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("vlgraft: error:")]
    assert e.value.code == 2, err
    assert "Traceback" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    for n in needles:
        assert n in errors[0], (n, errors[0])
    if absent is not None:
        assert not absent.exists(), f"{absent} was left behind"
    return errors[0]


@pytest.fixture
def recipe_file(tiny_recipe, tmp_path):
    """A tiny recipe written to YAML; ``make(**data)`` changes its data section."""
    def make(**data):
        d = to_dict(tiny_recipe("llama", max_steps=1))
        d["data"].update(data)
        p = tmp_path / "recipe.yaml"
        p.write_text(yaml.safe_dump(d))
        return p, Path(d["train"]["output_dir"])
    return make


# --- recipes and overrides -------------------------------------------------------------------------
OVERRIDES = [
    ("trainable[0].lr=.nan", "'trainable[0].lr' must be a finite number"),
    ("trainable[0].lr=-1e-3", "'trainable[0].lr' must be > 0"),
    ("trainable[0].lr=fast", "lr must be a number or 'mm1'"),
    ("trainable[0].weight_decay=-1", "'trainable[0].weight_decay' must be >= 0"),
    ("train.max_steps=0", "'train.max_steps' must be >= 1"),
    ("train.max_steps=-5", "'train.max_steps' must be >= 1"),
    ("train.max_steps=1e3", "'train.max_steps' expects int"),
    ("train.max_steps=true", "'train.max_steps' expects int"),
    ("train.epochs=0", "'train.epochs' must be > 0"),
    ("train.epochs=-1", "'train.epochs' must be > 0"),
    ("train.epochs=.inf", "'train.epochs' must be a finite number"),
    ("train.warmup_ratio=-0.1", "'train.warmup_ratio' must be >= 0"),
    ("train.warmup_ratio=1.5", "'train.warmup_ratio' must be <= 1"),
    ("train.batch_size=-2", "'train.batch_size' must be >= 1"),
    ("train.grad_accum=0", "'train.grad_accum' must be >= 1"),
    ("train.max_grad_norm=0", "'train.max_grad_norm' must be > 0"),
    ("train.seed=-1", "'train.seed' must be >= 0"),
    ("train.save_every=0", "'train.save_every' must be >= 1"),
    ("train.keep_checkpoints=0", "'train.keep_checkpoints' must be >= 1"),
    ("train.precision=fp8", "'train.precision' must be one of fp32, bf16"),
    ("vision.grid=0", "'vision.grid' must be >= 1"),
    ("vision.tokens=all", "'vision.tokens' must be one of patch"),
    ("llm.dtype=int8", "'llm.dtype' must be one of"),
    ("data.max_length=0", "'data.max_length' must be >= 1"),
    ("data.turns=both", "'data.turns' must be one of conversation, independent"),
    ("data.describe_first=' '", "'data.describe_first' must be a non-empty request"),
    ("data.max_image_pixels=0", "'data.max_image_pixels' must be >= 1"),
    ("eval.max_new_tokens=0", "'eval.max_new_tokens' must be >= 1"),
    ("eval.limit=0", "'eval.limit' must be >= 1"),
    ("eval.batch_size=-1", "'eval.batch_size' must be >= 1"),
    ("methods[0].r=0", "'methods[0].r' must be >= 1"),
    ("methods[0].dropout=1.5", "'methods[0].dropout' must be <= 1"),
    ("methods[0].rank=8", "unknown key 'methods[0].rank' (did you mean 'methods[0].r'?)"),
    ("methods[3].r=2", "no item [3]"),
    ("methods=[{name: mma, temperature: 0}]", "'methods[0].temperature' must be > 0"),
    ("methods=[{r: 4}]", "'methods[0]' expects a mapping with a 'name'"),
    ("connector={name: resampler, num_queries: 0}", "'connector.num_queries' must be >= 1"),
    ("connector.name=mpl", "unknown connector 'mpl' (did you mean 'mlp'?)"),
    ("vision.name=efficientnet-lite9", "unknown vision encoder 'efficientnet-lite9'"),
    ("data.train=nosuch:x", "key 'data.train': unknown dataset 'nosuch'"),
    ("data.train={name: coco}", "missing required key 'data.train.path'"),
    ("data.mixture=[{train: 'easyvqa:train', weight: 0}]", "'data.mixture[0].weight' must be > 0"),
    ("train.modality_groups={image: [connector]}", "needs exactly the keys 'image' and 'text'"),
    ("train.batch_sise=4", "unknown key 'train.batch_sise' (did you mean 'train.batch_size'?)"),
    ("nokey=1", "unknown key 'nokey'"),
    ("train.max_steps=[1", "not valid YAML"),
    ("train.max_steps", "must look like key.sub=value"),
    ("imports=[no_such_module_xyz]", "cannot import 'no_such_module_xyz'"),
    ("trainable=[]", "key 'trainable' lists no parameter group"),
    ("vision.image_size=4", "vision.image_size=4 is smaller than one patch"),
    ("train={max_steps: 2, max_steps: 3}", "duplicate key 'max_steps'"),
    ("train=3", "key 'train' expects a mapping"),
]


@pytest.mark.parametrize("override, needle", OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_bad_override(recipe_file, capsys, override, needle):
    p, run = recipe_file()
    _one_line_error(["train", p, "-o", override], capsys, needle, absent=run)


@pytest.mark.parametrize("text, needle", [
    (b"train:\n  max_steps: [1\n", "not valid YAML: expected ',' or ']'"),
    (b"train:\n  max_steps: [1\n", "(line 3, column 1)"),
    (b"- a\n- b\n", "must be a mapping at the top level"),
    ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8 text"),
    (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"train:\n  max_steps: 2\n  max_steps: 3\n", "duplicate key 'max_steps' (line 3, column 3)"),
])
def test_bad_recipe_file(tmp_path, capsys, text, needle):
    p = tmp_path / "r.yaml"
    p.write_bytes(text)
    _one_line_error(["train", p], capsys, str(p), needle)


NUMERIC = {  # dotted key -> the section's options class (a part's: chosen by the recipe's defaults)
    "train": "train", "eval": "eval", "chat": "chat", "data": "data", "vision": "vision", "connector": "connector",
    "trainable[0]": None,
}


def _bounded_fields():
    """(dotted key, field) of every numeric option with a declared bound, from the declarations."""
    r = Recipe()
    out = []
    for key, attr in NUMERIC.items():
        obj = getattr(r, attr) if attr else r.trainable[0]
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            if any(f.metadata.get(b) is not None for b in ("min", "max", "gt")) and f.metadata.get("choices") is None:
                out.append((f"{key}.{f.name}", f, hints[f.name]))
    return out


BOUNDED = _bounded_fields()


def _invalid(f, tp):
    """Values outside ``f``'s declared range (and non-finite floats)."""
    is_float = float in typing.get_args(tp) or tp is float
    outs = []
    lo, hi, gt = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("gt")
    if lo is not None:
        outs.append(st.floats(max_value=lo, exclude_max=True, allow_nan=False) if is_float
                    else st.integers(max_value=math.ceil(lo) - 1))
    if gt is not None:
        outs.append(st.floats(max_value=gt, allow_nan=False) if is_float else st.integers(max_value=math.floor(gt)))
    if hi is not None:
        outs.append(st.floats(min_value=hi, exclude_min=True, allow_nan=False) if is_float
                    else st.integers(min_value=math.floor(hi) + 1))
    if is_float:
        outs.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(outs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_declared_range_is_enforced(data):
    """Fuzzed: any value outside a numeric option's declared range is one ConfigError naming the key."""
    key, f, tp = data.draw(st.sampled_from(BOUNDED))
    value = data.draw(_invalid(f, tp))
    text = {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan" if isinstance(value, float) and value != value
                                                      else repr(value))
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [f"{key}={text}"])
    assert f"'{key}'" in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_fuzz_covers_the_main_numeric_options():
    keys = {k for k, _, _ in BOUNDED}
    assert {"train.max_steps", "train.epochs", "train.warmup_ratio", "train.batch_size", "eval.max_new_tokens",
            "eval.limit", "vision.grid", "trainable[0].lr", "data.max_length"} <= keys


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                    max_leaves=8))
def test_any_value_for_a_section_is_accepted_or_one_error(value):
    """Fuzzed: whatever YAML value a section gets, loading gives a Recipe or one ConfigError line."""
    for key in ("train", "methods", "connector", "data.train", "trainable"):
        try:
            load_recipe(None, [f"{key}={json.dumps(value, allow_nan=True)}"])
        except ConfigError as e:
            assert "\n" not in str(e)


# --- data files ------------------------------------------------------------------------------------
def _conv(q="<image>\nWhat is it?", a="red"):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


DATA = [
    ("latin1.json", "[{\"id\": \"a\", \"conversations\": [{\"from\": \"human\", \"value\": \"caf\u00e9\"}, "
                    "{\"from\": \"gpt\", \"value\": \"ok\"}]}]".encode("latin-1"), "not UTF-8 text"),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("empty.json", b"", "not valid JSON"),
    ("nothing.json", b"[]", "no records"),
    ("blank.jsonl", b"\n\n  \n", "no records"),
    ("object.json", b'{"id": "a"}', "expected a JSON list of records"),
    ("badline.jsonl", json.dumps({"id": "a", "conversations": _conv("hi")}).encode() + b"\n{oops\n",
     "line 2 is not valid JSON"),
    ("emptyanswer.json", json.dumps([{"id": "e1", "conversations": _conv("hi", "  ")}]).encode(),
     "record 'e1' (#0): turn 1 is an empty answer"),
    ("noimage.json", json.dumps([{"id": "n1", "conversations": _conv()}]).encode(),
     "record 'n1' (#0): has an <image> placeholder but no 'image'"),
    ("missing.json", json.dumps([{"id": "m1", "image": "gone.png", "conversations": _conv()}]).encode(),
     "record 'm1' (#0): image file not found"),
    ("numberimage.json", json.dumps([{"id": "x1", "image": 3, "conversations": _conv()}]).encode(),
     "record 'x1' (#0): 'image' must be a path"),
    ("dup.json", json.dumps([{"id": "d", "conversations": _conv("a")},
                             {"id": "d", "conversations": _conv("b")}]).encode(), "duplicate id 'd'"),
    ("turns.json", json.dumps([{"id": "t1", "conversations": [{"from": "gpt", "value": "x"}]}]).encode(),
     "record 't1' (#0): turns must alternate"),
    ("speaker.json", json.dumps([{"id": "s1", "conversations": [{"from": "robot", "value": "x"}]}]).encode(),
     "unknown speaker 'robot'"),
    ("dupkey.json", b'[{"id": "a", "id": "b", "conversations": []}]', "an object has the key 'id' twice"),
    ("dupkey.jsonl", json.dumps({"id": "a", "conversations": _conv("hi")}).encode() + b'\n{"id": "a", "id": "b"}\n',
     "line 2: an object has the key 'id' twice"),
]


@pytest.mark.parametrize("name, content, needle", DATA, ids=[d[0] for d in DATA])
def test_bad_data_file(recipe_file, tmp_path, capsys, name, content, needle):
    p = tmp_path / name
    p.write_bytes(content)
    recipe, run = recipe_file(train=str(p))
    _one_line_error(["train", recipe], capsys, str(p), needle, absent=run)


def _save(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, **kw)
    return path


@pytest.mark.parametrize("kind, needle", [
    ("truncated", "cannot read image"), ("text", "cannot read image"), ("empty", "cannot read image"),
    ("folder", "image file not found"), ("too-large", "more than data.max_image_pixels=100"),
])
def test_bad_image(recipe_file, tmp_path, capsys, kind, needle):
    img = tmp_path / "i.png"
    if kind == "truncated":
        _save(tmp_path / "full.png", Image.new("RGB", (40, 40), (200, 10, 10)))
        img.write_bytes((tmp_path / "full.png").read_bytes()[:60])
    elif kind == "text":
        img.write_text("not an image")
    elif kind == "empty":
        img.write_bytes(b"")
    elif kind == "folder":
        img.mkdir()
    else:
        _save(img, Image.new("RGB", (40, 40)))
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"id": "im1", "image": "i.png", "conversations": _conv()}]))
    recipe, run = recipe_file(train=str(data), **({"max_image_pixels": 100} if kind == "too-large" else {}))
    _one_line_error(["train", recipe], capsys, "record 'im1'", needle, absent=run)


# --- images decode to the right pixels -------------------------------------------------------------
def test_sixteen_bit_and_float_grayscale_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    got = np.asarray(load_image(str(_save(tmp_path / "g16.png", Image.fromarray(ramp)))))
    np.testing.assert_allclose(got[..., 0], np.round(ramp / 65535 * 255), atol=1)
    assert (got[..., 0] == got[..., 1]).all() and got.min() == 0 and got.max() == 255
    f = np.linspace(-1.0, 3.0, 32 * 32).reshape(32, 32).astype(np.float32)
    got = np.asarray(load_image(str(_save(tmp_path / "f.tif", Image.fromarray(f, mode="F")))))
    np.testing.assert_allclose(got[..., 0], np.round((f + 1) / 4 * 255), atol=1)


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255  # left half white
    im = Image.fromarray(wide)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    got = np.asarray(load_image(str(_save(tmp_path / "rot.png", im, exif=exif))))
    np.testing.assert_array_equal(got, np.rot90(wide, k=-1))  # upright: the white half on top


def test_cmyk_palette_transparency_and_bilevel(tmp_path):
    cmyk = np.asarray(load_image(str(_save(tmp_path / "c.tif", Image.new("CMYK", (4, 4), (0, 255, 255, 0))))))
    assert (cmyk == [255, 0, 0]).all()  # no cyan ink, full magenta + yellow: red
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0, 0, 0] * 254)
    pal.putpixel((0, 0), 0)
    pal.info["transparency"] = 0
    got = np.asarray(load_image(str(_save(tmp_path / "p.png", pal, transparency=0))))
    assert (got[0, 0] == 255).all() and (got[1, 1] == [10, 200, 30]).all()  # transparent -> white
    la = np.asarray(load_image(str(_save(tmp_path / "la.png", Image.new("LA", (4, 4), (0, 0))))))
    assert (la == 255).all()
    bw = np.asarray(load_image(str(_save(tmp_path / "b.png", Image.new("1", (4, 4), 1)))))
    assert (bw == 255).all()


def test_pixel_limit_is_a_setting(tmp_path):
    p = str(_save(tmp_path / "a.png", Image.new("RGB", (30, 30))))
    try:
        set_max_pixels(899)
        with pytest.raises(Exception, match="30 x 30 = 900 pixels, more than data.max_image_pixels=899"):
            load_image(p, "rec 7")
        set_max_pixels(900)
        assert load_image(p).size == (30, 30)
    finally:
        set_max_pixels(None)


# --- checkpoints -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llms, tiny_clip, tiny_data, recipe_dict):
    from vlgraft.config import from_dict
    from vlgraft.training.loop import train

    root = tmp_path_factory.mktemp("trained")
    r = from_dict(Recipe, recipe_dict(tiny_llms["llama"], tiny_clip, tiny_data, root / "run",
                                           max_steps=2, save_every=1))
    train(r, source="test")
    return root / "run"


def _pickled(path: Path) -> None:
    path.write_bytes(pickle.dumps({"connector.proj.weight": [1, 2, 3]}))


@pytest.mark.parametrize("damage, file, needle", [
    ("truncate", "final/trainable.safetensors", "not a readable safetensors file"),
    ("random", "final/trainable.safetensors", "not a readable safetensors file"),
    ("empty", "final/trainable.safetensors", "not a readable safetensors file"),
    ("pickle", "final/trainable.safetensors", "not a readable safetensors file"),
    ("yaml", "final/recipe.yaml", "not valid YAML"),
    ("latin1", "final/recipe.yaml", "not UTF-8 text"),
])
def test_damaged_checkpoint(trained, tmp_path, capsys, damage, file, needle):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    f = run / file
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:30])
    elif damage == "random":
        f.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "empty":
        f.write_bytes(b"")
    elif damage == "pickle":
        _pickled(f)
    elif damage == "yaml":
        f.write_text("train: [1\n")
    else:
        f.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    _one_line_error(["eval", run, "--limit", "2", "--out", tmp_path / "e.json"], capsys, str(f), needle,
                    absent=tmp_path / "e.json")


def test_damaged_optimizer_state_on_resume(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    recipe = yaml.safe_load((run / "final" / "recipe.yaml").read_text())
    recipe["train"].update(output_dir=str(run), max_steps=3)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe))
    opt = sorted((run / "checkpoints").glob("step-*"))[-1] / "optimizer.safetensors"
    opt.write_bytes(b"\x00" * 10)
    _one_line_error(["train", p, "--resume"], capsys, str(opt), "not a readable safetensors file")


# --- command-line arguments and output locations ----------------------------------------------------
def test_cli_arguments(trained, tiny_data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    image = tiny_data.parent / "img" / "0.png"
    _one_line_error(["eval", tmp_path / "nowhere"], capsys, "no checkpoint found")
    _one_line_error(["eval", trained, "--limit", "2", "--out", blocker / "e.json"], capsys,
                    f"{blocker} is a file, not a folder")
    _one_line_error(["eval", trained, "--limit", "0"], capsys, "'eval.limit' must be >= 1; got 0")
    _one_line_error(["eval", trained, "--data", tmp_path / "missing.json"], capsys, "data file not found")
    _one_line_error(["chat", "--ckpt", trained, "--image", tmp_path / "gone.png", "hi"], capsys,
                    "--image: image file not found")
    _one_line_error(["chat", "--ckpt", trained, "--image", image, "   "], capsys, "the question is empty")
    _one_line_error(["chat", "--ckpt", trained, "--max-new-tokens", "-1", "hi"], capsys,
                    "'chat.max_new_tokens' must be >= 1")
    (tmp_path / "exists").mkdir()
    _one_line_error(["export", trained, tmp_path / "exists"], capsys, "exists; pass --overwrite")
    _one_line_error(["export", trained, blocker / "x"], capsys, f"{blocker} is a file, not a folder")
    _one_line_error(["eval", trained, "--out", tmp_path / "exists"], capsys, "is a folder; give a file name")
    _one_line_error(["eval", trained, "--device", "gpu"], capsys, "--device 'gpu' is not a device")
    _one_line_error(["chat", "--ckpt", trained, "--device", "cuda:7", "hi"], capsys, "no such CUDA device")


def test_output_dir_under_a_file(recipe_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    p, _ = recipe_file()
    _one_line_error(["train", p, "-o", f"train.output_dir={blocker / 'run'}"], capsys,
                    "run folder (train.output_dir)", f"{blocker} is a file, not a folder")


def test_independent_turns_truncate_a_too_long_question(tiny_llms, caplog):
    """README: a sequence longer than data.max_length is truncated with a warning naming the record,
    in independent turns too (not an error about a "shared prefix")."""
    from vlgraft.config import LLMOptions, options_for
    from vlgraft.data.conversation import tokenize_independent
    from vlgraft.data.records import Record
    from vlgraft.errors import DataError
    from vlgraft.models.llm import build_llm

    llm = build_llm(options_for(LLMOptions, f"hf:{tiny_llms['llama']}"))
    rec = Record("r1", [("user", "<image>\nWhat is it?"), ("assistant", "a very long answer " * 30)],
                 images=["x.png"], source="f.json: record 'r1'")
    ex = tokenize_independent(rec, llm, 4, 40)
    assert len(ex["input_ids"]) == 40 and "record 'r1': truncated from" in caplog.text
    assert (ex["labels"] != -100).any()
    with pytest.raises(DataError, match="record 'r1': .* tokens exceed data.max_length=8 and truncation would cut "
                                        "visual tokens"):
        tokenize_independent(rec, llm, 16, 8)


def test_a_moved_run_resumes_and_files_follow_the_umask(trained, tmp_path):
    import os

    from vlgraft.training.loop import train

    moved = tmp_path / "moved"
    shutil.copytree(trained, moved)
    recipe = load_recipe(moved / "final" / "recipe.yaml", [f"train.output_dir={moved}", "train.max_steps=3"],
                         saved=True)
    out = train(recipe, resume=True, source="test")
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    mask = os.umask(0)
    os.umask(mask)
    assert (out / "final").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (out / "final" / "trainable.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint(tiny_recipe, monkeypatch):
    from vlgraft.errors import VlgraftError
    from vlgraft.models.vlm import VLM
    from vlgraft.training.loop import train

    calls = {"n": 0}
    forward = VLM.forward

    def diverging(self, *a, **kw):  # the loss of the third step's batch is NaN, as after a divergence
        out = forward(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss_sum"] = out["loss_sum"] * float("nan")
        return out

    monkeypatch.setattr(VLM, "forward", diverging)
    r = tiny_recipe(max_steps=5, save_every=1)
    with pytest.raises(VlgraftError, match=r"step 3: the loss is not finite \(nan\); training stopped before taking "
                                           r"the step, and the last checkpoint, .*step-000002, is kept"):
        train(r, source="test")
    run = Path(r.train.output_dir)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert not (run / "final").exists()
    from safetensors.torch import load_file

    kept = load_file(run / "checkpoints" / "step-000002" / "trainable.safetensors")
    assert all(v.isfinite().all() for v in kept.values())
    assert all(math.isfinite(json.loads(x)["loss"]) for x in (run / "metrics.jsonl").read_text().splitlines())
