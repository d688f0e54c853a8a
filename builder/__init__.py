"""rationale-builder: build, curate and publish chain-of-thought rationale datasets (Fine-tune-CoT)."""

__version__ = "0.1.0"
