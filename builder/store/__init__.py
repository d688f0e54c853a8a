"""Dataset store: the curation ledger becomes an immutable, content-addressed dataset version on disk.

Input: the ledger table (schemas/ledger.table.json) and the build stats (`builder.stats.BuildStats`). Output: a
version folder

    <root>/<name>/v<N>/
        data/train-00000-of-0000K.parquet        (one task, or task_configs off)
        data/<task>/train-00000-of-0000K.parquet (several tasks: one `datasets` config per task + default)
        conversational/train-00000-of-0000K.parquet (the same rows as TRL message lists)
        README.md                                (card with the YAML `configs` / `dataset_info` header)
        assets/*.png                             (funnel and rationale-length plots)
        manifest.json                            (content hash, file sha256s, the recipe once, teacher, funnel, ...)
    <root>/<name>/versions.json                  (index: v1, v2, ... -> content hashes)

The content hash covers the rows (canonical NDJSON, sorted by task, qid, sample_idx) and the resolved recipe
(canonical JSON without paths and other machine-specific fields), so the same recipe and seeds on the same engine
give the same hash and any change of a row changes it. Versions are written to a temp folder and renamed into
place under a file lock; a version is never rewritten.

Writing and verifying take bounded memory at any size: the rows (a DataFrame, or `Parts`: the Parquet files of a
rows table or a ledger that a Ray cluster wrote, sorted in range buckets) are read once, in order, feeding the shards,
the rows digest and the card's length counts slice by slice; counts and sizes come from a first pass over the
columns they need, one batch at a time; verify reads one row group at a time.

One module per job: `rows` (the rows table and its config layouts), `hashing` (content hash), `manifest`
(manifest.json and its model), `index` (the versions of a dataset, versions.json), `parquet` (bounded reads),
`parts` (`Parts`), `summary` and `sort` (counts, keys and the sorted pass), `shards` (the data files), `write`
(`write_version`: lock, temp folder, rename), `read`, `verify`, `diff`. The names below are the package's API;
the modules' other names are its internals.
"""

from __future__ import annotations

from builder.store.diff import diff_versions
from builder.store.hashing import canonical_recipe, content_hash, rows_digest, sha256_bytes, sha256_file
from builder.store.index import list_versions
from builder.store.manifest import MANIFEST, is_version_name, load_manifest, manifest_digest, published_copy
from builder.store.parts import Parts
from builder.store.read import read_version, resolve, resolve_root
from builder.store.rows import rows_from_ledger
from builder.store.verify import verify
from builder.store.write import StoreWriteError, VersionInfo, write_version

__all__ = [
    "MANIFEST", "Parts", "StoreWriteError", "VersionInfo", "canonical_recipe", "content_hash", "diff_versions",
    "is_version_name", "list_versions", "load_manifest", "manifest_digest", "published_copy", "read_version",
    "resolve", "resolve_root", "rows_digest", "rows_from_ledger", "sha256_bytes", "sha256_file", "verify",
    "write_version",
]
