"""``vlgraft eval --task ...``: several benchmarks in one call on one loaded model, one eval.json with a
block per task, and each block equal to the metric recomputed independently from the task's rows."""

from __future__ import annotations

import dataclasses
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


COLOURS = ["red", "green", "blue"]


def _problems(tmp_path, tiny_data, shift: int = 0):
    """A ScienceQA problems.json of six colour questions (three with an image, three text-only; all three
    subjects, both grade bands), their options shifted by ``shift`` as CircularEval's pass ``shift``
    shows them (written independently of the task's own rotation)."""
    import shutil

    folder = tmp_path / f"sqa{shift}"
    problems = {}
    for i in range(6):
        image = "image.png" if i % 2 == 0 else None
        if image:
            (folder / "images" / "test" / str(i)).mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_data.parent / "img" / f"{i}.png", folder / "images" / "test" / str(i) / image)
        choices = COLOURS[shift:] + COLOURS[:shift]
        problems[str(i)] = {"question": "Which colour is it?", "choices": choices,
                            "answer": choices.index(COLOURS[i % 3]),
                            "hint": "Look closely." if i < 3 else "", "image": image, "split": "test",
                            "subject": ["natural science", "social science", "language science"][i % 3],
                            "grade": f"grade{2 + 2 * i}", "category": "Colors"}
    folder.mkdir(exist_ok=True)
    path = folder / "problems.json"
    path.write_text(json.dumps(problems))
    return path


@pytest.fixture(scope="module")
def choice_run(tiny_llms, tiny_clip, tiny_data, recipe_dict, tmp_path_factory):
    from vlgraft.config import Recipe, from_dict
    from vlgraft.training.loop import train

    out = tmp_path_factory.mktemp("choice") / "run"
    return train(from_dict(Recipe, recipe_dict(tiny_llms["llama"], tiny_clip, tiny_data, out, max_steps=2)),
                 source="test")


def test_choice_task_on_scienceqa_records(choice_run, tiny_data, tmp_path):
    from vlgraft.cli import main
    from vlgraft.data.sources import load_records
    from vlgraft.eval.metrics.choice import extract_choice, scienceqa_accuracy

    path, run = _problems(tmp_path, tiny_data), choice_run
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


@pytest.mark.parametrize("candidates", ["letter", "option"])
def test_choice_by_likelihood_and_circular(choice_run, tiny_data, tmp_path, candidates):
    """--choice-scoring likelihood --circular: each pass's choice is the argmax of the options' reply
    log-probabilities, recomputed here on problems files written with the options already shifted, and
    a question counts in the circular accuracy only when all its passes are right."""
    from vlgraft.cli import main
    from vlgraft.data.sources import load_records
    from vlgraft.eval.likelihood import reply_logprobs
    from vlgraft.training.checkpoint import load_vlm

    path = _problems(tmp_path, tiny_data)
    out = tmp_path / "eval.json"
    main(["eval", str(choice_run), "--out", str(out), "--task", f"choice:scienceqa:{path}", "--choice-scoring",
          "likelihood", "--circular", "-o", f"eval.choice_candidates={candidates}"])
    block = json.loads(out.read_text())["tasks"][f"choice:scienceqa:{path}"]
    rows = [json.loads(line) for line in out.with_suffix(".tasks.jsonl").read_text().splitlines()]
    assert block["scoring"] == "likelihood" and block["candidates"] == candidates and "unanswered" not in block
    assert len(rows) == block["passes"] == 18 and sorted({r["rotation"] for r in rows}) == [0, 1, 2]
    vlm, _, _ = load_vlm(choice_run)
    right = {}
    for shift in range(3):
        records = load_records(f"scienceqa:{_problems(tmp_path, tiny_data, shift)}")
        mine = [r for r in rows if r["rotation"] == shift]
        assert [r["id"] for r in mine] == [rec.id for rec in records]
        for rec, row in zip(records, mine):
            replies = list("ABC") if candidates == "letter" else rec.meta["choices"]
            asked = [dataclasses.replace(rec, turns=rec.turns[:-1] + [("assistant", c)]) for c in replies]
            want = [lp for lp, _, _ in reply_logprobs(vlm, asked, None, 8, "bf16", show=False)]
            assert row["logprobs"] == pytest.approx(want, abs=2e-2)  # batched differently, in bf16
            assert row["question"] in rec.turns[0][1]  # the rotated options are listed as the loader lists them
            assert row["answer"] == "ABC"[rec.meta["answer"]]
            assert row["choice"] == "ABC"[max(range(3), key=row["logprobs"].__getitem__)]
            right.setdefault(row["id"], []).append(row["correct"])
    assert block["circular_accuracy"] == sum(all(v) for v in right.values()) / 6
    assert block["accuracy"] == sum(r["correct"] for r in rows if r["rotation"] == 0) / 6
    assert ("accuracy_per_token" in block) == (candidates == "option")


def test_circular_needs_the_options_listed(tmp_path):
    from vlgraft.data.records import Record
    from vlgraft.errors import DataError
    from vlgraft.eval.choice_task import _rotated

    rec = Record("q1", [("user", "Which colour? red, green or blue"), ("assistant", "red")],
                 meta={"choices": COLOURS, "answer": 0}, source="file.jsonl line 3")
    with pytest.raises(DataError, match="file.jsonl line 3: circular evaluation rotates the options"):
        _rotated(rec, 1)


def test_vqa_accuracy_on_vqav2_records(choice_run, tiny_data, tmp_path):
    """A VQA v2 questions + annotations pair over the tiny images. A first eval gives the model's
    answers; the annotations are then rewritten so that m = 0..4 (and 10) of each question's 10 humans
    gave that answer (in another case, with a period), and the second eval must score each question
    by the benchmark's rule (m = 0, 1, 2, 3, >= 4 -> 0, 0.3, 0.6, 0.9, 1), per answer type as
    metrics.vqa_score does, with exact match unchanged."""
    import shutil

    from vlgraft.cli import main
    from vlgraft.eval.metrics.vqa_accuracy import vqa_score
    from vlgraft.eval.vqa import normalize

    questions, qids = [], []
    for i in range(6):
        shutil.copy(tiny_data.parent / "img" / f"{i}.png", tmp_path / f"COCO_val2014_{i:012d}.png")
        for k, q in enumerate(["What shape is it?", "Is it big?"]):
            questions.append({"image_id": i, "question": q, "question_id": 10 * i + k})
            qids.append(10 * i + k)
    head = {"data_type": "mscoco", "data_subtype": "val2014"}
    qfile = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    qfile.write_text(json.dumps({**head, "questions": questions}))
    kinds = {q: "other" if q % 2 == 0 else "yes/no" for q in qids}

    def evaluate(humans: dict) -> tuple[dict, list[dict]]:
        anns = [{"question_id": q, "image_id": q // 10, "question_type": "what", "answer_type": kinds[q],
                 "multiple_choice_answer": humans[q][0],
                 "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
                             for n, a in enumerate(humans[q])]} for q in qids]
        (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({**head, "annotations": anns}))
        out = tmp_path / "eval.json"
        main(["eval", str(choice_run), "--out", str(out), "--turns", "independent", "-o",
              f'data.eval={{name: vqav2, path: "{qfile}", image_root: "{tmp_path}", '
              'image_pattern: "COCO_{subtype}_{image_id:012d}.png"}'])
        return (json.loads(out.read_text()),
                [json.loads(line) for line in out.with_suffix(".predictions.jsonl").read_text().splitlines()])

    _, first = evaluate({q: ["blob"] * 10 for q in qids})
    agree = {q: [0, 1, 2, 3, 4, 10][n % 6] for n, q in enumerate(qids)}
    humans = {q: [r["prediction"].upper() + "."] * agree[q] + ["blob"] * (10 - agree[q]) for q, r in zip(qids, first)}
    result, rows = evaluate(humans)
    assert result["n"] == len(rows) == 12 and [r["prediction"] for r in rows] == [r["prediction"] for r in first]
    assert not any(normalize(r["prediction"]) == "blob" for r in rows)  # "blob" stands for the humans who disagree
    assert [r["references"] for r in rows] == [humans[q] for q in qids]
    assert [r["vqa_accuracy"] for r in rows] == pytest.approx([[0, 0.3, 0.6, 0.9, 1, 1][n % 6] for n in range(12)])
    want = vqa_score(dict(zip(qids, (r["prediction"] for r in rows))), humans, kinds)
    assert result["vqa_accuracy"] == pytest.approx(want["accuracy"])
    for kind in ("other", "yes/no"):
        assert result["by_type"][kind]["vqa_accuracy"] == pytest.approx(want["per_answer_type"][kind])
    assert [r["correct"] for r in rows] == [normalize(r["prediction"]) == normalize(r["answer"]) for r in rows]
    assert all(r["image"].endswith(".png") and r["question"].startswith(("What shape", "Is it")) for r in rows)
