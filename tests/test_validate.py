"""``vlgraft validate``: every bad record of a dataset reported (not just the first), naming its line or
record; unreadable shards reported and skipped; the same report with or without worker processes."""

import json
import shutil
import tarfile

import pytest

from tests.test_streaming import _jsonl, _shards
from vlgraft.cli import main
from vlgraft.data.validate import validate_source


def _conv(q="<image>\nWhat is it?", a="a square"):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture
def bad_jsonl(tiny_data, tmp_path):
    """tiny_data's 16 records as JSONL, then one of each kind of bad record (lines 17-22)."""
    path = _jsonl(tiny_data, tmp_path)
    img = str(tiny_data.parent / "img/0.png")
    bad = ['{"id": "broken", "conversations": [}',  # line 17
           json.dumps({"id": "gone", "image": str(tmp_path / "missing.png"), "conversations": _conv()}),
           json.dumps({"id": "blank", "conversations": _conv("Say nothing.", "  ")}),
           json.dumps({"id": "im3", "conversations": _conv("Hi?")}),  # im3 is line 4's id
           json.dumps({"id": "two", "image": img, "conversations": _conv("<image><image> Which?")}),
           json.dumps({"id": "ok2", "image": img, "conversations": _conv()})]  # line 22: a good one
    path.write_text(path.read_text() + "\n".join(bad) + "\n")
    return path


EXPECTED = [("json", "train.jsonl: line 17: not valid JSON"),
            ("missing image", "record 'gone' (#17): image file not found"),
            ("empty answer", "record 'blank' (#18): turn 1 is an empty answer"),
            ("duplicate id", "record 'im3' (#19): duplicate id 'im3' (first at"),
            ("placeholders", "record 'two' (#20): has 1 image(s) but 2 <image> placeholders")]


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_every_bad_record_is_reported_with_its_line_or_record(bad_jsonl, tmp_path, capsys):
    report_file = tmp_path / "out" / "report.json"
    code, out, _ = _run(["validate", str(bad_jsonl), "--workers", "2", "--show", "3", "--json", str(report_file)],
                        capsys)
    assert code == 1
    report = json.loads(report_file.read_text())
    assert report["ok"] is False and len(report["sources"]) == 1
    src = report["sources"][0]
    assert (src["records"], src["ok"], src["bad"]) == (22, 17, 5)
    errors = src["errors"]
    assert len(errors) == len(EXPECTED)
    for (kind, text), err in zip(EXPECTED, errors):  # in the data's order
        assert err["kind"] == kind and text in err["message"], err
    assert "train.jsonl: record 'im3' (#3)" in errors[3]["message"]  # where the first im3 is
    assert src["kinds"] == {kind: 1 for kind, _ in EXPECTED}
    assert "line 17: not valid JSON" in out and "turn 1 is an empty answer" in out
    assert "duplicate id 'im3'" not in out  # only the first --show 3 errors are printed...
    assert f"... and 2 more (all in --json {report_file})" in out  # ...and the rest is pointed to
    assert "Traceback" not in out


def test_workers_and_in_process_give_the_same_report(bad_jsonl):
    a = validate_source(str(bad_jsonl), workers=2, show=False)
    b = validate_source(str(bad_jsonl), workers=0, show=False)
    assert a.problems == b.problems and (a.records, a.bad) == (b.records, b.bad) == (22, 5)
    skip = validate_source(str(bad_jsonl), workers=0, images="skip", show=False)
    assert skip.problems == a.problems  # no image is broken, only missing (which skip still finds)


def test_a_clean_dataset_exits_0(tiny_data, tmp_path, capsys):
    report_file = tmp_path / "r.json"
    main(["validate", str(_jsonl(tiny_data, tmp_path)), str(tiny_data), "--json", str(report_file)])  # no exit 1
    out = capsys.readouterr().out
    assert "all 32 records are good" in out
    report = json.loads(report_file.read_text())
    assert report["ok"] is True and [s["bad"] for s in report["sources"]] == [0, 0]


def test_a_bad_spec_is_one_error_line(tmp_path, capsys):
    for spec, text in [(str(tmp_path / "nope.jsonl"), "data file not found"),
                       (f"coco:{tmp_path / 'nope.json'}", "not found"), ("nosuchformat:x", "unknown dataset")]:
        code, _, err = _run(["validate", spec], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and lines[-1].startswith("vlgraft: error:") and text in lines[-1], lines


def test_a_loader_format_reports_the_record_it_stops_at(tiny_data, tmp_path, capsys):
    recs = json.loads(tiny_data.read_text())
    recs[5]["conversations"][1]["from"] = "robot"
    path = tmp_path / "d.json"
    shutil.copytree(tiny_data.parent / "img", tmp_path / "img")
    path.write_text(json.dumps(recs))
    code, out, _ = _run(["validate", str(path), "--workers", "0"], capsys)
    assert code == 1
    assert "record 'im5' (#5): turn 1 has unknown speaker 'robot'" in out
    assert "stops at its first bad record" in out
    report = validate_source(str(path), show=False)
    assert report.stopped_at_first_error and (report.records, report.bad) == (6, 1)


def test_webdataset_damaged_image_and_damaged_shard(tiny_data, tmp_path):
    data = tmp_path / "copy" / "train.json"  # tiny_data with image 3 cut short
    shutil.copytree(tiny_data.parent, data.parent)
    (data.parent / "img/3.png").write_bytes((data.parent / "img/3.png").read_bytes()[:60])
    folder = _shards(data, tmp_path / "wds")  # 17 samples, 5 per shard: im3 in the first shard
    report = validate_source(f"webdataset:{folder}", workers=2, show=False)
    assert (report.records, report.bad) == (17, 1) and len(report.errors) == 1
    assert report.problems[0][0] == "bad image"
    assert "train-000.tar: sample 'im3': cannot read image" in report.errors[0]
    assert "im3.png" in report.errors[0]

    shard = sorted(folder.glob("*.tar"))[1]  # a shard cut inside a member: reported, the others still read
    with tarfile.open(shard) as tar:
        cut = next(m for m in tar if m.name.endswith(".png")).offset_data + 10
    shard.write_bytes(shard.read_bytes()[:cut])
    report = validate_source(f"webdataset:{folder}", workers=0, show=False)
    assert report.unreadable_shards == 1 and report.kinds["shard"] == 1
    assert any("train-001.tar: damaged tar file" in m for m in report.errors), report.errors
    assert (report.records, report.bad) == (17 - 5, 1)  # shards 0, 2 and 3 read whole
