"""Text generators for ``vlgraft curate``: the bundled (or any ``hf:``) LLM, or an OpenAI-compatible endpoint.

A generator maps a batch of chat-message lists to one completion each. ``seed`` makes a sampled
batch reproducible; ``temperature`` 0 is greedy.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from vlgraft.errors import VlgraftError


class Generator(Protocol):
    name: str  # recorded in the report and checked on resume

    def generate(self, prompts: list[list[dict]], max_new_tokens: int, temperature: float,
                 seed: int) -> list[str]: ...


class LocalGenerator:
    """A causal LM loaded through :func:`vlgraft.models.llm.build_llm` (loaded on first use), batched
    generation with its own chat template, left padding."""

    def __init__(self, model: str = "smollm2-135m-instruct", device: str | None = None,
                 repetition_penalty: float = 1.0):
        self.model_name = model
        self.name = f"local:{model}"
        self.device = device
        self.repetition_penalty = repetition_penalty
        self.llm = None

    def _load(self):
        from vlgraft.config import LLMOptions, options_for
        from vlgraft.inference import default_device
        from vlgraft.models.llm import build_llm

        dev = default_device(self.device)
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
        self.llm = build_llm(options_for(LLMOptions, self.model_name, dtype=dtype))
        self.llm.model.to(dev).eval()
        self.llm.tokenizer.padding_side = "left"
        return self.llm

    def generate(self, prompts: list[list[dict]], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        import torch

        llm = self.llm or self._load()
        tok = llm.tokenizer
        texts = [llm.render(m, add_generation_prompt=True) for m in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(llm.model.device)
        sample = ({"do_sample": True, "temperature": temperature, "top_p": 0.9} if temperature > 0
                  else {"do_sample": False})
        torch.manual_seed(seed)
        with torch.no_grad():
            out = llm.model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=llm.stop_token_ids,
                                     pad_token_id=tok.pad_token_id, repetition_penalty=self.repetition_penalty,
                                     **sample)
        return [tok.decode(row, skip_special_tokens=True).strip() for row in out[:, enc.input_ids.shape[1]:]]


class OpenAIGenerator:
    """``POST {base_url}/chat/completions`` (OpenAI, vLLM, llama.cpp server, Ollama, ...), ``workers``
    requests at a time; 429 / 5xx / timeouts are retried ``retries`` times with backoff."""

    def __init__(self, model: str, base_url: str = "https://api.openai.com/v1", api_key: str | None = None,
                 timeout: float = 120.0, retries: int = 3, workers: int = 4, backoff: float = 2.0):
        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.name = f"openai:{model}@{base_url.rstrip('/')}"
        self.api_key = api_key
        self.timeout, self.retries, self.workers, self.backoff = timeout, retries, workers, backoff

    @classmethod
    def from_env(cls, model: str, base_url: str, key_env: str = "OPENAI_API_KEY", **kw) -> OpenAIGenerator:
        return cls(model, base_url, os.environ.get(key_env) or None, **kw)

    def _post(self, messages: list[dict], max_new_tokens: int, temperature: float, seed: int) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "max_tokens": max_new_tokens,
                           "temperature": temperature, "seed": seed}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    data = json.loads(r.read())
                break
            except urllib.error.HTTPError as e:
                if e.code in (429, 500, 502, 503, 504) and not last:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                detail = " ".join(e.read()[:300].decode(errors="replace").split())
                raise VlgraftError(f"{self.url}: HTTP {e.code} for model {self.model!r}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if not last:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                reason = getattr(e, "reason", e)
                raise VlgraftError(f"{self.url}: no reply ({reason}) after {self.retries + 1} tries") from None
            except json.JSONDecodeError:
                raise VlgraftError(f"{self.url}: the reply is not JSON") from None
        try:
            return (data["choices"][0]["message"]["content"] or "").strip()
        except (KeyError, IndexError, TypeError):
            raise VlgraftError(f"{self.url}: unexpected reply, no choices[0].message.content: "
                               f"{json.dumps(data)[:200]}") from None

    def generate(self, prompts: list[list[dict]], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            return list(ex.map(lambda im: self._post(im[1], max_new_tokens, temperature, seed + im[0]),
                               enumerate(prompts)))
