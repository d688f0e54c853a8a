"""What the curation benchmarks share: shingles as our kernels define them, datasketch's LSH decisions, union-find
drops and precision/recall. The baseline never calls our dedup code; only `words` is ours, so both sides shingle
alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def text_shingles(text: str | None, ngram: int) -> list[bytes]:
    """A text's word n-grams as bytes, exactly as our kernels define them (a short text is one shingle)."""
    from builder.dedup.minhash import words

    ws = words(text or "")
    grams = [ws] if len(ws) < ngram else [ws[j: j + ngram] for j in range(len(ws) - ngram + 1)]
    return [" ".join(g).encode("utf-8") for g in grams if g]


def cluster_drops(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Union-find over dup pairs; every row that is not its cluster's lowest index is dropped."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = find(i), find(j)
        parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) != i for i in range(n)], dtype=bool)


def lsh_drops(sketches: Sequence, qids: Sequence[str], mh) -> np.ndarray:
    """datasketch's decisions (True = dropped): MinHashLSH candidates of the same question whose estimated Jaccard
    reaches the threshold, clustered."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(num_perm=mh.num_perm, params=(mh.bands, mh.num_perm // mh.bands))
    for i, m in enumerate(sketches):
        lsh.insert(i, m, check_duplication=False)
    pairs = [(i, j) for i, m in enumerate(sketches) for j in lsh.query(m)
             if j > i and qids[j] == qids[i] and m.jaccard(sketches[j]) >= mh.threshold]
    return cluster_drops(len(sketches), pairs)


def precision_recall(pred: np.ndarray, truth: np.ndarray) -> dict[str, float | int | None]:
    hit = int((pred & truth).sum())
    return {"precision": round(hit / int(pred.sum()), 5) if pred.sum() else None,
            "recall": round(hit / int(truth.sum()), 5) if truth.sum() else None,
            "drops": int(pred.sum()), "reference_drops": int(truth.sum())}
