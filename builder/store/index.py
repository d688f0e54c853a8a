"""A dataset's versions: the version folders (the source of truth) and <root>/<name>/versions.json, the index
rewritten after each new version (a convenience for readers of the store; rebuilt from the folders when stale)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from builder.errors import StoreError
from builder.store.manifest import MANIFEST, VERSION_RE, load_manifest

INDEX = "versions.json"


def index_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the index (and `list_versions`) records of a version."""
    return {k: manifest[k] for k in ("version", "content_hash", "created_at", "rows", "tasks")}


def list_versions(root: str | Path, name: str) -> list[dict[str, Any]]:
    """Versions of dataset `name`, oldest first, read from the version folders' manifests (the source of truth)."""
    dataset_dir = Path(root) / name
    found = []
    for child in dataset_dir.iterdir() if dataset_dir.is_dir() else []:
        m = VERSION_RE.match(child.name)
        if m and child.is_dir():
            manifest = load_manifest(child)
            if manifest["name"] != name:
                raise StoreError(f"{child / MANIFEST}: names dataset {manifest['name']!r} but lives under {name!r}: "
                                 "the version is corrupt")
            found.append((int(m.group(1)), index_entry(manifest)))
    return [entry for _, entry in sorted(found, key=lambda t: t[0])]


def read_index(dataset_dir: Path) -> list[dict[str, Any]] | None:
    """The index's entries, or None when it is missing or unreadable."""
    try:
        return json.loads((dataset_dir / INDEX).read_text())["versions"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_index(dataset_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Replace the index atomically. `write_version` calls it as `index.write_index` after the version folder is in
    place: the seam where a kill leaves a complete version and a stale index (tests/kill_points.py)."""
    tmp = dataset_dir / f".{INDEX}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps({"versions": entries}, indent=2) + "\n")
    os.replace(tmp, dataset_dir / INDEX)
