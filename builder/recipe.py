"""Build recipes as data: YAML validated by pydantic (unknown keys are errors); one model per stage in `Recipe`.

This module imports no stage, registry or backend: the names a recipe holds (teacher backend, executor kind, quality
filters, tasks and their graders) are checked against the registries by `builder.bind`, the one step that turns a
recipe file into a recipe the stages run (`bind.load_recipe`), and which writes schemas/recipe.schema.json.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from builder.errors import RecipeError
from builder.paths import NAME_PATTERN, resolve_recipe_path
from builder.prompts import Exemplar
from builder.readers import is_blank_text

# Recipe fields added after recipes were first hashed carry this mark: while they hold their default they are left
# out of the content hash (`builder.store.canonical_recipe`) and the run fingerprint, so existing datasets keep
# their hash and existing run dirs their run id.
ADDED = {"added": 2}


def added_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """The marked (`ADDED`) fields of `model` and their defaults."""
    return {name: f.get_default(call_default_factory=True) for name, f in model.model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("added")}


def drop_added_defaults(model: type[BaseModel], dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` (a model_dump of `model`) without the marked fields that hold their default."""
    defaults = added_defaults(model)
    return {k: v for k, v in dump.items() if k not in defaults or v != defaults[k]}


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf`/`.nan` are YAML floats, but no temperature, threshold or timeout is infinite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------- tasks
class TaskSpec(_Strict):
    """One task: a paper task read from its original file, or a user's file or Hub dataset with a column mapping."""

    name: str = Field(description="Task key: one of the 12 paper tasks for source=paper, any name otherwise.")
    source: Literal["paper", "file", "hub"] = Field("paper", description="Where the questions come from.")
    path: str | None = Field(
        None, description="File path (source=file), Hub dataset id (source=hub), or the paper file (default: "
        "<benchmarks_dir>/<task>/...). Relative paths resolve against the recipe's folder.")
    split: str = Field("train", description="Split to use: train, test or all (paper splits come from splits/).")
    hub_config: str | None = Field(None, description="Hub dataset config name (source=hub).")
    hub_split: str = Field("train", description="Hub dataset split to read (source=hub).")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map our fields (question, gold, choices, id, split) to the source's column names; 'a.b' reads "
        "field b of struct column a. Unmapped: question -> 'question', gold -> 'gold' (or 'answer').")
    answer_type: str | None = Field(None, description="Grader name; required for file and hub tasks.")
    answer_prompt: str | None = Field(None, description="Override the task's Zero-shot-CoT answer prompt.")
    limit: int | None = Field(None, ge=1, description="Keep only the first N questions (after splitting).")
    shuffle_choices: bool | None = Field(
        None, description="Shuffle answer choices (seeded by tasks.shuffle_seed and the qid); default: on for the "
        "BIG-bench tasks that list the right choice first (date_understanding, tracking_shuffled_objects).")

    @model_validator(mode="after")
    def _known_task(self) -> TaskSpec:
        if is_blank_text(self.name):
            raise ValueError("name is empty; every task needs a name (a paper task key, or any name for a file)")
        if any(ch < " " or ch == "\x7f" for ch in self.name):
            raise ValueError(f"name {self.name!r} holds a control character; a task name is a config name, a file "
                             "name and a sort key of the dataset: use printable text")
        if self.source != "paper" and self.answer_type is None:
            raise ValueError(f"answer_type is required for a {self.source} task (e.g. number, choice, yesno, string)")
        return self


class TasksConfig(_Strict):
    benchmarks_dir: str | None = Field(
        None, description="Folder holding the paper task files and splits/ (default: $RATIONALE_BENCHMARKS_DIR).")
    items: list[TaskSpec] = Field(min_length=1, description="The tasks to build from.")
    shuffle_seed: int = Field(0, description="Seed for shuffling answer choices (gold first in some sources).")


# ---------------------------------------------------------------- teacher + sampling
class Prices(_Strict):
    """A teacher's price, USD per million tokens (what the provider bills)."""

    input: float = Field(ge=0, le=100_000, description="Prompt tokens.")
    output: float = Field(ge=0, le=100_000, description="Completion tokens (thinking included).")
    cached_input: float | None = Field(None, ge=0, le=100_000, description="Prompt tokens served from the "
                                       "provider's cache (default: the input price).")
    batch_discount: float = Field(0.5, ge=0, le=1, description="Fraction of the price a batch API takes off.")


class TeacherConfig(_Strict):
    """The teacher model and the engine that runs it."""

    backend: str = Field("vllm", description="A registered teacher backend (builder.teachers.TEACHERS): vllm "
                         "in-process, an OpenAI-compatible server (openai), the OpenAI Batch API (openai_batch, at "
                         "its discount), existing completions (import), or transformers.generate (hf).")
    model: str = Field(description="Hub id, local folder, or a local alias (smollm2-135m-instruct).")
    revision: str | None = Field(None, description="Model revision, recorded in every sample.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Extra vllm.LLM(...) arguments (dtype, max_model_len, ...).")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL (backend=openai, openai_batch).")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key; the key "
                             "itself is never written anywhere.")
    concurrency: int = Field(16, ge=1, description="Concurrent requests (backend=openai).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (backend=openai).")
    max_retries: int = Field(5, ge=0, description="backend=openai: attempts past the first for one request that "
                             "keeps failing (5xx, timeouts) while the server answers others; it is then recorded as "
                             "an error on its samples. While every request fails, retry_budget_s decides.")
    rpm: int | None = Field(None, ge=1, json_schema_extra=ADDED, description="backend=openai: requests per minute "
                            "at most (the provider's limit); x-ratelimit-* headers tighten it further.")
    tpm: int | None = Field(None, ge=1, json_schema_extra=ADDED, description="backend=openai: tokens per minute at "
                            "most, counting each request's prompt and its max_tokens.")
    retry_budget_s: float = Field(600.0, gt=0, json_schema_extra=ADDED, description="backend=openai: how long the "
                                  "server may keep failing (429, 5xx, timeouts, refused connections) before the run "
                                  "stops; every request waits while it is down.")
    prices: Prices | None = Field(None, json_schema_extra=ADDED, description="USD per million tokens (input, "
                                  "cached_input, output); default: the shipped table for well-known models.")
    max_cost_usd: float | None = Field(None, gt=0, json_schema_extra=ADDED, description="Stop the run cleanly "
                                       "(shards and journal kept, resumable) once the run has spent this much.")
    use_n: bool = Field(True, description="backend=openai: one request with n samples and seed s (vLLM servers give "
                        "child i the seed s + i); false sends one request per sample with its own seed (hosted APIs "
                        "whose n ignores seeds), so any sample can be regenerated alone.")
    import_path: str | None = Field(None, description="JSONL/Parquet of completions (backend=import).")
    import_columns: dict[str, str] = Field(
        default_factory=dict, description="Map sample fields (question, rationale, reasoning, answer_completion, "
        "...) to columns of the imported file.")
    reasoning_parser: str | None = Field(
        None, json_schema_extra=ADDED, description="A vLLM reasoning parser (vllm.reasoning.ReasoningParserManager: "
        "deepseek_r1, qwen3, openai_gptoss, ...): the thinking trace goes to `reasoning`, the text after it to "
        "`rationale`. vllm: the engine parses (and can enforce sampling.max_thinking_tokens); openai: start the "
        "server with the same --reasoning-parser (raw /completions are split here); import: splits a rationale "
        "that still holds its tags, with the tokenizer of `model`.")


class PromptConfig(_Strict):
    """How questions become teacher prompts (Zero-shot-CoT or Few-shot-CoT, raw text or chat template)."""

    style: Literal["zero_shot_cot", "few_shot_cot"] = "zero_shot_cot"
    format: Literal["raw", "chat"] = Field("raw", description="Raw completion text, or the model's chat template.")
    trigger: str = Field("Let's think step by step.", description="Zero-shot-CoT reasoning trigger.")
    exemplars: Literal["paper"] | list[Exemplar] | None = Field(
        None, description="Few-shot-CoT exemplars: 'paper' (the paper's, per task) or your own list.")
    two_stage: bool = Field(True, description="Ask for the answer in a second call with the task's answer prompt.")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=ADDED, description="Extra chat template variables (format=chat), "
        "e.g. {enable_thinking: true} for Qwen3; sent as chat_template_kwargs to OpenAI-compatible servers.")


class AdaptiveConfig(_Strict):
    """Adaptive budget: sample in rounds, grading between them, and stop questions that are already solved."""

    enabled: bool = Field(False, description="Sample in rounds until target_correct or max_samples (ignores n).")
    target_correct: int = Field(4, ge=1, description="Stop sampling a question once it has this many correct.")
    max_samples: int = Field(64, ge=1, description="Never sample a question more than this.")
    round_size: int = Field(8, ge=1, description="Samples per question per round.")


class SamplingConfig(_Strict):
    n: int = Field(8, ge=1, description="Samples per question (vLLM's n; the paper's D).")
    temperature: float = Field(0.7, ge=0.0, description="The paper's diverse reasoning uses 0.7.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, description="Rationale length cap (vLLM's default of 16 is never used).")
    answer_max_tokens: int = Field(32, ge=1, description="Answer-stage length cap.")
    stop: list[str] = Field(default_factory=lambda: ["\nQ:", "\n\nQ"], description="Stop strings for the rationale.")
    seed: int = Field(0, description="Run seed; per-sample seeds derive from (seed, qid, sample_idx).")
    shard_size: int = Field(64, ge=1, description="Questions per shard (a shard is the unit of crash safety).")
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    max_thinking_tokens: int | None = Field(
        None, ge=0, json_schema_extra=ADDED, description="Thinking budget: vLLM's thinking_token_budget (needs "
        "teacher.reasoning_parser; the engine then forces the end tag). max_tokens still bounds the whole "
        "completion, trace included: a trace it cuts has reasoning_finished false.")
    structured_outputs_regex: str | None = Field(
        None, json_schema_extra=ADDED, description="Constrain each rationale to this regex (vLLM structured "
        "outputs; OpenAI-compatible vLLM servers get it as structured_outputs.regex).")


# ---------------------------------------------------------------- grading + curation
class GradingConfig(_Strict):
    mode: Literal["auto", "answer_completion", "rationale"] = Field(
        "auto", description="Extract from the stage-2 answer completion, from the rationale, or the first present.")


class MinHashConfig(_Strict):
    """Near-duplicate detection knobs (datasketch semantics)."""

    enabled: bool = True
    num_perm: int = Field(128, ge=16, description="Permutations per signature (datasketch's num_perm).")
    bands: int = Field(16, ge=1, description="LSH bands; rows per band = num_perm // bands.")
    ngram: int = Field(5, ge=1, description="Word shingle size.")
    threshold: float = Field(0.8, gt=0.0, le=1.0, description="Jaccard at or above which two rationales are dups.")
    seed: int = Field(1, description="Permutation seed (datasketch's MinHash(seed=...)).")
    scope: Literal["question", "global", "both"] = Field(
        "question", description="Near-dup scope: within each question, across the whole dataset, or both.")
    scheme: Literal["affine32", "legacy"] = Field(
        "affine32", description="datasketch permutation scheme: affine32 (its default since 2.0) or legacy.")
    hash: Literal["fast", "sha1"] = Field(
        "fast", description="Shingle hash: fast (our stable vectorised word hash, >100k rows/s) or sha1 "
        "(datasketch's sha1_hash32 on the shingle text: signatures bit-identical to datasketch.MinHash, slower).")

    @model_validator(mode="after")
    def _check(self) -> MinHashConfig:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        return self


class SelectionConfig(_Strict):
    mode: Literal["diverse", "random", "first", "shortest", "length_mix"] = Field(
        "diverse", description="How k of N are chosen per question: greedy max-min Jaccard, seeded random, the "
        "lowest sample indices, the shortest (trace, else rationale: small students learn better from shorter "
        "chains, Li et al. 2025), or a mix of the shortest and the longest (short_share of k from the short end).")
    max_per_question: int | None = Field(None, ge=1, description="k; null keeps every surviving rationale.")
    seed: int = Field(0, description="Seed of the random mode.")
    short_share: float = Field(0.5, ge=0.0, le=1.0, json_schema_extra=ADDED,
                               description="length_mix: share of k taken from the shortest (rounded half up), the "
                               "rest from the longest.")


class CurationConfig(_Strict):
    keep_correct_only: bool = True
    dedup_exact: bool = True
    filters: list[str] = Field(default_factory=lambda: ["empty", "truncated", "no_answer", "degenerate", "length"],
                               description="Quality filters to run, by registry name (builder.filters.FILTERS): "
                               "empty, truncated, degenerate, no_answer, length, answer_first; for reasoning "
                               "traces unfinished_thinking, no_final_answer, reasoning_length, repeated_loop.")
    min_chars: int = Field(1, ge=0, description="Length filter: fewer characters is dropped.")
    max_chars: int | None = Field(None, ge=1, description="Length filter: more characters is dropped.")
    min_distinct_word_ratio: float = Field(
        0.15, ge=0.0, le=1.0, description="Degenerate filter: distinct/total words below this (16+ words) drops. "
        "Real text-davinci-002 rationales that count down step by step go to 0.2.")
    max_line_repeats: int = Field(8, ge=2, description="Degenerate filter: a line repeated this often drops.")
    answer_first_chars: int = Field(
        40, ge=1, description="answer_first filter: the gold answer as a token within this many leading characters.")
    min_reasoning_tokens: int | None = Field(
        None, ge=0, json_schema_extra=ADDED,
        description="reasoning_length filter: a trace of fewer tokens (reasoning_tokens) is dropped.")
    max_reasoning_tokens: int | None = Field(
        None, ge=1, json_schema_extra=ADDED,
        description="reasoning_length filter: a trace of more tokens is dropped.")
    min_reasoning_chars: int | None = Field(
        None, ge=0, json_schema_extra=ADDED,
        description="reasoning_length filter: a trace of fewer characters is dropped.")
    max_reasoning_chars: int | None = Field(
        None, ge=1, json_schema_extra=ADDED,
        description="reasoning_length filter: a trace of more characters is dropped.")
    loop_ngram: int = Field(16, ge=2, json_schema_extra=ADDED,
                            description="repeated_loop filter: word n-gram size (long, so only verbatim repetition "
                            "counts).")
    max_loop_share: float = Field(
        0.25, ge=0.0, le=1.0, json_schema_extra=ADDED,
        description="repeated_loop filter: a trace with more than this share of its n-grams repeated from earlier in "
        "the same trace is dropped.")
    dedup_text: Literal["rationale", "reasoning", "both"] = Field(
        "rationale", json_schema_extra=ADDED,
        description="The text exact/near dedup, diversity selection and the diversity figures compare: the rationale "
        "(the text after any trace), the reasoning trace (rows without one use their rationale), or both (trace, "
        "newline, rationale).")
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    decontaminate: bool = Field(False, description="Drop questions that overlap a test split or extra eval set.")
    decontaminate_rationales: bool = Field(False, description="Also check rationales against the eval questions.")
    decontam_ngram: int = Field(5, ge=1, description="Word n-gram size of the overlap check (questions are short).")
    decontam_overlap: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of a question's n-grams found in an eval question that makes a hit.")
    decontam_jaccard: float = Field(
        0.7, gt=0.0, le=1.0, description="Estimated Jaccard (MinHash, 3-word shingles) that makes a hit.")
    eval_sets: list[str] = Field(default_factory=list, description="Extra eval files (JSONL/Parquet, 'question').")

    @model_validator(mode="after")
    def _length_bounds(self) -> CurationConfig:
        if self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is greater than max_chars ({self.max_chars}): the "
                             "length filter would drop every rationale")
        for unit in ("tokens", "chars"):
            lo, hi = getattr(self, f"min_reasoning_{unit}"), getattr(self, f"max_reasoning_{unit}")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"min_reasoning_{unit} ({lo}) is greater than max_reasoning_{unit} ({hi}): the "
                                 "reasoning_length filter would drop every trace")
        return self


# ---------------------------------------------------------------- store
class StoreConfig(_Strict):
    root: str = Field("store", description="Folder holding dataset versions: <root>/<name>/v<N>/.")
    name: str | None = Field(None, description="Dataset name (default: the recipe name).")
    shard_rows: int = Field(100_000, ge=1, description="Rows per Parquet file under data/.")
    task_configs: bool = Field(
        True, description="With several tasks, store data/<task>/ and add one `datasets` config per task "
        "(load_dataset(path, task)) beside the default config holding every row.")
    lock_timeout_s: float = Field(
        10.0, ge=0.0, description="How long a build waits for another build writing the same dataset to finish.")
    license: str | None = Field(
        None, json_schema_extra=ADDED, description="The dataset's license as a Hub license id (e.g. 'cc-by-4.0', "
        "'apache-2.0', 'other'): the card's `license`. Needed to publish (check the teacher's and the tasks' terms), "
        "not to build.")
    language: list[str] = Field(
        default_factory=lambda: ["en"], json_schema_extra=ADDED,
        description="ISO 639-1 codes of the questions' and rationales' language: the card's `language`.")


# ---------------------------------------------------------------- executor
class ExecutorConfig(_Strict):
    """Where the stages run. Never part of the content hash or the run fingerprint: the same samples, ledger and
    hash come out of either executor (docs/SCALING.md)."""

    kind: str = Field("local", description="A registered executor (builder.executors.EXECUTORS): local (this "
                      "process, the default; Ray is never imported) or ray (Ray Data actor pool of engine replicas).")
    address: str | None = Field(
        None, description="Ray cluster address: null starts (or reuses) a local Ray with every core; 'auto' attaches "
        "to the cluster of `ray start`; 'ray://host:10001' a remote one through Ray Client.")
    replicas: int = Field(1, ge=1, description="Engine replicas (actors), each holding one teacher engine.")
    gpus_per_replica: float | None = Field(
        None, ge=0, description="GPUs per replica (default: tensor_parallel_size x pipeline_parallel_size of "
        "teacher.engine_args on clusters with GPUs, 0 on CPU clusters).")
    cpus_per_replica: int | None = Field(
        None, ge=1, description="CPU clusters: cores per replica (default: the cluster's CPUs / replicas); vLLM's "
        "threads are bound to exactly the cores each replica owns. GPU clusters: CPUs reserved per replica (1).")
    storage: str | None = Field(
        None, description="Shared storage for sample shards: a local path or an fsspec URL (file://, s3://, gs://); "
        "shards go to <storage>/<name>/samples/. Default: the run dir (<work_dir>/<name>/samples/).")
    max_restarts: int = Field(
        3, ge=0, description="Ray: times a replica that died is restarted, and a shard it held is retried.")
    curate_blocks: int | None = Field(
        None, ge=1,
        description="Ray: at most this many blocks (parallel tasks) per curation pass (null: one per curate chunk).")


class Recipe(_Strict):
    """A build recipe: tasks -> sample -> grade -> curate -> store."""

    name: str = Field(pattern=NAME_PATTERN, description="Build name; also the dataset name.")
    description: str = ""
    work_dir: str = Field("runs", description="Resumable working state: <work_dir>/<name>/.")
    tasks: TasksConfig
    teacher: TeacherConfig
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    grading: GradingConfig = Field(default_factory=GradingConfig)
    curation: CurationConfig = Field(default_factory=CurationConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    executor: ExecutorConfig = Field(
        default_factory=ExecutorConfig, exclude=True,
        description="Where sampling and curation run (local or Ray); how, not what: left out of the resolved recipe "
        "in manifests, the content hash and the run fingerprint.")
    base_dir: str | None = Field(None, exclude=True, description="Folder of the recipe file (set on load).")

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.prompt.style == "few_shot_cot" and self.prompt.exemplars is None:
            raise ValueError("prompt.exemplars is required for few_shot_cot (use 'paper' or a list)")
        if self.teacher.backend == "import" and not self.teacher.import_path:
            raise ValueError("teacher.import_path is required for backend=import")
        if self.teacher.backend in ("openai", "openai_batch") and not self.teacher.base_url:
            raise ValueError(f"teacher.base_url is required for backend={self.teacher.backend}")
        if self.executor.kind == "ray" and self.teacher.max_cost_usd is not None:
            raise ValueError("teacher.max_cost_usd is counted by the teacher that sends the requests, and "
                             "executor.kind ray runs one per replica (each would spend the whole limit): run it with "
                             "executor.kind local")
        if self.executor.kind == "ray" and self.teacher.backend == "openai_batch":
            raise ValueError("executor.kind ray runs a teacher per replica, and each would submit its own batches: "
                             "run teacher.backend openai_batch with executor.kind local (the provider runs the batch)")
        if self.executor.kind == "ray" and self.teacher.backend == "import":
            raise ValueError("executor.kind ray generates on engine replicas; teacher.backend import reads existing "
                             "completions: run it with executor.kind local")
        c = self.curation
        if c.decontaminate and not c.eval_sets and not any(t.source == "paper" for t in self.tasks.items):
            raise ValueError("curation.decontaminate: nothing to compare against; it checks the test splits of the "
                             "recipe's paper tasks and curation.eval_sets, and there are neither (add an eval set)")
        if self.sampling.max_thinking_tokens is not None and not self.teacher.reasoning_parser:
            raise ValueError("sampling.max_thinking_tokens needs teacher.reasoning_parser (the parser knows where "
                             "thinking ends); without one, sampling.max_tokens bounds the whole completion")
        return self

    def resolve_path(self, path: str | None) -> Path | None:
        return resolve_recipe_path(self.base_dir, path)

    @property
    def run_dir(self) -> Path:
        return self.resolve_path(self.work_dir) / self.name

    @property
    def dataset_name(self) -> str:
        return self.store.name or self.name


def format_validation_error(exc: ValidationError, source: str, schema_file: str = "recipe.schema.json") -> str:
    """One line per problem, each naming the field path, e.g. `recipe.yaml: sampling.n: Input should be ...`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field (check the spelling; see schemas/{schema_file})"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, source: str, base_dir: str | Path | None, *, kind: str = "recipe",
                schema_file: str = "recipe.schema.json") -> M:
    """Validate parsed YAML against a recipe model; errors name the source and the dotted field path."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a {kind} must be a YAML mapping, found {type(data).__name__}")
    try:
        obj = model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source, schema_file)) from None
    obj.base_dir = str(base_dir) if base_dir is not None else None
    return obj


# YAML 1.1 reads these plain words as booleans (`seed: yes` became 1); only true/false are booleans here.
_YAML11_BOOL = re.compile(r"^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$")
_BOOL_TAG, _STR_TAG, _MERGE_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
MAX_YAML_NODES = 100_000  # a recipe has hundreds of nodes; aliases may not expand past this (billion laughs)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose implicit booleans are only true/false (any case); `read_yaml` checks the node graph."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_StrictLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _check_yaml_nodes(root: yaml.Node, path: Path) -> None:
    """Refuse what would load as something the author did not write, before anything is constructed.

    Duplicate keys (the second silently won), YAML 1.1 booleans (yes/no/on/off), and aliases that expand past
    MAX_YAML_NODES or refer to themselves. Each unique node is visited once, so a bomb costs its file size.
    """
    sizes: dict[int, int] = {}

    def line(node: yaml.Node) -> int:
        return node.start_mark.line + 1

    def visit(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:
                raise RecipeError(f"{path}: line {line(node)}: an alias refers to the node that holds it "
                                  "(a recursive structure); recipes are plain trees")
            return sizes[key]
        sizes[key] = -1
        total = 1
        if isinstance(node, yaml.ScalarNode):
            if node.style is None and node.tag == _STR_TAG and _YAML11_BOOL.match(node.value):
                raise RecipeError(f"{path}: line {line(node)}, column {node.start_mark.column + 1}: "
                                  f"{node.value!r} is refused: YAML 1.1 reads it as a boolean, YAML 1.2 as text; "
                                  f"write true or false, or quote it ('{node.value}') for text")
        elif isinstance(node, yaml.SequenceNode):
            total += sum(visit(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE_TAG:
                    if k.value in seen:
                        raise RecipeError(f"{path}: line {line(k)}: duplicate key {k.value!r} (first on line "
                                          f"{seen[k.value]}); YAML would silently keep only the last one")
                    seen[k.value] = line(k)
                total += visit(k) + visit(v)
        if total > MAX_YAML_NODES:
            raise RecipeError(f"{path}: line {line(node)}: aliases expand to more than {MAX_YAML_NODES:,} values "
                              "(an alias bomb?); write the recipe out without nested aliases")
        sizes[key] = total
        return total

    visit(root)


def read_yaml(path: str | Path, kind: str = "recipe") -> Any:
    """Read a YAML file strictly; a missing file, non-UTF-8 bytes or broken YAML raise naming the file (and line).

    Strict: duplicate keys, YAML 1.1 booleans (yes/no/on/off) and alias bombs are errors (see `_check_yaml_nodes`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {kind} not found")
    try:
        loader = _StrictLoader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_yaml_nodes(node, path)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise RecipeError(f"{path}: nested too deeply to be a {kind}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None


