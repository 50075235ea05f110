"""``vlgraft export RUN OUT --format llava-hf``: transformers' ``LlavaForConditionalGeneration`` and
``AutoProcessor`` read the folder on their own and compute what vlgraft computes — prompt tokens, pixels,
logits (fp32, atol 1e-4) and greedy tokens — for trained runs, for every tiny LLM family, both towers and
both connectors; a recipe LLaVA cannot express is refused in one line, and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlgraft.cli import main

QUESTION = "What color is it?"


@pytest.fixture(scope="module")
def towers(tiny_clip, tiny_siglip):
    return {"clip": tiny_clip, "siglip": tiny_siglip}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Two non-square noise images: the resize to the tower's size and the normalisation both show."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = [root / "a.png", root / "b.png"]
    for p, (h, w) in zip(paths, [(37, 45), (50, 29)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
    return paths


def _recipe(recipe_dict, llm_dir, tower, data, out, vision=None, llm=None, connector=None, methods=None,
            trainable=None) -> dict:
    """The conftest recipe without its ``vision.grid: 2`` (pooling has no LLaVA form), with changes."""
    d = recipe_dict(llm_dir, tower, data, out)
    del d["vision"]["grid"]
    d["vision"].update(vision or {})
    d["llm"].update(llm or {})
    d["connector"] = connector or d["connector"]
    d["methods"] = d["methods"] if methods is None else methods
    d["trainable"] = trainable or d["trainable"]
    return d


def _checkpoint(d: dict, run: Path):
    """A run folder with a checkpoint of ``d``'s model whose method weights are random (a fresh LoRA's B is
    zero, an IA3 vector one: merging them would change nothing) — the files training writes, in a fraction
    of the time — and that model (unmerged), as vlgraft computes with it."""
    from vlgraft.config import Recipe, from_dict
    from vlgraft.models.vlm import VLM
    from vlgraft.training.checkpoint import save_checkpoint
    from vlgraft.training.optim import resolve_groups

    recipe = from_dict(Recipe, d)
    vlm = VLM.from_recipe(recipe)
    resolve_groups(vlm, recipe.trainable)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in vlm.named_parameters():
            if "lora_B" in n or "ia3_l" in n:
                p.add_(torch.randn_like(p) * 0.3)
    save_checkpoint(run / "final", vlm, recipe)
    return run, vlm.eval()


def _vlgraft_side(vlm, images: list[Image.Image], question: str = QUESTION):
    """vlgraft's prompt ids, pixels, logits and greedy new tokens for ``images`` before ``question``."""
    from vlgraft.data.conversation import tokenize_prompt

    ids = tokenize_prompt([("user", "<image>\n" * len(images) + question)], vlm.llm, vlm.num_image_tokens)[None]
    mask, pix, counts = torch.ones_like(ids), vlm.vision.preprocess(images), torch.tensor([len(images)])
    with torch.no_grad():
        logits = vlm(ids, mask, pixel_values=pix, image_counts=counts)["logits"]
    new = vlm.generate(ids, mask, pixel_values=pix, image_counts=counts, max_new_tokens=6)
    return ids, pix, logits, new


def _assert_same(vlm, out: Path, paths: list[Path], question: str = QUESTION):
    """The export in ``out`` computes what vlgraft's ``vlm`` computes, on one prompt."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vlgraft.models.vlm import IMAGE_TOKEN_ID

    images = [Image.open(p).convert("RGB") for p in paths]
    ids, pix, ref, ref_new = _vlgraft_side(vlm, images, question)
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    proc = AutoProcessor.from_pretrained(out)
    msgs = [{"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": question}]}]
    inputs = proc(images=images, text=proc.apply_chat_template(msgs, add_generation_prompt=True), return_tensors="pt")
    image_id = model.config.image_token_id
    assert inputs["input_ids"].tolist() == torch.where(ids == IMAGE_TOKEN_ID, image_id, ids).tolist()
    assert int((inputs["input_ids"] == image_id).sum()) == len(images) * vlm.num_image_tokens
    torch.testing.assert_close(inputs["pixel_values"], pix, atol=1e-6, rtol=0)
    with torch.no_grad():  # the visual tokens themselves: tower, feature selection, projector
        feats = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        torch.testing.assert_close(torch.stack(list(feats)), vlm.visual_embeds(pix), atol=1e-6, rtol=0)
        logits = model(**inputs).logits
    v = ref.shape[-1]
    # the tiny models' logits are small (|x| < 1): 1e-5, not 1e-4, is what tells tanh-GELU from erf-GELU
    torch.testing.assert_close(logits[..., :v], ref, atol=1e-5, rtol=0)
    if logits.shape[-1] > v:  # the row appended for <image>: the mean of the other logits, below their maximum
        torch.testing.assert_close(logits[..., v], ref.mean(-1), atol=1e-4, rtol=0)
        assert (logits[..., v] < ref.max(-1).values).all()
    new = model.generate(**inputs, max_new_tokens=6)[:, inputs["input_ids"].shape[1]:]
    assert new.tolist() == ref_new.tolist()
    return model


def _export(run: Path, out: Path) -> None:
    main(["export", str(run), str(out), "--format", "llava-hf"])


# ------------------------------------------------------------------------------------ trained runs
@pytest.fixture(scope="module", params=[("llama", "clip"), ("qwen2", "siglip")], ids="-".join)
def trained(request, tmp_path_factory, tiny_llms, towers, tiny_data, recipe_dict):
    """A run trained a few steps (mlp connector + LoRA on q_proj/v_proj, fp32) and its llava-hf export."""
    import vlgraft

    llm, tower = request.param
    root = tmp_path_factory.mktemp(f"{llm}-{tower}")
    run = vlgraft.train(_recipe(recipe_dict, tiny_llms[llm], towers[tower], tiny_data, root / "run"))
    out = root / "llava"
    _export(run, out)
    return run, out, tiny_llms[llm]


@pytest.mark.slow
def test_trained_export_computes_what_vlgraft_computes(trained, photos):
    from safetensors.torch import load_file

    from vlgraft.training.checkpoint import load_vlm

    run, out, llm_dir = trained
    vlm = load_vlm(run)[0]
    model = _assert_same(vlm, out, photos[:1])
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in files and "processor_config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))], files
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    gen = model.generation_config
    assert gen.eos_token_id == vlm.llm.stop_token_ids and gen.do_sample is False
    assert model.config.image_token_id in gen.suppress_tokens
    # LoRA is folded into q_proj: the exported weight is not the base LLM's
    base = load_file(str(llm_dir / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]
    merged = model.model.language_model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(merged, base, atol=1e-6)


_CLEAN = """
import json, sys
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
folder, image, question = sys.argv[1:4]
model = LlavaForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
proc = AutoProcessor.from_pretrained(folder, local_files_only=True)
msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
inputs = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                  return_tensors="pt", images=[Image.open(image).convert("RGB")])
out = model.generate(**inputs, max_new_tokens=8)
assert "vlgraft" not in sys.modules, "vlgraft was imported"
print(json.dumps(proc.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("trained", [("llama", "clip")], indirect=True, ids="-".join)
def test_clean_process_answers_like_vlgraft(trained, photos, tmp_path):
    import vlgraft

    run, out, _ = trained
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", _CLEAN, str(out), str(photos[0]), QUESTION], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    answer = json.loads(res.stdout.strip().splitlines()[-1])
    expected = vlgraft.load(run, device="cpu").generate(QUESTION, images=[str(photos[0])], describe=False,
                                                        max_new_tokens=8)
    assert answer == expected and answer


# ------------------------------------------------------------------ every family, tower, connector
CASES = {  # id: (llm, tower, recipe changes, images in the prompt)
    "qwen2-clip-template-system": ("qwen2", "clip", {"llm": {"system_prompt": None}}, 2),
    "gemma3-clip-linear-layers": ("gemma3", "clip", {
        "connector": {"name": "linear"}, "vision": {"feature_layers": [1, -1]},
        "llm": {"system_prompt": 'Answer in "one" word.\n{{ not jinja }} ☃'}}, 1),
    "opt-siglip-last-layer-wide-mlp": ("opt", "siglip", {
        "vision": {"feature_layer": -1}, "connector": {"name": "mlp", "hidden_dim": 32}}, 1),
    "gpt2-clip-cls-patch-native-grid": ("gpt2", "clip", {
        "vision": {"tokens": "cls+patch", "grid": 4},
        "methods": [{"name": "lora", "r": 4, "alpha": 8, "target_modules": ["c_attn"]}]}, 2),
    "llama-siglip-vision-lora-ia3": ("llama", "siglip", {
        # IA3 on other linears than LoRA's: a linear with both does not merge (report of this change)
        "methods": [{"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj"]},
                    {"name": "lora", "r": 2, "alpha": 4, "target": "vision", "target_modules": ["q_proj"]},
                    {"name": "ia3"}],
        "trainable": [{"name": "connector", "params": ["connector"], "lr": 1e-2},
                      {"name": "adapters", "params": ["llm.*lora_*", "vision.*lora_*", "llm.*ia3_l*"], "lr": 1e-2}]},
        1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_computes_what_vlgraft_computes(case, tiny_llms, towers, tiny_data, recipe_dict, photos, tmp_path,
                                               capsys):
    llm, tower, changes, n_images = CASES[case]
    d = _recipe(recipe_dict, tiny_llms[llm], towers[tower], tiny_data, tmp_path / "run", **changes)
    run, vlm = _checkpoint(d, tmp_path / "run")
    _export(run, tmp_path / "llava")
    line = capsys.readouterr().out
    assert "(llava-hf): merged lora" in line and "<image> = token" in line
    _assert_same(vlm, tmp_path / "llava", photos[:n_images])


def test_describe_first_is_no_blocker_and_the_pil_backend_can_be_asked_for(tiny_llms, tiny_clip, tiny_data,
                                                                           recipe_dict, tmp_path):
    """describe-first is how vlgraft prompts, not part of the model: the export answers directly."""
    from transformers import AutoProcessor

    d = _recipe(recipe_dict, tiny_llms["llama"], tiny_clip, tiny_data, tmp_path / "run")
    d["data"]["describe_first"] = "Describe the image."
    _export(_checkpoint(d, tmp_path / "run")[0], tmp_path / "llava")
    proc = AutoProcessor.from_pretrained(tmp_path / "llava", backend="pil")  # docs/EXPORT.md: exact pixels
    assert type(proc.image_processor).__name__ == "CLIPImageProcessorPil"
    assert proc.tokenizer.padding_side == "left"


# ------------------------------------------------------------------------------ not representable
REFUSED = {  # id: (tower, recipe changes, what the error names)
    "efficientnet": ("clip", {"vision": {"name": "efficientnet-lite0", "feature_layer": -1}},
                     "vision 'efficientnet-lite0' (not a transformers tower)"),
    "llama_adapter": ("clip", {"methods": [{"name": "llama_adapter", "prompt_len": 2, "layers": 1}]},
                      "method 'llama_adapter'"),
    "mma": ("clip", {"methods": [{"name": "mma", "bottleneck": 4}]}, "method 'mma'"),
    "prompt_tuning": ("clip", {"methods": [{"name": "prompt_tuning", "num_virtual_tokens": 2}]},
                      "method 'prompt_tuning'"),
    "prefix_tuning": ("clip", {"methods": [{"name": "prefix_tuning", "num_virtual_tokens": 2}]},
                      "method 'prefix_tuning'"),
    "bottleneck_adapter": ("clip", {"methods": [{"name": "bottleneck_adapter", "bottleneck": 4}]},
                           "method 'bottleneck_adapter'"),
    "resampler": ("clip", {"connector": {"name": "resampler", "num_queries": 4, "num_heads": 4}},
                  "connector 'resampler'"),
    "mlp-width": ("clip", {"connector": {"name": "mlp", "hidden_dim": 16}}, "connector mlp hidden_dim: 16"),
    "grid": ("clip", {"vision": {"grid": 2}}, "vision.grid: 2"),
    "image-size": ("clip", {"vision": {"image_size": 48}}, "vision.image_size: 48"),
    "cls": ("clip", {"vision": {"tokens": "cls"}}, "vision.tokens: cls"),
    "layer-merge-tokens": ("clip", {"vision": {"feature_layers": [-2, -1], "layer_merge": "tokens"}},
                           "vision.layer_merge: tokens"),
    "siglip-cls-patch": ("siglip", {"vision": {"tokens": "cls+patch"}}, "vision.tokens: cls+patch"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unrepresentable_recipe_is_one_line_and_writes_nothing(case, tiny_llms, towers, tiny_data, recipe_dict,
                                                              tmp_path, capsys):
    tower, changes, named = REFUSED[case]
    changes = dict(changes)
    if "methods" in changes:  # train the method instead of LoRA
        changes["trainable"] = [{"name": "connector", "params": ["connector"], "lr": 1e-2},
                                {"name": "m", "params": [changes["methods"][0]["name"]], "lr": 1e-2}]
    d = _recipe(recipe_dict, tiny_llms["llama"], towers[tower], tiny_data, tmp_path / "run", **changes)
    if case == "efficientnet":
        d["vision"] = changes["vision"]
    run = _checkpoint(d, tmp_path / "run")[0]
    capsys.readouterr()
    out = tmp_path / "llava"
    with pytest.raises(SystemExit) as e:
        _export(run, out)
    assert e.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("vlgraft: error: llava-hf cannot represent ") and named in lines[0], lines[0]
    assert lines[0].endswith("export with --format vlgraft"), lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
