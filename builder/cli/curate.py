"""`rationale curate`: graded Parquet -> ledger Parquet (+ stats JSON) with a recipe's curation settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("curate")
    def curate_cmd(
        input: Annotated[Path, typer.Option("--input", "-i", help="Graded Parquet (schemas/graded.table.json).")],
        output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the ledger Parquet.")],
        recipe: Annotated[Path | None, typer.Option(
            "--recipe", "-r", help="Build recipe whose `curation:` settings (and test splits) to use; default: "
            "the default curation settings.")] = None,
        stats: Annotated[Path | None, typer.Option(help="Also write the curation stats (funnel, drops, diversity, "
                                                   "decontamination hits, settings) as JSON here.")] = None,
        eval_file: Annotated[list[Path] | None, typer.Option(
            "--eval", help="Extra eval questions (JSONL/Parquet with 'question'; repeatable); turns "
            "decontamination on.")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the result (paths, funnel, drops) as JSON.")]
        = False,
    ) -> None:
        """Curate graded samples: filters, exact + MinHash dedup, diversity selection, decontamination."""
        import json
        import os

        import polars as pl
        from rich.table import Table

        from builder import curate
        from builder import reasons as R
        from builder.bind import load_recipe
        from builder.cli._common import console, echo_json, stdout_console
        from builder.paths import check_output_path
        from builder.recipe import CurationConfig
        from builder.schemas import read_table, write_table
        from builder.stats import grade_status_lines

        for path in (output, stats):  # before any work: a failed command leaves nothing behind
            if path is not None:
                check_output_path(path)
        rec = load_recipe(recipe) if recipe is not None else None
        cfg = rec.curation if rec is not None else CurationConfig()
        graded = read_table(input, "graded")
        frames = []
        if cfg.decontaminate and rec is not None:
            from builder.build import eval_questions_for

            ev = eval_questions_for(rec)
            if ev is not None:
                frames.append(ev)
        elif cfg.eval_sets:
            raise ValueError(f"{recipe or 'curation'}: curation.eval_sets needs curation.decontaminate: true")
        for path in eval_file or []:
            from builder.tasks import load_eval_set

            frames.append(load_eval_set(path))
            cfg = cfg.model_copy(update={"decontaminate": True})
        if cfg.decontaminate and not frames:
            raise ValueError(f"{recipe}: curation.decontaminate is on but the recipe has no paper task test split "
                             "and no curation.eval_sets; add one or pass --eval FILE")
        eval_questions = pl.concat(frames, how="diagonal_relaxed") if frames else None

        with console.status(f"curating {graded.height:,} rows"):
            ledger, st = curate.run(graded, cfg, eval_questions=eval_questions)
        stats_tmp = None
        if stats is not None:  # written to a temp name first; both outputs appear only once both are complete
            stats.parent.mkdir(parents=True, exist_ok=True)
            stats_tmp = stats.with_name(f".{stats.name}.{os.getpid()}.tmp")
            stats_tmp.write_text(json.dumps(st.to_json(), indent=2) + "\n")
        try:
            write_table(ledger, output, "ledger")
            if stats_tmp is not None:
                os.replace(stats_tmp, stats)
        finally:
            if stats_tmp is not None:
                stats_tmp.unlink(missing_ok=True)

        if json_out:
            echo_json({"output": str(output), "stats": str(stats) if stats else None, "rows": ledger.height,
                       "funnel": st.to_json()["funnel"], "dropped": st.dropped, "grade_status": st.grade_status,
                       "decontamination_hits": len(st.decontamination.hits)})
            return
        out = stdout_console()
        table = Table("task", *R.FUNNEL)
        for task, f in st.funnel.items():
            table.add_row(task, *(f"{getattr(f, step):,}" for step in R.FUNNEL))
        out.print(table)
        drops = ", ".join(f"{stage}/{reason} {n:,}" for stage, rs in st.dropped.items() for reason, n in rs.items())
        out.print(f"dropped: {drops or 'none'}")
        for line in grade_status_lines(st.grade_status, st.funnel):
            out.print(f"grading: {line}")
        if st.decontamination.hits:
            out.print(f"decontamination: {len(st.decontamination.hits)} contaminated question(s)")
        where = f", stats to {stats}" if stats else ""
        out.print(f"wrote the ledger ({ledger.height:,} rows) to {output}{where}")
