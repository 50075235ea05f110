"""One config path: eval, chat and export read the run's recipe and take -o overrides; their flags are
aliases of recipe keys; overrides that would change the trained model are refused by name."""

import json

import pytest
import yaml

from vlgraft.cli import main
from vlgraft.config import to_dict

pytestmark = pytest.mark.slow  # end to end: trains, evaluates, exports


@pytest.fixture
def run(tiny_recipe, tmp_path):
    d = to_dict(tiny_recipe("llama", max_steps=2))
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    main(["train", str(p)])
    return d["train"]["output_dir"], d["data"]["eval"]


def _rows(path):
    return [json.loads(x) for x in path.with_suffix(".predictions.jsonl").read_text().splitlines()]


def test_eval_overrides_equal_their_flags(run, tmp_path):
    out, data = run
    main(["eval", out, "-o", "eval.max_new_tokens=2", "-o", f"data.eval={data}", "-o", "eval.limit=5",
          "-o", "data.turns=independent", "--out", str(tmp_path / "a.json")])
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["n"] == 5 and a["turns"] == "independent"
    assert all(len(r["prediction"].split()) <= 2 for r in _rows(tmp_path / "a.json"))
    main(["eval", out, "-o", "eval.max_new_tokens=2", "--data", data, "--limit", "5", "--turns", "independent",
          "--out", str(tmp_path / "b.json")])
    assert _rows(tmp_path / "a.json") == _rows(tmp_path / "b.json")


@pytest.mark.parametrize("argv, needle", [
    (["-o", "connector.name=linear"], "'connector' is fixed by the checkpoint"),
    (["-o", "methods[0].r=8"], "'methods' is fixed by the checkpoint"),
    (["-o", "eval.limit=0"], "key 'eval.limit' must be >= 1; got 0"),
    (["--limit", "0"], "key 'eval.limit' must be >= 1; got 0"),
    (["-o", "eval.max_new_token=3"], "unknown key 'eval.max_new_token' (did you mean 'eval.max_new_tokens'?)"),
    (["-o", "data.eval=nosuch:x"], "key 'data.eval': unknown dataset 'nosuch'"),
])
def test_bad_overrides_are_one_line_errors(run, capsys, argv, needle):
    with pytest.raises(SystemExit) as e:
        main(["eval", run[0], *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_chat_and_export_take_overrides(run, tiny_data, tmp_path, capsys):
    out, _ = run
    from vlgraft.serve.chat import ChatSession
    from vlgraft.training.checkpoint import load_vlm

    image = str(tiny_data.parent / "img" / "0.png")
    main(["chat", "--ckpt", out, "--image", image, "-o", "chat.max_new_tokens=2", "What color is it?"])
    vlm, recipe, _ = load_vlm(out, overrides=["chat.max_new_tokens=2", "eval.precision=bf16"])
    session = ChatSession.from_recipe(vlm, recipe, image)
    assert session.max_new_tokens == 2 and session.precision == "bf16"
    with pytest.raises(SystemExit):
        main(["chat", "--ckpt", out, "--image", image, "--max-new-tokens", "0", "Hi"])
    assert "key 'chat.max_new_tokens' must be >= 1; got 0" in capsys.readouterr().err
    main(["export", out, str(tmp_path / "x"), "-o", "eval.precision=fp32"])
    assert (tmp_path / "x" / "llm" / "config.json").is_file()
    with pytest.raises(SystemExit):
        main(["export", out, str(tmp_path / "y"), "-o", "vision.grid=1"])
    assert "'vision' is fixed by the checkpoint" in capsys.readouterr().err
