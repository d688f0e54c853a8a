"""Executors: where sampling, grading and curation run (`local` in this process, `ray` on a Ray cluster).

See `base.py` for the protocol and the `EXECUTORS` registry. Importing the implementations registers them; they
import Ray and the stages only inside their methods (Ray only for `kind: ray`).
"""

from __future__ import annotations

from builder.executors import local, ray  # noqa: F401 - register the built-in executors
from builder.executors.base import EXECUTORS, Executor, Graded, ShardWriter, ShardWritten, make_executor

__all__ = ["EXECUTORS", "Executor", "Graded", "ShardWriter", "ShardWritten", "make_executor"]
