"""Student evaluation: questions (schemas/questions.table.json) + a model -> graded predictions and a report.

Modes: `student` (a Fine-tune-CoT model: its training prompt, the answer after "-->"), and the untrained baselines
`zero_shot` ("Q: ..\\nA: The answer (arabic numerals) is") and `zero_shot_cot` (the teacher's two-stage prompt).
Decodings: greedy, and self-consistency sc@k (k samples at a temperature, majority vote over extracted answers).
Generation runs on vLLM (`builder.sample.load_engine`) or transformers.generate (seq2seq students, or machines
without vLLM); grading is `builder.grade.grade_frame`, the graders that filtered the training data.

Output: predictions.parquet (one row per question, decoding and sample), report.json and report.md (accuracy per
task beside the paper's Fine-tune-CoT number for the same student size when known).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import BuilderError
from builder.train_recipe import EvalSpec, TrainRecipe

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


# ------------------------------------------------------------------ generation backends
@dataclass
class Generation:
    text: str
    finish_reason: str
    tokens: int


class Generator:
    """One interface over vLLM and transformers: token-id prompts in, n generations per prompt out."""

    tokenizer: Any

    def generate(self, prompts: Sequence[list[int]], *, n: int, temperature: float, max_tokens: int, seed: int,
                 stop: Sequence[str] = ()) -> list[list[Generation]]:
        raise NotImplementedError

    def close(self) -> None:
        """Free the engine (called only on engines `evaluate` started itself)."""


class VLLMGenerator(Generator):
    def __init__(self, engine: Any):
        self.engine = engine
        self.tokenizer = engine.get_tokenizer()

    def close(self) -> None:
        """Stop vLLM's engine-core process now: left to the garbage collector it can outlive the run and keep
        the interpreter from exiting, and a second engine (a baseline) would start beside it."""
        core = getattr(getattr(self.engine, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self.engine = None

    def generate(self, prompts: Sequence[list[int]], *, n: int, temperature: float, max_tokens: int, seed: int,
                 stop: Sequence[str] = ()) -> list[list[Generation]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens, seed=seed,
                                stop=list(stop) or None)
        outs = self.engine.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        return [[Generation(c.text, c.finish_reason or "stop", len(c.token_ids))
                 for c in sorted(o.outputs, key=lambda c: c.index)] for o in outs]


class HFGenerator(Generator):
    """transformers.generate in batches (left padding); CUDA + bf16 when there is a GPU."""

    def __init__(self, model_ref: str, *, seq2seq: bool = False, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(model_ref)
        cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
        self.model = cls.from_pretrained(model_ref, dtype=dtype).to(self.device).eval()
        self.seq2seq = seq2seq
        self.batch_size = batch_size

    def close(self) -> None:
        import torch

        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, prompts: Sequence[list[int]], *, n: int, temperature: float, max_tokens: int, seed: int,
                 stop: Sequence[str] = ()) -> list[list[Generation]]:
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        torch.manual_seed(seed)
        results: list[list[Generation]] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [list(p) for p in prompts[start:start + self.batch_size]]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device)
            kw: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": pad, "num_return_sequences": n}
            kw.update({"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else
                      {"do_sample": False})
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, **kw)
            new = out if self.seq2seq else out[:, width:]
            for i in range(len(chunk)):
                gens = []
                for row in new[i * n:(i + 1) * n].tolist():
                    ended = tok.eos_token_id in row
                    row = row[:row.index(tok.eos_token_id)] if ended else row
                    row = [t for t in row if t != pad]
                    text = tok.decode(row, skip_special_tokens=True)
                    text, stopped = _cut_at_stop(text, stop)
                    gens.append(Generation(text, "stop" if ended or stopped else "length", len(row)))
                results.append(gens)
        return results


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def load_generator(model: str, *, backend: str = "vllm", engine_args: dict[str, Any] | None = None,
                   seq2seq: bool = False) -> Generator:
    """Start the engine for `model` (a folder, Hub id or alias)."""
    from builder.models import resolve_model

    if backend == "hf" or seq2seq:
        return HFGenerator(resolve_model(model), seq2seq=seq2seq)
    from builder.recipe import TeacherConfig
    from builder.sample import load_engine

    return VLLMGenerator(load_engine(TeacherConfig(model=model, engine_args=dict(engine_args or {}))))


def as_generator(engine: Any) -> Generator:
    """Accept a Generator or a bare vllm.LLM (the tests' shared engine)."""
    return engine if isinstance(engine, Generator) else VLLMGenerator(engine)


# ------------------------------------------------------------------ prompts
def _answer_prompts(questions: pl.DataFrame) -> dict[str, str]:
    """Each task's Zero-shot-CoT answer trigger, as the teacher used it."""
    from builder.tasks import answer_prompt_for, task_info

    prompts = {}
    for task, answer_type, n_choices in questions.select(
            "task", "answer_type", pl.col("choices").list.len().fill_null(0)).unique("task").rows():
        try:
            prompts[task] = task_info(task).answer_prompt
        except (KeyError, ValueError, BuilderError):
            prompts[task] = answer_prompt_for(answer_type, n_choices)
    return prompts


def _direct_prompt(answer_prompt: str) -> str:
    """Kojima et al.'s zero-shot trigger: 'Therefore, the answer (..) is' -> 'The answer (..) is'."""
    return re.sub(r"^\s*Therefore,\s*the answer", "The answer", answer_prompt.strip())


def _render(tokenizer: Any, text_or_messages: str | list[dict[str, str]]) -> tuple[str, bool]:
    """Prompt text and whether the tokenizer should add its special tokens (raw text yes, a chat render no)."""
    if isinstance(text_or_messages, str):
        return text_or_messages, True
    return tokenizer.apply_chat_template(text_or_messages, tokenize=False, add_generation_prompt=True), False


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


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


def generate_answers(gen: Generator, questions: pl.DataFrame, spec: EvalSpec, *, mode: str,
                     fmt: str) -> pl.DataFrame:
    """One row per (qid, decoding, sample_idx) with rationale and answer_completion, ready for the graders."""
    if mode not in MODES:
        raise ValueError(f"eval mode {mode!r}: use one of {', '.join(MODES)}")
    from builder.recipe import PromptConfig
    from builder.sample import answer_stage_prompt, build_prompt

    tok = gen.tokenizer
    qs = questions.select("qid", "task", "question").rows()
    chat = fmt == "chat"
    if mode == "student":
        from builder.train import prompt_ids

        stage1 = [prompt_ids(tok, q, "chat" if chat else "ft_cot") for _, _, q in qs]
        texts, specials = None, None
    else:
        answer_prompts = _answer_prompts(questions)
        if mode == "zero_shot_cot":
            cfg = PromptConfig(style="zero_shot_cot", format="chat" if chat else "raw")
            rendered = [_render(tok, build_prompt(q, cfg)) for _, _, q in qs]
        else:
            rendered = [(_render(tok, [{"role": "user", "content": q}])[0] if chat else f"Q: {q}\nA: ", not chat)
                        for _, _, q in qs]
            rendered = [(text + _direct_prompt(answer_prompts[t]), sp) for (text, sp), (_, t, _) in
                        zip(rendered, qs, strict=True)]
        texts = [r[0] for r in rendered]
        specials = [r[1] for r in rendered]
        stage1 = [_ids(tok, text, sp) for text, sp in rendered]

    frames = []
    for decoding, k, temperature in _decodings(spec):
        if mode == "zero_shot":
            outs = gen.generate(stage1, n=k, temperature=temperature, max_tokens=spec.answer_max_tokens,
                                seed=spec.seed, stop=["\n\n", "\nQ:"])
            rationale = [[None] * k for _ in outs]
            answer = [[g.text for g in o] for o in outs]
            finish = [[g.finish_reason for g in o] for o in outs]
            tokens = [[g.tokens for g in o] for o in outs]
        else:
            stop = [] if mode == "student" else ["\nQ:", "\n\nQ"]
            outs = gen.generate(stage1, n=k, temperature=temperature, max_tokens=spec.max_tokens, seed=spec.seed,
                                stop=stop)
            rationale = [[g.text for g in o] for o in outs]
            finish = [[g.finish_reason for g in o] for o in outs]
            tokens = [[g.tokens for g in o] for o in outs]
            answer = [[None] * k for _ in outs]
            if mode == "zero_shot_cot":  # stage 2: greedy answer after each rationale
                flat = [(i, j) for i in range(len(outs)) for j in range(k)]
                stage2 = [_ids(tok, answer_stage_prompt(texts[i], rationale[i][j], answer_prompts[qs[i][1]]),
                               specials[i]) for i, j in flat]
                ans = gen.generate(stage2, n=1, temperature=0.0, max_tokens=spec.answer_max_tokens, seed=spec.seed,
                                   stop=["\n"])
                for (i, j), a in zip(flat, ans, strict=True):
                    answer[i][j] = a[0].text
                    tokens[i][j] += a[0].tokens
        frames.append(pl.DataFrame({
            "qid": [q[0] for q in qs], "decoding": decoding, "rationale": rationale, "answer_completion": answer,
            "finish_reason": finish, "completion_tokens": tokens,
        }, schema_overrides={"rationale": pl.List(pl.String), "answer_completion": pl.List(pl.String)})
            .with_columns(pl.int_ranges(0, pl.col("rationale").list.len(), dtype=pl.Int32).alias("sample_idx"))
            .explode(["rationale", "answer_completion", "finish_reason", "completion_tokens", "sample_idx"]))
    out = pl.concat(frames)
    return out.join(questions.select("qid", "task", "question", "gold", "answer_type", "choices"), on="qid",
                    how="left", maintain_order="left")


def grade(generated: pl.DataFrame, mode: str) -> pl.DataFrame:
    """Add pred, correct, grade_status, grader with the curation graders ("student" takes the text after "-->")."""
    from builder.grade import grade_frame

    graded = grade_frame(generated, mode="student" if mode == "student" else "answer_completion")
    added = [c for c in ("pred", "correct", "grade_status", "grader") if c in graded.columns]
    if graded.height != generated.height:
        raise BuilderError(f"grader returned {graded.height} rows for {generated.height}")
    if all(c in graded.columns for c in generated.columns):
        return graded
    return generated.hstack(graded.select(added))


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
        engine: a running vllm.LLM or Generator to reuse (tests share one).
        out_dir: where predictions.parquet, report.json and report.md go.
        name: how the report names the model.
        items: (qid, items) split items per question (see `tasks.paper_split_items`); one each by default.
    """
    from builder.schemas import validate

    spec = spec or EvalSpec()
    questions = validate(questions, "questions", where="eval questions")
    gen = as_generator(engine) if engine is not None else load_generator(
        model, backend=spec.backend, engine_args=spec.engine_args, seq2seq=fmt == "seq2seq")
    t0 = time.perf_counter()
    try:
        generated = generate_answers(gen, questions, spec, mode=mode, fmt=fmt)
    finally:
        if engine is None:
            gen.close()
    seconds = time.perf_counter() - t0
    graded = grade(generated, mode)
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
            from builder.train import read_dataset

            tasks = sorted(set(read_dataset(recipe.dataset, recipe).rows["task"].to_list()))
        questions, items = load_split_items(tasks, spec.split, benchmarks_dir=spec.benchmarks_dir and str(
            recipe.resolve_path(spec.benchmarks_dir)), limit=spec.limit, base_dir=recipe.base_dir)
    else:
        items = None
    if spec.compare_to is None:
        spec = spec.model_copy(update={"compare_to": paper_student(recipe.student.model)})
    out = recipe.out / "eval"
    runs = [evaluate(str(recipe.out), questions, spec, mode="student", fmt=recipe.format, engine=engine,
                     name=recipe.name, items=items)]
    write_report(runs[0].report, runs[0].predictions, out / "student")
    for mode in spec.baselines:
        from builder.train import resolve_student

        run = evaluate(resolve_student(recipe.student.model, recipe), questions, spec, mode=mode,
                       fmt=spec.baseline_format if recipe.format != "seq2seq" else "raw",
                       name=recipe.student.model, items=items)
        write_report(run.report, run.predictions, out / mode)
        runs.append(run)
    report = merge_reports([r.report for r in runs])
    write_report(report, None, out)
    return report

