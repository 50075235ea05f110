"""Records packed into one row (``data.pack``) compute exactly what they compute alone."""

import json

import pytest
import torch

from vlgraft.data.dataset import ConversationDataset, collate
from vlgraft.data.mixture import Source
from vlgraft.data.packing import PackedDataset, balance_lengths, check_packable, pack_lengths, plan_rows
from vlgraft.data.records import load_llava_json
from vlgraft.errors import ConfigError
from vlgraft.models.vlm import VLM


def _records(tiny_data):
    recs = load_llava_json(tiny_data)
    return [recs[0], recs[1], recs[12], recs[2], recs[13]]  # image, image, text, image, text


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("turns", ["conversation", "independent"])
def test_packed_records_equal_unpacked_logits_and_gradients(tiny_recipe, tiny_data, arch, turns):
    recipe = tiny_recipe(arch)  # LoRA on the attention's q, v (scope: all), an MLP connector: both act per token
    if arch == "gpt2":
        recipe.methods[0].target_modules = ["c_attn"]
    vlm = VLM.from_recipe(recipe).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA's B starts at zero: make it act, so the test covers the method too
        for n, p in vlm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    recs = _records(tiny_data)
    ds = ConversationDataset(recs, vlm, 128, None, turns)
    pad = vlm.llm.tokenizer.pad_token_id
    image_rows = [[0, 1, 3]]  # three image records in one row
    packed = PackedDataset(ds, image_rows)
    row = collate([packed[0]], pad)
    assert int(row["image_counts"]) == 3 and row["document_ids"].max() == 2
    with torch.no_grad():
        logits = vlm(**{k: v for k, v in row.items() if k != "labels"})["logits"][0]
    start = 0
    for i in image_rows[0]:
        alone = collate([ds[i]], pad)
        with torch.no_grad():
            ref = vlm(**{k: v for k, v in alone.items() if k != "labels"})["logits"][0]
        n = ds.num_tokens(i)
        assert torch.equal(row["input_ids"][0, start:start + n], alone["input_ids"][0])
        torch.testing.assert_close(logits[start:start + n], ref, rtol=1e-4, atol=1e-4)
        start += n

    # a training step: the same loss and the same gradients from the packed rows as from one row per record
    vlm.train()
    for mod in vlm.modules():  # LoRA's dropout would draw different masks for the two layouts
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    lora = [p for n, p in vlm.named_parameters() if p.requires_grad]

    def grads(batch):
        vlm.zero_grad()
        out = vlm(**batch)
        out["loss_sum"].backward()
        return out["loss_sum"].detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in lora]

    rows, _ = plan_rows(recs, [ds.num_tokens(i) for i in range(len(ds))], [Source("x", 0, len(recs), 1.0)], 128,
                        by_epochs=False)
    assert sorted(i for r in rows for i in r) == list(range(len(recs))) and len(rows) < len(recs)
    assert all(len({recs[i].has_image for i in r}) == 1 for r in rows)  # one modality per row
    loss_p, g_p = grads(collate([PackedDataset(ds, rows)[j] for j in range(len(rows))], pad))
    loss_u, g_u = grads(collate([ds[i] for i in range(len(recs))], pad))
    torch.testing.assert_close(loss_p, loss_u, rtol=1e-4, atol=1e-4)
    for a, b in zip(g_p, g_u):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_balance_lengths_makes_few_even_rows():
    lengths = [450, 40, 45, 38, 60, 55, 42, 120]  # a long conversation and short captions: 850 tokens
    rows = balance_lengths(lengths, 512)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    totals = sorted(sum(lengths[i] for i in r) for r in rows)
    assert len(rows) == 2 and totals[-1] <= 512 and totals[-1] - totals[0] <= 60  # 425 + 425 would be ideal
    assert balance_lengths([300, 300, 300], 512) == [[0], [1], [2]]  # two would not fit: a third row
    with pytest.raises(ValueError, match="exceeds"):
        balance_lengths([513], 512)


def test_pack_lengths_fills_rows_without_overflow():
    lengths = [5, 5, 5, 5, 9, 1, 3, 7]
    rows = pack_lengths(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))  # every item exactly once
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 4  # 40 tokens into rows of 10: best-fit decreasing finds the optimum here
    assert rows == pack_lengths(lengths, 10)  # deterministic
    with pytest.raises(ValueError, match="exceeds"):
        pack_lengths([11], 10)


def test_methods_that_condition_on_the_sample_refuse_packing(tiny_recipe):
    recipe = tiny_recipe()
    check_packable(VLM.from_recipe(recipe))  # LoRA: fine
    from vlgraft.config import Recipe, from_dict, to_dict

    d = to_dict(recipe)
    for method, why in [({"name": "llama_adapter", "prompt_len": 2, "layers": 1, "multimodal": True}, "image outside"),
                        ({"name": "prompt_tuning", "num_virtual_tokens": 2}, "before each sample")]:
        d["methods"] = [method]
        d["trainable"] = [{"name": "all", "params": ["connector"], "lr": 1e-3}]
        with pytest.raises(ConfigError, match=f"data.pack: method .*{why}"):
            check_packable(VLM.from_recipe(from_dict(Recipe, d)))


def test_training_with_pack_runs_resumes_exactly_and_logs_padding(tiny_recipe, tmp_path, monkeypatch):
    from tests.test_train import assert_same_weights, crash_then_resume
    from vlgraft.training.loop import train

    def recipe(out):
        r = tiny_recipe(max_steps=4, save_every=2, batch_size=2)
        r.data.pack = True
        r.data.group_by_modality = True
        r.train.output_dir = str(tmp_path / out)
        return r

    train(recipe("full"), source="test")
    metrics = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["padding"] < 1 and m["samples_per_s"] > 0 for m in metrics if "padding" in m)
    crash_then_resume(recipe("part"), recipe("part"), monkeypatch, at=2)
    assert_same_weights(tmp_path / "full", tmp_path / "part")
