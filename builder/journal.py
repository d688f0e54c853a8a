"""The request journal of a run: every finished teacher request, appended the moment its answer arrives.

A served or hosted teacher answers request by request, and a shard is written only when all of its requests are
done; the journal keeps what arrived in between, so a killed, interrupted or failed run never pays twice: the next
run's teacher finds each request it is about to send (by the digest of its body, which holds the model, prompt,
seed and sampling settings) and takes the journaled answer instead. Each process appends to its own segment
(`<host>-<pid>-<random>.jsonl`), a line per request, flushed at once (a SIGKILL loses nothing the server had
answered) and fsynced at least every second (a machine crash loses at most that second).

The sample stage compacts the journal under the run's lease before it samples: entries whose samples are all on
storage in shards are dropped, their usage folded into `spent.json`, so the journal holds only what no shard holds
yet and what the run spent survives every resume (`spent`). Lines a kill cut short are skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.cost import Usage

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

SPENT = "spent.json"
SEGMENTS = "*.jsonl"
FSYNC_EVERY_S = 1.0


def request_key(path: str, body: dict[str, Any]) -> str:
    """What identifies a request: its endpoint and body (the API key is in a header, never here)."""
    raw = json.dumps({"path": path, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


class Journal:
    """One run's journal folder: `get` a finished request by key, `append` one, `compact`, `spent`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._entries: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._out: Any = None
        self._synced = 0.0
        self.hits = 0

    # ---------------------------------------------------------------- reading
    def _lines(self) -> Iterator[dict[str, Any]]:
        for seg in sorted(self.folder.glob(SEGMENTS)):
            with seg.open("rb") as f:
                for n, raw in enumerate(f, 1):
                    try:
                        entry = json.loads(raw)
                    except ValueError:  # the last line of a killed writer
                        log.info("%s:%d: a cut-short journal line is skipped", seg, n)
                        continue
                    if isinstance(entry, dict) and "key" in entry:
                        yield entry

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every journaled request by key (read once; appends of this process are added as they happen)."""
        if self._entries is None:
            self._entries = {e["key"]: e for e in self._lines()}
        return self._entries

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            entry = self.entries().get(key)
            if entry is not None:
                self.hits += 1
            return entry

    # ---------------------------------------------------------------- writing
    def append(self, entry: dict[str, Any]) -> None:
        """Write one finished request (it must carry `key`, `qid`, `samples` (its sample indices) and `usage`)."""
        line = (json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._out is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
                self._out = (self.folder / name).open("ab")
            self._out.write(line)
            self._out.flush()
            now = time.monotonic()
            if now - self._synced >= FSYNC_EVERY_S:
                os.fsync(self._out.fileno())
                self._synced = now
            self.entries()[entry["key"]] = entry

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.flush()
                os.fsync(self._out.fileno())
                self._out.close()
                self._out = None

    # ---------------------------------------------------------------- the run's view
    def spent(self) -> Usage:
        """What every request the run ever finished used and cost: the compacted total plus the live entries."""
        total = self._spent_file()
        with self._lock:
            for entry in self.entries().values():
                total.add(Usage.from_json(entry.get("usage") or {}))
        return total

    def _spent_file(self) -> Usage:
        path = self.folder / SPENT
        return Usage.from_json(json.loads(path.read_text())) if path.exists() else Usage()

    def compact(self, done: pl.DataFrame) -> int:
        """Drop the entries whose samples `done` (qid, sample_idx: the run's shards) all hold, folding their usage
        into spent.json; rewrite the rest as one segment. Call it under the run's lease, before any teacher of the
        run appends. Returns the entries dropped."""
        import polars as pl

        self.close()
        self._entries = None
        segments = sorted(self.folder.glob(SEGMENTS))
        if not segments:
            return 0
        entries = list(self.entries().values())
        keys = pl.DataFrame({"i": [i for i, e in enumerate(entries) for _ in e["samples"]],
                             "qid": [e["qid"] for e in entries for _ in e["samples"]],
                             "sample_idx": [s for e in entries for s in e["samples"]]},
                            schema={"i": pl.Int64, "qid": pl.String, "sample_idx": pl.Int32})
        on_storage = done.select("qid", pl.col("sample_idx").cast(pl.Int32)).unique().with_columns(hit=pl.lit(True))
        covered = (keys.join(on_storage, on=["qid", "sample_idx"], how="left")
                   .group_by("i").agg(pl.col("hit").fill_null(False).all()).filter("hit")["i"].to_list())
        drop = set(covered)
        if not drop:
            return 0
        total = self._spent_file()
        for i in drop:
            total.add(Usage.from_json(entries[i].get("usage") or {}))
        keep = [e for i, e in enumerate(entries) if i not in drop]
        spent_tmp = self.folder / f".{SPENT}.{uuid.uuid4().hex[:8]}"
        spent_tmp.write_text(json.dumps(total.to_json()))
        seg_tmp = self.folder / f".compact-{uuid.uuid4().hex[:8]}.tmp"
        with seg_tmp.open("wb") as f:
            for e in keep:
                f.write((json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        # a kill between these renames leaves the spent total counting some entries twice, never losing one; the
        # entries themselves are never lost (the old segments go only after the new one is in place)
        os.replace(spent_tmp, self.folder / SPENT)
        final = self.folder / f"compact-{uuid.uuid4().hex[:8]}.jsonl"
        os.replace(seg_tmp, final)
        for seg in segments:
            seg.unlink(missing_ok=True)
        if not keep:
            final.unlink()
        self._entries = None
        log.info("journal %s: %d request(s) now in shards folded into %s, %d kept", self.folder, len(drop), SPENT,
                 len(keep))
        return len(drop)
