"""Training loop: checkpoints, resume, multi-process equivalence."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vlgraft.config import to_dict
from vlgraft.training import checkpoint as ckpt_mod
from vlgraft.training.checkpoint import load_vlm
from vlgraft.training.loop import train


def _weights(run):
    return load_file(run / "final" / "trainable.safetensors")


def test_checkpoint_holds_exactly_trainable_and_round_trips(tiny_recipe, mixed_batch):
    recipe = tiny_recipe(max_steps=3)
    out = train(recipe, source="test")
    w = _weights(out)
    vlm, _, _ = load_vlm(out)
    trainable = {n for n, p in vlm.named_parameters() if p.requires_grad}
    assert set(w) == trainable
    assert all(k.startswith("connector.") or ".lora_" in k for k in w)
    assert not any(k.startswith("vision.") for k in w)
    # logits after reload are bit-identical to the trained weights' logits
    b = mixed_batch(vlm)
    logits = vlm(b["input_ids"], b["attention_mask"], pixel_values=b["pixel_values"])["logits"]
    vlm2, _, _ = load_vlm(out)
    assert torch.equal(logits, vlm2(b["input_ids"], b["attention_mask"], pixel_values=b["pixel_values"])["logits"])
    # training moved the weights away from init (LoRA B starts at zero)
    assert any(w[k].abs().sum() > 0 for k in w if "lora_B" in k)
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3 and (out / "tb").is_dir()


def test_loss_decreases(tiny_recipe):
    import json

    from vlgraft.config import ParamGroup
    r = tiny_recipe(max_steps=12, log_every=1)
    r.methods = []
    r.trainable = [ParamGroup("connector", ["connector"], 1e-2), ParamGroup("llm", ["llm"], 1e-2)]
    out = train(r, source="test")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.5  # nats


@pytest.mark.slow
def test_resume_matches_uninterrupted(tiny_recipe, tmp_path, monkeypatch):
    full = tiny_recipe(max_steps=4, save_every=2, schedule="cosine", warmup_ratio=0.25)
    full.train.output_dir = str(tmp_path / "full")
    train(full, source="test")

    part = tiny_recipe(max_steps=4, save_every=2, schedule="cosine", warmup_ratio=0.25)
    part.train.output_dir = str(tmp_path / "part")
    crash_then_resume(part, part, monkeypatch, at=2)
    assert_same_weights(tmp_path / "full", tmp_path / "part")


def crash_then_resume(first, resumed, monkeypatch, at: int) -> None:
    """Train recipe ``first`` until it dies right after writing its step-``at`` checkpoint, then
    ``--resume`` it with recipe ``resumed`` (the same run folder)."""
    real_save = ckpt_mod.save_checkpoint

    def save_then_crash(path, *a, **k):
        real_save(path, *a, **k)
        if path.name == f"step-{at:06d}":
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(first, source="test")
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", real_save)
    assert not (Path(first.train.output_dir) / "final").exists()
    train(resumed, resume=True, source="test")


def assert_same_weights(run_a, run_b) -> None:
    a, b = _weights(run_a), _weights(run_b)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_refuses_to_clobber_and_resume_checks_recipe(tiny_recipe):
    from vlgraft.errors import VlgraftError

    r = tiny_recipe(max_steps=2, save_every=1)
    train(r, source="test")
    with pytest.raises(VlgraftError, match="already holds a run"):
        train(r, source="test")
    r.connector.hidden_dim = 7
    with pytest.raises(VlgraftError, match="recipe differs .*connector.hidden_dim"):
        train(r, resume=True, source="test")


def _run_cli(recipe_dict, path, nproc):
    path.write_text(yaml.safe_dump(recipe_dict))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "vlgraft.cli", "train", str(path)]
    else:
        # accelerate's --cpu launcher starts one process unless MPI is set up; --multi_gpu uses torchrun,
        # and on a machine without GPU vlgraft's Accelerator(cpu=True) then trains with DDP over gloo.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc), "--multi_gpu",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "vlgraft.cli", "train", str(path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"x {nproc} proc)" in res.stderr  # really ran as nproc processes


@pytest.mark.slow
def test_two_processes_match_one_at_same_global_batch(tiny_recipe, tmp_path):
    base = to_dict(tiny_recipe(max_steps=3, warmup_ratio=0.0))
    one = {**base, "train": {**base["train"], "batch_size": 4, "output_dir": str(tmp_path / "one")}}
    two = {**base, "train": {**base["train"], "batch_size": 2, "output_dir": str(tmp_path / "two")}}
    _run_cli(one, tmp_path / "one.yaml", 1)
    _run_cli(two, tmp_path / "two.yaml", 2)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert set(a) == set(b)
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
        moved += int(a[k].abs().sum() > 0)
    assert moved > 0


def test_lr_mm1_follows_the_llm_size(tiny_recipe):
    import math

    from vlgraft.config import ParamGroup
    from vlgraft.errors import ConfigError
    from vlgraft.models.vlm import VLM
    from vlgraft.training.optim import build_optimizer, resolve_groups

    r = tiny_recipe()
    r.trainable = [ParamGroup("connector", ["connector"], "mm1"), ParamGroup("lora", ["llm.*lora_*"], 1e-3)]
    vlm = VLM.from_recipe(r)
    llm = vlm.llm.model
    emb = {id(p) for p in llm.get_input_embeddings().parameters()}
    n = sum(p.numel() for p in llm.parameters() if id(p) not in emb)  # tied head: the same tensor
    opt = build_optimizer(resolve_groups(vlm, r.trainable), llm)
    lr = math.exp(-0.4214 * math.log(n) - 0.5535)
    assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1 * lr)
    assert opt.param_groups[1]["lr"] == 1e-3
    r.trainable[0].lr = "fast"
    with pytest.raises(ConfigError, match="'mm1'"):
        build_optimizer(resolve_groups(vlm, r.trainable), llm)


@pytest.mark.slow
def test_init_from_chains_stage_one_by_reference(tiny_recipe, tmp_path):
    """Stage 1 trains the connector only; stage 2 starts from it (by reference), freezes it and
    trains LoRA. Stage 2's checkpoint holds only LoRA, and loading it restores stage 1's connector."""
    from vlgraft.config import Recipe, from_dict
    from vlgraft.errors import VlgraftError

    s1 = to_dict(tiny_recipe(max_steps=2))
    s1["methods"], s1["trainable"] = [], [{"name": "connector", "params": ["connector"], "lr": 1e-2}]
    s1["train"]["output_dir"] = str(tmp_path / "stage1")
    with pytest.raises(VlgraftError, match="depends on no trainable parameter"):  # its text-only records
        train(from_dict(Recipe, s1), source="test")
    s1["data"]["limit"] = 12  # the 12 image records
    run1 = train(from_dict(Recipe, s1), source="test", overwrite=True)
    w1 = _weights(run1)
    assert set(w1) and all(k.startswith("connector.") for k in w1)

    s2 = to_dict(tiny_recipe(max_steps=2))
    s2["init_from"] = str(run1)
    s2["trainable"] = [{"name": "lora", "params": ["llm.*lora_*"], "lr": 1e-2}]
    s2["train"]["output_dir"] = str(tmp_path / "stage2")
    run2 = train(from_dict(Recipe, s2), source="test")
    w2 = _weights(run2)
    assert w2 and all(".lora_" in k for k in w2)  # no copy of stage 1's weights
    vlm, _, _ = load_vlm(run2)
    params = dict(vlm.named_parameters())
    for k, v in w1.items():  # the frozen connector is stage 1's, bit for bit
        assert torch.equal(params[k].detach(), v), k
    for k, v in w2.items():
        assert torch.equal(params[k].detach(), v), k

    # a reference to a run built with a different connector or extra methods is refused by name
    s3 = dict(s2, init_from=str(run2))
    s3["connector"] = {"name": "linear"}
    with pytest.raises(VlgraftError, match="connector.name"):
        ckpt_mod.load_init(None, from_dict(Recipe, s3))
    s4 = dict(s1, init_from=str(run2))
    from vlgraft.models.vlm import VLM
    with pytest.raises(VlgraftError, match="lora"):
        ckpt_mod.load_init(VLM.from_recipe(from_dict(Recipe, s4), "test"), from_dict(Recipe, s4))
    with pytest.raises(VlgraftError, match="no checkpoint"):
        ckpt_mod.load_init(None, from_dict(Recipe, dict(s2, init_from=str(tmp_path / "nowhere"))))


def test_a_short_run_prepares_only_the_images_its_steps_draw(tiny_recipe, tmp_path, monkeypatch):
    from vlgraft.data.cache import FeatureCache
    from vlgraft.training import loop

    monkeypatch.setenv("VLGRAFT_FEATURE_CACHE", str(tmp_path / "features"))
    filled = []
    real_fill = FeatureCache.fill

    def fill(self, items, *a, **k):
        filled.extend(p for p, _ in items)
        return real_fill(self, items, *a, **k)

    monkeypatch.setattr(FeatureCache, "fill", fill)
    recipe = tiny_recipe(max_steps=1, batch_size=2, grad_accum=2)  # one step: 4 of the 16 records
    drawn = []
    real_sampler = loop.sampler_for

    def spy(recipe_, data, world, rank, start, whole=False):
        s = real_sampler(recipe_, data, world, rank, start, whole)
        if not whole:  # the training loop's own sampler: the records it actually takes
            drawn.extend(i for b in real_sampler(recipe_, data, world, rank, start) for i in b)
            drawn.append(data)
        return s

    monkeypatch.setattr(loop, "sampler_for", spy)
    train(recipe, source="test")
    data = drawn.pop()
    taken = {p for i in drawn for p in data.records[i].images}
    assert len(drawn) == 4 and set(filled) == taken  # exactly the step's images, not all 12
