"""builder.train and builder.train_recipe: recipes (TRL names), completion-only masking on the TRL path, loss, resume
after SIGKILL, the other-settings refusal, LoRA, seq2seq, card, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.errors import BuilderError, RecipeError
from builder.train_recipe import load_train_recipe, parse_train_recipe, train_recipe_json_schema
from tests.helpers import ROOT

# ------------------------------------------------------------------ fixtures


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


def test_every_sft_config_field_is_declared_open_or_owned():
    """`training:` takes TRL's whole SFTConfig: each field is declared (the paper's defaults), passed through as the
    recipe writes it, or set by rationale-builder (refused in a recipe, with the reason)."""
    from builder.train_recipe import OWNED_KEYS, TrainingSpec, trl_fields

    assert set(OWNED_KEYS) <= set(trl_fields())
    assert not set(OWNED_KEYS) & set(TrainingSpec.model_fields)
    assert all(reason.strip() for reason in OWNED_KEYS.values())


def test_trl_keys_reach_the_config_under_their_own_name():
    from trl import SFTConfig

    from builder.train import trainer_args

    training = {"warmup_steps": 0.1, "lr_scheduler_type": "cosine", "lr_scheduler_kwargs": {"num_cycles": 0.25},
                "logging_first_step": True, "label_smoothing_factor": 0.1, "neftune_noise_alpha": 5,
                "data_seed": 7, "eval_strategy": "no", "debug": ["underflow_overflow"], "save_strategy": "epoch"}
    recipe = parse_train_recipe({**_BASE, "training": training})
    assert recipe.training.trl_keys == {k: v for k, v in training.items() if k not in ("warmup_steps",
                                                                                    "lr_scheduler_type")}
    args = trainer_args(recipe, Path("/tmp/o"), cpu=True)
    assert isinstance(args, SFTConfig)
    assert (args.warmup_steps, args.lr_scheduler_kwargs, args.logging_first_step, args.label_smoothing_factor,
            args.neftune_noise_alpha, args.data_seed) == (0.1, {"num_cycles": 0.25}, True, 0.1, 5, 7)
    assert args.save_strategy == "epoch" and args.debug == ["underflow_overflow"]
    # what rationale-builder sets stays its own
    assert args.completion_only_loss and args.disable_tqdm and not args.remove_unused_columns
    assert args.output_dir == "/tmp/o/checkpoints" and args.include_num_input_tokens_seen == "non_padding"
    assert recipe.training.warmup_steps == 0.1 and parse_train_recipe(
        {**_BASE, "training": {"warmup_steps": 10.0, "lr_scheduler_type": "linear"}}).training.warmup_steps == 10


def test_settings_the_config_refuses_together_fail_before_anything_loads(tmp_path: Path, monkeypatch):
    """Each key is checked alone when the recipe loads; the config's own checks of them together (SFTConfig's
    __post_init__) run first in `prepare`, before the dataset or the model is read."""
    from builder import train

    recipe = parse_train_recipe({**_BASE, "output_dir": str(tmp_path / "o"),
                                 "training": {"fp16": True, "bf16": True}})
    monkeypatch.setattr(train, "read_dataset", lambda *a, **k: pytest.fail("read the dataset"))
    with pytest.raises(BuilderError, match="training: SFTConfig refuses these settings: At most one of fp16 and "
                       "bf16"):
        train.prepare(recipe)
    assert not (tmp_path / "o").exists()


def test_a_recipe_of_declared_keys_does_not_import_trl():
    """Reading a recipe whose training: keys are all declared needs no TRL (nor torch): `rationale eval --recipe`
    and the API stay light; a recipe with another key imports TRL to check it."""
    import subprocess
    import sys

    code = ("import sys\nfrom builder.train_recipe import load_train_recipe\n"
            "load_train_recipe(sys.argv[1])\nprint(sorted(m for m in ('trl', 'torch') if m in sys.modules))")
    recipe = ROOT / "recipes" / "train" / "multiarith" / "smollm2-135m-cpu.yaml"
    out = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out.strip() == "[]"


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
    # training: takes every SFTConfig field; an unknown one is named, with the field meant where one is close
    ({"training": {"warmup_ratio": 0.1}}, "t.yaml: training.warmup_ratio: unknown field: not a field of TRL's "
     "SFTConfig (trl 1."),
    ({"training": {"warmup_ratio": 0.1}}, "did you mean warmup_steps (transformers 5: a value below 1 is a "
     "fraction of the total steps)?"),
    ({"training": {"learnig_rate": 1e-3}}, "t.yaml: training.learnig_rate: unknown field: not a field of TRL's "
     "SFTConfig"),
    ({"training": {"learnig_rate": 1e-3}}, "did you mean learning_rate?"),
    ({"training": {"max_seq_length": 256}}, "did you mean max_length?"),
    # of the field's type, checked against TRL's dataclass (strict: 1 is no boolean, "0.1" no number)
    ({"training": {"logging_first_step": 1}},
     "t.yaml: training.logging_first_step: Input should be a valid boolean (SFTConfig.logging_first_step is bool)"),
    ({"training": {"label_smoothing_factor": "0.1"}}, "training.label_smoothing_factor: Input should be a valid "
     "number"),
    ({"training": {"neftune_noise_alpha": float("inf")}}, "training.neftune_noise_alpha: Input should be a finite"),
    ({"training": {"eval_strategy": 3}}, "training.eval_strategy: Input should be 'no', 'steps' or 'epoch'"),
    ({"training": {"label_names": "labels"}}, "training.label_names: Input should be a valid list"),
    # the keys rationale-builder sets itself are refused with where their setting lives
    ({"training": {"output_dir": "elsewhere"}}, "t.yaml: training.output_dir: set by rationale-builder, not the "
     "recipe: checkpoints go to <output_dir>/checkpoints: set the recipe's top-level output_dir"),
    ({"training": {"completion_only_loss": False}}, "training.completion_only_loss: set by rationale-builder"),
    ({"training": {"resume_from_checkpoint": "x"}}, "the recipe's top-level resume"),
    ({"training": {"trust_remote_code": True}}, "training.trust_remote_code: set by rationale-builder, not the "
     "recipe: it is model.trust_remote_code"),
    ({"training": {"push_to_hub": True}}, "training.push_to_hub: set by rationale-builder"),
    # keys under which a resumed run would not continue the interrupted one (optimizer and scheduler state not
    # saved, seen batches trained again, the batch size shrunk on OOM while the settings file says otherwise)
    ({"training": {"save_only_model": True}}, "training.save_only_model: set by rationale-builder, not the recipe: "
     "always false"),
    ({"training": {"ignore_data_skip": True}}, "training.ignore_data_skip: set by rationale-builder"),
    ({"training": {"auto_find_batch_size": True}}, "training.auto_find_batch_size: set by rationale-builder"),
    ({"training": {"eval_strategy": "steps"}}, "training.eval_strategy: \"steps\" needs an eval dataset"),
    ({"training": {"load_best_model_at_end": True}}, "training.load_best_model_at_end: true needs an eval dataset"),
    # seq2seq students train with Seq2SeqTrainer: SFTConfig-only keys are refused
    ({"format": "seq2seq", "eval": {"backend": "hf"}, "training": {"shuffle_dataset": True}},
     "Seq2SeqTrainer, which has no training.shuffle_dataset"),
    ({"format": "seq2seq", "eval": {"backend": "hf"}, "training": {"packing_strategy": "bfd"}},
     "Seq2SeqTrainer, which has no training.packing_strategy; leave it out"),
])
def test_recipe_errors_name_the_field(data: dict, message: str):
    base = {"name": "x", "dataset": {"ref": "d@v1"}, "model": {"model_name_or_path": "gpt2"}, "output_dir": "o"}
    for k, v in data.items():
        base[k] = {**base[k], **v} if isinstance(base.get(k), dict) else v
    with pytest.raises(RecipeError) as exc:
        parse_train_recipe(base, "t.yaml")
    assert message in str(exc.value)


def test_numbers_yaml_reads_as_text_are_numbers_for_the_fields_that_take_one():
    """PyYAML (YAML 1.1) reads `1e-8` as a string; declared keys take it as a number, and so do TRL's own float
    fields. A quoted number or a text where a boolean belongs is still refused."""
    data = yaml.safe_load("""
name: x
dataset: {ref: d@v1}
model: {model_name_or_path: gpt2}
output_dir: o
training: {learning_rate: 1e-5, adam_epsilon: 1e-8, neftune_noise_alpha: 5E-1}
""")
    assert data["training"]["adam_epsilon"] == "1e-8"  # what YAML hands over
    training = parse_train_recipe(data, "t.yaml").training
    assert training.learning_rate == 1e-5
    assert training.trl_keys == {"adam_epsilon": 1e-8, "neftune_noise_alpha": 0.5}
    assert all(type(v) is float for v in training.trl_keys.values())
    for key, value in (("logging_first_step", "1e0"), ("label_smoothing_factor", "0.1")):
        with pytest.raises(RecipeError, match=f"training.{key}: Input should be a valid"):
            parse_train_recipe({**data, "training": {key: value}}, "t.yaml")


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
    """Each key a resumed run may change is a recipe key: a declared one or a field of TRL's SFTConfig that the
    recipe may set (not one rationale-builder sets itself)."""
    from builder.train import RESUME_MAY_CHANGE
    from builder.train_recipe import OWNED_KEYS, trl_fields

    recipe = parse_train_recipe(_BASE).model_dump()
    keys = set(recipe) | {f"{section}.{k}" for section, v in recipe.items() if isinstance(v, dict) for k in v}
    keys |= {f"training.{k}" for k in trl_fields() if k not in OWNED_KEYS}
    assert RESUME_MAY_CHANGE <= keys, RESUME_MAY_CHANGE - keys


@pytest.mark.parametrize(("before", "after", "refused"), [
    # a TRL key at its default is the run without it, both ways
    ({}, {"eval_strategy": "no", "neftune_noise_alpha": None}, None),
    ({"label_smoothing_factor": 0.0}, {}, None),
    # any other value changes the trajectory; a side without the key had TRL's default
    ({}, {"label_smoothing_factor": 0.1}, "training.label_smoothing_factor: 0.0 (TRL's default) there, 0.1 now"),
    ({"neftune_noise_alpha": 5}, {}, "training.neftune_noise_alpha: 5 there, None (TRL's default) now"),
    ({"data_seed": 1}, {"data_seed": 2}, "training.data_seed: 1 there, 2 now"),
    # cadence and reporting keys of TRL's may change
    ({}, {"logging_first_step": True, "run_name": "again", "save_strategy": "epoch"}, None),
])
def test_checkpoint_settings_cover_trl_keys_beyond_the_declared_ones(tmp_path: Path, before: dict, after: dict,
                                                                      refused: str | None):
    from builder.train import check_checkpoint_settings

    ckpt = _write_settings(tmp_path, _settings_of({**_BASE, "training": before}))
    now = _settings_of({**_BASE, "training": after})
    if refused is None:
        check_checkpoint_settings(ckpt, now)
        return
    with pytest.raises(BuilderError) as exc:
        check_checkpoint_settings(ckpt, now)
    assert refused in str(exc.value), str(exc.value)


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
