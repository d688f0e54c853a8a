"""The run: one identity (the run fingerprint) and one owner (a lease) per run folder, on any storage."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from builder import build, sample, tasks
from builder.bind import load_recipe
from builder.errors import BuilderError
from builder.recipe import Recipe
from builder.run import Run
from tests.helpers import write_import_recipe


def import_recipe(tmp_path: Path, benchmarks_dir: Path, teacher_completions_dir: Path, *, work: str = "runs",
                  storage: Path | None = None, limit: int | None = None, **teacher) -> Recipe:
    path = write_import_recipe(tmp_path / f"{work}.yaml", benchmarks_dir, teacher_completions_dir / "multiarith.jsonl",
                               work_dir=tmp_path / work, store={"root": str(tmp_path / "store")}, limit=limit,
                               teacher=teacher or None)
    cfg = load_recipe(path)
    if storage is not None:
        cfg.executor = cfg.executor.model_copy(update={"storage": str(storage)})
    return cfg


# ------------------------------------------------------------------ identity on shared storage
def test_two_teachers_on_one_shared_storage_are_refused_not_mixed(tmp_path, benchmarks_dir, teacher_completions_dir):
    shared = tmp_path / "bucket"
    first = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, work="a", storage=shared, limit=8)
    build.run(first)
    other = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, work="b", storage=shared, limit=8,
                          model="another-teacher")
    with pytest.raises(BuilderError, match=r"teacher\.model.*'text-davinci-002'.*'another-teacher'") as err:
        build.run(other)
    assert Run.of(first).id in str(err.value) and Run.of(other).id in str(err.value)
    assert len(list((tmp_path / "store" / "multiarith-davinci").glob("v[0-9]*"))) == 1  # nothing published for B


def test_a_foreign_shard_is_refused_naming_the_file(tmp_path, benchmarks_dir, teacher_completions_dir):
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=8)
    build.run(cfg)
    shard = sorted((cfg.run_dir / "samples").glob("shard-*.parquet"))[0]
    df = pl.read_parquet(shard).with_columns(run_id=pl.lit("someone-else-0123456789ab"))
    shard.chmod(0o644)
    df.write_parquet(shard)
    with pytest.raises(BuilderError, match=rf"{shard.name}.*someone-else-0123456789ab"):
        build.run(cfg)


def test_a_changed_setting_names_the_key_and_how_to_start_fresh(tmp_path, benchmarks_dir, teacher_completions_dir):
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=4)
    questions = tasks.run(cfg.tasks, cfg.base_dir)
    sample.run(questions, cfg)
    changed = cfg.model_copy(update={"prompt": cfg.prompt.model_copy(update={"trigger": "Think first."})})
    with pytest.raises(BuilderError, match=r"prompt\.trigger.*Let's think step by step.*Think first\..*start fresh"):
        sample.run(questions, changed)


# ------------------------------------------------------------------ what the fingerprint leaves out
def test_a_pilot_grows_into_the_full_run_reusing_its_samples(tmp_path, benchmarks_dir, teacher_completions_dir):
    pilot = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=10)
    _, first = sample.run(tasks.run(pilot.tasks, pilot.base_dir), pilot)
    shards = {p: p.stat().st_mtime_ns for p in (pilot.run_dir / "samples").glob("shard-*.parquet")}
    full = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=40)
    assert Run.of(full).id == Run.of(pilot).id
    _, grown = sample.run(tasks.run(full.tasks, full.base_dir), full)
    assert first.new_samples == first.samples >= 10  # a question may hold several imported completions
    assert grown.new_samples == grown.samples - first.samples > 0
    assert all(p.stat().st_mtime_ns == t for p, t in shards.items())  # the pilot's shards were reused as they are


# ------------------------------------------------------------------ the lease
def test_a_second_driver_under_a_live_lease_is_refused(tmp_path, benchmarks_dir, teacher_completions_dir):
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=4)
    holder = Run.of(cfg)
    holder.acquire()
    try:
        with pytest.raises(BuilderError, match=r"another driver holds run .* \(lease held by .*pid"):
            build.run(cfg)
    finally:
        holder.release()
    build.run(cfg)  # released: the next driver takes it


def test_a_stale_lease_is_taken_over_and_said_so(tmp_path, benchmarks_dir, teacher_completions_dir, caplog):
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=4)
    dead = Run.of(cfg)
    dead.acquire(ttl_s=0.2, heartbeat=False)  # a driver that stopped renewing (killed on another machine)
    marker = json.loads(Path(dead.marker).read_text())
    marker["lease"]["host"] = "some-other-host"
    Path(dead.marker).write_text(json.dumps(marker))
    time.sleep(0.3)
    with caplog.at_level(logging.WARNING, logger="builder.run"):
        build.run(cfg)
    assert "took over the stale lease of some-other-host" in caplog.text


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, benchmarks_dir,
                                                                      teacher_completions_dir):
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=4)
    dead = Run.of(cfg)
    dead.acquire(ttl_s=3600, heartbeat=False)
    marker = json.loads(Path(dead.marker).read_text())
    marker["lease"]["pid"] = 2**22 + 17  # above pid_max: no such process
    Path(dead.marker).write_text(json.dumps(marker))
    build.run(cfg)


def test_the_marker_lives_on_the_shared_storage(tmp_path, benchmarks_dir, teacher_completions_dir):
    shared = tmp_path / "bucket"
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, storage=shared, limit=4)
    build.run(cfg)
    marker = json.loads((shared / cfg.name / "run.json").read_text())
    assert marker["run_id"] == Run.of(cfg).id and marker["lease"]["expires"] == 0  # released at the end
    assert marker["fingerprint"]["teacher"]["model"] == "text-davinci-002"
    assert yaml.safe_dump(marker)  # plain JSON types only


def test_a_run_folder_made_before_run_markers_is_adopted_when_its_settings_match(tmp_path, benchmarks_dir,
                                                                                 teacher_completions_dir):
    """Before run.json, the marker was the driver's sample_config.json and the run id also covered the tasks:
    such a folder's shards are this run's when teacher, prompt and sampling match, and refused otherwise."""
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=6)
    first = build.run(cfg)
    old_id = "multiarith-davinci-0123456789ab"
    for shard in (cfg.run_dir / "samples").glob("shard-*.parquet"):
        shard.chmod(0o644)
        pl.read_parquet(shard).with_columns(run_id=pl.lit(old_id)).write_parquet(shard)
    (cfg.run_dir / "run.json").unlink()
    legacy = {"run_id": old_id, **Run.of(cfg).fingerprint, "tasks": {"items": ["what the old id covered"]}}
    (cfg.run_dir / "sample_config.json").write_text(json.dumps(legacy))
    again = build.run(cfg)
    assert again.samples == first.samples and again.content_hash == first.content_hash and not again.created
    assert json.loads((cfg.run_dir / "run.json").read_text())["accepts"] == [old_id]

    (cfg.run_dir / "run.json").unlink()
    legacy["teacher"] = {**legacy["teacher"], "model": "another-teacher"}
    (cfg.run_dir / "sample_config.json").write_text(json.dumps(legacy))
    with pytest.raises(BuilderError, match=rf"samples of run {old_id}.*teacher\.model was 'another-teacher'"):
        build.run(cfg)


def test_a_driver_that_lost_its_lease_stops_before_writing_more(tmp_path, benchmarks_dir, teacher_completions_dir):
    """Another driver took the lease over (this one stalled past its expiry): this one must not write shards or a
    version beside it."""
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=4)
    held = Run.of(cfg)
    held.acquire(heartbeat=False)
    marker = json.loads(Path(held.marker).read_text())
    marker["lease"].update(host="other-host", pid=7, token="theirs", expires=time.time() + 600)
    Path(held.marker).write_text(json.dumps(marker))
    with pytest.raises(BuilderError, match=r"no longer holds run .*other-host pid 7"):
        sample.run(tasks.run(cfg.tasks, cfg.base_dir), cfg, run=held)
    assert not list((cfg.run_dir / "samples").glob("shard-*.parquet"))


def test_another_fingerprint_is_refused_while_a_live_lease_holds_the_storage(tmp_path, benchmarks_dir,
                                                                           teacher_completions_dir):
    """No shard written yet (the first driver's engine still starting): the storage is not free to take."""
    shared = tmp_path / "bucket"
    first = Run.of(import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, work="a", storage=shared))
    first.acquire()
    try:
        other = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, work="b", storage=shared,
                              model="another-teacher")
        with pytest.raises(BuilderError, match=rf"another driver holds run {first.id} \(lease held by"):
            build.run(other)
    finally:
        first.release()


# ------------------------------------------------------------------ shard writes
def _shard_work(qids: list[str]):
    from builder.teachers import Completion, Request, ShardWork

    work = ShardWork([Request(q, "Q: x\nA:", 0, 1, 7) for q in qids], {q: None for q in qids})
    done = [Completion(q, 0, 7, " text.", "stop", 3, 2) for q in qids]
    return work, done, [None] * len(done)


def test_a_shard_is_never_overwritten_and_a_lost_lease_writes_nothing(tmp_path, benchmarks_dir,
                                                                      teacher_completions_dir):
    """A stalled driver that wakes after another took its run over must not replace that driver's shard (same
    name, other questions): that silently removed samples from the other's version."""
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=4)
    run = Run.of(cfg)
    run.acquire(heartbeat=False)
    dest = run.shard(0)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    sample.write_shard(*_shard_work(["a", "b"]), dest, recipe=cfg, run_id=run.id, held=run.holding())
    before = Path(dest).read_bytes()
    sample.write_shard(*_shard_work(["a", "b"]), dest, recipe=cfg, run_id=run.id)  # a retried task: done already
    with pytest.raises(BuilderError, match=r"shard-00000\.parquet: already holds other samples"):
        sample.write_shard(*_shard_work(["c"]), dest, recipe=cfg, run_id=run.id)
    assert Path(dest).read_bytes() == before

    marker = json.loads(Path(run.marker).read_text())
    marker["lease"].update(host="other-host", pid=7, token="theirs", expires=time.time() + 600)
    Path(run.marker).write_text(json.dumps(marker))
    with pytest.raises(BuilderError, match=r"no longer holds run"):
        sample.write_shard(*_shard_work(["d"]), run.shard(1), recipe=cfg, run_id=run.id, held=run.holding())
    assert not Path(run.shard(1)).exists()


def test_an_import_file_edited_in_place_is_not_taken_for_the_samples_already_imported(
        tmp_path, benchmarks_dir, teacher_completions_dir):
    """The completions file is what decides an imported sample's text: its content, not only its path, is in the
    fingerprint, so editing it is refused instead of publishing the old rationales under the new file's name."""
    import shutil

    completions = tmp_path / "completions.jsonl"
    shutil.copy(teacher_completions_dir / "multiarith.jsonl", completions)
    recipe_path = write_import_recipe(tmp_path / "r.yaml", benchmarks_dir, completions, work_dir=tmp_path / "runs",
                                      store={"root": str(tmp_path / "store")}, limit=4)
    build.run(load_recipe(recipe_path))
    edited = pl.read_ndjson(completions).with_columns(rationale=pl.lit(" Rewritten. The answer is 7."))
    edited.write_ndjson(completions)
    with pytest.raises(BuilderError, match=r"teacher\.import_sha256 was '[0-9a-f]{12}.*', now '[0-9a-f]{12}"):
        build.run(load_recipe(recipe_path))


def test_an_import_with_gaps_in_sample_idx_writes_no_empty_shard_on_a_rerun(tmp_path, benchmarks_dir,
                                                                           teacher_completions_dir):
    """The budget asks for the indices the file skips on every run; the importer has nothing for them: a rerun
    must not pile up empty shards."""
    rows = pl.read_ndjson(teacher_completions_dir / "multiarith.jsonl").head(6)
    gapped = pl.concat([rows.with_columns(sample_idx=pl.lit(i)) for i in (0, 3)])
    gapped.write_ndjson(tmp_path / "gapped.jsonl")
    cfg = load_recipe(write_import_recipe(tmp_path / "r.yaml", benchmarks_dir, tmp_path / "gapped.jsonl",
                                          work_dir=tmp_path / "runs", store={"root": str(tmp_path / "store")}))
    build.run(cfg)
    shards = sorted((cfg.run_dir / "samples").glob("shard-*.parquet"))
    assert all(pl.read_parquet(s).height for s in shards)
    build.run(cfg)
    assert sorted((cfg.run_dir / "samples").glob("shard-*.parquet")) == shards


def test_only_samples_whose_rationale_was_refused_are_asked_again(tmp_path, benchmarks_dir, teacher_completions_dir):
    """A refused stage-1 request generated nothing, so asking it again costs nothing unless the limit was raised; a
    refused answer stage keeps its rationale (graded no answer): asking that sample again would generate the same
    seeded rationale, and pay for it, on every run."""
    cfg = import_recipe(tmp_path, benchmarks_dir, teacher_completions_dir, limit=4)
    questions = tasks.run(cfg.tasks, cfg.base_dir)
    sample.run(questions, cfg)
    shard = sorted((cfg.run_dir / "samples").glob("shard-*.parquet"))[0]
    df = pl.read_parquet(shard)
    first, second = df.row(0, named=True), df.row(1, named=True)
    df = df.with_columns(
        finish_reason=pl.when(pl.int_range(pl.len()) < 2).then(pl.lit("error")).otherwise("finish_reason"),
        error=pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("answer stage: prompt longer than max_model_len"))
        .when(pl.int_range(pl.len()) == 1).then(pl.lit("prompt longer than max_model_len")).otherwise("error"),
        rationale=pl.when(pl.int_range(pl.len()) == 1).then(pl.lit("")).otherwise("rationale"))
    shard.chmod(0o644)
    df.write_parquet(shard)
    samples, again = sample.run(questions, cfg)
    assert again.new_samples == 1
    kept = samples.filter((pl.col("qid") == first["qid"]) & (pl.col("sample_idx") == first["sample_idx"]))
    assert kept["finish_reason"].to_list() == ["error"] and kept["rationale"].to_list() == [first["rationale"]]
    asked = samples.filter((pl.col("qid") == second["qid"]) & (pl.col("sample_idx") == second["sample_idx"]))
    assert asked["finish_reason"].to_list() == [second["finish_reason"]]
    assert asked["rationale"].to_list() == [second["rationale"]]
