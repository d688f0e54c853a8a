"""OpenAI-compatible teacher (`teacher.backend: openai`): `vllm serve` or a hosted API, same shards and seeds.

Raw prompts go to `/completions`; chat prompts (`prompt.format: chat`) to `/chat/completions`. Every request carries
its seed: with `use_n` one request asks for n samples with seed s (vLLM servers give child i the seed s + i, as the
offline engine does); without it each sample is its own request with seed s + i, which any server honours. A
server that is not vLLM (found at start from `/models`) gives no such promise for n > 1: those samples are written
with `regenerable` false, and `rationale sample --regenerate` says so.

Zero-shot-CoT stage 2 over chat: the conversation is sent back with an assistant turn holding the rationale and the
answer trigger, and the server is asked to continue that turn (`continue_final_message`, a vLLM extension), which
is the API form of the offline engine's raw continuation. Hosted chat APIs without that extension reject it
(HTTP 400, reported with this hint): use `prompt.two_stage: false` there and grade the inline answer. The `prompt`
column of chat samples holds the messages as JSON (the server renders the template).

Requests run on an asyncio loop of their own, one task per request, many shards in flight, through one shared gate
(`builder.teachers.transport`: rate limits, adaptive concurrency, a circuit breaker, a retry budget in wall-clock
time). A request the server refuses for its content (a prompt over the context limit) becomes an error on its
samples and the run goes on. Every answered request is appended to the run's journal (`builder.journal`) the moment
it arrives and is never sent again: a rerun after a kill, a Ctrl-C or an outage takes it from there. Ctrl-C and
errors cancel what is in flight at once. Usage is counted from the server's `usage` and priced by `builder.cost`;
`teacher.max_cost_usd` stops the run cleanly once the run (all its resumes together) has spent that much. The API
key is read from `api_key_env` at each request and only ever placed in the Authorization header.

Reasoning teachers: a chat answer's thinking trace is read from `message.reasoning_content` or `message.reasoning`
(whichever the server sends; `vllm serve --reasoning-parser` splits it) into `reasoning`, the content stays the
rationale. A completions choice that carries one is read the same way; otherwise, with `teacher.reasoning_parser`,
the raw text is split here by the same vLLM parser (the model's tokenizer must load). `prompt.chat_template_kwargs`,
`sampling.max_thinking_tokens` (vLLM's thinking_token_budget) and `sampling.structured_outputs_regex` go into the
request body as vLLM's extensions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import queue
import threading
import uuid
from collections.abc import Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from builder import cost
from builder.errors import CostLimit, EngineError
from builder.journal import Journal, request_key
from builder.teachers.base import (
    ANSWER_STAGE_FAILED,
    FAILED,
    TEACHERS,
    Answer,
    Completion,
    Request,
    ShardResult,
    ShardWork,
    Teacher,
    TeacherSetup,
    answer_items,
)
from builder.teachers.reasoning import ReasoningSplitter, Split, load_tokenizer, require_parsers
from builder.teachers.transport import Refused, Transport, utf8

log = logging.getLogger(__name__)

T = TypeVar("T")
CANCEL_WAIT_S = 1.0  # how long Ctrl-C waits for cancelled requests to let go of their connections
# Refusals before any answer that mean the server refuses the recipe (a model without /completions, a parameter it
# rejects), not a prompt: the run stops instead of writing every sample as an error.
SYSTEMATIC_REFUSALS = 16
# A completion the provider's content filter cut: paid, but never data (a refused sample, its reason in `error`).
CONTENT_FILTER = "content_filter"
FILTERED = "the provider's content filter stopped this completion (finish_reason content_filter)"


@TEACHERS.register("openai")
class OpenAITeacher(Teacher):
    """A teacher behind an OpenAI-compatible HTTP API (completions for raw prompts, chat completions for chat)."""

    sends_messages = True

    def __init__(self, setup: TeacherSetup, *, engine: Any = None) -> None:
        teacher = setup.teacher
        if not teacher.base_url:
            raise EngineError("teacher.base_url is required for backend=openai (e.g. http://127.0.0.1:8000/v1)")
        self.cfg, self.sampling, self.chat = teacher, setup.sampling, setup.prompt.format == "chat"
        self.base_url = teacher.base_url.rstrip("/")
        self.template_kwargs = setup.prompt.chat_template_kwargs
        s = setup.sampling  # stage-1 extensions of vLLM servers
        self._extra: dict[str, Any] = {
            **({"thinking_token_budget": s.max_thinking_tokens} if s.max_thinking_tokens is not None else {}),
            **({"structured_outputs": {"regex": s.structured_outputs_regex}} if s.structured_outputs_regex else {}),
        }
        self._splitter: ReasoningSplitter | None = None
        if self.cfg.reasoning_parser:  # checked now: the splitter is built on the first (paid) response
            require_parsers(str(self.cfg.reasoning_parser))
        self.prices = cost.prices_for(teacher)
        if teacher.max_cost_usd is not None and self.prices is None:
            raise EngineError(f"teacher.max_cost_usd needs the price of {teacher.model!r}, which the shipped table "
                              "does not hold: set teacher.prices (USD per million tokens: input, output)")
        self.refused = 0  # samples written as errors
        self.server_is_vllm: bool | None = None
        self.journal: Journal | None = None
        self._spent_before = cost.Usage()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._transport: Transport | None = None
        self._inflight: dict[str, asyncio.Future[dict[str, Any] | Refused]] = {}
        self.use_journal(setup.journal)

    # ---------------------------------------------------------------- the loop the requests run on
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run on the loop; wait in short slices, so Ctrl-C reaches this thread at once (and cancels it there)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        try:
            while True:
                try:
                    return fut.result(timeout=0.2)
                except concurrent.futures.TimeoutError:
                    continue
        except BaseException:
            fut.cancel()
            raise

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-http", daemon=True)
            self._thread.start()
        return self._loop

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            async def make() -> Transport:
                c = self.cfg
                return Transport(self.base_url, concurrency=c.concurrency, timeout_s=c.timeout_s,
                                 retry_budget_s=c.retry_budget_s, max_retries=c.max_retries, rpm=c.rpm, tpm=c.tpm,
                                 headers=self._headers, hint=self._hint)
            self._transport = self._run(make())
        return self._transport

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.cfg.api_key_env)  # read per request, never stored
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _hint(self, status: int, body: dict[str, Any], text: str) -> str:
        """Why a refusal is the recipe's or the key's fault (fatal), not the request's; "" when it is not."""
        if status in (401, 403):
            return f" (check the key in ${self.cfg.api_key_env})"
        if status == 400 and body.get("continue_final_message") and "continue_final_message" in text:
            return " (this server cannot continue an assistant turn; set prompt.two_stage: false)"
        return ""

    def use_journal(self, folder: Path | None) -> None:
        """A run's journal; what it spent before is counted from there (this teacher's own counts start again)."""
        self.journal = Journal(folder) if folder is not None else None
        self._spent_before = self.journal.spent() if self.journal else cost.Usage()
        self.usage = cost.Usage()  # what this teacher's requests used (journal hits are not counted again)
        self.answered = self._refusals = 0  # requests answered (journal included) and refused

    def start(self) -> None:
        """Ask the server what it is: vLLM's `/models` says `owned_by: vllm` and lists the names it serves."""
        if self.server_is_vllm is not None:
            return
        answer = self._run(self.transport.get("/models"))
        models = [m for m in (answer.get("data") if isinstance(answer, dict) else None) or [] if isinstance(m, dict)]
        if not models:
            log.info("teacher %s: /models lists nothing (%s): treated as a server that is not vLLM", self.base_url,
                     answer.message if isinstance(answer, Refused) else "no data")
        self.server_is_vllm = any(m.get("owned_by") == "vllm" for m in models)
        served = [str(m.get("id")) for m in models]
        if self.server_is_vllm and self.cfg.model not in served:
            raise EngineError(f"teacher {self.base_url} serves {', '.join(map(repr, served))}, not "
                              f"{self.cfg.model!r}: set teacher.model to the name the server was started with "
                              "(its --served-model-name, else its --model)")

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
        loop, thread, transport = self._loop, self._thread, self._transport
        self._loop = self._thread = self._transport = None
        if loop is None or thread is None or not thread.is_alive():
            return
        if transport is not None:
            asyncio.run_coroutine_threadsafe(transport.aclose(), loop).result(timeout=CANCEL_WAIT_S * 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()

    def stats(self) -> dict[str, Any]:
        spent = cost.Usage()
        spent.add(self._spent_before)
        spent.add(self.usage)
        return {"requests_sent": self.requests_sent, "retries": self.retries, "refused": self.refused,
                "journal_hits": self.journal.hits if self.journal else 0,
                "usage": self.usage.to_json(), "spent": spent.to_json()}

    @property
    def requests_sent(self) -> int:
        return self._transport.sent if self._transport else 0

    @property
    def retries(self) -> int:
        return self._transport.retries if self._transport else 0

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

    def request(self, prompt: str, n: int, seed: int | None, *, temperature: float, top_p: float,
                max_tokens: int, stop: list[str] | None, continuation: str | None = None,
                extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """(endpoint path, JSON body) of one request: what the journal keys and a batch file holds."""
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
            return "/chat/completions", body
        body.update(prompt=prompt if continuation is None else prompt + continuation, logprobs=0)
        return "/completions", body

    def compact(self, resp: dict[str, Any]) -> dict[str, Any]:
        """What a response is kept as (in the journal): per choice its index, text, finish reason, token count (from
        logprobs, else usage when n=1) and thinking trace, plus the usage; the logprobs themselves are dropped.

        Raises:
            ValueError: the answer holds no choices to read (not a list, a choice that is no object, text that is
                no string): the caller asks again rather than keep it."""
        choices, usage = resp.get("choices"), resp.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        if not isinstance(choices, list):
            raise ValueError("its choices are not a list")
        out = []
        for pos, c in enumerate(choices):
            part = (c.get("message") if self.chat else c) if isinstance(c, dict) else None
            if not isinstance(part, dict):
                raise ValueError(f"choice {pos} is not an object")
            text = part.get("content") if self.chat else part.get("text")
            trace = part.get("reasoning_content")
            trace = part.get("reasoning") if trace is None else trace
            if not isinstance(text, str | None) or not isinstance(trace, str | None):
                raise ValueError(f"choice {pos} holds no text")
            lp = c.get("logprobs")
            toks = (lp.get("content") if self.chat else lp.get("tokens")) if isinstance(lp, dict) else None
            index, finish = c.get("index"), c.get("finish_reason")
            out.append({"index": index if isinstance(index, int) and not isinstance(index, bool) else pos,
                        "text": utf8(text or ""),
                        "finish_reason": utf8(finish) if isinstance(finish, str) and finish else "stop",
                        "tokens": len(toks) if isinstance(toks, list) else (
                            cost.token_count(usage.get("completion_tokens")) if len(choices) == 1 else None),
                        "trace": None if trace is None else utf8(trace)})
        return {"choices": sorted(out, key=lambda c: c["index"]), "usage": _counts(usage)}

    def _split(self, choice: dict[str, Any], details: dict[str, Any]) -> Split | None:
        """The trace the server sent (`reasoning_content` or `reasoning`), else the recipe's parser on raw text;
        None when the teacher is no reasoning teacher."""
        text, trace = choice["text"], choice.get("trace")
        if trace is not None:
            # vLLM's parsers send no content for a trace that never closed (a closed trace with nothing after it
            # reads the same: no answer either way)
            return Split(trace, text, bool(text), details.get("reasoning_tokens") or None)
        if self.cfg.reasoning_parser and not self.chat:  # /completions: servers do not split raw text
            return self.splitter.split(text)
        return None

    async def _ask(self, path: str, body: dict[str, Any], qid: str, samples: list[int], prompt_chars: int
                   ) -> dict[str, Any] | Refused:
        """The journaled answer of this exact request, else the server's (journaled the moment it arrives); a
        request already in flight (identical rationales give identical answer-stage requests) is sent once."""
        key = request_key(path, body)
        prior = None  # what an unreadable journaled answer of this request cost: its replacement carries it
        if self.journal is not None and (entry := self.journal.get(key)) is not None:
            if readable(entry["response"], body["n"]):
                self.answered += 1
                return entry["response"]
            log.warning("journal %s: the answer kept for a request of %s cannot be read: it is asked again",
                        self.journal.folder, qid)
            prior = entry.get("usage")
        if key not in self._inflight:
            self._inflight[key] = asyncio.ensure_future(
                self._fetch(key, path, body, qid, samples, prompt_chars, prior))
            self._inflight[key].add_done_callback(lambda _: self._inflight.pop(key, None))
        return await self._inflight[key]

    async def _fetch(self, key: str, path: str, body: dict[str, Any], qid: str, samples: list[int],
                     prompt_chars: int, prior: dict[str, Any] | None = None) -> dict[str, Any] | Refused:
        n, max_tokens = body["n"], body["max_tokens"]

        def unreadable(answer: dict[str, Any]) -> None:
            """An answer asked again is billed all the same: counted, and journaled as spent (no samples)."""
            paid = cost.request_usage(answer.get("usage"), self.prices, prompt_guess=prompt_chars // 4,
                                      completion_guess=n * max_tokens)
            self.usage.add(paid)
            if self.journal is not None:
                self.journal.append({"key": f"{key}:unreadable:{uuid.uuid4().hex}", "qid": qid, "samples": [],
                                     "usage": paid.to_json(), "response": {}})

        def parse(answer: dict[str, Any]) -> dict[str, Any]:
            out = self.compact(answer)
            if len(out["choices"]) != n:
                raise ValueError(f"asked for n={n}, got {len(out['choices'])} choices")
            return out

        resp = await self.transport.post(path, body, tokens=prompt_chars // 4 + n * max_tokens,
                                         ready=self._within_budget, parse=parse, unreadable=unreadable)
        if isinstance(resp, Refused):
            self._refusals += 1
            if not self.answered and not self._spent_before.requests and self._refusals >= SYSTEMATIC_REFUSALS:
                raise EngineError(f"teacher {self.base_url}: the first {self._refusals} requests were all refused "
                                  f"and none answered (last: {resp.message}): the recipe (model, endpoint, "
                                  "parameters), not a prompt, is what the server refuses")
            return resp
        self.answered += 1
        counted = [c["tokens"] for c in resp["choices"]]
        usage = cost.request_usage(resp["usage"], self.prices, prompt_guess=prompt_chars // 4,
                                   completion_guess=sum(counted) if None not in counted else n * max_tokens)
        self.usage.add(usage)
        if self.cfg.max_cost_usd is not None and self.spent_usd() >= self.cfg.max_cost_usd:
            self.transport.halt()  # requests waiting for rate-limit tokens learn it now
        resp["vllm"] = bool(self.server_is_vllm)  # whether n > 1 samples were seeded s, s+1, ... (regenerable)
        if self.journal is not None:
            kept = usage
            if prior:  # the entry this one replaces (same key) was paid too
                kept = cost.Usage.from_json(prior)
                kept.add(usage)
            self.journal.append({"key": key, "qid": qid, "samples": samples, "usage": kept.to_json(),
                                 "response": resp})
        return resp

    def spent_usd(self) -> float:
        """What the run has spent: before this teacher (its journal) and through it."""
        return (self._spent_before.cost_usd or 0.0) + (self.usage.cost_usd or 0.0)

    def _within_budget(self) -> None:
        limit, spent = self.cfg.max_cost_usd, self.spent_usd()
        if limit is not None and spent >= limit:
            raise CostLimit(f"the run has spent ${spent:.4f} of teacher.max_cost_usd ${limit:g}: stopped before "
                            "sending more")

    async def _rationales(self, req: Request, offset: int, n: int) -> list[Completion]:
        """Samples offset .. offset+n-1 of a request, in one call with seed base + offset."""
        s = self.sampling
        seed = req.seed + offset
        path, body = self.request(req.prompt, n, seed, temperature=s.temperature, top_p=s.top_p,
                                  max_tokens=s.max_tokens, stop=s.stop or None, extra=self._extra)
        idx = [req.first_idx + offset + i for i in range(n)]
        resp = await self._ask(path, body, req.qid, idx, len(req.prompt))
        if isinstance(resp, Refused):
            self.refused += n
            return [Completion(req.qid, i, seed + k, "", FAILED, None, 0, error=resp.message)
                    for k, i in enumerate(idx)]
        choices = resp["choices"]
        if len(choices) != n:
            raise EngineError(f"teacher {self.base_url}: asked for n={n}, got {len(choices)} choices")
        ptok = cost.token_count(resp["usage"].get("prompt_tokens"))
        details = resp["usage"].get("completion_tokens_details") if n == 1 else None
        details = {"reasoning_tokens": cost.token_count(details.get("reasoning_tokens"))} if isinstance(
            details, dict) else {}
        regenerable = n == 1 or bool(resp.get("vllm", self.server_is_vllm))  # the server that drew them says
        done = []
        for k, choice in enumerate(choices):
            if choice["finish_reason"] == CONTENT_FILTER:
                done.append(Completion(req.qid, idx[k], seed + k, "", FAILED, ptok, choice["tokens"],
                                       error=FILTERED))
                continue
            part = self._split(choice, details)
            done.append(Completion(req.qid, idx[k], seed + k, part.content if part else choice["text"],
                                   choice["finish_reason"], ptok, choice["tokens"],
                                   regenerable=None if regenerable else False, **(part.fields() if part else {})))
        return done

    async def _answer(self, prompt: str, c: Completion, answer_prompt: str, max_tokens: int) -> Answer | None:
        """Zero-shot-CoT stage 2 of one completion, greedy; a refusal is written on the completion (None)."""
        path, body = self.request(prompt, 1, None, temperature=0.0, top_p=1.0, max_tokens=max_tokens, stop=["\n"],
                                  continuation=f"{c.text.rstrip()}\n{answer_prompt}")
        resp = await self._ask(path, body, c.qid, [c.sample_idx], len(prompt) + len(c.text))
        if isinstance(resp, Refused):
            self.refused += 1
            c.finish_reason, c.error = FAILED, f"{ANSWER_STAGE_FAILED}{resp.message}"
            return None
        choice = resp["choices"][0]
        if choice["finish_reason"] == CONTENT_FILTER:
            c.finish_reason, c.error = FAILED, f"{ANSWER_STAGE_FAILED}{FILTERED}"
            return None
        return choice["text"], choice["tokens"]

    async def _shard(self, work: ShardWork, answer_max_tokens: int) -> ShardResult:
        """Every call of a shard at once: a request's answer stage starts as soon as its rationales are in."""
        calls = [(req, 0, req.n) for req in work.requests] if self.cfg.use_n else [
            (req, i, 1) for req in work.requests for i in range(req.n)]

        async def call(req: Request, offset: int, n: int) -> tuple[list[Completion], list[Answer | None]]:
            done = await self._rationales(req, offset, n)
            one = ShardWork([req], work.answer_prompt, work.answer_truncated)
            idx = set(answer_items(one, done))
            prompt = work.answer_prompt.get(req.qid) or ""
            answers = await gather_all([self._answer(req.prompt, c, prompt, answer_max_tokens) if i in idx else _none()
                                  for i, c in enumerate(done)])
            return done, answers

        parts = await gather_all([call(*c) for c in calls])
        return work, [c for done, _ in parts for c in done], [a for _, answers in parts for a in answers]

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        """Shards in flight together (until they hold 2 x concurrency stage-1 requests, so a shard of few questions
        never caps the concurrency), yielded as each completes. Ctrl-C or an error cancels every request in flight;
        a cost limit lets the requests in flight finish (they are paid), yields the shards they complete, then
        stops."""
        self.start()
        loop = self._ensure_loop()
        done: queue.Queue[concurrent.futures.Future[ShardResult]] = queue.Queue()
        pending: dict[concurrent.futures.Future[ShardResult], int] = {}  # shard -> its stage-1 requests
        window = 2 * self.cfg.concurrency
        works = iter(shards)
        more = True
        try:
            while True:
                while more and sum(pending.values()) < window:
                    work = next(works, None)
                    if work is None:
                        more = False
                        break
                    fut = asyncio.run_coroutine_threadsafe(self._shard(work, answer_max_tokens), loop)
                    pending[fut] = len(work.requests) if self.cfg.use_n else work.sequences
                    fut.add_done_callback(done.put)
                if not pending:
                    return
                fut = _get(done)
                pending.pop(fut)
                if fut.cancelled():  # it shared a request with a shard that failed: that shard's error follows
                    continue
                if isinstance(fut.exception(), CostLimit):
                    concurrent.futures.wait(pending)
                    yield from (f.result() for f in pending if not f.cancelled() and f.exception() is None)
                    pending.clear()
                yield fut.result()
        finally:
            for fut in pending:
                fut.cancel()
            if pending:
                concurrent.futures.wait(pending, timeout=CANCEL_WAIT_S)


async def _none() -> None:
    return None


def _counts(usage: dict[str, Any]) -> dict[str, Any]:
    """The usage kept: the counts billing and the samples read, as numbers (a server's other fields dropped)."""
    details = {k: usage.get(k) for k in ("prompt_tokens_details", "completion_tokens_details")}
    return {"prompt_tokens": cost.token_count(usage.get("prompt_tokens")),
            "completion_tokens": cost.token_count(usage.get("completion_tokens")),
            "prompt_tokens_details": {"cached_tokens": cost.token_count(
                (details["prompt_tokens_details"] or {}).get("cached_tokens")
                if isinstance(details["prompt_tokens_details"], dict) else None)},
            "completion_tokens_details": {"reasoning_tokens": cost.token_count(
                (details["completion_tokens_details"] or {}).get("reasoning_tokens")
                if isinstance(details["completion_tokens_details"], dict) else None)}}


def readable(response: dict[str, Any], n: int) -> bool:
    """A journaled answer as `compact` writes it: n choices holding text (a hand-edited line may not)."""
    choices = response.get("choices")
    return isinstance(choices, list) and len(choices) == n and isinstance(response.get("usage"), dict) and all(
        isinstance(c, dict) and isinstance(c.get("text"), str) and isinstance(c.get("finish_reason"), str)
        and isinstance(c.get("tokens"), int | None) and isinstance(c.get("trace"), str | None) for c in choices)


async def gather_all(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Every result, in order. When one fails the others are cancelled (none goes on sending requests once its
    shard is lost), except on a cost limit: requests in flight are paid, so they finish and are journaled."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException as exc:
        if not isinstance(exc, CostLimit):
            for t in tasks:
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _get(done: queue.Queue[T]) -> T:
    """The next finished shard; waiting in short slices so Ctrl-C reaches the main thread at once."""
    while True:
        try:
            return done.get(timeout=0.2)
        except queue.Empty:
            continue
