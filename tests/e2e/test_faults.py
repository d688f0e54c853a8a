"""Injected faults: SIGKILL at named points of grading, curation and version writing (tests/kill_points.py); corrupt
or truncated Parquet; two builds racing in one run folder, and two on one store; a full disk while writing a version
(monkeypatched, and a real one on a small filesystem); a Hub upload that fails between its LFS uploads or at the
commit.

Every test ends the same way: the rerun completes, and its content hash equals that of an uninterrupted build of
the same recipe (nothing lost, nothing duplicated). Builds use imported text-davinci-002 completions of the first
80 MultiArith train questions, so no model starts. Sampling and training kills are tested in test_sample_kill.py
and test_train_kill.py (same kill_points.py). A build resumes sampling from its shards and reuses a finished version;
grade and curate are recomputed on every build (cheap, and never stale against the grader code), so what the kill
test shows for them is that a rerun from each landing point ends with the identical graded table and ledger.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from builder import store
from builder.bind import load_recipe
from builder.cli import main
from builder.errors import BuilderError
from builder.run import Run
from builder.schemas import read_table
from tests.helpers import ROOT, write_import_recipe

NAME = "ma-faults"

KILL_POINTS = ROOT / "tests" / "kill_points.py"


def write_recipe(folder: Path, benchmarks_dir: Path, completions: Path, *, lock_timeout_s: float = 10) -> Path:
    return write_import_recipe(folder / "recipe.yaml", benchmarks_dir, completions, name=NAME, limit=80,
                               store={"root": "store", "lock_timeout_s": lock_timeout_s, "license": "cc-by-4.0"})


def build_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATIONALE_TEST_")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def spawn(recipe: Path, point: tuple[str, str] | None = None, **extra: str) -> subprocess.Popen:
    """`rationale build RECIPE --json` in its own session (so a kill takes the whole process group); with `point`,
    under tests/kill_points.py, which SIGKILLs the group there (or pauses there)."""
    launcher = ["-m", "builder"] if point is None else [str(KILL_POINTS), *point, "--"]
    return subprocess.Popen([sys.executable, *launcher, "build", str(recipe), "--json"], cwd=ROOT,
                            env=build_env(**extra), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def build(recipe: Path, point: tuple[str, str] | None = None, timeout: float = 180,
          **extra: str) -> subprocess.CompletedProcess:
    proc = spawn(recipe, point, **extra)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def killed_build(recipe: Path, point: str, arg: str = "1") -> subprocess.CompletedProcess:
    """A build SIGKILLed at a named point; fails unless the kill is what ended it."""
    result = build(recipe, (point, arg))
    assert result.returncode == -signal.SIGKILL and "kill_points: SIGKILL" in result.stderr, \
        f"the build did not die at {point} {arg}:\n{result.stderr[-3000:]}"
    return result


def summary(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def dataset_dir(folder: Path) -> Path:
    return folder / "store" / NAME


def visible_versions(folder: Path) -> list[str]:
    return [v["version"] for v in store.list_versions(folder / "store", NAME)]


def assert_complete(folder: Path, reference: dict) -> None:
    """One version, verified file by file, with the reference's content; no temp folders; a consistent index."""
    assert visible_versions(folder) == ["v1"]
    manifest = store.verify(dataset_dir(folder) / "v1")
    assert manifest["content_hash"] == reference["content_hash"]
    assert not list(dataset_dir(folder).glob(".tmp-*"))
    index = json.loads((dataset_dir(folder) / "versions.json").read_text())["versions"]
    assert [v["version"] for v in index] == ["v1"] and index[0]["content_hash"] == reference["content_hash"]
    ledger = read_table(folder / "runs" / NAME / "ledger.parquet", "ledger")  # validates: no duplicate keys
    assert ledger.filter(pl.col("state") == "kept").height == reference["kept"] == manifest["rows"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, benchmarks_dir, teacher_completions_dir) -> dict:
    """An uninterrupted build: the content every interrupted one must end with (its summary, graded, ledger)."""
    folder = tmp_path_factory.mktemp("reference")
    result = summary(build(write_recipe(folder, benchmarks_dir, teacher_completions_dir / "multiarith.jsonl")))
    assert result["created"] and result["kept"] > 0
    run_dir = folder / "runs" / NAME
    return {**result, "graded": read_table(run_dir / "graded.parquet", "graded"),
            "ledger": read_table(run_dir / "ledger.parquet", "ledger")}


@pytest.fixture
def recipe(tmp_path, benchmarks_dir, teacher_completions_dir) -> Path:
    return write_recipe(tmp_path / "b", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl")


# ---------------------------------------------------------------- SIGKILL
def _run_files(folder: Path) -> dict[str, bool]:
    run_dir = folder / "runs" / NAME
    return {"graded": (run_dir / "graded.parquet").exists(), "ledger": (run_dir / "ledger.parquet").exists(),
            "stats": (run_dir / "stats.json").exists()}


def _temp_tables(folder: Path) -> list[str]:
    return sorted(p.name.split(".")[1] for p in (folder / "runs" / NAME).glob(".*.tmp"))


def _assert_table_equals_reference(folder: Path, table: str, reference: dict) -> None:
    found = read_table(folder / "runs" / NAME / f"{table}.parquet", table)
    assert_frame_equal(found.sort("qid", "sample_idx"), reference[table].sort("qid", "sample_idx"))


def test_sigkill_at_each_build_stage_lands_where_named_and_the_resume_equals_an_uninterrupted_build(recipe,
                                                                                                     reference):
    """Killed at each named point in pipeline order (each run resumes the last one's leftovers), the on-disk
    state is checked where the kill landed; the final rerun ends with the reference's graded table, ledger and
    content hash."""
    folder = recipe.parent
    store_dir = dataset_dir(folder)

    killed_build(recipe, "computed", "graded")  # grading done, nothing of it on disk
    assert _run_files(folder) == {"graded": False, "ledger": False, "stats": False} and not _temp_tables(folder)
    assert list((folder / "runs" / NAME / "samples").glob("shard-*.parquet"))  # sampling finished before it

    killed_build(recipe, "table_mid_write", "graded")  # graded.parquet's temp file is whole, never renamed
    assert _run_files(folder)["graded"] is False and _temp_tables(folder) == ["graded"]

    killed_build(recipe, "written", "graded")  # graded.parquet in place; curation never started
    assert _run_files(folder) == {"graded": True, "ledger": False, "stats": False}
    assert not _temp_tables(folder), "the killed run's temp file is removed at start-up"
    _assert_table_equals_reference(folder, "graded", reference)

    killed_build(recipe, "computed", "ledger")
    assert _run_files(folder) == {"graded": True, "ledger": False, "stats": False} and not _temp_tables(folder)

    killed_build(recipe, "table_mid_write", "ledger")
    assert _run_files(folder)["ledger"] is False and _temp_tables(folder) == ["ledger"]

    killed_build(recipe, "written", "ledger")  # the ledger is in place; no version yet
    assert _run_files(folder) == {"graded": True, "ledger": True, "stats": False} and not _temp_tables(folder)
    _assert_table_equals_reference(folder, "ledger", reference)
    assert visible_versions(folder) == []

    killed_build(recipe, "version_temp")  # data shards in the temp version folder, no card, no manifest
    (tmp,) = store_dir.glob(".tmp-v1-*")
    assert list((tmp / "data").glob("*.parquet")) and not (tmp / "manifest.json").exists()
    assert visible_versions(folder) == [] and not (store_dir / "v1").exists()

    killed_build(recipe, "version_renamed")  # the version is whole and in place, only the index lags
    assert not list(store_dir.glob(".tmp-*")), "the killed writer's temp folder is removed under the lock"
    assert visible_versions(folder) == ["v1"] and not (store_dir / "versions.json").exists()
    assert store.verify(store_dir / "v1")["content_hash"] == reference["content_hash"]

    again = summary(build(recipe))
    assert again["content_hash"] == reference["content_hash"] and again["version"] == "v1"
    assert again["created"] is False  # the version the killed run finished is reused, not written twice
    assert_complete(folder, reference)
    _assert_table_equals_reference(folder, "graded", reference)
    _assert_table_equals_reference(folder, "ledger", reference)
    assert not _temp_tables(folder)


def test_two_builds_racing_in_one_run_folder_one_wins_the_other_exits_2(recipe, reference, tmp_path):
    """The first build pauses right after writing graded.parquet (holding the run folder); a second build of the
    same recipe meanwhile is refused at once, touching nothing; the first then finishes with the reference."""
    folder = recipe.parent
    paused, resume = tmp_path / "paused", tmp_path / "resume"
    first = spawn(recipe, ("pause_written", "graded"), KILL_POINTS_PAUSED=str(paused), KILL_POINTS_RESUME=str(resume))
    try:
        deadline = time.time() + 120
        while not paused.exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline, "the first build never wrote graded.parquet"
            time.sleep(0.05)
        graded = folder / "runs" / NAME / "graded.parquet"
        before = graded.read_bytes()
        second = build(recipe)
        assert second.returncode == 2, second.stderr[-2000:]
        run_dir = folder / "runs" / NAME
        errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and errors[0].startswith(
            f"error: {run_dir / 'run.json'}: another driver holds run {NAME}-"), errors
        assert f"(lease held by {socket.gethostname()} pid {first.pid}, renewed until" in errors[0]
        assert "Traceback" not in second.stderr
        assert graded.read_bytes() == before and not _run_files(folder)["ledger"] and not _temp_tables(folder)
    finally:
        resume.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["content_hash"] == reference["content_hash"]
    again = summary(build(recipe))  # the loser, rerun once the winner is done: nothing new to write
    assert again["created"] is False and again["version"] == "v1"
    assert_complete(folder, reference)
    _assert_table_equals_reference(folder, "ledger", reference)


# ---------------------------------------------------------------- corrupt or truncated Parquet
def _truncate(path: Path) -> None:
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_samples_shard_is_named_and_the_rerun_after_deleting_it_remakes_it(recipe, reference, capsys):
    from builder import sample

    assert main(["build", str(recipe), "--json"]) == 0
    run_dir = recipe.parent / "runs" / NAME
    shard = run_dir / "samples" / "shard-00000.parquet"
    _truncate(shard)
    with pytest.raises(BuilderError, match=r"shard-00000\.parquet: corrupt sample shard .*delete it and rerun"):
        sample.read_samples(Run.of(load_recipe(recipe)))
    _truncate(run_dir / "graded.parquet")
    _truncate(run_dir / "ledger.parquet")
    capsys.readouterr()
    # imported completions resume like sampled ones: the build refuses the shard by name, exit 2
    assert main(["build", str(recipe), "--json"]) == 2
    assert "shard-00000.parquet: corrupt sample shard" in capsys.readouterr().err
    shard.unlink()  # what the message says to do
    assert main(["build", str(recipe), "--json"]) == 0  # the shard is re-made; graded/ledger are recomputed
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["content_hash"] == reference["content_hash"] and again["created"] is False
    assert sample.read_samples(Run.of(load_recipe(recipe))).height == reference["samples"]
    assert_complete(recipe.parent, reference)


def test_truncated_version_data_file_is_named_refused_and_remade(recipe, reference, capsys):
    folder = recipe.parent
    assert main(["build", str(recipe)]) == 0
    data = next((dataset_dir(folder) / "v1" / "data").glob("*.parquet"))
    _truncate(data)
    capsys.readouterr()
    # Every reader refuses it by name: rebuild, show of the rows (diff), publish.
    assert main(["build", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: sha256" in err and "v1 has this content but is corrupt; move" in err
    assert main(["diff", f"{NAME}@v1", f"{NAME}@v1", "--store", str(folder / "store")]) == 2
    assert f"{data}: sha256" in capsys.readouterr().err  # checked against the manifest before it is read
    assert main(["publish", f"{NAME}@v1", "--repo", "org/ma", "--store", str(folder / "store"), "--dry-run"]) == 2
    assert f"{data}: sha256" in capsys.readouterr().err
    # Moving the damaged version away (as the message says) and rerunning re-makes it, identical to the reference.
    shutil.move(dataset_dir(folder) / "v1", folder / "damaged-v1")
    assert main(["build", str(recipe), "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["created"] is True and again["content_hash"] == reference["content_hash"]
    assert_complete(folder, reference)


# ---------------------------------------------------------------- two builds, one store
def test_second_build_on_a_locked_store_fails_clearly_then_succeeds(tmp_path, benchmarks_dir,
                                                                     teacher_completions_dir, reference):
    """Two run folders, one store: the second build waits for the store lock, then gives up with a clear message."""
    recipe = write_recipe(tmp_path / "b", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                          lock_timeout_s=1)
    other = write_import_recipe(recipe.parent / "other.yaml", benchmarks_dir,
                                teacher_completions_dir / "multiarith.jsonl", name=NAME, limit=80, work_dir="runs-2",
                                store={"root": "store", "lock_timeout_s": 1, "license": "cc-by-4.0"})
    holding, release = tmp_path / "holding", tmp_path / "release"
    first = spawn(recipe, ("pause_card", "1"), KILL_POINTS_PAUSED=str(holding), KILL_POINTS_RESUME=str(release))
    try:
        deadline = time.time() + 120
        while not holding.exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline, "the first build never reached the store"
            time.sleep(0.05)
        second = build(other)
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
        lock = dataset_dir(recipe.parent) / ".lock"
        assert errors == [f"error: {dataset_dir(recipe.parent)}: another build is writing this dataset (lock {lock} "
                          "still held after 1s); wait for it to finish and run again"]
        assert "Traceback" not in second.stderr
        assert visible_versions(recipe.parent) == []
    finally:
        release.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["content_hash"] == reference["content_hash"]
    again = summary(build(other))  # the second build, rerun once the first is done: nothing new to write
    assert again["created"] is False and again["version"] == "v1"
    assert_complete(recipe.parent, reference)


# ---------------------------------------------------------------- disk full
def test_disk_full_while_writing_a_version_leaves_no_partial_version(recipe, reference, monkeypatch, capsys):
    import pyarrow.parquet as pq

    real = pq.ParquetWriter.write_table  # the store writes every shard through a ParquetWriter
    calls = []

    def full_disk(writer, table, *args, **kwargs):  # half a row group reaches the disk, then ENOSPC
        calls.append(writer.where)
        real(writer, table.slice(0, table.num_rows // 2), *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(writer.where))

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full_disk)
    assert main(["build", str(recipe)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {dataset_dir(recipe.parent)}: writing v1 failed")
    assert "writing v1 failed ([Errno 28] No space left on device" in err and "the store is unchanged" in err
    assert visible_versions(recipe.parent) == []
    assert sorted(p.name for p in dataset_dir(recipe.parent).iterdir()) == [".lock"]
    assert calls and all(".tmp-v1-" in str(where) for where in calls)  # it failed writing the version's shards
    monkeypatch.setattr(pq.ParquetWriter, "write_table", real)
    assert main(["build", str(recipe), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["content_hash"] == reference["content_hash"]
    assert_complete(recipe.parent, reference)


SMALL_DISK_ENV = "RATIONALE_SMALL_DISK"  # .ci/run mounts a small tmpfs (or loop ext4) and names it here


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a small real filesystem: $RATIONALE_SMALL_DISK (set by .ci/run), else a 1 MiB tmpfs mounted here
    (needs root and mount permission), else a skip saying why (pytest -ra prints it in the CI log)."""
    given = os.environ.get(SMALL_DISK_ENV)
    if given:
        if not os.path.ismount(given):
            pytest.fail(f"{SMALL_DISK_ENV}={given} is not a mount point")
        where = Path(given) / tmp_path.name
        where.mkdir()
        yield where
        shutil.rmtree(where, ignore_errors=True)
        return
    where = tmp_path / "small-disk"
    where.mkdir()
    why = "not root" if os.geteuid() != 0 else "no mount command" if shutil.which("mount") is None else None
    if why is None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True,
                              text=True)
        why = None if done.returncode == 0 else f"mount -t tmpfs failed: {done.stderr.strip()}"
    if why:
        pytest.skip(f"no small real filesystem for a real ENOSPC ({why}); set {SMALL_DISK_ENV} to a small mounted "
                    "filesystem (.ci/run does); the monkeypatched disk-full test covers the same code path")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_disk_full_on_a_real_tiny_filesystem(recipe, reference, small_disk, capsys):
    """The same on a real small filesystem, filled so the data shard fits and the card's plots do not."""
    mnt = small_disk
    free = shutil.disk_usage(mnt).free
    (mnt / "filler").write_bytes(b"\0" * (free - 48 * 1024))
    assert main(["build", str(recipe), "--store", str(mnt / "store")]) == 2
    err = capsys.readouterr().err
    assert f"{mnt / 'store' / NAME}: writing v1 failed" in err and "No space left on device" in err
    assert sorted(p.name for p in (mnt / "store" / NAME).iterdir()) == [".lock"]
    (mnt / "filler").unlink()
    assert main(["build", str(recipe), "--store", str(mnt / "store"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["content_hash"] == reference["content_hash"]
    assert store.verify(mnt / "store" / NAME / "v1")


# ---------------------------------------------------------------- Hub upload failing midway
def _lfs_paths(folder: Path) -> set[str]:
    """Files of a version that the Hub takes through LFS: Parquet and PNG (the fake's .gitattributes)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in (".parquet", ".png")}


@pytest.mark.parametrize("failure", ["lfs-upload-403", "http-500", "connection-drop"])
def test_hub_upload_failing_midway_leaves_no_tag_and_a_rerun_completes(failure, fake_hub, recipe, reference,
                                                                       monkeypatch, capsys):
    """Fails between two LFS blob uploads (the upload URL refuses the second PUT, as an expired S3 URL does: not
    retried), or at the commit after every blob is up. No tag, no file; the rerun uploads only the blobs the Hub
    does not hold yet, commits once and tags."""
    import hashlib

    import httpx2
    from huggingface_hub import constants

    assert main(["build", str(recipe)]) == 0
    local = dataset_dir(recipe.parent) / "v1"
    lfs = {hashlib.sha256((local / p).read_bytes()).hexdigest() for p in _lfs_paths(local)}
    assert len(lfs) >= 2, "the version must have two LFS blobs for a failure between them"
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    real_handler = fake_hub.handler
    failed = []

    def flaky(request):
        url = str(request.url)
        if failure == "lfs-upload-403" and "/fake-lfs/upload/" in url and not failed:
            if len(fake_hub.lfs_uploads()) == 1:  # one blob is up; this is the second PUT
                failed.append(url)
                request.read()
                return httpx2.Response(403, text="<Error><Code>AccessDenied</Code><Message>Request has expired"
                                                 "</Message></Error>")
        if failure != "lfs-upload-403" and "/commit/" in url and not failed:  # every blob is up
            failed.append(url)
            if failure == "http-500":
                return httpx2.Response(500, json={"error": "Internal Error"})
            raise httpx2.ConnectError("connection reset by peer", request=request)
        return real_handler(request)

    fake_hub.handler = flaky
    args = ["publish", f"{NAME}@v1", "--repo", "org/ma", "--store", str(recipe.parent / "store")]
    code = main(args)
    err = capsys.readouterr().err
    assert failed and code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "commit to org/ma" in errors[0] and "Traceback" not in err, err
    repo = fake_hub.repos["org/ma"]
    assert repo["tags"] == {}  # no tag ...
    assert set(fake_hub.files_at("org/ma", "main")) == {".gitattributes"}  # ... and no file of the version
    before = set(fake_hub.lfs)
    if failure == "lfs-upload-403":
        # some blobs are up (uploads run in threads: the others may finish), not all; no commit was tried
        assert before < lfs and before and not any("/commit/" in r["path"] for r in fake_hub.requests)
    else:
        assert before == lfs  # the blobs went up through the LFS batch endpoint before the commit
    uploads_before = len(fake_hub.lfs_uploads())

    assert main(args) == 0
    assert "published org/ma@v1" in capsys.readouterr().out
    rerun = fake_hub.lfs_uploads()[uploads_before:]
    assert sorted(rerun) == sorted(lfs - before)  # each missing blob once; none uploaded twice
    v1 = fake_hub.files_at("org/ma", "v1")
    assert {p for p in v1 if p != ".gitattributes"} == {
        p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert all(v1[p] == (local / p).read_bytes() for p in _lfs_paths(local))  # blobs resolved from LFS, intact
    assert json.loads(v1["manifest.json"])["content_hash"] == reference["content_hash"]
    assert len(repo["commits"]) == 2  # the initial commit and exactly one publish
    commit = [r for r in fake_hub.requests if "/commit/" in r["path"]][-1]
    keys = {json.loads(line)["key"] for line in commit["body"].decode().splitlines()[1:]}
    assert keys == {"file", "lfsFile"}  # text files as git blobs, Parquet and PNG as LFS pointers
