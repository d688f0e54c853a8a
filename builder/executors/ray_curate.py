"""Grading and curation on Ray: the same graded rows, ledger and stats as `builder.grade.run` / `builder.curate.run`,
for graded tables larger than one machine's memory.

The text (prompts, questions, rationales, traces) stays in Ray's object store (spilled to disk when full); the
driver holds small columns only. Stages (docs/SCALING.md, "Curation on Ray", has the table):

0. scan, `map_batches` over the graded dataset (parquet files or a frame): schema check, quality-filter and
   correctness codes (`curate.filter_codes`), bytes of the compared text. Back to the driver: task, qid,
   sample_idx, code, bytes.
1. plan, driver: sort those keys into ledger order, cut the alive rows into curate's chunks of whole questions
   (`curate.chunk_rows`: same rows, same cuts), consecutive chunks make a block.
2. block pass, `map_batches` (tag each row with its block, a join on (task, qid)) then
   `groupby("_block").map_groups`: a block sorts its rows (ledger position = block start + rank) and runs curate's
   per-chunk steps on each of its chunks (`dedup_chunk`, `select_chunk`); it returns codes, clusters, each
   chunk's diversity sums (added on the driver in chunk order: the same floats) and its live questions.
3. global scope (minhash.scope global/both): the block pass returns the survivors' signatures instead of selecting;
   one Ray task per block computes band keys and partitions them by key; one task per partition links its whole
   buckets with `cluster_global`'s rule (`dedup.link_buckets`: row order, window) and returns (row, root) pairs;
   the driver joins them (union-find, the lowest ledger position is the root) and marks the members; a second
   block pass over curate's second-pass chunks selects.
4. decontamination: the live questions (one per question) are checked on the driver; rationales, opt-in, are
   checked by `map_batches`.
5. ledger, `map_batches`: state/stage/reason/cluster from the driver's codes; collected in ledger order (or
   returned as a Ray dataset sorted by position, `collect=False`).
"""

from __future__ import annotations

import glob as globlib
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from builder import curate as C
from builder import reasons as R
from builder.schemas import table_schema, validate

if TYPE_CHECKING:
    import pyarrow as pa

    from builder.recipe import CurationConfig, GradingConfig
    from builder.run import Run
    from builder.stats import CurationStats

log = logging.getLogger(__name__)

KEYS = ["task", "qid", "sample_idx"]
SCAN_ROWS = 65_536  # rows per scan / ledger batch
_PRIVATE = ["_block", "_pos", "_code", "_cluster", "_sig", "_side"]
_CACHE: dict[str, Any] = {}  # per worker process: the pass's plan, fetched once


def _get(obj: Any) -> Any:
    """Resolve an object ref once per worker process (the plan of a pass is shared by all its blocks)."""
    import ray

    if not isinstance(obj, ray.ObjectRef):
        return obj
    key = obj.hex()
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = ray.get(obj)
    return _CACHE[key]


def _dataset(source: pl.DataFrame | str | Path | list[str], parts: int, *, paths: bool = False):
    """A Ray dataset of `source`: a frame (cut into `parts` blocks), or parquet files (a file, folder or glob, or a
    list of files: local paths or fsspec URLs; `paths` adds each row's file as a `path` column)."""
    import ray.data

    if isinstance(source, pl.DataFrame):
        step = max(1, -(-source.height // max(1, parts)))
        return ray.data.from_arrow([source.slice(lo, step).to_arrow() for lo in range(0, max(source.height, 1), step)])
    if isinstance(source, list):
        return ray.data.read_parquet([str(f) for f in source], include_paths=paths)
    path = str(source)
    files = sorted(globlib.glob(path)) if any(ch in path for ch in "*?[") else [path]
    if not files:
        raise FileNotFoundError(f"graded parquet: nothing matches {path!r}")
    return ray.data.read_parquet(files)


def _context() -> None:
    """Sort-based shuffles: Ray 2.60's default hash shuffle starts aggregator actors per groupby (~25 s the first
    time on 2 cores, 4 s after); the pull-based sort shuffle of a few large groups takes under a second."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED


def _tables(ds) -> list[pl.DataFrame]:
    import ray

    return [pl.from_arrow(t) for t in ray.get(ds.to_arrow_refs())]


# ------------------------------------------------------------------ grading
def grade(samples: pl.DataFrame | str | Path | list[str], questions: pl.DataFrame, cfg: GradingConfig,
          output: str | Path, *, parts: int = 8, wanted: pl.DataFrame | None = None, run: Run | None = None) -> str:
    """`builder.grade.run` as `map_batches` (it grades row by row, so any batch gives the same rows); the graded
    table is written as parquet parts under `output` (shared storage on a cluster; what was there is replaced).
    `wanted` (qid, n_samples): grade only those questions' first n_samples (`builder.sample.only_wanted`), as a
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
    from builder.sample import only_wanted

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
@dataclass
class _Pass:
    """What every block of one block pass needs (one object in the store, fetched once per worker)."""

    cfg: CurationConfig
    tasks: list[str]
    stride: int
    code: np.ndarray  # per ledger position: codes before this pass
    cluster: np.ndarray
    start: np.ndarray  # first ledger position of each block (+ the end)
    chunks: list[list[tuple[int, int, int, int]]]  # per block: (lo, hi) positions, chunk index, questions before
    dedup: bool  # stages 3-4 (first pass) or signatures only (the second, global pass)
    select: bool  # stage 5 here, or return the survivors' signatures (global scope)
    full: bool  # return the rows (the last pass) or only positions, codes and signatures
    decontaminate: bool = False


def _plan(chunks: list[np.ndarray], group_id: np.ndarray, gs: np.ndarray, blocks: int | None
          ) -> tuple[np.ndarray, np.ndarray, list[list[tuple[int, int, int, int]]]]:
    """Blocks of consecutive chunks: (block of every question, first position of every block, chunks per block).

    A block covers whole questions from its first chunk's first question to the next block's; questions with no
    alive row ride along with the block before them (or the first)."""
    n_groups = len(gs) - 1
    n_chunks = len(chunks)
    n_blocks = max(1, min(blocks or n_chunks, n_chunks))
    first_chunk = (np.arange(n_blocks) * n_chunks) // n_blocks
    first_group = [0] + [int(group_id[chunks[c][0]]) for c in first_chunk[1:]] + [n_groups]
    block_of_group = np.repeat(np.arange(n_blocks, dtype=np.int32), np.diff(first_group))
    start = gs[first_group]
    per_block: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n_blocks)]
    seen = 0
    for k, idx in enumerate(chunks):
        b = int(block_of_group[group_id[idx[0]]])
        per_block[b].append((int(idx[0]), int(idx[-1]) + 1, k, seen))
        seen += len(C._group_starts(group_id[idx])) - 1
    return block_of_group, start, per_block


def curate(graded: pl.DataFrame | str | Path, cfg: CurationConfig, *, eval_questions: pl.DataFrame | None = None,
           blocks: int | None = None, collect: bool = True) -> tuple[Any, CurationStats]:
    """Curate on Ray; same ledger and stats as `builder.curate.run(graded, cfg, eval_questions=...)`.

    Args:
        graded: the graded table as a frame, or parquet (a file, a folder or a glob) read by Ray, so the driver
            never holds its text.
        cfg: curation settings (recipe.curation).
        eval_questions: as for `curate.run`.
        blocks: Ray blocks per block pass (recipe executor.curate_blocks); None = one per curate chunk (about
            CHUNK_ROWS rows). A block holds whole chunks, so there are never more blocks than chunks.
        collect: return the ledger as a polars frame (True), or as a Ray dataset in ledger order (False) for a
            ledger larger than the driver (write it with `.write_parquet`).

    Returns:
        (ledger, stats) as `curate.run` returns them.
    """
    import ray

    from builder.stats import Decontamination

    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init()
    _context()
    if cfg.decontaminate:
        C.check_eval_questions(eval_questions)
    if isinstance(graded, pl.DataFrame) and graded.is_empty():
        return C.run(graded, cfg, eval_questions=eval_questions)
    parts = max(2, int(ray.cluster_resources().get("CPU", 2)))
    source = _dataset(graded, parts)

    # 0. scan: keys, filter codes, bytes
    scan = source.map_batches(_scan_batch, batch_format="pyarrow", batch_size=SCAN_ROWS, fn_kwargs={"cfg": cfg})
    keys = [t for t in _tables(scan) if t.height]
    if not keys:  # empty parquet files
        return C.run(table_schema("graded").empty(), cfg, eval_questions=eval_questions)
    keys = C.sort_rows(pl.concat(keys))
    n = keys.height
    code = keys["_code"].to_numpy().copy()
    nbytes = keys["_nbytes"].to_numpy()
    group_id = keys["qid"].rle_id().to_numpy()
    gs = C._group_starts(group_id)
    tasks = keys["task"].unique(maintain_order=True).to_list()
    task_id = C._task_ids(keys, tasks)
    groups = keys[gs[:-1]].select("task", "qid")
    del keys
    cluster = np.full(n, -1, dtype=np.int64)
    stride = C.distinct_stride(len(gs) - 1, int(nbytes.sum()))
    mh = cfg.minhash
    need_global = mh.enabled and mh.scope in ("global", "both")
    log.info("ray curate: scanned %d rows (%d questions) in %.1fs", n, len(gs) - 1, time.perf_counter() - t0)

    def block_pass(*, dedup: bool, select: bool, full: bool):
        """One block pass over curate's chunks of the alive rows; returns the materialised output dataset."""
        chunks = C.chunk_rows(group_id, code, nbytes)
        block_of_group, start, per_block = _plan(chunks, group_id, gs, blocks)
        plan = ray.put(_Pass(cfg, tasks, stride, code, cluster, start, per_block, dedup, select, full,
                             decontaminate=cfg.decontaminate))
        tags = ray.put(groups.with_columns(_block=pl.Series(block_of_group)))
        out = (source.map_batches(_tag_batch, batch_format="pyarrow", batch_size=SCAN_ROWS, fn_kwargs={"tags": tags})
               .groupby("_block", num_partitions=len(per_block))
               .map_groups(_block_batch, batch_format="pyarrow", fn_kwargs={"plan": plan})
               .materialize())
        log.info("ray curate: block pass (dedup %s, select %s) done at %.1fs", dedup, select, time.perf_counter() - t0)
        return out, len(chunks), len(per_block)

    def gather(out) -> list[dict]:
        """Codes and clusters of a pass back into the driver's arrays; returns the blocks' side outputs."""
        sides = []
        for t in _tables(out.select_columns(["_pos", "_code", "_cluster", "_side"])):
            pos = t["_pos"].to_numpy()
            code[pos] = t["_code"].to_numpy()
            cluster[pos] = t["_cluster"].to_numpy()
            sides += [pickle.loads(s) for s in t["_side"].drop_nulls().to_list()]
        return sides

    if need_global:
        first, n_chunks, n_blocks = block_pass(dedup=True, select=False, full=False)
        gather(first)
        pos, root = _global_clusters(first, cfg, parts=max(n_blocks, parts))
        C.mark_global(code, cluster, pos, root)
        del first
        last, n_chunks, n_blocks = block_pass(dedup=False, select=True, full=True)
    else:
        last, n_chunks, n_blocks = block_pass(dedup=True, select=True, full=True)
    sides = gather(last)
    diversity = C._Diversity(len(tasks), stride=stride)
    for _, sums in sorted((d for s in sides for d in s["div"]), key=lambda d: d[0]):
        diversity.merge(sums)
    log.info("ray curate: dedup and selection over %d chunks in %d blocks, %.1fs", n_chunks, n_blocks,
             time.perf_counter() - t0)

    # 4. decontamination
    decon = Decontamination()
    if cfg.decontaminate:
        decon = _decontaminate(last, [s["questions"] for s in sides], groups, group_id, code, cfg, eval_questions)

    # 5. ledger
    ledger = last.map_batches(_ledger_batch, batch_format="pyarrow", batch_size=SCAN_ROWS,
                              fn_kwargs={"final": ray.put((code, cluster))})
    if collect:
        ledger = pl.concat(_tables(ledger)).sort("_pos")
        if not np.array_equal(ledger["_pos"].to_numpy(), np.arange(n)):
            raise RuntimeError(f"ray curate: the ledger has {ledger.height} rows, not positions 0..{n - 1}")
        ledger = ledger.drop("_pos")
    else:
        ledger = ledger.sort("_pos").drop_columns(["_pos"])
    stats = C._stats(task_id, code, tasks, diversity, decon, cfg)
    log.info("ray curate: %d rows -> %d kept in %.1fs", n, int((code == 0).sum()), time.perf_counter() - t0)
    return ledger, stats


def _scan_batch(batch: pa.Table, *, cfg: CurationConfig) -> pa.Table:
    if not batch.num_rows:
        return batch.slice(0, 0).select([])
    df = validate(pl.from_arrow(batch), "graded", where="curate input")
    return df.select(KEYS).with_columns(_code=pl.Series(C.filter_codes(df, cfg)),
                                        _nbytes=pl.Series(C.compared_bytes(df, cfg))).to_arrow()


def _tag_batch(batch: pa.Table, *, tags) -> pa.Table:
    df = pl.from_arrow(batch).drop(_PRIVATE, strict=False)
    return df.join(_get(tags), on=["task", "qid"], how="left").to_arrow()


def _block_batch(batch: pa.Table, *, plan) -> pa.Table:
    """One block of whole questions: curate's per-chunk steps on each of its chunks."""
    import pyarrow as pa

    from builder.dedup import permutations

    p: _Pass = _get(plan)
    cfg, mh = p.cfg, p.cfg.minhash
    raw = pl.from_arrow(batch)
    b = int(raw["_block"][0])
    df = C.sort_rows(validate(raw, "graded", where="curate input"))
    del raw
    s = int(p.start[b])
    m = df.height
    if m != p.start[b + 1] - s:
        raise RuntimeError(f"ray curate: block {b} has {m} rows, the plan says {p.start[b + 1] - s}")
    pos = s + np.arange(m, dtype=np.int64)
    code, cluster = p.code[s: s + m].copy(), p.cluster[s: s + m].copy()
    group_id = df["qid"].rle_id().to_numpy()
    task_id = C._task_ids(df, p.tasks)
    compared = df.select(C._compared_text(cfg.dedup_text))["text"]
    lengths = C.selection_lengths(df, cfg)
    perm = permutations(mh.num_perm, mh.seed, mh.scheme)
    sig_all = np.zeros((m, mh.num_perm), perm.dtype) if not p.select else None
    has_sig = np.zeros(m, dtype=bool)
    div = []
    for lo, hi, k, seen in p.chunks[b]:
        idx = (lo - s) + np.flatnonzero(code[lo - s: hi - s] == 0)
        c, cl = code[idx], cluster[idx]
        if p.dedup:
            sh, sig = C.dedup_chunk(compared.gather(idx), group_id[idx], c, cl, pos[idx], cfg, perm)
            cluster[idx] = cl
        else:
            sh, sig = C.chunk_signatures(compared.gather(idx), cfg, perm)
        if p.select:
            d = C._Diversity(len(p.tasks), stride=p.stride, seen=seen)
            C.select_chunk(c, group_id[idx], task_id[idx], sh, sig, None if lengths is None else lengths[idx], cfg, d)
            div.append((k, d.sums()))
        else:
            alive = c == 0
            sig_all[idx[alive]] = sig[alive]
            has_sig[idx[alive]] = True
        code[idx] = c
    side: dict[str, Any] = {"div": div, "questions": None}
    if p.full and p.decontaminate:  # the first live row of each question (what stage 6 checks)
        live = df.select("qid", "task", "question").with_columns(_pos=pl.Series(pos)).filter(pl.Series(code == 0))
        side["questions"] = live.unique("qid", keep="first", maintain_order=True)
    cols = [pl.Series("_pos", pos), pl.Series("_code", code), pl.Series("_cluster", cluster)]
    out = df.with_columns(cols) if p.full else pl.DataFrame(cols)
    side_col = [pickle.dumps(side)] + [None] * (m - 1)
    table = out.with_columns(_side=pl.Series(side_col, dtype=pl.Binary)).to_arrow()
    if sig_all is not None:
        width = sig_all.shape[1] * sig_all.itemsize
        valid = pa.py_buffer(np.packbits(has_sig, bitorder="little").tobytes())
        table = table.append_column("_sig", pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), m, [valid, pa.py_buffer(np.ascontiguousarray(sig_all).tobytes())]))
    return table


def _read_sigs(table: pa.Table, dtype, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """(ledger positions, signatures) of the rows of a first-pass output table that carry a signature."""
    col = table["_sig"].combine_chunks()
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    width = num_perm * np.dtype(dtype).itemsize
    raw = np.frombuffer(col.buffers()[1], np.uint8)[col.offset * width: (col.offset + len(col)) * width]
    sig = raw.view(dtype).reshape(len(col), num_perm)[valid]
    return table["_pos"].to_numpy()[valid], sig


def _global_clusters(first, cfg: CurationConfig, *, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Global near-duplicates across blocks: (ledger positions of rows in clusters of two or more, their roots)."""
    import ray

    from builder.dedup import permutations, union_pairs

    mh = cfg.minhash
    dtype = permutations(1, mh.seed, mh.scheme).dtype
    refs = first.select_columns(["_pos", "_sig"]).to_arrow_refs()
    band_task = ray.remote(_band_task).options(num_returns=parts)
    by_block = [band_task.remote(ref, mh, dtype, parts) for ref in refs]
    by_block = [r if isinstance(r, list) else [r] for r in by_block]
    link = ray.remote(_bucket_task)
    pairs = ray.get([link.remote(refs, mh, dtype, *[blk[q] for blk in by_block]) for q in range(parts)])
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    nodes = np.unique(np.concatenate([a, b]))
    root = union_pairs(len(nodes), np.searchsorted(nodes, a), np.searchsorted(nodes, b))
    return nodes, nodes[root]


def _band_task(table: pa.Table, mh, dtype, parts: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Band keys of one block's survivors, cut into `parts` partitions by key: [(band, key, position)]."""
    from builder.dedup import band_keys

    pos, sig = _read_sigs(table, dtype, mh.num_perm)
    keys = band_keys(sig, mh.bands, mh.num_perm // mh.bands) if len(sig) else np.zeros((mh.bands, 0), np.uint64)
    band = np.repeat(np.arange(mh.bands, dtype=np.int16), len(pos))
    key, row = keys.ravel(), np.tile(pos, mh.bands)
    part = (key % np.uint64(parts)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    cuts = np.searchsorted(part[order], np.arange(1, parts))
    out = [(bb, kk, rr) for bb, kk, rr in zip(np.split(band[order], cuts), np.split(key[order], cuts),
                                               np.split(row[order], cuts), strict=True)]
    return out if parts > 1 else out[0]


def _bucket_task(refs: list, mh, dtype, *parts) -> tuple[np.ndarray, np.ndarray]:
    """Link the whole buckets of one key partition (`link_buckets`); returns (position, root position) pairs."""
    import ray

    from builder.dedup import link_buckets

    band = np.concatenate([p[0] for p in parts])
    key = np.concatenate([p[1] for p in parts])
    pos = np.concatenate([p[2] for p in parts])
    order = np.lexsort((pos, key, band))
    band, key, pos = band[order], key[order], pos[order]
    same = (band[1:] == band[:-1]) & (key[1:] == key[:-1])
    shared = np.zeros(len(pos), dtype=bool)  # in a bucket of two or more: the only rows that get compared
    shared[1:] |= same
    shared[:-1] |= same
    band, key, pos = band[shared], key[shared], pos[shared]
    nodes = np.unique(pos)
    empty = np.zeros(0, np.int64)
    if not len(nodes):
        return empty, empty
    sig = np.zeros((len(nodes), mh.num_perm), dtype)
    for ref in refs:
        tpos, tsig = _read_sigs(ray.get(ref), dtype, mh.num_perm)
        hit = np.isin(tpos, nodes)
        sig[np.searchsorted(nodes, tpos[hit])] = tsig[hit]
    root = link_buckets(sig, band, key, np.searchsorted(nodes, pos), np.arange(len(nodes)), bands=mh.bands,
                        threshold=mh.threshold)
    member = root != np.arange(len(nodes))
    return nodes[member], nodes[root[member]]


def _decontaminate(last, questions: list[pl.DataFrame | None], groups: pl.DataFrame, group_id: np.ndarray,
                   code: np.ndarray, cfg: CurationConfig, eval_questions: pl.DataFrame):
    """Stage 6: question hits on the driver (one row per live question), rationale hits as map_batches."""
    import ray

    from builder.decontaminate import find_question_hits

    live = [q for q in questions if q is not None]
    schema = {"qid": pl.String, "task": pl.String, "question": pl.String, "_pos": pl.Int64}
    qs = (pl.concat(live) if live else pl.DataFrame(schema=schema)).sort("_pos")
    qs = qs.unique("qid", keep="first", maintain_order=True).drop("_pos")
    hits = find_question_hits(qs, eval_questions, cfg)
    if hits.height:
        bad = groups["qid"].is_in(hits["qid"].implode()).to_numpy()[group_id]
        code[bad & (code == 0)] = C._CODE[R.CONTAMINATED_QUESTION]
    rhits = None
    if cfg.decontaminate_rationales:
        found = last.map_batches(_rationale_batch, batch_format="pyarrow", batch_size=SCAN_ROWS, fn_kwargs={
            "code": ray.put(code), "hit_qids": hits["qid"], "eval_questions": ray.put(eval_questions), "cfg": cfg})
        rhits = pl.concat(_tables(found)).sort("row")
        if rhits.height:
            code[rhits["row"].to_numpy()] = C._CODE[R.CONTAMINATED_RATIONALE]
    return C.decontamination(qs, hits, rhits, eval_questions)


def _rationale_batch(batch: pa.Table, *, code, hit_qids: pl.Series, eval_questions, cfg: CurationConfig) -> pa.Table:
    from builder.decontaminate import find_rationale_hits

    df = pl.from_arrow(batch).select("qid", pl.col("_pos").alias("row"), "rationale")
    live = df.filter(pl.Series(_get(code)[df["row"].to_numpy()] == 0) & ~pl.col("qid").is_in(hit_qids.implode()))
    return find_rationale_hits(live, _get(eval_questions), cfg).to_arrow()


def _ledger_batch(batch: pa.Table, *, final) -> pa.Table:
    code, cluster = _get(final)
    df = pl.from_arrow(batch)
    pos = df["_pos"].to_numpy()
    return C._ledger(df.drop(_PRIVATE, strict=False), code[pos], cluster[pos]).with_columns(
        _pos=pl.Series(pos)).to_arrow()
