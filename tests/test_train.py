"""builder.train and builder.train_recipe: recipes, completion-only masking, loss, resume, card, CLI."""

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


def _recipe(tmp_path: Path, store_root: Path, model: Path, **over) -> dict:
    data = {
        "name": "tiny-student",
        "dataset": {"ref": "tiny@v1", "root": str(store_root)},
        "student": {"model": str(model)},
        "hyperparameters": {"learning_rate": 3e-3, "batch_size": 4, "max_length": 192, "max_steps": 6},
        "seed": 7,
        "output_dir": str(tmp_path / "out"),
        "checkpoints": {"save_steps": 3, "keep": 5},
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
    r = parse_train_recipe({"name": "x", "dataset": {"ref": "d@v1"}, "student": {"model": "gpt2"},
                            "output_dir": "o"})
    hp = r.hyperparameters
    assert (hp.learning_rate, hp.batch_size, hp.max_length, hp.epochs) == (3e-4, 8, 512, 20)
    assert r.format == "ft_cot" and r.lora is None


@pytest.mark.parametrize(("data", "message"), [
    ({"hyperparameters": {"lr": 1}}, "t.yaml: hyperparameters.lr: unknown field"),
    ({"dataset": {"ref": "a@v1", "path": "x"}}, "exactly one of dataset.ref, dataset.path, dataset.hub"),
    ({"format": "gpt"}, "t.yaml: format: Input should be 'ft_cot', 'chat', 'seq2seq' or 'r1'"),
    ({"format": "seq2seq"}, "format seq2seq evaluates with eval.backend: hf"),
    ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size: Input should be greater than or equal"),
])
def test_recipe_errors_name_the_field(data: dict, message: str):
    base = {"name": "x", "dataset": {"ref": "d@v1"}, "student": {"model": "gpt2"}, "output_dir": "o"}
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


def test_loss_counts_completion_tokens_only(tiny_model_dir: Path, tokenizer):
    """The training loss equals cross-entropy over exactly the completion positions, checked on token ids."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from builder.train import collate, completion_loss_sum, encode_example

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    examples = [encode_example(tokenizer, "Tom has 3 apples.", " 3 + 4 = 7 --> 7", "ft_cot", 512),
                encode_example(tokenizer, "Take the last letters.", " ab --> ab", "ft_cot", 512)]
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        total, count = completion_loss_sum(model, batch, "ft_cot")
        expected, n = 0.0, 0
        for ids, labels in examples:
            first = labels.index(next(t for t in labels if t != -100))  # first completion position
            logits = model(torch.tensor([ids])).logits[0].float()
            for pos in range(first, len(ids)):  # token ids[pos] is predicted from position pos - 1
                expected += float(F.cross_entropy(logits[pos - 1:pos], torch.tensor([ids[pos]])))
                n += 1
    assert count == n == sum(len(lab) - lab.count(-100) for _, lab in examples)
    assert float(total) == pytest.approx(expected, rel=1e-4)


def test_schedule_order_is_a_function_of_seed_and_epoch():
    from builder.train import Schedule

    s = Schedule(n_rows=10, batch_size=4, grad_accum=2, seed=3)
    assert s.micro_per_epoch == 3 and s.total_steps(2, None) == 3 and s.total_steps(2, 7) == 7
    epoch0 = [i for m in range(3) for i in s.micro_batch(m)]
    assert sorted(epoch0) == list(range(10))  # every row once per epoch
    assert [s.micro_batch(m) for m in range(6)] == [Schedule(10, 4, 2, 3).micro_batch(m) for m in range(6)]
    assert list(s.step_batches(1)) == [s.micro_batch(2), s.micro_batch(3)]
    assert s.micro_batch(3) != s.micro_batch(0) or s.micro_batch(4) != s.micro_batch(1)  # epochs reshuffle


# ------------------------------------------------------------------ training
@pytest.mark.slow
def test_loss_falls_and_card_names_the_version(tmp_path: Path, store_root: Path, tiny_model_dir: Path):
    from transformers import AutoModelForCausalLM

    from builder.train import TRAIN_LOG, main
    from builder.train_recipe import parse_train_recipe

    recipe = parse_train_recipe(_recipe(tmp_path, store_root, tiny_model_dir,
                                        hyperparameters={"max_steps": 40, "batch_size": 8}))
    result = main(recipe)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.7 * first, result.losses
    assert result.steps == 40 and result.resumed_from == 0 and result.tokens > 0
    log_lines = [json.loads(line) for line in (recipe.out / TRAIN_LOG).read_text().splitlines()]
    assert [x["step"] for x in log_lines] == list(range(1, 41))
    manifest = json.loads((store_root / "tiny" / "v1" / "manifest.json").read_text())
    card = (recipe.out / "README.md").read_text()
    assert "tiny@v1" in card and manifest["content_hash"] in card and result.content_hash == manifest["content_hash"]
    model = AutoModelForCausalLM.from_pretrained(recipe.out)  # a plain transformers folder
    assert model.config.vocab_size > 0
    assert sorted(p.name for p in (recipe.out / "checkpoints").iterdir())[-1] == "step-000040"


@pytest.mark.slow
def test_resume_continues_from_the_same_step_with_the_same_weights(tmp_path: Path, store_root: Path,
                                                                   tiny_model_dir: Path):
    import shutil

    import torch

    from builder.train import main
    from builder.train_recipe import parse_train_recipe

    data = _recipe(tmp_path, store_root, tiny_model_dir, hyperparameters={"grad_accum": 2})
    full = main(parse_train_recipe(data))
    ckpts = tmp_path / "out" / "checkpoints"
    final = torch.load(ckpts / "step-000006" / "trainable.pt")
    # crash after step 3: only the step-3 checkpoint survives
    shutil.rmtree(ckpts / "step-000006")
    resumed = main(parse_train_recipe(data))
    assert resumed.resumed_from == 3 and len(resumed.losses) == 3
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-6)
    again = torch.load(ckpts / "step-000006" / "trainable.pt")
    assert again.keys() == final.keys()
    assert all(torch.equal(again[k], final[k]) for k in final)
    log = [json.loads(line)["step"] for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]
    # a checkpoint of other settings is refused, naming what changed
    data["hyperparameters"]["batch_size"] = 2
    with pytest.raises(BuilderError, match="batch_size"):
        main(parse_train_recipe(data))


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
    resumed, inside step 6's checkpoint write (complete in .step-000006.partial/, not renamed); resumed again to
    the end. Weights, losses and train_log equal those of an uninterrupted run of the same recipe."""
    import torch
    from safetensors.torch import load_file

    recipes = {}
    for name in ("killed", "reference"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(_recipe(tmp_path, store_root, tiny_model_dir, output_dir=str(tmp_path / name),
                                               hyperparameters={"grad_accum": 2})))
        recipes[name] = path
    out, ref = tmp_path / "killed", tmp_path / "reference"
    ckpts = out / "checkpoints"

    _train_cli(recipes["killed"], ("train_step", 4))
    assert [x["step"] for x in _log(out)] == [1, 2, 3, 4]  # step 4 was logged, its checkpoint (step 6) not due
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000003"]

    _train_cli(recipes["killed"], ("checkpoint_partial", 6))
    assert [x["step"] for x in _log(out)] == [1, 2, 3, 4, 5, 6]  # steps 4-6 redone from step 3, logged once
    assert sorted(p.name for p in ckpts.iterdir()) == [".step-000006.partial", "step-000003"]
    partial = ckpts / ".step-000006.partial"
    assert sorted(p.name for p in partial.iterdir()) == ["optimizer.pt", "rng.pt", "scheduler.pt", "state.json",
                                                         "trainable.pt"]
    assert not (out / "config.json").exists()  # the model is saved only after the last checkpoint

    _train_cli(recipes["killed"])  # resumes from step 3 again: the partial checkpoint is never read
    _train_cli(recipes["reference"])

    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000003", "step-000006"]
    for step in ("step-000003", "step-000006"):
        got, want = (torch.load(d / "checkpoints" / step / "trainable.pt") for d in (out, ref))
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), step
    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # the log: same steps, losses and learning rates (tokens and seconds count this invocation's work)
    same = ("step", "loss", "lr")
    assert [{k: x[k] for k in same} for x in _log(out)] == [{k: x[k] for k in same} for x in _log(ref)]


@pytest.mark.slow
def test_lora_trains_adapters_only_and_saves_a_merged_model(tmp_path: Path, store_root: Path, tiny_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    from builder.train import main
    from builder.train_recipe import parse_train_recipe

    recipe = parse_train_recipe(_recipe(tmp_path, store_root, tiny_model_dir, lora={"r": 4, "alpha": 8},
                                        hyperparameters={"max_steps": 3}))
    main(recipe)
    trained = torch.load(recipe.out / "checkpoints" / "step-000003" / "trainable.pt")
    assert trained and all("lora_" in k for k in trained)
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
    assert main(["train", str(path), "--max-steps", "2", "--no-eval"]) == 0
    assert "trained 2 steps on tiny@v1" in capsys.readouterr().out
    path.write_text(yaml.safe_dump(_recipe(tmp_path, store_root, tiny_model_dir, dataset={"ref": "nope@v1"})))
    assert main(["train", str(path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.slow
def test_seq2seq_student_trains_and_evaluates(tmp_path: Path, store_root: Path, tiny_model_dir: Path, tokenizer,
                                              benchmarks_dir: Path):
    """The Flan-T5 path on a tiny random T5: target-only loss ending on EOS, then transformers.generate eval."""
    from transformers import T5Config, T5ForConditionalGeneration

    from builder.eval import evaluate, load_questions
    from builder.teachers.hf import load_model
    from builder.train import encode_example, main
    from builder.train_recipe import parse_train_recipe

    t5 = tmp_path / "tiny-t5"
    T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id)).save_pretrained(t5)
    tokenizer.save_pretrained(t5)
    enc, target = encode_example(tokenizer, "Q", " 3 + 4 = 7 --> 7", "seq2seq", 512)
    assert enc == tokenizer("Q ###")["input_ids"]
    assert target == tokenizer("3 + 4 = 7 --> 7")["input_ids"] + [tokenizer.eos_token_id]

    recipe = parse_train_recipe(_recipe(tmp_path, store_root, t5, format="seq2seq",
                                        eval={"enabled": False, "backend": "hf"},
                                        hyperparameters={"max_steps": 8, "learning_rate": 1e-2}))
    result = main(recipe)
    assert result.steps == 8 and result.losses[-1] < result.losses[0]
    questions = load_questions(["multiarith"], "test", benchmarks_dir=str(benchmarks_dir), limit=3)
    run = evaluate(str(recipe.out), questions, recipe.eval.model_copy(update={"max_tokens": 8}), fmt="seq2seq",
                   engine=load_model(str(recipe.out), seq2seq=True))
    assert run.predictions.height == 3 and (run.predictions["completion_tokens"] <= 8).all()
