"""Training dataset and collation."""

from __future__ import annotations

import io

import torch
from torch.nn.utils.rnn import pad_sequence

from vlgraft.data.cache import FeatureCache
from vlgraft.data.conversation import IGNORE, tokenize_conversation, tokenize_independent
from vlgraft.data.images import load_image
from vlgraft.data.records import Record
from vlgraft.errors import DataError


def image_input(rec: Record, cache: FeatureCache | None, vision, n_images: int | None = None) -> dict:
    """A record's images (the first ``n_images``; all by default) as cached features ``[k, N, D]`` or
    as pixels ``[k, 3, S, S]`` (nothing for a text-only record); a TOMGPT ``image_text`` as the paired
    text encoder's embedding ``[1, N, D]``, which stands in for image features."""
    if rec.image_text is not None:
        with torch.no_grad():
            return {"image_features": vision.encode_text([rec.image_text]).float()}
    paths = rec.images[:n_images] if n_images is not None else rec.images
    if not paths:
        return {}
    if rec.image_data:  # the images came inside the data (a webdataset sample): decoded from their bytes
        return {"pixel_values": vision.preprocess([load_image(io.BytesIO(b), rec.where, name=p)
                                                   for p, b in zip(paths, rec.image_data)])}
    if cache is not None:
        return {"image_features": torch.stack([cache.load(p) for p in paths])}
    return {"pixel_values": vision.preprocess([load_image(p, rec.where) for p in paths])}


class ConversationDataset(torch.utils.data.Dataset):
    """Pre-tokenised conversations; images come as cached features or as pixels."""

    def __init__(self, records: list[Record], vlm, max_length: int, cache: FeatureCache | None,
                 turns: str = "conversation"):
        self.records = records
        self.cache = cache
        self.vision = vlm.vision
        for r in records:
            check_answers(r)
        self.examples = [tokenizer_for(turns)(r, vlm.llm, vlm.num_image_tokens, max_length) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def num_tokens(self, i: int) -> int:
        return len(self.examples[i]["input_ids"])

    def __getitem__(self, i: int) -> dict:
        return sample(self.records[i], self.examples[i], self.cache, self.vision)


def tokenizer_for(turns: str):
    """The tokenisation of ``data.turns``: one multi-turn chat, or independent question/answer pairs."""
    return tokenize_independent if turns == "independent" else tokenize_conversation


def check_answers(r: Record) -> None:
    blank = next((k for k, (role, text) in enumerate(r.turns) if role == "assistant" and not text.strip()), None)
    if blank is not None:
        raise DataError(f"{r.where}: turn {blank} is an empty answer: it would teach the model to say "
                        "nothing (remove the turn or the record)")


def sample(rec: Record, example: dict, cache: FeatureCache | None, vision) -> dict:
    """A training sample: a record's tokens and its images (cached features or pixels)."""
    ex = dict(example)
    n = ex.pop("n_images", None)
    return {**ex, "image_features": None, "pixel_values": None, **image_input(rec, cache, vision, n)}


def collate(batch: list[dict], pad_id: int, left: bool = False) -> dict:
    """Pad to the longest sequence (right for training, left for generation); images of all samples
    concatenated in order (``[sum k, ...]``), ``image_counts`` saying how many each sample has. A
    sample gives ``[k, ...]`` images, or one image without the leading count."""
    def pad(seqs, value):
        if left:
            return pad_sequence([s.flip(0) for s in seqs], batch_first=True, padding_value=value).flip(1)
        return pad_sequence(seqs, batch_first=True, padding_value=value)

    ids = [b["input_ids"] for b in batch]
    out = {"input_ids": pad(ids, pad_id),
           "attention_mask": pad([torch.ones_like(s) for s in ids], 0)}
    if "labels" in batch[0]:
        out["labels"] = pad([b["labels"] for b in batch], IGNORE)
    if "segment_ids" in batch[0]:  # packed independent turns: positions restart per segment
        out["position_ids"] = pad([b["position_ids"] for b in batch], 0)
        out["segment_ids"] = pad([b["segment_ids"] for b in batch], -1)
    if "document_ids" in batch[0]:  # records packed into one row (data.packing)
        out["document_ids"] = pad([b["document_ids"] for b in batch], -1)
    one = {"image_features": 2, "pixel_values": 3}  # dims of a single image without its leading count
    images = [{k: (b[k].unsqueeze(0) if b[k].dim() == d else b[k]) for k, d in one.items() if b.get(k) is not None}
              for b in batch]
    out["image_counts"] = torch.tensor([next((len(v) for v in im.values()), 0) for im in images])
    out["has_image"] = out["image_counts"] > 0
    for key in one:
        xs = [im[key] for im in images if key in im]
        out[key] = torch.cat(xs) if xs else None
    return out
