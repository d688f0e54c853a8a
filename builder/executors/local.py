"""`executor.kind: local`: every stage in this process, through the recipe's teacher (today's path, the default)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from builder.executors.base import Graded, ShardWriter, ShardWritten, shard_key

if TYPE_CHECKING:
    import polars as pl

    from builder.recipe import CurationConfig, ExecutorConfig, GradingConfig, Recipe
    from builder.stats import CurationStats
    from builder.teachers.base import ShardWork, Teacher


class LocalExecutor:
    remote = False
    parts = False

    def __init__(self, cfg: ExecutorConfig | None = None) -> None:
        self.cfg = cfg

    def sample(self, works: Iterable[tuple[str, ShardWork]], *, recipe: Recipe, teacher: Teacher | None,
               write: ShardWriter) -> Iterator[ShardWritten]:
        """Stream the shards through the teacher (pipelined, one engine) and write each the moment it completes."""
        if teacher is None:
            raise ValueError("the local executor samples through the driver's teacher; none was given")
        dest: dict[tuple[str, int], str] = {}

        def pending() -> Iterator[ShardWork]:
            for path, work in works:
                dest[shard_key(work)] = path
                yield work

        for work, completions, answers in teacher.stream(pending(), recipe.sampling.answer_max_tokens):
            yield write(work, completions, answers, dest.pop(shard_key(work)))

    def grade(self, samples: str, questions: pl.DataFrame, cfg: GradingConfig, *, out: str) -> Graded:
        """Read the shards into one frame, grade it and write `out` (graded.parquet)."""
        from builder import grade
        from builder.sample import read_samples
        from builder.schemas import write_table

        frame = read_samples(None, location=samples).join(questions.select("qid"), on="qid", how="semi")
        graded = grade.run(frame, questions, cfg)
        write_table(graded, out, "graded")
        return Graded(graded, graded.height, int(graded["correct"].sum() or 0),
                      int(graded["prompt_tokens"].sum() or 0), int(graded["completion_tokens"].sum() or 0))

    def curate(self, graded: Graded, cfg: CurationConfig, *, eval_questions: pl.DataFrame | None = None, out: str
               ) -> tuple[pl.DataFrame, CurationStats]:
        """`curate.run` on the graded frame; the whole ledger is written to `out` (ledger.parquet) and returned."""
        from builder import curate
        from builder.schemas import read_table, write_table

        frame = graded.source if not isinstance(graded.source, str) else read_table(graded.source, "graded")
        ledger, stats = curate.run(frame, cfg, eval_questions=eval_questions)
        write_table(ledger, out, "ledger")
        return ledger, stats

    def close(self) -> None:
        pass
