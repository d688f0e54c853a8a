"""Curation and grading on a real local Ray (2 CPUs): the same ledger and stats as the local path, bit for bit.

The 200,000-row table is `tests.helpers.graded_rows` (also benchmarks/ray_curate_bench.py's: synthetic rationales
over four tasks: planted near-duplicates within questions, copies across questions, wrong, empty, truncated and
unanswered rows), in random row order. curate's chunk size is lowered here (the driver plans the chunks, so the
workers follow) so the table makes several chunks and blocks and every cross-block path runs.
"""

from __future__ import annotations

import polars as pl
import pytest

from builder import curate
from builder import reasons as R
from builder.errors import SchemaError
from builder.executors import Graded, ray_curate
from builder.recipe import CurationConfig, GradingConfig
from tests.helpers import graded_rows

ROWS = 200_000


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_chunks():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(curate, "CHUNK_ROWS", 40_000)  # ~4 chunks of the 200k rows' ~170k alive ones
        mp.setattr(curate, "DISTINCT_SAMPLE", 4_096)  # distinct n-grams on a sample: the sample is global too
        yield


@pytest.fixture(scope="module")
def big(small_chunks):
    return graded_rows(ROWS, seed=1)


def _same(local, on_ray):
    (ledger, stats), (ray_ledger, ray_stats) = local, on_ray
    assert ray_ledger.schema == ledger.schema
    assert ray_ledger.equals(ledger)
    assert ray_stats.to_json() == stats.to_json() and ray_stats == stats


@pytest.mark.parametrize(("scope", "blocks"), [("question", None), ("global", 2), ("both", None)])
def test_200k_rows_give_the_local_ledger_and_stats(big, tmp_path, scope, blocks):
    graded, evals = big
    cfg = CurationConfig(minhash={"scope": scope}, selection={"max_per_question": 4}, decontaminate=True)
    local = curate.run(graded, cfg, eval_questions=evals)
    ledger, stats = local
    # the case exercises what it claims to: every stage drops rows, across questions too
    assert ledger.height == ROWS and stats.dropped[R.STAGE_SELECT][R.NOT_SELECTED] > 10_000
    assert {R.EMPTY, R.TRUNCATED, R.NO_ANSWER} <= set(stats.dropped[R.STAGE_FILTER])
    assert stats.dropped[R.STAGE_EXACT_DEDUP][R.EXACT_DUPLICATE] > 500
    assert stats.dropped[R.STAGE_DECONTAMINATE][R.CONTAMINATED_QUESTION] > 0
    assert all(c["no_answer"] > 0 for c in stats.grade_status.values())  # counted over every graded row
    if scope != "question":
        assert stats.dropped[R.STAGE_NEAR_DEDUP][R.NEAR_DUPLICATE_GLOBAL] > 500
    if scope == "question":  # read by Ray from parquet parts: the driver never holds the text
        for i, part in enumerate(graded.iter_slices(50_000)):
            part.write_parquet(tmp_path / f"part-{i}.parquet")
        source = str(tmp_path)
    else:
        source = graded
    _same(local, ray_curate.curate(source, cfg, eval_questions=evals, blocks=blocks))


def test_small_case_with_random_selection_and_rationale_checks(big):
    graded, evals = big
    graded = graded.filter(pl.col("qid") < "q0000400")  # 400 questions, 3,200 rows
    quoted = graded.filter(pl.col("sample_idx") == 0).head(3)  # rationales that quote an eval question
    graded = graded.with_columns(rationale=pl.when(pl.col("qid").is_in(quoted["qid"].implode())
                                                   & (pl.col("sample_idx") == 1))
                                 .then(pl.lit("As the test asks: ") + pl.col("question")).otherwise("rationale"))
    evals = pl.concat([evals, quoted.select("question", "task")])
    graded = graded.with_columns(grade_status=pl.when(pl.col("sample_idx") == 5).then(pl.lit("wrong_format"))
                                 .when((pl.col("sample_idx") == 6) & pl.col("qid").str.ends_with("7"))
                                 .then(pl.lit("parse_error")).otherwise("grade_status"))
    cfg = CurationConfig(minhash={"scope": "both"}, selection={"mode": "random", "max_per_question": 3, "seed": 5},
                         decontaminate=True, decontaminate_rationales=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(curate, "CHUNK_ROWS", 500)  # random selection draws per chunk: chunks must match
        local = curate.run(graded, cfg, eval_questions=evals)
        on_ray = ray_curate.curate(graded, cfg, eval_questions=evals)
        lazy, _ = ray_curate.curate(graded, cfg, eval_questions=evals, blocks=3, collect=False)
    assert local[1].decontamination.hits
    assert all(c["wrong_format"] > 0 and c["parse_error"] > 0 for c in local[1].grade_status.values())
    _same(local, on_ray)
    import ray

    assert pl.concat([pl.from_arrow(t) for t in ray.get(lazy.to_arrow_refs())]).equals(local[0])


def test_empty_input_and_missing_eval_questions():
    from builder.schemas import table_schema

    cfg = CurationConfig(decontaminate=True)
    evals = pl.DataFrame({"task": ["t"], "question": ["What is 1 + 1?"]})
    local = curate.run(table_schema("graded").empty(), cfg, eval_questions=evals)
    assert local[0].height == 0 and local[1].funnel == {} and local[1].decontamination.eval_questions == 1
    _same(local, ray_curate.curate(table_schema("graded").empty(), cfg, eval_questions=evals))
    _same(local, ray_curate.curate([], cfg, eval_questions=evals))  # nothing graded: no parts at all
    lazy, _ = ray_curate.curate([], cfg, eval_questions=evals, collect=False)
    assert lazy.count() == 0
    with pytest.raises(ValueError, match="no eval questions"):
        ray_curate.curate(table_schema("graded").empty(), CurationConfig(decontaminate=True))


def test_parts_read_by_the_workers_are_checked_together(big, tmp_path):
    """What each part's own schema check cannot see: the same key in two parts, a qid in two tasks."""
    graded, _ = big
    rows = graded.filter(pl.col("qid") < "q0000050")
    rows.write_parquet(tmp_path / "a.parquet")
    rows.head(1).write_parquet(tmp_path / "b.parquet")
    with pytest.raises(SchemaError, match="duplicate key"):
        ray_curate.curate(str(tmp_path), CurationConfig())
    (tmp_path / "b.parquet").unlink()
    other_task = rows.head(1).with_columns(task=pl.lit("other"), sample_idx=pl.lit(99, pl.Int32))
    other_task.write_parquet(tmp_path / "c.parquet")
    with pytest.raises(SchemaError, match="is in tasks"):
        ray_curate.curate(str(tmp_path), CurationConfig())


def test_graded_parts_scan_as_one_table(big, tmp_path):
    graded, _ = big
    rows = graded.head(1_000)
    for i, part in enumerate(rows.iter_slices(400)):
        part.write_parquet(tmp_path / f"part-{i}.parquet")
    files = tuple(str(p) for p in sorted(tmp_path.glob("*.parquet")))
    assert Graded(files, 1_000, 0, 0, 0).scan().collect().equals(rows)
    assert Graded((), 0, 0, 0, 0).scan().collect().height == 0


def test_grading_as_map_batches_gives_the_local_graded_rows(big, tmp_path):
    from builder import grade

    graded, _ = big
    samples = graded.head(4_000).drop("pred", "correct", "grade_status", "grader")
    questions = graded.select("qid", "task", "question", "gold", "answer_type").unique("qid")
    out = ray_curate.grade(samples, questions, GradingConfig(), tmp_path / "graded", parts=3)
    on_ray = pl.read_parquet(out).sort("qid", "sample_idx")
    local = grade.run(samples, questions, GradingConfig()).sort("qid", "sample_idx")
    assert on_ray.equals(local)
