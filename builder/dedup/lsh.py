"""LSH banding and clustering on bulk MinHash signatures, with datasketch's MinHashLSH semantics.

Two rows are candidates when all `rows` values of at least one of the `bands` bands are equal (what
`MinHashLSH(params=(bands, rows))` buckets on); a candidate pair is a duplicate when the estimated Jaccard
(share of equal signature values, `MinHash.jaccard`) is >= threshold. Duplicates are joined with union-find;
each cluster's root is its lowest row index, so after sorting rows by (qid, sample_idx) the first sample of a
cluster is kept.

Within-question scope walks the pairs of each question's rows directly (N is small; same candidates as
bucketing); global scope buckets by a hash of each band (argsort per band) and verifies band equality.
"""

from __future__ import annotations

import numpy as np

from builder.kernels import fmix64, njit, njit_par, prange


@njit
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit
def _union(parent, i, j):
    ri = _find(parent, i)
    rj = _find(parent, j)
    if ri < rj:
        parent[rj] = ri
    elif rj < ri:
        parent[ri] = rj


@njit
def jaccard(sig, i, j):
    """Estimated Jaccard of rows i and j: the share of equal signature values (datasketch's MinHash.jaccard)."""
    p = sig.shape[1]
    eq = 0
    for k in range(p):
        if sig[i, k] == sig[j, k]:
            eq += 1
    return eq / p


@njit
def _band_match(sig, i, j, bands, rows):
    for band in range(bands):
        same = True
        for k in range(band * rows, (band + 1) * rows):
            if sig[i, k] != sig[j, k]:
                same = False
                break
        if same:
            return True
    return False


@njit_par
def _within_groups(sig, group_starts, bands, rows, threshold):
    n = sig.shape[0]
    parent = np.arange(n)
    for g in prange(len(group_starts) - 1):
        lo = group_starts[g]
        hi = group_starts[g + 1]
        for i in range(lo, hi):
            for j in range(i + 1, hi):
                if _band_match(sig, i, j, bands, rows) and jaccard(sig, i, j) >= threshold:
                    _union(parent, i, j)  # both in this group: no other thread touches them
    for i in range(n):
        parent[i] = _find(parent, i)
    return parent


@njit
def _exact_within_groups(keys, group_starts):
    n = len(keys)
    root = np.arange(n)
    for g in range(len(group_starts) - 1):
        lo = group_starts[g]
        hi = group_starts[g + 1]
        for j in range(lo + 1, hi):
            for i in range(lo, j):
                if root[i] == i and keys[i] == keys[j]:
                    root[j] = i
                    break
    return root


@njit_par
def band_keys(sig, bands, rows):
    """(bands, n) uint64: one hash of each row's values in each band; equal keys are LSH candidates."""
    n = sig.shape[0]
    out = np.empty((bands, n), np.uint64)
    for i in prange(n):
        for band in range(bands):
            h = np.uint64(band) * np.uint64(0x9E3779B97F4A7C15)
            for k in range(band * rows, (band + 1) * rows):
                h = fmix64(h ^ np.uint64(sig[i, k]))
            out[band, i] = h
    return out


@njit
def _link_sorted(sig, order, keys, parent, bands, rows, threshold, window):
    n = len(order)
    run = 0
    for pos in range(1, n + 1):
        if pos < n and keys[order[pos]] == keys[order[run]]:
            continue
        # run = order[run:pos] share one band hash; compare each member with up to `window` before it
        for a in range(run + 1, pos):
            for b in range(max(run, a - window), a):
                i = order[b]
                j = order[a]
                if _band_match(sig, i, j, bands, rows) and jaccard(sig, i, j) >= threshold:
                    _union(parent, i, j)
        run = pos


def cluster_within_groups(sig: np.ndarray, group_starts: np.ndarray, *, bands: int, threshold: float) -> np.ndarray:
    """Cluster root (lowest row index) of every row; rows of group g are group_starts[g]:group_starts[g+1]."""
    if sig.shape[1] % bands:
        raise ValueError(f"num_perm {sig.shape[1]} is not a multiple of bands {bands}")
    if not len(sig):
        return np.zeros(0, np.int64)
    return _within_groups(sig, group_starts.astype(np.int64), bands, sig.shape[1] // bands, float(threshold))


def cluster_global(sig: np.ndarray, *, bands: int, threshold: float, window: int = 64) -> np.ndarray:
    """Cluster root of every row across the whole set: bucket by band hash, verify, union-find.

    A bucket larger than `window` compares each member with the `window` members before it (in row order)
    instead of all pairs, which bounds the work on degenerate buckets; chains still link through union-find.
    """
    if sig.shape[1] % bands:
        raise ValueError(f"num_perm {sig.shape[1]} is not a multiple of bands {bands}")
    n = len(sig)
    parent = np.arange(n)
    if not n:
        return parent
    rows = sig.shape[1] // bands
    keys = band_keys(sig, bands, rows)
    for band in range(bands):
        order = np.argsort(keys[band], kind="stable")
        _link_sorted(sig, order, keys[band], parent, bands, rows, float(threshold), window)
    return _resolve(parent)


def link_buckets(sig: np.ndarray, band: np.ndarray, key: np.ndarray, row: np.ndarray, parent: np.ndarray, *,
                 bands: int, threshold: float, window: int = 64) -> np.ndarray:
    """`cluster_global`'s linking on part of the buckets: union into `parent` the duplicates among rows that share
    a (band, band key) and return each row's root. Each (band, key) bucket must be here whole; its rows are compared
    in row order, each with up to `window` before it, so a partition of the buckets by key (one task each) finds
    the same duplicate pairs as `cluster_global`."""
    rows = sig.shape[1] // bands
    keys = np.zeros(len(sig), np.uint64)
    for b in np.unique(band):
        sel = band == b
        r, k = row[sel], key[sel]
        keys[r] = k
        _link_sorted(sig, r[np.lexsort((r, k))], keys, parent, bands, rows, float(threshold), window)
    return _resolve(parent)


@njit
def _union_all(parent, a, b):
    for k in range(len(a)):
        _union(parent, a[k], b[k])
    for i in range(len(parent)):
        parent[i] = _find(parent, i)
    return parent


def union_pairs(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of rows 0..n-1 joined by the pairs (a[k], b[k]): each row's root, its lowest row."""
    return _union_all(np.arange(n), a.astype(np.int64), b.astype(np.int64))


@njit
def _resolve(parent):
    for i in range(len(parent)):
        parent[i] = _find(parent, i)
    return parent


def exact_within_groups(keys: np.ndarray, group_starts: np.ndarray) -> np.ndarray:
    """Root (first row with the same key in its group) of every row."""
    if not len(keys):
        return np.zeros(0, np.int64)
    return _exact_within_groups(keys, group_starts.astype(np.int64))


@njit_par
def _pair_stats(sig, group_starts, mask):
    g_n = len(group_starts) - 1
    sums = np.zeros(g_n)
    counts = np.zeros(g_n, np.int64)
    for g in prange(g_n):
        lo = group_starts[g]
        hi = group_starts[g + 1]
        s = 0.0
        c = 0
        for i in range(lo, hi):
            if not mask[i]:
                continue
            for j in range(i + 1, hi):
                if mask[j]:
                    s += jaccard(sig, i, j)
                    c += 1
        sums[g] = s
        counts[g] = c
    return sums, counts


def pairwise_jaccard(sig: np.ndarray, group_starts: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group: sum of estimated pairwise Jaccard over masked rows, and the number of pairs."""
    if not len(sig):
        return np.zeros(len(group_starts) - 1), np.zeros(len(group_starts) - 1, np.int64)
    return _pair_stats(sig, group_starts.astype(np.int64), mask.astype(np.bool_))
