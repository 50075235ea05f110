"""Training dataset and collation."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from vlgraft.data.cache import FeatureCache
from vlgraft.data.conversation import IGNORE, tokenize_conversation, tokenize_independent
from vlgraft.data.images import load_image
from vlgraft.data.records import Record


def image_input(rec: Record, cache: FeatureCache | None, vision) -> dict:
    """A record's image as cached features or as pixels (nothing for a text-only record); a TOMGPT
    ``image_text`` as the paired text encoder's embedding, which stands in for image features."""
    if rec.image_text is not None:
        with torch.no_grad():
            return {"image_features": vision.encode_text([rec.image_text])[0].float()}
    if rec.image is None:
        return {}
    if cache is not None:
        return {"image_features": cache.load(rec.image)}
    return {"pixel_values": vision.preprocess([load_image(rec.image, rec.where)])[0]}


class ConversationDataset(torch.utils.data.Dataset):
    """Pre-tokenised conversations; images come as cached features or as pixels."""

    def __init__(self, records: list[Record], vlm, max_length: int, cache: FeatureCache | None,
                 turns: str = "conversation"):
        self.records = records
        self.cache = cache
        self.vision = vlm.vision
        tok = tokenize_independent if turns == "independent" else tokenize_conversation
        self.examples = [tok(r, vlm.llm, vlm.num_image_tokens, max_length) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def num_tokens(self, i: int) -> int:
        return len(self.examples[i]["input_ids"])

    def __getitem__(self, i: int) -> dict:
        rec, ex = self.records[i], self.examples[i]
        return {**ex, "image_features": None, "pixel_values": None, **image_input(rec, self.cache, self.vision)}


def collate(batch: list[dict], pad_id: int, left: bool = False) -> dict:
    """Pad to the longest sequence (right for training, left for generation); stack images in order."""
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
    out["has_image"] = torch.tensor([b.get("image_features") is not None or b.get("pixel_values") is not None
                                     for b in batch])
    for key in ("image_features", "pixel_values"):
        xs = [b[key] for b in batch if b.get(key) is not None]
        out[key] = torch.stack(xs) if xs else None
    return out
