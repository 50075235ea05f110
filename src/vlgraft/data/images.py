"""Image loading with errors that name the record and file."""

from __future__ import annotations

from PIL import Image, UnidentifiedImageError

from vlgraft.errors import DataError


def load_image(path: str, where: str = "") -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{where + ': ' if where else ''}image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{where + ': ' if where else ''}cannot read image {path}: {e}") from None
