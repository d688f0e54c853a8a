"""The tasks stage: turn each task of the recipe (a paper task's original files, a JSONL/CSV/Parquet file, a Hub
dataset) into the `questions` table (schemas/questions.table.json), one row per question keyed by a stable `qid`.

Where things live: the 12 paper tasks, one registration each, in `paper.py`; generic file/Hub sources in
`sources.py`; qids, gold normalisation and choice shuffling in `normalise.py`. Every source yields raw rows, and
`load_task` applies the same rules to all of them:
- `qid = make_qid(task, question)` (see `normalise_question`): one question keeps one id in every run, whatever the
  choice order.
- Exact duplicates within a task (same qid) keep the first row in file order; they are dropped before the split is
  applied, so a question never sits in both train and test.
- Gold answers are normalised per answer type (a `math` gold must parse with math-verify: an unreadable one stops
  the load naming file, row and value, rather than grading as `parse_error` later); choice questions show their
  choices as Zero-shot-CoT did (`builder.prompts.show_choices`); tasks registered with shuffle_choices (BIG-bench
  lists the right choice first) are shuffled with a seed from (shuffle_seed, qid).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from builder.errors import InputError
from builder.graders import GRADERS
from builder.paths import resolve_recipe_path
from builder.prompts import answer_prompt_for
from builder.readers import is_blank, read_table
from builder.schemas import validate
from builder.tasks.normalise import (
    first_bad,
    make_qid,
    normalise_gold,
    normalise_question,
    qids,
    shown_question,
    shuffle_choices,
)
from builder.tasks.paper import (
    BENCHMARKS_ENV,
    PAPER_TASKS,
    PaperTask,
    paper_exemplars,
    paper_splits,
    resolve_benchmarks_dir,
    task_info,
)
from builder.tasks.sources import MAPPABLE_FIELDS, load_source

if TYPE_CHECKING:
    from builder.recipe import TasksConfig, TaskSpec

log = logging.getLogger(__name__)

__all__ = [
    "BENCHMARKS_ENV", "PAPER_TASKS", "LoadedTask", "PaperTask", "answer_prompts", "check_spec", "cross_task_overlap",
    "default_shuffle", "load_eval_set", "load_task", "load_tasks", "make_qid", "normalise_question", "paper_exemplars",
    "paper_split_items", "resolve_benchmarks_dir", "run", "task_info",
]


@dataclass
class LoadedTask:
    """One task's questions plus the counts the CLI prints and tests check."""

    name: str
    questions: pl.DataFrame
    raw_count: int  # rows read from the source, before dedup and split
    duplicates: int  # exact duplicate questions dropped (first occurrence kept)
    split_counts: dict[str, int] = field(default_factory=dict)  # after dedup, before limit
    row_qids: pl.DataFrame | None = None  # source_idx -> qid for every source row, duplicates included


# ---------------------------------------------------------------- the stage
def run(cfg: TasksConfig, base_dir: str | Path | None = None) -> pl.DataFrame:
    """Load every task of the recipe into one validated `questions` table.

    Args:
        cfg: recipe.tasks.
        base_dir: the recipe's folder; relative paths resolve against it.

    Raises:
        ValueError, FileNotFoundError, InputError: see `load_task`; also two items giving the same qid.
    """
    return pl.concat([t.questions for t in load_tasks(cfg, base_dir)], how="vertical")


def load_tasks(cfg: TasksConfig, base_dir: str | Path | None = None) -> list[LoadedTask]:
    """Like `run`, keeping per-task counts (for the CLI summary)."""
    needs_paper = any(s.source == "paper" for s in cfg.items)
    bdir = resolve_benchmarks_dir(cfg.benchmarks_dir, base_dir) if needs_paper else None
    loaded = [load_task(s, benchmarks_dir=bdir, base_dir=base_dir, shuffle_seed=cfg.shuffle_seed)
              for s in cfg.items]
    seen: dict[str, int] = {}
    for i, t in enumerate(loaded):
        overlap = [q for q in t.questions["qid"].to_list() if q in seen]
        if overlap:
            raise ValueError(f"tasks.items[{i}] ({t.name!r}) repeats {len(overlap)} question(s) of tasks.items"
                             f"[{seen[overlap[0]]}]; give the items different names or disjoint splits")
        seen.update(dict.fromkeys(t.questions["qid"].to_list(), i))
    if len(loaded) > 1:
        _log_cross_task_overlap(pl.concat([t.questions for t in loaded]))
    return loaded


def check_spec(spec: TaskSpec) -> None:
    """The checks that need only the recipe (`builder.bind` runs them when it loads, before any work starts).

    Raises:
        ValueError: unknown paper task, answer type or mapped field; a split other than train/test/all; an answer
            type that conflicts with the paper task's; choices mapped on a task that is not graded by choice.
    """
    valid = ", ".join(GRADERS.names())
    if spec.source == "paper":
        task = PAPER_TASKS.get(spec.name)
        if spec.answer_type is not None and spec.answer_type != task.answer_type:
            raise ValueError(f"task {spec.name!r}: answer_type {spec.answer_type!r} conflicts with the paper task's "
                             f"{task.answer_type!r}; drop tasks.items[].answer_type")
        if spec.split not in ("train", "test", "all"):
            raise ValueError(f"task {spec.name!r}: split {spec.split!r} is not train, test or all")
        return
    if spec.answer_type is None:
        raise ValueError(f"task {spec.name!r}: tasks.items[].answer_type is required for source={spec.source} "
                         f"(one of {valid})")
    if spec.answer_type not in GRADERS:
        raise ValueError(f"task {spec.name!r}: unknown answer_type {spec.answer_type!r}; valid: {valid}")
    unknown = sorted(set(spec.columns) - set(MAPPABLE_FIELDS))
    if unknown:
        raise ValueError(f"task {spec.name!r}: tasks.items[].columns has unknown field(s) {unknown}; "
                         f"map any of {', '.join(MAPPABLE_FIELDS)}")
    if "choices" in spec.columns and spec.answer_type != "choice":
        raise ValueError(f"task {spec.name!r}: choices are mapped but answer_type is {spec.answer_type!r}; "
                         "use answer_type: choice")


def default_shuffle(spec: TaskSpec) -> bool:
    """Whether a task's choices are shuffled when the recipe does not say: the paper task's registration (BIG-bench
    lists the right choice first), never for a file or Hub source."""
    return spec.source == "paper" and PAPER_TASKS.get(spec.name).shuffle_choices


def load_task(spec: TaskSpec, *, benchmarks_dir: Path | None = None, base_dir: str | Path | None = None,
              shuffle_seed: int = 0) -> LoadedTask:
    """Load one task as a `questions` frame (validated), with raw and duplicate counts.

    Raises:
        ValueError: unknown paper task or bad split name.
        FileNotFoundError: a task file or split file is missing.
        InputError: unreadable or malformed input, naming the file, row and field.
    """
    check_spec(spec)
    if spec.source == "paper":
        task = PAPER_TASKS.get(spec.name)
        if benchmarks_dir is None:
            raise InputError(f"task {spec.name!r}: paper tasks need tasks.benchmarks_dir or ${BENCHMARKS_ENV}")
        folder = resolve_recipe_path(base_dir, spec.path) if spec.path else benchmarks_dir / spec.name
        raw, where, answer_type, fields = task.load(folder), str(folder), task.answer_type, task.fields
    else:
        raw, where, mapping = load_source(spec, base_dir)
        answer_type, fields = spec.answer_type, (mapping["question"], mapping["gold"])
    shuffle = default_shuffle(spec) if spec.shuffle_choices is None else spec.shuffle_choices
    df, row_qids = _questions(raw, spec.name, answer_type, fields, shuffle=shuffle, shuffle_seed=shuffle_seed)
    duplicates = raw.height - df.height
    if spec.source == "paper":
        df, split_counts = _apply_paper_split(df, raw, spec, benchmarks_dir)
    else:
        df, split_counts = _apply_generic_split(df, spec)
    if spec.limit is not None:
        df = df.head(spec.limit)
    return LoadedTask(spec.name, validate(df, "questions", where=where), raw.height, duplicates, split_counts,
                      row_qids)


def _questions(raw: pl.DataFrame, task: str, answer_type: str, fields: tuple[str, str], *, shuffle: bool,
               shuffle_seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Raw rows -> distinct questions (before any split), and source_idx -> qid for every raw row."""
    qfield, gfield = fields
    empty = first_bad(raw, is_blank(pl.col("question")))
    if empty:
        raise InputError(f"{empty['where']}: field {qfield!r}: question is empty")
    no_choices = first_bad(raw, pl.col("choices").list.len() == 0)
    if no_choices:
        raise InputError(f"{no_choices['where']}: field 'choices': the choice list is empty")
    if answer_type != "choice" and raw["choices"].is_not_null().any():
        raise ValueError(f"task {task!r}: choices are mapped but answer_type is {answer_type!r}; "
                         "use answer_type: choice")
    df = normalise_gold(raw.with_columns(pl.col("question").str.strip_chars().alias("stem")), answer_type, gfield)
    df = df.with_columns(shown_question().alias("question"))
    df = df.with_columns(qids(task, pl.col("question")).alias("qid"))
    row_qids = df.select("source_idx", "qid")
    df = df.unique("qid", keep="first", maintain_order=True)
    if df.height < raw.height:
        log.info("%s: dropped %d exact duplicate question(s) of %d (kept the first)", task, raw.height - df.height,
                 raw.height)
    if shuffle and answer_type == "choice" and df["choices"].is_not_null().all() and df.height:
        df = shuffle_choices(df, shuffle_seed).with_columns(shown_question().alias("question"))
    return df.with_columns(pl.lit(task).alias("task"), pl.lit(answer_type).alias("answer_type")), row_qids


# ---------------------------------------------------------------- splits
def _apply_paper_split(df: pl.DataFrame, raw: pl.DataFrame, spec: TaskSpec,
                       benchmarks_dir: Path) -> tuple[pl.DataFrame, dict[str, int]]:
    splits = paper_splits(spec.name, benchmarks_dir)
    df = df.join(splits, on="source_idx", how="left").with_columns(pl.col("split").fill_null("unsplit"))
    counts = dict(df.group_by("split").len().iter_rows())
    if spec.split == "all":
        return df, counts
    wanted = splits.filter(pl.col("split") == spec.split)["source_idx"]
    missing = wanted.filter(~wanted.is_in(raw["source_idx"].implode()))
    if missing.len():
        raise FileNotFoundError(
            f"task {spec.name!r}: split {spec.split!r} lists {missing.len()} row(s) (indices {missing.min()}.."
            f"{missing.max()}) that are not in the loaded files; for gsm8k/aqua the paper's train split indexes the "
            "official train file (gsm8k/train.jsonl, aqua/train.json): add it to the task folder or use split: test")
    return df.filter(pl.col("split") == spec.split), counts


def _apply_generic_split(df: pl.DataFrame, spec: TaskSpec) -> tuple[pl.DataFrame, dict[str, int]]:
    if "split" in df.columns:  # the source has a split column
        counts = dict(df.group_by("split").len().iter_rows())
        return (df if spec.split == "all" else df.filter(pl.col("split") == spec.split)), counts
    label = spec.split
    if spec.source == "hub" and "split" not in spec.model_fields_set:
        label = spec.hub_split
    if label == "all":
        label = "train"
    return df.with_columns(pl.lit(label).alias("split")), {label: df.height}


def paper_split_items(task: str, split: str, benchmarks_dir: str | Path | None = None,
                      base_dir: str | Path | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every item the paper's split lists, as scored in the paper: (questions, items per qid).

    Builds drop repeated questions before splitting so no question is in both splits; the paper's evaluation counts
    every listed item (MultiArith: 180 test items, 177 distinct, 5 of them repeats of train questions). This returns
    each distinct question of the split once (split set to `split`) and how many listed items it stands for.
    """
    bdir = resolve_benchmarks_dir(benchmarks_dir, base_dir)
    info = PAPER_TASKS.get(task)
    raw = info.load(bdir / task)
    questions, row_qids = _questions(raw, task, info.answer_type, info.fields, shuffle=info.shuffle_choices,
                                     shuffle_seed=0)
    wanted = paper_splits(task, bdir).filter(pl.col("split") == split).select("source_idx")
    items = (wanted.join(row_qids, on="source_idx", how="inner")
             .group_by("qid", maintain_order=True).agg(items=pl.len()))
    if items.is_empty():
        raise ValueError(f"task {task!r}: the paper's {split!r} split lists no rows found in {bdir / task}")
    questions = questions.join(items.select("qid"), on="qid", how="semi").with_columns(split=pl.lit(split))
    return validate(questions, "questions", where=f"{bdir / task} ({split} items)"), items


# ---------------------------------------------------------------- prompts, overlap, eval sets
def answer_prompts(cfg: TasksConfig, questions: pl.DataFrame | None = None) -> dict[str, str]:
    """Answer prompt per task name: TaskSpec.answer_prompt, else the paper task's, else one from the answer type.

    For generic choice tasks the letter range comes from the widest choice list in `questions`.
    """
    out = {}
    for spec in cfg.items:
        if spec.answer_prompt:
            out[spec.name] = spec.answer_prompt
        elif spec.source == "paper" and spec.name in PAPER_TASKS:
            out[spec.name] = PAPER_TASKS.get(spec.name).answer_prompt
        else:
            n = None
            if questions is not None and spec.answer_type == "choice":
                lens = questions.filter(pl.col("task") == spec.name)["choices"].list.len()
                n = int(lens.max()) if lens.len() and lens.max() is not None else None
            out[spec.name] = answer_prompt_for(spec.answer_type or "string", n)
    return out


def cross_task_overlap(questions: pl.DataFrame) -> pl.DataFrame:
    """Questions whose normalised text appears under more than one task (AddSub and SingleEq share ~111).

    Returns one row per affected question: qid, task, split, key (the normalised text).
    """
    keyed = questions.select("qid", "task", "split", pl.col("question").map_batches(
        lambda s: pl.Series([normalise_question(q) for q in s], dtype=pl.String),
        return_dtype=pl.String).alias("key"))
    return keyed.filter(pl.col("task").n_unique().over("key") > 1).sort("key", "task")


def _log_cross_task_overlap(questions: pl.DataFrame) -> None:
    overlap = cross_task_overlap(questions)
    if overlap.height:
        log.warning("%d question(s) appear in more than one task (e.g. AddSub and SingleEq); turn on "
                    "curation.decontaminate so a train question of one task is not a test question of another",
                    overlap["key"].n_unique())


def load_eval_set(path: str | Path) -> pl.DataFrame:
    """An extra evaluation set for decontamination (curation.eval_sets): JSONL/JSON/CSV/Parquet with a 'question'
    column and optionally 'task' (default: the file's stem).

    Returns columns qid, task, split ("eval"), question.

    Raises:
        FileNotFoundError: no such file.
        InputError: unreadable file, no 'question' column, or an empty question (naming the row).
    """
    path = Path(path)
    table = read_table(path)
    df = table.frame
    if "question" not in df.columns:
        raise InputError(f"{path}: eval set needs a 'question' column; columns: {', '.join(df.columns)}")
    task = pl.col("task").cast(pl.String) if "task" in df.columns else pl.lit(path.stem.split(".")[0])
    out = df.select(task.alias("task"), pl.col("question").cast(pl.String).str.strip_chars(),
                    table.where(path).alias("where"))
    empty = first_bad(out, is_blank(pl.col("question")))
    if empty:
        raise InputError(f"{empty['where']}: field 'question': question is empty")
    qid = pl.struct("task", "question").map_batches(
        lambda s: pl.Series([make_qid(r["task"], r["question"]) for r in s], dtype=pl.String), return_dtype=pl.String)
    return out.select(qid.alias("qid"), "task", pl.lit("eval").alias("split"), "question")
