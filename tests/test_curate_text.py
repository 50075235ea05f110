"""``vlgraft curate-text``: instructions from a fake generator (junk, duplicates, seed copies and
near-copies of evaluation items among them) answered by tiny random LLMs; the output loads and
mixes, evaluation near-duplicates are dropped and counted, answers equal the base model's own
greedy generation under its chat template and system prompt, seeded runs repeat, an interrupted run
resumes to the same file, and bad input is one error line naming the culprit."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from vlgraft.curate.generators import LocalGenerator
from vlgraft.curate.text_cli import register_text
from vlgraft.curate.text_distill import (
    ANSWER_REASONS,
    INSTRUCTION_REASONS,
    SYSTEM,
    DistillConfig,
    check_answer,
    check_instruction,
    cut_unfinished,
    distill,
    parse_instruction,
    progress_path,
    prompt_for,
    report_path,
)
from vlgraft.curate.text_seeds import SEED_INSTRUCTIONS
from vlgraft.data.dedup import NearDuplicateIndex
from vlgraft.data.sources import load_records
from vlgraft.errors import VlgraftError

GOOD = ["How do I keep houseplants alive in winter?", "Suggest three fun games for a long car journey.",
        "Why do cats purr when they are happy?", "What are the benefits of learning to swim as an adult?",
        "Explain how to fold a paper aeroplane that flies far.", "Which vegetables grow well in a shady garden?"]
CANNED = GOOD + [
    "What is a young dog called?",  # eval ppl "What do you call a young dog?" (content words)
    "1. Answer in one word: what is the capital of Japan?",  # holds eval qa "What is the capital of Japan?"
    "Instruction: How do I keep houseplants alive in winter?",  # exact duplicate once the label is gone
    "How can I keep my houseplants alive during the winter?",  # near duplicate
    "",  # empty
    "asdf",  # too short
    "The weather is nice today and the birds are singing",  # not an instruction
    "What is the the the best best best thing thing thing to to to do?",  # repetition
    "Write it again in a shorter way.",  # refers to a text it does not give
    "Describe the picture in as much detail as you can.",  # image
    "Write a new instruction about cooking.",  # meta
    "Visit https://example.com and tell me what you see?",  # junk
    SEED_INSTRUCTIONS[3],  # a seed copied
]
TEXT_SET = [
    {"id": "p1", "kind": "ppl", "instruction": "What do you call a young dog?", "response": "A puppy."},
    {"id": "p2", "kind": "ppl", "instruction": "Give one tip for sleeping better.",
     "response": "Keep a regular schedule and go to bed at the same time every day."},
    {"id": "q1", "kind": "qa", "question": "What is the capital of Japan?", "answers": ["Tokyo"]},
]


class FakeWriter:
    """A generator that cycles through the canned texts in an order drawn from the run's seed (the
    call's seed is ``run seed * 1_000_003 + call number``); ``fail_at``: raise on that call (an
    interrupted run). Stateless across calls, as a seeded sampler is."""

    name = "fake-writer"

    def __init__(self, texts=tuple(CANNED), fail_at: int | None = None):
        self.texts, self.fail_at, self.calls, self.prompts = list(texts), fail_at, 0, []

    def generate(self, prompts, max_new_tokens, temperature, seed):
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("generator died")
        self.calls += 1
        self.prompts += prompts
        run, call = divmod(seed, 1_000_003)
        order = random.Random(run).sample(self.texts, len(self.texts))
        return [order[(call * len(prompts) + j) % len(order)] for j in range(len(prompts))]


@pytest.fixture
def text_set(tmp_path):
    p = tmp_path / "text_set.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in TEXT_SET))
    return p


def _cfg(tmp_path, text_set, llm, **kw) -> DistillConfig:
    base = {"out": tmp_path / "d.jsonl", "n": 5, "llm": f"hf:{llm}", "text_set": str(text_set), "batch_size": 4,
            "max_new_tokens": 8, "max_attempts": 200, "unfinished": "keep", "device": "cpu"}
    return DistillConfig(**{**base, **kw})


def _greedy(llm, instruction: str, max_new_tokens: int) -> str:
    """The LLM's own greedy answer: its chat template (and system prompt), one prompt, no padding."""
    text = llm.render(llm.messages([("user", instruction)]), add_generation_prompt=True)
    enc = llm.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = llm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=llm.stop_token_ids, pad_token_id=llm.tokenizer.pad_token_id)
    return llm.tokenizer.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True).strip()


def _build(name: str, system_prompt: str | None = None):
    from vlgraft.config import LLMOptions, options_for
    from vlgraft.models.llm import build_llm

    llm = build_llm(options_for(LLMOptions, name, system_prompt=system_prompt))
    llm.model.eval()
    return llm


# ------------------------------------------------------------------ parsing and filters


def test_parse_and_instruction_filters():
    assert parse_instruction("  \n2. **Instruction:** x") != ""  # numbering goes first
    assert parse_instruction("1. What is a lake?\n2. What is a sea?") == "What is a lake?"
    assert parse_instruction('New instruction: "Name two rivers in Africa."') == "Name two rivers in Africa."
    assert parse_instruction("- Why is the sea salty?") == "Why is the sea salty?"
    assert check_instruction("Name two rivers in Africa.") == (None, "")
    assert check_instruction("How should I store fresh herbs?") == (None, "")
    assert check_instruction("How to make a homemade pizza.") == (None, "")
    assert check_instruction("Is it safe to swim after eating?") == (None, "")
    assert check_instruction("Rewrite this sentence in the past tense: I walk home.") == (None, "")
    assert check_instruction("What is a lake? Explain briefly.") == (None, "")
    for text, reason in [("", "empty"), ("Why?", "length"), ("The sea is salty.", "ending"),
                         ("How to grow herbs at home", "ending"),
                         ("Why why why why is the sea sea sea sea salty?", "repetition"),
                         ("What does this image show about the sea?", "mentions_image"),
                         ("Write a sentence about the emoji of a cat.", "mentions_image"),
                         ("Write another question about rivers.", "meta"),
                         ("Here is a question: why is the sea salty?", "meta"),
                         ("Explain what {x} means in this code.", "junk"),
                         ("Please make it shorter and clearer.", "needs_context"),
                         ("Summarise the following article in two lines.", "needs_context")]:
        assert check_instruction(text)[0] == reason, text
    assert set(INSTRUCTION_REASONS) >= {"eval_overlap", "copies_seed", "duplicate"}


def test_answer_checks_and_cut():
    assert cut_unfinished("First sentence. Second one is cut") == "First sentence."
    assert cut_unfinished("Steps:\n1. Boil water.\n2. Add the") == "Steps:\n1. Boil water."
    assert check_answer("That is fine. And then", False, "cut") == (None, "", "That is fine.")
    assert check_answer("Fine. And then", False, "cut")[0] == "answer_unfinished"  # one word left
    assert check_answer("no end at all", False, "cut")[0] == "answer_unfinished"
    assert check_answer("Some answer that is cut", False, "drop")[0] == "answer_unfinished"
    assert check_answer("Some answer that is cut", False, "keep") == (None, "", "Some answer that is cut")
    assert check_answer("  ", True, "cut")[0] == "answer_empty"
    assert check_answer("go on and on and go on and on and go on and on and on.", True, "cut")[0] == "answer_repetition"
    assert set(ANSWER_REASONS) == {"answer_empty", "answer_unfinished", "answer_repetition"}


def test_prompts_show_distinct_seeds_and_are_seeded():
    cfg = DistillConfig(out=Path("x.jsonl"), shots=3)
    msgs, idx = prompt_for(cfg, 4, 2)
    assert msgs[0] == {"role": "system", "content": SYSTEM} and len(set(idx)) == 3
    assert [m["content"] for m in msgs[2:-1:2]] == [SEED_INSTRUCTIONS[i] for i in idx]  # seeds as assistant turns
    assert msgs[-1]["role"] == "user" and prompt_for(cfg, 4, 2) == (msgs, idx) and prompt_for(cfg, 4, 3) != (msgs, idx)


def test_seeds_are_text_only_distinct_and_apart_from_the_bundled_eval_set():
    from vlgraft.eval.text import load_text_set

    assert len(SEED_INSTRUCTIONS) >= 55
    assert all(check_instruction(s)[0] is None for s in SEED_INSTRUCTIONS), \
        [(s, check_instruction(s)) for s in SEED_INSTRUCTIONS if check_instruction(s)[0]]
    own = NearDuplicateIndex()
    for s in SEED_INSTRUCTIONS:
        assert own.find(s) is None, s
        own.add(s)
    ev = load_text_set().near_duplicate_index()
    assert [(s, ev.find(s).describe()) for s in SEED_INSTRUCTIONS if ev.find(s)] == []


# ------------------------------------------------------------------ the pipeline


def test_output_loads_mixes_drops_eval_copies_and_reports(tiny_llms, text_set, tmp_path):
    from vlgraft.config import Recipe, from_dict, validate
    from vlgraft.data.conversation import tokenize_conversation
    from vlgraft.data.mixture import load_training_data

    # twice through the canned texts: more than the 6 good ones cannot be kept
    cfg = _cfg(tmp_path, text_set, tiny_llms["qwen2"], n=7, max_attempts=2 * len(CANNED))
    gen = FakeWriter()
    rep = distill(cfg, gen, show_progress=False)
    recs = load_records(str(cfg.out))
    assert [r.id for r in recs] == [f"distill-{i:06d}" for i in range(1, 7)]
    assert len({r.id for r in recs}) == len(recs) == rep["kept"] == 6
    assert rep["stopped"] == f"--max-attempts {2 * len(CANNED)} generated instructions reached with 6 of 7 kept"
    assert all(not r.has_image and [t for t, _ in r.turns] == ["user", "assistant"] for r in recs)
    assert {r.turns[0][1] for r in recs} <= set(GOOD)  # only well-formed, new instructions
    assert all(r.meta["meta"]["source"] == "curate-text" and len(r.meta["meta"]["seeds"]) == 3 for r in recs)
    # evaluation items: dropped, counted, listed with the item they copy
    hits = rep["eval_matches"]["listed"]
    assert rep["dropped"]["eval_overlap"] == rep["eval_matches"]["count"] == len(hits) > 0
    assert {h["eval"] for h in hits} <= {"p1:instruction", "q1:question"}
    assert {h["instruction"] for h in hits} <= {"What is a young dog called?",
                                                "Answer in one word: what is the capital of Japan?"}
    ev = NearDuplicateIndex([t for r in TEXT_SET for k, t in r.items() if k in ("instruction", "response", "question")])
    assert all(ev.find(r.turns[0][1]) is None for r in recs)
    for reason in ("duplicate", "copies_seed", "empty", "length", "ending", "repetition", "needs_context",
                   "mentions_image", "meta", "junk"):
        assert rep["dropped"].get(reason, 0) > 0, reason
        assert rep["dropped_examples"][reason], reason
    assert rep["generated"] == rep["kept"] + sum(rep["dropped"].values()) + rep["unused"] == 2 * len(CANNED)
    assert len(gen.prompts) == 2 * len(CANNED)
    assert rep["answerer"]["name"] == f"hf:{tiny_llms['qwen2']}" and rep["answerer"]["precision"] == "fp32"
    assert json.loads(report_path(cfg.out).read_text())["kept"] == 6 and not progress_path(cfg.out).exists()
    # trainable as is, and a mixture source
    llm = _build(f"hf:{tiny_llms['qwen2']}")
    assert all((tokenize_conversation(r, llm, 0, 512)["labels"] != -100).any() for r in recs)
    recipe = from_dict(Recipe, {"data": {"mixture": [{"train": str(cfg.out), "weight": 1},
                                                     {"train": "easyvqa:test", "weight": 5, "limit": 3}]}})
    validate(recipe)
    records, sources = load_training_data(recipe.data)
    assert [s.size for s in sources] == [6, 3] and records[0].id == "distill-000001"


def test_answers_equal_the_base_models_own_greedy_generation(tiny_llms, text_set, tmp_path):
    name = f"hf:{tiny_llms['qwen2']}"
    cfg = _cfg(tmp_path, text_set, tiny_llms["qwen2"], n=6, max_new_tokens=10)
    assert distill(cfg, FakeWriter(), show_progress=False)["stopped"] == "reached --n 6"
    llm = _build(name)
    recs = load_records(str(cfg.out))
    assert len(recs) == 6
    assert [r.turns[1][1] for r in recs] == [_greedy(llm, r.turns[0][1], 10) for r in recs]

    # a recipe: its llm section's system prompt and inference precision are the answerer's
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"llm: {{name: '{name}', system_prompt: 'Answer briefly.'}}\neval: {{precision: fp32}}\n")
    out = tmp_path / "recipe.jsonl"
    cfg = dataclasses.replace(_cfg(tmp_path, text_set, tiny_llms["qwen2"], out=out, n=3, max_new_tokens=10),
                              llm=None, recipe=str(recipe))
    rep = distill(cfg, FakeWriter(), show_progress=False)
    assert rep["answerer"]["system_prompt"] == "Answer briefly." and rep["answerer"]["recipe"] == str(recipe)
    sys_llm = _build(name, system_prompt="Answer briefly.")
    recs = load_records(str(out))
    answers = [r.turns[1][1] for r in recs]
    assert answers == [_greedy(sys_llm, r.turns[0][1], 10) for r in recs]
    assert answers != [_greedy(llm, r.turns[0][1], 10) for r in recs]  # the system prompt changes what it says


def test_unfinished_answers_cut_or_dropped(tiny_llms, text_set, tmp_path):
    # tiny random LLMs never end a turn: "cut" keeps up to the last sentence or line, else drops
    rep = distill(_cfg(tmp_path, text_set, tiny_llms["qwen2"], unfinished="drop", n=2, max_attempts=24), FakeWriter(),
                  show_progress=False)
    assert rep["kept"] == 0 and rep["dropped"]["answer_unfinished"] > 0 and rep["stopped"].startswith("--max-attempts")
    rep = distill(_cfg(tmp_path, text_set, tiny_llms["llama"], out=tmp_path / "e.jsonl", n=2, max_attempts=24),
                  FakeWriter(), show_progress=False)
    assert rep["dropped"]["answer_empty"] > 0  # this tiny Llama's greedy replies decode to nothing


def test_same_seed_same_file_and_resume(tiny_llms, text_set, tmp_path):
    a = _cfg(tmp_path, text_set, tiny_llms["qwen2"], out=tmp_path / "a.jsonl", seed=3)
    b = _cfg(tmp_path, text_set, tiny_llms["qwen2"], out=tmp_path / "b.jsonl", seed=3)
    c = _cfg(tmp_path, text_set, tiny_llms["qwen2"], out=tmp_path / "c.jsonl", seed=4)
    for cfg in (a, b, c):
        distill(cfg, FakeWriter(), show_progress=False)
    assert a.out.read_bytes() == b.out.read_bytes() != c.out.read_bytes()

    r = _cfg(tmp_path, text_set, tiny_llms["qwen2"], out=tmp_path / "r.jsonl", seed=3)
    with pytest.raises(RuntimeError):
        distill(r, FakeWriter(fail_at=2), show_progress=False)
    assert progress_path(r.out).is_file() and len(load_records(str(r.out))) < 5
    with open(r.out, "ab") as f:  # a crash mid-write leaves a torn line
        f.write(b'{"id": "torn')
    with pytest.raises(VlgraftError, match="used seed=3, not 5"):
        distill(_cfg(tmp_path, text_set, tiny_llms["qwen2"], out=r.out, seed=5), FakeWriter(), show_progress=False)
    rep = distill(r, FakeWriter(), show_progress=False)
    assert r.out.read_bytes() == a.out.read_bytes() and rep["kept"] == 5
    with pytest.raises(VlgraftError, match="exists"):
        distill(r, FakeWriter(), show_progress=False)
    distill(_cfg(tmp_path, text_set, tiny_llms["qwen2"], out=r.out, seed=3, overwrite=True), FakeWriter(),
            show_progress=False)
    assert r.out.read_bytes() == a.out.read_bytes()


def test_local_generator_sampling_is_seeded_and_shares_the_answerer(tiny_llms, text_set, tmp_path):
    from vlgraft.curate.text_distill import INSTRUCTION_REASONS

    qwen = f"hf:{tiny_llms['qwen2']}"
    reps, gens = [], []
    for k, answerer in enumerate((tiny_llms["qwen2"], tiny_llms["qwen2"], tiny_llms["llama"])):
        cfg = _cfg(tmp_path, text_set, answerer, out=tmp_path / f"l{k}.jsonl", n=1, max_attempts=8,
                   instruction_tokens=6)
        gens.append(LocalGenerator(qwen, device="cpu"))
        reps.append(distill(cfg, gens[-1], show_progress=False))
    assert reps[0]["generated"] == 8 and reps[0]["generator"] == f"local:{qwen}"
    assert reps[0]["dropped_examples"] == reps[1]["dropped_examples"]
    assert (tmp_path / "l0.jsonl").read_bytes() == (tmp_path / "l1.jsonl").read_bytes()
    # the same LLM answering: the generator uses its weights (left-padded), and writes what it writes alone
    assert gens[0].llm.tokenizer.padding_side == "left" and gens[2].llm is not gens[0].llm

    def written(rep):
        return [(r, d["text"]) for r, ds in rep["dropped_examples"].items() if r in INSTRUCTION_REASONS for d in ds]

    assert written(reps[0]) == written(reps[2]) != []


# ------------------------------------------------------------------ command line


def _parser():
    p = argparse.ArgumentParser(prog="vlgraft")
    register_text(p.add_subparsers(dest="command", required=True))
    return p


def _run(*argv) -> str:
    args = _parser().parse_args(["curate-text", *argv])
    with pytest.raises(VlgraftError) as e:
        args.func(args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_cli_flags_and_bad_input(tiny_llms, text_set, tmp_path):
    args = _parser().parse_args(["curate-text", "--out", "o.jsonl", "--n", "7", "--llm", "x", "--generator", "openai",
                                 "--model", "m", "--base-url", "http://h/v1", "--seed", "2", "--max-new-tokens", "9",
                                 "--batch-size", "3", "--text-set", "t.jsonl", "--device", "cpu"])
    assert (args.n, args.llm, args.generator, args.model, args.seed, args.max_new_tokens, args.batch_size,
            args.text_set, args.device) == (7, "x", "openai", "m", 2, 9, 3, "t.jsonl", "cpu")
    out = str(tmp_path / "o.jsonl")
    assert "recipe file not found" in _run("--out", out, "--recipe", str(tmp_path / "missing.yaml"))
    assert "--n" in _run("--out", out, "--n", "0")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert str(blocker) in _run("--out", str(blocker / "o.jsonl"))
    assert "must be a .jsonl" in _run("--out", str(tmp_path / "o.txt"))
    assert "not both" in _run("--out", out, "--recipe", "r.yaml", "--llm", "x")
    assert "text set not found" in _run("--out", out, "--text-set", str(tmp_path / "none.jsonl"))
    assert "--generator openai needs --model" in _run("--out", out, "--generator", "openai")
    with pytest.raises(VlgraftError, match="--n must be at least 1"):
        distill(_cfg(tmp_path, text_set, tiny_llms["qwen2"], n=0), FakeWriter(), show_progress=False)
    assert not (tmp_path / "o.jsonl").exists()
