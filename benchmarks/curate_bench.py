"""Curation benchmark: ours and a datasketch baseline on the same rows, then ours on 1,000,000 synthetic rationales.

Data (`tests.helpers.synth`, shared with the tests): Q questions x N samples of arithmetic word-problem rationales
in the style of text-davinci-002's Zero-shot-CoT outputs (6-7 sentences, 5 phrasings each, question-specific
names/objects/numbers), with planted duplicates: copies of an earlier sample of the same question, edited one of
the ways in `tests.helpers.EDITS`: single edits (case/punctuation/spacing, a changed first or last word, an extra
closing sentence) and paraphrases (two clauses swapped, synonyms swapped in, a number changed, all three at once).
Many paraphrases fall near or below the Jaccard threshold on purpose: that is where the two implementations can
disagree.

Near-dup comparison on one subset of whole questions (--baseline-rows), same run, same rows, same knobs:
- ours: `curate.run` with only the near-dup stage on (exact dedup, filters and correctness off), hash "fast"
  (our vectorised word hash; numba threads as reported) and hash "sha1" (datasketch's shingle hash: signatures
  bit-identical to datasketch's, so any difference is an algorithm difference). Also ours single-threaded.
- baseline: datasketch as its docs advise for many sketches: one shared permutation array (`MinHash.bulk` with
  `permutations=`), the same scheme, seed, num_perm and shingles (`builder.dedup.minhash.words`), `LeanMinHash`
  in a `MinHashLSH(params=(bands, rows))`; candidates of the same question kept when `jaccard >= threshold`,
  clustered keeping the lowest sample (our decision rule).
- precision / recall of our drops against the baseline's, overall and for rows whose exact Jaccard to their most
  similar earlier sibling lies within +-0.1 of the threshold (where "keep everything" scores recall 0); the exact
  shingle-set Jaccard decision is reported as well, as ground truth for both.

Then the full `curate.run` (filters, correctness, exact + near dedup, diverse selection of k, diversity,
decontamination against 1,000 eval questions with 20 planted copies) on --rows rows. JIT warm-up (numba
compile or cache load) is timed apart.

    python benchmarks/curate_bench.py [--rows 1000000] [--per-question 8] [--k 4] [--baseline-rows 20000]

Last line: JSON (rows/s of ours and the baseline on the same rows, speedup, precision, recall, threads,
jit_warmup_s, peak_rss_mb, and the 1M-row figures).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from _baseline import cluster_drops, lsh_drops, precision_recall, text_shingles

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.helpers
from tests.helpers import EDIT_NAMES, synth  # noqa: E402


def shingle_sets(graded: pl.DataFrame, ngram: int) -> list[list[bytes]]:
    return [text_shingles(text, ngram) for text in graded["rationale"].to_list()]


def baseline(shingles: list[list[bytes]], qids: list[str], mh) -> np.ndarray:
    """datasketch near-dup decisions (True = dropped), with its fast path: shared permutations, bulk, LeanMinHash."""
    from datasketch import LeanMinHash, MinHash

    perms = MinHash(num_perm=mh.num_perm, seed=mh.seed, scheme=mh.scheme).permutations
    sketches = [LeanMinHash(m) for m in MinHash.bulk(shingles, num_perm=mh.num_perm, seed=mh.seed,
                                                      permutations=perms, scheme=mh.scheme)]
    return lsh_drops(sketches, qids, mh)


def exact_jaccard(shingles: list[list[bytes]], qids: list[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth on exact shingle sets: (drops by the same clustering rule, each row's best Jaccard to an
    earlier sibling of its question)."""
    sets = [set(s) for s in shingles]
    best = np.zeros(len(sets))
    pairs = []
    start = 0
    for i in range(len(sets)):
        if i and qids[i] != qids[i - 1]:
            start = i
        for j in range(start, i):
            union = len(sets[i] | sets[j])
            jac = len(sets[i] & sets[j]) / union if union else 1.0
            best[i] = max(best[i], jac)
            if jac >= threshold:
                pairs.append((j, i))
    return cluster_drops(len(sets), pairs), best


def ours_near_dup(graded: pl.DataFrame, cfg) -> tuple[np.ndarray, float]:
    """Our near-dup decisions (True = dropped) and the seconds `curate.run` took."""
    from builder import curate

    t = time.perf_counter()
    ledger, _ = curate.run(graded, cfg)
    seconds = time.perf_counter() - t
    return (ledger["stage"] == "near_dedup").fill_null(False).to_numpy(), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--per-question", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="max_per_question")
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numba

    from builder import curate
    from builder.kernels import HAVE_NUMBA
    from builder.recipe import CurationConfig

    t = time.perf_counter()
    graded, evals, kinds = synth(args.rows, args.per_question, args.seed)
    print(f"synthesised {graded.height:,} rationales ({graded['rationale'].str.len_bytes().mean():.0f} bytes avg) "
          f"in {time.perf_counter() - t:.1f}s")
    cfg = CurationConfig(selection={"max_per_question": args.k}, decontaminate=True)
    t = time.perf_counter()
    curate.run(graded.head(2 * args.per_question), cfg, eval_questions=evals)  # numba compile, or its cache load
    warmup = time.perf_counter() - t
    threads = numba.get_num_threads() if HAVE_NUMBA else 1
    print(f"JIT warm-up {warmup:.2f}s; numba threads {threads} (of {os.cpu_count()} CPUs)")

    # ---- near-dup only, ours and datasketch on the same whole questions
    nb = (args.baseline_rows // args.per_question) * args.per_question
    sub, sub_kinds = graded.head(nb), kinds[:nb]
    dd_cfg = CurationConfig(keep_correct_only=False, dedup_exact=False, filters=[])
    mh = dd_cfg.minhash
    qids = sub["qid"].to_list()
    t = time.perf_counter()
    shingles = shingle_sets(sub, mh.ngram)
    base = baseline(shingles, qids, mh)
    base_s = time.perf_counter() - t
    ours, ours_s = ours_near_dup(sub, dd_cfg)
    sha1, sha1_s = ours_near_dup(sub, dd_cfg.model_copy(update={"minhash": mh.model_copy(update={"hash": "sha1"})}))
    if HAVE_NUMBA:
        numba.set_num_threads(1)
    ours_1, ours_1_s = ours_near_dup(sub, dd_cfg)
    if HAVE_NUMBA:
        numba.set_num_threads(threads)
    assert (ours_1 == ours).all(), "thread count changed near-dup decisions"
    truth, best = exact_jaccard(shingles, qids, mh.threshold)
    near = np.abs(best - mh.threshold) <= 0.1
    print(f"near-dup on the same {nb:,} rows: ours {nb / ours_s:,.0f} rows/s ({threads} threads), "
          f"{nb / ours_1_s:,.0f} rows/s (1 thread), sha1 mode {nb / sha1_s:,.0f} rows/s; "
          f"datasketch {nb / base_s:,.0f} rows/s (shingling included)")
    by_kind = {name: {"rows": int((sub_kinds == k).sum()),
                      "dropped_ours": int(ours[sub_kinds == k].sum()),
                      "dropped_baseline": int(base[sub_kinds == k].sum()),
                      "dropped_exact": int(truth[sub_kinds == k].sum())}
               for k, name in enumerate(EDIT_NAMES)}
    print("planted copies dropped, by edit:", json.dumps(by_kind))
    vs_base = {"overall": precision_recall(ours, base), "near_threshold": precision_recall(ours[near], base[near]),
               "near_threshold_rows": int(near.sum())}
    vs_base_sha1 = precision_recall(sha1, base)
    vs_exact = {"ours": precision_recall(ours, truth),
                "ours_near_threshold": precision_recall(ours[near], truth[near]),
                "baseline": precision_recall(base, truth),
                "baseline_near_threshold": precision_recall(base[near], truth[near])}

    # ---- the full stage on all rows
    t = time.perf_counter()
    ledger, stats = curate.run(graded, cfg, eval_questions=evals)
    seconds = time.perf_counter() - t
    assert ledger.height == graded.height
    print(f"curate.run: {graded.height:,} rows in {seconds:.2f}s = {graded.height / seconds:,.0f} rows/s")
    stats = stats.to_json()
    print("funnel:", json.dumps(stats["funnel"]))
    print("dropped:", json.dumps(stats["dropped"]))
    print(f"decontamination: {len(stats['decontamination']['hits'])} hits (20 planted)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "same_rows": nb, "threads": threads, "cpus": os.cpu_count(), "jit_warmup_s": round(warmup, 3),
        "near_dup_rows_per_s": round(nb / ours_s), "near_dup_rows_per_s_1_thread": round(nb / ours_1_s),
        "near_dup_rows_per_s_sha1": round(nb / sha1_s), "baseline_rows_per_s": round(nb / base_s),
        "speedup": round(base_s / ours_s, 1), "speedup_1_thread": round(base_s / ours_1_s, 1),
        "ours_vs_baseline": vs_base, "ours_sha1_vs_baseline": vs_base_sha1, "vs_exact_jaccard": vs_exact,
        "rows": graded.height, "seconds": round(seconds, 3), "rows_per_s": round(graded.height / seconds),
        "peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    main()
