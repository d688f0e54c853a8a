"""Diversity selection: k of N per question, never zero for a solved question, diverse beats first/random."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder import curate
from builder import reasons as R
from builder.dedup import signatures
from builder.recipe import CurationConfig
from builder.select import distinct_ngrams, select
from tests.helpers import graded_frame, planted


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=20), k=st.integers(1, 6),
       mode=st.sampled_from(["diverse", "random", "first"]), seed=st.integers(0, 5))
def test_every_group_keeps_min_k_n(sizes, k, mode, seed):
    gs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 4, (int(gs[-1]), 32)).astype(np.uint32)
    keep = select(gs, k, mode, sig=sig, seed=seed)
    per_group = np.add.reduceat(keep.astype(int), gs[:-1])
    np.testing.assert_array_equal(per_group, np.minimum(sizes, k))


def test_diverse_picks_the_dissimilar_rationales():
    base = "There are 3 apples and 4 more arrive so we add them and get 7 apples in the basket now"
    texts = [base, base + " ok", base + " fine", "First count the apples then add four to three which gives seven",
             base + " done", "Seven is three plus four because the basket gains four apples after having three"]
    sig = signatures(pl.Series(texts), ngram=3)
    gs = np.array([0, len(texts)])
    assert np.flatnonzero(select(gs, 3, "diverse", sig=sig)).tolist() == [0, 3, 5]
    assert np.flatnonzero(select(gs, 3, "first")).tolist() == [0, 1, 2]
    a, b = select(gs, 3, "random", seed=1), select(gs, 3, "random", seed=1)
    assert (a == b).all() and a.sum() == 3


def test_unknown_mode_and_missing_signatures():
    with pytest.raises(ValueError, match="unknown selection mode 'best'; valid: diverse, random, first"):
        select(np.array([0, 2]), 1, "best")
    with pytest.raises(ValueError, match="signatures"):
        select(np.array([0, 2]), 1, "diverse")


def test_distinct_ngrams_counts_per_group():
    hashes = np.array([1, 2, 3, 1, 2, 9, 9], dtype=np.uint32)
    starts = np.array([0, 3, 5, 7])
    d, t = distinct_ngrams(hashes, starts, np.array([0, 2, 3]), np.array([True, True, True]))
    assert d.tolist() == [3, 1] and t.tolist() == [5, 2]


@pytest.mark.parametrize("mode", ["diverse", "random", "first"])
def test_selection_never_drops_a_solved_question(teacher_completions_dir, mode):
    graded = planted(teacher_completions_dir)
    ledger, stats = curate.run(graded, CurationConfig(selection={"max_per_question": 1, "mode": mode}))
    solved = ledger.filter(pl.col("correct") & pl.col("stage").ne(R.STAGE_FILTER).fill_null(True))["qid"].unique()
    kept = ledger.filter(pl.col("state") == R.KEPT).group_by("qid").len()
    assert set(kept["qid"]) == set(solved) and (kept["len"] == 1).all()
    assert stats.dropped[R.STAGE_SELECT][R.NOT_SELECTED] > 0


def test_diverse_selection_raises_diversity(teacher_completions_dir):
    """Several samples per question, some near-copies that survive dedup; diverse keeps the different ones."""
    base = pl.read_ndjson(teacher_completions_dir / "svamp.jsonl").head(80).unique("question", maintain_order=True)
    variants = [pl.col("rationale"), pl.col("rationale") + " Thus, we are done here.",
                pl.col("rationale").str.replace(r"\.", ", and then"),
                pl.col("rationale").str.split(" ").list.reverse().list.join(" "),
                pl.lit("We can solve this another way: ") + pl.col("question").str.to_lowercase()]
    df = pl.concat([base.with_columns(v.alias("rationale"), sample_idx=pl.lit(i)) for i, v in enumerate(variants)])
    graded = graded_frame(df)
    cfg = CurationConfig(minhash={"enabled": False}, selection={"max_per_question": 2})
    _, diverse = curate.run(graded, cfg)
    _, first = curate.run(graded, cfg.model_copy(update={"selection": cfg.selection.model_copy(
        update={"mode": "first"})}))
    d, f = diverse.diversity["svamp"], first.diversity["svamp"]
    assert d.before == f.before
    assert d.after.mean_pairwise_jaccard < d.before.mean_pairwise_jaccard
    assert d.after.mean_pairwise_jaccard < f.after.mean_pairwise_jaccard
    assert d.after.distinct_ngrams > f.after.distinct_ngrams
