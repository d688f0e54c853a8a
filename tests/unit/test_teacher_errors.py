"""Samples whose request the teacher refused (finish_reason "error", stage 1 or the answer stage) are dropped by
curation as `teacher_error` (stage filter), first and always, with the engine's message in the ledger's `error`;
counted in the stats and the card like every drop reason."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from builder import curate, store
from builder import reasons as R
from builder.recipe import CurationConfig
from builder.stats import BuildStats
from builder.teachers.base import ANSWER_STAGE_FAILED, FAILED
from tests.helpers import STORE_RECIPE, graded_frame

TOO_LONG = "prompt (9000 tokens) is longer than the maximum model length of 8192"
GOOD = "There are {n} apples and 4 more arrive, so {n} + 4 = {s} apples in the basket, counting each one."


def _rows() -> pl.DataFrame:
    """Two questions, each with a good sample, a stage-1 refusal (graded no_answer, empty rationale), an
    answer-stage refusal (rationale kept, graded no_answer) and an ordinary empty rationale (finish stop)."""
    recs = []
    for q in (3, 5):
        base = {"task": "multiarith", "question": f"There are {q} apples and 4 more arrive. How many apples?",
                "gold": str(q + 4), "finish_reason": "stop", "grade_status": "ok", "correct": True,
                "pred": str(q + 4), "error": None}
        good = GOOD.format(n=q, s=q + 4)
        no = {"grade_status": "no_answer", "correct": False, "pred": None}
        recs += [base | {"sample_idx": 0, "rationale": good},
                 base | no | {"sample_idx": 1, "rationale": "", "finish_reason": FAILED, "error": TOO_LONG},
                 base | no | {"sample_idx": 2, "rationale": good + " Twice.", "finish_reason": FAILED,
                              "error": f"{ANSWER_STAGE_FAILED}{TOO_LONG}"},
                 base | no | {"sample_idx": 3, "rationale": "  \n "}]
    df = pl.DataFrame(recs, schema_overrides={"pred": pl.String, "error": pl.String})
    out = graded_frame(df).with_columns(error=df["error"])
    answer_failed = pl.col("error").str.starts_with(ANSWER_STAGE_FAILED).fill_null(False)
    return out.with_columns(answer_completion=pl.when(answer_failed).then(None).otherwise("answer_completion"))


@pytest.fixture(scope="module")
def graded() -> pl.DataFrame:
    return _rows()


def _reasons(ledger: pl.DataFrame) -> dict[int, tuple[str | None, str | None]]:
    """sample_idx -> (stage, reason), the same for both questions."""
    out = {}
    for (idx,), part in ledger.group_by(["sample_idx"]):
        (pair,) = set(part.select("stage", "reason").rows())
        out[idx] = pair
    return out


def test_refused_samples_are_dropped_as_teacher_error_and_counted(graded):
    ledger, stats = curate.run(graded, CurationConfig())
    assert _reasons(ledger) == {0: (None, None), 1: (R.STAGE_FILTER, R.TEACHER_ERROR),
                                2: (R.STAGE_FILTER, R.TEACHER_ERROR), 3: (R.STAGE_FILTER, R.EMPTY)}
    refused = ledger.filter(pl.col("reason") == R.TEACHER_ERROR).sort("sample_idx", "qid")
    assert refused["error"].to_list() == [TOO_LONG] * 2 + [f"{ANSWER_STAGE_FAILED}{TOO_LONG}"] * 2
    assert refused["state"].eq(R.DROPPED).all()
    assert stats.dropped == {R.STAGE_FILTER: {R.TEACHER_ERROR: 4, R.EMPTY: 2}}
    f = stats.funnel["multiarith"]
    assert (f.sampled, f.answered, f.kept) == (8, 2, 2)
    assert stats.grade_status["multiarith"]["no_answer"] == 6  # grading is unchanged: refusals graded no_answer


@pytest.mark.parametrize("cfg", [
    CurationConfig(filters=[], keep_correct_only=False),  # nothing listed: refusals are still dropped
    CurationConfig(filters=["no_answer", "empty", "length"], min_chars=1, keep_correct_only=False),  # listed first
])
def test_teacher_error_comes_first_whatever_the_filters(graded, cfg):
    ledger, stats = curate.run(graded, cfg)
    reasons = _reasons(ledger)
    assert reasons[1] == reasons[2] == (R.STAGE_FILTER, R.TEACHER_ERROR)
    assert stats.dropped[R.STAGE_FILTER][R.TEACHER_ERROR] == 4
    assert R.TEACHER_ERROR in R.REASONS[R.STAGE_FILTER]


def test_only_the_reason_of_refused_rows_changes(graded):
    """What curation gave before teacher_error (refusals read as ordinary rows: stage 1 as `empty`, the answer stage
    as `no_answer`): the same ledger but the refused rows' reason, so the kept rows (and the content hash) stay."""
    cfg = CurationConfig()
    ledger, stats = curate.run(graded, cfg)
    before, old = curate.run(graded.with_columns(finish_reason=pl.lit("stop")), cfg)
    assert _reasons(before)[1] == (R.STAGE_FILTER, R.EMPTY) and _reasons(before)[2] == (R.STAGE_FILTER, R.NO_ANSWER)
    refused = ledger["finish_reason"] == FAILED
    assert ledger.filter(~refused).equals(before.filter(~refused))
    assert ledger.filter(refused).drop("reason", "finish_reason").equals(
        before.filter(refused).drop("reason", "finish_reason"))
    assert ledger.filter(pl.col("state") == R.KEPT).equals(before.filter(pl.col("state") == R.KEPT))
    assert stats.funnel == old.funnel and stats.diversity == old.diversity


def test_executors_plan_gives_the_same_ledger_however_the_rows_are_scanned(graded):
    """The Ray executor runs `curate.scan` per part and the same plan: batches of one row give `run`'s ledger."""
    cfg = CurationConfig()
    local = curate.run(graded, cfg)
    scanned = [curate.scan(b, cfg) for b in graded.sample(fraction=1.0, shuffle=True, seed=1).iter_slices(1)]
    plan = curate.Plan.of([k for _, k in scanned], cfg)
    rows = pl.concat([df.with_columns(pos=pl.Series(pos)) for (df, _), pos in zip(scanned, plan.positions(),
                                                                                  strict=True)]).sort("pos")
    results, stats = curate.execute(
        plan, lambda blocks: [curate.run_block(rows.slice(b.lo, b.hi - b.lo).drop("pos"), b) for b in blocks],
        lambda first: [(np.zeros(0, np.int64), np.zeros(0, np.int64))])
    assert pl.concat([r.rows for r in results]).equals(local[0]) and stats == local[1]


def test_the_card_lists_teacher_errors_among_the_dropped_rows(tmp_path, graded):
    ledger, stats = curate.run(graded, CurationConfig())
    info = store.write_version(store.rows_from_ledger(ledger), root=tmp_path / "store", name="demo",
                               recipe=STORE_RECIPE, stats=BuildStats(curation=stats), tool_version="test")
    assert store.load_manifest(info.path)["dropped"][R.STAGE_FILTER][R.TEACHER_ERROR] == 4
    assert "| filter | teacher_error | 4 |" in (info.path / "README.md").read_text()
