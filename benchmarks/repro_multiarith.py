"""CPU reproduction of Fine-tune-CoT on MultiArith: import -> version -> train SmolLM2-135M -> eval (180 questions).

    python benchmarks/repro_multiarith.py                       # the full run (see recipes/train/multiarith/)
    python benchmarks/repro_multiarith.py --max-steps 2 --limit 10   # a smoke run of the same path
    python benchmarks/repro_multiarith.py --seed 7 --student-only --work-dir runs/repro-seed7   # seed noise
    python benchmarks/repro_multiarith.py --student DIR --eval-backend hf   # another student; no vLLM (GPU check)

1. Builds a dataset version from ../shared/teacher-completions/multiarith.jsonl (text-davinci-002, the paper's
   teacher): the paper's MultiArith train split, correct rationales only (`rationale build`, import backend).
2. Trains recipes/train/multiarith/smollm2-135m-cpu.yaml on it.
3. Evaluates greedy on the paper's test split beside the untrained model's Zero-shot-CoT accuracy and the paper's
   GPT-2 124M Fine-tune-CoT row.

Prints the figures; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RATIONALE_SHARED_DIR", ROOT.parent / "shared"))
RECIPE = ROOT / "recipes" / "train" / "multiarith" / "smollm2-135m-cpu.yaml"


def build_version(work: Path) -> tuple[str, str]:
    """Import the teacher's completions into a dataset version; returns (ref, content hash)."""
    from builder.bind import parse_recipe
    from builder.build import run

    recipe = parse_recipe({
        "name": "multiarith-davinci",
        "description": "text-davinci-002 Zero-shot-CoT rationales for the paper's MultiArith train split.",
        "work_dir": str(work / "runs"),
        "tasks": {"benchmarks_dir": str(SHARED / "benchmarks"), "items": [{"name": "multiarith", "split": "train"}]},
        "teacher": {"backend": "import", "model": "text-davinci-002",
                    "import_path": str(SHARED / "teacher-completions" / "multiarith.jsonl")},
        "sampling": {"n": 1},
        "curation": {"keep_correct_only": True},
        "store": {"root": str(work / "store")},
    }, "repro_multiarith build recipe", work)
    summary = run(recipe)
    return f"multiarith-davinci@{summary.version}", summary.content_hash


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def _peak_gpu_mib() -> float | None:
    """Peak memory the run took on the GPU: proof that training and eval ran there."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "repro-multiarith"))
    parser.add_argument("--max-steps", type=int, default=None, help="Override the recipe's steps (smoke runs).")
    parser.add_argument("--limit", type=int, default=None, help="First N test questions (smoke runs).")
    parser.add_argument("--student", default=None, help="Another student model (path or name) than the recipe's.")
    parser.add_argument("--seed", type=int, default=None,
                        help="Another training seed than the recipe's (data order, init): to see the seed noise.")
    parser.add_argument("--student-only", action="store_true",
                        help="Skip the untrained model's Zero-shot-CoT baseline (it does not depend on the seed).")
    parser.add_argument("--eval-backend", choices=["vllm", "hf"], default=None,
                        help="Evaluate with vLLM or transformers.generate (machines without vLLM).")
    args = parser.parse_args()

    from builder.train import main as train
    from builder.train_recipe import load_train_recipe

    work = Path(args.work_dir).resolve()
    t0 = time.perf_counter()
    ref, digest = build_version(work)
    t_build = time.perf_counter() - t0

    recipe = load_train_recipe(RECIPE)
    recipe.dataset.ref, recipe.dataset.root = ref, str(work / "store")
    recipe.output_dir = str(work / "student")
    recipe.eval.benchmarks_dir = str(SHARED / "benchmarks")
    recipe.eval.limit = args.limit
    if args.max_steps:
        recipe.training.max_steps = args.max_steps
    if args.seed is not None:
        recipe.training.seed = args.seed
    if args.student_only:
        recipe.eval.baselines = []
    if args.student:
        recipe.model.model_name_or_path = args.student
    if args.eval_backend:
        recipe.eval.backend = args.eval_backend
    result = train(recipe)
    total = time.perf_counter() - t0

    rows = {r["mode"]: r for r in result.eval_report["results"] if r["decoding"] == "greedy"}
    student, baseline = rows["student"], rows.get("zero_shot_cot")
    figures = {
        "student": recipe.model.model_name_or_path, "device": _device_name(),
        "dataset": ref, "content_hash": digest, "seed": recipe.training.seed, "train_rows": None,
        "steps": result.steps,
        "student_accuracy_pct": student["accuracy_pct"], "student_correct": student["correct"], "n": student["n"],
        "zero_shot_cot_accuracy_pct": baseline["accuracy_pct"] if baseline else None,
        "paper_gpt2_124m_pct": student["paper_pct"],
        "build_s": round(t_build, 1), "train_s": round(result.seconds, 1),
        "train_tokens_per_s": round(result.tokens_per_s, 1),
        "eval_s": round(total - t_build - result.seconds, 1), "total_s": round(total, 1),
        "peak_gpu_mib": _peak_gpu_mib(),
    }
    from builder.store import read_version

    figures["train_rows"] = read_version(ref, work / "store")[0].height
    print(f"dataset {ref} ({figures['train_rows']} rows, content hash {digest[:12]})")
    print(f"{recipe.model.model_name_or_path} Fine-tune-CoT student: {student['accuracy_pct']:.2f}% "
          f"({student['correct']}/{student['n']}) on MultiArith test, greedy")
    if baseline:
        print(f"same model, Zero-shot-CoT (untrained): {baseline['accuracy_pct']:.2f}%")
    print(f"paper, GPT-2 124M Fine-tune-CoT: {student['paper_pct']}%")
    print(f"time: build {t_build:.0f} s, train {result.seconds:.0f} s ({result.steps} steps), "
          f"eval {figures['eval_s']:.0f} s, total {total:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
