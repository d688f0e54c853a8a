"""Decontamination: find training questions (and optionally rationales) that overlap evaluation questions.

Input: the distinct training questions (qid, task, question) and the eval questions (a questions-table frame:
the test splits of the recipe's tasks plus any extra eval sets). Output: one hit per contaminated training
question with the matched eval question, the method and its score. Two methods, both on normalised words:

- "ngram": share of the training question's word n-grams (curation.decontam_ngram; a shorter question is one
  n-gram) that also occur in one eval question >= curation.decontam_overlap. Catches copies with small edits.
- "minhash": estimated Jaccard of 3-word shingles >= curation.decontam_jaccard, candidates from LSH banding
  with datasketch's optimal (bands, rows) for that threshold. Catches reworded copies.

Rationale check (opt-in): a rationale containing >= decontam_overlap of an eval question's n-grams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from builder.dedup import band_keys, permutations, shingle, signatures_from_hashes

if TYPE_CHECKING:
    from builder.recipe import CurationConfig

HIT_SCHEMA = {"qid": pl.String, "row": pl.Int64, "method": pl.String, "score": pl.Float64,
              "matched_task": pl.String, "matched_question": pl.String}
_MINHASH_NGRAM = 3


def _ngram_table(texts: pl.Series, ngram: int) -> pl.DataFrame:
    """(idx, h) for every distinct word n-gram hash of every text."""
    sh = shingle(texts, ngram)
    idx = np.repeat(np.arange(len(texts), dtype=np.int64), np.diff(sh.starts))
    return pl.DataFrame({"idx": idx, "h": sh.hashes}).unique()


def _ngram_hits(train: pl.Series, evals: pl.Series, ngram: int, overlap: float, *, of: str) -> pl.DataFrame:
    """(idx, eval_idx, score) of the best eval match per training text whose share of shared n-grams >= overlap.

    `of="train"` divides by the training text's n-grams (question check), `of="eval"` by the eval question's
    (rationale check: a long rationale that quotes a test question).
    """
    t = _ngram_table(train, ngram)
    e = _ngram_table(evals, ngram).rename({"idx": "eval_idx"})
    denom = (t if of == "train" else e).group_by("idx" if of == "train" else "eval_idx").len("n")
    shared = t.join(e, on="h").group_by("idx", "eval_idx").len("shared")
    shared = shared.join(denom, on="idx" if of == "train" else "eval_idx")
    return (shared.with_columns(score=pl.col("shared") / pl.col("n")).filter(pl.col("score") >= overlap)
            .sort("score", "eval_idx", descending=[True, False]).unique("idx", keep="first")
            .select("idx", "eval_idx", "score"))


def _minhash_hits(train: pl.Series, evals: pl.Series, cfg: CurationConfig) -> pl.DataFrame:
    from datasketch.lsh import _optimal_param

    mh = cfg.minhash
    perm = permutations(mh.num_perm, mh.seed, mh.scheme)
    bands, rows = _optimal_param(cfg.decontam_jaccard, mh.num_perm, 0.5, 0.5)
    sigs = []
    for texts in (train, evals):
        sh = shingle(texts, _MINHASH_NGRAM)
        sigs.append(signatures_from_hashes(sh.hashes, sh.starts, perm))
    st, se = sigs
    frames = []
    for sig, name in ((st, "idx"), (se, "eval_idx")):
        keys = band_keys(sig[:, : bands * rows], bands, rows)  # (bands, n)
        frames.append(pl.DataFrame({"band": np.repeat(np.arange(bands), len(sig)), "key": keys.ravel(),
                                    name: np.tile(np.arange(len(sig), dtype=np.int64), bands)}))
    pairs = frames[0].join(frames[1], on=["band", "key"]).select("idx", "eval_idx").unique()
    if pairs.is_empty():
        return pl.DataFrame(schema={"idx": pl.Int64, "eval_idx": pl.Int64, "score": pl.Float64})
    i = pairs["idx"].to_numpy()
    j = pairs["eval_idx"].to_numpy()
    empty = (1 << 32) - 1  # the empty signature in both schemes
    score = (st[i] == se[j]).mean(axis=1)
    valid = ~(st[i] == empty).all(axis=1)  # two empty texts are not a match
    return (pairs.with_columns(score=pl.Series(score), valid=pl.Series(valid))
            .filter(pl.col("valid") & (pl.col("score") >= cfg.decontam_jaccard)).drop("valid")
            .sort("score", "eval_idx", descending=[True, False]).unique("idx", keep="first"))


def find_question_hits(questions: pl.DataFrame, eval_questions: pl.DataFrame, cfg: CurationConfig) -> pl.DataFrame:
    """One row per contaminated training question: qid, method, score, matched_task, matched_question."""
    if questions.is_empty() or eval_questions.is_empty():
        return pl.DataFrame(schema=HIT_SCHEMA)
    evals = eval_questions.select("task", "question").unique("question", keep="first", maintain_order=True)
    ng = _ngram_hits(questions["question"], evals["question"], cfg.decontam_ngram, cfg.decontam_overlap, of="train")
    mh = _minhash_hits(questions["question"], evals["question"], cfg)
    hits = pl.concat([ng.with_columns(method=pl.lit("ngram"), rank=pl.lit(0)),
                      mh.with_columns(method=pl.lit("minhash"), rank=pl.lit(1))])
    hits = hits.sort("idx", "rank").unique("idx", keep="first")  # an n-gram hit is reported over a MinHash one
    ev = evals.with_row_index("eval_idx").with_columns(pl.col("eval_idx").cast(pl.Int64))
    q = questions.select("qid").with_row_index("idx").with_columns(pl.col("idx").cast(pl.Int64))
    return (hits.join(q, on="idx").join(ev, on="eval_idx")
            .select("qid", pl.lit(None, dtype=pl.Int64).alias("row"), "method", "score",
                    pl.col("task").alias("matched_task"), pl.col("question").alias("matched_question"))
            .sort("qid"))


def find_rationale_hits(rationales: pl.DataFrame, eval_questions: pl.DataFrame, cfg: CurationConfig) -> pl.DataFrame:
    """Rows (column `row` of `rationales`) whose rationale quotes an eval question (n-gram method)."""
    if rationales.is_empty() or eval_questions.is_empty():
        return pl.DataFrame(schema=HIT_SCHEMA)
    evals = eval_questions.select("task", "question").unique("question", keep="first", maintain_order=True)
    ng = _ngram_hits(rationales["rationale"], evals["question"], cfg.decontam_ngram, cfg.decontam_overlap, of="eval")
    ev = evals.with_row_index("eval_idx").with_columns(pl.col("eval_idx").cast(pl.Int64))
    r = rationales.select("qid", "row").with_row_index("idx").with_columns(pl.col("idx").cast(pl.Int64))
    return (ng.join(r, on="idx").join(ev, on="eval_idx")
            .select("qid", "row", pl.lit("ngram").alias("method"), "score",
                    pl.col("task").alias("matched_task"), pl.col("question").alias("matched_question"))
            .sort("row"))
