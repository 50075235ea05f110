"""VQA accuracy as the VQA benchmark defines it (Antol et al., "VQA: Visual Question Answering", ICCV 2015;
Goyal et al., "Making the V in VQA Matter", CVPR 2017 for v2).

The definition (VQA paper, section 2 "Evaluation"): an answer is ``min(#humans that gave it / 3, 1)``
correct, averaged over all ``10 choose 9`` sets of 9 of the 10 human answers. Both sides are first
normalised as the official evaluation script does (``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
of github.com/GT-Vision-Lab/VQA, master a013f00, 2021): ``processPunctuation`` then
``processDigitArticle``. This module re-implements those rules (the word tables below are the
script's own lookup tables, which is what makes answers match; the code is written anew):

* line breaks and tabs become spaces, the text is stripped;
* punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a
  space anywhere in the text ("yes, it is" -> "yes it is") or when the text has a digit-comma-digit
  ("1,000" -> "1000", and then every listed mark is deleted), else it becomes a space ("black/white"
  -> "black white"); a period is deleted unless a digit follows it ("2.5" stays, "e.g." -> "eg");
  apostrophes and colons are kept;
* lower case, number words zero..ten (and "none") become digits, the articles a/an/the are dropped,
  and the contraction table restores apostrophes ("dont" -> "don't").

Where this module and the script differ, on purpose: the script normalises only when the 10 human
answers are not all equal (otherwise it compares the raw strings, so "Yes" scores 0 against ten
"yes"); the VQA paper says answers are normalised, and LLaVA's VQAv2 scripts and lmms-eval pass every
prediction through the EvalAI answer processor (these rules and a few more) before scoring, so here
both sides are always normalised. The script has no single-answer case (with one answer it scores 0
whatever the prediction); here one reference means exact match after normalisation.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence

from vlgraft.errors import DataError

# The script's ``punct`` list, in its order (the order matters: edits accumulate on the text).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The script's ``manualMap``: number words (and "none") to digits.
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# The script's ``contractions`` table, verbatim (keys with capitals can never match: the text is
# lower-cased first; kept as the script has them).
CONTRACTIONS = {
    'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've", 'couldnt': "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", 'didnt': "didn't", 'doesnt': "doesn't",
    'dont': "don't", 'hadnt': "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't",
    'havent': "haven't", 'hed': "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's", 'howd': "how'd",
    'howll': "how'll", 'hows': "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm", 'Ive': "I've",
    'isnt': "isn't", 'itd': "it'd", "itd've": "it'd've", "it'dve": "it'd've", 'itll': "it'll", "let's": "let's",
    'maam': "ma'am", 'mightnt': "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    'mightve': "might've", 'mustnt': "mustn't", 'mustve': "must've", 'neednt': "needn't", 'notve': "not've",
    'oclock': "o'clock", 'oughtnt': "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", 'shant': "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    'shouldve': "should've", 'shouldnt': "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd', "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", 'somebodyll': "somebody'll", 'somebodys': "somebody's",
    'someoned': "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    'someonell': "someone'll", 'someones': "someone's", 'somethingd': "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", 'somethingll': "something'll",
    'thats': "that's", 'thered': "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    'therere': "there're", 'theres': "there's", 'theyd': "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", 'theyll': "they'll", 'theyre': "they're", 'theyve': "they've", 'twas': "'twas",
    'wasnt': "wasn't", "wed've": "we'd've", "we'dve": "we'd've", 'weve': "we've", 'werent': "weren't",
    'whatll': "what'll", 'whatre': "what're", 'whats': "what's", 'whatve': "what've", 'whens': "when's",
    'whered': "where'd", 'wheres': "where's", 'whereve': "where've", 'whod': "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", 'wholl': "who'll", 'whos': "who's", 'whove': "who've", 'whyll': "why'll",
    'whyre': "why're", 'whys': "why's", 'wont': "won't", 'wouldve': "would've", 'wouldnt': "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", 'yall': "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    'youd': "you'd", "youd've": "you'd've", "you'dve": "you'd've", 'youll': "you'll", 'youre': "you're",
    'youve': "you've",
}
# The script's periodStrip is "(?!<=\\d)(\\.)(?!\\d)": its first group is a lookahead for the literal
# "<=" plus a digit, which can never match where a period stands, so only "a digit follows" protects a
# period. Written here without the dead group.
_PERIOD = re.compile(r"\.(?!\d)")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# The script calls ``periodStrip.sub("", text, re.UNICODE)``: the flag lands in sub's ``count``
# argument (re.UNICODE == 32), so at most 32 periods are removed. Kept, to score as the script does.
_PERIOD_COUNT = 32


def process_punctuation(text: str) -> str:
    """The script's ``processPunctuation``: see the module docstring. The tests for "touches a space"
    and "digit,digit" look at the text as given, not as edited so far (as the script does)."""
    squeeze = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if squeeze or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The script's ``processDigitArticle``: lower case, number words to digits, articles dropped,
    contractions restored, words joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """An answer as the official VQA evaluation compares it: "Two dogs." -> "2 dogs", "dont" ->
    "don't", "The cat!" -> "cat", "1,000" -> "1000"."""
    return process_digit_article(process_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def _references(references: Sequence[str], where: str) -> list[str]:
    if isinstance(references, str) or not isinstance(references, Sequence) or not references:
        raise DataError(f"{where}: 'references' must be a non-empty list of answers")
    for k, r in enumerate(references):
        if not isinstance(r, str):
            raise DataError(f"{where}: reference answer #{k} must be a string, not {type(r).__name__}")
    return list(references)


def vqa_accuracy(prediction: str, references: Sequence[str], where: str = "question") -> float:
    """VQA accuracy of one answer: with several references (VQA v2 has 10), the mean over the
    leave-one-out sets of the others of ``min(#equal answers / 3, 1)``; with one reference, exact
    match. Both sides normalised with :func:`normalize_answer`. ``where`` names the question in errors.

    With 10 references of which m equal the prediction, leaving out an equal one leaves m - 1, leaving
    out another leaves m: accuracy = (m * min((m-1)/3, 1) + (10-m) * min(m/3, 1)) / 10, so m = 1, 2, 3,
    >= 4 give 0.3, 0.6, 0.9, 1.0 (not the 1/3, 2/3, 1 of the formula without the averaging).
    """
    if not isinstance(prediction, str):
        raise DataError(f"{where}: the prediction must be a string, not {type(prediction).__name__}")
    refs = [normalize_answer(r) for r in _references(references, where)]
    pred = normalize_answer(prediction)
    if len(refs) == 1:
        return float(pred == refs[0])
    matches = sum(r == pred for r in refs)
    # Leaving annotator i out: the others hold ``matches`` equal answers, one fewer if i's was equal.
    return sum(min(1.0, (matches - (r == pred)) / 3) for r in refs) / len(refs)


def vqa_score(predictions: Mapping, references: Mapping, answer_types: Mapping | None = None) -> dict:
    """Mean VQA accuracy over questions, as the script reports it (overall and per answer type), plus
    each question's accuracy. ``predictions``: question id -> answer text; ``references``: question id
    -> list of reference answers; ``answer_types``: question id -> type ("yes/no", "number", "other").
    Every question of ``references`` needs a prediction. Fractions in [0, 1] (the script prints
    100 x this, rounded to 2 decimals)."""
    if not references:
        raise DataError("no questions to score: 'references' is empty")
    missing = [q for q in references if q not in predictions]
    if missing:
        raise DataError(f"{len(missing)} question(s) have no prediction, e.g. question {missing[0]!r}")
    per_question = {q: vqa_accuracy(predictions[q], refs, f"question {q!r}") for q, refs in references.items()}
    by_type: dict[str, list[float]] = defaultdict(list)
    if answer_types is not None:
        for q, acc in per_question.items():
            if q not in answer_types:
                raise DataError(f"question {q!r}: no answer type")
            by_type[answer_types[q]].append(acc)
    return {"accuracy": sum(per_question.values()) / len(per_question), "n": len(per_question),
            "per_answer_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
            "per_question": per_question}
