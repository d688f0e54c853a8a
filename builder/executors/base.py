"""Where the stages run: the `Executor` protocol and the `EXECUTORS` registry (`executor.kind` in a build recipe).

`local` is today's single process (the default; Ray is never imported). `ray` samples through Ray Data on an actor
pool of engine replicas and curates with `builder.executors.ray_curate`. An executor changes where work runs, never
what it computes: the sample stage still owns seeds, prompts, the lock, the run fingerprint, shard names and the
shard frame, so the samples, the ledger and the content hash are the same on either (the executor section is in
neither the run fingerprint nor the content hash).

Each implementation registers its class (`@EXECUTORS.register("kind")`); `builder/executors/__init__.py` imports
them all, so importing the package fills the registry. They import Ray and the stages (grade, curate, the shards a
run holds) only inside their methods, and never `builder.sample`: the sample stage hands them what they need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from builder.registry import Registry

if TYPE_CHECKING:
    import polars as pl

    from builder.recipe import CurationConfig, ExecutorConfig, GradingConfig
    from builder.run import Run
    from builder.stats import CurationStats
    from builder.store import Parts
    from builder.teachers.base import Answer, Completion, ShardWork, Teacher, TeacherSetup


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
    """What grading hands to curation: where the graded table is, as parquet parts (local: the one file
    `run.graded_file`; ray: the parts on shared storage, which the driver never reads whole; none when nothing was
    graded), and the totals the build summary and stats need, so no one reads the table back for them."""

    parts: tuple[str, ...]
    rows: int
    correct: int
    prompt_tokens: int
    completion_tokens: int

    def scan(self) -> pl.LazyFrame:
        """The graded table as a lazy frame (no parts: the empty table)."""
        import polars as pl

        from builder.schemas import table_schema

        return pl.scan_parquet(list(self.parts)) if self.parts else table_schema("graded").empty().lazy()


# (work, completions, answers, destination) -> ShardWritten: builds the shard frame, validates it and writes it
# atomically to the destination (the sample stage's `write_shard`, bound to the recipe and run id; picklable).
ShardWriter = Callable[["ShardWork", "Sequence[Completion]", "Sequence[Answer | None]", str], ShardWritten]


class Executor(Protocol):
    """Runs the heavy parts of a build: sampling (shards), grading and curation."""

    #: True when prompts are rendered where the teacher runs (a remote replica) instead of in the driver.
    remote: bool

    def sample(self, works: Iterable[tuple[str, ShardWork]], *, setup: TeacherSetup, teacher: Teacher | None,
               write: ShardWriter) -> Iterator[ShardWritten]:
        """Generate every (destination, shard) of `works` and write each with `write` as it finishes; yield what was
        written. Destinations are chosen by the caller (unique, deterministic): a retried shard rewrites its own
        file, so a replica that dies never duplicates rows. `teacher` is the driver's teacher (local only); a remote
        executor makes its replicas' teachers from `setup`."""
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


def make_executor(cfg: ExecutorConfig) -> Executor:
    """The executor a recipe's `executor` section names (`kind`, default local)."""
    return EXECUTORS.get(cfg.kind)(cfg)
