"""Where vlgraft keeps converted models, cached features and fetched data."""

import os
from pathlib import Path


def cache_root() -> Path:
    """``$VLGRAFT_CACHE`` or ``~/.cache/vlgraft``."""
    return Path(os.environ.get("VLGRAFT_CACHE", Path.home() / ".cache" / "vlgraft"))


def feature_cache_root() -> Path:
    """``$VLGRAFT_FEATURE_CACHE`` or ``<cache_root>/features``."""
    env = os.environ.get("VLGRAFT_FEATURE_CACHE")
    return Path(env) if env else cache_root() / "features"
