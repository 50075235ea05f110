"""Image loading: every mode Pillow reads decoded to the RGB the encoder expects, errors that name the
record and file.

- orientation: the EXIF orientation tag is applied (a phone photo is trained on upright);
- high bit depth (16-bit and 32-bit integer, float grayscale): scaled to 8 bits over the mode's range
  (Pillow's own conversion clips such values, so a 16-bit image would come out almost white);
- transparency (RGBA, LA, PA, a palette's ``transparency`` entry): composited onto white;
- CMYK, YCbCr, LAB, palette, bilevel: Pillow's conversion to RGB;
- size: an image of more than ``MAX_PIXELS`` pixels (``data.max_image_pixels``) is refused before it
  is decoded — a decompression bomb is one error line, not a machine out of memory.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlgraft.errors import DataError

# Part of the feature-cache key: bump when the pixels load_image returns for the same file change.
LOADER_VERSION = 3  # 2: transparency composited onto white; 3: EXIF orientation, high bit depths scaled

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (about 0.25 GB of RGBA)
MAX_PIXELS = DEFAULT_MAX_PIXELS  # set from data.max_image_pixels by the commands that read images

# full-scale value of the integer modes Pillow's RGB conversion clips
# Image.open runs with Pillow's global bomb limit lifted (ours applies): one thread at a time, so that
# concurrent opens (the server's request threads) cannot restore each other's value wrongly.
_OPEN_LOCK = threading.Lock()

_FULL_SCALE = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 2**32 - 1}


def set_max_pixels(n: int | None) -> None:
    """The largest image (in pixels) load_image accepts; None: Pillow's default threshold."""
    global MAX_PIXELS
    MAX_PIXELS = n or DEFAULT_MAX_PIXELS


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float grayscale image as 8-bit grayscale over the mode's value range."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":  # float images have no fixed range: their own min..max
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        full = _FULL_SCALE[im.mode]
        if im.mode == "I":  # 32-bit integers usually hold 8- or 16-bit data (TIFF, older Pillow's 16-bit PNGs)
            top = arr.max(initial=0)
            full = 255 if top <= 255 else 65535 if top <= 65535 else full
        arr = np.clip(arr, 0, full) / full
    return Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with transparent pixels (RGBA, LA, PA, or a ``transparency`` entry as in palette PNGs)
    composited onto white rather than dropped to whatever colour they hide (often black), and high
    bit depths scaled rather than clipped."""
    if im.mode in _FULL_SCALE or im.mode == "F":
        im = _high_depth_to_l(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path, where: str = "", name: str | None = None) -> Image.Image:
    """The image at ``path`` (a file path, or a binary file object such as a request's decoded bytes)
    as upright RGB; ``where`` (the record) prefixes errors, ``name`` names the image in them."""
    at = f"{where}: " if where else ""
    name = name or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            with _OPEN_LOCK:
                old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    im = Image.open(path)
                finally:
                    Image.MAX_IMAGE_PIXELS = old
        with im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise DataError(f"{at}image {name} has {w} x {h} = {w * h:,} pixels, more than "
                                f"data.max_image_pixels={MAX_PIXELS:,} (a decompression bomb, or raise the limit)")
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise DataError(f"{at}image file not found: {name}") from None
    except IsADirectoryError:
        raise DataError(f"{at}image path is a folder, not a file: {name}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{at}cannot read image {name}: {e}") from None
    except Image.DecompressionBombError as e:
        raise DataError(f"{at}cannot read image {name}: {e}") from None
