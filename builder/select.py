"""Diversity selection: keep k of the N surviving rationales of each question, and measure diversity.

Fine-tune-CoT's gains come from many *different* rationales per question, so when a question has more than
k survivors we keep the k that are most dissimilar: greedy max-min on estimated Jaccard (start from the lowest
sample index, then repeatedly add the row whose highest similarity to the chosen set is lowest; ties go to the
lower index). "random" (seeded) and "first" (lowest sample indices) are baselines to compare against.

Length-aware modes, for reasoning traces: small students learn better from shorter chains of thought than from a
strong reasoner's long ones, and best from a mix of short and long (Li et al. 2025, "Small Models Struggle to
Learn from Strong Reasoners", arXiv:2502.12143, "Mix Distillation"). "shortest" keeps the k shortest correct
survivors; "length_mix" keeps round(short_share * k) from the short end and the rest from the long end. Length is
given by the caller (curate passes the trace's characters, else the rationale's); ties go to the lower index.

Every mode keeps min(k, N) rows, so a question with a survivor always keeps at least one.

Rows are given grouped: rows of group g are `group_starts[g]:group_starts[g+1]`, in sample_idx order.
"""

from __future__ import annotations

import numpy as np

from builder.dedup import jaccard
from builder.kernels import njit_par, prange

MODES = ("diverse", "random", "first", "shortest", "length_mix")


@njit_par
def _diverse(sig, group_starts, k):
    n = sig.shape[0]
    chosen = np.zeros(n, np.bool_)
    for g in prange(len(group_starts) - 1):
        lo = group_starts[g]
        hi = group_starts[g + 1]
        if hi - lo <= k:
            for i in range(lo, hi):
                chosen[i] = True
            continue
        maxsim = np.full(hi - lo, -1.0)
        pick = lo
        for _ in range(k):
            chosen[pick] = True
            best = -1
            best_val = 2.0
            for i in range(lo, hi):
                if chosen[i]:
                    continue
                s = jaccard(sig, i, pick)
                if s > maxsim[i - lo]:
                    maxsim[i - lo] = s
                if maxsim[i - lo] < best_val:
                    best_val = maxsim[i - lo]
                    best = i
            pick = best
    return chosen


def _by_length(group_starts: np.ndarray, k: int, lengths: np.ndarray, short_share: float | None) -> np.ndarray:
    """k shortest per group (short_share None), or round-half-up(short_share * k) shortest plus the longest."""
    sizes = np.diff(group_starts)
    group = np.repeat(np.arange(len(sizes)), sizes)
    n = len(group)
    order = np.lexsort((np.arange(n), lengths, group))  # by group, then length, then index
    rank = np.arange(n) - np.repeat(group_starts[:-1], sizes)  # rank of order[i] within its group by length
    n_short = k if short_share is None else int(np.floor(short_share * k + 0.5))
    size = np.repeat(sizes, sizes)
    keep_sorted = (rank < n_short) | (rank >= size - (k - n_short)) | (size <= k)
    chosen = np.zeros(n, dtype=bool)
    chosen[order[keep_sorted]] = True
    return chosen


def select(group_starts: np.ndarray, k: int | None, mode: str = "diverse", *, sig: np.ndarray | None = None,
           seed: int = 0, lengths: np.ndarray | None = None, short_share: float = 0.5) -> np.ndarray:
    """Boolean mask of the rows kept: min(k, N) per group.

    Args:
        group_starts: int offsets (len groups+1) of each question's rows.
        k: rows to keep per question; None keeps all.
        mode: diverse (needs `sig`), random, first, shortest or length_mix (need `lengths`).
        sig: MinHash signatures of the rows (diverse mode).
        seed: random mode seed.
        lengths: per-row length (shortest and length_mix modes).
        short_share: length_mix: share of k taken from the shortest rows.
    """
    if mode not in MODES:
        raise ValueError(f"unknown selection mode {mode!r}; valid: {', '.join(MODES)}")
    group_starts = np.asarray(group_starts, dtype=np.int64)
    n = int(group_starts[-1]) if len(group_starts) else 0
    if k is None or n == 0:
        return np.ones(n, dtype=bool)
    sizes = np.diff(group_starts)
    rank = np.arange(n) - np.repeat(group_starts[:-1], sizes)  # position within the group
    if mode == "first":
        return rank < k
    if mode == "random":
        rng = np.random.default_rng(seed)
        key = np.repeat(np.arange(len(sizes)), sizes) + rng.random(n)  # sorts by group, random within
        order = np.argsort(key, kind="stable")
        chosen = np.zeros(n, dtype=bool)
        chosen[order[rank < k]] = True
        return chosen
    if mode in ("shortest", "length_mix"):
        if lengths is None:
            raise ValueError(f"{mode} selection needs the rows' lengths")
        return _by_length(group_starts, int(k), np.asarray(lengths), None if mode == "shortest" else short_share)
    if sig is None:
        raise ValueError("diverse selection needs MinHash signatures (curation.minhash.enabled: true)")
    return _diverse(sig, group_starts, int(k))


@njit_par
def _distinct(hashes, starts, group_starts, mask):
    g_n = len(group_starts) - 1
    distinct = np.zeros(g_n, np.int64)
    total = np.zeros(g_n, np.int64)
    for g in prange(g_n):
        lo = group_starts[g]
        hi = group_starts[g + 1]
        t = 0
        for i in range(lo, hi):
            if mask[i]:
                t += starts[i + 1] - starts[i]
        if t == 0:
            continue
        buf = np.empty(t, hashes.dtype)
        p = 0
        for i in range(lo, hi):
            if mask[i]:
                m = starts[i + 1] - starts[i]
                buf[p: p + m] = hashes[starts[i]: starts[i + 1]]
                p += m
        buf.sort()
        d = 1
        for q in range(1, t):
            if buf[q] != buf[q - 1]:
                d += 1
        distinct[g] = d
        total[g] = t
    return distinct, total


def distinct_ngrams(hashes: np.ndarray, starts: np.ndarray, group_starts: np.ndarray,
                    mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: distinct shingle hashes and total shingles over the masked rows (distinct-n within a question)."""
    g = len(group_starts) - 1
    if g <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return _distinct(hashes, starts.astype(np.int64), np.asarray(group_starts, np.int64), mask.astype(np.bool_))
