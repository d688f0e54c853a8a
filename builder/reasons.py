"""Stage, drop-reason and funnel names of the curate stage: one place, so the ledger, the stats and the card agree.

A ledger row is either `KEPT`, or `DROPPED` with one `STAGE_*` and one reason from `REASONS[stage]`
(datatrove's `dropped_<reason>` counts, kept per stage).
"""

from __future__ import annotations

KEPT = "kept"
DROPPED = "dropped"

STAGE_FILTER = "filter"
STAGE_CORRECTNESS = "correctness"
STAGE_EXACT_DEDUP = "exact_dedup"
STAGE_NEAR_DEDUP = "near_dedup"
STAGE_SELECT = "select"
STAGE_DECONTAMINATE = "decontaminate"

# Stages in the order curate.run applies them; a row dropped by one is not seen by later ones.
STAGES = (STAGE_FILTER, STAGE_CORRECTNESS, STAGE_EXACT_DEDUP, STAGE_NEAR_DEDUP, STAGE_SELECT, STAGE_DECONTAMINATE)

# The teacher refused the sample's request (finish_reason "error", stage 1 or the answer stage; the ledger's `error`
# holds the message): checked first on every row, whatever curation.filters lists (`builder.filters.teacher_error`).
TEACHER_ERROR = "teacher_error"
# Quality filters (one reason per filter in builder.filters.FILTERS).
EMPTY = "empty"
TRUNCATED = "truncated"
DEGENERATE = "degenerate"
NO_ANSWER = "no_answer"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
ANSWER_FIRST = "answer_first"
# Quality filters of reasoning traces (rows with a `reasoning` column that is not null).
UNFINISHED_THINKING = "unfinished_thinking"
NO_FINAL_ANSWER = "no_final_answer"
REASONING_TOO_SHORT = "reasoning_too_short"
REASONING_TOO_LONG = "reasoning_too_long"
REPEATED_LOOP = "repeated_loop"
# Later stages.
INCORRECT = "incorrect"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
NEAR_DUPLICATE_GLOBAL = "near_duplicate_global"
NOT_SELECTED = "not_selected"
CONTAMINATED_QUESTION = "contaminated_question"
CONTAMINATED_RATIONALE = "contaminated_rationale"

REASONS: dict[str, tuple[str, ...]] = {
    STAGE_FILTER: (TEACHER_ERROR, EMPTY, TRUNCATED, DEGENERATE, NO_ANSWER, TOO_SHORT, TOO_LONG, ANSWER_FIRST,
                   UNFINISHED_THINKING, NO_FINAL_ANSWER, REASONING_TOO_SHORT, REASONING_TOO_LONG, REPEATED_LOOP),
    STAGE_CORRECTNESS: (INCORRECT,),
    STAGE_EXACT_DEDUP: (EXACT_DUPLICATE,),
    STAGE_NEAR_DEDUP: (NEAR_DUPLICATE, NEAR_DUPLICATE_GLOBAL),
    STAGE_SELECT: (NOT_SELECTED,),
    STAGE_DECONTAMINATE: (CONTAMINATED_QUESTION, CONTAMINATED_RATIONALE),
}

# Funnel steps (the fields of builder.stats.Funnel), in order, each with the last stage a row must have passed to
# count there (None: every sampled row counts).
FUNNEL_AFTER: dict[str, str | None] = {
    "sampled": None,
    "answered": STAGE_FILTER,
    "correct": STAGE_CORRECTNESS,
    "deduped": STAGE_NEAR_DEDUP,
    "selected": STAGE_SELECT,
    "kept": STAGE_DECONTAMINATE,
}
FUNNEL = tuple(FUNNEL_AFTER)
