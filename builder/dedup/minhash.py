"""Bulk MinHash signatures with datasketch's semantics, many documents at once.

datasketch builds one `MinHash` per document and hashes shingles one Python call at a time; at a million
rationales that is the bottleneck. Here the permutations are datasketch's own (drawn from
`np.random.RandomState(seed)` exactly as `MinHash._init_permutations` does, for its "affine32" and "legacy"
schemes) and a compiled kernel applies them to every shingle of many documents and reduces with a segment min.

Two shingle hashes:
- "sha1": datasketch's `sha1_hash32` of the shingle text (words joined by one space). Signatures are
  bit-identical to `datasketch.MinHash(num_perm, seed, scheme=...)` fed the same shingles (tested), but
  hashing is one Python call per shingle (~1 us each).
- "fast": our own stable 64-bit word hash (FNV-1a + murmur finaliser) over the UTF-8 bytes, combined per
  n-gram and truncated to 32 bits, all in the kernel. Same permutations, same estimator, different (equally
  uniform) input hash, so signatures differ from datasketch's bit for bit but estimate the same Jaccard. It
  does not depend on polars' or Python's hash, so decisions are reproducible across versions.

Text is normalised first (`normalize`): ASCII lower case, every run of ASCII non-word characters is a break.
Shingles are word n-grams; a document with fewer than n words is one shingle; an empty one has the empty
signature (all max), like an empty datasketch MinHash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from builder.kernels import BYTE_MAP, HAVE_NUMBA, fmix64, njit, njit_par, prange, text_buffers

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH32 = np.uint64((1 << 32) - 1)
SCHEMES = ("affine32", "legacy")
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


_SEPARATORS = re.compile(r"[\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]+")
_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def normalize(text: str) -> str:
    """The normalisation every curation step shares, as Python (the kernels do the same on bytes).

    ASCII letters are lower-cased; each run of ASCII characters other than letters, digits and '_' (spaces,
    punctuation, newlines) becomes one space; non-ASCII characters are kept as word characters. Byte-level and
    ASCII-only on purpose: a Unicode-aware regex costs ~5 us per rationale, more than all of MinHash.
    """
    return _SEPARATORS.sub(" ", text.translate(_ASCII_LOWER)).strip(" ")


def words(text: str) -> list[str]:
    """Normalised words; split on ' ' only (str.split() would also split on Unicode spaces the kernels keep)."""
    return [w for w in normalize(text).split(" ") if w]


@dataclass(frozen=True)
class Permutations:
    """datasketch's permutation parameters for one (num_perm, seed, scheme)."""

    a: np.ndarray
    b: np.ndarray
    scheme: str

    @property
    def num_perm(self) -> int:
        return len(self.a)

    @property
    def dtype(self) -> type:
        return np.uint32 if self.scheme == "affine32" else np.uint64


def permutations(num_perm: int, seed: int, scheme: str = "affine32") -> Permutations:
    """Replicate `datasketch.MinHash(num_perm, seed, scheme=scheme).permutations` without building a MinHash."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        pairs = np.array(
            [(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64), gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
             for _ in range(num_perm)], dtype=np.uint64).T
        return Permutations(pairs[0].copy(), pairs[1].copy(), scheme)
    if scheme != "affine32":
        raise ValueError(f"unknown MinHash scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return Permutations(a, b, scheme)


# ------------------------------------------------------------------------------------------- kernels
@njit
def _fmix32(h):
    """MurmurHash3's 32-bit finaliser (datasketch's affine32 pre-mix), in uint64 with explicit 32-bit masks."""
    m = np.uint64(0xFFFFFFFF)
    h = np.uint64(h)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & m
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & m
    h ^= h >> np.uint64(16)
    return h


@njit_par
def _word_hashes(data, offsets, byte_map):
    """Split each raw row into normalised words (see `normalize`) and hash each: (hashes, per-row word starts)."""
    n = len(offsets) - 1
    counts = np.zeros(n + 1, np.int64)
    for r in prange(n):
        c = 0
        prev = np.uint64(0)
        for i in range(offsets[r], offsets[r + 1]):
            cur = byte_map[data[i]]
            if cur != 0 and prev == 0:
                c += 1
            prev = cur
        counts[r + 1] = c
    starts = np.cumsum(counts)
    out = np.empty(starts[n], np.uint64)
    for r in prange(n):
        k = starts[r]
        h = _FNV_OFFSET
        prev = np.uint64(0)
        for i in range(offsets[r], offsets[r + 1]):
            cur = byte_map[data[i]]
            if cur == 0:
                if prev != 0:
                    out[k] = fmix64(h)
                    k += 1
                    h = _FNV_OFFSET
            else:
                h = (h ^ cur) * _FNV_PRIME
            prev = cur
        if prev != 0:
            out[k] = fmix64(h)
    return out, starts


@njit
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit_par
def _shingle_hashes(words, word_starts, ngram):
    """32-bit hash of every word n-gram of every row (a row shorter than n is one shingle), and each row's
    64-bit exact-dup key (its whole normalised word sequence). Word hashes are already mixed, so an n-gram
    combines them with rotations (order matters) and one finaliser."""
    n = len(word_starts) - 1
    counts = np.zeros(n + 1, np.int64)
    for r in prange(n):
        nw = word_starts[r + 1] - word_starts[r]
        counts[r + 1] = 0 if nw == 0 else max(1, nw - ngram + 1)
    starts = np.cumsum(counts)
    out = np.empty(starts[n], np.uint32)
    keys = np.empty(n, np.uint64)
    for r in prange(n):
        w0 = word_starts[r]
        nw = word_starts[r + 1] - w0
        key = np.uint64(0x243F6A8885A308D3) ^ np.uint64(nw)
        for i in range(w0, w0 + nw):
            key = (key ^ words[i]) * np.uint64(0x9E3779B97F4A7C15)
        keys[r] = fmix64(key)
        m = min(ngram, nw)
        for s in range(starts[r + 1] - starts[r]):
            h = np.uint64(0)
            for j in range(m):
                h = _rotl(h, 23) ^ words[w0 + s + j]
            out[starts[r] + s] = np.uint32(fmix64(h + np.uint64(m)) & np.uint64(0xFFFFFFFF))
    return out, starts, keys


@njit_par
def _signatures_affine32(hashes, starts, a, b):
    n = len(starts) - 1
    p = len(a)
    sig = np.full((n, p), np.uint32(0xFFFFFFFF), np.uint32)
    for r in prange(n):
        row = sig[r]
        for s in range(starts[r], starts[r + 1]):
            h = np.uint32(_fmix32(hashes[s]))
            for k in range(p):
                v = np.uint32(a[k] * h + b[k])  # wraps mod 2^32 like datasketch's uint32 arithmetic
                if v < row[k]:
                    row[k] = v
    return sig


@njit_par
def _signatures_legacy(hashes, starts, a, b):
    n = len(starts) - 1
    p = len(a)
    prime = np.uint64((1 << 61) - 1)
    mask = np.uint64(0xFFFFFFFF)
    sig = np.full((n, p), mask, np.uint64)
    for r in prange(n):
        row = sig[r]
        for s in range(starts[r], starts[r + 1]):
            h = np.uint64(hashes[s])
            for k in range(p):
                v = ((a[k] * h + b[k]) % prime) & mask
                if v < row[k]:
                    row[k] = v
    return sig


def _signatures_numpy(hashes: np.ndarray, starts: np.ndarray, perm: Permutations, chunk: int = 8192) -> np.ndarray:
    """Reference path without numba: permute in chunks, then np.minimum.reduceat per row."""
    dtype = perm.dtype
    n = len(starts) - 1
    sig = np.full((n, perm.num_perm), np.iinfo(dtype).max if dtype == np.uint32 else MAX_HASH32, dtype=dtype)
    if perm.scheme == "affine32":
        h = hashes.astype(np.uint32)
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        h = h ^ (h >> np.uint32(16))
    else:
        h = hashes.astype(np.uint64)
    nonempty = np.flatnonzero(np.diff(starts) > 0)
    row_of = np.repeat(np.arange(n), np.diff(starts))
    for lo in range(0, len(h), chunk):
        hh = h[lo: lo + chunk]
        if perm.scheme == "affine32":
            v = hh[:, None] * perm.a[None, :] + perm.b[None, :]
        else:
            v = np.bitwise_and((perm.a[None, :] * hh[:, None] + perm.b[None, :]) % MERSENNE_PRIME, MAX_HASH32)
        rows = row_of[lo: lo + chunk]
        cuts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        red = np.minimum.reduceat(v, cuts, axis=0)
        sig[rows[cuts]] = np.minimum(sig[rows[cuts]], red)
    del nonempty
    return sig


# ------------------------------------------------------------------------------------------- public API
@dataclass
class Shingled:
    """Shingle hashes of many rows: `hashes[starts[i]:starts[i+1]]` belong to row i; `row_keys` are exact-dup keys."""

    hashes: np.ndarray
    starts: np.ndarray
    row_keys: np.ndarray


def sha1_shingle_hashes(texts: pl.Series, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's sha1_hash32 of each shingle's text (words joined by ' '); one Python call per shingle."""
    from datasketch.hashfunc import sha1_hash32

    hashes: list[int] = []
    starts = [0]
    for text in texts.fill_null("").to_list():
        ws = words(text)
        if ws:
            grams = [ws] if len(ws) < ngram else [ws[i: i + ngram] for i in range(len(ws) - ngram + 1)]
            hashes.extend(sha1_hash32(" ".join(g).encode("utf-8")) for g in grams)
        starts.append(len(hashes))
    return np.asarray(hashes, dtype=np.uint32), np.asarray(starts, dtype=np.int64)


def shingle(texts: pl.Series, ngram: int, hash: str = "fast") -> Shingled:
    """Shingle raw texts (normalised on the fly) into flat 32-bit hashes plus exact-dup row keys."""
    if hash not in ("fast", "sha1"):
        raise ValueError(f"unknown shingle hash {hash!r}; valid: fast, sha1")
    data, offsets = text_buffers(texts)
    word_h, word_starts = _word_hashes(data, offsets, BYTE_MAP)
    h, starts, keys = _shingle_hashes(word_h, word_starts, np.int64(ngram))
    if hash == "sha1":
        h, starts = sha1_shingle_hashes(texts, ngram)
    return Shingled(h, starts, keys)


def signatures_from_hashes(hashes: np.ndarray, starts: np.ndarray, perm: Permutations,
                           *, use_numba: bool = True) -> np.ndarray:
    """MinHash signatures (rows x num_perm; uint32 for affine32, uint64 for legacy like datasketch)."""
    if use_numba and HAVE_NUMBA:
        if perm.scheme == "affine32":
            return _signatures_affine32(hashes.astype(np.uint32, copy=False), starts, perm.a, perm.b)
        return _signatures_legacy(hashes.astype(np.uint32, copy=False), starts, perm.a, perm.b)
    return _signatures_numpy(hashes, starts, perm)


def signatures(texts: pl.Series, *, num_perm: int = 128, seed: int = 1, ngram: int = 5, scheme: str = "affine32",
               hash: str = "fast") -> np.ndarray:
    """MinHash signatures of raw texts: one row of num_perm values per text."""
    sh = shingle(texts, ngram, hash)
    return signatures_from_hashes(sh.hashes, sh.starts, permutations(num_perm, seed, scheme))
