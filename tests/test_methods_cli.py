"""Methods from the command line: info per method, train + eval (with held-out loss), export with merge."""

import json

import pytest
import yaml
from safetensors.torch import load_file

from vlgraft.cli import main
from vlgraft.config import to_dict

pytestmark = pytest.mark.slow  # end to end: trains, evaluates, exports


def _recipe(tiny_recipe, tmp_path, methods, trainable):
    d = to_dict(tiny_recipe("qwen2"))
    d["methods"], d["trainable"] = methods, trainable
    d["train"]["max_steps"] = 2
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(d))
    return p, d


def test_info_lists_parameters_per_method(tiny_recipe, tmp_path, capsys):
    p, _ = _recipe(tiny_recipe, tmp_path, [{"name": "llama_adapter_v2", "prompt_len": 2, "layers": 1}],
                   [{"name": "image", "params": ["llama_adapter_v2.image"], "lr": 1e-3},
                    {"name": "language", "params": ["llama_adapter_v2.language"], "lr": 1e-3}])
    main(["info", str(p)])
    out = capsys.readouterr().out
    assert "methods" in out
    for needle in ("llama_adapter_v2.image", "llama_adapter_v2.language", "vlgraft_visual", "vlgraft_prompt",
                   "vlgraft_bias_scale"):
        assert needle in out, needle
    assert "visual tokens per image: 0" in out  # early fusion: the image is not in the sequence


def test_train_eval_export(tiny_recipe, tmp_path, capsys):
    p, d = _recipe(tiny_recipe, tmp_path, [{"name": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]},
                                          {"name": "bottleneck_adapter", "bottleneck": 4}],
                   [{"name": "connector", "params": ["connector"], "lr": 1e-2},
                    {"name": "lora", "params": ["lora"], "lr": 1e-2},
                    {"name": "adapter", "params": ["bottleneck_adapter"], "lr": 1e-2}])
    main(["train", str(p)])
    run = d["train"]["output_dir"]
    keys = set(load_file(f"{run}/final/trainable.safetensors"))
    assert any(".lora_A." in k for k in keys) and any("vlgraft_adapter_ffn" in k for k in keys)
    assert all(k.startswith("connector.") or ".lora_" in k or "vlgraft_adapter" in k for k in keys)
    main(["eval", run, "--limit", "16", "--loss-records", "4", "--out", str(tmp_path / "ev.json")])
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["val_loss"] > 0 and ev["val_loss_records"] == 4
    main(["export", run, str(tmp_path / "exp")])
    out = capsys.readouterr().out
    assert "lora (4 layers)" in out and "kept as modules: bottleneck_adapter" in out
    llm_keys = set(load_file(str(tmp_path / "exp" / "llm" / "model.safetensors")))
    assert not any("lora_" in k for k in llm_keys)
    rest = set(load_file(str(tmp_path / "exp" / "model.safetensors")))
    assert any("vlgraft_adapter" in k for k in rest) and not any("lora_" in k for k in rest)
