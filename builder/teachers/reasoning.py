"""A reasoning teacher's completion split into its thinking trace and the text after it, by vLLM's own parsers.

`teacher.reasoning_parser` names a parser of `vllm.reasoning.ReasoningParserManager` (deepseek_r1, qwen3, ...); the
same parser a `vllm serve --reasoning-parser` runs, so the in-process engine, raw `/completions` and imported text
split exactly as a server's chat endpoint does. Nothing here knows a tag: the parser does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from builder.errors import EngineError, RecipeError


@dataclass(frozen=True)
class Split:
    """The trace (None: the teacher gave none), the text after it, whether the trace closed, its token count."""

    reasoning: str | None
    content: str
    finished: bool | None
    tokens: int | None

    def fields(self) -> dict[str, Any]:
        """The `Completion` fields of the trace."""
        return {"reasoning": self.reasoning, "reasoning_tokens": self.tokens, "reasoning_finished": self.finished}


class ReasoningSplitter:
    """One vLLM reasoning parser over one tokenizer; `split(text)` for every completion."""

    def __init__(self, name: str, tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None) -> None:
        require_parsers(name)
        from vllm.reasoning import ReasoningParserManager

        try:
            cls = ReasoningParserManager.get_reasoning_parser(name)
        except KeyError:
            raise RecipeError(f"teacher.reasoning_parser: unknown vLLM reasoning parser {name!r}; valid: "
                              f"{', '.join(sorted(ReasoningParserManager.list_registered()))}") from None
        try:
            self.parser = cls(tokenizer, chat_template_kwargs=dict(chat_template_kwargs or {}))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise EngineError(f"teacher.reasoning_parser {name!r} does not fit the teacher's tokenizer ({exc}); "
                              "pick the parser of this model family") from exc
        self.name, self.tokenizer = name, tokenizer
        self.end = getattr(self.parser, "reasoning_end_str", None)

    def split(self, text: str) -> Split:
        """The parser's (reasoning, content) of a whole completion; unfinished when the end tag never came."""
        reasoning, content = self.parser.extract_reasoning(text, None)
        if reasoning is None:
            return Split(None, text if content is None else content, None, None)
        finished = (self.end in text) if self.end else content is not None
        tokens = len(self.tokenizer.encode(reasoning, add_special_tokens=False))
        return Split(reasoning, content or "", finished, tokens)


def require_parsers(name: str) -> None:
    """vLLM's reasoning parsers split the traces, whatever the teacher backend: refuse before any work without it."""
    from builder.extras import VLLM_INSTALL, require

    require("vllm", f"teacher.reasoning_parser {name!r} (vLLM's reasoning parsers)",
            f"{VLLM_INSTALL}; or leave teacher.reasoning_parser unset when the traces come split")


def load_tokenizer(model: str, revision: str | None = None) -> Any:
    """The teacher's tokenizer (local folder, alias or cached Hub id), for splitting text outside an engine."""
    from vllm.tokenizers import get_tokenizer

    from builder.models import resolve_model

    try:
        return get_tokenizer(resolve_model(model), revision=revision)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, HF errors
        raise EngineError(f"teacher.model {model!r}: cannot load its tokenizer to run the reasoning parser "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); set "
                          "teacher.model to a local model folder or cached Hub id") from exc
