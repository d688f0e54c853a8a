"""`rationale train` SIGKILLed after a step and inside a checkpoint write, then resumed: equal to an unkilled run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, tiny_train_recipe


def _train_cli(recipe_path: Path, kill_at: tuple[str, int] | None = None) -> tuple[int, str]:
    """`rationale train RECIPE --no-eval` in a fresh interpreter and its own session; with `kill_at`, under
    tests/kill_points.py, which SIGKILLs the whole process group at that point."""
    import os
    import signal
    import subprocess
    import sys

    launcher = ["-m", "builder"] if kill_at is None else [str(ROOT / "tests" / "kill_points.py"), kill_at[0],
                                                            str(kill_at[1]), "--"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, *launcher, "train", str(recipe_path), "--no-eval"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"rationale train did not finish in 300 s:\n{err[-3000:]}")
    if kill_at is not None:
        assert proc.returncode == -signal.SIGKILL and "kill_points: SIGKILL" in err, \
            f"the run did not die at {kill_at}:\n{err[-3000:]}"
    else:
        assert proc.returncode == 0, err[-3000:]
    return proc.returncode, err


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_after_a_step_and_inside_the_checkpoint_write_then_resume_equals_an_uninterrupted_run(
        tmp_path: Path, tiny_store: Path, tiny_model_dir: Path):
    """Real kills of `rationale train` (tests/kill_points.py): after step 4 (the last checkpoint is step 3), then,
    resumed, inside step 6's checkpoint write (HF's files are in checkpoint-6/, our settings file is not); resumed
    again to the end. Losses, learning rates, train_log and the final weights equal those of an uninterrupted run
    of the same recipe: the same steps on the same batches (another data order gives other losses)."""
    import torch
    from safetensors.torch import load_file

    recipes = {}
    for name in ("killed", "reference"):
        path = tmp_path / f"{name}.yaml"
        data = tiny_train_recipe(tmp_path, tiny_store, tiny_model_dir, output_dir=str(tmp_path / name),
                                 training={"gradient_accumulation_steps": 2})
        path.write_text(yaml.safe_dump(data))
        recipes[name] = path
    out, ref = tmp_path / "killed", tmp_path / "reference"
    ckpts = out / "checkpoints"

    def names() -> list[str]:
        return sorted(p.name for p in ckpts.glob("checkpoint-*"))

    _train_cli(recipes["killed"], ("train_step", 4))
    assert [x["step"] for x in _log(out)] == [1, 2, 3, 4]  # step 4 was logged, its checkpoint (step 6) not due
    assert names() == ["checkpoint-3"]

    _train_cli(recipes["killed"], ("checkpoint_partial", 6))
    assert [x["step"] for x in _log(out)] == [1, 2, 3, 4, 5, 6]  # steps 4-6 redone from step 3, logged once
    assert names() == ["checkpoint-3", "checkpoint-6"]
    assert (ckpts / "checkpoint-6" / "optimizer.pt").is_file()  # HF's part of the checkpoint is there ...
    assert not (ckpts / "checkpoint-6" / "rationale_settings.json").exists()  # ... ours, written last, is not
    assert not (out / "config.json").exists()  # the model is saved only after the last checkpoint

    _train_cli(recipes["killed"])  # resumes from checkpoint-3 again: the partial checkpoint is never read
    _train_cli(recipes["reference"])

    assert names() == ["checkpoint-3", "checkpoint-6"]
    assert all((ckpts / n / "rationale_settings.json").is_file() for n in names())
    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    same = ("step", "loss", "lr", "grad_norm")  # tokens and seconds count each invocation's own work
    assert [{k: x[k] for k in same} for x in _log(out)] == [{k: x[k] for k in same} for x in _log(ref)]
