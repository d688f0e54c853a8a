"""Dataset card: README.md (YAML header that `datasets` and the Hub read, plus the funnel, teacher accuracy, grade
statuses, diversity and decontamination) and PNG plots, rendered from a version's manifest and rows.

The YAML `configs` / `dataset_info` header is produced with `datasets`' own MetadataConfigs / DatasetInfosDict so
that `load_dataset(<version folder>[, config])` reads exactly what the header says.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from builder import reasons as R
from builder.cost import Usage
from builder.prompts import ZERO_SHOT_COT_TRIGGER
from builder.stats import GRADE_STATUS_MEANING

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).resolve().parent / "templates" / "dataset_card.md.j2"
# The usage snippet's Hub id until `rationale publish` writes the real one into the published copy (`for_repo`).
REPO_PLACEHOLDER = "<org>/{name}"
UNPUBLISHED_NOTE = " (not published yet: `rationale publish` writes the repo id here)"
_SAMPLING_KEYS = ("n", "temperature", "top_p", "max_tokens", "answer_max_tokens", "seed")


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _funnel_rows(funnel: dict[str, dict[str, int]]) -> tuple[list[str], list[dict[str, Any]]]:
    stages = [s for s in R.FUNNEL if any(s in f for f in funnel.values())]
    stages += sorted({s for f in funnel.values() for s in f} - set(stages))
    rows = []
    for task in sorted(funnel):
        f = funnel[task]
        sampled, correct = f.get("sampled"), f.get("correct")
        acc = f"{correct / sampled:.1%} ({correct}/{sampled})" if sampled and correct is not None else "-"
        rows.append({"task": task, "values": [_fmt(f.get(s)) for s in stages], "accuracy": acc})
    return stages, rows


def _grading(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The Grading table: per task, its graded rows (the funnel's `sampled`) and each status that is not ok; the
    meaning of each status shown; the tasks with parse_error rows. None for a version without grade statuses
    (written before they were counted, or without stats)."""
    counts = manifest.get("grade_status") or {}
    if not counts:
        return None
    statuses = [s for s in GRADE_STATUS_MEANING if any(s in c for c in counts.values())]
    statuses += sorted({s for c in counts.values() for s in c} - set(statuses))
    funnel = manifest.get("funnel") or {}
    rows = [{"task": t, "graded": _fmt((funnel.get(t) or {}).get("sampled")),
             "values": [_fmt(counts[t].get(s)) for s in statuses]} for t in sorted(counts)]
    parse_errors = {t: c["parse_error"] for t, c in sorted(counts.items()) if c.get("parse_error")}
    return {"statuses": statuses, "rows": rows,
            "meanings": [(s, GRADE_STATUS_MEANING.get(s, "a status this tool version does not describe"))
                         for s in statuses],
            "parse_errors": parse_errors, "parse_error_total": sum(parse_errors.values())}


def length_counts(rows: pl.LazyFrame | pl.DataFrame, column: str = "rationale") -> pl.DataFrame:
    """Rows per (task, length of `column` in words), sorted: the length table and histogram are computed from these
    counts, never from the rows in memory (the store merges the counts of the parts it writes; counts of parts add
    up). Words are split on single spaces."""
    words = (pl.col(column).str.count_matches(" ", literal=True) + 1).alias("words")
    return (rows.lazy().filter(pl.col(column).is_not_null()).group_by("task", words).agg(pl.len().alias("n"))
            .sort("task", "words").collect())


def _length_table(counts: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows, mean, median and max length per task, as polars computes them over the lengths themselves."""
    n, words = pl.col("n"), pl.col("words")

    def at(rank: pl.Expr) -> pl.Expr:  # the length at 0-based position `rank` of the task's sorted lengths
        return words.filter(n.cum_sum() > rank).first()

    return counts.group_by("task").agg(
        n.sum().alias("rows"), ((words.cast(pl.Int64) * n).sum() / n.sum()).round(1).alias("mean"),
        ((at((n.sum() - 1) // 2) + at(n.sum() // 2)) / 2).alias("median"), words.max().alias("max"),
    ).sort("task").to_dicts()


def _reasoning_section(counts: pl.DataFrame, manifest: dict[str, Any], assets: Path) -> dict[str, Any] | None:
    """Trace lengths (table + histogram, from `length_counts` of `reasoning`) and the unfinished-thinking count; None
    when no row has a trace and no trace was dropped unfinished (a dataset without traces shows nothing)."""
    filters = (manifest["recipe"].get("curation") or {}).get("filters") or []
    unfinished = manifest["dropped"].get(R.STAGE_FILTER, {}).get(R.UNFINISHED_THINKING, 0)
    if not counts.height and not unfinished:
        return None
    if counts.height:
        _plot_lengths(counts, assets / "reasoning_lengths.png", what="reasoning trace")
    return {"rows": _length_table(counts) if counts.height else [], "has_plot": bool(counts.height),
            "unfinished": unfinished, "filtered": "unfinished_thinking" in filters}


def _prompting(settings: dict[str, Any]) -> str:
    """One sentence on how the teacher was prompted, from the recipe's `prompt` section."""
    style = settings.get("style", "zero_shot_cot")
    trigger = settings.get("trigger", ZERO_SHOT_COT_TRIGGER)
    fmt = "chat template" if settings.get("format") == "chat" else "raw completion"
    if style == "few_shot_cot":
        ex = settings.get("exemplars")
        source = "the paper's exemplars" if ex == "paper" else f"{len(ex or [])} exemplars from the recipe"
        return f"Few-shot-CoT with {source} before each question ({fmt})."
    two = ("then the task's answer prompt (e.g. \"Therefore, the answer (arabic numerals) is\") in a second call"
           if settings.get("two_stage", True) else "answer read from the rationale")
    return f"Zero-shot-CoT: `Q: {{question}}\\nA: {trigger}`, {two} ({fmt})."


def _plot_funnel(funnel: dict[str, dict[str, int]], stages: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    tasks = sorted(funnel)
    fig = Figure(figsize=(max(5.0, 1.2 * len(tasks) + 3), 3.6), dpi=100)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(stages))
    for i, stage in enumerate(stages):
        values = [funnel[t].get(stage) or 0 for t in tasks]
        ax.bar([x + i * width for x in range(len(tasks))], values, width, label=stage)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(tasks))], tasks, rotation=20, ha="right")
    top = max((funnel[t].get(s) or 0 for t in tasks for s in stages), default=0)
    ax.set_ylim(0, max(1, top) * 1.4)  # room for the legend above the bars
    ax.set_ylabel("rationales")
    ax.set_title("Curation funnel per task")
    ax.legend(fontsize="small", ncols=min(3, len(stages)))
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def _plot_lengths(counts: pl.DataFrame, path: Path, what: str = "rationale") -> None:
    """Histogram per task from `length_counts` (each length weighted by its count: the same bars as the lengths)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6), dpi=100)
    ax = fig.add_subplot()
    top = max(1, int(counts.get_column("words").max()))
    bins = min(40, top)
    for (task,), part in counts.group_by(["task"], maintain_order=True):
        ax.hist(part.get_column("words").to_numpy(), bins=bins, range=(0, top),
                weights=part.get_column("n").to_numpy(), alpha=0.6, label=str(task))
    ax.set_xlabel(f"{what} length (words)")
    ax.set_ylabel("rows")
    ax.set_title(f"{what[0].upper()}{what[1:]} lengths")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


def source_datasets(recipe: dict[str, Any]) -> list[str]:
    """The task sources as the card's `source_datasets`: a Hub dataset's id, a paper task's key, a file's name."""
    out = []
    for item in (recipe.get("tasks") or {}).get("items") or []:
        source, path = item.get("source", "paper"), item.get("path")
        out.append(path if source == "hub" and path else Path(path).name if source == "file" and path
                   else item.get("name"))
    return sorted({s for s in out if s})


def card_data(folder: Path, manifest: dict[str, Any]) -> Any:
    """The YAML header: Hub metadata (license, language, annotations_creators, source_datasets, ...), `configs`
    (data_files per config, default first) and `dataset_info` per config."""
    import pyarrow.parquet as pq
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    recipe = manifest.get("recipe") or {}
    store_cfg = recipe.get("store") or {}
    data = DatasetCardData(
        pretty_name=f"{manifest['name']} ({manifest['version']})",
        license=store_cfg.get("license"),
        language=store_cfg.get("language") or ["en"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        source_datasets=source_datasets(recipe) or None,
        task_categories=["text-generation"],
        tags=["chain-of-thought", "rationales", "fine-tune-cot", "rationale-builder"],
        size_categories=[_size_category(manifest["rows"])],
    )
    configs, infos = {}, {}
    for name, cfg in manifest["configs"].items():
        configs[name] = {"data_files": [{"split": cfg["split"], "path": cfg["data_files"]}]}
        if name == "default":
            configs[name]["default"] = True
        files = [folder / f for f in cfg["files"]]
        features = Features.from_arrow_schema(pq.read_schema(files[0])) if files else None
        nbytes = sum(pq.ParquetFile(f).metadata.row_group(i).total_byte_size
                     for f in files for i in range(pq.ParquetFile(f).metadata.num_row_groups))
        splits = SplitDict()
        splits.add(SplitInfo(name=cfg["split"], num_bytes=nbytes, num_examples=cfg["rows"]))
        infos[name] = DatasetInfo(features=features, splits=splits, config_name=name, dataset_size=nbytes,
                                  download_size=sum(f.stat().st_size for f in files))
    MetadataConfigs(configs).to_dataset_card_data(data)
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return data


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "1M<n<10M"


def for_repo(text: str, name: str, repo: str) -> str:
    """A rendered card as published to `repo`: the usage snippet names the real repo id."""
    return text.replace(f'load_dataset("{REPO_PLACEHOLDER.format(name=name)}"', f'load_dataset("{repo}"').replace(
        UNPUBLISHED_NOTE, "")


def _decontamination(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The decontamination report, or None when it did not run (no eval questions: nothing was checked)."""
    decon = manifest.get("decontamination") or {}
    ran = decon.get("eval_questions") or (manifest.get("recipe") or {}).get("curation", {}).get("decontaminate")
    return decon if ran else None


def write_card(folder: str | Path, rows: pl.LazyFrame | pl.DataFrame, manifest: dict[str, Any], *,
               lengths: dict[str, pl.DataFrame] | None = None) -> Path:
    """Render README.md and assets/*.png for a version folder whose data/ is already written.

    Reads the manifest the store is writing: the stats sections (empty when the build recorded none,
    which the card says) and the recipe. `rows` (sorted) gives the example (its first row) and, unless `lengths`
    holds them, the length counts (`length_counts` of rationale and reasoning: the store gathers them while it
    writes the data and passes only the first row).

    Returns:
        The README.md path.
    """
    from huggingface_hub import DatasetCard

    folder = Path(folder)
    assets = folder / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    funnel = manifest["funnel"]
    stages, funnel_rows = _funnel_rows(funnel)
    has_funnel_plot = bool(funnel_rows and stages)
    if has_funnel_plot:
        _plot_funnel(funnel, stages, assets / "funnel.png")
    rows = rows.lazy()
    if lengths is None:
        names = rows.collect_schema().names()
        lengths = {c: length_counts(rows, c) for c in ("rationale", "reasoning") if c in names}
    counts = lengths.get("rationale", pl.DataFrame())
    length_rows = _length_table(counts) if counts.height else []
    if counts.height:
        _plot_lengths(counts, assets / "rationale_lengths.png")
    diversity_rows = [
        {"task": t, "jb": _fmt(d["before"]["mean_pairwise_jaccard"]), "ja": _fmt(d["after"]["mean_pairwise_jaccard"]),
         "db": _fmt(d["before"]["distinct_ngrams"]), "da": _fmt(d["after"]["distinct_ngrams"])}
        for t, d in sorted(manifest["diversity"].items())
    ]
    dropped_rows = [(stage, reason, n) for stage, reasons in sorted(manifest["dropped"].items())
                    for reason, n in sorted(reasons.items())]
    recipe = manifest["recipe"]
    sampling_settings = recipe.get("sampling", {})
    sampling_items = [(k, sampling_settings[k]) for k in _SAMPLING_KEYS if k in sampling_settings]
    sampling = manifest["sampling"]
    usage = ", ".join(f"{k.replace('_', ' ')} {_fmt(sampling[k], 1)}"
                      for k in ("prompt_tokens", "completion_tokens", "seconds") if sampling.get(k) is not None)
    if sampling.get("spent"):  # served and hosted teachers: what the run paid; other backends pay no request
        spent = Usage.from_json(sampling["spent"]).describe()
        usage += f"{'; ' if usage else ''}the run spent {spent} (resumes included)"
    example = None
    head = rows.head(1).collect()
    if head.height:
        first = head.row(0, named=True)
        example = {k: (first[k][:300] + " ...") if len(first[k]) > 300 else first[k]
                   for k in ("task", "prompt", "completion")}
    description = recipe.get("description") or (
        f"A rationale dataset for {', '.join(sorted(manifest['tasks'])) or 'no tasks'}.")
    card = DatasetCard.from_template(
        card_data(folder, manifest),
        template_path=str(TEMPLATE),
        name=manifest["name"],
        version=manifest["version"],
        description=description,
        content_hash=manifest["content_hash"],
        rows=manifest["rows"],
        tasks=sorted(manifest["tasks"]),
        teacher=manifest["teacher"],
        tool_version=manifest.get("tool_version"),
        created_at=manifest.get("created_at"),
        configs=list(manifest["configs"]),
        task_configs=[c for c in manifest["configs"] if c != "default"],
        columns=manifest.get("columns", rows.collect_schema().names()),
        example=example,
        prompting=_prompting(recipe.get("prompt", {})),
        sampling_items=sampling_items,
        usage=usage,
        funnel_stages=stages,
        funnel_rows=funnel_rows,
        has_funnel_plot=has_funnel_plot,
        dropped_rows=dropped_rows,
        grading=_grading(manifest),
        length_rows=length_rows,
        has_length_plot=bool(counts.height),
        reasoning=_reasoning_section(lengths.get("reasoning", pl.DataFrame()), manifest, assets),
        diversity_rows=diversity_rows,
        decon=_decontamination(manifest),
        repo_id=REPO_PLACEHOLDER.format(name=manifest["name"]),
        unpublished_note=UNPUBLISHED_NOTE,
        license=(recipe.get("store") or {}).get("license"),
        sources=source_datasets(recipe),
        trl_types={c: v.get("trl_type", "standard prompt-completion") for c, v in manifest["configs"].items()},
    )
    path = folder / "README.md"
    path.write_text(str(card), encoding="utf-8")
    return path
