"""Finding and reading versions: a ref (NAME@vN, NAME@latest, NAME@<hash prefix>, NAME) or a folder -> the rows
table and the manifest."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import StoreError
from builder.paths import NAME
from builder.schemas import table_schema, validate
from builder.store.index import list_versions
from builder.store.manifest import MANIFEST, VERSION_RE, load_manifest
from builder.store.parquet import reading
from builder.store.rows import CONVERSATIONAL_CONFIG, DEFAULT_CONFIG, with_derived


def resolve_root(root: str | Path | None = None) -> Path:
    """The store folder: `root` when given, else $RATIONALE_STORE, else ./store (StoreConfig's default)."""
    return Path(root if root is not None else os.environ.get("RATIONALE_STORE", "store"))


def resolve(ref: str | Path, root: str | Path | None = None) -> Path:
    """Find a version folder from "NAME@vN", "NAME@latest", "NAME@<hash prefix>", "NAME" (= latest) or a path.

    Raises:
        StoreError: unknown dataset or version (lists the ones that exist), or an ambiguous hash prefix.
    """
    path = Path(ref)
    if path.is_dir() and (path / MANIFEST).is_file():
        return path
    text = str(ref)
    name, at, want = text.partition("@")
    if at and not want:
        raise StoreError(f"{text}: nothing after '@'; write NAME@vN, NAME@latest, NAME@<hash prefix> or NAME")
    if not re.fullmatch(NAME, name):
        raise StoreError(f"{text}: {name!r} is not a dataset name (letters, digits, '_', '-', '.') nor a version "
                         "folder")
    want = want or "latest"
    root = resolve_root(root)
    versions = list_versions(root, name)
    if not versions:
        raise StoreError(f"{text}: no dataset {name!r} under store {root} (and no version folder at that path); "
                         "pass --store DIR or a version folder path")
    if want == "latest":
        return root / name / versions[-1]["version"]
    if VERSION_RE.match(want):
        if any(v["version"] == want for v in versions):
            return root / name / want
    elif re.fullmatch(r"[0-9a-f]{4,64}", want):
        hits = [v for v in versions if v["content_hash"].startswith(want)]
        if len(hits) > 1:
            raise StoreError(f"{text}: hash prefix matches {', '.join(v['version'] for v in hits)}; give more digits")
        if hits:
            return root / name / hits[0]["version"]
    known = ", ".join(f"{v['version']} ({v['content_hash'][:12]})" for v in versions)
    raise StoreError(f"{text}: no such version of {name!r} in {root}; versions: {known}")


def read_version(ref_or_path: str | Path, root: str | Path | None = None, *, config: str = DEFAULT_CONFIG
                 ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Read a version's rows table (the default config: all rows, or one task's config) and its manifest.

    The `conversational` config holds the same rows as message lists, not the rows table: load it with
    `builder.api.open_version(ref, "conversational")` (a `datasets.DatasetDict`).
    """
    folder = resolve(ref_or_path, root)
    manifest = load_manifest(folder)
    if config not in manifest["configs"]:
        raise StoreError(f"{folder}: no config {config!r}; configs: {', '.join(manifest['configs'])}")
    if config == CONVERSATIONAL_CONFIG:
        raise StoreError(f"{folder}: config {config!r} holds TRL message lists, not the rows table; read the rows "
                         f"with config {DEFAULT_CONFIG!r} or load it with builder.api.open_version(ref, {config!r})")
    files = [folder / f for f in manifest["configs"][config]["files"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise StoreError(f"{missing[0]}: listed in {folder / MANIFEST} but missing; run `rationale pull` again")
    frames = []
    for file in files:
        with reading(file):
            frames.append(pl.read_parquet(file))
    rows = pl.concat(frames, how="vertical_relaxed") if frames else table_schema("rows").empty()
    return validate(with_derived(rows), "rows", where=str(folder)), manifest
