"""``vlgraft report``: a fake run folder (recipe, training log, an eval result with every block kind, row
files naming tiny images) rendered to HTML and markdown; no model is loaded."""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlgraft.errors import DataError, VlgraftError
from vlgraft.eval.report.build import write_report
from vlgraft.eval.report.cli import register
from vlgraft.eval.report.examples import spread

N = 2  # --examples in these tests: small enough that some groups are cut, some not

RECIPE = {"name": "tiny-run", "vision": {"name": "efficientnet-lite0", "grid": 4},
          "llm": {"name": "smollm2-135m-instruct"}, "connector": {"name": "mlp"},
          "methods": [{"name": "llama_adapter", "layers": 10}, {"name": "lora", "r": 16}]}

VQA = {"data": "easyvqa:test", "n": 1000, "accuracy": 0.992, "f1": 0.9925, "vqa_accuracy": 0.99,
       "by_type": {"all": {"n": 1000, "correct": 992, "accuracy": 0.992, "f1": 0.9925, "vqa_accuracy": 0.99},
                   "color": {"n": 300, "correct": 290, "accuracy": 0.9667, "f1": 0.97, "vqa_accuracy": 0.965},
                   "yes/no": {"n": 700, "correct": 691, "accuracy": 0.9871, "f1": 0.9871, "vqa_accuracy": 0.98}},
       "seconds": 29.2, "questions_per_s": 34.2, "precision": "bf16", "turns": "independent",
       "describe_first": {"request": "Describe the image.", "described": 108, "with_gold": 81, "gold_match": 0.963},
       "val_loss": 0.1, "new_score": 0.4321}

CAPTION = {"data": "emoji:captions-test", "images": 182, "captions": 182, "BLEU-1": 0.812, "BLEU-2": 0.7,
           "BLEU-3": 0.6, "BLEU-4": 0.5432, "ROUGE-L": 0.777, "CIDEr": 1.2345, "seconds": 23.5}


def _pope_setting(acc: float) -> dict:
    return {"accuracy": acc, "precision": 0.9, "recall": 0.8, "f1": 0.85, "yes_ratio": 0.4444, "tp": 40, "fp": 4,
            "tn": 50, "fn": 6, "n": 100}


POPE = {"objects": "emoji-test", "images": 182, "random": _pope_setting(0.965), "adversarial": _pope_setting(0.8812),
        "seconds": 3.0}
CHOICE = {"data": "scienceqa:test", "n": 200, "accuracy": 0.935, "unanswered": 7, "scoring": "likelihood",
          "circular_accuracy": 0.9012,
          "scienceqa": {"accuracy": {"NAT": 0.935, "SOC": None, "LAN": None, "TXT": None, "IMG": 0.935, "NO": None,
                                     "G1-6": 0.9375, "G7-12": 0.93, "Avg": 0.935},
                        "n": {"NAT": 200, "SOC": 0, "LAN": 0, "TXT": 0, "IMG": 200, "NO": 0, "G1-6": 80, "G7-12": 120,
                              "Avg": 200}},
          "seconds": 9.0}
TEXT = {"text_set": "bundled/text_eval.jsonl", "text_set_sha1": "abc", "precision": "fp32",
        "before": {"n_ppl": 20, "n_qa": 30, "ppl": 5.5, "nll": 1.7, "tokens": 400, "qa_acc": 0.6, "qa_exact": 0.5},
        "after": {"n_ppl": 20, "n_qa": 30, "ppl": 6.25, "nll": 1.83, "tokens": 400, "qa_acc": 0.5333,
                  "qa_exact": 0.4},
        "change": {"ppl": 0.75, "nll": 0.13, "qa_acc": -0.0667, "qa_exact": -0.1, "ppl_ratio": 1.136}}


def _png(path: Path, size: tuple[int, int], color: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(root: Path) -> Path:
    """A run folder with every input; images: two absolute paths, one relative to the current folder
    (the test's tmp_path), one missing, one that is not an image."""
    run = root / "run"
    run.mkdir()
    big = _png(root / "img" / "wide.png", (300, 150), "red")
    small = _png(root / "img" / "small.png", (40, 60), "blue")
    _png(root / "rel" / "r.png", (64, 64), "green")
    relative = "rel/r.png"
    missing = str(root / "img" / "gone.png")
    broken = root / "img" / "broken.png"
    broken.write_bytes(b"not a png at all")
    (run / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    _jsonl(run / "metrics.jsonl", [{"step": 10, "loss": 2.43, "lr": {"connector": 0.002}, "grad_norm": 4.08},
                                   {"step": 20, "loss": 0.40, "lr": {"connector": 0.0019}},
                                   {"step": 20, "val_loss": 0.5},
                                   {"step": 30, "loss": 0.21, "lr": {"connector": 0.0018}}])
    result = dict(VQA, tasks={"caption:emoji:captions-test": CAPTION, "pope:emoji-test": POPE,
                              "choice:scienceqa:test": CHOICE, "mystery:thing": {"score": 0.5, "sub": {"k": 3}}},
                  text_ability=TEXT)
    (run / "eval.json").write_text(json.dumps(result))
    q = "What shape is in the image?"
    _jsonl(run / "eval.predictions.jsonl", [
        {"id": "v0", "answer": "triangle", "prediction": "triangle", "correct": True, "f1": 1.0, "type": "shape",
         "image": big, "question": q, "vqa_accuracy": 1.0, "description": "A red triangle."},
        {"id": "v1", "answer": "circle", "prediction": "<b>bold</b> | pipe", "correct": False, "f1": 0.0,
         "type": "shape", "image": missing, "question": q},
        {"id": "v2", "answer": "yes", "prediction": "yes", "correct": True, "f1": 1.0, "type": "yes/no",
         "image": relative},
        {"id": "v3", "answer": "red", "prediction": "red", "correct": True, "f1": 1.0, "type": "color"},
        {"id": "v4", "answer": "blue", "prediction": "green", "correct": False, "f1": 0.0, "type": "color",
         "image": str(broken)},
    ])
    _jsonl(run / "eval.tasks.jsonl", [
        {"task": "caption:emoji:captions-test", "image": big, "prediction": "a red face", "references": ["a face"],
         "CIDEr": 1.5},
        {"task": "caption:emoji:captions-test", "image": small, "prediction": "a dog", "references": ["a cat", "cat"],
         "CIDEr": 0.2},
        {"task": "caption:emoji:captions-test", "image": big, "prediction": "a face", "references": ["a face"],
         "CIDEr": 0.9},
        *[{"task": "pope:emoji-test", "setting": "random", "image": small, "question": "Is there a cat?",
           "label": lab, "prediction": pred, "read_as": pred.lower()}
          for lab, pred in (("yes", "Yes"), ("no", "No"), ("yes", "Yes"), ("no", "Yes"))],
        {"task": "choice:scienceqa:test", "id": "c0", "prediction": "A", "choice": "A", "answer": "A", "correct": True,
         "question": "Which is a mammal?", "image": small},
        {"task": "choice:scienceqa:test", "id": "c0", "prediction": "B", "choice": "B", "answer": "C",
         "correct": False, "rotation": 1},
        {"task": "choice:scienceqa:test", "id": "c1", "prediction": "none", "choice": None, "answer": "B",
         "correct": False},
        {"task": "mystery:thing", "prediction": "x", "answer": "x", "correct": True},
        {"task": "mystery:thing", "prediction": "y", "answer": "x", "correct": False},
    ])
    _jsonl(run / "eval.text.jsonl", [
        {"id": f"t{k}", "question": f"Question {k}?", "answers": ["Paris"], "before": "Paris", "after": "Lyon",
         "before_correct": True, "after_correct": False} for k in range(3)])
    return run


def _cells(html: str) -> str:
    """The HTML without the right-aligned columns' class, so that a table row reads as its texts in order."""
    return html.replace('<td class="n">', "<td>").replace('<th class="n">', "<th>")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the relative image path is read from here
        run = make_run(root)
        paths = write_report(run, examples=N)
    out = run / "report"
    html = (out / "index.html").read_text()
    return {"root": root, "run": run, "out": out, "paths": paths, "html": html,
            "cells": _cells(html),
            "md": (out / "report.md").read_text()}


def _rows(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def _is_png(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def test_writes_both_pages_and_asset_folders(report):
    out = report["out"]
    assert report["paths"] == [out / "index.html", out / "report.md", out / "examples", out / "figures"]
    assert not list(report["run"].glob(".tmp-*")) and not list(report["run"].glob(".old-*"))


def test_html_shows_every_block_formatted(report):
    html = report["cells"]
    assert "<h1>run</h1>" in html
    for name in ("efficientnet-lite0", "smollm2-135m-instruct", "mlp", "llama_adapter, lora"):
        assert f"<td>{name}</td>" in html
    # VQA: percentages 100x with two decimals, per answer type, VQA accuracy column, an unknown key kept
    for figure in ("99.20", "99.25", "99.00", "96.67", "96.50", "98.71"):
        assert f"<td>{figure}</td>" in html
    assert "<td>yes/no</td>" in html and "VQA accuracy (%)" in html
    assert "96.30% of the 81 images" in html and "<td>new_score</td><td>0.432</td>" in html
    # caption: raw, three decimals; METEOR absent from the block, so not a column
    for figure in ("0.812", "0.543", "0.777", "1.234"):
        assert f"<td>{figure}</td>" in html
    assert "METEOR" not in html
    # POPE: the two settings present, not the third
    assert "<td>random</td><td>96.50</td><td>90.00</td><td>80.00</td><td>85.00</td><td>44.44</td><td>100</td>" in html
    assert "<td>adversarial</td><td>88.12</td>" in html and "<td>popular</td>" not in html
    # choice: circular accuracy, unanswered, scoring; ScienceQA without its null categories
    assert "<td>200</td><td>93.50</td><td>90.12</td><td>7</td><td>likelihood</td>" in html
    assert "<th>G1-6</th>" in html and "<td>93.75</td>" in html
    assert not any(f"<th>{c}</th>" in html for c in ("SOC", "LAN", "TXT", "NO"))
    # a task kind the report does not know: shown as keys and values
    assert "Task: mystery:thing" in html and "<td>sub.k</td><td>3</td>" in html
    # text ability: before, after, change
    assert "<td>perplexity per response token</td><td>5.500</td><td>6.250</td><td>+0.750 (x1.136)</td>" in html
    assert "<td>QA accuracy, contains (%)</td><td>60.00</td><td>53.33</td><td>-6.67 pts</td>" in html
    assert "<td>Paris ✓</td><td>Lyon ✗</td>" in html
    # the order of the page: recipe, loss, VQA, tasks, text ability, then the example grids
    order = ["Recipe", "Loss curve", "VQA: easyvqa:test", "Captions:", "POPE:", "Multiple choice:", "Task: mystery",
             "Text ability", "Examples: VQA on easyvqa:test", "Examples: caption:", "Examples: pope:",
             "Examples: choice:", "Examples: mystery:"]
    positions = [html.index(f"<h2>{title}") for title in order]
    assert positions == sorted(positions)


def test_example_cells_match_the_rows(report):
    run, html = report["run"], report["html"]
    preds = _rows(run, "eval.predictions.jsonl")
    tasks = _rows(run, "eval.tasks.jsonl")
    right = min(N, sum(r["correct"] for r in preds))
    wrong = min(N, sum(not r["correct"] for r in preds))
    by = {}
    for r in tasks:
        by.setdefault(r["task"].split(":")[0], []).append(r)
    caption_high = (len(by["caption"]) + 1) // 2  # captions are neither right nor wrong: neutral, by CIDEr half
    neutral = min(N, caption_high) + min(N, len(by["caption"]) - caption_high)
    right += min(N, sum(r["read_as"] == r["label"] for r in by["pope"]))
    wrong += min(N, sum(r["read_as"] != r["label"] for r in by["pope"]))
    for kind in ("choice", "mystery"):
        right += min(N, sum(r["correct"] for r in by[kind]))
        wrong += min(N, sum(not r["correct"] for r in by[kind]))
    assert html.count('<div class="example right">') == right == 6
    assert html.count('<div class="example wrong">') == wrong == 6
    assert html.count('<div class="example neutral">') == neutral == 3
    md = report["md"]
    assert md.count("| ✅ ") == right and md.count("| ❌ ") == wrong
    # the best caption first among the upper half, the worst among the lower
    assert "CIDEr 1.500" in html and "CIDEr 0.200" in html and "rotation 1" in html


def test_images_embedded_no_external_links(report):
    html = report["html"]
    assert 'src="/' not in html and "http" not in html and "href=" not in html and "<script" not in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for s in sources:
        _is_png(base64.b64decode(s.split(",", 1)[1]))
    thumbs = re.findall(r'<div class="thumb"><img src="data:image/png;base64,([^"]+)"', html)
    sizes = {_is_png(base64.b64decode(t)) for t in thumbs}
    assert sizes == {(128, 64), (40, 60), (64, 64)}  # shrunk to fit 128 px, aspect kept; a small one kept as it is
    root = report["root"]
    assert f"image not found: {root / 'img' / 'gone.png'}" in html
    assert f"image cannot be read: {root / 'img' / 'broken.png'}" in html


def test_markdown_links_are_relative_files(report):
    out, md = report["out"], report["md"]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert any(link.startswith("figures/") for link in links) and any(link.startswith("examples/") for link in links)
    for link in links:
        assert not Path(link).is_absolute() and "://" not in link
        _is_png((out / link).read_bytes())
    # every written PNG is used by the markdown (no stray files) and the same image is stored once
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == sorted(set(links))
    thumbs = sorted(p.name for p in (out / "examples").glob("*.png"))
    assert thumbs == ["image-0001.png", "image-0002.png", "image-0003.png"]  # wide, small, relative; not the others


def test_loss_curve_png(report):
    loss = report["out"] / "figures" / "loss.png"
    width, height = _is_png(loss.read_bytes())
    assert width > 300 and height > 200
    assert "3 logged steps; loss 2.430 at step 10, 0.210 at step 30." in report["html"]
    assert "held-out loss 0.500 at step 20 (measured 1x)." in report["html"]


def test_text_is_escaped(report):
    html, md = report["html"], report["md"]
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt; | pipe" in html
    assert r"\<b\>bold\</b\> \| pipe" in md and "<b>bold" not in md


def test_same_inputs_same_report_and_replaces_old_report(report, tmp_path, monkeypatch):
    monkeypatch.chdir(report["root"])
    out = tmp_path / "again"
    write_report(report["run"], out, examples=N)
    assert (out / "index.html").read_text() == report["html"]  # picks and charts are deterministic
    (out / "stale.txt").write_text("from an older report")
    write_report(report["run"], out, examples=0)
    assert not (out / "stale.txt").exists()
    html = (out / "index.html").read_text()
    assert 'class="example' not in html and not (out / "examples").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_report(report, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(VlgraftError, match="refusing to replace .*mine.*not a vlgraft report"):
        write_report(report["run"], mine)
    (mine / "index.html").write_text("<html>my own page</html>")
    with pytest.raises(VlgraftError, match="not a vlgraft report"):
        write_report(report["run"], mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(VlgraftError, match="--examples"):
        write_report(report["run"], tmp_path / "x", examples=-1)


def test_spread_is_even_and_deterministic():
    assert spread(list(range(10)), 3) == [0, 3, 6]
    assert spread(list(range(3)), 8) == [0, 1, 2]
    assert spread(list(range(5)), 0) == []


def test_corrupt_jsonl_line_names_file_and_line(report, tmp_path):
    run = tmp_path / "bad"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps(VQA))
    (run / "eval.predictions.jsonl").write_text('{"id": "a", "correct": true}\n{"id": "b", "corr\n')
    with pytest.raises(DataError, match=r"eval\.predictions\.jsonl: line 2 is not valid JSON"):
        write_report(run)
    (run / "eval.predictions.jsonl").write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"eval\.predictions\.jsonl: line 2 must be a JSON object"):
        write_report(run)
    (run / "eval.predictions.jsonl").unlink()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n\n{oops}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl: line 3 is not valid JSON"):
        write_report(run)
    assert not (run / "report").exists()


def test_nothing_to_report_is_a_clear_error(tmp_path):
    run = tmp_path / "empty-run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    with pytest.raises(DataError, match=r"empty-run has neither eval\.json nor metrics\.jsonl.*`vlgraft eval .*"
                                        r"empty-run` first") as e:
        write_report(run)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="run folder not found"):
        write_report(tmp_path / "nope")


def test_metrics_only_and_other_eval_file(report, tmp_path, monkeypatch):
    monkeypatch.chdir(report["root"])
    run = tmp_path / "train-only"
    run.mkdir()
    (run / "metrics.jsonl").write_text((report["run"] / "metrics.jsonl").read_text())
    write_report(run)
    html = (run / "report" / "index.html").read_text()
    assert "Loss curve" in html and "VQA" not in html and "no recipe.yaml" in html
    # --eval FILE: its rows come from FILE's stem, not eval.*
    other = tmp_path / "results" / "limit10.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"data": "easyvqa:test", "n": 2, "accuracy": 0.5, "f1": 0.5}))
    _jsonl(other.with_suffix(".predictions.jsonl"), [
        {"id": "a", "answer": "x", "prediction": "x", "correct": True},
        {"id": "b", "answer": "x", "prediction": "y", "correct": False}])
    write_report(run, tmp_path / "r2", eval_file=other)
    html = _cells((tmp_path / "r2" / "index.html").read_text())
    assert "<td>50.00</td>" not in html  # no by_type block: no table by answer type
    assert "exact match</td><td>50.00%" in html
    assert html.count('class="example right"') == 1 and html.count('class="example wrong"') == 1
    with pytest.raises(DataError, match="eval result not found"):
        write_report(run, tmp_path / "r3", eval_file=tmp_path / "missing.json")


def test_cli_register_and_run(report, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(report["root"])
    parser = argparse.ArgumentParser(prog="vlgraft")
    register(parser.add_subparsers(dest="cmd", required=True))
    out = tmp_path / "cli-report"
    args = parser.parse_args(["report", str(report["run"]), "--out", str(out), "--examples", "1"])
    args.func(args)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(out / "index.html"), str(out / "report.md"), str(out / "examples"), str(out / "figures")]
    assert (out / "index.html").read_text().count('class="example right"') == 4  # one per judged grid
    assert (out / "index.html").read_text().count('class="example neutral"') == 2  # a caption per CIDEr half
    args = parser.parse_args(["report", str(report["run"]), "--eval", str(tmp_path / "none.json")])
    with pytest.raises(DataError, match="none.json"):
        args.func(args)


def test_wired_into_vlgraft_cli(report, tmp_path, monkeypatch, capsys):
    from vlgraft.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "report" not in sub.choices:
        pytest.skip("vlgraft.cli does not register `report` yet")
    from vlgraft.cli import main

    monkeypatch.chdir(report["root"])
    main(["report", str(report["run"]), "--out", str(tmp_path / "main-report")])
    assert (tmp_path / "main-report" / "index.html").is_file()


def test_odd_blocks_do_not_break_the_page(tmp_path):
    """Values of unexpected types, blocks of the wrong shape, an older result without the newer keys: the
    page shows what is there; a recipe that is not YAML is an error naming its line."""
    run = tmp_path / "odd"
    run.mkdir()
    odd = {"data": {"source": "easyvqa:test"}, "n": "many", "accuracy": None, "f1": 0.5,
           "by_type": {"all": {"n": 2, "correct": 1, "accuracy": 0.5, "f1": 0.5}, "shape": "oops"},
           "tasks": {"pope:x": {"random": "bad", "popular": {"accuracy": 0.5}}, "caption:y": [1, 2],
                     "choice:z": {"scienceqa": {"accuracy": {"NAT": None}}}, "bare": 3},
           "text_ability": {"before": {}, "after": {"ppl": 2.0}, "change": {}}}
    (run / "eval.json").write_text(json.dumps(odd))
    _jsonl(run / "eval.tasks.jsonl", [{"task": "pope:x", "prediction": 3, "label": "yes"}, {"prediction": "a"}])
    _jsonl(run / "eval.text.jsonl", [{"id": "q", "before": None}])
    write_report(run)
    html = _cells((run / "report" / "index.html").read_text())
    assert "<td>all</td><td>2</td><td>1</td><td>50.00</td><td>50.00</td></tr>" in html
    assert "<td>popular</td><td>50.00</td><td>—</td>" in html and "Task: caption:y" in html
    assert "Task: bare" in html and "Examples: unnamed task" in html
    (run / "recipe.yaml").write_text("name: [unclosed\nvision: x\n")
    with pytest.raises(DataError, match=r"recipe\.yaml: not valid YAML at line \d"):
        write_report(run)
