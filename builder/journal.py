"""The request journal of a run: every finished teacher request, appended the moment its answer arrives.

A served or hosted teacher answers request by request, and a shard is written only when all of its requests are
done; the journal keeps what arrived in between, so a killed, interrupted or failed run never pays twice: the next
run's teacher finds each request it is about to send (by the digest of its body, which holds the model, prompt,
seed and sampling settings) and takes the journaled answer instead. Each process appends to its own segment
(`<host>-<pid>-<random>.jsonl`), a line per request, flushed at once (a SIGKILL loses nothing the server had
answered) and fsynced by an append a second or more after the last fsync, and at close (a machine crash can lose
the lines written since the last fsync: during a quiet spell, such as an outage, that can be the last second's).

The sample stage compacts the journal under the run's lease before it samples: entries whose samples are all on
storage in shards are dropped, their usage folded into `spent.json`, so the journal holds only what no shard holds
yet and what the run spent survives every resume (`spent`). Lines a kill cut short, and lines of the wrong shape (a
hand edit, a damaged disk), are skipped with a log line naming file and line.

A compaction writes the entries it keeps to a new segment, then `spent.json` (fsynced before its rename), then
removes the segments it read. `spent.json` holds the totals and, under `replaced`, how far the compaction read each
segment (bytes, to the end of the last line it read; a spent.json without it, of an older version, reads as having
none): a line before that offset is in the totals or in the new segment.
A kill before the old segments are gone therefore counts nothing twice: those lines are never read again (not by
`entries`, `spent` nor the next compaction, which removes the segments and keeps in `replaced` only the segments it
read itself). A writer whose lease went stale and whose segment a compaction removed notices it after its next line
(`st_nlink` 0): it copies the lines the compaction did not read (past the offset) to a new segment and writes
there. A `spent.json` that is no JSON object of counts stops the run with a BuilderError: resetting it would lose
what the run spent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.cost import Usage
from builder.errors import BuilderError

if TYPE_CHECKING:
    import polars as pl

log = logging.getLogger(__name__)

SPENT = "spent.json"
SEGMENTS = "*.jsonl"
FSYNC_EVERY_S = 1.0
COUNTS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")
REPLACED = "replaced"  # in spent.json: segment name -> bytes the compaction that wrote it read (and took) of it
MAX_SAMPLE = 2**31 - 1  # sample indices are Int32 in shards


def request_key(path: str, body: dict[str, Any]) -> str:
    """What identifies a request: its endpoint and body (the API key is in a header, never here)."""
    raw = json.dumps({"path": path, "body": body}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def _count(value: Any, *, null: bool = False) -> bool:
    """A token count or a cost: a finite number, not negative (None too where `null`)."""
    if value is None:
        return null
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def _wrong(entry: Any) -> str | None:
    """What makes a journal line no entry (None: it is one)."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    if not isinstance(entry.get("key"), str):
        return "`key` is not a string"
    if not isinstance(entry.get("qid"), str):
        return "`qid` is not a string"
    samples = entry.get("samples")
    if not isinstance(samples, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SAMPLE for s in samples):
        return "`samples` is not a list of sample indices"
    usage = entry.get("usage")
    if usage is not None and (not isinstance(usage, dict) or not all(_count(usage[k]) for k in COUNTS if k in usage)
                              or not _count(usage.get("cost_usd"), null=True)):
        return "`usage` is not an object of token counts and a cost"
    if not isinstance(entry.get("response"), dict):
        return "`response` is not an object"
    return None


def _sync_dir(folder: Path) -> None:
    """Make renames, new files and removals in `folder` durable (where the platform can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Journal:
    """One run's journal folder: `get` a finished request by key, `append` one, `compact`, `spent`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._entries: dict[str, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._out: Any = None
        self._name = ""  # the segment this process appends to
        self._synced = 0.0
        self.hits = 0

    # ---------------------------------------------------------------- reading
    def _lines(self, taken: dict[str, int], ends: dict[str, int] | None = None,
               segments: list[Path] | None = None) -> Iterator[dict[str, Any]]:
        """The entries of every segment (or of `segments`), less the lines before `taken[segment]` (a compaction
        took them); `ends` gets, per segment, the offset just past the last line read (one still being written,
        unreadable and without its newline yet, is not)."""
        for seg in sorted(self.folder.glob(SEGMENTS)) if segments is None else segments:
            try:
                f = seg.open("rb")
            except FileNotFoundError:  # compacted away since the listing
                continue
            skip = taken.get(seg.name, 0)
            pos = 0
            if ends is not None:
                ends[seg.name] = 0  # read, even if empty yet: a stale writer's first line goes after 0
            with f:
                for n, raw in enumerate(f, 1):
                    start, pos = pos, pos + len(raw)
                    if start < skip:  # in spent.json's totals or in the segment its compaction wrote
                        if ends is not None:
                            ends[seg.name] = pos
                        continue
                    try:
                        entry = json.loads(raw)
                    except ValueError:  # the last line of a killed writer (or of a live one, half written)
                        log.info("%s:%d: a cut-short journal line is skipped", seg, n)
                        if ends is not None and raw.endswith(b"\n"):
                            ends[seg.name] = pos
                        continue
                    if ends is not None:
                        ends[seg.name] = pos
                    if (wrong := _wrong(entry)) is not None:
                        log.warning("%s:%d: a journal line that is no entry is skipped (%s)", seg, n, wrong)
                        continue
                    yield entry

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every journaled request by key (read once; appends of this process are added as they happen)."""
        if self._entries is None:
            _, taken = self._read_spent()
            self._entries = {e["key"]: e for e in self._lines(taken)}
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
                self._open()
            self._out.write(line)
            self._out.flush()
            if os.fstat(self._out.fileno()).st_nlink == 0:  # checked after the write: the line moves with the rest
                self._moved_on(len(line))
            now = time.monotonic()
            if now - self._synced >= FSYNC_EVERY_S:
                os.fsync(self._out.fileno())
                self._synced = now
            self.entries()[entry["key"]] = entry

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self._out = (self.folder / self._name).open("a+b")  # readable: `_moved_on` reads what it wrote
        _sync_dir(self.folder)

    def _moved_on(self, just_written: int = 0) -> None:
        """This process's segment was removed by a compaction (this writer's lease went stale, another driver took
        the run over): the lines the compaction did not read go to a new segment, where the next ones go too.
        Without the compaction's record of the segment (removed by hand, or spent.json since rewritten by another
        compaction) only the line just written moves: it came after the removal."""
        old, name = self._out, self._name
        fd = old.fileno()
        try:
            _, taken = self._read_spent()
        except BuilderError as exc:
            log.warning("%s", exc)
            taken = {}
        size = os.fstat(fd).st_size
        start = taken.get(name, size - just_written)
        rest = os.pread(fd, size - start, start) if size > start else b""
        old.close()
        self._out = None
        self._open()
        if rest:
            self._out.write(rest)
            self._out.flush()
        os.fsync(self._out.fileno())
        self._synced = time.monotonic()
        if name not in taken:
            log.warning("journal %s: segment %s was removed by something other than a compaction of this journal "
                        "(or by one since followed by another): only the line written since moved to %s",
                        self.folder, name, self._name)
        else:
            log.warning("journal %s: segment %s was compacted away while this process still wrote to it (another "
                        "driver took the run over): %d byte(s) it wrote since moved to %s", self.folder, name,
                        len(rest), self._name)

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.flush()
                if os.fstat(self._out.fileno()).st_nlink == 0:
                    self._moved_on()
                os.fsync(self._out.fileno())
                self._out.close()
                self._out = None

    # ---------------------------------------------------------------- the run's view
    def spent(self) -> Usage:
        """What every request the run ever finished used and cost: the compacted total plus the live entries."""
        total, _ = self._read_spent()
        with self._lock:
            for entry in self.entries().values():
                total.add(Usage.from_json(entry.get("usage") or {}))
        return total

    def _read_spent(self) -> tuple[Usage, dict[str, int]]:
        """spent.json's totals and what its compaction took of each segment (`REPLACED`)."""
        path = self.folder / SPENT
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return Usage(), {}

        def bad(what: str) -> BuilderError:
            return BuilderError(
                f"{path}: {what}. It holds what the run spent on the requests compacted out of its journal, so it "
                "is never reset silently: restore it (a JSON object of counts such as {\"requests\": 12, "
                "\"prompt_tokens\": 3400, \"cached_tokens\": 0, \"completion_tokens\": 5600, \"cost_usd\": 0.42}), "
                "or delete it to count the run's spending from zero (teacher.max_cost_usd then misses what it held)")

        try:
            data = json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError included
            cut = isinstance(exc, json.JSONDecodeError) and (exc.pos >= len(exc.doc.rstrip())
                                                              or exc.msg.startswith("Unterminated"))
            raise bad("empty" if not raw.strip() else "cut short" if cut else "not JSON") from None
        if not isinstance(data, dict):
            raise bad(f"not a JSON object but {type(data).__name__}")
        for k, v in data.items():
            if k == REPLACED:
                if not isinstance(v, dict) or not all(
                        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in v.values()):
                    raise bad(f"`{REPLACED}` is not an object of segment names and byte offsets")
            elif not _count(v, null=k == "cost_usd"):
                raise bad(f"`{k}` is {json.dumps(v)[:40]}, not a count")
        return Usage.from_json(data), dict(data.get(REPLACED, {}))

    def _write_spent(self, total: Usage, replaced: dict[str, int]) -> None:
        tmp = self.folder / f".{SPENT}.{uuid.uuid4().hex[:8]}"
        with tmp.open("wb") as f:
            f.write(json.dumps({**total.to_json(), REPLACED: replaced}).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / SPENT)

    def compact(self, done: pl.DataFrame) -> int:
        """Drop the entries whose samples `done` (qid, sample_idx: the run's shards) all hold, folding their usage
        into spent.json; rewrite the rest as one segment. Call it under the run's lease, before any teacher of the
        run appends. Returns the entries dropped."""
        import polars as pl

        self.close()
        self._entries = None
        total, taken = self._read_spent()  # a damaged spent.json stops here, before anything changed
        for tmp in [*self.folder.glob(f".{SPENT}.*"), *self.folder.glob(".compact-*.tmp")]:
            tmp.unlink(missing_ok=True)  # left by a killed compaction (compactions run under the lease: not ours)
        segments = sorted(self.folder.glob(SEGMENTS))
        if not segments:
            return 0
        ends: dict[str, int] = {}
        entries = list({e["key"]: e for e in self._lines(taken, ends, segments)}.values())
        keys = pl.DataFrame({"i": [i for i, e in enumerate(entries) for _ in e["samples"]],
                             "qid": [e["qid"] for e in entries for _ in e["samples"]],
                             "sample_idx": [s for e in entries for s in e["samples"]]},
                            schema={"i": pl.Int64, "qid": pl.String, "sample_idx": pl.Int32})
        on_storage = done.select("qid", pl.col("sample_idx").cast(pl.Int32)).unique().with_columns(hit=pl.lit(True))
        covered = (keys.join(on_storage, on=["qid", "sample_idx"], how="left")
                   .group_by("i").agg(pl.col("hit").fill_null(False).all()).filter("hit")["i"].to_list())
        drop = set(covered)  # an entry without samples has no row: never dropped
        # segments a killed compaction left behind (their taken lines are counted): removed now even if none drops
        leftover = any(taken.get(seg.name, 0) for seg in segments)
        if not drop and not leftover:
            return 0
        for i in drop:
            total.add(Usage.from_json(entries[i].get("usage") or {}))
        keep = [e for i, e in enumerate(entries) if i not in drop]
        # the kept entries first: a kill before spent.json is replaced leaves them in two segments (read once, by
        # key) and the dropped ones where they were (folded by the next compaction); a kill after it leaves the old
        # segments, whose lines up to `ends` are then never read again: nothing is lost or counted twice
        if keep:
            seg_tmp = self.folder / f".compact-{uuid.uuid4().hex[:8]}.tmp"
            with seg_tmp.open("wb") as f:
                for e in keep:
                    f.write((json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(seg_tmp, self.folder / f"compact-{uuid.uuid4().hex[:8]}.jsonl")
            _sync_dir(self.folder)
        self._write_spent(total, ends)
        _sync_dir(self.folder)
        for seg in segments:
            seg.unlink(missing_ok=True)
        _sync_dir(self.folder)
        self._entries = None
        log.info("journal %s: %d request(s) now in shards folded into %s, %d kept", self.folder, len(drop), SPENT,
                 len(keep))
        return len(drop)
