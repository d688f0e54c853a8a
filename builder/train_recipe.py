"""Training recipes: YAML naming a dataset version, a student (`model:`, TRL ModelConfig names), a format and trainer
settings (`training:`, any field of TRL's SFTConfig); unknown keys are errors that name the key.

`training:` is open: besides the fields TrainingSpec declares (the paper's defaults), any field of TRL's SFTConfig
is accepted under its own name, checked against TRL's dataclass (name, then type) when the recipe loads; trl (and
torch) is imported only then, when a recipe has such a key, so reading a recipe of declared keys (and
`rationale --help`) stays light. The fields rationale-builder sets itself (OWNED_KEYS: output_dir, the tokenisation
and loss masking, progress and token counting, the device, Hub pushes) are refused with the reason.

Kept apart from the build recipe (builder/recipe.py) because a student is trained many times on one version. The
JSON schema of `TrainRecipe` is exported to schemas/train_recipe.schema.json (`python -m builder.train_recipe`
rewrites it; a test fails when it is stale). Defaults are the paper's (Ho et al. 2022, Appendix: AdamW, lr 3e-4,
batch 8, max length 512, 20 epochs).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import json
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from builder.paths import HUB_REF_PATTERN, NAME, NAME_CHARS, NAME_PATTERN, repo_id_problem, resolve_recipe_path
from builder.prompts import STUDENT_COMPLETION, STUDENT_PROMPT, StudentFormat
from builder.readers import is_blank_text
from builder.recipe import parse_model, read_yaml


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf`/`.nan` are YAML floats, but no learning rate or epoch count is infinite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------- data
class DatasetSpec(_Strict):
    """Which dataset version to train on: exactly one of `ref` (with `root`), `path` or `hub`."""

    ref: str | None = Field(None, pattern=rf"^{NAME}(@[{NAME_CHARS}]+)?$",
                            description="Local version under `root`: NAME@vN, NAME@<hash prefix>, or NAME (latest).")
    root: str = Field("store", description="Store root holding <name>/<version>/ (used with `ref`).")
    path: str | None = Field(None, description="A version folder (holding data/ and manifest.json).")
    hub: str | None = Field(None, pattern=HUB_REF_PATTERN,
                            description="Hub dataset repo@tag (e.g. org/multiarith-cot@v1); pulled, then read.")
    tasks: list[str] | None = Field(None, description="Train only on rows of these tasks (default: all).")
    limit: int | None = Field(None, ge=1, description="Keep only the first N rows (smoke tests).")

    @field_validator("hub")
    @classmethod
    def _repo_id(cls, hub: str | None) -> str | None:
        problem = hub and repo_id_problem(hub.partition("@")[0])
        if problem:
            raise ValueError(f"{hub!r}: {problem}")
        return hub

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("ref", "path", "hub") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of dataset.ref, dataset.path, dataset.hub (found {given or 'none'})")
        return self


# ---------------------------------------------------------------- model (TRL ModelConfig names)
class ModelSpec(_Strict):
    """The student and its adapters, under the field names of TRL's `ModelConfig` (alignment-handbook style)."""

    model_name_or_path: str = Field(description="Hub id, local folder, or the local alias smollm2-135m-instruct.")
    model_revision: str | None = Field(None, description="Hub revision of the student weights.")
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = Field(
        None, description="dtype the weights are loaded in (null: float32 master weights; bf16 autocast is "
        "training.bf16).")
    attn_implementation: str | None = Field(None, description="eager, sdpa, flash_attention_2, ... (null: default).")
    use_peft: bool = Field(False, description="Train LoRA adapters instead of all weights (merged on save).")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | Literal["all-linear"] = Field("all-linear")

    @field_validator("model_name_or_path")
    @classmethod
    def _named(cls, model: str) -> str:
        if is_blank_text(model):
            raise ValueError("the student model is empty; give a Hub id or a local folder")
        return model


# ---------------------------------------------------------------- training (TRL SFTConfig names)
SchedulerName = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial",
                        "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay"]
# Keys of TrainingSpec that only SFTConfig has: a seq2seq student (Seq2SeqTrainer) uses max_length for its own
# tokenisation and refuses packing / padding_free (and any other SFTConfig-only key: `sft_only_keys()`).
SFT_ONLY_KEYS = ("max_length", "packing", "padding_free")
# Names used under `training:` that are the old keys' spelling: say the TRL name instead of only "unknown field".
_TRAINING_ALIASES = {"batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
                     "epochs": "num_train_epochs", "scheduler": "lr_scheduler_type", "keep": "save_total_limit"}


def _sft_config() -> type:
    from trl import SFTConfig

    return SFTConfig


# The trainer config whose fields `training:` takes, by trainer: (class name, its lazy import). Decoder students
# train with TRL's SFTTrainer; a DPO stage would add "dpo": ("DPOConfig", _dpo_config) and name its kind where
# TrainingSpec names "sft".
TRL_CONFIGS: dict[str, tuple[str, Callable[[], type]]] = {"sft": ("SFTConfig", _sft_config)}
_HUB_REASON = ("the trainer's output_dir is the checkpoints folder, not the saved student (LoRA merged, model card): "
               "upload the recipe's output_dir after training (huggingface-cli upload)")
_TOKENISED = ("rationale-builder tokenises the rows itself (format: decides the prompt, the completion and its EOS), "
              "so TRL's dataset preparation only sees token ids")
# Fields of TRL's config that rationale-builder sets itself: refused under `training:`, each saying why and where
# the setting lives instead. Every other field of the config is passed to it as written.
OWNED_KEYS: dict[str, str] = {
    "output_dir": "checkpoints go to <output_dir>/checkpoints: set the recipe's top-level output_dir",
    "resume_from_checkpoint": "the recipe's top-level resume: true continues from the newest checkpoint in "
                              "<output_dir>/checkpoints (rationale train --no-resume starts over)",
    "completion_only_loss": "always true: only the completion carries loss (Fine-tune-CoT); " + _TOKENISED,
    "assistant_only_loss": "the loss is on the completion only, as format: splits each row; " + _TOKENISED,
    "dataset_text_field": _TOKENISED,
    "dataset_kwargs": _TOKENISED,
    "eos_token": "every example ends in the student tokenizer's own EOS (chat, r1: its end of turn), added when "
                 "the rows are tokenised, the one evaluation stops at",
    "chat_template_path": "the rows are tokenised with the student tokenizer's own chat template (format: chat, "
                          "r1) before the trainer starts, and evaluated with it",
    "model_init_kwargs": "the student is loaded from model: (model_revision, dtype, attn_implementation, "
                         "trust_remote_code)",
    "trust_remote_code": "it is model.trust_remote_code",
    "remove_unused_columns": "always false: the trainer reads rationale-builder's token columns (input_ids, "
                             "completion_mask)",
    "disable_tqdm": "always true: rationale-builder draws its own progress bar on stderr",
    "include_num_input_tokens_seen": "always 'non_padding': train_log.jsonl's tokens and the tokens/s figures "
                                     "count them",
    "use_cpu": "chosen from the machine: the GPU when torch sees one, else the CPU (CUDA_VISIBLE_DEVICES= trains "
               "on the CPU)",
    "local_rank": "set by the launcher (accelerate launch, torchrun)",
    "save_only_model": "always false: a checkpoint holds the optimizer, scheduler and RNG states, so a resumed run "
                       "continues the interrupted one instead of restarting them",
    "ignore_data_skip": "always false: a resumed run skips the batches its checkpoint already trained on",
    "auto_find_batch_size": "the batch size is per_device_train_batch_size as written (the checkpoint settings and "
                            "the card record it; a batch size halved on an out-of-memory error would not be)",
    **dict.fromkeys(("push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
                     "hub_always_push", "hub_revision"), _HUB_REASON),
}
# Names of older TRL / transformers releases: the unknown-field error names today's field.
RENAMED_KEYS: dict[str, str] = {
    "warmup_ratio": "warmup_steps (transformers 5: a value below 1 is a fraction of the total steps)",
    "evaluation_strategy": "eval_strategy", "max_seq_length": "max_length", "torch_dtype": "model.dtype",
    "overwrite_output_dir": "resume: false (rationale train --no-resume)",
}
_NO_EVAL_DATASET = ("needs an eval dataset, and rationale train gives the trainer none: the student is evaluated "
                    "after training, with the curation graders (the recipe's eval: section)")


def _needs_eval_dataset(key: str, value: Any) -> bool:
    return ((key == "eval_strategy" and value != "no") or (key == "save_strategy" and value == "best")
            or (key in ("eval_on_start", "load_best_model_at_end") and value is True))


@functools.cache
def trl_config_class(kind: str = "sft") -> type:
    """TRL's config class of a trainer kind (imports trl, hence torch: only when a recipe uses a key of it)."""
    return TRL_CONFIGS[kind][1]()


@functools.cache
def trl_fields(kind: str = "sft") -> dict[str, dataclasses.Field]:
    """The fields of TRL's config of `kind` that a recipe can set (those its constructor takes)."""
    return {f.name: f for f in dataclasses.fields(trl_config_class(kind)) if f.init}


def trl_default(name: str, kind: str = "sft") -> Any:
    """The default of one field of TRL's config, as JSON writes it (what a recipe that omits the key trains with)."""
    f = trl_fields(kind)[name]
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return json.loads(json.dumps(value, default=str))


@functools.cache
def sft_only_keys() -> frozenset[str]:
    """SFTConfig fields that transformers' TrainingArguments (hence Seq2SeqTrainer) does not have."""
    from transformers import TrainingArguments

    return frozenset(trl_fields("sft")) - {f.name for f in dataclasses.fields(TrainingArguments)}


def _yaml_type(tp: Any) -> Any:
    """A field's type with its enums as the literal values YAML writes (strict validation wants enum members)."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Literal[tuple(m.value for m in tp)]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_yaml_type(a) for a in args)]  # noqa: UP007 (rebuilt from a tuple)
    if origin in (list, dict, tuple, set) and args:
        return origin[tuple(_yaml_type(a) for a in args)]
    return tp


@functools.cache
def _field_adapter(kind: str, name: str) -> tuple[TypeAdapter, str]:
    tp = typing.get_type_hints(trl_config_class(kind))[name]
    shown = tp.__name__ if isinstance(tp, type) else re.sub(r"(?:\w+\.)+(\w+)", r"\1", str(tp))
    config = ConfigDict(arbitrary_types_allowed=True, allow_inf_nan=False)
    return TypeAdapter(_yaml_type(tp), config=config), shown


# A number in exponent form without a dot (1e-8, 5E-1), which YAML 1.1 (PyYAML) reads as text.
_YAML11_EXPONENT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def trl_key_problems(given: dict[str, Any], kind: str = "sft") -> dict[str, str]:
    """key -> what is wrong with it, for the keys of `training:` that are not TrainingSpec's own fields: each must
    be a field of TRL's config of `kind` (unknown ones get a close match), not one rationale-builder sets itself
    (OWNED_KEYS), of the field's type (strict: YAML's `1` is no boolean), and none may need an eval dataset.
    A number YAML read as text (`1e-8`) is replaced in `given` by the float its field takes."""
    cls_name = TRL_CONFIGS[kind][0]
    problems: dict[str, str] = {}
    unchecked = [k for k in given if k not in OWNED_KEYS]
    for key in given:
        if key in OWNED_KEYS:
            problems[key] = f"set by rationale-builder, not the recipe: {OWNED_KEYS[key]}"
    if not unchecked:
        return problems
    try:
        fields = trl_fields(kind)
        import trl

        version = f"trl {trl.__version__}"
    except ImportError as exc:
        for key in unchecked:
            problems[key] = (f"checking it against TRL's {cls_name} needs trl ({exc}); install the train extra: "
                             "pip install 'rationale-builder[train]'")
        return problems
    for key in unchecked:
        value = given[key]
        if key not in fields:
            near = difflib.get_close_matches(key, [*fields, *TrainingSpec.model_fields], n=1, cutoff=0.75)
            hint = RENAMED_KEYS.get(key) or (near[0] if near else None)
            problems[key] = (f"unknown field: not a field of TRL's {cls_name} ({version})"
                             + (f"; did you mean {hint}?" if hint else "")
                             + " (check the spelling; see schemas/train_recipe.schema.json)")
            continue
        adapter, shown = _field_adapter(kind, key)
        if isinstance(value, str) and _YAML11_EXPONENT.fullmatch(value):
            try:  # YAML 1.1 reads 1e-8 as text: a number where the field takes one, as for the declared keys
                given[key] = value = adapter.validate_python(float(value), strict=True)
            except ValidationError:
                pass
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            msgs = []
            for err in exc.errors():
                at = ".".join(str(p) for p in err["loc"] if isinstance(p, int))  # list items, not union arms
                msgs.append(f"item {at}: {err['msg']}" if at else err["msg"])
            problems[key] = f"{' or '.join(dict.fromkeys(msgs))} ({cls_name}.{key} is {shown})"
            continue
        if _needs_eval_dataset(key, value):
            problems[key] = f"{json.dumps(value)} {_NO_EVAL_DATASET}"
    return problems


class TrainingSpec(_Strict):
    """Trainer settings: any field of TRL's `SFTConfig` (transformers' `Seq2SeqTrainingArguments` for seq2seq
    students), passed through under its own name. The fields declared here carry the paper's defaults (AdamW, lr
    3e-4, batch 8, max length 512, 20 epochs, constant LR) where TRL's differ, and are checked when the recipe loads;
    every other key must be a field of `SFTConfig`, of its type (checked against TRL's dataclass when the recipe
    loads), and not one that rationale-builder sets itself (OWNED_KEYS). `max_steps` overrides `num_train_epochs`."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, json_schema_extra={
        "additionalProperties": {"description": "Any other field of TRL's SFTConfig, under its own name and of "
                                 "its type (checked against the installed TRL when the recipe loads). Refused: "
                                 + ", ".join(OWNED_KEYS) + " (rationale-builder sets them); eval_strategy other "
                                 "than no (no eval dataset: the eval: section evaluates after training)."}})

    learning_rate: float = Field(3e-4, gt=0, description="AdamW learning rate (paper: 3e-4).")
    per_device_train_batch_size: int = Field(8, ge=1, description="Examples per device per micro-batch (paper: 8).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    max_length: int = Field(512, ge=8, description="Tokens per example; longer ones are cut (paper: 512).")
    num_train_epochs: float = Field(20, gt=0, description="Passes over the data (paper: 20).")
    max_steps: int | None = Field(None, ge=1, description="Optimiser steps; overrides num_train_epochs.")
    warmup_steps: float = Field(0, ge=0, description="Linear warm-up steps; a value below 1 is a fraction of "
                                      "the total steps (not with lr_scheduler_type constant).")
    lr_scheduler_type: SchedulerName = Field("constant", description="transformers scheduler (the paper: constant).")
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, ge=0, description="Gradient clipping; null or 0 disables it.")
    optim: str = Field("adamw_torch", description="transformers optimiser name (adamw_torch, adamw_torch_fused, ...).")
    bf16: bool = Field(False, description="bf16 autocast (weights stay as model.dtype says); CUDA or CPUs with bf16.")
    gradient_checkpointing: bool = False
    packing: bool = Field(False, description="Pack examples into max_length blocks (TRL; decoder students).")
    padding_free: bool = Field(False, description="Flatten each batch without padding (TRL; needs FlashAttention).")
    use_liger_kernel: bool = Field(False, description="Liger kernels (needs the liger-kernel package, CUDA).")
    save_steps: int = Field(100, ge=1, description="Write a checkpoint every N optimiser steps (and at the end).")
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept on disk (oldest removed; null: all).")
    logging_steps: int = Field(1, ge=1, description="A train_log.jsonl line (and report_to entry) every N steps.")
    report_to: list[str] = Field(default_factory=list, description="tensorboard, wandb, trackio, ... ([]: none).")
    seed: int = Field(42, description="Seeds model init of new heads, data order and dropout.")
    dataloader_num_workers: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [f"training.{k} is training.{_TRAINING_ALIASES[k]}" for k in data if k in _TRAINING_ALIASES]
            if old:
                raise ValueError("; ".join(old) + " (TRL's SFTConfig names)")
        return data

    @field_validator("warmup_steps")
    @classmethod
    def _whole_steps(cls, steps: float) -> float:
        return int(steps) if steps.is_integer() else steps  # 10 steps, not 10.0 (the card, the settings file)

    @model_validator(mode="wrap")
    @classmethod
    def _trl_keys(cls, data: Any, handler: Any) -> TrainingSpec:
        """The keys beyond the declared fields, checked against TRL's SFTConfig: each problem is its own error at
        training.<key>, so the message names the key."""
        spec = handler(data)
        problems = trl_key_problems(spec.model_extra) if spec.model_extra else {}
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, [
                InitErrorDetails(type=PydanticCustomError("trl_field", "{problem}", {"problem": problem}),
                                 loc=(key,), input=spec.model_extra[key]) for key, problem in problems.items()])
        return spec

    @model_validator(mode="after")
    def _check(self) -> TrainingSpec:
        if self.lr_scheduler_type == "constant" and self.warmup_steps:
            raise ValueError("lr_scheduler_type constant ignores warmup_steps in transformers; use "
                             "constant_with_warmup (or warmup_steps: 0)")
        return self

    @property
    def trl_keys(self) -> dict[str, Any]:
        """The keys given beyond the declared fields (each a checked field of TRL's config)."""
        return dict(self.model_extra or {})


# The keys of the recipe shape before issue 19, and where each lives now.
OLD_KEYS: dict[str, dict[str, str] | str] = {
    "student": {"model": "model.model_name_or_path", "revision": "model.model_revision",
                "trust_remote_code": "model.trust_remote_code"},
    "hyperparameters": {"batch_size": "training.per_device_train_batch_size",
                        "grad_accum": "training.gradient_accumulation_steps", "epochs": "training.num_train_epochs",
                        "scheduler": "training.lr_scheduler_type", "*": "training.{key}"},
    "lora": {"r": "model.lora_r (with model.use_peft: true)", "alpha": "model.lora_alpha",
             "dropout": "model.lora_dropout", "target_modules": "model.lora_target_modules"},
    "checkpoints": {"save_steps": "training.save_steps", "keep": "training.save_total_limit", "resume": "resume"},
    "seed": "training.seed",
}


def _old_key_problems(data: dict[str, Any]) -> list[str]:
    """"hyperparameters.batch_size is training.per_device_train_batch_size now", one per old key a recipe uses."""
    problems = []
    for section, moves in OLD_KEYS.items():
        if section not in data:
            continue
        if isinstance(moves, str):
            problems.append(f"{section} is {moves} now")
            continue
        given = data[section] if isinstance(data[section], dict) and data[section] else {next(iter(moves)): None}
        for key in given:
            new = moves.get(key) or moves.get("*", "").format(key=key) or f"(no {section}.{key} any more)"
            problems.append(f"{section}.{key} is {new} now")
    return problems


# ---------------------------------------------------------------- evaluation
class EvalSpec(_Strict):
    """How the trained model is evaluated (also the defaults of `rationale eval --recipe`)."""

    enabled: bool = Field(True, description="Evaluate right after training.")
    tasks: list[str] = Field(default_factory=list, description="Paper task keys (default: the dataset's tasks).")
    split: str = Field("test", description="Split of each task (paper splits).")
    benchmarks_dir: str | None = Field(None, description="Task files (default: $RATIONALE_BENCHMARKS_DIR).")
    limit: int | None = Field(None, ge=1, description="First N questions per task (smoke tests).")
    greedy: bool = Field(True, description="Greedy decoding, one answer per question.")
    self_consistency: list[PositiveInt] = Field(default_factory=list,
                                        description="k values for self-consistency (k samples, majority vote).")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature for self-consistency.")
    max_tokens: int = Field(256, ge=1, description="Generation cap per answer.")
    seed: int = 0
    answer_max_tokens: int = Field(32, ge=1, description="Answer-stage cap of the zero-shot(-CoT) baselines.")
    backend: Literal["vllm", "hf"] = Field("vllm", description="vLLM (decoder models) or transformers.generate "
                                           "(seq2seq models, or machines without vLLM).")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Extra vllm.LLM(...) arguments.")
    baselines: list[Literal["zero_shot", "zero_shot_cot"]] = Field(
        default_factory=list, description="Also evaluate the untrained student with these prompts (Kojima et al.).")
    baseline_format: Literal["raw", "chat"] = Field(
        "raw", description="Baseline prompts as raw 'Q: ..\nA:' text or through the chat template.")
    compare_to: str | None = Field(
        None, description="Paper student row shown beside the accuracy (gpt2-124m, gpt2-355m, gpt2-774m, "
        "flan-t5-small, ...); default: guessed from the student's name.")

    @field_validator("tasks")
    @classmethod
    def _paper_tasks(cls, tasks: list[str]) -> list[str]:
        # Checked when the recipe loads, not after training when evaluation first reads the task files.
        from builder.tasks import task_info

        for task in tasks:
            task_info(task)  # raises listing the valid names
        return tasks

    @field_validator("split")
    @classmethod
    def _paper_split(cls, split: str) -> str:
        if split not in ("train", "test", "all"):
            raise ValueError(f"split {split!r} is not train, test or all (the paper splits)")
        return split


# ---------------------------------------------------------------- the recipe
class TrainRecipe(_Strict):
    """A student recipe: dataset version + model (+ LoRA) + format + training settings -> model -> evaluation."""

    name: str = Field(pattern=NAME_PATTERN, description="Run name (model card title).")
    description: str = ""
    dataset: DatasetSpec
    model: ModelSpec
    format: StudentFormat = Field(
        "ft_cot", description=f"ft_cot: '{STUDENT_PROMPT}' -> '{STUDENT_COMPLETION}' + EOS; chat: the same pair "
        f"through the chat template; seq2seq: encoder input '{STUDENT_PROMPT}', "
        f"target '{STUDENT_COMPLETION.strip()}'; r1: reasoning datasets (R1-distill), the chat template's "
        "generation prompt, then the row's completion '<think>\\n{trace}\\n</think>\\n\\n{answer text}' + EOS.")
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resume: bool = Field(True, description="Continue from the newest checkpoint in output_dir/checkpoints (refused "
                         "when it was written with other settings).")
    output_dir: str = Field(description="Model, checkpoints, card and eval reports go here.")
    eval: EvalSpec = Field(default_factory=EvalSpec)
    base_dir: str | None = Field(None, exclude=True, description="Folder of the recipe file (set on load).")

    @model_validator(mode="before")
    @classmethod
    def _old_shape(cls, data: Any) -> Any:
        problems = _old_key_problems(data) if isinstance(data, dict) else []
        if problems:
            raise ValueError("; ".join(problems) + " (the recipe keys are TRL's ModelConfig and SFTConfig names; "
                             "see schemas/train_recipe.schema.json)")
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainRecipe:
        if self.format == "seq2seq" and self.eval.enabled and self.eval.backend == "vllm":
            raise ValueError("format seq2seq evaluates with eval.backend: hf (vLLM runs decoder-only students)")
        if self.format == "seq2seq":
            sft_only = [f"training.{k}" for k in ("packing", "padding_free") if getattr(self.training, k)]
            extra = self.training.trl_keys
            sft_only += [f"training.{k}" for k in (extra and sorted(set(extra) & sft_only_keys()))]
            if sft_only:
                raise ValueError(f"format seq2seq trains with transformers' Seq2SeqTrainer, which has no "
                                 f"{', '.join(sft_only)}; leave it out")
        return self

    def resolve_path(self, path: str | None) -> Path | None:
        return resolve_recipe_path(self.base_dir, path)

    @property
    def out(self) -> Path:
        return self.resolve_path(self.output_dir)


def parse_train_recipe(data: Any, source: str = "<train recipe>",
                       base_dir: str | Path | None = None) -> TrainRecipe:
    return parse_model(TrainRecipe, data, source, base_dir, kind="training recipe",
                       schema_file="train_recipe.schema.json")


def load_train_recipe(path: str | Path) -> TrainRecipe:
    """Read and validate a YAML training recipe.

    Raises:
        FileNotFoundError: no such file.
        RecipeError: non-UTF-8 bytes, broken YAML (with line) or invalid fields (with their dotted path).
    """
    path = Path(path)
    return parse_train_recipe(read_yaml(path, "training recipe"), str(path), path.resolve().parent)


def train_recipe_json_schema() -> str:
    return json.dumps(TrainRecipe.model_json_schema(), indent=2, sort_keys=True) + "\n"


def export_json_schema(path: str | Path | None = None) -> str:
    from builder.schemas import SCHEMA_DIR

    text = train_recipe_json_schema()
    Path(path or SCHEMA_DIR / "train_recipe.schema.json").write_text(text)
    return text


if __name__ == "__main__":
    export_json_schema()
