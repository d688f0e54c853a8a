"""User-facing errors: each says what went wrong, where (file, row, field) and what to do."""


class BuilderError(Exception):
    """A mistake the user can fix; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


class RecipeError(BuilderError):
    """A recipe (build or training) is invalid."""


class SchemaError(BuilderError):
    """A table does not match its schema in schemas/."""


class InputError(BuilderError):
    """An input file (task file, completions, graded table) is unreadable or malformed."""


class StoreError(BuilderError):
    """A dataset version is missing, corrupt or locked."""


class EngineError(BuilderError):
    """The teacher engine (vLLM or an OpenAI-compatible server) failed."""


class CostLimit(BuilderError):
    """The run spent `teacher.max_cost_usd`: it stopped cleanly (shards and journal kept) and resumes when raised."""

    exit_code = 3
