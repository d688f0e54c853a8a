"""Writing a version: under the dataset's file lock, into a temp folder renamed into place, never over an existing
version; a version whose content hash already exists is reported, not written again."""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import StoreError
from builder.paths import NAME
from builder.recipe import StoreConfig
from builder.schemas import table_schema, validate
from builder.stats import BuildStats
from builder.store import index
from builder.store.hashing import HASH_SPEC, sha256_file, version_hash
from builder.store.manifest import FORMAT, MANIFEST, load_manifest, manifest_digest, manifest_text
from builder.store.parts import Parts, check_parts
from builder.store.rows import DEFAULT_CONFIG, DERIVED, SORT_KEY, SPLIT, TRL_TYPES
from builder.store.shards import CardInput, write_data
from builder.store.sort import sorted_rows
from builder.store.summary import Summary
from builder.store.verify import check_files

logger = logging.getLogger(__name__)

# What manifest.json keeps of the build stats: measured facts only (the settings are in its `recipe`).
_STATS_SECTIONS = ("sampling", "funnel", "dropped", "grade_status", "diversity", "decontamination")


class StoreWriteError(StoreError, OSError):
    """Writing a version failed (disk full, permissions); still an OSError for callers that catch those."""


@dataclass(frozen=True)
class VersionInfo:
    """Where a version lives and whether this call wrote it (False: the newest version already had this hash)."""

    path: Path
    version: str
    content_hash: str
    created: bool


def write_version(
    rows: pl.DataFrame | Parts,
    *,
    root: str | Path,
    name: str,
    recipe: dict[str, Any],
    stats: BuildStats | None = None,
    tool_version: str | None = None,
    shard_rows: int | None = None,
    task_configs: bool | None = None,
    lock_timeout_s: float | None = None,
) -> VersionInfo:
    """Write `rows` as the next version of dataset `name` under `root`, unless a version (any, not only the
    newest) already has this content hash.

    `Parts` (the Parquet parts of a rows table or of a ledger, e.g. as a Ray cluster wrote them) are written in
    bounded memory: read in batches, summarised, and sorted bucket by bucket through temporary files in the
    version's temp folder (`sort.sorted_rows`); a DataFrame is sorted in memory. Either way the rows are read once
    for the shards, the digest and the card, and the same rows give the same files and content hash.

    Args:
        rows: the `rows` table (see `rows_from_ledger`), or `Parts`: Parquet files of a rows table or a ledger.
        root: the store folder; the dataset lives in <root>/<name>/.
        name: dataset name (letters, digits, '_', '-', '.').
        recipe: the resolved recipe as a JSON-able dict (hashed without paths, copied into manifest.json).
        stats: the build's stats; without them the manifest and card record no funnel, diversity or usage.
        tool_version: recorded in the manifest (default: this package's version).
        shard_rows, task_configs, lock_timeout_s: default to recipe["store"] values, then StoreConfig defaults.

    Returns:
        VersionInfo; created=False when a version already has this content hash (that version; nothing written).

    Raises:
        SchemaError: the rows do not match the rows schema (names the column, or the first null or duplicate row).
        StoreError: bad name, no rows, the lock is held by another build past the timeout, or a write failed.
    """
    from filelock import FileLock, Timeout

    if not re.fullmatch(NAME, name):
        raise StoreError(f"dataset name {name!r}: use letters, digits, '_', '-' and '.' (e.g. 'multiarith-cot')")
    store_cfg = StoreConfig.model_validate({k: v for k, v in (recipe.get("store") or {}).items()
                                            if k in StoreConfig.model_fields})
    shard_rows = shard_rows or store_cfg.shard_rows
    task_configs = store_cfg.task_configs if task_configs is None else task_configs
    lock_timeout_s = store_cfg.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
    where = f"rows for {name}"
    if isinstance(rows, pl.DataFrame):
        rows = validate(rows, "rows", where=where).sort(SORT_KEY)
    elif isinstance(rows, Parts):
        check_parts(rows, where)  # columns checked before the lock; each batch is cast as it is read
    else:
        raise TypeError(f"write_version: rows is a {type(rows).__name__}, expected a polars DataFrame or "
                        "store.Parts (Parquet files of a rows table or ledger)")

    dataset_dir = Path(root) / name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(dataset_dir / ".lock"), timeout=lock_timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise StoreError(f"{dataset_dir}: another build is writing this dataset (lock {dataset_dir / '.lock'} "
                         f"still held after {lock_timeout_s:g}s); wait for it to finish and run again") from None
    try:
        for stale in dataset_dir.glob(".tmp-*"):  # a crashed writer's leftovers; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        existing = index.list_versions(dataset_dir.parent, name)
        version = f"v{1 + max((int(v['version'][1:]) for v in existing), default=0)}"  # unless the content exists
        tmp = dataset_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            summary, parts = sorted_rows(rows, tmp / ".work", where)
            if summary.rows == 0:  # `datasets` cannot load a version without rows, and there is nothing to train on
                raise StoreError(f"dataset {name!r}: no rows to store (curation kept no sample; see the funnel in "
                                 "the build summary); nothing written")
            configs, rows_sha256, card_input = write_data(parts, tmp, summary, shard_rows=shard_rows,
                                                          task_configs=task_configs, where=where)
            shutil.rmtree(tmp / ".work", ignore_errors=True)
            digest = version_hash(rows_sha256, recipe)
            same = next((v for v in existing if v["content_hash"] == digest), None)
            if same is None:
                manifest = _write_folder(tmp, configs, summary, name=name, version=version, digest=digest,
                                         rows_sha256=rows_sha256, recipe=recipe, stats=stats,
                                         tool_version=tool_version or _tool_version(), card_input=card_input)
                final = dataset_dir / version
                if final.exists():
                    raise StoreError(f"{final}: already exists but has no readable manifest; versions are "
                                     "immutable, move it away by hand")
                os.rename(tmp, final)
        except OSError as exc:  # disk full, permissions: nothing half-written stays visible
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreWriteError(f"{dataset_dir}: writing {version} failed ({exc}); nothing was written, the store "
                                  "is unchanged; fix the cause (e.g. free disk space) and rerun") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if same is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            folder = dataset_dir / same["version"]
            # "unchanged" must not point at a damaged copy: check its files, and heal an index a kill left stale.
            check_files(folder, load_manifest(folder), hint=f"{same['version']} has this content but is corrupt; "
                        f"move {folder} out of the store and rerun to write it again")
            if index.read_index(dataset_dir) != existing:
                index.write_index(dataset_dir, existing)
            logger.info("%s %s already has content hash %s; nothing written", name, same["version"], digest[:12])
            return VersionInfo(folder, same["version"], digest, False)
        try:
            index.write_index(dataset_dir, [*existing, index.index_entry(manifest)])
        except OSError as exc:  # the version is complete; the index is rebuilt from the folders on the next write
            logger.warning("%s: could not update %s (%s); the version folders remain the source of truth",
                           dataset_dir, index.INDEX, exc)
        logger.info("wrote %s %s (%d rows, content hash %s)", name, version, summary.rows, digest[:12])
        return VersionInfo(final, version, digest, True)
    finally:
        lock.release()


def _tool_version() -> str:
    from builder.version import __version__

    return __version__


def _teacher(recipe: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """The teacher as the card names it: the recipe's, else the model(s) the rows were written by."""
    teacher = recipe.get("teacher", {})
    return {"model": teacher.get("model") or (models[0] if len(models) == 1 else models),
            "revision": teacher.get("revision"), "backend": teacher.get("backend")}


def _write_folder(folder: Path, configs: dict[str, dict[str, Any]], summary: Summary, *, name: str, version: str,
                  digest: str, rows_sha256: str, recipe: dict[str, Any], stats: BuildStats | None,
                  tool_version: str, card_input: CardInput) -> dict[str, Any]:
    """The card, the manifest and read-only files around the data files `write_data` wrote into `folder`."""
    from builder.card import write_card

    measured = stats.to_json() if stats is not None else {}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "content_hash": digest,
        "hash_spec": HASH_SPEC,
        "rows_sha256": rows_sha256,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": tool_version,
        "rows": summary.rows,
        "tasks": summary.tasks,
        "configs": {
            c: {"split": SPLIT, "data_files": v["pattern"], "rows": v["rows"],
                "files": [p.relative_to(folder).as_posix() for p in v["files"]],
                "trl_type": TRL_TYPES.get(c, TRL_TYPES[DEFAULT_CONFIG])}
            for c, v in configs.items()
        },
        "columns": table_schema("rows").names,
        "teacher": _teacher(recipe, summary.teachers),
        **{section: measured.get(section, {}) for section in _STATS_SECTIONS},
        "recipe": recipe,
    }
    first = card_input.first if card_input.first is not None else table_schema("rows").empty().drop(DERIVED)
    write_card(folder, first, manifest, lengths=card_input.lengths)
    manifest["files"] = {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*")) if p.is_file()
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / MANIFEST).write_text(manifest_text(manifest), encoding="utf-8")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            path.chmod(0o444)  # immutable: a later write must be a new version
    return manifest
