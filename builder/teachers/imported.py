"""`teacher.backend: import`: existing completions (an API batch job's JSONL/Parquet) as a teacher.

The file is read and mapped once (`teacher.import_columns`); the teacher then answers each requested
(qid, sample_idx) with the file's row, so imported samples go through the sample stage's lock, run fingerprint and
shards like sampled ones, and a rerun imports only what is missing. The budget is the file: a question holds as
many samples as it has rows (`sampling.n` does not apply). Rows keep what the file says they were made with
(prompt, teacher, answer prompt); the prompt defaults to the Zero-shot-CoT prompt of the row's question.

Reasoning traces: a `reasoning` column (mapped like the others) is the trace and `rationale` the answer text after
it; a trace with no text after it counts as unfinished. Without one, `teacher.reasoning_parser` splits a rationale
that still holds its tags (`<think>...</think>answer`) with vLLM's parser over the tokenizer of `teacher.model`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import InputError
from builder.prompts import teacher_prompt
from builder.readers import Table, is_blank, read_table
from builder.schemas import validate
from builder.teachers.base import TEACHERS, Answer, Completion, ShardResult, ShardWork, Teacher, TeacherSetup
from builder.teachers.reasoning import ReasoningSplitter, load_tokenizer, require_parsers

log = logging.getLogger(__name__)

FIELDS = ("question", "rationale", "answer_completion", "answer_prompt", "prompt", "task", "sample_idx",
          "finish_reason", "teacher", "prompt_tokens", "completion_tokens", "reasoning", "reasoning_tokens")


TEXT_FIELDS = ("question", "rationale", "answer_completion", "answer_prompt", "prompt", "task", "finish_reason",
               "teacher")
COUNT_FIELDS = ("sample_idx", "prompt_tokens", "completion_tokens")  # non-negative integers


@functools.lru_cache(maxsize=8)
def _digest_of(path: Path, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def _file_digest(path: Path) -> str | None:
    """sha256 prefix of a file (cached while its size and mtime stay), None when it is missing (reading it then
    names the problem)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return _digest_of(path, st.st_size, st.st_mtime_ns)


def _read_any(path: Path) -> Table:
    """The completions file through `builder.readers` (file lines in errors, BOM dropped)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: completions file not found")
    if path.suffix not in (".parquet", ".jsonl", ".json", ".ndjson"):
        raise InputError(f"{path}: unsupported completions format {path.suffix!r}; use .jsonl or .parquet")
    return read_table(path)


def _check_columns(df: pl.DataFrame, path: Path, mapping: dict[str, str], explicit: set[str]) -> None:
    """Types and ranges of the mapped columns, before anything is stored: text fields hold text, counts hold
    non-negative integers, and a column the recipe names (or question/rationale) is not null throughout."""
    def first(bad: pl.Expr) -> str:
        return df.filter(bad)["_where"][0]

    for f in FIELDS:
        if f not in df.columns:
            continue
        col, dtype, name = pl.col(f), df.schema[f], mapping[f]
        if (f in explicit or f in ("question", "rationale")) and df.height and df[f].null_count() == df.height:
            raise InputError(f"{path}: column {name!r} (for {f}) is null in every row; map another column "
                             "(teacher.import_columns)")
        if f in TEXT_FIELDS and dtype not in (pl.String, pl.Null):
            raise InputError(f"{first(col.is_not_null())}: field {name!r} (for {f}) is {dtype}, expected text")
        if f in COUNT_FIELDS and dtype != pl.Null:
            if not dtype.is_integer():
                raise InputError(f"{first(col.is_not_null())}: field {name!r} (for {f}) is {dtype}, expected a "
                                 "non-negative integer")
            if f == "sample_idx" and df[f].null_count():
                raise InputError(f"{first(col.is_null())}: field {name!r} (for {f}) is null, expected a "
                                 "non-negative integer")
            if df.select((col < 0).any()).item():
                raise InputError(f"{first(col < 0)}: field {name!r} (for {f}) is "
                                 f"{df.filter(col < 0)[f][0]}, expected a non-negative integer")


def _qids(tq: pl.Series) -> pl.Series:
    from builder.tasks import make_qid

    pairs = zip(tq.struct.field("task"), tq.struct.field("question"), strict=True)
    return pl.Series([make_qid(t, q) for t, q in pairs], dtype=pl.String)


def _optional(frame: pl.DataFrame, name: str, dtype: pl.DataType, fill: Any = None) -> pl.Expr:
    col = pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype)
    return col.fill_null(fill) if fill is not None else col


def _split_tagged(df: pl.DataFrame, splitter: ReasoningSplitter) -> pl.DataFrame:
    """Rationales holding their tags, split by the parser: reasoning, the rationale after it, finished, tokens."""
    splits = [splitter.split(text) for text in df.get_column("rationale").fill_null("").to_list()]
    return df.with_columns(
        pl.Series("rationale", [p.content for p in splits], pl.String),
        pl.Series("reasoning", [p.reasoning for p in splits], pl.String),
        pl.Series("reasoning_finished", [p.finished for p in splits], pl.Boolean),
        pl.Series("reasoning_tokens", [p.tokens for p in splits], pl.Int32) if "reasoning_tokens" not in df.columns
        else pl.col("reasoning_tokens"))


@TEACHERS.register("import")
class ImportedTeacher(Teacher):
    """Completions read from `teacher.import_path`, matched to questions by qid (task + normalised question)."""

    own_prompts = True

    @classmethod
    def fingerprint_extra(cls, setup: TeacherSetup) -> dict[str, Any]:
        """The completions file's content: an edited file is other samples, even at the same path."""
        return {"import_sha256": _file_digest(setup.resolve_path(setup.teacher.import_path))}

    def __init__(self, setup: TeacherSetup, *, engine: Any = None) -> None:
        t = setup.teacher
        self.path = path = setup.resolve_path(t.import_path)
        table = _read_any(path)
        raw = table.frame
        mapping = {f: t.import_columns.get(f, f) for f in FIELDS}
        unknown = set(t.import_columns) - set(FIELDS)
        if unknown:
            raise InputError(f"teacher.import_columns: unknown field(s) {sorted(unknown)}; valid: {list(FIELDS)}")
        for needed in ("question", "rationale"):
            if mapping[needed] not in raw.columns:
                raise InputError(f"{path}: column {mapping[needed]!r} (for {needed}) not found; columns: "
                                 f"{raw.columns}")
        tasks = setup.tasks
        has_task = mapping["task"] in raw.columns
        if not has_task and len(tasks) != 1:
            raise InputError(f"{path}: no {mapping['task']!r} column and the recipe has {len(tasks)} tasks; map one")
        df = raw.select(table.where(path).alias("_where"),
                        **{f: pl.col(mapping[f]) for f in FIELDS if mapping[f] in raw.columns})
        _check_columns(df, path, mapping, set(t.import_columns))
        if not has_task:
            df = df.with_columns(task=pl.lit(tasks[0]))
        empty = df.filter(is_blank(pl.col("question")))
        if empty.height:
            raise InputError(f"{empty['_where'][0]}: field {mapping['question']!r} is empty")
        df = df.with_columns(qid=pl.struct("task", "question").map_batches(_qids, return_dtype=pl.String))
        if "sample_idx" not in df.columns:
            df = df.with_columns(sample_idx=pl.int_range(pl.len()).over("qid"))
        dup = df.filter(pl.struct("qid", "sample_idx").is_duplicated())
        if dup.height:  # named by the file's lines, not by position among the rows that match a question
            same = dup.filter((pl.col("qid") == dup["qid"][0]) & (pl.col("sample_idx") == dup["sample_idx"][0]))
            raise InputError(f"{same['_where'][1]}: duplicate key (question, sample_idx={same['sample_idx'][0]}), "
                             f"first at {same['_where'][0]}; each completion of a question needs its own sample_idx")
        if "reasoning" not in df.columns and t.reasoning_parser:
            require_parsers(t.reasoning_parser)
            df = _split_tagged(df, ReasoningSplitter(t.reasoning_parser, load_tokenizer(t.model, t.revision),
                                                     setup.prompt.chat_template_kwargs))
        elif "reasoning" in df.columns:
            df = df.with_columns(reasoning_finished=pl.when(pl.col("reasoning").is_not_null()).then(
                pl.col("rationale").fill_null("").str.strip_chars() != ""))
        head, _, tail = teacher_prompt("\0", style="zero_shot_cot", fmt="raw", trigger=setup.prompt.trigger
                                       ).partition("\0")
        self.rows = df.select(  # the samples table's columns (but run_id, which the stage adds)
            "qid",
            pl.col("sample_idx").cast(pl.Int32),
            seed=pl.lit(-1, pl.Int64),
            teacher=pl.col("teacher") if "teacher" in df.columns else pl.lit(t.model),
            teacher_revision=pl.lit(t.revision, pl.String),
            prompt=pl.col("prompt") if "prompt" in df.columns else pl.lit(head) + pl.col("question") + pl.lit(tail),
            rationale=pl.col("rationale").fill_null(""),
            answer_prompt=_optional(df, "answer_prompt", pl.String),
            answer_completion=_optional(df, "answer_completion", pl.String),
            finish_reason=_optional(df, "finish_reason", pl.String, "imported"),
            prompt_tokens=_optional(df, "prompt_tokens", pl.Int32),
            completion_tokens=_optional(df, "completion_tokens", pl.Int32),
            reasoning=_optional(df, "reasoning", pl.String),
            reasoning_tokens=_optional(df, "reasoning_tokens", pl.Int32),
            reasoning_finished=_optional(df, "reasoning_finished", pl.Boolean),
        )
        self.raw_rows = raw.height
        self._by_key: dict[tuple[str, int], dict[str, Any]] = {}
        self._stats: dict[str, Any] = {}

    def budget(self, questions: pl.DataFrame, n: int) -> pl.Expr:
        """Each question holds its rows of the file (0 for a question the file does not answer)."""
        matched = self.rows.join(questions.select("qid"), on="qid", how="semi")
        unmatched = self.raw_rows - matched.height
        self._stats = {"imported_rows": self.raw_rows, "matched_rows": matched.height, "unmatched_rows": unmatched}
        if self.raw_rows and not matched.height:
            raise InputError(f"{self.path}: none of the {self.raw_rows} rows matches a question of the recipe's "
                             "tasks/splits")
        if unmatched:
            log.info("import: %d of %d rows match no question of this recipe's tasks/splits (skipped)",
                     unmatched, self.raw_rows)
        validate(matched.with_columns(run_id=pl.lit("import")), "samples", where=str(self.path))
        self._by_key = {(r["qid"], r["sample_idx"]): r for r in matched.iter_rows(named=True)}
        held = matched.group_by("qid").agg(pl.col("sample_idx").max() + 1)
        return pl.col("qid").replace_strict(dict(held.rows()), default=0, return_dtype=pl.Int64)

    def stats(self) -> dict[str, Any]:
        return self._stats

    def render(self, prompt: str | list[dict[str, str]]) -> str:
        return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        for work in shards:
            rows = [row for r in work.requests for i in range(r.first_idx, r.first_idx + r.n)
                    if (row := self._by_key.get((r.qid, i))) is not None]
            completions = [Completion(row["qid"], row["sample_idx"], row["seed"], row["rationale"],
                                      row["finish_reason"], row["prompt_tokens"], row["completion_tokens"],
                                      prompt=row["prompt"], teacher=row["teacher"],
                                      answer_prompt=row["answer_prompt"], reasoning=row["reasoning"],
                                      reasoning_tokens=row["reasoning_tokens"],
                                      reasoning_finished=row["reasoning_finished"]) for row in rows]
            answers: list[Answer | None] = [None if row["answer_completion"] is None else
                                            (row["answer_completion"], None) for row in rows]
            yield replace(work, answer_prompt={}), completions, answers  # the file's answer prompts, not the task's
