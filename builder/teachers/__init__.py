"""Teacher backends: the `Teacher` protocol, the `TEACHERS` registry, one module per backend.

vllm (in-process engine), openai (an OpenAI-compatible server), openai_batch (the OpenAI Batch API), import
(existing completions) and hf (transformers.generate; also how seq2seq students are evaluated).
`make_teacher(TeacherSetup.of(recipe))` builds a recipe's one.
"""

from __future__ import annotations

# Importing the backend modules registers them (heavy libraries load inside them, when a teacher starts).
from builder.teachers import batch, hf, imported, openai, vllm  # noqa: F401
from builder.teachers.base import (
    SAMPLE_FIELDS,
    TEACHERS,
    Answer,
    Completion,
    Request,
    ShardResult,
    ShardWork,
    Teacher,
    TeacherFactory,
    TeacherSetup,
    make_teacher,
    sequential_stream,
)

__all__ = ["SAMPLE_FIELDS", "TEACHERS", "Answer", "Completion", "Request", "ShardResult", "ShardWork", "Teacher",
           "TeacherFactory", "TeacherSetup", "make_teacher", "sequential_stream"]
