"""Every config of a dataset version trains with TRL's SFTTrainer straight from `datasets.load_dataset(<folder>)`.

TRL picks the dataset type of a table by its keys, through a set (`set.pop()`), so a table holding both standard
`prompt`/`completion` and conversational `messages` trains one way under one PYTHONHASHSEED and another way under
the next (and then without EOS). Each config holds one type, so every hash seed must give the same result: each
example ends in EOS and only its completion carries loss. The trainer runs in subprocesses, one per hash seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, build_version

HASH_SEEDS = ("0", "10", "42")  # 10: the seed under which a mixed table trained as `messages`, without EOS

# Runs in a subprocess: train 2 steps on each config, report what the trainer tokenized.
_TRAIN = r"""
import json, sys
import datasets
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

folder, model, cache, out = sys.argv[1:5]
configs = sys.argv[5:]
report = {}
for config in configs:
    ds = datasets.load_dataset(folder, config, split="train", cache_dir=cache)
    tok = AutoTokenizer.from_pretrained(model)
    chat = isinstance(ds[0]["prompt"], list)
    # conversational: the chat template ends the assistant turn; its end-of-turn token is the EOS (TRL's advice)
    args = SFTConfig(output_dir=f"{out}/{config}", max_steps=2, per_device_train_batch_size=4, report_to=[],
                     save_strategy="no", use_cpu=True, eos_token="<|im_end|>" if chat else None,
                     disable_tqdm=True, logging_strategy="no")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    examples = []
    for ex in trainer.train_dataset:
        ids, labels = ex["input_ids"], ex["labels"]
        # the chat template writes a newline after its end-of-turn token: the last non-blank token must be EOS
        last = [i for i in ids if tok.decode([i]).strip()][-1] if chat else ids[-1]
        examples.append({"ids": ids, "labels": labels, "last": last,
                         "completion": tok.decode([i for i, lab in zip(ids, labels) if lab != -100])})
    steps = trainer.train().global_step
    report[config] = {"steps": steps, "eos": tok.eos_token_id, "chat": chat, "examples": examples,
                      "rows": ds.num_rows, "completions": [ds[i]["completion"] for i in range(ds.num_rows)]}
print(json.dumps(report))
"""


@pytest.mark.slow
def test_every_config_trains_with_eos_and_completion_only_loss_under_any_hash_seed(tmp_path, tiny_model_dir):
    info = build_version(tmp_path / "store")
    configs = list(json.loads((info.path / "manifest.json").read_text())["configs"])
    assert configs[:2] == ["default", "conversational"] and len(configs) == 4  # + one per task
    results = {}
    for seed in HASH_SEEDS:
        env = {**os.environ, "PYTHONHASHSEED": seed, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-c", _TRAIN, str(info.path), str(tiny_model_dir), str(tmp_path / "hf-cache"),
             str(tmp_path / f"out-{seed}"), *configs], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[seed] = json.loads(proc.stdout.strip().splitlines()[-1])
    for seed, report in results.items():
        for config, r in report.items():
            where = f"PYTHONHASHSEED={seed} config {config}"
            assert r["steps"] == 2 and r["chat"] == (config == "conversational"), where
            assert len(r["examples"]) == r["rows"] > 0, where
            for ex, completion in zip(r["examples"], r["completions"], strict=True):
                ids, labels = ex["ids"], ex["labels"]
                assert ex["last"] == r["eos"], (where, ex["completion"])
                # loss on the completion only: the prompt is masked, every token after it is trained
                first = next(i for i, lab in enumerate(labels) if lab != -100)
                assert first > 0 and labels[first:] == ids[first:], where
                target = completion[0]["content"] if r["chat"] else completion.strip()
                assert ex["completion"].strip().startswith(target), (where, target, ex["completion"])
    # every hash seed tokenized every config the same way
    assert all(report == results[HASH_SEEDS[0]] for report in results.values())
