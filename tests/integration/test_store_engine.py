"""Same engine, same seeds: the same content hash."""

from __future__ import annotations

import polars as pl
import pytest

from tests.helpers import build_version, load_version_dataset, make_ledger


# ---------------------------------------------------------------- same engine + seeds -> same hash
@pytest.mark.slow
@pytest.mark.engine
def test_same_seeds_on_the_same_engine_give_the_same_content_hash(vllm_engine, tmp_path):
    from vllm import SamplingParams

    questions = [f"What is {a} plus {a + 1}?" for a in range(3)]

    def sampled_ledger(seed: int) -> pl.DataFrame:
        outs = vllm_engine.generate([f"Q: {q}\nA: Let's think step by step." for q in questions],
                                    SamplingParams(n=2, temperature=0.7, max_tokens=16, seed=seed), use_tqdm=False)
        base = make_ledger(tasks=("multiarith",), questions=3, samples=2)
        texts = [c.text or "-" for o in outs for c in sorted(o.outputs, key=lambda c: c.index)]
        return base.with_columns(pl.Series("rationale", texts), pl.lit("kept").alias("state"))

    a = build_version(tmp_path / "a", sampled_ledger(11))
    b = build_version(tmp_path / "b", sampled_ledger(11))
    c = build_version(tmp_path / "c", sampled_ledger(12))
    assert a.content_hash == b.content_hash
    assert c.content_hash != a.content_hash
    assert load_version_dataset(a.path, tmp_path).num_rows == 6
