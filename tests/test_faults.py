"""Injected faults: SIGKILL during grading, curation and version writing; corrupt or truncated Parquet; two builds
on one store; a full disk while writing a version; a Hub upload that fails midway.

Every test ends the same way: the rerun completes, and its content hash equals that of an uninterrupted build of
the same recipe (nothing lost, nothing duplicated). Builds use imported text-davinci-002 completions of the first
80 MultiArith train questions, so no model starts. Sampling and training kills are tested in test_sample_kill.py
and test_train.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from builder import store
from builder.cli import main
from builder.errors import BuilderError
from builder.schemas import read_table
from tests.helpers import write_import_recipe

ROOT = Path(__file__).resolve().parent.parent
NAME = "ma-faults"

# Runs `rationale build` in a fresh interpreter; RATIONALE_TEST_FAULT picks a point where the process SIGKILLs
# itself (or holds the store lock), so each kill lands in a known stage.
DRIVER = r"""
import os, signal, sys, time
from pathlib import Path

point = os.environ.get("RATIONALE_TEST_FAULT", "")


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


if point == "grade":  # in the middle of grading
    import builder.grade as grade
    real_grade = grade.run
    grade.run = lambda *a, **k: (real_grade(*a, **k), die())
elif point in ("graded-write", "ledger-write"):  # halfway through writing graded.parquet / ledger.parquet
    import io
    import tempfile
    import builder.schemas as schemas
    real_write = schemas.atomic_write_parquet
    target = point.split("-")[0] + ".parquet"

    def half_write(df, path):
        path = Path(path)
        if path.name != target:
            return real_write(df, path)
        buf = io.BytesIO()
        df.write_parquet(buf, compression="zstd")
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.write(fd, buf.getvalue()[: len(buf.getvalue()) // 2])
        os.fsync(fd)
        die()

    schemas.atomic_write_parquet = half_write
elif point == "curate":  # in the middle of curation
    import builder.curate as curate
    real_curate = curate.run
    curate.run = lambda *a, **k: (real_curate(*a, **k), die())
elif point == "version-data":  # data shards written into the temp version folder, card not yet
    import builder.card as card
    card.write_card = die
elif point == "version-index":  # version folder renamed into place, versions.json not yet updated
    import builder.store as store
    store._write_index = die
elif point == "hold-lock":  # hold the store lock until the test says go
    import builder.card as card
    real_card = card.write_card

    def hold(*a, **k):
        Path(os.environ["RATIONALE_TEST_HOLDING"]).touch()
        release = Path(os.environ["RATIONALE_TEST_RELEASE"])
        deadline = time.time() + 120
        while not release.exists() and time.time() < deadline:
            time.sleep(0.05)
        return real_card(*a, **k)

    card.write_card = hold

from builder.cli import main
sys.exit(main(sys.argv[1:]))
"""


def write_recipe(folder: Path, benchmarks_dir: Path, completions: Path, *, lock_timeout_s: float = 10) -> Path:
    return write_import_recipe(folder / "recipe.yaml", benchmarks_dir, completions, name=NAME, limit=80,
                               store={"root": "store", "lock_timeout_s": lock_timeout_s})


def build_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATIONALE_TEST_")}
    return {**env, "HF_HUB_OFFLINE": "1", **extra}


def spawn(recipe: Path, fault: str = "", **extra: str) -> subprocess.Popen:
    """`rationale build RECIPE --json` in its own session (so a kill takes the whole process group)."""
    return subprocess.Popen([sys.executable, "-c", DRIVER, "build", str(recipe), "--json"], cwd=ROOT,
                            env=build_env(RATIONALE_TEST_FAULT=fault, **extra), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def build(recipe: Path, fault: str = "", timeout: float = 180, **extra: str) -> subprocess.CompletedProcess:
    proc = spawn(recipe, fault, **extra)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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
    """An uninterrupted build: the content every interrupted one must end with."""
    folder = tmp_path_factory.mktemp("reference")
    result = summary(build(write_recipe(folder, benchmarks_dir, teacher_completions_dir / "multiarith.jsonl")))
    assert result["created"] and result["kept"] > 0
    return result


@pytest.fixture
def recipe(tmp_path, benchmarks_dir, teacher_completions_dir) -> Path:
    return write_recipe(tmp_path / "b", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl")


# ---------------------------------------------------------------- SIGKILL
def test_sigkill_in_grading_curation_and_version_writing_then_rerun_completes(recipe, reference):
    folder = recipe.parent
    for fault in ("grade", "graded-write", "curate", "ledger-write", "version-data"):
        result = build(recipe, fault)
        assert result.returncode == -signal.SIGKILL, (fault, result.stderr[-2000:])
        assert visible_versions(folder) == [], fault  # nothing half-made is visible
        assert not (dataset_dir(folder) / "v1").exists()
    assert list(dataset_dir(folder).glob(".tmp-v1-*")), "the version-data kill leaves its temp folder behind"
    # Killed after the version folder was renamed into place: the version is whole, only the index lags.
    result = build(recipe, "version-index")
    assert result.returncode == -signal.SIGKILL
    assert visible_versions(folder) == ["v1"] and store.verify(dataset_dir(folder) / "v1")
    assert not (dataset_dir(folder) / "versions.json").exists()

    again = summary(build(recipe))
    assert again["content_hash"] == reference["content_hash"] and again["version"] == "v1"
    assert again["created"] is False  # the version the killed run finished is reused, not written twice
    assert_complete(folder, reference)


def test_sigkill_at_random_moments_then_rerun_matches_an_uninterrupted_build(recipe, reference):
    folder = recipe.parent
    rng = random.Random(8)
    outcomes = []
    for _ in range(4):
        proc = spawn(recipe)
        time.sleep(rng.uniform(0.3, 4.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        outcomes.append(proc.returncode)
        assert visible_versions(folder) in ([], ["v1"])
        for v in visible_versions(folder):  # a visible version is always a whole one
            assert store.verify(dataset_dir(folder) / v)["content_hash"] == reference["content_hash"]
    again = summary(build(recipe))
    assert again["content_hash"] == reference["content_hash"] and again["version"] == "v1"
    assert_complete(folder, reference)


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
        sample.read_samples(run_dir)
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
    assert sample.read_samples(run_dir).height == reference["samples"]
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
    assert f"{data}: unreadable Parquet" in capsys.readouterr().err
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
    recipe = write_recipe(tmp_path / "b", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                          lock_timeout_s=1)
    holding, release = tmp_path / "holding", tmp_path / "release"
    first = spawn(recipe, "hold-lock", RATIONALE_TEST_HOLDING=str(holding), RATIONALE_TEST_RELEASE=str(release))
    try:
        deadline = time.time() + 120
        while not holding.exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline, "the first build never reached the store"
            time.sleep(0.05)
        second = build(recipe)
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
    again = summary(build(recipe))  # the second build, rerun once the first is done: nothing new to write
    assert again["created"] is False and again["version"] == "v1"
    assert_complete(recipe.parent, reference)


# ---------------------------------------------------------------- disk full
def test_disk_full_while_writing_a_version_leaves_no_partial_version(recipe, reference, monkeypatch, capsys):
    import pyarrow.parquet as pq

    real = pq.write_table

    def full_disk(table, where, **kwargs):  # half a shard reaches the disk, then ENOSPC
        real(table.slice(0, table.num_rows // 2), where, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))

    monkeypatch.setattr(pq, "write_table", full_disk)
    assert main(["build", str(recipe)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {dataset_dir(recipe.parent)}: writing v1 failed")
    assert "writing v1 failed ([Errno 28] No space left on device" in err and "the store is unchanged" in err
    assert visible_versions(recipe.parent) == []
    assert sorted(p.name for p in dataset_dir(recipe.parent).iterdir()) == [".lock"]
    monkeypatch.setattr(pq, "write_table", real)
    assert main(["build", str(recipe), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["content_hash"] == reference["content_hash"]
    assert_complete(recipe.parent, reference)


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


def test_disk_full_on_a_real_tiny_filesystem(recipe, reference, capsys):
    """The same on a 1 MiB tmpfs, filled so the data shard fits and the card's plots do not (needs root)."""
    mnt = recipe.parent / "small-disk"
    if not _mount_tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission); the monkeypatched test above "
                    "covers the same path")
    try:
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
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---------------------------------------------------------------- Hub upload failing midway
@pytest.mark.parametrize("failure", ["http-500", "connection-drop"])
def test_hub_upload_failing_midway_leaves_no_tag_and_a_rerun_completes(failure, fake_hub, recipe, reference,
                                                                       monkeypatch, capsys):
    import httpx2
    from huggingface_hub import constants

    assert main(["build", str(recipe)]) == 0
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.endpoint)
    real_handler = fake_hub.handler
    failed = []

    def flaky(request):  # the commit (after preupload) dies once
        if "/commit/" in str(request.url) and not failed:
            failed.append(str(request.url))
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
    assert len(errors) == 1 and "commit to org/ma" in errors[0] and "Traceback" not in err
    repo = fake_hub.repos["org/ma"]
    assert repo["tags"] == {}  # no tag ...
    assert set(fake_hub.files_at("org/ma", "main")) == {".gitattributes"}  # ... and no file of the version

    assert main(args) == 0
    assert "published org/ma@v1" in capsys.readouterr().out
    v1 = fake_hub.files_at("org/ma", "v1")
    local = dataset_dir(recipe.parent) / "v1"
    assert {p for p in v1 if p != ".gitattributes"} == {
        p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert json.loads(v1["manifest.json"])["content_hash"] == reference["content_hash"]
    assert len(repo["commits"]) == 2  # the initial commit and exactly one publish
