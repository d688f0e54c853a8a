"""What teacher requests cost: the recipe's `teacher.prices`, else the shipped table (builder/data/prices.yaml).

Usage is counted the way providers bill it: prompt tokens (those served from the provider's cache at the cached
price), completion tokens (thinking included), with the batch discount for batch APIs. A model with no price costs
None: tokens are still counted, dollars are never guessed.

Before a run, `dry_run` says what sampling would send (`rationale sample|build --dry-run`): requests, tokens counted
with the model's tokenizer where it is on this machine, and dollars, with nothing sent and no engine started.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from builder.recipe import Prices, TeacherConfig

if TYPE_CHECKING:
    import polars as pl

    from builder.recipe import Recipe

TABLE = Path(__file__).parent / "data" / "prices.yaml"


@cache
def shipped() -> dict[str, Prices]:
    return {name: Prices.model_validate(p) for name, p in yaml.safe_load(TABLE.read_text()).items()}


def prices_for(teacher: TeacherConfig) -> Prices | None:
    """The recipe's prices, else the shipped entry of the model's exact name (without a provider prefix), else
    None: a snapshot or variant the table does not list is never priced like its neighbour."""
    if teacher.prices is not None:
        return teacher.prices
    return shipped().get(teacher.model.rsplit("/", 1)[-1].lower())


@dataclass
class Usage:
    """Token counts of finished requests and what they cost (None: no price known)."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def add(self, other: Usage) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.cached_tokens += other.cached_tokens
        self.completion_tokens += other.completion_tokens
        if other.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + other.cost_usd

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.cost_usd is not None:
            out["cost_usd"] = round(self.cost_usd, 6)
        return out

    def describe(self) -> str:
        """One line for summaries and the card; no dollars where no price is known."""
        cached = f" ({self.cached_tokens:,} cached)" if self.cached_tokens else ""
        line = (f"{self.requests:,} requests, {self.prompt_tokens:,} prompt tokens{cached}, "
                f"{self.completion_tokens:,} completion tokens")
        return line if self.cost_usd is None else f"{line}, {format_usd(self.cost_usd)}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return cls(**{k: data[k] for k in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens",
                                           "cost_usd") if k in data})


def token_count(value: Any) -> int | None:
    """A token count a server sent: a finite number >= 0, else None (absent, negative, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return int(value)


def request_usage(usage: Any, prices: Prices | None, *, batch: bool = False, prompt_guess: int = 0,
                  completion_guess: int = 0) -> Usage:
    """One request's Usage from the `usage` object of an OpenAI-compatible response. A count the server did not
    send, or sent unreadable, is the caller's guess (an upper bound), never zero: a limit on cost must see it."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    prompt = token_count(usage.get("prompt_tokens"))
    prompt = prompt_guess if prompt is None else prompt
    cached = min(prompt, token_count(details.get("cached_tokens") if isinstance(details, dict) else None) or 0)
    completion = token_count(usage.get("completion_tokens"))
    completion = completion_guess if completion is None else completion
    return Usage(1, prompt, cached, completion, cost(prices, prompt, cached, completion, batch=batch))


def cost(prices: Prices | None, prompt: float, cached: float, completion: float, *, batch: bool = False
         ) -> float | None:
    """USD for these token counts at `prices` (None without prices)."""
    if prices is None:
        return None
    cached_price = prices.input if prices.cached_input is None else prices.cached_input
    usd = ((prompt - cached) * prices.input + cached * cached_price + completion * prices.output) / 1e6
    return usd * (1 - prices.batch_discount) if batch else usd


def format_usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.6f}"


# ------------------------------------------------------------------ before a run: what it would cost
CHARS_PER_TOKEN = 4


@dataclass
class Tokens:
    """Token counts as the teacher's engine or server makes them: the model's tokenizer where it loads from local
    files (a dry run downloads nothing), else characters / 4, approximate (`why` says so and why)."""

    tokenizer: Any
    why: str | None = None

    @classmethod
    def of(cls, teacher: TeacherConfig) -> Tokens:
        from builder.models import resolve_model

        try:  # optional: the engine extras install it, the openai extra alone does not
            from transformers import AutoTokenizer
        except ImportError:
            return cls(None, f"characters / {CHARS_PER_TOKEN}: transformers is not installed")
        try:
            return cls(AutoTokenizer.from_pretrained(resolve_model(teacher.model), revision=teacher.revision,
                                                     local_files_only=True))
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, HF errors
            return cls(None, f"characters / {CHARS_PER_TOKEN}: no tokenizer of {teacher.model!r} on this machine "
                       f"({type(exc).__name__})")

    def count(self, texts: list[str], *, special: bool) -> list[int]:
        """Tokens per text; `special`: with the BOS/EOS the tokenizer adds (engines and servers add them to raw
        prompts, not to a rendered chat template, which writes its own)."""
        if self.tokenizer is None:
            return [-(-len(t) // CHARS_PER_TOKEN) for t in texts]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=special)["input_ids"]] if texts else []

    def chat(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> str:
        """The chat template's text, as vLLM renders it for a chat request."""
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


@dataclass
class Estimate:
    """What sampling would send now, counted before anything is sent."""

    questions: int  # questions still missing samples
    samples: int
    stage1_requests: int
    stage2_requests: int
    prompt_tokens: int
    completion_tokens: int
    completion_per_sample: float  # from max_tokens (+ answer_max_tokens): an upper bound; or the run's measured mean
    measured_on: int  # samples in the run's shards that measured it (0: the upper bound)
    cost_usd: float | None  # None: no price known for the model
    prices: dict[str, Any] | None
    approximate: str | None  # how tokens were counted when no tokenizer could (None: with the model's tokenizer)

    @property
    def requests(self) -> int:
        return self.stage1_requests + self.stage2_requests

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "requests": self.requests,
                "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6)}

    def lines(self, model: str) -> list[str]:
        """What `--dry-run` prints."""
        per = (f"a mean of {self.completion_per_sample:.1f} per sample, measured on the {self.measured_on:,} "
               "samples the run holds" if self.measured_on else
               f"at most {self.completion_per_sample:.1f} per sample: max_tokens (+ answer_max_tokens), an upper "
               "bound")
        if self.cost_usd is None:
            dollars = f"unknown: no price for {model!r} (set teacher.prices)"
        else:
            p = self.prices or {}
            dollars = (f"{format_usd(self.cost_usd)} at USD {p['input']:g} input / {p['output']:g} output per "
                       "million tokens (no provider cache assumed)")
        return [f"dry run, nothing sent: {self.samples:,} samples of {self.questions:,} questions to sample",
                f"requests: {self.requests:,} ({self.stage1_requests:,} rationale, {self.stage2_requests:,} answer)",
                f"prompt tokens: {self.prompt_tokens:,}"
                + ("" if self.approximate is None else f" (approximate, {self.approximate})"),
                f"completion tokens: {self.completion_tokens:,} ({per})",
                f"cost: {dollars}"]


def estimate(plan: pl.DataFrame, recipe: Recipe, *, tokens: Tokens | None = None, measured: pl.Series | None = None,
             messages: bool = False, batch: bool = False) -> Estimate:
    """Requests, tokens and dollars of `plan` (`builder.sample.plan`: what sampling would ask for now).

    Stage 1 is one request per row with `teacher.use_n`, else one per sample; stage 2 one per sample of a row with
    an answer prompt, whose prompt is the stage-1 prompt, the rationale and the answer prompt. A rationale is
    max_tokens long, an answer answer_max_tokens: an upper bound, unless `measured` holds the completion tokens of
    samples the run already has (both stages, as the shards count them): their mean is what a sample costs.
    `messages`: chat prompts are JSON messages the server renders (counted through the chat template); `batch`:
    priced at the batch discount.
    """
    t, s = recipe.teacher, recipe.sampling
    tokens = tokens or Tokens.of(t)
    measured_on = 0 if measured is None else measured.len()
    mean = float(measured.mean()) if measured_on else None  # type: ignore[union-attr, arg-type]
    chat = recipe.prompt.format == "chat"
    prompts = plan["prompt"].to_list()
    if chat and messages and tokens.tokenizer is not None:  # messages as JSON: the server renders them
        prompts = [tokens.chat(json.loads(p), recipe.prompt.chat_template_kwargs) for p in prompts]
    stage1 = tokens.count(prompts, special=not chat)
    answer = tokens.count(["\n" + a for a in plan["answer_prompt"].fill_null("")], special=False)
    rationale = s.max_tokens if mean is None else mean
    samples = requests = prompt = answered = 0
    for n, has_answer, p1, p2 in zip(plan["count"], plan["answer_prompt"].is_not_null(), stage1, answer,
                                     strict=True):
        sent = 1 if t.use_n else n
        samples, requests, prompt = samples + n, requests + sent, prompt + sent * p1
        if has_answer:
            answered += n
            prompt += n * (p1 + rationale + p2)
    completion = round(samples * rationale + (answered * s.answer_max_tokens if mean is None else 0))
    prices = prices_for(t)
    return Estimate(plan.height, samples, requests, answered, round(prompt), completion,
                    completion / samples if samples else 0.0, measured_on,
                    cost(prices, prompt, 0, completion, batch=batch),
                    None if prices is None else prices.model_dump(), tokens.why)
