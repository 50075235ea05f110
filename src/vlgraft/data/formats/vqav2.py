"""VQA v2 (visualqa.org: questions + annotations JSON, COCO images) in the canonical format.

Spec: ``vqav2:PATH/v2_OpenEnded_mscoco_val2014_questions.json`` (the questions file, which every
split has). The official layout::

    PATH/v2_OpenEnded_mscoco_val2014_questions.json   {"data_subtype": "val2014", "questions": [
                                                         {"image_id", "question", "question_id"}, ...]}
    PATH/v2_mscoco_val2014_annotations.json           {"annotations": [{"question_id", "image_id",
                                                         "question_type", "answer_type",
                                                         "multiple_choice_answer",
                                                         "answers": [{"answer", "answer_confidence",
                                                                      "answer_id"}, ... 10]}, ...]}
    PATH/val2014/COCO_val2014_000000391895.jpg

The annotations file (option ``annotations``) defaults to the official name beside the questions
file (``v2_OpenEnded_mscoco_X_questions.json`` -> ``v2_mscoco_X_annotations.json``); images are
``<image_root>/<image_pattern>``, ``image_root`` defaulting to ``<questions folder>/<data_subtype>``
and ``image_pattern`` to ``COCO_{subtype}_{image_id:012d}.jpg``.

All questions about one image become one record (in question_id order, so that they share the
image's prefix; ``data.turns: independent`` asks each from the image alone), id
``vqav2-{image_id}``, records in the order of each image's first question in the questions file::

    user:      <image>\\n{question}\\n{prompt}        (later questions: {question}\\n{prompt})
    assistant: the multiple_choice_answer

``prompt`` defaults to LLaVA-1.5's VQAv2 instruction. ``meta`` holds, one entry per question,
``question_ids``, ``question_types``, ``answer_types`` (the eval groups by it) and ``references``
(the human answers' strings, in answer_id order, for VQA accuracy), and ``image_id``. Every
question must have exactly one annotation and vice versa, with the same image_id. Both documents
are parsed and checked whole; each record's image is checked when the record is built.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlgraft.config import FormatOptions
from vlgraft.data.formats.common import check_placeholders, existing_file
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import DataError
from vlgraft.files import read_json
from vlgraft.options import option
from vlgraft.registry import DATASET

VQA_PROMPT = "Answer the question using a single word or phrase."
IMAGE_PATTERN = "COCO_{subtype}_{image_id:012d}.jpg"
_QUESTIONS_NAME = re.compile(r"v2_OpenEnded_mscoco_(.+)_questions\.json")


def annotations_path(questions: Path) -> Path:
    """The official annotations file beside a questions file: ``v2_OpenEnded_mscoco_X_questions.json``
    -> ``v2_mscoco_X_annotations.json``; a name outside that pattern is an error asking for the option."""
    m = _QUESTIONS_NAME.fullmatch(questions.name)
    if m is None:
        raise DataError(f"{questions}: cannot derive the annotations file from this name (expected "
                        "v2_OpenEnded_mscoco_<subtype>_questions.json); set the option 'annotations'")
    return questions.with_name(f"v2_mscoco_{m.group(1)}_annotations.json")


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entries(data: object, path: Path, key: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: expected a VQA v2 object with a '{key}' list")
    return data[key]


def _by_question_id(data: object, path: Path, key: str, noun: str, duplicate: str):
    """``(question_id, entry, where)`` for each entry of ``data[key]``: an object with an integer
    ``question_id`` not seen before (``duplicate``: the error's words for a second one)."""
    seen: set[int] = set()
    for i, e in enumerate(_entries(data, path, key)):
        qid = e.get("question_id") if isinstance(e, dict) else None
        where = f"{path}: {noun} {qid!r} (#{i})" if qid is not None else f"{path}: {noun.split()[0]} #{i}"
        if not isinstance(e, dict):
            raise DataError(f"{where}: {'an' if noun[0] in 'aeiou' else 'a'} {noun.split()[0]} must be an object")
        if not _int(qid):
            raise DataError(f"{where}: 'question_id' must be an integer")
        if qid in seen:
            raise DataError(f"{where}: {duplicate} {qid}")
        seen.add(qid)
        yield qid, e, where


def _questions(data: object, path: Path) -> dict[int, dict]:
    """``question_id -> question entry`` in file order, checked."""
    out: dict[int, dict] = {}
    for qid, q, where in _by_question_id(data, path, "questions", "question", "duplicate question_id"):
        if not _int(q.get("image_id")):
            raise DataError(f"{where}: 'image_id' must be an integer")
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            raise DataError(f"{where}: 'question' must be a non-empty string")
        out[qid] = q
    return out


def _references(answers: object, where: str) -> list[str]:
    """The human answers' strings, in answer_id order (file order where an answer has no answer_id)."""
    if not isinstance(answers, list) or not answers:
        raise DataError(f"{where}: 'answers' must be a non-empty list")
    for j, a in enumerate(answers):
        if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
            raise DataError(f"{where}: answers #{j} must be an object with a string 'answer'")
    if all(_int(a.get("answer_id")) for a in answers):
        answers = sorted(answers, key=lambda a: a["answer_id"])
    return [a["answer"] for a in answers]


def _annotations(data: object, path: Path, questions: dict[int, dict], qpath: Path) -> dict[int, dict]:
    """``question_id -> {answer, answer_type, question_type, references}``, one per question, checked."""
    out: dict[int, dict] = {}
    for qid, ann, where in _by_question_id(data, path, "annotations", "annotation of question",
                                           "a second annotation for question"):
        if qid not in questions:
            raise DataError(f"{where}: question {qid} is not in the questions file {qpath}")
        image_id = questions[qid]["image_id"]
        if ann.get("image_id") != image_id:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} differs from the question's "
                            f"{image_id!r} in {qpath}")
        answer = ann.get("multiple_choice_answer")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{where}: 'multiple_choice_answer' must be a non-empty string")
        for key in ("answer_type", "question_type"):
            if not isinstance(ann.get(key), str):
                raise DataError(f"{where}: '{key}' must be a string")
        out[qid] = {"answer": answer.strip(), "answer_type": ann["answer_type"],
                    "question_type": ann["question_type"], "references": _references(ann.get("answers"), where)}
    missing = next((qid for qid in questions if qid not in out), None)
    if missing is not None:
        raise DataError(f"{path}: no annotation for question {missing} (image {questions[missing]['image_id']}) "
                        f"of {qpath}")
    return out


def _check_pattern(pattern: str) -> None:
    """The pattern may name only ``subtype`` and ``image_id`` and must format an integer id."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
        if not names <= {"subtype", "image_id"}:
            raise DataError(f"option 'image_pattern' {pattern!r}: only {{subtype}} and {{image_id}} can be used, "
                            f"not {', '.join(sorted(names - {'subtype', 'image_id'}))}")
        pattern.format(subtype="x", image_id=0)
    except (ValueError, IndexError, KeyError) as e:
        raise DataError(f"option 'image_pattern' {pattern!r}: {e}") from None


@dataclass
class VQAv2Options(FormatOptions):
    path: str = option(help="the questions file (v2_OpenEnded_mscoco_val2014_questions.json, ...)")
    annotations: str | None = option(None, "the annotations file (default: the official name beside the "
                                     "questions file, v2_mscoco_<subtype>_annotations.json)")
    image_root: str | None = option(None, "folder of the images (default: <questions folder>/<data_subtype>)")
    image_pattern: str = option(IMAGE_PATTERN, "an image's file name, formatted with {subtype} (the questions "
                                "file's data_subtype) and {image_id}")
    prompt: str = option(VQA_PROMPT, "the instruction appended on a new line after every question")


@DATASET.register("vqav2", options=VQAv2Options)
def vqav2(o: VQAv2Options) -> Iterator[Record]:
    """One record per image holding its questions (see the module docstring)."""
    qpath = existing_file(o.path, "VQA v2 questions file")
    apath = Path(o.annotations) if o.annotations else annotations_path(qpath)
    if not apath.is_file():
        raise DataError(f"VQA v2 annotations file not found: {apath} (for {qpath}; set the option 'annotations' "
                        "to its path)")
    _check_pattern(o.image_pattern)
    qdata = read_json(qpath)
    questions = _questions(qdata, qpath)
    answers = _annotations(read_json(apath), apath, questions, qpath)
    subtype = qdata.get("data_subtype")
    uses_subtype = "subtype" in {f for _, f, _, _ in string.Formatter().parse(o.image_pattern)}
    if (not o.image_root or uses_subtype) and (not isinstance(subtype, str) or not subtype.strip()):
        raise DataError(f"{qpath}: no 'data_subtype' (e.g. 'val2014') to name the image folder and files; "
                        "set the options 'image_root' and 'image_pattern'")
    root = Path(o.image_root) if o.image_root else qpath.parent / subtype
    by_image: dict[int, list[int]] = {}
    for qid, q in questions.items():
        by_image.setdefault(q["image_id"], []).append(qid)
    suffix = f"\n{o.prompt}" if o.prompt else ""
    for image_id, qids in by_image.items():
        qids = sorted(qids)
        where = f"{qpath}: question {qids[0]} (image {image_id})"
        image = root / o.image_pattern.format(subtype=subtype, image_id=image_id)
        if not image.is_file():
            raise DataError(f"{where}: image file not found: {image}")
        turns = []
        for k, qid in enumerate(qids):
            text = questions[qid]["question"].strip() + suffix
            turns += [("user", f"{IMAGE_PLACEHOLDER}\n{text}" if k == 0 else text),
                      ("assistant", answers[qid]["answer"])]
        check_placeholders(turns, True, where)
        meta = {"image_id": image_id, "question_ids": qids,
                "question_types": [answers[q]["question_type"] for q in qids],
                "answer_types": [answers[q]["answer_type"] for q in qids],
                "references": [answers[q]["references"] for q in qids]}
        yield Record(f"vqav2-{image_id}", turns, images=[str(image)], meta=meta, source=where)
