"""Where vlgraft keeps converted models and cached features, and how it writes result files."""

import os
from pathlib import Path


def cache_root() -> Path:
    """``$VLGRAFT_CACHE`` or ``~/.cache/vlgraft``."""
    return Path(os.environ.get("VLGRAFT_CACHE", Path.home() / ".cache" / "vlgraft"))


def feature_cache_root() -> Path:
    """``$VLGRAFT_FEATURE_CACHE`` or ``<cache_root>/features``."""
    env = os.environ.get("VLGRAFT_FEATURE_CACHE")
    return Path(env) if env else cache_root() / "features"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename: a reader never sees half a file,
    and an interrupted write leaves the previous version. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
