"""Where sample shards live: a local folder or an fsspec URL (file://, s3://, gs://, ...), read and written alike.

Ray replicas on several nodes write their shards to shared storage; the driver lists them to resume (set difference
of (qid, sample_idx)) and reads them back. Local paths keep the exact local code path (temp file + fsync + rename);
URLs go through fsspec: a temp object renamed into place where the filesystem can rename (file://, hdfs, ...), a
single put where an object store makes the object appear whole or not at all (s3://, gs://, az://).
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import polars as pl

from builder.schemas import TEMP_GLOB, remove_stale_temp_files

_OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def _fs(location: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    return fs, path


def _protocol(fs: Any) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def local_folder(location: str | Path) -> str | None:
    """The local path of a plain path or a file:// URL (where file locks work); None on other filesystems."""
    if not is_url(location):
        return str(location)
    fs, path = _fs(str(location))
    return path if _protocol(fs) in ("file", "local") else None


def join(location: str | Path, *names: str) -> str:
    """`location`/names; URLs keep their scheme (posix joins), local paths stay paths."""
    if is_url(location):
        return posixpath.join(str(location).rstrip("/"), *names)
    return str(Path(location).joinpath(*names))


def _unstrip(location: str, fs: Any, path: str) -> str:
    """The URL of `path` on `location`'s filesystem (fsspec lists paths without the scheme)."""
    return fs.unstrip_protocol(path) if hasattr(fs, "unstrip_protocol") else f"{location.split('://')[0]}://{path}"


def list_files(location: str | Path, pattern: str) -> list[str]:
    """Files matching `pattern` directly in `location`, sorted by name (an absent folder holds none)."""
    if not is_url(location):
        return [str(p) for p in sorted(Path(location).glob(pattern))]
    fs, root = _fs(str(location))
    found = fs.glob(posixpath.join(root, pattern))
    return sorted((_unstrip(str(location), fs, p) for p in found), key=lambda p: posixpath.basename(p))


def basename(path: str) -> str:
    return posixpath.basename(path) if is_url(path) else Path(path).name


def makedirs(location: str | Path) -> None:
    if is_url(location):
        fs, path = _fs(str(location))
        if _protocol(fs) not in _OBJECT_STORES:
            fs.makedirs(path, exist_ok=True)
    else:
        Path(location).mkdir(parents=True, exist_ok=True)


def remove_stale(location: str | Path) -> list[str]:
    """Delete temp files a killed writer left in `location` (they are never read)."""
    if not is_url(location):
        return [str(p) for p in remove_stale_temp_files(location)]
    fs, _ = _fs(str(location))
    stale = list_files(location, TEMP_GLOB)
    for url in stale:
        fs.rm(_fs(url)[1])
    return stale


def read_parquet(path: str, columns: list[str] | None = None) -> pl.DataFrame:
    if not is_url(path):
        return pl.read_parquet(path, columns=columns)
    fs, p = _fs(path)
    with fs.open(p, "rb") as fh:
        return pl.read_parquet(fh, columns=columns)


def write_parquet_url(df: pl.DataFrame, url: str, *, replace: bool = True) -> str:
    """Write `df` to `url` so that readers never see half a file (see the module docstring). `replace=False`
    raises FileExistsError where an object is already there (checked just before the write: object stores have no
    portable create-if-absent)."""
    fs, path = _fs(url)
    if not replace and fs.exists(path):
        raise FileExistsError(url)
    buf = io.BytesIO()
    df.write_parquet(buf, compression="zstd")
    data = buf.getvalue()
    if _protocol(fs) in _OBJECT_STORES:
        fs.pipe_file(path, data)  # one PUT: the object is whole or absent
        return url
    parent, name = posixpath.split(path)
    fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.tmp")  # matches TEMP_GLOB
    try:
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise
    return url


def read_text(path: str) -> str | None:
    """A small text file (a run's marker), or None when it does not exist."""
    if not is_url(path):
        try:
            return Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
    fs, p = _fs(path)
    try:
        return fs.cat_file(p).decode("utf-8")
    except FileNotFoundError:
        return None


def write_text(path: str, text: str) -> None:
    """Replace a small text file whole: readers see the old or the new content, never half of one."""
    data = text.encode("utf-8")
    if not is_url(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return
    fs, p = _fs(path)
    if _protocol(fs) in _OBJECT_STORES:
        fs.pipe_file(p, data)
        return
    parent, name = posixpath.split(p)
    fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    fs.pipe_file(tmp, data)
    fs.mv(tmp, p)
