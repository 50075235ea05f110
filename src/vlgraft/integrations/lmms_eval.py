"""lmms-eval's ``vlgraft`` model: run lmms-eval tasks on any vlgraft run (docs/LMMS_EVAL.md).

    lmms-eval --model vlgraft --model_args pretrained=runs/default --tasks TASK --batch_size 16

A simple (non-chat) lmms-eval model. Every request is a single-turn conversation in the recipe's
chat template and system prompt, the document's images (``doc_to_visual``) placed before the
context, exactly as ``vlgraft.load(run).generate`` asks (a context that holds one ``<image>`` per
image keeps them where they are).

* ``generate_until``: greedy answers, batched (``inference.generate_answers``, the path of
  ``Model.generate``), cut at the first of the request's ``until`` strings; ``max_new_tokens`` from
  the request, else the recipe's ``chat.max_new_tokens``.
* ``loglikelihood``: the continuation (stripped of surrounding whitespace) is the assistant's
  reply, tokenised as in training (``data.conversation.tokenize_conversation``); the result is the
  summed log-probability of its tokens given the images and the context (the turn-end token not
  counted) and whether greedy decoding would produce exactly those tokens; batched by length.
  lmms-eval 0.7's multiple-choice scoring picks the choice with the *smallest* value (its built-in
  models return a loss), so by default the value returned is the negative of that log-probability
  (``score=nll``, the summed negative log-likelihood); ``score=logprob`` returns the log-probability
  itself, as lm-eval-harness and ``lmms.loglikelihood``'s docstring define it (``acc_mutual_info``
  and the ``perplexity`` metric read it so).

``model_args``: ``pretrained`` (a run or checkpoint folder), ``device`` (else lmms-eval's
``--device``, else CUDA when available), ``batch_size`` (else lmms-eval's ``--batch_size``; ``auto``:
the recipe's ``eval.batch_size``), ``describe`` (``True``: with the recipe's ``data.describe_first``
the model describes each request's images first and the request follows that exchange; off by
default), ``score`` (``nll`` or ``logprob``, above), ``overrides`` (``key=value`` recipe changes
as ``vlgraft eval -o`` takes them, several separated by ``;``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from vlgraft.errors import VlgraftError

log = logging.getLogger(__name__)

_VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".m4v"}
_AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".m4a"}
SCORES = ("nll", "logprob")


def _is_score(output) -> bool:
    return (isinstance(output, (tuple, list)) and len(output) == 2 and isinstance(output[1], bool)
            and isinstance(output[0], (int, float)) and not isinstance(output[0], bool))


def keep_loglikelihood_pairs() -> None:
    """lmms-eval 0.7's evaluator passes every response through ``unwrap_generation_output``, which
    turns a loglikelihood ``(value, is_greedy)`` pair into its ``str()`` (it knows texts and
    ``GenerationResult``), so that no multiple-choice task can read it. Where the loaded evaluator
    does so, it gets a wrapper that hands such pairs on unchanged; an evaluator that keeps them
    already, or that is not loaded, is left alone."""
    evaluator = sys.modules.get("lmms_eval.evaluator")
    unwrap = getattr(evaluator, "unwrap_generation_output", None)
    if unwrap is None or getattr(unwrap, "keeps_loglikelihood_pairs", False):
        return
    try:
        if unwrap((-1.0, True))[0] == (-1.0, True):
            return
    except Exception:  # an unwrap of another shape: leave it
        return

    def unwrap_keeping_pairs(output):
        if _is_score(output):
            return tuple(output), None
        return unwrap(output)

    unwrap_keeping_pairs.keeps_loglikelihood_pairs = True
    evaluator.unwrap_generation_output = unwrap_keeping_pairs


def _flag(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    if value in (0, 1):
        return bool(value)
    raise VlgraftError(f"model_args {name}={value!r}: expected True or False")


class VlgraftLmms(lmms):
    """A trained vlgraft run as an lmms-eval model (``--model vlgraft``)."""

    is_simple = True

    def __init__(self, pretrained: str | None = None, device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, describe: bool | str = False, score: str = "nll",
                 overrides: str | None = None, **unknown) -> None:
        super().__init__()
        if unknown:
            raise VlgraftError(f"vlgraft model_args: unknown {', '.join(sorted(unknown))}; it takes pretrained, "
                               "device, batch_size, describe, score, overrides")
        if not pretrained:
            raise VlgraftError("vlgraft model_args: pretrained=RUN is required (a run or checkpoint folder)")
        if score not in SCORES:
            raise VlgraftError(f"vlgraft model_args score={score!r}: expected one of {', '.join(SCORES)}")
        self.score = score
        import vlgraft
        from vlgraft.config import inference_precision

        ovr = [o.strip() for o in str(overrides).split(";") if o.strip()] if overrides else None
        self.model = vlgraft.load(str(pretrained), device=device, overrides=ovr)
        self.vlm, self.recipe = self.model.vlm, self.model.recipe
        self.vlm.eval()
        self.precision = inference_precision(self.recipe)
        self.batch_size = self._batch_size(batch_size, max_batch_size)
        self.describe_request = None
        if _flag(describe, "describe"):
            self.describe_request = self.recipe.data.describe_first
            if not self.describe_request:
                raise VlgraftError(f"vlgraft model_args describe=True, but the recipe of {pretrained} has no "
                                   "data.describe_first request (set it with overrides=data.describe_first=...)")
        self._warned: set[str] = set()
        keep_loglikelihood_pairs()

    def _batch_size(self, value, max_batch_size) -> int:
        if value is None or (isinstance(value, str) and value.startswith("auto")):
            n = self.recipe.eval.batch_size
        else:
            try:
                n = int(value)
            except (TypeError, ValueError):
                raise VlgraftError(f"vlgraft batch_size {value!r}: expected a number or 'auto'") from None
            if n < 1:
                raise VlgraftError(f"vlgraft batch_size {value!r}: must be at least 1")
        return min(n, int(max_batch_size)) if max_batch_size else n

    @property
    def tokenizer_name(self) -> str:
        return str(self.model.checkpoint)

    def clean(self) -> None:
        """After the requests (before an LLM judge may load): let the model's memory go."""
        self.model = self.vlm = None
        super().clean()

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        raise VlgraftError("vlgraft applies the recipe's chat template to every request itself; "
                           "run lmms-eval without --apply_chat_template / --fewshot_as_multiturn")

    # ------------------------------------------------------------------ requests -> records
    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        try:
            return self.task_dict[task][split][doc_id]
        except (KeyError, IndexError, TypeError):
            raise VlgraftError(f"lmms-eval request for {task}/{split} doc {doc_id}: the document is not in the "
                               "datasets lmms-eval handed the model") from None

    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self._doc(task, split, doc_id))
        if visuals is None:
            return []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        flat = []
        for v in visuals:
            flat.extend(v if isinstance(v, (list, tuple)) else [v])
        return [v for v in flat if v is not None]

    def _image_path(self, image, where: str) -> str:
        """A path for an image given as a PIL image (stored once, content-addressed, as
        ``Model.generate`` stores it) or as a path to an image file; anything else is refused."""
        if hasattr(image, "mode") and hasattr(image, "size"):
            from vlgraft.data.formats.image_store import store_pil_image

            return str(store_pil_image(image, where))
        if isinstance(image, (str, Path)):
            suffix = Path(image).suffix.lower()
            if suffix in _VIDEO_SUFFIXES or suffix in _AUDIO_SUFFIXES:
                kind = "a video" if suffix in _VIDEO_SUFFIXES else "an audio file"
                raise VlgraftError(f"{where}: the task gives {kind} ({image}); vlgraft models take images only")
            return str(image)
        raise VlgraftError(f"{where}: the task gives a visual of type {type(image).__name__} "
                           f"({str(image)[:80]!r}); vlgraft models take images only (PIL images or image paths)")

    def _record(self, i: int, context: str, visuals: list, where: str, reply: str | None = None):
        from vlgraft.data.records import IMAGE_PLACEHOLDER, Record

        if not isinstance(context, str):
            raise VlgraftError(f"{where}: the context is a {type(context).__name__}, not text")
        paths = [self._image_path(v, where) for v in visuals]
        marks = context.count(IMAGE_PLACEHOLDER)
        if marks == 0:
            text = f"{IMAGE_PLACEHOLDER}\n" * len(paths) + context
        elif marks == len(paths):  # the task placed the images itself
            text = context
        else:
            raise VlgraftError(f"{where}: the context holds {marks} {IMAGE_PLACEHOLDER} placeholders but the task "
                               f"gives {len(paths)} images")
        turns = [("user", text)] + ([("assistant", reply)] if reply is not None else [])
        return Record(f"lmms-{i}", turns, images=paths, source=where)

    def _describe(self, records: list, show: bool) -> list:
        """With ``describe``: each record behind the model's own description of its images (one
        description per distinct image list)."""
        if not self.describe_request:
            return records
        from vlgraft.data.describe import describable, describe_records, with_description

        first: dict[tuple, int] = {}
        for k, rec in enumerate(records):
            if describable(rec):
                first.setdefault(tuple(rec.images), k)
        asked = [records[k] for k in first.values()]
        described = describe_records(self.vlm, asked, self.describe_request, None, self.batch_size,
                                     self.recipe.eval.describe_max_new_tokens, self.precision, show=show)
        text = dict(zip(first, described))
        return [with_description(r, self.describe_request, text[tuple(r.images)])
                if describable(r) and text.get(tuple(r.images)) is not None else r for r in records]

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    # ------------------------------------------------------------------ generate_until
    def _generation_settings(self, kw, where: str) -> tuple[tuple[str, ...], int]:
        kw = dict(kw or {})
        until = kw.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
            raise VlgraftError(f"{where}: generation_kwargs until={until!r}: expected a string or a list of strings")
        max_new = kw.pop("max_new_tokens", None) or kw.pop("max_gen_toks", None) or self.recipe.chat.max_new_tokens
        if kw.get("do_sample") or float(kw.get("temperature") or 0) > 0 or int(kw.get("num_beams") or 1) > 1:
            self._warn_once("sampling", f"{where}: the task asks for sampling or beam search "
                            f"({ {k: kw[k] for k in ('do_sample', 'temperature', 'num_beams') if k in kw} }); "
                            "vlgraft answers greedily")
        return tuple(u for u in until if u), int(max_new)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from vlgraft.inference import generate_answers

        groups: dict[tuple, list[int]] = {}
        records = []
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
            where = f"lmms-eval {task} ({split}) doc {doc_id}"
            records.append(self._record(i, context, self._visuals(doc_to_visual, task, split, doc_id), where))
            groups.setdefault(self._generation_settings(gen_kwargs, where), []).append(i)
        show = self.rank == 0
        out = [""] * len(requests)
        for (until, max_new), idx in groups.items():
            recs = self._describe([records[i] for i in idx], show)
            answers = generate_answers(self.vlm, [{"record": r, "turns": r.turns} for r in recs], None,
                                       self.batch_size, max_new, self.precision, desc="lmms-eval generate",
                                       show=show)
            for i, text in zip(idx, answers):
                for stop in until:
                    text = text.split(stop, 1)[0]
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise VlgraftError("vlgraft's lmms-eval model answers generate_until and loglikelihood requests; "
                           "multi-round tasks (generate_until_multi_round) are not supported")

    # ------------------------------------------------------------------ loglikelihood
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        from vlgraft.eval.likelihood import reply_logprobs

        out: list[tuple[float, bool] | None] = [None] * len(requests)
        records, todo = [], []
        for i, req in enumerate(requests):
            args = req.args
            if len(args) == 2:  # an unconditional request (acc_mutual_info): no context, no image
                context, cont, visuals, where = args[0], args[1], [], f"lmms-eval request {i}"
            else:
                context, target, doc_to_visual, doc_id, task, split = args[:6]
                where = f"lmms-eval {task} ({split}) doc {doc_id}"
                cont = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
                visuals = self._visuals(doc_to_visual, task, split, doc_id)
            if not isinstance(cont, str):
                raise VlgraftError(f"{where}: the continuation is a {type(cont).__name__} ({cont!r}), not text")
            if not cont.strip():  # the empty continuation: probability 1, and greedy decoding gives it
                out[i] = (0.0, True)
                continue
            records.append(self._record(i, context, visuals, where, reply=cont.strip()))
            todo.append(i)
        show = self.rank == 0
        records = self._describe(records, show)
        sign = -1.0 if self.score == "nll" else 1.0
        scores = reply_logprobs(self.vlm, records, None, self.batch_size, self.precision,
                                desc="lmms-eval loglikelihood", show=show)
        for i, (logprob, greedy, _) in zip(todo, scores):
            out[i] = (sign * logprob + 0.0, greedy)
            self.cache_hook.add_partial("loglikelihood", requests[i].args, out[i])
        return out
