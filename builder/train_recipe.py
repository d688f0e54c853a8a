"""Training recipes: YAML naming a dataset version, a student (`model:`, TRL ModelConfig names), a format and trainer
settings (`training:`, TRL SFTConfig names); unknown keys are errors that name the key.

Kept apart from the build recipe (builder/recipe.py) because a student is trained many times on one version. The
JSON schema of `TrainRecipe` is exported to schemas/train_recipe.schema.json (`python -m builder.train_recipe`
rewrites it; a test fails when it is stale). Defaults are the paper's (Ho et al. 2022, Appendix: AdamW, lr 3e-4,
batch 8, max length 512, 20 epochs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from builder.paths import HUB_REF_PATTERN, repo_id_problem, resolve_recipe_path
from builder.prompts import STUDENT_COMPLETION, STUDENT_PROMPT, StudentFormat
from builder.readers import is_blank_text
from builder.recipe import parse_model, read_yaml


class _Strict(BaseModel):
    # allow_inf_nan=False: `.inf`/`.nan` are YAML floats, but no learning rate or epoch count is infinite.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------- data
class DatasetSpec(_Strict):
    """Which dataset version to train on: exactly one of `ref` (with `root`), `path` or `hub`."""

    ref: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_.-]+)?$",
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
# tokenisation and refuses packing / padding_free.
SFT_ONLY_KEYS = ("max_length", "packing", "padding_free")
# Names used under `training:` that are the old keys' spelling: say the TRL name instead of only "unknown field".
_TRAINING_ALIASES = {"batch_size": "per_device_train_batch_size", "grad_accum": "gradient_accumulation_steps",
                     "epochs": "num_train_epochs", "scheduler": "lr_scheduler_type", "keep": "save_total_limit"}


class TrainingSpec(_Strict):
    """Trainer settings under the field names of TRL's `SFTConfig` (transformers' `Seq2SeqTrainingArguments` for
    seq2seq students): a whitelisted subset, passed through as is. Defaults are the paper's (AdamW, lr 3e-4, batch 8,
    max length 512, 20 epochs, constant LR); `max_steps` overrides `num_train_epochs` when set."""

    learning_rate: float = Field(3e-4, gt=0, description="AdamW learning rate (paper: 3e-4).")
    per_device_train_batch_size: int = Field(8, ge=1, description="Examples per device per micro-batch (paper: 8).")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    max_length: int = Field(512, ge=8, description="Tokens per example; longer ones are cut (paper: 512).")
    num_train_epochs: float = Field(20, gt=0, description="Passes over the data (paper: 20).")
    max_steps: int | None = Field(None, ge=1, description="Optimiser steps; overrides num_train_epochs.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps (not with lr_scheduler_type constant).")
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

    @model_validator(mode="after")
    def _check(self) -> TrainingSpec:
        if self.lr_scheduler_type == "constant" and self.warmup_steps:
            raise ValueError("lr_scheduler_type constant ignores warmup_steps in transformers; use "
                             "constant_with_warmup (or warmup_steps: 0)")
        return self


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

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name (model card title).")
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
            if sft_only:
                raise ValueError(f"format seq2seq trains with transformers' Seq2SeqTrainer, which has no "
                                 f"{', '.join(sft_only)}; set it false")
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
