"""``vlgraft eval --task ...``: several benchmarks in one call on one loaded model, one eval.json with a
block per task, and each block equal to the metric recomputed independently from the task's rows."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # trains, then evaluates

SHAPES = ["square", "circle", "triangle", "star"]


def _coco_files(tiny_data, tmp_path):
    """A COCO captions file (two captions per image) and an instances file (one or two objects per
    image) over the tiny data's 12 images."""
    (tmp_path / "img").symlink_to(tiny_data.parent / "img")  # images beside the files, as COCO's layout
    images = [{"id": i, "file_name": f"img/{i}.png"} for i in range(12)]
    captions = {"images": images, "annotations": [
        {"id": 100 * i + k, "image_id": i, "caption": c}
        for i in range(12) for k, c in enumerate([f"A {SHAPES[i % 4]}.", f"A coloured {SHAPES[i % 4]}."])]}
    instances = {"images": images, "categories": [{"id": k, "name": s} for k, s in enumerate(SHAPES)],
                 "annotations": [{"id": 1000 + i, "image_id": i, "category_id": i % 4} for i in range(12)]
                 + [{"id": 2000 + i, "image_id": i, "category_id": (i + 1) % 4} for i in range(0, 12, 3)]}
    cap, ins = tmp_path / "captions.json", tmp_path / "instances.json"
    cap.write_text(json.dumps(captions))
    ins.write_text(json.dumps(instances))
    return cap, ins


def test_several_tasks_in_one_call(tiny_recipe, tiny_data, tmp_path, capsys):
    from vlgraft.cli import main
    from vlgraft.eval.metrics.captioning import caption_metrics
    from vlgraft.eval.metrics.pope import pope_metrics
    from vlgraft.training.loop import train

    run = train(tiny_recipe(max_steps=2), source="test")
    cap, ins = _coco_files(tiny_data, tmp_path)
    out = tmp_path / "eval.json"
    main(["eval", str(run), "--out", str(out), "--task", "vqa", "--task", f"caption:coco:{cap}",
          "--task", f"pope:coco={ins}", "--task", f"pope:coco={ins}:popular", "-o", "eval.caption_max_new_tokens=6"])
    result = json.loads(out.read_text())
    assert result["n"] == 28 and "accuracy" in result  # the vqa task: data.eval, as before
    tasks = result["tasks"]
    assert set(tasks) == {f"caption:coco:{cap}", f"pope:coco={ins}", f"pope:coco={ins}:popular"}
    rows = [json.loads(line) for line in out.with_suffix(".tasks.jsonl").read_text().splitlines()]

    cap_block, cap_rows = tasks[f"caption:coco:{cap}"], [r for r in rows if r["task"].startswith("caption:")]
    assert cap_block["images"] == 12 and cap_block["captions"] == 24 and len(cap_rows) == 12
    again = caption_metrics({r["image"]: [r["prediction"]] for r in cap_rows},
                            {r["image"]: r["references"] for r in cap_rows})
    for k in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"):
        assert cap_block[k] == pytest.approx(again[k])
    assert all(b["seconds"] > 0 for b in tasks.values())

    pope = tasks[f"pope:coco={ins}"]
    assert set(pope) >= {"random", "popular", "adversarial"} and pope["images"] == 12
    for s in ("random", "popular", "adversarial"):
        mine = [r for r in rows if r["task"] == f"pope:coco={ins}" and r["setting"] == s]
        assert len(mine) == pope[s]["n"] == 2 * 16  # a yes and a no question per annotated object
        assert pope_metrics([r["prediction"] for r in mine], [r["label"] for r in mine]) == pope[s]
    assert set(tasks[f"pope:coco={ins}:popular"]) == {"objects", "images", "popular", "seconds"}
    assert tasks[f"pope:coco={ins}:popular"]["popular"] == pope["popular"]  # seeded: the same questions
    assert "CIDEr" in capsys.readouterr().out


def test_bad_task_specs_are_one_line_errors(tiny_recipe, capsys):
    from vlgraft.cli import main
    from vlgraft.training.loop import train

    run = train(tiny_recipe(max_steps=1), source="test")
    capsys.readouterr()  # the training's own output
    for spec, message in [("ocr:x", "is not a task"), ("caption", "needs its data"),
                          ("pope:emoji-test:sideways", "POPE setting 'sideways'")]:
        with pytest.raises(SystemExit) as e:
            main(["eval", str(run), "--task", spec])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_choice_task_on_scienceqa_records(tiny_recipe, tiny_data, tmp_path):
    import shutil

    from vlgraft.cli import main
    from vlgraft.data.sources import load_records
    from vlgraft.eval.metrics.choice import extract_choice, scienceqa_accuracy
    from vlgraft.training.loop import train

    problems = {}
    for i in range(6):  # three with an image, three text-only; all three subjects, both grade bands
        image = "image.png" if i % 2 == 0 else None
        if image:
            (tmp_path / "images" / "test" / str(i)).mkdir(parents=True)
            shutil.copy(tiny_data.parent / "img" / f"{i}.png", tmp_path / "images" / "test" / str(i) / image)
        problems[str(i)] = {"question": "Which colour is it?", "choices": ["red", "green", "blue"], "answer": i % 3,
                            "hint": "Look closely." if i < 3 else "", "image": image, "split": "test",
                            "subject": ["natural science", "social science", "language science"][i % 3],
                            "grade": f"grade{2 + 2 * i}", "category": "Colors"}
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(problems))
    run = train(tiny_recipe(max_steps=2), source="test")
    out = tmp_path / "eval.json"
    main(["eval", str(run), "--out", str(out), "--task", f"choice:scienceqa:{path}"])
    block = json.loads(out.read_text())["tasks"][f"choice:scienceqa:{path}"]
    rows = [json.loads(line) for line in out.with_suffix(".tasks.jsonl").read_text().splitlines()]
    records = load_records(f"scienceqa:{path}")
    assert block["n"] == len(rows) == 6
    letters = [extract_choice(r["prediction"], ["red", "green", "blue"]) for r in rows]
    assert [r["choice"] for r in rows] == letters
    correct = [lt == "ABC"[rec.meta["answer"]] for lt, rec in zip(letters, records)]
    assert [r["correct"] for r in rows] == correct and block["accuracy"] == sum(correct) / 6
    assert block["unanswered"] == letters.count(None)
    assert block["scienceqa"] == scienceqa_accuracy(list(zip(records, correct)))
    assert block["scienceqa"]["n"]["IMG"] == 3 and block["scienceqa"]["n"]["TXT"] == 3
