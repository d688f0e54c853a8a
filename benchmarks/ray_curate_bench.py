"""Curation on Ray vs the local path: rows/s and the driver's peak RSS, on the same graded rows in one run.

Data: `tests.helpers.graded_rows` = curate_bench's synthetic arithmetic rationales (8 samples per question,
planted near-duplicate copies, 15% wrong answers) spread over four tasks, plus empty, truncated and unanswered rows
and rationales copied across questions (so global-scope dedup has something to find). The graded table is written
once as parquet; each run is a fresh subprocess (so `ru_maxrss` is that run's own peak):
- local: reads the parquet into a frame, `builder.curate.run`;
- ray: `ray.init(num_cpus=...)`, `builder.executors.ray_curate.curate(<parquet folder>)`, so the driver never
  reads the graded text; the ledger is collected on the driver (what the interface returns) or, with
  --no-collect, left in Ray as a dataset (its row count taken).
Both check that the ledger and stats are equal (digest of the ledger and of the stats JSON).

    python benchmarks/ray_curate_bench.py [--rows 1000000] [--scope question] [--cpus 2] [--no-collect]

Last line: JSON (rows, rows/s and peak driver RSS of each, same_ledger, same_stats).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.helpers
from tests.helpers import graded_rows  # noqa: E402


def digest(ledger: pl.DataFrame, stats) -> tuple[str, str]:
    rows = hashlib.sha256()
    for part in ledger.iter_slices(100_000):
        rows.update(part.hash_rows(seed=0).to_numpy().tobytes())
    return rows.hexdigest(), hashlib.sha256(json.dumps(stats.to_json(), sort_keys=True).encode()).hexdigest()


def _child(args: argparse.Namespace) -> None:
    """One measured run (a subprocess): print its JSON line."""
    from builder.recipe import CurationConfig

    cfg = CurationConfig(minhash={"scope": args.scope}, selection={"max_per_question": 4}, decontaminate=True)
    evals = pl.read_parquet(Path(args.data) / "evals.parquet")
    graded_dir = Path(args.data) / "graded"
    if args.child == "local":
        from builder import curate

        curate.run(pl.read_parquet(graded_dir).head(64), cfg, eval_questions=evals)  # JIT cache load
        t = time.perf_counter()
        ledger, stats = curate.run(pl.read_parquet(graded_dir), cfg, eval_questions=evals)
    else:
        import ray

        from builder.executors import ray_curate

        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        t = time.perf_counter()
        ledger, stats = ray_curate.curate(str(graded_dir), cfg, eval_questions=evals, collect=not args.no_collect)
        if args.no_collect:
            height = ledger.count()
    seconds = time.perf_counter() - t
    out = {"run": args.child, "seconds": round(seconds, 2),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if args.child == "local" or not args.no_collect:
        height = ledger.height
        out["ledger_digest"], out["stats_digest"] = digest(ledger, stats)
    else:
        out["stats_digest"] = digest(pl.DataFrame(), stats)[1]
    out["rows"] = height
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--scope", default="question", choices=["question", "global", "both"])
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--no-collect", action="store_true")
    ap.add_argument("--child", choices=["local", "ray"])
    ap.add_argument("--data")
    args = ap.parse_args()
    if args.child:
        return _child(args)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        graded, evals = graded_rows(args.rows)
        (Path(tmp) / "graded").mkdir()
        for i, part in enumerate(graded.iter_slices(125_000)):  # parts, as the sample stage's shards are
            part.write_parquet(Path(tmp) / "graded" / f"part-{i:04d}.parquet")
        evals.write_parquet(Path(tmp) / "evals.parquet")
        nbytes = int(graded.estimated_size())
        del graded
        print(f"synthesised {args.rows:,} graded rows ({nbytes / 2**20:.0f} MiB in memory) in "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        runs = {}
        for which in ("local", "ray"):
            cmd = [sys.executable, __file__, "--child", which, "--data", tmp, "--scope", args.scope,
                   "--cpus", str(args.cpus)] + (["--no-collect"] if args.no_collect else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                sys.exit(f"{which} run failed:\n{done.stderr[-4000:]}")
            runs[which] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{which}: {runs[which]}", flush=True)
    local, ray_run = runs["local"], runs["ray"]
    print(json.dumps({
        "rows": args.rows, "scope": args.scope, "cpus": args.cpus, "collect": not args.no_collect,
        "graded_mib": round(nbytes / 2**20),
        "local_rows_per_s": round(args.rows / local["seconds"]),
        "ray_rows_per_s": round(args.rows / ray_run["seconds"]),
        "local_seconds": local["seconds"], "ray_seconds": ray_run["seconds"],
        "local_peak_rss_mb": local["peak_rss_mb"], "ray_driver_peak_rss_mb": ray_run["peak_rss_mb"],
        "same_ledger": local.get("ledger_digest") == ray_run.get("ledger_digest") if not args.no_collect else None,
        "same_stats": local["stats_digest"] == ray_run["stats_digest"],
        "same_rows": local["rows"] == ray_run["rows"] == args.rows}))


if __name__ == "__main__":
    main()
