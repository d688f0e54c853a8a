"""A served teacher under real traffic faults: `rationale build` (a subprocess) against a real `vllm serve` of the
tiny model behind tests/fault_proxy.py, which injects 429 bursts (with and without Retry-After), 500/503, slow and
dropped connections, an outage (503s, closed connections, refused connections) and a poison question (HTTP 400,
context too long), and counts every request the server answered and the client received.

A: every fault at once: the build completes, every sample is on storage, the poison question's samples carry the
   error, no request is paid twice.
B: SIGKILL once K answers were received, rerun: no answer received before the kill is asked for again.
C: Ctrl-C while every request is slow: exit 130 within 2 s, shards and journal readable, a rerun completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml

from builder import tasks
from builder.bind import load_recipe
from tests.fault_proxy import Fault, FaultProxy
from tests.helpers import ROOT, arith_task, vllm_serve

N_QUESTIONS, N = 60, 4  # one request per sample (use_n false): ~240 rationale requests, plus the answer stages
POISON = "POISON-7f3a"
CONCURRENCY = 8


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir: Path) -> Iterator[str]:
    with vllm_serve(tiny_model_dir) as base:
        yield base


def write_recipe(folder: Path, model: Path, base_url: str, *, seed: int, **teacher) -> Path:
    questions = [(f"Sam has {i} coins and finds {i + 2} more. How many coins does Sam have now?", 2 * i + 2)
                 for i in range(N_QUESTIONS - 1)]
    questions.insert(7, (f"{POISON} A very long question. How many coins are there?", 1))
    recipe = {
        "name": "served", "work_dir": str(folder / "runs"),
        "tasks": {"items": [arith_task(folder, questions)]},
        "teacher": {"backend": "openai", "model": str(model), "base_url": base_url, "concurrency": CONCURRENCY,
                    "timeout_s": 20, "max_retries": 8, "retry_budget_s": 300, "use_n": False, **teacher},
        "sampling": {"n": N, "max_tokens": 12, "answer_max_tokens": 4, "shard_size": 4, "seed": seed},
        # the tiny model is never right: keep what has an answer (the store takes no row without one)
        "curation": {"keep_correct_only": False, "filters": ["no_answer"], "minhash": {"enabled": False}},
        "store": {"root": str(folder / "store")},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def spawn(recipe: Path) -> subprocess.Popen:
    """`python -m builder build RECIPE --json` in its own session (a kill or Ctrl-C reaches its whole group)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "builder", "build", str(recipe), "--json"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 200) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"the build did not finish in {timeout} s:\n{err[-4000:]}")
    return proc.returncode, err


def wait_for(cond, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the build exited ({proc.returncode}) before {what}:\n{proc.communicate()[1][-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} in {timeout} s:\n{proc.communicate()[1][-4000:]}")
        time.sleep(0.05)


def shards(recipe: Path) -> pl.DataFrame:
    """Every shard of the run (each must be readable Parquet)."""
    files = sorted((load_recipe(recipe).run_dir / "samples").glob("shard-*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def check_all_samples(recipe: Path, poisoned: bool = True) -> pl.DataFrame:
    """Every (qid, sample_idx) of the recipe on storage exactly once; the poison question's samples are errors
    carrying the server's message (where the proxy poisoned it), no other sample is."""
    cfg = load_recipe(recipe)
    questions = tasks.run(cfg.tasks, cfg.base_dir)
    got = shards(recipe)
    keys = got.select("qid", pl.col("sample_idx").cast(pl.Int64))
    assert keys.is_duplicated().sum() == 0, "a sample is on storage twice"
    want = questions.select("qid").join(pl.DataFrame({"sample_idx": list(range(N))}), how="cross")
    missing = want.join(keys, on=["qid", "sample_idx"], how="anti")
    assert missing.height == 0, f"{missing.height} sample(s) missing, e.g. {missing.head(3).rows()}"
    poison_q = questions.filter(pl.col("question").str.contains(POISON))["qid"].to_list() if poisoned else []
    bad = got.filter(pl.col("qid").is_in(poison_q))
    if poisoned:
        assert bad.height == N and (bad["finish_reason"] == "error").all(), bad.select("finish_reason", "error")
        assert bad["error"].str.contains("maximum context length").all(), bad["error"].to_list()
    others = got.filter(~pl.col("qid").is_in(poison_q))
    assert (others["finish_reason"] != "error").all(), others.filter(pl.col("finish_reason") == "error").select(
        "qid", "sample_idx", "error").head(5)
    return got


def paid_twice(proxy: FaultProxy, samples: pl.DataFrame) -> dict[str, int]:
    """Requests the server answered and the client received more than once, less those that legitimately repeat:
    two samples of a question with the same rationale ask the same (greedy, seedless) answer-stage body."""
    same = Counter(samples.filter(pl.col("answer_completion").is_not_null()).select(
        pl.col("prompt") + pl.col("rationale").str.strip_chars_end() + "\n" + pl.col("answer_prompt"))
        .to_series().to_list())
    return {k: c for k, c in proxy.completed_twice().items()
            if c > max(1, same.get(proxy.bodies[k].get("prompt"), 0))}


def journal_lines(recipe: Path) -> list[dict]:
    folder = load_recipe(recipe).run_dir / "journal"
    return [json.loads(line) for seg in sorted(folder.glob("*.jsonl")) for line in seg.read_text().splitlines()]


def timeline(proxy: FaultProxy, step: float = 5.0) -> str:
    """Requests the proxy saw per `step` seconds since the first: per fault kind (or forwarded), and completed."""
    rows: dict[int, Counter] = {}
    for e in list(proxy.log):
        rows.setdefault(int(e["t"] // step), Counter())[e["fault"]] += 1
        rows[int(e["t"] // step)]["completed"] += e["completed"]
    log = sorted(proxy.log, key=lambda e: e["t"])
    gaps = [f"{a['t']:.1f}-{b['t']:.1f} s after {a['fault']}"
            for a, b in zip(log, log[1:], strict=False) if b["t"] - a["t"] > 5]
    return "\n".join([*(f"  {b * step:5.0f}s {dict(c)}" for b, c in sorted(rows.items())),
                      f"  silent for more than 5 s: {gaps}"])


def summary(proxy: FaultProxy, rc: int, err: str) -> str:
    err = "\n".join(line for line in err.splitlines() if not line.startswith("HTTP Request:"))
    return (f"rc={rc} proxy totals={dict(proxy.totals)} completed={proxy.completed_total}\n{timeline(proxy)}\n"
            f"stderr:\n{err[-4000:]}")


@pytest.mark.slow
def test_every_fault_at_once_completes_with_errors_recorded_and_nothing_paid_twice(tmp_path, tiny_model_dir,
                                                                                   vllm_server):
    outage = [Fault("outage", window=(0, 8), after=170, mode="503"),  # from request 170 on, 22 s down
              Fault("outage", window=(8, 14), after=170, mode="close"),
              Fault("outage", window=(14, 22), after=170, mode="refuse")]
    faults = [
        Fault("poison", marker=POISON),
        Fault("429", requests=(20, 27)),  # a burst without Retry-After
        Fault("429", requests=(50, 57), retry_after=1),
        Fault("500", requests=(80, 82)),
        Fault("503", requests=(95, 97)),
        Fault("drop", requests=(110, 112)),  # closed before forwarding
        Fault("drop", requests=(120, 122), when="after"),  # the server answered, the client never hears it
        Fault("slow", requests=(130, 145), delay_s=3),
        *outage,
    ]
    with FaultProxy(vllm_server, faults) as proxy:
        recipe = write_recipe(tmp_path, tiny_model_dir, proxy.url, seed=1)
        t0 = time.monotonic()
        rc, err = finish(spawn(recipe), timeout=200)
        took = time.monotonic() - t0
        assert rc == 0, summary(proxy, rc, err)
        print(f"scenario A: {took:.1f} s, proxy totals {dict(proxy.totals)}, completed {proxy.completed_total} "
              f"(same body twice: {len(proxy.completed_twice())})\n"
              f"{timeline(proxy)}")
        for kind in ("poison", "429", "500", "503", "drop", "slow", "outage"):
            assert proxy.totals[kind] > 0, f"the run never met fault {kind}: {dict(proxy.totals)}"
        assert outage[0].origin is not None and any(e["t"] >= outage[0].origin + 22 for e in proxy.log), \
            "the run ended before the outage did"
        samples = check_all_samples(recipe)
        assert paid_twice(proxy, samples) == {}, summary(proxy, rc, err)


@pytest.mark.slow
def test_sigkill_then_rerun_never_asks_a_received_answer_again(tmp_path, tiny_model_dir, vllm_server):
    K = 90
    # no poison here: the poison question is a question like any other
    with FaultProxy(vllm_server, [Fault("429", requests=(10, 19), retry_after=1)]) as proxy:
        recipe = write_recipe(tmp_path, tiny_model_dir, proxy.url, seed=2)
        proxy.hold_after(K)  # the K-th answer is the last the client receives before the kill
        proc = spawn(recipe)
        wait_for(lambda: proxy.completed_total >= K and proxy.totals["held"] > 0, proc, 120,
                 f"{K} completed requests")
        time.sleep(1.5)  # the client journals what it received; nothing more reaches it
        os.killpg(proc.pid, signal.SIGKILL)
        rc, err = finish(proc)
        assert rc == -signal.SIGKILL, summary(proxy, rc, err)
        assert proxy.completed_total == K
        journaled = len(journal_lines(recipe))  # checked after the rerun: the rerun's outcome says more

        proxy.release()
        proxy.set_faults([Fault("429", requests=(3, 12), retry_after=1), Fault("503", requests=(20, 22))])
        rc, err = finish(spawn(recipe))
        assert rc == 0, summary(proxy, rc, err)
        samples = check_all_samples(recipe, poisoned=False)
        print(f"scenario B: proxy totals {dict(proxy.totals)}, completed {proxy.completed_total} "
              f"(same body twice: {len(proxy.completed_twice())}), "
              f"{journaled} journal entries at the kill")
        assert paid_twice(proxy, samples) == {}, summary(proxy, rc, err)
        assert journaled >= K, f"{journaled} journal entries after {K} answers were received"


@pytest.mark.slow
def test_ctrl_c_during_a_slow_server_exits_at_once_and_the_rerun_completes(tmp_path, tiny_model_dir, vllm_server):
    FIRST = 60  # answered at once: shards on disk before the slow part
    with FaultProxy(vllm_server, [Fault("slow", requests=(FIRST + 1, 10**9), delay_s=30)]) as proxy:
        recipe = write_recipe(tmp_path, tiny_model_dir, proxy.url, seed=3, timeout_s=60)
        proc = spawn(recipe)
        wait_for(lambda: len(proxy.log) >= FIRST + CONCURRENCY // 2, proc, 120, "slow requests in flight")
        time.sleep(1.0)
        before = proxy.completed_total
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - t0  # 60 s: still running
        rc, err = finish(proc)
        print(f"scenario C: exit {rc} {took:.2f} s after SIGINT; {before} answers received before it")
        assert rc == 130, summary(proxy, rc, err)
        assert took < 2.0, f"exited {took:.2f} s after Ctrl-C\n{summary(proxy, rc, err)}"
        assert proxy.completed_total == before  # nothing in flight was answered (all slow)
        assert shards(recipe).height > 0  # every shard file reads, and some were written before the slow part
        assert not list((load_recipe(recipe).run_dir / "samples").glob(".*.tmp"))
        entries = journal_lines(recipe)  # every line whole
        assert all("key" in e for e in entries)

        proxy.set_faults([])
        rc, err = finish(spawn(recipe))
        assert rc == 0, summary(proxy, rc, err)
        samples = check_all_samples(recipe, poisoned=False)
        assert paid_twice(proxy, samples) == {}, summary(proxy, rc, err)
