"""`teacher.max_cost_usd` with the batch teacher (`backend: openai_batch`): a batch is priced at its worst case
before it is created (per request its text's characters / 4 input tokens, n x max_tokens output tokens, at the batch
price), only the leading requests that fit go out, the run stops with CostLimit once their answers are journaled,
and a rerun with a higher limit sends only the rest. Against a minimal fake of the files and batches API on loopback
that answers each line itself (no vLLM): every batch completes at once."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from builder import sample, tasks
from builder.errors import CostLimit
from builder.journal import Journal
from builder.recipe import Recipe
from builder.teachers import batch as batch_teacher
from tests.helpers import arith_task

# every request asks for 1 sample of at most 8 tokens: its worst case is 8 output tokens at $100,000 per million,
# $0.80, half that in a batch: $0.40; the fake answers with 5 completion tokens: $0.25 at the batch price
PRICES = {"input": 0, "output": 100_000, "batch_discount": 0.5}
WORST, PAID = 0.40, 0.25


class FakeBatches:
    """POST /files, POST /batches (run at once: each line answered with a canned completion and usage), GET
    /batches/{id}, GET /batches?limit=, GET /files/{id}/content, GET /models. `submitted`: per batch, its
    custom_ids; `lines`: every line run. `hold`: batches read in_progress until it is switched off."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.submitted: list[list[str]] = []
        self.lines: list[dict[str, Any]] = []
        self.uploads = 0
        self.hold = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, obj: Any = None, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("/v1", 1)[1]
                if path.startswith("/models"):
                    return self._send(200, {"data": [{"id": "gpt-x", "owned_by": "openai"}]})
                if path.startswith("/batches?"):
                    return self._send(200, {"data": list(fake.batches.values())[::-1]})
                if path.startswith("/batches/"):
                    batch = fake.batches[path.split("/")[2]]
                    if not fake.hold:
                        batch["status"] = "completed"
                    return self._send(200, batch)
                if path.startswith("/files/") and path.endswith("/content"):
                    return self._send(200, raw=fake.files[path.split("/")[2]])
                self._send(404, {})

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("/v1", 1)[1]
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if path == "/files":
                    msg = BytesParser(policy=HTTP).parsebytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
                    content = next(p.get_payload(decode=True) for p in msg.iter_parts() if p.get_filename())
                    fid = "file-" + uuid.uuid4().hex[:8]
                    fake.files[fid] = content
                    fake.uploads += 1
                    return self._send(200, {"id": fid})
                if path == "/batches":
                    body = json.loads(raw)
                    out, ids = [], []
                    for line in fake.files[body["input_file_id"]].decode().splitlines():
                        req = json.loads(line)
                        fake.lines.append(req)
                        ids.append(req["custom_id"])
                        n = req["body"]["n"]
                        answer = {"choices": [{"index": i, "message": {"content": f" so {i} and the answer is 7."},
                                               "finish_reason": "stop"} for i in range(n)],
                                  "usage": {"prompt_tokens": 9, "completion_tokens": 5 * n}}
                        out.append(json.dumps({"id": "x", "custom_id": req["custom_id"],
                                               "response": {"status_code": 200, "body": answer}, "error": None}))
                    fake.submitted.append(ids)
                    ofid = "file-" + uuid.uuid4().hex[:8]
                    fake.files[ofid] = ("\n".join(out) + "\n").encode()
                    bid = "batch_" + uuid.uuid4().hex[:8]
                    fake.batches[bid] = {"id": bid, "status": "in_progress" if fake.hold else "completed",
                                         "input_file_id": body["input_file_id"],
                                         "output_file_id": ofid, "error_file_id": None,
                                         "request_counts": {"total": len(out), "completed": len(out), "failed": 0}}
                    return self._send(200, fake.batches[bid])
                self._send(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(monkeypatch) -> Iterator[FakeBatches]:
    monkeypatch.setattr(batch_teacher, "POLL_S", 0.01)
    f = FakeBatches()
    yield f
    f.close()


def _recipe(tmp_path: Path, url: str, limit: float, questions: list[str] | None = None,
            prices: dict[str, float] = PRICES) -> Recipe:
    task = arith_task(tmp_path, [(q, 7) for q in questions]) if questions else arith_task(tmp_path)
    return Recipe.model_validate({
        "name": "batch-limits", "work_dir": str(tmp_path / "runs"), "tasks": {"items": [task]},
        "teacher": {"backend": "openai_batch", "model": "gpt-x", "base_url": url, "use_n": False,
                    "prices": prices, "max_cost_usd": limit},
        "prompt": {"two_stage": False, "format": "chat"}, "sampling": {"n": 3, "max_tokens": 8, "seed": 1}})


@pytest.mark.parametrize("per_file", [batch_teacher.MAX_BATCH_REQUESTS, 1], ids=["one-file", "a-file-per-request"])
def test_a_batch_is_cut_to_what_the_limit_affords_and_the_rerun_sends_only_the_rest(tmp_path, fake, monkeypatch,
                                                                                    per_file):
    monkeypatch.setattr(batch_teacher, "MAX_BATCH_REQUESTS", per_file)  # the cut holds across the files of a group
    recipe = _recipe(tmp_path, fake.url, 2.25 * WORST)  # 5 questions x 3 samples: 15 requests, 2 affordable
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(CostLimit, match=r"spent \$0\.5000 of teacher.max_cost_usd \$0\.9: 13 request\(s\) were "
                                        r"left unsent.*raise teacher.max_cost_usd and rerun"):
        sample.run(questions, recipe)
    first = [i for ids in fake.submitted for i in ids]
    assert len(first) == 2 and len(fake.submitted) == (1 if per_file > 1 else 2)
    # their answers are journaled, at the batch price; nothing is left in flight
    journal = Journal(recipe.run_dir / "journal")
    entries = journal.entries()
    assert set(entries) == set(first)
    assert all(e["response"]["choices"][0]["text"] == " so 0 and the answer is 7." for e in entries.values())
    assert journal.spent().cost_usd == pytest.approx(2 * PAID)
    assert not (recipe.run_dir / "journal" / batch_teacher.STATE).exists()

    # a rerun with a little more room: what was spent counts, 2 more fit
    with pytest.raises(CostLimit, match=r"spent \$1\.0000 of teacher.max_cost_usd \$1\.4: 11 request\(s\)"):
        sample.run(questions, _recipe(tmp_path, fake.url, 2 * PAID + 2.25 * WORST))
    second = [i for ids in fake.submitted for i in ids][2:]
    assert len(second) == 2 and not set(second) & set(first)

    # the limit raised: only the 11 never sent go out, the run completes
    samples, stats = sample.run(questions, _recipe(tmp_path, fake.url, 100.0))
    third = [i for ids in fake.submitted for i in ids][4:]
    assert len(third) == 11 and not set(third) & {*first, *second}
    assert len(fake.lines) == 15 and samples.height == 15
    assert (samples["finish_reason"] == "stop").all()
    assert stats.extra["spent"]["cost_usd"] == pytest.approx(15 * PAID)


def test_a_limit_below_one_request_uploads_nothing(tmp_path, fake):
    recipe = _recipe(tmp_path, fake.url, 0.9 * WORST)
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(CostLimit, match=r"spent \$0\.0000 of teacher.max_cost_usd \$0\.36: the next batch was not "
                                        r"sent.*\$0\.4000.*15 request\(s\) left unsent"):
        sample.run(questions, recipe)
    assert fake.uploads == 0 and fake.batches == {}
    assert not (recipe.run_dir / "journal" / batch_teacher.STATE).exists()


def test_the_prompt_counts_at_characters_over_four(tmp_path, fake):
    """Output free, input $100,000 per million: a 4,000-character question is over 1,000 input tokens, $50 at the
    batch price, so a $10 limit sends nothing (the old check, spent so far only, bought every request)."""
    long = "Tom has 3 apples and buys 4 more. " * 118 + "How many apples does he have?"
    recipe = _recipe(tmp_path, fake.url, 10.0, [long], prices={"input": 100_000, "output": 0})
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    with pytest.raises(CostLimit, match=r"the next batch was not sent.*3 request\(s\) left unsent"):
        sample.run(questions, recipe)
    assert fake.uploads == 0 and fake.lines == []


def test_a_batch_an_earlier_run_left_in_flight_counts_against_the_limit(tmp_path, fake, monkeypatch):
    """A run sends the 2 requests its limit affords and is interrupted while the batch runs: the rerun, same limit,
    polls that batch and sends nothing more (its worst case fills the limit), then stops with CostLimit."""
    fake.hold = True
    recipe = _recipe(tmp_path, fake.url, 2.25 * WORST)
    questions = tasks.run(recipe.tasks, recipe.base_dir)

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_teacher, "time", SimpleNamespace(monotonic=time.monotonic, sleep=interrupt))
    with pytest.raises(KeyboardInterrupt):
        sample.run(questions, recipe)
    state = recipe.run_dir / "journal" / batch_teacher.STATE
    assert len(fake.submitted) == 1 and len(fake.submitted[0]) == 2 and state.exists()  # still in flight

    fake.hold = False
    monkeypatch.setattr(batch_teacher, "time", time)
    with pytest.raises(CostLimit, match=r"spent \$0\.5000 of teacher.max_cost_usd \$0\.9: 13 request\(s\) were "
                                        r"left unsent"):
        sample.run(questions, recipe)
    assert len(fake.submitted) == 1 and fake.uploads == 1  # polled, not bought again, nothing new sent
    assert set(Journal(recipe.run_dir / "journal").entries()) == set(fake.submitted[0])
    assert not state.exists()
