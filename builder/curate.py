"""Curate stage: graded -> ledger. Every graded row ends kept, or dropped with the stage and reason that dropped it.

Stages, in order (a row dropped by one is not seen by later ones; reasons in `builder.reasons`):

1. filter: quality filters from `builder.filters.FILTERS` named in cfg.filters (first firing one wins).
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

Rows are processed in chunks of whole questions, so signatures for a million rationales never sit in memory
at once (except with global scope, which needs them all: num_perm * 4 bytes per row).

Returns the ledger (schemas/ledger.table.json, sorted by task, qid, sample_idx) and `builder.stats.CurationStats`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import polars as pl

from builder import reasons as R
from builder.dedup import (
    Shingled,
    cluster_global,
    cluster_within_groups,
    exact_within_groups,
    pairwise_jaccard,
    permutations,
    shingle,
    signatures_from_hashes,
)
from builder.filters import reason_expr
from builder.kernels import HAVE_NUMBA
from builder.recipe import CurationConfig
from builder.schemas import validate
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
# Code 0 = alive/kept; code k = _CODES[k - 1] = (stage, reason).
_CODES: list[tuple[str, str]] = [(stage, reason) for stage, rs in R.REASONS.items() for reason in rs]
_CODE = {reason: i + 1 for i, (_, reason) in enumerate(_CODES)}
_STAGE_OF_CODE = np.array([-1] + [R.STAGES.index(stage) for stage, _ in _CODES], dtype=np.int8)


def _task_ids(df: pl.DataFrame, tasks: list[str]) -> np.ndarray:
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


def run(graded: pl.DataFrame, cfg: CurationConfig, *,
        eval_questions: pl.DataFrame | None = None) -> tuple[pl.DataFrame, CurationStats]:
    """Curate graded samples into the ledger.

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
    df = sort_rows(validate(graded, "graded", where="curate input"))
    n = df.height
    code = filter_codes(df, cfg)  # 1-2. quality filters and correctness: vectorised expressions
    cluster = np.full(n, -1, dtype=np.int64)
    mh = cfg.minhash

    tasks = df["task"].unique(maintain_order=True).to_list()
    task_id = _task_ids(df, tasks)
    group_id = df["qid"].rle_id().to_numpy()
    perm = permutations(mh.num_perm, mh.seed, mh.scheme)
    need_global = mh.enabled and mh.scope in ("global", "both")
    compared = df.select(_compared_text(cfg.dedup_text))["text"]
    nbytes = compared_bytes(df, cfg)
    diversity = _Diversity(len(tasks), stride=distinct_stride(int(group_id[-1] + 1) if n else 0, int(nbytes.sum())))
    lengths = selection_lengths(df, cfg)

    def select_rows(idx: np.ndarray, sh: Shingled, sig: np.ndarray) -> None:
        c = code[idx]
        select_chunk(c, group_id[idx], task_id[idx], sh, sig, None if lengths is None else lengths[idx], cfg,
                     diversity)
        code[idx] = c

    timings = {"filters": time.perf_counter() - t0}
    # 3-5. exact dedup, near dedup (question scope), selection; chunked by whole questions
    global_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for idx in chunk_rows(group_id, code, nbytes):
        c, cl = code[idx], cluster[idx]
        sh, sig = dedup_chunk(compared.gather(idx), group_id[idx], c, cl, idx, cfg, perm)
        code[idx], cluster[idx] = c, cl
        if need_global:
            sub = np.flatnonzero(c == 0)
            global_parts.append((idx[sub], sig[sub]))
        else:
            select_rows(idx, sh, sig)

    if need_global:
        gidx = np.concatenate([p[0] for p in global_parts]) if global_parts else np.zeros(0, np.int64)
        gsig = (np.concatenate([p[1] for p in global_parts]) if global_parts
                else np.zeros((0, mh.num_perm), perm.dtype))
        del global_parts
        root = cluster_global(gsig, bands=mh.bands, threshold=mh.threshold)
        del gsig
        linked = nontrivial(root)
        mark_global(code, cluster, gidx[linked], gidx[root[linked]])
        for idx in chunk_rows(group_id, code, nbytes):
            select_rows(idx, *chunk_signatures(compared.gather(idx), cfg, perm))

    timings["dedup_select"] = time.perf_counter() - t0 - sum(timings.values())
    # 6. decontamination
    decon = Decontamination()
    if cfg.decontaminate:
        decon = _decontaminate(df, code, cfg, eval_questions)

    timings["decontaminate"] = time.perf_counter() - t0 - sum(timings.values())
    ledger = _ledger(df, code, cluster)
    stats = _stats(task_id, code, tasks, diversity, decon, cfg)
    timings["ledger_stats"] = time.perf_counter() - t0 - sum(timings.values())
    log.debug("curate timings: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    log.info("curate: %d rows -> %d kept in %.2fs (%s)", n, int((code == 0).sum()), time.perf_counter() - t0,
             ", ".join(f"{t}: {f.kept}/{f.sampled}" for t, f in stats.funnel.items()))
    return ledger, stats


# ------------------------------------------------------------------ per-chunk steps
# What `run` does to a batch of rows or to one chunk of whole questions, as functions of that chunk alone, so an
# executor that holds the chunk somewhere else (builder.executors.ray_curate) gets the same codes and figures.
def sort_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Rows in ledger order (task, qid, sample_idx); an already sorted frame (the usual case) is not copied."""
    order = df.select(pl.arg_sort_by("task", "qid", "sample_idx"))[:, 0].to_numpy()
    return df if np.array_equal(order, np.arange(df.height)) else df[order]


def filter_codes(df: pl.DataFrame, cfg: CurationConfig) -> np.ndarray:
    """Codes after stages 1-2 (quality filters, then correctness); row by row, so any batch gives the same."""
    code = np.zeros(df.height, dtype=np.int8)
    if cfg.filters:
        reasons = df.select(reason_expr(cfg).alias("r"))["r"]
        code[:] = reasons.replace_strict(_CODE, default=0, return_dtype=pl.Int8).to_numpy()
    if cfg.keep_correct_only:
        wrong = ~df["correct"].to_numpy()
        code[(code == 0) & wrong] = _CODE[R.INCORRECT]
    return code


def compared_bytes(df: pl.DataFrame, cfg: CurationConfig) -> np.ndarray:
    """UTF-8 bytes of each row's compared text (what chunks are sized by)."""
    return df.select(_compared_text(cfg.dedup_text).str.len_bytes().fill_null(0))[:, 0].to_numpy()


def selection_lengths(df: pl.DataFrame, cfg: CurationConfig) -> np.ndarray | None:
    """Per-row lengths the length-aware selection modes rank by (the trace's characters, else the rationale's)."""
    if cfg.selection.mode not in ("shortest", "length_mix"):
        return None
    return df.select(pl.coalesce(pl.col("reasoning"), pl.col("rationale")).str.len_chars().fill_null(0))[:, 0] \
        .to_numpy()


def distinct_stride(n_groups: int, total_bytes: int) -> int:
    """Every how many questions distinct n-grams are measured (about DISTINCT_SAMPLE questions, DISTINCT_BYTES)."""
    return max(1, n_groups // DISTINCT_SAMPLE, -(-total_bytes // DISTINCT_BYTES)) if n_groups else 1


def chunk_rows(group_id: np.ndarray, code: np.ndarray, nbytes: np.ndarray) -> list[np.ndarray]:
    """The alive rows (code 0) cut into chunks of whole questions (CHUNK_ROWS rows, CHUNK_BYTES of text)."""
    alive = np.flatnonzero(code == 0)
    return [alive[lo:hi] for lo, hi in _chunks(group_id[alive], CHUNK_ROWS, nbytes[alive])]


def chunk_signatures(texts: pl.Series, cfg: CurationConfig, perm) -> tuple[Shingled, np.ndarray]:
    mh = cfg.minhash
    sh = shingle(texts, mh.ngram, mh.hash)
    return sh, signatures_from_hashes(sh.hashes, sh.starts, perm)


def dedup_chunk(texts: pl.Series, group_id: np.ndarray, code: np.ndarray, cluster: np.ndarray, pos: np.ndarray,
                cfg: CurationConfig, perm) -> tuple[Shingled, np.ndarray]:
    """Stages 3-4 at question scope on one chunk: exact duplicates, then MinHash near-duplicates of the rest.

    texts, group_id, code, cluster and pos (ledger positions) are the chunk's rows; code and cluster (ledger
    positions of each cluster's kept row) are updated in place. Returns the chunk's shingles and signatures.
    """
    mh = cfg.minhash
    sh, sig = chunk_signatures(texts, cfg, perm)
    m = len(pos)
    if cfg.dedup_exact:
        root = exact_within_groups(sh.row_keys, _group_starts(group_id))
        code[root != np.arange(m)] = _CODE[R.EXACT_DUPLICATE]
        linked = nontrivial(root)
        cluster[linked] = pos[root[linked]]
    if mh.enabled and mh.scope in ("question", "both"):
        sub = np.flatnonzero(code == 0)
        root = cluster_within_groups(sig[sub], _group_starts(group_id[sub]), bands=mh.bands, threshold=mh.threshold)
        linked = nontrivial(root)  # members and their kept root
        code[sub[root != np.arange(len(sub))]] = _CODE[R.NEAR_DUPLICATE]
        cluster[sub[linked]] = pos[sub[root[linked]]]
    return sh, sig


def nontrivial(root: np.ndarray) -> np.ndarray:
    """Rows of clusters with two or more rows: members (root is another row) and the roots they point at."""
    member = root != np.arange(len(root))
    return member | np.isin(np.arange(len(root)), root[member])


def mark_global(code: np.ndarray, cluster: np.ndarray, pos: np.ndarray, root: np.ndarray) -> None:
    """Global near-duplicates: pos and root are ledger positions of the rows of clusters of two or more, and of
    their cluster's root (its lowest position, kept)."""
    code[pos[root != pos]] = _CODE[R.NEAR_DUPLICATE_GLOBAL]
    cluster[pos] = root


def select_chunk(code: np.ndarray, group_id: np.ndarray, task_id: np.ndarray, sh: Shingled, sig: np.ndarray,
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


def check_eval_questions(eval_questions: pl.DataFrame | None) -> pl.DataFrame:
    if eval_questions is None:
        raise ValueError("curation.decontaminate is on but no eval questions were given: pass the test splits / "
                         "curation.eval_sets (rationale curate --eval FILE), or set curation.decontaminate: false")
    for col in ("task", "question"):
        if col not in eval_questions.columns:
            raise ValueError(f"eval questions: missing column {col!r} (columns: {eval_questions.columns})")
    return eval_questions


def _decontaminate(df: pl.DataFrame, code: np.ndarray, cfg: CurationConfig,
                   eval_questions: pl.DataFrame | None) -> Decontamination:
    from builder.decontaminate import find_question_hits, find_rationale_hits

    eval_questions = check_eval_questions(eval_questions)
    alive = pl.Series("alive", code == 0)
    live = df.with_row_index("row").filter(alive)
    questions = live.select("qid", "task", "question").unique("qid", keep="first", maintain_order=True)
    hits = find_question_hits(questions, eval_questions, cfg)
    if hits.height:
        bad = df["qid"].is_in(hits["qid"].implode()).to_numpy()
        code[bad & (code == 0)] = _CODE[R.CONTAMINATED_QUESTION]
    rhits = None
    if cfg.decontaminate_rationales:
        live = live.filter(~pl.col("qid").is_in(hits["qid"].implode()))
        rhits = find_rationale_hits(live.select("qid", pl.col("row").cast(pl.Int64), "rationale"), eval_questions, cfg)
        if rhits.height:
            code[rhits["row"].to_numpy()] = _CODE[R.CONTAMINATED_RATIONALE]
    return decontamination(questions, hits, rhits, eval_questions)


def decontamination(questions: pl.DataFrame, hits: pl.DataFrame, rhits: pl.DataFrame | None,
                    eval_questions: pl.DataFrame) -> Decontamination:
    """The stats of stage 6: `questions` are the live (qid, task, question) checked, `hits` the question hits,
    `rhits` the rationale hits (rows sorted by ledger position) or None."""
    cols = ("qid", "task", "question", "matched_task", "matched_question", "method", "score")
    out_hits = hits.join(questions, on="qid").select(cols).to_dicts() if hits.height else []
    if rhits is not None and rhits.height:
        out_hits += (rhits.join(questions, on="qid").select(cols)
                     .unique("qid", keep="first", maintain_order=True).to_dicts())
    return Decontamination(checked=questions.height, eval_questions=eval_questions["question"].n_unique(),
                           hits=[ContaminationHit(**h) for h in out_hits])


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
           cfg: CurationConfig) -> CurationStats:
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
    settings = cfg.model_dump(mode="json")
    settings["minhash"]["rows_per_band"] = cfg.minhash.num_perm // cfg.minhash.bands
    settings["kernels"] = "numba" if HAVE_NUMBA else "numpy"
    return CurationStats(funnel=funnel, dropped=dropped, diversity=diversity.figures(tasks), decontamination=decon,
                         settings=settings)
