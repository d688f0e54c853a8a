"""builder.train and builder.train_recipe: recipes (TRL names), completion-only masking on the TRL path, loss, resume
after SIGKILL, the other-settings refusal, LoRA, seq2seq, card, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from builder.errors import BuilderError, RecipeError
from builder.train_recipe import load_train_recipe, parse_train_recipe, train_recipe_json_schema

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ fixtures
def _rows(teacher_completions_dir: Path, n: int) -> pl.DataFrame:
    """The first n correct MultiArith text-davinci-002 rationales as a `rows` table (short ones, to keep it fast),
    in the store's student formats."""
    from builder.prompts import student_completion_expr, student_messages_expr, student_prompt_expr
    from builder.tasks import make_qid

    src = pl.read_ndjson(teacher_completions_dir / "multiarith.jsonl").filter(pl.col("reference_correct"))
    src = (src.unique("question", keep="first", maintain_order=True)  # MultiArith repeats 20 questions
           .with_columns(pl.col("rationale").str.strip_chars()).sort(pl.col("rationale").str.len_chars()).head(n))
    return src.select(
        pl.col("question").map_batches(lambda s: pl.Series([make_qid("multiarith", q) for q in s]),
                                       return_dtype=pl.String).alias("qid"),
        pl.lit(0, pl.Int32).alias("sample_idx"), pl.lit("multiarith").alias("task"), "question", "rationale",
        pl.col("reference_pred").alias("answer"), "gold",
        student_prompt_expr(pl.col("question")).alias("prompt"),
        student_completion_expr(pl.col("rationale"), pl.col("reference_pred")).alias("completion"),
        student_messages_expr(pl.col("question"), pl.col("rationale"), pl.col("reference_pred")).alias("messages"),
        pl.lit(0, pl.Int64).alias("seed"), pl.lit("text-davinci-002").alias("teacher"),
    )


@pytest.fixture(scope="module")
def store_root(tmp_path_factory, teacher_completions_dir: Path) -> Path:
    """A real dataset version (store.write_version) of 16 MultiArith rows: tiny@v1."""
    from builder.store import write_version

    root = tmp_path_factory.mktemp("store")
    info = write_version(_rows(teacher_completions_dir, 16), root=root, name="tiny", recipe={"name": "tiny"})
    assert info.version == "v1"
    return root


def _recipe(tmp_path: Path, store_root: Path, model_dir: Path, **over) -> dict:
    data = {
        "name": "tiny-student",
        "dataset": {"ref": "tiny@v1", "root": str(store_root)},
        "model": {"model_name_or_path": str(model_dir)},
        "training": {"learning_rate": 3e-3, "per_device_train_batch_size": 4, "max_length": 192, "max_steps": 6,
                     "save_steps": 3, "save_total_limit": 5, "seed": 7},
        "output_dir": str(tmp_path / "out"),
        "eval": {"enabled": False},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


# ------------------------------------------------------------------ recipes and schema
def test_schema_file_is_not_stale():
    assert (ROOT / "schemas" / "train_recipe.schema.json").read_text() == train_recipe_json_schema()


RECIPES = sorted((ROOT / "recipes" / "train").rglob("*.yaml"))


def test_recipes_exist_for_paper_and_modern_setups():
    names = {p.relative_to(ROOT / "recipes" / "train").as_posix() for p in RECIPES}
    assert "multiarith/smollm2-135m-cpu.yaml" in names
    for student in ("gpt2-124m", "gpt2-355m", "gpt2-774m", "flan-t5-small", "flan-t5-base", "flan-t5-large"):
        for setup in ("d1", "diverse"):
            assert f"paper/{setup}/multiarith/{student}.yaml" in names
    assert any(n.startswith("modern/") for n in names)
    train_dir = ROOT / "recipes" / "train"
    assert "rationale train" in (train_dir / "README.md").read_text()
    for path in RECIPES:  # each recipe group (the first folder under recipes/train) documents its command
        readme = train_dir / path.relative_to(train_dir).parts[0] / "README.md"
        assert readme.is_file(), f"{path} has no README.md in its recipe folder"
        assert "rationale train" in readme.read_text()


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(ROOT / "recipes" / "train")) for p in RECIPES])
def test_every_recipe_loads(path: Path):
    recipe = load_train_recipe(path)
    assert recipe.out.is_absolute()
    if "flan-t5" in path.name:
        assert recipe.format == "seq2seq" and recipe.eval.backend == "hf"


def test_paper_defaults():
    r = parse_train_recipe({"name": "x", "dataset": {"ref": "d@v1"}, "model": {"model_name_or_path": "gpt2"},
                            "output_dir": "o"})
    t = r.training
    assert (t.learning_rate, t.per_device_train_batch_size, t.max_length, t.num_train_epochs) == (3e-4, 8, 512, 20)
    assert t.lr_scheduler_type == "constant" and r.format == "ft_cot" and not r.model.use_peft and r.resume


def test_recipe_keys_are_trl_and_transformers_fields():
    """`model:` keys are TRL ModelConfig fields, `training:` keys SFTConfig fields (and, but for the SFT-only ones,
    Seq2SeqTrainingArguments fields), and each reaches the trainer under its own name."""
    import dataclasses

    from transformers import Seq2SeqTrainingArguments
    from trl import ModelConfig, SFTConfig

    from builder.train import trainer_args
    from builder.train_recipe import SFT_ONLY_KEYS, ModelSpec, TrainingSpec

    def names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    # trust_remote_code moved from ModelConfig to SFTConfig in TRL 1.x; the recipe keeps it with the model
    assert set(ModelSpec.model_fields) - {"trust_remote_code"} <= names(ModelConfig)
    assert "trust_remote_code" in names(SFTConfig)
    assert set(TrainingSpec.model_fields) <= names(SFTConfig)
    assert set(TrainingSpec.model_fields) - set(SFT_ONLY_KEYS) <= names(Seq2SeqTrainingArguments)
    base = {"name": "x", "dataset": {"ref": "d@v1"}, "model": {"model_name_or_path": "gpt2"}, "output_dir": "o",
            "training": {"learning_rate": 1e-3, "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2,
                         "max_steps": 9, "lr_scheduler_type": "cosine", "weight_decay": 0.1, "seed": 5}}
    args = trainer_args(parse_train_recipe(base), Path("/tmp/o"), cpu=True)
    assert isinstance(args, SFTConfig) and args.completion_only_loss
    got = {k: getattr(args, k) for k in ("learning_rate", "per_device_train_batch_size",
                                         "gradient_accumulation_steps", "max_steps", "weight_decay", "seed")}
    assert got == {"learning_rate": 1e-3, "per_device_train_batch_size": 3, "gradient_accumulation_steps": 2,
                   "max_steps": 9, "weight_decay": 0.1, "seed": 5}
    assert args.lr_scheduler_type == "cosine" and args.max_length == 512 and args.output_dir == "/tmp/o/checkpoints"
    s2s = trainer_args(parse_train_recipe({**base, "format": "seq2seq", "eval": {"backend": "hf"}}), Path("/tmp/o"),
                       cpu=True)
    assert isinstance(s2s, Seq2SeqTrainingArguments) and s2s.per_device_train_batch_size == 3


@pytest.mark.parametrize(("data", "message"), [
    ({"training": {"lr": 1}}, "t.yaml: training.lr: unknown field"),
    ({"model": {"name": "g"}}, "t.yaml: model.name: unknown field"),
    ({"dataset": {"ref": "a@v1", "path": "x"}}, "exactly one of dataset.ref, dataset.path, dataset.hub"),
    ({"format": "gpt"}, "t.yaml: format: Input should be 'ft_cot', 'chat', 'seq2seq' or 'r1'"),
    ({"format": "seq2seq"}, "format seq2seq evaluates with eval.backend: hf"),
    ({"format": "seq2seq", "eval": {"backend": "hf"}, "training": {"packing": True}},
     "Seq2SeqTrainer, which has no training.packing"),
    ({"training": {"per_device_train_batch_size": 0}},
     "training.per_device_train_batch_size: Input should be greater than or equal"),
    ({"training": {"warmup_steps": 5}}, "lr_scheduler_type constant ignores warmup_steps"),
    ({"training": {"batch_size": 4}}, "training.batch_size is training.per_device_train_batch_size"),
    # the keys of the old recipe shape name their new place
    ({"hyperparameters": {"batch_size": 4, "learning_rate": 1e-3}},
     "hyperparameters.batch_size is training.per_device_train_batch_size now; "
     "hyperparameters.learning_rate is training.learning_rate now"),
    ({"student": {"model": "gpt2"}}, "student.model is model.model_name_or_path now"),
    ({"lora": {"r": 4}}, "lora.r is model.lora_r (with model.use_peft: true) now"),
    ({"checkpoints": {"keep": 2, "resume": False}},
     "checkpoints.keep is training.save_total_limit now; checkpoints.resume is resume now"),
    ({"seed": 3}, "seed is training.seed now"),
])
def test_recipe_errors_name_the_field(data: dict, message: str):
    base = {"name": "x", "dataset": {"ref": "d@v1"}, "model": {"model_name_or_path": "gpt2"}, "output_dir": "o"}
    for k, v in data.items():
        base[k] = {**base[k], **v} if isinstance(base.get(k), dict) else v
    with pytest.raises(RecipeError) as exc:
        parse_train_recipe(base, "t.yaml")
    assert message in str(exc.value)


# ------------------------------------------------------------------ masking
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_ft_cot_masking_is_completion_only(tokenizer):
    from builder.train import IGNORE_INDEX, encode_example

    question, completion = "Tom has 3 apples and buys 4 more. How many?", " 3 + 4 = 7. --> 7"
    prompt = f"{question} ###"  # the Fine-tune-CoT prompt, spelled out here as the spec
    ids, labels = encode_example(tokenizer, question, completion, "ft_cot", 512)
    p_ids = tokenizer(prompt)["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert ids == p_ids + c_ids + [tokenizer.eos_token_id]
    assert labels[:len(p_ids)] == [IGNORE_INDEX] * len(p_ids)
    assert labels[len(p_ids):] == c_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids[len(p_ids):]) == completion + tokenizer.eos_token
    # cut at max_length: the tail of the completion goes, the prompt mask stays
    ids_cut, labels_cut = encode_example(tokenizer, question, completion, "ft_cot", len(p_ids) + 2)
    assert ids_cut == ids[:len(p_ids) + 2] and labels_cut == labels[:len(p_ids) + 2]


def test_chat_masking_covers_the_assistant_turn_only(tokenizer):
    from builder.prompts import student_prompt_ids
    from builder.train import IGNORE_INDEX, encode_example

    question, completion = "How many apples?", " 3 + 4 = 7. --> 7"
    ids, labels = encode_example(tokenizer, question, completion, "chat", 512)
    n_prompt = sum(t == IGNORE_INDEX for t in labels)
    assert ids[:n_prompt] == student_prompt_ids(tokenizer, question, "chat")
    assert tokenizer.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ids[n_prompt:]) == "3 + 4 = 7. --> 7<|im_end|>\n"
    assert labels[n_prompt:] == ids[n_prompt:]


# ------------------------------------------------------------------ the TRL path: what the trainer trains on
@pytest.mark.slow
def test_trainer_data_is_completion_only_ends_in_eos_and_starts_with_the_eval_prompt(
        tmp_path: Path, store_root: Path, tiny_model_dir: Path, tokenizer):
    """What SFTTrainer's dataset and collator hand the model: the prompt is `student_prompt_ids` (what evaluation
    feeds the student), its positions and the pads carry label -100, every completion token is a label, and every
    example ends in EOS; the loss the trainer computes is cross-entropy over exactly those completion tokens."""
    import torch
    import torch.nn.functional as F

    from builder.prompts import student_prompt_ids
    from builder.train import prepare

    recipe = parse_train_recipe(_recipe(tmp_path, store_root, tiny_model_dir, training={"max_length": 1024}))
    prep = prepare(recipe)  # max_length 1024: no row is cut (a cut row loses its EOS with its tail)
    rows = prep.data.rows
    ds = prep.trainer.train_dataset
    assert ds.num_rows == rows.height
    for ex, question in zip(ds, rows["question"].to_list(), strict=True):
        ids, labels = ex["input_ids"], ex["labels"]
        p_ids = student_prompt_ids(tokenizer, question, "ft_cot")
        assert ids[:len(p_ids)] == p_ids
        assert labels[:len(p_ids)] == [-100] * len(p_ids)  # the prompt carries no loss
        assert labels[len(p_ids):] == ids[len(p_ids):]  # every completion token does
        assert ids[-1] == labels[-1] == tokenizer.eos_token_id  # ends in EOS, and EOS is trained
    batch = next(iter(prep.trainer.get_train_dataloader()))
    pads = batch["attention_mask"] == 0
    assert pads.any() and (batch["labels"][pads] == -100).all()
    model = prep.trainer.model.eval()
    with torch.no_grad():
        loss = prep.trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    target = batch["labels"][:, 1:]
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)
    assert float(loss) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.slow
def test_loss_falls_and_card_names_the_version(tmp_path: Path, store_root: Path, tiny_model_dir: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from builder.train import TRAIN_LOG, main

    recipe = parse_train_recipe(_recipe(tmp_path, store_root, tiny_model_dir,
                                        training={"max_steps": 40, "per_device_train_batch_size": 8,
                                                  "save_steps": 20}))
    result = main(recipe)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, result.losses
    assert result.steps == 40 and result.resumed_from == 0 and result.tokens > 0
    log_lines = [json.loads(line) for line in (recipe.out / TRAIN_LOG).read_text().splitlines()]
    assert [x["step"] for x in log_lines] == list(range(1, 41))
    manifest = json.loads((store_root / "tiny" / "v1" / "manifest.json").read_text())
    card = (recipe.out / "README.md").read_text()
    assert "tiny@v1" in card and manifest["content_hash"] in card and result.content_hash == manifest["content_hash"]
    assert f"| final loss | {result.losses[-1]:.4f} |" in card and "TRL SFTTrainer" in card
    model = AutoModelForCausalLM.from_pretrained(recipe.out)  # a plain transformers folder
    assert model.config.vocab_size > 0
    base = AutoConfig.from_pretrained(tiny_model_dir)
    assert model.config.use_cache is base.use_cache is True  # HF Trainer's training-time False stays behind
    assert [p.name for p in (recipe.out / "checkpoints").glob("checkpoint-*")] != []
    assert (recipe.out / "checkpoints" / "checkpoint-40" / "rationale_settings.json").is_file()


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path, store_root: Path, tiny_model_dir: Path):
    from builder.train import main

    data = _recipe(tmp_path, store_root, tiny_model_dir, training={"max_steps": 3})
    main(parse_train_recipe(data))
    data["training"]["per_device_train_batch_size"] = 2
    with pytest.raises(BuilderError) as exc:
        main(parse_train_recipe(data))
    msg = str(exc.value)
    assert str(tmp_path / "out" / "checkpoints" / "checkpoint-3" / "rationale_settings.json") in msg
    assert "per_device_train_batch_size: 4 there, 2 now" in msg and "resume: false" in msg
    # resume: false starts over (the old checkpoints go)
    result = main(parse_train_recipe({**data, "resume": False}))
    assert result.resumed_from == 0 and result.steps == 3


@pytest.mark.slow
@pytest.mark.parametrize(("first", "change", "refused"), [
    ({}, {"training": {"learning_rate": 1e-3}}, "training.learning_rate: 0.003 there, 0.001 now"),
    ({"model": {"use_peft": True, "lora_r": 4, "lora_alpha": 8}}, {"model": {"lora_alpha": 16}},
     "model.lora_alpha: 8 there, 16 now"),
    ({}, {"training": {"logging_steps": 2}}, None),
    # cadence, reporting and what only the card or the evaluation after training read
    ({}, {"training": {"save_steps": 2, "save_total_limit": 1, "report_to": ["none"]}, "name": "renamed",
          "description": "other words", "eval": {"enabled": False, "limit": 3}}, None),
], ids=["learning_rate", "lora_alpha", "logging_steps", "cadence_and_card"])
def test_resume_refuses_any_setting_of_the_trajectory_and_allows_cadence(
        tmp_path: Path, store_root: Path, tiny_model_dir: Path, first: dict, change: dict, refused: str | None,
        capsys):
    """Every recipe setting that changes the training trajectory must match the checkpoint's (else the run would go
    on with the old optimiser state under new settings, and the card would report the new ones); logging, saving
    and reporting cadence may change. `rationale train` says which key differs and exits 2."""
    from builder.cli import main as cli_main
    from builder.train import main

    data = _recipe(tmp_path, store_root, tiny_model_dir, **first)
    data["training"]["max_steps"] = 3
    main(parse_train_recipe(data))
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    if refused is None:
        result = main(parse_train_recipe(data))
        assert result.resumed_from == 3  # resumed, not refused and not started over
        return
    with pytest.raises(BuilderError) as exc:
        main(parse_train_recipe(data))
    assert refused in str(exc.value) and "--no-resume" in str(exc.value)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert cli_main(["train", str(path), "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert refused in err and "--no-resume" in err


def _settings_of(data: dict, world_size: int = 1, examples: int = 16) -> dict:
    from types import SimpleNamespace

    from builder.train import run_settings

    version = SimpleNamespace(ref="tiny@v1", content_hash="abc123")
    return run_settings(parse_train_recipe(data), version, examples, world_size)


def _write_settings(tmp_path: Path, settings: dict) -> Path:
    from builder.train import write_checkpoint_settings

    ckpt = tmp_path / "checkpoints" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    write_checkpoint_settings(ckpt, {**settings, "step": 3})
    return ckpt


_BASE = {"name": "x", "dataset": {"ref": "tiny@v1"}, "model": {"model_name_or_path": "m"}, "output_dir": "o"}


@pytest.mark.parametrize(("change", "refused"), [
    ({"training": {"lr_scheduler_type": "cosine"}}, "training.lr_scheduler_type: 'constant' there, 'cosine' now"),
    ({"training": {"warmup_steps": 2, "lr_scheduler_type": "constant_with_warmup"}}, "training.warmup_steps"),
    ({"training": {"optim": "sgd"}}, "training.optim: 'adamw_torch' there, 'sgd' now"),
    ({"training": {"weight_decay": 0.1}}, "training.weight_decay: 0.0 there, 0.1 now"),
    ({"training": {"bf16": True}}, "training.bf16: False there, True now"),
    ({"training": {"padding_free": True}}, "training.padding_free"),
    ({"model": {"dtype": "bfloat16"}}, "model.dtype: None there, 'bfloat16' now"),
    ({"model": {"model_revision": "abc"}}, "model.model_revision: None there, 'abc' now"),
    ({"model": {"use_peft": True}}, "model.use_peft: False there, True now"),
    ({"dataset": {"ref": "tiny@v1", "tasks": ["multiarith"]}}, "dataset.tasks: None there, ['multiarith'] now"),
    ({"format": "chat"}, "format: 'ft_cot' there, 'chat' now"),
])
def test_checkpoint_settings_cover_the_whole_recipe(tmp_path: Path, change: dict, refused: str):
    from builder.train import check_checkpoint_settings

    ckpt = _write_settings(tmp_path, _settings_of(_BASE))
    data = {k: {**_BASE[k], **v} if isinstance(_BASE.get(k), dict) else v for k, v in change.items()}
    with pytest.raises(BuilderError) as exc:
        check_checkpoint_settings(ckpt, _settings_of({**_BASE, **data}))
    assert refused in str(exc.value) and "--no-resume" in str(exc.value)


def test_checkpoint_settings_other_world_size_and_lora_when_not_peft(tmp_path: Path):
    from builder.train import check_checkpoint_settings

    ckpt = _write_settings(tmp_path, _settings_of(_BASE))
    with pytest.raises(BuilderError, match="world_size: 1 there, 2 now"):
        check_checkpoint_settings(ckpt, _settings_of(_BASE, world_size=2))
    # LoRA settings of a run that trains no adapters change nothing
    check_checkpoint_settings(ckpt, _settings_of({**_BASE, "model": {**_BASE["model"], "lora_alpha": 64}}))
    # the dataset may be read from another place: the version and its content hash are what is compared
    check_checkpoint_settings(ckpt, _settings_of({**_BASE, "dataset": {"ref": "tiny@v1", "root": "elsewhere"}}))


def test_resume_allow_list_names_recipe_keys():
    from builder.train import RESUME_MAY_CHANGE

    recipe = parse_train_recipe(_BASE).model_dump()
    keys = set(recipe) | {f"{section}.{k}" for section, v in recipe.items() if isinstance(v, dict) for k in v}
    assert RESUME_MAY_CHANGE <= keys, RESUME_MAY_CHANGE - keys


def test_checkpoint_of_the_old_settings_file_is_judged_by_what_it_recorded(tmp_path: Path):
    """A checkpoint written before every setting was recorded (the flat settings file of 926bc94): a key it holds is
    compared under its new name; one it lacks is refused by name (its value there is unknown), but for the LoRA keys
    of a run without adapters."""
    from builder.train import check_checkpoint_settings

    old = {"dataset": "tiny@v1", "content_hash": "abc123", "examples": 16, "format": "ft_cot", "model": "m",
           "use_peft": False, "lora_r": None, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
           "world_size": 1, "max_steps": None, "num_train_epochs": 20, "max_length": 512, "packing": False,
           "seed": 42}
    ckpt = _write_settings(tmp_path, old)
    with pytest.raises(BuilderError) as exc:  # a difference it recorded is named as such
        check_checkpoint_settings(ckpt, _settings_of({**_BASE, "training": {"per_device_train_batch_size": 4}}))
    assert "training.per_device_train_batch_size: 8 there, 4 now" in str(exc.value)
    with pytest.raises(BuilderError) as exc:  # else the first setting it did not record
        check_checkpoint_settings(ckpt, _settings_of(_BASE))
    msg = str(exc.value)
    assert "not recorded" in msg and "--no-resume" in msg and "model.lora" not in msg


def _train_cli(recipe_path: Path, kill_at: tuple[str, int] | None = None) -> tuple[int, str]:
    """`rationale train RECIPE --no-eval` in a fresh interpreter and its own session; with `kill_at`, under
    tests/kill_points.py, which SIGKILLs the whole process group at that point."""
    import os
    import signal
    import subprocess
    import sys

    launcher = ["-m", "builder"] if kill_at is None else [str(ROOT / "tests" / "kill_points.py"), kill_at[0],
                                                            str(kill_at[1]), "--"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, *launcher, "train", str(recipe_path), "--no-eval"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"rationale train did not finish in 300 s:\n{err[-3000:]}")
    if kill_at is not None:
        assert proc.returncode == -signal.SIGKILL and "kill_points: SIGKILL" in err, \
            f"the run did not die at {kill_at}:\n{err[-3000:]}"
    else:
        assert proc.returncode == 0, err[-3000:]
    return proc.returncode, err


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sigkill_after_a_step_and_inside_the_checkpoint_write_then_resume_equals_an_uninterrupted_run(
        tmp_path: Path, store_root: Path, tiny_model_dir: Path):
    """Real kills of `rationale train` (tests/kill_points.py): after step 4 (the last checkpoint is step 3), then,
    resumed, inside step 6's checkpoint write (HF's files are in checkpoint-6/, our settings file is not); resumed
    again to the end. Losses, learning rates, train_log and the final weights equal those of an uninterrupted run
    of the same recipe: the same steps on the same batches (another data order gives other losses)."""
    import torch
    from safetensors.torch import load_file

    recipes = {}
    for name in ("killed", "reference"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_recipe(tmp_path, store_root, tiny_model_dir, output_dir=str(tmp_path / name),
                                               training={"gradient_accumulation_steps": 2})))
        recipes[name] = path
    out, ref = tmp_path / "killed", tmp_path / "reference"
    ckpts = out / "checkpoints"

    def names() -> list[str]:
        return sorted(p.name for p in ckpts.glob("checkpoint-*"))

    _train_cli(recipes["killed"], ("train_step", 4))
    assert [x["step"] for x in _log(out)] == [1, 2, 3, 4]  # step 4 was logged, its checkpoint (step 6) not due
    assert names() == ["checkpoint-3"]

    _train_cli(recipes["killed"], ("checkpoint_partial", 6))
    assert [x["step"] for x in _log(out)] == [1, 2, 3, 4, 5, 6]  # steps 4-6 redone from step 3, logged once
    assert names() == ["checkpoint-3", "checkpoint-6"]
    assert (ckpts / "checkpoint-6" / "optimizer.pt").is_file()  # HF's part of the checkpoint is there ...
    assert not (ckpts / "checkpoint-6" / "rationale_settings.json").exists()  # ... ours, written last, is not
    assert not (out / "config.json").exists()  # the model is saved only after the last checkpoint

    _train_cli(recipes["killed"])  # resumes from checkpoint-3 again: the partial checkpoint is never read
    _train_cli(recipes["reference"])

    assert names() == ["checkpoint-3", "checkpoint-6"]
    assert all((ckpts / n / "rationale_settings.json").is_file() for n in names())
    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    same = ("step", "loss", "lr", "grad_norm")  # tokens and seconds count each invocation's own work
    assert [{k: x[k] for k in same} for x in _log(out)] == [{k: x[k] for k in same} for x in _log(ref)]


@pytest.mark.slow
def test_lora_trains_adapters_only_and_saves_a_merged_model(tmp_path: Path, store_root: Path, tiny_model_dir: Path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from builder.train import main

    recipe = parse_train_recipe(_recipe(tmp_path, store_root, tiny_model_dir,
                                        model={"use_peft": True, "lora_r": 4, "lora_alpha": 8},
                                        training={"max_steps": 3}))
    main(recipe)
    adapter = load_file(recipe.out / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)  # the checkpoint holds the adapters only
    assert not (recipe.out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(recipe.out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], base.state_dict()[name])
    assert "r=4" in (recipe.out / "README.md").read_text()


@pytest.mark.slow
def test_cli_train(tmp_path: Path, store_root: Path, tiny_model_dir: Path, capsys):
    from builder.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, store_root, tiny_model_dir)))
    assert main(["train", str(path), "--max-steps", "2", "--no-eval", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout is the JSON only (no HF log lines)
    assert report["steps"] == 2 and report["dataset"] == "tiny@v1"
    path.write_text(yaml.safe_dump(_recipe(tmp_path, store_root, tiny_model_dir, dataset={"ref": "nope@v1"})))
    assert main(["train", str(path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.slow
def test_seq2seq_student_trains_and_evaluates(tmp_path: Path, store_root: Path, tiny_model_dir: Path, tokenizer,
                                              benchmarks_dir: Path):
    """The Flan-T5 path (Seq2SeqTrainer) on a tiny random T5: target-only loss ending on EOS, then
    transformers.generate eval."""
    from transformers import T5Config, T5ForConditionalGeneration

    from builder.eval import evaluate, load_questions
    from builder.teachers.hf import load_model
    from builder.train import encode_example, main, prepare

    t5 = tmp_path / "tiny-t5"
    T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id)).save_pretrained(t5)
    tokenizer.save_pretrained(t5)
    enc, target = encode_example(tokenizer, "Q", " 3 + 4 = 7 --> 7", "seq2seq", 512)
    assert enc == tokenizer("Q ###")["input_ids"]
    assert target == tokenizer("3 + 4 = 7 --> 7")["input_ids"] + [tokenizer.eos_token_id]

    data = _recipe(tmp_path, store_root, t5, format="seq2seq", eval={"enabled": False, "backend": "hf"},
                   training={"max_steps": 8, "learning_rate": 1e-2})
    prep = prepare(parse_train_recipe(data))
    assert type(prep.trainer).__mro__[1].__name__ == "Seq2SeqTrainer"
    batch = next(iter(prep.trainer.get_train_dataloader()))
    labels = batch["labels"]
    assert ((labels == -100) | (labels >= 0)).all() and (labels == tokenizer.eos_token_id).sum(1).min() >= 1
    recipe = parse_train_recipe(data)
    result = main(recipe)
    assert result.steps == 8 and result.losses[-1] < result.losses[0]
    questions = load_questions(["multiarith"], "test", benchmarks_dir=str(benchmarks_dir), limit=3)
    run = evaluate(str(recipe.out), questions, recipe.eval.model_copy(update={"max_tokens": 8}), fmt="seq2seq",
                   engine=load_model(str(recipe.out), seq2seq=True))
    assert run.predictions.height == 3 and (run.predictions["completion_tokens"] <= 8).all()
