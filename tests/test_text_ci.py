"""95% intervals of the text-ability figures (``eval/text.py``): Wilson for QA accuracy, a bootstrap
over items for perplexity, paired bootstraps for the change; the per-item NLL they rest on, and the
"before" cache that must carry it."""

import json
import math
import random

import pytest
from rich.console import Console

from tests.test_text_ability import _vlm, write_text_set
from vlgraft.eval.text import (
    diff_bootstrap,
    load_text_set,
    perplexity,
    ppl_bootstrap,
    ppl_ratio_bootstrap,
    print_text_ability,
    wilson_interval,
)

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def _wilson_by_hand(k, n, z=Z95):
    # (p + z^2/(2n) -/+ z * sqrt(p(1-p)/n + z^2/(4n^2))) / (1 + z^2/n), written out independently
    p = k / n
    a = p + z ** 2 / (2 * n)
    b = z * math.sqrt(p * (1 - p) / n + z ** 2 / (4 * n ** 2))
    c = 1 + z ** 2 / n
    return (a - b) / c, (a + b) / c


@pytest.mark.parametrize("k, n", [(40, 80), (0, 10), (10, 10), (3, 170), (57, 250)])
def test_wilson_matches_the_formula(k, n):
    lo, hi = wilson_interval(k, n)
    elo, ehi = _wilson_by_hand(k, n)
    assert lo == pytest.approx(max(0.0, elo), abs=1e-12) and hi == pytest.approx(min(1.0, ehi), abs=1e-12)
    assert lo <= k / n <= hi


def test_wilson_known_values():
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)  # the published 0/10 bound
    assert wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    lo, hi = wilson_interval(40, 80)  # p = 1/2: symmetric around 0.5
    assert lo == pytest.approx(0.3930, abs=1e-4) and hi == pytest.approx(0.6070, abs=1e-4)
    assert lo + hi == pytest.approx(1.0)
    w90, w95 = wilson_interval(40, 80, level=0.90), wilson_interval(40, 80)
    assert w95[0] < w90[0] < 0.5 < w90[1] < w95[1]
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def _items(n=120, seed=1):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.randint(5, 60)
        out.append([t * rng.uniform(1.5, 3.5), t])
    return out


def _ppl(items):
    return math.exp(sum(s for s, _ in items) / sum(t for _, t in items))


def test_ppl_bootstrap_deterministic_and_contains_the_estimate():
    items = _items()
    ci = ppl_bootstrap(items)
    assert ci == ppl_bootstrap(items)  # fixed seed 0: the same interval every time
    assert ci != ppl_bootstrap(items, seed=1)
    assert ci[0] < _ppl(items) < ci[1]
    assert ppl_bootstrap(items, level=0.5)[0] > ci[0]  # narrower at a lower level
    same = [[2.0 * t, t] for _, t in items]  # every item at NLL 2 per token: no spread at all
    assert ppl_bootstrap(same) == pytest.approx([math.exp(2.0)] * 2)


def test_ppl_ratio_bootstrap_is_paired():
    before = _items()
    after = [[1.1 * s, t] for s, t in before]  # every item's NLL 10% higher
    ratio = _ppl(after) / _ppl(before)
    ci = ppl_ratio_bootstrap(before, after)
    assert ci == ppl_ratio_bootstrap(before, after)
    assert ci[0] <= ratio <= ci[1] and ci[1] - ci[0] < 0.2 * (ratio - 1)  # pairing cancels the item spread
    assert ppl_ratio_bootstrap(before, before) == pytest.approx([1.0, 1.0])
    shifted = _items(seed=2)
    wide = ppl_ratio_bootstrap(before, shifted)
    assert wide[0] < _ppl(shifted) / _ppl(before) < wide[1]
    with pytest.raises(ValueError):
        ppl_ratio_bootstrap(before, after[:-1])


def test_diff_bootstrap():
    rng = random.Random(3)
    before = [rng.random() < 0.5 for _ in range(170)]
    after = [b and rng.random() < 0.8 for b in before]  # loses some, gains none
    d = sum(after) / len(after) - sum(before) / len(before)
    ci = diff_bootstrap(before, after)
    assert ci == diff_bootstrap(before, after) and ci[0] <= d <= ci[1] and ci[1] <= 0
    assert diff_bootstrap(before, before) == [0.0, 0.0]
    with pytest.raises(ValueError):
        diff_bootstrap(before, after[:5])


# ----------------------------------------------------------------------------- with a (tiny) model
@pytest.fixture
def text_set(tmp_path):
    ppl = [("Name a fruit.", "An apple."), ("Say hello.", "Hello there!"), ("Count to three.", "One, two, three."),
           ("What is rain?", "Water falling from clouds, usually from grey ones.")]
    qa = [("What is 2 + 3?", ["5", "five"]), ("Capital of France?", ["paris"]), ("Opposite of hot?", ["cold"])]
    return write_text_set(tmp_path / "text.jsonl", ppl, qa)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLGRAFT_CACHE", str(tmp_path / "cache"))


def test_per_record_nll_sums_to_the_total_whatever_the_batching(tiny_recipe, text_set):
    ts = load_text_set(text_set)
    vlm = _vlm(tiny_recipe())
    res = perplexity(vlm, ts.ppl, batch_size=3)
    items, n = res["ppl_items"], res["tokens"]
    assert n == sum(t for _, t in items) and all(t > 0 for _, t in items)
    assert sum(s for s, _ in items) / n == pytest.approx(res["nll"], rel=1e-5)
    for b in (1, 4):  # each record's own sum does not depend on its batch mates or the padding
        other = perplexity(vlm, ts.ppl, batch_size=b)["ppl_items"]
        assert [t for _, t in other] == [t for _, t in items]
        assert [s for s, _ in other] == pytest.approx([s for s, _ in items], rel=1e-5)


def test_block_has_intervals_and_old_cache_entries_are_measured_again(tiny_recipe, text_set, tmp_path, capsys):
    from vlgraft.eval.text import before_after

    recipe = tiny_recipe()
    vlm = _vlm(recipe)
    kw = {"batch_size": 4, "max_new_tokens": 4, "precision": "fp32"}
    block = before_after(vlm, recipe, text_set, **kw)
    b, a, c = block["before"], block["after"], block["change"]
    for side in (b, a):
        assert side["ppl_ci"][0] <= side["ppl"] <= side["ppl_ci"][1]
        assert side["qa_ci"] == wilson_interval(round(side["qa_acc"] * 3), 3)
        assert side["qa_exact_ci"] == wilson_interval(round(side["qa_exact"] * 3), 3)
        assert "ppl_items" not in side and "predictions" not in side  # per-item values stay out of eval.json
    assert c["ppl_ratio_ci"] == pytest.approx([1.0, 1.0], rel=1e-5)  # at init the model is the base model
    assert c["qa_diff"] == c["qa_acc"] == 0 and c["qa_diff_ci"] == [0.0, 0.0] and c["qa_exact_diff_ci"] == [0.0, 0.0]
    assert block["intervals"]["resamples"] == 1000 and block["intervals"]["seed"] == 0
    json.dumps(block)  # plain JSON
    print_text_ability(block, Console(width=200))
    out = capsys.readouterr().out
    assert "95% intervals in brackets" in out and f"{b['ppl']:.3f} [{b['ppl_ci'][0]:.3f}, {b['ppl_ci'][1]:.3f}]" in out

    (entry,) = (tmp_path / "cache" / "text_ability").glob("*.json")
    cached = json.loads(entry.read_text())
    assert len(cached["ppl_items"]) == 4 and len(cached["predictions"]) == 3
    again = before_after(vlm, recipe, text_set, **kw)
    assert again["before"]["cached"] is True and again["before"]["ppl_ci"] == b["ppl_ci"]
    del cached["ppl_items"]  # an entry written before the intervals: measured again, not a crash
    entry.write_text(json.dumps(cached))
    old = before_after(vlm, recipe, text_set, **kw)
    assert old["before"]["cached"] is False and old["before"]["ppl_ci"] == pytest.approx(b["ppl_ci"], rel=1e-5)
    assert "ppl_items" in json.loads(entry.read_text())


def test_bundled_set_is_distinct_and_off_vqa_ground():
    import re

    from vlgraft.eval.vqa import normalize

    ts = load_text_set()
    questions = [normalize(it["question"]) for it in ts.qa]
    instructions = [normalize(r.turns[0][1]) for r in ts.ppl]
    assert len(set(questions)) == len(questions) and len(set(instructions)) == len(instructions)
    assert [r.id for r in ts.ppl] == [f"ppl-{i:03d}" for i in range(1, len(ts.ppl) + 1)]
    assert [it["id"] for it in ts.qa] == [f"qa-{i:03d}" for i in range(1, len(ts.qa) + 1)]
    vqa = re.compile(r"\b(images?|pictures?|photos?|emojis?|shapes?|what shape)\b", re.I)  # easy-VQA's and emoji's
    texts = [it["question"] for it in ts.qa[80:]] + [t for r in ts.ppl[80:] for _, t in r.turns]  # the items added
    assert not [t for t in texts if vqa.search(t)]  # after the first 160 (ppl-024 defines a triangle: kept as it was)
    multi = [r for r in ts.ppl[160:] if len(re.findall(r"[.!?](?=\s|$)", r.turns[0][1])) >= 2]
    assert len(multi) >= 40  # ppl-161 on: context sentences, then a request
