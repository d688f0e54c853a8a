"""The Python API does what the CLI does: build from a recipe dict, open a version as a DatasetDict (each config),
publish it (real HfApi against the Hub fake)."""

from __future__ import annotations

import yaml

import builder
from tests.helpers import write_import_recipe


def test_build_open_and_publish_from_python(tmp_path, benchmarks_dir, teacher_completions_dir, fake_hub, monkeypatch):
    from huggingface_hub import constants

    path = write_import_recipe(tmp_path / "recipe.yaml", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                               name="api-demo", limit=12, store={"root": "store", "license": "cc-by-4.0"})
    summary = builder.build_dataset(yaml.safe_load(path.read_text()), base_dir=tmp_path)  # a dict, not a file
    assert summary.created and summary.version == "v1" and summary.kept > 0

    store = tmp_path / "store"
    default = builder.open_version("api-demo@v1", store=store, cache_dir=tmp_path / "hf")
    conversational = builder.open_version("api-demo@v1", "conversational", store=store, cache_dir=tmp_path / "hf")
    assert default["train"].num_rows == conversational["train"].num_rows == summary.kept
    row, turns = default["train"][0], conversational["train"][0]
    assert turns["prompt"] == [{"role": "user", "content": row["question"]}]
    assert turns["completion"] == [{"role": "assistant", "content": row["completion"].strip()}]

    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    result = builder.publish("api-demo@v1", "org/api-demo", store=store)
    assert result.tag == "v1" and fake_hub.repos["org/api-demo"]["tags"]["v1"] == result.commit
    assert builder.publish("api-demo@v1", "org/api-demo", store=store).status != "published"  # a no-op the 2nd time
