"""Dataset store: the curation ledger becomes an immutable, content-addressed dataset version on disk.

Input: the ledger table (schemas/ledger.table.json) and the build stats (`builder.stats.BuildStats`). Output: a
version folder

    <root>/<name>/v<N>/
        data/train-00000-of-0000K.parquet        (one task, or task_configs off)
        data/<task>/train-00000-of-0000K.parquet (several tasks: one `datasets` config per task + default)
        README.md                                (card with the YAML `configs` / `dataset_info` header)
        assets/*.png                             (funnel and rationale-length plots)
        manifest.json                            (content hash, file sha256s, the recipe once, teacher, funnel, ...)
    <root>/<name>/versions.json                  (index: v1, v2, ... -> content hashes)

The content hash covers the rows (canonical NDJSON, sorted by task, qid, sample_idx) and the resolved recipe
(canonical JSON without paths and other machine-specific fields), so the same recipe and seeds on the same engine
give the same hash and any change of a row changes it. Versions are written to a temp folder and renamed into
place under a file lock; a version is never rewritten.
"""

from __future__ import annotations

import copy
import hashlib
import json
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

from builder import reasons as R
from builder.errors import StoreError
from builder.prompts import (
    reasoning_completion_expr,
    student_completion_expr,
    student_conversation_exprs,
    student_messages_expr,
    student_prompt_expr,
)
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
from builder.stats import BuildStats

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
INDEX = "versions.json"
FORMAT = "rationale-builder/dataset-version@1"
SPLIT = "train"
DEFAULT_CONFIG = "default"
# One `datasets` config per TRL dataset type, never both in one table (TRL's SFTTrainer picks one key by set order,
# then may add no EOS): `default` (and the per-task configs) are standard prompt/completion strings in the
# Fine-tune-CoT format; `conversational` holds the same pairs as message lists (TRL's conversational
# prompt-completion type). Its files live outside data/ so the default pattern data/*/... never matches them.
CONVERSATIONAL_CONFIG = "conversational"
TRL_TYPES = {DEFAULT_CONFIG: "standard prompt-completion", CONVERSATIONAL_CONFIG: "conversational prompt-completion"}
# Rows-table columns that no config file holds (rebuilt on read from the other columns, so the rows table and its
# hash stay as they were): `messages` would make a standard config look conversational to TRL.
_DERIVED = ("messages",)
HASH_SPEC = ("sha256 over: 'rows\\n' + sha256(rows as NDJSON sorted by task, qid, sample_idx) + '\\nrecipe\\n' + "
             "canonical JSON of the recipe without machine-specific fields (paths, store location)")
MANIFEST_DIGEST_SPEC = ("sha256 of the manifest as canonical JSON (sorted keys, no spaces) without its own "
                        "manifest_sha256 field")
# Recipe fields that name places on one machine, not what the data is: left out of the content hash.
_VOLATILE_KEYS = frozenset({"work_dir", "benchmarks_dir", "base_dir", "import_path", "root", "lock_timeout_s"})
_VERSION_RE = re.compile(r"^v([1-9][0-9]*)$")
_SORT_KEY = ["task", "qid", "sample_idx"]
# What manifest.json keeps of the build stats: measured facts only (the settings are in its `recipe`).
_STATS_SECTIONS = ("sampling", "funnel", "dropped", "diversity", "decontamination")


class StoreWriteError(StoreError, OSError):
    """Writing a version failed (disk full, permissions); still an OSError for callers that catch those."""


@dataclass(frozen=True)
class VersionInfo:
    """Where a version lives and whether this call wrote it (False: the newest version already had this hash)."""

    path: Path
    version: str
    content_hash: str
    created: bool


# ---------------------------------------------------------------- ledger -> rows
def rows_from_ledger(ledger: pl.DataFrame) -> pl.DataFrame:
    """The kept rows of a ledger as the `rows` table, in the student formats of `builder.prompts`.

    prompt/completion are the Fine-tune-CoT pair (EOS is added at training time); messages holds the question and
    the rationale followed by the answer sentence. A row with a reasoning trace keeps it in `reasoning`, and its
    completion and assistant message are the R1-distill text (`builder.prompts.REASONING_COMPLETION`).

    Raises:
        SchemaError: the ledger or the resulting rows do not match their schemas.
        StoreError: a kept row has no extracted answer (names its qid and sample_idx).
    """
    ledger = validate(ledger, "ledger", where="ledger")
    kept = ledger.filter(pl.col("state") == R.KEPT)
    no_answer = kept.filter(pl.col("pred").is_null() | (pl.col("pred").str.strip_chars() == ""))
    if no_answer.height:
        first = no_answer.row(0, named=True)
        raise StoreError(f"ledger: {no_answer.height} kept row(s) have no extracted answer (column 'pred'), first "
                         f"qid={first['qid']} sample_idx={first['sample_idx']}; drop them in curation "
                         "(filter 'no_answer') before storing")
    question, rationale, answer, reasoning = pl.col("question"), pl.col("rationale"), pl.col("answer"), pl.col(
        "reasoning")
    rows = kept.with_columns(rationale.str.strip_chars(), reasoning.str.strip_chars(),
                             pl.col("pred").str.strip_chars().alias("answer"))
    rows = rows.with_columns(
        student_prompt_expr(question).alias("prompt"),
        pl.when(reasoning.is_null()).then(student_completion_expr(rationale, answer))
        .otherwise(reasoning_completion_expr(reasoning, rationale)).alias("completion"),
        student_messages_expr(question, rationale, answer, reasoning).alias("messages"),
    )
    return validate(rows.sort(_SORT_KEY), "rows", where="rows from ledger")


def conversational_rows(rows: pl.DataFrame) -> pl.DataFrame:
    """The `conversational` config's table: the rows with prompt/completion as message lists
    (`builder.prompts.student_conversation_exprs`) and no `messages` column (one TRL type per table)."""
    prompt, completion = student_conversation_exprs(pl.col("question"), pl.col("completion"))
    return rows.with_columns(prompt.alias("prompt"), completion.alias("completion")).drop(_DERIVED)


def _with_derived(files_frame: pl.DataFrame) -> pl.DataFrame:
    """Config files -> the rows table: rebuild `messages` (left out of the files) from the other columns.
    Versions written before the conversational config still hold it and are returned as they are."""
    if "messages" in files_frame.columns:
        return files_frame
    return files_frame.with_columns(
        student_messages_expr(pl.col("question"), pl.col("rationale"), pl.col("answer"), pl.col("reasoning")
                              if "reasoning" in files_frame.columns else None).alias("messages"))


# ---------------------------------------------------------------- hashing
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


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def rows_digest(rows: pl.DataFrame) -> str:
    """sha256 of the rows as NDJSON in schema column order, sorted by (task, qid, sample_idx).

    Columns added to the rows schema later (`reasoning`) are left out while they are all null, so a dataset without
    traces keeps the hash it had before they existed.
    """
    rows = validate(rows, "rows", where="rows").sort(_SORT_KEY)
    unused = [c for c in table_schema("rows").added if rows.get_column(c).null_count() == rows.height]
    return hashlib.sha256(rows.drop(unused).write_ndjson().encode()).hexdigest()


def content_hash(rows: pl.DataFrame, recipe: dict[str, Any]) -> str:
    """The version identity: rows plus canonical recipe (see HASH_SPEC)."""
    h = hashlib.sha256()
    h.update(b"rows\n" + rows_digest(rows).encode() + b"\nrecipe\n" + _canonical_json(canonical_recipe(recipe)))
    return h.hexdigest()


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own digest (see MANIFEST_DIGEST_SPEC).

    The content hash covers rows and recipe; this covers every other field (teacher, funnel, file list, ...), so
    a manifest edited by hand (or by a tool that did not recompute it) is detected. It is a checksum, not a
    signature: whoever can rewrite the whole version can recompute it.
    """
    plain = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "manifest_sha256"}, default=str))
    return hashlib.sha256(_canonical_json(plain)).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    text = json.dumps(out, indent=2, ensure_ascii=False, default=str) + "\n"
    return {"README.md": readme, MANIFEST: text.encode()}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- writing
def _tool_version() -> str:
    from builder.version import __version__

    return __version__


def _config_name(task: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task).strip(".") or "task"


def _plan_configs(tasks: list[str], task_configs: bool) -> dict[str, str | None]:
    """Map config name -> task (None for the default and conversational configs, which hold every row)."""
    plan: dict[str, str | None] = {DEFAULT_CONFIG: None, CONVERSATIONAL_CONFIG: None}
    if not task_configs or len(tasks) < 2:
        return plan
    for task in tasks:
        name = _config_name(task)
        if name in plan:
            raise StoreError(f"task {task!r}: config name {name!r} collides with another task or the default or "
                             "conversational config; rename the task in the recipe or set store.task_configs: false")
        plan[name] = task
    return plan


def _arrow_plain(table: Any) -> Any:
    """Cast Arrow large types (polars' default) to plain string/list so `datasets` sees Value('string')/List."""
    import pyarrow as pa

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(plain(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
        return t

    schema = pa.schema([pa.field(f.name, plain(f.type), f.nullable) for f in table.schema])
    return table.cast(schema)


def _write_shards(df: pl.DataFrame, folder: Path, shard_rows: int) -> list[Path]:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    k = max(1, -(-df.height // shard_rows))
    paths = []
    for i in range(k):
        path = folder / f"{SPLIT}-{i:05d}-of-{k:05d}.parquet"
        table = _arrow_plain(df.slice(i * shard_rows, shard_rows).to_arrow())
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
    return paths


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _teacher(recipe: dict[str, Any], rows: pl.DataFrame) -> dict[str, Any]:
    """The teacher as the card names it: the recipe's, else the model(s) the rows were written by."""
    teacher = recipe.get("teacher", {})
    models = sorted(rows.get_column("teacher").unique().to_list()) if rows.height else []
    return {"model": teacher.get("model") or (models[0] if len(models) == 1 else models),
            "revision": teacher.get("revision"), "backend": teacher.get("backend")}


def write_version(
    rows: pl.DataFrame,
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
    """Write `rows` as the next version of dataset `name` under `root`, unless the newest has the same hash.

    Args:
        rows: the `rows` table (see `rows_from_ledger`).
        root: the store folder; the dataset lives in <root>/<name>/.
        name: dataset name (letters, digits, '_', '-', '.').
        recipe: the resolved recipe as a JSON-able dict (hashed without paths, copied into manifest.json).
        stats: the build's stats; without them the manifest and card record no funnel, diversity or usage.
        tool_version: recorded in the manifest (default: this package's version).
        shard_rows, task_configs, lock_timeout_s: default to recipe["store"] values, then StoreConfig defaults.

    Returns:
        VersionInfo; created=False when the newest version already has this content hash (nothing written).

    Raises:
        StoreError: bad name, no rows, the lock is held by another build past the timeout, or a write failed.
    """
    from filelock import FileLock, Timeout

    from builder.recipe import StoreConfig

    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
        raise StoreError(f"dataset name {name!r}: use letters, digits, '_', '-' and '.' (e.g. 'multiarith-cot')")
    store_cfg = StoreConfig.model_validate({k: v for k, v in (recipe.get("store") or {}).items()
                                            if k in StoreConfig.model_fields})
    shard_rows = shard_rows or store_cfg.shard_rows
    task_configs = store_cfg.task_configs if task_configs is None else task_configs
    lock_timeout_s = store_cfg.lock_timeout_s if lock_timeout_s is None else lock_timeout_s
    rows = validate(rows, "rows", where=f"rows for {name}").sort(_SORT_KEY)
    if rows.height == 0:  # `datasets` cannot load a version without rows, and there is nothing to train on
        raise StoreError(f"dataset {name!r}: no rows to store (curation kept no sample; see the funnel in the "
                         "build summary); nothing written")
    digest = content_hash(rows, recipe)

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
        existing = list_versions(dataset_dir.parent, name)
        if existing and existing[-1]["content_hash"] == digest:
            newest = existing[-1]
            folder = dataset_dir / newest["version"]
            # "unchanged" must not point at a damaged copy: check its files, and heal an index a kill left stale.
            _check_files(folder, load_manifest(folder), hint=f"{newest['version']} has this content but is corrupt; "
                         f"move {folder} out of the store and rerun to write it again")
            if _read_index(dataset_dir) != existing:
                _write_index(dataset_dir, existing)
            logger.info("%s %s already has content hash %s; nothing written", name, newest["version"], digest[:12])
            return VersionInfo(folder, newest["version"], digest, False)
        number = 1 + max((int(v["version"][1:]) for v in existing), default=0)
        version = f"v{number}"
        tmp = dataset_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            manifest = _write_folder(tmp, rows, name=name, version=version, digest=digest, recipe=recipe,
                                     stats=stats, tool_version=tool_version or _tool_version(),
                                     shard_rows=shard_rows, task_configs=task_configs)
            final = dataset_dir / version
            if final.exists():
                raise StoreError(f"{final}: already exists but has no readable manifest; versions are immutable, "
                                 "move it away by hand")
            os.rename(tmp, final)
        except OSError as exc:  # disk full, permissions: nothing half-written stays visible
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreWriteError(f"{dataset_dir}: writing {version} failed ({exc}); nothing was written, the store "
                                  "is unchanged; fix the cause (e.g. free disk space) and rerun") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            _write_index(dataset_dir, [*existing, _index_entry(manifest)])
        except OSError as exc:  # the version is complete; the index is rebuilt from the folders on the next write
            logger.warning("%s: could not update %s (%s); the version folders remain the source of truth",
                           dataset_dir, INDEX, exc)
        logger.info("wrote %s %s (%d rows, content hash %s)", name, version, rows.height, digest[:12])
        return VersionInfo(final, version, digest, True)
    finally:
        lock.release()


def _write_folder(folder: Path, rows: pl.DataFrame, *, name: str, version: str, digest: str,
                  recipe: dict[str, Any], stats: BuildStats | None, tool_version: str, shard_rows: int,
                  task_configs: bool) -> dict[str, Any]:
    from builder.card import write_card

    tasks = sorted(rows.get_column("task").unique().to_list())
    plan = _plan_configs(tasks, task_configs)
    standard = rows.drop(_DERIVED)
    configs: dict[str, dict[str, Any]] = {}
    if all(task is None for task in plan.values()):
        files = _write_shards(standard, folder / "data", shard_rows)
        configs[DEFAULT_CONFIG] = {"pattern": f"data/{SPLIT}-*.parquet", "files": files, "rows": rows.height}
    else:
        all_files: list[Path] = []
        for config, task in plan.items():
            if task is None:
                continue
            part = standard.filter(pl.col("task") == task)
            files = _write_shards(part, folder / "data" / config, shard_rows)
            all_files += files
            configs[config] = {"pattern": f"data/{config}/{SPLIT}-*.parquet", "files": files, "rows": part.height}
        default = {"pattern": f"data/*/{SPLIT}-*.parquet", "files": all_files, "rows": rows.height}
        configs = {DEFAULT_CONFIG: default, **configs}
    conv = _write_shards(conversational_rows(rows), folder / CONVERSATIONAL_CONFIG, shard_rows)
    configs = {DEFAULT_CONFIG: configs.pop(DEFAULT_CONFIG),
               CONVERSATIONAL_CONFIG: {"pattern": f"{CONVERSATIONAL_CONFIG}/{SPLIT}-*.parquet", "files": conv,
                                       "rows": rows.height}, **configs}
    per_task = dict(rows.group_by("task").len().sort("task").iter_rows())
    measured = stats.to_json() if stats is not None else {}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "content_hash": digest,
        "hash_spec": HASH_SPEC,
        "rows_sha256": rows_digest(rows),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tool_version": tool_version,
        "rows": rows.height,
        "tasks": per_task,
        "configs": {
            c: {"split": SPLIT, "data_files": v["pattern"], "rows": v["rows"],
                "files": [p.relative_to(folder).as_posix() for p in v["files"]],
                "trl_type": TRL_TYPES.get(c, TRL_TYPES[DEFAULT_CONFIG])}
            for c, v in configs.items()
        },
        "columns": table_schema("rows").names,
        "teacher": _teacher(recipe, rows),
        **{section: measured.get(section, {}) for section in _STATS_SECTIONS},
        "recipe": recipe,
    }
    write_card(folder, rows, manifest)
    manifest["files"] = {
        p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(folder.rglob("*")) if p.is_file()
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    _fsync_tree(folder)
    for p in folder.rglob("*"):
        if p.is_file():
            p.chmod(0o444)  # immutable: a later write must be a new version
    return manifest


def _index_entry(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest[k] for k in ("version", "content_hash", "created_at", "rows", "tasks")}


def _read_index(dataset_dir: Path) -> list[dict[str, Any]] | None:
    try:
        return json.loads((dataset_dir / INDEX).read_text())["versions"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_index(dataset_dir: Path, entries: list[dict[str, Any]]) -> None:
    tmp = dataset_dir / f".{INDEX}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps({"versions": entries}, indent=2) + "\n")
    os.replace(tmp, dataset_dir / INDEX)


# ---------------------------------------------------------------- reading
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED = ("version", "content_hash", "files", "configs", "name", "rows", "tasks", "manifest_sha256")


def _inside(rel: Any) -> bool:
    """A relative POSIX path that stays inside its folder: no '..', no absolute path, no backslash, no './'."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or ":" in rel.split("/")[0]:
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _manifest_problem(m: Any) -> str | None:
    """What is structurally wrong with a parsed manifest (wrong types, paths outside the folder), or None."""
    if not isinstance(m, dict):
        return f"expected a JSON object, found {type(m).__name__}"
    for key in _REQUIRED:
        if key not in m:
            older = " (older manifests have none: rebuild the version to add it)" if (
                key == "manifest_sha256") else ""
            return f"field {key!r} is missing{older}"
    if not isinstance(m["version"], str) or not _VERSION_RE.match(m["version"]):
        return f"field 'version' is {m['version']!r}, not v1, v2, ..."
    for key in ("content_hash", "manifest_sha256"):
        if not isinstance(m[key], str) or not _HEX64.match(m[key]):
            return f"field {key!r} is not a sha256 hex digest"
    if not isinstance(m["name"], str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", m["name"]):
        return f"field 'name' is {m['name']!r}, not a dataset name"
    if not isinstance(m["rows"], int) or isinstance(m["rows"], bool) or m["rows"] < 0:
        return f"field 'rows' is {m['rows']!r}, not a row count"
    if not isinstance(m["tasks"], dict) or not all(isinstance(n, int) for n in m["tasks"].values()):
        return "field 'tasks' is not an object of task -> row count"
    files = m["files"]
    if not isinstance(files, dict) or not all(isinstance(v, dict) for v in files.values()):
        return "field 'files' is not an object of path -> {sha256, bytes}"
    for rel, meta in files.items():
        if not _inside(rel) or rel == MANIFEST:
            return f"files lists {rel!r}, a path outside the version folder (or the manifest itself)"
        if not isinstance(meta.get("sha256"), str) or not _HEX64.match(meta["sha256"]):
            return f"files[{rel!r}] has no sha256 hex digest"
        if not isinstance(meta.get("bytes"), int) or isinstance(meta["bytes"], bool):
            return f"files[{rel!r}] has no byte count"
    configs = m["configs"]
    if not isinstance(configs, dict) or not configs or not all(isinstance(c, dict) for c in configs.values()):
        return "field 'configs' is not an object of config -> {data_files, files, rows}"
    for name, config in configs.items():
        listed = config.get("files")
        if not isinstance(listed, list) or not isinstance(config.get("data_files"), str):
            return f"configs[{name!r}] has no files list or data_files pattern"
        if not _inside(config["data_files"]):
            return f"configs[{name!r}].data_files {config['data_files']!r} points outside the version folder"
        for rel in listed:
            if not _inside(rel) or rel not in files:
                return f"configs[{name!r}] lists {rel!r}, which is outside the version folder or not in files"
        if not isinstance(config.get("rows"), int):
            return f"configs[{name!r}].rows is not a row count"
    if not isinstance(m.get("recipe", {}), dict):
        return "field 'recipe' is not an object"
    if m["manifest_sha256"] != manifest_digest(m):
        return ("manifest_sha256 does not match the manifest's fields: the manifest was edited after the version "
                "was written")
    return None


def load_manifest(version_dir: Path) -> dict[str, Any]:
    """Read manifest.json and check it on its own: fields and types, paths inside the folder, its digest, and
    its version against the folder's name (when the folder is named like a version).

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
    problem = _manifest_problem(manifest)
    if problem:
        raise StoreError(f"{path}: {problem}: the version is corrupt")
    if _VERSION_RE.match(version_dir.name) and manifest["version"] != version_dir.name:
        raise StoreError(f"{path}: says version {manifest['version']} but lives in folder {version_dir.name}: the "
                         "version is corrupt (a folder is never renamed)")
    return manifest


def is_version_name(text: str) -> bool:
    """Whether `text` names a version ("v1", "v2", ...), as folders and Hub tags are named."""
    return _VERSION_RE.match(text) is not None


def resolve_root(root: str | Path | None = None) -> Path:
    """The store folder: `root` when given, else $RATIONALE_STORE, else ./store (StoreConfig's default)."""
    return Path(root if root is not None else os.environ.get("RATIONALE_STORE", "store"))


def list_versions(root: str | Path, name: str) -> list[dict[str, Any]]:
    """Versions of dataset `name`, oldest first, read from the version folders' manifests (the source of truth)."""
    dataset_dir = Path(root) / name
    found = []
    for child in dataset_dir.iterdir() if dataset_dir.is_dir() else []:
        m = _VERSION_RE.match(child.name)
        if m and child.is_dir():
            manifest = load_manifest(child)
            if manifest["name"] != name:
                raise StoreError(f"{child / MANIFEST}: names dataset {manifest['name']!r} but lives under {name!r}: "
                                 "the version is corrupt")
            found.append((int(m.group(1)), _index_entry(manifest)))
    return [entry for _, entry in sorted(found, key=lambda t: t[0])]


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
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name):
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
    if _VERSION_RE.match(want):
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
    rows = _with_derived(_read_files(folder, manifest["configs"][config]["files"]))
    return validate(rows, "rows", where=str(folder)), manifest


def _check_files(folder: Path, manifest: dict[str, Any], hint: str = "do not use this copy") -> None:
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


def _read_files(folder: Path, files: list[str]) -> pl.DataFrame:
    frames = []
    for rel in files:
        f = folder / rel
        try:
            frames.append(pl.read_parquet(f))
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise StoreError(f"{f}: unreadable Parquet ({str(exc).splitlines()[0]}); the version is corrupt: "
                             "`rationale pull` it again or rebuild it") from None
    return pl.concat(frames, how="vertical_relaxed") if frames else table_schema("rows").empty()


def _derive_problem(folder: Path, manifest: dict[str, Any], rows: pl.DataFrame) -> str | None:
    """The first manifest field that disagrees with the data (rows, tasks, configs, columns, rows_sha256)."""
    if manifest["rows"] != rows.height:
        return f"says {manifest['rows']} rows, the data has {rows.height}"
    tasks = dict(rows.group_by("task").len().sort("task").iter_rows())
    if manifest["tasks"] != tasks:
        return f"says tasks {manifest['tasks']}, the data has {tasks}"
    # a version older than a column added to the schema lists no such column (validate filled it with nulls)
    listed = manifest.get("columns", rows.columns)
    columns = [c for c in rows.columns if c in listed or c not in table_schema("rows").added]
    if listed != columns:
        return f"says columns {manifest['columns']}, the data has {columns}"
    if manifest.get("rows_sha256", rows_digest(rows)) != rows_digest(rows):
        return "rows_sha256 does not match the rows"
    if manifest["configs"].get(DEFAULT_CONFIG, {}).get("files") is None:
        return f"has no {DEFAULT_CONFIG!r} config"
    conversational = manifest["configs"].get(CONVERSATIONAL_CONFIG, {}).get("files") or []
    data_files = sorted(rel for rel in manifest["files"] if rel.endswith(".parquet") and rel not in conversational)
    if sorted(manifest["configs"][DEFAULT_CONFIG]["files"]) != data_files:
        return f"the {DEFAULT_CONFIG!r} config does not list every data file"
    for name, config in manifest["configs"].items():
        # `datasets` loads a config by its pattern, so the pattern must match exactly the listed files
        matched = sorted(p.relative_to(folder).as_posix() for p in folder.glob(config["data_files"]) if p.is_file())
        if matched != sorted(config["files"]):
            return f"config {name!r}: data_files {config['data_files']!r} matches {matched}, not its files"
        part = rows if name == DEFAULT_CONFIG else _read_files(folder, config["files"])
        if config["rows"] != part.height:
            return f"config {name!r} says {config['rows']} rows, its files hold {part.height}"
        if name == CONVERSATIONAL_CONFIG:  # the same rows, only laid out as messages
            if not part.sort(_SORT_KEY).equals(conversational_rows(rows).select(part.columns)):
                return f"config {name!r} does not hold the default config's rows as messages"
            continue
        if name != DEFAULT_CONFIG and part.height and part.get_column("task").n_unique() != 1:
            return f"config {name!r} mixes tasks {sorted(part.get_column('task').unique().to_list())}"
    return None


def verify(path: str | Path) -> dict[str, Any]:
    """Check a version folder: the manifest on its own (`load_manifest`), every file against it, no unlisted
    file, the manifest's fields re-derived from the data, and the content hash against the rows and recipe.

    Files under .cache/ (huggingface_hub's download bookkeeping) and the Hub's .gitattributes are ignored; any
    other file the manifest does not list is an error, since `datasets` could pick it up.

    Returns:
        The manifest.

    Raises:
        StoreError: naming the first missing, altered or unexpected file, a manifest field that disagrees with
            the data, or a content hash mismatch.
    """
    folder = Path(path)
    manifest = load_manifest(folder)
    _check_files(folder, manifest)
    listed = set(manifest["files"]) | {MANIFEST}
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder).as_posix()
        if file.is_file() and rel not in listed and not rel.startswith(".cache/") and rel != ".gitattributes":
            raise StoreError(f"{file}: not listed in {folder / MANIFEST} (unexpected file in a version folder)")
    rows = validate(_with_derived(_read_files(folder, manifest["configs"][DEFAULT_CONFIG]["files"])) if
                    DEFAULT_CONFIG in manifest["configs"] else table_schema("rows").empty(), "rows", where=str(folder))
    problem = _derive_problem(folder, manifest, rows.sort(_SORT_KEY))
    if problem:
        raise StoreError(f"{folder / MANIFEST}: {problem}; the manifest or data was altered")
    found = content_hash(rows, manifest.get("recipe") or {})
    if found != manifest["content_hash"]:
        raise StoreError(f"{folder / MANIFEST}: content_hash {manifest['content_hash'][:12]} does not match the "
                         f"rows and recipe ({found[:12]}); the manifest or data was altered")
    return manifest


# ---------------------------------------------------------------- comparing
def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def diff_versions(a: str | Path, b: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Compare two versions: rows added/removed per task (a row is (qid, sample_idx, completion)),
    funnel changes per task and stage, and changed recipe settings and teacher (flattened dotted keys).

    Both versions are verified first (`verify`): a diff of corrupt data would be a wrong answer, not an error."""
    for ref in (a, b):
        verify(resolve(ref, root))
    rows_a, man_a = read_version(a, root)
    rows_b, man_b = read_version(b, root)
    key = ["qid", "sample_idx", "completion"]
    added = rows_b.join(rows_a.select(key), on=key, how="anti").group_by("task").len(name="added")
    removed = rows_a.join(rows_b.select(key), on=key, how="anti").group_by("task").len(name="removed")
    tasks = pl.concat([rows_a.select("task"), rows_b.select("task")]).unique()
    per_task = (
        tasks.join(added, on="task", how="left").join(removed, on="task", how="left")
        .join(rows_a.group_by("task").len(name="rows_a"), on="task", how="left")
        .join(rows_b.group_by("task").len(name="rows_b"), on="task", how="left")
        .fill_null(0).sort("task")
    )
    funnel: dict[str, dict[str, list[int | None]]] = {}
    fa, fb = man_a.get("funnel") or {}, man_b.get("funnel") or {}
    for task in sorted(set(fa) | set(fb)):
        stages = sorted(set(fa.get(task, {})) | set(fb.get(task, {})))
        changed = {s: [fa.get(task, {}).get(s), fb.get(task, {}).get(s)] for s in stages
                   if fa.get(task, {}).get(s) != fb.get(task, {}).get(s)}
        if changed:
            funnel[task] = changed
    settings: dict[str, list[Any]] = {}
    for section in ("recipe", "teacher"):
        flat_a, flat_b = _flatten(man_a.get(section) or {}, section), _flatten(man_b.get(section) or {}, section)
        for k in sorted(set(flat_a) | set(flat_b)):
            if flat_a.get(k) != flat_b.get(k):
                settings[k] = [flat_a.get(k), flat_b.get(k)]
    return {
        "a": {"version": man_a["version"], "content_hash": man_a["content_hash"], "rows": rows_a.height},
        "b": {"version": man_b["version"], "content_hash": man_b["content_hash"], "rows": rows_b.height},
        "same_content": man_a["content_hash"] == man_b["content_hash"],
        "tasks": per_task.to_dicts(),
        "funnel": funnel,
        "settings": settings,
    }
