"""Training on streams (``data.stream``): JSONL, webdataset shards and datasets' streaming, read as the
batches need them; a resumed run takes exactly the batches of the uninterrupted one."""

import io
import itertools
import json
import tarfile

import pytest
import torch

from tests.test_train import assert_same_weights, crash_then_resume
from vlgraft.data.streaming import StreamBatches, decode_state, encode_state
from vlgraft.data.streams import JsonlStream, TarStream, open_stream
from vlgraft.errors import ConfigError, DataError


def _jsonl(tiny_data, tmp_path, bad_line: int | None = None):
    """tiny_data as a JSONL file with absolute image paths (optionally one line broken)."""
    recs = json.loads(tiny_data.read_text())
    lines = []
    for i, r in enumerate(recs):
        if "image" in r:
            r = {**r, "image": str(tiny_data.parent / r["image"])}
        lines.append(json.dumps(r) if i != bad_line else '{"id": "broken", "conversations": [}')
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _shards(tiny_data, folder, per_shard=5):
    """tiny_data as webdataset shards: KEY.png + KEY.json (a LLaVA record), and one caption sample."""
    recs = json.loads(tiny_data.read_text())
    folder.mkdir()
    samples = []
    for r in recs:
        members = {"json": json.dumps({k: v for k, v in r.items() if k != "image"}).encode()}
        if "image" in r:
            members["png"] = (tiny_data.parent / r["image"]).read_bytes()
        samples.append((r["id"], members))
    samples.append(("cap0", {"png": (tiny_data.parent / "img/0.png").read_bytes(), "txt": b"A red square."}))
    for s in range(0, len(samples), per_shard):
        with tarfile.open(folder / f"train-{s // per_shard:03d}.tar", "w") as tar:
            for key, members in samples[s: s + per_shard]:
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def _parquet(tiny_data, path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    recs = json.loads(tiny_data.read_text())
    rows = [{"id": r["id"], "image": str(tiny_data.parent / r["image"]) if "image" in r else None,
             "conversations": json.dumps(r["conversations"])} for r in recs]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    return path


def _ids(stream, items):
    return [stream.to_record(raw).id for _, raw in items]


def _sampler(stream, start=0, state=None, total=12, world=1, rank=0):
    return StreamBatches([stream], [1.0], [None], 2, 1, world, rank, seed=3, start=start, total=total, buffer=6,
                         state=state)


@pytest.mark.parametrize("kind", ["jsonl", "webdataset", "hf", "loader"])
def test_stream_resumes_exactly_from_a_noted_state(tiny_data, tmp_path, kind):
    spec = {"jsonl": lambda: str(_jsonl(tiny_data, tmp_path)),
            "loader": lambda: str(tiny_data),  # a JSON list: any format's loader, records in the buffer
            "webdataset": lambda: f"webdataset:{_shards(tiny_data, tmp_path / 'wds')}",
            "hf": lambda: {"name": "hf", "path": str(_parquet(tiny_data, tmp_path / "t.parquet")),
                           "streaming": True}}[kind]()
    stream = open_stream(spec)
    full = _sampler(stream)
    batches = [_ids(stream, b) for b in full]  # 12 steps x 2: more than one epoch of 16-17 records
    assert len(batches) == 12 and all(len(b) == 2 for b in batches)
    n_records = 17 if kind == "webdataset" else 16
    assert len({i for b in batches for i in b}) >= n_records - 6  # a shuffled pass over (nearly) all records
    state = full.state_at(5)
    state = decode_state(json.loads(json.dumps(encode_state(state))))  # as a checkpoint stores it
    resumed = _sampler(open_stream(spec), start=5, state=state)
    assert [_ids(stream, b) for b in resumed] == batches[5:]


def test_two_processes_take_the_slices_of_one_global_batch(tiny_data, tmp_path):
    stream = open_stream(str(_jsonl(tiny_data, tmp_path)))
    one = [_ids(stream, b) for b in StreamBatches([stream], [1.0], [None], 4, 1, 1, 0, 3, 0, 5, 6)]
    two = [[_ids(stream, b) for b in StreamBatches([stream], [1.0], [None], 2, 1, 2, r, 3, 0, 5, 6)]
           for r in (0, 1)]
    assert [a + b for a, b in zip(*two)] == one


def test_tar_stream_reads_shards_from_a_saved_offset(tiny_data, tmp_path):
    stream = open_stream(f"webdataset:{_shards(tiny_data, tmp_path / 'wds')}")
    assert isinstance(stream, TarStream) and len(stream.shards) == 4
    items = list(stream.read(0, 0))
    assert [stream.to_record(raw).id for raw, _ in items] == ["im0", "im1", "im2", "im3", "im4"]
    rest = list(stream.read(0, items[1][1]))  # from after the second sample
    assert [stream.to_record(raw).id for raw, _ in rest] == ["im2", "im3", "im4"]
    cap = stream.to_record(next(raw for raw, _ in stream.read(3, 0) if raw["__key__"] == "cap0"))
    assert cap.turns[-1] == ("assistant", "A red square.") and cap.image_data and cap.images[0].endswith("::cap0.png")


def test_a_bad_streamed_record_is_named_when_reached(tiny_recipe, tiny_data, tmp_path):
    r = tiny_recipe(max_steps=8)
    r.data.train, r.data.stream, r.data.shuffle_buffer = str(_jsonl(tiny_data, tmp_path, bad_line=3)), True, 2
    from vlgraft.training.loop import train

    with pytest.raises(DataError, match=r"train.jsonl: line 4: not valid JSON"):
        train(r, source="test")
    r.data.group_by_modality = True
    with pytest.raises(ConfigError, match="data.stream: data.group_by_modality is not supported"):
        train(r, source="test")


def test_stream_steps_from_epochs_need_a_record_count(tiny_recipe, tiny_data, tmp_path):
    from vlgraft.training.loop import train

    path = _jsonl(tiny_data, tmp_path)
    stream = open_stream(str(path))
    assert isinstance(stream, JsonlStream) and stream.count() == 16
    r = tiny_recipe()
    r.train.max_steps, r.train.epochs, r.data.stream = None, 0.5, True
    r.data.train = str(path)
    train(r, source="test")  # 0.5 x 16 records / batch 4 = 2 steps
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    r.data.train = f"webdataset:{_shards(tiny_data, tmp_path / 'w')}"  # tar shards: no cheap count
    with pytest.raises(ConfigError, match="set train.max_steps"):
        train(r, overwrite=True, source="test")


def test_packed_stream_batches_compute_what_unpacked_ones_do(tiny_recipe, tiny_data, tmp_path):
    from vlgraft.data.streaming import StreamDataset, collate_stream
    from vlgraft.models.vlm import VLM

    vlm = VLM.from_recipe(tiny_recipe()).eval()
    stream = open_stream(str(_jsonl(tiny_data, tmp_path)))
    ds = StreamDataset([stream], vlm, 128, "conversation", None)
    items = [(0, raw) for raw, _ in itertools.islice(stream.read(0, stream.start(0)), 10, 16)]  # 2 image, 4 text
    pad = vlm.llm.tokenizer.pad_token_id
    plain = collate_stream([ds[i] for i in items], pad)
    packed = collate_stream([ds[i] for i in items], pad, pack=128)
    assert packed["input_ids"].shape[0] < plain["input_ids"].shape[0]  # fewer rows ...
    assert int((packed["document_ids"].amax(1) + 1).sum()) == len(items)  # ... holding every record once
    with torch.no_grad():
        a, b = vlm(**plain), vlm(**packed)
    assert a["n_tokens"] == b["n_tokens"]
    torch.testing.assert_close(a["loss_sum"], b["loss_sum"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["webdataset", "hf", "jsonl+pack"])
def test_training_on_a_stream_resumes_exactly(tiny_recipe, tiny_data, tmp_path, monkeypatch, kind):
    from vlgraft.data.sources import parse_source
    from vlgraft.training.loop import train

    spec = {"webdataset": lambda: f"webdataset:{_shards(tiny_data, tmp_path / 'wds')}",
            "jsonl+pack": lambda: str(_jsonl(tiny_data, tmp_path)),
            "hf": lambda: parse_source({"name": "hf", "path": str(_parquet(tiny_data, tmp_path / "t.parquet")),
                                        "streaming": True})}[kind]()  # (as a recipe has it)

    def recipe(out, workers=0):
        r = tiny_recipe(max_steps=6, save_every=3, batch_size=2, num_workers=workers)
        r.data.train, r.data.stream, r.data.shuffle_buffer = spec, True, 4
        r.data.pack = kind.endswith("+pack")
        r.train.output_dir = str(tmp_path / out)
        return r

    train(recipe("full"), source="test")
    metrics = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 7))
    crash_then_resume(recipe("part", workers=2), recipe("part"), monkeypatch, at=3)  # workers prefetch ahead
    assert (tmp_path / "part" / "checkpoints" / "step-000003" / "data_state.json").is_file()
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def test_streamed_records_get_describe_first_as_in_memory_ones(tiny_recipe, tiny_data, tmp_path):
    from vlgraft.data.describe import with_gold_descriptions
    from vlgraft.data.streaming import StreamDataset
    from vlgraft.models.vlm import VLM

    recs = [json.loads(x) for x in _jsonl(tiny_data, tmp_path).read_text().splitlines()]
    recs[0]["description"] = "A red square."
    path = tmp_path / "described.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    vlm = VLM.from_recipe(tiny_recipe())
    stream = open_stream(str(path))
    raws = [raw for raw, _ in stream.read(0, stream.start(0))][:2]  # one with a description, one without
    ds = StreamDataset([stream], vlm, 128, "conversation", "Describe the image.")
    expected, n = with_gold_descriptions([stream.to_record(r) for r in raws], "Describe the image.")
    assert n == 1
    from vlgraft.data.conversation import tokenize_conversation

    for raw, rec in zip(raws, expected):
        ref = tokenize_conversation(rec, vlm.llm, vlm.num_image_tokens, 128)["input_ids"]
        assert torch.equal(ds[(0, raw)]["input_ids"], ref)
