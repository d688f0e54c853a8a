"""Grade 1M synthetic samples shaped like real teacher output; print seconds and rows/s, last line JSON.

The samples are drawn (seeded, with replacement) from ../shared/teacher-completions (real text-davinci-002
rationales and answer completions over six tasks and four answer types; date_understanding rows go half to the
choice grader and half to the date grader). A share of them lose their answer completion, as from a chat teacher
answering inline, so the rationale path ("answer is", \\boxed{}, last number) is timed too.

    python benchmarks/grade_bench.py [--rows 1000000] [--inline-share 0.3] [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import polars as pl

from builder.grade import TASK_ANSWER_TYPES, grade_frame, question_stats

ROOT = Path(__file__).resolve().parent.parent


def build(shared: Path, rows: int, inline_share: float, seed: int) -> pl.DataFrame:
    files = sorted((shared / "teacher-completions").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{shared}/teacher-completions/*.jsonl not found (pass --shared)")
    real = pl.concat([pl.read_ndjson(f) for f in files], how="diagonal_relaxed")
    real = real.with_columns(pl.col("task").replace_strict(TASK_ANSWER_TYPES).alias("answer_type"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, real.height, rows)
    inline = rng.random(rows) < inline_share
    as_date = rng.random(rows) < 0.5
    df = real[idx].with_columns(
        pl.Series("_inline", inline), pl.Series("_date", as_date),
        (pl.int_range(rows) // 8).cast(pl.String).alias("qid"),
        (pl.int_range(rows) % 8).cast(pl.Int32).alias("sample_idx"),
    )
    return df.with_columns(
        pl.when(pl.col("_inline")).then(None).otherwise(pl.col("answer_completion")).alias("answer_completion"),
        pl.when(pl.col("_date") & (pl.col("task") == "date_understanding")).then(pl.lit("date"))
        .otherwise(pl.col("answer_type")).alias("answer_type"),
    ).drop("_inline", "_date")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--inline-share", type=float, default=0.3, help="Share of samples without an answer completion.")
    shared = Path(os.environ.get("RATIONALE_SHARED_DIR", ROOT.parent / "shared"))
    ap.add_argument("--shared", type=Path, default=shared)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    df = build(args.shared, args.rows, args.inline_share, args.seed)
    t_build = time.perf_counter() - t0
    mb = df.estimated_size("mb")
    print(f"built {df.height:,} samples ({mb:,.0f} MB) in {t_build:.1f}s; answer types:",
          dict(df.group_by("answer_type").len().sort("answer_type").rows()))

    t0 = time.perf_counter()
    graded = grade_frame(df, mode="auto")
    t_grade = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = question_stats(graded)
    t_stats = time.perf_counter() - t0

    status = dict(graded.group_by("grade_status").len().sort("grade_status").rows())
    acc = graded.group_by("grader").agg(pl.col("correct").mean()).sort("grader").rows()
    print(f"grade_frame: {t_grade:.2f}s, {df.height / t_grade:,.0f} rows/s; status {status}")
    print("accuracy per grader:", {k: round(v, 3) for k, v in acc})
    print(f"question_stats: {stats.height:,} questions in {t_stats:.2f}s")
    print(json.dumps({
        "rows": df.height, "inline_share": args.inline_share, "threads": pl.thread_pool_size(),
        "grade_seconds": round(t_grade, 3), "rows_per_second": round(df.height / t_grade),
        "question_stats_seconds": round(t_stats, 3), "status": status,
    }))


if __name__ == "__main__":
    main()
