"""The multi-device path without a GPU: `accelerate launch` with 2 processes on this CPU (torch.distributed over gloo,
recipes/accelerate/cpu-2proc.yaml) trains the tiny model through `python -m builder.train`, and its loss curve is the
one process's curve with the same global batch.

2 processes x per-device batch b see, step by step, the same global batches as 1 process with batch b and
gradient_accumulation_steps 2: accelerate's seeded sampler draws one permutation (same seed) and deals its
micro-batches in turn, rank 0 the even ones, rank 1 the odd ones, which the single process accumulates in the same
order. The loss of a step is token-weighted over both micro-batches on either side (transformers'
num_items_in_batch, summed over ranks with average_tokens_across_devices), so the curves agree up to float
summation order (gloo all-reduce vs local accumulation): measured max relative difference 0 to ~1e-6 over 6 steps on
this machine; the test allows 1e-3, far below the step-to-step change of the loss (several %).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, build_version

TOLERANCE = 1e-3  # relative, per step; see the module docstring for what was measured


def _recipe(path: Path, store: Path, model: Path, out: Path, batch: int, accum: int) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "tiny-ddp", "dataset": {"ref": "demo@v1", "root": str(store)},
        "model": {"model_name_or_path": str(model)},
        "training": {"learning_rate": 3e-3, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accum,
                     "max_length": 256, "max_steps": 6, "save_steps": 3, "seed": 11},
        "output_dir": str(out), "eval": {"enabled": False}}))
    return path


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_cpu_processes_follow_the_one_process_loss_curve(tmp_path: Path, tiny_model_dir: Path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is not installed next to this Python"
    store = tmp_path / "store"
    build_version(store)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}

    two = _recipe(tmp_path / "two.yaml", store, tiny_model_dir, tmp_path / "two", batch=2, accum=1)
    config = ROOT / "recipes" / "accelerate" / "cpu-2proc.yaml"
    proc = subprocess.run([accelerate, "launch", "--config_file", str(config),
                           "-m", "builder.train", str(two), "--no-eval", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=480)  # hang guard
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])  # one report: the main process's
    assert report["steps"] == 6 and sum(line.startswith("{") for line in proc.stdout.splitlines()) == 1
    assert "world_size" in (tmp_path / "two" / "checkpoints" / "checkpoint-6" / "rationale_settings.json").read_text()
    settings = json.loads((tmp_path / "two" / "checkpoints" / "checkpoint-6" / "rationale_settings.json").read_text())
    assert settings["world_size"] == 2

    one = _recipe(tmp_path / "one.yaml", store, tiny_model_dir, tmp_path / "one", batch=2, accum=2)
    proc = subprocess.run([sys.executable, "-m", "builder.train", str(one), "--no-eval"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=480)  # hang guard
    assert proc.returncode == 0, proc.stderr[-4000:]

    got, want = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert len(got) == len(want) == 6
    assert want[-1] < want[0]  # it trains
    worst = max(abs(g - w) / abs(w) for g, w in zip(got, want, strict=True))
    assert worst <= TOLERANCE, (worst, got, want)


PROBE = """
import os
from transformers import TrainingArguments
args = TrainingArguments(output_dir=os.environ["PROBE_OUT"], use_cpu=True, report_to=[])
state = args.distributed_state
with open(f"{os.environ['PROBE_OUT']}.{state.process_index}", "w") as fh:  # one file each: stdout interleaves
    fh.write(f"{state.process_index} {state.num_processes} {state.distributed_type.value} {state.backend}")
"""


def test_cpu_2proc_launches_two_gloo_processes(tmp_path: Path):
    """`accelerate launch --config_file cpu-2proc.yaml` starts 2 processes that form one gloo group on the CPU,
    given TrainingArguments(use_cpu=True) (what builder.train passes on a machine without CUDA)."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROBE_OUT": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(ROOT / "recipes" / "accelerate" / "cpu-2proc.yaml"), str(script)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(p.read_text().split() for p in tmp_path.glob("out.*"))
    assert lines == [["0", "2", "MULTI_CPU", "gloo"], ["1", "2", "MULTI_CPU", "gloo"]], proc.stdout
