"""P*-tuning: soft prompts (prompt tuning) and per-layer key/value prefixes (prefix tuning).

Parameters are peft's own modules (``PromptEmbedding``, ``PrefixEncoder``); where they enter the
model is vlgraft's, since the VLM builds ``inputs_embeds`` itself: soft prompts are placed before the
sequence by ``VLM.prepare``, prefixes are prepended to every layer's keys/values inside the shared
attention function (same softmax as the sequence), so they work with packed turns and the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlgraft.config import MethodOptions
from vlgraft.errors import ConfigError
from vlgraft.methods.attention import enable as enable_attention_hooks
from vlgraft.methods.base import Method, active_rows, current_context
from vlgraft.models.anatomy import attention_of, decoder_layers, head_dim, num_heads
from vlgraft.options import option
from vlgraft.registry import METHOD


@dataclass
class PromptTuningOptions(MethodOptions):
    num_virtual_tokens: int = option(20, "soft tokens placed before the sequence", min=1)
    init_text: str | None = option(None, "initialise from this text's token embeddings (repeated to length); "
                                   "null: sampled vocabulary embeddings")


@METHOD.register("prompt_tuning")
class PromptTuning(Method):
    Options = PromptTuningOptions

    def apply(self, vlm) -> None:
        from peft import PromptTuningConfig
        from peft.tuners.prompt_tuning import PromptEmbedding

        n = self.cfg.num_virtual_tokens
        emb = vlm.llm.model.get_input_embeddings()
        conf = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, token_dim=vlm.llm.hidden_size,
                                  num_transformer_submodules=1)
        module = PromptEmbedding(conf, emb)
        with torch.no_grad():
            if self.cfg.init_text:
                ids = vlm.llm.tokenizer(self.cfg.init_text, add_special_tokens=False).input_ids
                if not ids:
                    raise ConfigError("prompt_tuning: init_text tokenises to nothing")
                ids = (ids * (n // len(ids) + 1))[:n]
            else:  # sampled vocabulary embeddings: the scale the LM expects
                ids = torch.randint(0, emb.num_embeddings, (n,), generator=torch.Generator().manual_seed(0)).tolist()
            module.embedding.weight.copy_(emb.weight[torch.tensor(ids)].float())
        vlm.add_module("prompt_tuning", module)
        self.module = module

    def prefix_embeds(self, vlm, ctx, batch: int) -> torch.Tensor | None:
        if ctx.base:
            return None
        idx = torch.arange(self.cfg.num_virtual_tokens, device=self.module.embedding.weight.device)
        return self.module(idx).unsqueeze(0).expand(batch, -1, -1)


@dataclass
class PrefixTuningOptions(MethodOptions):
    num_virtual_tokens: int = option(20, "key/value prefix length in every layer", min=1)
    projection: bool = option(False, "reparameterise through an MLP (Li & Liang); off: direct key/value tables")
    encoder_hidden_size: int = option(512, "hidden width of that MLP", min=1)


@METHOD.register("prefix_tuning")
class PrefixTuning(Method):
    Options = PrefixTuningOptions

    def apply(self, vlm) -> None:
        from peft import PrefixTuningConfig
        from peft.tuners.prefix_tuning import PrefixEncoder

        model = vlm.llm.model
        enable_attention_hooks(model)
        layers = list(decoder_layers(model))
        attn0 = attention_of(layers[0])
        self.kv_heads, self.dim = num_heads(attn0)[1], head_dim(attn0)
        conf = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.cfg.num_virtual_tokens,
                                  token_dim=self.kv_heads * self.dim, num_layers=len(layers),
                                  num_transformer_submodules=1, prefix_projection=self.cfg.projection,
                                  encoder_hidden_size=self.cfg.encoder_hidden_size)
        enc = PrefixEncoder(conf)
        if not self.cfg.projection:
            nn.init.normal_(enc.embedding.weight, std=0.02)
        vlm.add_module("prefix_tuning", enc)
        self.encoder = enc
        for i, layer in enumerate(layers):
            attention_of(layer).vlgraft_prefix = self._make(i)

    def _table(self, device) -> torch.Tensor:
        """``[L, 2, Hkv, P, D]`` for the current batch (computed once per forward, shared by the layers)."""
        def compute():
            p = self.cfg.num_virtual_tokens
            out = self.encoder(torch.arange(p, device=device).unsqueeze(0))[0]  # [P, L*2*Hkv*D]
            return out.view(p, -1, 2, self.kv_heads, self.dim).permute(1, 2, 3, 0, 4)
        ctx = current_context()
        return compute() if ctx is None else ctx.memo(self.encoder, compute)

    def _make(self, i: int):
        def prefix(module, query):
            if active_rows() is False:  # a base pass: no prefix
                return None
            t = self._table(query.device)[i]  # [2, Hkv, P, D]
            b = query.shape[0]
            return t[0].unsqueeze(0).expand(b, -1, -1, -1), t[1].unsqueeze(0).expand(b, -1, -1, -1)
        return prefix
