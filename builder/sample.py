"""Sample stage: questions -> samples, through the recipe's teacher backend (`builder.teachers`).

Work is keyed by (qid, sample_idx) and cut into shards of `shard_size` questions; the teacher streams each shard's
completions back (stage 1, the rationale, n per question; then the greedy Zero-shot-CoT answer stage) and each
finished shard is written atomically to the run's `samples/shard-NNNNN.parquet` (`builder.run`: where, and which
run a shard belongs to). A rerun reads the keys already on storage and asks only for what is missing, so a killed
run loses at most the shards in flight and never leaves a partial or duplicated row: half-written temp files are
deleted at start, and the run's lease keeps two drivers out of one run. What the run holds for a question is its
first `n` samples (`wanted`): raising `n` samples only the new indices, lowering it leaves the shards as they are
and grades fewer. Imported completions (`teacher.backend: import`) take the same path.

Where the shards are generated is the recipe's executor (`builder.executors`): `local` streams them through the
teacher in this process; `ray` through a Ray Data pool of engine replicas that write them to shared storage
(`executor.storage`, a local path or fsspec URL). Shard names are chosen here, in question order, before any work
is sent, so a retried shard rewrites its own file; the stage's logic (keys, seeds, resume) is the same for both.

Per-sample seeds: question q's base seed is derived from (run seed, qid); sample i gets base + i. vLLM gives the
i-th child of a request with seed s and n > 1 the seed s + i, so one request with n samples and n requests with
n = 1 produce the same samples, and any single sample can be regenerated (`regenerate`).

Adaptive budget (`sampling.adaptive`): rounds of `round_size` samples per open question, graded between rounds
(`builder.grade`), until a question has `target_correct` correct rationales or `max_samples` samples. A round is
just a larger per-question target, so resuming replays the same decisions from the shards on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import polars as pl

from builder import cost, tasks
from builder.errors import BuilderError
from builder.executors import Executor, ShardWritten, make_executor
from builder.executors import storage as shard_storage
from builder.journal import Journal
from builder.prompts import Exemplar, teacher_prompt
from builder.recipe import Recipe
from builder.run import Run, RunConflict
from builder.schemas import atomic_write_parquet, validate
from builder.shards import only_wanted, read_samples, read_shard, wanted
from builder.teachers import TEACHERS, Answer, Completion, Request, ShardWork, Teacher, TeacherSetup, make_teacher
from builder.teachers.base import ANSWER_STAGE_FAILED, FAILED, GAVE_UP

log = logging.getLogger(__name__)

_SEED_MOD = 2**31 - 2**20  # leaves room for base + sample_idx below 2**31


# ------------------------------------------------------------------ seeds
def base_seed(run_seed: int, qid: str) -> int:
    """Seed of sample 0 of question `qid`; sample i uses base_seed + i."""
    digest = hashlib.blake2b(f"{run_seed}:{qid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _SEED_MOD


def sample_seed(run_seed: int, qid: str, sample_idx: int) -> int:
    return base_seed(run_seed, qid) + sample_idx


# ------------------------------------------------------------------ run state on disk
@dataclass
class SampleStats:
    samples: int = 0
    new_samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    shards_written: int = 0
    rounds: int = 0
    question_stats: pl.DataFrame | None = None
    wanted: pl.DataFrame | None = None  # (qid, n_samples): what the run holds per question, for grading
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable totals for logs, the CLI summary and build stats."""
        return {"samples": self.samples, "new_samples": self.new_samples, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.tokens_per_s, 1), "shards_written": self.shards_written, **self.extra}


@dataclass
class SampleProgress:
    """What a progress callback sees after each shard (and at the start of each round)."""

    questions_done: int
    questions_total: int
    samples_done: int
    samples_total: int
    new_samples: int
    completion_tokens: int
    seconds: float
    round: int

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def missing_requests(questions: pl.DataFrame, done: pl.DataFrame, n: int | pl.Expr, run_seed: int = 0
                     ) -> pl.DataFrame:
    """(q_order, qid, first_idx, count): runs of consecutive sample indices still to sample, in question order.

    `n` is the wanted number of samples per question, or an expression over `questions` (e.g. a per-question
    target column in adaptive rounds).
    """
    target = questions.select("qid", n_target=n if isinstance(n, pl.Expr) else pl.lit(n)).with_row_index("q_order")
    top = int(target["n_target"].max() or 0)
    want = (target.join(pl.DataFrame({"sample_idx": list(range(top))}, schema={"sample_idx": pl.Int32}),
                        how="cross")
            .filter(pl.col("sample_idx") < pl.col("n_target")))
    todo = want.join(done.select("qid", "sample_idx"), on=["qid", "sample_idx"], how="anti")
    runs = (todo.sort("q_order", "sample_idx")
            .with_columns(run=(pl.col("sample_idx") - pl.int_range(pl.len()).over("qid")))
            .group_by("q_order", "qid", "run", maintain_order=True)
            .agg(first_idx=pl.col("sample_idx").min(), count=pl.len().cast(pl.Int64)))
    return runs.select("q_order", "qid", "first_idx", "count")


def _next_shard_index(run: Run) -> int:
    names = [shard_storage.basename(p).removesuffix(".parquet") for p in run.shards()]
    return max((int(n.split("-")[1]) for n in names), default=-1) + 1


def _exemplars_for(recipe: Recipe, task: str) -> list[Exemplar]:
    ex = recipe.prompt.exemplars
    if recipe.prompt.style != "few_shot_cot" or ex is None:
        return []
    if ex == "paper":
        return tasks.paper_exemplars(task, recipe.resolve_path(recipe.tasks.benchmarks_dir))
    return list(ex)


def round_targets(recipe: Recipe) -> list[int]:
    """Samples per question wanted after each round: [n] without adaptive, else round_size, 2*round_size, ..."""
    a = recipe.sampling.adaptive
    if not a.enabled:
        return [recipe.sampling.n]
    return sorted({min(a.max_samples, r * a.round_size) for r in range(1, -(-a.max_samples // a.round_size) + 1)})


# ------------------------------------------------------------------ the stage
@dataclass
class _Context:
    recipe: Recipe
    run: Run
    teacher: Teacher
    qinfo: dict[str, dict[str, Any]]
    exemplars: dict[str, list[Exemplar]]
    answer_prompts: dict[str, str]
    prompts: dict[str, str] = field(default_factory=dict)
    executor: Executor | None = None
    render: bool = True  # False: a remote replica renders chat prompts with its own engine's tokenizer

    def prompt(self, qid: str) -> str:
        if qid not in self.prompts:
            q = self.qinfo[qid]
            p = self.recipe.prompt
            raw = teacher_prompt(q["question"], style=p.style, fmt=p.format, trigger=p.trigger,
                                 exemplars=self.exemplars[q["task"]])
            self.prompts[qid] = self.teacher.render(raw) if self.render else raw
        return self.prompts[qid]

    def shard_work(self, part: pl.DataFrame) -> ShardWork:
        seed = self.recipe.sampling.seed
        requests = [Request(qid, self.prompt(qid), first_idx, count, sample_seed(seed, qid, first_idx))
                    for qid, first_idx, count in part.select("qid", "first_idx", "count").rows()]
        return ShardWork(requests, {r.qid: self.answer_prompts.get(self.qinfo[r.qid]["task"]) for r in requests})


def run(questions: pl.DataFrame, recipe: Recipe, *, engine: Any = None, teacher: Teacher | None = None,
        run: Run | None = None, progress: Callable[[SampleProgress], None] | None = None,
        executor: Executor | None = None, collect: bool = True) -> tuple[pl.DataFrame | None, SampleStats]:
    """Sample rationales per question; resume from the run's shards on its storage.

    Without `sampling.adaptive`, every question gets `sampling.n` samples. With it, questions are sampled in rounds
    of `round_size` until they have `target_correct` correct rationales (graded with the recipe's grading mode
    between rounds) or `max_samples` samples; round r wants min(max_samples, r * round_size) samples of each
    question still open, so a resumed run replays the same decisions from the samples on disk. Per-question pass
    rate and majority answer go to the run's question_stats.parquet and `stats.question_stats`.

    Args:
        questions: the questions table.
        recipe: the build recipe (teacher, prompt, sampling).
        engine: an already started engine to reuse (a vllm.LLM the tests share); the teacher starts its own
            otherwise.
        teacher: a ready teacher (e.g. an OpenAI-compatible client with test settings); overrides `engine`. A
            teacher passed in is not closed; one made here is.
        run: the run (`builder.run.Run`) whose lease the caller holds; default: the recipe's, held for this call.
        progress: called with a `SampleProgress` after each shard.
        executor: where shards are generated (default: the recipe's `executor`); with a remote one (ray) `engine`
            and `teacher` only serve the driver (budget), the replicas start their own engines.
        collect: read the samples back into a frame at the end (True); False returns None instead and reads only
            their qids (the count), for a build that grades the shards where they are (`stats.wanted` says which).

    Returns:
        The samples the run holds for these questions (sample_idx below each question's budget; None without
        `collect`) and this call's statistics.

    Raises:
        BuilderError: another driver holds the run, the run's storage holds another fingerprint's samples, or a
            shard is corrupt or foreign.
    """
    questions = validate(questions, "questions", where="questions")
    own_run = run is None
    run = run or Run.of(recipe)
    if own_run:
        run.acquire()
    try:
        shard_storage.makedirs(run.samples)
        if stale := shard_storage.remove_stale(run.samples):
            log.info("removed %d stale temp file(s) from a killed run in %s", len(stale), run.samples)
        own_executor = executor is None
        executor = executor or make_executor(recipe.executor)
        own = teacher is None
        # remote executors: never started here
        teacher = teacher or make_teacher(TeacherSetup.of(recipe), engine=engine)
        try:
            return _run_held(questions, recipe, teacher, run, progress, executor, collect)
        finally:
            if own:
                teacher.close()
            if own_executor:
                executor.close()
    finally:
        if own_run:
            run.release()


def _run_held(questions: pl.DataFrame, recipe: Recipe, teacher: Teacher, run: Run,
              progress: Callable[[SampleProgress], None] | None, executor: Executor, collect: bool = True
              ) -> tuple[pl.DataFrame | None, SampleStats]:
    adaptive = recipe.sampling.adaptive.enabled
    stats = SampleStats()
    _forget_refused(run)
    Journal(run.journal).compact(read_samples(run, ["qid", "sample_idx"]))
    teacher.use_journal(run.journal)
    answer_prompts = tasks.answer_prompts(recipe.tasks, questions) if recipe.prompt.two_stage else {}
    ctx: _Context | None = None
    open_q = questions.select("qid")  # questions still sampled in this round
    budget = questions.select("qid", n_samples=pl.lit(0, pl.Int64))  # per question: the last round's target
    finished = 0
    targets = round_targets(recipe)
    for rnd, target in enumerate(targets, start=1):
        run.check_held()
        stats.rounds = rnd
        done = read_samples(run, ["qid", "sample_idx", "answer_prompt"])
        if rnd == 1 and answer_prompts and not teacher.own_prompts:
            _check_answer_prompts(run, done, questions, answer_prompts)
        n = teacher.budget(questions, target)
        want = wanted(questions, n)
        budget = budget.update(want.join(open_q, on="qid", how="semi"), on="qid")
        todo = missing_requests(questions.join(open_q, on="qid", how="semi"), done, n)
        done_q = questions.height - (open_q.height if adaptive else todo["qid"].n_unique())
        total = int(want["n_samples"].sum() if not adaptive else
                    only_wanted(done, budget).height + todo["count"].sum())
        left = int(todo["count"].sum())
        state = SampleProgress(finished if adaptive else done_q, questions.height, total - left, total, 0, 0, 0.0, rnd)
        if progress:
            progress(state)
        if todo.height:
            if ctx is None:
                ctx = _Context(recipe, run, teacher,
                               questions.select("qid", "task", "question").rows_by_key("qid", named=True,
                                                                                       unique=True),
                               {t: _exemplars_for(recipe, t) for t in questions["task"].unique()},
                               answer_prompts, executor=executor, render=not executor.remote)
                if not executor.remote:
                    teacher.start()  # before the clock: seconds and tokens/s measure generation, not engine start-up
            stats.seconds += _sample_todo(ctx, todo, stats, state, progress, adaptive)
        if not adaptive:
            break
        open_q, finished = _grade_round(run, questions, open_q, recipe, target)
        if not open_q.height:
            break
    stats.extra.update(teacher.stats())
    stats.wanted = budget
    samples = None
    if collect or adaptive:  # adaptive rounds grade in the driver (see docs/SCALING.md)
        samples = only_wanted(read_samples(run), budget)
        stats.samples = samples.height
    else:
        stats.samples = only_wanted(read_samples(run, ["qid", "sample_idx"]), budget).height
    if adaptive:
        stats.question_stats = _final_question_stats(run, samples, questions, recipe)
        qs = stats.question_stats
        stats.extra["adaptive"] = {
            "rounds": stats.rounds, "questions": qs.height,
            "solved": int(qs["solved"].sum()), "capped": int((~qs["solved"]).sum()),
            "mean_pass_rate": round(float(qs["pass_rate"].mean() or 0.0), 4),
            "mean_samples_per_question": round(float(qs["n_samples"].mean() or 0.0), 2),
        }
    log.info("sampling: %s", stats.summary())
    return (samples if collect else None), stats


def plan(questions: pl.DataFrame, recipe: Recipe, teacher: Teacher, run: Run | None = None) -> pl.DataFrame:
    """What sampling would ask the teacher for now, sending nothing (`--dry-run`): per question still missing
    samples, (qid, task, prompt, answer_prompt, count), the stage-1 prompt as the teacher renders it and the number
    of samples. An adaptive budget is counted at max_samples: an upper bound."""
    questions = validate(questions, "questions", where="questions")
    run = run or Run.of(recipe)
    done = read_samples(run, ["qid", "sample_idx"])
    todo = missing_requests(questions, done, teacher.budget(questions, round_targets(recipe)[-1]))
    answer_prompts = tasks.answer_prompts(recipe.tasks, questions) if recipe.prompt.two_stage else {}
    ctx = _Context(recipe, run, teacher, questions.select("qid", "task", "question").rows_by_key(
        "qid", named=True, unique=True), {t: _exemplars_for(recipe, t) for t in questions["task"].unique()},
        answer_prompts)
    counts = (todo.group_by("qid", maintain_order=True).agg(pl.col("count").sum())
              .join(questions.select("qid", "task"), on="qid", maintain_order="left"))
    return counts.select(
        "qid", "task",
        prompt=pl.Series([ctx.prompt(q) for q in counts["qid"]], dtype=pl.String),
        answer_prompt=pl.col("task").replace_strict(answer_prompts, default=None, return_dtype=pl.String),
        count=pl.col("count"))


class _TokenizerRendered:
    """The teacher as `plan` uses it (render, budget), its chat prompts rendered with the tokenizer alone (JSON
    messages where none loads, counted approximately): the engine whose tokenizer it would use is never started."""

    def __init__(self, teacher: Teacher, tokens: cost.Tokens, template_kwargs: dict[str, Any]) -> None:
        self.teacher, self.tokens, self.template_kwargs = teacher, tokens, template_kwargs

    def render(self, prompt: str | list[dict[str, str]]) -> str:
        if isinstance(prompt, str):
            return prompt
        if self.tokens.tokenizer is None:
            return json.dumps(prompt, ensure_ascii=False)
        return self.tokens.chat(prompt, self.template_kwargs)

    def budget(self, questions: pl.DataFrame, n: int) -> int | pl.Expr:
        return self.teacher.budget(questions, n)


def measured_completions(run: Run) -> pl.Series:
    """Completion tokens of the samples the run holds (refused ones left out): what a sample costs, measured."""
    done = read_samples(run, ["finish_reason", "completion_tokens"])
    return done.filter(pl.col("finish_reason") != FAILED, pl.col("completion_tokens").is_not_null())[
        "completion_tokens"]


def dry_run(recipe: Recipe) -> cost.Estimate:
    """What sampling `recipe` would send now (`--dry-run`): the plan of the run's missing samples and its estimate.
    The teacher is made, never started (engines start, and requests go out, on first use); nothing is written."""
    questions = tasks.run(recipe.tasks, recipe.base_dir)
    tokens = cost.Tokens.of(recipe.teacher)
    kind = TEACHERS.get(recipe.teacher.backend)
    teacher = make_teacher(TeacherSetup.of(recipe))
    try:
        planner = teacher if kind.sends_messages else _TokenizerRendered(teacher, tokens,
                                                                          recipe.prompt.chat_template_kwargs)
        todo = plan(questions, recipe, planner)  # type: ignore[arg-type]
    finally:
        teacher.close()
    return cost.estimate(todo, recipe, tokens=tokens, measured=measured_completions(Run.of(recipe)),
                         messages=kind.sends_messages, batch=kind.batch_priced)


def _check_answer_prompts(run: Run, done: pl.DataFrame, questions: pl.DataFrame, wanted_prompts: dict[str, str]
                          ) -> None:
    """The answer prompt a question's samples were asked with must be the one this recipe asks: it depends on the
    task's settings (answer_type, answer_prompt) and, for choice tasks, on the widest choice list among the
    questions loaded, none of which is in the run fingerprint (growing `limit` must not refuse a run)."""
    asked = (done.select("qid", "answer_prompt").unique()
             .join(questions.select("qid", "task"), on="qid")
             .with_columns(want=pl.col("task").replace_strict(wanted_prompts, default=None, return_dtype=pl.String)))
    changed = asked.filter(pl.col("answer_prompt").ne_missing(pl.col("want")))
    if changed.height:
        row = changed.row(0, named=True)
        raise RunConflict(f"{run.samples}: the samples of task {row['task']!r} were asked with the answer prompt "
                          f"{row['answer_prompt']!r}; this recipe asks {row['want']!r} (the task's answer_type or "
                          "answer_prompt, or the widest choice list among its questions, changed), and samples made "
                          "with another prompt are never mixed in. Keep them apart with another recipe name, "
                          f"work_dir or executor.storage, or start fresh by deleting {run.root}")


def _forget_refused(run: Run) -> None:
    """Samples whose rationale request the engine refused (finish_reason error: a prompt over max_model_len, ...)
    are asked again on every run, so a raised limit or a fixed server fills them in: their rows leave the shard
    (rewritten whole, under the lease) and they are missing like any other key. A refused answer stage keeps its
    rationale: asking it again would generate the same seeded rationale, and pay for it, every run. Except an answer
    stage given up while the server answered others (GAVE_UP: 5xx, timeouts): that is no refusal, and its rationale
    comes back from the run's journal (compacted only after this), so the next run asks it again."""
    error = pl.col("error").fill_null("")
    stage1 = (pl.col("finish_reason") == FAILED) & (~error.str.starts_with(ANSWER_STAGE_FAILED)
                                                    | error.str.starts_with(ANSWER_STAGE_FAILED + GAVE_UP))
    for shard in run.shards():
        if not (read_shard(shard, ["finish_reason"])["finish_reason"] == FAILED).any():
            continue  # shards written before the error column hold no refused samples
        df = read_shard(shard)
        refused = int(df.select(stage1.sum()).item())
        if not refused:
            continue
        kept = df.filter(~stage1)
        log.info("%s: %d sample(s) the engine refused will be asked again", shard, refused)
        run.check_held()  # a shard is rewritten only by the driver holding the lease
        if shard_storage.is_url(shard):
            shard_storage.write_parquet_url(kept, shard)
        else:
            atomic_write_parquet(kept, shard)


def _sample_todo(ctx: _Context, todo: pl.DataFrame, stats: SampleStats, state: SampleProgress,
                 progress: Callable[[SampleProgress], None] | None, adaptive: bool) -> float:
    """Sample the missing runs of `todo`, `shard_size` questions per shard, writing each shard as it completes.

    Returns the generation seconds: wall time here (the engine started before), or on a remote executor the span
    from the first replica call to the last shard written (the replicas' engine start-up left out, as locally)."""
    s = ctx.recipe.sampling
    todo = todo.with_columns(chunk=(pl.col("q_order").rank("dense") - 1) // s.shard_size)
    first = _next_shard_index(ctx.run)

    def works() -> Iterator[tuple[str, ShardWork]]:
        # names in question order, fixed before any work is sent: unique, and the same file if a shard is retried
        for i, (_, part) in enumerate(todo.group_by("chunk", maintain_order=True)):
            yield ctx.run.shard(first + i), ctx.shard_work(part)

    executor = ctx.executor or make_executor(ctx.recipe.executor)
    setup = replace(TeacherSetup.of(ctx.recipe), journal=ctx.run.journal)
    write = partial(write_shard, recipe=ctx.recipe, run_id=ctx.run.id, held=ctx.run.holding())
    t_start = t0 = time.perf_counter()
    first_call, last_write = float("inf"), 0.0
    for done in executor.sample(works(), setup=setup, teacher=ctx.teacher, write=write):
        ctx.run.check_held()
        first_call, last_write = min(first_call, done.started), max(last_write, done.finished)
        stats.shards_written += 1
        stats.new_samples += done.rows
        stats.prompt_tokens += done.prompt_tokens
        stats.completion_tokens += done.completion_tokens
        state.samples_done += done.rows
        state.new_samples, state.completion_tokens = stats.new_samples, stats.completion_tokens
        state.seconds = state.seconds + (time.perf_counter() - t0)
        t0 = time.perf_counter()
        if not adaptive:
            state.questions_done += done.questions
        if progress:
            progress(state)
    if executor.remote:
        return max(0.0, last_write - first_call) if last_write else 0.0
    return time.perf_counter() - t_start


def write_shard(work: ShardWork, completions: Sequence[Completion], answers: Sequence[Answer | None], dest: str, *,
                recipe: Recipe, run_id: str, held: Callable[[], None] = lambda: None) -> ShardWritten:
    """Build, validate and atomically write one shard to `dest` (a local path or an fsspec URL): what every
    executor calls where the shard was generated (a Ray replica writes its own shards to shared storage).

    `held` (the run's `LeaseCheck`) runs just before the write: a driver that lost its lease writes nothing. A shard
    is never overwritten: a retry of the same work (a Ray task run twice) finds its own keys there and is done; any
    other content at `dest` means another driver wrote it, and is refused."""
    df = validate(_shard_frame(work, completions, answers, recipe, run_id), "samples", where=dest)
    questions = len({r.qid for r in work.requests})
    log.debug("%s: %d samples of %d questions", dest, df.height, questions)
    if not df.height:  # an importer holding none of the asked indices: nothing to keep, no file
        return ShardWritten(dest, 0, questions, 0, 0, finished=time.time())
    held()
    try:
        if shard_storage.is_url(dest):
            shard_storage.write_parquet_url(df, dest, replace=False)
        else:
            atomic_write_parquet(df, dest, replace=False)
    except FileExistsError:
        there = shard_storage.read_parquet(dest, columns=["qid", "sample_idx"])
        if not there.sort("qid", "sample_idx").equals(df.select("qid", "sample_idx").sort("qid", "sample_idx")):
            raise BuilderError(f"{dest}: already holds other samples (written by another driver of this run); "
                               "nothing overwritten: rerun once the other driver is done") from None
    return ShardWritten(dest, df.height, questions, int(df["prompt_tokens"].sum() or 0),
                        int(df["completion_tokens"].sum() or 0), finished=time.time())


def _graded(samples: pl.DataFrame, questions: pl.DataFrame, recipe: Recipe) -> pl.DataFrame:
    from builder import grade

    return grade.run(samples, questions, recipe.grading)


def _grade_round(run: Run, questions: pl.DataFrame, open_q: pl.DataFrame, recipe: Recipe, target: int
                 ) -> tuple[pl.DataFrame, int]:
    """Which questions stay open after a round: fewer than target_correct correct among their first `target`."""
    a = recipe.sampling.adaptive
    on_disk = (read_samples(run).join(open_q, on="qid", how="semi")
               .filter(pl.col("sample_idx") < target))
    graded = _graded(on_disk, questions, recipe)
    correct = graded.group_by("qid").agg(pl.col("correct").sum().alias("n_correct"))
    still = (open_q.join(correct, on="qid", how="left")
             .filter((pl.col("n_correct").fill_null(0) < a.target_correct) & pl.lit(target < a.max_samples))
             .select("qid"))
    return still, questions.height - still.height


def _final_question_stats(run: Run, samples: pl.DataFrame, questions: pl.DataFrame, recipe: Recipe
                          ) -> pl.DataFrame:
    from builder import grade

    a = recipe.sampling.adaptive
    qs = grade.question_stats(_graded(samples, questions, recipe)).with_columns(
        solved=pl.col("n_correct") >= a.target_correct)
    atomic_write_parquet(qs, run.question_stats)
    return qs


def _shard_frame(work: ShardWork, completions: Sequence[Completion], answers: Sequence[Answer | None],
                 recipe: Recipe, run_id: str) -> pl.DataFrame:
    prompts = {r.qid: r.prompt for r in work.requests}
    return pl.DataFrame({
        "qid": [c.qid for c in completions],
        "sample_idx": [c.sample_idx for c in completions],
        "seed": [c.seed for c in completions],
        "teacher": [c.teacher or recipe.teacher.model for c in completions],
        "teacher_revision": recipe.teacher.revision,
        "prompt": [prompts[c.qid] if c.prompt is None else c.prompt for c in completions],
        "rationale": [c.text for c in completions],
        "reasoning": [c.reasoning for c in completions],
        "reasoning_tokens": [c.reasoning_tokens for c in completions],
        "reasoning_finished": [c.reasoning_finished for c in completions],
        "answer_prompt": [work.answer_prompt.get(c.qid) if c.answer_prompt is None else c.answer_prompt
                          for c in completions],
        "answer_completion": [a[0] if a else None for a in answers],
        "finish_reason": [c.finish_reason for c in completions],
        "error": [c.error for c in completions],
        "regenerable": [c.regenerable for c in completions],
        "prompt_tokens": [c.prompt_tokens for c in completions],
        "completion_tokens": [None if c.completion_tokens is None else c.completion_tokens + ((a[1] or 0) if a else 0)
                              for c, a in zip(completions, answers, strict=True)],
        "run_id": run_id,
    }, schema_overrides={"sample_idx": pl.Int32, "seed": pl.Int64, "prompt_tokens": pl.Int32,
                         "completion_tokens": pl.Int32, "teacher_revision": pl.String, "answer_prompt": pl.String,
                         "answer_completion": pl.String, "reasoning": pl.String, "reasoning_tokens": pl.Int32,
                         "reasoning_finished": pl.Boolean, "error": pl.String,
                         "regenerable": pl.Boolean})


def regenerate(recipe: Recipe, question: str, task: str, qid: str, sample_idx: int, *, engine: Any = None,
               teacher: Teacher | None = None) -> pl.DataFrame:
    """Sample exactly sample `sample_idx` of question `qid` again (same seed, same prompt): one-row samples table.

    Raises:
        BuilderError: the run holds that sample as one its seed does not reproduce (`regenerable` false)."""
    _check_regenerable(Run.of(recipe), qid, sample_idx)
    questions = pl.DataFrame({"qid": [qid], "task": [task], "question": [question]})
    own = teacher is None
    teacher = teacher or make_teacher(TeacherSetup.of(recipe), engine=engine)
    answer_prompts = tasks.answer_prompts(recipe.tasks) if recipe.prompt.two_stage else {}
    ctx = _Context(recipe, Run.of(recipe), teacher,
                   questions.rows_by_key("qid", named=True, unique=True), {task: _exemplars_for(recipe, task)},
                   answer_prompts)
    try:
        teacher.budget(questions, sample_idx + 1)  # an importer reads which rows it holds here
        work = ctx.shard_work(pl.DataFrame({"qid": [qid], "first_idx": [sample_idx], "count": [1]}))
        work, completions, answers = next(iter(teacher.stream([work], recipe.sampling.answer_max_tokens)))
    finally:
        if own:
            teacher.close()
    return _shard_frame(work, completions, answers, recipe, ctx.run.id)


def _check_regenerable(run: Run, qid: str, sample_idx: int) -> None:
    for shard in run.shards():
        keys = read_shard(shard, ["qid", "sample_idx"])
        if not keys.filter((pl.col("qid") == qid) & (pl.col("sample_idx") == sample_idx)).height:
            continue
        row = validate(read_shard(shard), "samples", where=shard).filter(
            (pl.col("qid") == qid) & (pl.col("sample_idx") == sample_idx))
        if row["regenerable"].eq_missing(False).any():
            raise BuilderError(
                f"sample {qid}:{sample_idx} in {shard} cannot be regenerated: it is one of n samples the teacher "
                f"{row['teacher'][0]!r} drew in one request, and that server (not vLLM) does not give each of them "
                "its own seed. Samples made with teacher.use_n: false (one request per sample) can be regenerated")
        return
