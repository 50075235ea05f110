"""Chat with a trained model about images: one question, or an interactive multi-turn session.

Tokens stream as they are generated; each turn's generation uses the KV cache. The images are
encoded once per session and their visual tokens reused on every turn. With describe-first
(``data.describe_first``) the first question is asked behind the model's own description of the
images: the exchange ``data.describe`` builds for evaluation too.
"""

from __future__ import annotations

import sys

import torch
from transformers import TextStreamer

from vlgraft.config import Recipe, inference_precision
from vlgraft.data.conversation import tokenize_prompt
from vlgraft.data.describe import describe_prompt, with_description
from vlgraft.data.images import load_image
from vlgraft.data.records import IMAGE_PLACEHOLDER, Record
from vlgraft.errors import VlgraftError
from vlgraft.inference import autocast, device_of


class ChatSession:
    """``describe_first``: a request (the recipe's ``data.describe_first``); the model first answers it
    about the images, and that exchange opens the conversation (docs/DESCRIBE.md)."""

    def __init__(self, vlm, image: str | list[str] | None = None, precision: str = "bf16", max_new_tokens: int = 128,
                 describe_first: str | None = None, describe_max_new_tokens: int = 32):
        self.vlm = vlm
        self.device = device_of(vlm)
        self.precision = precision
        self.max_new_tokens = max_new_tokens
        self.describe_first, self.describe_max_new_tokens = describe_first, describe_max_new_tokens
        self.description: str | None = None
        self.turns: list[tuple[str, str]] = []
        self.features = None
        self.images = [image] if isinstance(image, str) else list(image or [])
        if self.images:  # several images: one placeholder each, in order, before the first question
            pixels = vlm.vision.preprocess([load_image(p, "--image") for p in self.images]).to(self.device)
            with torch.no_grad(), autocast(self.device, precision):
                self.features = vlm.encode_images(pixels)

    @classmethod
    def from_recipe(cls, vlm, recipe: Recipe, image: str | list[str] | None = None) -> ChatSession:
        """A session with the recipe's chat settings (``chat``, ``eval.precision``, ``data.describe_first``)."""
        return cls(vlm, image, precision=inference_precision(recipe), max_new_tokens=recipe.chat.max_new_tokens,
                   describe_first=recipe.data.describe_first,
                   describe_max_new_tokens=recipe.eval.describe_max_new_tokens)

    def ask(self, question: str, stream=...) -> str:
        """The answer to ``question``, streamed to ``stream`` as it is generated (default: the current
        ``sys.stdout``, looked up now, not when the module was imported; None: not streamed)."""
        stream = sys.stdout if stream is ... else stream
        if not question.strip():
            raise VlgraftError("the question is empty")
        if not self.turns and self.features is not None:
            first = Record("chat", [("user", f"{IMAGE_PLACEHOLDER}\n" * len(self.images) + question)],
                           images=self.images, source="--image")
            if self.describe_first:  # the exchange describe-first makes, decoded on the images encoded above
                self.turns = describe_prompt(first, self.describe_first)
                self.description = self._generate(self.describe_max_new_tokens, None)
                first = with_description(first, self.describe_first, self.description)
                print(f"(described first: {self.description})", file=sys.stderr)
            self.turns = list(first.turns)
        else:
            self.turns.append(("user", question))
        answer = self._generate(self.max_new_tokens, stream)
        self.turns.append(("assistant", answer))
        return answer

    def _generate(self, max_new_tokens: int, stream) -> str:
        ids = tokenize_prompt(self.turns, self.vlm.llm, self.vlm.num_image_tokens).unsqueeze(0).to(self.device)
        tok = self.vlm.llm.tokenizer
        streamer = _Streamer(tok, stream) if stream is not None else None
        with autocast(self.device, self.precision):
            counts = torch.tensor([len(self.images)], device=self.device)
            new = self.vlm.generate(ids, torch.ones_like(ids), image_features=self.features, image_counts=counts,
                                    max_new_tokens=max_new_tokens, streamer=streamer)
        return tok.decode(new[0], skip_special_tokens=True).strip()


class _Streamer(TextStreamer):
    def __init__(self, tok, stream):
        super().__init__(tok, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False):
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


def interactive(session: ChatSession) -> None:
    print("Multi-turn chat. Empty line or Ctrl-D ends.", file=sys.stderr)
    while True:
        try:
            q = input("you> ").strip()
        except EOFError:
            break
        if not q:
            break
        sys.stdout.write("model> ")
        session.ask(q)
