"""Every prompt and text format the tool writes, defined once: teacher prompts (Zero-/Few-shot-CoT, raw text or chat
messages), the Zero-shot-CoT answer prompts (Kojima et al.), the choice display, and the student formats.

Sampling, evaluation, the store, training and grading all read these; none of them spells a format out itself, so
the prompt a student is trained on is by construction the one it is evaluated with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import polars as pl
from pydantic import BaseModel, ConfigDict

from builder.errors import BuilderError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Answer letters of choice tasks: "(A) x (B) y ..." in questions, "A" in gold answers and grades.
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

ZERO_SHOT_COT_TRIGGER = "Let's think step by step."


class Exemplar(BaseModel):
    """One worked Few-shot-CoT example: shown as "Q: {question}\\nA: {rationale} The answer is {answer}."."""

    model_config = ConfigDict(extra="forbid")

    question: str
    rationale: str
    answer: str


# ------------------------------------------------------------------ teacher prompts
def exemplar_block(exemplars: Sequence[Exemplar]) -> str:
    return "".join(f"Q: {ex.question}\nA: {ex.rationale.strip()} The answer is {ex.answer}.\n\n" for ex in exemplars)


def teacher_prompt(question: str, *, style: str, fmt: str, trigger: str = ZERO_SHOT_COT_TRIGGER,
                   exemplars: Sequence[Exemplar] = ()) -> str | list[dict[str, str]]:
    """The stage-1 prompt: Zero-shot-CoT "Q: ..\\nA: Let's think step by step." or Few-shot-CoT; text or messages."""
    trigger = trigger if style == "zero_shot_cot" else ""
    if fmt == "raw":
        head = exemplar_block(exemplars) if style == "few_shot_cot" else ""
        return f"{head}Q: {question}\nA:{' ' + trigger if trigger else ''}"
    messages: list[dict[str, str]] = []
    if style == "few_shot_cot":
        for ex in exemplars:
            messages += [{"role": "user", "content": ex.question},
                         {"role": "assistant", "content": f"{ex.rationale.strip()} The answer is {ex.answer}."}]
    messages.append({"role": "user", "content": f"{question}\n{trigger}".strip()})
    return messages


def answer_stage_prompt(prompt: str, rationale: str, answer_prompt: str) -> str:
    """Zero-shot-CoT stage 2: the stage-1 text, the rationale, then the task's answer trigger."""
    return f"{prompt}{rationale.rstrip()}\n{answer_prompt}"


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


def direct_answer_prompt(answer_prompt: str) -> str:
    """Kojima et al.'s zero-shot (no CoT) trigger: 'Therefore, the answer (..) is' -> 'The answer (..) is'."""
    return re.sub(r"^\s*Therefore,\s*the answer", "The answer", answer_prompt.strip())


def show_choices(question: str, choices: Sequence[str] | None) -> str:
    """A choice question as Zero-shot-CoT showed it: "<question> Answer Choices: (A) x (B) y ..."."""
    if not choices:
        return question
    shown = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question} Answer Choices: {shown}"


# ------------------------------------------------------------------ student formats
# Fine-tune-CoT (Ho et al. 2022): the student reads "{question} ###" and writes " {rationale} --> {answer}" + EOS.
StudentFormat = Literal["ft_cot", "chat", "seq2seq", "r1"]
STUDENT_FORMATS: tuple[str, ...] = get_args(StudentFormat)
STUDENT_SEP = "-->"  # between a student's rationale and its answer; the grader reads the answer after the last one
STUDENT_PROMPT = "{question} ###"
STUDENT_COMPLETION = " {rationale} " + STUDENT_SEP + " {answer}"
# The rows' `messages` column (chat SFT without our separator): the rationale, then the generic answer sentence.
STUDENT_MESSAGE = "{rationale}\n" + answer_prompt_for("string") + " {answer}."
# R1-distill (DeepSeek-AI 2025): a reasoning teacher's trace in the assistant turn, then the text it wrote after
# the trace. Rows with a trace hold this as their completion and assistant message; rows without keep the above.
REASONING_COMPLETION = "<think>\n{reasoning}\n</think>\n\n{rationale}"
THINK_OPEN = "<think>\n"
THINK_CLOSE = "</think>"
# How each format lays the pair out; the training recipe's and the model card's descriptions.
STUDENT_FORMAT_DOCS: dict[str, str] = {
    "ft_cot": f"prompt `{STUDENT_PROMPT}`, completion `{STUDENT_COMPLETION}` + EOS; loss on the completion",
    "chat": f"user turn `{{question}}`, assistant turn `{STUDENT_COMPLETION.strip()}` via the chat template; loss on "
            "the assistant turn",
    "seq2seq": f"encoder input `{STUDENT_PROMPT}`, decoder target `{STUDENT_COMPLETION.strip()}`",
    "r1": "user turn `{question}` via the chat template up to the assistant turn, then the row's completion "
          f"(R1-distill `{REASONING_COMPLETION.encode('unicode_escape').decode()}` for rows with a trace) + EOS; loss "
          "on the completion",
}


def _fields(template: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", template)


def _format_expr(template: str, **columns: pl.Expr) -> pl.Expr:
    """`template` over columns: "{a} x {b}" -> pl.format("{} x {}", a, b), so rows and strings share one template."""
    return pl.format(re.sub(r"\{\w+\}", "{}", template), *(columns[name] for name in _fields(template)))


def student_prompt(question: str) -> str:
    return STUDENT_PROMPT.format(question=question)


def student_completion(rationale: str, answer: str) -> str:
    return STUDENT_COMPLETION.format(rationale=rationale, answer=answer)


def student_prompt_expr(question: pl.Expr) -> pl.Expr:
    return _format_expr(STUDENT_PROMPT, question=question)


def student_completion_expr(rationale: pl.Expr, answer: pl.Expr) -> pl.Expr:
    return _format_expr(STUDENT_COMPLETION, rationale=rationale, answer=answer)


def reasoning_completion(reasoning: str, rationale: str) -> str:
    return REASONING_COMPLETION.format(reasoning=reasoning, rationale=rationale)


def reasoning_completion_expr(reasoning: pl.Expr, rationale: pl.Expr) -> pl.Expr:
    """The R1-distill text of a row with a trace (null where `reasoning` is null)."""
    return _format_expr(REASONING_COMPLETION, reasoning=reasoning, rationale=rationale)


def reasoning_answer_expr(output: pl.Expr) -> pl.Expr:
    """What an R1-format student wrote after its trace (what is graded; never the trace itself): the text after the
    last `</think>`, empty when the trace never closed."""
    parts = output.str.split(THINK_CLOSE)
    return pl.when(parts.list.len() > 1).then(parts.list.last()).otherwise(pl.lit(""))


def student_messages_expr(question: pl.Expr, rationale: pl.Expr, answer: pl.Expr,
                          reasoning: pl.Expr | None = None) -> pl.Expr:
    """The rows' `messages` column: [{user: question}, {assistant: rationale + answer sentence}]; for a row with a
    trace (`reasoning` not null) the assistant turn is the R1-distill text instead."""
    content = _format_expr(STUDENT_MESSAGE, rationale=rationale, answer=answer)
    if reasoning is not None:
        content = pl.when(reasoning.is_null()).then(content).otherwise(reasoning_completion_expr(reasoning, rationale))
    return pl.concat_list(
        pl.struct(pl.lit("user").alias("role"), question.alias("content")),
        pl.struct(pl.lit("assistant").alias("role"), content.alias("content")),
    )


def student_target(completion: str) -> str:
    """The seq2seq decoder target and the chat assistant turn: the completion without its leading space."""
    return completion.strip()


def student_conversation_exprs(question: pl.Expr, completion: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """TRL's conversational prompt-completion pair (a version's `conversational` config): prompt [{user: question}],
    completion [{assistant: `student_target(completion)`}], so the assistant turn carries exactly the rationale and
    answer (or R1-distill text) of the standard config's `completion`; the chat template ends the turn."""
    def turn(role: str, content: pl.Expr) -> pl.Expr:
        return pl.concat_list(pl.struct(pl.lit(role).alias("role"), content.alias("content")))

    return turn("user", question), turn("assistant", completion.str.strip_chars())


def student_answer(output: str) -> str | None:
    """The answer part of a student's output: the text after the last separator, None when it never writes one."""
    head, sep, answer = output.rpartition(STUDENT_SEP)
    return answer if sep else None


def student_answer_expr(output: pl.Expr) -> pl.Expr:
    """`student_answer` over a column (null when the output has no separator)."""
    parts = output.str.split(STUDENT_SEP)
    return pl.when(parts.list.len() > 1).then(parts.list.last())


def chat_completion_text(tokenizer: PreTrainedTokenizerBase | Any, question: str, completion: str) -> tuple[str, str]:
    """(prompt text, completion text) of the chat format: the template's text split at the assistant turn."""
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": student_target(completion)}],
                                         tokenize=False)
    if not full.startswith(prompt):
        raise BuilderError("format chat: the model's chat template does not render the prompt as a prefix of the "
                           "conversation; use format ft_cot for this student")
    return prompt, full[len(prompt):]


def r1_completion_text(tokenizer: PreTrainedTokenizerBase | Any, question: str, completion: str) -> tuple[str, str]:
    """(prompt text, completion text) of the r1 format: the chat template up to the assistant turn, then the row's
    completion as written (not through the template: R1-distill templates drop `<think>` content from assistant
    turns). A template whose generation prompt already opens the trace (`<think>\n`) is not given it twice."""
    if not getattr(tokenizer, "chat_template", None):
        raise BuilderError("format r1: the student's tokenizer has no chat template; use format ft_cot")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    text = student_target(completion)
    if prompt.endswith(THINK_OPEN) and text.startswith(THINK_OPEN):
        text = text[len(THINK_OPEN):]
    return prompt, text


def student_prompt_ids(tokenizer: PreTrainedTokenizerBase | Any, question: str, fmt: str,
                       max_length: int | None = None) -> list[int]:
    """Token ids a student sees before it writes: the same ids at training and at evaluation.

    ft_cot and seq2seq: `student_prompt(question)` with the tokenizer's special tokens (cut at `max_length`,
    keeping them, when given); chat and r1: the chat template up to the assistant turn.
    """
    if fmt in ("chat", "r1"):
        prompt, _ = (chat_completion_text if fmt == "chat" else r1_completion_text)(tokenizer, question, "")
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if fmt not in STUDENT_FORMATS:
        raise ValueError(f"unknown student format {fmt!r}; valid: {', '.join(STUDENT_FORMATS)}")
    cut = {"truncation": True, "max_length": max_length} if max_length else {}
    return tokenizer(student_prompt(question), add_special_tokens=True, **cut)["input_ids"]
