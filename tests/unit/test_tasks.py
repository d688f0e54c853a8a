"""Task loaders on the 12 original paper files (../shared/benchmarks), generic sources, and bad inputs."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from builder import tasks
from builder.cli import main
from builder.errors import InputError
from builder.prompts import LETTERS, answer_prompt_for
from builder.readers import read_jsonl
from builder.recipe import TasksConfig, TaskSpec
from builder.schemas import read_table, validate
from builder.tasks.normalise import canonical_number, raw_frame
from tests.helpers import DATA as TEST_DATA

DATA = TEST_DATA / "tasks"

# From ../shared/benchmarks/README.md: items per file, and exact duplicate questions within the file.
README_COUNTS = {
    "single_eq": 508, "addsub": 395, "multiarith": 600, "gsm8k": 1319, "aqua": 254, "svamp": 1000,
    "date_understanding": 369, "tracking_shuffled_objects": 750, "last_letter_concatenation": 500,
    "coin_flip": 500, "commonsense_qa": 9741 + 1221, "strategy_qa": 2290,
}
README_DUPLICATES = {"multiarith": 20, "strategy_qa": 1}


def _load(name: str, benchmarks_dir: Path, **kw) -> tasks.LoadedTask:
    return tasks.load_task(TaskSpec(name=name, **kw), benchmarks_dir=benchmarks_dir)


def _raw_questions(task: str, benchmarks_dir: Path) -> list[str]:
    """The question field of each item, read independently of the loaders (for duplicate accounting)."""
    folder = benchmarks_dir / task
    if task == "multiarith":
        return [r["sQuestion"].strip() for r in json.loads((folder / "MultiArith.json").read_text())]
    if task == "strategy_qa":
        return [r["input"].strip() for r in json.loads((folder / "task.json").read_text())["examples"]]
    raise AssertionError(task)


# ---------------------------------------------------------------- the 12 paper files
@pytest.mark.parametrize("task", list(README_COUNTS))
def test_paper_task_counts(task, benchmarks_dir):
    loaded = _load(task, benchmarks_dir, split="all")
    assert loaded.raw_count == README_COUNTS[task]
    assert loaded.duplicates == README_DUPLICATES.get(task, 0)
    df = loaded.questions
    assert df.height == README_COUNTS[task] - README_DUPLICATES.get(task, 0)
    validate(df, "questions")
    assert df["qid"].is_unique().all()
    assert (df["task"] == task).all()
    assert (df["answer_type"] == tasks.task_info(task).answer_type).all()
    assert df["question"].str.strip_chars().str.len_chars().min() > 0
    assert df["source_idx"].is_sorted()


def test_paper_task_list_is_the_twelve():
    assert tasks.PAPER_TASKS.names() == sorted(README_COUNTS)



# ---------------------------------------------------------------- adding a paper task
@pytest.fixture
def scratch_paper_tasks(monkeypatch):
    """Paper tasks registered in a test are gone after it."""
    monkeypatch.setattr(tasks.PAPER_TASKS, "_items", dict(tasks.PAPER_TASKS._items))


def _toy_benchmarks(root: Path, rows: list[dict], splits: dict[str, list[int]]) -> Path:
    (root / "toy").mkdir(parents=True)
    (root / "toy" / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "splits").mkdir()
    (root / "splits" / "toy__default.json").write_text(json.dumps(splits))
    return root


def _load_toy(folder: Path) -> pl.DataFrame:
    return raw_frame([{"source_idx": i, "question": r["q"], "gold": r["a"], "choices": r.get("c"),
                       "where": f"{folder} line {i + 1}"} for i, r in enumerate(read_jsonl(folder / "toy.jsonl"))])


def test_new_paper_task_is_one_registration(tmp_path, scratch_paper_tasks, capsys, monkeypatch):
    bdir = _toy_benchmarks(tmp_path, [{"q": "What is 1 + 1?", "a": "2.0"}, {"q": "What is 2 + 2?", "a": "4"},
                                      {"q": "What is 3 + 3?", "a": "6"}], {"train": [0, 2], "test": [1]})
    with pytest.raises(ValueError, match="unknown paper task 'toy'; valid: addsub"):
        tasks.check_spec(TaskSpec(name="toy"))  # not registered: binding the recipe rejects it

    tasks.PAPER_TASKS.register("toy", answer_type="number", fields=("q", "a"), answer_prompt="The sum is")(_load_toy)

    cfg = TasksConfig(benchmarks_dir=str(bdir), items=[TaskSpec(name="toy", split="train")])
    df = tasks.run(cfg)
    assert df["question"].to_list() == ["What is 1 + 1?", "What is 3 + 3?"]
    assert df["gold"].to_list() == ["2", "6"] and (df["answer_type"] == "number").all()
    assert df["qid"][0] == tasks.make_qid("toy", "What is 1 + 1?")
    assert tasks.answer_prompts(cfg) == {"toy": "The sum is"} and tasks.task_info("toy").answer_prompt == "The sum is"
    monkeypatch.delenv(tasks.BENCHMARKS_ENV, raising=False)
    assert main(["tasks", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["toy", "number", "-", "The", "sum", "is"]
    (bdir / "toy" / "toy.jsonl").write_text('{"q": "x?", "a": "seven"}\n')
    with pytest.raises(InputError, match=r"toy line 1: field 'a': gold 'seven' is not a number"):
        tasks.run(cfg)  # errors name the source field given at registration


def test_new_paper_task_choice_defaults(tmp_path, scratch_paper_tasks):
    rows = [{"q": f"Pick {i}.", "a": "A", "c": [f"right {i}", f"wrong {i}", f"other {i}"]} for i in range(12)]
    bdir = _toy_benchmarks(tmp_path, rows, {"train": list(range(12)), "test": []})
    tasks.PAPER_TASKS.register("toy", answer_type="choice", n_choices=3, fields=("q", "a"),
                               shuffle_choices=True)(_load_toy)

    df = tasks.run(TasksConfig(benchmarks_dir=str(bdir), items=[TaskSpec(name="toy")]))
    assert tasks.task_info("toy").answer_prompt == "Therefore, among A through C, the answer is"
    assert set(df["gold"]) != {"A"}  # shuffled by default
    for row in df.to_dicts():
        assert row["choices"][LETTERS.index(row["gold"])].startswith("right")
    plain = tasks.run(TasksConfig(benchmarks_dir=str(bdir), items=[TaskSpec(name="toy", shuffle_choices=False)]))
    assert set(plain["gold"]) == {"A"}

@pytest.mark.parametrize("task", [t for t in README_COUNTS if t not in ("gsm8k", "aqua")])
def test_paper_splits_partition(task, benchmarks_dir):
    split_file = json.loads((benchmarks_dir / "splits" / f"{task}__default.json").read_text())
    all_ = _load(task, benchmarks_dir, split="all").questions
    train = _load(task, benchmarks_dir, split="train").questions
    test = _load(task, benchmarks_dir, split="test").questions
    assert set(train["qid"]).isdisjoint(test["qid"])
    assert sorted(train["qid"].to_list() + test["qid"].to_list()) == sorted(all_["qid"].to_list())
    assert (train["split"] == "train").all() and (test["split"] == "test").all()
    assert set(train["source_idx"]) <= set(split_file["train"])
    assert set(test["source_idx"]) <= set(split_file["test"])

    # Duplicates are dropped before splitting (first occurrence kept): a split loses exactly its later copies.
    dropped: set[int] = set()
    if task in README_DUPLICATES:
        seen: set[str] = set()
        for i, q in enumerate(_raw_questions(task, benchmarks_dir)):
            if q in seen:
                dropped.add(i)
            seen.add(q)
        assert len(dropped) == README_DUPLICATES[task]
    assert train.height == len(split_file["train"]) - len(dropped & set(split_file["train"]))
    assert test.height == len(split_file["test"]) - len(dropped & set(split_file["test"]))


def test_multiarith_duplicates_straddle_splits_without_leaking(benchmarks_dir):
    """MultiArith repeats questions across the paper's train and test indices; dedup keeps one copy, in one split."""
    raw = _raw_questions("multiarith", benchmarks_dir)
    split_file = json.loads((benchmarks_dir / "splits" / "multiarith__default.json").read_text())
    first: dict[str, int] = {}
    straddling = 0
    for i, q in enumerate(raw):
        if q in first:
            straddling += (first[q] in split_file["train"]) != (i in split_file["train"])
        first.setdefault(q, i)
    assert straddling > 0  # the trap is real in this file
    train = _load("multiarith", benchmarks_dir, split="train").questions
    test = _load("multiarith", benchmarks_dir, split="test").questions
    assert set(train["question"]).isdisjoint(test["question"])


@pytest.mark.parametrize("task, train_file", [("gsm8k", "train.jsonl"), ("aqua", "train.json")])
def test_official_train_file_missing(task, train_file, benchmarks_dir):
    test = _load(task, benchmarks_dir, split="test").questions
    assert test.height == README_COUNTS[task]
    split_file = json.loads((benchmarks_dir / "splits" / f"{task}__default.json").read_text())
    assert sorted(test["source_idx"].to_list()) == sorted(split_file["test"])
    with pytest.raises(FileNotFoundError, match=train_file):
        _load(task, benchmarks_dir, split="train")


def test_limit_keeps_first_n(benchmarks_dir):
    full = _load("svamp", benchmarks_dir, split="train").questions
    head = _load("svamp", benchmarks_dir, split="train", limit=7).questions
    assert head["qid"].to_list() == full["qid"].head(7).to_list()


# ---------------------------------------------------------------- qids
def test_qid_stable_across_runs(benchmarks_dir):
    a = _load("addsub", benchmarks_dir, split="all").questions
    b = _load("addsub", benchmarks_dir, split="all").questions
    assert a["qid"].to_list() == b["qid"].to_list()
    assert a["qid"].str.contains(r"^[0-9a-f]{16}$").all()


def test_qid_normalisation():
    q = "Joan found 70 seashells on the beach . she gave Sam some ? "
    same = "joan  found 70 seashells on the beach. She gave sam some?"
    assert tasks.make_qid("addsub", q) == tasks.make_qid("addsub", same)
    assert tasks.make_qid("addsub", q) != tasks.make_qid("single_eq", q)
    assert tasks.make_qid("addsub", q) != tasks.make_qid("addsub", q.replace("70", "71"))
    shown = "Which? Answer Choices: (A) red (B) blue (C) green"
    assert tasks.make_qid("t", shown) == tasks.make_qid("t", "Which? Answer Choices: (A) green (B) red (C) blue")
    assert tasks.make_qid("t", shown) != tasks.make_qid("t", "Which? Answer Choices: (A) red (B) blue (C) pink")
    # Pinned: ids must never change between releases (datasets and ledgers are keyed by them).
    assert tasks.make_qid("multiarith", "A pet store had 13 siamese cats and 5 house cats. During a sale they "
                          "sold 10 cats. How many cats do they have left?") == "61a21508752ffbce"


@pytest.mark.parametrize("task", ["multiarith", "addsub", "svamp", "date_understanding",
                                  "last_letter_concatenation", "coin_flip"])
def test_teacher_completions_map_to_our_qids(task, benchmarks_dir, teacher_completions_dir):
    """The teacher saw Kojima's question text (its own choice order); make_qid still finds our question."""
    questions = _load(task, benchmarks_dir, split="all").questions
    by_qid = {r["qid"]: r for r in questions.to_dicts()}
    rows = [json.loads(line) for line in (teacher_completions_dir / f"{task}.jsonl").read_text().splitlines()]
    assert len(rows) == README_COUNTS[task]
    for row in rows:
        ours = by_qid[tasks.make_qid(task, row["question"])]
        if ours["choices"] is None:
            assert ours["gold"] == row["gold"]
        else:  # compare the gold choice's text: the two sides show choices in different orders
            theirs = dict(re.findall(r"\(([A-F])\) (.*?)(?= \([A-F]\) |$)", row["question"]))
            assert ours["choices"][LETTERS.index(ours["gold"])] == theirs[row["gold"]]


def test_cross_task_overlap_addsub_single_eq(benchmarks_dir):
    both = pl.concat([_load(t, benchmarks_dir, split="all").questions for t in ("addsub", "single_eq")])
    overlap = tasks.cross_task_overlap(both)
    assert overlap["key"].n_unique() > 50
    assert overlap.group_by("key").agg(pl.col("task").n_unique())["task"].min() == 2


# ---------------------------------------------------------------- gold normalisation
def test_gsm8k_gold_commas(benchmarks_dir):
    df = _load("gsm8k", benchmarks_dir, split="all").questions
    raw = [json.loads(line)["answer"].split("####")[-1].strip()
           for line in (benchmarks_dir / "gsm8k" / "test.jsonl").read_text().splitlines()]
    with_commas = [i for i, g in enumerate(raw) if "," in g]
    assert len(with_commas) == 14
    assert not df["gold"].str.contains(",").any()
    for i in with_commas:
        assert df["gold"][i] == raw[i].replace(",", "")
    assert df["gold"].str.contains(r"^-?\d+(\.\d+)?$").all()


@pytest.mark.parametrize("task", ["single_eq", "multiarith", "svamp", "addsub"])
def test_number_gold_has_no_trailing_zero(task, benchmarks_dir):
    gold = _load(task, benchmarks_dir, split="all").questions["gold"]
    assert not gold.str.ends_with(".0").any()
    assert gold.str.contains(r"^-?\d+(\.\d+)?$").all()


@pytest.mark.parametrize("raw, canonical", [
    ("25.0", "25"), ("1,600", "1600"), ("+3", "3"), (".50", "0.5"), ("-0.0", "0"), ("1e3", "1000"),
    ("2.50", "2.5"), ("abc", None), ("", None), ("nan", None), ("1/2", None), ("1e999999", None),
])
def test_canonical_number(raw, canonical):
    assert canonical_number(raw) == canonical


@pytest.mark.parametrize("task", ["coin_flip", "strategy_qa"])
def test_yesno_gold(task, benchmarks_dir):
    gold = _load(task, benchmarks_dir, split="all").questions["gold"]
    assert set(gold) == {"yes", "no"}


@pytest.mark.parametrize("task", ["aqua", "commonsense_qa", "date_understanding", "tracking_shuffled_objects"])
def test_choice_questions_show_choices(task, benchmarks_dir):
    df = _load(task, benchmarks_dir, split="all").questions
    n = tasks.task_info(task).n_choices
    for row in df.head(50).to_dicts():
        assert row["gold"] in LETTERS[: len(row["choices"])]
        assert 2 <= len(row["choices"]) <= n
        shown = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(row["choices"]))
        assert row["question"].endswith(" Answer Choices: " + shown)


# ---------------------------------------------------------------- choice shuffling
@pytest.mark.parametrize("task", ["date_understanding", "tracking_shuffled_objects"])
def test_bigbench_choices_shuffled_and_correct(task, benchmarks_dir):
    examples = json.loads((benchmarks_dir / task / "task.json").read_text())["examples"]
    right = {i: next(k for k, v in e["target_scores"].items() if v == 1).strip() for i, e in enumerate(examples)}
    df = _load(task, benchmarks_dir, split="all").questions
    for row in df.to_dicts():
        assert row["choices"][LETTERS.index(row["gold"])] == right[row["source_idx"]]
        file_order = [k.strip() for k in examples[row["source_idx"]]["target_scores"]]
        assert sorted(row["choices"]) == sorted(file_order)
    share = Counter(df["gold"]).most_common(1)[0][1] / df.height
    assert share < 0.4  # date_understanding's file puts the right choice first in 364 of 369
    assert set(df["gold"]) == set(LETTERS[: tasks.task_info(task).n_choices])


def test_shuffle_depends_on_seed_not_on_run(benchmarks_dir):
    def load(seed: int) -> pl.DataFrame:
        return tasks.load_task(TaskSpec(name="date_understanding", split="all"), benchmarks_dir=benchmarks_dir,
                               shuffle_seed=seed).questions

    a, b, c = load(0), load(0), load(1)
    assert a["choices"].to_list() == b["choices"].to_list()
    assert a["qid"].to_list() == c["qid"].to_list()  # the id ignores choice order
    assert a["choices"].to_list() != c["choices"].to_list()


def test_shuffle_can_be_turned_off(benchmarks_dir):
    df = _load("date_understanding", benchmarks_dir, split="all", shuffle_choices=False).questions
    assert (df["gold"] == "A").sum() == 364  # README: right choice listed first in 364 of 369


# ---------------------------------------------------------------- generic sources
def test_generic_jsonl_with_mapping():
    spec = TaskSpec(name="mini", source="file", path=str(DATA / "mini.jsonl"), answer_type="number",
                    columns={"question": "text", "gold": "label", "id": "uid"})
    loaded = tasks.load_task(spec)
    df = loaded.questions
    assert loaded.raw_count == 4 and loaded.duplicates == 1  # q4 is q1 with other spacing/case
    assert df["gold"].to_list() == ["5", "2400", "0.5"]
    assert (df["split"] == "train").all() and (df["answer_type"] == "number").all()
    assert df["choices"].is_null().all()
    assert df["qid"][0] == tasks.make_qid("mini", "Tom has 3 apples and buys 2 more. How many apples does he have?")


def test_generic_csv_choices_and_split_column():
    spec = TaskSpec(name="quiz", source="file", path="mini.csv", answer_type="choice", split="all",
                    columns={"question": "prompt", "gold": "answer", "choices": "options", "id": "id",
                             "split": "part"})
    df = tasks.load_task(spec, base_dir=DATA).questions
    assert df["choices"].to_list() == [["cat", "dog", "cow"], ["carrot", "apple", "potato"], ["red", "run", "sing"]]
    assert df["gold"].to_list() == ["B", "B", "A"]  # letter, "(B)", and a choice text
    assert df["split"].to_list() == ["train", "train", "test"]
    assert df["question"][0] == "Which animal barks? Answer Choices: (A) cat (B) dog (C) cow"
    test_only = tasks.load_task(spec.model_copy(update={"split": "test"}), base_dir=DATA).questions
    assert test_only["qid"].to_list() == df["qid"].tail(1).to_list()


def test_generic_parquet(tmp_path):
    path = tmp_path / "q.parquet"
    pl.DataFrame({"question": ["Is the sky blue?", "Is fire cold?"], "answer": [True, False]}).write_parquet(path)
    df = tasks.load_task(TaskSpec(name="yn", source="file", path=str(path), answer_type="yesno",
                                  split="test")).questions
    assert df["gold"].to_list() == ["yes", "no"]
    assert (df["split"] == "test").all()


def test_generic_json_examples(tmp_path):
    path = tmp_path / "ex.json"
    path.write_text(json.dumps({"examples": [{"question": "Spell cat backwards.", "gold": " tac "}]}))
    df = tasks.load_task(TaskSpec(name="rev", source="file", path=str(path), answer_type="string")).questions
    assert df["gold"].to_list() == ["tac"]


def test_hub_source_local_dataset_folder(tmp_path):
    """datasets.load_dataset on a local folder (no download), with nested choices like the Hub's commonsense_qa."""
    folder = tmp_path / "csqa_like"
    folder.mkdir()
    pl.DataFrame({
        "id": ["x1", "x2"],
        "question": ["Where do fish live?", "What do cows drink?"],
        "choices": [{"label": ["A", "B"], "text": ["water", "trees"]},
                    {"label": ["A", "B"], "text": ["milk", "water"]}],
        "answerKey": ["A", "B"],
    }).write_parquet(folder / "train.parquet")
    spec = TaskSpec(name="csqa_local", source="hub", path=str(folder), answer_type="choice",
                    columns={"gold": "answerKey", "choices": "choices.text", "id": "id"})
    df = tasks.load_task(spec).questions
    assert df["choices"].to_list() == [["water", "trees"], ["milk", "water"]]
    assert df["gold"].to_list() == ["A", "B"]
    assert (df["split"] == "train").all()
    assert tasks.answer_prompts(TasksConfig(items=[spec]), df) == {
        "csqa_local": "Therefore, among A through B, the answer is"}


def test_run_combines_tasks_and_reads_env(benchmarks_dir, monkeypatch):
    monkeypatch.setenv(tasks.BENCHMARKS_ENV, str(benchmarks_dir))
    cfg = TasksConfig(items=[
        TaskSpec(name="coin_flip", split="test", limit=5),
        TaskSpec(name="mini", source="file", path=str(DATA / "mini.jsonl"), answer_type="number",
                 columns={"question": "text", "gold": "label"}),
    ])
    df = tasks.run(cfg)
    validate(df, "questions")
    assert df.group_by("task").len().sort("task").rows() == [("coin_flip", 5), ("mini", 3)]


def test_run_rejects_repeated_questions(benchmarks_dir):
    cfg = TasksConfig(benchmarks_dir=str(benchmarks_dir),
                      items=[TaskSpec(name="coin_flip", split="all"), TaskSpec(name="coin_flip", split="test")])
    with pytest.raises(ValueError, match=r"tasks.items\[1\]"):
        tasks.run(cfg)


# ---------------------------------------------------------------- metadata and exemplars
def test_task_info_and_answer_prompts():
    assert tasks.task_info("gsm8k").answer_prompt == "Therefore, the answer (arabic numerals) is"
    assert tasks.task_info("aqua").answer_prompt == "Therefore, among A through E, the answer is"
    assert tasks.task_info("commonsense_qa").answer_prompt == "Therefore, among A through E, the answer is"
    assert tasks.task_info("date_understanding").answer_prompt == "Therefore, among A through F, the answer is"
    assert tasks.task_info("tracking_shuffled_objects").answer_prompt == "Therefore, among A through C, the answer is"
    assert tasks.task_info("coin_flip").answer_prompt == "Therefore, the answer (Yes or No) is"
    assert tasks.task_info("last_letter_concatenation").answer_prompt == "Therefore, the answer is"
    assert answer_prompt_for("choice", 4) == "Therefore, among A through D, the answer is"
    cfg = TasksConfig(items=[TaskSpec(name="gsm8k", answer_prompt="The answer is"),
                             TaskSpec(name="f", source="file", path="x.jsonl", answer_type="yesno")])
    assert tasks.answer_prompts(cfg) == {"gsm8k": "The answer is", "f": "Therefore, the answer (Yes or No) is"}


@pytest.mark.parametrize("task, last_answer", [("gsm8k", "8"), ("aqua", "B"), ("strategy_qa", "no"),
                                              ("last_letter_concatenation", "ynny"), ("date_understanding", "D")])
def test_paper_exemplars(task, last_answer, benchmarks_dir):
    prompt = json.loads((benchmarks_dir / "few_shot_cot_prompts.json").read_text())[task]["prompt"]
    ex = tasks.paper_exemplars(task, benchmarks_dir)
    assert len(ex) == sum(line.startswith("Q: ") for line in prompt.splitlines()) >= 4
    assert ex[-1].answer == last_answer
    for e in ex:
        assert e.question and not e.question.startswith("Q:") and "\nA:" not in e.question
        assert e.rationale and "The answer is" not in e.rationale


def test_paper_exemplars_missing_task(benchmarks_dir):
    with pytest.raises(ValueError, match="tracking_shuffled_objects.*it has: addsub"):
        tasks.paper_exemplars("tracking_shuffled_objects", benchmarks_dir)


# ---------------------------------------------------------------- errors name file, row and field
def _file_spec(path: Path, answer_type: str = "number", **columns: str) -> TaskSpec:
    return TaskSpec(name="bad", source="file", path=str(path), answer_type=answer_type, columns=columns)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_error_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        tasks.load_task(_file_spec(tmp_path / "nope.jsonl"))


def test_error_missing_paper_file(tmp_path, benchmarks_dir):
    with pytest.raises(FileNotFoundError, match="coin_flip.json"):
        tasks.load_task(TaskSpec(name="coin_flip", path=str(tmp_path)), benchmarks_dir=benchmarks_dir)


def test_error_bad_jsonl_names_line(tmp_path):
    path = _write(tmp_path, "q.jsonl", '{"question": "a?", "gold": "1"}\n{"question": "b?", "gold": \n')
    with pytest.raises(InputError, match=r"q\.jsonl: line 2: invalid JSON"):
        tasks.load_task(_file_spec(path))


def test_error_bad_json_names_line(tmp_path, benchmarks_dir):
    folder = tmp_path / "coin_flip"
    folder.mkdir()
    _write(folder, "coin_flip.json", '{"examples": [\n{"question": "x", "answer": "yes"},\n{oops}\n]}')
    with pytest.raises(InputError, match=r"coin_flip\.json: line 3, column 2: invalid JSON"):
        tasks.load_task(TaskSpec(name="coin_flip", path=str(folder)), benchmarks_dir=benchmarks_dir)


def test_error_missing_mapped_column(tmp_path):
    path = _write(tmp_path, "q.jsonl", '{"q": "a?", "gold": "1"}\n')
    with pytest.raises(InputError, match=r"q\.jsonl: column 'question_text' \(mapped to field 'question'\) not "
                                         r"found; columns: q, gold"):
        tasks.load_task(_file_spec(path, question="question_text"))


def test_error_unknown_mapping_field(tmp_path):
    path = _write(tmp_path, "q.jsonl", '{"question": "a?", "gold": "1"}\n')
    with pytest.raises(ValueError, match="unknown field.*'rationale'"):  # refused when the recipe is made
        tasks.load_task(_file_spec(path, rationale="r"))


def test_error_empty_question(tmp_path):
    path = _write(tmp_path, "q.jsonl", '{"question": "a?", "gold": "1"}\n{"question": "  ", "gold": "2"}\n')
    with pytest.raises(InputError, match=r"q\.jsonl line 2: field 'question': question is empty"):
        tasks.load_task(_file_spec(path))


def test_error_non_numeric_gold(tmp_path):
    path = _write(tmp_path, "q.csv", "question,answer\na?,1\nb?,two\n")
    with pytest.raises(InputError, match=r"q\.csv line 3: field 'answer': gold 'two' is not a number"):
        tasks.load_task(_file_spec(path, gold="answer"))


def test_error_paper_gold_not_a_number(tmp_path, benchmarks_dir):
    folder = tmp_path / "svamp"
    folder.mkdir()
    _write(folder, "SVAMP.json", json.dumps([{"Body": "A has 2.", "Question": "How many?", "Answer": 2.0},
                                             {"Body": "B has 3.", "Question": "How many?", "Answer": "three"}]))
    with pytest.raises(InputError, match=r"SVAMP\.json row 1: field 'Answer': gold 'three' is not a number"):
        tasks.load_task(TaskSpec(name="svamp", path=str(folder), split="all"), benchmarks_dir=benchmarks_dir)


def test_error_choice_gold_not_a_letter(tmp_path):
    path = _write(tmp_path, "q.jsonl", '{"question": "a?", "gold": "C", "choices": ["x", "y"]}\n')
    with pytest.raises(InputError, match=r"q\.jsonl line 1: field 'gold': gold 'C' is not one of the choice letters "
                                         r"A, B"):
        tasks.load_task(_file_spec(path, "choice", choices="choices"))


def test_error_duplicate_ids(tmp_path):
    path = _write(tmp_path, "q.jsonl", '{"k": "1", "question": "a?", "gold": "1"}\n'
                                       '{"k": "2", "question": "b?", "gold": "2"}\n'
                                       '{"k": "1", "question": "c?", "gold": "3"}\n')
    with pytest.raises(InputError, match=r"q\.jsonl line 3: field 'id' \(column 'k'\): duplicate id '1', first seen "
                                         r"at .*q\.jsonl line 1"):
        tasks.load_task(_file_spec(path, id="k"))


def test_error_unknown_task(benchmarks_dir):
    with pytest.raises(ValueError, match="unknown paper task 'multi_arith'; valid: addsub, aqua, coin_flip"):
        _load("multi_arith", benchmarks_dir)


def test_error_non_utf8(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_bytes(b'{"question": "a?", "gold": "1"}\n{"question": "caf\xe9?", "gold": "2"}\n')
    with pytest.raises(InputError, match=r"q\.jsonl: line 2: not UTF-8 \(byte 0xe9"):
        tasks.load_task(_file_spec(path))


def test_error_no_benchmarks_dir(monkeypatch):
    monkeypatch.delenv(tasks.BENCHMARKS_ENV, raising=False)
    with pytest.raises(InputError, match="tasks.benchmarks_dir.*RATIONALE_BENCHMARKS_DIR"):
        tasks.run(TasksConfig(items=[TaskSpec(name="coin_flip")]))


def test_error_answer_type_required_for_files(tmp_path):
    with pytest.raises(ValueError, match="answer_type is required"):
        tasks.load_task(TaskSpec(name="x", source="file", path=str(tmp_path / "q.jsonl")))


def test_error_bad_split_name(benchmarks_dir):
    with pytest.raises(ValueError, match="split 'dev' is not train, test or all"):
        _load("coin_flip", benchmarks_dir, split="dev")


# ---------------------------------------------------------------- CLI
def test_cli_tasks_load(tmp_path, benchmarks_dir, capsys):
    recipe = _write(tmp_path, "r.yaml", f"""
name: cli-test
tasks:
  benchmarks_dir: {benchmarks_dir}
  items:
    - {{name: multiarith, split: test}}
    - {{name: mini, source: file, path: {DATA / 'mini.jsonl'}, answer_type: number,
       columns: {{question: text, gold: label}}}}
teacher: {{model: unused}}
""")
    out = tmp_path / "q.parquet"
    assert main(["tasks", "load", str(recipe), "--output", str(out)]) == 0
    df = read_table(out, "questions")
    assert df.group_by("task").len().sort("task").rows() == [("mini", 3), ("multiarith", 175)]
    out = capsys.readouterr().out  # the result (counts and path) is stdout
    assert "multiarith" in out and "175" in out and "178 questions" in out


def test_cli_tasks_load_unknown_task(tmp_path, benchmarks_dir, capsys):
    recipe = _write(tmp_path, "r.yaml", f"name: x\ntasks: {{benchmarks_dir: {benchmarks_dir}, items: [{{name: "
                                        "gsm9k}]}\nteacher: {model: m}\n")
    assert main(["tasks", "load", str(recipe), "--output", str(tmp_path / "q.parquet")]) == 2
    assert "unknown paper task 'gsm9k'" in capsys.readouterr().err


def test_cli_tasks_list(benchmarks_dir, capsys):
    assert main(["tasks", "list", "--benchmarks-dir", str(benchmarks_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "answer_type", "choices", "answer_prompt", "items", "duplicates", "train",
                                "test"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == [t.name for t in tasks.PAPER_TASKS]
    for task, count in README_COUNTS.items():
        assert rows[task][-4:-2] == [str(count), str(README_DUPLICATES.get(task, 0))]
    assert rows["multiarith"][-2:] == ["405", "175"]


def test_error_names_the_answer_column_when_gold_is_unmapped(tmp_path):
    path = _write(tmp_path, "q.jsonl", '{"question": "a?", "answer": "n/a"}\n')
    with pytest.raises(InputError, match=r"q\.jsonl line 1: field 'answer': gold 'n/a' is not a number"):
        tasks.load_task(_file_spec(path))


def test_load_eval_set(tmp_path):
    path = _write(tmp_path, "heldout.jsonl", '{"question": " Is ice cold? "}\n{"question": "What is 2+2?", "x": 1}\n')
    df = tasks.load_eval_set(path)
    assert df.columns == ["qid", "task", "split", "question"]
    assert df["task"].to_list() == ["heldout", "heldout"] and df["question"][0] == "Is ice cold?"
    assert df["qid"][1] == tasks.make_qid("heldout", "What is 2+2?")
    bad = _write(tmp_path, "bad.csv", "prompt\nx\n")
    with pytest.raises(InputError, match=r"bad\.csv: eval set needs a 'question' column; columns: prompt"):
        tasks.load_eval_set(bad)


def test_paper_split_items_score_every_listed_item(benchmarks_dir):
    """The paper scores 180 MultiArith test items; builds keep 175 (repeats of train questions go to train)."""
    split_file = json.loads((benchmarks_dir / "splits" / "multiarith__default.json").read_text())
    questions, items = tasks.paper_split_items("multiarith", "test", benchmarks_dir)
    assert items["items"].sum() == len(split_file["test"]) == 180
    assert questions.height == items.height == 177 and (items["items"] > 1).sum() == 3
    assert set(questions["qid"]) == set(items["qid"]) and (questions["split"] == "test").all()
    build_test = _load("multiarith", benchmarks_dir, split="test").questions
    assert set(build_test["qid"]) < set(questions["qid"])
