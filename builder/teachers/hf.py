"""`teacher.backend: hf`: transformers.generate in batches, for seq2seq models (Flan-T5 students) and machines
without vLLM. Left padding; CUDA + bf16 when there is a GPU. Prompts are tokenised with the tokenizer's special
tokens, as vLLM does with a text prompt; stop strings cut the decoded text."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from builder.prompts import answer_stage_prompt
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


@dataclass
class HFModel:
    """A loaded model and tokenizer (the `engine` of this backend; several teachers may share one)."""

    model: Any
    tokenizer: Any
    device: str
    seq2seq: bool = False
    batch_size: int = 16  # prompts per generate call

    def close(self) -> None:
        import torch

        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def load_model(model_ref: str, *, seq2seq: bool | None = None, revision: str | None = None, batch_size: int = 16
               ) -> HFModel:
    """Load `model_ref` (folder, Hub id or alias) for generation; seq2seq None: as the model's config says."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from builder.models import resolve_model

    ref = resolve_model(model_ref)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kw = {"revision": revision} if revision else {}
    if seq2seq is None:
        seq2seq = bool(getattr(AutoConfig.from_pretrained(ref, **kw), "is_encoder_decoder", False))
    tokenizer = AutoTokenizer.from_pretrained(ref, **kw)
    cls = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = cls.from_pretrained(ref, dtype=dtype, **kw).to(device).eval()
    return HFModel(model, tokenizer, device, seq2seq, batch_size)


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


@TEACHERS.register("hf")
class HFTeacher(Teacher):
    """A teacher (or student under evaluation) on transformers.generate; `engine` is an `HFModel` to reuse."""

    def __init__(self, setup: TeacherSetup, *, engine: HFModel | None = None) -> None:
        self.config, self.sampling = setup.teacher, setup.sampling
        self._engine, self._own = engine, engine is None
        self.template_kwargs = setup.prompt.chat_template_kwargs
        self.special = setup.prompt.format != "chat"  # a rendered chat prompt already holds the template's BOS

    @property
    def engine(self) -> HFModel:
        if self._engine is None:
            self._engine = load_model(self.config.model, revision=self.config.revision)
        return self._engine

    def start(self) -> None:
        self.engine  # noqa: B018 - the property starts the engine on first use

    def close(self) -> None:
        if self._own and self._engine is not None:
            self._engine.close()
            self._engine = None

    def render(self, prompt: str | list[dict[str, str]]) -> str:
        if isinstance(prompt, str):
            return prompt
        return self.engine.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True,
                                                         **self.template_kwargs)

    def _generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_tokens: int,
                  seed: int, stop: Sequence[str]) -> list[list[tuple[str, str, int, int]]]:
        """Per prompt, n (text, finish_reason, completion tokens, prompt tokens); one seed for the whole call."""
        import torch

        e = self.engine
        tok = e.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        torch.manual_seed(seed)
        results = []
        for start in range(0, len(prompts), e.batch_size):
            chunk = [tok(p, add_special_tokens=self.special)["input_ids"] for p in prompts[start:start + e.batch_size]]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=e.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=e.device)
            kw: dict[str, Any] = {"max_new_tokens": max_tokens, "pad_token_id": pad, "num_return_sequences": n}
            kw.update({"do_sample": True, "temperature": temperature, "top_k": 0,
                       **({"top_p": top_p} if top_p < 1 else {})} if temperature > 0 else {"do_sample": False})
            with torch.no_grad():
                out = e.model.generate(input_ids=ids, attention_mask=mask, **kw)
            new = out if e.seq2seq else out[:, width:]
            for i, p in enumerate(chunk):
                gens = []
                for row in new[i * n:(i + 1) * n].tolist():
                    ended = tok.eos_token_id in row
                    row = row[:row.index(tok.eos_token_id)] if ended else row
                    row = [t for t in row if t != pad]
                    text, stopped = _cut_at_stop(tok.decode(row, skip_special_tokens=True), stop)
                    gens.append((text, "stop" if ended or stopped else "length", len(row), len(p)))
                results.append(gens)
        return results

    def rationales(self, requests: Sequence[Request]) -> list[Completion]:
        """Requests with the same n and seed share generate calls (evaluation asks all questions with one seed)."""
        s, done = self.sampling, []
        groups: dict[tuple[int, int], list[Request]] = {}
        for r in requests:
            groups.setdefault((r.n, r.seed), []).append(r)
        for (n, seed), group in groups.items():
            outs = self._generate([r.prompt for r in group], n=n, temperature=s.temperature, top_p=s.top_p,
                                  max_tokens=s.max_tokens, seed=seed, stop=s.stop)
            for r, gens in zip(group, outs, strict=True):
                done += [Completion(r.qid, r.first_idx + i, r.seed + i, text, finish, ptok, ntok)
                         for i, (text, finish, ntok, ptok) in enumerate(gens)]
        return done

    def answers(self, items: Sequence[tuple[str, str, str]], max_tokens: int) -> list[Answer]:
        outs = self._generate([answer_stage_prompt(*item) for item in items], n=1, temperature=0.0, top_p=1.0,
                              max_tokens=max_tokens, seed=0, stop=["\n"])
        return [(o[0][0], o[0][2]) for o in outs]

    def stream(self, shards: Iterable[ShardWork], answer_max_tokens: int) -> Iterator[ShardResult]:
        return sequential_stream(self, shards, answer_max_tokens)
