"""Exact and MinHash near-duplicate detection in bulk (datasketch semantics, compiled kernels)."""

from builder.dedup.lsh import cluster_global, cluster_within_groups, exact_within_groups, pairwise_jaccard
from builder.dedup.minhash import (
    Permutations,
    Shingled,
    normalize,
    permutations,
    shingle,
    signatures,
    signatures_from_hashes,
)

__all__ = [
    "Permutations", "Shingled", "cluster_global", "cluster_within_groups", "exact_within_groups", "normalize",
    "pairwise_jaccard", "permutations", "shingle", "signatures", "signatures_from_hashes",
]
