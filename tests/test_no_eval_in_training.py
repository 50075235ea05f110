"""No item of the bundled text evaluation set, nor a near duplicate of one, is in any training source the
project ships: every recipe's training data (``data.train`` and every ``data.mixture`` source), the emoji
sources, the self-distilled ``data/text_distill.jsonl`` and the seed instructions ``vlgraft curate-text``
starts from. Near duplicates are ``vlgraft.data.dedup``'s rules (docs/CURATE.md).

A recipe source under ``data/curated/`` is built by ``vlgraft curate`` (the recipe says how) and is not in a
fresh clone: it is checked when present, and ``vlgraft curate`` drops every output that holds an evaluation
item (``tests/test_curate.py::test_outputs_holding_a_text_eval_item_are_dropped``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlgraft.config import load_recipe
from vlgraft.curate.text_seeds import SEED_INSTRUCTIONS
from vlgraft.data.records import IMAGE_PLACEHOLDER
from vlgraft.data.sources import load_records
from vlgraft.eval.text import load_text_set

ROOT = Path(__file__).resolve().parents[1]
DISTILLED = ROOT / "data" / "text_distill.jsonl"
EXTRA_SOURCES = ["emoji:text", "emoji:qa", "emoji:captions", str(DISTILLED)]


def recipe_sources() -> set[str]:
    sources = set()
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        r = load_recipe(str(path))
        if r.data.mixture:
            sources |= {str(m.train) for m in r.data.mixture}
        else:
            sources.add(str(r.data.train or "easyvqa:train"))
    return sources


def training_texts(source: str) -> dict[str, str]:
    """Every distinct turn text of a source (image placeholders removed) -> the first record holding it."""
    texts: dict[str, str] = {}
    for rec in load_records(source):
        for _, t in rec.turns:
            texts.setdefault(t.replace(IMAGE_PLACEHOLDER, " ").strip(), rec.id)
    return texts


def overlaps(index, source: str) -> list[str]:
    return [f"{source}: record {rid!r}: {index.find(t).describe()}"
            for t, rid in training_texts(source).items() if index.find(t) is not None]


@pytest.fixture(scope="module")
def eval_index():
    return load_text_set().near_duplicate_index()


def test_the_sources_checked_are_every_recipe_source_and_the_text_data():
    sources = recipe_sources()
    assert {"easyvqa:train", "emoji:text"} <= sources, sources  # the recipes' image and text-only data
    assert DISTILLED.is_file(), f"{DISTILLED} is missing: it is built by `vlgraft curate-text` (docs/CURATE.md)"


def built_by_curate(source: str) -> bool:
    return Path(source).parts[:2] == ("data", "curated")


def test_every_recipe_source_is_shipped_or_built_by_curate():
    for source in recipe_sources():
        if built_by_curate(source):
            users = [p.name for p in (ROOT / "recipes").glob("*.yaml") if source in p.read_text()]
            assert users and all("vlgraft curate " in (ROOT / "recipes" / u).read_text() for u in users), users
        else:
            assert load_records(source, limit=1), source


SHIPPED = sorted({s for s in recipe_sources() if not built_by_curate(s)} | set(EXTRA_SOURCES))
BUILT = sorted(s for s in recipe_sources() if built_by_curate(s) and (ROOT / s).is_file())


@pytest.mark.parametrize("source", SHIPPED + BUILT)
def test_no_eval_item_in_training_source(eval_index, source):
    assert overlaps(eval_index, source) == []


def test_no_eval_item_among_the_seed_instructions(eval_index):
    assert [(s, eval_index.find(s).describe()) for s in SEED_INSTRUCTIONS if eval_index.find(s)] == []


def test_the_check_catches_a_planted_eval_item(eval_index, tmp_path):
    """The same check on a training file with one evaluation question, reworded, and one response planted."""
    ts = load_text_set()
    q, ppl = ts.qa[7]["question"], ts.ppl[3]
    planted = tmp_path / "planted.jsonl"
    rows = [{"id": "clean", "conversations": [{"from": "human", "value": "Which bird lays the largest eggs?"},
                                              {"from": "gpt", "value": "The ostrich."}]},
            {"id": "reworded", "conversations": [{"from": "human", "value": q.upper().rstrip("?") + " ?!"},
                                                 {"from": "gpt", "value": ts.qa[7]["answers"][0]}]},
            {"id": "response", "conversations": [{"from": "human", "value": "Say something."},
                                                 {"from": "gpt", "value": ppl.turns[1][1]}]}]
    planted.write_text("".join(json.dumps(r) + "\n" for r in rows))
    found = overlaps(eval_index, str(planted))
    assert len(found) == 2 and "'reworded'" in found[0] + found[1] and "'response'" in found[0] + found[1], found
