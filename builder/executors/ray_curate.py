"""Grading and curation on Ray: the same graded rows, ledger and stats as `builder.grade.run` / `builder.curate.run`,
for graded tables larger than one machine's memory.

Grading is `grade.run` as Ray Data `map_batches` (row by row, so any batch gives the same rows).

Curation maps `builder.curate`'s plan over Ray tasks; curate decides every step (chunks, global scope,
decontamination, the empty table) and `curate.execute` runs the passes. The text stays in Ray's object store
(spilled to disk when full); the driver holds the keys and per-row codes and clusters only:

1. scan, one task per graded part (a parquet file, or a slice of a frame): `curate.scan`; the validated part stays
   in the object store, its keys come back for `curate.Plan.of`.
2. per pass, a shuffle by block: one task per part cuts its rows by the block of their ledger position; one task
   per block puts its pieces in ledger order and runs `curate.run_block`. Codes, clusters, diversity sums and hits
   come back; the block's ledger rows (or its survivors' signatures) stay in the store.
3. global scope (between the passes): one task per block `curate.global_buckets`, one per key partition
   `curate.link_global` (reading the signatures of the rows in its shared buckets).
4. the ledger: the blocks' rows, collected in ledger order or returned as a Ray dataset (`collect=False`).

Plain tasks, not Ray Data's `groupby().map_groups()`: the plan already says which block every row goes to, so a
direct cut-and-gather replaces the sort shuffle (1,000,000 rows on 2 cores, benchmarks/ray_curate_bench.py: the
map_groups version took 3.8x the local curation, this one 1.7x).
"""

from __future__ import annotations

import glob as globlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from builder import curate as C

if TYPE_CHECKING:
    import pyarrow as pa

    from builder.recipe import CurationConfig, GradingConfig
    from builder.run import Run
    from builder.stats import CurationStats

log = logging.getLogger(__name__)

SCAN_ROWS = 65_536  # rows per grading batch
_CACHE: dict[str, Any] = {}  # per worker process: a grading call's questions, fetched once


def _get(obj: Any) -> Any:
    """Resolve an object ref once per worker process (the questions of a grading call are shared by its batches)."""
    import ray

    if not isinstance(obj, ray.ObjectRef):
        return obj
    key = obj.hex()
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = ray.get(obj)
    return _CACHE[key]


def _files(source: str | Path | list[str]) -> list[str]:
    """Parquet files: a list of files (local paths or fsspec URLs), or a file, a folder (its *.parquet) or a glob."""
    from builder.executors import storage

    if isinstance(source, list):
        return [str(f) for f in source]
    path = str(source)
    if any(ch in path for ch in "*?["):
        files = sorted(globlib.glob(path))
    elif storage.is_url(path) or not Path(path).is_dir():
        files = [path]
    else:
        files = storage.list_files(path, "*.parquet")
    if not files:
        raise FileNotFoundError(f"parquet: nothing matches {path!r}")
    return files


def _dataset(source: pl.DataFrame | str | Path | list[str], parts: int, *, paths: bool = False):
    """A Ray dataset of `source`: a frame (cut into `parts` blocks) or parquet files (`_files`; `paths` adds each
    row's file as a `path` column)."""
    import ray.data

    if isinstance(source, pl.DataFrame):
        step = max(1, -(-source.height // max(1, parts)))
        return ray.data.from_arrow([source.slice(lo, step).to_arrow() for lo in range(0, max(source.height, 1), step)])
    return ray.data.read_parquet(_files(source), include_paths=paths)


def _context() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


# ------------------------------------------------------------------ grading
def grade(samples: pl.DataFrame | str | Path | list[str], questions: pl.DataFrame, cfg: GradingConfig,
          output: str | Path, *, parts: int = 8, wanted: pl.DataFrame | None = None, run: Run | None = None) -> str:
    """`builder.grade.run` as `map_batches` (it grades row by row, so any batch gives the same rows); the graded
    table is written as parquet parts under `output` (shared storage on a cluster; what was there is replaced).
    `wanted` (qid, n_samples): grade only those questions' first n_samples (`builder.shards.only_wanted`), as a
    build does over a run's shards. `run`: shard files are read with their paths and a row of another run is
    refused naming its file. Returns `output`."""
    import ray
    from ray.data import SaveMode

    _context()
    ids = None if run is None else {"own": run.id, "accepted": frozenset(run.accepted)}
    source = _dataset(samples, parts, paths=ids is not None)
    ds = source.map_batches(_grade_batch, batch_format="pyarrow", batch_size=SCAN_ROWS,
                            fn_kwargs={"questions": ray.put(questions), "cfg": cfg,
                                       "wanted": None if wanted is None else ray.put(wanted), "ids": ids})
    ds.write_parquet(str(output), mode=SaveMode.OVERWRITE)
    return str(output)


def _grade_batch(batch: pa.Table, *, questions, cfg: GradingConfig, wanted=None, ids: dict | None = None
                 ) -> pa.Table:
    from builder.grade import run
    from builder.run import check_run_ids
    from builder.shards import only_wanted

    q = _get(questions)
    df = pl.from_arrow(batch)
    if ids is not None:
        for (path,), part in df.group_by("path"):
            check_run_ids(part["run_id"].unique(), str(path), **ids)
        df = df.drop("path")
    if wanted is not None:
        df = only_wanted(df, _get(wanted))
    return run(df, q, cfg).to_arrow()


# ------------------------------------------------------------------ curation
def curate(graded: pl.DataFrame | str | Path | list[str], cfg: CurationConfig, *,
           eval_questions: pl.DataFrame | None = None, blocks: int | None = None, collect: bool = True
           ) -> tuple[Any, CurationStats]:
    """Curate on Ray; same ledger and stats as `builder.curate.run(graded, cfg, eval_questions=...)`.

    Args:
        graded: the graded table as a frame (cut into one part per CPU), or parquet (files, a folder or a glob;
            one part per file) read by the workers, so the driver never holds its text.
        cfg: curation settings (recipe.curation).
        eval_questions: as for `curate.run`.
        blocks: blocks per pass (recipe executor.curate_blocks); None = one per curate chunk (about CHUNK_ROWS
            rows). A block holds whole chunks, so there are never more blocks than chunks.
        collect: return the ledger as a polars frame (True), or as a Ray dataset in ledger order (False) for a
            ledger larger than the driver (write it with `.write_parquet`).

    Returns:
        (ledger, stats) as `curate.run` returns them.
    """
    import ray

    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    scan, cut, run_block = (ray.remote(f) for f in (_scan, _cut, _run_block))
    scanned = [scan.options(num_returns=2).remote(part, cfg) for part in _parts(graded, cpus)]
    parts = [p for p, _ in scanned]
    plan = C.Plan.of(ray.get([k for _, k in scanned]), cfg, eval_questions=eval_questions, max_blocks=blocks)
    positions = [ray.put(p) for p in plan.positions()]
    evals = ray.put(plan.eval_questions)
    log.info("ray curate: scanned %d rows in %d parts, %.1fs", plan.n, len(parts), time.perf_counter() - t0)

    def map_blocks(work: list[C.Block]) -> list[C.BlockResult]:
        bounds = np.array([b.lo for b in work] + [plan.n])
        pieces = [_listed(cut.options(num_returns=len(work)).remote(p, pos, bounds))
                  for p, pos in zip(parts, positions, strict=True)]
        out = [run_block.options(num_returns=2).remote(b, evals, *[p[i] for p in pieces]) for i, b in enumerate(work)]
        del pieces  # each block task holds its own
        results = ray.get([r for r, _ in out])
        for r, (_, rows) in zip(results, out, strict=True):
            r.rows = rows
        log.info("ray curate: %d blocks (final %s) at %.1fs", len(work), work[0].final, time.perf_counter() - t0)
        return results

    def link(first: list[C.BlockResult]) -> list[tuple[np.ndarray, np.ndarray]]:
        n_parts = max(len(first), cpus)
        buckets = ray.remote(_buckets).options(num_returns=n_parts)
        by_block = [_listed(buckets.remote(r.rows, cfg, n_parts)) for r in first]
        linked = ray.remote(_link)
        rows = [r.rows for r in first]
        return ray.get([linked.remote(rows, cfg, *[b[q] for b in by_block]) for q in range(n_parts)])

    results, stats = C.execute(plan, map_blocks, link)
    refs = [r.rows for r in results]
    if collect:
        ledger = pl.concat([pl.from_arrow(t) for t in ray.get(refs)])
    else:
        import ray.data

        ledger = ray.data.from_arrow_refs(refs)
    log.info("ray curate: %d rows -> %d kept in %.1fs", plan.n, int((plan.code == 0).sum()), time.perf_counter() - t0)
    return ledger, stats


def _parts(graded: pl.DataFrame | str | Path | list[str], cpus: int) -> list[Any]:
    """What the scan tasks read: slices of a frame (in the object store) or parquet files (read by the task)."""
    import ray

    if isinstance(graded, pl.DataFrame):
        step = max(1, -(-graded.height // cpus))
        return [ray.put(graded.slice(lo, step).to_arrow()) for lo in range(0, graded.height, step)]
    return _files(graded)


def _listed(refs: Any) -> list[Any]:
    """A task's returns as a list (one return is a bare ref)."""
    return refs if isinstance(refs, list) else [refs]


def _scan(part: pa.Table | str, cfg: CurationConfig) -> tuple[pa.Table, pl.DataFrame]:
    """`curate.scan` of one part: (the validated rows, which stay in the object store; the keys, for the plan)."""
    from builder.executors import storage

    batch = storage.read_parquet(part) if isinstance(part, str) else pl.from_arrow(part)
    df, keys = C.scan(batch, cfg)
    return df.to_arrow(), keys


def _cut(part: pa.Table, pos: np.ndarray, bounds: np.ndarray) -> list[pa.Table] | pa.Table:
    """One part's rows cut by block (block i holds ledger positions bounds[i]..bounds[i+1]), each piece in ledger
    order with its positions (`_pos`)."""
    order = np.argsort(pos, kind="stable")
    df = pl.from_arrow(part)[order].with_columns(_pos=pl.Series(pos[order]))
    cuts = [0, *np.searchsorted(pos[order], bounds[1:-1]).tolist(), df.height]
    pieces = [df.slice(lo, hi - lo).to_arrow() for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
    return pieces if len(pieces) > 1 else pieces[0]


def _run_block(block: C.Block, eval_questions: pl.DataFrame | None, *pieces: pa.Table) -> tuple[C.BlockResult, Any]:
    """`curate.run_block` on a block's pieces from every part, put in ledger order; returns (the result, for the
    driver; its rows, which stay in the object store: ledger rows as Arrow, or survivors' signatures)."""
    from builder.schemas import table_schema

    df = pl.concat([pl.from_arrow(p) for p in pieces]) if pieces else table_schema("graded").empty()
    m = block.hi - block.lo
    if pieces:
        rank = df["_pos"].to_numpy() - block.lo
        order = np.full(m, -1, dtype=np.int64)
        order[rank] = np.arange(len(rank))
        if len(rank) != m or (order < 0).any():
            raise RuntimeError(f"ray curate: block at {block.lo} got {len(rank)} rows, not positions "
                               f"{block.lo}..{block.hi - 1}")
        df = df[order].drop("_pos")
    result = C.run_block(df, block, eval_questions)
    rows, result.rows = result.rows, None
    return result, rows.to_arrow() if block.final else rows


def _buckets(rows: tuple[np.ndarray, np.ndarray], cfg: CurationConfig, parts: int) -> list | tuple:
    """`curate.global_buckets` of one block's survivors."""
    out = C.global_buckets(*rows, cfg, parts)
    return out if parts > 1 else out[0]


def _link(blocks: list, cfg: CurationConfig, *pieces) -> tuple[np.ndarray, np.ndarray]:
    """`curate.link_global` of one key partition; the signatures of its rows are read from every block's
    survivors, one block at a time."""
    import ray

    def signatures(nodes: np.ndarray) -> np.ndarray:
        sig = None
        for ref in blocks:
            pos, block_sig = ray.get(ref)
            if sig is None:
                sig = np.zeros((len(nodes), block_sig.shape[1]), block_sig.dtype)
            hit = np.isin(pos, nodes)
            sig[np.searchsorted(nodes, pos[hit])] = block_sig[hit]
        return sig

    return C.link_global(pieces, signatures, cfg)
