"""`medsuite score BUNDLE INPUT... --out DIR`: batch scoring with a model bundle (local processes or Ray).

Exit codes: 0 all eligible series scored; 1 some failed; 2 nothing scored; 3 usage or bundle error.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer


def command(
    bundle: Annotated[Path, typer.Argument(help="Model bundle: a folder or a .zip made by export_bundle.")],
    inputs: Annotated[list[Path], typer.Argument(
        help="Folders, DICOM files, or a series table (CSV/Parquet) with a 'path' column.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: scores.parquet, scores.csv, medsuite.db.")],
    nodules: Annotated[Path | None, typer.Option(
        "--nodules", help="Nodule table (CSV/Parquet, world mm) for a nodule bundle.")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="Processes reading and preprocessing series (default: all CPU cores).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda (inference).")] = "auto",
    engine: Annotated[str, typer.Option("--engine", help="local | ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Address of a running Ray cluster (default: start a local one).")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="SQLite database (default: OUT/medsuite.db).")] = None,
    include_phi: Annotated[bool, typer.Option(
        "--include-phi", help="Add patient_id to the outputs and keep it in messages (off by default).")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per inference batch.")] = 16,
    rule: Annotated[list[str] | None, typer.Option(
        "--rule", help="Override an eligibility rule, key=value (repeatable): modality=CT,MR  min_slices=20  "
        "max_slice_thickness=2.5  orientation=axial  exclude_image_type=LOCALIZER,DERIVED; 'any'/'none' lifts it.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Score every eligible series under INPUT with BUNDLE; resumable (rerun with the same --out)."""
    import os

    from medsuite.pipelines.scoring import EXIT_USAGE, ScoreConfig, UsageError, score

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = ScoreConfig(
        bundle=bundle, inputs=list(inputs), out=out, nodules=nodules,
        workers=workers if workers is not None else max(1, os.cpu_count() or 1),
        device=device, engine=engine, ray_address=ray_address, db=db, include_phi=include_phi,
        batch_size=batch_size, rules=list(rule or []), progress=not quiet,
    )
    try:
        summary = score(cfg)
    except UsageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    for line in summary.lines():
        typer.echo(line, err=True)
    raise typer.Exit(summary.exit_code)
