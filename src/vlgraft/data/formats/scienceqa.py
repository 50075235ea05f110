"""ScienceQA (``problems.json`` from the ScienceQA release) in the canonical format.

Spec: ``scienceqa:PATH/problems.json`` (all splits) or ``scienceqa:PATH/problems.json#train``
(``train``, ``val`` or ``test``). Images are ``<root>/images/<split>/<qid>/<image>``, where
``root`` is ``image_root`` or, by default, the folder of ``problems.json``.

``problems.json`` maps a question id to ``{question, choices, answer (index), hint, image (file
name or null), subject, grade, category, split, lecture, solution, ...}``. Each problem becomes one
record, id ``scienceqa-{qid}``::

    user:      [<image>\\n] [Context: {hint}\\n] Question: {question}\\nOptions: (A) x (B) y ...\\n
               Answer with the option's letter.
    assistant: the letter of the answer

``meta`` holds ``subject``, ``grade``, ``category``, ``split``, ``answer`` (the index),
``choices`` and ``hint`` (the text context; "" when none). Problems without an image are text-only
records. The document is parsed whole.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlgraft.config import FormatOptions
from vlgraft.data.formats.common import check_placeholders, existing_file, path_and_split
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import DataError
from vlgraft.files import read_json
from vlgraft.options import option
from vlgraft.registry import DATASET

SPLITS = ("train", "val", "test")
ANSWER_PROMPT = "Answer with the option's letter."
LETTERS = string.ascii_uppercase


def options_text(choices: list[str]) -> str:
    """The options as the prompt lists them: ``(A) x (B) y ...``."""
    return " ".join(f"({LETTERS[k]}) {c}" for k, c in enumerate(choices))


def prompt(question: str, choices: list[str], hint: str | None = None, image: bool = False) -> str:
    options = options_text(choices)
    return ((f"{IMAGE_PLACEHOLDER}\n" if image else "") + (f"Context: {hint}\n" if hint else "")
            + f"Question: {question}\nOptions: {options}\n{ANSWER_PROMPT}")


def _record(qid: str, prob: object, path: Path, root: Path, split: str | None) -> Record | None:
    """The record of one problem, or None when it belongs to another split than ``split``."""
    where = f"{path}: problem {qid!r}"
    if not isinstance(prob, dict):
        raise DataError(f"{where}: a problem must be an object")
    psplit = prob.get("split")
    if psplit not in SPLITS:
        raise DataError(f"{where}: unknown split {psplit!r} (expected one of {', '.join(SPLITS)})")
    if split is not None and psplit != split:
        return None
    question, choices, answer = prob.get("question"), prob.get("choices"), prob.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: 'question' must be a non-empty string")
    if (not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS)
            or not all(isinstance(c, str) for c in choices)):
        raise DataError(f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} strings")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise DataError(f"{where}: 'answer' must be a choice index in 0..{len(choices) - 1}, not {answer!r}")
    hint, image_name = prob.get("hint"), prob.get("image")
    if hint is not None and not isinstance(hint, str):
        raise DataError(f"{where}: 'hint' must be a string or null")
    image = None
    if image_name:
        if not isinstance(image_name, str):
            raise DataError(f"{where}: 'image' must be a file name or null")
        image = root / "images" / psplit / qid / image_name
        if not image.is_file():
            raise DataError(f"{where}: image file not found: {image}")
    meta = {k: prob.get(k) for k in ("subject", "grade", "category")}
    meta.update(split=psplit, answer=answer, choices=choices, hint=hint.strip() if hint else "")
    turns = [("user", prompt(question, choices, hint.strip() if hint else None, image is not None)),
             ("assistant", LETTERS[answer])]
    check_placeholders(turns, image is not None, where)
    return Record(f"scienceqa-{qid}", turns, images=[str(image)] if image else [], meta=meta, source=where)


@dataclass
class ScienceQAOptions(FormatOptions):
    path: str = option(help="problems.json of the ScienceQA release")
    split: str | None = option(None, "only this split (null: all)", choices=SPLITS)
    image_root: str | None = option(None, "the folder holding images/<split>/<qid>/ (default: problems.json's)")
    from_arg = staticmethod(path_and_split)


@DATASET.register("scienceqa", options=ScienceQAOptions)
def scienceqa(o: ScienceQAOptions) -> Iterator[Record]:
    """One record per problem of the chosen split (see the module docstring)."""
    p, split, image_root = existing_file(o.path, "ScienceQA problems file"), o.split, o.image_root
    problems = read_json(p)
    if not isinstance(problems, dict):
        raise DataError(f"{p}: expected an object mapping question ids to problems")
    root = Path(image_root) if image_root else p.parent
    for qid, prob in problems.items():
        rec = _record(qid, prob, p, root, split or None)
        if rec is not None:
            yield rec
