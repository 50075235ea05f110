"""The sharded feature cache: exact round trips, warm runs that stat instead of hashing, changed images
never served stale, concurrent writers, prune (orphans, expiry, compaction, whole folders) through the
CLI, and damaged index or shard files reported by name. A tiny fake encoder keeps it fast."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from vlgraft.cli import main
from vlgraft.data import cache as cache_mod
from vlgraft.data.cache import FeatureCache
from vlgraft.data.cache_admin import prune
from vlgraft.data.cache_index import INDEX_NAME, SHARDS_NAME
from vlgraft.data.images import load_image
from vlgraft.errors import DataError

CPU = torch.device("cpu")


class FakeEncoder(torch.nn.Module):
    """The encoder interface FeatureCache uses: cache_key, preprocess, forward -> [B, tokens, dim]."""

    def __init__(self, tokens: int = 4, dim: int = 8, tag: str = "a"):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3, dim)
        self.tokens, self.tag = tokens, tag

    def cache_key(self) -> str:
        return f"fake{self.tag}{self.tokens}x{self.proj.out_features}"

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([torch.from_numpy(np.asarray(im.resize((4, 4)), dtype=np.float32) / 255).permute(2, 0, 1)
                            for im in images])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels.flatten(2).transpose(1, 2)[:, : self.tokens] * 3.7 + 0.123)


def make_images(folder: Path, n: int, ext: str = "png", offset: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        k = i + offset
        p = folder / f"{k}.{ext}"
        Image.new("RGB", (6, 6), (k % 256, (7 * k) % 256, (k // 256) % 256)).save(p)
        out.append(str(p))
    return out


def direct(enc, path: str, precision: str) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        f = enc(enc.preprocess([load_image(path)]))[0]
    return f.to(torch.bfloat16 if precision == "bf16" else torch.float32).float()


def items_of(paths: list[str]) -> list[tuple[str, str]]:
    return [(p, f"rec{i}") for i, p in enumerate(paths)]


@pytest.fixture
def trusted(monkeypatch):
    """Files just written count as settled (their stat is recorded): the tests need not wait 2 s."""
    monkeypatch.setattr(cache_mod, "RACY_NS", 0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_round_trip_is_exact(tmp_path, precision):
    enc = FakeEncoder()
    imgs = make_images(tmp_path / "img", 10)
    cache = FeatureCache(enc, precision, root=tmp_path / "cache")
    assert cache.fill(items_of(imgs), CPU, batch_size=3, show=False) == 10
    for p in imgs:
        got = cache.load(p)
        assert got.dtype == torch.float32 and torch.equal(got, direct(enc, p, precision))
    shards = list((cache.dir / SHARDS_NAME).glob("*.safetensors"))
    assert len(shards) == 1  # one fill, under SHARD_BYTES: one shard, tensor names = digests
    with safe_open(str(shards[0]), framework="pt") as f:
        assert set(f.keys()) == {cache.digest(p) for p in imgs}
        stored = f.get_tensor(cache.digest(imgs[0])).dtype
    assert stored == (torch.bfloat16 if precision == "bf16" else torch.float32)
    # a spawned DataLoader worker gets a pickled copy: it opens its own index and shards
    assert torch.equal(pickle.loads(pickle.dumps(cache)).load(imgs[3]), cache.load(imgs[3]))


def test_warm_fill_stats_instead_of_hashing(tmp_path, monkeypatch, trusted):
    enc = FakeEncoder()
    imgs = make_images(tmp_path / "img", 12)
    root = tmp_path / "cache"
    FeatureCache(enc, root=root).fill(items_of(imgs), CPU, show=False)
    calls = []
    real = cache_mod.file_digest
    monkeypatch.setattr(cache_mod, "file_digest", lambda p: calls.append(p) or real(p))
    warm = FeatureCache(enc, root=root)
    assert warm.fill(items_of(imgs), CPU, show=False) == 0
    assert calls == [] and warm.last_fill["hits"] == 12 and warm.last_fill["hashed"] == 0
    fresh = FeatureCache(enc, root=root)  # a process that did not fill (a DataLoader worker): no hashing either
    assert torch.equal(fresh.load(imgs[5]), direct(enc, imgs[5], "fp32")) and calls == []
    # two paths holding the same bytes share one entry
    twin = tmp_path / "twin.png"
    twin.write_bytes(Path(imgs[0]).read_bytes())
    assert warm.fill([(str(twin), "twin")], CPU, show=False) == 0
    assert warm.info()["entries"] == 12


def test_changed_image_is_encoded_again(tmp_path, trusted, monkeypatch):
    enc = FakeEncoder()
    p = str(tmp_path / "x.bmp")  # BMP: the same size whatever the colour, so only the times tell
    Image.new("RGB", (6, 6), (10, 20, 30)).save(p)
    cache = FeatureCache(enc, root=tmp_path / "cache")
    assert cache.fill([(p, "r")], CPU, show=False) == 1
    size = os.path.getsize(p)
    time.sleep(0.05)  # past the file system's timestamp tick
    Image.new("RGB", (6, 6), (200, 100, 0)).save(p)
    assert os.path.getsize(p) == size
    again = FeatureCache(enc, root=tmp_path / "cache")
    assert again.fill([(p, "r")], CPU, show=False) == 1
    assert torch.equal(again.load(p), direct(enc, p, "fp32"))
    # a file modified within the racy window is hashed but its stat never trusted
    monkeypatch.setattr(cache_mod, "RACY_NS", 10**12)
    Image.new("RGB", (6, 6), (1, 1, 1)).save(p)
    racy = FeatureCache(enc, root=tmp_path / "cache")
    assert racy.fill([(p, "r")], CPU, show=False) == 1
    assert racy.index.known_files([os.path.realpath(p)]) == {}  # not recorded: hashed again next time
    Image.new("RGB", (6, 6), (2, 2, 2)).save(p)  # same size, quite possibly the same timestamp tick
    last = FeatureCache(enc, root=tmp_path / "cache")
    assert last.fill([(p, "r")], CPU, show=False) == 1
    assert torch.equal(last.load(p), direct(enc, p, "fp32"))


def test_key_folders_and_no_leftovers(tmp_path):
    imgs = make_images(tmp_path / "img", 3)
    a = FeatureCache(FakeEncoder(tag="a"), root=tmp_path)
    a.fill(items_of(imgs), CPU, show=False)
    assert FeatureCache(FakeEncoder(tag="b"), root=tmp_path).dir != a.dir
    assert FeatureCache(FakeEncoder(tag="a"), "bf16", root=tmp_path).dir != a.dir
    assert a.dir.name.endswith("-layout2")
    assert not list(a.dir.rglob(".tmp-*"))
    with pytest.raises(DataError, match="no cached features"):
        FeatureCache(FakeEncoder(tag="b"), root=tmp_path).load(imgs[0])


def _fill_in_child(root: str, imgs: list[str], out: mp.Queue) -> None:
    try:
        torch.set_num_threads(1)
        cache_mod.SHARD_BYTES = 300  # a shard every few images: many shards from each writer
        n = FeatureCache(FakeEncoder(), root=Path(root)).fill(items_of(imgs), CPU, batch_size=2, show=False)
        out.put(("ok", n))
    except Exception as e:  # reported to the parent, which fails the test
        out.put(("error", repr(e)))


def _load_in_child(cache: FeatureCache, imgs: list[str], out: mp.Queue) -> None:
    try:
        out.put(("ok", [cache.load(p).sum().item() for p in imgs]))
    except Exception as e:
        out.put(("error", repr(e)))


def test_two_processes_fill_one_cache(tmp_path):
    imgs = make_images(tmp_path / "img", 40)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    # overlapping halves in different orders: both race on the shared images
    jobs = [ctx.Process(target=_fill_in_child, args=(str(tmp_path / "cache"), part, q))
            for part in (imgs[:30], imgs[10:][::-1])]
    for j in jobs:
        j.start()
    results = [q.get(timeout=120) for _ in jobs]
    for j in jobs:
        j.join(timeout=60)
    assert all(status == "ok" for status, _ in results), results
    assert sum(n for _, n in results) >= 40  # each image encoded by at least one of them
    cache = FeatureCache(FakeEncoder(), root=tmp_path / "cache")
    for p in imgs:
        assert torch.equal(cache.load(p), direct(cache.encoder, p, "fp32"))
    info = cache.info()
    assert info["entries"] == 40 and info["shards"] > 2 and info["orphan_shards"] == 0
    # a forked reader (a DataLoader worker) opens its own index connection and shards
    child = ctx.Process(target=_load_in_child, args=(cache, imgs, q))
    child.start()
    status, sums = q.get(timeout=60)
    child.join(timeout=30)
    assert status == "ok" and sums == [cache.load(p).sum().item() for p in imgs]


def test_prune_orphans_expiry_and_compaction(tmp_path, trusted, monkeypatch):
    enc = FakeEncoder()
    imgs = make_images(tmp_path / "img", 10)
    cache = FeatureCache(enc, root=tmp_path / "cache")
    cache.fill(items_of(imgs), CPU, show=False)
    shards_dir = cache.dir / SHARDS_NAME
    (shard,) = list(shards_dir.glob("*.safetensors"))
    hour_ago = time.time() - 7200
    orphan, young = shards_dir / "0rphan.safetensors", shards_dir / "young.safetensors"
    for p in (orphan, young):  # shards a crashed writer renamed but never recorded
        p.write_bytes(shard.read_bytes())
    leftover = shards_dir / ".tmp-x.safetensors-abc"
    leftover.write_bytes(b"half")
    os.utime(orphan, (hour_ago, hour_ago))
    os.utime(leftover, (hour_ago, hour_ago))
    before = cache.info()
    assert before["orphan_shards"] == 2 and before["dead_bytes"] == 0
    # entries of 7 images unused for 10 days: expired, and the shard (3 of 10 live) is compacted
    old = [cache.digest(p) for p in imgs[:7]]
    with sqlite3.connect(cache.dir / INDEX_NAME) as conn:
        conn.executemany("UPDATE entries SET used = ? WHERE digest = ?", [(time.time() - 10 * 86400, d) for d in old])
    dry = prune(cache.dir, older_than_days=1, dry_run=True)
    assert dry["orphan_shards"] == 1 and dry["expired_entries"] == 7 and dry["compacted_shards"] == 1
    assert orphan.exists() and cache.info()["entries"] == 10  # a dry run changes nothing
    r = prune(cache.dir, older_than_days=1)
    assert r["orphan_shards"] == 1 and r["leftovers"] == 1 and r["expired_entries"] == 7
    assert r["compacted_shards"] == 1 and r["new_shards"] == 1 and r["freed_bytes"] > 0
    assert not orphan.exists() and not leftover.exists() and young.exists() and not shard.exists()
    after = FeatureCache(enc, root=tmp_path / "cache")
    for p in imgs[7:]:
        assert torch.equal(after.load(p), direct(enc, p, "fp32"))
    with pytest.raises(DataError, match="no cached features"):
        after.load(imgs[0])
    info = after.info()
    assert info["entries"] == 3 and info["shards"] == 1 and info["dead_bytes"] == 0
    assert after.fill(items_of(imgs), CPU, show=False) == 7  # the expired ones come back on demand


def test_cache_cli_info_and_prune(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    root = tmp_path / "cache"
    imgs = make_images(tmp_path / "img", 4)
    cache = FeatureCache(FakeEncoder(), root=root)
    cache.fill(items_of(imgs), CPU, show=False)
    old = root / "0123456789abcdef-fp32-l3"  # the former one-file-per-image layout
    (old / "ab").mkdir(parents=True)
    (old / "ab" / ("ab" + "0" * 38 + ".safetensors")).write_bytes(b"x" * 100)
    main(["cache", "info", "--root", str(root)])
    out = capsys.readouterr().out
    assert cache.dir.name in out and old.name in out and "old layout" in out
    main(["cache", "prune", "--root", str(root), "--key", old.name[:10], "--dry-run"])
    assert "would remove" in capsys.readouterr().out and old.exists()
    main(["cache", "prune", "--root", str(root), "--key", old.name[:10]])
    assert not old.exists() and "freed" in capsys.readouterr().out
    main(["cache", "prune", "--root", str(root), "--older-than", "30"])
    out = capsys.readouterr().out
    assert "freed" in out and cache.dir.name in out
    assert torch.equal(FeatureCache(FakeEncoder(), root=root).load(imgs[2]), cache.load(imgs[2]))
    with pytest.raises(SystemExit):
        main(["cache", "prune", "--root", str(root), "--key", "nothing-like-this"])
    assert "no feature-cache folder" in capsys.readouterr().err


def test_damaged_index_and_shard_are_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    imgs = make_images(tmp_path / "img", 3)
    root = tmp_path / "cache"
    cache = FeatureCache(FakeEncoder(), root=root)
    cache.fill(items_of(imgs), CPU, show=False)
    (shard,) = list((cache.dir / SHARDS_NAME).glob("*.safetensors"))
    shard.write_bytes(b"\xff" * 64)  # overwritten: not safetensors any more
    with pytest.raises(DataError, match="damaged feature-cache shard") as e:
        FeatureCache(FakeEncoder(), root=root).load(imgs[0])
    assert str(shard) in str(e.value) and "vlgraft cache prune" in str(e.value)
    r = prune(cache.dir)
    assert r["damaged_shards"] == 1 and not shard.exists()
    assert FeatureCache(FakeEncoder(), root=root).fill(items_of(imgs), CPU, show=False) == 3
    # an index that is not SQLite
    index = cache.dir / INDEX_NAME
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    index.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError) as e:
        FeatureCache(FakeEncoder(), root=root).fill(items_of(imgs), CPU, show=False)
    assert str(index) in str(e.value) and f"prune --key {cache.dir.name}" in str(e.value)
    main(["cache", "info", "--root", str(root)])  # the folder is listed as damaged, the error names the index
    out = " ".join(capsys.readouterr().out.split())
    assert "damaged" in out and str(index) in out
    with pytest.raises(SystemExit):  # prune reports it as the command's error (exit code 2)
        main(["cache", "prune", "--root", str(root)])
    assert str(index) in capsys.readouterr().err
