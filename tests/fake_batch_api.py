"""FakeBatchAPI: the OpenAI Files and Batches endpoints on 127.0.0.1, each batch executed by the real `vllm run-batch`.

The protocol as OpenAI publishes it:

- `POST /v1/files` (multipart: `purpose=batch`, `file`) -> a file object; `GET /v1/files/{id}`;
  `GET /v1/files/{id}/content` -> the file's bytes.
- `POST /v1/batches` `{input_file_id, endpoint, completion_window: "24h", metadata?}` -> a batch object;
  `GET /v1/batches/{id}`; `GET /v1/batches?limit=&after=` (newest first); `POST /v1/batches/{id}/cancel`.
- A batch goes validating -> in_progress -> finalizing -> completed, or to `failed` (the input file is invalid:
  `errors.data` says which line and why), `expired` (the window passed: the requests it finished are in the output
  file, the others in the error file with code `batch_expired`), or cancelling -> cancelled (the same, with code
  `batch_cancelled`). `request_counts` {total, completed, failed}; `output_file_id` / `error_file_id` once final.
- Output and error lines: `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`, in no
  particular order (this fake shuffles them).
- `GET /v1/models` answers as a vLLM server (owned_by vllm): the batches do run on vLLM.

A batch is executed in a background thread by `python -m vllm.entrypoints.openai.run_batch -i IN -o OUT --model M`
(the real batch runner, which loads the model itself) on the lines of the uploaded file it is to run; its output
lines are kept as vLLM writes them, those with a status other than 200 go to the error file.

Faults, set on the instance before (or while) a batch runs:
- `fail_ids`: custom_ids answered with an error (status 400, in the error file) instead of being run;
- `expire_next = k`: the next batch created expires once it finished k of its requests (the rest: batch_expired);
- `hold`: batches stay in_progress, running nothing, until `release()` (or a cancel).

It counts what a test needs to prove: `created` (batch creations), `submitted` (per batch, its custom_ids in order),
`cancels` (batch ids cancelled), `runs` (vllm run-batch executions).

This vLLM's `run-batch` reads `/v1/chat/completions` lines only: a batch for another endpoint is refused at
creation (400), as the OpenAI API refuses an endpoint it does not serve.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

ENDPOINTS = frozenset({"/v1/chat/completions"})  # what vllm run-batch executes here
WINDOWS = frozenset({"24h"})
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed: the batch was cancelled."


class FakeBatchAPI:
    """The files + batches API on loopback; `url` is the base URL (`http://127.0.0.1:PORT/v1`)."""

    def __init__(self, model: Path, workdir: Path, *, api_key: str | None = None,
                 engine_args: tuple[str, ...] = ("--max-model-len", "1024", "--seed", "0")) -> None:
        self.model, self.workdir, self.api_key, self.engine_args = str(model), workdir, api_key, engine_args
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}  # id -> file object (+ "_content")
        self.batches: dict[str, dict[str, Any]] = {}  # id -> batch object
        self.fail_ids: set[str] = set()
        self.expire_next: int | None = None
        self.hold = False
        self._released = threading.Event()
        self._cancel: dict[str, threading.Event] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        self.created = 0
        self.submitted: list[tuple[str, list[str]]] = []  # (batch id, custom_ids) per creation
        self.cancels: list[str] = []
        self.runs = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._serving = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeBatchAPI:
        self._serving.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for event in self._cancel.values():
            event.set()
        self._released.set()
        for proc in list(self._procs.values()):
            _kill(proc)
        for thread in self._threads:
            thread.join(timeout=30)
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        """Let held batches run."""
        self.hold = False
        self._released.set()

    def wait(self, batch_id: str, timeout_s: float = 300) -> dict[str, Any]:
        """The batch object once it is final (for tests that look at the fake's side)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                batch = dict(self.batches[batch_id])
            if batch["status"] in FINAL:
                return batch
            time.sleep(0.2)
        raise TimeoutError(f"batch {batch_id} is still {batch['status']} after {timeout_s:g} s")

    def content(self, file_id: str) -> bytes:
        with self.lock:
            return self.files[file_id]["_content"]

    # ---------------------------------------------------------------- files and batches
    def _file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        fid = f"file-{uuid.uuid4().hex[:24]}"
        obj = {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "_content": content}
        self.files[fid] = obj
        return obj

    def _create(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fid, endpoint, window = req.get("input_file_id"), req.get("endpoint"), req.get("completion_window")
        if fid not in self.files or self.files[fid]["purpose"] != "batch":
            return 400, _error(f"No such File object: {fid}", "invalid_request_error", "input_file_id")
        if endpoint not in ENDPOINTS:
            return 400, _error(f"Invalid endpoint {endpoint!r}: this server runs {sorted(ENDPOINTS)} in batches",
                               "invalid_request_error", "endpoint")
        if window not in WINDOWS:
            return 400, _error(f"Invalid completion_window {window!r}: only '24h' is supported",
                               "invalid_request_error", "completion_window")
        now = int(time.time())
        bid = f"batch_{uuid.uuid4().hex[:24]}"
        batch = {"id": bid, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": fid,
                 "completion_window": window, "status": "validating", "output_file_id": None,
                 "error_file_id": None, "created_at": now, "in_progress_at": None, "expires_at": now + 24 * 3600,
                 "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
                 "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": req.get("metadata")}
        self.batches[bid] = batch
        self._cancel[bid] = threading.Event()
        self.created += 1
        expire, self.expire_next = self.expire_next, None
        thread = threading.Thread(target=self._execute, args=(bid, expire), name=f"fake-{bid}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return 200, _public(batch)

    def _cancel_batch(self, bid: str) -> tuple[int, dict[str, Any]]:
        batch = self.batches.get(bid)
        if batch is None:
            return 404, _error(f"No batch found with id '{bid}'", "invalid_request_error", None)
        if batch["status"] in ("completed", "failed", "expired"):
            return 400, _error(f"Cannot cancel a batch with status {batch['status']!r}", "invalid_request_error",
                               None)
        self.cancels.append(bid)
        if batch["status"] not in ("cancelling", "cancelled"):
            batch.update(status="cancelling", cancelling_at=int(time.time()))
            self._cancel[bid].set()
            if (proc := self._procs.get(bid)) is not None:
                _kill(proc)
        return 200, _public(batch)

    def _set(self, bid: str, **fields: Any) -> None:
        with self.lock:
            batch = self.batches[bid]
            if batch["status"] == "cancelling" and fields.get("status") in ("in_progress", "finalizing"):
                fields.pop("status")  # a cancel that came in meanwhile wins
            batch.update(fields)

    def _execute(self, bid: str, expire: int | None) -> None:
        """validating -> in_progress (vllm run-batch) -> finalizing -> completed | expired | cancelled | failed."""
        with self.lock:
            batch = self.batches[bid]
            raw = self.files[batch["input_file_id"]]["_content"]
        lines, errors = _validate(raw, batch["endpoint"])
        if errors:
            self._set(bid, status="failed", failed_at=int(time.time()),
                      errors={"object": "list", "data": errors})
            return
        ids = [line["custom_id"] for line in lines]
        with self.lock:
            self.submitted.append((bid, ids))
        self._set(bid, status="in_progress", in_progress_at=int(time.time()),
                  request_counts={"total": len(lines), "completed": 0, "failed": 0})
        cancel = self._cancel[bid]
        if self.hold:
            while not (self._released.wait(0.1) or cancel.is_set()):
                pass
        with self.lock:
            fail = set(self.fail_ids)  # read once the batch runs: a test may pick them from the uploaded file
        runnable = [line for line in lines if line["custom_id"] not in fail]
        run = runnable if expire is None else runnable[:expire]
        outputs: list[dict[str, Any]] = []
        if run and not cancel.is_set():
            outputs = self._run_batch(bid, run)
        if outputs is None:  # vllm run-batch failed
            return
        ran = {o["custom_id"] for o in outputs}
        self._set(bid, status="cancelling" if cancel.is_set() else "finalizing",
                  finalizing_at=None if cancel.is_set() else int(time.time()))
        ok = [o for o in outputs if (o.get("response") or {}).get("status_code") == 200 and o.get("error") is None]
        bad = [o for o in outputs if o not in ok]
        bad += [_line(cid, response={"status_code": 400, "request_id": _rid(),
                                     "body": _error("The request was refused (a fault this fake was told to make).",
                                                    "invalid_request_error", None)})
                for cid in ids if cid in fail]
        final = "cancelled" if cancel.is_set() else ("expired" if expire is not None else "completed")
        code, message = (("batch_cancelled", CANCELLED_MESSAGE) if final == "cancelled" else
                         ("batch_expired", EXPIRED_MESSAGE))
        bad += [_line(cid, error={"code": code, "message": message})
                for cid in ids if cid not in ran and cid not in fail]
        rng = random.Random(bid)
        rng.shuffle(ok)
        rng.shuffle(bad)
        with self.lock:
            out = self._file(_jsonl(ok), f"{bid}_output.jsonl", "batch_output") if ok else None
            err = self._file(_jsonl(bad), f"{bid}_error.jsonl", "batch_output") if bad else None
            self.batches[bid].update(
                status=final, output_file_id=out and out["id"], error_file_id=err and err["id"],
                request_counts={"total": len(ids), "completed": len(ok), "failed": len(bad)},
                **{f"{final}_at": int(time.time())})

    def _run_batch(self, bid: str, lines: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """The real `vllm run-batch` on these lines; its output lines (None, the batch failed, when it fails)."""
        folder = self.workdir / bid
        folder.mkdir(parents=True, exist_ok=True)
        src, dst, log_path = folder / "input.jsonl", folder / "output.jsonl", folder / "run-batch.log"
        src.write_bytes(_jsonl(lines))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(src),
                                     "-o", str(dst), "--model", self.model, *self.engine_args],
                                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            with self.lock:
                self._procs[bid] = proc
                self.runs += 1
            rc = proc.wait()
            with self.lock:
                self._procs.pop(bid, None)
        if self._cancel[bid].is_set():
            return []
        if rc != 0 or not dst.exists():
            tail = log_path.read_text(errors="replace")[-2000:]
            self._set(bid, status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [
                {"code": "server_error", "message": f"vllm run-batch exited with {rc}: {tail}", "line": None,
                 "param": None}]})
            return None
        return [json.loads(raw) for raw in dst.read_text().splitlines() if raw.strip()]

    # ---------------------------------------------------------------- HTTP
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                if fake.api_key is None or self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                    return True
                self._send(401, _error("Incorrect API key provided.", "invalid_request_error", None))
                return False

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if not self._authorized():
                    return
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                with fake.lock:
                    if parts == ["v1", "models"]:
                        return self._send(200, {"object": "list", "data": [
                            {"id": fake.model, "object": "model", "owned_by": "vllm", "created": 0}]})
                    if parts[:2] == ["v1", "files"] and len(parts) in (3, 4):
                        obj = fake.files.get(parts[2])
                        if obj is None:
                            return self._send(404, _error(f"No such File object: {parts[2]}",
                                                          "invalid_request_error", "id"))
                        if len(parts) == 4 and parts[3] == "content":
                            return self._send(200, obj["_content"], "application/octet-stream")
                        return self._send(200, _public(obj))
                    if parts == ["v1", "batches"]:
                        query = parse_qs(url.query)
                        limit = int((query.get("limit") or ["20"])[0])
                        after = (query.get("after") or [None])[0]
                        ordered = sorted(fake.batches.values(), key=lambda b: b["created_at"], reverse=True)
                        if after is not None:
                            ids = [b["id"] for b in ordered]
                            ordered = ordered[ids.index(after) + 1:] if after in ids else []
                        page = ordered[:limit]
                        return self._send(200, {"object": "list", "data": [_public(b) for b in page],
                                                "first_id": page[0]["id"] if page else None,
                                                "last_id": page[-1]["id"] if page else None,
                                                "has_more": len(ordered) > limit})
                    if parts[:2] == ["v1", "batches"] and len(parts) == 3:
                        batch = fake.batches.get(parts[2])
                        if batch is None:
                            return self._send(404, _error(f"No batch found with id '{parts[2]}'",
                                                          "invalid_request_error", None))
                        return self._send(200, _public(batch))
                self._send(404, _error(f"Unknown path {url.path}", "invalid_request_error", None))

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self._authorized():
                    return
                parts = urlparse(self.path).path.strip("/").split("/")
                with fake.lock:
                    if parts == ["v1", "files"]:
                        fields = _multipart(self.headers.get("Content-Type", ""), body)
                        if fields.get("purpose", (None, b""))[1] != b"batch" or "file" not in fields:
                            return self._send(400, _error("A 'file' and purpose 'batch' are required",
                                                          "invalid_request_error", "purpose"))
                        name, content = fields["file"]
                        return self._send(200, _public(fake._file(content, name or "upload.jsonl", "batch")))
                    if parts == ["v1", "batches"]:
                        try:
                            req = json.loads(body)
                        except ValueError:
                            return self._send(400, _error("The body is no JSON", "invalid_request_error", None))
                        return self._send(*fake._create(req))
                    if parts[:2] == ["v1", "batches"] and len(parts) == 4 and parts[3] == "cancel":
                        return self._send(*fake._cancel_batch(parts[2]))
                self._send(404, _error(f"Unknown path {self.path}", "invalid_request_error", None))

        return Handler


def _validate(raw: bytes, endpoint: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The input file's lines, or the validation errors that fail the batch (line numbers from 1)."""
    lines, errors, seen = [], [], set()
    for n, text in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError:
            errors.append({"code": "invalid_json_line", "message": "This line is not parseable as valid JSON.",
                           "param": None, "line": n})
            continue
        cid = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(cid, str) or not cid:
            errors.append({"code": "missing_required_parameter", "message": "custom_id is required",
                           "param": "custom_id", "line": n})
        elif cid in seen:
            errors.append({"code": "duplicate_custom_id", "message": f"The custom_id {cid!r} is not unique",
                           "param": "custom_id", "line": n})
        elif line.get("method") != "POST":
            errors.append({"code": "invalid_method", "message": "Only POST is supported", "param": "method",
                           "line": n})
        elif line.get("url") != endpoint:
            errors.append({"code": "mismatched_endpoint", "message": f"The url {line.get('url')!r} does not match "
                           f"the batch's endpoint {endpoint!r}", "param": "url", "line": n})
        elif not isinstance(line.get("body"), dict) or not line["body"].get("model"):
            errors.append({"code": "missing_required_parameter", "message": "body.model is required",
                           "param": "body.model", "line": n})
        else:
            seen.add(cid)
            lines.append(line)
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "The input file holds no requests", "param": None,
                       "line": None})
    return lines, errors


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body."""
    msg = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body)
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            out[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out


def _line(custom_id: str, *, response: dict[str, Any] | None = None, error: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": custom_id, "response": response, "error": error}


def _rid() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def _error(message: str, kind: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
