"""Tiny random-initialised parts built on the fly (no download): a CLIP vision tower and Llama,
Qwen2, Gemma3, GPT-2 and OPT style LLMs saved to folders and loaded through the real ``hf:`` code paths."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLGRAFT_DEBUG", "1")  # an unexpected exception shows its traceback in a failing test


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Feature cache in a temp folder; the converted bundled LLM stays in the user cache (slow to redo)."""
    from vlgraft.zoo.smollm2 import converted_dir

    converted_dir()  # convert once into the normal cache
    os.environ["VLGRAFT_FEATURE_CACHE"] = str(tmp_path_factory.mktemp("features"))
    yield


@pytest.fixture(autouse=True)
def _default_image_limit():
    """A command sets the image pixel limit from its recipe (data.max_image_pixels); reset it after each test."""
    yield
    from vlgraft.data.images import set_max_pixels

    set_max_pixels(None)


@pytest.fixture(scope="session")
def tokenizer_dir():
    from vlgraft.zoo.smollm2 import converted_dir

    return converted_dir()


def _save_tiny_llm(kind: str, out: Path, tok_dir: Path) -> Path:
    from transformers import (
        AutoTokenizer,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(tok_dir)
    vocab = len(tok)
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             tie_word_embeddings=True))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    elif kind == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                   head_dim=8, sliding_window=16, max_position_embeddings=512))
    elif kind == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=512, word_embed_proj_dim=32))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=512))
        tok.chat_template = None  # exercise the fallback template
    else:
        raise ValueError(kind)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if kind == "gpt2":  # save_pretrained may keep the template in a side file
        for f in out.glob("chat_template*"):
            f.unlink()
        cfg = json.loads((out / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="session")
def tiny_llms(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("llms")
    return {k: _save_tiny_llm(k, root / k, tokenizer_dir) for k in ("llama", "qwen2", "gpt2", "gemma3", "opt")}


def _save_tiny_tower(kind: str, out: Path) -> Path:
    """A tiny random transformers vision tower (32 px, patch 8, width 24) and its image processor."""
    import transformers

    model, config, processor, proc_kw = {
        "clip": ("CLIPVisionModel", "CLIPVisionConfig", "CLIPImageProcessor",
                 {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
        "siglip": ("SiglipVisionModel", "SiglipVisionConfig", "SiglipImageProcessor",  # no class token
                   {"size": {"height": 32, "width": 32}}),
    }[kind]
    torch.manual_seed(0)
    cfg = getattr(transformers, config)(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=32, patch_size=8)
    getattr(transformers, model)(cfg).save_pretrained(out)
    getattr(transformers, processor)(**proc_kw).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    return _save_tiny_tower("clip", tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory):
    return _save_tiny_tower("siglip", tmp_path_factory.mktemp("siglip"))


COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A LLaVA-format JSON file: 12 image conversations (coloured squares) and 4 text-only ones."""
    root = tmp_path_factory.mktemp("data")
    (root / "img").mkdir()
    records = []
    for i in range(12):
        name = list(COLORS)[i % 4]
        Image.new("RGB", (40, 40), COLORS[name]).save(root / "img" / f"{i}.png")
        records.append({"id": f"im{i}", "image": f"img/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is it?"}, {"from": "gpt", "value": name},
            {"from": "human", "value": "Is it a square?"}, {"from": "gpt", "value": "yes"}]})
    for i in range(4):
        records.append({"id": f"txt{i}", "conversations": [
            {"from": "human", "value": f"What is {i} plus {i}?"}, {"from": "gpt", "value": str(2 * i)}]})
    path = root / "train.json"
    path.write_text(json.dumps(records))
    return path


def tiny_recipe_dict(llm_dir: Path, clip_dir: Path, data: Path, out: Path, **train) -> dict:
    return {
        "name": "tiny",
        "vision": {"name": f"hf:{clip_dir}", "feature_layer": -2, "grid": 2},
        "llm": {"name": f"hf:{llm_dir}", "system_prompt": ""},
        "connector": {"name": "mlp"},
        "methods": [{"name": "lora", "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}],
        "trainable": [{"name": "connector", "params": ["connector"], "lr": 1e-2},
                      {"name": "lora", "params": ["llm.*lora_*"], "lr": 1e-2}],
        "data": {"train": str(data), "eval": str(data), "max_length": 128},
        "train": {"output_dir": str(out), "batch_size": 4, "max_steps": 4, "precision": "fp32",
                  "log_every": 1, "warmup_ratio": 0.0, **train},
        "eval": {"batch_size": 8, "max_new_tokens": 4},
    }


@pytest.fixture(scope="session")
def recipe_dict():
    """``recipe_dict(llm_dir, clip_dir, data, out, **train)``: a tiny recipe as plain data."""
    return tiny_recipe_dict


@pytest.fixture
def tiny_recipe(tiny_llms, tiny_clip, tiny_data, tmp_path):
    from vlgraft.config import Recipe, from_dict

    def make(arch: str = "llama", **train):
        return from_dict(Recipe, tiny_recipe_dict(tiny_llms[arch], tiny_clip, tiny_data, tmp_path / "run", **train))

    return make


def _collate_records(vlm, recs):
    """Tokenised, collated training batch of these records (pixels for the image ones)."""
    from vlgraft.data.conversation import tokenize_conversation
    from vlgraft.data.dataset import collate
    from vlgraft.data.images import load_image

    items = []
    for r in recs:
        ex = tokenize_conversation(r, vlm.llm, vlm.num_image_tokens, 128)
        if r.images:
            ex["pixel_values"] = vlm.vision.preprocess([load_image(r.images[0])])[0]
        items.append(ex)
    return collate(items, vlm.llm.tokenizer.pad_token_id)


@pytest.fixture
def collate_records():
    """``collate_records(vlm, records)``: a training batch of those records."""
    return _collate_records


@pytest.fixture
def mixed_batch(tiny_data):
    """``mixed_batch(vlm, n=3)``: a batch of n tiny_data records, image and text-only ones mixed."""
    from vlgraft.data.records import load_llava_json

    return lambda vlm, n=3: _collate_records(vlm, load_llava_json(tiny_data)[10:10 + n])
