"""The server's generation engine: one thread that decodes every request in flight together.

Requests wait in a bounded queue. The engine admits as many as the batch has room for, encodes their
images in one forward, and turns each into a *job*: with the recipe's describe-first a short greedy
job that writes the description (kept in a small cache keyed by the images' pixels, so the turns of
one conversation describe once), then the answer job. New jobs are prefilled together (left-padded)
and join the running batch (``serve.batch``): every step feeds one token per row, so requests that
arrive while others decode start at once and their streams interleave. A job ends at a stop token,
a stop string, ``max_tokens``, its deadline, or when its client goes away.

Answers are what ``vlgraft chat`` gives for the same conversation: the same prompt (``data.conversation``
and ``data.describe``), the same precision, greedy unless a temperature is asked for, the text
stripped. The streamed pieces add up to that text: whitespace at the end and the start of a possible
stop string are held back until the next token decides.

The HTTP layer (``serve.app``) talks to it through ``submit`` and the events it gets back:
``("start", {"prompt_tokens"})``, ``("text", piece)``, ``("done", {...})`` or ``("error", ApiError)``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from vlgraft.config import Recipe, inference_precision
from vlgraft.data.conversation import tokenize_prompt
from vlgraft.data.dataset import collate
from vlgraft.data.describe import describable, describe_prompt, with_description
from vlgraft.data.records import Record
from vlgraft.errors import VlgraftError
from vlgraft.inference import autocast, device_of
from vlgraft.serve.batch import RunningBatch
from vlgraft.serve.errors import ApiError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy, as vlgraft chat
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks measure a fixed length)


@dataclasses.dataclass
class Request:
    """One chat completion: the conversation as a record (images as ``<image>`` placeholders), its
    preprocessed pixels ``[n, 3, S, S]`` and their digests, and where the engine's events go."""

    record: Record
    pixels: torch.Tensor | None
    image_keys: tuple[str, ...]
    sampling: Sampling
    deadline: float
    send: Callable[[str, object], None]
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    prompt_tokens: int = 0


@dataclasses.dataclass
class Job:
    request: Request
    ids: list[int]
    features: torch.Tensor | None  # [n_images, N, Dv]
    sampling: Sampling
    describe: bool = False  # writes the description; its text is not sent to the client
    tokens: list[int] = dataclasses.field(default_factory=list)
    sent: str = ""  # text the client has been sent
    generator: torch.Generator | None = None


class Engine:
    def __init__(self, vlm, recipe: Recipe, max_batch: int = 16, max_queue: int = 64, max_prompt_tokens: int = 2048,
                 describe_cache: int = 1024):
        self.vlm, self.recipe = vlm, recipe
        self.tok = vlm.llm.tokenizer
        self.device = device_of(vlm)
        self.precision = inference_precision(recipe)
        self.describe_first = recipe.data.describe_first
        self.max_batch, self.max_queue, self.max_prompt_tokens = max_batch, max_queue, max_prompt_tokens
        self.stop_ids = set(vlm.llm.stop_token_ids)
        self.descriptions: collections.OrderedDict = collections.OrderedDict()
        self.describe_cache = describe_cache
        self.waiting: collections.deque[Request] = collections.deque()
        self.ready: list[Job] = []  # admitted, not yet prefilled
        self.batch = RunningBatch()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="vlgraft-engine", daemon=True)
        self.steps = 0  # decoding forwards run (a health figure)

    # ------------------------------------------------------------------ the HTTP side
    def start(self) -> Engine:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=10)

    def submit(self, req: Request) -> None:
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                raise ApiError(429, f"the server is busy: {len(self.waiting)} requests are waiting "
                                    f"(--max-queue {self.max_queue}); retry later", code="queue_full",
                               type="rate_limit_error")
            self.waiting.append(req)
            self.cond.notify()

    def load(self) -> dict:
        return {"waiting": len(self.waiting), "running": len(self.batch) + len(self.ready), "steps": self.steps}

    # ------------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not (self.stopping or self.waiting or self.ready or self.batch.rows):
                    self.cond.wait()
                if self.stopping:
                    break
                room = self.max_batch - len(self.batch) - len(self.ready)
                admitted = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
            try:
                self._admit(admitted)
                self._prefill()
                if self.batch.rows:
                    self._step()
            except Exception as e:  # a bug must not leave clients waiting forever: fail what is in flight
                log.exception("engine step failed")
                self._fail_all(ApiError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))
        self._fail_all(ApiError(503, "the server is shutting down", type="server_error"))

    def _fail_all(self, err: ApiError) -> None:
        for job in self.ready + self.batch.rows:
            job.request.send("error", err)
        with self.cond:
            pending = list(self.waiting)
            self.waiting.clear()
        for req in pending:
            req.send("error", err)
        self.ready, self.batch = [], RunningBatch()

    def _alive(self, req: Request) -> bool:
        """False (and the client told, where it still listens) once a request is cancelled or late."""
        if req.cancelled.is_set():
            return False
        if time.monotonic() > req.deadline:
            req.send("error", ApiError(504, "the request took longer than the server's --request-timeout",
                                       code="timeout", type="timeout_error"))
            return False
        return True

    def _admit(self, requests: list[Request]) -> None:
        requests = [r for r in requests if self._alive(r)]
        if not requests:
            return
        with_images = [r for r in requests if r.pixels is not None]
        feats = {}
        if with_images:  # one vision forward for every admitted request's images
            pixels = torch.cat([r.pixels for r in with_images]).to(self.device)
            with autocast(self.device, self.precision):
                out = self.vlm.encode_images(pixels)
            for r, f in zip(with_images, out.split([len(r.pixels) for r in with_images])):
                feats[id(r)] = f
        for r in requests:
            try:
                self.ready.append(self._first_job(r, feats.get(id(r))))
            except ApiError as e:
                r.send("error", e)
            except VlgraftError as e:  # the conversation does not fit the recipe (e.g. describe-first's image place)
                r.send("error", ApiError(400, str(e), param="messages"))

    def _tokens(self, turns, req: Request) -> list[int]:
        try:
            ids = tokenize_prompt(turns, self.vlm.llm, self.vlm.num_image_tokens, req.record.where).tolist()
        except VlgraftError as e:
            raise ApiError(400, str(e), param="messages") from None
        if len(ids) > self.max_prompt_tokens:
            raise ApiError(400, f"the prompt is {len(ids)} tokens (images included), more than the server's "
                                f"--max-prompt-tokens {self.max_prompt_tokens}", param="messages",
                           code="context_length_exceeded")
        return ids

    def _describe_key(self, req: Request):
        return (req.image_keys, self.describe_first)

    def _first_job(self, req: Request, feats) -> Job:
        """The describe job, where describe-first applies and the description is not cached, else the
        answer job. The conversation's own prompt is checked (its length) before the client is told
        that its request started."""
        rec = req.record
        ids = self._tokens(rec.turns, req)
        if self.describe_first and describable(rec):
            desc = self.descriptions.get(self._describe_key(req))
            if desc is None:
                ask = self._tokens(describe_prompt(rec, self.describe_first), req)  # may refuse the image places
                req.send("start", {})
                return Job(req, ask, feats, Sampling(self.recipe.eval.describe_max_new_tokens), describe=True)
            self.descriptions.move_to_end(self._describe_key(req))
            ids = self._tokens(with_description(rec, self.describe_first, desc).turns, req)
        req.send("start", {})
        return self._answer_job(req, ids, feats)

    def _answer_job(self, req: Request, ids: list[int], feats) -> Job:
        req.prompt_tokens = len(ids)
        s = req.sampling
        gen = None
        if s.temperature > 0:
            gen = torch.Generator().manual_seed(s.seed if s.seed is not None else random.getrandbits(63))
        return Job(req, ids, feats, s, generator=gen)

    def _prefill(self) -> None:
        if not self.ready or (self.batch.rows and not self.batch.joinable(self.batch.cache)):
            return
        jobs = [j for j in self.ready if self._alive(j.request)]
        self.ready = []
        if not jobs:
            return
        llm = self.vlm.llm
        items = [{"input_ids": torch.tensor(j.ids), **({"image_features": j.features} if j.features is not None
                                                       else {})} for j in jobs]
        inp = collate(items, self.tok.pad_token_id, left=True)
        inp = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inp.items()}
        cache = DynamicCache()
        with autocast(self.device, self.precision):
            x = self.vlm.prepare(inp["input_ids"], inp["attention_mask"], image_features=inp["image_features"],
                                 image_counts=inp["image_counts"])
            mask = x["attention_mask"]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            with self.vlm.method_context(x["context"]):
                hidden = llm.hidden_states(x["embeds"], mask, pos, cache)
                logits = llm.logits(hidden[:, -1]).float()  # [b, V]
        first = self._choose(jobs, logits)
        start = len(self.batch)
        self.batch.join(jobs, cache, mask, mask.sum(1), first, x["context"])
        self._after_tokens(start)  # only the new rows have a new token

    def _step(self) -> None:
        llm, b = self.vlm.llm, self.batch
        mask, pos = b.step_inputs()
        with autocast(self.device, self.precision), self.vlm.method_context(b.ctx):
            hidden = llm.hidden_states(llm.embed(b.last[:, None]), mask, pos, b.cache)
            logits = llm.logits(hidden[:, -1]).float()
        b.pos = b.pos + 1
        b.last = self._choose(b.rows, logits)
        self.steps += 1
        self._after_tokens()

    def _choose(self, jobs: list[Job], logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row ``[B]``: greedy, or sampled with the row's temperature and top-p."""
        out = logits.argmax(-1)
        for i, j in enumerate(jobs):
            if j.generator is not None:
                out[i] = sample(logits[i], j.sampling.temperature, j.sampling.top_p, j.generator)
        return out

    def _after_tokens(self, start: int = 0) -> None:
        """Record the new token of rows ``start:``, send their text, and drop the rows that are done."""
        keep = list(range(start))
        for i, (job, t) in enumerate(zip(self.batch.rows, self.batch.last.tolist())):
            if i < start:
                continue
            if not self._alive(job.request):
                continue
            if t in self.stop_ids and not job.sampling.ignore_eos:
                self._finish(job, "stop")
                continue
            job.tokens.append(t)
            text, stopped = self._text(job)
            if stopped:
                self._finish(job, "stop", text)
            elif len(job.tokens) >= job.sampling.max_tokens:
                self._finish(job, "length", text)
            else:
                self._send(job, _safe_prefix(text, job.sampling.stop))
                keep.append(i)
        if len(keep) != len(self.batch):
            self.batch.keep(keep)

    def _text(self, job: Job) -> tuple[str, bool]:
        """The job's text so far without leading whitespace, cut at the first stop string; and whether
        one was found."""
        text = self.tok.decode(job.tokens, skip_special_tokens=True).lstrip()
        cuts = [text.find(s) for s in job.sampling.stop if s and s in text]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def _send(self, job: Job, text: str) -> None:
        if not job.describe and len(text) > len(job.sent) and text.startswith(job.sent):
            job.request.send("text", text[len(job.sent):])
            job.sent = text

    def _finish(self, job: Job, reason: str, text: str | None = None) -> None:
        final = (self._text(job)[0] if text is None else text).strip()
        req = job.request
        if job.describe:
            self.descriptions[self._describe_key(req)] = final
            while len(self.descriptions) > self.describe_cache:
                self.descriptions.popitem(last=False)
            try:
                turns = with_description(req.record, self.describe_first, final).turns
                self.ready.append(self._answer_job(req, self._tokens(turns, req), job.features))
            except ApiError as e:
                req.send("error", e)
            return
        self._send(job, final)
        req.send("done", {"text": final, "finish_reason": reason, "prompt_tokens": req.prompt_tokens,
                          "completion_tokens": len(job.tokens)})


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from ``logits`` ``[V]`` at ``temperature``, from the smallest set of tokens whose
    probability reaches ``top_p`` (nucleus sampling)."""
    probs = torch.softmax(logits.cpu() / temperature, dim=-1)
    if top_p < 1:
        p, idx = probs.sort(descending=True)
        outside = p.cumsum(0) - p > top_p  # tokens after the nucleus is full
        p[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, idx, p)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def _safe_prefix(text: str, stops: tuple[str, ...]) -> str:
    """The part of ``text`` that can be sent now: not trailing whitespace (the final text is stripped),
    not an unfinished UTF-8 character, not the start of a stop string."""
    end = len(text.rstrip())
    if text[:end].endswith("\ufffd"):
        end -= 1
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return text[:end]
