"""The text path: methods with ``scope: image`` leave text-only samples on the base model's path bit for
bit (and still act on image samples); a base pass (every method off) is the base model; ``train.text_kl``
adds exactly the KL to that base pass on the text-only samples' answer tokens."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlgraft.config import ParamGroup
from vlgraft.data.records import load_llava_json
from vlgraft.errors import ConfigError
from vlgraft.models.vlm import VLM
from vlgraft.training.optim import resolve_groups

SCOPED = {
    "lora": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]},
    "llama_adapter_mm": {"name": "llama_adapter", "prompt_len": 3, "layers": 2, "multimodal": True},
    "llama_adapter": {"name": "llama_adapter", "prompt_len": 3, "layers": 2, "multimodal": False},
    "serial_adapter": {"name": "bottleneck_adapter", "mode": "serial", "bottleneck": 8},
    "parallel_adapter": {"name": "bottleneck_adapter", "mode": "parallel", "bottleneck": 8},
}
SWITCHABLE = {**SCOPED,
              "llama_adapter_v2": {"name": "llama_adapter_v2", "prompt_len": 3, "layers": 1, "unfreeze_norms": False},
              "mma": {"name": "mma", "bottleneck": 4},
              "prompt_tuning": {"name": "prompt_tuning", "num_virtual_tokens": 3},
              "prefix_tuning": {"name": "prefix_tuning", "num_virtual_tokens": 3}}
NOT_SWITCHABLE = {
    "ia3": {"name": "ia3", "target_modules": ["k_proj", "v_proj"], "feedforward_modules": []},
    "dora": {"name": "lora", "r": 4, "target_modules": ["q_proj"], "use_dora": True},
    "select": {"name": "select", "modules": ["norms"]},
    "llama_adapter_v2": {"name": "llama_adapter_v2", "prompt_len": 3, "layers": 1},  # trains the LLM's norms
}


def _build(recipe, methods, randomise: bool = True) -> VLM:
    """The VLM with ``methods`` (connector weights seeded alike in every build); with ``randomise`` the
    methods' parameters are drawn at random, so that every zero-initialised part acts."""
    recipe.methods = methods
    recipe.trainable = [ParamGroup(name="connector", params=["connector"], lr=1e-2)] + [
        ParamGroup(name=f"m{i}", params=[m["name"]], lr=1e-2) for i, m in enumerate(methods)]
    torch.manual_seed(0)
    vlm = VLM.from_recipe(recipe)
    resolve_groups(vlm, recipe.trainable)
    if randomise:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for n, p in vlm.named_parameters():
                if p.requires_grad and not n.startswith("connector"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return vlm.eval()


def _batch(vlm, tiny_data, collate_records):
    """Two image records and two text-only ones, mixed in one batch."""
    recs = load_llava_json(tiny_data)
    return collate_records(vlm, recs[:2] + [r for r in recs if not r.images][:2])


def _logits(vlm, batch) -> torch.Tensor:
    with torch.no_grad():
        return vlm(**{k: v for k, v in batch.items() if k != "labels"})["logits"]


@pytest.mark.parametrize("key", list(SCOPED))
def test_scope_image_keeps_text_only_samples_on_the_base_path(tiny_recipe, tiny_data, collate_records, key):
    base = _build(tiny_recipe(), [], randomise=False)
    scoped = _build(tiny_recipe(), [{**SCOPED[key], "scope": "image"}])
    everywhere = _build(tiny_recipe(), [SCOPED[key]])
    batch = _batch(scoped, tiny_data, collate_records)
    text, img = ~batch["has_image"], batch["has_image"]
    assert text.sum() == 2 and img.sum() == 2
    got, all_rows = _logits(scoped, batch), _logits(everywhere, batch)
    assert torch.equal(got[img], all_rows[img]), f"{key}: image samples must get the method as with scope all"
    # a text-only batch (no image anywhere), as a text-only chat asks
    only_text = {k: (v[text] if torch.is_tensor(v) and v.shape[:1] == text.shape else v) for k, v in batch.items()}
    only_text["pixel_values"], only_text["image_counts"] = None, torch.zeros(2, dtype=torch.long)
    ref_text = _logits(base, only_text)
    assert torch.equal(_logits(scoped, only_text), ref_text), f"{key}: text-only input left the base path"
    assert not torch.allclose(_logits(everywhere, only_text), ref_text), f"{key}: scope all must act on text"
    if scoped.num_image_tokens == base.num_image_tokens:  # the same sequences: the base runs the mixed batch too
        ref = _logits(base, batch)
        assert torch.equal(got[text], ref[text]), f"{key}: a text-only sample of a mixed batch left the base path"
        assert not torch.allclose(got[img], ref[img]), f"{key}: the method did nothing on image samples"


@pytest.mark.parametrize("key", list(SWITCHABLE))
def test_a_base_pass_is_the_base_model(tiny_recipe, tiny_data, collate_records, key):
    base = _build(tiny_recipe(), [], randomise=False)
    vlm = _build(tiny_recipe(), [SWITCHABLE[key]])
    assert all(m.switchable(vlm) for m in vlm.methods)
    batch = _batch(vlm, tiny_data, collate_records)
    text = ~batch["has_image"]
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"], None, None, text)
    got = vlm._base_logits(*args)
    want = base._base_logits(*args)  # no method at all: the base LLM on the same rows
    assert got.shape[0] == int((batch["labels"][text][:, 1:] != -100).sum())
    assert torch.equal(got, want), f"{key}: a base pass is not the base model"
    with torch.no_grad():  # and the model itself is not (the methods act outside a base pass)
        x = vlm.prepare(batch["input_ids"][text], batch["attention_mask"][text], labels=batch["labels"][text],
                        image_counts=torch.zeros(2, dtype=torch.long))
        with vlm.method_context(x["context"]):
            hidden = vlm.llm.hidden_states(x["embeds"], x["attention_mask"], None)
            sel = x["labels"][:, 1:] != -100
            own = vlm.llm.logits(hidden[:, :-1][sel])
    assert not torch.allclose(own, want)


def test_text_kl_adds_the_kl_to_the_base_on_text_only_tokens(tiny_recipe, tiny_data, collate_records):
    base = _build(tiny_recipe(), [], randomise=False)
    vlm = _build(tiny_recipe(), [SCOPED["lora"]])
    batch = _batch(vlm, tiny_data, collate_records)
    with torch.no_grad():
        plain, with_kl = vlm(**batch), vlm(**batch, text_kl=0.5)
        logits = vlm(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
        ref = base(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
    text = ~batch["has_image"]
    sel = batch["labels"][:, 1:] != -100
    rows = text.view(-1, 1).expand_as(sel) & sel
    mine, theirs = logits[:, :-1][rows].float(), ref[:, :-1][rows].float()  # [n_text_tokens, V], by hand
    want = (F.softmax(theirs, -1) * (F.log_softmax(theirs, -1) - F.log_softmax(mine, -1))).sum()
    assert with_kl["kl_tokens"] == int(rows.sum()) > 0
    assert float(with_kl["kl_sum"]) == pytest.approx(float(want), rel=1e-4) and float(want) > 0.01
    assert float(with_kl["loss_sum"]) == pytest.approx(float(plain["loss_sum"]) + 0.5 * float(want), rel=1e-5)
    assert with_kl["n_tokens"] == plain["n_tokens"]
    zero = _build(tiny_recipe(), [SCOPED["lora"]], randomise=False)  # B = 0: the model is its base
    with torch.no_grad():
        assert float(zero(**batch, text_kl=1.0)["kl_sum"]) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("key", list(NOT_SWITCHABLE))
def test_text_kl_refuses_what_a_base_pass_cannot_switch_off(tiny_recipe, key):
    from vlgraft.training.loop import check_text_kl

    vlm = _build(tiny_recipe(), [NOT_SWITCHABLE[key]], randomise=False)
    with pytest.raises(ConfigError, match=r"train.text_kl: method '\w+' cannot be switched off"):
        check_text_kl(vlm)


def test_text_kl_refuses_a_trained_llm_weight(tiny_recipe):
    from vlgraft.training.loop import check_text_kl

    recipe = tiny_recipe()
    recipe.methods = []
    recipe.trainable = [ParamGroup(name="head", params=["llm.model.model.layers.0.mlp.*"], lr=1e-3)]
    vlm = VLM.from_recipe(recipe)
    resolve_groups(vlm, recipe.trainable)
    with pytest.raises(ConfigError, match="the LLM's own weights train"):
        check_text_kl(vlm)


def test_scope_image_refuses_dora_and_the_vision_tower(tiny_recipe):
    for extra in ({"use_dora": True}, {"target": "vision"}):
        with pytest.raises(ConfigError, match="lora: scope 'image' needs plain LoRA on the LLM"):
            _build(tiny_recipe(), [{**SCOPED["lora"], "scope": "image", **extra}], randomise=False)


@pytest.mark.slow
def test_train_with_text_kl_logs_it(tiny_recipe, tiny_data, tmp_path):
    """Trained on text-only records, LoRA moves away from the base after its first step (B = 0 there),
    and the logged KL per text token says so."""
    from vlgraft.training.loop import train

    text = [r for r in json.loads(tiny_data.read_text()) if "image" not in r]
    data = tmp_path / "text.json"
    data.write_text(json.dumps([{**r, "id": f"{r['id']}-{k}"} for k in range(4) for r in text]))
    recipe = tiny_recipe(max_steps=4, text_kl=0.5, log_every=1)
    recipe.data.train = str(data)
    run = train(recipe, source="test")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["text_kl"] == pytest.approx(0.0, abs=1e-6) and all(r["text_kl"] > 1e-6 for r in rows[1:])
