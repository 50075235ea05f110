"""LLaMA-Adapter's visual path: the global image feature projected into the adaptation-prompt space.

``[B, N, Dv] -> [B, 1, Dl]``: the mean of the visual tokens (with ``vision.tokens: cls`` and several
``vision.feature_layers`` merged on channels, that is LLaMA-Adapter's multi-scale global feature)
goes through a linear layer and a layer norm. ``llama_adapter`` with ``multimodal: true`` adds the
result to every adaptation prompt; as a plain connector the LLM sees it as one visual token.
"""

from vlgraft.connectors.git import GITConnector
from vlgraft.registry import CONNECTOR


@CONNECTOR.register("prompt_projection")
class PromptProjection(GITConnector):
    """GIT's linear + layer norm, applied to the mean token."""

    def output_tokens(self, n_in: int) -> int:
        return 1

    def forward(self, x):
        return super().forward(x.mean(1, keepdim=True))
