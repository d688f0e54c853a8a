"""Run the `rationale` CLI and SIGKILL its own process group (vLLM's engine processes included) at a named point.

Timing-based kills race the program (a fast machine finishes every shard before the kill lands), so the kill tests
name their points instead; the kill itself is the real thing: SIGKILL of the whole group, no cleanup runs. Each
point wraps the function where it lands (nothing in builder/ knows about it).

    python tests/kill_points.py POINT ARG -- [rationale args...]

Sampling (`rationale sample`; ARG = K counts shards written by this process):
    after_shard K         right after the K-th shard is renamed into place
    mid_write K           the K-th shard's temp file is written and fsynced, the rename has not happened
    answer_stage K        an answer stage is queued in the engine after K shards were written
Training (`rationale train`, HF Trainer; ARG = K, an optimiser step):
    train_step K          steps 1..K are done and in train_log.jsonl, step K+1 begins (a TrainerCallback's
                          on_step_begin)
    checkpoint_partial K  HF's files of checkpoints/checkpoint-K/ are written, our settings file (written last, what
                          marks the checkpoint complete) is not
Build (`rationale build`; ARG = the table, graded or ledger, or 1 where there is none):
    computed TABLE        the stage that makes TABLE returned; TABLE.parquet is not written
    table_mid_write TABLE TABLE.parquet's temp file is complete, the rename has not happened
    written TABLE         TABLE.parquet is renamed into place; the next stage has not begun
    version_temp 1        the version's data shards are in the store's .tmp-v* folder; card and manifest are not
    version_renamed 1     the version folder is renamed into place; versions.json is not updated
    pause_written TABLE   not a kill: after TABLE.parquet is written, touch $KILL_POINTS_PAUSED and wait (up to
                          120 s) until $KILL_POINTS_RESUME exists, so a test can run a second build meanwhile
    pause_card 1          the same pause inside the store lock (the version's card is about to be written)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

KILL_MESSAGE = "kill_points: SIGKILL"


def kill_group() -> None:
    sys.stderr.write(KILL_MESSAGE + "\n")
    sys.stderr.flush()
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _kill_at_next_replace() -> None:
    """The file or folder being written is complete on disk; its rename into place never happens."""
    os.replace = os.link = lambda *_: kill_group()


# ---------------------------------------------------------------- sampling
def _sample(point: str, k: int) -> None:
    from builder import sample

    written = 0
    write = sample.atomic_write_parquet

    def counted_write(df, path, **kwargs):
        nonlocal written
        if point == "mid_write" and written + 1 == k:
            _kill_at_next_replace()
        result = write(df, path, **kwargs)
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


# ---------------------------------------------------------------- training
def _train(point: str, k: int) -> None:
    from builder import train

    if point == "train_step":
        from transformers import TrainerCallback

        class KillAtStep(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == k:  # steps 1..K are done, logged and (when due) checkpointed
                    kill_group()

        make = train.callbacks
        train.callbacks = lambda *a, **kw: [*make(*a, **kw), KillAtStep()]
    else:
        write = train.write_checkpoint_settings

        def watched_write(ckpt, settings):
            if settings["step"] == k:  # HF's files of checkpoint-K are written; ours, the last one, never is
                kill_group()
            return write(ckpt, settings)

        train.write_checkpoint_settings = watched_write


# ---------------------------------------------------------------- build
def _build(point: str, table: str) -> None:
    from builder import build, card, curate, grade, schemas, store

    if point == "computed":
        module = {"graded": grade, "ledger": curate}[table]
        run = module.run
        module.run = lambda *a, **k: (run(*a, **k), kill_group())
    elif point in ("table_mid_write", "written", "pause_written"):
        write = schemas.write_table  # the executors write graded/ledger, build writes questions

        def watched_write(df, path, name, **kwargs):
            at = Path(path).name == f"{table}.parquet"
            if at and point == "table_mid_write":
                _kill_at_next_replace()
            result = write(df, path, name, **kwargs)
            if at and point == "written":
                kill_group()
            if at and point == "pause_written":
                _pause()
            return result

        schemas.write_table = build.write_table = watched_write
    elif point == "version_temp":
        card.write_card = lambda *a, **k: kill_group()
    elif point == "version_renamed":
        store.index.write_index = lambda *a, **k: kill_group()
    elif point == "pause_card":
        write_card = card.write_card
        card.write_card = lambda *a, **k: (_pause(), write_card(*a, **k))[1]


def _pause() -> None:
    Path(os.environ["KILL_POINTS_PAUSED"]).touch()
    release = Path(os.environ["KILL_POINTS_RESUME"])
    deadline = time.time() + 120
    while not release.exists() and time.time() < deadline:
        time.sleep(0.05)


POINTS: dict[str, Callable[[str, str], None]] = {
    **{p: lambda p, a: _sample(p, int(a)) for p in ("after_shard", "mid_write", "answer_stage")},
    **{p: lambda p, a: _train(p, int(a)) for p in ("train_step", "checkpoint_partial")},
    **{p: _build for p in ("computed", "table_mid_write", "written", "version_temp", "version_renamed",
                           "pause_written", "pause_card")},
}


def install(point: str, arg: str) -> None:
    if point not in POINTS:
        raise SystemExit(f"kill_points: unknown point {point!r}; known: {', '.join(POINTS)}")
    POINTS[point](point, str(arg))


if __name__ == "__main__":
    point, arg, sep, *argv = sys.argv[1:]
    assert sep == "--", __doc__
    install(point, arg)
    from builder.cli import main

    sys.exit(main(argv))
