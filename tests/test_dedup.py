"""``vlgraft.data.dedup``: normalisation, the near-duplicate rules on crafted pairs (rewordings caught,
same-topic or same-frame questions passed), the inverted index against brute force, and its speed."""

from __future__ import annotations

import random
import time

import pytest

from vlgraft.data.dedup import (
    NearDuplicateIndex,
    char_shingles,
    content_bag,
    normalize_text,
    stem,
    word_shingles,
)

# (indexed, query, a rule that catches it on its own)
CAUGHT = [
    ("What do you call a young dog?", "What is a young dog called?", "content_bag"),
    ("Explain what a noun is.", "What is a noun?", "content_bag"),
    ("What is the capital of Japan?", "What is the capital of Japan? Answer in one word.", "containment"),
    ("What is photosynthesis?", "What is photosynthesis? Explain it simply.", "containment"),
    ("How can I save water at home?", "What are some ways to save water at home?", "content_bag"),
    ("How can I save water at home?", "How do I save water at home?", "content_bag"),
    ("What is the difference between weather and climate?", "What's the difference between climate and weather?",
     "content_bag"),
    ("What colour is grass?", "What color is grass?", "content_bag"),
    ("Give one tip for sleeping better.", "Give me a tip for sleeping better.", "content_bag"),
    ("Why do leaves change colour in autumn?", "Why do the leaves change their colour in the autumn?", "content_bag"),
    ("How do I boil an egg?", "How should I boil an egg?", "content_bag"),
    ("Tell me how to make a cup of tea.", "How do I make a cup of tea?", "content_bag"),
    ("Summarise the story of Cinderella in one sentence.", "Summarize the story of Cinderella in a single sentence.",
     "content_bag"),
    ("Keep a regular schedule: go to bed and get up at the same time every day, even at weekends.",
     "Keep a regular schedule and go to bed and get up at the same time each day, even at the weekend.",
     "content_bag"),
    ("Write a short thank-you note to a teacher.", "Write a short thank you note to the teacher.", "word_jaccard"),
    ("Why do leaves change colour in autumn?", "Why do leaves change color in autumn?", "char_jaccard"),
    ("Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar.",
     "What is the process by which plants use sunlight?", "containment"),
    ("What is 10 - 3?", "what is 10-3", "exact"),
]

PASSED = [
    ("What is the opposite of hot?", "What is the opposite of cold?"),
    ("What colour is grass?", "What colour is the sky?"),
    ("What is photosynthesis?", "Why is photosynthesis important for animals?"),
    ("How can I save water at home?", "Give me some tips to save water in the garden."),
    ("What is the difference between weather and climate?", "How does climate change affect the weather?"),
    ("Write a haiku about rain.", "Write a haiku about the sea."),
    ("Write a haiku about rain.", "Write a poem about rain."),
    ("What is 10 - 3?", "What is 9 - 5?"),
    ("What is 10 - 3?", "What is 10 + 3?"),
    ("What is the capital of Japan?", "What is the capital of France?"),
    ("Which day comes after Friday?", "Which day comes after Saturday?"),
    ("What colour is a ripe tomato?", "What colour is a ripe banana?"),
    ("What is the past tense of \"eat\"?", "What is the past tense of \"go\"?"),
    ("Why do we have seasons?", "Which season comes after summer?"),
    ("How do I boil an egg?", "How long should I boil pasta?"),
    ("Give one tip for sleeping better.", "Give one tip for studying better."),
    ("What is the first month of the year?", "How many months are there in a year?"),
]


def test_normalize_text():
    assert normalize_text("  What's   THE capital—of Japan?! ") == "whats the capital of japan"
    assert normalize_text("What is 10 - 3?") == normalize_text("what is 10-3") == "what is 10 minus 3"
    assert normalize_text("3x4 = 12, 50%") == "3 times 4 equals 12 50 percent"
    assert normalize_text("a well-known “quote”") == "a well known quote"
    assert normalize_text("ﬁve café") == "five café"  # NFKC folds the ligature; letters keep their accents
    assert normalize_text("...!?") == ""
    assert stem("colours") == stem("color") and stem("summarise") == stem("summarized")
    assert stem("called") == stem("calls") == stem("calling") == "call"
    assert word_shingles("a b") == {"a b"} and word_shingles("a b c d") == {"a b c", "b c d"}
    assert char_shingles("a b c") == {" a b ", "a b c", " b c "}
    assert content_bag("what is a young dog called") == {"young", "dog", "call"}


@pytest.mark.parametrize("indexed,query,rule", CAUGHT)
def test_rewordings_are_caught(indexed, query, rule):
    idx = NearDuplicateIndex(["Name a musical instrument with strings.", indexed, "How many legs does a spider have?"],
                             keys=["other", "target", "other2"])
    m = idx.find(query)
    assert m is not None and m.key == "target" and m.text == indexed, m
    assert idx.match(query) == indexed
    alone = {"jaccard": None, "containment": None, "char_jaccard": None, "bag_jaccard": None}
    alone.pop({"word_jaccard": "jaccard", "content_bag": "bag_jaccard"}.get(rule, rule), None)
    m = NearDuplicateIndex([indexed], **alone).find(query)
    assert m is not None and m.rule == rule, m


@pytest.mark.parametrize("indexed,query", PASSED)
def test_same_topic_or_same_frame_passes(indexed, query):
    idx = NearDuplicateIndex([indexed])
    assert idx.find(query) is None
    assert NearDuplicateIndex([query]).find(indexed) is None


def test_add_keys_and_rules_off():
    idx = NearDuplicateIndex()
    assert len(idx) == 0 and idx.match("anything at all here") is None and idx.match("") is None
    idx.add("How do I plant tomato seeds in a pot?", key="seed-7")
    assert len(idx) == 1
    m = idx.find("how do i plant tomato seeds in a pot")
    assert (m.rule, m.key, m.score) == ("exact", "seed-7", 1.0)
    assert idx.find("How should I plant tomato seeds in a pot?").rule == "content_bag"
    off = NearDuplicateIndex(["How do I plant tomato seeds in a pot?"], bag_jaccard=None, char_jaccard=None,
                             jaccard=None, containment=None)
    assert off.find("How should I plant tomato seeds in a pot?") is None
    assert off.find("How do I plant tomato seeds in a pot?").rule == "exact"  # exact matches always count
    with pytest.raises(ValueError):
        NearDuplicateIndex(["a", "b"], keys=["only one"])


def _brute(idx: NearDuplicateIndex, query: str) -> bool:
    """Whether any rule fires against any indexed text, by comparing with every one."""
    q = idx._entry(query, None)

    def jac(a, b):
        return len(a & b) / len(a | b) if a | b else 1.0

    for e in idx.entries:
        bag = jac(q.bag, e.bag)
        similar_length = min(q.length, e.length) >= idx.bag_length_ratio * max(q.length, e.length)
        if q.norm == e.norm or (q.bag and bag >= idx.bag_jaccard and similar_length):
            return True
        if q.words and jac(q.words, e.words) >= idx.jaccard and bag >= idx.min_bag:
            return True
        if q.chars and jac(q.chars, e.chars) >= idx.char_jaccard and bag >= idx.min_bag:
            return True
        small, other = (q, e) if len(q.words) <= len(e.words) else (e, q)
        if (q.words and len(small.norm.split()) >= idx.n and small.bag <= other.bag
                and len(small.words & other.words) / len(small.words) >= idx.containment):
            return True
    return False


def test_index_equals_brute_force():
    rng = random.Random(0)
    vocab = str.split("how do i make cook a the cup of tea water plant seed pot dog cat call young why what is are")
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(2, 9))) for _ in range(300)]
    idx = NearDuplicateIndex(texts[:150])
    found = [idx.find(t) is not None for t in texts[150:]]
    assert found == [_brute(idx, t) for t in texts[150:]]
    assert 0 < sum(found) < len(found)  # the sample exercises both outcomes


def test_fast_enough_for_10k_by_500():
    rng = random.Random(1)
    words = str.split("water tea sun moon dog cat rain book city river music friend school garden bread apple tree car "
                      "bike phone letter song story game plan money time day week year")
    frames = ["How do I {} a {}?", "Explain why {} is {}.", "Write a short note about the {} and the {}.",
              "What is the best way to {} my {}?", "Give three tips for {} with a {}.", "Why does the {} {} at night?"]
    texts = [rng.choice(frames).format(rng.choice(words), rng.choice(words)) + " "
             + " ".join(rng.choice(words) for _ in range(rng.randint(0, 8))) for _ in range(10_000)]
    queries = [f"Tell me about the {rng.choice(words)} of the {rng.choice(words)} in {i} sentences."
               for i in range(500)]
    t = time.perf_counter()
    idx = NearDuplicateIndex(texts)
    hits = sum(idx.find(q) is not None for q in queries)
    assert time.perf_counter() - t < 20  # about 1.5 s on one CPU core
    assert idx.find(texts[1234]).rule == "exact" and hits < len(queries)
