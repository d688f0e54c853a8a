"""Verifying a version: every file against the manifest, no unlisted file, the manifest's fields re-derived from
the data and the content hash from the rows and recipe; the rows are read one batch at a time, so memory stays
bounded at any size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import SchemaError, StoreError
from builder.schemas import table_schema, validate
from builder.store.hashing import NdjsonSha256, sha256_file, version_hash
from builder.store.manifest import MANIFEST, load_manifest
from builder.store.parquet import parquet_batches, parquet_rows, reading
from builder.store.rows import CONVERSATIONAL_CONFIG, DEFAULT_CONFIG, SORT_KEY, conversational_rows, with_derived
from builder.store.summary import duplicate_key, merge_questions, shared_qid_duplicate


def check_files(folder: Path, manifest: dict[str, Any], hint: str = "do not use this copy") -> None:
    """Every file the manifest lists exists inside the folder with its recorded size and sha256; the first that
    does not is named. A symlink is refused: its content lives elsewhere."""
    inside = folder.resolve()
    for rel, meta in sorted(manifest["files"].items()):
        file = folder / rel
        if file.is_symlink() or (file.exists() and not file.resolve().is_relative_to(inside)):
            raise StoreError(f"{file}: a link to a file outside the version folder; {hint}")
        if not file.is_file():
            raise StoreError(f"{file}: missing (listed in {folder / MANIFEST}); {hint}")
        found = sha256_file(file)
        if found != meta["sha256"] or file.stat().st_size != meta["bytes"]:
            raise StoreError(f"{file}: sha256 {found[:16]}... does not match the manifest's {meta['sha256'][:16]}... "
                             f"(file altered or corrupt); {hint}")


def _unused_in(paths: list[Path]) -> list[str]:
    """Added columns that are all null (or absent, in versions older than them) in these files."""
    added = table_schema("rows").added
    rows, nulls = 0, dict.fromkeys(added, 0)
    for path in paths:
        with reading(path):
            scan = pl.scan_parquet(path)
            present = [c for c in added if c in scan.collect_schema()]
            counts = scan.select(pl.len(), *(pl.col(c).null_count() for c in present)).collect().row(0)
        rows += counts[0]
        for c in added:
            nulls[c] += counts[1 + present.index(c)] if c in present else counts[0]
    return [c for c in added if nulls[c] == rows]


def _in_order(keys: pl.DataFrame) -> bool:
    return bool(keys.select((pl.arg_sort_by(SORT_KEY, maintain_order=True) == pl.int_range(pl.len())).all()).item())


def _derive_problem(folder: Path, manifest: dict[str, Any]) -> tuple[str | None, str]:
    """The first manifest field that disagrees with the data (rows, tasks, configs, columns, rows_sha256), and the
    rows digest; with none, a duplicate key raises SchemaError.

    The default config's rows are read once, one batch at a time, in the order the store writes them (sorted by
    task, qid, sample_idx), feeding the digest and the expected `conversational` config; a duplicate key is two
    neighbours, or two rows of a qid under several tasks (then read again, those keys only). The other configs are
    checked from their files' metadata and task column.
    """
    configs = manifest["configs"]
    files = [folder / rel for rel in configs.get(DEFAULT_CONFIG, {}).get("files") or []]
    conversational = [folder / rel for rel in configs.get(CONVERSATIONAL_CONFIG, {}).get("files") or []]
    conv_columns: list[str] = []
    if conversational:
        with reading(conversational[0]):
            conv_columns = list(pl.read_parquet_schema(conversational[0]))
    digest, as_messages = NdjsonSha256(_unused_in(files)), NdjsonSha256()
    height, tasks, last, unsorted, dup = 0, {}, table_schema("rows").empty().select(SORT_KEY), None, None
    questions, pending = None, []
    for path in files:
        for batch in parquet_batches(path):
            rows = validate(with_derived(batch), "rows", where=str(path))
            keys = pl.concat([last, rows.select(SORT_KEY)])
            if unsorted is None and not _in_order(keys):
                unsorted = path
            dup = dup or duplicate_key(keys)
            last = keys.tail(1)
            pending.append(keys.group_by("task", "qid").len("rows"))
            if len(pending) >= 16:
                questions, pending = merge_questions([questions, *pending]), []
            height += rows.height
            for task, n in rows.group_by("task").len().iter_rows():
                tasks[task] = tasks.get(task, 0) + n
            digest.update(rows)
            if conv_columns:
                as_messages.update(conversational_rows(rows).select(conv_columns))
    if manifest["rows"] != height:
        return f"says {manifest['rows']} rows, the data has {height}", digest.hexdigest()
    tasks = dict(sorted(tasks.items()))
    if manifest["tasks"] != tasks:
        return f"says tasks {manifest['tasks']}, the data has {tasks}", digest.hexdigest()
    # a version older than a column added to the schema lists no such column (validate filled it with nulls)
    names = table_schema("rows").names
    listed = manifest.get("columns", names)
    columns = [c for c in names if c in listed or c not in table_schema("rows").added]
    if listed != columns:
        return f"says columns {manifest['columns']}, the data has {columns}", digest.hexdigest()
    if unsorted is not None:
        return (f"{unsorted}: rows out of (task, qid, sample_idx) order, which is how the store writes them",
                digest.hexdigest())
    if manifest.get("rows_sha256", digest.hexdigest()) != digest.hexdigest():  # older manifests have none
        return "rows_sha256 does not match the rows", digest.hexdigest()
    if configs.get(DEFAULT_CONFIG, {}).get("files") is None:
        return f"has no {DEFAULT_CONFIG!r} config", digest.hexdigest()
    data_files = sorted(rel for rel in manifest["files"] if rel.endswith(".parquet")
                        and rel not in (configs.get(CONVERSATIONAL_CONFIG, {}).get("files") or []))
    if sorted(configs[DEFAULT_CONFIG]["files"]) != data_files:
        return f"the {DEFAULT_CONFIG!r} config does not list every data file", digest.hexdigest()
    for name, config in configs.items():
        # `datasets` loads a config by its pattern, so the pattern must match exactly the listed files
        matched = sorted(p.relative_to(folder).as_posix() for p in folder.glob(config["data_files"]) if p.is_file())
        if matched != sorted(config["files"]):
            return (f"config {name!r}: data_files {config['data_files']!r} matches {matched}, not its files",
                    digest.hexdigest())
        if name == DEFAULT_CONFIG:
            found, part_tasks = height, set()
        elif name == CONVERSATIONAL_CONFIG:  # the same rows, only laid out as messages
            held = NdjsonSha256()
            found, part_tasks = 0, set()
            for path in conversational:
                for batch in parquet_batches(path):
                    held.update(batch)
                    found += batch.height
            if found == config["rows"] and held.hexdigest() != as_messages.hexdigest():
                return f"config {name!r} does not hold the default config's rows as messages", digest.hexdigest()
        else:  # row counts from the files' metadata, tasks from their task column, one batch at a time
            found, part_tasks = 0, set()
            for path in (folder / rel for rel in config["files"]):
                found += parquet_rows(path)
                for batch in parquet_batches(path, ["task"]):
                    part_tasks |= set(batch.get_column("task").unique().to_list())
        if config["rows"] != found:
            return f"config {name!r} says {config['rows']} rows, its files hold {found}", digest.hexdigest()
        if len(part_tasks) > 1:
            return f"config {name!r} mixes tasks {sorted(part_tasks)}", digest.hexdigest()
    dup = dup or shared_qid_duplicate(merge_questions([questions, *pending]),
                                      (b for path in files for b in parquet_batches(path, ["qid", "sample_idx"])))
    if dup is not None:
        raise SchemaError(f"table 'rows' in {folder}: duplicate key {dup}")
    return None, digest.hexdigest()


def verify(path: str | Path) -> dict[str, Any]:
    """Check a version folder: the manifest on its own (`load_manifest`), every file against it, no unlisted
    file, the manifest's fields re-derived from the data, and the content hash against the rows and recipe.

    Each file is hashed as it streams and the rows are read one row group at a time (memory stays bounded at
    any size); the rows digest is computed once.

    Files under .cache/ (huggingface_hub's download bookkeeping) and the Hub's .gitattributes are ignored; any
    other file the manifest does not list is an error, since `datasets` could pick it up.

    Returns:
        The manifest.

    Raises:
        StoreError: naming the first missing, altered or unexpected file, a manifest field that disagrees with
            the data, or a content hash mismatch.
        SchemaError: a data file does not hold the rows schema, or two rows share a key.
    """
    folder = Path(path)
    manifest = load_manifest(folder)
    check_files(folder, manifest)
    listed = set(manifest["files"]) | {MANIFEST}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder).as_posix()
        if file.is_file() and rel not in listed and not rel.startswith(".cache/") and rel != ".gitattributes":
            raise StoreError(f"{file}: not listed in {folder / MANIFEST} (unexpected file in a version folder)")
    problem, rows_sha256 = _derive_problem(folder, manifest)
    if problem:
        raise StoreError(f"{folder / MANIFEST}: {problem}; the manifest or data was altered")
    found = version_hash(rows_sha256, manifest.get("recipe") or {})
    if found != manifest["content_hash"]:
        raise StoreError(f"{folder / MANIFEST}: content_hash {manifest['content_hash'][:12]} does not match the "
                         f"rows and recipe ({found[:12]}); the manifest or data was altered")
    return manifest
