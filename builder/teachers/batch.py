"""OpenAI Batch API teacher (`teacher.backend: openai_batch`): the online backend's requests, sent as batch files.

A sample is built exactly as `backend: openai` builds it: the same `request` bodies (model, prompt, seed, sampling,
the stage-2 continuation), the same `compact` of a response and the same reading of it (`_rationales`, `_answer`,
`_split`), so a batch run and an online run with the same recipe and seeds hold the same samples. Only the
transport differs. Shards are taken in groups (up to `GROUP_REQUESTS` stage-1 requests); a group's stage-1 requests
go out as one batch (a JSONL file in the format `vllm run-batch` and the OpenAI Batch API read: one line
`{"custom_id", "method": "POST", "url", "body"}` per request), and once it is back the stage-2 answers of the
rationales that get one (`answer_items`) as a second batch. Each request's `custom_id` is its journal key
(`builder.journal.request_key`), so a result line says which request it answers whatever the order of the file.

The protocol: upload the file (`POST /files`, purpose `batch`), create the batch (`POST /batches` with
`input_file_id`, `endpoint`, `completion_window`), poll it (`GET /batches/{id}`, every `POLL_S` seconds) through
validating, in_progress and finalizing to a final state, then download its output and error files
(`GET /files/{id}/content`).

- Results are appended to the run's journal (`builder.journal`) exactly like online answers, usage priced with the
  batch discount (`cost.request_usage(..., batch=True)`): a rerun takes them from there, and the run's spent total
  works as it does online.
- `teacher.max_cost_usd` is checked before a batch is created, against its worst case: per request its text's
  characters / 4 as input tokens and n x max_tokens output tokens, at the batch price (`worst_usd`). What was spent,
  plus the worst case of the batches in flight, plus that of the new requests must stay within the limit: only the
  leading requests that fit go out (none: CostLimit before anything is uploaded), and once the batch that went out
  is back and journaled the run stops with CostLimit, saying how many requests were left unsent. A rerun with a
  higher limit takes the journaled answers and sends only the rest.
- The batches in flight are kept in the journal folder (`batches.json`, written atomically: batch id, input file,
  and per request its qid and samples), recorded before the batch is created and again once the server named it.
  A process that is killed leaves them there; the next run polls the same batches instead of creating new ones
  (a batch whose creation it never heard back from is found by its input file id), and takes every result they
  hold, wanted now or not (it is paid for).
- A request that ends in the error file becomes an error on its samples (finish_reason `FAILED`, the server's
  message), like a request an online server refuses; a refused answer stage keeps its rationale.
- An expired or cancelled batch: the results it has are taken, the requests it did not finish (error code
  `batch_expired` / `batch_cancelled`, or no line at all) go out again in a new batch; so do requests that failed
  with a server error (5xx). A request is sent at most `teacher.max_retries` + 1 times, then recorded as refused.
- A batch that fails validation (`failed`) stops the run with the server's reasons (the recipe's or the file's
  fault); it is forgotten, so a rerun submits it again.
- Ctrl-C cancels the batches in flight at the server (`POST /batches/{id}/cancel`, without waiting for them to wind
  down) and exits; they stay recorded, so the next run takes what they finished and asks the rest again.

vLLM's `run-batch` reads `/v1/chat/completions` lines only (this version): raw prompts (`/completions`) need a
server whose batch API takes `/v1/completions` (OpenAI's does).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from builder import cost
from builder.errors import BuilderError, CostLimit, EngineError
from builder.journal import request_key
from builder.teachers.base import TEACHERS, ShardResult, ShardWork, TeacherSetup
from builder.teachers.openai import OpenAITeacher, gather_all, readable
from builder.teachers.transport import BACKOFF_MAX_S, BACKOFF_S, RETRY_STATUS, Refused, utf8

log = logging.getLogger(__name__)

POLL_S = 30.0  # seconds between two looks at a batch in flight (a recipe field would be teacher.poll_interval_s)
COMPLETION_WINDOW = "24h"  # the only window the OpenAI Batch API offers
GROUP_REQUESTS = 50_000  # stage-1 requests of the shards that go out together (the API's limit per batch)
MAX_BATCH_REQUESTS = 50_000  # lines per batch file (OpenAI's limit)
MAX_BATCH_BYTES = 190 * 1024 * 1024  # bytes per batch file (OpenAI's limit is 200 MB)
CANCEL_TIMEOUT_S = 5.0  # how long Ctrl-C waits for each cancel request
STATE = "batches.json"  # the batches in flight, in the run's journal folder
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
UNFINISHED = frozenset({"batch_expired", "batch_cancelled"})  # error codes of requests the batch never ran
PENDING = Refused(0, "pending in a batch")  # what a request not answered yet reads as while a group is planned


@dataclass
class _Wanted:
    """A request some sample of the group needs and no batch has answered yet."""

    path: str
    body: dict[str, Any]
    qid: str
    samples: list[int]


@TEACHERS.register("openai_batch")
class BatchTeacher(OpenAITeacher):
    """A teacher behind the OpenAI Batch API (files + batches endpoints at `teacher.base_url`)."""

    batch_priced = True

    def __init__(self, setup: TeacherSetup, *, engine: Any = None) -> None:
        super().__init__(setup, engine=engine)
        self._http: Any = None
        self._results: dict[str, dict[str, Any]] = {}  # key -> compact response (also journaled)
        self._errors: dict[str, Refused] = {}  # key -> what the error file said
        self._wanted: dict[str, _Wanted] = {}
        self._attempts: dict[str, int] = {}  # key -> batches it was sent in by this process
        self._memory: list[dict[str, Any]] = []  # the batches in flight when the teacher keeps no journal
        self._sent = self._retries = self._created = 0
        self._committed: dict[str, float] = {}  # input file id -> worst case (USD) of a batch in flight
        self._unsent = 0  # wanted requests the cost limit kept back in this settle

    # ---------------------------------------------------------------- teacher interface
    @property
    def requests_sent(self) -> int:
        return self._sent

    @property
    def retries(self) -> int:
        return self._retries

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "batches_created": self._created}

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        super().close()

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        """Groups of shards, each through one batch per stage; a group's shards are yielded once all are back."""
        self.start()
        works = iter(shards)
        while True:
            group: list[ShardWork] = []
            calls = 0
            for work in works:
                group.append(work)
                calls += len(work.requests) if self.cfg.use_n else work.sequences
                if calls >= GROUP_REQUESTS:
                    break
            if not group:
                return
            yield from self._group(group, answer_max_tokens)

    def _group(self, group: list[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        """Build the group's shards as the online backend does, with `_ask` answering from the batches' results;
        each pass that finds requests nobody answered yet sends them as one batch (stage 1, then stage 2)."""
        while True:
            refused = self.refused
            self._wanted = {}
            done = self._run(gather_all([self._shard(work, answer_max_tokens) for work in group]))
            if not self._wanted:
                break
            self.refused = refused  # the pass was a plan: its pending requests were no refusals
            self._settle(self._wanted)
        self._results.clear()
        self._errors.clear()
        yield from done

    async def _ask(self, path: str, body: dict[str, Any], qid: str, samples: list[int], prompt_chars: int
                   ) -> dict[str, Any] | Refused:
        """The answer a batch (or the journal) holds for this exact request; PENDING (and noted) when none does."""
        key = request_key(path, body)
        if key in self._results:
            return self._results[key]
        if key in self._errors:
            return self._errors[key]
        if self.journal is not None and (entry := self.journal.get(key)) is not None:
            if readable(entry["response"], body["n"]):
                self._results[key] = entry["response"]
                return entry["response"]
            log.warning("journal %s: the answer kept for a request of %s cannot be read: it is asked again",
                        self.journal.folder, qid)
        self._wanted.setdefault(key, _Wanted(path, body, qid, list(samples)))
        return PENDING

    # ---------------------------------------------------------------- batches
    def _settle(self, wanted: dict[str, _Wanted]) -> None:
        """Every wanted request answered or refused: the batches left in flight (by this or a killed process) are
        polled to their end first, then the requests none of them holds are sent as a new batch."""
        records = self._load()
        covered = {key for rec in records for key in rec["requests"]}
        self._unsent = 0
        # an earlier run's batches are bought: what they may still cost counts against the limit (the requests of
        # theirs this run wants; the others were checked by the run that sent them)
        self._committed = {rec["input_file_id"]: sum(self.worst_usd(wanted[k]) for k in rec["requests"]
                                                     if k in wanted) for rec in records}
        try:
            for rec in records:
                if rec.get("id") is None:
                    self._create(rec, fresh=False)  # its creation was never confirmed: found by its file, or made
                else:
                    log.info("batch %s (%d requests) is still in flight from an earlier run: polling it", rec["id"],
                             len(rec["requests"]))
            fresh = {k: w for k, w in wanted.items() if k not in covered}
            active = records + (self._submit(fresh) if fresh else [])
        except KeyboardInterrupt:
            self._cancel(self._load())
            raise
        if self._unsent and not active:  # not one request fits: nothing was uploaded
            raise CostLimit(f"{self._spent_line()}: the next batch was not sent, as even its first request may "
                            f"cost up to ${self.worst_usd(next(iter(fresh.values()))):.4f} at the batch price "
                            f"(prompt characters / 4 input tokens, n x max_tokens output tokens); {self._unsent} "
                            "request(s) left unsent: raise teacher.max_cost_usd and rerun")
        self._poll(active, wanted)
        if self._unsent:  # the part that went out is back and journaled: a rerun sends only the rest
            raise CostLimit(f"{self._spent_line()}: {self._unsent} request(s) were left unsent, as their worst "
                            "case at the batch price (prompt characters / 4 input tokens, n x max_tokens output "
                            "tokens) would pass the limit; the answers of those sent are kept: raise "
                            "teacher.max_cost_usd and rerun to send the rest")
        missing = [k for k in wanted if k not in self._results and k not in self._errors]
        if missing:  # a request no batch answered, which nothing resubmitted: never loop on it
            raise EngineError(f"teacher {self.base_url}: {len(missing)} request(s) came back from no batch")

    def _poll(self, active: list[dict[str, Any]], wanted: dict[str, _Wanted]) -> None:
        """Look at each batch every POLL_S seconds until all are final; take each one's results as it ends."""
        seen: dict[str, str] = {}
        try:
            while active:
                for rec in list(active):
                    batch = self._call("GET", f"/batches/{rec['id']}", lost_ok=True)
                    if batch is None:
                        log.warning("batch %s is unknown to %s: its requests are sent again", rec["id"],
                                    self.base_url)
                        active.remove(rec)
                        self._forget(rec)
                        again = {k: wanted[k] for k in rec["requests"] if k in wanted}
                        active += self._submit(again) if again else []
                        continue
                    status = str(batch.get("status"))
                    if seen.get(rec["id"]) != status:
                        seen[rec["id"]] = status
                        counts = batch.get("request_counts") or {}
                        log.info("batch %s: %s (%s of %s requests done, %s failed)", rec["id"], status,
                                 counts.get("completed", "?"), counts.get("total", len(rec["requests"])),
                                 counts.get("failed", "?"))
                    if status not in FINAL:
                        continue
                    active.remove(rec)
                    again = self._collect(rec, batch, wanted)
                    self._forget(rec)
                    if again:
                        log.info("batch %s ended %s: %d request(s) it did not finish are sent again", rec["id"],
                                 status, len(again))
                        active += self._submit(again)
                if active:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            self._cancel(active)
            raise

    def _collect(self, rec: dict[str, Any], batch: dict[str, Any], wanted: dict[str, _Wanted]
                 ) -> dict[str, _Wanted]:
        """Journal a final batch's results and note its errors; the wanted requests to send again."""
        bid, status = rec["id"], batch["status"]
        if status == "failed":
            errors = (batch.get("errors") or {}).get("data") or []
            why = "; ".join(f"{'line ' + str(e['line']) + ': ' if e.get('line') else ''}"
                            f"{e.get('message') or e.get('code')}" for e in errors[:5]) or "no reason given"
            self._forget(rec)
            raise EngineError(f"teacher {self.base_url}: batch {bid} failed: {why}")
        again: list[str] = []
        answered: set[str] = set()
        lines = [*self._lines(batch.get("output_file_id")), *self._lines(batch.get("error_file_id"))]
        for line in lines:
            key = str(line.get("custom_id"))
            meta = rec["requests"].get(key)
            if meta is None:
                log.warning("batch %s: a result for custom_id %r it was never sent is skipped", bid, key)
                continue
            answered.add(key)
            response = line.get("response") if isinstance(line.get("response"), dict) else {}
            code = cost.token_count(response.get("status_code")) or 0
            body = response.get("body")
            if line.get("error") is None and code == 200 and isinstance(body, dict) and "choices" in body:
                try:
                    self._take(key, meta, body, wanted.get(key))
                    continue
                except ValueError as exc:  # an answer that cannot be read: asked again, never journaled
                    line = {"error": {"code": "unreadable", "message": f"an answer that cannot be read: {exc}"}}
                    code = 500
            err = line.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
            if isinstance(err, dict) and isinstance(err.get("error"), dict):  # vLLM's ErrorResponse
                err = err["error"]
            kind = err.get("code") if isinstance(err, dict) else None
            message = (err.get("message") if isinstance(err, dict) else str(err)) or json.dumps(err)
            if kind in UNFINISHED or code >= 500 or code in RETRY_STATUS:
                again.append(key)  # not the request's fault: sent again (this error stands once it was sent enough)
                self._errors[key] = Refused(code, utf8(f"{message} (batch {bid})"))
            else:
                self._errors[key] = Refused(code or 400, utf8(message))
        for key in rec["requests"]:
            if key not in answered:  # no line at all: the batch never ran it
                again.append(key)
                self._errors[key] = Refused(0, f"batch {bid} ended {status} without running this request")
        if self.journal is not None:
            self.journal.close()  # flushed and fsynced before the batch is forgotten
        out: dict[str, _Wanted] = {}
        for key in again:
            if key not in wanted:
                continue  # not needed now: asked when a shard needs it
            if self._attempts.get(key, 0) > self.cfg.max_retries:
                log.warning("batch %s: a request was sent %d times and never finished: recorded as an error",
                            bid, self._attempts[key])
                continue  # its last error stands
            self._errors.pop(key, None)
            out[key] = wanted[key]
        return out

    def _take(self, key: str, meta: list[Any], body: dict[str, Any], asked: _Wanted | None) -> None:
        """One answered request: compacted, priced at the batch rate, journaled like an online answer. A count the
        line lacks is its upper bound (the request's text / 4, n x max_tokens), never zero.

        Raises:
            ValueError: an answer that cannot be read, or with another number of choices than the request's
                samples: asked again, never journaled."""
        out = self.compact(body)
        if len(out["choices"]) != len(meta[1]):
            raise ValueError(f"asked for n={len(meta[1])}, got {len(out['choices'])} choices")
        counted = [c["tokens"] for c in out["choices"]]
        most = len(meta[1]) * int(asked.body.get("max_tokens") or 0) if asked else 0
        usage = cost.request_usage(body.get("usage"), self.prices, batch=True,
                                   prompt_guess=-(-_text_chars(asked.body) // cost.CHARS_PER_TOKEN) if asked else 0,
                                   completion_guess=most if None in counted else sum(counted))
        self.usage.add(usage)
        self._results[key] = out
        self._errors.pop(key, None)
        if self.journal is not None:
            self.journal.append({"key": key, "qid": meta[0], "samples": meta[1], "usage": usage.to_json(),
                                 "response": out})

    # ---------------------------------------------------------------- the cost limit
    def worst_usd(self, w: _Wanted) -> float:
        """The most one request can cost, about: its text's characters / 4 as input tokens, n x max_tokens output
        tokens, at the batch price (0 without prices)."""
        prompt = -(-_text_chars(w.body) // cost.CHARS_PER_TOKEN)
        completion = int(w.body.get("n") or 1) * int(w.body.get("max_tokens") or 0)
        return cost.cost(self.prices, prompt, 0, completion, batch=True) or 0.0

    def _spent_line(self) -> str:
        return f"the run has spent ${self.spent_usd():.4f} of teacher.max_cost_usd ${self.cfg.max_cost_usd:g}"

    def _affordable(self, todo: dict[str, _Wanted]) -> dict[str, _Wanted]:
        """The leading requests of `todo` (in order) whose worst case, with what was spent and the worst case of
        the batches in flight, stays within `teacher.max_cost_usd`; the others are counted as unsent."""
        limit = self.cfg.max_cost_usd
        if limit is None:
            return todo
        spent = self.spent_usd()
        room = limit - spent - sum(self._committed.values())
        out: dict[str, _Wanted] = {}
        total = 0.0
        if spent < limit:
            for key, w in todo.items():
                worst = self.worst_usd(w)
                if total + worst > room * (1 + 1e-9):
                    break
                out[key] = w
                total += worst
        if len(out) < len(todo):
            self._unsent += len(todo) - len(out)
            log.warning("%s: %d of %d request(s) sent (worst case $%.4f, $%.4f of batches in flight), %d kept back",
                        self._spent_line(), len(out), len(todo), total, sum(self._committed.values()),
                        len(todo) - len(out))
        return out

    # ---------------------------------------------------------------- sending
    def _submit(self, todo: dict[str, _Wanted]) -> list[dict[str, Any]]:
        """Send requests as batches (one per file limit): upload, record, create, record the id. Only the leading
        requests the cost limit affords go out (`_affordable`)."""
        todo = self._affordable(todo)
        recs: list[dict[str, Any]] = []
        chunk: list[tuple[str, bytes]] = []
        size = 0
        for key, w in todo.items():
            line = (json.dumps({"custom_id": key, "method": "POST", "url": self._endpoint(w.path), "body": w.body},
                               ensure_ascii=False, separators=(",", ":")) + "\n").encode()
            if chunk and (len(chunk) >= MAX_BATCH_REQUESTS or size + len(line) > MAX_BATCH_BYTES):
                recs.append(self._send(chunk, todo))
                chunk, size = [], 0
            chunk.append((key, line))
            size += len(line)
        if chunk:
            recs.append(self._send(chunk, todo))
        return recs

    def _send(self, chunk: list[tuple[str, bytes]], todo: dict[str, _Wanted]) -> dict[str, Any]:
        endpoint = self._endpoint(todo[chunk[0][0]].path)
        upload = self._call("POST", "/files", data={"purpose": "batch"},
                            files={"file": (f"rationale-builder-{uuid.uuid4().hex[:8]}.jsonl",
                                            b"".join(line for _, line in chunk), "application/jsonl")})
        rec: dict[str, Any] = {"id": None, "input_file_id": upload["id"], "endpoint": endpoint,
                               "requests": {k: [todo[k].qid, todo[k].samples] for k, _ in chunk}}
        self._save([*self._load(), rec])  # before the batch exists: a kill now finds it by its file id
        self._committed[rec["input_file_id"]] = sum(self.worst_usd(todo[k]) for k, _ in chunk)
        for key, _ in chunk:
            self._attempts[key] = self._attempts.get(key, 0) + 1
        self._sent += len(chunk)
        self._create(rec, fresh=True)
        return rec

    def _create(self, rec: dict[str, Any], *, fresh: bool) -> None:
        """The batch of a recorded input file: one the server already made from it (unless the file is `fresh`,
        just uploaded), else a new one."""
        found = None if fresh else self._find(rec["input_file_id"])
        if found is None:
            body = {"input_file_id": rec["input_file_id"], "endpoint": rec["endpoint"],
                    "completion_window": COMPLETION_WINDOW, "metadata": {"source": "rationale-builder"}}
            try:
                found = self._call("POST", "/batches", body=body, creates=True)
            except EngineError:
                self._forget(rec)  # refused: no batch was made, a rerun uploads its requests again
                raise
            self._created += 1
            log.info("batch %s created: %d requests to %s", found["id"], len(rec["requests"]), rec["endpoint"])
        rec["id"] = found["id"]
        self._save([r if r["input_file_id"] != rec["input_file_id"] else rec for r in self._load()])

    def _find(self, input_file_id: str) -> dict[str, Any] | None:
        """The server's batch made from this input file, if any (the newest 100 batches are looked at)."""
        listing = self._call("GET", "/batches?limit=100") or {}
        return next((b for b in listing.get("data") or [] if b.get("input_file_id") == input_file_id), None)

    def _cancel(self, active: list[dict[str, Any]]) -> None:
        """Ctrl-C: ask the server to cancel each batch in flight, once, briefly; they stay recorded."""
        for rec in active:
            if rec.get("id") is None:
                continue
            try:
                self._client().post(f"{self.base_url}/batches/{rec['id']}/cancel", headers=self._headers(),
                                    timeout=CANCEL_TIMEOUT_S)
                log.warning("batch %s cancelled at the server; the next run takes what it finished", rec["id"])
            except Exception as exc:  # noqa: BLE001 - leaving fast matters more; the batch stays recorded
                log.warning("batch %s: cancel failed (%s); it runs on and the next run polls it", rec["id"], exc)

    def _lines(self, file_id: str | None) -> Iterator[dict[str, Any]]:
        if not file_id:
            return
        text = self._call("GET", f"/files/{file_id}/content", raw=True)
        for n, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                log.warning("file %s line %d is no JSON: skipped (its request is sent again)", file_id, n)
                continue
            if isinstance(line, dict):
                yield line

    def _endpoint(self, path: str) -> str:
        """The URL of a batch line (`/v1/chat/completions`): the base URL's path plus the request's."""
        return urlparse(self.base_url).path.rstrip("/") + path

    # ---------------------------------------------------------------- the batches in flight, on disk
    @property
    def _state_file(self) -> Path | None:
        return self.journal.folder / STATE if self.journal is not None else None

    def _load(self) -> list[dict[str, Any]]:
        path = self._state_file
        if path is None:
            return [dict(r) for r in self._memory]
        if not path.exists():
            return []
        try:
            records = json.loads(path.read_text())["batches"]
            if not isinstance(records, list) or not all(
                    isinstance(r, dict) and isinstance(r.get("input_file_id"), str)
                    and isinstance(r.get("requests"), dict) and isinstance(r.get("id"), str | None)
                    for r in records):
                raise ValueError("not a list of batches")
        except (ValueError, KeyError, TypeError) as exc:
            raise BuilderError(f"{path}: unreadable record of the batches in flight ({exc}); check their state at the "
                               "provider, then delete the file to submit what no batch answered again") from None
        return records

    def _save(self, records: list[dict[str, Any]]) -> None:
        path = self._state_file
        if path is None:
            self._memory = [dict(r) for r in records]
            return
        if not records:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{STATE}.{uuid.uuid4().hex[:8]}")
        with tmp.open("w") as f:
            json.dump({"batches": records}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _forget(self, rec: dict[str, Any]) -> None:
        self._committed.pop(rec["input_file_id"], None)  # collected (its usage counted) or never made
        self._save([r for r in self._load() if r["input_file_id"] != rec["input_file_id"]])

    # ---------------------------------------------------------------- HTTP (blocking, in the caller's thread)
    def _client(self) -> Any:
        if self._http is None:
            import httpx

            self._http = httpx.Client(timeout=httpx.Timeout(self.cfg.timeout_s))
        return self._http

    def _call(self, method: str, path: str, *, body: dict[str, Any] | None = None, data: dict[str, str] | None = None,
              files: dict[str, Any] | None = None, raw: bool = False, lost_ok: bool = False,
              creates: bool = False) -> Any:
        """One call of the files/batches API, retried on 408/409/429/5xx and dropped connections until
        `teacher.retry_budget_s` is spent. A POST that creates a batch is not retried blindly (the server may have
        made it): the caller looks for it first. 404 is None with `lost_ok`; other errors stop the run."""
        import httpx

        url = f"{self.base_url}{path}"
        deadline = time.monotonic() + self.cfg.retry_budget_s
        delay = BACKOFF_S
        while True:
            try:
                resp = self._client().request(method, url, json=body, data=data, files=files,
                                              headers=self._headers())
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}".rstrip(": ")
            else:
                if resp.status_code < 300:
                    return resp.text if raw else resp.json()
                if resp.status_code == 404 and lost_ok:
                    return None
                last = f"HTTP {resp.status_code}: {resp.text[:500]}"
                if resp.status_code not in RETRY_STATUS:
                    hint = f" (check the key in ${self.cfg.api_key_env})" if resp.status_code in (401, 403) else ""
                    raise EngineError(f"teacher {url}: {last}{hint}")
            if creates and body is not None and (found := self._find(body["input_file_id"])) is not None:
                return found  # the server made it before the answer was lost
            if time.monotonic() + delay > deadline:
                raise EngineError(f"teacher {url}: failed for {self.cfg.retry_budget_s:g} s (last: {last}); the "
                                  "batches in flight stay recorded in the run: rerun to resume polling them")
            self._retries += 1
            log.debug("teacher %s: %s; again in %.1f s", url, last, delay)
            time.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


def _text_chars(body: dict[str, Any]) -> int:
    """Characters of a request's text: a raw prompt, or the contents of its chat messages."""
    if "messages" not in body:
        return len(str(body.get("prompt") or ""))
    chars = 0
    for m in body["messages"]:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):  # content parts: their text
            chars += sum(len(str(p.get("text") or "")) for p in content if isinstance(p, dict))
    return chars
