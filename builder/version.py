"""The package version, in a leaf module: stages import it without importing `builder` (whose __init__ re-exports
the API, which reaches every stage)."""

__version__ = "0.1.0"
