"""Compiled kernels without a hard numba dependency, and the byte-level helpers curation kernels share.

numba ships with vllm; without it `njit` returns the function unchanged, so the same kernels run as (slow) Python
and `HAVE_NUMBA` is False (MinHash signatures then use numpy). dedup, select and the quality filters all build on
these; none of them reaches into another's internals.
"""

from __future__ import annotations

import numpy as np
import polars as pl

try:
    import numba

    njit = numba.njit(cache=True, nogil=True)
    njit_par = numba.njit(cache=True, nogil=True, parallel=True)
    prange = numba.prange
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only where numba is missing
    HAVE_NUMBA = False

    def njit(fn):
        return fn

    njit_par = njit
    prange = range


def text_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes and int64 row offsets of a string Series (zero-copy where Arrow allows)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = texts.fill_null("").rechunk().to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = pc.cast(arr, pa.large_string())
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return data, offsets


@njit
def fmix64(h):
    """MurmurHash3's 64-bit finaliser: mixes a combined hash so every bit depends on every input bit."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def _byte_map() -> np.ndarray:
    """0 for a separator byte, else the byte ASCII-lower-cased (`builder.dedup.minhash.normalize` on bytes)."""
    m = np.zeros(256, np.uint64)
    for c in range(256):
        if c >= 128 or chr(c).isalnum() or c == 95:
            m[c] = c + 32 if 65 <= c <= 90 else c
    return m


BYTE_MAP = _byte_map()  # per byte: 0 = word separator, else the (lower-cased) byte
