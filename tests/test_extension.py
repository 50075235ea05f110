"""A new connector, a new method and a new data format, defined in this file only: registered, chosen by
name from a recipe (their options validated and listed like the built-in parts'), trained two steps,
evaluated and exported — with no edit anywhere else in vlgraft."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from vlgraft.cli import main
from vlgraft.config import ConnectorOptions, FormatOptions, MethodOptions, to_dict
from vlgraft.connectors.base import Connector
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.methods.base import Method
from vlgraft.models.anatomy import attention_of, decoder_layers
from vlgraft.options import option
from vlgraft.registry import CONNECTOR, DATASET, METHOD

# --- a connector: the mean visual token, projected and scaled -----------------------------------
pytestmark = pytest.mark.slow  # end to end: trains, evaluates, exports


@dataclass
class MeanTokenOptions(ConnectorOptions):
    gain: float = option(1.0, "scale of the projected token", min=0)


class MeanToken(Connector):
    Options = MeanTokenOptions

    def __init__(self, options, in_dim: int, out_dim: int, vision=None):
        super().__init__(options, in_dim, out_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def output_tokens(self, n_in: int) -> int:
        return 1

    def forward(self, x):  # [B, N, Dv] -> [B, 1, Dl]
        return self.options.gain * self.proj(x.mean(1, keepdim=True))


# --- a method: a trainable additive update of chosen linear weights, zero at start, mergeable ----
@dataclass
class WeightDeltaOptions(MethodOptions):
    target_modules: list[str] = option(factory=lambda: ["o_proj"], help="attention projections that get a delta")


class _Delta(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros_like(weight, dtype=torch.float32))


def _add_delta(lin: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
    return out + F.linear(args[0], lin.vlgraft_delta.weight.to(out.dtype))


class WeightDelta(Method):
    Options = WeightDeltaOptions
    mergeable = True

    def apply(self, vlm) -> None:
        self.hooked = []
        for layer in decoder_layers(vlm.llm.model):
            for name in self.cfg.target_modules:
                lin = getattr(attention_of(layer), name)
                lin.add_module("vlgraft_delta", _Delta(lin.weight))
                self.hooked.append((lin, lin.register_forward_hook(_add_delta)))

    def merge(self, vlm) -> int:
        with torch.no_grad():
            for lin, handle in self.hooked:
                lin.weight += lin.vlgraft_delta.weight.to(lin.weight.dtype)
                handle.remove()
                del lin.vlgraft_delta
        return len(self.hooked)


# --- a data format: coloured squares written to a folder ----------------------------------------
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


@dataclass
class SquaresOptions(FormatOptions):
    root: str = option(MISSING, "folder the generated images are written to")
    count: int = option(6, "how many records", min=1)
    spec_arg = "root"


def squares(o: SquaresOptions) -> Iterator[Record]:
    Path(o.root).mkdir(parents=True, exist_ok=True)
    for i in range(o.count):
        colour = list(COLOURS)[i % len(COLOURS)]
        path = Path(o.root) / f"{i}.png"
        Image.new("RGB", (32, 32), COLOURS[colour]).save(path)
        yield Record(f"sq{i}", [("user", f"{IMAGE_PLACEHOLDER}\nWhat color is it?"), ("assistant", colour)],
                     images=[str(path)], meta={"answer_type": "color"}, source=f"{o.root}: square {i}")


@pytest.fixture
def parts():
    CONNECTOR.register("test_mean_token")(MeanToken)
    METHOD.register("test_weight_delta")(WeightDelta)
    DATASET.register("test_squares", options=SquaresOptions)(squares)
    yield
    for reg, name in ((CONNECTOR, "test_mean_token"), (METHOD, "test_weight_delta"), (DATASET, "test_squares")):
        reg.unregister(name)


def test_new_parts_from_a_recipe_train_eval_export(parts, tiny_recipe, tmp_path, capsys):
    d = to_dict(tiny_recipe("llama", max_steps=2))
    d["connector"] = {"name": "test_mean_token", "gain": 0.5}
    d["methods"] = [{"name": "test_weight_delta", "target_modules": ["o_proj"]}]
    d["trainable"] = [{"name": "connector", "params": ["connector"], "lr": 1e-2},
                      {"name": "delta", "params": ["test_weight_delta"], "lr": 1e-2}]
    d["data"]["train"] = {"name": "test_squares", "root": str(tmp_path / "squares"), "count": 8}
    d["data"]["eval"] = f"test_squares:{tmp_path / 'squares'}"  # the short form: 'name:ARG' sets spec_arg
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(d))

    # the parts' options are validated and listed like the built-in ones
    main(["train", "--help-recipe"])
    text = capsys.readouterr().out
    assert "connector {name: test_mean_token}" in text and "connector.gain (float, default 1.0; >= 0)" in text
    assert "methods[].target_modules" in text and "test_squares" in text
    with pytest.raises(SystemExit):
        main(["train", str(recipe), "-o", "methods[0].target_module=[o_proj]"])
    err = capsys.readouterr().err
    assert "unknown key 'methods[0].target_module' (did you mean 'methods[0].target_modules'?)" in err
    assert "options of method 'test_weight_delta'" in err

    main(["train", str(recipe)])
    run = Path(d["train"]["output_dir"])
    saved = load_file(run / "final" / "trainable.safetensors")
    deltas = {k: v for k, v in saved.items() if "vlgraft_delta" in k}
    assert len(deltas) == 2 and all(v.abs().sum() > 0 for v in deltas.values())  # one per layer, trained
    assert {k for k in saved if k.startswith("connector.")} == {"connector.proj.weight", "connector.proj.bias"}

    main(["eval", str(run), "--out", str(tmp_path / "eval.json")])
    assert '"n": 6,' in (tmp_path / "eval.json").read_text()  # the short form: the format's default count

    main(["export", str(run), str(tmp_path / "exported")])
    assert "(2 layers)" in capsys.readouterr().out
    llm = load_file(tmp_path / "exported" / "llm" / "model.safetensors")
    assert not any("vlgraft_delta" in k for k in llm)
    assert set(load_file(tmp_path / "exported" / "model.safetensors")) == {"connector.proj.weight",
                                                                              "connector.proj.bias"}

    # the exported LLM computes what the trained model with its method computes (text-only input)
    from transformers import AutoModelForCausalLM

    from vlgraft.training.checkpoint import load_vlm

    vlm, _, _ = load_vlm(run)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "exported" / "llm").eval()
    ids = torch.tensor([[1, 5, 9, 11, 20, 3]])
    with torch.no_grad():
        ours = vlm(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
        theirs = merged(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
