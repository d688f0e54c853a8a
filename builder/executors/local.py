"""`executor.kind: local`: every stage in this process, through the recipe's teacher (today's path, the default)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from builder.executors.base import EXECUTORS, Graded, ShardWriter, ShardWritten, shard_key

if TYPE_CHECKING:
    import polars as pl

    from builder.recipe import CurationConfig, ExecutorConfig, GradingConfig
    from builder.run import Run
    from builder.stats import CurationStats
    from builder.teachers.base import ShardWork, Teacher, TeacherSetup


@EXECUTORS.register("local")
class LocalExecutor:
    remote = False

    def __init__(self, cfg: ExecutorConfig | None = None) -> None:
        self.cfg = cfg

    def sample(self, works: Iterable[tuple[str, ShardWork]], *, setup: TeacherSetup, teacher: Teacher | None,
               write: ShardWriter) -> Iterator[ShardWritten]:
        """Stream the shards through the teacher (pipelined, one engine) and write each the moment it completes."""
        if teacher is None:
            raise ValueError("the local executor samples through the driver's teacher; none was given")
        dest: dict[tuple[str, int], str] = {}

        def pending() -> Iterator[ShardWork]:
            for path, work in works:
                dest[shard_key(work)] = path
                yield work

        for work, completions, answers in teacher.stream(pending(), setup.sampling.answer_max_tokens):
            yield write(work, completions, answers, dest.pop(shard_key(work)))

    def grade(self, run: Run, questions: pl.DataFrame, wanted: pl.DataFrame, cfg: GradingConfig) -> Graded:
        """Read the wanted samples into one frame, grade it and write `run.graded_file`."""
        from builder import grade
        from builder.schemas import write_table
        from builder.shards import only_wanted, read_samples

        graded = grade.run(only_wanted(read_samples(run), wanted), questions, cfg)
        write_table(graded, run.graded_file, "graded")
        return Graded((str(run.graded_file),), graded.height, int(graded["correct"].sum() or 0),
                      int(graded["prompt_tokens"].sum() or 0), int(graded["completion_tokens"].sum() or 0))

    def curate(self, run: Run, graded: Graded, cfg: CurationConfig, *, eval_questions: pl.DataFrame | None = None
               ) -> tuple[pl.DataFrame, CurationStats]:
        """`curate.run` on the graded table; the whole ledger is written to `run.ledger_file` and returned."""
        from builder import curate
        from builder.schemas import write_table

        ledger, stats = curate.run(graded.scan().collect(), cfg, eval_questions=eval_questions)
        write_table(ledger, run.ledger_file, "ledger")
        return ledger, stats

    def close(self) -> None:
        pass
