"""Every method: identity at step 0 where it is zero-initialised, different after one step, exact
checkpoint contents, reload; LLaMA-Adapter against peft's adaption prompt; LoRA merge; MMA routes."""

from __future__ import annotations

import math

import pytest
import torch

from vlgraft.config import ParamGroup
from vlgraft.data.records import load_llava_json
from vlgraft.models.anatomy import attention_of, decoder_layers
from vlgraft.models.vlm import VLM
from vlgraft.training.optim import resolve_groups

ZERO_INIT = {
    "lora": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "dora": {"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_dora": True},
    "ia3": {"name": "ia3", "target_modules": ["k_proj", "v_proj"], "feedforward_modules": []},
    "serial_adapter": {"name": "bottleneck_adapter", "mode": "serial", "bottleneck": 8},
    "parallel_adapter": {"name": "bottleneck_adapter", "mode": "parallel", "bottleneck": 8},
    "llama_adapter": {"name": "llama_adapter", "prompt_len": 3, "layers": 1, "multimodal": False},
    "llama_adapter_mm": {"name": "llama_adapter", "prompt_len": 3, "layers": 2, "multimodal": True},
    "llama_adapter_v2": {"name": "llama_adapter_v2", "prompt_len": 3, "layers": 1},
    "mma": {"name": "mma", "bottleneck": 4},
}
# peft's LoRA/IA3 target names differ on GPT-2 (fused c_attn) and OPT (k/v/q_proj like Llama)
GPT2_TARGETS = {"lora": ["c_attn"], "dora": ["c_attn"], "ia3": ["c_attn"]}
ARCHS = ["llama", "qwen2", "gemma3", "gpt2", "opt"]


def _spec(key: str, arch: str) -> dict:
    spec = dict(ZERO_INIT[key])
    if arch == "gpt2" and key in GPT2_TARGETS:
        spec["target_modules"] = GPT2_TARGETS[key]
    return spec


def _build(recipe, methods, groups=None):
    recipe.methods = methods
    recipe.trainable = groups or [ParamGroup(name="connector", params=["connector"], lr=1e-2)] + [
        ParamGroup(name=m["name"], params=[m["name"]], lr=1e-2) for m in methods]
    torch.manual_seed(0)  # same connector weights in every build
    vlm = VLM.from_recipe(recipe)
    resolve_groups(vlm, recipe.trainable)
    return vlm


@pytest.fixture
def batch_of(tiny_data, collate_records):
    """``batch_of(vlm, n_img=2, n_txt=1)``: image records first, then text-only ones."""
    def make(vlm, n_img: int = 2, n_txt: int = 1):
        recs = load_llava_json(tiny_data)
        return collate_records(vlm, recs[:n_img] + [r for r in recs if not r.images][:n_txt])
    return make


def _reference_logits(base: VLM, vlm: VLM, batch: dict) -> torch.Tensor:
    """What the frozen LLM computes for the same input sequence the method's model sees."""
    with torch.no_grad():
        x = vlm.prepare(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], None, batch["has_image"])
        if vlm.num_image_tokens:  # visual tokens in the sequence: splice with the *base* connector
            emb = base.prepare(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], None,
                               batch["has_image"])["embeds"]
            prefix = x["embeds"][:, : x["embeds"].shape[1] - emb.shape[1]]
            emb = torch.cat([prefix, emb], dim=1)
        else:
            emb = x["embeds"]
        return base.llm.model(inputs_embeds=emb, attention_mask=x["attention_mask"]).logits


# llama and qwen2 in the quick run (pytest -m "not slow"); the other families in the full one
@pytest.mark.parametrize("arch", [a if a in ("llama", "qwen2") else pytest.param(a, marks=pytest.mark.slow)
                                  for a in ARCHS])
@pytest.mark.parametrize("key", list(ZERO_INIT))
def test_zero_init_identity_then_change(tiny_recipe, batch_of, arch, key):
    base = _build(tiny_recipe(arch), [])
    vlm = _build(tiny_recipe(arch), [_spec(key, arch)])
    batch = batch_of(vlm)
    vlm.eval()
    with torch.no_grad():
        logits0 = vlm(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
    ref = _reference_logits(base, vlm, batch)
    assert logits0.shape == ref.shape
    assert torch.equal(logits0, ref), f"{key} on {arch} changes the model at step 0"

    opt = torch.optim.Adam([p for p in vlm.parameters() if p.requires_grad], lr=1e-2)
    vlm.train()
    out = vlm(**batch)
    (out["loss_sum"] / out["n_tokens"]).backward()
    opt.step()
    vlm.eval()
    with torch.no_grad():
        logits1 = vlm(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
    assert not torch.allclose(logits1, logits0), f"{key} on {arch}: one step changed nothing"


@pytest.mark.parametrize("key", ["prompt_tuning", "prefix_tuning"])
@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_methods_train(tiny_recipe, batch_of, arch, key):
    spec = {"name": key, "num_virtual_tokens": 3}
    vlm = _build(tiny_recipe(arch), [spec])
    batch = batch_of(vlm)
    with torch.no_grad():
        logits = vlm(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
    extra = 3 if key == "prompt_tuning" else 0
    assert logits.shape[1] == batch["input_ids"].shape[1] + extra
    out = vlm(**batch)
    (out["loss_sum"] / out["n_tokens"]).backward()
    grads = [p.grad for n, p in vlm.named_parameters() if n.startswith(key)]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_prefix_tuning_equals_a_prefilled_kv_cache(tiny_recipe):
    """Prefix tuning is the LM attending to extra keys/values in the same softmax: the same as a KV
    cache pre-filled with the prefix table (keys without rotary phase) before the real tokens."""
    from transformers import DynamicCache

    vlm = _build(tiny_recipe("llama"), [{"name": "prefix_tuning", "num_virtual_tokens": 3}])
    ids = torch.tensor([[5, 6, 7, 8]])
    model = vlm.llm.model
    with torch.no_grad():
        ours = vlm(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
        table = vlm.methods[0]._table(ids.device)  # [L, 2, Hkv, P, D]
        hooks = [attention_of(layer).vlgraft_prefix for layer in decoder_layers(model)]
        for layer in decoder_layers(model):
            attention_of(layer).vlgraft_prefix = None
        cache = DynamicCache()
        for i in range(table.shape[0]):
            cache.update(table[i, 0][None].clone(), table[i, 1][None].clone(), i)
        ref = model(input_ids=ids, **{vlm.llm.cache_kwarg: cache}, position_ids=torch.arange(4)[None],
                    attention_mask=torch.ones(1, 7, dtype=torch.long)).logits
        for layer, h in zip(decoder_layers(model), hooks):
            attention_of(layer).vlgraft_prefix = h
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")  # peft's own call, in its adapter
def test_llama_adapter_matches_peft(tiny_llms, tiny_recipe):
    from peft import AdaptionPromptConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    layers, k = 2, 3
    vlm = _build(tiny_recipe("llama"), [{"name": "llama_adapter", "prompt_len": k, "layers": layers,
                                         "multimodal": False}])
    ref = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llms["llama"]),
                         AdaptionPromptConfig(adapter_len=k, adapter_layers=layers, task_type="CAUSAL_LM"))
    peft_attn = [m for n, m in ref.named_modules() if type(m).__name__ == "AdaptedAttention"]
    ours = [attention_of(layer).vlgraft_prompt for layer in decoder_layers(vlm.llm.model)][-layers:]
    assert len(peft_attn) == len(ours) == layers
    torch.manual_seed(1)
    with torch.no_grad():
        for pa, mine, gate in zip(peft_attn, ours, (0.3, -0.6)):
            pa.adaption_prompt.normal_()
            pa.adaption_gate.fill_(gate)
            mine.prompt.copy_(pa.adaption_prompt[0])
            mine.gate.fill_(math.atanh(gate))  # per-head tanh(g) == peft's single scalar gate
        ids = torch.tensor([[1, 5, 9, 11, 20, 3], [2, 8, 4, 6, 7, 10]])
        mask = torch.ones_like(ids)
        a = vlm(input_ids=ids, attention_mask=mask)["logits"]
        b = ref(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_lora_merge_matches_unmerged(tiny_recipe, batch_of):
    from peft.tuners.lora import LoraLayer

    from vlgraft.methods.lora import merge_adapters

    vlm = _build(tiny_recipe("llama"), [ZERO_INIT["lora"]])
    with torch.no_grad():
        for n, p in vlm.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    vlm.eval()
    batch = batch_of(vlm)
    inp = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        before = vlm(**inp)["logits"]
        assert merge_adapters(vlm.llm.model, LoraLayer) == 2 * 2
        assert not any("lora_" in n for n, _ in vlm.named_parameters())
        after = vlm(**inp)["logits"]
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()


def test_lora_and_ia3_merge_each_their_own_layers(tiny_recipe, batch_of):
    """Each mergeable method folds its own layers (the counts export reports), and the merged model
    computes what the unmerged one does."""
    vlm = _build(tiny_recipe("llama"), [{"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj"]},
                                        {"name": "ia3", "target_modules": ["v_proj", "down_proj"],
                                         "feedforward_modules": ["down_proj"]}])
    with torch.no_grad():
        for n, p in vlm.named_parameters():
            if "lora_B" in n or "ia3_l" in n:
                p.normal_(mean=1.0 if "ia3_l" in n else 0.0, std=0.2)
    vlm.eval()
    inp = {k: v for k, v in batch_of(vlm).items() if k != "labels"}
    with torch.no_grad():
        before = vlm(**inp)["logits"]
        counts = [m.merge(vlm) for m in vlm.methods]
        after = vlm(**inp)["logits"]
    assert counts == [2, 2 * 2]
    assert not any("lora_" in n or "ia3_" in n for n in vlm.state_dict())
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()


@pytest.mark.parametrize("key", ["lora", "serial_adapter", "llama_adapter_mm", "llama_adapter_v2", "mma"])
def test_checkpoint_holds_exactly_the_method(tiny_recipe, batch_of, tmp_path, key):
    from vlgraft.training import checkpoint as ckpt

    recipe = tiny_recipe("qwen2")
    vlm = _build(recipe, [ZERO_INIT[key]])
    name = ZERO_INIT[key]["name"]
    with torch.no_grad():
        for p in vlm.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    expected = set(vlm.method_params[name]) | {n for n, _ in vlm.connector.named_parameters(prefix="connector")}
    base = {n for n, _ in _build(tiny_recipe("qwen2"), []).named_parameters()}
    # the method's parameters are new tensors (a wrapped base weight such as peft's base_layer is not one)
    assert not {n.replace(".base_layer", "") for n in vlm.method_params[name]} & base - {
        n for n in vlm.method_params[name] if "norm" in n}
    assert set(vlm.trainable_state_dict()) == expected
    ckpt.save_checkpoint(tmp_path / "ck", vlm, recipe)
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / "ck" / "trainable.safetensors")) == expected
    again, _, _ = ckpt.load_vlm(tmp_path / "ck")
    batch = batch_of(vlm)
    inp = {k: v for k, v in batch.items() if k != "labels"}
    vlm.eval()
    with torch.no_grad():
        assert torch.equal(vlm(**inp)["logits"], again(**inp)["logits"])


def test_llama_adapter_v2_groups_are_disjoint(tiny_recipe):
    vlm = _build(tiny_recipe("llama"), [ZERO_INIT["llama_adapter_v2"]],
                 groups=[ParamGroup(name="image", params=["llama_adapter_v2.image"], lr=1e-3),
                         ParamGroup(name="language", params=["llama_adapter_v2.language"], lr=1e-3)])
    image = set(vlm.method_params["llama_adapter_v2.image"]) - {"connector.*"}
    language = set(vlm.method_params["llama_adapter_v2.language"])
    assert image and language and not image & language
    assert all(".vlgraft_visual." in n for n in image)
    assert any("norm" in n for n in language) and any("vlgraft_bias_scale" in n for n in language)
    assert all(p.requires_grad for n, p in vlm.named_parameters() if n.startswith("connector."))


def test_mma_routes_text_and_image_differently(tiny_recipe, batch_of, monkeypatch):
    from vlgraft.methods.mma import RoutedAdapter

    seen: dict = {}  # router -> the routes of each call
    original = RoutedAdapter.routes

    def spy(self, x):
        out = original(self, x)
        seen.setdefault(self, []).append(out)
        return out

    monkeypatch.setattr(RoutedAdapter, "routes", spy)
    vlm = _build(tiny_recipe("llama"), [ZERO_INIT["mma"]])
    batch = batch_of(vlm, n_img=1, n_txt=1)
    with torch.no_grad():
        vlm(**{k: v for k, v in batch.items() if k != "labels"})
    routes = [calls[0] for calls in seen.values()]
    assert len(routes) == 2 and all(len(c) == 1 for c in seen.values())  # one router per layer, once a forward
    assert batch["has_image"].tolist() == [True, False]
    for r in routes:
        assert torch.allclose(r.sum(-1), torch.ones(2))
        assert not torch.allclose(r[0], r[1])
    # the modality token is what differs: two image samples route identically
    batch2 = batch_of(vlm, n_img=2, n_txt=0)
    seen.clear()
    with torch.no_grad():
        vlm(**{k: v for k, v in batch2.items() if k != "labels"})
    assert len(seen) == 2
    for (r,) in seen.values():
        assert torch.allclose(r[0], r[1])


def test_mma_vision_adapters_on_transformer_tower(tiny_recipe):
    vlm = _build(tiny_recipe("llama"), [ZERO_INIT["mma"]])
    assert any(n.startswith("vision.") and "vlgraft_mma" in n for n in vlm.method_params["mma"])
    assert not vlm.vision_cacheable()


def test_select_presets(tiny_recipe):
    vlm = _build(tiny_recipe("llama"), [{"name": "lora", "r": 4, "target_modules": ["q_proj"]},
                                        {"name": "select", "modules": ["head", "lora"]}],
                 groups=[ParamGroup(name="connector", params=["connector"], lr=1e-3),
                         ParamGroup(name="sel", params=["select"], lr=1e-3)])
    trained = {n for n, p in vlm.named_parameters() if p.requires_grad}
    assert "llm.model.lm_head.weight" in trained or "llm.model.model.embed_tokens.weight" in trained
    assert any("lora_A" in n for n in trained)
    assert not any(n.startswith("vision.") for n in trained)


def test_lora_on_chosen_layers_only(tiny_recipe):
    vlm = _build(tiny_recipe("llama"), [{"name": "lora", "r": 2, "target_modules": ["q_proj"], "layers": [-1]}])
    names = vlm.method_params["lora"]
    assert names and all(".layers.1." in n for n in names)


def test_lora_on_vision_tower(tiny_recipe, tiny_data, collate_records):
    spec = {"name": "lora", "r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"], "target": "vision"}
    base = _build(tiny_recipe("llama"), [])
    vlm = _build(tiny_recipe("llama"), [spec])
    names = vlm.method_params["lora"]
    assert names and all(n.startswith("vision.") and ".lora_" in n for n in names)
    assert not vlm.vision_cacheable()  # cached features would be the base tower's
    batch = collate_records(vlm, load_llava_json(tiny_data)[:2])
    with torch.no_grad():
        assert torch.equal(vlm.encode_images(batch["pixel_values"]), base.encode_images(batch["pixel_values"]))
    out = vlm(**batch)
    (out["loss_sum"] / out["n_tokens"]).backward()
    # feature_layer -2: the tower's first block feeds the features, the last one does not
    grads = {n: p.grad for n, p in vlm.named_parameters() if n in names and "lora_B" in n}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".layers.0." in n)
    assert all(g is None for n, g in grads.items() if ".layers.1." in n)
