"""Mixtures: ratios, per-source epochs, modality-grouped batches, determinism; joint training."""

import json
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from vlgraft.config import MixSource, ParamGroup
from vlgraft.data.mixture import Source
from vlgraft.data.sampler import MicroBatches
from vlgraft.errors import ConfigError, VlgraftError
from vlgraft.training.loop import train


def _sources(sizes, weights):
    out, off = [], 0
    for n, w in zip(sizes, weights):
        out.append(Source(f"s{len(out)}", off, n, w))
        off += n
    return out


def _samples(sampler):
    return [i for mb in sampler for i in mb]


def _source_of(i, sources):
    return next(k for k, s in enumerate(sources) if s.offset <= i < s.offset + s.size)


def test_ratio_5_5_1_within_2_percent_over_10000_samples():
    sources = _sources([120, 40, 7], [5, 5, 1])  # very different sizes: the small ones cycle
    n = sum(s.size for s in sources)
    sampler = MicroBatches([10] * n, batch=10, accum=1, world=1, rank=0, seed=3, start=0, total=1000, sources=sources)
    got = Counter(_source_of(i, sources) for i in _samples(sampler))
    assert sum(got.values()) == 10_000
    for k, want in enumerate([5 / 11, 5 / 11, 1 / 11]):
        assert abs(got[k] / 10_000 - want) < 0.02, (k, got)
    # a cycling source goes through all its records before repeating any: counts differ by at most 1
    small = Counter(i for i in _samples(sampler) if _source_of(i, sources) == 2)
    assert set(small) == set(range(160, 167)) and max(small.values()) - min(small.values()) <= 1


def test_epochs_per_source():
    sources = _sources([50, 20], [1 * 50, 3 * 20])  # epochs 1 and 3 -> weights 50 and 60
    sampler = MicroBatches([5] * 70, batch=10, accum=1, world=1, rank=0, seed=0, start=0, total=1100,
                           sources=sources)
    got = Counter(_source_of(i, sources) for i in _samples(sampler))
    assert abs(got[1] / got[0] - 60 / 50) < 0.06


def test_resume_and_processes_see_the_same_global_batches():
    sources = _sources([30, 30, 5], [5, 5, 1])
    lengths = [(i * 7) % 13 + 1 for i in range(65)]
    kw = dict(seed=1, total=80, sources=sources, is_image=[i < 30 for i in range(65)])
    full = list(MicroBatches(lengths, 4, 1, 1, 0, start=0, **kw))
    assert list(MicroBatches(lengths, 4, 1, 1, 0, start=50, **kw)) == full[50:]  # resume mid-way (a later block)
    r0, r1 = (list(MicroBatches(lengths, 2, 1, 2, r, start=0, **kw)) for r in (0, 1))
    assert [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(x) for x in full]


def test_group_by_modality():
    is_image = [i % 3 != 0 for i in range(90)]
    sampler = MicroBatches([1] * 90, batch=6, accum=1, world=1, rank=0, seed=0, start=0, total=60, is_image=is_image)
    mixed = [b for b in sampler if 0 < sum(is_image[i] for i in b) < len(b)]
    assert not mixed  # 60 image and 30 text records: both fill whole batches of 6
    plain = MicroBatches([1] * 90, batch=6, accum=1, world=1, rank=0, seed=0, start=0, total=60)
    assert any(0 < sum(is_image[i] for i in b) < len(b) for b in plain)  # without grouping, batches mix


def _split_files(tiny_data, tmp_path):
    recs = json.loads(tiny_data.read_text())
    img = [r for r in recs if "image" in r]
    txt = [r for r in recs if "image" not in r]
    for r in img:
        r["image"] = str(tiny_data.parent / r["image"])
    (tmp_path / "img.json").write_text(json.dumps(img))
    (tmp_path / "txt.json").write_text(json.dumps(txt))
    return tmp_path / "img.json", tmp_path / "txt.json"


def test_mixture_trains_and_bad_mixtures_are_refused(tiny_recipe, tiny_data, tmp_path):
    img, txt = _split_files(tiny_data, tmp_path)
    r = tiny_recipe(max_steps=3)
    r.data.train = None
    r.data.mixture = [MixSource(train=str(img), weight=3), MixSource(train=str(txt), weight=1)]
    out = train(r, source="test")
    assert (out / "final" / "trainable.safetensors").is_file()
    r2 = tiny_recipe()
    r2.data.train, r2.data.mixture = str(img), [MixSource(train=str(txt))]
    r2.train.output_dir = str(tmp_path / "r2")
    with pytest.raises(ConfigError, match="both set"):
        train(r2, source="test")
    r3 = tiny_recipe()
    r3.data.train = None
    r3.data.mixture = [MixSource(train=str(img), epochs=1), MixSource(train=str(txt), weight=1)]
    r3.train.output_dir = str(tmp_path / "r3")
    with pytest.raises(ConfigError, match="every source 'epochs', or none"):
        train(r3, source="test")


@pytest.mark.slow
def test_joint_training_moves_only_the_batch_modality_groups(tiny_recipe, tiny_data, tmp_path):
    """LLaMA-Adapter V2 joint training: image-text batches step the image groups only, text-only batches
    the language groups only — checked tensor by tensor between consecutive checkpoints."""
    img, txt = _split_files(tiny_data, tmp_path)
    steps = 6
    r = tiny_recipe(max_steps=steps, save_every=1, keep_checkpoints=10, log_every=1)
    r.methods = [{"name": "llama_adapter_v2", "prompt_len": 2, "layers": 1, "fusion_layers": 1}]
    r.trainable = [ParamGroup("image", ["llama_adapter_v2.image"], 1e-2),
                   ParamGroup("language", ["llama_adapter_v2.language"], 1e-2)]
    r.data.train = None
    r.data.mixture = [MixSource(train=str(img), weight=1), MixSource(train=str(txt), weight=1)]
    r.data.group_by_modality = True
    r.train.modality_groups = {"image": ["image"], "text": ["language"]}
    r.train.batch_size = 2
    out = train(r, source="test")
    from vlgraft.training.checkpoint import load_vlm

    vlm, _, _ = load_vlm(out)
    from vlgraft.methods.base import match_names

    saved = list(load_file(out / "final" / "trainable.safetensors"))
    image_names = set(match_names(saved, vlm.method_params["llama_adapter_v2.image"]))
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    kinds = []
    counts = [m["steps_by_modality"] for m in metrics]
    for prev, cur in zip([{"image": 0, "text": 0}] + counts, counts):
        kinds.append("image" if cur["image"] > prev["image"] else "text")
    assert set(kinds) == {"image", "text"}, kinds  # both kinds occurred
    ck = sorted((out / "checkpoints").glob("step-*"))
    w = [load_file(c / "trainable.safetensors") for c in ck]
    assert len(w) == steps  # steps 1..6 (the last is also the final checkpoint)
    for k in range(1, len(w)):
        kind = kinds[k]
        moved = {n for n in w[k] if not torch.equal(w[k][n], w[k - 1][n])}
        frozen = set(w[k]) - image_names if kind == "image" else image_names
        assert moved and not (moved & frozen), (kind, sorted(moved & frozen)[:3])
    assert image_names and len(image_names) < len(w[0])


def test_modality_groups_need_grouped_batches(tiny_recipe):
    r = tiny_recipe()
    r.train.modality_groups = {"image": ["connector"], "text": ["lora"]}
    with pytest.raises(VlgraftError, match="group_by_modality"):
        train(r, source="test")
