"""The trainer classes and callbacks of `builder.train`, at module level: this module imports transformers and TRL
(hence torch) at the top, so `builder.train` imports it only when it builds a trainer.

Nothing here knows the recipe: `builder.train` passes what each class needs (the checkpoint hook, the log path), so
this module imports nothing of the package and the package's import graph stays acyclic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

# Called once a checkpoint's files are written (main process only): (checkpoint-N folder, N).
CheckpointHook = Callable[[Path, int], None]


class _CheckpointHookMixin:
    """HF's checkpoint, then `on_checkpoint` (rationale-builder's settings file, written last, and the rotation)."""

    def __init__(self, *args: Any, on_checkpoint: CheckpointHook | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_checkpoint = on_checkpoint

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save and self.on_checkpoint is not None:
            step = self.state.global_step
            self.on_checkpoint(Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}", step)


class RationaleSFTTrainer(_CheckpointHookMixin, SFTTrainer):
    """TRL's SFTTrainer (decoder students) with the checkpoint hook and the model's own loss on CPU."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """On CPU the model's own loss (HF Trainer's): TRL's fused LM head has no CPU kernel, and its torch tiles made
        a SmolLM2-135M step 1.33x slower (benchmarks/train_step_bench.py). On GPU, TRL's."""
        if self.args.device.type != "cpu":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return Trainer.compute_loss(self, model, {**inputs, "use_cache": False}, return_outputs, num_items_in_batch)


class RationaleSeq2SeqTrainer(_CheckpointHookMixin, Seq2SeqTrainer):
    """transformers' Seq2SeqTrainer (T5 / Flan-T5 students) with the checkpoint hook."""


def trainer_class(seq2seq: bool) -> type[Trainer]:
    return RationaleSeq2SeqTrainer if seq2seq else RationaleSFTTrainer


class TrainLog(TrainerCallback):
    """One JSON line per logged step of `path`: step, loss, lr, grad_norm, tokens, seconds (this invocation); each
    loss is also appended to `losses`."""

    def __init__(self, path: Path, losses: list[float]) -> None:
        self.path = path
        self.losses = losses
        self.t0 = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.losses.append(float(logs["loss"]))
        line = {"step": state.global_step, "loss": float(logs["loss"]), "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"), "tokens": int(state.num_input_tokens_seen),
                "seconds": round(time.perf_counter() - self.t0, 3)}
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")


class Progress(TrainerCallback):
    """A rich bar on stderr (stdout is the command's result); HF's tqdm is off."""

    def __init__(self) -> None:
        self.bar = self.task = None
        self.t0 = time.perf_counter()
        self.tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich import progress as rp
        from rich.console import Console

        self.bar = rp.Progress(rp.TextColumn("[bold]train"), rp.BarColumn(), rp.MofNCompleteColumn(),
                               rp.TextColumn("loss {task.fields[loss]}"), rp.TextColumn("{task.fields[tps]} tok/s"),
                               rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), console=Console(stderr=True))
        self.bar.start()
        self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, loss="-", tps="-")
        self.tokens0 = int(state.num_input_tokens_seen)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            seen = int(state.num_input_tokens_seen) - self.tokens0
            self.bar.update(self.task, completed=state.global_step,
                            tps=f"{seen / max(time.perf_counter() - self.t0, 1e-9):,.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(self.task, loss=f"{logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.stop()
