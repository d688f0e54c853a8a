"""Sampling throughput: our sample stage (`sample.run`: shards, resume bookkeeping, Parquet writes) against a bare
`LLM.generate` on the same prompts and the same SamplingParams, on the same engine, in one run.

Both sides run both Zero-shot-CoT stages (rationales with n samples and per-question seeds, then the greedy answer
stage). Both sides are warmed up at full size first; the order alternates between repetitions and the prefix cache
is reset before each measurement. Throughput is generated (completion) tokens per second of wall time. stdout holds
one line, the JSON result: progress and vLLM's logs go to stderr, and the engine is shut down before it is printed.

    python benchmarks/sample_bench.py --model smollm2-135m-instruct --questions 48 --n 4 --max-tokens 96 --reps 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _sampling  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for the JSON result only


def main(args: argparse.Namespace) -> dict:
    from vllm import SamplingParams

    from builder import sample, tasks
    from builder.prompts import answer_stage_prompt, teacher_prompt
    from builder.recipe import Recipe
    from builder.teachers.vllm import load_engine, shutdown_engine

    recipe = Recipe.model_validate({
        "name": "bench", "work_dir": tempfile.mkdtemp(prefix="sample-bench-"),
        "tasks": {"benchmarks_dir": args.benchmarks_dir,
                  "items": [{"name": "multiarith", "split": "all", "limit": args.questions}]},
        "teacher": {"model": args.model, "engine_args": {"max_model_len": 2048}},
        "sampling": {"n": args.n, "max_tokens": args.max_tokens, "answer_max_tokens": 16, "temperature": 0.7,
                     "shard_size": args.shard_size, "seed": 1},
    })
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    s = recipe.sampling
    answer_prompt = tasks.answer_prompts(recipe.tasks, questions)["multiarith"]
    llm = load_engine(recipe.teacher)
    pc = recipe.prompt
    prompts = [teacher_prompt(q, style=pc.style, fmt=pc.format, trigger=pc.trigger) for q in questions["question"]]
    stage1 = [SamplingParams(n=s.n, seed=sample.sample_seed(s.seed, qid, 0), temperature=s.temperature,
                             top_p=s.top_p, max_tokens=s.max_tokens, stop=s.stop) for qid in questions["qid"]]
    stage2 = SamplingParams(n=1, temperature=0.0, max_tokens=s.answer_max_tokens, stop=["\n"])

    def bare() -> tuple[int, float, list[str]]:
        t0 = time.perf_counter()
        outs = llm.generate(prompts, stage1, use_tqdm=False)
        second = [answer_stage_prompt(p, c.text, answer_prompt)
                  for p, o in zip(prompts, outs, strict=True) for c in o.outputs]
        answers = llm.generate(second, stage2, use_tqdm=False)
        seconds = time.perf_counter() - t0
        tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
        tokens += sum(len(a.outputs[0].token_ids) for a in answers)
        return tokens, seconds, sorted(c.text for o in outs for c in o.outputs)

    def ours(tag: str) -> tuple[int, float, list[str]]:
        fresh = recipe.model_copy(update={"work_dir": str(Path(recipe.work_dir) / tag)})  # a run of its own
        t0 = time.perf_counter()
        samples, stats = sample.run(questions, fresh, engine=llm)
        seconds = time.perf_counter() - t0
        assert stats.new_samples == samples.height
        return int(samples["completion_tokens"].sum()), seconds, sorted(samples["rationale"].to_list())

    # warm-up at full size on both sides: the first batch of a new shape pays for compilation and allocator growth,
    # which would otherwise land on whichever side runs first in rep 0
    bare()
    ours("warmup")
    totals = {"ours": [0, 0.0], "bare": [0, 0.0]}
    same: list[float] = []  # share of identical rationales per rep (vLLM on CPU is not batch-invariant in bf16)
    for rep in range(args.reps):
        order = ("ours", "bare") if rep % 2 == 0 else ("bare", "ours")
        texts = {}
        for name in order:
            llm.reset_prefix_cache()
            tokens, seconds, texts[name] = ours(f"rep{rep}") if name == "ours" else bare()
            totals[name][0] += tokens
            totals[name][1] += seconds
            print(f"rep {rep} {name:>4}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tokens/s",
                  file=sys.stderr, flush=True)
        common = sum((Counter(texts["ours"]) & Counter(texts["bare"])).values())
        same.append(common / max(len(texts["bare"]), 1))
    ours_tps = totals["ours"][0] / totals["ours"][1]
    bare_tps = totals["bare"][0] / totals["bare"][1]
    result = {"ours_tokens_per_s": round(ours_tps, 1), "bare_tokens_per_s": round(bare_tps, 1),
              "ratio": round(ours_tps / bare_tps, 4), "same_rationale_share": round(min(same), 4), "model": args.model,
              "questions": questions.height, "n": s.n, "max_tokens": s.max_tokens, "shard_size": s.shard_size,
              "reps": args.reps, "stages": "rationale + answer (both sides)",
              "ours_tokens": totals["ours"][0], "bare_tokens": totals["bare"][0]}
    print(f"ours {ours_tps:.1f} tokens/s, bare LLM.generate {bare_tps:.1f} tokens/s, ratio {result['ratio']:.3f}",
          file=sys.stderr)
    shutdown_engine(llm)  # its shutdown logs come now, on stderr, not after the JSON line
    return result


if __name__ == "__main__":
    parser = _sampling.parser(__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    _sampling.print_result(main(parser.parse_args()))
