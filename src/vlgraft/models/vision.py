"""Vision encoders: pixels -> features ``[B, N, Dv]``.

Each encoder knows its preprocessing, ``embed_dim``, ``num_tokens`` and a ``cache_key`` that names
weights + feature layers + token selection + preprocessing + pooling, so cached features are never
reused across any of those changing. Token selection is shared: patch tokens (optionally pooled to
a grid), a class token (a CNN's or SigLIP's global average in its place), both, or for an image-text
pair the projected embedding; several layers merge along channels or tokens (LaVIN / LLaMA-Adapter
multi-scale features).
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

from vlgraft.config import VisionOptions
from vlgraft.errors import VlgraftError
from vlgraft.models.anatomy import encoder_layers
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
    """Base class. Subclasses set ``image_size``, ``mean``, ``std`` and implement ``layer_shapes`` and
    ``layer_features``; the base turns the chosen layers into tokens (patch / cls / both, grid pooling,
    several layers merged along channels or tokens)."""

    Options = VisionOptions  # a tower with options of its own subclasses them
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __init__(self, cfg: VisionOptions):
        super().__init__()
        self.cfg = cfg
        if cfg.feature_layers is not None and not cfg.feature_layers:
            raise VlgraftError("vision.feature_layers must name at least one layer (or be null)")

    @property
    def layers(self) -> list[int]:
        return list(self.cfg.feature_layers) if self.cfg.feature_layers else [self.cfg.feature_layer]

    # -- subclass interface
    def layer_shapes(self) -> list[tuple[int, int]]:
        """(patch tokens, channels) of each of ``self.layers`` before pooling."""
        raise NotImplementedError

    def layer_features(self, pixels: torch.Tensor) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """For each of ``self.layers``: (class token ``[B, 1, D]`` or None, patch tokens ``[B, h*w, D]``)."""
        raise NotImplementedError

    # -- token selection
    def _count(self, n_patch: int) -> int:
        pooled = self.cfg.grid**2 if self.cfg.grid else n_patch
        return {"cls": 1, "patch": pooled, "cls+patch": 1 + pooled, "embed": 1}[self.cfg.tokens]

    def _merged_shape(self) -> tuple[int, int]:
        shapes = [(self._count(n), d) for n, d in self.layer_shapes()]
        if len(shapes) == 1:
            return shapes[0]
        if self.cfg.layer_merge == "channels":
            if len({n for n, _ in shapes}) > 1:
                raise VlgraftError(f"vision.feature_layers {self.layers} give different token counts "
                                   f"{[n for n, _ in shapes]}: set vision.grid, vision.tokens: cls, or "
                                   "layer_merge: tokens")
            return shapes[0][0], sum(d for _, d in shapes)
        if len({d for _, d in shapes}) > 1:
            raise VlgraftError(f"vision.feature_layers {self.layers} have different widths {[d for _, d in shapes]}: "
                               "use layer_merge: channels")
        return sum(n for n, _ in shapes), shapes[0][1]

    @property
    def num_tokens(self) -> int:
        return self._merged_shape()[0]

    @property
    def embed_dim(self) -> int:
        return self._merged_shape()[1]

    def select(self, cls: torch.Tensor | None, patches: torch.Tensor) -> torch.Tensor:
        """One layer's tokens as ``vision.tokens`` asks; a tower without a class token (a CNN, SigLIP)
        uses the mean of its patch tokens in its place."""
        if cls is None:
            cls = patches.mean(1, keepdim=True)
        if self.cfg.tokens == "cls":
            return cls
        pooled = pool_to_grid(patches, self.cfg.grid)
        return torch.cat([cls, pooled], dim=1) if self.cfg.tokens == "cls+patch" else pooled

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> normalised ``[B, 3, S, S]`` (square bicubic resize)."""
        out = []
        for im in images:
            im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            out.append(torch.from_numpy(np.array(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
        mean, std = self.norm_stats()
        return (torch.stack(out) - mean) / std

    def norm_stats(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The input normalisation's mean and std as ``[1, 3, 1, 1]`` tensors."""
        return (torch.tensor(self.mean, device=device).view(1, 3, 1, 1),
                torch.tensor(self.std, device=device).view(1, 3, 1, 1))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S] -> [B, num_tokens, embed_dim]``."""
        outs = [self.select(c, p) for c, p in self.layer_features(pixels)]
        if len(outs) == 1:
            return outs[0]
        return torch.cat(outs, dim=-1 if self.cfg.layer_merge == "channels" else 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode(pixels)

    def transformer_layers(self) -> list[nn.Module]:
        """The encoder's attention blocks, for methods that insert modules there (none for a CNN)."""
        return []

    def weights_id(self) -> str:
        raise NotImplementedError

    def cache_key(self) -> str:
        spec = {"weights": self.weights_id(), "layers": self.layers, "merge": self.cfg.layer_merge,
                "tokens": self.cfg.tokens, "grid": self.cfg.grid, "size": self.image_size, "mean": self.mean,
                "std": self.std, "resize": "bicubic-square"}
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


_HF_VISION_CLASSES = {
    "clip": "CLIPVisionModel", "clip_vision_model": "CLIPVisionModel",
    "siglip": "SiglipVisionModel", "siglip_vision_model": "SiglipVisionModel",
}


@VISION.register("hf", prefix=True)
class HFVisionEncoder(VisionEncoder):
    """Any transformers vision tower (CLIP, SigLIP, ViT, DINOv2, ...) by hub id or local folder.

    With ``vision.tokens: embed`` the whole image-text pair is loaded (CLIPModel / SiglipModel) and
    an image becomes one token: its projected embedding in the space it shares with the paired text
    encoder, L2-normalised; ``encode_text`` gives texts the same treatment (TOMGPT's text-only
    training, docs/CONNECTORS.md)."""

    def __init__(self, cfg: VisionOptions):
        super().__init__(cfg)
        import transformers
        from transformers import AutoConfig, AutoImageProcessor

        self.model_id = model_id = cfg.name[len("hf:"):]
        try:
            hf_cfg = AutoConfig.from_pretrained(model_id)
        except OSError as e:
            raise VlgraftError(f"vision tower 'hf:{model_id}' could not be loaded: {str(e).splitlines()[0]}") from None
        self.joint = cfg.tokens == "embed"
        if self.joint:
            if not hasattr(hf_cfg, "text_config") or not hasattr(hf_cfg, "vision_config"):
                raise VlgraftError(f"vision.tokens: embed needs an image-text pair (CLIP / SigLIP model); "
                                   f"'hf:{model_id}' is a {hf_cfg.model_type!r} model")
            if cfg.feature_layers or cfg.grid:
                raise VlgraftError("vision.tokens: embed takes the projected embedding; feature_layers and grid "
                                   "do not apply")
            self.model = transformers.AutoModel.from_pretrained(model_id)
        else:
            cls = getattr(transformers, _HF_VISION_CLASSES.get(hf_cfg.model_type, "AutoModel"))
            self.model = cls.from_pretrained(model_id)
        self.tower = getattr(self.model, "vision_model", self.model)
        vcfg = getattr(self.model.config, "vision_config", self.model.config)
        try:
            proc = AutoImageProcessor.from_pretrained(model_id)
            self.mean, self.std = tuple(proc.image_mean), tuple(proc.image_std)
        except (OSError, ValueError):  # no preprocessor_config.json: CLIP's statistics
            self.mean, self.std = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
        self.native_size = vcfg.image_size
        self.image_size = cfg.image_size or vcfg.image_size
        self.patch = vcfg.patch_size
        if self.image_size < self.patch:
            raise VlgraftError(f"vision.image_size={self.image_size} is smaller than one patch of 'hf:{model_id}' "
                               f"({self.patch} pixels)")
        self.n_patch = (self.image_size // self.patch) ** 2
        self.width = vcfg.hidden_size
        n_hidden = vcfg.num_hidden_layers + 1
        for layer in self.layers:
            if not -n_hidden <= layer < n_hidden:
                raise VlgraftError(f"vision feature layer {layer} is out of range for 'hf:{model_id}' "
                                   f"({n_hidden} hidden states: -{n_hidden}..{n_hidden - 1})")

    def weights_id(self) -> str:
        return f"hf:{self.model_id}"

    def layer_shapes(self) -> list[tuple[int, int]]:
        if self.joint:
            return [(1, self.model.config.projection_dim if hasattr(self.model.config, "projection_dim")
                     else self.model.config.text_config.hidden_size)]
        return [(self.n_patch, self.width)] * len(self.layers)

    def transformer_layers(self) -> list[nn.Module]:
        return encoder_layers(self.tower)

    def _interp(self) -> dict:
        return {"interpolate_pos_encoding": True} if self.image_size != self.native_size else {}

    def layer_features(self, pixels: torch.Tensor) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        out = self.tower(pixel_values=pixels.to(self.tower.dtype), output_hidden_states=True, **self._interp())
        feats = []
        for layer in self.layers:
            h = out.hidden_states[layer]  # [B, extra + P, D]
            extra = h.shape[1] - self.n_patch  # CLS / register tokens in front of the patches
            feats.append((h[:, :1] if extra else None, h[:, extra:]))
        return feats

    @staticmethod
    def _as_tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.joint:
            return super().encode(pixels)
        emb = self._as_tensor(self.model.get_image_features(pixel_values=pixels.to(self.model.dtype), **self._interp()))
        return F.normalize(emb.float(), dim=-1).unsqueeze(1).to(emb.dtype)  # [B, 1, P]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Texts in the image-embedding space (``vision.tokens: embed``): ``[B, 1, P]``, L2-normalised."""
        if not self.joint:
            raise VlgraftError("records with 'image_text' need an image-text pair: set vision.tokens: embed "
                               "with a CLIP / SigLIP model")
        if not hasattr(self, "_tokenizer"):
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_id)
        tok = self._tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        tok = {k: v.to(self.model.device) for k, v in tok.items()}
        emb = self._as_tensor(self.model.get_text_features(**tok))
        return F.normalize(emb.float(), dim=-1).unsqueeze(1).to(emb.dtype)


class DualEncoder(VisionEncoder):
    """A low- and a high-resolution encoder seen as one (Mini-Gemini's pair, for ``patch_mining``).

    Takes the high-resolution pixels; the low-resolution input is the same image resized inside
    ``encode``. Output: low-res tokens then high-res tokens, ``[B, N_lr + N_hr, max(D_lr, D_hr)]``,
    the narrower part zero-padded on channels; ``parts`` records the layout for the connector. One
    tensor keeps the feature cache, collation and distributed training unchanged."""

    def __init__(self, low: VisionEncoder, high: VisionEncoder):
        nn.Module.__init__(self)
        self.cfg = low.cfg
        self.low, self.high = low, high
        if high.image_size <= low.image_size:
            raise VlgraftError(f"vision_hr.image_size ({high.image_size}) must exceed vision.image_size "
                               f"({low.image_size})")
        self.image_size, self.mean, self.std = high.image_size, high.mean, high.std
        self.parts = [(low.num_tokens, low.embed_dim), (high.num_tokens, high.embed_dim)]

    @property
    def num_tokens(self) -> int:
        return sum(n for n, _ in self.parts)

    @property
    def embed_dim(self) -> int:
        return max(d for _, d in self.parts)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        hi = self.high.encode(pixels)
        hi_mean, hi_std = self.high.norm_stats(pixels.device)
        lo_mean, lo_std = self.low.norm_stats(pixels.device)
        raw = pixels.float() * hi_std + hi_mean
        raw = F.interpolate(raw, size=(self.low.image_size,) * 2, mode="bicubic", antialias=True, align_corners=False)
        lo = self.low.encode(((raw - lo_mean) / lo_std).to(pixels.dtype))
        d = self.embed_dim
        return torch.cat([F.pad(lo, (0, d - lo.shape[-1])), F.pad(hi, (0, d - hi.shape[-1]))], dim=1)

    def cache_key(self) -> str:
        return hashlib.sha1(f"dual:{self.low.cache_key()}:{self.high.cache_key()}".encode()).hexdigest()[:16]


def build_vision(cfg: VisionOptions, hr: VisionOptions | None = None) -> VisionEncoder:
    """The recipe's encoder; with ``hr`` (recipe key ``vision_hr``) a low/high-resolution pair."""
    enc = VISION.get(cfg.name)(cfg)
    return enc if hr is None else DualEncoder(enc, VISION.get(hr.name)(hr))
