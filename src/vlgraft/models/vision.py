"""Vision encoders: pixels -> features ``[B, N, Dv]``.

Each encoder knows its preprocessing, ``embed_dim``, ``num_tokens`` and a ``cache_key`` that names
weights + feature layer + preprocessing + pooling, so cached features are never reused across any
of those changing.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlgraft.config import VisionConfig
from vlgraft.errors import VlgraftError
from vlgraft.registry import VISION


def pool_to_grid(tokens: torch.Tensor, grid: int | None) -> torch.Tensor:
    """Average-pool square patch tokens ``[B, h*w, D]`` to ``[B, grid*grid, D]``."""
    if grid is None:
        return tokens
    b, n, d = tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise VlgraftError(f"cannot pool {n} tokens to a grid: they do not form a square")
    x = tokens.transpose(1, 2).reshape(b, d, side, side)  # [B, D, h, w]
    x = F.adaptive_avg_pool2d(x, grid)
    return x.flatten(2).transpose(1, 2)  # [B, grid*grid, D]


class VisionEncoder(nn.Module):
    """Base class. Subclasses set ``embed_dim``, ``image_size``, ``mean``, ``std`` and implement ``encode``."""

    embed_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_tokens: int  # tokens before grid pooling

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg

    @property
    def num_tokens(self) -> int:
        return self.cfg.grid**2 if self.cfg.grid else self.native_tokens

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised ``[B, 3, S, S]`` (square bicubic resize)."""
        out = []
        for im in images:
            im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            out.append(torch.from_numpy(np.array(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
        x = torch.stack(out)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:  # [B, N_native, D]
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return pool_to_grid(self.encode(pixels), self.cfg.grid)

    def weights_id(self) -> str:
        raise NotImplementedError

    def cache_key(self) -> str:
        spec = {"weights": self.weights_id(), "layer": self.cfg.feature_layer, "grid": self.cfg.grid,
                "size": self.image_size, "mean": self.mean, "std": self.std, "cls": self.cfg.keep_cls,
                "resize": "bicubic-square"}
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


_HF_VISION_CLASSES = {
    "clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel",
}


class HFVisionEncoder(VisionEncoder):
    """Any transformers vision tower (CLIP, SigLIP, ViT, DINOv2, ...) by hub id or local folder."""

    def __init__(self, cfg: VisionConfig, model_id: str):
        super().__init__(cfg)
        import transformers
        from transformers import AutoConfig, AutoImageProcessor

        self.model_id = model_id
        try:
            hf_cfg = AutoConfig.from_pretrained(model_id)
        except OSError as e:
            raise VlgraftError(f"vision tower 'hf:{model_id}' could not be loaded: {str(e).splitlines()[0]}") from None
        cls = getattr(transformers, _HF_VISION_CLASSES.get(hf_cfg.model_type, "AutoModel"))
        self.model = cls.from_pretrained(model_id)
        vcfg = getattr(self.model.config, "vision_config", self.model.config)
        try:
            proc = AutoImageProcessor.from_pretrained(model_id)
            self.mean, self.std = tuple(proc.image_mean), tuple(proc.image_std)
        except (OSError, ValueError):  # no preprocessor_config.json: CLIP's statistics
            self.mean, self.std = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
        self.native_size = vcfg.image_size
        self.image_size = cfg.image_size or vcfg.image_size
        self.patch = vcfg.patch_size
        self.embed_dim = vcfg.hidden_size
        self.native_tokens = (self.image_size // self.patch) ** 2 + (1 if cfg.keep_cls else 0)
        if cfg.keep_cls and cfg.grid:
            raise VlgraftError("vision.keep_cls and vision.grid cannot be combined")

    def weights_id(self) -> str:
        return f"hf:{self.model_id}"

    def transformer_layers(self) -> list[nn.Module]:
        """The tower's encoder blocks (for methods that insert modules before attention)."""
        for _, mod in self.model.named_modules():
            if isinstance(mod, nn.ModuleList) and len(mod) and any(hasattr(mod[0], n) for n in ("self_attn", "attention")):
                return list(mod)
        return []

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        kw = {"interpolate_pos_encoding": True} if self.image_size != self.native_size else {}
        out = self.model(pixel_values=pixels.to(self.model.dtype), output_hidden_states=True, **kw)
        h = out.hidden_states[self.cfg.feature_layer]  # [B, extra + P, D]
        n_patch = (self.image_size // self.patch) ** 2
        extra = h.shape[1] - n_patch  # CLS / register tokens in front of the patches
        if self.cfg.keep_cls:
            return torch.cat([h[:, :1], h[:, extra:]], dim=1)
        return h[:, extra:]


def build_vision(cfg: VisionConfig) -> VisionEncoder:
    if cfg.name.startswith("hf:"):
        return HFVisionEncoder(cfg, cfg.name[3:])
    import vlgraft.zoo  # noqa: F401  (registers bundled parts)

    return VISION.get(cfg.name)(cfg)
