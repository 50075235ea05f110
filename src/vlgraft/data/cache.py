"""On-disk cache of frozen image-encoder features.

Key = the encoder's ``cache_key`` (weights, feature layer, resolution, normalisation, pooling), the
image loader's version and the SHA-1 of the image file's bytes, so a changed image, encoder setting
or image loading is never served a stale entry. One small safetensors file per image, written
atomically (temp file + rename), so
concurrent processes and interrupted runs never leave a half-written entry.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from vlgraft.data.images import LOADER_VERSION, load_image
from vlgraft.errors import DataError
from vlgraft.files import atomic_path, read_safetensors, remove_leftovers
from vlgraft.paths import feature_cache_root


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


class FeatureCache:
    def __init__(self, encoder, precision: str = "fp32", root: Path | None = None):
        self.encoder = encoder
        self.precision = precision  # bf16: encoded under bf16 autocast and stored as bf16
        self.dir = (root or feature_cache_root()) / f"{encoder.cache_key()}-{precision}-l{LOADER_VERSION}"
        self._digest: dict[str, str] = {}

    def entry(self, image_path: str) -> Path:
        d = self._digest.get(image_path)
        if d is None:
            d = self._digest[image_path] = file_digest(image_path)
        return self.dir / d[:2] / f"{d}.safetensors"

    def load(self, image_path: str) -> torch.Tensor:
        path = self.entry(image_path)
        tensors = read_safetensors(path)
        if "features" not in tensors:
            raise DataError(f"{path}: a feature-cache entry without features (delete it to encode the image again)")
        return tensors["features"].float()

    def _save(self, path: Path, feats: torch.Tensor) -> None:
        with atomic_path(path) as tmp:
            save_file({"features": feats.contiguous()}, str(tmp))

    @torch.no_grad()
    def fill(self, items: list[tuple[str, str]], device: torch.device, batch_size: int = 64,
             rank: int = 0, world: int = 1, show: bool = True) -> int:
        """Encode every (image path, record name) not yet cached; this process takes every world-th one.
        Returns how many this process encoded."""
        if rank == 0 and self.dir.is_dir():  # entries a killed writer left half-written (not a live one's)
            for sub in self.dir.iterdir():
                remove_leftovers(sub, older_than_s=3600)
        todo = sorted({p: w for p, w in items}.items())[rank::world]
        todo = [(p, w) for p, w in todo if not self.entry(p).is_file()]
        enc = self.encoder.to(device).eval()
        for i in tqdm(range(0, len(todo), batch_size), desc="encoding images", disable=not show or not todo,
                      unit="batch"):
            chunk = todo[i: i + batch_size]
            pixels = enc.preprocess([load_image(p, w) for p, w in chunk]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                feats = enc(pixels)
            feats = feats.to(torch.bfloat16 if self.precision == "bf16" else torch.float32).cpu()
            for (p, _), f in zip(chunk, feats):
                self._save(self.entry(p), f)
        return len(todo)
