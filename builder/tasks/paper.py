"""The 12 paper tasks (Kojima et al. 2022, as used by Fine-tune-CoT): one registration each, holding all we know.

A paper task is a loader (its folder under benchmarks_dir -> raw rows, see `normalise.RAW_SCHEMA`) registered with
its answer type, number of choices, answer prompt, the source fields its question and gold come from (named in
errors) and whether its choices are shuffled by default. Adding one:

    @PAPER_TASKS.register("my_task", answer_type="number", fields=("q", "a"))
    def _load_my_task(folder: Path) -> pl.DataFrame:
        return raw_frame([{"source_idx": i, "question": r["q"], "gold": r["a"], "where": f"{folder} row {i}"}
                          for i, r in enumerate(read_jsonl(folder / "my_task.jsonl"))])

and a `splits/my_task__default.json` in benchmarks_dir. Paper splits index the task's files in order (gsm8k/aqua:
official train file, then test file; commonsense_qa: train then dev); `source_idx` is that index.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from builder.errors import InputError
from builder.paths import resolve_recipe_path
from builder.prompts import LETTERS, Exemplar, answer_prompt_for
from builder.readers import read_json, read_jsonl
from builder.registry import Registry
from builder.tasks.normalise import raw_frame

BENCHMARKS_ENV = "RATIONALE_BENCHMARKS_DIR"

TaskLoader = Callable[[Path], pl.DataFrame]


@dataclass(frozen=True)
class PaperTask:
    """Everything about one paper task; what sampling and grading need is answer_type, answer_prompt, n_choices."""

    name: str
    load: TaskLoader  # the task's folder -> raw rows
    answer_type: str
    fields: tuple[str, str]  # source fields of the question and the gold, as error messages name them
    n_choices: int | None = None
    answer_prompt: str = ""  # default: the Zero-shot-CoT prompt for answer_type (and n_choices)
    shuffle_choices: bool = False  # default of tasks.items[].shuffle_choices

    def __post_init__(self) -> None:
        if not self.answer_prompt:
            object.__setattr__(self, "answer_prompt", answer_prompt_for(self.answer_type, self.n_choices))


class PaperTasks(Registry[PaperTask]):
    """The paper-task registry: `register` decorates the loader and records its metadata; iterates in order."""

    def register(self, name: str, *, answer_type: str, fields: tuple[str, str], n_choices: int | None = None,
                 answer_prompt: str = "", shuffle_choices: bool = False) -> Callable[[TaskLoader], TaskLoader]:
        def deco(load: TaskLoader) -> TaskLoader:
            task = PaperTask(name, load, answer_type, fields, n_choices, answer_prompt, shuffle_choices)
            super(PaperTasks, self).register(name)(task)
            return load

        return deco

    def __iter__(self) -> Iterator[PaperTask]:
        return iter(self._items.values())


PAPER_TASKS = PaperTasks("paper task")


def task_info(name: str) -> PaperTask:
    """The registered paper task `name` (answer type, answer prompt, n_choices, ...).

    Raises:
        ValueError: unknown task, listing the valid ones.
    """
    return PAPER_TASKS.get(name)


# ---------------------------------------------------------------- reading helpers
def _examples(path: Path, key: str | None = "examples") -> list[dict]:
    data = read_json(path)
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


# ---------------------------------------------------------------- MAWPS: SingleEq, AddSub, MultiArith
def _mawps(path: Path) -> pl.DataFrame:
    """JSON list of {sQuestion, lSolutions, iIndex}; gold = lSolutions[0]."""
    rows = []
    for i, item in enumerate(_examples(path, key=None)):
        where = f"row {i}"
        sols = _field(item, "lSolutions", path, where)
        if not isinstance(sols, list) or not sols:
            raise InputError(f"{path}: {where}: field 'lSolutions' must be a non-empty list")
        rows.append({"source_idx": i, "question": str(_field(item, "sQuestion", path, where)),
                     "gold": str(sols[0]), "source_id": str(item.get("iIndex", i)), "where": f"{path} {where}"})
    return raw_frame(rows)


_MAWPS_FIELDS = ("sQuestion", "lSolutions")


@PAPER_TASKS.register("single_eq", answer_type="number", fields=_MAWPS_FIELDS)
def _load_single_eq(folder: Path) -> pl.DataFrame:
    return _mawps(folder / "questions.json")


@PAPER_TASKS.register("addsub", answer_type="number", fields=_MAWPS_FIELDS)
def _load_addsub(folder: Path) -> pl.DataFrame:
    return _mawps(folder / "AddSub.json")


@PAPER_TASKS.register("multiarith", answer_type="number", fields=_MAWPS_FIELDS)
def _load_multiarith(folder: Path) -> pl.DataFrame:
    return _mawps(folder / "MultiArith.json")


# ---------------------------------------------------------------- GSM8K, AQuA: official train file, then test
def _official_train_then_test(folder: Path, train: str, test: str, train_size: int,
                              read: Callable[[Path, int], list[dict]]) -> pl.DataFrame:
    """Split indices run over the official train file then the test file; only test ships in shared/benchmarks."""
    rows: list[dict] = []
    train_path = folder / train
    if train_path.is_file():
        rows = read(train_path, 0)
        if len(rows) != train_size:
            raise InputError(f"{train_path}: {len(rows)} rows, but the paper's split indices assume the official "
                             f"train file with {train_size}; use the original file")
    rows += read(folder / test, train_size)
    return raw_frame(rows)


def _gsm8k_rows(path: Path, offset: int) -> list[dict]:
    rows = []
    for i, item in enumerate(read_jsonl(path)):
        where = f"line {i + 1}"
        answer = str(_field(item, "answer", path, where))
        if "####" not in answer:
            raise InputError(f"{path}: {where}: field 'answer' has no '#### <gold>' marker")
        rows.append({"source_idx": offset + i, "question": str(_field(item, "question", path, where)),
                     "gold": answer.rsplit("####", 1)[1], "where": f"{path} {where}"})
    return rows


@PAPER_TASKS.register("gsm8k", answer_type="number", fields=("question", "answer"))
def _load_gsm8k(folder: Path) -> pl.DataFrame:
    return _official_train_then_test(folder, "train.jsonl", "test.jsonl", 7473, _gsm8k_rows)


_AQUA_OPTION = re.compile(r"^\s*\(?([A-E])\)\s*(.*)$", re.DOTALL)


def _aqua_rows(path: Path, offset: int) -> list[dict]:
    rows = []
    for i, item in enumerate(read_jsonl(path)):  # JSONL despite the .json name
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


@PAPER_TASKS.register("aqua", answer_type="choice", n_choices=5, fields=("question", "correct"))
def _load_aqua(folder: Path) -> pl.DataFrame:
    return _official_train_then_test(folder, "train.json", "test.json", 97467, _aqua_rows)


# ---------------------------------------------------------------- SVAMP
@PAPER_TASKS.register("svamp", answer_type="number", fields=("Body/Question", "Answer"))
def _load_svamp(folder: Path) -> pl.DataFrame:
    path = folder / "SVAMP.json"
    rows = []
    for i, item in enumerate(_examples(path, key=None)):
        where = f"row {i}"
        body, question = _field(item, "Body", path, where), _field(item, "Question", path, where)
        rows.append({"source_idx": i, "question": f"{str(body).strip()} {str(question).strip()}",
                     "gold": str(_field(item, "Answer", path, where)), "source_id": str(item.get("ID", i)),
                     "where": f"{path} {where}"})
    return raw_frame(rows)


# ---------------------------------------------------------------- BIG-bench multiple choice
def _bigbench_choice(path: Path) -> pl.DataFrame:
    """{input, target_scores: {choice text: 0/1}}; gold = letter of the 1, in file order."""
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
    return raw_frame(rows)


# BIG-bench files list the right choice first (date_understanding: 364 of 369), so these shuffle by default.
# tracking_shuffled_objects is "object_tracking" in kojima-takeshi188/zero_shot_cot: "among A through C".
@PAPER_TASKS.register("date_understanding", answer_type="choice", n_choices=6, fields=("input", "target_scores"),
                      shuffle_choices=True)
def _load_date_understanding(folder: Path) -> pl.DataFrame:
    return _bigbench_choice(folder / "task.json")


@PAPER_TASKS.register("tracking_shuffled_objects", answer_type="choice", n_choices=3,
                      fields=("input", "target_scores"), shuffle_choices=True)
def _load_tracking_shuffled_objects(folder: Path) -> pl.DataFrame:
    return _bigbench_choice(folder / "task.json")


# ---------------------------------------------------------------- symbolic: last letters, coin flip
def _question_answer(path: Path) -> pl.DataFrame:
    rows = []
    for i, item in enumerate(_examples(path)):
        where = f"examples[{i}]"
        rows.append({"source_idx": i, "question": str(_field(item, "question", path, where)),
                     "gold": str(_field(item, "answer", path, where)), "where": f"{path} {where}"})
    return raw_frame(rows)


@PAPER_TASKS.register("last_letter_concatenation", answer_type="string", fields=("question", "answer"))
def _load_last_letters(folder: Path) -> pl.DataFrame:
    return _question_answer(folder / "last_letters.json")


@PAPER_TASKS.register("coin_flip", answer_type="yesno", fields=("question", "answer"))
def _load_coin_flip(folder: Path) -> pl.DataFrame:
    return _question_answer(folder / "coin_flip.json")


# ---------------------------------------------------------------- CommonsenseQA, StrategyQA
@PAPER_TASKS.register("commonsense_qa", answer_type="choice", n_choices=5, fields=("question.stem", "answerKey"))
def _load_commonsense_qa(folder: Path) -> pl.DataFrame:
    """Paper split: train_rand_split (indices 0..9740) then dev_rand_split (9741..10961, the test split)."""
    rows, offset = [], 0
    for name in ("train_rand_split.jsonl", "dev_rand_split.jsonl"):
        path = folder / name
        items = read_jsonl(path)
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
    return raw_frame(rows)


@PAPER_TASKS.register("strategy_qa", answer_type="yesno", fields=("input", "target_scores"))
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
    return raw_frame(rows)


# ---------------------------------------------------------------- the benchmark folder: splits, exemplars
def resolve_benchmarks_dir(cfg_dir: str | Path | None, base_dir: str | Path | None = None) -> Path:
    """benchmarks_dir from the recipe, else $RATIONALE_BENCHMARKS_DIR; clear error if neither."""
    raw = str(cfg_dir) if cfg_dir else os.environ.get(BENCHMARKS_ENV)
    if not raw:
        raise InputError(f"paper tasks need the benchmark files: set tasks.benchmarks_dir in the recipe or the "
                         f"{BENCHMARKS_ENV} environment variable (a folder laid out like shared/benchmarks)")
    path = resolve_recipe_path(base_dir, raw)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: benchmarks_dir is not a folder (tasks.benchmarks_dir / ${BENCHMARKS_ENV})")
    return path


def paper_splits(task: str, benchmarks_dir: Path) -> pl.DataFrame:
    """`splits/<task>__default.json` as (source_idx, split) rows."""
    path = benchmarks_dir / "splits" / f"{task}__default.json"
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("train", "test")):
        raise InputError(f"{path}: expected {{\"train\": [indices], \"test\": [indices]}}")
    frames = [pl.DataFrame({"source_idx": data[k], "split": k}, schema={"source_idx": pl.Int64, "split": pl.String})
              for k in ("train", "test")]
    splits = pl.concat(frames)
    if splits["source_idx"].is_duplicated().any():
        raise InputError(f"{path}: an index is listed twice (train and test must not overlap)")
    return splits


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
    data = read_json(path)
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
