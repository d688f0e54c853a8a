"""Task loaders: turn a task (a paper task's original file, a JSONL/CSV/Parquet file, a Hub dataset) into `questions`.

Input: a `TasksConfig` (recipe.tasks). Output: the `questions` table (schemas/questions.table.json), one row per
question, keyed by a stable `qid`.

Rules every loader follows (one place, `_finish`, applies them to every source):
- `qid = make_qid(task, question)`: blake2b (16 hex chars) of the task key and the normalised question text.
  Normalisation lowercases, collapses whitespace, removes the space the tokenised MAWPS files put before
  punctuation ("beach . she" -> "beach. she"), and sorts the answer choices, so one question keeps one id in every
  run, whatever the choice order (shuffling never changes a qid).
- Exact duplicates within a task (same qid) keep the first row in file order; the count is logged and returned.
  Duplicates are dropped before the split is applied, so a question never sits in both train and test.
- Paper splits come from `splits/<task>__default.json`, whose indices run over the task's files in order
  (gsm8k/aqua: official train file, then test file; commonsense_qa: train then dev). `source_idx` is that index.
- Gold answers are normalised per answer type: number -> canonical decimal ("1,600" -> "1600", "25.0" -> "25"),
  choice -> letter, yesno -> "yes"/"no", string/date -> stripped text.
- Choice questions show their choices as Zero-shot-CoT did: "<question> Answer Choices: (A) x (B) y ...".
  BIG-bench tasks list the right choice first, so their choices are shuffled with a seed from
  (shuffle_seed, qid).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import polars as pl

from builder.errors import InputError
from builder.recipe import Exemplar, TasksConfig, TaskSpec
from builder.registry import Registry
from builder.schemas import validate

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ANSWER_TYPES = ("number", "choice", "yesno", "string", "date")
MAPPABLE_FIELDS = ("question", "gold", "choices", "id", "split")
BENCHMARKS_ENV = "RATIONALE_BENCHMARKS_DIR"

# A loader reads one paper task's folder and returns the raw rows (see `_RAW_SCHEMA`).
TaskLoader = Callable[[Path], pl.DataFrame]
TASK_LOADERS: Registry[TaskLoader] = Registry("task loader")

# What a loader returns: index into the split space, question stem (choices not yet shown), raw gold
# (a letter for choice tasks), choice texts in file order, and "file row N" for error messages.
_RAW_SCHEMA = pl.Schema({
    "source_idx": pl.Int64(),
    "question": pl.String(),
    "gold": pl.String(),
    "choices": pl.List(pl.String()),
    "source_id": pl.String(),
    "where": pl.String(),
})


@dataclass(frozen=True)
class TaskInfo:
    """What sampling and grading need to know about a task."""

    answer_type: str
    answer_prompt: str
    n_choices: int | None = None


def answer_prompt_for(answer_type: str, n_choices: int | None = None) -> str:
    """The Zero-shot-CoT (Kojima et al.) answer-extraction prompt for an answer type.

    The sampler appends it after the rationale on a new line.
    """
    if answer_type == "number":
        return "Therefore, the answer (arabic numerals) is"
    if answer_type == "choice":
        if n_choices:
            return f"Therefore, among A through {LETTERS[n_choices - 1]}, the answer is"
        return "Therefore, among the answer choices, the answer is"
    if answer_type == "yesno":
        return "Therefore, the answer (Yes or No) is"
    return "Therefore, the answer is"


def _info(answer_type: str, n_choices: int | None = None) -> TaskInfo:
    return TaskInfo(answer_type, answer_prompt_for(answer_type, n_choices), n_choices)


# Answer prompts as in kojima-takeshi188/zero_shot_cot (main.py / utils.py): tracking_shuffled_objects
# ("object_tracking" there) uses "among A through C", since it has three choices.
PAPER_TASKS: dict[str, TaskInfo] = {
    "single_eq": _info("number"),
    "addsub": _info("number"),
    "multiarith": _info("number"),
    "gsm8k": _info("number"),
    "aqua": _info("choice", 5),
    "svamp": _info("number"),
    "date_understanding": _info("choice", 6),
    "tracking_shuffled_objects": _info("choice", 3),
    "last_letter_concatenation": _info("string"),
    "coin_flip": _info("yesno"),
    "commonsense_qa": _info("choice", 5),
    "strategy_qa": _info("yesno"),
}
# The source field each paper task's question and gold come from (named in error messages).
_PAPER_FIELDS: dict[str, tuple[str, str]] = {
    "single_eq": ("sQuestion", "lSolutions"), "addsub": ("sQuestion", "lSolutions"),
    "multiarith": ("sQuestion", "lSolutions"), "gsm8k": ("question", "answer"), "aqua": ("question", "correct"),
    "svamp": ("Body/Question", "Answer"), "date_understanding": ("input", "target_scores"),
    "tracking_shuffled_objects": ("input", "target_scores"), "last_letter_concatenation": ("question", "answer"),
    "coin_flip": ("question", "answer"), "commonsense_qa": ("question.stem", "answerKey"),
    "strategy_qa": ("input", "target_scores"),
}
# BIG-bench files list the right choice first (date_understanding: 364 of 369): shuffle these by default.
SHUFFLED_TASKS = frozenset({"date_understanding", "tracking_shuffled_objects"})


def task_info(name: str) -> TaskInfo:
    """Answer type, Zero-shot-CoT answer prompt and number of choices of a paper task.

    Raises:
        ValueError: unknown task, listing the valid ones.
    """
    try:
        return PAPER_TASKS[name]
    except KeyError:
        raise ValueError(f"unknown paper task {name!r}; valid: {', '.join(sorted(PAPER_TASKS))}") from None


# ---------------------------------------------------------------- question ids
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,?!;:])")
_CHOICES_MARK = re.compile(r"\banswer choices\s*:", re.IGNORECASE)
_CHOICE_LABEL = re.compile(r"\(([a-z])\)\s*")


def normalise_question(question: str) -> str:
    """The text a qid hashes: lowercase, single spaces, no space before punctuation, choices sorted.

    Sorting the "Answer Choices: (A) .. (B) .." tail makes the id independent of the order choices are shown in.
    """
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(question.lower().split())).strip()
    mark = _CHOICES_MARK.search(text)
    if mark is None:
        return text
    stem, tail = text[: mark.start()].strip(), text[mark.end():]
    options = [o.strip(" ,;") for o in _CHOICE_LABEL.split(tail)[2::2]]
    return f"{stem} || " + " | ".join(sorted(options))


def make_qid(task: str, question: str) -> str:
    """Stable question id: 16 hex chars of blake2b(task key + normalised question)."""
    digest = hashlib.blake2b(f"{task}\x1f{normalise_question(question)}".encode(), digest_size=8)
    return digest.hexdigest()


# ---------------------------------------------------------------- reading files
def _read_text(path: Path) -> str:
    """Read UTF-8 text; errors name the file and the line of a bad byte."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "re-save the file as UTF-8") from None


def _read_json(path: Path) -> object:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: line {lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}: line {lineno}: expected a JSON object, found {type(row).__name__}")
        rows.append(row)
    return rows


def _examples(path: Path, key: str | None = "examples") -> list[dict]:
    data = _read_json(path)
    if key is not None:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise InputError(f"{path}: expected a JSON object with a list field {key!r}")
        data = data[key]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of objects, found {type(data).__name__}")
    return data


def _field(row: object, name: str, path: Path, where: str) -> object:
    if not isinstance(row, dict) or name not in row or row[name] is None:
        raise InputError(f"{path}: {where}: missing field {name!r}")
    return row[name]


def _raw(rows: list[dict]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=_RAW_SCHEMA)
    df = pl.DataFrame(rows, schema_overrides={k: v for k, v in _RAW_SCHEMA.items() if k in rows[0]})
    for name, dtype in _RAW_SCHEMA.items():
        if name not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=dtype).alias(name))
    return df.select(list(_RAW_SCHEMA))


# ---------------------------------------------------------------- the 12 paper tasks
def _mawps(path: Path) -> pl.DataFrame:
    """SingleEq, AddSub, MultiArith: JSON list of {sQuestion, lSolutions, iIndex}; gold = lSolutions[0]."""
    rows = []
    for i, item in enumerate(_examples(path, key=None)):
        where = f"row {i}"
        sols = _field(item, "lSolutions", path, where)
        if not isinstance(sols, list) or not sols:
            raise InputError(f"{path}: {where}: field 'lSolutions' must be a non-empty list")
        rows.append({"source_idx": i, "question": str(_field(item, "sQuestion", path, where)),
                     "gold": str(sols[0]), "source_id": str(item.get("iIndex", i)), "where": f"{path} {where}"})
    return _raw(rows)


@TASK_LOADERS.register("single_eq")
def _load_single_eq(folder: Path) -> pl.DataFrame:
    return _mawps(folder / "questions.json")


@TASK_LOADERS.register("addsub")
def _load_addsub(folder: Path) -> pl.DataFrame:
    return _mawps(folder / "AddSub.json")


@TASK_LOADERS.register("multiarith")
def _load_multiarith(folder: Path) -> pl.DataFrame:
    return _mawps(folder / "MultiArith.json")


def _official_train_then_test(folder: Path, train: str, test: str, train_size: int,
                              read: Callable[[Path, int], list[dict]]) -> pl.DataFrame:
    """gsm8k, aqua: split indices run over the official train file then the test file; only test ships here."""
    rows: list[dict] = []
    train_path = folder / train
    if train_path.is_file():
        rows = read(train_path, 0)
        if len(rows) != train_size:
            raise InputError(f"{train_path}: {len(rows)} rows, but the paper's split indices assume the official "
                             f"train file with {train_size}; use the original file")
    rows += read(folder / test, train_size)
    return _raw(rows)


def _gsm8k_rows(path: Path, offset: int) -> list[dict]:
    rows = []
    for i, item in enumerate(_read_jsonl(path)):
        where = f"line {i + 1}"
        answer = str(_field(item, "answer", path, where))
        if "####" not in answer:
            raise InputError(f"{path}: {where}: field 'answer' has no '#### <gold>' marker")
        rows.append({"source_idx": offset + i, "question": str(_field(item, "question", path, where)),
                     "gold": answer.rsplit("####", 1)[1], "where": f"{path} {where}"})
    return rows


@TASK_LOADERS.register("gsm8k")
def _load_gsm8k(folder: Path) -> pl.DataFrame:
    return _official_train_then_test(folder, "train.jsonl", "test.jsonl", 7473, _gsm8k_rows)


_AQUA_OPTION = re.compile(r"^\s*\(?([A-E])\)\s*(.*)$", re.DOTALL)


def _aqua_rows(path: Path, offset: int) -> list[dict]:
    rows = []
    for i, item in enumerate(_read_jsonl(path)):  # JSONL despite the .json name
        where = f"line {i + 1}"
        options = _field(item, "options", path, where)
        if not isinstance(options, list):
            raise InputError(f"{path}: {where}: field 'options' must be a list")
        texts = []
        for j, opt in enumerate(options):
            m = _AQUA_OPTION.match(str(opt))
            if m is None or m.group(1) != LETTERS[j]:
                raise InputError(f"{path}: {where}: field 'options'[{j}] {opt!r} should start with '{LETTERS[j]})'")
            texts.append(m.group(2).strip())
        rows.append({"source_idx": offset + i, "question": str(_field(item, "question", path, where)),
                     "gold": str(_field(item, "correct", path, where)), "choices": texts,
                     "where": f"{path} {where}"})
    return rows


@TASK_LOADERS.register("aqua")
def _load_aqua(folder: Path) -> pl.DataFrame:
    return _official_train_then_test(folder, "train.json", "test.json", 97467, _aqua_rows)


@TASK_LOADERS.register("svamp")
def _load_svamp(folder: Path) -> pl.DataFrame:
    path = folder / "SVAMP.json"
    rows = []
    for i, item in enumerate(_examples(path, key=None)):
        where = f"row {i}"
        body, question = _field(item, "Body", path, where), _field(item, "Question", path, where)
        rows.append({"source_idx": i, "question": f"{str(body).strip()} {str(question).strip()}",
                     "gold": str(_field(item, "Answer", path, where)), "source_id": str(item.get("ID", i)),
                     "where": f"{path} {where}"})
    return _raw(rows)


def _bigbench_choice(path: Path) -> pl.DataFrame:
    """BIG-bench multiple choice: {input, target_scores: {choice text: 0/1}}; gold = letter of the 1, file order."""
    rows = []
    for i, item in enumerate(_examples(path)):
        where = f"examples[{i}]"
        scores = _field(item, "target_scores", path, where)
        if not isinstance(scores, dict) or list(scores.values()).count(1) != 1:
            raise InputError(f"{path}: {where}: field 'target_scores' must mark exactly one choice with 1")
        texts = [str(t).strip() for t in scores]
        gold = LETTERS[list(scores.values()).index(1)]
        rows.append({"source_idx": i, "question": str(_field(item, "input", path, where)), "gold": gold,
                     "choices": texts, "where": f"{path} {where}"})
    return _raw(rows)


@TASK_LOADERS.register("date_understanding")
def _load_date_understanding(folder: Path) -> pl.DataFrame:
    return _bigbench_choice(folder / "task.json")


@TASK_LOADERS.register("tracking_shuffled_objects")
def _load_tracking_shuffled_objects(folder: Path) -> pl.DataFrame:
    return _bigbench_choice(folder / "task.json")


def _question_answer(path: Path) -> pl.DataFrame:
    rows = []
    for i, item in enumerate(_examples(path)):
        where = f"examples[{i}]"
        rows.append({"source_idx": i, "question": str(_field(item, "question", path, where)),
                     "gold": str(_field(item, "answer", path, where)), "where": f"{path} {where}"})
    return _raw(rows)


@TASK_LOADERS.register("last_letter_concatenation")
def _load_last_letters(folder: Path) -> pl.DataFrame:
    return _question_answer(folder / "last_letters.json")


@TASK_LOADERS.register("coin_flip")
def _load_coin_flip(folder: Path) -> pl.DataFrame:
    return _question_answer(folder / "coin_flip.json")


@TASK_LOADERS.register("commonsense_qa")
def _load_commonsense_qa(folder: Path) -> pl.DataFrame:
    """Paper split: train_rand_split (indices 0..9740) then dev_rand_split (9741..10961, the test split)."""
    rows, offset = [], 0
    for name in ("train_rand_split.jsonl", "dev_rand_split.jsonl"):
        path = folder / name
        items = _read_jsonl(path)
        for i, item in enumerate(items):
            where = f"line {i + 1}"
            q = _field(item, "question", path, where)
            choices = _field(q, "choices", path, f"{where} question")
            if not isinstance(choices, list) or not choices:
                raise InputError(f"{path}: {where}: field 'question.choices' must be a non-empty list")
            labels = [str(c.get("label", "")) if isinstance(c, dict) else "" for c in choices]
            if labels != list(LETTERS[: len(labels)]):
                raise InputError(f"{path}: {where}: field 'question.choices' labels {labels} are not A, B, ...")
            rows.append({"source_idx": offset + i, "question": str(_field(q, "stem", path, f"{where} question")),
                         "gold": str(_field(item, "answerKey", path, where)),
                         "choices": [str(c.get("text", "")).strip() for c in choices],
                         "source_id": str(item.get("id", "")) or None, "where": f"{path} {where}"})
        offset += len(items)
    return _raw(rows)


@TASK_LOADERS.register("strategy_qa")
def _load_strategy_qa(folder: Path) -> pl.DataFrame:
    path = folder / "task.json"
    rows = []
    for i, item in enumerate(_examples(path)):
        where = f"examples[{i}]"
        scores = _field(item, "target_scores", path, where)
        if not isinstance(scores, dict) or "Yes" not in scores:
            raise InputError(f"{path}: {where}: field 'target_scores' needs a 'Yes' entry")
        rows.append({"source_idx": i, "question": str(_field(item, "input", path, where)),
                     "gold": "yes" if scores["Yes"] == 1 else "no", "where": f"{path} {where}"})
    return _raw(rows)


# ---------------------------------------------------------------- gold normalisation
def _canonical_number(text: str | None) -> str | None:
    """'1,600' -> '1600', '25.0' -> '25', '.50' -> '0.5', '-0' -> '0'; None when not a finite number."""
    if text is None:
        return None
    s = text.strip().replace(",", "").removeprefix("+")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return None
    if not d.is_finite() or abs(d.adjusted()) > 60:  # "1e999999" would print a million digits
        return None
    out = format(d.normalize(), "f")
    return "0" if out in ("-0", "0") else out


def _choice_letter(gold: str | None, choices: list[str] | None) -> str | None:
    """'b', '(B)', 'B)' -> 'B' when B is one of the choices; a gold equal to a choice text -> its letter."""
    if gold is None:
        return None
    letter = gold.upper().strip(" ().:")
    n = len(choices) if choices is not None else len(LETTERS)
    if len(letter) == 1 and letter in LETTERS[:n]:
        return letter
    texts = [c.strip() for c in choices or []]
    return LETTERS[texts.index(gold)] if gold in texts else None


def _first_bad(df: pl.DataFrame, bad: pl.Expr) -> dict | None:
    hits = df.filter(bad)
    return hits.row(0, named=True) if hits.height else None


def _normalise_gold(df: pl.DataFrame, answer_type: str, field_name: str) -> pl.DataFrame:
    """Rewrite `gold` to its canonical form; the first bad row raises naming file, row and field."""
    gold = pl.col("gold").cast(pl.String).str.strip_chars()
    if answer_type == "number":
        out = df.with_columns(
            gold.map_batches(lambda s: pl.Series([_canonical_number(v) for v in s], dtype=pl.String),
                             return_dtype=pl.String).alias("_norm"))
        bad = _first_bad(out, pl.col("_norm").is_null())
        if bad:
            raise InputError(f"{bad['where']}: field {field_name!r}: gold {bad['gold']!r} is not a number "
                             "(answer_type 'number' needs digits, e.g. 1600 or 2.5)")
    elif answer_type == "yesno":
        low = gold.str.to_lowercase().str.strip_chars(" .")
        norm = (pl.when(low.is_in(["yes", "true", "1"])).then(pl.lit("yes"))
                .when(low.is_in(["no", "false", "0"])).then(pl.lit("no")))
        out = df.with_columns(norm.alias("_norm"))
        bad = _first_bad(out, pl.col("_norm").is_null())
        if bad:
            raise InputError(f"{bad['where']}: field {field_name!r}: gold {bad['gold']!r} is not yes/no")
    elif answer_type == "choice":
        out = df.with_columns(pl.struct(gold.alias("gold"), "choices").map_batches(
            lambda s: pl.Series([_choice_letter(r["gold"], r["choices"]) for r in s], dtype=pl.String),
            return_dtype=pl.String).alias("_norm"))
        bad = _first_bad(out, pl.col("_norm").is_null())
        if bad:
            n_bad = len(bad["choices"]) if bad["choices"] is not None else len(LETTERS)
            raise InputError(f"{bad['where']}: field {field_name!r}: gold {bad['gold']!r} is not one of the choice "
                             f"letters {', '.join(LETTERS[:n_bad])} (nor a choice text)")
    else:
        out = df.with_columns(gold.alias("_norm"))
        bad = _first_bad(out, pl.col("_norm").is_null() | (pl.col("_norm") == ""))
        if bad:
            raise InputError(f"{bad['where']}: field {field_name!r}: gold is empty")
    return out.with_columns(pl.col("_norm").alias("gold")).drop("_norm")


# ---------------------------------------------------------------- choices
def _show_choices(question: str, choices: list[str] | None) -> str:
    if not choices:
        return question
    shown = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question} Answer Choices: {shown}"


def _shuffle_seed(seed: int, qid: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{qid}".encode(), digest_size=8).digest(), "little")


def _shuffle_choices(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Permute each row's choices with a generator seeded by (seed, qid); the gold letter follows its text."""
    new_choices, new_gold = [], []
    columns = (df["qid"].to_list(), df["choices"].to_list(), df["gold"].to_list())
    for qid, choices, gold in zip(*columns, strict=True):
        perm = np.random.default_rng(_shuffle_seed(seed, qid)).permutation(len(choices)).tolist()
        new_choices.append([choices[j] for j in perm])
        new_gold.append(LETTERS[perm.index(LETTERS.index(gold))])
    return df.with_columns(pl.Series("choices", new_choices, dtype=pl.List(pl.String)),
                           pl.Series("gold", new_gold, dtype=pl.String))


# ---------------------------------------------------------------- generic sources
def _read_table_file(path: Path) -> tuple[pl.DataFrame, str]:
    """Read a JSONL/JSON/CSV/Parquet file; returns the frame and the row word used in errors."""
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if suffix in (".jsonl", ".ndjson"):
        text = _read_text(path)
        try:
            return pl.read_ndjson(io.StringIO(text), infer_schema_length=None), "line"
        except pl.exceptions.PolarsError:
            return pl.DataFrame(_read_jsonl(path), infer_schema_length=None), "line"  # names the bad line
    if suffix == ".json":
        data = _read_json(path)
        if isinstance(data, dict) and len([v for v in data.values() if isinstance(v, list)]) == 1:
            data = next(v for v in data.values() if isinstance(v, list))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise InputError(f"{path}: expected a JSON list of objects (or an object holding one such list)")
        return pl.DataFrame(data, infer_schema_length=None), "row"
    if suffix in (".csv", ".tsv"):
        text = _read_text(path)
        try:
            df = pl.read_csv(io.StringIO(text), infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
        except pl.exceptions.PolarsError as exc:
            raise InputError(f"{path}: cannot parse as CSV ({exc})") from None
        return df, "row"
    if suffix == ".parquet":
        try:
            return pl.read_parquet(path), "row"
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"{path}: cannot read as Parquet ({exc})") from None
    raise InputError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")


def _read_hub(spec: TaskSpec) -> tuple[pl.DataFrame, str]:
    """A Hub dataset (or a local dataset folder/file) through datasets.load_dataset(path, name, split)."""
    import datasets

    try:
        ds = datasets.load_dataset(spec.path, spec.hub_config, split=spec.hub_split)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"hub dataset {spec.path!r}: {exc}") from None
    except ValueError as exc:  # unknown split / config
        raise InputError(f"hub dataset {spec.path!r} (config {spec.hub_config!r}, split {spec.hub_split!r}): "
                         f"{exc}") from None
    return pl.from_arrow(ds.data.table), "row"


def _column(df: pl.DataFrame, dotted: str, source: str, field_name: str) -> pl.Expr:
    """`a.b` reads field b of struct column a (Hub datasets nest choices: choices.text)."""
    head, *rest = dotted.split(".")
    if head not in df.columns:
        if dotted in df.columns:
            return pl.col(dotted)
        raise InputError(f"{source}: column {dotted!r} (mapped to field {field_name!r}) not found; columns: "
                         f"{', '.join(df.columns)}. Fix tasks.items[].columns.{field_name}")
    expr, dtype = pl.col(head), df.schema[head]
    for part in rest:
        inner = dtype.inner if isinstance(dtype, pl.List) else None
        struct = inner if isinstance(inner, pl.Struct) else dtype
        if not isinstance(struct, pl.Struct) or part not in [f.name for f in struct.fields]:
            raise InputError(f"{source}: column {dotted!r} (mapped to field {field_name!r}) not found: "
                             f"{head!r} has no field {part!r}")
        sub = dict((f.name, f.dtype) for f in struct.fields)[part]
        if isinstance(dtype, pl.List):
            expr, dtype = expr.list.eval(pl.element().struct.field(part)), pl.List(sub)
        else:
            expr, dtype = expr.struct.field(part), sub
    return expr


def _choices_expr(df: pl.DataFrame, expr: pl.Expr) -> pl.Expr:
    """Choices as list<string>; CSV cells hold a JSON list ('["a", "b"]') or 'a|b|c'."""
    dtype = df.select(expr).to_series().dtype
    if isinstance(dtype, pl.List | pl.Array):
        return expr.cast(pl.List(pl.String))
    as_text = expr.cast(pl.String).str.strip_chars()
    return (pl.when(as_text.str.starts_with("["))
            .then(as_text.str.json_decode(pl.List(pl.String)))
            .otherwise(as_text.str.split("|").list.eval(pl.element().str.strip_chars())))


def _load_generic(spec: TaskSpec, base_dir: str | Path | None) -> tuple[pl.DataFrame, str, dict[str, str]]:
    """Read a file or Hub source and map its columns; returns the raw rows, the source name and the mapping."""
    if not spec.path:
        raise InputError(f"task {spec.name!r}: source={spec.source} needs tasks.items[].path")
    if spec.source == "file":
        path = _resolve(spec.path, base_dir)
        df, unit = _read_table_file(path)
        source = str(path)
    else:
        local = _resolve(spec.path, base_dir)
        if not local.exists() and spec.path.startswith((".", "/", "~")):  # a local path, not an ORG/NAME Hub id
            raise FileNotFoundError(f"{local}: no such dataset folder or file (tasks.items[].path of hub task "
                                    f"{spec.name!r}; relative paths resolve against the recipe's folder)")
        hub_spec = spec.model_copy(update={"path": str(local)}) if local.exists() else spec
        df, unit = _read_hub(hub_spec)
        source = f"hub dataset {hub_spec.path} [{spec.hub_split}]"
    unknown = sorted(set(spec.columns) - set(MAPPABLE_FIELDS))
    if unknown:
        raise InputError(f"task {spec.name!r}: tasks.items[].columns has unknown field(s) {unknown}; "
                         f"map any of {', '.join(MAPPABLE_FIELDS)}")
    mapping = {"question": "question", "gold": "gold"} | spec.columns
    if "gold" not in spec.columns and "gold" not in df.columns and "answer" in df.columns:
        mapping["gold"] = "answer"
    first = 1 if unit == "line" else 0
    exprs = [
        pl.int_range(pl.len(), dtype=pl.Int64).alias("source_idx"),
        _column(df, mapping["question"], source, "question").cast(pl.String).alias("question"),
        _column(df, mapping["gold"], source, "gold").cast(pl.String).alias("gold"),
        (_choices_expr(df, _column(df, mapping["choices"], source, "choices")) if "choices" in mapping
         else pl.lit(None, dtype=pl.List(pl.String))).alias("choices"),
        (_column(df, mapping["id"], source, "id").cast(pl.String) if "id" in mapping
         else pl.lit(None, dtype=pl.String)).alias("source_id"),
        pl.format(f"{source} {unit} {{}}", pl.int_range(first, pl.len() + first)).alias("where"),
    ]
    if "split" in mapping:
        exprs.append(_column(df, mapping["split"], source, "split").cast(pl.String).alias("split"))
    raw = df.select(exprs)
    if "id" in mapping:
        dup = _first_bad(raw.with_row_index("_i"), pl.col("source_id").is_duplicated())
        if dup:
            first_row = raw.filter(pl.col("source_id") == dup["source_id"])["where"].to_list()
            raise InputError(f"{first_row[1]}: field 'id' (column {mapping['id']!r}): duplicate id "
                             f"{dup['source_id']!r}, first seen at {first_row[0]}; ids must be unique")
    return raw, source, mapping


def _resolve(path: str, base_dir: str | Path | None) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(path)))
    return p if p.is_absolute() or base_dir is None else Path(base_dir) / p


# ---------------------------------------------------------------- one task
@dataclass
class LoadedTask:
    """One task's questions plus the counts the CLI prints and tests check."""

    name: str
    questions: pl.DataFrame
    raw_count: int  # rows read from the source, before dedup and split
    duplicates: int  # exact duplicate questions dropped (first occurrence kept)
    split_counts: dict[str, int] = field(default_factory=dict)  # after dedup, before limit
    row_qids: pl.DataFrame | None = None  # source_idx -> qid for every source row, duplicates included


def resolve_benchmarks_dir(cfg_dir: str | Path | None, base_dir: str | Path | None = None) -> Path:
    """benchmarks_dir from the recipe, else $RATIONALE_BENCHMARKS_DIR; clear error if neither."""
    raw = str(cfg_dir) if cfg_dir else os.environ.get(BENCHMARKS_ENV)
    if not raw:
        raise InputError(f"paper tasks need the benchmark files: set tasks.benchmarks_dir in the recipe or the "
                         f"{BENCHMARKS_ENV} environment variable (a folder laid out like shared/benchmarks)")
    path = _resolve(raw, base_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: benchmarks_dir is not a folder (tasks.benchmarks_dir / ${BENCHMARKS_ENV})")
    return path


def _paper_splits(task: str, benchmarks_dir: Path) -> pl.DataFrame:
    path = benchmarks_dir / "splits" / f"{task}__default.json"
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("train", "test")):
        raise InputError(f"{path}: expected {{\"train\": [indices], \"test\": [indices]}}")
    frames = [pl.DataFrame({"source_idx": data[k], "split": k}, schema={"source_idx": pl.Int64, "split": pl.String})
              for k in ("train", "test")]
    splits = pl.concat(frames)
    if splits["source_idx"].is_duplicated().any():
        raise InputError(f"{path}: an index is listed twice (train and test must not overlap)")
    return splits


def load_task(spec: TaskSpec, *, benchmarks_dir: Path | None = None, base_dir: str | Path | None = None,
              shuffle_seed: int = 0) -> LoadedTask:
    """Load one task as a `questions` frame (validated), with raw and duplicate counts.

    Raises:
        ValueError: unknown paper task or bad split name.
        FileNotFoundError: a task file or split file is missing.
        InputError: unreadable or malformed input, naming the file, row and field.
    """
    if spec.source == "paper":
        info = task_info(spec.name)
        if spec.answer_type is not None and spec.answer_type != info.answer_type:
            raise ValueError(f"task {spec.name!r}: answer_type {spec.answer_type!r} conflicts with the paper task's "
                             f"{info.answer_type!r}; drop tasks.items[].answer_type")
        if spec.split not in ("train", "test", "all"):
            raise ValueError(f"task {spec.name!r}: split {spec.split!r} is not train, test or all")
        if benchmarks_dir is None:
            raise InputError(f"task {spec.name!r}: paper tasks need tasks.benchmarks_dir or ${BENCHMARKS_ENV}")
        folder = _resolve(spec.path, base_dir) if spec.path else benchmarks_dir / spec.name
        raw = TASK_LOADERS.get(spec.name)(folder)
        answer_type, where = info.answer_type, str(folder)
    else:
        if spec.answer_type is None:
            raise ValueError(f"task {spec.name!r}: tasks.items[].answer_type is required for source={spec.source} "
                             f"(one of {', '.join(_answer_types())})")
        if spec.answer_type not in _answer_types():
            raise ValueError(f"task {spec.name!r}: unknown answer_type {spec.answer_type!r}; valid: "
                             f"{', '.join(_answer_types())}")
        raw, where, mapping = _load_generic(spec, base_dir)
        answer_type = spec.answer_type
    if spec.source == "paper":
        qfield, field_name = _PAPER_FIELDS[spec.name]
    else:
        qfield, field_name = mapping["question"], mapping["gold"]

    empty = _first_bad(raw, pl.col("question").is_null() | (pl.col("question").str.strip_chars() == ""))
    if empty:
        raise InputError(f"{empty['where']}: field {qfield!r}: question is empty")
    no_choices = _first_bad(raw, pl.col("choices").list.len() == 0)
    if no_choices:
        raise InputError(f"{no_choices['where']}: field 'choices': the choice list is empty")
    if answer_type != "choice" and raw["choices"].is_not_null().any():
        raise ValueError(f"task {spec.name!r}: choices are mapped but answer_type is {answer_type!r}; "
                         "use answer_type: choice")
    df = raw.with_columns(pl.col("question").str.strip_chars().alias("stem"))
    df = _normalise_gold(df, answer_type, field_name)

    shown = pl.struct("stem", "choices").map_batches(
        lambda s: pl.Series([_show_choices(r["stem"], r["choices"]) for r in s], dtype=pl.String),
        return_dtype=pl.String)
    df = df.with_columns(shown.alias("question"))
    df = df.with_columns(pl.col("question").map_batches(
        lambda s: pl.Series([make_qid(spec.name, q) for q in s], dtype=pl.String),
        return_dtype=pl.String).alias("qid"))

    raw_count = df.height
    row_qids = df.select("source_idx", "qid")
    df = df.unique("qid", keep="first", maintain_order=True)
    duplicates = raw_count - df.height
    if duplicates:
        log.info("%s: dropped %d exact duplicate question(s) of %d (kept the first)", spec.name, duplicates,
                 raw_count)

    shuffle = spec.shuffle_choices if spec.shuffle_choices is not None else spec.name in SHUFFLED_TASKS
    if shuffle and answer_type == "choice" and df["choices"].is_not_null().all() and df.height:
        df = _shuffle_choices(df, shuffle_seed)
        df = df.with_columns(shown.alias("question"))

    if spec.source == "paper":
        df, split_counts = _apply_paper_split(df, raw, spec, benchmarks_dir)
    else:
        df, split_counts = _apply_generic_split(df, spec)
    if spec.limit is not None:
        df = df.head(spec.limit)
    out = df.with_columns(pl.lit(spec.name).alias("task"), pl.lit(answer_type).alias("answer_type"))
    return LoadedTask(spec.name, validate(out, "questions", where=where), raw_count, duplicates, split_counts,
                      row_qids)


def paper_split_items(task: str, split: str, benchmarks_dir: str | Path | None = None,
                      base_dir: str | Path | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every item the paper's split lists, as scored in the paper: (questions, items per qid).

    Builds drop repeated questions before splitting so no question is in both splits; the paper's evaluation counts
    every listed item (MultiArith: 180 test items, 177 distinct, 5 of them repeats of train questions). This returns
    each distinct question of the split once (split set to `split`) and how many listed items it stands for.
    """
    bdir = resolve_benchmarks_dir(benchmarks_dir, base_dir)
    loaded = load_task(TaskSpec(name=task, split="all"), benchmarks_dir=bdir, base_dir=base_dir)
    wanted = _paper_splits(task, bdir).filter(pl.col("split") == split).select("source_idx")
    items = (wanted.join(loaded.row_qids, on="source_idx", how="inner")
             .group_by("qid", maintain_order=True).agg(items=pl.len()))
    if items.is_empty():
        raise ValueError(f"task {task!r}: the paper's {split!r} split lists no rows found in {bdir / task}")
    questions = (loaded.questions.join(items.select("qid"), on="qid", how="semi")
                 .with_columns(split=pl.lit(split)))
    return validate(questions, "questions", where=f"{bdir / task} ({split} items)"), items


def _apply_paper_split(df: pl.DataFrame, raw: pl.DataFrame, spec: TaskSpec,
                       benchmarks_dir: Path) -> tuple[pl.DataFrame, dict[str, int]]:
    splits = _paper_splits(spec.name, benchmarks_dir)
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


def _answer_types() -> list[str]:
    try:  # graders registered by builder.graders, when present
        from builder.graders import GRADERS  # type: ignore[import-not-found]

        return sorted(set(ANSWER_TYPES) | set(GRADERS.names()))
    except (ImportError, AttributeError):
        return list(ANSWER_TYPES)


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
    df, unit = _read_table_file(path)
    if "question" not in df.columns:
        raise InputError(f"{path}: eval set needs a 'question' column; columns: {', '.join(df.columns)}")
    first = 1 if unit == "line" else 0
    task = pl.col("task").cast(pl.String) if "task" in df.columns else pl.lit(path.stem.split(".")[0])
    out = df.select(task.alias("task"), pl.col("question").cast(pl.String).str.strip_chars(),
                    pl.format(f"{path} {unit} {{}}", pl.int_range(first, pl.len() + first)).alias("where"))
    empty = _first_bad(out, pl.col("question").is_null() | (pl.col("question") == ""))
    if empty:
        raise InputError(f"{empty['where']}: field 'question': question is empty")
    qid = pl.struct("task", "question").map_batches(
        lambda s: pl.Series([make_qid(r["task"], r["question"]) for r in s], dtype=pl.String), return_dtype=pl.String)
    return out.select(qid.alias("qid"), "task", pl.lit("eval").alias("split"), "question")


def answer_prompts(cfg: TasksConfig, questions: pl.DataFrame | None = None) -> dict[str, str]:
    """Answer prompt per task name: TaskSpec.answer_prompt, else the paper task's, else one from the answer type.

    For generic choice tasks the letter range comes from the widest choice list in `questions`.
    """
    out = {}
    for spec in cfg.items:
        if spec.answer_prompt:
            out[spec.name] = spec.answer_prompt
        elif spec.source == "paper" and spec.name in PAPER_TASKS:
            out[spec.name] = PAPER_TASKS[spec.name].answer_prompt
        else:
            n = None
            if questions is not None and spec.answer_type == "choice":
                lens = questions.filter(pl.col("task") == spec.name)["choices"].list.len()
                n = int(lens.max()) if lens.len() and lens.max() is not None else None
            out[spec.name] = answer_prompt_for(spec.answer_type or "string", n)
    return out


# ---------------------------------------------------------------- few-shot exemplars
_EXEMPLAR = re.compile(r"Q:\s*(?P<q>.*?)\nA:\s*(?P<a>.*?)(?=\nQ:|\Z)", re.DOTALL)
_ANSWER = re.compile(r"^(?P<r>.*?)\s*The answer is\s*(?P<x>.+?)\.?\s*$", re.DOTALL)


def paper_exemplars(task: str, benchmarks_dir: str | Path | None = None) -> list[Exemplar]:
    """The paper's Few-shot-CoT exemplars for `task`, parsed from few_shot_cot_prompts.json.

    Each "Q: ...\\nA: ... The answer is X." block becomes Exemplar(question, rationale, answer=X).
    `benchmarks_dir` defaults to $RATIONALE_BENCHMARKS_DIR.

    Raises:
        FileNotFoundError: no few_shot_cot_prompts.json.
        ValueError: the file has no prompt for `task` (listing those it has).
        InputError: a block without "The answer is".
    """
    path = resolve_benchmarks_dir(benchmarks_dir) / "few_shot_cot_prompts.json"
    data = _read_json(path)
    if not isinstance(data, dict) or task not in data:
        have = ", ".join(sorted(data)) if isinstance(data, dict) else "none"
        raise ValueError(f"{path}: no Few-shot-CoT prompt for task {task!r}; it has: {have}. "
                         "Give prompt.exemplars as a list in the recipe instead")
    prompt = _field(data[task], "prompt", path, task)
    out = []
    for i, m in enumerate(_EXEMPLAR.finditer(str(prompt))):
        ans = _ANSWER.match(m.group("a").strip())
        if ans is None:
            raise InputError(f"{path}: {task}.prompt exemplar {i}: no 'The answer is X.' in the answer")
        out.append(Exemplar(question=m.group("q").strip(), rationale=ans.group("r").strip(),
                            answer=ans.group("x").strip()))
    if not out:
        raise InputError(f"{path}: {task}.prompt: no 'Q: ...\\nA: ...' blocks found")
    return out
