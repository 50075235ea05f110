"""Reproducible evaluation: the same ``vlgraft eval`` command, run twice (in fresh processes' worth of
state: a new model load each time, a cold and then a warm feature cache), writes the same figures and
the same predictions, in bf16 as in fp32."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # trains, then evaluates twice per precision

TIMING = {"seconds", "questions_per_s"}  # wall-clock figures: the only ones allowed to differ


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_same_eval_twice_gives_the_same_figures(precision, tiny_recipe, tmp_path):
    from vlgraft.cli import main
    from vlgraft.training.loop import train

    run = train(tiny_recipe(max_steps=2), source="test")
    outs = []
    for k in range(2):  # the first run fills the feature cache, the second reads it
        out = tmp_path / f"eval{k}.json"
        main(["eval", str(run), "--out", str(out), "--precision", precision, "--loss-records", "4",
              "-o", "data.describe_first=Describe the image."])
        outs.append(out)
    a, b = (json.loads(o.read_text()) for o in outs)
    assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
    assert a["n"] > 0 and "val_loss" in a and "describe_first" in a
    rows = [o.with_suffix(".predictions.jsonl").read_text() for o in outs]
    assert rows[0] == rows[1]
