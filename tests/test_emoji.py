"""The emoji set (vlgraft.data.formats.emoji) on a tiny fake package folder: specs, split, errors, fetch."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from vlgraft.data.formats import emoji as em
from vlgraft.data.images import load_image
from vlgraft.data.records import IMAGE_PLACEHOLDER
from vlgraft.data.sources import load_records
from vlgraft.errors import DataError

COLORS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 220, 20), (200, 0, 200), (0, 200, 200)]
NAMES = [("CAT FACE", "Animals & Nature", "animal-mammal"), ("ROCKET", "Travel & Places", "transport-air"),
         ("France Flag", "Flags", "country-flag"), ("WOMANS HAT", "Objects", "clothing"),
         ("FAMILY: MAN, WOMAN, BOY", "People & Body", "family"), ("OK HAND SIGN", "People & Body", "hand-fingers")]


def _codes() -> list[str]:
    """Six code points, the first two in the test split, the others in train."""
    test, train = [], []
    for c in range(0x1F600, 0x1F800):
        (test if em.split_of(f"{c:X}") == "test" else train).append(f"{c:X}")
    return test[:2] + train[:4]


def _png(path: Path, color, mode: str = "RGBA") -> None:
    """A 8x8 image whose left half is transparent and right half opaque ``color``."""
    im = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    im.paste(Image.new("RGBA", (4, 8), color + (255,)), (4, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _entry(code: str, name: str, category: str, sub: str, **kw) -> dict:
    return {"name": name, "unified": code, "image": f"{code.lower()}.png", "short_names": [name.lower()[:8]],
            "category": category, "subcategory": sub, "sort_order": 1, "added_in": "1.0",
            "has_img_google": True, **kw}


def _make(root: Path, entries: list[dict] | None = None) -> tuple[Path, list[str]]:
    codes = _codes()
    if entries is None:
        entries = [_entry(c, *NAMES[k]) for k, c in enumerate(codes)]
        for k, c in enumerate(codes):
            _png(root / em.IMAGE_DIR / f"{c.lower()}.png", COLORS[k])
        entries.append(_entry("1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "Component", "skin-tone"))
        _png(root / em.IMAGE_DIR / "1f3fb.png", (250, 200, 150))
        entries.append(_entry("1F999", "NO IMAGE HERE", "Symbols", "other", has_img_google=False))
        dup = _entry("1F1E8-1F1F5", "Clipperton Island Flag", "Flags", "country-flag", added_in="2.0")
        france = (root / em.IMAGE_DIR / f"{codes[2].lower()}.png").read_bytes()
        (root / em.IMAGE_DIR / "1f1e8-1f1f5.png").write_bytes(france)
        entries.insert(0, dup)  # listed first, still loses to the older France flag
    (root / em.IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / "emoji.json").write_text(json.dumps(entries))
    return root, codes


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("VLGRAFT_CACHE", str(tmp_path / "cache"))
    root, codes = _make(tmp_path / "package")
    monkeypatch.setenv(em.ENV_DIR, str(root))
    return root, codes


def test_load_and_skips(fake):
    root, codes = fake
    kept, skipped = em.load_emoji()
    assert [e.unified for e in kept] == codes
    assert skipped == {"no_google_image": 1, "component": 1, "duplicate_image": 1}
    assert [e.split for e in kept] == ["test", "test", "train", "train", "train", "train"]


def test_labels_and_captions():
    cases = {"CAT FACE": "A cat face emoji.", "WOMANS HAT": "A woman's hat emoji.",
             "France Flag": "A France flag emoji.", "Åland Islands Flag": "An Åland Islands flag emoji.",
             "United States Flag": "A United States flag emoji.",
             "FAMILY: MAN, WOMAN, BOY": "A family emoji: man, woman, boy.",
             "OK HAND SIGN": "An OK hand sign emoji.", "UNICORN FACE": "A unicorn face emoji.",
             "UMBRELLA": "An umbrella emoji.", "HOURGLASS": "An hourglass emoji.",
             "CLOCK FACE ONE OCLOCK": "A clock face one o'clock emoji.",
             "FACE THROWING A KISS": "A face throwing a kiss emoji.",
             "NEGATIVE SQUARED LATIN CAPITAL LETTER A": "A negative squared latin capital letter A emoji.",
             "SQUARED CJK UNIFIED IDEOGRAPH-7A7A": "A squared CJK unified ideograph-7A7A emoji.",
             "KEYCAP: *": "A keycap emoji: *."}
    for name, cap in cases.items():
        e = em.Emoji("1F600", name, em.label(name), (), "X", "x", "f.png", "train", "src")
        assert em.caption(e) == cap


def test_captions(fake):
    root, codes = fake
    train, test = load_records("emoji:captions"), load_records("emoji:captions-test")
    assert [r.id for r in test] == [f"emoji-{c}" for c in codes[:2]]
    assert [r.id for r in train] == [f"emoji-{c}" for c in codes[2:]]
    for r in train + test:
        assert len(r.turns) == 2 and r.turns[0][0] == "user" and r.turns[1][0] == "assistant"
        head, prompt = r.turns[0][1].split("\n")
        assert head == IMAGE_PLACEHOLDER and prompt in em.CAPTION_PROMPTS
        assert Path(r.images[0]).is_file() and r.meta == {"answer_type": "caption"}
    assert [r.turns[1][1] for r in train] == ["A France flag emoji.", "A woman's hat emoji.",
                                              "A family emoji: man, woman, boy.", "An OK hand sign emoji."]
    assert test[0].turns[1][1] == "A cat face emoji."
    assert "emoji.json: emoji" in test[0].source


def test_qa(fake):
    root, codes = fake
    recs = load_records("emoji:qa") + load_records("emoji:qa-test")
    assert len(recs) == 6
    categories = {n[1] for n in NAMES}
    for r, (name, cat, _) in zip(recs, NAMES[2:] + NAMES[:2]):
        assert r.id.endswith("-qa") and len(r.turns) == 6
        assert [role for role, _ in r.turns] == ["user", "assistant"] * 3
        assert r.turns[0][1].startswith(IMAGE_PLACEHOLDER + "\n")
        assert sum(t.count(IMAGE_PLACEHOLDER) for _, t in r.turns) == 1
        assert r.turns[1][1] == em.label(name) and r.turns[3][1] == cat
        asked = r.turns[4][1].split("'")[1]
        assert asked in categories and r.turns[5][1] == ("yes" if asked == cat else "no")
        assert r.meta["answer_types"] == ["name", "category", "yes/no"]


def test_text_is_text_only(fake):
    root, codes = fake
    recs = load_records("emoji:text")
    assert [r.id for r in recs] == [f"emoji-{c}-text" for c in codes[2:]]
    for r, (name, cat, _) in zip(recs, NAMES[2:]):
        assert not r.images and not r.has_image
        assert IMAGE_PLACEHOLDER not in r.turns[0][1] and f"'{em.label(name)}'" in r.turns[0][1]
        assert r.turns[1] == ("assistant", cat)
    assert len(load_records("emoji:text-test")) == 2


def test_annotations(fake):
    root, codes = fake
    recs = load_records("emoji:annotations")
    assert [r.id for r in recs] == [f"emoji-{c}-ann" for c in codes[2:]]
    m = recs[0].meta
    assert (m["name"], m["category"], m["subcategory"], m["unified"], m["split"]) == (
        "France Flag", "Flags", "country-flag", codes[2], "train")
    assert m["short_names"] == ["france f"] and recs[0].turns[1][1] == "A France flag emoji."
    assert recs[0].turns[0][1].startswith(IMAGE_PLACEHOLDER)


def test_split_is_stable_and_disjoint(fake):
    # pinned: the split must not change across versions, runs or machines
    assert [em.split_of(c) for c in ("1F600", "1F914", "1F680", "1F1EB-1F1F7", "1F44D")] == \
        ["train", "test", "train", "train", "train"]
    train = {r.images[0] for r in load_records("emoji:captions")}
    test = {r.images[0] for r in load_records("emoji:captions-test")}
    assert train and test and not train & test
    share = sum(em.split_of(f"{c:X}") == "test" for c in range(0x1F000, 0x1F000 + 2000)) / 2000
    assert 0.07 < share < 0.13
    assert load_records("emoji:qa") == load_records("emoji:qa")  # same prompts, same order


def test_ids_unique_across_specs(fake):
    ids = [r.id for s in ("captions", "qa", "text", "annotations") for t in ("", "-test")
           for r in load_records(f"emoji:{s}{t}")]
    assert len(ids) == len(set(ids)) == 4 * 6


def test_transparency_is_white(fake, tmp_path):
    root, codes = fake
    im = load_image(str(root / em.IMAGE_DIR / f"{codes[0].lower()}.png"))
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255) and im.getpixel((7, 0)) == COLORS[0]
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (40, 255))
    la.save(tmp_path / "la.png")
    got = load_image(str(tmp_path / "la.png"))
    assert (got.getpixel((0, 0)), got.getpixel((1, 0))) == ((255, 255, 255), (40, 40, 40))
    p = Image.new("P", (2, 1), 0)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)
    got = load_image(str(tmp_path / "p.png"))
    assert (got.getpixel((0, 0)), got.getpixel((1, 0))) == ((255, 255, 255), (200, 10, 10))
    Image.new("RGB", (1, 1), (5, 6, 7)).save(tmp_path / "rgb.png")
    assert load_image(str(tmp_path / "rgb.png")).getpixel((0, 0)) == (5, 6, 7)


@pytest.mark.parametrize("change,needles", [
    (lambda es: es[3].pop("name"), ["'name'", "#3 ("]),
    (lambda es: es[3].update(image="missing.png"), ["image file not found", "missing.png", "#3 ("]),
    (lambda es: es[3].update(image="../emoji.json"), ["image file not found", "#3 ("]),
    (lambda es: es[3].update(category=""), ["'category'", "#3 ("]),
    (lambda es: es[3].update(short_names="cat"), ["'short_names'", "#3 ("]),
    (lambda es: es.__setitem__(3, "oops"), ["#3:", "must be an object"]),
])
def test_broken_entries(fake, change, needles):
    root, codes = fake
    entries = json.loads((root / "emoji.json").read_text())
    change(entries)
    (root / "emoji.json").write_text(json.dumps(entries))
    with pytest.raises(DataError) as e:
        load_records("emoji:captions")
    msg = str(e.value)
    assert "\n" not in msg and str(root / "emoji.json") in msg
    if not isinstance(entries[3], str):
        assert entries[3]["unified"] in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_bad_json_and_bad_specs(fake, monkeypatch, tmp_path):
    root, codes = fake
    (root / "emoji.json").write_text('[{"name": ')
    with pytest.raises(DataError, match="emoji.json: not valid JSON"):
        load_records("emoji:captions")
    (root / "emoji.json").write_text("{}")
    with pytest.raises(DataError, match="expected a JSON list"):
        load_records("emoji:qa")
    with pytest.raises(DataError, match="has specs captions, qa, text, annotations"):
        load_records("emoji:caption")
    monkeypatch.setenv(em.ENV_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=f"{em.ENV_DIR}=.*nowhere does not hold emoji.json"):
        load_records("emoji:captions")


def _tgz(src: Path, out: Path) -> Path:
    """An npm-style tarball of the fake folder plus members that must never be extracted."""
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname="package")
        for name in ("package/../evil.png", "/abs.png", "package/img/google/64/../../../evil2.png",
                     "package/img/google/32/x.png"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
        link = tarfile.TarInfo("package/img/google/64/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return out


def test_fetch_extracts_only_the_package_files(fake, monkeypatch, tmp_path):
    root, codes = fake
    monkeypatch.delenv(em.ENV_DIR)
    calls = []

    def fake_pack(workdir: Path) -> Path:
        calls.append(workdir)
        return _tgz(root, workdir / "emoji-datasource-google-16.0.0.tgz")

    monkeypatch.setattr(em, "_npm_pack", fake_pack)
    got = em.emoji_root()
    cache = tmp_path / "cache"
    assert got == cache / "emoji-datasource-google-16.0.0" and len(calls) == 1
    files = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    pngs = [p.relative_to(root).as_posix() for p in (root / em.IMAGE_DIR).glob("*.png")]
    assert files == sorted(["emoji.json"] + pngs)
    assert not list(tmp_path.rglob("evil*")) and not (got / em.IMAGE_DIR / "link.png").exists()
    assert [p.name for p in cache.iterdir()] == [got.name]  # the temp folder and tarball are gone
    assert len(load_records("emoji:captions")) == 4 and len(calls) == 1  # cached: npm not run again


@pytest.mark.parametrize("failure", ["npm", "truncated"])
def test_fetch_failure_leaves_nothing(fake, monkeypatch, tmp_path, failure):
    root, codes = fake
    monkeypatch.delenv(em.ENV_DIR)

    def fake_pack(workdir: Path) -> Path:
        (workdir / "partial.tgz").write_bytes(b"half")
        if failure == "npm":
            raise DataError("npm pack emoji-datasource-google@16.0.0 failed: E404")
        data = _tgz(root, workdir / "full.tgz").read_bytes()
        (workdir / "cut.tgz").write_bytes(data[: len(data) // 2])
        return workdir / "cut.tgz"

    monkeypatch.setattr(em, "_npm_pack", fake_pack)
    with pytest.raises(DataError) as e:
        load_records("emoji:captions")
    assert "\n" not in str(e.value) and ("E404" if failure == "npm" else "cannot read the npm tarball") in str(e.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_missing_npm_says_how_to_do_it_by_hand(fake, monkeypatch, tmp_path):
    monkeypatch.delenv(em.ENV_DIR)
    monkeypatch.setattr(em.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match=f"npm, which is not on PATH.*{em.ENV_DIR}"):
        em.emoji_root()
    assert list((tmp_path / "cache").iterdir()) == []
