"""Student training: a dataset version's `rows` table -> a fine-tuned model folder with a model card.

Input: the rows table (schemas/rows.table.json) of one dataset version, read through `builder.student.read_dataset`,
in a student format of `builder.prompts`. Output: under `recipe.output_dir`, the model (LoRA merged in) and tokenizer,
README.md (model card naming the dataset version and its content hash), train_log.jsonl (one line per logged step)
and checkpoints/checkpoint-N/ (HF Trainer's, plus our settings file).

Decoder students train with TRL's `SFTTrainer`, encoder-decoder students (T5) with transformers' `Seq2SeqTrainer`;
both run on one device (`rationale train`) or many (`accelerate launch -m builder.train`). We tokenise the rows
ourselves, into TRL's prompt-completion shape (`input_ids` + `completion_mask`): the prompt ids are
`builder.prompts.student_prompt_ids`, the ids the student is evaluated with, and every completion ends in EOS; TRL
then builds the completion-only labels, cuts at `max_length`, packs when asked. What stays ours: the settings file
that refuses to resume a checkpoint of other settings, train_log.jsonl, the progress bar, the card and the evaluation.

The recipe's `training:` section reaches TRL's `SFTConfig` key for key (`trainer_args`), but for the keys
rationale-builder sets itself (`builder.train_recipe.OWNED_KEYS`). The trainer classes and callbacks live in
`builder.trainer`, which imports transformers and TRL at its top; this module imports it when it builds a trainer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from builder.errors import BuilderError
from builder.prompts import (
    STUDENT_FORMAT_DOCS,
    chat_completion_text,
    r1_completion_text,
    student_prompt_ids,
    student_target,
)
from builder.student import DatasetVersion, read_dataset, resolve_student
from builder.train_recipe import SFT_ONLY_KEYS, TrainingSpec, TrainRecipe, trl_default

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHECKPOINT_DIR = "checkpoints"
TRAIN_LOG = "train_log.jsonl"
SETTINGS_FILE = "rationale_settings.json"  # in each checkpoint-N/, written last: a checkpoint without it is partial


# ------------------------------------------------------------------ encoding
def encode_example(tokenizer: Any, question: str, completion: str, fmt: str,
                   max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one row in student format `fmt`; labels are -100 on prompt tokens so only the
    completion carries loss.

    The prompt ids are `builder.prompts.student_prompt_ids`, the ones the student is evaluated with. ft_cot: then the
    row's completion + EOS, tokenised apart so the boundary is exact. chat: the assistant turn of the chat template
    (its end-of-turn token ends the completion). r1: the chat template's generation prompt, then the row's completion
    as written (the R1-distill `<think>` trace and the answer text, which the rows already hold) + EOS. seq2seq:
    input_ids is the encoder input, labels the whole target (ending in EOS). Cut at max_length.
    """
    if fmt == "seq2seq":
        enc = student_prompt_ids(tokenizer, question, fmt, max_length=max_length)
        tgt = tokenizer(text_target=student_target(completion), add_special_tokens=True)["input_ids"]
        if not tgt or tgt[-1] != tokenizer.eos_token_id:  # T5 tokenizers append EOS; make sure every target ends
            tgt = tgt + [tokenizer.eos_token_id]
        return enc, tgt[:max_length]
    p_ids = student_prompt_ids(tokenizer, question, fmt)
    if fmt == "chat":
        _, c_text = chat_completion_text(tokenizer, question, completion)
        c_ids = tokenizer(c_text, add_special_tokens=False)["input_ids"]
    elif fmt == "r1":
        _, c_text = r1_completion_text(tokenizer, question, completion)
        c_ids = tokenizer(c_text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    else:
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + c_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(p_ids) + c_ids)[:max_length]
    return ids, labels


def encode_dataset(tokenizer: Any, rows: pl.DataFrame, fmt: str, max_length: int) -> Any:
    """The rows as a `datasets.Dataset` the trainers read: TRL's tokenised prompt-completion shape (`input_ids`,
    `completion_mask`) for decoder students, (`input_ids`, `labels`) for seq2seq. Rows whose completion is cut
    away entirely are an error naming the rows (TRL would drop them silently)."""
    import datasets

    examples = [encode_example(tokenizer, q, c, fmt, max_length)
                for q, c in zip(rows["question"].to_list(), rows["completion"].to_list(), strict=True)]
    if fmt == "seq2seq":
        return datasets.Dataset.from_dict({"input_ids": [e[0] for e in examples], "labels": [e[1] for e in examples]})
    empty = [i for i, (_, lab) in enumerate(examples) if all(t == IGNORE_INDEX for t in lab)]
    if empty:
        raise BuilderError(f"rows {empty[:5]}: the prompt alone fills max_length={max_length}; raise "
                           "training.max_length or drop long questions")
    cut = sum(len(ids) >= max_length for ids, _ in examples)
    if cut:
        log.warning("%d of %d rows were cut at max_length=%d", cut, len(examples), max_length)
    return datasets.Dataset.from_dict({
        "input_ids": [ids for ids, _ in examples],
        "completion_mask": [[int(t != IGNORE_INDEX) for t in lab] for _, lab in examples]})


# ------------------------------------------------------------------ checkpoints
def _checkpoints(out: Path) -> list[Path]:
    """checkpoint-N folders, oldest first (by N)."""
    root = out / CHECKPOINT_DIR
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint (one whose settings file was written, after HF's files)."""
    done = [p for p in _checkpoints(out) if (p / SETTINGS_FILE).is_file()]
    return done[-1] if done else None


def write_checkpoint_settings(ckpt: Path, settings: dict[str, Any]) -> None:
    """Our settings file, written last and atomically: its presence marks checkpoint-N complete."""
    tmp = ckpt / f".{SETTINGS_FILE}.tmp"
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, ckpt / SETTINGS_FILE)


def rotate_checkpoints(out: Path, keep: int | None) -> None:
    """Keep the newest `keep` complete checkpoints; drop partial ones older than the newest complete one."""
    complete = [p for p in _checkpoints(out) if (p / SETTINGS_FILE).is_file()]
    if not complete:
        return
    newest = int(complete[-1].name.split("-")[-1])
    partial = [p for p in _checkpoints(out) if not (p / SETTINGS_FILE).is_file()
               and int(p.name.split("-")[-1]) < newest]
    for old in (complete[:-keep] if keep else []) + partial:
        shutil.rmtree(old, ignore_errors=True)


# Recipe keys (dotted: section.key) that a resumed run may change: they decide only when the run logs, saves and
# reports, where it writes or reads from, what the card says and what happens after training; none changes a weight.
# Every other recipe key, including any added later, is part of the checkpoint's settings and must match.
RESUME_MAY_CHANGE = frozenset({
    "name", "description", "output_dir", "resume", "eval",  # card text, starting over, the evaluation afterwards
    "dataset.ref", "dataset.root", "dataset.path", "dataset.hub",  # where the version is read: compared by what it
    # is instead ("dataset" NAME@VERSION and "content_hash", with dataset.tasks and dataset.limit and the examples)
    "training.logging_steps", "training.report_to",  # logging and reporting cadence
    "training.save_steps", "training.save_total_limit",  # saving cadence
    "training.dataloader_num_workers",  # loader processes only fetch: the sampler stays in the main process and
    # collation is deterministic, so the batches are the same ones
    # TRL's fields beyond TrainingSpec's: when and how the run logs, reports and saves, how the loader fetches
    "training.logging_strategy", "training.logging_first_step", "training.logging_nan_inf_filter",
    "training.log_level", "training.log_level_replica", "training.log_on_each_node", "training.skip_memory_metrics",
    "training.run_name", "training.project", "training.trackio_space_id", "training.trackio_bucket_id",
    "training.trackio_static_space_id", "training.save_strategy", "training.save_on_each_node",
    "training.dataloader_pin_memory", "training.dataloader_persistent_workers", "training.dataloader_prefetch_factor",
    "training.ddp_timeout",
})
SETTINGS_VERSION = 2  # version 1 (no "settings_version" key): the flat file of 926bc94 and before
_LORA_KEYS = ("model.lora_r", "model.lora_alpha", "model.lora_dropout", "model.lora_target_modules")
# Settings a version-2 file may lack because they were added to the recipe after it was written: the value every
# run had before the key existed. Only keys whose old behaviour is certain belong here; any other missing key is
# refused by name.
ADDED_SETTINGS: dict[str, Any] = {}
# The keys of the version-1 file and their names now; everything else it lacks was not recorded.
_V1_KEYS = {"model": "model.model_name_or_path", "use_peft": "model.use_peft", "lora_r": "model.lora_r",
            **{k: f"training.{k}" for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                             "max_steps", "num_train_epochs", "max_length", "packing", "seed")}}
_NOT_RECORDED = object()


def _recorded_settings(found: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's settings file under today's key names, with what can be known of the keys it lacks."""
    version = found.pop("settings_version", 1)
    if version == 1:
        found = {_V1_KEYS.get(k, k): v for k, v in found.items()}
        added: dict[str, Any] = {}
    else:
        added = ADDED_SETTINGS
    if found.get("model.use_peft") is False:  # a run without adapters: its LoRA settings were none (run_settings)
        added = {**{k: None for k in _LORA_KEYS}, **added}
    return {**added, **found}


def _trl_default(key: str) -> Any:
    """TRL's default of a dotted `training.<field>` key that TrainingSpec does not declare (a recipe or settings file
    without the key trained with it); _NOT_RECORDED for every other key."""
    section, _, name = key.partition(".")
    if section != "training" or name in TrainingSpec.model_fields:
        return _NOT_RECORDED
    try:
        return trl_default(name)
    except KeyError:  # not a field of TRL's config (any more): its value is unknown
        return _NOT_RECORDED


def check_checkpoint_settings(ckpt: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written with other settings: any recipe setting that changes the training
    trajectory (all but RESUME_MAY_CHANGE), the dataset version and content hash, the world size. The error names
    the first differing key with both values; a key the checkpoint did not record (an older file) is refused too,
    since its value there is unknown, but for TRL's fields beyond TrainingSpec's: one a side lacks is TRL's default
    there (the settings file records them only when they differ from it)."""
    path = ckpt / SETTINGS_FILE
    found = _recorded_settings(json.loads(path.read_text()))
    now = json.loads(json.dumps(settings))  # compare as written: tuples as lists, keys as strings
    now.pop("settings_version", None)
    defaults = {k: d for k in {*found, *now} if (d := _trl_default(k)) is not _NOT_RECORDED}
    # a difference the checkpoint recorded first: it is certain, an unrecorded key only unknown
    keys = [*now, *sorted(k for k in defaults if k not in now)]
    changed = sorted((k for k in keys if found.get(k, defaults.get(k, _NOT_RECORDED)) != now.get(k, defaults.get(k))),
                     key=lambda k: k not in found and k not in defaults)
    if not changed:
        return
    key = changed[0]

    def shown(side: dict[str, Any]) -> str:
        return repr(side[key]) if key in side else f"{defaults[key]!r} (TRL's default)"

    there = found.get(key, defaults.get(key, _NOT_RECORDED))
    first = (f"{key}: not recorded there (a checkpoint of an older rationale-builder; its value is unknown), "
             f"{now[key]!r} now" if there is _NOT_RECORDED else f"{key}: {shown(found)} there, {shown(now)} now")
    others = changed[1:]
    listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
    more = f"; {len(others)} more differ: {listed}" if others else ""
    raise BuilderError(f"{path}: checkpoint was written with other settings ({first}{more}); resuming would go on "
                       "from its weights and optimiser state under the new ones. Use a new output_dir, or start over "
                       "with resume: false (rationale train --no-resume)")


def run_settings(recipe: TrainRecipe, data: DatasetVersion, n_examples: int, world_size: int) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: the same data (version, content hash, task
    filter, limit, examples), in the same order and batches (world size), and every other recipe setting that
    changes the trajectory (model, format, training: all recipe keys but RESUME_MAY_CHANGE), under their dotted
    recipe names. LoRA settings are None when the run trains no adapters (they change nothing then)."""
    flat: dict[str, Any] = {}
    for section, value in recipe.model_dump().items():
        if section in RESUME_MAY_CHANGE:  # a whole section (eval)
            continue
        items = ({f"{section}.{k}": v for k, v in value.items()} if isinstance(value, dict)
                 else {section: value})
        flat.update({k: v for k, v in items.items() if k not in RESUME_MAY_CHANGE})
    if not recipe.model.use_peft:
        flat.update(dict.fromkeys(_LORA_KEYS))
    for key in [f"training.{k}" for k in recipe.training.trl_keys]:  # at TRL's default: the same run as without
        if key in flat and json.loads(json.dumps(flat[key])) == _trl_default(key):
            del flat[key]
    return {"settings_version": SETTINGS_VERSION, "dataset": data.ref, "content_hash": data.content_hash,
            "examples": n_examples, **flat, "world_size": world_size}


# ------------------------------------------------------------------ model
def load_student(recipe: TrainRecipe, model_ref: str) -> tuple[Any, Any]:
    """The student (float32 master weights unless model.dtype says otherwise) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    m = recipe.model
    kw = {"revision": m.model_revision, "trust_remote_code": m.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(model_ref, **kw)
    if tokenizer.eos_token_id is None:
        raise BuilderError(f"student {model_ref}: tokenizer has no EOS token; every training example ends on EOS")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # pads are masked out, so reusing EOS is safe
    dtype = getattr(torch, m.dtype) if m.dtype not in (None, "auto") else (m.dtype or torch.float32)
    cls = AutoModelForSeq2SeqLM if recipe.format == "seq2seq" else AutoModelForCausalLM
    extra = {"attn_implementation": m.attn_implementation} if m.attn_implementation else {}
    model = cls.from_pretrained(model_ref, dtype=dtype, **kw, **extra)
    return model, tokenizer


def lora_config(recipe: TrainRecipe) -> Any:
    from peft import LoraConfig

    m = recipe.model
    return LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=m.lora_target_modules,
                      task_type="SEQ_2_SEQ_LM" if recipe.format == "seq2seq" else "CAUSAL_LM")


def trainer_args(recipe: TrainRecipe, out: Path, *, cpu: bool = False) -> Any:
    """SFTConfig (decoder students) or Seq2SeqTrainingArguments (seq2seq) from the recipe's `training:` section, key
    for key (TrainingSpec's fields and every other TRL field the recipe gives). What we set ourselves (the keys of
    `train_recipe.OWNED_KEYS`, refused in a recipe): where checkpoints go, no HF rotation (we rotate once our settings
    file is written), no tqdm, token counting, our token columns, completion-only loss, and the CPU when there is no
    GPU (bf16 autocast on CPU needs it said); pinned loader memory only on GPU unless the recipe says.

    Raises:
        BuilderError: the config refuses a combination of settings (e.g. load_best_model_at_end without an eval
            strategy); `prepare` builds it before any data or model is loaded.
    """
    t = recipe.training
    passed = t.model_dump(exclude={"max_steps", "max_grad_norm", "report_to", "save_total_limit", *SFT_ONLY_KEYS})
    common = {"dataloader_pin_memory": not cpu, **passed, "output_dir": str(out / CHECKPOINT_DIR),
              "max_steps": t.max_steps or -1, "max_grad_norm": t.max_grad_norm or 0.0,
              "report_to": t.report_to or "none", "save_total_limit": None, "disable_tqdm": True,
              "include_num_input_tokens_seen": "non_padding", "remove_unused_columns": False, "use_cpu": cpu}
    if recipe.format == "seq2seq":
        from transformers import Seq2SeqTrainingArguments as config
    else:
        from trl import SFTConfig as config

        common.update(max_length=t.max_length, packing=t.packing, padding_free=t.padding_free,
                      completion_only_loss=True)
    try:
        return config(**common)
    except (TypeError, ValueError) as exc:  # __post_init__'s checks of the settings together
        raise BuilderError(f"training: {config.__name__} refuses these settings: {exc}") from None


# ------------------------------------------------------------------ trainer and callbacks (builder/trainer.py)
def callbacks(recipe: TrainRecipe, result: TrainResult) -> list[Any]:
    """train_log.jsonl and the progress bar (main process only). tests/kill_points.py wraps this function."""
    from builder.trainer import Progress, TrainLog

    return [TrainLog(recipe.out / TRAIN_LOG, result.losses), Progress()]


def checkpoint_hook(settings: dict[str, Any], keep: int | None) -> Callable[[Path, int], None]:
    """What the trainer calls once HF's files of checkpoint-N are written: our settings file (last: it marks the
    checkpoint complete; tests/kill_points.py wraps `write_checkpoint_settings`), then the rotation."""

    def on_checkpoint(ckpt: Path, step: int) -> None:
        write_checkpoint_settings(ckpt, {**settings, "step": step})
        rotate_checkpoints(ckpt.parent.parent, keep)

    return on_checkpoint


# ------------------------------------------------------------------ main
@dataclass
class TrainResult:
    output_dir: Path
    steps: int  # optimiser steps of the whole run (resumed ones included)
    resumed_from: int  # 0 for a fresh run
    losses: list[float] = field(default_factory=list)  # per logged step, this invocation only
    tokens: int = 0  # non-padding input tokens, this invocation
    seconds: float = 0.0
    dataset_ref: str = ""
    content_hash: str = ""
    eval_report: dict[str, Any] | None = None
    main_process: bool = True

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass
class Prepared:
    """A trainer ready to train (tests read its dataset and collator), and what main needs around it."""

    trainer: Any
    data: DatasetVersion
    model_ref: str
    resume_from: Path | None
    result: TrainResult


def prepare(recipe: TrainRecipe) -> Prepared:
    """Read the version, load the student, encode the rows, find the checkpoint to resume, build the trainer.

    Raises:
        StoreError: the dataset version is missing.
        BuilderError: a checkpoint in output_dir/checkpoints belongs to other settings, or rows do not fit.
    """
    import datasets
    import torch
    from transformers import PrinterCallback, set_seed
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()  # the rich bar is the progress; stderr stays readable
    hf_logging.disable_progress_bar()
    t = recipe.training
    out = recipe.out
    set_seed(t.seed)
    args = trainer_args(recipe, out, cpu=not torch.cuda.is_available())  # first: a bad setting loads nothing
    data = read_dataset(recipe.dataset, recipe)
    model_ref = resolve_student(recipe.model.model_name_or_path, recipe)
    model, tokenizer = load_student(recipe, model_ref)
    seq2seq = recipe.format == "seq2seq"
    dataset = encode_dataset(tokenizer, data.rows, recipe.format, t.max_length)
    settings = run_settings(recipe, data, len(dataset), args.world_size)

    ckpt = latest_checkpoint(out) if recipe.resume else None
    if ckpt is not None:
        check_checkpoint_settings(ckpt, settings)
        log.info("resuming from %s", ckpt)
    result = TrainResult(out, 0, int(ckpt.name.split("-")[-1]) if ckpt else 0, dataset_ref=data.ref,
                         content_hash=data.content_hash, main_process=args.should_save)
    if args.should_save:  # only now: a run that fails to load its data or model leaves no folder
        out.mkdir(parents=True, exist_ok=True)
        if not recipe.resume and (out / CHECKPOINT_DIR).exists():
            shutil.rmtree(out / CHECKPOINT_DIR)  # starting over: old checkpoints would mix into the rotation
        _truncate_log(out / TRAIN_LOG, result.resumed_from)

    from builder.trainer import trainer_class

    kw: dict[str, Any] = {"model": model, "args": args, "train_dataset": dataset, "processing_class": tokenizer,
                          "callbacks": callbacks(recipe, result),
                          "on_checkpoint": checkpoint_hook(settings, t.save_total_limit)}
    if seq2seq:
        from transformers import DataCollatorForSeq2Seq

        if recipe.model.use_peft:
            from peft import get_peft_model

            kw["model"] = get_peft_model(model, lora_config(recipe))
        kw["data_collator"] = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=IGNORE_INDEX)
    elif recipe.model.use_peft:
        kw["peft_config"] = lora_config(recipe)
    trainer = trainer_class(seq2seq)(**kw)
    trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
    return Prepared(trainer, data, model_ref, ckpt, result)


def main(recipe: TrainRecipe, *, evaluate: bool | None = None) -> TrainResult:
    """Train the student a recipe names, save it with a model card, then evaluate it if the recipe says so.

    Under `accelerate launch` every process trains; only the main one saves the model, writes the card and
    evaluates.

    Args:
        recipe: the validated training recipe.
        evaluate: override `recipe.eval.enabled`.

    Raises:
        StoreError: the dataset version is missing.
        BuilderError: a checkpoint in output_dir belongs to other settings, or rows do not fit max_length.
    """
    evaluating = recipe.eval.enabled if evaluate is None else evaluate
    if evaluating:
        _check_eval_installed(recipe)
    prep = prepare(recipe)
    trainer, result = prep.trainer, prep.result
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(prep.resume_from) if prep.resume_from else None)
    result.seconds = time.perf_counter() - t0
    result.steps = trainer.state.global_step
    result.tokens = int(trainer.state.num_input_tokens_seen) - _tokens_at(prep.resume_from)
    _save_model(trainer, recipe, prep.model_ref)
    if not result.main_process:
        return result
    write_model_card(recipe, result, prep.model_ref, prep.data)
    if evaluating:
        from builder.eval import evaluate_recipe

        result.eval_report = evaluate_recipe(recipe)
        write_model_card(recipe, result, prep.model_ref, prep.data)
    return result


def _check_eval_installed(recipe: TrainRecipe) -> None:
    """The evaluation after training runs on vLLM unless the recipe says hf: refuse before training, not after."""
    from builder.eval import eval_backend
    from builder.extras import VLLM_INSTALL, require

    if eval_backend(recipe.eval, recipe.format) == "vllm":
        require("vllm", "the evaluation after training (eval.backend: vllm)",
                f"{VLLM_INSTALL}; or set eval.backend: hf, or train with --no-eval")


def _tokens_at(ckpt: Path | None) -> int:
    if ckpt is None or not (ckpt / "trainer_state.json").is_file():
        return 0
    return int(json.loads((ckpt / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0))


def _truncate_log(path: Path, step: int) -> None:
    """Keep log lines up to `step` (a resumed run rewrites the steps after its checkpoint)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _save_model(trainer: Any, recipe: TrainRecipe, model_ref: str) -> None:
    """Save the final model in its original dtype with LoRA merged in, so vLLM and transformers load it as is.

    Sharded runs (FSDP, DeepSpeed ZeRO-3) gather the weights through `trainer.save_model` (every process takes
    part); the main process then merges the adapters of a LoRA run.
    """
    import torch
    from transformers import AutoConfig

    out = recipe.out
    base = AutoConfig.from_pretrained(model_ref, revision=recipe.model.model_revision)
    dtype = getattr(base, "dtype", None)
    dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype), torch.float32)
    # HF Trainer turns the KV cache off for training; the saved student generates, so it gets the base's setting
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = getattr(base, "use_cache", True)
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        trainer.save_model(str(out))
        if trainer.args.should_save and recipe.model.use_peft:
            from peft import AutoPeftModelForCausalLM, AutoPeftModelForSeq2SeqLM

            cls = AutoPeftModelForSeq2SeqLM if recipe.format == "seq2seq" else AutoPeftModelForCausalLM
            cls.from_pretrained(str(out), dtype=dtype).merge_and_unload().save_pretrained(out)
            for name in ("adapter_config.json", "adapter_model.safetensors"):
                (out / name).unlink(missing_ok=True)
        return
    if not trainer.args.should_save:
        return
    model = trainer.accelerator.unwrap_model(trainer.model)
    if recipe.model.use_peft:
        model = model.merge_and_unload()
    model.to(dtype).save_pretrained(out)
    trainer.processing_class.save_pretrained(out)


def write_model_card(recipe: TrainRecipe, result: TrainResult, model_ref: str, data: DatasetVersion) -> Path:
    """README.md of the output folder: what was trained on what (version + content hash), how, and how it scored."""
    t, m = recipe.training, recipe.model
    base = m.model_name_or_path
    header = ["---", f"base_model: {base}", "library_name: transformers",
              "tags: [fine-tune-cot, chain-of-thought, rationale-builder, trl, sft]"]
    if recipe.dataset.hub:
        header.append(f"datasets: [{recipe.dataset.hub.partition('@')[0]}]")
    header.append("---")
    tasks = sorted(set(data.rows["task"].to_list()))
    trainer = "transformers Seq2SeqTrainer" if recipe.format == "seq2seq" else "TRL SFTTrainer"
    lora = (f"r={m.lora_r}, alpha={m.lora_alpha}, modules {m.lora_target_modules} (merged)" if m.use_peft
            else "no (full)")
    lines = [
        f"# {recipe.name}", "",
        f"`{base}` fine-tuned with Fine-tune-CoT (Ho et al. 2022) by rationale-builder ({trainer}).", "",
        recipe.description, "",
        "## Training data", "",
        f"- dataset version: `{data.ref}`",
        f"- content hash: `{result.content_hash}`",
        f"- rows: {data.rows.height} ({', '.join(tasks)})",
        f"- teacher: {', '.join(sorted(set(data.rows['teacher'].to_list())))}", "",
        "## Format", "",
        f"`{recipe.format}`: {STUDENT_FORMAT_DOCS[recipe.format]}.", "",
        "## Training", "",
        "| setting | value |", "|---|---|",
        f"| optimiser | {t.optim}, lr {t.learning_rate:g}, {t.lr_scheduler_type} schedule, warm-up {t.warmup_steps}, "
        f"weight decay {t.weight_decay:g} |",
        f"| batch | {t.per_device_train_batch_size} per device x {t.gradient_accumulation_steps} accumulation |",
        f"| max length | {t.max_length}{' (packed)' if t.packing else ''} |",
        f"| steps | {result.steps} ({t.max_steps and 'max_steps' or f'{t.num_train_epochs:g} epochs'}) |",
        f"| LoRA | {lora} |",
        f"| bf16 | {t.bf16} |",
        f"| seed | {t.seed} |",
        f"| final loss | {result.losses[-1]:.4f} |" if result.losses else "| final loss | - |",
        f"| train time | {result.seconds:.0f} s, {result.tokens_per_s:,.0f} tokens/s |",
    ]
    if result.eval_report:
        from builder.eval import report_markdown

        lines += ["", "## Evaluation", "", report_markdown(result.eval_report, heading=False)]
    path = recipe.out / "README.md"
    path.write_text("\n".join(header + [""] + lines).rstrip() + "\n")
    return path


if __name__ == "__main__":  # `accelerate launch -m builder.train RECIPE [--no-eval ...]`: the CLI's train command
    from builder.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
