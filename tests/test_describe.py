"""Describe first, then answer (data.describe_first): record transformation, packing, training,
evaluation and chat."""

import io
import json

import pytest

from vlgraft.config import DataConfig, EvalConfig
from vlgraft.data.conversation import IGNORE, single_turns, tokenize_independent
from vlgraft.data.describe import describe_prompt, with_description, with_gold_descriptions
from vlgraft.data.formats.easyvqa import description as easyvqa_description
from vlgraft.data.records import Record
from vlgraft.data.sources import load_records
from vlgraft.errors import ConfigError, DataError
from vlgraft.eval.vqa import eval_items, evaluate
from vlgraft.serve.chat import ChatSession
from vlgraft.training.checkpoint import load_vlm
from vlgraft.training.loop import train

ASK = "Describe the image."


def _rec(**kw):
    turns = [("system", "Be brief."), ("user", "<image>\nWhat color is it?"), ("assistant", "red"),
             ("user", "Is it round?"), ("assistant", "no")]
    return Record("r1", images=["x.png"], turns=kw.pop("turns", turns),
                  meta=kw.pop("meta", {"answer_types": ["color", "yes/no"]}),
                  source="f.json: record 'r1'", **kw)


def test_with_description_opens_every_question_with_the_exchange():
    rec = with_description(_rec(), ASK, "A red square.")
    assert rec.lead_pairs == 1
    assert rec.turns == [("system", "Be brief."), ("user", "<image>\n" + ASK), ("assistant", "A red square."),
                         ("user", "What color is it?"), ("assistant", "red"), ("user", "Is it round?"),
                         ("assistant", "no")]
    lead = rec.turns[:3]
    assert single_turns(rec) == [lead + [("user", "What color is it?"), ("assistant", "red")],
                                  lead + [("user", "Is it round?"), ("assistant", "no")]]
    # the description is context in evaluation, never a question: same items, same types, in both modes
    for turns in ("independent", "conversation"):
        items = eval_items([rec], turns)
        assert [(it["answer"], it["type"]) for it in items] == [("red", "color"), ("no", "yes/no")]
        assert all(it["turns"][:3] == lead for it in items)
    assert describe_prompt(_rec(), ASK) == [("system", "Be brief."), ("user", "<image>\n" + ASK)]
    text_only = Record("t", turns=[("user", "Hi"), ("assistant", "Hello")])
    assert with_description(text_only, ASK, "x") is text_only


def test_describe_first_errors_name_the_record():
    late = _rec(turns=[("user", "What?"), ("assistant", "red"), ("user", "<image>\nAnd?"), ("assistant", "no")])
    with pytest.raises(DataError, match=r"record 'r1'.*every <image> must be in the first question"):
        with_description(late, ASK, "x")
    with pytest.raises(DataError, match=r"record 'r1'.*'description' must be a non-empty string"):
        with_gold_descriptions([_rec(meta={"description": 3})], ASK)
    recs, n = with_gold_descriptions([_rec(), _rec(meta={"description": " A red square. "})], ASK)
    assert n == 1 and recs[0].lead_pairs == 0 and recs[1].turns[2] == ("assistant", "A red square.")


def test_easyvqa_description_from_annotations():
    assert easyvqa_description([("what shape is in the image?", "circle"), ("what color is the shape?", "red")]) \
        == "A red circle."
    # inferred from yes/no answers: yes to a plain question, no to a negated one
    assert easyvqa_description([("is there a blue shape?", "yes"), ("is there not a triangle?", "no")]) \
        == "A blue triangle."
    assert easyvqa_description([("is there a blue shape?", "no"), ("is no circle present?", "yes"),
                                ("what shape is present?", "rectangle")]) is None  # colour unknown


def test_easyvqa_descriptions_agree_with_every_answer():
    recs = load_records("easyvqa:test")
    described = [r for r in recs if "description" in r.meta]
    assert len(described) == 772
    for r in described:
        _, color, shape = r.meta["description"].rstrip(".").lower().split()
        for (_, q), (_, a) in zip(r.turns[::2], r.turns[1::2]):
            if a in ("yes", "no"):  # every yes/no answer follows from the description
                words = set(q.lower().rstrip("?").split())
                present = color in words or shape in words
                negated = " not " in q.lower() or " no " in q.lower()
                assert (a == "yes") == (present != negated), (r.id, q, a)
            else:
                assert a in (color, shape), (r.id, q, a)


def test_packed_questions_share_the_description_and_learn_it_once(smol):
    rec = with_description(_rec(), ASK, "A red square.")
    ex = tokenize_independent(rec, smol, 5, 512)
    tok = smol.tokenizer
    seg, ids, labels = ex["segment_ids"], ex["input_ids"], ex["labels"]
    text = (lambda m: tok.decode(ids[m & (ids >= 0)]))  # visual positions carry a negative id
    prefix = seg == 0
    assert "A red square." in text(prefix) and "What color" not in text(prefix)
    assert tok.decode(labels[prefix & (labels != IGNORE)]).startswith("A red square.")
    for k, answer in ((1, "red"), (2, "no")):
        part = seg == k
        assert "A red square." not in text(part)
        assert tok.decode(labels[part & (labels != IGNORE)]).startswith(answer)


@pytest.fixture(scope="module")
def smol():
    from vlgraft.config import LLMOptions
    from vlgraft.models.llm import build_llm

    return build_llm(LLMOptions(system_prompt=""))


@pytest.fixture
def described_data(tiny_data, tmp_path):
    """tiny_data with a gold description on every image record."""
    records = json.loads(tiny_data.read_text())
    for r in records:
        if "image" in r:
            r["image"] = str(tiny_data.parent / r["image"])
            r["description"] = f"A {r['conversations'][1]['value']} square."
    p = tmp_path / "described.json"
    p.write_text(json.dumps(records))
    return p


@pytest.mark.slow
def test_train_eval_and_chat_describe_first(tiny_recipe, tiny_data, described_data, tmp_path):
    import dataclasses

    r = tiny_recipe(max_steps=2)
    no_gold = dataclasses.replace(r, data=dataclasses.replace(r.data, describe_first=ASK))
    with pytest.raises(ConfigError, match="data.describe_first is set but no training record has a 'description'"):
        train(no_gold, source="test")
    assert not (tmp_path / "run").exists()

    rec = dataclasses.replace(r, data=dataclasses.replace(r.data, train=str(described_data), describe_first=ASK))
    out = train(rec, source="test")
    vlm, recipe, _ = load_vlm(out)
    assert recipe.data.describe_first == ASK

    res = evaluate(vlm, DataConfig(eval=str(described_data), turns="conversation", describe_first=ASK),
                   EvalConfig(batch_size=1, max_new_tokens=3, describe_max_new_tokens=6), "fp32",
                   out_path=tmp_path / "e.json")
    assert res["n"] == 12 * 2 + 4  # descriptions are not questions
    d = res["describe_first"]
    assert d["described"] == 12 and d["with_gold"] == 12 and 0 <= d["gold_match"] <= 1
    rows = [json.loads(x) for x in (tmp_path / "e.predictions.jsonl").read_text().splitlines()]
    descs = {row["id"].split("#")[0]: row["description"] for row in rows if "description" in row}
    assert len(descs) == 12

    # the same questions asked behind an explicit (gold-history) exchange holding the model's own
    # descriptions give the same answers: the description sits where the conversation puts it
    explicit = json.loads(described_data.read_text())
    for x in explicit:
        if x["id"] in descs:
            first = x["conversations"][0]["value"]
            x["conversations"] = [{"from": "human", "value": "<image>\n" + ASK},
                                  {"from": "gpt", "value": descs[x["id"]]},
                                  {"from": "human", "value": first.replace("<image>\n", "")}] + x["conversations"][1:]
            del x["description"]
    p = tmp_path / "explicit.json"
    p.write_text(json.dumps(explicit))
    evaluate(vlm, DataConfig(eval=str(p), turns="conversation"), EvalConfig(batch_size=1, max_new_tokens=3), "fp32",
             out_path=tmp_path / "x.json")
    lines = (tmp_path / "x.predictions.jsonl").read_text().splitlines()
    plain = {row["id"]: row["prediction"] for row in map(json.loads, lines)}
    for row in rows:
        rid, k = row["id"].split("#")
        shift = 1 if rid in descs else 0  # the explicit exchange is item 0 there
        assert row["prediction"] == plain[f"{rid}#{int(k) + shift}"], row["id"]

    chat = ChatSession(vlm, str(tiny_data.parent / "img" / "0.png"), precision="fp32", max_new_tokens=3,
                       describe_first=ASK, describe_max_new_tokens=6)
    buf = io.StringIO()
    answer = chat.ask("What color is it?", stream=buf)
    assert [t for _, t in chat.turns] == ["<image>\n" + ASK, chat.description, "What color is it?", answer]
    assert buf.getvalue().strip().replace(" ", "") == answer.replace(" ", "")  # only the answer streams

    # the CLI follows the recipe, and --no-describe answers straight from the image
    from vlgraft.cli import main

    for flags, described in (([], True), (["--no-describe"], False)):
        main(["eval", str(out), "--limit", "4", "--out", str(tmp_path / "cli.json"), *flags])
        assert ("describe_first" in json.loads((tmp_path / "cli.json").read_text())) is described
