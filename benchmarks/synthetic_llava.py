"""A synthetic LLaVA-format training set of any size, for the data-path benchmarks.

A mix shaped like LLaVA-Pretrain + LLaVA-665K: short captions (45%), short question/answer exchanges
(30%), long multi-turn conversations (20%) and long text-only conversations (5%), over a pool of small
generated images (coloured shapes on a background, 64 x 64 PNGs) that the records share. Records are
written as one JSONL file, streamed to disk (a million records never sit in memory); the same seed
gives the same file, and the first N lines of a larger file are the smaller set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 30),
          "purple": (140, 50, 170), "orange": (240, 140, 30), "gray": (128, 128, 128), "teal": (30, 160, 160)}
SHAPES = ("circle", "square", "triangle")
_TEXT = ("the shape sits near the middle of the picture and its edges are sharp against the plain background "
         "while the colour is even across the whole surface with no texture or pattern to speak of and the "
         "light is flat so there are no shadows")
WORDS = _TEXT.split(" ")


def make_images(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """``n`` PNGs of a coloured shape on a background; returns each one's file name and annotation."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        color, bg = rng.sample(list(COLORS), 2)
        shape = rng.choice(SHAPES)
        name = f"{i:05d}.png"
        path = folder / name
        if not path.is_file():
            im = Image.new("RGB", (64, 64), COLORS[bg])
            d = ImageDraw.Draw(im)
            x, y, r = rng.randint(16, 48), rng.randint(16, 48), rng.randint(8, 15)
            box = (x - r, y - r, x + r, y + r)
            if shape == "circle":
                d.ellipse(box, fill=COLORS[color])
            elif shape == "square":
                d.rectangle(box, fill=COLORS[color])
            else:
                d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=COLORS[color])
            im.save(path)
        out.append({"file": name, "color": color, "shape": shape, "background": bg})
    return out


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def record(i: int, images: list[dict], rng: random.Random) -> dict:
    """Record ``i``: a caption, a short exchange, a long conversation or a text-only conversation."""
    im = images[rng.randrange(len(images))]
    what = f"a {im['color']} {im['shape']} on a {im['background']} background"
    kind = rng.random()
    if kind < 0.45:
        turns = [("<image>\nDescribe the image briefly.", f"{what.capitalize()}.")]
    elif kind < 0.75:
        turns = [("<image>\nWhat color is the shape?", im["color"]), ("What shape is it?", im["shape"])]
    else:
        n = rng.randint(3, 6)
        turns = [(f"{'<image>' + chr(10) if j == 0 and kind < 0.95 else ''}Question {j}: {_sentence(rng, 8)}",
                  f"It is {what}. {_sentence(rng, rng.randint(15, 40))}") for j in range(n)]
    conv = [c for q, a in turns for c in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
    rec = {"id": f"s{i}", "conversations": conv}
    if "<image>" in turns[0][0]:
        rec["image"] = f"img/{im['file']}"
    return rec


def write_jsonl(path: Path, n: int, n_images: int = 1000, seed: int = 0) -> Path:
    """``path``: ``n`` records over ``n_images`` images under ``path.parent / "img"`` (kept if present)."""
    images = make_images(path.parent / "img", n_images, seed)
    if path.is_file() and _lines(path) == n:
        return path
    rng = random.Random(seed + 1)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for i in range(n):
            f.write(json.dumps(record(i, images, rng)) + "\n")
    tmp.replace(path)
    return path


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def head(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` records of ``src`` as ``dst`` (beside it, sharing its images)."""
    if not (dst.is_file() and _lines(dst) == n):
        with open(src, "rb") as f, open(dst, "wb") as g:
            for _, line in zip(range(n), f):
                g.write(line)
    return dst
