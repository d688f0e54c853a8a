"""Dataset card: YAML header that `datasets` reads, the funnel/accuracy/diversity/decontamination sections, plots."""

from __future__ import annotations

import struct

import polars as pl
import pytest

from builder import store
from builder.errors import StoreError
from builder.stats import BuildStats, ContaminationHit, Decontamination
from tests.helpers import ROOT, STORE_RECIPE, load_version_dataset, make_ledger, make_stats


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
    assert {c: i.splits["train"].num_examples for c, i in infos.items()} == {"default": 16, "conversational": 16,
                                                                              "coin_flip": 8, "multiarith": 8}
    # the rows table's columns but `messages`, which only the conversational config holds (as prompt/completion)
    assert list(infos["default"].features) == [c for c in store.load_manifest(info.path)["columns"] if c != "messages"]
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
    assert ("Decontamination: not run" in body) == (stats is None)
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


def test_quickstart_card_carries_hub_metadata_that_huggingface_hub_validates(tmp_path):
    """The quickstart recipe's card (one file task, no decontamination): license, language, annotations_creators,
    source_datasets, citation; parsed back by huggingface_hub's DatasetCard into DatasetCardData."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from builder.bind import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "quickstart" / "build.yaml")
    recipe.store.license = "apache-2.0"
    ledger = make_ledger(tasks=("arith",))
    stats = make_stats(ledger)
    stats.curation.decontamination = Decontamination()  # the quickstart has no eval set: nothing was checked
    info = store.write_version(store.rows_from_ledger(ledger), root=tmp_path / "store", name="quickstart-arith",
                               recipe=recipe.model_dump(mode="json"), stats=stats, tool_version="test")
    card = DatasetCard.load(info.path / "README.md")
    data = card.data
    assert isinstance(data, DatasetCardData)
    assert data.license == "apache-2.0" and data.language == ["en"]
    assert data.annotations_creators == ["machine-generated"] and data.source_datasets == ["questions.jsonl"]
    assert sorted(c["config_name"] for c in data.configs) == ["conversational", "default"]
    assert DatasetCardData(**data.to_dict()).to_dict() == data.to_dict()  # a valid, round-tripping header
    text = card.text
    assert "Large Language Models Are Reasoning Teachers" in text and "arXiv:2212.10071" in text
    assert "@software{rationale_builder" in text and "Decontamination: not run" in text
    assert 'load_dataset("<org>/quickstart-arith"' in text and "rationale publish` writes the repo id" in text
    published = store.published_copy(info.path, store.load_manifest(info.path), "my-org/arith-cot")
    assert b'load_dataset("my-org/arith-cot"' in published["README.md"] and b"<org>" not in published["README.md"]
