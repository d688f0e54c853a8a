"""Seconds per training step (forward + backward) of the CPU reproduction's student: our trainer's loss beside
TRL's, on the same batches in the same run; last line JSON.

On CPU `RationaleSFTTrainer.compute_loss` is the model's own loss (HF Trainer's): TRL's fused LM head, which never
builds the full logits, has Triton kernels for CUDA only and runs torch tiles in fp32 elsewhere. This prints what
that choice is worth, and that both give the same loss on the same batch. The batches are the first ones
SFTTrainer's dataloader gives for recipes/train/multiarith/smollm2-135m-cpu.yaml (seeded order, batch 8) on the
MultiArith dataset the reproduction imports; both sides run under the same bf16 autocast the recipe asks for.

    python benchmarks/train_step_bench.py [--batches 6] [--repeats 2] [--work-dir runs/train-step-bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from repro_multiarith import RECIPE, ROOT, build_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="Passes over the batches per side (interleaved).")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "train-step-bench"))
    args = parser.parse_args()

    import torch
    from trl import SFTTrainer

    from builder.train import prepare
    from builder.train_recipe import load_train_recipe

    work = Path(args.work_dir).resolve()
    ref, _ = build_version(work)
    recipe = load_train_recipe(RECIPE)
    recipe.dataset.ref, recipe.dataset.root = ref, str(work / "store")
    recipe.output_dir, recipe.resume = str(work / "student"), False
    trainer = prepare(recipe).trainer
    batches = [b for _, b in zip(range(args.batches), trainer.get_train_dataloader(), strict=False)]
    model = trainer.model.train()
    sides = {"ours (model loss)": type(trainer).compute_loss, "trl (fused lm head)": SFTTrainer.compute_loss}

    def step(loss_fn, batch) -> tuple[float, float]:
        n = (batch["labels"][:, 1:] != -100).sum()
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.training.bf16):
            loss = loss_fn(trainer, model, dict(batch), num_items_in_batch=n)
        loss.backward()
        seconds = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        return seconds, float(loss.detach())

    times: dict[str, list[float]] = {name: [] for name in sides}
    first_loss: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in sides.items():
            for i, batch in enumerate(batches):
                seconds, loss = step(fn, batch)
                if i:  # the first batch of a pass warms oneDNN's kernels up
                    times[name].append(seconds)
                first_loss.setdefault(name, loss)
    figures = {name: round(statistics.median(ts), 3) for name, ts in times.items()}
    ours, trl = figures["ours (model loss)"], figures["trl (fused lm head)"]
    for name, median in figures.items():
        print(f"{name:22s} median {median:6.2f} s/step over {len(times[name])} steps, first-batch loss "
              f"{first_loss[name]:.5f}")
    print(f"TRL's fused head / ours: {trl / ours:.2f}x")
    print(json.dumps({"batches": len(batches), "batch_size": recipe.training.per_device_train_batch_size,
                      "seq_len_first": int(batches[0]["input_ids"].shape[1]), "ours_s_per_step": ours,
                      "trl_s_per_step": trl, "slowdown": round(trl / ours, 2),
                      "loss_ours": round(first_loss["ours (model loss)"], 5),
                      "loss_trl": round(first_loss["trl (fused lm head)"], 5)}))


if __name__ == "__main__":
    main()
