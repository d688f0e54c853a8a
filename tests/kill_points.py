"""Run the `rationale` CLI and SIGKILL its own process group (vLLM's engine processes included) at a named point.

Timing-based kills race the sampler (a fast machine finishes every shard before the kill lands), so the kill test
names its points instead; the kill itself is the real thing: SIGKILL of the whole group, no cleanup runs.

    python tests/kill_points.py POINT K -- [rationale args...]

Points (K counts shards written by this process):
    after_shard K      right after the K-th shard is renamed into place
    mid_write K        the K-th shard's temp file is written and fsynced, the rename has not happened
    answer_stage K     an answer stage is queued in the engine after K shards were written
"""

from __future__ import annotations

import os
import signal
import sys


def kill_group() -> None:
    sys.stderr.write("kill_points: SIGKILL\n")
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def install(point: str, k: int) -> None:
    from builder import sample

    written = 0
    write = sample.atomic_write_parquet

    def counted_write(df, path):
        nonlocal written
        if point == "mid_write" and written + 1 == k:
            os.replace = lambda *_: kill_group()  # the temp file is complete on disk; the rename never happens
        result = write(df, path)
        written += 1
        if point == "after_shard" and written == k:
            kill_group()
        return result

    sample.atomic_write_parquet = counted_write
    if point == "answer_stage":
        from vllm import LLM

        enqueue = LLM.enqueue

        def watched_enqueue(self, prompts, params=None, *args, **kwargs):
            ids = enqueue(self, prompts, params, *args, **kwargs)
            first = params[0] if isinstance(params, list) else params
            if written >= k and first is not None and first.temperature == 0.0:
                kill_group()
            return ids

        LLM.enqueue = watched_enqueue
    elif point not in ("after_shard", "mid_write"):
        raise SystemExit(f"kill_points: unknown point {point!r}")


if __name__ == "__main__":
    point, k, sep, *argv = sys.argv[1:]
    assert sep == "--", __doc__
    install(point, int(k))
    from builder.cli import main

    sys.exit(main(argv))
