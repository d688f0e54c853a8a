"""What teacher requests cost: the recipe's `teacher.prices`, else the shipped table (builder/data/prices.yaml).

Usage is counted the way providers bill it: prompt tokens (those served from the provider's cache at the cached
price), completion tokens (thinking included), with the batch discount for batch APIs. A model with no price costs
None: tokens are still counted, dollars are never guessed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from builder.recipe import Prices, TeacherConfig

TABLE = Path(__file__).parent / "data" / "prices.yaml"


@cache
def shipped() -> dict[str, Prices]:
    return {name: Prices.model_validate(p) for name, p in yaml.safe_load(TABLE.read_text()).items()}


def prices_for(teacher: TeacherConfig) -> Prices | None:
    """The recipe's prices, else the longest shipped entry the model's name (without a provider prefix) starts
    with, else None."""
    if teacher.prices is not None:
        return teacher.prices
    name = teacher.model.rsplit("/", 1)[-1].lower()
    table = shipped()
    matches = [k for k in table if name == k or name.startswith(k + "-")]
    return table[max(matches, key=len)] if matches else None


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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return cls(**{k: data[k] for k in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens",
                                           "cost_usd") if k in data})


def request_usage(usage: dict[str, Any] | None, prices: Prices | None, *, batch: bool = False) -> Usage:
    """One request's Usage from the `usage` object of an OpenAI-compatible response."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return Usage(1, prompt, cached, completion, cost(prices, prompt, cached, completion, batch=batch))


def cost(prices: Prices | None, prompt: float, cached: float, completion: float, *, batch: bool = False
         ) -> float | None:
    """USD for these token counts at `prices` (None without prices)."""
    if prices is None:
        return None
    cached_price = prices.input if prices.cached_input is None else prices.cached_input
    usd = ((prompt - cached) * prices.input + cached * cached_price + completion * prices.output) / 1e6
    return usd * (1 - prices.batch_discount) if batch else usd
