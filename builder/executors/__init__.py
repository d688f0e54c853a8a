"""Executors: where sampling, grading and curation run (`local` in this process, `ray` on a Ray cluster).

See `base.py` for the protocol; `local.py` and `ray.py` are loaded on first use (Ray only for `kind: ray`).
"""

from __future__ import annotations

from builder.executors.base import EXECUTORS, Executor, Graded, ShardWriter, ShardWritten, make_executor

__all__ = ["EXECUTORS", "Executor", "Graded", "ShardWriter", "ShardWritten", "make_executor"]
