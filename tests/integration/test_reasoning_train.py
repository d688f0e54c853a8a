"""Reasoning versions on a real model: the r1 format's loss mask and a few training steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.helpers import STORE_RECIPE, make_ledger, make_stats


# ------------------------------------------------------------------ training
def test_r1_encoding_puts_loss_on_the_trace_not_the_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    from builder.prompts import reasoning_completion
    from builder.train import IGNORE_INDEX, encode_example

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    completion = reasoning_completion("3 + 4 = 7", "The answer is 7.")
    ids, labels = encode_example(tok, question, completion, "r1", 512)
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                     add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert all(t == IGNORE_INDEX for t in labels[:n_prompt])
    target = [t for t in labels if t != IGNORE_INDEX]
    assert target == ids[n_prompt:] and target[-1] == tok.eos_token_id
    assert tok.decode(target[:-1]) == completion  # the whole trace and the answer text carry loss
    assert tok.decode(ids[:n_prompt]) == prompt


@pytest.mark.slow
def test_train_a_few_steps_on_a_reasoning_version(tmp_path, tiny_model_dir):
    from builder import store, train
    from builder.train_recipe import parse_train_recipe

    ledger = make_ledger(tasks=("multiarith",), questions=4, samples=2).with_columns(
        reasoning=pl.format("Tom has {} apples. He buys 4 more, so the total is computed.", pl.col("gold")),
        reasoning_tokens=pl.lit(12, pl.Int32), reasoning_finished=pl.lit(True))
    store.write_version(store.rows_from_ledger(ledger), root=tmp_path / "store", name="r1", recipe=STORE_RECIPE,
                        stats=make_stats(ledger), tool_version="test")
    recipe = parse_train_recipe({
        "name": "r1-student", "dataset": {"ref": "r1@v1", "root": str(tmp_path / "store")},
        "model": {"model_name_or_path": str(tiny_model_dir)}, "format": "r1",
        "training": {"learning_rate": 3e-3, "per_device_train_batch_size": 2, "max_length": 256, "max_steps": 2},
        "output_dir": str(tmp_path / "out"), "eval": {"enabled": False}})
    result = train.main(recipe)
    assert result.steps == 2 and len(result.losses) == 2 and all(np.isfinite(result.losses))
    log = [json.loads(line) for line in (tmp_path / "out" / train.TRAIN_LOG).read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2]
    assert "`r1`" in (tmp_path / "out" / "README.md").read_text()
    assert Path(tmp_path / "out" / "config.json").exists()
