"""The method protocol: what every parameter-efficient method is asked, and the per-batch context.

A method's ``apply(vlm)`` adds its modules and parameters in place, so parameter names say where they
live (``llm.model.model.layers.3.self_attn.vlgraft_prompt.gate``). ``apply_methods`` records the
parameters each one created (by diffing the model's parameters around ``apply``); a method that
trains *existing* parameters (``select``, LLaMA-Adapter V2's norms) lists them in ``claims``. The
rest of vlgraft only asks the protocol below: the training loop its parameters and groups, the VLM
what it adds before the sequence and whether it takes the image, export whether and how it merges.

Per-batch values (the visual tokens, which samples have an image) reach the methods' modules through
``MethodContext``, set for the length of one forward or generation by ``with vlm.method_context(ctx)``
and read with ``current_context()``: no module holds a reference to the model.

Which samples a method acts on (``active_rows``): every one by default; with the option ``scope:
image`` only those that carry an image, so that a text-only input takes exactly the base model's path
(the LLM keeps its language where no image is involved); none in a *base pass* (``MethodContext.base``:
the frozen base model without a second copy in memory, for ``train.text_kl``). A method that trains
existing weights (``claims``) cannot be switched off: its ``switchable`` is False.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from vlgraft.errors import ConfigError

_CURRENT: contextvars.ContextVar[MethodContext | None] = contextvars.ContextVar("vlgraft_method_context", default=None)


@dataclass
class MethodContext:
    """What methods may read besides hidden states, for one forward or one generation."""

    visual: torch.Tensor | None  # [B_img, M, Dl] connector output, images in batch order
    has_image: torch.Tensor  # [B] bool
    image_counts: torch.Tensor | None = None  # [B] images per sample (None: at most one each)
    base: bool = False  # a base pass: every method is off (active_rows)
    _memo: dict = field(default_factory=dict, repr=False)

    _per_sample: set = field(default_factory=set, repr=False)

    def memo(self, owner: object, compute: Callable[[], object], per_sample: bool = False):
        """``compute()`` once per context for ``owner`` (a module, or a name): values computed at prefill
        are kept for the decoding steps (MMA's routes, adaptation prompts' keys and values), and shared
        tables are built once per forward. ``per_sample``: the value is a tensor ``[B, ...]`` that
        depends on the prefill's hidden states, so it cannot be recomputed later: ``rows`` and ``join``
        carry it (the server's continuous batching); every other value is recomputed from the fields."""
        if owner not in self._memo:
            self._memo[owner] = compute()
            if per_sample:
                self._per_sample.add(owner)
        return self._memo[owner]

    def counts(self) -> torch.Tensor:
        """Images per sample ``[B]``."""
        return self.has_image.long() if self.image_counts is None else self.image_counts

    def rows(self, index: list[int]) -> MethodContext:
        """The context of the samples ``index`` (in that order), as if they had been a batch."""
        counts = self.counts().tolist()
        starts = [sum(counts[:i]) for i in range(len(counts))]
        img = [j for i in index for j in range(starts[i], starts[i] + counts[i])]
        visual = None if self.visual is None or not img else self.visual[img]
        idx = torch.tensor(index, device=self.has_image.device, dtype=torch.long)
        out = MethodContext(visual, self.has_image[idx], self.counts()[idx], base=self.base)
        for owner in self._per_sample:
            out._memo[owner] = self._memo[owner][idx.to(self._memo[owner].device)]
            out._per_sample.add(owner)
        return out

    @staticmethod
    def join(parts: list[MethodContext]) -> MethodContext:
        """One context for the samples of ``parts``, in order (their per-sample memos concatenated)."""
        vis = [p.visual for p in parts if p.visual is not None]
        out = MethodContext(torch.cat(vis) if vis else None, torch.cat([p.has_image for p in parts]),
                            torch.cat([p.counts() for p in parts]), base=parts[0].base)
        for owner in set.intersection(*(p._per_sample for p in parts)):
            out._memo[owner] = torch.cat([p._memo[owner] for p in parts])
            out._per_sample.add(owner)
        return out

    def visual_per_sample(self) -> torch.Tensor | None:
        """``[B, M, Dl]`` with zeros for text-only samples (None when the batch has no image). A sample
        with several images (interleaved documents) gets their token-wise mean: methods that take the
        image outside the sequence see one image-sized input per sample."""
        if self.visual is None:
            return None
        return self.memo("visual_per_sample", self._visual_per_sample)  # read by every adapted layer

    def _visual_per_sample(self) -> torch.Tensor:
        b = self.has_image.shape[0]
        counts = (self.has_image.long() if self.image_counts is None else self.image_counts).to(self.visual.device)
        owner = torch.repeat_interleave(torch.arange(b, device=self.visual.device), counts)
        out = self.visual.new_zeros(b, *self.visual.shape[1:]).index_add(0, owner, self.visual)
        return out / counts.clamp(min=1).to(out.dtype).view(b, *([1] * (out.dim() - 1)))


def current_context() -> MethodContext | None:
    """The context of the forward or generation running now (None outside one: a text-only call)."""
    return _CURRENT.get()


SCOPES = ("all", "image")


def scope_option():
    """The ``scope`` option of the methods that can leave text-only samples on the base path."""
    from vlgraft.options import option

    return option("all", "the samples the method acts on: all, or image (only samples with an image: a text-only "
                  "input takes exactly the base model's path)", choices=SCOPES)


def active_rows(scope: str = "all") -> torch.Tensor | bool:
    """Which samples of the running forward a method of ``scope`` acts on: True (all), False (none: its
    output must be exactly the base path's) or a bool mask ``[B]``. Outside a context (a call with no
    image) only ``all`` acts; in a base pass nothing does."""
    ctx = current_context()
    if ctx is None:
        return scope == "all"
    if ctx.base:
        return False
    if scope == "all":
        return True

    def compute():  # once per context: a mask's all()/any() would synchronise a GPU in every layer
        if bool(ctx.has_image.all()):
            return True
        return ctx.has_image if bool(ctx.has_image.any()) else False
    return ctx.memo(("active_rows", scope), compute)


def keep_rows(delta: torch.Tensor, rows: torch.Tensor | bool) -> torch.Tensor:
    """``delta`` ``[B, ...]`` with the inactive samples' rows zeroed (``rows`` as ``active_rows`` gives it,
    not False): added to the base output, those rows stay the base output bit for bit."""
    if rows is True:
        return delta
    return delta * rows.to(delta.dtype).view(-1, *([1] * (delta.dim() - 1)))


@contextlib.contextmanager
def use_context(ctx: MethodContext) -> Iterator[MethodContext]:
    """Make ``ctx`` the current context for the block (nestable; each thread has its own)."""
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def match_names(names: list[str], patterns: list[str]) -> list[str]:
    """The names that match any of the fnmatch ``patterns``."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class Method:
    """Base class. A subclass sets ``Options`` (a dataclass of its recipe options, subclassing
    ``config.MethodOptions``) and implements ``apply``; every other question has a default answer."""

    Options: ClassVar[type]
    mergeable: ClassVar[bool] = False  # merge() folds the method into the base weights (export)

    def __init__(self, cfg):
        self.cfg = cfg  # the method's typed options
        self.name: str = cfg.name
        self.created: list[str] = []  # parameters apply() added (recorded by apply_methods)
        self.claims: list[str] = []  # existing parameters this method trains (names or fnmatch patterns)

    # -- building
    def apply(self, vlm) -> None:
        raise NotImplementedError

    def switchable(self, vlm) -> bool:
        """Whether ``active_rows`` turns the method off (a base pass, ``scope: image``): not when it trains
        weights of the LLM itself."""
        return not match_names([n for n, _ in vlm.named_parameters() if n.startswith("llm.")], self.claims)

    # -- parameters: what recipes' trainable groups refer to by the method's name
    def parameter_names(self) -> list[str]:
        """Its parameters: the ones it created, then the existing ones it claims."""
        return self.created + [c for c in self.claims if c not in self.created]

    def parameter_groups(self) -> dict[str, list[str]]:
        """Named sub-groups (``{group: names or patterns}``), referable as ``<method>.<group>``."""
        return {}

    def checkpoint_keys(self, vlm) -> list[str]:
        """The names under which its tensors are saved in a checkpoint (its trainable parameters)."""
        params = dict(vlm.named_parameters())
        return [n for n in match_names(list(params), self.parameter_names()) if params[n].requires_grad]

    # -- the sequence
    @property
    def consumes_visual(self) -> bool:
        """Whether the visual tokens go to the method instead of into the token sequence."""
        return False

    def prefix_embeds(self, vlm, ctx: MethodContext, batch: int) -> torch.Tensor | None:
        """Embeddings ``[B, P, Dl]`` placed before the sequence (prompt tuning, MMA's modality token)."""
        return None

    # -- export
    def merge(self, vlm) -> int:
        """Fold the method into the base weights in place, so that the model computes the same without
        its modules; returns how many layers changed. Only for ``mergeable`` methods."""
        raise ConfigError(f"method {self.name!r} cannot be merged into the base weights")
