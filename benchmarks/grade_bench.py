"""Grade 1M synthetic samples shaped like real teacher output; print seconds and rows/s, last line JSON.

The samples are drawn (seeded, with replacement) from ../shared/teacher-completions (real text-davinci-002
rationales and answer completions over six tasks and four answer types; date_understanding rows go half to the
choice grader and half to the date grader). A share of them lose their answer completion, as from a chat teacher
answering inline, so the rationale path ("answer is", \\boxed{}, last number) is timed too.

`--latex-share` of all rows (drawn among the number rows) get a LaTeX-style answer instead: the teacher's own number
written as `\\boxed{N}`, `\\dfrac{N}{1}`, `N{,}000`-style groups, `\\text{}` units, `\\(N\\)`, or, for a tenth of
them, one of `STRUCTURAL` (a fixed set of real expression answers that only math-verify reads: roots, powers,
nested fractions). The same rows are graded twice in one run: plain (the baseline) and with the LaTeX answers.

    python benchmarks/grade_bench.py [--rows 1000000] [--inline-share 0.3] [--latex-share 0.05] [--shared ../shared]
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

# Expression answers in the style of huggingface/Math-Verify's test tables: each needs a real parser.
STRUCTURAL = [
    r"$\sqrt{2}$", r"$\frac{1+\sqrt{5}}{2}$", r"$2^{10}$", r"$\frac{\frac{1}{2}}{3}$", r"$3\sqrt{3}$", r"$\pi$",
    r"$\sqrt{16}$", r"$(3^{2})^{2}$", r"$\frac{14}{3}+1$", r"$\sqrt[3]{27}$", r"$2\pi r$", r"$\frac{\sqrt{3}}{2}$",
    r"$10^{3}-1$", r"$\left(\frac{1}{2}\right)^{2}$", r"$\sqrt{2}+\sqrt{3}$", r"$4^{-1}$",
]
LATEX_TEMPLATES = [" $\\boxed{{{n}}}$", " The final answer is $\\boxed{{{n}}}$.", " $\\dfrac{{{n}}}{{1}}$",
                   " $\\text{{about }} {n} \\text{{ apples}}$", " \\({g}\\)", " $\\boxed{{{g}}}$"]


def _grouped(n: str) -> str:
    """'14916' -> '14{,}916' (LaTeX thousands groups); other spellings unchanged."""
    if not n.isdigit():
        return n
    return f"{int(n):,}".replace(",", "{,}")


def latex_answers(df: pl.DataFrame, share: float, seed: int) -> pl.DataFrame:
    """`share` of all rows, drawn among the number rows, answered in LaTeX (see the module docstring)."""
    rng = np.random.default_rng(seed + 1)
    is_num = (df["answer_type"] == "number").to_numpy()
    pick = np.zeros(df.height, dtype=bool)
    idx = np.flatnonzero(is_num)
    pick[rng.choice(idx, size=min(len(idx), int(share * df.height)), replace=False)] = True
    number = r"\d*\.?\d+"  # the teacher's answer: first number of the completion, else last of the rationale
    n = df.select(pl.coalesce(pl.col("answer_completion").str.extract(f"({number})", 1),
                              pl.col("rationale").str.extract_all(number).list.last()).fill_null("0")).to_series()
    n = n.to_list()
    kind = rng.integers(0, len(LATEX_TEMPLATES), df.height)
    structural = rng.random(df.height) < 0.1
    which = rng.integers(0, len(STRUCTURAL), df.height)
    texts = [
        (f" The answer is {STRUCTURAL[which[i]]}." if structural[i]
         else LATEX_TEMPLATES[kind[i]].format(n=n[i], g=_grouped(n[i]))) if pick[i] else None
        for i in range(df.height)
    ]
    latex = pl.Series("_latex", texts, dtype=pl.String)
    inline = df["answer_completion"].is_null()
    return df.with_columns(
        pl.when(latex.is_not_null() & ~inline).then(latex).otherwise(pl.col("answer_completion"))
        .alias("answer_completion"),
        pl.when(latex.is_not_null() & inline).then(pl.col("rationale") + latex).otherwise(pl.col("rationale"))
        .alias("rationale"),
    )


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
    ap.add_argument("--latex-share", type=float, default=0.05, help="Share of rows with a LaTeX-style answer.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    plain = build(args.shared, args.rows, args.inline_share, args.seed)
    df = latex_answers(plain, args.latex_share, args.seed)
    t_build = time.perf_counter() - t0
    mb = df.estimated_size("mb")
    print(f"built {df.height:,} samples ({mb:,.0f} MB) in {t_build:.1f}s; answer types:",
          dict(df.group_by("answer_type").len().sort("answer_type").rows()))

    grade_frame(plain.head(20_000), mode="auto")  # untimed warm-up (regex compilation); math-verify starts cold
    t0 = time.perf_counter()
    grade_frame(plain, mode="auto")
    t_plain = time.perf_counter() - t0
    print(f"baseline, plain answers: {t_plain:.2f}s, {df.height / t_plain:,.0f} rows/s")
    t0 = time.perf_counter()
    graded = grade_frame(df, mode="auto")
    t_grade = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = question_stats(graded)
    t_stats = time.perf_counter() - t0

    status = dict(graded.group_by("grade_status").len().sort("grade_status").rows())
    acc = graded.group_by("grader").agg(pl.col("correct").mean()).sort("grader").rows()
    print(f"with {args.latex_share:.0%} LaTeX answers: {t_grade:.2f}s, {df.height / t_grade:,.0f} rows/s; "
          f"status {status}")
    print("accuracy per grader:", {k: round(v, 3) for k, v in acc})
    print(f"question_stats: {stats.height:,} questions in {t_stats:.2f}s")
    print(json.dumps({
        "rows": df.height, "inline_share": args.inline_share, "latex_share": args.latex_share,
        "threads": pl.thread_pool_size(), "baseline_plain_seconds": round(t_plain, 3),
        "baseline_plain_rows_per_second": round(df.height / t_plain),
        "grade_seconds": round(t_grade, 3), "rows_per_second": round(df.height / t_grade),
        "question_stats_seconds": round(t_stats, 3), "status": status,
    }))


if __name__ == "__main__":
    main()
