"""Benchmark metrics (vlgraft.eval.metrics) on hand-computed cases from each benchmark's own rules;
the caption metrics also against pycocoevalcap called directly on the same inputs."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from vlgraft.data.formats import emoji as em
from vlgraft.data.sources import load_records
from vlgraft.errors import DataError
from vlgraft.eval.metrics import captioning
from vlgraft.eval.metrics.captioning import JavaMissingError, caption_metrics, ptb_tokenize
from vlgraft.eval.metrics.choice import (
    circular_accuracy,
    extract_choice,
    rotations,
    scienceqa_accuracy,
    scienceqa_categories,
    scienceqa_fields,
)
from vlgraft.eval.metrics.pope import coco_objects, emoji_objects, pope_answer, pope_metrics, pope_questions
from vlgraft.eval.metrics.vqa_accuracy import normalize_answer, vqa_accuracy, vqa_score

# --- VQA accuracy -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, normal", [
    ("Two dogs.", "2 dogs"),             # period stripped (no digit after it), "two" -> "2"
    ("2 dogs", "2 dogs"),
    ("dont", "don't"),                   # the contractions table
    ("The cat!", "cat"),                 # "!" touches no space: becomes a space; "the" dropped
    ("yes, it is", "yes it is"),         # "," touches a space: deleted
    ("black/white", "black white"),      # "/" touches no space: becomes a space
    ("1,000", "1000"),                   # digit,digit: every listed mark is deleted
    ("2.5", "2.5"),                      # a period before a digit stays
    ("e.g.", "eg"),
    ("None", "0"),                       # the manual map has "none" -> "0"
    ("An Apple", "apple"),
    ("\tYes\n", "yes"),
    ("it's", "it's"),                    # apostrophes are kept
    ("x" + "." * 40, "x" + "." * 8),     # the script removes at most 32 periods (re.UNICODE as count)
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_accuracy_averages_over_the_ten_leave_one_out_sets():
    others = ["cat"] * 8
    # m = 2 equal answers: leaving out one of the 2 leaves 1 -> 1/3; leaving out one of the 8 leaves
    # 2 -> 2/3; mean = (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10.
    assert vqa_accuracy("dog", ["dog", "dog"] + others) == pytest.approx(0.6)
    # m = 1: (1 * 0 + 9 * 1/3) / 10 = 0.3; m = 3: (3 * 2/3 + 7 * 1) / 10 = 0.9; m = 4: all >= 1 -> 1.
    assert vqa_accuracy("dog", ["dog"] + ["cat"] * 9) == pytest.approx(0.3)
    assert vqa_accuracy("dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("dog", ["dog"] * 4 + ["cat"] * 6) == 1.0
    assert vqa_accuracy("bird", ["dog"] * 4 + ["cat"] * 6) == 0.0


def test_vqa_accuracy_normalises_both_sides():
    refs = ["2 dogs", "2 dogs", "2 dogs", "two dogs", "dogs", "2", "2", "3 dogs", "dogs", "2"]
    # "Two dogs." -> "2 dogs"; references normalised alike: 4 of them are "2 dogs": accuracy 1.
    assert vqa_accuracy("Two dogs.", refs) == 1.0
    # "2" matches 3: (3 * 2/3 + 7 * 1) / 10 = 0.9
    assert vqa_accuracy("Two", refs) == pytest.approx(0.9)
    assert vqa_accuracy("Yes", ["yes"] * 10) == 1.0  # the raw script would give 0 here (no normalising)


def test_vqa_accuracy_single_reference_is_exact_match():
    assert vqa_accuracy("Two.", ["2"]) == 1.0
    assert vqa_accuracy("dont", ["don't"]) == 1.0
    assert vqa_accuracy("a dog", ["cat"]) == 0.0


def test_vqa_score_and_errors():
    preds = {1: "yes", 2: "Two", 3: "red"}
    refs = {1: ["yes"] * 10, 2: ["2"] * 3 + ["3"] * 7, 3: ["blue"]}
    out = vqa_score(preds, refs, {1: "yes/no", 2: "number", 3: "other"})
    assert out["per_question"] == {1: 1.0, 2: pytest.approx(0.9), 3: 0.0}
    assert out["accuracy"] == pytest.approx(1.9 / 3)
    assert out["per_answer_type"] == {"number": pytest.approx(0.9), "other": 0.0, "yes/no": 1.0}
    with pytest.raises(DataError, match="question 7: 'references' must be a non-empty list"):
        vqa_accuracy("x", [], where="question 7")
    with pytest.raises(DataError, match="non-empty list"):
        vqa_accuracy("x", "yes")
    with pytest.raises(DataError, match="question 3"):
        vqa_score({1: "a"}, {1: ["a"], 3: ["b"]})


# --- captioning ---------------------------------------------------------------------------------

PREDS = {"img1": ["A man rides a horse on the beach."], "img2": ["Two dogs play in the snow!"],
         "img3": ["A plate of food, with (fresh) vegetables."]}
REFS = {"img1": ["A man riding a horse along a beach.", "A person on horseback near the ocean.",
                 "Someone rides a brown horse on the sand."],
        "img2": ["Two dogs playing in the snow.", "A pair of dogs run through snow.", "Dogs in snow"],
        "img3": ["A plate with meat and vegetables.", "Food on a white plate.", "A dinner plate of vegetables."]}


@pytest.fixture(scope="module")
def ours():
    return caption_metrics(PREDS, REFS, meteor=True)


def test_ptb_tokenize():
    # As pycocoevalcap: -lowerCase turns "(" into "-lrb-", which its punctuation list (upper-case
    # "-LRB-") does not drop; a line break inside a caption does not split it.
    assert ptb_tokenize(["A man, riding.", "Don't stop (now)!", "", "two\nlines"]) == [
        "a man riding", "do n't stop -lrb- now -rrb-", "", "two lines"]


def test_caption_metrics_equal_pycocoevalcap(ours):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in REFS.items()})
    res = tok.tokenize({i: [{"caption": c} for c in p] for i, p in PREDS.items()})
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        assert ours[f"BLEU-{n + 1}"] == pytest.approx(bleu[n], abs=1e-12)
        assert [ours["per_image"][i][f"BLEU-{n + 1}"] for i in gts] == pytest.approx(bleu_each[n], abs=1e-12)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    assert ours["ROUGE-L"] == pytest.approx(rouge, abs=1e-12)
    assert ours["CIDEr"] == pytest.approx(cider, abs=1e-12)
    assert [ours["per_image"][i]["CIDEr"] for i in gts] == pytest.approx(list(cider_each), abs=1e-12)
    assert [ours["per_image"][i]["ROUGE-L"] for i in gts] == pytest.approx(list(rouge_each), abs=1e-12)
    # METEOR: the same (reused) Java process, on pycocoevalcap's own tokenisation.
    meteor, meteor_each = captioning.meteor_scorer().compute_score(gts, res)
    assert ours["METEOR"] == pytest.approx(meteor, abs=1e-12)
    assert [ours["per_image"][i]["METEOR"] for i in gts] == pytest.approx(meteor_each, abs=1e-12)
    assert 0 < ours["METEOR"] < 1 and ours["CIDEr"] > 0.5 and ours["BLEU-1"] > ours["BLEU-4"] > 0
    assert set(ours) == {*captioning.METRICS, "per_image"}


def test_cider_bleu_rouge_by_hand():
    # Tokenised: "red rose" vs ["red rose"], "blue bike" vs ["blue car"]. Two images, so idf of an
    # n-gram in one image's references = log(2) - log(1) = L (unseen ones count df 1: also L).
    # CIDEr-D, image 1: 1-gram and 2-gram cosines 1, 3- and 4-grams empty (0), no length penalty:
    #   10 * (1 + 1 + 0 + 0) / 4 = 5.0.
    # image 2: 1-grams {blue: L, bike: L} . {blue: L, car: L} = L^2 / (sqrt2 L)^2 = 0.5; 2-grams 0:
    #   10 * 0.5 / 4 = 1.25.  CIDEr = (5 + 1.25) / 2 = 3.125.
    # BLEU (corpus): 4 hypothesis words, 3 match (red, rose, blue); 2 bigrams, 1 matches; lengths equal.
    #   BLEU-1 = 3/4, BLEU-2 = sqrt(3/4 * 1/2).
    # ROUGE-L (beta 1.2): image 1: 1; image 2: LCS 1 of 2 words, P = R = 1/2 -> F = 1/2. Mean 0.75.
    out = caption_metrics({"a": ["Red rose."], "b": ["Blue bike."]}, {"a": ["Red rose."], "b": ["Blue car."]},
                          meteor=False)
    assert out["CIDEr"] == pytest.approx(3.125)
    assert out["per_image"]["a"]["CIDEr"] == pytest.approx(5.0)
    assert out["per_image"]["b"]["CIDEr"] == pytest.approx(1.25)
    assert out["BLEU-1"] == pytest.approx(0.75, abs=1e-6)
    assert out["BLEU-2"] == pytest.approx(math.sqrt(0.375), abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx(0.75)
    assert "METEOR" not in out


def test_caption_metrics_need_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java anywhere
    with pytest.raises(JavaMissingError, match="scripts/java.sh"):
        caption_metrics({"a": ["x"]}, {"a": ["x"]}, meteor=False)


def test_caption_metrics_input_errors():
    with pytest.raises(DataError, match="1 without a prediction \\(e.g. 'b'\\)"):
        caption_metrics({"a": ["x"]}, {"a": ["x"], "b": ["y"]})
    with pytest.raises(DataError, match="image 'a': the prediction must be one caption"):
        caption_metrics({"a": ["x", "y"]}, {"a": ["x"]})
    with pytest.raises(DataError, match="image 'a': 'references' must be a non-empty list"):
        caption_metrics({"a": "x"}, {"a": []})


# --- POPE ---------------------------------------------------------------------------------------

OBJECTS = {"img1": ["dog", "cat", "sofa"], "img2": ["dog", "car"], "img3": ["car", "tree", "road", "sign"]}


def _pairs(questions, image):
    qs = [q for q in questions if q["image"] == image]
    return [(qs[i]["object"], qs[i + 1]["object"]) for i in range(0, len(qs), 2)]


def test_pope_popular_by_hand():
    # Counted once per image: dog 2, car 2, then cat sofa tree road sign 1 each; ties in the order
    # the counting met them: dog, car, cat, sofa, tree, road, sign. Each negative: the first one neither in the
    # image nor asked about it yet.
    qs = pope_questions(OBJECTS, "popular", k=3)
    assert _pairs(qs, "img1") == [("dog", "car"), ("cat", "tree"), ("sofa", "road")]
    assert _pairs(qs, "img2") == [("dog", "cat"), ("car", "sofa")]  # 2 objects: 2 pairs
    assert _pairs(qs, "img3") == [("car", "dog"), ("tree", "cat"), ("road", "sofa")]  # k = 3 of 4
    assert len(qs) == 16 and [q["label"] for q in qs] == ["yes", "no"] * 8
    assert [q["question_id"] for q in qs] == list(range(1, 17))
    assert qs[0]["text"] == "Is there a dog in the image?" and qs[0]["setting"] == "popular"


def test_pope_adversarial_by_hand():
    # Co-occurrence: dog with cat, sofa (img1) and car (img2); car with dog, tree, road, sign;
    # cat with dog, sofa; tree with car, road, sign. Ranked by count, ties by first appearance.
    qs = pope_questions(OBJECTS, "adversarial", k=3, seed=1)
    img1 = _pairs(qs, "img1")
    assert img1[0] == ("dog", "car")  # cat, sofa are in the image
    # cat's and sofa's partners are all in the image: POPE's fallback, a random object left.
    assert {img1[1][1], img1[2][1]} <= {"tree", "road", "sign"} and img1[1][1] != img1[2][1]
    assert _pairs(qs, "img2") == [("dog", "cat"), ("car", "tree")]
    img3 = _pairs(qs, "img3")
    assert img3[0] == ("car", "dog")
    assert {img3[1][1], img3[2][1]} == {"cat", "sofa"}  # tree's and road's partners are all present
    # Ties among partners keep the order they were first counted *with that object* (POPE's dict):
    # d meets c, b (img2), then e (img3), so d's negative in img3 is c, though b was seen first overall.
    tie = pope_questions({"img1": ["b", "c", "x"], "img2": ["d", "c", "b"], "img3": ["d", "e"]}, "adversarial", k=1)
    assert _pairs(tie, "img3") == [("d", "c")]


def test_pope_random_is_seeded_and_valid():
    runs = {s: pope_questions(OBJECTS, "random", k=3, seed=s) for s in range(8)}
    assert pope_questions(OBJECTS, "random", seed=3) == runs[3]
    assert len({json.dumps(r) for r in runs.values()}) > 1  # the seed matters
    for qs in runs.values():
        for image, objs in OBJECTS.items():
            pairs = _pairs(qs, image)
            negs = [n for _, n in pairs]
            assert [p for p, _ in pairs] == objs[:3]
            assert not set(negs) & set(objs) and len(set(negs)) == len(negs)
    # every setting asks about the same images and positives
    yes = [[q["object"] for q in pope_questions(OBJECTS, s, seed=5) if q["label"] == "yes"]
           for s in ("random", "popular", "adversarial")]
    assert yes[0] == yes[1] == yes[2]


def test_pope_image_selection_and_sets():
    # POPE's own build: only images with >= k objects (img2 has 2), n_images sampled with the seed.
    qs = pope_questions(OBJECTS, "popular", k=3, min_objects=3)
    assert {q["image"] for q in qs} == {"img1", "img3"} and len(qs) == 12
    chosen = [{q["image"] for q in pope_questions(OBJECTS, "random", k=1, n_images=2, seed=s)} for s in range(6)]
    assert all(len(c) == 2 for c in chosen) and len({tuple(sorted(c)) for c in chosen}) > 1
    assert chosen[4] == {q["image"] for q in pope_questions(OBJECTS, "popular", k=1, n_images=2, seed=4)}
    as_sets = {k: set(v) for k, v in OBJECTS.items()}
    assert pope_questions(as_sets, "popular", seed=2) == pope_questions(as_sets, "popular", seed=2)
    assert pope_questions({"a": ["apple"], "b": ["owl"]}, "popular")[0]["text"] == "Is there an apple in the image?"


def test_pope_errors():
    with pytest.raises(DataError, match="unknown POPE setting 'hard'"):
        pope_questions(OBJECTS, "hard")
    with pytest.raises(DataError, match="image 'a': no object left"):
        pope_questions({"a": ["x"]}, "random")
    with pytest.raises(DataError, match="image 'a': object '' must be a non-empty string"):
        pope_questions({"a": ["x", ""]}, "random")
    with pytest.raises(DataError, match="asked for 5 images but 3 have"):
        pope_questions(OBJECTS, "random", n_images=5)


@pytest.mark.parametrize("text, answer", [
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is not.", "no"),
    ("There is no dog in the image.", "no"),
    ("Yes. But there is no cat.", "yes"),   # only the first sentence counts
    ("No.", "no"),
    ("NO", "yes"),                          # POPE matches No / no / not exactly
    ("Not at all", "yes"),
    ("no", "no"),
    ("I do not see one", "no"),
])
def test_pope_answer(text, answer):
    assert pope_answer(text) == answer


def test_pope_metrics_by_hand():
    answers = ["Yes", "Yes, a dog.", "No", "Yes", "No", "There is not."]
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    # TP 2 (first two), FN 1 (third), FP 1 (fourth), TN 2 (last two).
    m = pope_metrics(answers, labels)
    assert (m["tp"], m["fn"], m["fp"], m["tn"], m["n"]) == (2, 1, 1, 2, 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == pytest.approx(0.5)
    none = pope_metrics(["no", "no"], ["yes", "no"])
    assert (none["precision"], none["recall"], none["f1"], none["accuracy"]) == (0.0, 0.0, 0.0, 0.5)
    with pytest.raises(DataError, match="2 answers for 1 questions"):
        pope_metrics(["yes", "no"], ["yes"])
    with pytest.raises(DataError, match="question #0: label 'maybe'"):
        pope_metrics(["yes"], ["maybe"])


def test_coco_objects(tmp_path):
    p = tmp_path / "instances_val2014.json"
    data = {"images": [{"id": k, "file_name": f} for k, f in ((1, "a.jpg"), (2, "b.jpg"), (3, "c.jpg"))],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 1}, {"id": 11, "image_id": 1, "category_id": 18},
                            {"id": 12, "image_id": 1, "category_id": 1}, {"id": 13, "image_id": 2, "category_id": 18}]}
    p.write_text(json.dumps(data))
    assert coco_objects(p) == {"a.jpg": {"person", "dog"}, "b.jpg": {"dog"}, "c.jpg": set()}
    data["annotations"].append({"id": 14, "image_id": 2, "category_id": 99})
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2014.json: annotation 14 \(#4\): 'category_id' 99"):
        coco_objects(p)
    del data["categories"]
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match="instances_val2014.json: 'categories' must be a list"):
        coco_objects(p)


def test_emoji_objects(tmp_path, monkeypatch):
    names = ["ROCKET", "FAMILY: MAN, WOMAN, BOY", "OK HAND SIGN"]
    codes = [f"{c:X}" for c in range(0x1F680, 0x1F690)][:3]
    root = tmp_path / "package"
    (root / em.IMAGE_DIR).mkdir(parents=True)
    entries = []
    for k, (code, name) in enumerate(zip(codes, names)):
        Image.new("RGBA", (4, 4), (60 * k, 200, 30, 255)).save(root / em.IMAGE_DIR / f"{code.lower()}.png")
        entries.append({"name": name, "unified": code, "image": f"{code.lower()}.png", "short_names": ["x"],
                        "category": "Objects", "subcategory": "misc", "added_in": "1.0", "has_img_google": True})
    (root / "emoji.json").write_text(json.dumps(entries))
    monkeypatch.setenv(em.ENV_DIR, str(root))
    objs = emoji_objects(split=None)
    assert sorted(next(iter(v)) for v in objs.values()) == ["OK hand sign", "family", "rocket"]
    assert all(path.endswith(".png") for path in objs)
    assert set(emoji_objects("test")) == {str(root / em.IMAGE_DIR / f"{c.lower()}.png")
                                           for c in codes if em.split_of(c) == "test"}
    qs = pope_questions(objs, "adversarial")  # one object per image: 1 pair each, random fallback
    assert len(qs) == 6 and {q["text"] for q in qs} >= {"Is there an OK hand sign in the image?"}


# --- multiple choice ----------------------------------------------------------------------------

OPTS = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("b", "B"), ("(C)", "C"), ("C.", "C"), ("D)", "D"),
    ("The answer is D.", "D"), ("Answer: (A)", "A"), ("the correct answer is option C", "C"),
    ("I think it is (B) because birds fly", "B"),
    ("dog", "B"), ("Dog.", "B"),                       # an option's text
    ("B is right", "B"), ("Option C is best", "C"),   # the first standalone letter
    ("A cat sits on the mat", None),                   # the article, not option A
    ("E", None),                                       # past the last option
    ("I'm not sure", None), ("", None), ("London or Paris", None),
    ("The answer is E, no, B", "B"),
])
def test_extract_choice(text, letter):
    assert extract_choice(text, OPTS) == letter


def test_extract_choice_text_before_letters():
    assert extract_choice("A dog", ["A cat", "A dog"]) == "B"
    assert extract_choice("Paris", ["London", "Paris"]) == "B"
    with pytest.raises(DataError, match="'options' must be a list"):
        extract_choice("A", "AB")


PROBLEMS = {  # (subject, grade, hint, image, correct) -> columns
    "1": ("natural science", "grade2", "Read this.", "image.png", True),   # NAT TXT IMG G1-6
    "2": ("social science", "grade8", "", None, False),                    # SOC NO G7-12
    "3": ("language science", "grade5", "Some text", None, True),          # LAN TXT G1-6
    "4": ("natural science", "grade11", "", "image.png", False),           # NAT IMG G7-12
    "5": ("natural science", "grade7", None, None, True),                  # NAT NO G7-12
}
# NAT 2/3 (1, 5 of 1, 4, 5); SOC 0/1; LAN 1/1; TXT 2/2 (1, 3); IMG 1/2 (1 of 1, 4); NO 1/2 (5 of 2, 5);
# G1-6 2/2; G7-12 1/3 (5 of 2, 4, 5); Avg 3/5.
TABLE = {"NAT": 2 / 3, "SOC": 0.0, "LAN": 1.0, "TXT": 1.0, "IMG": 0.5, "NO": 0.5, "G1-6": 1.0, "G7-12": 1 / 3,
         "Avg": 0.6}


def _problems_json(tmp_path):
    probs = {}
    for qid, (subject, grade, hint, image, _) in PROBLEMS.items():
        probs[qid] = {"question": f"Question {qid}?", "choices": ["x", "y", "z"], "answer": 1, "hint": hint,
                      "image": image, "subject": subject, "grade": grade, "category": "c", "split": "test"}
        if image:
            (tmp_path / "images" / "test" / qid).mkdir(parents=True)
            (tmp_path / "images" / "test" / qid / image).write_bytes(b"png")
    p = tmp_path / "problems.json"
    p.write_text(json.dumps(probs))
    return p, probs


def test_scienceqa_table_from_records(tmp_path):
    p, probs = _problems_json(tmp_path)
    records = load_records(f"scienceqa:{p}")
    generated = {"1": "The answer is B.", "2": "A", "3": "(B)", "4": "C", "5": "y"}  # right: 1, 3, 5
    results = []
    for rec in records:
        qid = rec.id.removeprefix("scienceqa-")
        gold = "ABC"[rec.meta["answer"]]
        results.append((rec, extract_choice(generated[qid], rec.meta["choices"]) == gold))
    assert [ok for _, ok in results] == [PROBLEMS[q][4] for q in PROBLEMS]
    table = scienceqa_accuracy(results)
    assert table["accuracy"] == pytest.approx(TABLE)
    assert table["n"] == {"NAT": 3, "SOC": 1, "LAN": 1, "TXT": 2, "IMG": 2, "NO": 2, "G1-6": 2, "G7-12": 3, "Avg": 5}
    # the same table from the raw problems.json entries (ScienceQA's get_scores reads hint and image)
    raw = scienceqa_accuracy([(probs[q], PROBLEMS[q][4]) for q in PROBLEMS])
    assert raw == table
    assert scienceqa_categories(scienceqa_fields(records[0])) == ["NAT", "TXT", "IMG", "G1-6"]
    only_one = scienceqa_accuracy([(records[0], True)])["accuracy"]
    assert only_one["SOC"] is None and only_one["Avg"] == 1.0


def test_scienceqa_errors():
    bad = {"id": "9", "subject": "maths", "grade": "grade3", "hint": "", "image": None}
    with pytest.raises(DataError, match="problem '9': 'subject' is 'maths'"):
        scienceqa_accuracy([(bad, True)])
    with pytest.raises(DataError, match="'grade' is 'grade13'"):
        scienceqa_fields({**bad, "subject": "social science", "grade": "grade13"})
    with pytest.raises(DataError, match="result #0 must be a \\(problem, correct: bool\\) pair"):
        scienceqa_accuracy([(bad, "yes")])


def test_rotations():
    rot = rotations("q1", ["w", "x", "y", "z"], 2)
    assert rot == [(["w", "x", "y", "z"], "C"), (["x", "y", "z", "w"], "B"), (["y", "z", "w", "x"], "A"),
                   (["z", "w", "x", "y"], "D")]
    for opts, letter in rot:  # the letter always points at the right option
        assert opts["ABCD".index(letter)] == "y"
    with pytest.raises(DataError, match="question 'q1': 'answer_index' must be in 0..1"):
        rotations("q1", ["a", "b"], 2)


def test_circular_accuracy():
    assert circular_accuracy({"q1": [True] * 4, "q2": [True, True, False, True], "q3": [True, True]}) == 2 / 3
    # A model that always answers "A": plain accuracy 1/4 on 4-option questions, CircularEval 0.
    passes = {q: [extract_choice("A", opts) == letter for opts, letter in rotations(q, OPTS, k)]
              for q, k in (("q1", 0), ("q2", 3))}
    assert [sum(p) for p in passes.values()] == [1, 1]
    assert circular_accuracy(passes) == 0.0
    assert circular_accuracy([[True, True]]) == 1.0
    with pytest.raises(DataError, match="question 'q': expected a non-empty list"):
        circular_accuracy({"q": []})
    with pytest.raises(DataError, match="must be True or False"):
        circular_accuracy({"q": [1, 0]})
