import torch
from PIL import Image

from vlgraft.config import VisionOptions
from vlgraft.data.cache import FeatureCache
from vlgraft.data.images import load_image
from vlgraft.models.vision import build_vision


def test_feature_cache_hits_and_keys(tiny_clip, tiny_data, tmp_path):
    enc = build_vision(VisionOptions(name=f"hf:{tiny_clip}", feature_layer=-2, grid=2)).eval()
    imgs = [str(tiny_data.parent / "img" / f"{i}.png") for i in range(3)]
    cache = FeatureCache(enc, "fp32", root=tmp_path)
    items = [(p, f"rec{i}") for i, p in enumerate(imgs)]
    assert cache.fill(items, torch.device("cpu")) == 3
    assert FeatureCache(enc, "fp32", root=tmp_path).fill(items, torch.device("cpu")) == 0  # second run: all hits
    with torch.no_grad():
        direct = enc(enc.preprocess([load_image(imgs[1])]))[0]
    torch.testing.assert_close(cache.load(imgs[1]), direct)
    # the key changes with the encoder settings and with the image's bytes
    other = build_vision(VisionOptions(name=f"hf:{tiny_clip}", feature_layer=-2, grid=1))
    assert FeatureCache(other, "fp32", root=tmp_path).dir != cache.dir
    assert FeatureCache(enc, "bf16", root=tmp_path).dir != cache.dir
    changed = tmp_path / "changed.png"
    Image.new("RGB", (40, 40), (1, 2, 3)).save(changed)
    before = cache.digest(str(changed))
    Image.new("RGB", (40, 40), (9, 9, 9)).save(changed)
    assert FeatureCache(enc, "fp32", root=tmp_path).digest(str(changed)) != before
    # no temporary files are left behind
    assert not list(cache.dir.rglob("*.tmp"))
