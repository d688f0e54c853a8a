"""rationale-builder: build, curate and publish chain-of-thought rationale datasets (Fine-tune-CoT).

The Python API (`builder.api`): `build_dataset(recipe)`, `open_version(ref, config)`, `publish(ref, repo)`,
`pull(ref)`, `read_rows(ref)`, `load(recipe)`.
"""

from builder.api import build_dataset, load, open_version, publish, pull, read_rows
from builder.version import __version__

__all__ = ["__version__", "build_dataset", "load", "open_version", "publish", "pull", "read_rows"]
