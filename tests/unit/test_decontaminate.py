"""Decontamination: planted test questions with small edits are found; unrelated questions are not."""

from __future__ import annotations

import polars as pl
import pytest

from builder import curate
from builder import reasons as R
from builder.decontaminate import find_question_hits, find_rationale_hits
from builder.recipe import CurationConfig
from tests.helpers import graded_frame


@pytest.fixture(scope="module")
def pools(teacher_completions_dir):
    """Disjoint question pools: 'train' (addsub + multiarith) and 'test' (svamp)."""
    train = pl.concat([pl.read_ndjson(teacher_completions_dir / f"{t}.jsonl") for t in ("addsub", "multiarith")])
    test = pl.read_ndjson(teacher_completions_dir / "svamp.jsonl").with_columns(task=pl.lit("svamp"))
    train = train.unique("question", maintain_order=True).filter(~pl.col("question").is_in(test["question"].implode()))
    return train, test.unique("question", maintain_order=True)


EDITS = [
    lambda q: q.lower(),
    lambda q: q.replace(".", " .").replace("?", " ?!"),
    lambda q: q.replace(" the ", " a ", 1),
    lambda q: q.replace("How many", "Exactly how many"),
    lambda q: q.rstrip("?") + ", please?",
    lambda q: " ".join(q.split()[1:]),  # first word dropped
]


def test_planted_test_questions_with_small_edits_are_found(pools):
    train, test = pools
    plants = [EDITS[i % len(EDITS)](q) for i, q in enumerate(test["question"].head(60).to_list())]
    questions = pl.concat([
        train.select("question").head(300).with_columns(qid=pl.format("train-{}", pl.int_range(pl.len())),
                                                        task=pl.lit("addsub")),
        pl.DataFrame({"question": plants}).with_columns(qid=pl.format("plant-{}", pl.int_range(pl.len())),
                                                        task=pl.lit("mine")),
    ]).select("qid", "task", "question")
    hits = find_question_hits(questions, test.select("task", "question"), CurationConfig())
    found = set(hits["qid"])
    assert {f"plant-{i}" for i in range(60)} <= found
    # SVAMP varies MAWPS templates, so an addsub question can be a genuine template sibling of a test question
    # ("Jessica is baking a cake. The recipe calls for 8 cups of flour..."); anything more is a false positive.
    assert sum(q.startswith("train-") for q in found) <= 3, hits.filter(pl.col("qid").str.starts_with("train-"))
    by_qid = {r["qid"]: r for r in hits.to_dicts()}
    assert by_qid["plant-0"]["matched_question"] == test["question"][0]
    assert by_qid["plant-0"]["matched_task"] == "svamp" and by_qid["plant-0"]["method"] == "ngram"


def test_minhash_catches_a_reordered_copy(pools):
    _, test = pools
    q = test["question"][5]
    sentences = q.split(". ")
    reordered = ". ".join(sentences[1:] + sentences[:1])
    questions = pl.DataFrame({"qid": ["r"], "task": ["mine"], "question": [reordered]})
    cfg = CurationConfig(decontam_ngram=13, decontam_jaccard=0.5)
    hits = find_question_hits(questions, test.select("task", "question"), cfg)
    assert hits["qid"].to_list() == ["r"] and hits["matched_question"][0] == q


def test_rationale_quoting_a_test_question(pools):
    _, test = pools
    q = test["question"][7]
    rationales = pl.DataFrame({"qid": ["a", "b"], "row": [0, 1],
                               "rationale": [f"Recall the problem: {q} So we subtract.", "We add 3 and 4 to get 7."]})
    hits = find_rationale_hits(rationales, test.select("task", "question"), CurationConfig())
    assert hits["row"].to_list() == [0] and hits["matched_question"][0] == q


def test_curate_drops_contaminated_questions_and_lists_hits(pools):
    train, test = pools
    rows = train.head(40).with_columns(sample_idx=pl.lit(0))
    plant = test.head(3).with_columns(question=pl.col("question").str.to_lowercase(), sample_idx=pl.lit(0),
                                      task=pl.lit("multiarith"))
    graded = graded_frame(pl.concat([rows.select(plant.columns), plant]))
    evals = test.select("task", "question")
    ledger, stats = curate.run(graded, CurationConfig(decontaminate=True), eval_questions=evals)
    dropped = ledger.filter(pl.col("stage") == R.STAGE_DECONTAMINATE)
    assert sorted(dropped["question"].to_list()) == sorted(plant["question"].to_list())
    assert (dropped["reason"] == R.CONTAMINATED_QUESTION).all()
    dec = stats.decontamination
    assert dec.checked == 43 and dec.eval_questions == test.height
    assert {h.question for h in dec.hits} == set(plant["question"])
    assert {h.method for h in dec.hits} <= {"ngram", "minhash"}
    assert stats.funnel["multiarith"].kept == stats.funnel["multiarith"].selected - 3


def test_decontaminate_without_eval_questions_is_an_error(pools):
    train, _ = pools
    graded = graded_frame(train.head(2).with_columns(sample_idx=pl.lit(0)))
    with pytest.raises(ValueError, match="no eval questions"):
        curate.run(graded, CurationConfig(decontaminate=True))
