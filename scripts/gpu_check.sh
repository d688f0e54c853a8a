#!/usr/bin/env bash
# GPU check of the training and evaluation side (needs no vLLM): the train/eval tests that need no engine, run on
# CUDA, then the MultiArith path (import -> version -> train -> eval with transformers.generate) with a tiny random
# student. Last line JSON (device, peak GPU memory, accuracy, timings).
#   RATIONALE_SHARED_DIR=DIR  the ../shared material (benchmarks/multiarith, splits; teacher-completions/multiarith)
#   .whl/*.whl                wheels of packages the machine lacks, installed to /tmp/site (machines without internet)
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; assert torch.cuda.is_available(), 'no CUDA device'; \
print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider -m "not engine" tests/unit/test_train.py tests/unit/test_eval.py \
  tests/integration/test_train_model.py tests/integration/test_eval_engine.py
work=${GPU_CHECK_DIR:-/tmp/gpu-check}
tiny=$(python3 -c "from pathlib import Path; from tests.tiny_model import build_tiny_model; \
print(build_tiny_model(Path('$work/tiny')))" | tail -n 1)
python3 benchmarks/repro_multiarith.py --student "$tiny" --eval-backend hf --max-steps 60 --limit 30 \
  --work-dir "$work/repro"
