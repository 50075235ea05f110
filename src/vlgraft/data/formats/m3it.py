"""M3IT-style instruction data (JSONL with base64 images) in the canonical format.

Spec: ``m3it:PATH.jsonl``. Each line is ``{"instruction": str, "inputs": str, "outputs": str,
"image_base64_str": [base64, ...]}`` and becomes one record, id ``m3it-{line number}``:
user ``"<image>\\n"`` once per image ``+ instruction + ("\\n" + inputs if inputs)``, assistant
``outputs``. Every image of a line is kept, in order (``meta["n_images"]`` says how many); a line with
no image is a text-only record (no placeholder). The
image bytes are decoded once to check them and written as is to the content-addressed store of
:mod:`vlgraft.data.formats.image_store`. The file is read one line at a time.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass

from vlgraft.config import FormatOptions
from vlgraft.data.formats.common import check_placeholders, existing_file, instruction_fields
from vlgraft.data.formats.image_store import store_image_bytes
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import DataError
from vlgraft.files import iter_jsonl
from vlgraft.options import option
from vlgraft.registry import DATASET


def _decode(b64: object, where: str) -> bytes:
    if not isinstance(b64, str):
        raise DataError(f"{where}: 'image_base64_str' must hold base64 strings")
    if b64.startswith("data:") and "," in b64:  # data URL: data:image/png;base64,....
        b64 = b64.split(",", 1)[1]
    try:
        return base64.b64decode("".join(b64.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{where}: bad base64 image: {e}") from None


@dataclass
class M3ITOptions(FormatOptions):
    path: str = option(help="the .jsonl file")


@DATASET.register("m3it", options=M3ITOptions)
def m3it(o: M3ITOptions) -> Iterator[Record]:
    """One record per line (see the module docstring)."""
    p = existing_file(o.path, "M3IT file")
    for ln, raw in iter_jsonl(p):
        where = f"{p}: line {ln}"
        if not isinstance(raw, dict):
            raise DataError(f"{where}: a line must be a JSON object")
        user, answer = instruction_fields(raw, where, ("instruction", "inputs", "outputs"), "\n")
        images = raw.get("image_base64_str") or []
        if isinstance(images, str):
            images = [images]
        if not isinstance(images, list):
            raise DataError(f"{where}: 'image_base64_str' must be a list of base64 strings")
        paths = [str(store_image_bytes(_decode(b, f"{where}: image {k}"), where)) for k, b in enumerate(images)]
        turns = [("user", f"{IMAGE_PLACEHOLDER}\n" * len(paths) + user), ("assistant", answer)]
        check_placeholders(turns, len(paths), where)
        yield Record(f"m3it-{ln}", turns, images=paths,
                     meta={"line": ln, "n_images": len(images)}, source=where)
