"""Dataset store: ledger -> rows, content-hashed immutable versions that `datasets` loads, resolve/verify/diff."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from builder import store
from builder.cli import main
from builder.errors import SchemaError, StoreError
from builder.schemas import table_schema
from tests.helpers import STORE_RECIPE, build_version, load_version_dataset, make_ledger, make_stats


# ---------------------------------------------------------------- rows
def test_rows_from_ledger_keeps_correct_rows_in_fine_tune_cot_and_chat_formats():
    ledger = make_ledger(tasks=("multiarith",), questions=2, samples=3)
    rows = store.rows_from_ledger(ledger)
    kept = ledger.filter(pl.col("state") == "kept")
    assert rows.height == kept.height == 4
    assert rows.columns == table_schema("rows").names
    row = rows.filter((pl.col("qid") == "multiarith-000") & (pl.col("sample_idx") == 1)).row(0, named=True)
    rationale = "First we look at multiarith item 0. Sample 1 reasons."
    assert row["rationale"] == rationale  # stripped
    assert row["answer"] == "2" and row["gold"] == "2"
    assert row["prompt"] == "multiarith question 0? ###"
    assert row["completion"] == f" {rationale} --> 2"
    assert row["messages"] == [
        {"role": "user", "content": "multiarith question 0?"},
        {"role": "assistant", "content": f"{rationale}\nTherefore, the answer is 2."},
    ]
    assert (row["seed"], row["teacher"], row["task"]) == (1, "tiny-llama", "multiarith")
    # only kept samples, never a wrong one
    keys = set(zip(rows["qid"], rows["sample_idx"], strict=True))
    assert keys == set(zip(kept["qid"], kept["sample_idx"], strict=True))


def test_rows_from_ledger_rejects_a_kept_row_without_answer():
    ledger = make_ledger(tasks=("multiarith",), questions=1).with_columns(pl.lit(None, pl.String).alias("pred"))
    expect = r"2 kept row\(s\) have no extracted answer \(column 'pred'\), first qid=multiarith-000 sample_idx=1"
    with pytest.raises(StoreError, match=expect):
        store.rows_from_ledger(ledger)


# ---------------------------------------------------------------- writing + loading
def test_version_loads_with_datasets_default_and_per_task_configs(tmp_path):
    info = build_version(tmp_path / "store", shard_rows=3)
    assert info.created and info.version == "v1" and info.path == tmp_path / "store" / "demo" / "v1"
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert list(manifest["configs"]) == ["default", "conversational", "coin_flip", "multiarith"]
    rows = store.rows_from_ledger(make_ledger())
    ds = load_version_dataset(info.path, tmp_path)
    assert ds.num_rows == rows.height == 16
    loaded = sorted(zip(ds["qid"], ds["sample_idx"], strict=True))
    assert loaded == sorted(zip(rows["qid"], rows["sample_idx"], strict=True))
    assert "messages" not in ds.features  # one TRL dataset type per config: default is standard prompt/completion
    chat = load_version_dataset(info.path, tmp_path, "conversational")
    prompt = chat.features["prompt"]  # plain List of {role, content} strings, the conversational type TRL reads
    assert type(prompt).__name__ == "List" and prompt.feature["role"].dtype == "string"
    assert chat.num_rows == 16 and chat[0]["completion"][0]["role"] == "assistant"
    for task in ("multiarith", "coin_flip"):
        part = load_version_dataset(info.path, tmp_path, task)
        assert set(part["task"]) == {task}
        assert part.num_rows == rows.filter(pl.col("task") == task).height == 8
    # sharded: 8 rows per task at 3 rows per file -> 3 files per task
    assert len(list((info.path / "data" / "multiarith").glob("train-*-of-00003.parquet"))) == 3
    header = (info.path / "README.md").read_text().split("---")[1]
    assert "config_name: default" in header and "dataset_info:" in header


def test_single_task_version_has_one_default_config_that_loads(tmp_path):
    info = build_version(tmp_path / "store", make_ledger(tasks=("multiarith",)))
    assert (info.path / "data" / "train-00000-of-00001.parquet").is_file()
    assert list(store.load_manifest(info.path)["configs"]) == ["default", "conversational"]
    assert load_version_dataset(info.path, tmp_path).num_rows == 8


def test_manifest_records_hashes_recipe_teacher_sampling_funnel_and_decontamination(tmp_path):
    info = build_version(tmp_path / "store")
    m = store.load_manifest(info.path)
    assert m["content_hash"] == info.content_hash and m["version"] == "v1" and m["tool_version"] == "test"
    assert m["recipe"] == STORE_RECIPE
    assert not {"sampling_settings", "prompt_settings", "curation_settings", "settings"} & set(m)  # the recipe, once
    assert m["teacher"] == {"model": "tiny-llama", "revision": None, "backend": "vllm"}
    assert m["sampling"] == {"prompt_tokens": 288, "completion_tokens": 480, "seconds": 2.5}
    assert m["funnel"]["coin_flip"]["sampled"] == 12 and m["funnel"]["coin_flip"]["kept"] == 8
    assert m["decontamination"]["eval_questions"] == 20
    assert m["created_at"].endswith("+00:00")
    files = {p.relative_to(info.path).as_posix() for p in info.path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m["files"]) == files
    assert {"README.md", "assets/funnel.png", "assets/rationale_lengths.png"} <= files
    for rel, meta in m["files"].items():
        assert store.sha256_file(info.path / rel) == meta["sha256"]


# ---------------------------------------------------------------- content hash
def test_same_inputs_give_the_same_content_hash_in_any_store_and_machine_paths(tmp_path):
    a = build_version(tmp_path / "a")
    moved = {**STORE_RECIPE, "work_dir": "/other/runs", "store": {**STORE_RECIPE["store"], "root": "/elsewhere"},
             "tasks": {**STORE_RECIPE["tasks"], "benchmarks_dir": "/mnt/b"}}
    b = build_version(tmp_path / "b", recipe=moved)
    shuffled = make_ledger().sample(fraction=1.0, shuffle=True, seed=7)
    c = build_version(tmp_path / "c", shuffled)
    assert a.content_hash == b.content_hash == c.content_hash


@pytest.mark.parametrize("change", ["rationale", "answer", "drop_row", "temperature", "teacher"])
def test_any_data_or_recipe_change_changes_the_content_hash(tmp_path, change):
    rows = store.rows_from_ledger(make_ledger())
    recipe = json.loads(json.dumps(STORE_RECIPE))
    if change == "rationale":
        rows = rows.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.col("rationale") + " ")
                                 .otherwise(pl.col("rationale")).alias("rationale"))
    elif change == "answer":
        rows = rows.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("3")).otherwise(pl.col("answer"))
                                 .alias("answer"))
    elif change == "drop_row":
        rows = rows.slice(1)
    elif change == "temperature":
        recipe["sampling"]["temperature"] = 0.8
    elif change == "teacher":
        recipe["teacher"]["revision"] = "abc123"
    base = store.content_hash(store.rows_from_ledger(make_ledger()), STORE_RECIPE)
    assert store.content_hash(rows, recipe) != base


# ---------------------------------------------------------------- immutability, no-op, index, lock
def test_rewrite_of_same_content_is_a_no_op_and_new_content_is_a_new_version(tmp_path):
    root = tmp_path / "store"
    v1 = build_version(root)
    before = {p: (p.stat().st_mtime_ns, store.sha256_file(p)) for p in v1.path.rglob("*") if p.is_file()}
    again = build_version(root)
    assert not again.created and again.version == "v1" and again.content_hash == v1.content_hash
    assert sorted(p.name for p in (root / "demo").iterdir() if p.is_dir()) == ["v1"]
    v2 = build_version(root, make_ledger(salt=" carefully"))
    assert v2.created and v2.version == "v2" and v2.content_hash != v1.content_hash
    after = {p: (p.stat().st_mtime_ns, store.sha256_file(p)) for p in v1.path.rglob("*") if p.is_file()}
    assert after == before  # v1 untouched
    assert all(p.stat().st_mode & 0o222 == 0 for p in v2.path.rglob("*") if p.is_file())  # files are read-only
    index = json.loads((root / "demo" / "versions.json").read_text())["versions"]
    assert [(v["version"], v["content_hash"]) for v in index] == [("v1", v1.content_hash), ("v2", v2.content_hash)]
    assert [v["version"] for v in store.list_versions(root, "demo")] == ["v1", "v2"]
    assert not list((root / "demo").glob(".tmp-*"))


def test_a_failed_write_leaves_no_version_and_no_temp_folder(tmp_path, monkeypatch):
    import builder.card

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(builder.card, "write_card", broken)
    with pytest.raises(OSError, match="disk full"):
        build_version(tmp_path / "store")
    assert [p.name for p in (tmp_path / "store" / "demo").iterdir()] == [".lock"]


def test_concurrent_writers_of_one_store_get_distinct_versions(tmp_path):
    root = tmp_path / "store"
    results, errors = [], []

    def write(salt: str) -> None:
        try:
            results.append(build_version(root, make_ledger(salt=salt), lock_timeout_s=60))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s,)) for s in (" one", " two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.version for r in results) == ["v1", "v2"]
    for r in results:
        store.verify(r.path)


def test_a_held_lock_makes_the_second_build_fail_with_a_clear_message(tmp_path):
    dataset_dir = tmp_path / "store" / "demo"
    dataset_dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import filelock, sys, time; l = filelock.FileLock(sys.argv[1]); l.acquire(); "
         "print('held', flush=True); time.sleep(30)", str(dataset_dir / ".lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=r"another build is writing this dataset .* after 0.3s"):
            build_version(tmp_path / "store", lock_timeout_s=0.3)
    finally:
        holder.kill()
        holder.wait()
    assert build_version(tmp_path / "store").created  # lock released with its process


# ---------------------------------------------------------------- resolve, read, verify
def test_resolve_by_version_latest_hash_prefix_and_path(tmp_path):
    root = tmp_path / "store"
    v1 = build_version(root)
    v2 = build_version(root, make_ledger(salt="!"))
    assert store.resolve("demo@v1", root) == v1.path
    assert store.resolve("demo@latest", root) == store.resolve("demo", root) == v2.path
    assert store.resolve(f"demo@{v1.content_hash[:8]}", root) == v1.path
    assert store.resolve(v2.path) == v2.path
    with pytest.raises(StoreError, match=r"demo@v7: no such version .* versions: v1 \(.*\), v2"):
        store.resolve("demo@v7", root)
    with pytest.raises(StoreError, match="no dataset 'other'"):
        store.resolve("other@v1", root)


def test_read_version_returns_the_written_rows_and_manifest(tmp_path):
    info = build_version(tmp_path / "store", shard_rows=5)
    rows, manifest = store.read_version("demo@v1", tmp_path / "store")
    expected = store.rows_from_ledger(make_ledger())
    assert_frame_equal(rows.sort("task", "qid", "sample_idx"), expected)
    assert manifest["content_hash"] == info.content_hash
    part, _ = store.read_version(info.path, config="coin_flip")
    assert part.height == 8 and set(part["task"]) == {"coin_flip"}


@pytest.mark.parametrize("tamper", ["data", "readme", "extra_file", "missing", "manifest_hash"])
def test_verify_names_the_altered_file(tmp_path, tamper):
    info = build_version(tmp_path / "store")
    assert store.verify(info.path)["content_hash"] == info.content_hash
    data = sorted((info.path / "data").rglob("*.parquet"))[0]
    if tamper == "data":
        data.chmod(0o644)
        rows = pl.read_parquet(data).with_columns(pl.lit("2").alias("answer"))
        rows.write_parquet(data)
        expect = rf"{data}: sha256 .* does not match"
    elif tamper == "readme":
        (info.path / "README.md").chmod(0o644)
        with open(info.path / "README.md", "a") as fh:
            fh.write("\nextra line\n")
        expect = r"README.md: sha256"
    elif tamper == "extra_file":
        (info.path / "data" / "multiarith" / "train-00009-of-00009.parquet").write_bytes(data.read_bytes())
        expect = r"train-00009-of-00009.parquet: not listed"
    elif tamper == "missing":
        data.unlink()
        expect = rf"{data}: missing"
    else:
        path = info.path / "manifest.json"
        path.chmod(0o644)
        m = json.loads(path.read_text())
        m["content_hash"] = "0" * 64
        m["manifest_sha256"] = store.manifest_digest(m)  # an editor who also recomputes the manifest's digest
        path.write_text(json.dumps(m))
        expect = r"manifest.json: content_hash 000000000000 does not match"
    with pytest.raises(StoreError, match=expect):
        store.verify(info.path)


def _leaves(value, path=()):
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _edit(manifest: dict, path: tuple) -> None:
    *parents, last = path
    holder = manifest
    for key in parents:
        holder = holder[key]
    old = holder[last]
    holder[last] = (old + 1 if isinstance(old, int) and not isinstance(old, bool) else
                    f"{old}x" if isinstance(old, str) else "edited" if old is None else not old
                    if isinstance(old, bool) else [old])


def _rewrite(folder, change) -> None:
    path = folder / "manifest.json"
    path.chmod(0o644)
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def test_a_manifest_edited_in_any_field_is_detected(tmp_path):
    info = build_version(tmp_path / "store")
    original = (info.path / "manifest.json").read_text()
    leaves = [p for p in _leaves(json.loads(original)) if p]
    assert len(leaves) > 50 and ("recipe", "sampling", "seed") in leaves and ("funnel",) not in leaves
    for leaf in leaves:
        _rewrite(info.path, lambda m, leaf=leaf: _edit(m, leaf))
        with pytest.raises(StoreError, match="manifest.json: "):
            store.verify(info.path)
        (info.path / "manifest.json").write_text(original)
    assert store.verify(info.path)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(rows=m["rows"] + 1), r"says \d+ rows, the data has"),
    (lambda m: m["tasks"].update(extra=1), r"says tasks .*extra"),
    (lambda m: m.update(version="v7"), r"says version v7 but lives in folder v1"),
    (lambda m: m["configs"]["default"].update(rows=1), r"config 'default' says 1 rows"),
    (lambda m: m["configs"]["default"].update(data_files="data/multiarith/*"),
     r"data_files 'data/multiarith/\*' matches"),
    (lambda m: m["files"].update({"../../outside.txt": {"sha256": "0" * 64, "bytes": 1}}),
     r"files lists '\.\./\.\./outside\.txt', a path outside the version folder"),
    (lambda m: m["files"].update({"/etc/hostname": {"sha256": "0" * 64, "bytes": 1}}), r"outside the version folder"),
    (lambda m: m.update(files="x"), r"field 'files' is not an object"),
    (lambda m: m.update(configs={"default": {"files": ["../x.parquet"], "data_files": "x", "rows": 1}}),
     r"outside the version folder"),
])
def test_a_recomputed_digest_does_not_hide_a_manifest_that_disagrees_with_the_data(tmp_path, change, message):
    info = build_version(tmp_path / "store")

    def resign(m):
        change(m)
        m["manifest_sha256"] = store.manifest_digest(m)
    _rewrite(info.path, resign)
    with pytest.raises(StoreError, match=message):
        store.verify(info.path)


def test_a_file_listed_outside_the_version_folder_with_its_real_hash_is_refused(tmp_path):
    info = build_version(tmp_path / "store")
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of the dataset")
    rel = os.path.relpath(outside, info.path)

    def add(m):
        m["files"][rel] = {"sha256": store.sha256_file(outside), "bytes": outside.stat().st_size}
        m["manifest_sha256"] = store.manifest_digest(m)
    _rewrite(info.path, add)
    with pytest.raises(StoreError, match=r"a path outside the version folder"):
        store.verify(info.path)
    with pytest.raises(StoreError, match=r"a path outside the version folder"):
        store.list_versions(tmp_path / "store", "demo")


@pytest.mark.parametrize("text, message", [
    ("null", "expected a JSON object, found NoneType"),
    ("[1, 2]", "expected a JSON object, found list"),
])
def test_a_manifest_that_is_not_an_object_is_corrupt(tmp_path, text, message):
    info = build_version(tmp_path / "store")
    (info.path / "manifest.json").chmod(0o644)
    (info.path / "manifest.json").write_text(text)
    with pytest.raises(StoreError, match=message):
        store.verify(info.path)


def test_ref_with_nothing_after_the_at_is_refused(tmp_path):
    build_version(tmp_path / "store")
    with pytest.raises(StoreError, match=r"demo@: nothing after '@'"):
        store.resolve("demo@", tmp_path / "store")


# ---------------------------------------------------------------- diff + CLI
def test_diff_reports_rows_added_removed_per_task_funnel_and_settings(tmp_path):
    root = tmp_path / "store"
    build_version(root)
    ledger = make_ledger()
    # v2: one multiarith row changes its rationale (1 added + 1 removed), one coin_flip row is dropped
    ledger = ledger.with_columns(
        pl.when((pl.col("qid") == "multiarith-001") & (pl.col("sample_idx") == 0))
        .then(pl.lit("A new way of thinking.")).otherwise(pl.col("rationale")).alias("rationale"),
        pl.when((pl.col("qid") == "coin_flip-002") & (pl.col("sample_idx") == 0))
        .then(pl.lit("dropped")).otherwise(pl.col("state")).alias("state"),
    )
    recipe = json.loads(json.dumps(STORE_RECIPE))
    recipe["sampling"]["temperature"] = 0.9
    build_version(root, ledger, recipe=recipe)
    d = store.diff_versions("demo@v1", "demo@v2", root)
    by_task = {r["task"]: r for r in d["tasks"]}
    assert by_task["multiarith"] == {"task": "multiarith", "added": 1, "removed": 1, "rows_a": 8, "rows_b": 8}
    assert by_task["coin_flip"] == {"task": "coin_flip", "added": 0, "removed": 1, "rows_a": 8, "rows_b": 7}
    assert d["funnel"]["coin_flip"]["kept"] == [8, 7]
    assert d["settings"]["recipe.sampling.temperature"] == [0.7, 0.9]
    assert not d["same_content"]


def test_cli_versions_show_diff(tmp_path, capsys):
    root = tmp_path / "store"
    v1 = build_version(root)
    build_version(root, make_ledger(salt="?"))
    assert main(["versions", "demo", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v2" in out and v1.content_hash[:12] in out
    assert main(["show", "demo@v1", "--store", str(root)]) == 0
    out = capsys.readouterr().out
    assert v1.content_hash in out and "tiny-llama" in out and "66.7%" in out
    assert main(["diff", "demo@v1", "demo@v2", "--store", str(root), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert sum(r["added"] for r in d["tasks"]) == 16 and sum(r["removed"] for r in d["tasks"]) == 16
    assert main(["show", "demo@v9", "--store", str(root)]) == 2
    assert "demo@v9: no such version" in capsys.readouterr().err


def test_versions_written_before_the_recipe_was_stored_once_still_show_diff_and_verify(tmp_path, capsys):
    """Older manifests also hold sampling_settings / prompt_settings / curation_settings copies of the recipe."""
    root = tmp_path / "store"
    v1 = build_version(root)
    recipe = json.loads(json.dumps(STORE_RECIPE))
    recipe["sampling"]["temperature"] = 0.9
    build_version(root, recipe=recipe)
    path = v1.path / "manifest.json"
    old = json.loads(path.read_text())
    old |= {"sampling_settings": {**old["recipe"]["sampling"], "temperature": 0.5},
            "prompt_settings": old["recipe"]["prompt"], "curation_settings": {"minhash": {"num_perm": 64}}}
    old["manifest_sha256"] = store.manifest_digest(old)
    path.chmod(0o644)
    path.write_text(json.dumps(old))
    assert store.verify(v1.path)["content_hash"] == v1.content_hash
    assert main(["show", "demo@v1", "--store", str(root)]) == 0
    assert "temperature=0.7" in capsys.readouterr().out  # from the recipe, not the stale copy
    d = store.diff_versions("demo@v1", "demo@v2", root)
    assert d["settings"] == {"recipe.sampling.temperature": [0.7, 0.9]}


def test_the_stored_completion_is_what_the_student_grader_reads_back():
    """Round trip of the Fine-tune-CoT format: store writes it, grade's "student" mode parses the answer back."""
    from builder.grade import grade_frame
    from builder.prompts import student_answer

    rows = store.rows_from_ledger(make_ledger(tasks=("multiarith",)))
    graded = grade_frame(rows.select(pl.lit("number").alias("answer_type"), "gold",
                                     pl.col("completion").alias("rationale")), mode="student")
    assert graded["pred"].to_list() == rows["answer"].to_list()
    assert graded["correct"].all() and (graded["grade_status"] == "ok").all()
    assert [student_answer(c).strip() for c in rows["completion"]] == rows["answer"].to_list()


# ---------------------------------------------------------------- reasoning columns leave old hashes alone
def test_rows_digest_of_rows_without_traces_is_the_digest_before_the_reasoning_column():
    import hashlib

    rows = store.rows_from_ledger(make_ledger())
    assert "reasoning" in rows.columns and rows["reasoning"].null_count() == rows.height
    before = rows.drop("reasoning").sort("task", "qid", "sample_idx").write_ndjson()  # the pre-issue-14 digest
    assert store.rows_digest(rows) == hashlib.sha256(before.encode()).hexdigest()
    assert store.rows_digest(rows.drop("reasoning")) == store.rows_digest(rows)  # an old version's rows

    traced = rows.with_columns(reasoning=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("think first")))
    assert store.rows_digest(traced) != store.rows_digest(rows)
    assert store.content_hash(traced, STORE_RECIPE) != store.content_hash(rows, STORE_RECIPE)


@pytest.mark.parametrize("section, field, value", [
    ("teacher", "reasoning_parser", "deepseek_r1"),
    ("prompt", "chat_template_kwargs", {"enable_thinking": True}),
    ("sampling", "max_thinking_tokens", 256),
    ("sampling", "structured_outputs_regex", "<think>.*</think>.*"),
])
def test_canonical_recipe_hashes_a_reasoning_field_only_once_set(section, field, value):
    from builder.recipe import Recipe

    raw = {"name": "demo", "tasks": {"items": [{"name": "multiarith"}]},
           "teacher": {"model": "tiny-llama", "reasoning_parser": "deepseek_r1" if section == "sampling" else None}}
    dump = Recipe.model_validate(raw).model_dump()
    assert field in dump[section]
    canonical = store.canonical_recipe(dump)
    old = {k: ({f: v for f, v in part.items() if f != field} if k == section else part) if isinstance(part, dict)
           else part for k, part in dump.items()}  # the same recipe written before the field existed
    assert field not in canonical[section] and store.canonical_recipe(old) == canonical

    dump[section][field] = value
    assert store.canonical_recipe(dump)[section][field] == value
    rows = store.rows_from_ledger(make_ledger(tasks=("multiarith",)))
    assert store.content_hash(rows, dump) != store.content_hash(rows, old)


# ---------------------------------------------------------------- bounded memory: the digest in batches, lazy rows
# rows_digest of _pinned_rows as the code of 926bc94 computed it (one NDJSON string of the whole table): a version
# written before the digest was fed in batches keeps its content hash.
PINNED_ROWS_DIGEST = {"plain": "66ee0567692af29712ee572183c4759ad1a3b110cc21339ae5a531b9fb4dac7d",
                      "traced": "426e36e34aa62d94a3a08a216c038ab702605c796bef28fb4cf79c4d86c6c497"}


def _pinned_rows(kind: str) -> pl.DataFrame:
    """16 rows with JSON escapes and non-ASCII text; `traced`: two rows have a reasoning trace (else all null)."""
    rows = store.rows_from_ledger(make_ledger(salt=' "quoted" é\t\\ ✓'))
    if kind == "traced":
        rows = rows.with_columns(reasoning=pl.when(pl.col("sample_idx") == 1).then(pl.lit("think\n first")))
    return rows


@pytest.mark.parametrize("kind", ["plain", "traced"])
@pytest.mark.parametrize("batch_rows", [1, 3, 16, 10_000])
def test_the_rows_digest_fed_in_batches_is_the_digest_of_the_whole_table(kind, batch_rows):
    rows = _pinned_rows(kind)
    assert store.rows_digest(rows.reverse(), batch_rows=batch_rows) == PINNED_ROWS_DIGEST[kind]
    if kind == "plain":  # the all-null added column is left out, whether present or not
        assert rows["reasoning"].null_count() == rows.height
        assert store.rows_digest(rows.drop("reasoning"), batch_rows=batch_rows) == PINNED_ROWS_DIGEST[kind]


def test_write_and_verify_serialise_the_rows_in_batches_never_whole(tmp_path, monkeypatch):
    """No NDJSON text of the whole table (the 564 MB table that peaked at 2.35 GB): every slice is bounded."""
    write_ndjson = pl.DataFrame.write_ndjson
    sizes = []

    def bounded(frame, *args, **kwargs):
        sizes.append(frame.height)
        assert frame.height <= 4, f"write_ndjson of {frame.height} rows"
        return write_ndjson(frame, *args, **kwargs)

    monkeypatch.setattr(store.hashing, "DIGEST_BATCH_ROWS", 4)
    monkeypatch.setattr(pl.DataFrame, "write_ndjson", bounded)
    info = build_version(tmp_path / "store")
    assert store.verify(info.path)["content_hash"] == info.content_hash
    assert sizes and max(sizes) <= 4


def _ray_parts(rows: pl.DataFrame, folder, parts: int = 5, *, url: bool = False) -> store.Parts:
    """The rows as a Ray cluster leaves them: shuffled parquet parts, in an older layout (no `reasoning` column,
    sample_idx as int64); `url`: named by file:// URLs."""
    folder.mkdir()
    shuffled = rows.drop("reasoning").with_columns(pl.col("sample_idx").cast(pl.Int64))
    shuffled = shuffled.sample(fraction=1.0, shuffle=True, seed=3)
    files = []
    for i, part in enumerate(shuffled.iter_slices(-(-rows.height // parts))):
        part.write_parquet(folder / f"part-{i:03d}.parquet")
        files.append((folder / f"part-{i:03d}.parquet").as_uri() if url else folder / f"part-{i:03d}.parquet")
    return store.Parts(files, "rows")


def _same_version(a: store.VersionInfo, b: store.VersionInfo) -> None:
    """The same content hash, manifest fields, shards (byte for byte), rows and card (but for its time)."""
    assert b.created and b.content_hash == a.content_hash
    m_a, m_b = store.verify(a.path), store.verify(b.path)
    for key in ("rows", "tasks", "configs", "columns", "teacher", "rows_sha256"):
        assert m_b[key] == m_a[key], key
    data = {rel: meta for rel, meta in m_a["files"].items() if rel.endswith(".parquet")}
    assert len(data) > 6 and data == {rel: m_b["files"][rel] for rel in data}  # the same shards, byte for byte
    for config in m_a["configs"]:
        if config != "conversational":
            assert_frame_equal(store.read_version(b.path, config=config)[0],
                               store.read_version(a.path, config=config)[0])

    def card(info):  # the same card but for the time it was written
        return re.sub(r"\d{4}-\d\d-\d\dT[\d:]+\+00:00", "<created>", (info.path / "README.md").read_text())
    assert card(b) == card(a)


@pytest.mark.parametrize("url", [False, True])
@pytest.mark.parametrize("bucket_bytes", [1 << 30, 2_000])
def test_rows_parts_give_the_same_version_as_the_data_frame(tmp_path, monkeypatch, bucket_bytes, url):
    """Small buckets force the range partition (several buckets); one huge bucket does not."""
    monkeypatch.setattr(store.sort, "BUCKET_BYTES", bucket_bytes)
    monkeypatch.setattr(store.parquet, "BATCH_BYTES", 3_000)  # several batches per part
    ledger = make_ledger(questions=30, samples=3)
    rows = store.rows_from_ledger(ledger)
    eager = build_version(tmp_path / "eager", ledger, shard_rows=7)
    parts = store.write_version(_ray_parts(rows, tmp_path / "parts", url=url), root=tmp_path / "parts-store",
                                name="demo", recipe=STORE_RECIPE, stats=make_stats(ledger), tool_version="test",
                                shard_rows=7)
    _same_version(eager, parts)


def test_ledger_parts_give_the_same_version_as_rows_from_ledger(tmp_path, monkeypatch):
    """`Parts(files, "ledger")`: the kept rows of ledger parts (every state, shuffled), made into rows batch by batch,
    are the version `write_version(rows_from_ledger(ledger))` writes."""
    monkeypatch.setattr(store.sort, "BUCKET_BYTES", 2_000)
    monkeypatch.setattr(store.parquet, "BATCH_BYTES", 3_000)
    ledger = make_ledger(questions=30, samples=3)
    assert ledger.get_column("state").n_unique() > 1  # kept and dropped rows: the parts are filtered
    eager = build_version(tmp_path / "eager", ledger, shard_rows=7)
    (tmp_path / "ledger").mkdir()
    files = []
    for i, part in enumerate(ledger.sample(fraction=1.0, shuffle=True, seed=5).iter_slices(-(-ledger.height // 4))):
        files.append(tmp_path / "ledger" / f"part-{i:03d}.parquet")
        part.write_parquet(files[-1])
    parts = store.write_version(store.Parts(files, "ledger"), root=tmp_path / "parts-store", name="demo",
                                recipe=STORE_RECIPE, stats=make_stats(ledger), tool_version="test", shard_rows=7)
    _same_version(eager, parts)


def _one_part(frame: pl.DataFrame, folder) -> store.Parts:
    folder.mkdir()
    frame.write_parquet(folder / "part.parquet")
    return store.Parts([folder / "part.parquet"], "rows")


def test_parts_are_checked_like_a_data_frame(tmp_path):
    rows = store.rows_from_ledger(make_ledger())
    dup = _one_part(pl.concat([rows, rows.head(1)]), tmp_path / "dup")
    with pytest.raises(SchemaError, match=r"in rows for demo: duplicate key \{'qid': '\S+', 'sample_idx': \d\}"):
        store.write_version(dup, root=tmp_path / "store", name="demo", recipe=STORE_RECIPE)
    null = _one_part(rows.with_columns(pl.when(pl.col("sample_idx") == 2).then(None).otherwise(pl.col("gold"))
                                       .alias("gold")), tmp_path / "null")
    with pytest.raises(SchemaError, match=r"in rows for demo: column 'gold' is null in \d+ row\(s\), first qid="):
        store.write_version(null, root=tmp_path / "store", name="demo", recipe=STORE_RECIPE)
    no_messages = _one_part(rows.with_columns(pl.when(pl.col("sample_idx") == 2).then(None)
                                              .otherwise(pl.col("messages")).alias("messages")), tmp_path / "msg")
    with pytest.raises(SchemaError, match=r"in rows for demo: column 'messages' is null in \d+\+ row\(s\), first "
                                          r"qid=\S+ sample_idx=2"):
        store.write_version(no_messages, root=tmp_path / "store", name="demo", recipe=STORE_RECIPE)
    missing = _one_part(rows.drop("gold"), tmp_path / "missing")
    with pytest.raises(SchemaError, match=r"in rows for demo .*missing column\(s\) \['gold'\]"):
        store.write_version(missing, root=tmp_path / "store", name="demo", recipe=STORE_RECIPE)
    with pytest.raises(StoreError, match=r"dataset 'demo': no rows to store"):
        store.write_version(_one_part(rows.head(0), tmp_path / "empty"), root=tmp_path / "store", name="demo",
                            recipe=STORE_RECIPE)
    with pytest.raises(StoreError, match=r"nowhere\.parquet: unreadable Parquet part of rows for demo"):
        store.write_version(store.Parts([tmp_path / "nowhere.parquet"], "rows"), root=tmp_path / "store",
                            name="demo", recipe=STORE_RECIPE)
    assert store.list_versions(tmp_path / "store", "demo") == []
    assert not list((tmp_path / "store" / "demo").glob(".tmp-*"))


def test_ledger_parts_refuse_a_kept_row_without_an_answer(tmp_path):
    ledger = make_ledger()
    kept = pl.col("state") == "kept"
    first_kept = ledger.filter(kept).row(0, named=True)
    broken = ledger.with_columns(pl.when(kept & (pl.col("qid") == first_kept["qid"]) & (pl.col("sample_idx") ==
                                 first_kept["sample_idx"])).then(None).otherwise(pl.col("pred")).alias("pred"))
    (tmp_path / "ledger").mkdir()
    broken.write_parquet(tmp_path / "ledger" / "part.parquet")
    with pytest.raises(StoreError, match=rf"rows for demo: 1 kept row\(s\) have no extracted answer .* first "
                                         rf"qid={first_kept['qid']} sample_idx={first_kept['sample_idx']}"):
        store.write_version(store.Parts([tmp_path / "ledger" / "part.parquet"], "ledger"), root=tmp_path / "store",
                            name="demo", recipe=STORE_RECIPE)


# ---------------------------------------------------------------- any existing version with the hash
def test_a_build_with_the_content_of_an_older_version_reports_that_version(tmp_path):
    """v1 (X), v2 (Y), revert to X: the build is v1, not a v3 with v1's content."""
    root = tmp_path / "store"
    v1 = build_version(root)
    v2 = build_version(root, make_ledger(salt=" carefully"))
    revert = build_version(root)
    assert (revert.created, revert.version, revert.path, revert.content_hash) == (False, "v1", v1.path,
                                                                                  v1.content_hash)
    assert [v["version"] for v in store.list_versions(root, "demo")] == ["v1", "v2"] and v2.created
    assert not list((root / "demo").glob(".tmp-*"))


@pytest.mark.parametrize("name", ["demo\n", "demo/x", "../demo", ".demo"])
def test_a_dataset_name_that_is_no_folder_name_is_refused_whole(tmp_path, name):
    """The name rule holds for the whole string: a trailing newline (which `$` lets through) would become part of
    a folder name and a Hub tag."""
    with pytest.raises(StoreError, match="dataset name"):
        build_version(tmp_path / "store", name=name)
    with pytest.raises(StoreError, match="is not a dataset name"):
        store.resolve(f"{name}@v1", tmp_path / "store")


def test_a_tag_with_a_trailing_newline_is_no_tag():
    from builder.paths import tag_problem

    assert tag_problem("v1") is None
    assert tag_problem("v1\n") and tag_problem("../v1") and tag_problem("v1/x")


def test_a_repo_id_with_a_trailing_newline_is_no_repo_id():
    from builder.paths import repo_id_problem

    assert repo_id_problem("org/name") is None
    assert repo_id_problem("org/name\n")


def test_rate_retry_and_cost_limits_are_not_what_a_version_is():
    """Raising max_cost_usd to finish a run, or rpm to go faster, changes no row: the content hash stays."""
    from builder.recipe import Recipe

    raw = {"name": "demo", "tasks": {"items": [{"name": "multiarith"}]},
           "teacher": {"backend": "openai", "model": "gpt-4o-mini", "base_url": "https://api.test/v1"}}
    rows = store.rows_from_ledger(make_ledger(tasks=("multiarith",)))
    plain = Recipe.model_validate(raw).model_dump(mode="json")
    limited = Recipe.model_validate({**raw, "teacher": {**raw["teacher"], "rpm": 500, "tpm": 90_000,
                                                        "retry_budget_s": 60, "max_cost_usd": 5,
                                                        "prices": {"input": 1, "output": 2}}}).model_dump(mode="json")
    assert store.content_hash(rows, limited) == store.content_hash(rows, plain)
