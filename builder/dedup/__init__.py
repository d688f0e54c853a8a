"""Exact and MinHash near-duplicate detection in bulk (datasketch semantics, compiled kernels).

The public API other stages use: signatures (`shingle`, `permutations`, `signatures_from_hashes`), LSH band keys
(`band_keys`, decontamination's candidates), clustering, and `jaccard`, the signature estimate that selection's own
kernel calls."""

from builder.dedup.lsh import (
    band_keys,
    cluster_global,
    cluster_within_groups,
    exact_within_groups,
    jaccard,
    link_buckets,
    pairwise_jaccard,
    union_pairs,
)
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
    "Permutations", "Shingled", "band_keys", "cluster_global", "cluster_within_groups", "exact_within_groups",
    "jaccard", "link_buckets", "normalize", "pairwise_jaccard", "permutations", "shingle", "signatures",
    "signatures_from_hashes", "union_pairs",
]
