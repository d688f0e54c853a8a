"""Store benchmark: writing and verifying one dataset version, ours (bounded memory) and today's code on the same rows.

Data: --rows rows of the `rows` table (default 5,000,000, about 2 GB of text in memory) in the Fine-tune-CoT
format of `builder.prompts`: 8 samples per question, 16-hex qids (as `builder.tasks` makes them), four tasks,
arithmetic word problems and rationales with question-specific names, objects and numbers. They are written
once as Parquet parts (as a Ray cluster leaves them); each side runs in its own subprocess, and its peak RSS
is that process's own (VmHWM):
- ours: `store.write_version(store.Parts(part_files, "rows"))` (the parts read in pyarrow batches, only the
  columns each pass needs; range-partitioned sorted buckets; one pass for shards, digest and card), then
  `store.verify` (each file and row group as it streams);
- baseline: `builder/store.py` and `builder/card.py` of 926bc94 (before this change) imported as modules:
  `pl.read_parquet(parts)`, `write_version(frame)`, `verify` (the whole table and its NDJSON in memory). It needs
  about 3.4 GB per million rows (~17 GB at 5M), so it is skipped above --baseline-max-rows (the output says so).
Both must give the same content hash.

Polars sizes its thread pool from the CPUs at import (POLARS_MAX_THREADS); the children inherit the environment
as it is, and each side's line records the pool size it ran with.

    python benchmarks/store_bench.py [--rows 5000000] [--skip-baseline] [--baseline-max-rows 2000000]

Last line: JSON (rows, text size, seconds and peak RSS of each side's write and verify, same_content_hash).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BASELINE_COMMIT = "926bc94"
TASKS = ("addsub", "multiarith", "svamp", "single_eq")
PER_QUESTION = 8
PART_ROWS = 250_000
NAMES = ["Megan", "Bianca", "Paige", "Sam", "Jason", "Kelly", "Haley", "Sandy", "Omar", "Priya", "Lucas", "Chen"]
OBJECTS = ["apples", "marbles", "stickers", "cupcakes", "balloons", "pencils", "books", "peaches", "cards", "coins"]
RECIPE = {"name": "bench", "tasks": {"items": [{"name": t, "source": "paper"} for t in TASKS]},
          "teacher": {"model": "bench-teacher", "backend": "vllm", "revision": None},
          "sampling": {"n": PER_QUESTION, "temperature": 0.7, "top_p": 1.0, "max_tokens": 256, "seed": 0},
          "store": {"root": "store", "shard_rows": 100_000}}


def rows_part(start: int, n: int) -> pl.DataFrame:
    """Rows [start, start + n) of the synthetic table: a valid `rows` frame."""
    from builder.prompts import student_completion_expr, student_messages_expr, student_prompt_expr
    from builder.schemas import validate

    i = np.arange(start, start + n)
    q = i // PER_QUESTION
    rng = np.random.default_rng(start)
    a, b = (q * 7919) % 97 + 2, (q * 104729) % 89 + 3
    first = np.unique(q)
    qid = dict(zip(first, (f"{h:016x}" for h in pl.Series(first).hash(11).to_list()), strict=True))
    frame = pl.DataFrame({
        "qid": [qid[x] for x in q], "sample_idx": (i % PER_QUESTION).astype(np.int32), "task": np.array(TASKS)[q % 4],
        "name": np.array(NAMES)[q % len(NAMES)], "obj": np.array(OBJECTS)[(q // 3) % len(OBJECTS)], "a": a, "b": b,
        "step": rng.integers(1, 5, n), "seed": i.astype(np.int64),
    })
    question = pl.format("{} has {} {} and gets {} more. How many {} does {} have now?", "name", "a", "obj", "b",
                         "obj", "name")
    rationale = pl.format("{} starts with {} {}. Then {} more {} arrive, so we add them in step {}: {} + {} = {}. "
                          "So {} has {} {} now.", "name", "a", "obj", "b", "obj", "step", "a", "b",
                          pl.col("a") + pl.col("b"), "name", pl.col("a") + pl.col("b"), "obj")
    frame = frame.with_columns(question.alias("question"), rationale.alias("rationale"),
                               reasoning=pl.lit(None, pl.String), answer=(pl.col("a") + pl.col("b")).cast(pl.String))
    frame = frame.with_columns(
        gold=pl.col("answer"), prompt=student_prompt_expr(pl.col("question")),
        completion=student_completion_expr(pl.col("rationale"), pl.col("answer")),
        messages=student_messages_expr(pl.col("question"), pl.col("rationale"), pl.col("answer"), pl.col("reasoning")),
        teacher=pl.lit("bench-teacher"))
    return validate(frame, "rows", where="synthetic rows")


def peak_rss_mb() -> int:
    """This process's peak RSS: VmHWM, which exec resets. (ru_maxrss is not reset by exec on Linux: a child forked
    from the parent after it synthesised the parts reported the parent's 1.3 GB peak as its own.)"""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _module(name: str, path: str) -> object:
    """`path` of the baseline commit, imported as module `name`."""
    text = subprocess.run(["git", "-C", str(REPO), "show", f"{BASELINE_COMMIT}:{path}"], capture_output=True,
                          text=True, check=True).stdout
    file = Path(tempfile.mkdtemp()) / Path(path).name
    file.write_text(text)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _child(args: argparse.Namespace) -> None:
    """One measured side (a subprocess): write and verify a version; print its JSON line."""
    parts = str(Path(args.data) / "parts" / "*.parquet")
    root = Path(args.data) / args.child
    t = time.perf_counter()
    if args.child == "ours":
        from builder import store

        files = sorted((Path(args.data) / "parts").glob("*.parquet"))
        info = store.write_version(store.Parts(files, "rows"), root=root, name="bench", recipe=RECIPE,
                                   tool_version="bench")
    else:
        card = _module("builder.card", "builder/card.py")  # the baseline store imports it when writing
        card.TEMPLATE = REPO / "builder" / "templates" / "dataset_card.md.j2"
        store = _module("baseline_store", "builder/store.py")
        info = store.write_version(pl.read_parquet(parts), root=root, name="bench", recipe=RECIPE,
                                   tool_version="bench")
    write_s = time.perf_counter() - t
    write_rss = peak_rss_mb()
    t = time.perf_counter()
    manifest = store.verify(info.path)
    verify_s = time.perf_counter() - t
    assert manifest["content_hash"] == info.content_hash
    print(json.dumps({"side": args.child, "write_s": round(write_s, 1), "verify_s": round(verify_s, 1),
                      "write_peak_rss_mb": write_rss, "peak_rss_mb": peak_rss_mb(),
                      "polars_threads": pl.thread_pool_size(),
                      "content_hash": info.content_hash, "files": len(manifest["files"])}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--skip-baseline", action="store_true", help="only ours (the baseline needs ~5x the text in RAM)")
    ap.add_argument("--baseline-max-rows", type=int, default=2_000_000,
                    help="skip the baseline above this many rows (it needs ~3.4 GB per million rows)")
    ap.add_argument("--child", choices=["ours", "baseline"])
    ap.add_argument("--data")
    args = ap.parse_args()
    if args.child:
        return _child(args)
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks") as tmp:
        t = time.perf_counter()
        (Path(tmp) / "parts").mkdir()
        in_memory = 0
        for k, start in enumerate(range(0, args.rows, PART_ROWS)):
            part = rows_part(start, min(PART_ROWS, args.rows - start))
            in_memory += part.estimated_size()
            part = part.sample(fraction=1.0, shuffle=True, seed=k)
            part.write_parquet(Path(tmp) / "parts" / f"part-{k:05d}.parquet")
        print(f"synthesised {args.rows:,} rows ({in_memory / 2**30:.2f} GiB in memory) in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        runs = {}
        baseline = not args.skip_baseline and args.rows <= args.baseline_max_rows
        if not args.skip_baseline and not baseline:
            print(f"baseline skipped: {args.rows:,} rows > --baseline-max-rows {args.baseline_max_rows:,} (926bc94 "
                  f"holds the whole table and its NDJSON: ~{3.4 * args.rows / 1e6:.0f} GB)", flush=True)
        for side in ("ours",) + (("baseline",) if baseline else ()):
            done = subprocess.run([sys.executable, __file__, "--child", side, "--data", tmp], capture_output=True,
                                  text=True, check=False)
            if done.returncode:
                sys.exit(f"{side} failed:\n{done.stderr[-4000:]}")
            runs[side] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{side}: {runs[side]}", flush=True)
    ours, base = runs["ours"], runs.get("baseline")
    print(json.dumps({
        "rows": args.rows, "rows_gib_in_memory": round(in_memory / 2**30, 2),
        "ours_write_s": ours["write_s"], "ours_verify_s": ours["verify_s"], "ours_peak_rss_mb": ours["peak_rss_mb"],
        "baseline_write_s": base and base["write_s"], "baseline_verify_s": base and base["verify_s"],
        "baseline_peak_rss_mb": base and base["peak_rss_mb"], "baseline_ran": base is not None,
        "polars_threads": ours["polars_threads"],
        "same_content_hash": base and base["content_hash"] == ours["content_hash"],
        "content_hash": ours["content_hash"]}))


if __name__ == "__main__":
    main()
