"""Grade 1M samples shaped like real teacher output with today's graders and the working tree's, on the same rows.

Why: a grader rewrite must not cost more than 0.8x of today's rows/s, and must not change verdicts silently. So one
run builds the rows once, writes them to a temp Parquet file, and times `grade_frame(rows, mode="auto")` on
them, each side in its own fresh subprocess under the same harness (neither side has warm caches the other lacks):
the baseline, `builder/` of commit `BASELINE_REV` (override with --baseline-rev; extracted with `git archive` and put
first on its subprocess's sys.path), and the working tree's `builder/`. Each process grades an untimed warm-up
first (the first 20k rows without a LaTeX answer: regex compilation; math-verify starts cold in the timed run).
Other load on the machine makes single timings noisy, so each side runs `--repeats` times (fresh processes, order
alternating) and counts its best try (load only ever adds time; its CPU seconds, math-verify's workers aside, are
printed too); verdicts come from each side's first run.

The samples are drawn (seeded, with replacement) from ../shared/teacher-completions (real text-davinci-002
rationales and answer completions over six tasks and four answer types; date_understanding rows go half to the
choice grader and half to the date grader). A share of them lose their answer completion, as from a chat teacher
answering inline, so the rationale path ("answer is", \\boxed{}, last number) is timed too.

`--latex-share` of all rows (drawn among the number rows) get a LaTeX-style answer instead: the teacher's own number
written as `\\boxed{N}`, `\\dfrac{N}{1}`, `N{,}000`-style groups, `\\text{}` units, `\\(N\\)`, or, for a tenth of
them, one of `STRUCTURAL` (a fixed set of real expression answers that only math-verify reads: roots, powers,
nested fractions).

Printed per side: seconds, rows/s, status counts, correct count; then the rows whose verdict (`correct`) or status
changed, by grader and by status transition (top 15); `--diff-out` writes those rows as JSONL for an audit. Exit 2
when git or the baseline revision is unavailable.

    python benchmarks/grade_bench.py [--rows 1000000] [--inline-share 0.3] [--latex-share 0.05] [--seed 0]
        [--shared ../shared] [--baseline-rev 0cffffd] [--repeats 3] [--diff-out changed.jsonl]

Last line: JSON (rows, latex_share, baseline_rev, repeats, baseline_rows_per_second, rows_per_second, ratio =
current / baseline, changed_verdicts, changed_statuses, baseline_cpu_seconds, cpu_seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
BASELINE_REV = "0cffffd"
"""Today's graders: main's HEAD before the grader rewrite."""
WARMUP_ROWS = 20_000
OUT_COLUMNS = ["pred", "correct", "grade_status", "grader"]

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
    """`share` of all rows, drawn among the number rows, answered in LaTeX (see the module docstring); `_latex` marks
    them (the warm-up skips them)."""
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
        pl.Series("_latex", pick),
    )


def build(shared: Path, rows: int, inline_share: float, seed: int, answer_types: dict[str, str]) -> pl.DataFrame:
    """`rows` samples drawn from the real completions; `answer_types` maps task -> answer type."""
    files = sorted((shared / "teacher-completions").glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{shared}/teacher-completions/*.jsonl not found (pass --shared)")
    real = pl.concat([pl.read_ndjson(f) for f in files], how="diagonal_relaxed")
    real = real.with_columns(pl.col("task").replace_strict(answer_types).alias("answer_type"))
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


def fail(msg: str, code: int = 2) -> None:
    print(f"grade_bench: {msg}", file=sys.stderr)
    raise SystemExit(code)


def extract(rev: str, dest: Path) -> str:
    """`git archive <rev> builder | tar -x -C <dest>` in the repository this script lives in; the full commit id.
    Exits 2 (with the reason) when git, the repository or the revision is unavailable."""
    try:
        got = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                             capture_output=True, text=True)
    except OSError as e:
        fail(f"git is unavailable ({e}); the baseline graders come from `git archive {rev}`")
    if got.returncode:
        fail(f"revision {rev!r} not found in {ROOT} (git rev-parse: {got.stderr.strip() or got.returncode}); "
             "pass --baseline-rev")
    commit = got.stdout.strip()
    dest.mkdir(parents=True)
    git = subprocess.Popen(["git", "-C", str(ROOT), "archive", commit, "builder"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=git.stdout, capture_output=True)
    git.stdout.close()
    err = git.stderr.read().decode(errors="replace").strip()
    if git.wait() or tar.returncode or not (dest / "builder" / "grade.py").is_file():
        fail(f"could not extract builder/ of {rev} ({commit}): {err or tar.stderr.decode(errors='replace').strip()}")
    return commit


def worker(src: Path, rows_path: Path, out_path: Path) -> None:
    """One side, in its own process: `src`/builder first on sys.path, an untimed warm-up, the timed grade_frame;
    writes the verdict columns to `out_path` and one JSON line (seconds, where builder came from) to stdout."""
    sys.path.insert(0, str(src))
    import builder
    from builder.grade import grade_frame

    where = Path(builder.__file__).resolve()
    if not where.is_relative_to(src.resolve()):
        raise SystemExit(f"builder imported from {where}, not from {src}")
    rows = pl.read_parquet(rows_path)
    warm = rows.filter(~pl.col("_latex")).head(WARMUP_ROWS).drop("_latex")
    rows = rows.drop("_latex")
    grade_frame(warm, mode="auto")  # untimed warm-up (regex compilation); math-verify starts cold
    t0, c0 = time.perf_counter(), time.process_time()
    graded = grade_frame(rows, mode="auto")
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if out_path.name != "-":
        graded.select(OUT_COLUMNS).write_parquet(out_path)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "builder": str(where.parent),
                      "threads": pl.thread_pool_size(),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def run_side(name: str, src: Path, rows_path: Path, out_path: Path | None) -> dict:
    """Grade the rows once in a fresh subprocess (this script, worker mode); its JSON line (seconds, ...)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(src), str(rows_path), str(out_path or "-")]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        fail(f"{name} graders ({src / 'builder'}) failed with code {proc.returncode}; see above", 1)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(name: str, tries: list[dict], out: pl.DataFrame, n: int) -> tuple[float, float]:
    """Print one side's figures (its best try: other load on the machine only ever adds time); return the best
    seconds and that try's CPU seconds."""
    best = min(tries, key=lambda t: t["seconds"])
    each = ", ".join(f"{t['seconds']:.2f}" for t in tries)
    status = dict(out.group_by("grade_status").len().sort("grade_status").rows())
    print(f"{name} ({best['builder']}): {best['seconds']:.2f}s (best of {each}; CPU {best['cpu_seconds']:.2f}s), "
          f"{n / best['seconds']:,.0f} rows/s; status {status}; correct {out['correct'].sum():,}; "
          f"threads {best['threads']}, peak RSS {max(t['peak_rss_mb'] for t in tries):,} MB", flush=True)
    return best["seconds"], best["cpu_seconds"]


def compare(old: pl.DataFrame, new: pl.DataFrame, rows_path: Path, diff_out: Path | None) -> tuple[int, int]:
    """Print the rows whose verdict or status changed, by grader and by status transition; write them to
    `diff_out` (JSONL) when given. Returns (changed verdicts, changed statuses)."""
    both = pl.concat([old.rename(lambda c: f"old_{c}"), new.rename(lambda c: f"new_{c}")], how="horizontal")
    both = both.with_row_index("row").with_columns(
        pl.col("old_correct").ne_missing(pl.col("new_correct")).alias("_verdict"),
        pl.col("old_grade_status").ne_missing(pl.col("new_grade_status")).alias("_status"),
        pl.when(pl.col("old_grader") == pl.col("new_grader")).then(pl.col("old_grader"))
        .otherwise(pl.concat_str(pl.col("old_grader").fill_null("?"), pl.lit("->"),
                                 pl.col("new_grader").fill_null("?"))).alias("grader"),
    )
    changed = both.filter(pl.col("_verdict") | pl.col("_status"))
    verdicts, statuses = int(changed["_verdict"].sum()), int(changed["_status"].sum())
    print(f"changed: {verdicts:,} verdicts, {statuses:,} statuses ({changed.height:,} rows)")
    if changed.height:
        by = changed.group_by("grader").agg(
            pl.col("_verdict").sum().alias("verdicts"), pl.col("_status").sum().alias("statuses"),
            (pl.col("_verdict") & pl.col("new_correct")).sum().alias("now_correct"),
            (pl.col("_verdict") & pl.col("old_correct")).sum().alias("now_wrong")).sort("grader")
        for g, v, s, up, down in by.rows():
            print(f"  {g}: {v:,} verdicts (+{up:,} now correct, -{down:,} now wrong), {s:,} statuses")
        moves = (changed.filter("_status").group_by("old_grade_status", "new_grade_status").len()
                 .sort(["len", "old_grade_status", "new_grade_status"], descending=[True, False, False]))
        print(f"status transitions (top 15 of {moves.height}):")
        for a, b, k in moves.head(15).rows():
            print(f"  {a} -> {b}: {k:,}")
    if diff_out is not None:
        wanted = pl.col("row").is_in(changed["row"].implode())
        text = (pl.scan_parquet(rows_path).with_row_index("row").filter(wanted)
                .select("row", "answer_type", pl.col("gold").cast(pl.String), "answer_completion", "rationale")
                .collect())
        blank = pl.col("answer_completion").is_null() | (pl.col("answer_completion").str.strip_chars() == "")
        out = changed.join(text, on="row", how="left").select(
            "row", "answer_type", "gold",
            pl.when(blank).then(pl.col("rationale")).otherwise(pl.col("answer_completion")).alias("answer"),
            pl.when(blank).then(pl.lit("rationale")).otherwise(pl.lit("answer_completion")).alias("answer_from"),
            "old_pred", "new_pred", "old_grade_status", "new_grade_status", "old_correct", "new_correct",
            "old_grader", "new_grader").sort("row")
        out.write_ndjson(diff_out)
        print(f"wrote {out.height:,} changed rows to {diff_out}")
    return verdicts, statuses


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":  # one side, started by run_side
        worker(*map(Path, sys.argv[2:]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--inline-share", type=float, default=0.3, help="Share of samples without an answer completion.")
    shared = Path(os.environ.get("RATIONALE_SHARED_DIR", ROOT.parent / "shared"))
    ap.add_argument("--shared", type=Path, default=shared)
    ap.add_argument("--latex-share", type=float, default=0.05, help="Share of rows with a LaTeX-style answer.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="Commit whose builder/ is the baseline.")
    ap.add_argument("--repeats", type=int, default=3,
                    help="Fresh processes per side (order alternating); each side counts its best.")
    ap.add_argument("--diff-out", type=Path, help="Write the rows whose verdict or status changed here (JSONL).")
    # Grade the "current" side from this commit too instead of the working tree (checks the harness: ratio ~1).
    ap.add_argument("--current-rev", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")

    with tempfile.TemporaryDirectory(prefix="grade_bench-") as tmp:
        tmp = Path(tmp)
        baseline_rev = extract(args.baseline_rev, tmp / "baseline")
        current = ROOT
        if args.current_rev:
            extract(args.current_rev, tmp / "current")
            current = tmp / "current"
        # The rows depend only on the baseline's task registry, so both sides (and later runs) see the same rows.
        sys.path.insert(0, str(tmp / "baseline"))
        from builder.grade import TASK_ANSWER_TYPES

        t0 = time.perf_counter()
        df = latex_answers(build(args.shared, args.rows, args.inline_share, args.seed, TASK_ANSWER_TYPES),
                           args.latex_share, args.seed)
        rows_path = tmp / "rows.parquet"
        df.write_parquet(rows_path)
        n = df.height
        print(f"built {n:,} samples ({df.estimated_size('mb'):,.0f} MB) in {time.perf_counter() - t0:.1f}s; "
              f"answer types:", dict(df.group_by("answer_type").len().sort("answer_type").rows()), flush=True)
        del df

        sides = {"baseline": (f"baseline {args.baseline_rev}", tmp / "baseline"),
                 "current": (f"current {args.current_rev}" if args.current_rev else "current (working tree)", current)}
        tries: dict[str, list[dict]] = {"baseline": [], "current": []}
        for r in range(args.repeats):  # alternate the order, so neither side always runs on a fresher machine
            for side in ("baseline", "current") if r % 2 == 0 else ("current", "baseline"):
                name, src = sides[side]
                tries[side].append(run_side(name, src, rows_path, tmp / f"{side}.parquet" if r == 0 else None))
                print(f"  try {r + 1}/{args.repeats}, {name}: {tries[side][-1]['seconds']:.2f}s", flush=True)
        old, new = pl.read_parquet(tmp / "baseline.parquet"), pl.read_parquet(tmp / "current.parquet")
        t_base, cpu_base = report(sides["baseline"][0], tries["baseline"], old, n)
        t_cur, cpu_cur = report(sides["current"][0], tries["current"], new, n)
        verdicts, statuses = compare(old, new, rows_path, args.diff_out)
        print(f"ratio (current / baseline rows/s): {t_base / t_cur:.3f}")
        print(json.dumps({
            "rows": n, "latex_share": args.latex_share, "baseline_rev": baseline_rev,
            "repeats": args.repeats,
            "baseline_rows_per_second": round(n / t_base), "rows_per_second": round(n / t_cur),
            "ratio": round(t_base / t_cur, 3), "changed_verdicts": verdicts, "changed_statuses": statuses,
            "baseline_cpu_seconds": round(cpu_base, 3), "cpu_seconds": round(cpu_cur, 3),
        }))


if __name__ == "__main__":
    main()
