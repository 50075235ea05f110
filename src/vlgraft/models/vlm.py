"""The grafted model: encode -> connect -> splice at ``<image>`` -> LLM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlgraft.config import Recipe
from vlgraft.connectors import build_connector
from vlgraft.errors import VlgraftError
from vlgraft.methods import apply_methods
from vlgraft.methods.base import MethodContext, use_context
from vlgraft.models import decoding, masks
from vlgraft.models.llm import LanguageModel, build_llm
from vlgraft.models.vision import VisionEncoder, build_vision

# Token id marking one visual position in ``input_ids``; each image expands to ``num_image_tokens``
# of them at tokenisation time, so sequence lengths (and truncation) are exact before the forward.
IMAGE_TOKEN_ID = -200


def _per_sample(logits, target, sel) -> dict:
    """Per-sample sums of the labelled tokens' cross-entropy (``logits`` ``[n_labelled, V]``, in the
    row-major order of ``sel`` ``[B, T-1]``), their counts, and whether greedy decoding hits each."""
    rows = sel.nonzero()[:, 0]  # [n_labelled]: the sample of each labelled token
    b = sel.shape[0]
    tok = F.cross_entropy(logits.float(), target, reduction="none").double()
    nll = torch.zeros(b, dtype=torch.float64, device=tok.device).index_add_(0, rows, tok)
    wrong = (logits.argmax(-1) != target).long()
    misses = torch.zeros(b, dtype=torch.long, device=tok.device).index_add_(0, rows, wrong)
    return {"sample_nll": nll, "sample_tokens": sel.sum(1), "sample_greedy": misses == 0}


class VLM(nn.Module):
    def __init__(self, vision: VisionEncoder, connector: nn.Module, llm: LanguageModel, recipe: Recipe):
        super().__init__()
        self.vision = vision
        self.connector = connector
        self.llm = llm
        self.recipe = recipe
        self.methods: list = []  # applied Method objects, in recipe order

    @property
    def method_params(self) -> dict[str, list[str]]:
        """Method name (and ``name.group``) -> its parameter names / patterns, as trainable groups refer to them."""
        out: dict[str, list[str]] = {}
        for m in self.methods:
            out.setdefault(m.name, []).extend(m.parameter_names())
            for g, names in m.parameter_groups().items():
                out.setdefault(f"{m.name}.{g}", []).extend(names)
        return out

    def method_context(self, ctx: MethodContext):
        """``with vlm.method_context(ctx):`` — the methods' modules read ``ctx`` inside the block."""
        return use_context(ctx)

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens spliced into the sequence per image (0 when a method takes the image instead)."""
        if any(m.consumes_visual for m in self.methods):
            return 0
        return self.connector.output_tokens(self.vision.num_tokens)

    @classmethod
    def from_recipe(cls, recipe: Recipe, source: str = "recipe") -> VLM:
        vision = build_vision(recipe.vision, recipe.vision_hr)
        llm = build_llm(recipe.llm)
        connector = build_connector(recipe.connector, vision.embed_dim, llm.hidden_size, vision)
        vlm = cls(vision, connector, llm, recipe)
        apply_methods(vlm, recipe.methods, source)
        return vlm

    # ------------------------------------------------------------------ vision side
    def vision_trainable(self) -> bool:
        return any(p.requires_grad for p in self.vision.parameters())

    def vision_cacheable(self) -> bool:
        """Cached features equal the encoder's output: it neither trains nor carries method modules."""
        return not self.vision_trainable() and not any(
            n.startswith("vision.") for m in self.methods for n in m.parameter_names())

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S] -> [B, N, Dv]``; no graph is kept when the encoder is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.vision_trainable()):
            return self.vision(pixel_values)

    def visual_embeds(self, pixel_values=None, image_features=None) -> torch.Tensor | None:
        """Visual tokens in the LLM's embedding space ``[B_img, M, Dl]`` (None for a text-only batch)."""
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        if image_features is None:
            return None
        return self.connector(image_features)

    def prepare(self, input_ids, attention_mask=None, pixel_values=None, image_features=None, has_image=None,
                labels=None, position_ids=None, segment_ids=None, image_counts=None, base: bool = False,
                document_ids=None) -> dict:
        """Everything before the LLM's layers: encode and connect images, build the methods' context,
        splice visual tokens, put method prefixes (soft prompts, MMA's modality token) in front and
        shift masks, labels and positions to match. ``image_counts`` ``[B]`` (from ``collate``) says
        how many of the images, in order, belong to each sample; without it a sample has at most one.
        The layers must run inside ``with self.method_context(out["context"])``. ``base``: a base pass
        (every method off: the frozen base model, ``methods.base.active_rows``). ``document_ids`` ``[B, T]``:
        several records packed into each row (``data.pack``); ``image_counts`` then counts a row's images."""
        visual = self.visual_embeds(pixel_values, image_features)
        b = input_ids.shape[0]
        n_img = 0 if visual is None else visual.shape[0]
        if image_counts is not None:
            if int(image_counts.sum()) != n_img:
                raise VlgraftError(f"batch counts {int(image_counts.sum())} images over its samples but has {n_img}")
            has_image = image_counts > 0
        elif has_image is None:
            if self.num_image_tokens:
                has_image = (input_ids == IMAGE_TOKEN_ID).any(1)
            elif n_img in (0, b):
                has_image = torch.full((b,), bool(n_img), dtype=torch.bool, device=input_ids.device)
            else:
                raise VlgraftError(f"{n_img} images for {b} samples: pass has_image to say which samples have one")
        if image_counts is None and int(has_image.sum()) != n_img:
            raise VlgraftError(f"batch marks {int(has_image.sum())} samples as having an image but has {n_img} images")
        ctx = MethodContext(visual=visual, has_image=has_image, image_counts=image_counts, base=base)
        embeds = self.embed_inputs(input_ids, visual if self.num_image_tokens else None)
        prefixes = [p for m in self.methods if (p := m.prefix_embeds(self, ctx, b)) is not None]
        if prefixes and document_ids is not None:  # data.pack refuses such methods (data.packing.check_packable)
            raise VlgraftError("a method puts embeddings before the sequence: records cannot be packed into one row")
        if prefixes:
            pre = torch.cat([p.to(embeds.dtype) for p in prefixes], dim=1)  # [B, P, Dl]
            n = pre.shape[1]
            embeds = torch.cat([pre, embeds], dim=1)
            ones = torch.ones(b, n, dtype=torch.long, device=embeds.device)
            if attention_mask is not None:
                attention_mask = torch.cat([ones.to(attention_mask.dtype), attention_mask], dim=1)
            if labels is not None:
                labels = torch.cat([torch.full_like(ones, -100), labels], dim=1)
            if position_ids is not None:
                position_ids = torch.cat([torch.arange(n, device=embeds.device).expand(b, -1), position_ids + n], 1)
            if segment_ids is not None:
                segment_ids = torch.cat([torch.zeros_like(ones), segment_ids], dim=1)
        return {"embeds": embeds, "attention_mask": attention_mask, "labels": labels,
                "position_ids": position_ids, "segment_ids": segment_ids, "document_ids": document_ids, "context": ctx}

    def embed_inputs(self, input_ids: torch.Tensor, visual: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings with the visual tokens written at the ``IMAGE_TOKEN_ID`` positions, in order."""
        is_img = input_ids == IMAGE_TOKEN_ID
        embeds = self.llm.embed(input_ids.masked_fill(is_img, 0))  # [B, T, Dl]
        n_slots = int(is_img.sum())
        n_vis = 0 if visual is None else visual.shape[0] * visual.shape[1]
        if n_slots != n_vis:
            raise VlgraftError(f"batch has {n_slots} image-token positions but {n_vis} visual tokens "
                               f"({0 if visual is None else visual.shape[0]} images x {self.num_image_tokens})")
        if n_vis:
            embeds = embeds.masked_scatter(is_img.unsqueeze(-1), visual.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        return embeds

    # ------------------------------------------------------------------ language side
    def forward(self, input_ids, attention_mask, labels=None, pixel_values=None, image_features=None,
                position_ids=None, segment_ids=None, has_image=None, image_counts=None, text_kl: float = 0.0,
                per_sample: bool = False, document_ids=None):
        """``position_ids``/``segment_ids`` come with packed independent turns (``masks.segment_mask``),
        ``document_ids`` with records packed into one row (``data.pack``; a "sample" below is then a row).
        With ``labels``: ``{"loss_sum", "n_tokens"}`` — cross-entropy summed over labelled positions,
        computed only there (the LM head over the vocabulary is a large share of the FLOPs and most
        positions carry no label). Without: ``{"logits"}`` for every position. ``text_kl`` > 0 adds
        ``text_kl`` x KL(base || model) summed over the labelled tokens of the text-only samples (also
        returned alone as ``kl_sum``), the base being this model in a base pass (``train.text_kl``).
        ``per_sample`` (scoring, no gradient): also ``sample_nll`` ``[B]`` (each sample's cross-entropy
        sum), ``sample_tokens`` ``[B]`` (its labelled tokens) and ``sample_greedy`` ``[B]`` (whether the
        argmax is the label at every one of them)."""
        x = self.prepare(input_ids, attention_mask, pixel_values, image_features, has_image, labels,
                         position_ids, segment_ids, image_counts, document_ids=document_ids)
        embeds, attention_mask, labels, position_ids = x["embeds"], x["attention_mask"], x["labels"], x["position_ids"]
        if x["segment_ids"] is not None:
            attention_mask = masks.segment_mask(x["segment_ids"], self.llm.model.config, embeds.dtype,
                                                x["document_ids"])
        with self.method_context(x["context"]):
            hidden = self.llm.hidden_states(embeds, attention_mask, position_ids)  # [B, T, Dl]
            if labels is None:
                return {"logits": self.llm.logits(hidden)}
            target = labels[:, 1:]
            sel = target != -100
            logits = self.llm.logits(hidden[:, :-1][sel])  # [n_labelled, V]
        loss_sum = F.cross_entropy(logits.float(), target[sel], reduction="sum")
        out = {"loss_sum": loss_sum, "n_tokens": int(sel.sum())}
        if per_sample:
            out.update(_per_sample(logits.detach(), target[sel], sel))
        text = ~x["context"].has_image  # [B]
        if text_kl and bool(text.any()):
            mine = text.view(-1, 1).expand_as(sel)[sel]  # [n_labelled]: the text-only samples' tokens
            base = self._base_logits(input_ids, attention_mask, labels, position_ids, segment_ids, text, document_ids)
            kl = F.kl_div(F.log_softmax(logits[mine].float(), -1), F.log_softmax(base.float(), -1),
                          log_target=True, reduction="sum")
            out["kl_sum"], out["kl_tokens"] = kl.detach(), int(mine.sum())
            out["loss_sum"] = loss_sum + text_kl * kl
        return out

    @torch.no_grad()
    def _base_logits(self, input_ids, attention_mask, labels, position_ids, segment_ids, rows,
                     document_ids=None) -> torch.Tensor:
        """The base model's logits ``[n, V]`` at the labelled positions of the samples ``rows`` (text-only:
        no image), in the order the model's own pass selects them (method prefixes only shift positions)."""
        pick = (lambda t: None if t is None else t[rows])
        x = self.prepare(input_ids[rows], pick(attention_mask), labels=labels[rows], position_ids=pick(position_ids),
                         segment_ids=pick(segment_ids), image_counts=torch.zeros_like(input_ids[rows, 0]), base=True,
                         document_ids=pick(document_ids))
        mask = x["attention_mask"]
        if x["segment_ids"] is not None:
            mask = masks.segment_mask(x["segment_ids"], self.llm.model.config, x["embeds"].dtype, x["document_ids"])
        with self.method_context(x["context"]):
            hidden = self.llm.hidden_states(x["embeds"], mask, x["position_ids"])
            sel = x["labels"][:, 1:] != -100
            return self.llm.logits(hidden[:, :-1][sel])

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, pixel_values=None, image_features=None, has_image=None,
                 max_new_tokens: int = 32, streamer=None, image_counts=None, **kw) -> torch.Tensor:
        """Greedy (by default) generation with the KV cache; ``input_ids`` left-padded. Returns new tokens."""
        x = self.prepare(input_ids, attention_mask, pixel_values, image_features, has_image,
                         image_counts=image_counts)
        tok = self.llm.tokenizer
        with self.method_context(x["context"]):
            return self.llm.model.generate(
                inputs_embeds=x["embeds"], attention_mask=x["attention_mask"], max_new_tokens=max_new_tokens,
                do_sample=kw.pop("do_sample", False), eos_token_id=self.llm.stop_token_ids,
                pad_token_id=tok.pad_token_id, streamer=streamer, **kw)

    def generate_packed(self, batch: dict, n_questions: list[int], max_new_tokens: int) -> list[list[list[int]]]:
        """Greedy decoding of packed independent questions (``models.decoding``)."""
        return decoding.generate_packed(self, batch, n_questions, max_new_tokens)

    # ------------------------------------------------------------------ parameters
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
