"""The batch teacher (`backend: openai_batch`) against FakeBatchAPI (tests/fake_batch_api.py: the OpenAI files and
batches endpoints on 127.0.0.1, each batch executed by the real `vllm run-batch` on the tiny model).

One run goes through everything a batch can do: it is SIGKILLed once its stage-1 batch is submitted and restarted
(the restart polls that batch, creating no second one), the batch expires with part of its results (the rest goes
out again in a new batch) and holds a request the server refused (its samples carry the error); the samples equal
those of the same recipe sent online to a real `vllm serve` with the same seeds, and cost half (the batch discount).
Ctrl-C cancels the batch at the server and exits at once; a cost limit below one request's worst case sends no
batch (the cut of a batch to what the limit affords is in tests/unit/test_batch_limits.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from builder import sample, tasks
from builder.errors import CostLimit, EngineError
from builder.journal import Journal
from builder.recipe import Recipe
from builder.teachers import batch as batch_teacher
from tests.fake_batch_api import FakeBatchAPI
from tests.helpers import ARITH_QUESTIONS, ROOT, arith_task, vllm_serve

COMPARE = ["qid", "sample_idx", "seed", "prompt", "rationale", "answer_prompt", "answer_completion", "finish_reason",
           "prompt_tokens", "completion_tokens"]
ENGINE = ("--max-model-len", "1024", "--seed", "0", "--enforce-eager")  # the same engine for run-batch and serve
PRICES = {"input": 1000.0, "output": 2000.0, "batch_discount": 0.5}
SECRET = "sk-batch-test-3e1d9c-never-write-me"
KEY_ENV = "RB_TEST_BATCH_KEY"
# `rationale sample RECIPE` in a process of its own, polling every 0.2 s
SAMPLE = ("import sys\nimport builder.teachers.batch as b\nb.POLL_S = 0.2\nfrom builder.cli import main\n"
          "sys.exit(main(['sample', sys.argv[1]]))")


def recipe_dict(tmp_path: Path, model: str, base_url: str, backend: str, work: str) -> dict[str, Any]:
    return {
        "name": "batch", "work_dir": str(tmp_path / work),
        "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": backend, "model": model, "base_url": base_url, "prices": PRICES,
                    "api_key_env": KEY_ENV},
        "prompt": {"format": "chat"},  # vllm run-batch reads /v1/chat/completions lines only
        # a stop string this model writes early: most rationales end by it and get an answer stage
        "sampling": {"n": 3, "max_tokens": 12, "answer_max_tokens": 4, "shard_size": 2, "seed": 3, "stop": ["e"]},
    }


def files_containing(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def start_sample(recipe_file: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SAMPLE, str(recipe_file)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_recorded(proc: subprocess.Popen[bytes], state: Path, fake: FakeBatchAPI, timeout_s: float = 120) -> str:
    """The id of the batch the process created, once both the fake and the run's batches.json hold it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sample exited with {proc.returncode}: {proc.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        if fake.created and state.exists():
            ids = [b["id"] for b in json.loads(state.read_text())["batches"]]
            if ids and ids[0] is not None:
                return ids[0]
        time.sleep(0.1)
    pytest.fail("no batch was created and recorded in time")


@pytest.mark.slow
def test_batch_run_killed_resumes_polling_and_matches_online(tmp_path, tiny_model_dir, monkeypatch):
    model = str(tiny_model_dir)
    monkeypatch.setenv(KEY_ENV, SECRET)  # the killed process inherits it
    with FakeBatchAPI(tiny_model_dir, tmp_path / "fake", api_key=SECRET, engine_args=ENGINE) as fake:
        cfg = recipe_dict(tmp_path, model, fake.url, "openai_batch", "batch-runs")
        recipe = Recipe.model_validate(cfg)
        recipe_file = tmp_path / "batch.yaml"
        recipe_file.write_text(yaml.safe_dump(cfg))
        state = recipe.run_dir / "journal" / batch_teacher.STATE

        # 1. a run submits its stage-1 batch (held at the fake) and is SIGKILLed
        fake.hold, fake.expire_next = True, 2  # the first batch expires once 2 of its requests are done
        proc = start_sample(recipe_file)
        first = wait_recorded(proc, state, fake)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert fake.created == 1

        # the file is what `vllm run-batch` reads: one request per line, custom_id its journal key
        lines = [json.loads(x) for x in fake.content(fake.batches[first]["input_file_id"]).splitlines()]
        assert [x["url"] for x in lines] == ["/v1/chat/completions"] * len(ARITH_QUESTIONS)
        assert all(x["method"] == "POST" and x["body"]["n"] == 3 and "seed" in x["body"] for x in lines)
        refused = next(x["custom_id"] for x in lines if "9 birds" in x["body"]["messages"][-1]["content"])
        fake.fail_ids = {refused}  # the server refuses this request: it goes to the error file
        fake.release()  # vllm run-batch starts on the batch the killed process left

        # 2. meanwhile: the same recipe sent online to a real `vllm serve` with the same seeds
        online_cfg = recipe_dict(tmp_path, model, "", "openai", "online-runs")
        with vllm_serve(tiny_model_dir, *ENGINE[4:], api_key=SECRET) as base:
            online_cfg["teacher"]["base_url"] = base
            online_recipe = Recipe.model_validate(online_cfg)
            questions = tasks.run(online_recipe.tasks, online_recipe.base_dir)
            online, _ = sample.run(questions, online_recipe)
        online_entries = list(Journal(online_recipe.run_dir / "journal").entries().values())

        # 3. the restart polls the batch the killed run left (no second stage-1 submission), takes the 2 results
        # of the expired batch, sends the 2 it did not finish again, then the stage-2 batch
        monkeypatch.setattr(batch_teacher, "POLL_S", 0.2)
        samples, stats = sample.run(questions, recipe)

    assert fake.runs == fake.created == 3
    assert stats.extra["batches_created"] == 2
    (b1, ids1), (b2, ids2), (_, ids3) = fake.submitted
    assert b1 == first and len(ids1) == len(ARITH_QUESTIONS)
    expired = {line["custom_id"] for line in _lines(fake, fake.batches[b1]["error_file_id"])
               if (line.get("error") or {}).get("code") == "batch_expired"}
    # no request went out twice but the 2 the expired batch did not run (the restart polled the first batch)
    sent = Counter(i for _, ids in fake.submitted for i in ids)
    assert len(expired) == 2 and {i for i, c in sent.items() if c > 1} == expired == set(ids2)
    assert max(sent.values()) == 2
    assert fake.batches[b1]["status"] == "expired" and fake.batches[b1]["request_counts"]["completed"] == 2
    assert not set(ids3) & set(ids1) and len(ids3) == len(set(ids3)) > 0  # stage 2: answers, each once
    assert not state.exists()  # nothing left in flight

    # the refused request: an error on its 3 samples, no answer stage; everything else equals the online run
    bad_qid = next(e["qid"] for e in online_entries if e["key"] == refused)
    failed = samples.filter(pl.col("qid") == bad_qid)
    assert failed.height == 3 and (failed["finish_reason"] == "error").all()
    assert failed["error"].str.contains("refused").all() and failed["answer_completion"].is_null().all()
    assert (failed["rationale"] == "").all()
    ok, reference = (df.filter(pl.col("qid") != bad_qid).select(COMPARE).sort("qid", "sample_idx")
                     for df in (samples, online))
    assert ok.height == (len(ARITH_QUESTIONS) - 1) * 3
    assert ok["answer_completion"].is_not_null().any()  # the answer stage ran through its batch
    assert_frame_equal(ok, reference)

    # the same requests, the same tokens, at half the online price
    paid = [e for e in online_entries if e["qid"] != bad_qid]
    usage, spent = stats.extra["usage"], stats.extra["spent"]
    assert usage["requests"] == len(paid) == len(ids1) - 1 + len(ids3)
    assert usage["prompt_tokens"] == sum(e["usage"]["prompt_tokens"] for e in paid)
    assert usage["completion_tokens"] == sum(e["usage"]["completion_tokens"] for e in paid)
    assert spent["cost_usd"] == pytest.approx(0.5 * sum(e["usage"]["cost_usd"] for e in paid), rel=1e-4)
    assert files_containing(tmp_path, SECRET) == []


def test_ctrl_c_cancels_the_batch_at_the_server_and_exits_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeBatchAPI(Path("tiny-model"), tmp_path / "fake", api_key=SECRET) as fake:
        cfg = recipe_dict(tmp_path, "tiny-model", fake.url, "openai_batch", "runs")
        recipe_file = tmp_path / "batch.yaml"
        recipe_file.write_text(yaml.safe_dump(cfg))
        state = Recipe.model_validate(cfg).run_dir / "journal" / batch_teacher.STATE
        fake.hold = True  # the batch stays in progress: nothing runs
        proc = start_sample(recipe_file)
        bid = wait_recorded(proc, state, fake)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
        took = time.monotonic() - t0
        batch = fake.wait(bid, timeout_s=10)
    assert rc == 130 and took < 5, (rc, took)
    assert fake.cancels == [bid] and batch["status"] == "cancelled"
    assert fake.created == 1 and fake.runs == 0
    # still recorded: the next run takes what the cancelled batch finished and asks the rest again
    assert [b["id"] for b in json.loads(state.read_text())["batches"]] == [bid]
    assert files_containing(tmp_path, SECRET) == []  # the key is only ever sent, in a header


def test_a_batch_endpoint_the_server_refuses_stops_the_run(tmp_path, monkeypatch):
    """Raw prompts go to /v1/completions, which this server's batches (vllm run-batch) do not run: the create call
    is refused with the server's reason, nothing is polled for ever."""
    monkeypatch.setattr(batch_teacher, "POLL_S", 0.05)
    with FakeBatchAPI(Path("tiny-model"), tmp_path / "fake") as fake:
        cfg = recipe_dict(tmp_path, "tiny-model", fake.url, "openai_batch", "runs")
        cfg["prompt"] = {"format": "raw"}
        recipe = Recipe.model_validate(cfg)
        with pytest.raises(EngineError, match=r"HTTP 400.*Invalid endpoint '/v1/completions'"):
            sample.run(tasks.run(recipe.tasks, recipe.base_dir), recipe)
    assert fake.created == 0
    assert not (recipe.run_dir / "journal" / batch_teacher.STATE).exists()  # no batch was made: none to resume


def test_a_cost_limit_below_one_request_sends_no_batch(tmp_path, monkeypatch):
    """Every request may cost up to 3 x 12 output tokens at $2,000 per million, $0.036 at the batch price: a $0.01
    limit stops the run before anything is uploaded (the limit was checked against $0 spent, and the whole batch
    bought)."""
    monkeypatch.setattr(batch_teacher, "POLL_S", 0.05)
    with FakeBatchAPI(Path("tiny-model"), tmp_path / "fake") as fake:
        cfg = recipe_dict(tmp_path, "tiny-model", fake.url, "openai_batch", "runs")
        cfg["teacher"]["max_cost_usd"] = 0.01
        recipe = Recipe.model_validate(cfg)
        with pytest.raises(CostLimit, match=r"spent \$0\.0000 of teacher.max_cost_usd \$0\.01: the next batch was "
                                            rf"not sent.*{len(ARITH_QUESTIONS)} request\(s\) left unsent"):
            sample.run(tasks.run(recipe.tasks, recipe.base_dir), recipe)
    assert fake.created == 0 and fake.files == {}
    assert not (recipe.run_dir / "journal" / batch_teacher.STATE).exists()


def _lines(fake: FakeBatchAPI, file_id: str | None) -> list[dict[str, Any]]:
    return [json.loads(x) for x in fake.content(file_id).splitlines()] if file_id else []
