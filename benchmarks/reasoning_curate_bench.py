"""Reasoning-trace curation benchmark: ours beside the datasketch per-document baseline, same rows, same run.

Data: --rows synthetic thinking traces (default 20,000, 2k-16k tokens each, about 0.7 GB of text), --per-question
samples per question, drawn from a seeded Zipf vocabulary (words of 2-7 letters, punctuation and paragraph
breaks). Planted, per question: near-duplicates (a copy of an earlier sample with 1% of its words replaced:
Jaccard of 5-word shingles ~0.9, above the 0.8 threshold), looser copies (4% replaced, ~0.65: below it), traces
that loop (one paragraph repeated), unfinished traces (reasoning_finished false), traces with nothing after
them (no final answer) and traces past max_reasoning_tokens.

Ours, timed apart (numba JIT warm-up first, on a few rows):
- curate: `curate.run` as a reasoning recipe runs it: the trace filters (unfinished_thinking, no_final_answer,
  reasoning_length, repeated_loop), correctness, exact + MinHash near dedup on the traces (dedup_text:
  reasoning, scope question), length-aware selection (length_mix, k of N), diversity figures.
- dedup only: `curate.run` with only the near-dup stage on, for the comparison with the baseline.
Baseline: datasketch as a user writes it per document: one shared permutation array, `MinHash(permutations=...)`
+ `update_batch` of the document's 5-word shingles (our normalisation, `builder.dedup.minhash.words`), a
`LeanMinHash` into `MinHashLSH(params=(bands, rows))`; candidates of the same question kept when
`jaccard >= threshold`, clustered keeping the lowest sample (our decision rule). Its shingles never sit in memory
beyond one document.

Reported: rows/s and MB/s of ours (full curation and dedup only) and of the baseline; speedup in wall time and
in CPU seconds (all threads: fairer on a shared machine, and a lower bound for ours, which uses every core);
precision and recall of our near-dup drops against the baseline's and against the planted copies; peak RSS of the
process before the baseline ran (`resource.getrusage`); numba threads. The machine may be shared: say so.

    python benchmarks/reasoning_curate_bench.py [--rows 20000] [--per-question 8] [--k 4] [--baseline-rows N]

Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import polars as pl
from _baseline import lsh_drops, precision_recall, text_shingles

NGRAM = 5
TOKENS_PER_WORD = 1.3
MAX_TOKENS = 15_000  # reasoning_length bound: traces drawn above it are dropped


def _vocab(rng: np.random.Generator, size: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Seeded words (2-7 letters) plus punctuation and paragraph breaks, with Zipf weights."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 8, size)
    words = {"".join(rng.choice(letters, n)) for n in lengths}
    vocab = np.array(sorted(words) + [",", ".", "\n\n", "=", "+"], dtype=object)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.9
    rng.shuffle(weights)
    return vocab, weights / weights.sum()


def synth(rows: int, per_q: int, seed: int = 0) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """A graded table of `rows` traced samples and what was planted where (masks over rows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from builder.schemas import validate

    rng = np.random.default_rng(seed)
    vocab, weights = _vocab(rng)
    pa_vocab = pa.array(list(vocab), pa.string())
    n_words = (rng.integers(2_000, 16_001, rows) / TOKENS_PER_WORD).astype(np.int64)
    kind = rng.choice(6, rows, p=[0.70, 0.10, 0.06, 0.04, 0.05, 0.05])  # 0 plain, 1 near, 2 loose, 3 loop,
    kind[np.arange(rows) % per_q == 0] = 0                              # 4 unfinished, 5 no answer
    chunks: list = []
    ids_of: dict[int, np.ndarray] = {}
    for lo in range(0, rows, 256):
        hi = min(rows, lo + 256)
        docs = []
        for i in range(lo, hi):
            first = i - i % per_q
            if kind[i] in (1, 2) and first in ids_of:  # a copy of the question's first sample, some words replaced
                ids = ids_of[first].copy()
                swap = rng.random(len(ids)) < (0.01 if kind[i] == 1 else 0.04)
                ids[swap] = rng.choice(len(vocab), int(swap.sum()), p=weights)
            elif kind[i] == 3:  # a loop: a paragraph of 150 words repeated after a start
                para = rng.choice(len(vocab), 150, p=weights)
                head = rng.choice(len(vocab), max(1, n_words[i] // 4), p=weights)
                ids = np.concatenate([head, np.tile(para, max(2, (n_words[i] - len(head)) // 150))])
            else:
                ids = rng.choice(len(vocab), n_words[i], p=weights)
            if i % per_q == 0:
                ids_of = {i: ids}  # only the current question's first sample is copied
            docs.append(ids)
        offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int32)
        words = pc.take(pa_vocab, pa.array(np.concatenate(docs)))
        chunks.append(pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), words), " "))
        n_words[lo:hi] = [len(d) for d in docs]
    reasoning = pl.from_arrow(pa.chunked_array(chunks)).rechunk()
    q = np.arange(rows) // per_q
    tokens = (n_words * TOKENS_PER_WORD).astype(np.int32)
    answer = np.where(kind == 5, "", "So the total is 7. The answer is \\boxed{7}.")
    df = pl.DataFrame({
        "qid": [f"q{j:06d}" for j in q], "sample_idx": (np.arange(rows) % per_q).astype(np.int32),
        "seed": np.arange(rows, dtype=np.int64), "teacher": "synthetic-r1", "teacher_revision": None,
        "prompt": "Q: ...", "rationale": answer, "reasoning": reasoning,
        "reasoning_tokens": tokens, "reasoning_finished": kind != 4,
        "answer_prompt": None, "answer_completion": None,
        "finish_reason": np.where(kind == 4, "length", "stop"), "prompt_tokens": np.full(rows, 40, np.int32),
        "completion_tokens": tokens + 12, "run_id": "bench", "task": "gsm8k",
        "question": [f"question {j}" for j in q], "gold": "7", "answer_type": "number",
        "pred": "7", "correct": kind != 5, "grade_status": np.where(kind == 5, "no_answer", "ok"),
        "grader": "number",
    }, schema_overrides={"teacher_revision": pl.String, "answer_prompt": pl.String, "answer_completion": pl.String})
    df = df.with_columns(pred=pl.when(pl.Series(kind != 5)).then(pl.col("pred")))
    plants = {"near": kind == 1, "loose": kind == 2, "loop": kind == 3, "unfinished": kind == 4,
              "no_answer": kind == 5, "too_long": tokens > MAX_TOKENS}
    return validate(df, "graded", where="synthetic traces"), plants


def baseline(texts: pl.Series, qids: list[str], mh) -> tuple[np.ndarray, float]:
    """datasketch per document (True = dropped): shared permutations, update_batch, LeanMinHash, MinHashLSH."""
    from datasketch import LeanMinHash, MinHash

    t = time.perf_counter()
    perms = MinHash(num_perm=mh.num_perm, seed=mh.seed, scheme=mh.scheme).permutations
    sketches = []
    for text in texts:  # one document at a time: the traces' shingles never all sit in memory
        m = MinHash(num_perm=mh.num_perm, seed=mh.seed, permutations=perms, scheme=mh.scheme)
        m.update_batch(text_shingles(text, NGRAM))
        sketches.append(LeanMinHash(m))
    return lsh_drops(sketches, qids, mh), time.perf_counter() - t


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process, all threads (on a shared machine less noisy than wall time)."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--per-question", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="selection.max_per_question")
    ap.add_argument("--baseline-rows", type=int, default=None, help="run the baseline on the first N rows only "
                    "(whole questions; default: all rows)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from builder import curate
    from builder.kernels import HAVE_NUMBA
    from builder.recipe import CurationConfig

    threads = 1
    if HAVE_NUMBA:
        import numba

        threads = numba.get_num_threads()
    t = time.perf_counter()
    graded, plants = synth(args.rows, args.per_question, args.seed)
    gen_s = time.perf_counter() - t
    mb = graded["reasoning"].str.len_bytes().sum() / 1e6
    tokens = int(graded["reasoning_tokens"].sum())
    lo, hi = graded["reasoning_tokens"].min(), graded["reasoning_tokens"].max()
    print(f"data: {graded.height:,} traces, {mb:,.0f} MB, {tokens / 1e6:.1f}M tokens ({lo}-{hi} per trace), "
          f"{gen_s:.1f}s", flush=True)

    full = CurationConfig(
        filters=["unfinished_thinking", "no_final_answer", "reasoning_length", "repeated_loop"],
        max_reasoning_tokens=MAX_TOKENS, dedup_text="reasoning",
        selection={"mode": "length_mix", "max_per_question": args.k, "short_share": 0.5})
    dedup_only = CurationConfig(filters=[], keep_correct_only=False, dedup_exact=False, dedup_text="reasoning")
    t = time.perf_counter()
    curate.run(graded.head(2 * args.per_question), full)  # numba JIT compile or cache load
    jit_s = time.perf_counter() - t

    t, c = time.perf_counter(), _cpu_s()
    ledger, stats = curate.run(graded, full)
    full_s, full_cpu = time.perf_counter() - t, _cpu_s() - c
    reason = ledger["reason"]
    got = {name: int((reason == r).sum()) for name, r in (
        ("unfinished", "unfinished_thinking"), ("no_answer", "no_final_answer"), ("too_long", "reasoning_too_long"),
        ("loop", "repeated_loop"), ("near_dup", "near_duplicate"), ("not_selected", "not_selected"))}
    del ledger
    t, c = time.perf_counter(), _cpu_s()
    ledger, _ = curate.run(graded, dedup_only)
    dedup_s, dedup_cpu = time.perf_counter() - t, _cpu_s() - c
    ours = (ledger["reason"] == "near_duplicate").fill_null(False).to_numpy()
    del ledger
    rss_ours = _rss_mb()
    print(f"ours: curate {full_s:.1f}s ({full_cpu:.1f} CPU s; {graded.height / full_s:,.0f} rows/s, "
          f"{mb / full_s:,.1f} MB/s), dedup only {dedup_s:.1f}s ({dedup_cpu:.1f} CPU s); drops {got}; "
          f"peak RSS {rss_ours:,.0f} MB; {threads} numba threads", flush=True)

    n_base = graded.height if args.baseline_rows is None else min(graded.height, args.baseline_rows)
    n_base -= n_base % args.per_question if n_base < graded.height else 0
    c = _cpu_s()
    base, base_s = baseline(graded["reasoning"].head(n_base), graded["qid"].head(n_base).to_list(), dedup_only.minhash)
    base_cpu = _cpu_s() - c
    base_rps = n_base / base_s
    vs_base = precision_recall(ours[:n_base], base)
    vs_planted = precision_recall(ours, plants["near"])
    print(f"baseline (datasketch per document): {n_base:,} rows in {base_s:.1f}s ({base_cpu:.1f} CPU s; "
          f"{base_rps:,.1f} rows/s); "
          f"ours vs baseline {vs_base}; ours vs planted near copies {vs_planted}")
    out = {
        "rows": graded.height, "mb": round(mb, 1), "reasoning_tokens": tokens, "per_question": args.per_question,
        "k": args.k, "threads": threads, "jit_warmup_s": round(jit_s, 2), "generate_s": round(gen_s, 1),
        "ours_curate_s": round(full_s, 2), "ours_curate_rows_per_s": round(graded.height / full_s, 1),
        "ours_curate_mb_per_s": round(mb / full_s, 2),
        "ours_dedup_s": round(dedup_s, 2), "ours_dedup_rows_per_s": round(graded.height / dedup_s, 1),
        "baseline_rows": n_base, "baseline_s": round(base_s, 2), "baseline_rows_per_s": round(base_rps, 2),
        "baseline_mb_per_s": round(mb * n_base / graded.height / base_s, 2),
        "speedup_curate_vs_baseline": round(graded.height / full_s / base_rps, 1),
        "speedup_dedup_vs_baseline": round(graded.height / dedup_s / base_rps, 1),
        "ours_curate_cpu_s": round(full_cpu, 1), "ours_dedup_cpu_s": round(dedup_cpu, 1),
        "baseline_cpu_s": round(base_cpu, 1),
        "speedup_curate_cpu": round(base_cpu * graded.height / n_base / full_cpu, 1),
        "vs_baseline": vs_base, "vs_planted_near": vs_planted, "drops": got,
        "planted": {k: int(v.sum()) for k, v in plants.items()},
        "peak_rss_mb_ours": round(rss_ours), "peak_rss_mb_total": round(_rss_mb()),
        "funnel": {t: f.__dict__ for t, f in stats.funnel.items()},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
