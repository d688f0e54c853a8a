"""Where the stages run: the `Executor` protocol and the `EXECUTORS` registry (`executor.kind` in a build recipe).

`local` is today's single process (the default; Ray is never imported). `ray` samples through Ray Data on an actor
pool of engine replicas and curates with `builder.executors.ray_curate`. An executor changes where work runs, never
what it computes: the sample stage still owns seeds, prompts, the lock, the run fingerprint, shard names and the
shard frame, so the samples, the ledger and the content hash are the same on either (the executor section is in
neither the run fingerprint nor the content hash).

The registry holds loaders (module, class) rather than the classes: the implementations call the stages (grade,
curate) and Ray, while `builder.recipe` validates `executor.kind` against this module, so it must import neither.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from builder.registry import Registry

if TYPE_CHECKING:
    import polars as pl

    from builder.recipe import CurationConfig, ExecutorConfig, GradingConfig, Recipe
    from builder.run import Run
    from builder.stats import CurationStats
    from builder.store import Parts
    from builder.teachers.base import Answer, Completion, ShardWork, Teacher


@dataclass(frozen=True)
class ShardWritten:
    """What an executor reports per finished shard (the rows themselves are on storage, not in memory)."""

    path: str
    rows: int
    questions: int
    prompt_tokens: int
    completion_tokens: int
    started: float = 0.0  # epoch seconds: when the call that generated it began (engine already started)
    finished: float = 0.0  # epoch seconds: when the shard was on storage


@dataclass(frozen=True)
class Graded:
    """What grading hands to curation: the graded table (local: the frame, also written to one parquet file) or
    where its parquet parts are (ray: a folder on shared storage the driver never reads whole), and the totals the
    build summary and stats need, so no one reads the table back for them."""

    source: pl.DataFrame | str
    rows: int
    correct: int
    prompt_tokens: int
    completion_tokens: int


# (work, completions, answers, destination) -> ShardWritten: builds the shard frame, validates it and writes it
# atomically to the destination (the sample stage's `write_shard`, bound to the recipe and run id; picklable).
ShardWriter = Callable[["ShardWork", "Sequence[Completion]", "Sequence[Answer | None]", str], ShardWritten]


class Executor(Protocol):
    """Runs the heavy parts of a build: sampling (shards), grading and curation."""

    #: True when prompts are rendered where the teacher runs (a remote replica) instead of in the driver.
    remote: bool

    def sample(self, works: Iterable[tuple[str, ShardWork]], *, recipe: Recipe, teacher: Teacher | None,
               write: ShardWriter) -> Iterator[ShardWritten]:
        """Generate every (destination, shard) of `works` and write each with `write` as it finishes; yield what was
        written. Destinations are chosen by the caller (unique, deterministic): a retried shard rewrites its own
        file, so a replica that dies never duplicates rows. `teacher` is the driver's teacher (local only)."""
        ...

    def grade(self, run: Run, questions: pl.DataFrame, wanted: pl.DataFrame, cfg: GradingConfig) -> Graded:
        """Grade the run's samples that `wanted` (qid, n_samples) asks for: the questions' first n_samples, never a
        shard of another run; write the graded table where the run says (local: `run.graded_file`; ray: parts in
        `run.graded_parts`) and return where it is, with the totals the build summary needs."""
        ...

    def curate(self, run: Run, graded: Graded, cfg: CurationConfig, *, eval_questions: pl.DataFrame | None = None
               ) -> tuple[pl.DataFrame | Parts, CurationStats]:
        """Curate `graded` (ledger and stats identical to `builder.curate.run` on the same rows); write the whole
        ledger where the run says (as for grade) and return (what the store reads the version's rows from, stats):
        the ledger frame locally; on Ray the ledger's parquet parts (`store.Parts`), read in batches."""
        ...

    def close(self) -> None:
        """Release what the executor started (a Ray connection it opened stays for the process: see ray.py)."""


def shard_key(work: ShardWork) -> tuple[str, int]:
    """A shard's identity across a teacher's stream: its first request's (qid, first_idx); every run of sample
    indices is in exactly one shard, and teachers may yield a copy of the work (import drops its answer prompts)."""
    first = work.requests[0]
    return first.qid, first.first_idx


ExecutorFactory = Callable[["ExecutorConfig"], Executor]
EXECUTORS: Registry[ExecutorFactory] = Registry("executor")


def _loader(module: str, name: str) -> ExecutorFactory:
    def make(cfg: ExecutorConfig) -> Executor:
        return getattr(importlib.import_module(module), name)(cfg)

    make.__qualname__ = f"{module}.{name}"
    return make


EXECUTORS.register("local")(_loader("builder.executors.local", "LocalExecutor"))
EXECUTORS.register("ray")(_loader("builder.executors.ray", "RayExecutor"))


def make_executor(recipe: Recipe) -> Executor:
    """The recipe's executor (`executor.kind`, default local)."""
    return EXECUTORS.get(recipe.executor.kind)(recipe.executor)


def describe(cfg: Any) -> dict[str, Any]:
    """The executor settings as plain JSON (logs and stats; never hashed)."""
    return cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
