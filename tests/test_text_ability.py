"""Text-only ability (perplexity, QA accuracy) before and after training: the measures, the base
model, the cache, and ``vlgraft eval --text``."""

import json
import math

import pytest
import torch

from vlgraft.cli import main
from vlgraft.eval.text import before_after, load_text_set, qa_correct, text_ability
from vlgraft.models.vlm import VLM
from vlgraft.training.optim import resolve_groups

PPL = [("Name a fruit.", "An apple is a fruit."), ("Say hello.", "Hello there!"),
       ("Describe the sea in a few words.", "Wide, blue and deep."), ("What is rain?", "Water falling from clouds."),
       ("Count to three.", "One, two, three."), ("Give a colour.", "Green.")]
QA = [("What is 2 + 3?", ["5", "five"]), ("Capital of France?", ["paris"]), ("Opposite of hot?", ["cold"]),
      ("Plural of mouse?", ["mice"]), ("Day after Monday?", ["tuesday"])]


def write_text_set(path, ppl, qa):
    """A text set file of ``ppl`` (instruction, response) and ``qa`` (question, accepted answers) items."""
    lines = [{"id": f"p{i}", "kind": "ppl", "instruction": a, "response": b} for i, (a, b) in enumerate(ppl)]
    lines += [{"id": f"q{i}", "kind": "qa", "question": q, "answers": a} for i, (q, a) in enumerate(qa)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def text_set(tmp_path):
    return write_text_set(tmp_path / "text.jsonl", PPL, QA)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLGRAFT_CACHE", str(tmp_path / "cache"))


def _vlm(recipe):
    vlm = VLM.from_recipe(recipe, "test")
    resolve_groups(vlm, recipe.trainable)
    return vlm.eval()


def test_bundled_text_set():
    ts = load_text_set()
    assert 150 <= len(ts.ppl) <= 300 and 200 <= len(ts.qa) <= 400
    for it in ts.qa:  # echoing the question never scores
        assert not any(qa_correct(it["question"], [a]) for a in it["answers"]), it


def test_qa_scorer():
    assert qa_correct("5", ["5", "five"]) and qa_correct("Five.", ["5", "five"])
    assert qa_correct("2 + 3 = 5", ["5"]) and qa_correct("The capital of France is Paris.\nIt is big.", ["paris"])
    assert qa_correct("  Tuesday!", ["tuesday"]) and qa_correct("The mice", ["mice"])
    assert not qa_correct("15", ["5"])  # whole words only
    assert not qa_correct("Paris is in France? No.\n5", ["5"])  # first line only
    assert not qa_correct("Parisian", ["paris"]) and not qa_correct("", ["5"])
    assert qa_correct("paris", ["paris"], exact=True) and not qa_correct("It is Paris", ["paris"], exact=True)


def test_perplexity_equals_independent_nll(tiny_recipe, text_set):
    vlm = _vlm(tiny_recipe())
    res = text_ability(vlm, text_set, batch_size=3, max_new_tokens=4)
    llm, nll, n = vlm.llm, 0.0, 0
    with torch.no_grad():
        for q, a in PPL:  # render with the chat template, score the reply (+ its turn end) with the HF model
            msgs = llm.messages([("user", q), ("assistant", a)])
            prefix, full = llm.render(msgs[:-1], add_generation_prompt=True), llm.render(msgs)
            ctx = llm.tokenizer(prefix, add_special_tokens=False).input_ids
            reply = llm.tokenizer(full[len(prefix):], add_special_tokens=False).input_ids
            logits = llm.model(input_ids=torch.tensor([ctx + reply])).logits[0]
            logp = torch.log_softmax(logits.float(), -1)[len(ctx) - 1: -1]
            nll -= float(logp.gather(1, torch.tensor(reply)[:, None]).sum())
            n += len(reply)
    assert res["tokens"] == n and res["n_ppl"] == len(PPL) and res["n_qa"] == len(QA)
    assert res["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_batching_does_not_change_results(tiny_recipe, text_set):
    vlm = _vlm(tiny_recipe())
    one, four = (text_ability(vlm, text_set, batch_size=b, max_new_tokens=5) for b in (1, 4))
    assert one["ppl"] == pytest.approx(four["ppl"], rel=1e-5)
    assert one["predictions"] == four["predictions"] and one["qa_acc"] == four["qa_acc"]


@pytest.mark.parametrize("method", ["lora", "llama_adapter"])
def test_before_equals_after_at_init_and_differs_when_perturbed(tiny_recipe, text_set, method):
    recipe = tiny_recipe()
    if method == "llama_adapter":  # multimodal V1 with no image: static prompts only
        recipe.methods = [{"name": "llama_adapter", "prompt_len": 2, "layers": 1, "multimodal": True}]
        recipe.trainable = [recipe.trainable[0], type(recipe.trainable[0])(name="a", params=["llama_adapter"])]
    vlm = _vlm(recipe)
    kw = {"batch_size": 4, "max_new_tokens": 4, "precision": "fp32"}
    same = before_after(vlm, recipe, text_set, **kw)
    assert same["before"]["cached"] is False
    assert same["after"]["ppl"] == pytest.approx(same["before"]["ppl"], rel=1e-5)
    assert [r["before"] for r in same["predictions"]] == [r["after"] for r in same["predictions"]]
    with torch.no_grad():  # move the method's zero-initialised weights
        for n, p in vlm.named_parameters():
            if p.requires_grad and ("lora_B" in n or n.endswith(".gate")):
                p.fill_(0.5)
    moved = before_after(vlm, recipe, text_set, **kw)
    assert moved["before"]["cached"] is True and moved["before"]["ppl"] == same["before"]["ppl"]
    assert abs(moved["after"]["ppl"] - moved["before"]["ppl"]) > 1e-3
    assert moved["change"]["ppl"] == pytest.approx(moved["after"]["ppl"] - moved["before"]["ppl"])


def _checkpoint(tiny_recipe, tmp_path):
    from vlgraft.training.checkpoint import save_checkpoint

    recipe = tiny_recipe()
    run = tmp_path / "run"
    save_checkpoint(run / "final", _vlm(recipe), recipe)
    return run


@pytest.mark.slow
def test_cli_writes_text_block(tiny_recipe, text_set, tmp_path, capsys):
    run = _checkpoint(tiny_recipe, tmp_path)
    main(["eval", str(run), "--limit", "3", "--text", "--text-set", str(text_set), "--precision", "fp32"])
    res = json.loads((run / "eval.json").read_text())
    assert res["n"] == 3 and "accuracy" in res  # the VQA part is still there
    block = res["text_ability"]
    assert set(block) >= {"before", "after", "change"} and block["text_set"] == str(text_set)
    assert {"ppl", "qa_acc", "n_ppl", "n_qa"} <= set(block["before"]) and block["before"]["n_qa"] == len(QA)
    rows = [json.loads(x) for x in (run / "eval.text.jsonl").read_text().splitlines()]
    assert len(rows) == len(QA) and all(r["after_correct"] == qa_correct(r["after"], r["answers"]) for r in rows)
    assert "text ability" in capsys.readouterr().out
    out = tmp_path / "only.json"
    main(["eval", str(run), "--text-only", "--text-set", str(text_set), "--out", str(out)])
    only = json.loads(out.read_text())
    assert list(only) == ["text_ability"] and only["text_ability"]["before"]["cached"] is True


@pytest.mark.parametrize("line, needle", [
    ('{"id": "bad1", "kind": "qa", "question": "Why?"}', "record 'bad1' (line 2): 'answers' must be"),
    ('{"id": "bad2", "kind": "ppl", "instruction": "Hi"}', "record 'bad2' (line 2): 'response' must be"),
    ('{"id": "bad3", "kind": "poem", "text": "x"}', "record 'bad3' (line 2): 'kind' must be"),
    ('{"id": "x", "kind": "qa"', "line 2 is not valid JSON"),
])
def test_broken_text_set_is_one_line(tiny_recipe, tmp_path, capsys, line, needle):
    run = _checkpoint(tiny_recipe, tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "ok", "kind": "qa", "question": "2 + 2?", "answers": ["4"]}\n' + line + "\n")
    with pytest.raises(SystemExit) as e:
        main(["eval", str(run), "--text-only", "--text-set", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and str(bad) in err[0] and needle in err[0], err
    assert not (run / "eval.json").exists()
