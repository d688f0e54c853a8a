"""Content hashing: a version's identity is its rows plus its canonical recipe, so the same recipe and seeds on the
same engine give the same hash and any change of a row changes it."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from builder.recipe import (
    CurationConfig,
    PromptConfig,
    SamplingConfig,
    SelectionConfig,
    StoreConfig,
    TeacherConfig,
    drop_added_defaults,
)
from builder.schemas import table_schema, validate
from builder.store.rows import SORT_KEY

HASH_SPEC = ("sha256 over: 'rows\\n' + sha256(rows as NDJSON sorted by task, qid, sample_idx) + '\\nrecipe\\n' + "
             "canonical JSON of the recipe without machine-specific fields (paths, store location, rate and cost "
             "limits)")
# Recipe fields that name places on one machine, or how fast and for how much a teacher is asked, not what the data
# is: left out of the content hash.
_VOLATILE_KEYS = frozenset({"work_dir", "benchmarks_dir", "base_dir", "import_path", "root", "lock_timeout_s",
                           "rpm", "tpm", "retry_budget_s", "prices", "max_cost_usd"})
# Rows per NDJSON slice fed to the digest (the digest does not depend on it).
DIGEST_BATCH_ROWS = 10_000


def canonical_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as hashed: without paths and store placement, task file paths reduced to their file name."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in _VOLATILE_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    out = strip(copy.deepcopy(recipe))
    for item in (out.get("tasks") or {}).get("items") or []:
        if isinstance(item, dict) and item.get("path") and item.get("source", "paper") != "hub":
            item["path"] = Path(str(item["path"])).name
    out.get("store", {}).pop("name", None)  # the name is where the data goes, not what it is
    for key, model in (("teacher", TeacherConfig), ("prompt", PromptConfig), ("sampling", SamplingConfig),
                       ("store", StoreConfig)):
        if isinstance(out.get(key), dict):  # fields added later hash only once set: old hashes stay
            out[key] = drop_added_defaults(model, out[key])
    curation = out.get("curation")
    if isinstance(curation, dict):
        out["curation"] = curation = drop_added_defaults(CurationConfig, curation)
        if isinstance(curation.get("selection"), dict):
            curation["selection"] = drop_added_defaults(SelectionConfig, curation["selection"])
    return out


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes the recipe and manifest digests are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class NdjsonSha256:
    """sha256 of frames written as NDJSON one slice after another: the digest of the whole NDJSON text, which is
    never held (the whole table's text peaked at 4x the table). A file-like object for `write_ndjson`."""

    def __init__(self, drop: list[str] | tuple[str, ...] = ()) -> None:
        self._sha = hashlib.sha256()
        self._drop = list(drop)

    def write(self, data: bytes | str) -> int:
        self._sha.update(data.encode() if isinstance(data, str) else data)
        return len(data)

    def update(self, frame: pl.DataFrame, batch_rows: int | None = None) -> None:
        for part in frame.drop(self._drop).iter_slices(batch_rows or DIGEST_BATCH_ROWS):
            part.write_ndjson(self)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _unused_added(rows: pl.LazyFrame) -> list[str]:
    """Added columns that are all null: left out of the rows digest (see `rows_digest`)."""
    added = table_schema("rows").added
    counts = rows.select(pl.len(), *(pl.col(c).null_count() for c in added)).collect(engine="streaming").row(0)
    return [c for c, nulls in zip(added, counts[1:], strict=True) if nulls == counts[0]]


def rows_digest(rows: pl.DataFrame, *, batch_rows: int | None = None) -> str:
    """sha256 of the rows as NDJSON in schema column order, sorted by (task, qid, sample_idx), fed to the hash
    `batch_rows` rows at a time (the value does not depend on it).

    Columns added to the rows schema later (`reasoning`) are left out while they are all null, so a dataset without
    traces keeps the hash it had before they existed.
    """
    rows = validate(rows, "rows", where="rows").sort(SORT_KEY)
    digest = NdjsonSha256(_unused_added(rows.lazy()))
    digest.update(rows, batch_rows)
    return digest.hexdigest()


def version_hash(rows_sha256: str, recipe: dict[str, Any]) -> str:
    """The content hash from the rows digest (`rows_digest`, or one fed while the rows stream) and the recipe."""
    h = hashlib.sha256()
    h.update(b"rows\n" + rows_sha256.encode() + b"\nrecipe\n" + canonical_json(canonical_recipe(recipe)))
    return h.hexdigest()


def content_hash(rows: pl.DataFrame, recipe: dict[str, Any]) -> str:
    """The version identity: rows plus canonical recipe (see HASH_SPEC)."""
    return version_hash(rows_digest(rows), recipe)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """A file's sha256, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
