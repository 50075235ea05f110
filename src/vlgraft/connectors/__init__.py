"""Connectors map vision features ``[B, N, Dv]`` into the LLM's embedding space ``[B, M, Dl]``; one
file each, registered by name (``connectors/base.py`` is the protocol)."""

from vlgraft.connectors import git, linear, mlp, patch_mining, pool, prompt_projection, resampler  # noqa: F401
from vlgraft.connectors.base import Connector, build_connector  # noqa: F401
