"""The ``vqav2`` format: VQA v2 questions + annotations -> one record per image; every check's error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlgraft.config import FormatOptions, options_for
from vlgraft.data.formats.vqav2 import VQA_PROMPT
from vlgraft.data.records import IMAGE_PLACEHOLDER
from vlgraft.data.sources import load_records
from vlgraft.errors import DataError

QFILE, AFILE = "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"
# (question_id, image_id, question, answer, answer_type, question_type); question 1002 is listed before 1001
QUESTIONS = [
    (1002, 10, "What color is the cat?", "black", "other", "what color is the"),
    (1001, 10, "Is there a cat?", "yes", "yes/no", "is there a"),
    (2001, 20, "How many dogs?", "2", "number", "how many"),
    (1003, 10, "Is it indoors?", "no", "yes/no", "is it"),
    (3001, 30, "What is on the table?", "cup", "other", "what is on the"),
]


def _refs(qid: int) -> list[str]:
    return [f"ans{qid}-{k}" for k in range(1, 11)]


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path, format="PNG")


def _vqa(tmp_path: Path, questions=None, annotations=None, images=True, qname=QFILE, aname=AFILE) -> Path:
    """A questions + annotations pair (answers listed in reverse answer_id order) and its images."""
    qs = [{"image_id": img, "question": q, "question_id": qid} for qid, img, q, *_ in QUESTIONS]
    anns = [{"question_id": qid, "image_id": img, "question_type": qt, "answer_type": at,
             "multiple_choice_answer": a,
             "answers": [{"answer": r, "answer_confidence": "yes", "answer_id": k}
                         for k, r in reversed(list(enumerate(_refs(qid), 1)))]}
            for qid, img, _, a, at, qt in QUESTIONS]
    head = {"info": {}, "data_type": "mscoco", "data_subtype": "val2014", "license": {}}
    qpath = tmp_path / qname
    qpath.write_text(json.dumps({**head, "task_type": "Open-Ended",
                                 "questions": qs if questions is None else questions(qs)}))
    (tmp_path / aname).write_text(json.dumps({**head, "annotations": anns if annotations is None else
                                              annotations(anns)}))
    if images:
        for img in (10, 20, 30):
            _image(tmp_path / "val2014" / f"COCO_val2014_{img:012d}.jpg")
    return qpath


def _raises(spec, *needles: str) -> str:
    with pytest.raises(DataError) as e:
        load_records(spec)
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_records(tmp_path):
    recs = load_records(f"vqav2:{_vqa(tmp_path)}")  # annotations: the derived default beside the questions
    assert [r.id for r in recs] == ["vqav2-10", "vqav2-20", "vqav2-30"]  # order of first appearance
    r = recs[0]
    assert r.turns == [
        ("user", f"{IMAGE_PLACEHOLDER}\nIs there a cat?\n{VQA_PROMPT}"), ("assistant", "yes"),
        ("user", f"What color is the cat?\n{VQA_PROMPT}"), ("assistant", "black"),
        ("user", f"Is it indoors?\n{VQA_PROMPT}"), ("assistant", "no"),
    ]
    assert r.images == [str(tmp_path / "val2014" / "COCO_val2014_000000000010.jpg")]
    assert r.meta == {"image_id": 10, "question_ids": [1001, 1002, 1003],
                      "question_types": ["is there a", "what color is the", "is it"],
                      "answer_types": ["yes/no", "other", "yes/no"],
                      "references": [_refs(1001), _refs(1002), _refs(1003)]}
    assert recs[1].turns == [("user", f"{IMAGE_PLACEHOLDER}\nHow many dogs?\n{VQA_PROMPT}"), ("assistant", "2")]
    assert recs[1].meta["answer_types"] == ["number"] and len(recs[2].meta["references"][0]) == 10
    assert [r.id for r in load_records(f"vqav2:{tmp_path / QFILE}", limit=1)] == ["vqav2-10"]


def test_eval_items_group_by_answer_type(tmp_path):
    from vlgraft.eval.vqa import eval_items

    items = eval_items(load_records(f"vqav2:{_vqa(tmp_path)}"))
    assert [(i["id"], i["answer"], i["type"]) for i in items] == [
        ("vqav2-10#0", "yes", "yes/no"), ("vqav2-10#1", "black", "other"), ("vqav2-10#2", "no", "yes/no"),
        ("vqav2-20#0", "2", "number"), ("vqav2-30#0", "cup", "other")]


def test_options_mapping(tmp_path):
    qpath = _vqa(tmp_path, qname="questions.json", aname="answers.json", images=False)
    for img in (10, 20, 30):
        _image(tmp_path / "imgs" / f"{img}.png")
    opts = options_for(FormatOptions, "vqav2", path=str(qpath), annotations=str(tmp_path / "answers.json"),
                       image_root=str(tmp_path / "imgs"), image_pattern="{image_id}.png", prompt="Answer briefly.")
    recs = load_records(opts)
    assert [r.images for r in recs] == [[str(tmp_path / "imgs" / f"{i}.png")] for i in (10, 20, 30)]
    assert recs[1].turns[0] == ("user", f"{IMAGE_PLACEHOLDER}\nHow many dogs?\nAnswer briefly.")
    # a custom pattern may use the subtype; image_root of load_records applies when the source sets none
    _image(tmp_path / "flat" / "val2014-10.jpg")
    opts = options_for(FormatOptions, "vqav2", path=str(qpath), annotations=str(tmp_path / "answers.json"),
                       image_pattern="{subtype}-{image_id}.jpg")
    assert load_records(opts, image_root=str(tmp_path / "flat"), limit=1)[0].images == [
        str(tmp_path / "flat" / "val2014-10.jpg")]


def test_annotations_file_errors(tmp_path):
    qpath = _vqa(tmp_path, qname="questions.json")
    _raises(f"vqav2:{qpath}", str(qpath), "'annotations'")  # name outside the pattern, no option
    (tmp_path / AFILE).unlink()
    qpath = _vqa(tmp_path)
    (tmp_path / AFILE).unlink()
    _raises(f"vqav2:{qpath}", str(tmp_path / AFILE), "'annotations'")
    opts = options_for(FormatOptions, "vqav2", path=str(qpath), annotations=str(tmp_path / "nope.json"))
    _raises(opts, str(tmp_path / "nope.json"), "'annotations'")
    _raises(f"vqav2:{tmp_path / 'gone.json'}", "gone.json")


def _without(qid):
    return lambda entries: [e for e in entries if e["question_id"] != qid]


def _edit(qid, **fields):
    return lambda entries: [{**e, **fields} if e["question_id"] == qid else e for e in entries]


@pytest.mark.parametrize("annotations, needles", [
    (_without(2001), (AFILE, "no annotation for question 2001")),
    (lambda anns: anns + [anns[2]], (AFILE, "question 2001", "second annotation")),
    (lambda anns: anns + [{**anns[2], "question_id": 9999}], (AFILE, "question 9999", "not in the questions file")),
    (_edit(2001, image_id=30), (AFILE, "question 2001", "image_id 30")),
    (_edit(2001, answers=[]), (AFILE, "question 2001", "'answers'")),
    (_edit(2001, answers="2"), (AFILE, "question 2001", "'answers'")),
    (_edit(2001, answers=[{"answer": 2, "answer_id": 1}]), (AFILE, "question 2001", "string 'answer'")),
    (_edit(2001, answers=["2"]), (AFILE, "question 2001", "string 'answer'")),
    (_edit(2001, multiple_choice_answer=" "), (AFILE, "question 2001", "multiple_choice_answer")),
    (_edit(2001, answer_type=None), (AFILE, "question 2001", "answer_type")),
])
def test_annotation_errors(tmp_path, annotations, needles):
    _raises(f"vqav2:{_vqa(tmp_path, annotations=annotations)}", *needles)


@pytest.mark.parametrize("questions, needles", [
    (lambda qs: qs + [qs[2]], (QFILE, "question 2001", "duplicate")),
    (_edit(2001, question=""), (QFILE, "question 2001", "'question'")),
    (_edit(2001, image_id="20"), (QFILE, "question 2001", "'image_id'")),
    (lambda qs: qs + ["junk"], (QFILE, "question #5", "object")),
    (lambda qs: {"not": "a list"}, (QFILE, "'questions'")),
    (_edit(2001, question=f"{IMAGE_PLACEHOLDER} How many?"), (QFILE, "question 2001", IMAGE_PLACEHOLDER)),
])
def test_question_errors(tmp_path, questions, needles):
    _raises(f"vqav2:{_vqa(tmp_path, questions=questions)}", *needles)


def test_missing_image(tmp_path):
    qpath = _vqa(tmp_path)
    gone = tmp_path / "val2014" / "COCO_val2014_000000000020.jpg"
    gone.unlink()
    _raises(f"vqav2:{qpath}", str(qpath), "question 2001", str(gone))
    assert [r.id for r in load_records(f"vqav2:{qpath}", limit=1)] == ["vqav2-10"]  # checked when built


def test_bad_image_pattern(tmp_path):
    qpath = _vqa(tmp_path)
    opts = options_for(FormatOptions, "vqav2", path=str(qpath), image_pattern="{split}_{image_id}.jpg")
    _raises(opts, "image_pattern", "split")
