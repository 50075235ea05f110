import pytest
import torch

from vlgraft.data.conversation import IGNORE
from vlgraft.errors import VlgraftError
from vlgraft.models.vlm import IMAGE_TOKEN_ID, VLM
from vlgraft.training.optim import resolve_groups


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_splice_loss_and_frozen_grads(tiny_recipe, mixed_batch, arch):
    recipe = tiny_recipe(arch)
    if arch == "gpt2":
        recipe.methods = [{"name": "lora", "r": 4, "alpha": 8, "target_modules": ["c_attn"]}]
    vlm = VLM.from_recipe(recipe)
    resolve_groups(vlm, recipe.trainable)
    b = mixed_batch(vlm)
    n_img = int((b["input_ids"] == IMAGE_TOKEN_ID).sum())
    assert n_img == b["pixel_values"].shape[0] * vlm.num_image_tokens == 2 * 4

    # visual tokens land exactly at the placeholder positions, in order; text embeddings elsewhere
    visual = vlm.visual_embeds(pixel_values=b["pixel_values"])
    emb = vlm.embed_inputs(b["input_ids"], visual)
    mask = b["input_ids"] == IMAGE_TOKEN_ID
    assert torch.equal(emb[mask], visual.reshape(-1, visual.shape[-1]))
    text_ids = b["input_ids"][~mask]
    assert torch.equal(emb[~mask], vlm.llm.embed(text_ids))
    with pytest.raises(VlgraftError, match="image-token positions"):
        vlm.embed_inputs(b["input_ids"], visual[:1])

    # loss at labelled positions only equals the full-logits HF loss
    out = vlm(**b)
    logits = vlm(b["input_ids"], b["attention_mask"], pixel_values=b["pixel_values"])["logits"]
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(),
                                            ignore_index=IGNORE, reduction="sum")
    assert out["n_tokens"] == int((b["labels"][:, 1:] != IGNORE).sum())
    torch.testing.assert_close(out["loss_sum"], ref, rtol=1e-5, atol=1e-4)

    # gradients reach exactly the trainable parameters; frozen ones get none
    out["loss_sum"].backward()
    for name, p in vlm.named_parameters():
        if p.requires_grad:  # (LoRA A has a zero gradient at init because B = 0)
            assert p.grad is not None and ("lora_A" in name or p.grad.abs().sum() > 0), name
        else:
            assert p.grad is None, f"frozen {name} received a gradient"


def test_labels_masked_changes_loss(tiny_recipe, mixed_batch):
    """Unmasking a prompt token must change the loss: the mask is what the loss sees."""
    recipe = tiny_recipe()
    vlm = VLM.from_recipe(recipe)
    b = mixed_batch(vlm, 1)
    base = vlm(**b)
    labels = b["labels"].clone()
    j = int((labels[0] == IGNORE).nonzero()[3])
    labels[0, j] = b["input_ids"][0, j]
    changed = vlm(**{**b, "labels": labels})
    assert changed["n_tokens"] == base["n_tokens"] + 1 and changed["loss_sum"] != base["loss_sum"]


def test_lora_is_identity_at_init(tiny_recipe, mixed_batch):
    recipe = tiny_recipe()
    with_lora = VLM.from_recipe(recipe)
    recipe.methods = []
    plain = VLM.from_recipe(recipe)
    plain.connector.load_state_dict(with_lora.connector.state_dict())
    b = mixed_batch(plain)
    a = with_lora(b["input_ids"], b["attention_mask"], pixel_values=b["pixel_values"])["logits"]
    c = plain(b["input_ids"], b["attention_mask"], pixel_values=b["pixel_values"])["logits"]
    assert torch.equal(a, c)


def test_resolve_groups_rejects_overlap_and_empty(tiny_recipe):
    from vlgraft.config import ParamGroup
    from vlgraft.errors import ConfigError

    recipe = tiny_recipe()
    vlm = VLM.from_recipe(recipe)
    with pytest.raises(ConfigError, match="matches trainable groups \\['a', 'b'\\]"):
        resolve_groups(vlm, [ParamGroup("a", ["connector"]), ParamGroup("b", ["connector.fc1.*"])])
    with pytest.raises(ConfigError, match="group 'z' matches no parameter"):
        resolve_groups(vlm, [ParamGroup("z", ["nothing.*"])])


def test_bundled_parts_load(tmp_path):
    from vlgraft.config import LLMOptions, VisionOptions
    from vlgraft.models.llm import build_llm
    from vlgraft.models.vision import build_vision

    llm = build_llm(LLMOptions())
    assert llm.hidden_size == 576 and llm.tokenizer.convert_ids_to_tokens(llm.stop_token_ids[0]) == "<|im_end|>"
    enc = build_vision(VisionOptions(grid=3))
    from PIL import Image
    x = enc.preprocess([Image.new("RGB", (64, 64), (200, 0, 0))])
    assert enc(x).shape == (1, 9, 1280)
    assert enc.cache_key() != build_vision(VisionOptions(grid=4)).cache_key()
