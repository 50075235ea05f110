"""Caption metrics exactly as the COCO caption evaluation computes them (Chen et al., "Microsoft COCO
Captions: Data Collection and Evaluation Server", 2015; its code, coco-caption, packaged as
``pycocoevalcap`` on PyPI, github.com/salaniz/pycocoevalcap): this module prepares the inputs, and
pycocoevalcap's own scorers do the scoring.

* Tokenisation: Stanford CoreNLP 3.4.1's PTBTokenizer (``-preserveLines -lowerCase``, the jar that
  ships in pycocoevalcap), then pycocoevalcap's punctuation tokens (``'' ' `` ` -LRB- -RRB- -LCB-
  -RCB- . ? ! , : - -- ... ;``) are dropped — the same command and the same filter as pycocoevalcap's
  ``PTBTokenizer``, run once for predictions and references together (one line each, so the result
  is the same). It is a Java program: without ``java`` on PATH the metrics stop with an error naming
  ``scripts/java.sh``; there is no fallback tokenizer, since another tokenizer gives other scores.
* BLEU-1..4 (Papineni et al. 2002): corpus-level, the "closest" reference length for the brevity
  penalty; the per-image figures are sentence-level BLEU.
* METEOR 1.5 (Denkowski & Lavie 2014; ``-l en -norm``, its paraphrase table ships in pycocoevalcap):
  Java, offline. Its start-up loads a 60 MB table (about 15 s on 2 CPU cores), so one METEOR process
  is started on first use and reused for the rest of the Python process.
* ROUGE-L (Lin 2004): LCS-based F-measure with beta = 1.2, the best over the references, averaged.
* CIDEr-D (Vedantam et al., "CIDEr: Consensus-based Image Description Evaluation", CVPR 2015): what
  pycocoevalcap calls "CIDEr": n = 1..4, tf-idf with the document frequencies of the evaluated set's
  references, clipped counts, a Gaussian length penalty (sigma = 6), x 10. The idf comes from the
  set scored, so a figure depends on the whole set (and is 0 for a set of one image: log(1) = 0).
* SPICE is left out: pycocoevalcap downloads Stanford CoreNLP 3.6.0 for it on first use, so it does
  not work offline.

Input: ``predictions`` = {id: [caption]} (one caption; a bare string is accepted too) and
``references`` = {id: [caption, ...]} (COCO has 5 per image), with the same ids.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from vlgraft.errors import DataError, VlgraftError

BLEU = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
METRICS = (*BLEU, "METEOR", "ROUGE-L", "CIDEr")
JAVA_SCRIPT = "scripts/java.sh"
PTB_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
# Characters that end a line for the tokenizer's lexer: inside a caption they would split it in two
# and shift every caption after it, so they become spaces (pycocoevalcap replaces only "\n").
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\x85\u2028\u2029"})


class JavaMissingError(VlgraftError):
    """``java`` is not on PATH: the PTB tokenizer and METEOR cannot run."""


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError("the caption metrics need Java (the PTB tokenizer and METEOR are Java programs) and "
                               f"`java` is not on PATH: run `bash {JAVA_SCRIPT}` (it installs Debian's "
                               "default-jre-headless)")
    return java


def _package_dir() -> Path:
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError:
        raise VlgraftError("the caption metrics need pycocoevalcap: pip install 'pycocoevalcap>=1.2,<2'") from None
    return Path(ptbtokenizer.__file__).resolve().parent.parent


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Each caption as pycocoevalcap's PTBTokenizer leaves it: PTB tokens, lower case, punctuation
    tokens dropped, joined by spaces ("A man, riding." -> "a man riding")."""
    java = _java()
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    jar = _package_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    if not jar.is_file():
        raise VlgraftError(f"pycocoevalcap's tokenizer jar is missing: {jar} (reinstall pycocoevalcap)")
    text = "\n".join(c.translate(_LINE_BREAKS) for c in captions)
    with tempfile.TemporaryDirectory(prefix="vlgraft-ptb-") as tmp:
        src = Path(tmp) / "captions.txt"
        src.write_text(text, encoding="utf-8")  # the tokenizer reads and writes UTF-8 by default
        try:
            proc = subprocess.run([java, "-cp", str(jar), PTB_CLASS, "-preserveLines", "-lowerCase", str(src)],
                                  capture_output=True, timeout=3600)
        except subprocess.TimeoutExpired:
            raise VlgraftError(f"the PTB tokenizer ({java} -cp {jar.name}) ran for an hour; stopped") from None
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise VlgraftError(f"the PTB tokenizer ({java} -cp {jar.name}) failed: {last}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(captions):
        raise VlgraftError(f"the PTB tokenizer returned {len(lines)} lines for {len(captions)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS) for line in lines[:len(captions)]]


def _inputs(predictions: Mapping, references: Mapping) -> tuple[list, list[str], list[list[str]]]:
    """The ids (in ``references``' order), one prediction each, the reference lists; checked."""
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise DataError("caption metrics take two mappings: {id: [prediction]} and {id: [reference, ...]}")
    if not references:
        raise DataError("no images to score: 'references' is empty")
    missing = [i for i in references if i not in predictions]
    extra = [i for i in predictions if i not in references]
    if missing or extra:
        raise DataError(f"predictions and references must have the same ids: {len(missing)} without a prediction"
                        + (f" (e.g. {missing[0]!r})" if missing else "") + f", {len(extra)} without references"
                        + (f" (e.g. {extra[0]!r})" if extra else ""))
    ids, preds, refs = list(references), [], []
    for i in ids:
        p = predictions[i]
        p = [p] if isinstance(p, str) else p
        if not (isinstance(p, Sequence) and len(p) == 1 and isinstance(p[0], str)):
            raise DataError(f"image {i!r}: the prediction must be one caption (a list of one string)")
        r = references[i]
        if isinstance(r, str) or not isinstance(r, Sequence) or not r or not all(isinstance(x, str) for x in r):
            raise DataError(f"image {i!r}: 'references' must be a non-empty list of captions")
        preds.append(p[0])
        refs.append(list(r))
    return ids, preds, refs


_meteor_lock = threading.Lock()
_meteor_scorer = None


def _close_meteor() -> None:
    """Stop the METEOR process. Its wrapper's lock is released if a failed call left it taken, else
    the wrapper's ``__del__`` (which takes that lock) would wait forever."""
    global _meteor_scorer
    scorer, _meteor_scorer = _meteor_scorer, None
    if scorer is not None:
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
        if scorer.lock.locked():
            scorer.lock.release()


atexit.register(_close_meteor)


def meteor_scorer():
    """pycocoevalcap's ``Meteor`` (a running ``java -jar meteor-1.5.jar`` process), started once."""
    global _meteor_scorer
    _java()
    _package_dir()
    with _meteor_lock:
        if _meteor_scorer is None or _meteor_scorer.meteor_p.poll() is not None:
            from pycocoevalcap.meteor.meteor import Meteor

            _meteor_scorer = Meteor()
        return _meteor_scorer


def _meteor(gts: dict, res: dict) -> tuple[float, list[float]]:
    scorer = meteor_scorer()
    try:
        score, scores = scorer.compute_score(gts, res)
    except (ValueError, OSError) as e:  # the process died (memory, a broken jar): start afresh next time
        with _meteor_lock:
            _close_meteor()
        raise VlgraftError(f"METEOR (java -jar meteor-1.5.jar) failed: {e}") from None
    return float(score), [float(s) for s in scores]


def caption_metrics(predictions: Mapping, references: Mapping, meteor: bool = True) -> dict:
    """BLEU-1..4, METEOR (unless ``meteor=False``), ROUGE-L and CIDEr(-D) of ``predictions`` against
    ``references`` (see the module docstring), as fractions (CIDEr on its own scale, about 0..10), and
    ``per_image``: {id: {metric: score}} (CIDEr per image, for a report, and the others)::

        {"BLEU-1": 0.75, ..., "METEOR": 0.41, "ROUGE-L": 0.56, "CIDEr": 1.98,
         "per_image": {id: {"BLEU-1": .., ..., "CIDEr": 2.8}}}
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    ids, preds, refs = _inputs(predictions, references)
    _package_dir()
    tokens = ptb_tokenize(preds + [r for rs in refs for r in rs])
    res, gts, at = {}, {}, len(preds)
    for k, (i, rs) in enumerate(zip(ids, refs)):
        res[i] = [tokens[k]]
        gts[i] = tokens[at: at + len(rs)]
        at += len(rs)
    out: dict = {}
    per: dict = {i: {} for i in ids}
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    for name, score, each in zip(BLEU, bleu, bleu_each):
        out[name] = float(score)
        for i, s in zip(ids, each):
            per[i][name] = float(s)
    scorers = [("METEOR", _meteor)] if meteor else []
    scorers += [("ROUGE-L", Rouge().compute_score), ("CIDEr", Cider().compute_score)]
    for name, compute in scorers:
        score, each = compute(gts, res)
        out[name] = float(score)
        for i, s in zip(ids, each):  # pycocoevalcap's scorers go through gts.keys(), i.e. ``ids``
            per[i][name] = float(s)
    out["per_image"] = per
    return out
