"""The language-model side: any ``AutoModelForCausalLM`` plus its tokenizer and chat template."""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from vlgraft.config import LLMOptions
from vlgraft.errors import VlgraftError
from vlgraft.registry import LLM

# Used when a tokenizer has no chat template (e.g. GPT-2): plain "User:/Assistant:" turns.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class LanguageModel(nn.Module):
    """Wraps a causal LM: ``embed(ids)``, ``hidden_size``, chat rendering and the turn-end tokens."""

    def __init__(self, model, tokenizer, cfg: LLMOptions):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        if tokenizer.chat_template is None:
            tokenizer.chat_template = FALLBACK_TEMPLATE
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.stop_token_ids = self._find_stop_tokens()

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def hidden_states(self, embeds: torch.Tensor, attention_mask=None, position_ids=None, cache=None) -> torch.Tensor:
        """The decoder's last hidden states ``[B, T, D]`` for input embeddings ``[B, T, D]``, without the
        LM head; with ``cache`` (a transformers ``Cache``) the keys and values are appended to it."""
        kw = {self.cache_kwarg: cache} if cache is not None else {}
        out = self.model.base_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                    use_cache=cache is not None, **kw)
        return out.last_hidden_state

    @functools.cached_property
    def cache_kwarg(self) -> str:
        """``cache`` where the model takes it (transformers >= 5.2x), else the older ``past_key_values``."""
        return "cache" if "cache" in inspect.signature(self.model.base_model.forward).parameters else "past_key_values"

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on hidden states ``[..., D] -> [..., V]`` (with Gemma's final soft-capping)."""
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def messages(self, turns: list[tuple[str, str]]) -> list[dict]:
        """(role, text) turns -> chat messages, with the recipe's system prompt first when set."""
        msgs = [{"role": r, "content": t} for r, t in turns]
        if self.cfg.system_prompt is not None and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return msgs

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _find_stop_tokens(self) -> list[int]:
        """The token(s) that end an assistant turn: read off the template, plus EOS."""
        marker = "XQ7marker"
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
        text = self.render(msgs)
        after = text[text.index(marker) + len(marker):]
        ids = []
        if after:
            first = self.tokenizer(after, add_special_tokens=False).input_ids[:1]
            if first and first[0] in self.tokenizer.all_special_ids:
                ids += first
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids


def load_hf_llm(path_or_id: str, cfg: LLMOptions) -> LanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path_or_id)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=_DTYPES[cfg.dtype])
    except OSError as e:
        raise VlgraftError(f"language model '{path_or_id}' could not be loaded: {str(e).splitlines()[0]}") from None
    model.config.use_cache = True
    return LanguageModel(model, tok, cfg)


@LLM.register("hf", options=LLMOptions, prefix=True)
def hf_llm(cfg: LLMOptions) -> LanguageModel:
    """Any ``AutoModelForCausalLM`` by hub id or local folder: ``name: hf:<id or dir>``."""
    return load_hf_llm(cfg.name[len("hf:"):], cfg)


def build_llm(cfg: LLMOptions) -> LanguageModel:
    return LLM.get(cfg.name)(cfg)
