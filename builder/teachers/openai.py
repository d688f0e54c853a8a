"""OpenAI-compatible teacher (`teacher.backend: openai`): `vllm serve` or a hosted API, same shards and seeds.

Raw prompts go to `/completions`; chat prompts (`prompt.format: chat`) to `/chat/completions`. Every request carries
its seed: with `use_n` one request asks for n samples with seed s (vLLM servers give child i the seed s + i, as the
offline engine does); without it each sample is its own request with seed s + i, which any server honours.

Zero-shot-CoT stage 2 over chat: the conversation is sent back with an assistant turn holding the rationale and the
answer trigger, and the server is asked to continue that turn (`continue_final_message`, a vLLM extension), which
is the API form of the offline engine's raw continuation. Hosted chat APIs without that extension reject it
(HTTP 400, reported with this hint): use `prompt.two_stage: false` there and grade the inline answer. The `prompt`
column of chat samples holds the messages as JSON (the server renders the template).

Requests run on a thread pool of `concurrency` workers; 408/409/429/5xx answers, timeouts and connection errors are
retried `max_retries` times with exponential backoff and jitter (honouring Retry-After). The API key is read from
`api_key_env` at each request and only ever placed in the Authorization header.

Reasoning teachers: a chat answer's thinking trace is read from `message.reasoning_content` or `message.reasoning`
(whichever the server sends; `vllm serve --reasoning-parser` splits it) into `reasoning`, the content stays the
rationale. A completions choice that carries one is read the same way; otherwise, with `teacher.reasoning_parser`,
the raw text is split here by the same vLLM parser (the model's tokenizer must load). `prompt.chat_template_kwargs`,
`sampling.max_thinking_tokens` (vLLM's thinking_token_budget) and `sampling.structured_outputs_regex` go into the
request body as vLLM's extensions.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from builder.errors import EngineError
from builder.teachers.base import (
    TEACHERS,
    Answer,
    Completion,
    Request,
    ShardResult,
    ShardWork,
    Teacher,
    TeacherSetup,
    sequential_stream,
)
from builder.teachers.reasoning import ReasoningSplitter, Split, load_tokenizer, require_parsers

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


@TEACHERS.register("openai")
class OpenAITeacher(Teacher):
    """A teacher behind an OpenAI-compatible HTTP API (completions for raw prompts, chat completions for chat)."""

    backoff_s = 0.5  # first retry delay; doubles per attempt
    backoff_max_s = 30.0

    def __init__(self, setup: TeacherSetup, *, engine: Any = None) -> None:
        import httpx

        teacher = setup.teacher
        if not teacher.base_url:
            raise EngineError("teacher.base_url is required for backend=openai (e.g. http://127.0.0.1:8000/v1)")
        self.cfg, self.sampling, self.chat = teacher, setup.sampling, setup.prompt.format == "chat"
        self.base_url = teacher.base_url.rstrip("/")
        self.client = httpx.Client(timeout=httpx.Timeout(teacher.timeout_s),
                                   limits=httpx.Limits(max_connections=teacher.concurrency))
        self.pool = ThreadPoolExecutor(max_workers=teacher.concurrency, thread_name_prefix="teacher")
        self.requests_sent = 0
        self.retries = 0
        self.template_kwargs = setup.prompt.chat_template_kwargs
        s = setup.sampling  # stage-1 extensions of vLLM servers
        self._extra: dict[str, Any] = {
            **({"thinking_token_budget": s.max_thinking_tokens} if s.max_thinking_tokens is not None else {}),
            **({"structured_outputs": {"regex": s.structured_outputs_regex}} if s.structured_outputs_regex else {}),
        }
        self._splitter: ReasoningSplitter | None = None
        if self.cfg.reasoning_parser:  # checked now: the splitter is built on the first (paid) response
            require_parsers(str(self.cfg.reasoning_parser))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def __del__(self) -> None:  # best effort; the CLI process exits anyway
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ---------------------------------------------------------------- transport
    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.cfg.api_key_env)  # read per request, never stored
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries on 408/409/429/5xx, timeouts and connection errors; other errors raise at once."""
        import httpx

        url = f"{self.base_url}{path}"
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.retries += 1
            self.requests_sent += 1
            retry_after = None
            try:
                resp = self.client.post(url, json=body, headers=self._headers())
            except httpx.TimeoutException:
                last = f"timed out after {self.cfg.timeout_s:g} s"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 300:
                    return resp.json()
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if resp.status_code not in RETRY_STATUS:
                    hint = ""
                    if resp.status_code == 400 and body.get("continue_final_message"):
                        hint = " (this server cannot continue an assistant turn; set prompt.two_stage: false)"
                    elif resp.status_code in (401, 403):
                        hint = f" (check the key in ${self.cfg.api_key_env})"
                    raise EngineError(f"teacher {url}: {last}{hint}")
                retry_after = _retry_after(resp.headers.get("retry-after"))
            if attempt < self.cfg.max_retries:
                delay = retry_after if retry_after is not None else min(
                    self.backoff_max_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                log.debug("teacher %s: %s; retry %d in %.2f s", url, last, attempt + 1, delay)
                time.sleep(delay)
        raise EngineError(f"teacher {url}: {last} (gave up after {self.cfg.max_retries + 1} attempts; raise "
                          "teacher.max_retries or teacher.timeout_s)")

    # ---------------------------------------------------------------- teacher interface
    def render(self, prompt: str | list[dict[str, str]]) -> str:
        """Raw prompts as they are; chat messages as JSON (the server applies the chat template)."""
        if self.chat:
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            return json.dumps(msgs, ensure_ascii=False)
        if not isinstance(prompt, str):
            raise EngineError("prompt.format raw needs text prompts")
        return prompt

    @property
    def splitter(self) -> ReasoningSplitter:
        """The recipe's parser over the model's tokenizer, for raw completions the server did not split."""
        if self._splitter is None:
            tokenizer = load_tokenizer(self.cfg.model, self.cfg.revision)
            self._splitter = ReasoningSplitter(str(self.cfg.reasoning_parser), tokenizer, self.template_kwargs)
        return self._splitter

    def _sample(self, prompt: str, n: int, seed: int | None, *, temperature: float, top_p: float,
                max_tokens: int, stop: list[str] | None, continuation: str | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model, "n": n, "temperature": temperature, "top_p": top_p,
                                "max_tokens": max_tokens, **(extra or {})}
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = stop
        if self.chat:
            if self.template_kwargs:
                body["chat_template_kwargs"] = self.template_kwargs
            messages = json.loads(prompt)
            if continuation is not None:
                messages = [*messages, {"role": "assistant", "content": continuation}]
                body.update(continue_final_message=True, add_generation_prompt=False)
            body.update(messages=messages, logprobs=True)
            return self._post("/chat/completions", body)
        body.update(prompt=prompt if continuation is None else prompt + continuation, logprobs=0)
        return self._post("/completions", body)

    def _choices(self, resp: dict[str, Any]) -> list[tuple[int, str, str, int | None, Split | None]]:
        """(index, text, finish_reason, completion tokens, reasoning split) per choice; tokens from logprobs, else
        usage when n=1. The split is None when the teacher is no reasoning teacher."""
        choices = resp.get("choices") or []
        usage = resp.get("usage") or {}
        out = []
        for c in choices:
            part = c.get("message") or {} if self.chat else c
            text = (part.get("content") if self.chat else part.get("text")) or ""
            lp = c.get("logprobs") or {}
            toks = lp.get("content") if self.chat else lp.get("tokens")
            one = len(choices) == 1
            ntok = len(toks) if toks is not None else (usage.get("completion_tokens") if one else None)
            out.append((int(c.get("index", 0)), text, c.get("finish_reason") or "stop", ntok,
                        self._split(part, text, (usage.get("completion_tokens_details") or {}) if one else {})))
        return sorted(out, key=lambda o: o[0])

    def _split(self, part: dict[str, Any], text: str, details: dict[str, Any]) -> Split | None:
        """The trace the server sent (`reasoning_content` or `reasoning`), else the recipe's parser on raw text."""
        trace = part.get("reasoning_content")
        trace = part.get("reasoning") if trace is None else trace
        if trace is not None:
            # vLLM's parsers send no content for a trace that never closed (a closed trace with nothing after it
            # reads the same: no answer either way)
            return Split(trace, text, bool(text), details.get("reasoning_tokens") or None)
        if self.cfg.reasoning_parser and not self.chat:  # /completions: servers do not split raw text
            return self.splitter.split(text)
        return None

    def _one(self, req: Request) -> list[Completion]:
        s = self.sampling
        calls = [(req.seed, req.n)] if self.cfg.use_n else [(req.seed + i, 1) for i in range(req.n)]
        done = []
        for k, (seed, n) in enumerate(calls):
            resp = self._sample(req.prompt, n, seed, temperature=s.temperature, top_p=s.top_p,
                                max_tokens=s.max_tokens, stop=s.stop or None, extra=self._extra)
            choices = self._choices(resp)
            if len(choices) != n:
                raise EngineError(f"teacher {self.base_url}: asked for n={n}, got {len(choices)} choices")
            ptok = (resp.get("usage") or {}).get("prompt_tokens")
            for idx, text, finish, ntok, part in choices:
                i = k + idx
                done.append(Completion(req.qid, req.first_idx + i, req.seed + i, part.content if part else text,
                                       finish, ptok, ntok, **(part.fields() if part else {})))
        return done

    def rationales(self, requests: Sequence[Request]) -> list[Completion]:
        return [c for part in self.pool.map(self._one, requests) for c in part]

    def _answer(self, item: tuple[str, str, str], max_tokens: int) -> Answer:
        prompt, rationale, answer_prompt = item
        resp = self._sample(prompt, 1, None, temperature=0.0, top_p=1.0, max_tokens=max_tokens,
                            stop=["\n"], continuation=f"{rationale.rstrip()}\n{answer_prompt}")
        _, text, _, ntok, _ = self._choices(resp)[0]
        return text, ntok

    def answers(self, items: Sequence[tuple[str, str, str]], max_tokens: int) -> list[Answer]:
        """Zero-shot-CoT stage 2, greedy: (prompt, rationale, answer trigger) -> (answer text, tokens)."""
        return list(self.pool.map(partial(self._answer, max_tokens=max_tokens), items))

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        return sequential_stream(self, shards, answer_max_tokens)


def _retry_after(value: str | None) -> float | None:
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None
