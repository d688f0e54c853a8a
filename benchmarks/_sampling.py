"""What the sampling benchmarks share: the prompt set's command-line arguments and the JSON-last-line exit."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parser(description: str) -> argparse.ArgumentParser:
    """Model, task files and the prompt set (questions x n, max tokens, shard size) of every sampling benchmark."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--benchmarks-dir", default=os.environ.get(
        "RATIONALE_BENCHMARKS_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "benchmarks")))
    p.add_argument("--questions", type=int, default=48)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--shard-size", type=int, default=8)
    return p


def print_result(result: dict) -> None:
    """The JSON result as stdout's last line, after everything logged on stderr."""
    sys.stderr.flush()
    print(json.dumps(result), flush=True)
