"""What a teacher backend is: the `Teacher` protocol, the work it is given and what it gives back, and `TEACHERS`.

The sample stage cuts its (qid, sample_idx) keys into shards of `Request`s; a teacher streams each shard back as
`Completion`s (stage 1, the rationales) plus, per completion, the greedy Zero-shot-CoT answer (stage 2) where the
shard names an answer prompt. The stage owns everything else: seeds, prompts, the lock, the run fingerprint and
writing shards, so a backend is only the transport. Add one with a class and a decorator:

    @TEACHERS.register("echo")
    class EchoTeacher(Teacher):
        def __init__(self, setup, *, engine=None): ...
        def stream(self, shards, answer_max_tokens): ...

A teacher is made from its own recipe sections (`TeacherSetup`: teacher, prompt, sampling), never a whole recipe,
so a student under evaluation is a teacher without a recipe (`builder.eval`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from builder.paths import resolve_recipe_path
from builder.registry import Registry

if TYPE_CHECKING:
    from pathlib import Path

    import polars as pl

    from builder.recipe import PromptConfig, Recipe, SamplingConfig, TeacherConfig

# The TeacherConfig fields in the run fingerprint of the built-in backends. import_path/import_columns are None/{}
# for sampling backends, but every run id made so far includes them: dropping them would orphan existing run dirs.
SAMPLE_FIELDS: tuple[str, ...] = ("backend", "model", "revision", "import_path", "import_columns")


@dataclass(frozen=True)
class TeacherSetup:
    """What a teacher is made from: its recipe sections, where the recipe's relative paths resolve, and the recipe's
    task names (an imported file without a task column belongs to its one task)."""

    teacher: TeacherConfig
    prompt: PromptConfig
    sampling: SamplingConfig
    base_dir: str | None = None
    tasks: tuple[str, ...] = ()
    journal: Path | None = None  # the run's request journal (`builder.journal`), for teachers that keep one

    @classmethod
    def of(cls, recipe: Recipe) -> TeacherSetup:
        return cls(recipe.teacher, recipe.prompt, recipe.sampling, recipe.base_dir,
                   tuple(t.name for t in recipe.tasks.items))

    def resolve_path(self, path: str | None) -> Path | None:
        return resolve_recipe_path(self.base_dir, path)


@dataclass
class Request:
    """n samples of one question starting at sample index `first_idx` (seed = base + first_idx)."""

    qid: str
    prompt: str
    first_idx: int
    n: int
    seed: int


@dataclass
class Completion:
    """One sample's stage-1 text. `prompt`, `teacher` and `answer_prompt` are set only by teachers whose rows carry
    their own (imported completions); None means the request's prompt, the recipe's model, the shard's answer prompt.

    A reasoning teacher's thinking trace is `reasoning` (tags stripped) and `text` only what follows it;
    `reasoning_finished` is False when the trace never closed; `completion_tokens` counts both parts.

    A request the engine refused (e.g. a prompt longer than max_model_len) is still a sample: `finish_reason`
    "error" (`FAILED`), `error` the engine's message ("answer stage: ..." when only the stage-2 request failed, the
    rationale then kept), `text` empty when stage 1 failed. It is written like any sample and never graded correct.
    The next run asks a refused stage 1 again (`builder.sample`), so a raised limit or a fixed server fills it in;
    a refused answer stage is kept (asking again would generate and pay for the same seeded rationale every run).
    """

    qid: str
    sample_idx: int
    seed: int
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None
    prompt: str | None = None
    teacher: str | None = None
    answer_prompt: str | None = None
    reasoning: str | None = None
    reasoning_tokens: int | None = None
    reasoning_finished: bool | None = None
    error: str | None = None
    regenerable: bool | None = None  # False: its seed does not reproduce it (n > 1 from a server that is not vLLM)


# finish_reason of a sample whose request the engine refused (Completion.error says why)
FAILED = "error"
# How Completion.error begins when only the answer stage was refused (the rationale is kept)
ANSWER_STAGE_FAILED = "answer stage: "
# How Completion.error begins (after ANSWER_STAGE_FAILED for the answer stage) when a request was given up while the
# server answered others (it kept failing, 5xx or timeouts): not the request's fault, so a later run asks it again.
GAVE_UP = "gave up after "
# finish_reason of a rationale cut by max_tokens or max_model_len (curation's `truncated` filter drops it)
TRUNCATED = "length"


@dataclass
class ShardWork:
    """One shard: the stage-1 requests of a few questions and, per qid, the task's answer prompt (None: inline).

    Rationales cut by the length limit get no answer stage (curation drops them; their answer prompt may not even fit
    the model): `answer_truncated` asks for it anyway (evaluation baselines following the paper's protocol).
    """

    requests: list[Request]
    answer_prompt: dict[str, str | None]
    answer_truncated: bool = False

    @property
    def sequences(self) -> int:
        return sum(r.n for r in self.requests)


# A stage-2 answer: (text, completion tokens); None where the shard runs no answer stage for that completion.
Answer = tuple[str, int | None]
# (shard, its completions, per completion its answer)
ShardResult = tuple[ShardWork, list[Completion], list[Answer | None]]


class Teacher(Protocol):
    """A backend that turns shards of requests into completions; subclass it to inherit the defaults."""

    # TeacherConfig fields that change what this backend generates: they enter the run fingerprint (run id).
    fingerprint_fields: ClassVar[tuple[str, ...]] = SAMPLE_FIELDS
    # True where completions come with the prompts they were made with (import): the recipe's answer prompts are
    # then not checked against the samples on storage.
    own_prompts: ClassVar[bool] = False
    # True where chat prompts travel as JSON messages the server renders (a dry run counts them through the model's
    # chat template); False where `render` makes the text with the engine's own tokenizer.
    sends_messages: ClassVar[bool] = False
    # True where the provider bills the requests at its batch discount.
    batch_priced: ClassVar[bool] = False

    @classmethod
    def fingerprint_extra(cls, setup: TeacherSetup) -> dict[str, Any]:
        """What else decides this backend's texts beyond its recipe fields (the content of a file it reads)."""
        return {}

    def render(self, prompt: str | list[dict[str, str]]) -> str:
        """The stage-1 prompt as the text this backend sends (chat messages through the model's template)."""
        ...

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        """Each shard's completions and stage-2 answers (greedy, `answer_max_tokens`), yielded as shards finish."""
        ...

    def budget(self, questions: pl.DataFrame, n: int) -> int | pl.Expr:
        """Samples per question to hold (an expression over `questions` may vary it): `n`, unless the backend has a
        fixed set of completions (import)."""
        return n

    def stats(self) -> dict[str, Any]:
        """Backend counts added to the sample stage's statistics."""
        return {}

    def start(self) -> None:
        """Load what generation needs (an engine, a model) now, so the sample stage's clock measures generation only
        and tokens/s is the engine's rate, not diluted by its start-up."""

    def use_journal(self, folder: Path | None) -> None:
        """Take finished requests from, and append them to, the run's request journal (`builder.journal`): the
        teachers that pay or wait per request (served, hosted) keep one; the default keeps none."""

    def close(self) -> None:
        """Release what the teacher started (called by whoever made it)."""


class TeacherFactory(Protocol):
    """What `TEACHERS` holds: a teacher class (or any callable with its fingerprint fields)."""

    fingerprint_fields: tuple[str, ...]

    def __call__(self, setup: TeacherSetup, *, engine: Any = None) -> Teacher: ...


TEACHERS: Registry[TeacherFactory] = Registry("teacher backend")


def make_teacher(setup: TeacherSetup, *, engine: Any = None) -> Teacher:
    """The setup's teacher backend; `engine` is a running engine to reuse (a vllm.LLM the tests share)."""
    return TEACHERS.get(setup.teacher.backend)(setup, engine=engine)


def answer_items(work: ShardWork, completions: Sequence[Completion]) -> list[int]:
    """Positions of the completions that get a stage-2 answer: their question's task has an answer prompt, stage 1
    did not fail, and the rationale was not cut by the length limit (unless the shard asks, `answer_truncated`)."""
    skip = {FAILED} if work.answer_truncated else {FAILED, TRUNCATED}
    return [i for i, c in enumerate(completions) if work.answer_prompt.get(c.qid) and c.finish_reason not in skip]


class SequentialTeacher(Protocol):
    def rationales(self, requests: Sequence[Request]) -> list[Completion]: ...

    def answers(self, items: Sequence[tuple[str, str, str]], max_tokens: int) -> list[Answer]:
        """Stage 2 of (stage-1 prompt, rationale, answer prompt) items."""
        ...


def sequential_stream(teacher: SequentialTeacher, shards: Iterable[ShardWork], answer_max_tokens: int
                      ) -> Iterator[ShardResult]:
    """`Teacher.stream` for backends with a stage-1 call and a stage-2 call: shard after shard, `rationales`, then
    `answers` on (prompt, rationale, answer prompt) of the completions that get one."""
    for work in shards:
        completions = teacher.rationales(work.requests)
        prompts = {r.qid: r.prompt for r in work.requests}
        idx = answer_items(work, completions)
        items = [(prompts[completions[i].qid], completions[i].text, work.answer_prompt[completions[i].qid])
                 for i in idx]
        answers: list[Answer | None] = [None] * len(completions)
        for i, a in zip(idx, teacher.answers(items, answer_max_tokens), strict=True):
            answers[i] = a
        yield work, completions, answers
