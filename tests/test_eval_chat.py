import io
import json

import pytest

from vlgraft.config import DataConfig, EvalConfig
from vlgraft.eval.vqa import evaluate, normalize, token_f1
from vlgraft.serve.chat import ChatSession
from vlgraft.training.checkpoint import load_vlm
from vlgraft.training.loop import train


def test_normalize():
    assert normalize("  The Red.") == "red"
    assert normalize("a triangle!") == "triangle"
    assert normalize("Yes") == normalize("yes")
    assert normalize("red circle") != normalize("red")


def test_token_f1():
    assert token_f1("A rose emoji.", "a rose emoji") == 1.0
    assert token_f1("A red rose emoji", "A rose emoji.") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("tulip", "rose emoji") == 0.0 and token_f1("", "") == 1.0 and token_f1("", "rose") == 0.0


@pytest.mark.slow
def test_eval_and_chat_on_a_trained_tiny_model(tiny_recipe, tiny_data, tmp_path):
    out = train(tiny_recipe(max_steps=2), source="test")
    vlm, recipe, _ = load_vlm(out)
    res = evaluate(vlm, DataConfig(eval=str(tiny_data)), EvalConfig(batch_size=5, max_new_tokens=3), "fp32",
                   out_path=tmp_path / "eval.json")
    assert res["n"] == 12 * 2 + 4  # one item per assistant turn
    written = json.loads((tmp_path / "eval.json").read_text())
    preds = [json.loads(line) for line in (tmp_path / "eval.predictions.jsonl").read_text().splitlines()]
    assert written["by_type"]["all"]["correct"] == sum(p["correct"] for p in preds)
    assert all(p["correct"] == (normalize(p["prediction"]) == normalize(p["answer"])) for p in preds)
    assert written["f1"] == pytest.approx(sum(p["f1"] for p in preds) / len(preds))
    assert all(p["f1"] == 1.0 for p in preds if p["correct"])

    packed = evaluate(vlm, DataConfig(eval=str(tiny_data), turns="independent"),
                      EvalConfig(batch_size=5, max_new_tokens=3), "fp32")
    assert packed["n"] == 28 and packed["turns"] == "independent"

    image = str(tiny_data.parent / "img" / "0.png")
    chat = ChatSession(vlm, image, precision="fp32", max_new_tokens=4)
    buf = io.StringIO()
    a1 = chat.ask("What color is it?", stream=buf)
    a2 = chat.ask("Are you sure?", stream=buf)
    assert [r for r, _ in chat.turns] == ["user", "assistant", "user", "assistant"]
    assert chat.turns[0][1].startswith("<image>\n") and "<image>" not in chat.turns[2][1]
    assert buf.getvalue().replace("\n", "").replace(" ", "") == (a1 + a2).replace(" ", "")


def test_interactive_chat_keeps_history(tiny_recipe, tiny_data, monkeypatch, capsys):
    from vlgraft.serve.chat import interactive

    out = train(tiny_recipe(max_steps=1), source="test")
    vlm, _, _ = load_vlm(out)
    chat = ChatSession(vlm, str(tiny_data.parent / "img" / "2.png"), precision="fp32", max_new_tokens=3)
    answers = iter(["What color is it?", "And now?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(answers))
    interactive(chat)
    assert [r for r, _ in chat.turns] == ["user", "assistant"] * 2
    assert capsys.readouterr().out.count("model> ") == 2
