"""Reasoning traces through curation, rows, card and training: the trace filters, trace dedup, length-aware
selection, the R1-distill student format and the r1 training format."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from builder import reasons as R
from builder.curate import run as curate
from builder.recipe import CurationConfig
from tests.helpers import STORE_RECIPE, graded_frame, load_version_dataset, make_ledger, make_stats

WORDS = [f"w{i}" for i in range(4000)]


def _trace(seed: int, words: int = 400) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def _graded(rows: list[dict]) -> pl.DataFrame:
    """rows: question, sample_idx, rationale, reasoning (+ reasoning_tokens, reasoning_finished, pred, correct)."""
    df = pl.DataFrame(rows).with_columns(task=pl.lit("multiarith"), gold=pl.lit("7"))
    base = {"pred": pl.col("gold"), "correct": pl.lit(True)}
    df = df.with_columns([v.alias(k) for k, v in base.items() if k not in df.columns])
    df = df.with_columns(pl.col("correct").fill_null(True))
    out = graded_frame(df)
    extra = {"reasoning": pl.String, "reasoning_tokens": pl.Int32, "reasoning_finished": pl.Boolean}
    return out.with_columns(
        [(df[c].cast(t) if c in df.columns else pl.lit(None, t)).alias(c) for c, t in extra.items()])


def _reasons(ledger: pl.DataFrame) -> list[str | None]:
    return ledger.sort("question", "sample_idx")["reason"].to_list()


def _cfg(**kw) -> CurationConfig:
    return CurationConfig(**{"minhash": {"enabled": False}, "dedup_exact": False, **kw})


# ------------------------------------------------------------------ filters
def test_unfinished_thinking_drops_open_traces_only():
    g = _graded([
        {"question": "q1", "sample_idx": 0, "rationale": "So 7.", "reasoning": "3 + 4 = 7",
         "reasoning_finished": True},
        {"question": "q1", "sample_idx": 1, "rationale": "", "reasoning": "3 + 4 = ...", "reasoning_finished": False},
        {"question": "q1", "sample_idx": 2, "rationale": "It is 7.", "reasoning": None, "reasoning_finished": None},
    ])
    ledger, stats = curate(g, _cfg(filters=["unfinished_thinking"]))
    assert _reasons(ledger) == [None, R.UNFINISHED_THINKING, None]
    assert stats.dropped == {R.STAGE_FILTER: {R.UNFINISHED_THINKING: 1}}


def test_no_final_answer_needs_text_and_an_answer_after_the_trace():
    g = _graded([
        {"question": "q1", "sample_idx": 0, "rationale": "The answer is 7.", "reasoning": "t", "pred": "7"},
        {"question": "q1", "sample_idx": 1, "rationale": "  \n", "reasoning": "t", "pred": "7"},
        {"question": "q1", "sample_idx": 2, "rationale": "I am not sure.", "reasoning": "t", "pred": None,
         "correct": False},
        {"question": "q1", "sample_idx": 3, "rationale": "no trace here", "reasoning": None, "pred": None,
         "correct": False},
    ])
    ledger, _ = curate(g, _cfg(filters=["no_final_answer"], keep_correct_only=False))
    assert _reasons(ledger) == [None, R.NO_FINAL_ANSWER, R.NO_FINAL_ANSWER, None]


def test_reasoning_length_bounds_tokens_and_chars():
    g = _graded([
        {"question": "q1", "sample_idx": i, "rationale": "7.", "reasoning": "x" * chars, "reasoning_tokens": tokens}
        for i, (chars, tokens) in enumerate([(50, 10), (50, 2), (50, 900), (5, None), (500, None)])
    ] + [{"question": "q1", "sample_idx": 5, "rationale": "7.", "reasoning": None}])
    cfg = _cfg(filters=["reasoning_length"], min_reasoning_tokens=5, max_reasoning_tokens=800,
               min_reasoning_chars=10, max_reasoning_chars=400)
    ledger, _ = curate(g, cfg)
    assert _reasons(ledger) == [None, R.REASONING_TOO_SHORT, R.REASONING_TOO_LONG, R.REASONING_TOO_SHORT,
                                R.REASONING_TOO_LONG, None]
    with pytest.raises(ValueError, match="min_reasoning_tokens"):
        CurationConfig(min_reasoning_tokens=10, max_reasoning_tokens=5)


def test_repeated_loop_flags_a_trace_that_repeats_itself():
    from builder.filters import loop_share

    progress = _trace(1, 2000)
    paragraph = _trace(2, 60)
    looping = _trace(3, 300) + " " + " ".join([paragraph] * 12)
    shares = loop_share(pl.Series([progress, looping, None, "too short"]), 16)
    assert shares[0] < 0.01 and shares[1] > 0.6 and shares[2] == 0 and shares[3] == 0
    g = _graded([
        {"question": "q1", "sample_idx": 0, "rationale": "7.", "reasoning": progress},
        {"question": "q1", "sample_idx": 1, "rationale": "7.", "reasoning": looping},
        {"question": "q1", "sample_idx": 2, "rationale": " ".join([paragraph] * 12), "reasoning": None},
    ])
    ledger, _ = curate(g, _cfg(filters=["repeated_loop"]))
    assert _reasons(ledger) == [None, R.REPEATED_LOOP, None]  # only traces are checked (degenerate covers the rest)


def test_loop_share_matches_a_python_count():
    from builder.dedup.minhash import words
    from builder.filters import loop_share

    rng = random.Random(5)
    texts = [" ".join(rng.choice(WORDS[:6]) for _ in range(rng.randint(0, 80))) for _ in range(50)]

    def share(text: str, n: int) -> float:
        ws = words(text)
        grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
        return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0

    np.testing.assert_allclose(loop_share(pl.Series(texts), 3), [share(t, 3) for t in texts])


# ------------------------------------------------------------------ dedup and selection on traces
def _trace_pairs() -> pl.DataFrame:
    long_a = _trace(10, 6000)  # ~8k-token traces
    near_a = long_a.replace("w1 ", "w2 ", 3) + " Let me double check: yes."
    return _graded([
        {"question": "q1", "sample_idx": 0, "rationale": "The answer is 7.", "reasoning": long_a},
        {"question": "q1", "sample_idx": 1, "rationale": "The answer is 7.", "reasoning": _trace(11, 6000)},
        {"question": "q1", "sample_idx": 2, "rationale": "So, 7 in total.", "reasoning": near_a},
        {"question": "q2", "sample_idx": 0, "rationale": "Seven.", "reasoning": None},
        {"question": "q2", "sample_idx": 1, "rationale": "Seven.", "reasoning": None},
    ])


def test_dedup_reads_the_setting_for_which_text_it_compares():
    g = _trace_pairs()
    by_rationale, _ = curate(g, CurationConfig(filters=[]))
    assert _reasons(by_rationale) == [None, R.EXACT_DUPLICATE, None, None, R.EXACT_DUPLICATE]
    by_trace, stats = curate(g, CurationConfig(filters=[], dedup_text="reasoning"))
    # different traces with the same answer text are kept; the near-copy of trace 0 is dropped; no-trace rows
    # fall back to their rationale
    assert _reasons(by_trace) == [None, None, R.NEAR_DUPLICATE, None, R.EXACT_DUPLICATE]
    assert by_trace.sort("question", "sample_idx")["cluster"].to_list()[:3] == [0, None, 0]
    both, _ = curate(g, CurationConfig(filters=[], dedup_text="both"))
    assert _reasons(both) == [None, None, R.NEAR_DUPLICATE, None, R.EXACT_DUPLICATE]
    assert stats.diversity["multiarith"].before.mean_pairwise_jaccard == 0  # two unrelated traces left


def test_trace_chunks_split_by_bytes(monkeypatch):
    import builder.curate as C

    g = _trace_pairs()
    whole, _ = curate(g, CurationConfig(filters=[], dedup_text="reasoning"))
    monkeypatch.setattr(C, "CHUNK_BYTES", 1000)  # one question per chunk
    chunks = C._chunks(np.array([0, 0, 0, 1, 1]), 100, np.array([900, 900, 900, 10, 10]), 1000)
    assert chunks == [(0, 3), (3, 5)]
    split, _ = curate(g, CurationConfig(filters=[], dedup_text="reasoning"))
    assert split.equals(whole)


def _lengths_graded() -> pl.DataFrame:
    lens = [900, 100, 500, 300, 700, 50]  # sample_idx 0..5 of one question; q2 has two rows
    rows = [{"question": "q1", "sample_idx": i, "rationale": f"The answer is 7 ({i}).", "reasoning": _trace(i, n)}
            for i, n in enumerate(lens)]
    rows += [{"question": "q2", "sample_idx": i, "rationale": f"Seven, take {i}" + " more" * (10 - 5 * i),
              "reasoning": None} for i in range(2)]
    return _graded(rows)


@pytest.mark.parametrize("mode,share,kept_q1", [
    ("shortest", 0.5, [1, 3, 5]),      # lengths 100, 300, 50
    ("length_mix", 0.5, [0, 1, 5]),    # round half up (1.5) = 2 shortest (5, 1) and 1 longest (0)
    ("length_mix", 1 / 3, [0, 4, 5]),  # 1 shortest (5) and 2 longest (0, 4)
])
def test_length_aware_selection(mode, share, kept_q1):
    cfg = CurationConfig(filters=[], selection={"mode": mode, "max_per_question": 3, "short_share": share})
    ledger, stats = curate(_lengths_graded(), cfg)
    kept = ledger.filter(pl.col("state") == R.KEPT).sort("question", "sample_idx")
    assert kept.filter(pl.col("question") == "q1")["sample_idx"].to_list() == kept_q1
    assert kept.filter(pl.col("question") == "q2").height == 2  # fewer than k: all kept
    assert stats.funnel["multiarith"].selected == 5


def test_select_shortest_breaks_ties_by_index_and_needs_lengths():
    from builder.select import select

    starts = np.array([0, 4])
    assert select(starts, 2, "shortest", lengths=np.array([5, 3, 3, 1])).tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="lengths"):
        select(starts, 2, "shortest")


# ------------------------------------------------------------------ recipe hash
def test_new_curation_fields_at_default_leave_the_hash_alone():
    from builder.store import canonical_recipe

    dump = CurationConfig().model_dump(mode="json")
    old = {k: v for k, v in dump.items() if k not in (
        "min_reasoning_tokens", "max_reasoning_tokens", "min_reasoning_chars", "max_reasoning_chars", "loop_ngram",
        "max_loop_share", "dedup_text")}
    old["selection"] = {k: v for k, v in dump["selection"].items() if k != "short_share"}
    assert canonical_recipe({"curation": dump}) == {"curation": old}
    changed = CurationConfig(dedup_text="reasoning", selection={"mode": "shortest", "short_share": 0.2})
    hashed = canonical_recipe({"curation": changed.model_dump(mode="json")})["curation"]
    assert hashed["dedup_text"] == "reasoning" and hashed["selection"]["short_share"] == 0.2


# ------------------------------------------------------------------ rows, version, card
TRACE = "Tom has 3 apples.\nHe buys 4 more, so 3 + 4 = 7."


def _trace_ledger() -> pl.DataFrame:
    ledger = make_ledger(tasks=("multiarith",), questions=2, samples=2)
    traced = (pl.col("sample_idx") == 1) & (pl.col("qid") == "multiarith-000")
    return ledger.with_columns(
        reasoning=pl.when(traced).then(pl.lit("\n" + TRACE + "\n")),
        reasoning_tokens=pl.when(traced).then(pl.lit(20, pl.Int32)),
        reasoning_finished=pl.when(traced).then(pl.lit(True)),
        rationale=pl.when(traced).then(pl.lit("The answer is \\boxed{2}.")).otherwise(pl.col("rationale")))


def test_rows_use_the_r1_format_for_traces_only_and_load_with_datasets(tmp_path):
    from builder import store

    plain = store.rows_from_ledger(make_ledger(tasks=("multiarith",), questions=2, samples=2))
    rows = store.rows_from_ledger(_trace_ledger())
    assert rows["reasoning"].null_count() == rows.height - 1
    expected = "<think>\n" + TRACE + "\n</think>\n\nThe answer is \\boxed{2}."
    traced = rows.filter(pl.col("reasoning").is_not_null()).row(0, named=True)
    assert traced["completion"] == expected
    assert traced["messages"] == [{"role": "user", "content": traced["question"]},
                                  {"role": "assistant", "content": expected}]
    others = rows.filter(pl.col("reasoning").is_null())
    assert others.equals(plain.filter((pl.col("sample_idx") != 1) | (pl.col("qid") != "multiarith-000")))
    info = store.write_version(rows, root=tmp_path / "store", name="r1", recipe=STORE_RECIPE,
                               stats=make_stats(_trace_ledger()), tool_version="test")
    ds = load_version_dataset(info.path, tmp_path)
    got = {r["sample_idx"]: r for r in ds if r["qid"] == "multiarith-000"}
    assert got[1]["completion"] == expected and got[1]["reasoning"] == TRACE
    assert "messages" not in ds.column_names  # one TRL type per config: the chat layout is its own config
    chat = load_version_dataset(info.path, tmp_path, "conversational")
    turn = {r["sample_idx"]: r for r in chat if r["qid"] == "multiarith-000"}[1]
    assert turn["prompt"] == [{"role": "user", "content": traced["question"]}]
    assert turn["completion"] == [{"role": "assistant", "content": expected}]


def test_rows_without_traces_keep_their_hash():
    from builder import store

    ledger = make_ledger()
    rows = store.rows_from_ledger(ledger)
    assert rows["completion"].str.starts_with(" First").all()
    digest = store.rows_digest(rows)
    assert digest == store.rows_digest(rows.drop("reasoning").with_columns(reasoning=pl.lit(None, pl.String)))
    assert digest != store.rows_digest(store.rows_from_ledger(_trace_ledger()))


def test_card_shows_trace_lengths_and_unfinished_count(tmp_path):
    from builder import store

    ledger = _trace_ledger()
    stats = make_stats(ledger)
    stats.curation.dropped[R.STAGE_FILTER] = {R.UNFINISHED_THINKING: 3}
    recipe = {**STORE_RECIPE, "curation": {"filters": ["unfinished_thinking", "no_final_answer"]}}
    info = store.write_version(store.rows_from_ledger(ledger), root=tmp_path / "s", name="r1", recipe=recipe,
                               stats=stats, tool_version="test")
    card = (info.path / "README.md").read_text()
    assert "### Reasoning traces" in card and "| multiarith | 1 |" in card
    assert "Unfinished thinking (the trace never closed" in card and ": 3\nsample(s)" in card
    assert (info.path / "assets" / "reasoning_lengths.png").stat().st_size > 1000
    plain = store.write_version(store.rows_from_ledger(make_ledger()), root=tmp_path / "s", name="plain",
                                recipe=STORE_RECIPE, stats=make_stats(make_ledger()), tool_version="test")
    text = (plain.path / "README.md").read_text()
    assert "Reasoning traces" not in text and "### Rationale lengths" in text
    assert not (plain.path / "assets" / "reasoning_lengths.png").exists()


def test_r1_does_not_open_the_trace_twice():
    from builder.prompts import r1_completion_text

    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"<|User|>{messages[0]['content']}<|Assistant|><think>\n"

    prompt, text = r1_completion_text(Tok(), "q", "<think>\nt\n</think>\n\nA.")
    assert prompt + text == "<|User|>q<|Assistant|><think>\nt\n</think>\n\nA."


def test_r1_recipe_keeps_the_built_in_evaluation():
    """An R1-format student is evaluated with the graders after its trace (tests/integration/test_eval_engine.py),
    so eval stays on."""
    from builder.train_recipe import parse_train_recipe

    base = {"name": "r", "dataset": {"ref": "x@v1"}, "model": {"model_name_or_path": "m"}, "format": "r1",
            "output_dir": "o"}
    recipe = parse_train_recipe(base)
    assert recipe.format == "r1" and recipe.eval.enabled
