"""curate.run on graded frames built from real teacher completions with planted duplicates; the ledger contract."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import polars as pl
import pytest

from builder import curate
from builder import reasons as R
from builder.cli import main
from builder.recipe import CurationConfig
from builder.schemas import table_schema, write_table
from builder.stats import Funnel
from tests.helpers import PLANTS, graded_frame, planted


@pytest.fixture(scope="module")
def graded(teacher_completions_dir) -> pl.DataFrame:
    return planted(teacher_completions_dir)


@pytest.fixture(scope="module")
def curated(graded):
    return curate.run(graded, CurationConfig())


def test_planted_duplicates_are_found(graded, curated):
    ledger, _ = curated
    long = ledger.filter(pl.col("rationale").str.split(" ").list.len() >= 20)  # near-dup of a 5-word text is not
    by = {k: long.filter(pl.col("sample_idx") == i) for i, k in PLANTS.items()}
    correct = by[None]["correct"]
    assert correct.sum() > 150
    exact = by["exact"].filter(pl.col("correct"))
    ascii_only = exact["rationale"].str.contains(r"^[\x00-\x7f]*$")
    assert (exact.filter(ascii_only)["reason"] == R.EXACT_DUPLICATE).all()
    # normalisation lower-cases ASCII only ("JESÚS" != "jesús"), so those copies are caught as near-duplicates
    assert exact.filter(~ascii_only)["reason"].is_in([R.EXACT_DUPLICATE, R.NEAR_DUPLICATE]).all()
    near = by["near"].filter(pl.col("correct"))
    assert (near["reason"] == R.NEAR_DUPLICATE).mean() > 0.97, near.group_by("reason").len()
    assert (near["stage"] == R.STAGE_NEAR_DEDUP).mean() > 0.97
    distinct = by["distinct"].filter(pl.col("correct"))
    assert (distinct["state"] == R.KEPT).all()
    # a duplicate's cluster points at the kept original (sample 0) of its question
    rowpos = ledger.with_row_index("pos").select("qid", "sample_idx", pl.col("pos").cast(pl.Int64))
    originals = rowpos.filter(pl.col("sample_idx") == 0).select("qid", orig="pos")
    dups = ledger.filter(pl.col("reason").is_in([R.EXACT_DUPLICATE, R.NEAR_DUPLICATE])).join(originals, on="qid")
    assert (dups["cluster"] == dups["orig"]).all()
    first = ledger.filter((pl.col("sample_idx") == 0) & pl.col("correct"))
    assert (first["state"] == R.KEPT).all()


def test_ledger_accounts_for_every_row_once(graded, curated):
    ledger, stats = curated
    assert ledger.height == graded.height
    assert ledger.select("qid", "sample_idx").sort("qid", "sample_idx").equals(
        graded.select("qid", "sample_idx").sort("qid", "sample_idx"))
    assert ledger.columns == table_schema("ledger").names
    assert set(ledger["state"].unique()) == {R.KEPT, R.DROPPED}
    kept = ledger["state"] == R.KEPT
    assert ledger.filter(kept)[["stage", "reason"]].null_count().row(0) == (kept.sum(), kept.sum())
    dropped = ledger.filter(~kept)
    assert dropped["stage"].null_count() == 0 and dropped["reason"].null_count() == 0
    for stage, reason in dropped.select("stage", "reason").unique().rows():
        assert reason in R.REASONS[stage]
    counted = sum(n for rs in stats.dropped.values() for n in rs.values())
    assert counted == dropped.height
    wrong_unfiltered = ledger.filter(~pl.col("correct") & (pl.col("stage") != R.STAGE_FILTER).fill_null(True))
    assert stats.dropped[R.STAGE_CORRECTNESS][R.INCORRECT] == wrong_unfiltered.height
    for task, f in stats.funnel.items():
        steps = [getattr(f, k) for k in R.FUNNEL]
        assert steps == sorted(steps, reverse=True), (task, f)
        t = ledger.filter(pl.col("task") == task)
        assert f.sampled == t.height and f.kept == (t["state"] == R.KEPT).sum()


def test_stats_shape_is_the_documented_contract(curated):
    _, typed = curated
    stats = typed.to_json()
    json.dumps(stats)
    assert set(stats) == {"funnel", "dropped", "diversity", "decontamination", "settings", "grade_status"}
    assert [f.name for f in fields(Funnel)] == list(R.FUNNEL) == list(next(iter(stats["funnel"].values())))
    for d in stats["diversity"].values():
        assert set(d) == {"before", "after"}
        for side in d.values():
            assert set(side) == {"mean_pairwise_jaccard", "distinct_ngrams"}
            assert 0.0 <= side["mean_pairwise_jaccard"] <= 1.0 and 0.0 < side["distinct_ngrams"] <= 1.0
    assert stats["decontamination"] == {"checked": 0, "eval_questions": 0, "hits": []}
    assert stats["settings"]["minhash"]["num_perm"] == 128 and stats["settings"]["minhash"]["rows_per_band"] == 8


def test_input_order_does_not_matter(graded, curated):
    ledger, _ = curated
    shuffled, _ = curate.run(graded.sample(fraction=1.0, shuffle=True, seed=3), CurationConfig())
    assert shuffled.equals(ledger)


@pytest.mark.parametrize("scope", ["question", "both"])
def test_the_plan_gives_the_same_ledger_however_it_is_cut(graded, monkeypatch, scope):
    """The plan as an executor runs it: batches scanned apart, a block per chunk, each block on its own rows, global
    links per key partition; what `run` gives in one block."""
    monkeypatch.setattr(curate, "CHUNK_ROWS", 300)  # several chunks, so several blocks
    copies = graded.filter(pl.col("sample_idx") == 0).head(5).with_columns(  # in the last block: another task
        task=pl.lit("zz"), qid=pl.col("qid") + "-copy", question=pl.col("question") + " (copy)")
    graded = pl.concat([graded, copies])
    cfg = CurationConfig(minhash={"scope": scope}, selection={"mode": "random", "max_per_question": 2})
    local = curate.run(graded, cfg)
    batches = list(graded.sample(fraction=1.0, shuffle=True, seed=5).iter_slices(700))
    scanned = [curate.scan(b, cfg) for b in batches]
    plan = curate.Plan.of([k for _, k in scanned], cfg)
    rows = pl.concat([df.with_columns(pos=pl.Series(pos)) for (df, _), pos in zip(scanned, plan.positions(),
                                                                                  strict=True)]).sort("pos")

    def map_blocks(blocks):
        assert len(blocks) > 1
        return [curate.run_block(rows.slice(b.lo, b.hi - b.lo).drop("pos"), b) for b in blocks]

    def link(first):
        pos, sig = (np.concatenate([r.rows[i] for r in first]) for i in (0, 1))
        buckets = [curate.global_buckets(r.rows[0], r.rows[1], cfg, 3) for r in first]
        return [curate.link_global([b[q] for b in buckets], lambda nodes: sig[np.searchsorted(pos, nodes)], cfg)
                for q in range(3)]

    results, stats = curate.execute(plan, map_blocks, link)
    assert pl.concat([r.rows for r in results]).equals(local[0]) and stats == local[1]
    if scope == "both":
        assert local[1].dropped[R.STAGE_NEAR_DEDUP].get(R.NEAR_DUPLICATE_GLOBAL, 0) > 0


def _row(**kw) -> dict:
    row = {"task": "t", "question": "How many apples are there in the basket today?", "sample_idx": 0,
           "rationale": "There are 3 apples and 4 more arrive, so 3 + 4 = 7 apples in the basket.", "gold": "7"}
    return row | kw


@pytest.mark.parametrize(("row", "filters", "reason"), [
    (_row(rationale="  \n "), ["empty"], R.EMPTY),
    (_row(finish_reason="length"), ["truncated"], R.TRUNCATED),
    (_row(grade_status="no_answer", pred=None), ["no_answer"], R.NO_ANSWER),
    (_row(grade_status="parse_error"), ["no_answer"], R.NO_ANSWER),
    (_row(grade_status="ambiguous"), ["no_answer"], R.NO_ANSWER),  # a hedge ("7 or 8") is no answer
    (_row(rationale="So 7."), ["length"], R.TOO_SHORT),
    (_row(rationale="a b c " * 200), ["length"], R.TOO_LONG),
    (_row(rationale="Natalie Gilbert Brian Sanchez\n" * 12), ["degenerate"], R.DEGENERATE),
    (_row(rationale="The answer is 7. There are 3 apples and 4 more arrive, so 3 + 4 = 7."), ["answer_first"],
     R.ANSWER_FIRST),
    (_row(rationale="There are three apples and four more arrive in the basket, so 7."), ["answer_first"], None),
    (_row(question="Are there 7 apples?", rationale="7 apples are there, as the question says."), ["answer_first"],
     None),  # the gold is in the question: restating it is not answering first
    (_row(), ["empty", "truncated", "no_answer", "degenerate", "length"], None),
])
def test_quality_filters(row, filters, reason):
    cfg = CurationConfig(filters=filters, min_chars=10, max_chars=500, keep_correct_only=False)
    ledger, stats = curate.run(graded_frame(pl.DataFrame([row])), cfg)
    assert ledger["reason"].to_list() == [reason]
    if reason:
        assert ledger["stage"].to_list() == [R.STAGE_FILTER]
        assert stats.dropped == {R.STAGE_FILTER: {reason: 1}}


def test_real_rationales_that_count_down_are_not_degenerate(teacher_completions_dir):
    df = (pl.read_ndjson(teacher_completions_dir / "multiarith.jsonl").unique("question", maintain_order=True)
          .with_columns(sample_idx=pl.lit(0)))
    ledger, stats = curate.run(graded_frame(df.with_columns(correct=pl.col("reference_correct"))),
                               CurationConfig(keep_correct_only=False))
    flagged = ledger.filter(pl.col("reason") == R.DEGENERATE)
    assert flagged.height >= 1  # the real "3 puppies adopted ... 3 more brought in" loop
    assert not df.filter(pl.col("question").is_in(flagged["question"].implode()))["reference_correct"].any()


def test_keep_wrong_answers_when_asked(graded):
    ledger, stats = curate.run(graded, CurationConfig(keep_correct_only=False))
    assert R.STAGE_CORRECTNESS not in stats.dropped
    wrong = ledger.filter(~pl.col("correct") & (pl.col("sample_idx") == 0))
    assert wrong.height > 50
    assert wrong.filter(pl.col("stage").ne(R.STAGE_FILTER).fill_null(True))["state"].eq(R.KEPT).all()


def test_global_scope_finds_duplicates_across_questions(graded):
    copied = graded.filter(pl.col("sample_idx") == 0).head(5).with_columns(
        qid=pl.col("qid") + "-copy", sample_idx=pl.lit(0, pl.Int32), question=pl.col("question") + " (copy)")
    both = pl.concat([graded, copied])
    local, _ = curate.run(both, CurationConfig(minhash={"scope": "question"}))
    assert local.filter(pl.col("qid").str.ends_with("-copy") & pl.col("correct"))["state"].eq(R.KEPT).all()
    glob, stats = curate.run(both, CurationConfig(minhash={"scope": "both"}))
    copies = glob.filter(pl.col("qid").str.ends_with("-copy") & pl.col("correct"))
    assert copies.height and copies["reason"].eq(R.NEAR_DUPLICATE_GLOBAL).all()
    assert stats.dropped[R.STAGE_NEAR_DEDUP][R.NEAR_DUPLICATE_GLOBAL] == copies.height


def test_sha1_mode_agrees_with_fast_hash(graded, curated):
    """Same estimator, different shingle hash: decisions differ only on pairs near the threshold."""
    ledger, _ = curated
    sha1, _ = curate.run(graded, CurationConfig(minhash={"hash": "sha1"}))
    assert (sha1["state"] == ledger["state"]).mean() > 0.97
    for frame in (ledger, sha1):
        near = frame.filter((pl.col("sample_idx") == 2) & pl.col("correct"))
        assert near["reason"].eq(R.NEAR_DUPLICATE).mean() > 0.9


def test_unknown_filter_names_the_field(graded):
    with pytest.raises(ValueError, match="curation.filters.*unknown quality filter 'shiny'.*empty"):
        curate.run(graded.head(3), CurationConfig(filters=["empty", "shiny"]))


def test_cli_curate_writes_ledger_and_stats(tmp_path, graded, capsys):
    src = tmp_path / "graded.parquet"
    write_table(graded, src, "graded")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\ntasks: {items: [{name: multiarith}]}\nteacher: {model: m}\n"
                      "curation: {selection: {max_per_question: 1, mode: first}}\n")
    out, stats = tmp_path / "ledger.parquet", tmp_path / "stats.json"
    rc = main(["curate", "--input", str(src), "--recipe", str(recipe), "--output", str(out), "--stats", str(stats)])
    assert rc == 0, capsys.readouterr().err
    ledger = pl.read_parquet(out)
    assert ledger.height == graded.height
    assert ledger.filter(pl.col("state") == R.KEPT).group_by("qid").len()["len"].max() == 1
    assert json.loads(stats.read_text())["settings"]["selection"]["max_per_question"] == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["curate", "--input", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "l.parquet")]) == 2
    assert "nope.parquet" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"qid": ["a"]}).write_parquet(bad)
    assert main(["curate", "--input", str(bad), "--output", str(tmp_path / "l.parquet")]) == 2
    assert "missing column" in capsys.readouterr().err


def test_empty_input_and_nothing_surviving(graded):
    ledger, stats = curate.run(table_schema("graded").empty(), CurationConfig(selection={"max_per_question": 2}))
    assert ledger.height == 0 and stats.funnel == {} and stats.dropped == {}
    wrong = graded.with_columns(correct=pl.lit(False))
    ledger, stats = curate.run(wrong, CurationConfig(minhash={"scope": "both"}, decontaminate=True),
                               eval_questions=pl.DataFrame({"task": ["x"], "question": ["q"]}))
    assert (ledger["state"] == R.DROPPED).all()
    assert all(f.kept == 0 for f in stats.funnel.values())
    assert stats.decontamination.checked == 0


def test_cli_eval_file_turns_decontamination_on(tmp_path, graded, capsys):
    src = tmp_path / "graded.parquet"
    write_table(graded, src, "graded")
    solved = graded.filter(pl.col("correct") & (pl.col("task") == "svamp"))["question"].unique(maintain_order=True)
    evals = tmp_path / "eval.jsonl"
    pl.DataFrame({"question": solved.head(4).str.to_lowercase()}).write_ndjson(evals)
    out, stats = tmp_path / "ledger.parquet", tmp_path / "stats.json"
    rc = main(["curate", "-i", str(src), "-o", str(out), "--stats", str(stats), "--eval", str(evals)])
    assert rc == 0, capsys.readouterr().err
    hits = json.loads(stats.read_text())["decontamination"]["hits"]
    assert sorted(h["question"] for h in hits) == sorted(solved.head(4).to_list())
    assert pl.read_parquet(out).filter(pl.col("stage") == R.STAGE_DECONTAMINATE)["question"].n_unique() == 4
