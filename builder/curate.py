"""Curate stage: graded -> ledger. Every graded row ends kept, or dropped with the stage and reason that dropped it.

Stages, in order (a row dropped by one is not seen by later ones; reasons in `builder.reasons`):

1. filter: requests the teacher refused (`teacher_error`, on every row, first), then the quality filters from
   `builder.filters.FILTERS` named in cfg.filters (first firing one wins).
2. correctness: wrong answers (cfg.keep_correct_only).
3. exact_dedup: same normalised text within a question (first sample kept).
4. near_dedup: MinHash + LSH near-duplicates within each question and/or globally (cfg.minhash.scope); the
   lowest sample of a cluster is kept. For exact and near duplicates alike, `cluster` holds the ledger position
   (row number in the returned ledger) of the row kept for the cluster, on the members and on that row.
5. select: k = cfg.selection.max_per_question of the N survivors per question (diverse/random/first, or
   length-aware: shortest/length_mix, see `builder.select`).
6. decontaminate: questions (and optionally rationales) matching eval questions (`builder.decontaminate`).

Dedup, selection and the diversity figures compare cfg.dedup_text: the rationale (default), the reasoning trace,
or both; reasoning traces of 4k-32k tokens are shingled in chunks of about CHUNK_BYTES.

The plan, the same for every executor (`run` below is the local executor's loop over it; the Ray executor,
`builder.executors.ray_curate`, maps it over Ray tasks). Rows are processed in chunks of whole questions, so
signatures for a million rationales never sit in memory at once (except with global scope, which needs them all:
num_perm * 4 bytes per row):

- `scan(batch, cfg)`: any batch of graded rows, row by row: the batch validated and its keys, stage 1-2 codes,
  grade status (one byte per row, counted per task by `Plan.of` for the stats' `grade_status`) and compared bytes.
- `Plan.of(keys, cfg, ...)`: the driver, from the keys of the whole table: ledger order, the chunks, whether global
  scope is needed, the empty table (one empty block); `plan.blocks(...)` cuts consecutive chunks into `Block`s.
- `run_block(rows, block, eval_questions)`: stages 3-6 on one block's rows (ledger order), chunk by chunk: codes,
  clusters, diversity sums, and the ledger rows (or, before the global link, the survivors' signatures).
- `global_buckets` then `link_global`: global near-duplicates, bucket partitions linked one by one.
- `execute(plan, map_blocks, link)`: the passes (one, or two around the global link) and the stats.

Returns the ledger (schemas/ledger.table.json, sorted by task, qid, sample_idx) and `builder.stats.CurationStats`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from builder import reasons as R
from builder.dedup import (
    Shingled,
    band_keys,
    cluster_within_groups,
    exact_within_groups,
    link_buckets,
    pairwise_jaccard,
    permutations,
    shingle,
    signatures_from_hashes,
    union_pairs,
)
from builder.errors import SchemaError
from builder.filters import reason_expr
from builder.graders import OK, STATUSES
from builder.kernels import HAVE_NUMBA
from builder.recipe import CurationConfig
from builder.schemas import table_schema, validate
from builder.select import distinct_ngrams, select
from builder.stats import ContaminationHit, CurationStats, Decontamination, Diversity, DiversityFigures, Funnel

log = logging.getLogger(__name__)

CHUNK_ROWS = 131_072
# ... or about this many bytes of compared text (4k-32k-token traces: shingles of a chunk stay ~100 MB).
CHUNK_BYTES = 64 << 20
# Distinct n-grams need a sort per question: measured on a systematic sample of about this many questions.
DISTINCT_SAMPLE = 16_384
# ... and on about this many bytes of compared text (a question of eight 8k-token traces sorts ~60k shingles).
DISTINCT_BYTES = 64 << 20
_KEYS = ("task", "qid", "sample_idx")  # ledger order
# Code 0 = alive/kept; code k = _CODES[k - 1] = (stage, reason).
_CODES: list[tuple[str, str]] = [(stage, reason) for stage, rs in R.REASONS.items() for reason in rs]
_CODE = {reason: i + 1 for i, (_, reason) in enumerate(_CODES)}
_STAGE_OF_CODE = np.array([-1] + [R.STAGES.index(stage) for stage, _ in _CODES], dtype=np.int8)
_HIT_COLUMNS = ("qid", "task", "question", "matched_task", "matched_question", "method", "score")
_STATUS = {s: i for i, s in enumerate(STATUSES)}  # grade_status -> the keys' `status` byte


def _task_ids(df: pl.DataFrame, tasks: Sequence[str]) -> np.ndarray:
    return df["task"].replace_strict({t: i for i, t in enumerate(tasks)}, return_dtype=pl.Int64).to_numpy().astype(
        np.int64)  # an empty frame gives an object array otherwise


def _group_starts(group_ids: np.ndarray) -> np.ndarray:
    """Offsets of runs of equal ids (rows already grouped)."""
    if not len(group_ids):
        return np.zeros(1, dtype=np.int64)
    cuts = np.flatnonzero(group_ids[1:] != group_ids[:-1]) + 1
    return np.concatenate([[0], cuts, [len(group_ids)]]).astype(np.int64)


def _chunks(group_ids: np.ndarray, size: int, nbytes: np.ndarray | None = None,
            max_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """[lo, hi) row ranges of about `size` rows (and `max_bytes` of text, given `nbytes` per row) that never split
    a group."""
    starts = _group_starts(group_ids)
    cum = None if nbytes is None else np.concatenate([[0], np.cumsum(nbytes, dtype=np.int64)])
    out, lo = [], 0
    while lo < len(group_ids):
        hi_target = lo + size
        if cum is not None:  # the row where the byte budget runs out, if before `size` rows
            hi_target = min(hi_target, int(np.searchsorted(cum, cum[lo] + max_bytes, side="right")) - 1)
        k = int(np.searchsorted(starts, hi_target, side="left"))
        hi = int(starts[min(k, len(starts) - 1)])
        if hi <= lo:
            hi = int(starts[int(np.searchsorted(starts, lo, side="right"))])
        out.append((lo, hi))
        lo = hi
    return out


class _Diversity:
    """Per-task accumulators for mean pairwise Jaccard (pair-weighted) and distinct n-grams (mean per question)."""

    def __init__(self, n_tasks: int, stride: int = 1, seen: int = 0):
        self.stride = stride  # distinct n-grams are measured on every stride-th question (a systematic sample)
        self._seen = seen  # questions measured before (a chunk measured elsewhere starts where its order puts it)
        self.jac = np.zeros((2, n_tasks))
        self.pairs = np.zeros((2, n_tasks))
        self.distinct = np.zeros((2, n_tasks))
        self.questions = np.zeros((2, n_tasks))

    def add(self, which: int, task_of_group: np.ndarray, sig: np.ndarray, hashes: np.ndarray, starts: np.ndarray,
            group_starts: np.ndarray, mask: np.ndarray) -> None:
        n_tasks = self.jac.shape[1]
        sums, counts = pairwise_jaccard(sig, group_starts, mask)
        self.jac[which] += np.bincount(task_of_group, weights=sums, minlength=n_tasks)
        self.pairs[which] += np.bincount(task_of_group, weights=counts, minlength=n_tasks)
        g = len(group_starts) - 1
        picked = (self._seen + np.arange(g)) % self.stride == 0
        d, t = distinct_ngrams(hashes, starts, group_starts, mask & np.repeat(picked, np.diff(group_starts)))
        if which == 1:
            self._seen += g
        has = t > 0
        ratio = np.divide(d, t, out=np.zeros(len(t)), where=has)
        self.distinct[which] += np.bincount(task_of_group, weights=ratio, minlength=n_tasks)
        self.questions[which] += np.bincount(task_of_group, weights=has.astype(float), minlength=n_tasks)

    def sums(self) -> tuple[np.ndarray, ...]:
        return self.jac, self.pairs, self.distinct, self.questions

    def merge(self, sums: tuple[np.ndarray, ...]) -> None:
        """Add one chunk's sums (a fresh accumulator's `sums()`), in chunk order: the same floats as `add` here."""
        for mine, theirs in zip(self.sums(), sums, strict=True):
            mine += theirs

    def figures(self, tasks: list[str]) -> dict[str, Diversity]:
        def side(w: int, t: int) -> DiversityFigures:
            return DiversityFigures(
                mean_pairwise_jaccard=float(self.jac[w, t] / self.pairs[w, t]) if self.pairs[w, t] else 0.0,
                distinct_ngrams=float(self.distinct[w, t] / self.questions[w, t]) if self.questions[w, t] else 0.0)

        return {task: Diversity(before=side(0, t), after=side(1, t)) for t, task in enumerate(tasks)}


# ------------------------------------------------------------------ the plan
def scan(batch: pl.DataFrame, cfg: CurationConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Stages 1-2 on any batch of graded rows (row by row, so any batching gives the same): (the batch validated,
    its keys: task, qid, sample_idx, `code`, `nbytes`, the UTF-8 bytes of the compared text that chunks are
    sized by, and `status`, the grade_status as its index in `STATUSES`). The keys of every batch are all `Plan.of`
    needs, so the text can stay where the batch is.

    Raises:
        SchemaError: the batch does not match the graded schema, or a grade_status is not one of `STATUSES`.
    """
    df = validate(batch, "graded", where="curate input")
    keys = df.select(*_KEYS, pl.Series("code", _filter_codes(df, cfg)),
                     _compared_text(cfg.dedup_text).str.len_bytes().fill_null(0).cast(pl.Int64).alias("nbytes"),
                     pl.col("grade_status").replace_strict(_STATUS, default=-1, return_dtype=pl.Int8).alias("status"))
    if keys.height and (bad := keys["status"].arg_min()) is not None and keys["status"][bad] < 0:
        raise SchemaError(f"table 'graded' in curate input: row {bad}: grade_status {df['grade_status'][bad]!r} is "
                          f"not one of {', '.join(STATUSES)}")
    return df, keys


@dataclass(frozen=True)
class Block:
    """What one `run_block` call does: ledger positions [lo, hi) of whole questions, their codes and clusters so
    far, the chunks inside (lo, hi, chunk index, questions in earlier chunks; ledger positions) and the pass."""

    lo: int
    hi: int
    code: np.ndarray
    cluster: np.ndarray
    chunks: tuple[tuple[int, int, int, int], ...]
    dedup: bool  # stages 3-4 at question scope (the first pass)
    final: bool  # stages 5-6 and the ledger rows (the last pass); else the survivors' signatures (global scope)
    cfg: CurationConfig
    tasks: tuple[str, ...]
    stride: int  # distinct n-grams on every stride-th question


@dataclass
class BlockDecontamination:
    """Stage 6 on one block: live questions checked, and the question and rationale hits (`_HIT_COLUMNS`)."""

    checked: int
    hits: pl.DataFrame
    rationale_hits: pl.DataFrame


@dataclass
class BlockResult:
    """What `run_block` returns. `rows` is the bulk: the block's ledger rows (final pass) or its survivors'
    (ledger positions, signatures); an executor may keep it elsewhere (a Ray object ref) and send the rest."""

    lo: int
    code: np.ndarray
    cluster: np.ndarray
    diversity: list[tuple[int, tuple[np.ndarray, ...]]] = field(default_factory=list)  # (chunk index, sums)
    decontamination: BlockDecontamination | None = None
    rows: Any = None


@dataclass
class Plan:
    """The driver's side of curation, from the keys of the whole table: ledger order, every row's code and cluster,
    and each decision (chunks, blocks, global scope, decontamination, the empty table: one empty block)."""

    cfg: CurationConfig
    tasks: list[str]
    task_id: np.ndarray
    group_id: np.ndarray
    code: np.ndarray
    cluster: np.ndarray
    nbytes: np.ndarray
    order: np.ndarray | None  # scanned row of each ledger position; None: scanned in ledger order
    sizes: list[int]  # rows of each scanned batch
    stride: int
    max_blocks: int | None
    eval_questions: pl.DataFrame | None
    # graded rows per (task, grade status in STATUSES order), counted from every row's key before any stage: the
    # stats' `grade_status` (a matrix, not a per-row array: the statuses are not needed after the scan)
    status_counts: np.ndarray

    @classmethod
    def of(cls, keys: Sequence[pl.DataFrame], cfg: CurationConfig, *, eval_questions: pl.DataFrame | None = None,
           max_blocks: int | None = None) -> Plan:
        """Plan the curation of the batches whose `scan` keys are `keys` (in scan order).

        Raises:
            SchemaError: a key (qid, sample_idx) twice, or a qid in two tasks, across batches.
            ValueError: decontamination on without eval questions.
        """
        if cfg.decontaminate:
            eval_questions = _check_eval_questions(eval_questions)
        every = pl.concat(keys) if keys else scan(table_schema("graded").empty(), cfg)[1]
        every = every.lazy().with_row_index("row").sort(*_KEYS).collect()  # lazy: the parallel sort, 4x faster
        order = every["row"].to_numpy().astype(np.int64)
        if np.array_equal(order, np.arange(len(order))):
            order = None
        group_id = every["qid"].rle_id().to_numpy()
        n_groups = int(group_id[-1]) + 1 if len(group_id) else 0
        _check_keys(every, n_groups)
        tasks = every["task"].unique(maintain_order=True).to_list()
        nbytes = every["nbytes"].to_numpy()
        task_id = _task_ids(every, tasks)
        status_counts = np.bincount(task_id * len(STATUSES) + every["status"].to_numpy().astype(np.int64),
                                    minlength=len(tasks) * len(STATUSES)).reshape(len(tasks), len(STATUSES))
        return cls(cfg, tasks, task_id, group_id, every["code"].to_numpy().copy(),
                   np.full(every.height, -1, dtype=np.int64), nbytes, order, [k.height for k in keys],
                   _distinct_stride(n_groups, int(nbytes.sum())), max_blocks, eval_questions, status_counts)

    @property
    def n(self) -> int:
        return len(self.code)

    @property
    def needs_global(self) -> bool:
        """Global scope: a first pass dedups and returns signatures, `link_global` links, a second pass selects."""
        mh = self.cfg.minhash
        return mh.enabled and mh.scope in ("global", "both")

    def in_order(self, df: pl.DataFrame) -> pl.DataFrame:
        """The scanned rows (one batch) in ledger order; not copied when already sorted (the usual case)."""
        return df if self.order is None else df[self.order]

    def positions(self) -> list[np.ndarray]:
        """The ledger position of every scanned row, per batch."""
        pos = np.arange(self.n, dtype=np.int64)
        if self.order is not None:
            pos[self.order] = pos.copy()
        return np.split(pos, np.cumsum(self.sizes)[:-1]) if self.sizes else []

    def blocks(self, *, dedup: bool, final: bool) -> list[Block]:
        """The next pass: curate's chunks of the alive rows, consecutive chunks per block (at most `max_blocks`;
        default one per chunk). A block covers whole questions from its first chunk's first question to the next
        block's; questions without alive rows ride with the block before them (or the first)."""
        chunks = _chunk_rows(self.group_id, self.code, self.nbytes)
        gs = _group_starts(self.group_id)
        n_blocks = max(1, min(self.max_blocks or len(chunks), len(chunks)))
        first_chunk = (np.arange(1, n_blocks) * len(chunks)) // n_blocks
        bounds = np.array([0] + [int(gs[self.group_id[chunks[c][0]]]) for c in first_chunk] + [self.n])
        per_block: list[list[tuple[int, int, int, int]]] = [[] for _ in range(n_blocks)]
        seen = 0
        for k, idx in enumerate(chunks):
            per_block[int(np.searchsorted(bounds, idx[0], side="right")) - 1].append(
                (int(idx[0]), int(idx[-1]) + 1, k, seen))
            seen += len(_group_starts(self.group_id[idx])) - 1
        return [Block(int(lo), int(hi), self.code[lo:hi].copy(), self.cluster[lo:hi].copy(), tuple(cs), dedup, final,
                      self.cfg, tuple(self.tasks), self.stride)
                for lo, hi, cs in zip(bounds[:-1], bounds[1:], per_block, strict=True)]

    def merge(self, results: Sequence[BlockResult]) -> None:
        """Take the blocks' codes and clusters."""
        for r in results:
            self.code[r.lo: r.lo + len(r.code)] = r.code
            self.cluster[r.lo: r.lo + len(r.cluster)] = r.cluster

    def mark_global(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Global near-duplicates from `link_global`'s (position, root) pairs of every partition: connected
        components, the lowest position of each kept."""
        a = np.concatenate([p[0] for p in pairs] + [np.zeros(0, np.int64)])
        b = np.concatenate([p[1] for p in pairs] + [np.zeros(0, np.int64)])
        nodes = np.unique(np.concatenate([a, b]))
        root = nodes[union_pairs(len(nodes), np.searchsorted(nodes, a), np.searchsorted(nodes, b))]
        self.code[nodes[root != nodes]] = _CODE[R.NEAR_DUPLICATE_GLOBAL]
        self.cluster[nodes] = root

    def stats(self, results: Sequence[BlockResult]) -> CurationStats:
        """The stats of the last pass's results (all blocks, merged): diversity sums added in chunk order (the
        same floats however the chunks were grouped); decontamination hits in ledger order, questions first."""
        diversity = _Diversity(len(self.tasks), stride=self.stride)
        for _, sums in sorted((d for r in results for d in r.diversity), key=lambda d: d[0]):
            diversity.merge(sums)
        decon = Decontamination()
        parts = [r.decontamination for r in results if r.decontamination is not None]
        if self.cfg.decontaminate:
            hits = pl.concat([p.hits for p in parts] + [p.rationale_hits for p in parts]).to_dicts()
            decon = Decontamination(checked=sum(p.checked for p in parts),
                                    eval_questions=self.eval_questions["question"].n_unique(),
                                    hits=[ContaminationHit(**h) for h in hits])
        return _stats(self.task_id, self.code, self.tasks, diversity, decon, self.cfg, self.status_counts)


def _check_keys(keys: pl.DataFrame, n_groups: int) -> None:
    """What validating each batch cannot see: a key twice across batches, a qid in two tasks (the blocks and the
    decontamination take a qid for one question)."""
    same = (pl.col("qid") == pl.col("qid").shift()) & (pl.col("sample_idx") == pl.col("sample_idx").shift())
    same = same.fill_null(False)
    dup = keys.select(same.arg_max().alias("at"), same.any().alias("any"))
    if dup["any"][0]:
        key = keys.select("qid", "sample_idx").row(int(dup["at"][0]), named=True)
        raise SchemaError(f"table 'graded' in curate input: duplicate key {key}")
    if keys["qid"].n_unique() != n_groups:
        twice = keys.group_by("qid").agg(pl.col("task").unique().sort()).filter(pl.col("task").list.len() > 1)
        qid, tasks = twice.sort("qid").row(0)
        raise SchemaError(f"table 'graded' in curate input: qid {qid!r} is in tasks {tasks}; a qid names one "
                          "question of one task")


MapBlocks = Callable[[list[Block]], list[BlockResult]]
LinkGlobal = Callable[[list[BlockResult]], list[tuple[np.ndarray, np.ndarray]]]


def execute(plan: Plan, map_blocks: MapBlocks, link: LinkGlobal) -> tuple[list[BlockResult], CurationStats]:
    """Every pass of `plan`, for any executor: `map_blocks` runs `run_block` on each block's rows wherever they
    are and returns the results in block order; `link` runs `global_buckets` and `link_global` over the first
    pass's results (global scope only). Returns the last pass's results (their `rows`: the ledger in block order)
    and the stats."""
    if plan.needs_global:
        first = map_blocks(plan.blocks(dedup=True, final=False))
        plan.merge(first)
        plan.mark_global(link(first))
        del first
        last = map_blocks(plan.blocks(dedup=False, final=True))
    else:
        last = map_blocks(plan.blocks(dedup=True, final=True))
    plan.merge(last)
    return last, plan.stats(last)


def run_block(rows: pl.DataFrame, block: Block, eval_questions: pl.DataFrame | None = None) -> BlockResult:
    """Stages 3-6 on one block: `rows` are its validated graded rows in ledger order (positions block.lo..hi)."""
    cfg, mh = block.cfg, block.cfg.minhash
    m = rows.height
    if m != block.hi - block.lo:
        raise RuntimeError(f"curate: block at {block.lo} has {m} rows, the plan says {block.hi - block.lo}")
    pos = block.lo + np.arange(m, dtype=np.int64)
    code, cluster = block.code.copy(), block.cluster.copy()
    group_id = rows["qid"].rle_id().to_numpy()
    task_id = _task_ids(rows, block.tasks)
    compared = rows.select(_compared_text(cfg.dedup_text))["text"]
    lengths = _selection_lengths(rows, cfg) if block.final else None
    perm = permutations(mh.num_perm, mh.seed, mh.scheme)
    out = BlockResult(block.lo, code, cluster)
    survivors: list[tuple[np.ndarray, np.ndarray]] = []
    for lo, hi, k, seen in block.chunks:
        idx = (lo - block.lo) + np.flatnonzero(code[lo - block.lo: hi - block.lo] == 0)
        c, cl = code[idx], cluster[idx]
        if block.dedup:
            sh, sig = _dedup_chunk(compared.gather(idx), group_id[idx], c, cl, pos[idx], cfg, perm)
            cluster[idx] = cl
        else:
            sh, sig = _chunk_signatures(compared.gather(idx), cfg, perm)
        if block.final:
            d = _Diversity(len(block.tasks), stride=block.stride, seen=seen)
            _select_chunk(c, group_id[idx], task_id[idx], sh, sig, None if lengths is None else lengths[idx], cfg, d)
            out.diversity.append((k, d.sums()))
        else:
            survivors.append((pos[idx[c == 0]], sig[c == 0]))
        code[idx] = c
    if not block.final:
        out.rows = (np.concatenate([s[0] for s in survivors] + [np.zeros(0, np.int64)]),
                    np.concatenate([s[1] for s in survivors] + [np.zeros((0, mh.num_perm), perm.dtype)]))
        return out
    if cfg.decontaminate:
        out.decontamination = _decontaminate(rows, code, pos, cfg, _check_eval_questions(eval_questions))
    out.rows = _ledger(rows, code, cluster)
    return out


def global_buckets(pos: np.ndarray, sig: np.ndarray, cfg: CurationConfig, parts: int
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Global scope, per block: the LSH buckets of its survivors (ledger positions, signatures) as (band, band key,
    position), cut into `parts` partitions by key, so each bucket is whole in one partition."""
    mh = cfg.minhash
    keys = band_keys(sig, mh.bands, mh.num_perm // mh.bands) if len(sig) else np.zeros((mh.bands, 0), np.uint64)
    band = np.repeat(np.arange(mh.bands, dtype=np.int16), len(pos))
    key, row = keys.ravel(), np.tile(pos, mh.bands)
    if parts == 1:
        return [(band, key, row)]
    part = (key % np.uint64(parts)).astype(np.uint16 if parts <= 1 << 16 else np.int64)  # 16 bits: a radix sort
    order = np.argsort(part, kind="stable")
    cuts = np.searchsorted(part[order], np.arange(1, parts))
    return list(zip(np.split(band[order], cuts), np.split(key[order], cuts), np.split(row[order], cuts), strict=True))


def link_global(pieces: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                signatures: Callable[[np.ndarray], np.ndarray], cfg: CurationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Global scope, per partition: link its whole buckets (`pieces`: that partition of every block's
    `global_buckets`) with `cluster_global`'s rule (row order, window). `signatures(positions)` gives the rows'
    signatures (sorted positions of rows in shared buckets). Returns (position, root position) of the members."""
    mh = cfg.minhash
    shared = (pl.DataFrame({name: np.concatenate([p[i] for p in pieces]) for i, name in enumerate(("b", "k", "p"))})
              .filter(pl.len().over("b", "k") > 1))  # buckets of two or more: the only rows that get compared
    nodes = np.unique(shared["p"].to_numpy())
    if not len(nodes):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    root = link_buckets(signatures(nodes), shared["b"].to_numpy(), shared["k"].to_numpy(),
                        np.searchsorted(nodes, shared["p"].to_numpy()), np.arange(len(nodes)), bands=mh.bands,
                        threshold=mh.threshold)
    member = root != np.arange(len(nodes))
    return nodes[member], nodes[root[member]]


def run(graded: pl.DataFrame, cfg: CurationConfig, *,
        eval_questions: pl.DataFrame | None = None) -> tuple[pl.DataFrame, CurationStats]:
    """Curate graded samples into the ledger, in this process: the plan as one block.

    Args:
        graded: the graded table (schemas/graded.table.json).
        cfg: curation settings (recipe.curation).
        eval_questions: questions-table frame (at least task, question) of the eval sets; required when
            cfg.decontaminate is on.

    Returns:
        (ledger, stats): every input row once with state/stage/reason/cluster, and the curation stats.

    Raises:
        SchemaError: graded does not match its schema.
        ValueError: unknown filter or selection mode, or decontamination on without eval questions.
    """
    t0 = time.perf_counter()
    df, keys = scan(graded, cfg)
    plan = Plan.of([keys], cfg, eval_questions=eval_questions, max_blocks=1)
    df = plan.in_order(df)

    def map_blocks(blocks: list[Block]) -> list[BlockResult]:
        return [run_block(df.slice(b.lo, b.hi - b.lo), b, plan.eval_questions) for b in blocks]

    def link(first: list[BlockResult]) -> list[tuple[np.ndarray, np.ndarray]]:
        (pos, sig), = (r.rows for r in first)  # one block
        return [link_global(global_buckets(pos, sig, cfg, 1), lambda nodes: sig[np.searchsorted(pos, nodes)], cfg)]

    results, stats = execute(plan, map_blocks, link)
    ledger = pl.concat([r.rows for r in results])
    log.info("curate: %d rows -> %d kept in %.2fs (%s)", plan.n, int((plan.code == 0).sum()),
             time.perf_counter() - t0, ", ".join(f"{t}: {f.kept}/{f.sampled}" for t, f in stats.funnel.items()))
    return ledger, stats


# ------------------------------------------------------------------ per-chunk steps
def _filter_codes(df: pl.DataFrame, cfg: CurationConfig) -> np.ndarray:
    """Codes after stages 1-2 (quality filters, then correctness); row by row, so any batch gives the same."""
    reasons = df.select(reason_expr(cfg).alias("r"))["r"]  # teacher_error first, even with no cfg.filters
    code = reasons.replace_strict(_CODE, default=0, return_dtype=pl.Int8).to_numpy().copy()
    if cfg.keep_correct_only:
        wrong = ~df["correct"].to_numpy()
        code[(code == 0) & wrong] = _CODE[R.INCORRECT]
    return code


def _selection_lengths(df: pl.DataFrame, cfg: CurationConfig) -> np.ndarray | None:
    """Per-row lengths the length-aware selection modes rank by (the trace's characters, else the rationale's)."""
    if cfg.selection.mode not in ("shortest", "length_mix"):
        return None
    return df.select(pl.coalesce(pl.col("reasoning"), pl.col("rationale")).str.len_chars().fill_null(0))[:, 0] \
        .to_numpy()


def _distinct_stride(n_groups: int, total_bytes: int) -> int:
    """Every how many questions distinct n-grams are measured (about DISTINCT_SAMPLE questions, DISTINCT_BYTES)."""
    return max(1, n_groups // DISTINCT_SAMPLE, -(-total_bytes // DISTINCT_BYTES)) if n_groups else 1


def _chunk_rows(group_id: np.ndarray, code: np.ndarray, nbytes: np.ndarray) -> list[np.ndarray]:
    """The alive rows (code 0) cut into chunks of whole questions (CHUNK_ROWS rows, CHUNK_BYTES of text)."""
    alive = np.flatnonzero(code == 0)
    return [alive[lo:hi] for lo, hi in _chunks(group_id[alive], CHUNK_ROWS, nbytes[alive])]


def _chunk_signatures(texts: pl.Series, cfg: CurationConfig, perm) -> tuple[Shingled, np.ndarray]:
    mh = cfg.minhash
    sh = shingle(texts, mh.ngram, mh.hash)
    return sh, signatures_from_hashes(sh.hashes, sh.starts, perm)


def _dedup_chunk(texts: pl.Series, group_id: np.ndarray, code: np.ndarray, cluster: np.ndarray, pos: np.ndarray,
                 cfg: CurationConfig, perm) -> tuple[Shingled, np.ndarray]:
    """Stages 3-4 at question scope on one chunk: exact duplicates, then MinHash near-duplicates of the rest.

    texts, group_id, code, cluster and pos (ledger positions) are the chunk's rows; code and cluster (ledger
    positions of each cluster's kept row) are updated in place. Returns the chunk's shingles and signatures.
    """
    mh = cfg.minhash
    sh, sig = _chunk_signatures(texts, cfg, perm)
    m = len(pos)
    if cfg.dedup_exact:
        root = exact_within_groups(sh.row_keys, _group_starts(group_id))
        code[root != np.arange(m)] = _CODE[R.EXACT_DUPLICATE]
        linked = _nontrivial(root)
        cluster[linked] = pos[root[linked]]
    if mh.enabled and mh.scope in ("question", "both"):
        sub = np.flatnonzero(code == 0)
        root = cluster_within_groups(sig[sub], _group_starts(group_id[sub]), bands=mh.bands, threshold=mh.threshold)
        linked = _nontrivial(root)  # members and their kept root
        code[sub[root != np.arange(len(sub))]] = _CODE[R.NEAR_DUPLICATE]
        cluster[sub[linked]] = pos[sub[root[linked]]]
    return sh, sig


def _nontrivial(root: np.ndarray) -> np.ndarray:
    """Rows of clusters with two or more rows: members (root is another row) and the roots they point at."""
    member = root != np.arange(len(root))
    return member | np.isin(np.arange(len(root)), root[member])


def _select_chunk(code: np.ndarray, group_id: np.ndarray, task_id: np.ndarray, sh: Shingled, sig: np.ndarray,
                  lengths: np.ndarray | None, cfg: CurationConfig, diversity: _Diversity) -> None:
    """Stage 5 on one chunk (the arrays are its rows): selection over the alive rows, plus before/after diversity;
    code is updated in place."""
    alive = code == 0
    gs = _group_starts(group_id)
    task_of_group = task_id[gs[:-1]]
    diversity.add(0, task_of_group, sig, sh.hashes, sh.starts, gs, alive)
    sub = np.flatnonzero(alive)
    keep = select(_group_starts(group_id[sub]), cfg.selection.max_per_question, cfg.selection.mode,
                  sig=sig[sub], seed=cfg.selection.seed, short_share=cfg.selection.short_share,
                  lengths=None if lengths is None else lengths[sub])
    code[sub[~keep]] = _CODE[R.NOT_SELECTED]
    chosen = np.zeros(len(code), dtype=bool)
    chosen[sub[keep]] = True
    diversity.add(1, task_of_group, sig, sh.hashes, sh.starts, gs, chosen)


def _compared_text(which: str) -> pl.Expr:
    """The text dedup and selection compare (cfg.dedup_text); a row without a trace falls back to its rationale."""
    rationale, reasoning = pl.col("rationale"), pl.col("reasoning")
    if which == "reasoning":
        return pl.coalesce(reasoning, rationale).alias("text")
    if which == "both":
        return pl.when(reasoning.is_null()).then(rationale).otherwise(
            pl.concat_str(reasoning, pl.lit("\n"), rationale)).alias("text")
    return rationale.alias("text")


def _check_eval_questions(eval_questions: pl.DataFrame | None) -> pl.DataFrame:
    """The eval questions decontamination needs, or the error that says how to give them."""
    if eval_questions is None:
        raise ValueError("curation.decontaminate is on but no eval questions were given: pass the test splits / "
                         "curation.eval_sets (rationale curate --eval FILE), or set curation.decontaminate: false")
    for col in ("task", "question"):
        if col not in eval_questions.columns:
            raise ValueError(f"eval questions: missing column {col!r} (columns: {eval_questions.columns})")
    return eval_questions


def _decontaminate(rows: pl.DataFrame, code: np.ndarray, pos: np.ndarray, cfg: CurationConfig,
                   eval_questions: pl.DataFrame) -> BlockDecontamination:
    """Stage 6 on one block (code updated in place). Each question and rationale is checked on its own, so the
    blocks' hits are the whole table's; `Plan.stats` puts them in order."""
    from builder.decontaminate import find_question_hits, find_rationale_hits

    live = rows.select("qid", "task", "question", "rationale").with_columns(row=pl.Series(pos)) \
        .filter(pl.Series(code == 0))
    questions = live.select("qid", "task", "question").unique("qid", keep="first", maintain_order=True)
    hits = find_question_hits(questions, eval_questions, cfg)
    if hits.height:
        bad = rows["qid"].is_in(hits["qid"].implode()).to_numpy()
        code[bad & (code == 0)] = _CODE[R.CONTAMINATED_QUESTION]
    rhits = hits.clear()
    if cfg.decontaminate_rationales:
        live = live.filter(~pl.col("qid").is_in(hits["qid"].implode()))
        rhits = find_rationale_hits(live.select("qid", "row", "rationale"), eval_questions, cfg)
        code[rhits["row"].to_numpy() - (pos[0] if len(pos) else 0)] = _CODE[R.CONTAMINATED_RATIONALE]
    return BlockDecontamination(
        questions.height, questions.join(hits, on="qid", maintain_order="left").select(_HIT_COLUMNS),
        rhits.join(questions, on="qid", maintain_order="left").select(_HIT_COLUMNS)
        .unique("qid", keep="first", maintain_order=True))


def _ledger(df: pl.DataFrame, code: np.ndarray, cluster: np.ndarray) -> pl.DataFrame:
    stage_names = [None] + [s for s, _ in _CODES]
    reason_names = [None] + [r for _, r in _CODES]
    codes = pl.Series("c", code.astype(np.int64))
    ledger = df.with_columns(
        state=pl.when(codes == 0).then(pl.lit(R.KEPT)).otherwise(pl.lit(R.DROPPED)),
        stage=codes.replace_strict(dict(enumerate(stage_names)), return_dtype=pl.String),
        reason=codes.replace_strict(dict(enumerate(reason_names)), return_dtype=pl.String),
        cluster=pl.Series(cluster).replace(-1, None),
    )
    return validate(ledger, "ledger", where="curate output")


def _stats(task_id: np.ndarray, code: np.ndarray, tasks: list[str], diversity: _Diversity, decon: Decontamination,
           cfg: CurationConfig, status_counts: np.ndarray) -> CurationStats:
    stage = _STAGE_OF_CODE[code]  # -1 kept, else index into R.STAGES
    counts = {}  # funnel step -> rows per task not dropped at or before the step's stage
    for step, after in R.FUNNEL_AFTER.items():
        last = -1 if after is None else R.STAGES.index(after)
        ok = (stage == -1) | (stage > last)
        counts[step] = np.bincount(task_id[ok], minlength=len(tasks))
    funnel = {t: Funnel(**{step: int(c[i]) for step, c in counts.items()}) for i, t in enumerate(tasks)}
    dropped: dict[str, dict[str, int]] = {}
    by_code = np.bincount(code.astype(np.int64), minlength=len(_CODES) + 1)
    for k, (st, reason) in enumerate(_CODES, start=1):
        if by_code[k]:
            dropped.setdefault(st, {})[reason] = int(by_code[k])
    grade_status = {t: {s: int(status_counts[i, k]) for k, s in enumerate(STATUSES) if s != OK}
                    for i, t in enumerate(tasks)}  # every status but ok, zeros included
    settings = cfg.model_dump(mode="json")
    settings["minhash"]["rows_per_band"] = cfg.minhash.num_perm // cfg.minhash.bands
    settings["kernels"] = "numba" if HAVE_NUMBA else "numpy"
    return CurationStats(funnel=funnel, dropped=dropped, diversity=diversity.figures(tasks), decontamination=decon,
                         settings=settings, grade_status=grade_status)
