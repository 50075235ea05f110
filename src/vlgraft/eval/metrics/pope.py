"""POPE, the polling-based object probing evaluation of object hallucination (Li et al., "Evaluating
Object Hallucination in Large Vision-Language Models", EMNLP 2023; code and data:
github.com/RUCAIBox/POPE, ``utils.py`` builds the questions, ``evaluate.py`` scores the answers).

Building (:func:`pope_questions`), as POPE's ``utils.pope`` does: for each image, for each of its
first k ground-truth objects (k = ``sample_num``, 3 in the paper) one "yes" question about that
object, followed by one "no" question about an object not in the image and not asked yet about
this image; the negative is drawn by one of three settings:

* ``random``: uniformly among the objects of the chosen images (the dataset's vocabulary);
* ``popular``: the most frequent object of the chosen images (counted once per image);
* ``adversarial``: the object most often co-occurring (in the same image) with the positive object
  just asked; when none is left, a random one (POPE's fallback; popular falls back likewise).

Frequencies, co-occurrences and the vocabulary are counted over the chosen images only, as POPE
does; ties keep the order in which the counting first met them (images in the chosen order, objects
in each image's order), which is what POPE's stable sort of its insertion-ordered counts gives.
Questions read ``"Is there a {object} in the image?"`` with "an" before a vowel, as POPE's released
files do. POPE keeps only images with at least k objects and samples 500 of them (COCO val2014):
``min_objects=3, n_images=500``. By default here every image with an object is used and asks about
up to k of its objects (an emoji image has one). Deterministic for a seed: the chosen images depend
on the seed only, so the three settings ask about the same images and the same positives.

Scoring (:func:`pope_answer`, :func:`pope_metrics`), as POPE's ``evaluate.py``: an answer is cut at
its first period, commas are removed, it is split at spaces, and it counts as "no" when one of the
words is exactly ``No``, ``no`` or ``not``, else "yes" ("No, there is not." -> no; "There is no
dog." -> no; "NO" or "No!" -> yes, as in POPE). Positive = "yes": accuracy, precision, recall, F1
and the ratio of "yes" answers.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from vlgraft.data.formats.coco import id_table
from vlgraft.data.formats.coco import image_files as coco_image_files
from vlgraft.data.formats.common import existing_file
from vlgraft.errors import DataError
from vlgraft.files import read_json

SETTINGS = ("random", "popular", "adversarial")
TEMPLATE = "Is there {article} {object} in the image?"
NEGATION_WORDS = ("No", "not", "no")  # POPE's evaluate.py, case-sensitive


def question_text(obj: str, template: str = TEMPLATE) -> str:
    """ "Is there a dog in the image?" / "Is there an apple in the image?" ("an" before a, e, i, o, u
    as POPE's ``create_question``; an upper-case vowel too: "an OK hand sign")."""
    return template.format(article="an" if obj[:1].lower() in "aeiou" else "a", object=obj)


def _objects_of(image: str, names: Iterable[str], rng: random.Random) -> list[str]:
    """The image's objects, each once: a list keeps its order (POPE asks about the first k); a set
    has none, so it is sorted, then shuffled with the seed (not always the alphabet's first k)."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise DataError(f"image {image!r}: the objects must be a list or set of names, not {type(names).__name__}")
    given = list(names)
    for n in given:
        if not isinstance(n, str) or not n.strip():
            raise DataError(f"image {image!r}: object {n!r} must be a non-empty string")
    out = list(dict.fromkeys(n.strip() for n in given))
    if isinstance(names, (set, frozenset)):
        out.sort()
        rng.shuffle(out)
    return out


def _ranked(counts: Counter) -> list[str]:
    """Most frequent first; ties in the order the counting first met them (POPE sorts its
    insertion-ordered count dicts with Python's stable sort: the same order)."""
    return sorted(counts, key=lambda o: -counts[o])


class _Pools:
    """The vocabulary, the popularity ranking and the co-occurrence rankings of the chosen images,
    counted as POPE's ``generate_ground_truth_objects`` and ``compute_co_occurrence`` do."""

    def __init__(self, chosen: dict[str, list[str]]):
        freq: Counter = Counter()
        co: dict[str, Counter] = defaultdict(Counter)
        for objs in chosen.values():
            for o in objs:
                freq[o] += 1
                for other in objs:
                    if other != o:
                        co[o][other] += 1
        self.vocabulary = list(freq)
        self.popular = _ranked(freq)
        self.co_occurring = {o: _ranked(c) for o, c in co.items()}


def _negative(setting: str, positive: str, excluded: set[str], pools: _Pools, rng: random.Random,
              image: str) -> str:
    ranking = pools.popular if setting == "popular" else pools.co_occurring.get(positive, [])
    if setting != "random":
        for o in ranking:
            if o not in excluded:
                return o
    # POPE redraws at random until the object is neither in the image nor asked: the same as a uniform
    # draw among the objects left, which also cannot loop forever when none is left.
    left = [o for o in pools.vocabulary if o not in excluded]
    if not left:
        raise DataError(f"image {image!r}: no object left to ask about as a 'no' question (the chosen images "
                        f"have {len(pools.vocabulary)} distinct objects); use more images or a smaller k")
    return rng.choice(left)


def pope_questions(objects: Mapping[str, Iterable[str]], setting: str, k: int = 3, seed: int = 0,
                   n_images: int | None = None, min_objects: int = 1) -> list[dict]:
    """POPE's questions for ``objects`` (image -> its ground-truth object names) in one ``setting``
    (random, popular, adversarial), as the module docstring says: per chosen image, up to ``k``
    (positive, negative) pairs, "yes" then "no". Images are those with at least ``min_objects``
    objects; ``n_images`` of them are sampled with the seed (all, in the given order, when None).

    Each question is POPE's record plus the object and the setting::

        {"question_id": 1, "image": "COCO_val2014_000000016631.jpg", "text": "Is there a person in the
         image?", "label": "yes", "object": "person", "setting": "popular"}
    """
    if setting not in SETTINGS:
        raise DataError(f"unknown POPE setting {setting!r} (expected one of {', '.join(SETTINGS)})")
    if not isinstance(objects, Mapping):
        raise DataError(f"POPE objects must map each image to its object names, not {type(objects).__name__}")
    if k < 1 or min_objects < 1:
        raise DataError(f"POPE needs k >= 1 and min_objects >= 1 (got k={k}, min_objects={min_objects})")
    # One generator for the images and their object order (shared by the settings), one per setting.
    shared = random.Random(f"pope:{seed}")
    ordered = {image: _objects_of(image, names, shared) for image, names in objects.items()}
    eligible = [im for im, objs in ordered.items() if len(objs) >= min_objects]
    if n_images is not None:
        if not 1 <= n_images <= len(eligible):
            raise DataError(f"POPE asked for {n_images} images but {len(eligible)} have at least {min_objects} "
                            "object(s)")
        eligible = shared.sample(eligible, n_images)
    if not eligible:
        raise DataError(f"no image has at least {min_objects} object(s) to ask about")
    chosen = {im: ordered[im] for im in eligible}
    pools = _Pools(chosen)
    rng = random.Random(f"pope:{seed}:{setting}")
    questions: list[dict] = []
    for image, objs in chosen.items():
        excluded = set(objs)  # in the image, or asked about it already
        for positive in objs[:k]:
            negative = _negative(setting, positive, excluded, pools, rng, image)
            excluded.add(negative)
            for obj, label in ((positive, "yes"), (negative, "no")):
                questions.append({"question_id": len(questions) + 1, "image": image, "text": question_text(obj),
                                  "label": label, "object": obj, "setting": setting})
    return questions


def pope_answer(text: str) -> str:
    """"yes" or "no" as POPE's evaluate.py reads a generated answer (see the module docstring)."""
    if not isinstance(text, str):
        raise DataError(f"a POPE answer must be a string, not {type(text).__name__}")
    first = text.split(".")[0]
    words = first.replace(",", "").split(" ")
    return "no" if any(w in words for w in NEGATION_WORDS) else "yes"


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict:
    """POPE's figures for generated ``answers`` against the questions' ``labels`` ("yes"/"no"), in the
    same order: accuracy, precision, recall and F1 with "yes" as the positive class, the ratio of
    "yes" answers, and the counts. A ratio with a zero denominator (no "yes" answer, no "yes" label)
    is 0.0 (POPE's script would divide by zero)."""
    if len(answers) != len(labels):
        raise DataError(f"POPE: {len(answers)} answers for {len(labels)} questions")
    if not labels:
        raise DataError("POPE: no questions to score")
    for i, lab in enumerate(labels):
        if lab not in ("yes", "no"):
            raise DataError(f"POPE question #{i}: label {lab!r} must be 'yes' or 'no'")
    preds = [pope_answer(a) for a in answers]
    tp = sum(p == "yes" and lab == "yes" for p, lab in zip(preds, labels))
    fp = sum(p == "yes" and lab == "no" for p, lab in zip(preds, labels))
    tn = sum(p == "no" and lab == "no" for p, lab in zip(preds, labels))
    fn = sum(p == "no" and lab == "yes" for p, lab in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(labels)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n}


# --- ground-truth objects -----------------------------------------------------------------------

def _categories(data: dict, path: Path) -> dict:
    return {k: name.strip() for k, name in id_table(data, path, "categories", "name").items()}


def coco_objects(path: str | Path) -> dict[str, set[str]]:
    """Image file name -> the names of the categories annotated in it, from a COCO instances file
    (``instances_val2014.json`` and the like: ``images`` with ``id`` and ``file_name``,
    ``annotations`` with ``image_id`` and ``category_id``, ``categories`` with ``id`` and ``name``).
    Images without annotations map to an empty set. Errors name the file, the entry and the key."""
    p = existing_file(path, "COCO instances file")
    data = read_json(p)
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected a COCO instances object with 'images', 'annotations' and 'categories'")
    files = coco_image_files(data, p)  # the captions loader's checked image id -> file_name
    names = _categories(data, p)
    if len(set(files.values())) != len(files):
        dup = next(f for f in files.values() if list(files.values()).count(f) > 1)
        raise DataError(f"{p}: 'images': file_name {dup!r} is listed twice")
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise DataError(f"{p}: 'annotations' must be a list")
    out: dict[str, set[str]] = {f: set() for f in files.values()}
    for i, ann in enumerate(anns):
        where = f"{p}: annotation {ann.get('id')!r} (#{i})" if isinstance(ann, dict) else f"{p}: annotation #{i}"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: an annotation must be an object")
        image_id, cat = ann.get("image_id"), ann.get("category_id")
        if not isinstance(image_id, (int, str)) or image_id not in files:
            raise DataError(f"{where}: 'image_id' {image_id!r} is not in 'images'")
        if not isinstance(cat, (int, str)) or cat not in names:
            raise DataError(f"{where}: 'category_id' {cat!r} is not in 'categories'")
        out[files[image_id]].add(names[cat])
    return out


def emoji_objects(split: str | None = "test") -> dict[str, set[str]]:
    """Image path -> its object for the emoji set (``emoji:`` format, read by its own loader): one
    emoji per image, named by its label's head ("family" for "family: man, woman, boy", as its
    caption splits it). ``split``: "train", "test" or None for both. With one object per image nothing
    co-occurs, so POPE's adversarial setting falls back to random negatives here."""
    from vlgraft.data.formats.emoji import load_emoji

    if split not in ("train", "test", None):
        raise DataError(f"emoji split must be 'train', 'test' or None, not {split!r}")
    kept, _ = load_emoji()
    return {e.image: {e.label.partition(": ")[0]} for e in kept if split is None or e.split == split}
