"""`teacher.backend: import`: existing completions (an API batch job's JSONL/Parquet) as a teacher.

The file is read and mapped once (`teacher.import_columns`); the teacher then answers each requested
(qid, sample_idx) with the file's row, so imported samples go through the sample stage's lock, run fingerprint and
shards like sampled ones, and a rerun imports only what is missing. The budget is the file: a question holds as
many samples as it has rows (`sampling.n` does not apply). Rows keep what the file says they were made with
(prompt, teacher, answer prompt); the prompt defaults to the Zero-shot-CoT prompt of the row's question.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from builder.errors import InputError
from builder.prompts import teacher_prompt
from builder.schemas import validate
from builder.teachers.base import TEACHERS, Answer, Completion, ShardResult, ShardWork, Teacher

if TYPE_CHECKING:
    from builder.recipe import Recipe

log = logging.getLogger(__name__)

FIELDS = ("question", "rationale", "answer_completion", "answer_prompt", "prompt", "task", "sample_idx",
          "finish_reason", "teacher", "prompt_tokens", "completion_tokens")


def _read_any(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: completions file not found")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix in (".jsonl", ".json", ".ndjson"):
            return pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot read completions ({str(exc).splitlines()[0]})") from exc
    raise InputError(f"{path}: unsupported completions format {path.suffix!r}; use .jsonl or .parquet")


def _qids(tq: pl.Series) -> pl.Series:
    from builder.tasks import make_qid

    pairs = zip(tq.struct.field("task"), tq.struct.field("question"), strict=True)
    return pl.Series([make_qid(t, q) for t, q in pairs], dtype=pl.String)


def _optional(frame: pl.DataFrame, name: str, dtype: pl.DataType, fill: Any = None) -> pl.Expr:
    col = pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype)
    return col.fill_null(fill) if fill is not None else col


@TEACHERS.register("import")
class ImportedTeacher(Teacher):
    """Completions read from `teacher.import_path`, matched to questions by qid (task + normalised question)."""

    def __init__(self, recipe: Recipe, *, engine: Any = None) -> None:
        t = recipe.teacher
        self.path = path = recipe.resolve_path(t.import_path)
        raw = _read_any(path)
        mapping = {f: t.import_columns.get(f, f) for f in FIELDS}
        unknown = set(t.import_columns) - set(FIELDS)
        if unknown:
            raise InputError(f"teacher.import_columns: unknown field(s) {sorted(unknown)}; valid: {list(FIELDS)}")
        for needed in ("question", "rationale"):
            if mapping[needed] not in raw.columns:
                raise InputError(f"{path}: column {mapping[needed]!r} (for {needed}) not found; columns: "
                                 f"{raw.columns}")
        tasks = [s.name for s in recipe.tasks.items]
        has_task = mapping["task"] in raw.columns
        if not has_task and len(tasks) != 1:
            raise InputError(f"{path}: no {mapping['task']!r} column and the recipe has {len(tasks)} tasks; map one")
        df = raw.with_row_index("_row").select(
            "_row", **{f: pl.col(mapping[f]) for f in FIELDS if mapping[f] in raw.columns})
        if not has_task:
            df = df.with_columns(task=pl.lit(tasks[0]))
        empty = df.filter(pl.col("question").is_null() | (pl.col("question").str.strip_chars() == ""))
        if empty.height:
            raise InputError(f"{path}: row {empty['_row'][0]}: field {mapping['question']!r} is empty")
        df = df.with_columns(qid=pl.struct("task", "question").map_batches(_qids, return_dtype=pl.String))
        if "sample_idx" not in df.columns:
            df = df.with_columns(sample_idx=pl.int_range(pl.len()).over("qid"))
        head, _, tail = teacher_prompt("\0", style="zero_shot_cot", fmt="raw", trigger=recipe.prompt.trigger
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
                                      answer_prompt=row["answer_prompt"]) for row in rows]
            answers: list[Answer | None] = [None if row["answer_completion"] is None else
                                            (row["answer_completion"], None) for row in rows]
            yield replace(work, answer_prompt={}), completions, answers  # the file's answer prompts, not the task's
