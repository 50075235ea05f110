"""Vision-side settings: token selection, several feature layers, input resolution."""

import pytest
import torch

from vlgraft.config import VisionOptions, from_dict
from vlgraft.errors import VlgraftError
from vlgraft.models.vision import build_vision


def _run(enc, size=None):
    s = size or enc.image_size
    with torch.no_grad():
        out = enc(torch.randn(2, 3, s, s))
    assert out.shape == (2, enc.num_tokens, enc.embed_dim)  # the declared shape is the real one
    return out


@pytest.mark.parametrize("kw,n,d", [
    ({"feature_layer": -2}, 16, 24),                                     # 32 px / 8 = 4x4 patches
    ({"feature_layer": -2, "grid": 2}, 4, 24),
    ({"tokens": "cls"}, 1, 24),
    ({"tokens": "cls+patch", "grid": 2}, 5, 24),
    ({"feature_layers": [-1, -2, 1], "tokens": "cls"}, 1, 72),           # LLaMA-Adapter multi-scale global
    ({"feature_layers": [-1, -2], "layer_merge": "tokens", "tokens": "cls"}, 2, 24),  # LaVIN [cls] per layer
    ({"feature_layers": [-1, -2], "grid": 2}, 4, 48),
    ({"image_size": 48}, 36, 24),                                        # resolution: 6x6 patches
])
def test_hf_tower_tokens(tiny_clip, kw, n, d):
    enc = build_vision(VisionOptions(name=f"hf:{tiny_clip}", **kw)).eval()
    assert (enc.num_tokens, enc.embed_dim) == (n, d)
    _run(enc)


def test_hf_cls_is_the_class_token_and_layers_are_the_hidden_states(tiny_clip):
    enc = build_vision(VisionOptions(name=f"hf:{tiny_clip}", feature_layers=[-1, 1], tokens="cls+patch")).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)
        hs = enc.tower(pixel_values=x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(out[:, :, :24], hs[-1])  # [CLS] then 16 patches of the last layer
    torch.testing.assert_close(out[:, :, 24:], hs[1])


def test_efficientnet_layers_and_resolution():
    enc = build_vision(VisionOptions(name="efficientnet-lite0", image_size=128)).eval()
    assert (enc.num_tokens, enc.embed_dim) == (16, 1280)  # stride 32: 4x4 at 128 px
    _run(enc)
    multi = build_vision(VisionOptions(name="efficientnet-lite0", image_size=128, feature_layers=[10, -1],
                                      grid=2)).eval()
    assert multi.num_tokens == 4 and multi.embed_dim == multi.layer_shapes()[0][1] + 1280
    out = _run(multi)
    cls = build_vision(VisionOptions(name="efficientnet-lite0", image_size=128, tokens="cls")).eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 128, 128)
        torch.testing.assert_close(cls(x), enc(x).mean(1, keepdim=True))  # a CNN's "cls" is the global mean
    assert out.isfinite().all()


def test_bad_vision_settings(tiny_clip):
    with pytest.raises(VlgraftError, match="different token counts"):
        _ = build_vision(VisionOptions(name="efficientnet-lite0", feature_layers=[10, -1])).num_tokens
    with pytest.raises(VlgraftError, match="different widths"):
        _ = build_vision(VisionOptions(name="efficientnet-lite0", feature_layers=[10, -1], layer_merge="tokens",
                                       tokens="cls")).embed_dim
    with pytest.raises(VlgraftError, match="out of range"):
        build_vision(VisionOptions(name=f"hf:{tiny_clip}", feature_layers=[-1, 7]))
    with pytest.raises(VlgraftError, match="block index"):
        build_vision(VisionOptions(name="efficientnet-lite0", feature_layer=99))
    with pytest.raises(VlgraftError, match="'vision.tokens' must be one of patch, cls, cls\\+patch, embed"):
        from_dict(VisionOptions, {"name": f"hf:{tiny_clip}", "tokens": "all"}, prefix="vision.")
    with pytest.raises(VlgraftError, match="image-text pair"):
        build_vision(VisionOptions(name=f"hf:{tiny_clip}", tokens="embed"))  # a vision tower alone
