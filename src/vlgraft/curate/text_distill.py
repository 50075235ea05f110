"""Text-only instruction data by self-distillation (``vlgraft curate-text``, docs/CURATE.md).

Instructions are written by a generator (any :class:`~vlgraft.curate.generators.Generator`) from a
few seed instructions (``text_seeds.py``) shown as earlier chat turns, filtered hard, deduplicated
against each other, the seeds and the text evaluation set (``vlgraft.data.dedup``), and answered
greedily by the frozen base LLM of a recipe (its ``llm`` section: weights, dtype, chat template,
system prompt; no method, no trained weight) through the generation path of ``vlgraft eval --text``
(``tokenize_prompt``, left-padded ``collate``, ``VLM.generate``). Training on those answers pulls a
multimodal model back towards what its LLM said before training.

Work goes in rounds: generator calls of ``batch_size`` prompts until at least ``batch_size``
instructions pass (or the attempts run out), then their answers, ``batch_size`` at a time. After
each round the kept records are appended to the output (flushed, fsynced) and one line to
``<out stem>.progress.jsonl``; a rerun of the same command cuts the output back to the last
recorded length and goes on, and every random draw depends only on the seed and the generator
call's number, so the resumed file equals an uninterrupted one. The end writes
``<out stem>.report.json`` atomically and removes the progress file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vlgraft.curate.filters import repeat_ratio
from vlgraft.curate.generators import Generator
from vlgraft.curate.pipeline import append_batch, read_progress
from vlgraft.curate.text_seeds import SEED_INSTRUCTIONS
from vlgraft.data.dedup import STOPWORDS, NearDuplicateIndex
from vlgraft.errors import VlgraftError
from vlgraft.options import option

SYSTEM = ("You write instructions that a person might give to an AI assistant: questions, tasks or requests. "
          "Write exactly one new instruction, different from the earlier ones, and nothing else.")
ASK = "Write a new instruction."
TOPICS = ("cooking", "travel", "health", "money", "school", "science", "history", "nature", "sport", "music",
          "work", "family", "weather", "animals", "gardening", "language", "computers", "shopping", "transport",
          "space", "friendship", "the home", "writing", "maths", "food", "geography", "safety", "hobbies")

# instruction bounds and drop reasons, in the order they are checked
MIN_WORDS, MAX_WORDS, MAX_CHARS = 4, 40, 300
MAX_REPEAT = 0.15  # fraction of repeated word 3-grams (curate's bound)
MAX_SAME_WORD = 2  # one content word (3+ letters) more often than this, or any word 3 times in a row
INSTRUCTION_REASONS = ("empty", "length", "ending", "repetition", "needs_context", "mentions_image", "meta", "junk",
                       "eval_overlap", "copies_seed", "duplicate")
ANSWER_REASONS = ("answer_empty", "answer_unfinished", "answer_repetition")
ANSWER_MAX_REPEAT = 0.2
EXAMPLES_PER_REASON = 3
MAX_EVAL_MATCHES_LISTED = 100

# an instruction that does not end with "?" must open with one of these (lower case)
_IMPERATIVE_TEXT = """
add analyse analyze answer arrange brainstorm calculate change check choose classify come compare compose convert
correct count create decide define describe design draft edit estimate explain express find finish fix form
generate give help identify imagine improve invent keep list make match name offer outline paraphrase pick plan
please predict prepare propose provide put rank recommend reply respond rewrite say share shorten show simplify
solve sort spell state suggest summarise summarize teach tell think translate try turn use work write
"""
IMPERATIVES = frozenset(_IMPERATIVE_TEXT.split())
_NUMBERING = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•#>]+|\(?[a-z]\)|q\s*\d*\s*[:.])\s*", re.I)
_LABEL = re.compile(r"^\s*(?:new |another |next )?(?:instruction|question|task|request|prompt|user)\s*\d*\s*[:：-]\s*",
                    re.I)
_IMAGE = re.compile(r"<image>|\b(?:images?|pictures?|photos?|photographs?|emojis?|drawings?|diagrams?|shapes?|"
                    r"illustrations?|screenshots?)\b", re.I)
_META = re.compile(r"\b(?:instructions?|prompts?)\b|\bhere (?:is|are)\b|\bas an ai\b|\bai (?:assistant|model)\b|"
                   r"\b(?:new|another|different|previous|above|earlier) (?:question|task|request)s?\b|"
                   r"\b(?:above|below)\b", re.I)
# refers to a text, sentence or thing that the instruction does not give (checked when it quotes nothing and has no ":")
_CONTEXT = re.compile(r"\b(?:the following|the given|(?:this|that|the|these) (?:text|sentence|passage|paragraph|"
                      r"list|word|phrase|story|poem|essay|article|email|letter)s?)\b", re.I)
_JUNK = re.compile(r"https?:|www\.|```|[{}<>|\\\[\]_~@^]|\.{4,}|\s{3,}")
_SENTENCE_END = re.compile(r"(?<![0-9])[.!?][\"')\]]*(?=\s|$)")


@dataclass
class DistillConfig:
    """A ``curate-text`` job; the command's flags are made from these fields (``options.add_arguments``)."""

    out: Path = option(dataclasses.MISSING, "output records (.jsonl); the report goes next to it")
    n: int = option(2000, "records to keep", min=1)
    recipe: str | None = option(None, "answer with the base LLM of this recipe (its llm section, chat template, "
                                "system prompt and inference precision)")
    llm: str | None = option(None, "answer with this LLM alone (smollm2-135m-instruct, hf:<dir>); default when "
                             "no recipe is given: smollm2-135m-instruct")
    text_set: str | None = option(None, "text evaluation set kept out of the data (default: the bundled one)")
    seed: int = option(0, "seed draws and sampling")
    max_new_tokens: int = option(128, "answer length limit (tokens)", min=1)
    instruction_tokens: int = option(48, "instruction length limit (tokens)", min=1)
    temperature: float = option(0.7, "sampling temperature of the instruction writer (0: greedy)", min=0)
    shots: int = option(3, "seed instructions shown per prompt", min=1, max=len(SEED_INSTRUCTIONS))
    topic_rate: float = option(0.5, "share of prompts that ask for an instruction about a drawn topic", min=0, max=1)
    batch_size: int = option(16, "prompts per generator call and instructions per answer batch", min=1)
    max_attempts: int | None = option(None, "stop after this many generated instructions (default: 30 x --n)",
                                      min=1)
    unfinished: str = option("cut", "an answer that hits --max-new-tokens: cut back to its last complete sentence "
                             "or line, drop it, or keep it as is", choices=("cut", "drop", "keep"))
    precision: str | None = option(None, "answer precision (default: the recipe's inference precision; fp32 with "
                                   "--llm)", choices=("fp32", "bf16"))
    device: str | None = option(None, "torch device of the answering LLM (default: cuda if available)")
    overwrite: bool = option(False, "start over, replacing an existing output")


def progress_path(out: Path) -> Path:
    return out.with_name(out.stem + ".progress.jsonl")


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


# ---------------------------------------------------------------------------------- instructions


def prompt_for(cfg: DistillConfig, call: int, k: int) -> tuple[list[dict], list[int]]:
    """The ``k``-th prompt of generator call ``call``: ``shots`` seeds as earlier user/assistant turns,
    then the request (about a drawn topic for a ``topic_rate`` share); and the seeds' indices."""
    rng = random.Random(f"{cfg.seed}/{call}/{k}")
    idx = rng.sample(range(len(SEED_INSTRUCTIONS)), cfg.shots)
    msgs = [{"role": "system", "content": SYSTEM}]
    for i in idx:
        msgs += [{"role": "user", "content": ASK}, {"role": "assistant", "content": SEED_INSTRUCTIONS[i]}]
    ask = f"Write a new instruction about {rng.choice(TOPICS)}." if rng.random() < cfg.topic_rate else ASK
    msgs.append({"role": "user", "content": ask})
    return msgs, idx


def parse_instruction(text: str) -> str:
    """The first non-empty line of a generation, without numbering, a label or enclosing quotes."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    for _ in range(2):
        line = _LABEL.sub("", _NUMBERING.sub("", line)).strip()
    if len(line) > 1 and line[0] in "\"'“" and line[-1] in "\"'”":
        line = line[1:-1].strip()
    return " ".join(line.split())


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def check_instruction(text: str) -> tuple[str | None, str]:
    """(drop reason or None, detail) for a parsed instruction, before the dedup checks."""
    if not text:
        return "empty", "no text"
    ws = _words(text)
    if not MIN_WORDS <= len(ws) <= MAX_WORDS or len(text) > MAX_CHARS:
        return "length", f"{len(ws)} words, {len(text)} characters (allowed {MIN_WORDS}-{MAX_WORDS}, <= {MAX_CHARS})"
    sentences = re.split(r"(?<=[.?!])\s+", text)
    openers = {(_words(x) or [""])[0].strip("'") for x in (sentences[0], sentences[-1])}
    how_to = ws[:2] == ["how", "to"]
    if not (text.endswith("?") or (text[-1] in ".!" and (openers & IMPERATIVES or how_to))):
        return "ending", "not a question (?) nor a request opening with an imperative verb"
    r = repeat_ratio(text)
    common = Counter(w for w in ws if len(w) > 2 and w not in STOPWORDS).most_common(1)
    run = next((a for a, b, c in zip(ws, ws[1:], ws[2:]) if a == b == c), None)
    if r > MAX_REPEAT or (common and common[0][1] > MAX_SAME_WORD) or run:
        detail = (f"{r:.0%} of 3-grams repeated" if r > MAX_REPEAT else f"{run!r} 3 times in a row" if run
                  else f"{common[0][0]!r} x{common[0][1]}")
        return "repetition", detail
    if ":" not in text and not re.search(r"(?:^|\s)[\"'“‘]\S", text):  # no text given after a colon or in quotes
        m = _CONTEXT.search(text)
        verb = ws[1:3] if ws[0] == "please" else ws[:2]
        if m or (len(verb) == 2 and verb[0] in IMPERATIVES and verb[1] in ("it", "this", "that", "them")):
            return "needs_context", f"{m.group(0) if m else ' '.join(verb)!r} with no text given"
    for reason, pat in (("mentions_image", _IMAGE), ("meta", _META), ("junk", _JUNK)):
        m = pat.search(text)
        if m:
            return reason, repr(m.group(0))
    if sum(not c.isascii() for c in text) > 0.05 * len(text):
        return "junk", "non-ASCII text"
    return None, ""


# ---------------------------------------------------------------------------------- answers


def cut_unfinished(text: str) -> str:
    """``text`` cut after its last complete sentence or line (the generation hit its token limit)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    nl = text.rfind("\n")
    cut = max(ends[-1] if ends else 0, nl if nl > 0 else 0)
    return text[:cut].strip()


def check_answer(text: str, finished: bool, policy: str) -> tuple[str | None, str, str]:
    """(drop reason or None, detail, the answer to write)."""
    if not re.search(r"\w", text):
        return "answer_empty", "no text", text
    if not finished:
        if policy == "drop":
            return "answer_unfinished", "hit --max-new-tokens", text
        if policy == "cut":
            text = cut_unfinished(text)
            if len(_words(text)) < 2:
                return "answer_unfinished", "no complete sentence before --max-new-tokens", text
    r = repeat_ratio(text)
    if r > ANSWER_MAX_REPEAT:
        return "answer_repetition", f"{r:.0%} of 3-grams repeated", text
    return None, "", text


def base_model(recipe, device=None):
    """The base LLM of ``recipe`` as ``vlgraft eval --text`` builds its "before" model (the recipe's
    ``llm`` section, no method, no trained weight), behind a VLM shell without vision parts."""
    from vlgraft.inference import default_device
    from vlgraft.models.llm import build_llm
    from vlgraft.models.vlm import VLM

    class TextOnlyVLM(VLM):
        @property
        def num_image_tokens(self) -> int:
            return 0

    bare = dataclasses.replace(recipe, methods=[])
    return TextOnlyVLM(None, None, build_llm(recipe.llm), bare).to(default_device(device)).eval()


def answer(vlm, instructions: list[str], batch_size: int, max_new_tokens: int,
           precision: str) -> list[tuple[str, bool]]:
    """Greedy answers of ``vlm`` to single-turn ``instructions`` (``inference.generate_answers``'s
    single-prompt path: the same tokenisation, left padding and ``VLM.generate``) and whether each
    ended with a turn-end token before ``max_new_tokens``."""
    import torch

    from vlgraft.data.conversation import tokenize_prompt
    from vlgraft.data.dataset import collate
    from vlgraft.inference import autocast, device_of

    tok, device = vlm.llm.tokenizer, device_of(vlm)
    stops = set(vlm.llm.stop_token_ids)
    prompts = [tokenize_prompt([("user", q)], vlm.llm, 0, f"instruction {q[:60]!r}") for q in instructions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[str, bool]] = [("", False)] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        inp = collate([{"input_ids": prompts[i]} for i in idx], tok.pad_token_id, left=True)
        inp = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inp.items()}
        with autocast(device, precision):
            new = vlm.generate(**inp, max_new_tokens=max_new_tokens)
        for i, seq in zip(idx, new):
            ids = seq.tolist()
            out[i] = (tok.decode(seq, skip_special_tokens=True).strip(), any(t in stops for t in ids))
    return out


# ---------------------------------------------------------------------------------- driver


def resolve_answerer(cfg: DistillConfig):
    """(recipe whose llm answers, precision, description) from ``--recipe`` / ``--llm``."""
    from vlgraft.config import LLMOptions, Recipe, inference_precision, load_recipe, options_for

    if cfg.recipe and cfg.llm:
        raise VlgraftError("give --recipe or --llm, not both (a recipe names its LLM in its llm section)")
    if cfg.recipe:
        recipe = load_recipe(cfg.recipe)
        precision = cfg.precision or inference_precision(recipe)
    else:
        recipe = dataclasses.replace(Recipe(), llm=options_for(LLMOptions, cfg.llm or "smollm2-135m-instruct"))
        precision = cfg.precision or "fp32"
    return recipe, precision, {"recipe": cfg.recipe, **dataclasses.asdict(recipe.llm), "precision": precision}


def _check_out(cfg: DistillConfig) -> Path:
    from vlgraft.files import ensure_writable

    out = Path(cfg.out)
    if out.suffix != ".jsonl":
        raise VlgraftError(f"--out must be a .jsonl file, not {out}")
    if out.is_dir():
        raise VlgraftError(f"--out {out} is a folder; give a .jsonl file path")
    ensure_writable(out.parent, "output folder of --out")
    if out.exists() and not os.access(out, os.W_OK):
        raise VlgraftError(f"--out {out} cannot be written (no permission)")
    return out


def distill(cfg: DistillConfig, generator: Generator, vlm=None, show_progress: bool = True) -> dict:
    """Run (or resume) a ``curate-text`` job; returns the report (also written next to the output).
    ``vlm``: an answering model already built (else the base model of ``--recipe`` / ``--llm``)."""
    from tqdm import tqdm

    from vlgraft.eval.text import load_text_set
    from vlgraft.files import write_json

    if cfg.n < 1:
        raise VlgraftError(f"--n must be at least 1, got {cfg.n}")
    if cfg.unfinished not in ("cut", "drop", "keep"):
        raise VlgraftError(f"--unfinished must be cut, drop or keep, not {cfg.unfinished!r}")
    out = _check_out(cfg)
    recipe, precision, answerer = resolve_answerer(cfg)
    text_set = load_text_set(cfg.text_set)
    max_attempts = cfg.max_attempts or 30 * cfg.n
    prog, rep = progress_path(out), report_path(out)
    settings = {"n": cfg.n, "answerer": answerer, "generator": generator.name, "text_set_sha1": text_set.sha1,
                "seed": cfg.seed, "max_new_tokens": cfg.max_new_tokens, "instruction_tokens": cfg.instruction_tokens,
                "temperature": cfg.temperature, "shots": cfg.shots, "topic_rate": cfg.topic_rate,
                "batch_size": cfg.batch_size, "max_attempts": max_attempts, "unfinished": cfg.unfinished}
    if cfg.overwrite:
        for p in (out, prog, rep):
            p.unlink(missing_ok=True)
    if not prog.is_file() and out.exists():
        raise VlgraftError(f"{out} exists (a finished curate-text run, see {rep.name}); pass --overwrite to replace it")
    lines = read_progress(out, prog, settings, "curate-text") if prog.is_file() else None

    eval_index, seed_index = text_set.near_duplicate_index(), NearDuplicateIndex(SEED_INSTRUCTIONS)
    seen = NearDuplicateIndex()
    if lines is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        prog.write_text(json.dumps({"settings": settings}) + "\n")
        lines = []
    for ln in lines:
        for q in ln["accepted"]:
            seen.add(q)
    offset = lines[-1]["offset"] if lines else 0
    with out.open("ab") as f:
        f.truncate(offset)
    call = lines[-1]["calls"] if lines else 0
    attempts = lines[-1]["attempts"] if lines else 0
    kept = lines[-1]["kept"] if lines else 0
    examples_seen = Counter(d["reason"] for ln in lines for d in ln["dropped"])
    if lines and show_progress:
        print(f"resuming {out}: {kept} of {cfg.n} records kept, {attempts} instructions generated")

    if vlm is None and kept < cfg.n and attempts < max_attempts:
        vlm = base_model(recipe, cfg.device)
        _share_model(generator, vlm)
    st = _State(cfg, generator, vlm, precision, max_attempts, eval_index, seed_index, seen, call, attempts, kept,
                examples_seen)
    bar = tqdm(total=cfg.n, initial=kept, unit="record", desc="curate-text", disable=not show_progress,
               dynamic_ncols=True)
    with out.open("ab") as fo, prog.open("a") as fp:
        while st.kept < cfg.n and st.attempts < max_attempts:
            t0 = time.time()
            line, recs = st.round()
            append_batch(fo, fp, line, recs, t0)
            lines.append(line)
            bar.update(len(recs))
    bar.close()
    report = _report(cfg, settings, generator, text_set, lines, out, max_attempts)
    write_json(rep, report)
    prog.unlink()
    return report


@dataclass
class _State:
    """What carries from round to round (rebuilt from the progress file on resume)."""

    cfg: DistillConfig
    generator: Generator
    vlm: object
    precision: str
    max_attempts: int
    eval_index: NearDuplicateIndex
    seed_index: NearDuplicateIndex
    seen: NearDuplicateIndex
    call: int
    attempts: int
    kept: int
    examples_seen: Counter

    def round(self) -> tuple[dict, list[dict]]:
        """Generator calls until at least ``batch_size`` instructions pass (every passing one of a call is
        kept, up to what --n still needs) or the attempts run out, then their answers: (the progress
        line without offset and seconds, the kept records)."""
        cfg = self.cfg
        outcomes: Counter = Counter()
        dropped: list[dict] = []
        eval_hits: list[dict] = []
        pending: list[tuple[str, list[int]]] = []  # (instruction, seed indices)

        def drop(reason: str, detail: str, text: str, instruction: str) -> None:
            outcomes[reason] += 1
            if self.examples_seen[reason] < EXAMPLES_PER_REASON:
                self.examples_seen[reason] += 1
                dropped.append({"reason": reason, "detail": detail, "instruction": instruction, "text": text[:600]})

        left = cfg.n - self.kept
        while len(pending) < min(cfg.batch_size, left) and self.attempts < self.max_attempts:
            # twice what is still needed, at most batch_size: the last calls do not write what is never read
            k = min(cfg.batch_size, self.max_attempts - self.attempts, 2 * (left - len(pending)))
            made = [prompt_for(cfg, self.call, j) for j in range(k)]
            texts = self.generator.generate([m for m, _ in made], cfg.instruction_tokens, cfg.temperature,
                                            cfg.seed * 1_000_003 + self.call)
            if len(texts) != k:
                raise VlgraftError(f"generator {self.generator.name} returned {len(texts)} texts for {k} prompts")
            self.call += 1
            self.attempts += k
            for (_, shown), raw in zip(made, texts):
                if len(pending) == left:  # the rest of the last call is not needed to reach --n
                    outcomes["unused"] += 1
                    continue
                q = parse_instruction(raw)
                reason, detail = check_instruction(q)
                for name, index in (("eval_overlap", self.eval_index), ("copies_seed", self.seed_index),
                                    ("duplicate", self.seen)):
                    if reason is None:
                        m = index.find(q)
                        if m is not None:
                            reason, detail = name, m.describe()
                            if name == "eval_overlap":
                                eval_hits.append({"instruction": q, "eval": m.key, "eval_text": m.text,
                                                  "rule": m.rule, "score": m.score})
                if reason is None:
                    self.seen.add(q)
                    pending.append((q, shown))
                else:
                    drop(reason, detail, raw, q)
        recs = []
        if pending:
            answers = answer(self.vlm, [q for q, _ in pending], cfg.batch_size, cfg.max_new_tokens, self.precision)
            for (q, shown), (a, finished) in zip(pending, answers):
                reason, detail, text = check_answer(a, finished, cfg.unfinished)
                if reason:
                    drop(reason, detail, a, q)
                    continue
                self.kept += 1
                outcomes["kept"] += 1
                recs.append({"id": f"distill-{self.kept:06d}",
                             "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": text}],
                             "meta": {"source": "curate-text", "seeds": shown,
                                      "answer_cut": not finished and cfg.unfinished == "cut"}})
        line = {"calls": self.call, "attempts": self.attempts, "kept": self.kept, "accepted": [q for q, _ in pending],
                "outcomes": dict(outcomes), "dropped": dropped, "eval_matches": eval_hits}
        return line, recs


def _share_model(generator, vlm) -> None:
    """A local generator of the same LLM, dtype and device uses the answering model's weights."""
    from vlgraft.curate.generators import LocalGenerator
    from vlgraft.inference import default_device, device_of

    if not isinstance(generator, LocalGenerator) or generator.llm is not None:
        return
    dev = device_of(vlm)
    want = "bfloat16" if dev.type == "cuda" else "float32"
    if (generator.model_name == vlm.llm.cfg.name and vlm.llm.cfg.dtype == want
            and default_device(generator.device) == dev):
        vlm.llm.tokenizer.padding_side = "left"  # the generator pads with the tokenizer (answers: with collate)
        generator.llm = vlm.llm


def _report(cfg, settings, generator, text_set, lines, out, max_attempts) -> dict:
    outcomes: Counter = Counter()
    for ln in lines:
        outcomes.update(ln["outcomes"])
    kept = lines[-1]["kept"] if lines else 0
    attempts = lines[-1]["attempts"] if lines else 0
    accepted = sum(len(ln["accepted"]) for ln in lines)
    seconds = sum(ln["seconds"] for ln in lines)
    dropped = {r: outcomes[r] for r in INSTRUCTION_REASONS + ANSWER_REASONS if outcomes[r]}
    examples: dict[str, list] = {}
    for ln in lines:
        for d in ln["dropped"]:
            examples.setdefault(d["reason"], []).append(d)
    hits = [h for ln in lines for h in ln["eval_matches"]]
    if kept >= cfg.n:
        stopped = f"reached --n {cfg.n}"
    else:
        stopped = f"--max-attempts {max_attempts} generated instructions reached with {kept} of {cfg.n} kept"
    return {
        "out": str(out), "generator": generator.name, "answerer": settings["answerer"], "settings": settings,
        "n": cfg.n, "kept": kept, "generated": attempts, "instructions_accepted": accepted,
        "unused": outcomes["unused"],
        "kept_fraction": round(kept / attempts, 4) if attempts else 0.0, "stopped": stopped,
        "dropped": dropped,
        "eval_matches": {"count": len(hits), "by_rule": dict(Counter(h["rule"] for h in hits).most_common()),
                         "listed": hits[:MAX_EVAL_MATCHES_LISTED]},
        "text_set": {"path": text_set.path, "sha1": text_set.sha1, "ppl": len(text_set.ppl), "qa": len(text_set.qa)},
        "seconds": round(seconds, 1), "seconds_per_kept": round(seconds / kept, 3) if kept else None,
        "filters": {"reasons": list(INSTRUCTION_REASONS + ANSWER_REASONS), "words": [MIN_WORDS, MAX_WORDS],
                    "max_chars": MAX_CHARS, "max_repeat_3gram": MAX_REPEAT, "max_same_word": MAX_SAME_WORD,
                    "answer_max_repeat_3gram": ANSWER_MAX_REPEAT,
                    "dedup": _thresholds(NearDuplicateIndex())},
        "seeds": len(SEED_INSTRUCTIONS),
        "dropped_examples": examples,
    }


def _thresholds(ix: NearDuplicateIndex) -> dict:
    return {"word_jaccard": ix.jaccard, "containment": ix.containment, "char_jaccard": ix.char_jaccard,
            "content_bag": ix.bag_jaccard, "content_bag_for_ngram_rules": ix.min_bag,
            "content_bag_length_ratio": ix.bag_length_ratio, "word_n": ix.n,
            "char_n": ix.char_n}


def print_report(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    t = Table(title=f"curate-text: {report['out']}")
    t.add_column("outcome")
    t.add_column("count", justify="right")
    t.add_row("generated instructions", str(report["generated"]))
    for r, c in report["dropped"].items():
        t.add_row(f"dropped: {r}", str(c))
    if report["unused"]:
        t.add_row("not examined (--n reached)", str(report["unused"]))
    t.add_row("kept", f"{report['kept']} ({100 * report['kept_fraction']:.1f}%)")
    console.print(t)
    spk = report["seconds_per_kept"]
    console.print(f"{report['stopped']}; {report['eval_matches']['count']} evaluation-set near-duplicates dropped; "
                  f"{report['seconds']:.0f} s" + (f" ({spk:.2f} s per kept record)" if spk else ""))
