"""Dataset card: YAML header that `datasets` reads, the funnel/accuracy/diversity/decontamination sections, plots."""

from __future__ import annotations

import struct

import polars as pl
import pytest

from builder import store
from builder.errors import StoreError
from builder.stats import BuildStats, ContaminationHit
from tests.helpers import STORE_RECIPE, load_version_dataset, make_ledger, make_stats


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _write(root, ledger, stats, **kw):
    return store.write_version(store.rows_from_ledger(ledger), root=root, name="demo", recipe=STORE_RECIPE,
                               stats=stats, tool_version="test", **kw)


def test_card_header_matches_the_data_and_loads_with_huggingface_hub_and_datasets(tmp_path):
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    ledger = make_ledger()
    info = _write(tmp_path / "store", ledger, make_stats(ledger))
    card = DatasetCard.load(info.path / "README.md")
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert configs.get_default_config_name() == "default"
    assert configs["coin_flip"]["data_files"] == [{"split": "train", "path": "data/coin_flip/train-*.parquet"}]
    infos = DatasetInfosDict.from_dataset_card_data(card.data)
    assert {c: i.splits["train"].num_examples for c, i in infos.items()} == {"default": 16, "coin_flip": 8,
                                                                              "multiarith": 8}
    assert list(infos["default"].features) == store.load_manifest(info.path)["columns"]
    assert "chain-of-thought" in card.data.tags and card.data.pretty_name == "demo (v1)"
    assert load_version_dataset(info.path, tmp_path, "multiarith").num_rows == 8


def test_card_body_reports_funnel_accuracy_diversity_decontamination_and_how_it_was_made(tmp_path):
    ledger = make_ledger()
    stats = make_stats(ledger)
    stats.curation.decontamination.hits.append(ContaminationHit(
        qid="multiarith-009", task="multiarith", question="q", matched_task="multiarith_test", matched_question="q",
        method="minhash", score=0.93))
    info = _write(tmp_path / "store", ledger, stats)
    text = (info.path / "README.md").read_text()
    body = text.split("---", 2)[2]
    # funnel per task with teacher accuracy = correct / sampled (8 of 12 samples are right in make_ledger)
    assert "| task | sampled | answered | correct | deduped | selected | kept | teacher accuracy |" in body
    assert "| coin_flip | 12 | 12 | 8 | 8 | 8 | 8 | 66.7% (8/12) |" in body
    assert "| multiarith | 12 | 12 | 8 | 8 | 8 | 8 | 66.7% (8/12) |" in body
    assert "| correctness | incorrect | 8 |" in body
    assert "| multiarith | 0.610 | 0.550 | 0.420 | 0.470 |" in body
    assert "8 questions checked against 20 evaluation questions" in body
    assert "`multiarith` multiarith-009 matched `multiarith_test` (minhash, score 0.93)" in body
    assert "Teacher: `tiny-llama`, run with vllm." in body
    assert "Zero-shot-CoT: `Q: {question}\\nA: Let's think step by step.`" in body
    assert "n=4, temperature=0.7, top_p=1.0, max_tokens=64, seed=0" in body
    assert "prompt tokens 288, completion tokens 480, seconds 2.5" in body
    assert info.content_hash in body
    assert 'load_dataset("path/to/demo/v1", "coin_flip", split="train")' in body
    assert "completion:  First we look at coin_flip item 0. Sample 1 reasons. --> no" in body
    # rationale lengths: "First we look at coin_flip item 0. Sample 1 reasons." is 10 words
    assert "| coin_flip | 8 | 10.0 | 10.0 | 10 |" in body
    for plot in ("funnel", "rationale_lengths"):
        assert f"](assets/{plot}.png)" in body
        width, height = _png_size(info.path / "assets" / f"{plot}.png")
        assert width >= 400 and height >= 300


@pytest.mark.parametrize("what", ["no stats", "no sampling"])
def test_card_says_what_the_build_did_not_record(tmp_path, what):
    ledger = make_ledger(tasks=("multiarith",))
    stats = None if what == "no stats" else BuildStats(make_stats(ledger).curation)
    info = _write(tmp_path / "store", ledger, stats)
    body = (info.path / "README.md").read_text().split("---", 2)[2]
    assert ("No funnel was recorded" in body) == (stats is None)
    assert (info.path / "assets" / "funnel.png").exists() == (stats is not None)
    assert ("Decontamination was not run" in body) == (stats is None)
    assert ("No diversity figures were recorded" in body) == (stats is None)
    assert "Teacher usage" not in body
    assert "n=4, temperature=0.7" in body  # sampling settings come from the recipe either way
    assert (info.path / "assets" / "rationale_lengths.png").exists()
    assert load_version_dataset(info.path, tmp_path).num_rows == 8
    store.verify(info.path)


def test_an_empty_version_is_refused_before_anything_is_written(tmp_path):
    ledger = make_ledger(tasks=("multiarith",)).with_columns(pl.lit("dropped").alias("state"))
    with pytest.raises(StoreError, match="dataset 'demo': no rows to store"):
        _write(tmp_path / "store", ledger, make_stats(ledger))
    assert store.list_versions(tmp_path / "store", "demo") == []
