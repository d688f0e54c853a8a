"""What a teacher costs: the price lookup (shipped table, recipe override), usage and dollars as providers bill them,
the dry-run estimate (tokenizer or characters / 4, upper bound or measured), `--dry-run` sending nothing, and the
spent usage in the build summary and the card."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import yaml

from builder import cost, sample, store
from builder.cli import main
from builder.recipe import Prices, Recipe, TeacherConfig
from builder.run import Run
from builder.teachers import Completion, Request, ShardWork
from tests.helpers import ARITH_QUESTIONS, STORE_RECIPE, arith_task, make_ledger, make_stats


# ---------------------------------------------------------------- prices
@pytest.mark.parametrize(("model", "entry"), [
    ("gpt-4o", "gpt-4o"),
    ("gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),  # a dated snapshot has its own entry: their prices differ
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # twice gpt-4o's
    ("gpt-4o-2024-02-01", None),  # a name the table does not hold is never priced like a neighbour
    ("gpt-4o-realtime-preview", None),
    ("o4-mini-deep-research", None),
    ("openai/gpt-4.1-nano", "gpt-4.1-nano"),  # a provider prefix is dropped
    ("deepseek/DeepSeek-Reasoner", "deepseek-reasoner"),
    ("Qwen/Qwen2.5-7B-Instruct", None),  # your own `vllm serve`: no price, dollars are never guessed
    ("gpt-4ox", None),
], ids=lambda v: str(v))
def test_prices_come_from_the_shipped_table_by_name(model, entry):
    assert cost.prices_for(TeacherConfig(model=model)) == (cost.shipped()[entry] if entry else None)


def test_recipe_prices_win_over_the_table():
    own = Prices(input=9.0, output=1.0)
    assert cost.prices_for(TeacherConfig(model="gpt-4o", prices=own)) is own


def test_cached_and_batch_tokens_are_billed_as_providers_bill_them():
    p = Prices(input=2.0, cached_input=0.5, output=8.0, batch_discount=0.5)
    assert cost.cost(p, 1_000_000, 400_000, 1_000_000) == pytest.approx(0.6 * 2 + 0.4 * 0.5 + 8)
    assert cost.cost(p, 1_000_000, 400_000, 1_000_000, batch=True) == pytest.approx((0.6 * 2 + 0.4 * 0.5 + 8) / 2)
    assert cost.cost(Prices(input=2.0, output=8.0), 1_000_000, 400_000, 0) == pytest.approx(2.0)  # no cached price
    assert cost.cost(None, 1_000_000, 0, 1_000_000) is None

    one = cost.request_usage({"prompt_tokens": 1000, "completion_tokens": 100,
                              "prompt_tokens_details": {"cached_tokens": 600}}, p)
    assert (one.requests, one.prompt_tokens, one.cached_tokens, one.completion_tokens) == (1, 1000, 600, 100)
    assert one.cost_usd == pytest.approx((400 * 2 + 600 * 0.5 + 100 * 8) / 1e6)
    unpriced = cost.Usage()
    unpriced.add(cost.request_usage({"prompt_tokens": 5, "completion_tokens": 2}, None))
    assert unpriced.cost_usd is None and "$" not in unpriced.describe()
    unpriced.add(one)
    assert cost.Usage.from_json(unpriced.to_json()) == unpriced and unpriced.describe().endswith("$0.001900")


# ---------------------------------------------------------------- the estimate
def _recipe(tmp_path: Path, **teacher) -> Recipe:
    return Recipe.model_validate({
        "name": "cost", "work_dir": str(tmp_path / "runs"), "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": "openai", "model": "my-model", "base_url": "http://127.0.0.1:9/v1",
                    "prices": {"input": 1.0, "output": 2.0}, **teacher},
        "sampling": {"n": 3, "max_tokens": 100, "answer_max_tokens": 10},
    })


PLAN = pl.DataFrame({"qid": ["a", "b"], "task": ["t", "t"], "prompt": ["x" * 40, "y" * 80],  # 10 and 20 tokens
                     "answer_prompt": ["z" * 11, None], "count": [3, 2]})  # "\n" + 11 characters: 3 tokens
APPROX = cost.Tokens(None, "characters / 4: no tokenizer here")


def test_estimate_counts_requests_tokens_and_dollars_of_a_plan(tmp_path):
    est = cost.estimate(PLAN, _recipe(tmp_path), tokens=APPROX)
    # stage 1: one request per row (n samples each); stage 2: one per sample of a row with an answer prompt, its
    # prompt the stage-1 prompt + a max_tokens rationale + the answer prompt
    assert (est.stage1_requests, est.stage2_requests, est.requests, est.samples) == (2, 3, 5, 5)
    assert est.prompt_tokens == 10 + 20 + 3 * (10 + 100 + 3)
    assert est.completion_tokens == 5 * 100 + 3 * 10  # the upper bound
    assert est.cost_usd == pytest.approx((est.prompt_tokens * 1.0 + est.completion_tokens * 2.0) / 1e6)
    assert est.approximate == APPROX.why and est.measured_on == 0

    one_by_one = cost.estimate(PLAN, _recipe(tmp_path, use_n=False), tokens=APPROX)
    assert (one_by_one.stage1_requests, one_by_one.prompt_tokens) == (5, 3 * 10 + 2 * 20 + 3 * (10 + 100 + 3))
    unpriced = cost.estimate(PLAN, _recipe(tmp_path, prices=None), tokens=APPROX)
    assert unpriced.cost_usd is None and "no price for 'my-model'" in "\n".join(unpriced.lines("my-model"))


def test_estimate_measures_completions_once_the_run_holds_samples(tmp_path):
    recipe = _recipe(tmp_path)
    run = Run.of(recipe)
    Path(run.samples).mkdir(parents=True)
    work = ShardWork([Request("q", "Q: ?", 0, 3, 5)], {"q": "The answer is"})
    done = [Completion("q", 0, 5, "r", "stop", 4, 16), Completion("q", 1, 6, "r", "stop", 4, 40),
            Completion("q", 2, 7, "", "error", None, 0, error="refused")]  # a refused sample measures nothing
    sample.write_shard(work, done, [("7", 4), None, None], run.shard(0), recipe=recipe, run_id=run.id)

    est = cost.estimate(PLAN, recipe, tokens=APPROX, measured=sample.measured_completions(run))
    assert est.measured_on == 2 and est.completion_per_sample == 30  # (16 + 4) and 40, both stages
    assert est.completion_tokens == 5 * 30
    assert est.prompt_tokens == 10 + 20 + 3 * (10 + 30 + 3)
    assert "measured on the 2 samples" in "\n".join(est.lines("my-model"))


@pytest.fixture
def word_tokenizer(tmp_path: Path) -> Path:
    """A tokenizer of whitespace-separated words (any word a token) with a chat template: known counts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    fast.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                          "{% endfor %}<|im_start|> assistant")
    fast.save_pretrained(tmp_path / "words")
    return tmp_path / "words"


def test_estimate_counts_with_the_models_tokenizer_when_it_is_here(tmp_path, word_tokenizer, monkeypatch):
    tokens = cost.Tokens.of(TeacherConfig(model=str(word_tokenizer)))
    assert tokens.why is None
    plan = PLAN.with_columns(prompt=pl.Series(["Q: one two", "Q: one two three four"]),
                             answer_prompt=pl.Series(["The answer is", None]))
    est = cost.estimate(plan, _recipe(tmp_path, model=str(word_tokenizer)))
    assert est.approximate is None and est.prompt_tokens == 3 + 5 + 3 * (3 + 100 + 3)

    # chat over a server: the messages are sent as JSON, the server renders the template
    chat = _recipe(tmp_path, model=str(word_tokenizer))
    chat.prompt.format = "chat"
    messages = plan.with_columns(prompt=pl.Series([json.dumps([{"role": "user", "content": "Q: one two"}])] * 2),
                                 answer_prompt=pl.lit(None, pl.String))
    # <|im_start|> user ... <|im_end|> ...
    assert cost.estimate(messages, chat, messages=True).prompt_tokens == 2 * (3 + 5)

    monkeypatch.setitem(sys.modules, "transformers", None)  # an install with the openai extra alone
    assert cost.Tokens.of(TeacherConfig(model=str(word_tokenizer))).why == ("characters / 4: transformers is not "
                                                                           "installed")


def test_dry_run_renders_chat_prompts_with_the_tokenizer_and_starts_no_engine(tmp_path, word_tokenizer,
                                                                              monkeypatch):
    from builder.teachers import vllm

    def no_engine(*args, **kwargs):
        raise AssertionError("a dry run started the engine")

    monkeypatch.setattr(vllm, "load_engine", no_engine)
    recipe = Recipe.model_validate({
        "name": "cost", "work_dir": str(tmp_path / "runs"), "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": "vllm", "model": str(word_tokenizer)},
        "prompt": {"format": "chat", "two_stage": False}, "sampling": {"n": 2, "max_tokens": 50},
    })
    est = sample.dry_run(recipe)
    words = [len(f"{q}\nLet's think step by step.".split()) + 5 for q, _ in ARITH_QUESTIONS]  # + the template's
    assert est.approximate is None and est.prompt_tokens == sum(words)
    assert (est.samples, est.requests, est.completion_tokens, est.cost_usd) == (10, 5, 10 * 50, None)
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- --dry-run sends nothing
@pytest.fixture
def counting_server() -> Iterator[list[str]]:
    """A loopback HTTP server that records every request it gets (and refuses it); yields its log."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _refuse(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.send_response(400)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = _refuse  # noqa: N815 - http.server's names

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen.append(f"http://127.0.0.1:{server.server_address[1]}/v1")
    yield seen
    server.shutdown()
    server.server_close()


def test_dry_run_prints_the_estimate_and_sends_nothing(tmp_path, capsys, counting_server):
    base_url = counting_server.pop()
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "hosted", "work_dir": str(tmp_path / "runs"), "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": "openai", "model": "gpt-4o-mini", "base_url": base_url, "max_retries": 0},
        "sampling": {"n": 3, "max_tokens": 100, "answer_max_tokens": 10},
        "store": {"root": str(tmp_path / "store")},
    }))
    assert main(["sample", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run, nothing sent: 15 samples of 5 questions" in out and "requests: 20 (5 rationale, 15 answer)" in out
    assert "approximate, characters / 4: no tokenizer of 'gpt-4o-mini'" in out and "cost: $" in out

    assert main(["build", str(path), "--dry-run", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert (est["requests"], est["completion_tokens"]) == (20, 15 * 100 + 15 * 10)
    assert est["cost_usd"] == pytest.approx((est["prompt_tokens"] * 0.15 + est["completion_tokens"] * 0.60) / 1e6,
                                            abs=1e-6)  # the shipped gpt-4o-mini price
    assert counting_server == [] and sorted(p.name for p in tmp_path.iterdir()) == ["questions.jsonl", "recipe.yaml"]


# ---------------------------------------------------------------- what was spent: build summary and card
SPENT = {"requests": 7, "prompt_tokens": 1234, "cached_tokens": 200, "completion_tokens": 456, "cost_usd": 0.0123}


def test_build_summary_shows_what_the_teacher_spent_and_refused(tmp_path, capsys, monkeypatch):
    from rich.console import Console

    from builder.cli import _common
    from builder.teachers.imported import ImportedTeacher

    monkeypatch.setattr(_common, "console", Console(stderr=True, width=300))  # the summary table, unwrapped

    completions = tmp_path / "completions.jsonl"
    completions.write_text("".join(  # the teacher refused the first question
        json.dumps({"question": q, "rationale": f"So it is {a}. The answer is {a}.", "answer_completion": f" {a}.",
                    "finish_reason": "stop" if i else "error"}) + "\n" for i, (q, a) in enumerate(ARITH_QUESTIONS)))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "spent", "work_dir": str(tmp_path / "runs"), "tasks": {"items": [arith_task(tmp_path)]},
        "teacher": {"backend": "import", "model": "some-api-model", "import_path": str(completions)},
        "store": {"root": str(tmp_path / "store")},
    }))
    assert main(["build", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["teacher_errors"] == 1 and summary["teacher_usage"] is summary["teacher_spent"] is None

    # a backend that pays per request reports this call's usage and the run's total (`Teacher.stats`)
    usage = {**SPENT, "requests": 3, "cost_usd": 0.005}
    monkeypatch.setattr(ImportedTeacher, "stats", lambda self: {"usage": usage, "spent": SPENT})
    path.write_text(path.read_text().replace("name: spent", "name: spent2"))
    assert main(["build", str(path)]) == 0
    err = capsys.readouterr().err
    assert "teacher spent (this build)" in err and "3 requests" in err and "$0.005000" in err
    assert "teacher spent (run total)" in err and "$0.012300" in err and "teacher errors" in err
    card = (tmp_path / "store" / "spent2" / "v1" / "README.md").read_text()
    assert "the run spent 7 requests, 1,234 prompt tokens (200 cached), 456 completion tokens, $0.012300" in card


@pytest.mark.parametrize("spent", [None, {**SPENT, "cost_usd": None}], ids=["no-usage", "no-price"])
def test_card_never_shows_a_cost_it_does_not_have(tmp_path, spent):
    ledger = make_ledger()
    stats = make_stats(ledger)
    if spent:
        stats.sampling.extra["spent"] = spent
    info = store.write_version(store.rows_from_ledger(ledger), root=tmp_path, name="demo", recipe=STORE_RECIPE,
                               stats=stats, tool_version="test")
    usage = next(line for line in (info.path / "README.md").read_text().splitlines() if "Teacher usage" in line)
    assert "$" not in usage
    assert ("the run spent 7 requests, 1,234 prompt tokens (200 cached), 456 completion tokens (resumes included)"
            in usage) == bool(spent)
