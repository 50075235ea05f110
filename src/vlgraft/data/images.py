"""Image loading with errors that name the record and file."""

from __future__ import annotations

from PIL import Image, UnidentifiedImageError

from vlgraft.errors import DataError

# Part of the feature-cache key: bump when the pixels load_image returns for the same file change.
LOADER_VERSION = 2  # 2: transparency composited onto white


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with transparent pixels (RGBA, LA, PA, or a ``transparency`` entry as in palette PNGs)
    composited onto white rather than dropped to whatever colour they hide (often black)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path: str, where: str = "") -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"{where + ': ' if where else ''}image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where + ': ' if where else ''}cannot read image {path}: {e}") from None
