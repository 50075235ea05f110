"""Connectors map [B, N, Dv] to the documented [B, M, Dl]."""

import pytest
import torch

from vlgraft.config import ConnectorConfig
from vlgraft.connectors import build_connector
from vlgraft.errors import ConfigError


@pytest.mark.parametrize("name,kw,n,m", [
    ("linear", {}, 16, 16), ("mlp", {}, 16, 16), ("git", {}, 16, 16),
    ("resampler", {"num_queries": 5, "num_heads": 4}, 16, 5), ("resampler", {"num_queries": 5, "num_heads": 4}, 49, 5),
    ("pool", {"mode": "avg", "grid": 2}, 16, 4), ("pool", {"mode": "avg", "grid": 3}, 49, 9),
    ("pool", {"mode": "shuffle", "grid": 2}, 16, 4), ("pool", {"mode": "shuffle", "grid": 7}, 49, 1),
])
def test_shapes(name, kw, n, m):
    conn = build_connector(ConnectorConfig(name=name, **kw), 12, 32)
    assert conn.output_tokens(n) == m
    out = conn(torch.randn(3, n, 12))
    assert out.shape == (3, m, 32)


def test_shuffle_concatenates_neighbours():
    conn = build_connector(ConnectorConfig(name="pool", mode="shuffle", grid=2), 1, 4)
    with torch.no_grad():
        conn.proj.weight.copy_(torch.eye(4))
        conn.proj.bias.zero_()
    x = torch.arange(16.0).view(1, 16, 1)  # 4x4 grid, row-major
    out = conn(x)
    assert out[0, 0].tolist() == [0, 1, 4, 5] and out[0, 3].tolist() == [10, 11, 14, 15]


def test_bad_settings():
    with pytest.raises(ConfigError):
        build_connector(ConnectorConfig(name="pool", mode="shuffle", grid=3), 12, 32).output_tokens(16)
    with pytest.raises(ConfigError):
        build_connector(ConnectorConfig(name="resampler", num_heads=5), 12, 32)


@pytest.mark.parametrize("kw", [{"name": "resampler", "num_queries": 3, "num_heads": 4},
                                {"name": "pool", "mode": "shuffle", "grid": 2}])
def test_in_the_model(tiny_recipe, tiny_data, kw):
    from tests.test_vlm import collate_records
    from vlgraft.data.records import load_llava_json
    from vlgraft.models.vlm import IMAGE_TOKEN_ID, VLM

    recipe = tiny_recipe()
    recipe.vision.grid = None  # tiny CLIP: 4x4 patches
    recipe.connector = ConnectorConfig(**kw)
    vlm = VLM.from_recipe(recipe)
    assert vlm.num_image_tokens == (3 if kw["name"] == "resampler" else 4)
    batch = collate_records(vlm, load_llava_json(tiny_data)[:2])
    assert int((batch["input_ids"] == IMAGE_TOKEN_ID).sum()) == 2 * vlm.num_image_tokens
    out = vlm(**batch)
    out["loss_sum"].backward()
    assert all(p.grad is not None for p in vlm.connector.parameters())
