"""A content-addressed store for images that a dataset holds as bytes (base64, parquet, HF ``Image``).

Each distinct image is written once to ``<cache_root>/images/<sha1[:2]>/<sha1><suffix>`` (sha1 of
the bytes, suffix from the format PIL detects), atomically (temp file + ``os.replace``), so
concurrent loaders and repeated runs agree on one path per image and records can refer to it by path.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlgraft.errors import DataError
from vlgraft.files import atomic_path
from vlgraft.paths import cache_root

_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png"}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


def image_store() -> Path:
    """``<cache_root>/images`` (``$VLGRAFT_CACHE`` moves it)."""
    return cache_root() / "images"


def store_image_bytes(data: bytes, where: str) -> Path:
    """Write encoded image bytes as is (once) and return their path; ``where`` names the record for errors."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            suffix = _SUFFIX.get(fmt, "." + fmt.lower() if fmt else ".img")
            digest = hashlib.sha1(data).hexdigest()
            target = image_store() / digest[:2] / (digest + suffix)
            if target.is_file():
                return target
            im.load()  # decode fully once, before the image is stored
    except UnidentifiedImageError:
        raise DataError(f"{where}: image bytes are not in any image format PIL knows") from None
    except Exception as e:  # PIL raises many kinds for truncated or corrupt data
        raise DataError(f"{where}: image bytes cannot be decoded: {type(e).__name__}: {e}") from None
    with atomic_path(target, keep_existing=True) as tmp:
        tmp.write_bytes(data)
    return target


def store_pil_image(im: Image.Image, where: str) -> Path:
    """Store an already decoded image, re-encoded as PNG (lossless)."""
    if im.mode not in _PNG_MODES:
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return store_image_bytes(buf.getvalue(), where)
