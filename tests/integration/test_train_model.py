"""builder.train on the tiny model: completion-only masking, loss, resume refusals, LoRA, seq2seq, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from builder.errors import BuilderError
from builder.train_recipe import parse_train_recipe
from tests.helpers import tiny_train_recipe


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
        tmp_path: Path, tiny_store: Path, tiny_model_dir: Path, tokenizer):
    """What SFTTrainer's dataset and collator hand the model: the prompt is `student_prompt_ids` (what evaluation
    feeds the student), its positions and the pads carry label -100, every completion token is a label, and every
    example ends in EOS; the loss the trainer computes is cross-entropy over exactly those completion tokens."""
    import torch
    import torch.nn.functional as F

    from builder.prompts import student_prompt_ids
    from builder.train import prepare

    recipe = parse_train_recipe(tiny_train_recipe(tmp_path, tiny_store, tiny_model_dir, training={"max_length": 1024}))
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
def test_loss_falls_and_card_names_the_version(tmp_path: Path, tiny_store: Path, tiny_model_dir: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from builder.train import TRAIN_LOG, main

    recipe = parse_train_recipe(tiny_train_recipe(tmp_path, tiny_store, tiny_model_dir,
                                        training={"max_steps": 40, "per_device_train_batch_size": 8,
                                                  "save_steps": 20}))
    result = main(recipe)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, result.losses
    assert result.steps == 40 and result.resumed_from == 0 and result.tokens > 0
    log_lines = [json.loads(line) for line in (recipe.out / TRAIN_LOG).read_text().splitlines()]
    assert [x["step"] for x in log_lines] == list(range(1, 41))
    manifest = json.loads((tiny_store / "tiny" / "v1" / "manifest.json").read_text())
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
def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path, tiny_store: Path, tiny_model_dir: Path):
    from builder.train import main

    data = tiny_train_recipe(tmp_path, tiny_store, tiny_model_dir, training={"max_steps": 3})
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
        tmp_path: Path, tiny_store: Path, tiny_model_dir: Path, first: dict, change: dict, refused: str | None,
        capsys):
    """Every recipe setting that changes the training trajectory must match the checkpoint's (else the run would go
    on with the old optimiser state under new settings, and the card would report the new ones); logging, saving
    and reporting cadence may change. `rationale train` says which key differs and exits 2."""
    from builder.cli import main as cli_main
    from builder.train import main

    data = tiny_train_recipe(tmp_path, tiny_store, tiny_model_dir, **first)
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


@pytest.mark.slow
def test_lora_trains_adapters_only_and_saves_a_merged_model(tmp_path: Path, tiny_store: Path, tiny_model_dir: Path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from builder.train import main

    recipe = parse_train_recipe(tiny_train_recipe(tmp_path, tiny_store, tiny_model_dir,
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
def test_cli_train(tmp_path: Path, tiny_store: Path, tiny_model_dir: Path, capsys):
    from builder.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_train_recipe(tmp_path, tiny_store, tiny_model_dir)))
    assert main(["train", str(path), "--max-steps", "2", "--no-eval", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout is the JSON only (no HF log lines)
    assert report["steps"] == 2 and report["dataset"] == "tiny@v1"
    bad = tiny_train_recipe(tmp_path, tiny_store, tiny_model_dir, dataset={"ref": "nope@v1"})
    path.write_text(yaml.safe_dump(bad))
    assert main(["train", str(path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.slow
def test_seq2seq_student_trains_and_evaluates(tmp_path: Path, tiny_store: Path, tiny_model_dir: Path, tokenizer,
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

    data = tiny_train_recipe(tmp_path, tiny_store, t5, format="seq2seq", eval={"enabled": False, "backend": "hf"},
                   training={"max_steps": 8, "learning_rate": 1e-2})
    prep = prepare(parse_train_recipe(data))
    from transformers import Seq2SeqTrainer
    from trl import SFTTrainer

    assert isinstance(prep.trainer, Seq2SeqTrainer) and not isinstance(prep.trainer, SFTTrainer)
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
