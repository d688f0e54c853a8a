"""Build: the glue that runs tasks -> sample -> grade -> curate -> store for one recipe.

Working state lives where the run (`builder.run.Run`) says: the driver's files in `<work_dir>/<name>/`, the shards
(and on Ray the graded and ledger parts) on the run's storage; a rerun resumes sampling from the shards and writes
a new version only when the content hash is new. Sampling, grading and curation run on the recipe's executor
(`builder.executors`: local or ray); the executor is not part of the version's recipe, so a build on Ray has the
content hash of the local one. On Ray the driver never holds the samples or the graded table: workers read the
shards and write the graded and ledger parts, and only the kept rows (the dataset) come back for the store.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from builder import reasons as R
from builder.recipe import Recipe
from builder.run import Run
from builder.schemas import remove_stale_temp_files, write_table
from builder.stats import BuildStats, SamplingSummary
from builder.version import __version__

log = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    name: str
    questions: int
    samples: int
    correct: int
    kept: int
    version: str
    version_path: str
    content_hash: str
    created: bool
    seconds: float
    completion_tokens: int
    tokens_per_s: float
    run_dir: str
    # per task: the statuses that are not ok (the stats' grade_status) and the rows graded (the funnel's sampled)
    grade_status: dict[str, dict[str, int]] = field(default_factory=dict)
    graded_per_task: dict[str, int] = field(default_factory=dict)
    # what the teacher spent (`builder.cost.Usage` JSON): the requests this build paid, and the run's total across
    # every resume; None for backends that pay nothing per request (vllm in-process, import)
    teacher_usage: dict[str, Any] | None = None
    teacher_spent: dict[str, Any] | None = None
    teacher_errors: int = 0  # samples whose request the teacher refused (curation drops them: filter/teacher_error)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eval_questions_for(recipe: Recipe) -> pl.DataFrame | None:
    """Questions to decontaminate against: the test split of every paper task in the recipe, plus extra eval sets."""
    from builder import tasks

    if not recipe.curation.decontaminate:
        return None
    frames = []
    tests = [t.model_copy(update={"split": "test", "limit": None}) for t in recipe.tasks.items if t.source == "paper"]
    if tests:
        cfg = recipe.tasks.model_copy(update={"items": tests})
        frames.append(tasks.run(cfg, recipe.base_dir))
    for path in recipe.curation.eval_sets:
        frames.append(tasks.load_eval_set(recipe.resolve_path(path)))
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def run(recipe: Recipe, *, engine: Any = None, progress: Any = None) -> BuildSummary:
    """Run every stage of `recipe`; return the summary. `progress` is a rich Progress (or None for quiet runs).

    The build holds the run's lease (`builder.run.Run`) from the first stage to the version: a second driver on the
    same run, here or on another machine sharing `executor.storage`, is refused at once (RunConflict, exit 2).
    A recipe made with `Recipe.model_validate` is bound here first, so an unknown name fails before any stage.
    """
    from builder.bind import bind

    bind(recipe)
    with Run.of(recipe) as held:
        return _run_held(recipe, held, engine, progress)


def _run_held(recipe: Recipe, run: Run, engine: Any, progress: Any) -> BuildSummary:
    from builder import sample, store, tasks
    from builder.executors import make_executor

    t0 = time.perf_counter()
    if stale := remove_stale_temp_files(run.local):
        log.info("removed %d half-written file(s) of a killed run from %s", len(stale), run.local)
    ctx = progress if progress is not None else nullcontext()
    with ctx:
        step = progress.add_task("questions", total=None) if progress else None

        def advance(description: str, completed: int | None = None, total: int | None = None) -> None:
            if progress is not None:
                progress.update(step, description=description, completed=completed, total=total)

        questions = tasks.run(recipe.tasks, recipe.base_dir)
        write_table(questions, run.questions, "questions")
        advance(f"sampling {questions.height} questions x {recipe.sampling.n}", 0, questions.height *
                recipe.sampling.n)
        executor = make_executor(recipe.executor)
        try:
            _, sstats = sample.run(questions, recipe, engine=engine, run=run, executor=executor, collect=False,
                                   progress=lambda p: advance("sampling", p.samples_done, p.samples_total))
            advance("grading")
            run.check_held()
            graded = executor.grade(run, questions, sstats.wanted, recipe.grading)
            advance("curating")
            ledger, curation = executor.curate(run, graded, recipe.curation, eval_questions=eval_questions_for(recipe))
        finally:
            executor.close()
        stats = BuildStats(curation, SamplingSummary(
            prompt_tokens=graded.prompt_tokens, completion_tokens=graded.completion_tokens,
            seconds=round(sstats.seconds, 3), extra=sstats.extra))
        run.stats.write_text(json.dumps(stats.to_json(), indent=2, default=str))
        advance("writing version")
        run.check_held()
        rows = store.rows_from_ledger(ledger) if isinstance(ledger, pl.DataFrame) else ledger
        info = store.write_version(rows, root=recipe.resolve_path(recipe.store.root), name=recipe.dataset_name,
                                   recipe=recipe.model_dump(mode="json"), stats=stats, tool_version=__version__)
        advance("done", 1, 1)
    return BuildSummary(
        name=recipe.dataset_name,
        questions=questions.height,
        samples=graded.rows,
        correct=graded.correct,
        kept=store.load_manifest(info.path)["rows"],
        version=info.version,
        version_path=str(info.path),
        content_hash=info.content_hash,
        created=info.created,
        seconds=round(time.perf_counter() - t0, 2),
        completion_tokens=sstats.completion_tokens,
        tokens_per_s=round(sstats.tokens_per_s, 1),
        run_dir=str(run.local),
        grade_status=curation.grade_status,
        graded_per_task={t: f.sampled for t, f in curation.funnel.items()},
        teacher_usage=sstats.extra.get("usage"),
        teacher_spent=sstats.extra.get("spent"),
        teacher_errors=curation.dropped.get(R.STAGE_FILTER, {}).get(R.TEACHER_ERROR, 0),
    )
