"""LLaMA-Adapter's visual path: the global image feature projected into the adaptation-prompt space.

``[B, N, Dv] -> [B, 1, Dl]``: the mean of the visual tokens (with ``vision.tokens: cls`` and several
``vision.feature_layers`` merged on channels, that is LLaMA-Adapter's multi-scale global feature)
goes through a linear layer and a layer norm. ``llama_adapter`` with ``multimodal: true`` adds the
result to every adaptation prompt; as a plain connector the LLM sees it as one visual token.
"""

from torch import nn

from vlgraft.registry import CONNECTOR


@CONNECTOR.register("prompt_projection")
class PromptProjection(nn.Module):
    def __init__(self, cfg, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)

    def output_tokens(self, n_in: int) -> int:
        return 1

    def forward(self, x):
        return self.norm(self.proj(x.mean(1, keepdim=True)))
