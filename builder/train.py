"""Student training: a dataset version's `rows` table -> a fine-tuned model folder with a model card.

Input: the rows table (schemas/rows.table.json) of one dataset version, read through `builder.student.read_dataset`,
in a student format of `builder.prompts`. Output: under
`recipe.output_dir`, the model (merged when LoRA was used) and tokenizer, README.md (model card naming the dataset
version and its content hash), train_log.jsonl (one line per optimiser step) and checkpoints/step-NNNNNN/.

A plain torch loop rather than HF Trainer: it is short, the loss is visibly completion-only (prompt tokens are
labelled -100 and the loss is a sum over completion tokens divided by their count in the optimiser step, so grad
accumulation weighs every token the same), and resume is exact: the data order is a pure function of (seed, epoch),
so a checkpoint only needs the step, the weights, the optimiser, the scheduler and the RNG state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
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
from builder.train_recipe import TrainRecipe

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHECKPOINT_DIR = "checkpoints"
TRAIN_LOG = "train_log.jsonl"


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


def encode_rows(tokenizer: Any, rows: pl.DataFrame, fmt: str, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Encode every row; rows whose completion is cut away entirely are an error naming the row."""
    examples = [encode_example(tokenizer, q, c, fmt, max_length)
                for q, c in zip(rows["question"].to_list(), rows["completion"].to_list(), strict=True)]
    if fmt != "seq2seq":
        empty = [i for i, (_, lab) in enumerate(examples) if all(t == IGNORE_INDEX for t in lab)]
        if empty:
            raise BuilderError(f"rows {empty[:5]}: the prompt alone fills max_length={max_length}; raise "
                               "hyperparameters.max_length or drop long questions")
    return examples


def collate(batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a micro-batch; pads are masked in attention and labelled -100."""
    import torch

    def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)

    ids = [b[0] for b in batch]
    labels = [b[1] for b in batch]
    return {"input_ids": pad(ids, pad_id), "attention_mask": pad([[1] * len(s) for s in ids], 0),
            "labels": pad(labels, IGNORE_INDEX)}


def completion_loss_sum(model: Any, batch: dict[str, Any], fmt: str) -> tuple[Any, int]:
    """Summed cross-entropy over completion tokens and their count (the caller divides once per step)."""
    import torch.nn.functional as F

    labels = batch["labels"]
    if fmt == "seq2seq":
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).logits
        target = labels
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int((target != IGNORE_INDEX).sum())


# ------------------------------------------------------------------ data order
@dataclass(frozen=True)
class Schedule:
    """Which rows each micro-batch holds: a pure function of (seed, epoch), so resume replays the same order."""

    n_rows: int
    batch_size: int
    grad_accum: int
    seed: int

    @property
    def micro_per_epoch(self) -> int:
        return math.ceil(self.n_rows / self.batch_size)

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        return max_steps or max(1, math.ceil(epochs * self.micro_per_epoch / self.grad_accum))

    def micro_batch(self, m: int) -> list[int]:
        import torch

        epoch, j = divmod(m, self.micro_per_epoch)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n_rows, generator=gen)
        return order[j * self.batch_size:(j + 1) * self.batch_size].tolist()

    def step_batches(self, step: int) -> Iterator[list[int]]:
        for m in range(step * self.grad_accum, (step + 1) * self.grad_accum):
            yield self.micro_batch(m)


# ------------------------------------------------------------------ checkpoints
def _ckpt_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted(p for p in (out / CHECKPOINT_DIR).glob("step-*") if (p / "state.json").is_file())
    return ckpts[-1] if ckpts else None


def _trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out: Path, step: int, model: Any, optimizer: Any, scheduler: Any, state: dict[str, Any],
                    keep: int) -> Path:
    """Write checkpoints/step-N/ to a temp folder, then rename: a crash never leaves half a checkpoint."""
    import torch

    root = out / CHECKPOINT_DIR
    dest = root / _ckpt_name(step)
    tmp = root / f".{dest.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(_trainable_state(model), tmp / "trainable.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    for old in sorted(p for p in root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def load_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, expect: dict[str, Any]) -> int:
    """Restore weights, optimiser, scheduler and RNG; return the step. Refuses a checkpoint of another setup."""
    import torch

    state = json.loads((path / "state.json").read_text())
    changed = {k: (state.get(k), v) for k, v in expect.items() if state.get(k) != v}
    if changed:
        raise BuilderError(f"{path}: checkpoint was written with other settings {changed} (found, recipe); use a new "
                           "output_dir or set checkpoints.resume: false")
    weights = torch.load(path / "trainable.pt", map_location="cpu")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise BuilderError(f"{path}/trainable.pt: missing weights {missing[:3]}; the checkpoint is of another model")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"])


# ------------------------------------------------------------------ model
def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_student(recipe: TrainRecipe, model_ref: str) -> tuple[Any, Any]:
    """Model in fp32 (master weights; bf16 is autocast) with LoRA adapters when asked, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    kw = {"revision": recipe.student.revision, "trust_remote_code": recipe.student.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(model_ref, **kw)
    if tokenizer.eos_token_id is None:
        raise BuilderError(f"student {model_ref}: tokenizer has no EOS token; the ft_cot format ends on EOS")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # pads are masked out, so reusing EOS is safe
    cls = AutoModelForSeq2SeqLM if recipe.format == "seq2seq" else AutoModelForCausalLM
    model = cls.from_pretrained(model_ref, dtype=torch.float32, **kw)
    if recipe.hyperparameters.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if recipe.lora is not None:
        from peft import LoraConfig, get_peft_model

        lora = recipe.lora
        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
            task_type="SEQ_2_SEQ_LM" if recipe.format == "seq2seq" else "CAUSAL_LM"))
    return model.to(_device()), tokenizer


def _lr_lambda(kind: str, warmup: int, total: int):
    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        frac = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - frac) if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    return fn


def _autocast(enabled: bool):
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device(), dtype=torch.bfloat16)


# ------------------------------------------------------------------ main
@dataclass
class TrainResult:
    output_dir: Path
    steps: int  # optimiser steps of the whole run (resumed ones included)
    resumed_from: int  # 0 for a fresh run
    losses: list[float] = field(default_factory=list)  # per step, this invocation only
    tokens: int = 0
    seconds: float = 0.0
    dataset_ref: str = ""
    content_hash: str = ""
    eval_report: dict[str, Any] | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _progress():
    from rich import progress as rp
    from rich.console import Console

    return rp.Progress(rp.TextColumn("[bold]train"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TextColumn("loss {task.fields[loss]}"), rp.TextColumn("{task.fields[tps]} tok/s"),
                       rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
                       console=Console(stderr=True))  # stdout is for the command's result


def main(recipe: TrainRecipe, *, evaluate: bool | None = None) -> TrainResult:
    """Train the student a recipe names, save it with a model card, then evaluate it if the recipe says so.

    Args:
        recipe: the validated training recipe.
        evaluate: override `recipe.eval.enabled`.

    Raises:
        StoreError: the dataset version is missing.
        BuilderError: a checkpoint in output_dir belongs to other settings, or rows do not fit max_length.
    """
    import torch

    hp = recipe.hyperparameters
    out = recipe.out
    torch.manual_seed(recipe.seed)
    data = read_dataset(recipe.dataset, recipe)
    model_ref = resolve_student(recipe.student.model, recipe)
    model, tokenizer = load_student(recipe, model_ref)
    examples = encode_rows(tokenizer, data.rows, recipe.format, hp.max_length)
    cut = sum(len(ids) >= hp.max_length for ids, _ in examples)
    if cut:
        log.warning("%d of %d rows were cut at max_length=%d", cut, len(examples), hp.max_length)

    sched = Schedule(len(examples), hp.batch_size, hp.grad_accum, recipe.seed)
    total = sched.total_steps(hp.epochs, hp.max_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, betas=(hp.adam_beta1, hp.adam_beta2),
                                  weight_decay=hp.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(hp.scheduler, hp.warmup_steps, total))
    expect = {"total_steps": total, "n_rows": len(examples), "batch_size": hp.batch_size,
              "grad_accum": hp.grad_accum, "seed": recipe.seed, "dataset": data.ref, "lora": recipe.lora is not None}

    start = 0
    ckpt = latest_checkpoint(out) if recipe.checkpoints.resume else None
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, optimizer, scheduler, expect)
        log.info("resuming from %s (step %d of %d)", ckpt, start, total)
    out.mkdir(parents=True, exist_ok=True)  # only now: a run that fails to load its data or model leaves no folder
    log_path = out / TRAIN_LOG
    _truncate_log(log_path, start)

    result = TrainResult(out, total, start, dataset_ref=data.ref, content_hash=data.content_hash)
    pad_id = tokenizer.pad_token_id
    use_bf16 = hp.bf16 and (_device() == "cuda" or torch.backends.mkldnn.is_available())
    model.train()
    t0 = time.perf_counter()
    with _progress() as progress, log_path.open("a") as log_fh:
        bar = progress.add_task("train", total=total, completed=start, loss="-", tps="-")
        for step in range(start, total):
            batches = [collate([examples[i] for i in idx], pad_id) for idx in sched.step_batches(step)]
            n_tok = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
            step_loss = 0.0
            for batch in batches:
                batch = {k: v.to(_device()) for k, v in batch.items()}
                with _autocast(use_bf16):
                    loss_sum, _ = completion_loss_sum(model, batch, recipe.format)
                (loss_sum / n_tok).backward()
                step_loss += float(loss_sum.detach()) / n_tok
                result.tokens += int(batch["attention_mask"].sum())
            if hp.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.losses.append(step_loss)
            elapsed = time.perf_counter() - t0
            log_fh.write(json.dumps({"step": step + 1, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                                     "tokens": result.tokens, "seconds": round(elapsed, 3)}) + "\n")
            log_fh.flush()
            progress.update(bar, advance=1, loss=f"{step_loss:.4f}", tps=f"{result.tokens / elapsed:,.0f}")
            if (step + 1) % recipe.checkpoints.save_steps == 0 or step + 1 == total:
                save_checkpoint(out, step + 1, model, optimizer, scheduler, expect, recipe.checkpoints.keep)
    result.seconds = time.perf_counter() - t0
    _save_model(model, tokenizer, out, model_ref, recipe)
    write_model_card(recipe, result, model_ref, data)
    if recipe.eval.enabled if evaluate is None else evaluate:
        from builder.eval import evaluate_recipe

        result.eval_report = evaluate_recipe(recipe)
        write_model_card(recipe, result, model_ref, data)
    return result


def _truncate_log(path: Path, step: int) -> None:
    """Keep log lines up to `step` (a resumed run rewrites the steps after its checkpoint)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _save_model(model: Any, tokenizer: Any, out: Path, model_ref: str, recipe: TrainRecipe) -> None:
    """Save the final model in its original dtype (LoRA merged in), so vLLM and transformers load it as is."""
    import torch
    from transformers import AutoConfig

    if recipe.lora is not None:
        model = model.merge_and_unload()
    dtype = getattr(AutoConfig.from_pretrained(model_ref, revision=recipe.student.revision), "dtype", None)
    dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype), torch.float32)
    model = model.to(dtype)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.to(torch.float32)


def write_model_card(recipe: TrainRecipe, result: TrainResult, model_ref: str, data: DatasetVersion) -> Path:
    """README.md of the output folder: what was trained on what (version + content hash), how, and how it scored."""
    hp = recipe.hyperparameters
    base = recipe.student.model
    header = ["---", f"base_model: {base}", "library_name: transformers",
              "tags: [fine-tune-cot, chain-of-thought, rationale-builder]"]
    if recipe.dataset.hub:
        header.append(f"datasets: [{recipe.dataset.hub.partition('@')[0]}]")
    header.append("---")
    tasks = sorted(set(data.rows["task"].to_list()))
    lines = [
        f"# {recipe.name}", "",
        f"`{base}` fine-tuned with Fine-tune-CoT (Ho et al. 2022) by rationale-builder.", "",
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
        f"| optimiser | AdamW, lr {hp.learning_rate:g}, {hp.scheduler} schedule, warm-up {hp.warmup_steps} |",
        f"| batch | {hp.batch_size} x {hp.grad_accum} accumulation |",
        f"| max length | {hp.max_length} |",
        f"| steps | {result.steps} ({hp.max_steps and 'max_steps' or f'{hp.epochs:g} epochs'}) |",
        f"| LoRA | {f'r={recipe.lora.r}, alpha={recipe.lora.alpha} (merged)' if recipe.lora else 'no (full)'} |",
        f"| bf16 | {hp.bf16} |",
        f"| seed | {recipe.seed} |",
        f"| final loss | {result.losses[-1]:.4f} |" if result.losses else "| final loss | - |",
        f"| train time | {result.seconds:.0f} s, {result.tokens_per_s:,.0f} tokens/s |",
    ]
    if result.eval_report:
        from builder.eval import report_markdown

        lines += ["", "## Evaluation", "", report_markdown(result.eval_report, heading=False)]
    path = recipe.out / "README.md"
    path.write_text("\n".join(header + [""] + lines).rstrip() + "\n")
    return path
