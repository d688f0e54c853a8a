"""A run: one build's identity and every place its files live, on a local path or any fsspec URL.

Its id is the run fingerprint's digest: what decides a sample's text (teacher and revision, prompts, sampling
parameters, seeds), never which questions are asked or how many samples each gets, so a pilot grows into the full
run and `sampling.n` moves both ways over the same shards. Layout (`root` is `<executor.storage>/<name>` when the
recipe sets shared storage, else the run folder `<work_dir>/<name>`):

    <root>/run.json       marker: run id, fingerprint, lease (holder, heartbeat, expiry)
    <root>/samples/       sample shards shard-NNNNN.parquet, every row carrying the run id
    <root>/graded/        graded parquet parts (executors that write parts: ray)
    <root>/ledger/        ledger parquet parts (idem)
    <root>/journal/       request journal of served and hosted teachers (`builder.journal`; in <local>/ when
                          <root> is an object store URL)
    <local>/              the driver's own files: questions.parquet, graded.parquet and ledger.parquet (executors
                          that write one file: local), stats.json, question_stats.parquet

One driver at a time owns a run: `acquire` writes a lease into the marker and a thread renews it. Another
fingerprint is refused naming the first key that differs; the same fingerprint under a live lease is refused naming
the holder; a lease past its expiry, or held by a process of this host that no longer exists, is taken over and
said so. Every shard read checks its rows' run id (`check_shard`). Stages and executors get their locations here;
none computes a path.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import BuilderError
from builder.executors import storage

if TYPE_CHECKING:
    import polars as pl

    from builder.recipe import Recipe

log = logging.getLogger(__name__)

MARKER = "run.json"
SHARD_GLOB = "shard-*.parquet"
LEGACY_MARKER = "sample_config.json"  # the driver-local marker of runs made before run.json
LEASE_S = float(os.environ.get("RATIONALE_LEASE_S", 300))


class RunConflict(BuilderError):
    """The run's storage belongs to another fingerprint, or another driver holds its lease."""


def fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What must match for samples on storage to be reused: the teacher fields its backend names
    (`fingerprint_fields`), the prompt, the sampling settings that reach the engine, and the choice-shuffle seed
    (it changes the question text a prompt holds). Not the tasks' files, limits or splits (which questions), not
    `n`, the adaptive budget or the shard size (how many samples), not transport settings (base_url, concurrency).
    A task's choice shuffling counts where the recipe sets it against the task's default; the answer prompt each
    question was asked is checked per sample instead (`builder.sample`: it may depend on the questions loaded)."""
    from builder.recipe import PromptConfig, SamplingConfig, TeacherConfig, drop_added_defaults
    from builder.tasks import default_shuffle
    from builder.teachers import TEACHERS, TeacherSetup

    backend = TEACHERS.get(recipe.teacher.backend)
    fields = {*backend.fingerprint_fields, "reasoning_parser"}
    extra = getattr(backend, "fingerprint_extra", lambda _: {})(TeacherSetup.of(recipe))
    # fields added later (reasoning_parser, chat_template_kwargs, ...) count once set: old run ids stay valid
    return {
        "teacher": {**drop_added_defaults(TeacherConfig, recipe.teacher.model_dump(include=fields)), **extra},
        "prompt": drop_added_defaults(PromptConfig, recipe.prompt.model_dump()),
        "sampling": drop_added_defaults(SamplingConfig, recipe.sampling.model_dump(
            exclude={"n", "shard_size", "adaptive"})),
        "tasks": {"shuffle_seed": recipe.tasks.shuffle_seed, **{
            f"shuffle_choices.{spec.name}": spec.shuffle_choices for spec in recipe.tasks.items
            if spec.shuffle_choices is not None and spec.shuffle_choices != default_shuffle(spec)}},
    }


def _digest(value: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (`teacher.model`): how a changed setting is named."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first dotted key (sorted) whose value differs between two settings trees, with both values."""
    a, b = flatten(json.loads(json.dumps(old, default=str))), flatten(json.loads(json.dumps(new, default=str)))
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return key, a.get(key), b.get(key)
    return None


def check_run_ids(run_ids: pl.Series | list[str], path: str, *, own: str, accepted: frozenset[str]) -> None:
    """`Run.check_shard` where only the ids travel (a Ray worker grading a shard)."""
    foreign = sorted({str(r) for r in run_ids} - accepted)
    if foreign:
        raise RunConflict(f"{path}: rows of run {foreign[0]}, not of this run {own}; a shard of another run is never "
                          "read as this one's: move it out of the run's samples folder and rerun")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Run:
    """A build's identity (`id`, `fingerprint`) and locations; `acquire`/`release` its lease."""

    recipe: Recipe
    id: str
    fingerprint: dict[str, Any]
    root: str
    local: Path
    accepted: set[str] = field(default_factory=set)  # run ids whose shards are this run's (its own, a legacy one)
    _token: str | None = None
    _stop: threading.Event | None = None
    _beat: threading.Thread | None = None

    @classmethod
    def of(cls, recipe: Recipe) -> Run:
        fp = fingerprint(recipe)
        run_id = f"{recipe.name}-{_digest(fp)}"
        local = recipe.run_dir
        where = recipe.executor.storage
        if where is None:
            root = str(local)
        else:
            root = storage.join(where if storage.is_url(where) else str(recipe.resolve_path(where)), recipe.name)
        return cls(recipe, run_id, fp, root, local, {run_id})

    # ---------------------------------------------------------------- locations
    @property
    def marker(self) -> str:
        return storage.join(self.root, MARKER)

    @property
    def samples(self) -> str:
        return storage.join(self.root, "samples")

    def shard(self, index: int) -> str:
        return storage.join(self.samples, f"shard-{index:05d}.parquet")

    def shards(self) -> list[str]:
        return storage.list_files(self.samples, SHARD_GLOB)

    @property
    def graded_parts(self) -> str:
        return storage.join(self.root, "graded")

    @property
    def ledger_parts(self) -> str:
        return storage.join(self.root, "ledger")

    @property
    def journal(self) -> Path:
        """Appended line by line, so on a local filesystem: the run's root, or the driver's folder when the root is
        an object store URL (which cannot append)."""
        return (self.local if storage.is_url(self.root) else Path(self.root)) / "journal"

    @property
    def questions(self) -> Path:
        return self.local / "questions.parquet"

    @property
    def graded_file(self) -> Path:
        return self.local / "graded.parquet"

    @property
    def ledger_file(self) -> Path:
        return self.local / "ledger.parquet"

    @property
    def stats(self) -> Path:
        return self.local / "stats.json"

    @property
    def question_stats(self) -> Path:
        return self.local / "question_stats.parquet"

    # ---------------------------------------------------------------- shards
    def check_shard(self, run_ids: pl.Series | list[str], path: str) -> None:
        """Refuse a shard holding rows of another run (copied in, or written under another fingerprint)."""
        check_run_ids(run_ids, path, own=self.id, accepted=frozenset(self.accepted))

    # ---------------------------------------------------------------- the lease
    @property
    def held(self) -> bool:
        return self._token is not None

    def acquire(self, *, ttl_s: float | None = None, heartbeat: bool = True) -> None:
        """Own the run: check the marker's fingerprint, take the lease, start renewing it (see the module doc)."""
        ttl = LEASE_S if ttl_s is None else ttl_s
        storage.makedirs(self.root)
        self.local.mkdir(parents=True, exist_ok=True)
        with self._marker_lock():
            marker = read_marker(self.marker)
            if marker is None:
                self._adopt_unmarked()
            elif marker.get("run_id") != self.id:
                self._check_lease(marker.get("lease") or {}, marker["run_id"])
                self._refuse_other_fingerprint(marker)
            else:
                self.accepted |= set(marker.get("accepts", []))
                self._check_lease(marker.get("lease") or {})
            self._token = uuid.uuid4().hex
            self._write_marker(ttl)
        if heartbeat:
            self._stop = threading.Event()
            self._beat = threading.Thread(target=self._renew, args=(ttl,), name=f"lease-{self.id}", daemon=True)
            self._beat.start()

    def release(self) -> None:
        """Give the lease back (the marker and its fingerprint stay: they say what the samples are)."""
        if self._stop is not None:
            self._stop.set()
            if self._beat is not None:
                self._beat.join(timeout=30)  # a beat stuck on unreachable storage must not hold up Ctrl-C
        self._stop = self._beat = None
        if self._token is None:
            return
        try:
            with self._marker_lock():
                marker = read_marker(self.marker) or {}
                if (marker.get("lease") or {}).get("token") == self._token:
                    self._write_marker(0.0, expires=0)
        finally:
            self._token = None

    def check_held(self) -> None:
        """Refuse to go on when another driver has taken the lease over (this one stalled past its expiry, or
        raced it on an object store): called before each round and before anything is written from the samples."""
        self.holding()()

    def holding(self) -> LeaseCheck:
        """`check_held` as a small picklable callable: what a shard writer runs just before it writes, wherever it
        runs (a Ray replica too)."""
        return LeaseCheck(self.marker, self._token or "", self.id)

    def __enter__(self) -> Run:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _marker_lock(self) -> Any:
        """A local lock around the marker's read-modify-write. Object stores have none: the marker is written
        whole, and a driver that lost a race for it finds out at its next `check_held`."""
        from contextlib import nullcontext

        from filelock import FileLock

        folder = storage.local_folder(self.root)
        return nullcontext() if folder is None else FileLock(str(Path(folder) / ".run.lock"), timeout=30)

    def _write_marker(self, ttl: float, expires: float | None = None) -> None:
        now = time.time()
        lease = {"host": socket.gethostname(), "pid": os.getpid(), "token": self._token, "heartbeat": now,
                 "expires": now + ttl if expires is None else expires}
        marker = {"run_id": self.id, "accepts": sorted(self.accepted - {self.id}), "fingerprint": self.fingerprint,
                  "lease": lease}
        storage.write_text(self.marker, json.dumps(marker, indent=2, default=str) + "\n")

    def _renew(self, ttl: float) -> None:
        assert self._stop is not None
        while not self._stop.wait(max(ttl / 3, 0.05)):
            try:
                with self._marker_lock():
                    marker = read_marker(self.marker) or {}
                    if (marker.get("lease") or {}).get("token") != self._token:
                        return  # taken over: `check_held` stops the driver at its next step
                    self._write_marker(ttl)
            except Exception as exc:  # a storage hiccup: the next beat tries again before the lease runs out
                log.warning("%s: could not renew the lease (%s)", self.marker, exc)

    def _check_lease(self, lease: dict[str, Any], holder_run: str | None = None) -> None:
        if not lease or float(lease.get("expires") or 0) <= 0:
            return
        holder = _holder(lease)
        if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid") or 0)):
            log.warning("%s: took over the lease of %s (that process no longer runs)", self.marker, holder)
            return
        left = float(lease["expires"]) - time.time()
        if left <= 0:
            log.warning("%s: took over the stale lease of %s (last heartbeat %.0f s ago)", self.marker, holder,
                        time.time() - float(lease.get("heartbeat") or 0))
            return
        raise RunConflict(f"{self.marker}: another driver holds run {holder_run or self.id} (lease held by {holder}, "
                          f"renewed until {left:.0f} s from now); wait for it to finish, or stop it: a driver that is "
                          "gone loses the lease when it expires")

    def _refuse_other_fingerprint(self, marker: dict[str, Any]) -> None:
        other = marker["run_id"]
        if not self.shards():  # nothing sampled under the old settings: the storage is free to take
            log.info("%s: run %s left no samples; now run %s", self.marker, other, self.id)
            return
        change = first_difference(marker.get("fingerprint") or {}, self.fingerprint)
        what = (f"{change[0]} was {change[1]!r}, now {change[2]!r}" if change else "its settings differ")
        raise RunConflict(f"{self.root} holds the samples of run {other}; this recipe is run {self.id} ({what}), and "
                          "samples made with other settings are never mixed in. Keep them apart with another recipe "
                          f"name, work_dir or executor.storage, or start fresh by deleting {self.root}")

    def _adopt_unmarked(self) -> None:
        """A root without run.json: empty, or made before the marker moved onto the storage. Its shards are this
        run's when the old driver-local marker (sample_config.json) has this fingerprint's teacher, prompt and
        sampling settings (old run ids also covered the tasks), or when they carry this run id; any other shard is
        refused by name."""
        shards = self.shards()
        if not shards:
            return
        legacy = self.local / LEGACY_MARKER
        old = json.loads(legacy.read_text()) if legacy.is_file() else {}
        if old:
            mine = {k: v for k, v in self.fingerprint.items() if k != "tasks"}
            mine["teacher"] = {k: v for k, v in mine["teacher"].items() if k in (old.get("teacher") or {})}
            change = first_difference({k: old.get(k) for k in mine}, mine)
            if change is not None:
                raise RunConflict(f"{self.root} holds the samples of run {old.get('run_id')}; this recipe is run "
                                  f"{self.id} ({change[0]} was {change[1]!r}, now {change[2]!r}); keep them apart "
                                  "with another recipe name, work_dir or executor.storage, or start fresh by "
                                  f"deleting {self.root}")
            self.accepted.add(str(old.get("run_id")))
            log.info("%s: the samples of run %s (made before run markers) are this run's", self.root, old["run_id"])
        for shard in shards:
            self.check_shard(storage.read_parquet(shard, columns=["run_id"])["run_id"].unique(), shard)


@dataclass(frozen=True)
class LeaseCheck:
    marker: str
    token: str
    run_id: str

    def __call__(self) -> None:
        lease = (read_marker(self.marker) or {}).get("lease") or {}
        if not self.token or lease.get("token") != self.token:
            raise RunConflict(f"{self.marker}: this driver no longer holds run {self.run_id} (the lease is now held "
                              f"by {_holder(lease)}); stopped before writing more beside it. What is on storage is "
                              "kept: rerun once the other driver is done")


def read_marker(path: str) -> dict[str, Any] | None:
    """A run's marker (None when there is none yet); a damaged one is refused by name."""
    text = storage.read_text(path)
    if text is None:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        raise RunConflict(f"{path}: not valid JSON; the run marker is damaged (delete it to let the next build "
                          "check the shards and write it again)") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("run_id"), str):
        raise RunConflict(f"{path}: no run_id; the run marker is damaged (delete it to rewrite it)")
    return marker


def _holder(lease: dict[str, Any]) -> str:
    return f"{lease.get('host')} pid {lease.get('pid')}"
