"""`medsuite demo-data OUT`: generate the offline demo cohort (synthetic chest CT with real LIDC nodules)."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def command(
    out: Path = typer.Argument(..., help="Output folder (created; must be empty unless --overwrite)."),
    patients: int = typer.Option(180, "--patients", "-n", help="Number of patients (one CT series each)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same cohort."),
    workers: int = typer.Option(0, "--workers", "-w", help="Worker processes (0 = all cores)."),
    size: int = typer.Option(256, "--size", help="In-plane matrix: 256 = one-lung field of view, 512 = whole chest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier demo cohort in OUT."),
) -> None:
    """Write OUT/dicom/<patient>/, OUT/nodules.csv (with train/valid/test split) and OUT/series.csv."""
    from medsuite.data.demo import DemoError, make_demo_cohort

    start = time.perf_counter()
    try:
        table = make_demo_cohort(out, patients=patients, seed=seed, workers=workers or None, size=size,
                                 overwrite=overwrite, progress=True)
    except (DemoError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    counts = table["split"].value_counts().to_dict()
    typer.echo(
        f"wrote {table['patient_id'].nunique()} series and {len(table)} nodules "
        f"({int((table['label'] == 'malignant').sum())} malignant; split {counts}) to {out} in {time.perf_counter() - start:.1f} s"
    )
