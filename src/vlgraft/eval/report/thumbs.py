"""Example thumbnails: each image read once (POPE asks several questions about one image), shrunk with
Pillow to fit a square of ``size`` pixels, aspect kept; an image that is missing or cannot be decoded gets
a note instead of failing the report (a row file outlives the images it names)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image

THUMB_SIZE = 128


class Thumbnails:
    def __init__(self, size: int = THUMB_SIZE) -> None:
        self.size = size
        self._done: dict[str, tuple[bytes | None, str | None]] = {}

    def get(self, path: str) -> tuple[bytes | None, str | None]:
        """(PNG bytes, None) or (None, the note to show instead) for the image at ``path`` (absolute or
        relative to the current folder, as the row files store it)."""
        if path not in self._done:
            self._done[path] = self._make(path)
        return self._done[path]

    def _make(self, path: str) -> tuple[bytes | None, str | None]:
        if not Path(path).is_file():
            return None, f"image not found: {path}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # a huge file: a note, not minutes
                with Image.open(path) as im:
                    im.draft("RGB", (self.size, self.size))  # JPEG: decode at a reduced scale
                    im = im.convert("RGBA" if im.mode in ("RGBA", "LA", "P", "PA") else "RGB")
                    im.thumbnail((self.size, self.size))
                    buf = io.BytesIO()
                    im.save(buf, format="PNG", optimize=True)
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            return None, f"image cannot be read: {path} ({type(e).__name__})"
        return buf.getvalue(), None
