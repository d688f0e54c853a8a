"""manifest.json: a version's record of itself (content hash, file sha256s, configs, the recipe once, teacher,
funnel, ...), checked on its own by a pydantic model before anything in it is trusted.

The file is written as a plain dict (`manifest_text`) and read back as one (`load_manifest`): the model checks it but
never rewrites it, so the JSON of every existing version, and the digests over it, stay as they were.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from builder.errors import StoreError
from builder.paths import NAME_PATTERN
from builder.store.hashing import canonical_json, sha256_bytes

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

MANIFEST = "manifest.json"
FORMAT = "rationale-builder/dataset-version@1"
VERSION_PATTERN = r"^v([1-9][0-9]*)$"
VERSION_RE = re.compile(VERSION_PATTERN)
_HEX64 = r"^[0-9a-f]{64}$"


def is_version_name(text: str) -> bool:
    """Whether `text` names a version ("v1", "v2", ...), as folders and Hub tags are named."""
    return VERSION_RE.match(text) is not None


def _inside(rel: str) -> bool:
    """A relative POSIX path that stays inside its folder: no '..', no absolute path, no backslash, no './'."""
    if not rel or rel.startswith("/") or "\\" in rel or ":" in rel.split("/")[0]:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


class _Checked(BaseModel):
    # strict: the JSON types as written (a row count is an int, never "3" or true); fields not declared here are
    # descriptive, kept as they are and covered by the manifest's digest
    model_config = ConfigDict(strict=True, extra="allow")


class _File(_Checked):
    sha256: str = Field(pattern=_HEX64, description="a sha256 hex digest")
    bytes: int = Field(description="a byte count")


class _Config(_Checked):
    data_files: str = Field(description="a data_files pattern")
    files: list[str] = Field(description="a list of files")
    rows: int = Field(description="a row count")


class Manifest(_Checked):
    """The fields that reading, verifying and publishing a version rely on; field order is the order checked."""

    version: str = Field(pattern=VERSION_PATTERN, description="v1, v2, ...")
    content_hash: str = Field(pattern=_HEX64, description="a sha256 hex digest")
    manifest_sha256: str = Field(pattern=_HEX64, description="a sha256 hex digest")
    name: str = Field(pattern=NAME_PATTERN, description="a dataset name")
    rows: int = Field(ge=0, description="a row count")
    tasks: dict[str, int] = Field(description="an object of task -> row count")
    files: dict[str, _File] = Field(description="an object of path -> {sha256, bytes}")
    configs: dict[str, _Config] = Field(min_length=1, description="an object of config -> {data_files, files, rows}")
    recipe: dict[str, Any] = Field(default_factory=dict, description="an object")

    @model_validator(mode="after")
    def _paths_inside(self) -> Manifest:
        """Every path stays inside the version folder: a manifest must never make a reader hash or upload a file
        from elsewhere."""
        for rel in self.files:
            if not _inside(rel) or rel == MANIFEST:
                raise ValueError(f"files lists {rel!r}, a path outside the version folder (or the manifest itself)")
        for name, config in self.configs.items():
            if not _inside(config.data_files):
                raise ValueError(f"configs[{name!r}].data_files {config.data_files!r} points outside the version "
                                 "folder")
            for rel in config.files:
                if not _inside(rel) or rel not in self.files:
                    raise ValueError(f"configs[{name!r}] lists {rel!r}, which is outside the version folder or not "
                                     "in files")
        return self


def _what(node: Any) -> str:
    """What an entry of a files/configs/tasks object or a list must be, for messages."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        return f"an object of {', '.join(node.model_fields)}"
    return {int: "an integer", str: "a string"}.get(node, "valid")


def _place(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """Where an error is, as messages name it (field 'rows', files['README.md'].sha256), and what belongs there."""
    node: Any = Manifest
    where, what = "", ""
    for part in loc:
        if get_origin(node) in (dict, list):  # part is a key or an index
            node = get_args(node)[-1]
            where, what = f"{where}[{part!r}]", _what(node)
        elif isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            field = node.model_fields[part]
            where = f"{where}.{part}" if where else str(part)
            what, node = field.description or "", field.annotation
        else:
            break
    return (f"field {where!r}" if len(loc) == 1 else where), what


def _problem(error: ErrorDetails) -> str:
    """One validation error as a sentence naming the field."""
    if error["type"] == "value_error":  # the model's own checks, phrased in full
        return str(error["ctx"]["error"])
    if not error["loc"]:
        return f"expected a JSON object, found {type(error['input']).__name__}"
    at, what = _place(error["loc"])
    if error["type"] == "missing":
        older = (" (older manifests have none: rebuild the version to add it)"
                 if at == "field 'manifest_sha256'" else "")
        return f"{at} is missing{older}"
    found = repr(error["input"])
    return f"{at} is not {what} (found {found if len(found) <= 60 else found[:57] + '...'})"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest as canonical JSON (sorted keys, no spaces) without its own manifest_sha256 field.

    The content hash covers rows and recipe; this covers every other field (teacher, funnel, file list, ...), so
    a manifest edited by hand (or by a tool that did not recompute it) is detected. It is a checksum, not a
    signature: whoever can rewrite the whole version can recompute it.
    """
    plain = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "manifest_sha256"}, default=str))
    return sha256_bytes(canonical_json(plain))


def manifest_text(manifest: dict[str, Any]) -> str:
    """manifest.json's text, as every version has been written."""
    return json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n"


def load_manifest(version_dir: Path) -> dict[str, Any]:
    """Read manifest.json and check it on its own (`Manifest`: fields and types, paths inside the folder), then its
    digest, and its version against the folder's name (when the folder is named like a version).

    Raises:
        StoreError: naming the manifest and what is wrong; the version is then treated as corrupt.
    """
    path = version_dir / MANIFEST
    if not path.is_file():
        raise StoreError(f"{path}: missing; {version_dir} is not a dataset version folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON (line {exc.lineno}): the version is corrupt") from None
    except UnicodeDecodeError:
        raise StoreError(f"{path}: not UTF-8 text: the version is corrupt") from None
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise StoreError(f"{path}: {_problem(exc.errors()[0])}: the version is corrupt") from None
    if manifest["manifest_sha256"] != manifest_digest(manifest):
        raise StoreError(f"{path}: manifest_sha256 does not match the manifest's fields: the manifest was edited "
                         "after the version was written: the version is corrupt")
    if VERSION_RE.match(version_dir.name) and manifest["version"] != version_dir.name:
        raise StoreError(f"{path}: says version {manifest['version']} but lives in folder {version_dir.name}: the "
                         "version is corrupt (a folder is never renamed)")
    return manifest


def published_copy(folder: Path, manifest: dict[str, Any], repo: str) -> dict[str, bytes]:
    """README.md and manifest.json as published to Hub repo `repo`: the card's usage snippet names `repo`, and the
    manifest records it (`published_repo`) with the card's new sha256 and its own digest recomputed. The rows, the
    content hash and the local version are unchanged; a pulled copy verifies like the local one."""
    from builder.card import for_repo

    readme = for_repo((folder / "README.md").read_text(encoding="utf-8"), manifest["name"], repo).encode()
    out = copy.deepcopy(manifest)
    out["files"]["README.md"] = {"sha256": sha256_bytes(readme), "bytes": len(readme)}
    out["published_repo"] = repo
    out["manifest_sha256"] = manifest_digest(out)
    return {"README.md": readme, MANIFEST: manifest_text(out).encode()}
