"""Typed stats of a build: curate's funnel, drops, grade statuses, diversity and decontamination, and build's
sampling summary.

curate.run returns `CurationStats`; build.py wraps it with a `SamplingSummary` in `BuildStats`; the store writes
`BuildStats.to_json()` sections into manifest.json (stats.json holds all of it) and renders the card from them.
The JSON shape is fixed in docs/ARCHITECTURE.md ("The stats"): versions on disk are read as that JSON, so old
ones stay readable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Funnel:
    """Rows of one task left after each step (`builder.reasons.FUNNEL_AFTER` says which stage ends each)."""

    sampled: int
    answered: int
    correct: int
    deduped: int
    selected: int
    kept: int


@dataclass(frozen=True)
class DiversityFigures:
    mean_pairwise_jaccard: float  # over pairs of rationales of the same question (lower: more diverse)
    distinct_ngrams: float  # distinct / total n-grams, mean per question


@dataclass(frozen=True)
class Diversity:
    before: DiversityFigures  # the rationales selection saw
    after: DiversityFigures  # the ones it kept


@dataclass(frozen=True)
class ContaminationHit:
    qid: str
    task: str
    question: str
    matched_task: str
    matched_question: str
    method: str  # "ngram" | "minhash"
    score: float


@dataclass(frozen=True)
class Decontamination:
    checked: int = 0  # questions checked
    eval_questions: int = 0
    hits: list[ContaminationHit] = field(default_factory=list)


@dataclass
class CurationStats:
    """What curate.run measured; `settings` is the resolved curation config it ran with (for `rationale curate`'s
    stats.json, which has no recipe beside it)."""

    funnel: dict[str, Funnel]
    dropped: dict[str, dict[str, int]]  # stage -> reason -> rows; every dropped ledger row counted once
    diversity: dict[str, Diversity]
    decontamination: Decontamination
    settings: dict[str, Any]
    # task -> status -> graded rows, every status of builder.graders STATUSES but ok (zeros included), over every
    # graded row of the run (before any stage drops it); the task's total is its funnel's `sampled`.
    # Versions written before it have no "grade_status" key: readers take it as {}.
    grade_status: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# What each status that is not ok means (the card's Grading table and `rationale build`/`curate` name them).
GRADE_STATUS_MEANING: dict[str, str] = {
    "no_answer": "the teacher's text held nothing to read (empty, refused, or no answer anywhere in the rationale)",
    "wrong_format": "an answer region with no valid candidate (e.g. a word where a number or letter was asked)",
    "ambiguous": ("two different final answers (\"7 or 8\", two boxes), an open bound (\"at least 5\") or a condition "
                  "(\"yes, if...\"): never counted correct"),
    "parse_error": "the gold answer (or the expression parser) could not be read: a data problem, not the teacher's",
    "timeout": "the expression parser ran out of time",
}


def grade_status_lines(grade_status: dict[str, dict[str, int]], funnel: dict[str, Any]) -> list[str]:
    """One line per task for the build and curate summaries: "task multiarith: 12 wrong_format, 1 parse_error of 600
    graded" (statuses with a count only; "all ok" when none), from the stats' `grade_status` and `funnel` (typed
    `Funnel`s or their JSON). Empty for stats without grade statuses (versions written before them)."""
    lines = []
    for task in sorted(grade_status):
        f = funnel.get(task)
        graded = f.get("sampled") if isinstance(f, dict) else getattr(f, "sampled", None)
        of = "" if graded is None else f" of {graded:,} graded"
        counts = ", ".join(f"{n:,} {status}" for status, n in grade_status[task].items() if n)
        line = f"task {task}: {counts}{of}" if counts else f"task {task}: all{of.replace(' of', '')} ok"
        if grade_status[task].get("parse_error"):
            line += " (parse_error: rows lost to a data problem, not to the teacher)"
        lines.append(line)
    return lines


@dataclass
class SamplingSummary:
    """Teacher usage of a build (the teacher and its settings are in the recipe)."""

    prompt_tokens: int
    completion_tokens: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)  # backend facts: adaptive rounds, imported rows, ...

    def to_json(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "seconds": self.seconds, **self.extra}


@dataclass
class BuildStats:
    curation: CurationStats
    sampling: SamplingSummary | None = None

    def to_json(self) -> dict[str, Any]:
        """stats.json: the curation stats plus "sampling"."""
        return {**self.curation.to_json(), "sampling": self.sampling.to_json() if self.sampling else {}}
