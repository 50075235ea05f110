"""Connectors map [B, N, Dv] to the documented [B, M, Dl]."""

import pytest
import torch

from vlgraft.config import ConnectorOptions, options_for
from vlgraft.connectors import build_connector
from vlgraft.errors import ConfigError


@pytest.mark.parametrize("name,kw,n,m", [
    ("linear", {}, 16, 16), ("mlp", {}, 16, 16), ("git", {}, 16, 16),
    ("resampler", {"num_queries": 5, "num_heads": 4}, 16, 5), ("resampler", {"num_queries": 5, "num_heads": 4}, 49, 5),
    ("pool", {"mode": "avg", "grid": 2}, 16, 4), ("pool", {"mode": "avg", "grid": 3}, 49, 9),
    ("pool", {"mode": "shuffle", "grid": 2}, 16, 4), ("pool", {"mode": "shuffle", "grid": 7}, 49, 1),
    ("prompt_projection", {}, 16, 1), ("prompt_projection", {}, 1, 1),
])
def test_shapes(name, kw, n, m):
    conn = build_connector(options_for(ConnectorOptions, name=name, **kw), 12, 32)
    assert conn.output_tokens(n) == m
    out = conn(torch.randn(3, n, 12))
    assert out.shape == (3, m, 32)


def test_shuffle_concatenates_neighbours():
    conn = build_connector(options_for(ConnectorOptions, name="pool", mode="shuffle", grid=2), 1, 4)
    with torch.no_grad():
        conn.proj.weight.copy_(torch.eye(4))
        conn.proj.bias.zero_()
    x = torch.arange(16.0).view(1, 16, 1)  # 4x4 grid, row-major
    out = conn(x)
    assert out[0, 0].tolist() == [0, 1, 4, 5] and out[0, 3].tolist() == [10, 11, 14, 15]


def test_bad_settings():
    with pytest.raises(ConfigError):
        build_connector(options_for(ConnectorOptions, name="pool", mode="shuffle", grid=3), 12, 32).output_tokens(16)
    with pytest.raises(ConfigError):
        build_connector(options_for(ConnectorOptions, name="resampler", num_heads=5), 12, 32)


@pytest.mark.parametrize("kw", [{"name": "resampler", "num_queries": 3, "num_heads": 4},
                                {"name": "pool", "mode": "shuffle", "grid": 2}])
def test_in_the_model(tiny_recipe, tiny_data, collate_records, kw):
    from vlgraft.data.records import load_llava_json
    from vlgraft.models.vlm import IMAGE_TOKEN_ID, VLM

    recipe = tiny_recipe()
    recipe.vision.grid = None  # tiny CLIP: 4x4 patches
    recipe.connector = options_for(ConnectorOptions, **kw)
    vlm = VLM.from_recipe(recipe)
    assert vlm.num_image_tokens == (3 if kw["name"] == "resampler" else 4)
    batch = collate_records(vlm, load_llava_json(tiny_data)[:2])
    assert int((batch["input_ids"] == IMAGE_TOKEN_ID).sum()) == 2 * vlm.num_image_tokens
    out = vlm(**batch)
    out["loss_sum"].backward()
    assert all(p.grad is not None for p in vlm.connector.parameters())


class _Pair:
    """Stands in for a DualEncoder: the token layout the connector reads."""

    def __init__(self, n_lr, d_lr, n_hr, d_hr):
        self.parts = [(n_lr, d_lr), (n_hr, d_hr)]


def _mining(n_lr=4, d_lr=12, n_hr=16, d_hr=10, out=32):
    return build_connector(options_for(ConnectorOptions, name="patch_mining"), max(d_lr, d_hr), out,
                           _Pair(n_lr, d_lr, n_hr, d_hr))


def _pair_input(b=2, n_lr=4, d_lr=12, n_hr=16, d_hr=10):
    d = max(d_lr, d_hr)
    x = torch.zeros(b, n_lr + n_hr, d)
    x[:, :n_lr, :d_lr] = torch.randn(b, n_lr, d_lr)
    x[:, n_lr:, :d_hr] = torch.randn(b, n_hr, d_hr)
    return x


@pytest.mark.parametrize("n_lr,n_hr", [(4, 16), (4, 64), (9, 36), (49, 196)])
def test_patch_mining_shapes(n_lr, n_hr):
    conn = _mining(n_lr=n_lr, n_hr=n_hr)
    assert conn.output_tokens(n_lr + n_hr) == n_lr
    assert conn(_pair_input(n_lr=n_lr, n_hr=n_hr)).shape == (2, n_lr, 32)


def test_patch_mining_starts_as_the_low_res_tokens():
    conn = _mining()
    x = _pair_input()
    lr = x[:, :4, :12]
    assert torch.equal(conn.mine(x), lr)  # zero-initialised output: nothing mined at step 0
    torch.testing.assert_close(conn(x), conn.proj(lr))
    conn(x).pow(2).sum().backward()
    assert conn.out.weight.grad.abs().sum() > 0  # ...but it learns


def test_patch_mining_attends_only_within_the_matching_region():
    torch.manual_seed(0)
    conn = _mining()  # low-res 2x2, high-res 4x4: each low-res token owns a 2x2 high-res block
    with torch.no_grad():
        torch.nn.init.normal_(conn.out.weight)
    x = _pair_input(b=1)
    feature = 50.0 * torch.randn(10)
    base = conn.mine(x)
    for hr_row, hr_col in [(0, 3), (2, 1), (3, 3)]:
        planted = x.clone()
        planted[0, 4 + hr_row * 4 + hr_col, :10] = feature  # a strong feature in one high-res cell
        changed = (conn.mine(planted) - base).abs().sum(-1)[0]  # [4] per low-res token
        owner = (hr_row // 2) * 2 + hr_col // 2
        assert changed[owner] > 1e-3
        assert torch.all(changed[torch.arange(4) != owner] == 0)
    # the regions are the 2x2 blocks of the row-major high-res grid
    assert conn.regions(torch.arange(16.0).view(1, 16, 1))[0, :, :, 0].tolist() == [
        [0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_patch_mining_needs_two_aligned_encoders():
    with pytest.raises(ConfigError, match="vision_hr"):
        build_connector(options_for(ConnectorOptions, name="patch_mining"), 12, 32)
    with pytest.raises(ConfigError, match="multiple"):
        _mining(n_lr=4, n_hr=9)
    with pytest.raises(ConfigError, match="patch_mining connector"):
        build_connector(options_for(ConnectorOptions, name="mlp"), 12, 32, _Pair(4, 12, 16, 12))


@pytest.mark.slow
def test_patch_mining_in_the_model(tiny_recipe, tiny_data, collate_records):
    """EfficientNet-Lite0 at 64 px (2x2) + at 128 px (4x4), mined, then into a tiny Llama."""
    from vlgraft.config import VisionOptions
    from vlgraft.data.images import load_image
    from vlgraft.data.records import load_llava_json
    from vlgraft.models.vlm import VLM

    recipe = tiny_recipe()
    recipe.vision = VisionOptions(name="efficientnet-lite0", image_size=64)
    recipe.vision_hr = VisionOptions(name="efficientnet-lite0", image_size=128)
    recipe.connector = options_for(ConnectorOptions, name="patch_mining")
    vlm = VLM.from_recipe(recipe)
    assert vlm.vision.parts == [(4, 1280), (16, 1280)] and vlm.num_image_tokens == 4
    recs = load_llava_json(tiny_data)[:2]
    pixels = vlm.vision.preprocess([load_image(r.images[0]) for r in recs])
    assert pixels.shape[-1] == 128  # the high-res input; the low-res one is made from it
    with torch.no_grad():
        feats = vlm.vision.eval()(pixels)
        low = vlm.vision.low(torch.nn.functional.interpolate(pixels, size=(64, 64), mode="bicubic",
                                                              antialias=True, align_corners=False))
    torch.testing.assert_close(feats[:, :4], low, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(vlm.visual_embeds(image_features=feats), vlm.connector.proj(feats[:, :4]))
    batch = collate_records(vlm, recs)
    vlm(**batch)["loss_sum"].backward()
    assert vlm.connector.out.weight.grad.abs().sum() > 0
