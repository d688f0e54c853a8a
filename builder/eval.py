"""Student evaluation: questions (schemas/questions.table.json) + a model -> graded predictions and a report.

Modes: `student` (a Fine-tune-CoT model: its training prompt, the answer after "-->"), and the untrained baselines
`zero_shot` ("Q: ..\\nA: The answer (arabic numerals) is") and `zero_shot_cot` (the teacher's two-stage prompt).
Decodings: greedy, and self-consistency sc@k (k samples at a temperature, majority vote over extracted answers).
A student is evaluated as a teacher (`builder.teachers`) with greedy or self-consistency sampling: the vllm backend,
or hf (transformers.generate: seq2seq students, machines without vLLM); grading is `builder.grade.grade_frame`, the
graders that filtered the training data.

Output: predictions.parquet (one row per question, decoding and sample), report.json and report.md (accuracy per
task beside the paper's Fine-tune-CoT number for the same student size when known).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from builder.errors import BuilderError
from builder.train_recipe import EvalSpec, TrainRecipe

if TYPE_CHECKING:
    from builder.recipe import TeacherConfig
    from builder.teachers import TeacherSetup

log = logging.getLogger(__name__)

MODES = ("student", "zero_shot", "zero_shot_cot")
PREDICTIONS = "predictions.parquet"

# Fine-tune-CoT accuracies (%) from Ho et al. 2022 that we are sure of, keyed by (task, student). Add a row only
# with its source table; a missing row prints as "-", never as a guess.
PAPER_FINE_TUNE_COT: dict[tuple[str, str], float] = {
    ("multiarith", "gpt2-124m"): 8.33,  # Table (GPT-2 students, Fine-tune-CoT, D=1): GPT-2 Small on MultiArith
}
PAPER_STUDENTS = {"gpt2-124m": "GPT-2 124M", "gpt2-355m": "GPT-2 355M", "gpt2-774m": "GPT-2 774M",
                  "gpt2-1.5b": "GPT-2 1.5B", "flan-t5-small": "Flan-T5 60M", "flan-t5-base": "Flan-T5 250M",
                  "flan-t5-large": "Flan-T5 780M"}
_STUDENT_PATTERNS = [(r"gpt2-xl", "gpt2-1.5b"), (r"gpt2-large", "gpt2-774m"), (r"gpt2-medium", "gpt2-355m"),
                     (r"(^|/)gpt2/?$", "gpt2-124m"), (r"flan-t5-small", "flan-t5-small"),
                     (r"flan-t5-base", "flan-t5-base"), (r"flan-t5-large", "flan-t5-large")]


def paper_student(model: str) -> str | None:
    """The paper's student row for a model name (openai-community/gpt2 -> gpt2-124m), or None."""
    for pattern, key in _STUDENT_PATTERNS:
        if re.search(pattern, model.lower()):
            return key
    return None


def paper_accuracy(task: str, student: str | None) -> float | None:
    return PAPER_FINE_TUNE_COT.get((task, student)) if student else None


# ------------------------------------------------------------------ students as teachers
def _answer_prompts(questions: pl.DataFrame) -> dict[str, str]:
    """Each task's Zero-shot-CoT answer trigger, as the teacher used it."""
    from builder.prompts import answer_prompt_for
    from builder.tasks import task_info

    prompts = {}
    for task, answer_type, n_choices in questions.select(
            "task", "answer_type", pl.col("choices").list.len().fill_null(0)).unique("task").rows():
        try:
            prompts[task] = task_info(task).answer_prompt
        except (KeyError, ValueError, BuilderError):
            prompts[task] = answer_prompt_for(answer_type, n_choices)
    return prompts


def stage1_prompts(render: Callable[[str | list[dict[str, str]]], str], questions: pl.DataFrame, *, mode: str,
                   fmt: str, answer_prompts: dict[str, str]) -> list[str]:
    """The text each question is asked with: the student's training prompt, the teacher's Zero-shot-CoT prompt, or
    Kojima et al.'s direct zero-shot prompt ("Q: ..\\nA: The answer (arabic numerals) is"); `render` is the
    teacher's (chat messages through the model's template)."""
    from builder.prompts import direct_answer_prompt, student_prompt, teacher_prompt

    chat = fmt in ("chat", "r1")  # r1 students answer in the assistant turn of their chat template
    rows = questions.select("task", "question").rows()
    if mode == "student":
        return [render([{"role": "user", "content": q}]) if chat else student_prompt(q) for _, q in rows]
    if mode == "zero_shot_cot":
        return [render(teacher_prompt(q, style="zero_shot_cot", fmt="chat" if chat else "raw")) for _, q in rows]
    direct = {t: direct_answer_prompt(p) for t, p in answer_prompts.items()}
    if chat:  # the trigger opens the assistant turn
        return [render([{"role": "user", "content": q}]) + direct[t] for t, q in rows]
    return [render(teacher_prompt(q, style="zero_shot_cot", fmt="raw", trigger=direct[t])) for t, q in rows]


def eval_backend(spec: EvalSpec, fmt: str) -> str:
    """The backend a student of format `fmt` is evaluated on: transformers for seq2seq students (vLLM runs
    decoder-only ones) or where the eval section asks for it, else vLLM."""
    return "hf" if spec.backend == "hf" or fmt == "seq2seq" else "vllm"


def student_teacher(model: str, spec: EvalSpec, *, backend: str) -> TeacherConfig:
    """The student as a teacher section: its model on the eval's backend and engine arguments."""
    from builder.recipe import TeacherConfig

    return TeacherConfig(backend=backend, model=model, engine_args=dict(spec.engine_args))


def student_setup(model: str, spec: EvalSpec, *, backend: str, fmt: str, n: int, temperature: float,
                  max_tokens: int, stop: list[str]) -> TeacherSetup:
    """A student as a teacher: the teacher, prompt and sampling sections it is made from (no recipe)."""
    from builder.recipe import PromptConfig, SamplingConfig
    from builder.teachers import TeacherSetup

    return TeacherSetup(
        student_teacher(model, spec, backend=backend),
        PromptConfig(format="chat" if fmt in ("chat", "r1") else "raw"),
        SamplingConfig(n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=spec.seed))


# ------------------------------------------------------------------ evaluation
@dataclass
class EvalRun:
    predictions: pl.DataFrame
    report: dict[str, Any]


def _decodings(spec: EvalSpec) -> list[tuple[str, int, float]]:
    out = [("greedy", 1, 0.0)] if spec.greedy else []
    out += [(f"sc@{k}", k, spec.temperature) for k in spec.self_consistency]
    if not out:
        raise ValueError("eval: nothing to do; set greedy: true or self_consistency: [k, ...]")
    return out


def generate_answers(model: str, engine: Any, questions: pl.DataFrame, spec: EvalSpec, *, mode: str, fmt: str,
                     backend: str = "vllm") -> pl.DataFrame:
    """One row per (qid, decoding, sample_idx) with rationale and answer_completion, ready for the graders.

    Each decoding is one shard through the `backend` teacher on `engine`: every question asked for k samples with
    the spec's seed; zero_shot_cot adds the teacher's greedy answer stage, zero_shot reads the answer directly.
    """
    from builder.teachers import Request, ShardWork, make_teacher

    if mode not in MODES:
        raise ValueError(f"eval mode {mode!r}: use one of {', '.join(MODES)}")
    answer_prompts = _answer_prompts(questions) if mode != "student" else {}
    direct = mode == "zero_shot"
    stop = [] if mode == "student" else ["\n\n", "\nQ:"] if direct else ["\nQ:", "\n\nQ"]
    order = questions.select("qid").with_row_index("q_order")
    prompts: list[str] | None = None
    frames = []
    for decoding, k, temperature in _decodings(spec):
        teacher = make_teacher(student_setup(
            model, spec, backend=backend, fmt=fmt, n=k, temperature=temperature,
            max_tokens=spec.answer_max_tokens if direct else spec.max_tokens, stop=stop), engine=engine)
        if prompts is None:
            prompts = stage1_prompts(teacher.render, questions, mode=mode, fmt=fmt, answer_prompts=answer_prompts)
        tasks = questions["task"].to_list()
        work = ShardWork([Request(qid, p, 0, k, spec.seed) for qid, p in zip(questions["qid"], prompts, strict=True)],
                         {qid: answer_prompts[t] for qid, t in zip(questions["qid"], tasks, strict=True)}
                         if mode == "zero_shot_cot" else {}, answer_truncated=True)
        _, completions, answers = next(iter(teacher.stream([work], spec.answer_max_tokens)))
        text = [c.text for c in completions]
        frames.append(pl.DataFrame({
            "qid": [c.qid for c in completions], "decoding": decoding,
            "rationale": [None] * len(text) if direct else text,
            "answer_completion": text if direct else [a[0] if a else None for a in answers],
            "finish_reason": [c.finish_reason for c in completions],
            "completion_tokens": [c.completion_tokens + ((a[1] or 0) if a else 0)
                                  for c, a in zip(completions, answers, strict=True)],
            "sample_idx": [c.sample_idx for c in completions],
        }, schema={"qid": pl.String, "decoding": pl.String, "rationale": pl.String, "answer_completion": pl.String,
                   "finish_reason": pl.String, "completion_tokens": pl.Int64, "sample_idx": pl.Int32})
            .join(order, on="qid").sort("q_order", "sample_idx").drop("q_order"))
    out = pl.concat(frames)
    return out.join(questions.select("qid", "task", "question", "gold", "answer_type", "choices"), on="qid",
                    how="left", maintain_order="left")


def grade(generated: pl.DataFrame, mode: str, fmt: str = "ft_cot") -> pl.DataFrame:
    """Add pred, correct, grade_status, grader with the curation graders: a Fine-tune-CoT student's answer follows
    its STUDENT_SEP; an R1-format student's text after its trace is graded like a teacher's rationale (anchors,
    `\\boxed{}`); a baseline's answer is its answer completion."""
    from builder.grade import grade_frame
    from builder.prompts import reasoning_answer_expr

    if mode == "student" and fmt == "r1":
        after = generated.with_columns(reasoning_answer_expr(pl.col("rationale")).alias("rationale"))
        return grade_frame(after, mode="rationale").with_columns(generated["rationale"])
    return grade_frame(generated, mode="student" if mode == "student" else "answer_completion")


def vote(graded: pl.DataFrame) -> pl.DataFrame:
    """Per (qid, decoding): the majority answer among extracted preds (ties: the one sampled first) and whether it
    is right. A question with no extracted answer counts as wrong."""
    votes = (graded.filter(pl.col("pred").is_not_null())
             .group_by("qid", "decoding", "pred")
             .agg(pl.len().alias("votes"), pl.col("sample_idx").min().alias("first"),
                  pl.col("correct").first())
             .sort(["qid", "decoding", "votes", "first"], descending=[False, False, True, False])
             .group_by("qid", "decoding", maintain_order=True).first()
             .select("qid", "decoding", pl.col("pred").alias("voted_pred"), "votes",
                     pl.col("correct").alias("voted_correct")))
    keys = graded.select("qid", "task", "decoding").unique(maintain_order=True)
    return (keys.join(votes, on=["qid", "decoding"], how="left")
            .with_columns(pl.col("voted_correct").fill_null(False), pl.col("votes").fill_null(0)))


def score(graded: pl.DataFrame, *, model: str, mode: str, compare_to: str | None,
          items: pl.DataFrame | None = None) -> list[dict[str, Any]]:
    """Accuracy per (task, decoding), as report rows with the paper's number beside them.

    `items` (qid, items) weighs each question by the split items it stands for, so a split with repeated
    questions is scored as the paper scored it (n counts items; n_distinct counts questions).
    """
    voted = vote(graded)
    weights = items.select("qid", pl.col("items").cast(pl.Int64)) if items is not None else None
    voted = (voted.join(weights, on="qid", how="left") if weights is not None else voted.with_columns(items=None)
             ).with_columns(pl.col("items").fill_null(1))
    per = (voted.group_by("task", "decoding", maintain_order=True)
           .agg(pl.col("items").sum().alias("n"), pl.len().alias("n_distinct"),
                (pl.col("items") * pl.col("voted_correct")).sum().alias("correct"),
                pl.col("voted_correct").sum().alias("correct_distinct"),
                (pl.col("votes") == 0).sum().alias("no_answer"))
           .sort("task", "decoding"))
    rows = []
    for r in per.iter_rows(named=True):  # one row per task and decoding: a handful
        paper = paper_accuracy(r["task"], compare_to) if mode == "student" else None
        rows.append({"model": model, "mode": mode, "task": r["task"], "decoding": r["decoding"], "n": r["n"],
                     "correct": r["correct"], "accuracy_pct": round(100.0 * r["correct"] / r["n"], 2),
                     "n_distinct": r["n_distinct"], "correct_distinct": r["correct_distinct"],
                     "no_answer": r["no_answer"], "paper_pct": paper,
                     "paper_student": PAPER_STUDENTS.get(compare_to) if compare_to else None})
    return rows


def evaluate(model: str, questions: pl.DataFrame, spec: EvalSpec | None = None, *, mode: str = "student",
             fmt: str = "ft_cot", engine: Any = None, out_dir: str | Path | None = None,
             name: str | None = None, items: pl.DataFrame | None = None) -> EvalRun:
    """Generate, grade and score `model` on `questions`; write predictions and report to `out_dir` if given.

    Args:
        model: folder, Hub id or alias (also what the report names unless `name` is given).
        questions: the questions table (task test split).
        spec: decodings, caps, seed, backend; defaults to EvalSpec().
        mode: student, zero_shot or zero_shot_cot.
        fmt: the student's training format (ft_cot, chat, seq2seq); for baselines, chat means the chat template.
        engine: a running engine to reuse (tests share one): a vllm.LLM, or a `builder.teachers.hf.HFModel`
            (then generation runs on transformers).
        out_dir: where predictions.parquet, report.json and report.md go.
        name: how the report names the model.
        items: (qid, items) split items per question (see `tasks.paper_split_items`); one each by default.
    """
    from builder.schemas import validate
    from builder.teachers.hf import HFModel, load_model
    from builder.teachers.vllm import load_engine, shutdown_engine

    spec = spec or EvalSpec()
    questions = validate(questions, "questions", where="eval questions")
    backend = "hf" if isinstance(engine, HFModel) else eval_backend(spec, fmt)
    own = engine is None
    if own:
        engine = (load_model(model, seq2seq=fmt == "seq2seq") if backend == "hf" else
                  load_engine(student_teacher(model, spec, backend=backend)))
    t0 = time.perf_counter()
    try:
        generated = generate_answers(model, engine, questions, spec, mode=mode, fmt=fmt, backend=backend)
    finally:
        if own and backend == "hf":
            engine.close()
        elif own:  # left to the garbage collector, vLLM's engine core can outlive the run and block the exit
            shutdown_engine(engine)
    seconds = time.perf_counter() - t0
    graded = grade(generated, mode, fmt)
    compare_to = spec.compare_to or paper_student(model)
    voted = vote(graded)
    predictions = graded.join(voted.drop("task"), on=["qid", "decoding"], how="left", maintain_order="left")
    tokens = int(generated["completion_tokens"].sum())
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "results": score(graded, model=name or model, mode=mode, compare_to=compare_to, items=items),
        "settings": {"format": fmt, **spec.model_dump(exclude={"enabled", "baselines", "engine_args"})},
        "generation": {"seconds": round(seconds, 2), "completion_tokens": tokens,
                       "tokens_per_s": round(tokens / seconds, 1) if seconds else None},
    }
    if out_dir is not None:
        write_report(report, predictions, out_dir)
    return EvalRun(predictions, report)


def merge_reports(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from several runs (student + baselines): results concatenated, settings per mode."""
    merged = dict(reports[0])
    merged["results"] = [r for rep in reports for r in rep["results"]]
    merged["runs"] = [{"mode": rep["results"][0]["mode"] if rep["results"] else None,
                       "settings": rep["settings"], "generation": rep["generation"]} for rep in reports]
    return merged


def write_report(report: dict[str, Any], predictions: pl.DataFrame | None, out_dir: str | Path) -> Path:
    from builder.schemas import atomic_write_parquet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if predictions is not None:
        atomic_write_parquet(predictions, out / PREDICTIONS)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    return out


def report_markdown(report: dict[str, Any], *, heading: bool = True) -> str:
    lines = ["# Evaluation", ""] if heading else []
    lines += ["| model | mode | task | decoding | n | accuracy | paper Fine-tune-CoT |",
              "|---|---|---|---|---:|---:|---|"]
    for r in report["results"]:
        paper = f"{r['paper_pct']:.2f}% ({r['paper_student']})" if r.get("paper_pct") is not None else "-"
        lines.append(f"| {r['model']} | {r['mode']} | {r['task']} | {r['decoding']} | {r['n']} | "
                     f"{r['accuracy_pct']:.2f}% | {paper} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ recipes and task files
def load_questions(tasks: Sequence[str], split: str = "test", *, benchmarks_dir: str | None = None,
                   limit: int | None = None, base_dir: str | Path | None = None) -> pl.DataFrame:
    """Paper tasks' questions of one split, every listed item's question once (see `load_split_items`)."""
    return load_split_items(tasks, split, benchmarks_dir=benchmarks_dir, limit=limit, base_dir=base_dir)[0]


def load_split_items(tasks: Sequence[str], split: str = "test", *, benchmarks_dir: str | None = None,
                     limit: int | None = None, base_dir: str | Path | None = None
                     ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Questions and (qid, items) of the paper's split for each task, scored as the paper scored it."""
    from builder import tasks as task_mod

    base = Path(base_dir) if base_dir is not None else Path.cwd()
    parts = [task_mod.paper_split_items(t, split, benchmarks_dir, base) for t in tasks]
    questions = pl.concat([q.head(limit) if limit else q for q, _ in parts])
    items = pl.concat([i for _, i in parts]).join(questions.select("qid"), on="qid", how="semi")
    return questions, items


def evaluate_recipe(recipe: TrainRecipe, *, engine: Any = None, questions: pl.DataFrame | None = None
                    ) -> dict[str, Any]:
    """Evaluate a recipe's trained model (and its baselines on the untrained student); report under output_dir/eval.

    Args:
        recipe: the training recipe (its eval section says what to run).
        engine: a running engine for the trained model (tests); baselines always start their own.
        questions: use these instead of loading the recipe's tasks.
    """
    spec = recipe.eval
    if questions is None:
        tasks = spec.tasks
        if not tasks:
            from builder.student import read_dataset

            tasks = sorted(set(read_dataset(recipe.dataset, recipe).rows["task"].to_list()))
        questions, items = load_split_items(tasks, spec.split, benchmarks_dir=spec.benchmarks_dir and str(
            recipe.resolve_path(spec.benchmarks_dir)), limit=spec.limit, base_dir=recipe.base_dir)
    else:
        items = None
    if spec.compare_to is None:
        spec = spec.model_copy(update={"compare_to": paper_student(recipe.model.model_name_or_path)})
    out = recipe.out / "eval"
    runs = [evaluate(str(recipe.out), questions, spec, mode="student", fmt=recipe.format, engine=engine,
                     name=recipe.name, items=items)]
    write_report(runs[0].report, runs[0].predictions, out / "student")
    for mode in spec.baselines:
        from builder.student import resolve_student

        run = evaluate(resolve_student(recipe.model.model_name_or_path, recipe), questions, spec, mode=mode,
                       fmt=spec.baseline_format if recipe.format != "seq2seq" else "raw",
                       name=recipe.model.model_name_or_path, items=items)
        write_report(run.report, run.predictions, out / mode)
        runs.append(run)
    report = merge_reports([r.report for r in runs])
    write_report(report, None, out)
    return report

