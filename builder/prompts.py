"""Every prompt and text format the tool writes, defined once: teacher prompts (Zero-/Few-shot-CoT, raw text or chat
messages), the Zero-shot-CoT answer prompts (Kojima et al.), the choice display, and the student formats.

Sampling, evaluation, the store, training and grading all read these; none of them spells a format out itself, so
the prompt a student is trained on is by construction the one it is evaluated with.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

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
