"""Training recipes: YAML naming a dataset version, a student, a format and hyperparameters (unknown keys are errors).

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


class StudentSpec(_Strict):
    model: str = Field(description="Hub id, local folder, or the local alias smollm2-135m-instruct.")
    revision: str | None = Field(None, description="Hub revision of the student weights.")
    trust_remote_code: bool = False

    @field_validator("model")
    @classmethod
    def _named(cls, model: str) -> str:
        if is_blank_text(model):
            raise ValueError("the student model is empty; give a Hub id or a local folder")
        return model


# ---------------------------------------------------------------- optimisation
class HyperParams(_Strict):
    """Optimiser and schedule. Defaults are the paper's; `max_steps` overrides `epochs` when set."""

    learning_rate: float = Field(3e-4, gt=0, description="AdamW learning rate (paper: 3e-4).")
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch (paper: 8).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    max_length: int = Field(512, ge=8, description="Tokens per example; longer ones are cut (paper: 512).")
    epochs: float = Field(20, gt=0, description="Passes over the data (paper: 20).")
    max_steps: int | None = Field(None, ge=1, description="Optimiser steps; overrides epochs.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="LR after warm-up (the paper keeps it constant).")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; null disables it.")
    bf16: bool = Field(False, description="bf16 autocast (weights stay fp32); on CUDA, or CPU with bf16 support.")
    gradient_checkpointing: bool = False


class LoraSpec(_Strict):
    """Low-rank adapters (peft). The saved model is merged, so vLLM loads it like any other."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear")


class CheckpointSpec(_Strict):
    save_steps: int = Field(100, ge=1, description="Write a checkpoint every N optimiser steps (and at the end).")
    keep: int = Field(2, ge=1, description="Checkpoints kept on disk (oldest removed).")
    resume: bool = Field(True, description="Continue from the newest checkpoint in output_dir when there is one.")


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
    """A student recipe: dataset version + student + format + hyperparameters (+ LoRA) -> model -> evaluation."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name (model card title).")
    description: str = ""
    dataset: DatasetSpec
    student: StudentSpec
    format: StudentFormat = Field(
        "ft_cot", description=f"ft_cot: '{STUDENT_PROMPT}' -> '{STUDENT_COMPLETION}' + EOS; chat: the same pair "
        f"through the chat template; seq2seq: encoder input '{STUDENT_PROMPT}', "
        f"target '{STUDENT_COMPLETION.strip()}'; r1: reasoning datasets (R1-distill), the chat template's "
        "generation prompt, then the row's completion '<think>\\n{trace}\\n</think>\\n\\n{answer text}' + EOS.")
    hyperparameters: HyperParams = Field(default_factory=HyperParams)
    lora: LoraSpec | None = Field(None, description="Train LoRA adapters instead of all weights.")
    seed: int = Field(42, description="Seeds model init of new heads, data order and dropout.")
    output_dir: str = Field(description="Model, checkpoints, card and eval reports go here.")
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    base_dir: str | None = Field(None, exclude=True, description="Folder of the recipe file (set on load).")

    @model_validator(mode="after")
    def _check(self) -> TrainRecipe:
        if self.format == "seq2seq" and self.eval.enabled and self.eval.backend == "vllm":
            raise ValueError("format seq2seq evaluates with eval.backend: hf (vLLM runs decoder-only students)")
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
