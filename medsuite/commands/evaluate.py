"""`medsuite evaluate BUNDLE TABLE [--dicom-root DIR] --out DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    bundle: Annotated[Path, typer.Argument(help="A model bundle (folder or .zip).")],
    table: Annotated[Path, typer.Argument(help="A labelled nodule table (or series-label table for series bundles).")],
    dicom_root: Annotated[Path | None, typer.Option(
        "--dicom-root", help="Folder with the scans: DICOM, or image files named <series_uid>.mhd/.nrrd/.nii.gz. "
        "Not needed when the table has a 'path' column.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.html and metrics.json.")] = Path("evaluation"),
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples for the confidence intervals.")] = 1000,
) -> None:
    """Evaluate a bundle on a labelled table at the bundle's operating threshold."""
    for path, what in ((bundle, "bundle"), (table, "table"), (dicom_root, "--dicom-root folder")):
        if path is not None and not path.exists():  # before the heavy imports: a typo answers at once
            typer.echo(f"error: {path}: {what} not found", err=True)
            raise typer.Exit(2)
    from medsuite.pipelines.evaluate import evaluate_bundle

    try:
        path, report = evaluate_bundle(bundle, table, dicom_root=dicom_root, out=out, n_boot=n_boot)
    except (ValueError, OSError) as exc:  # TableError, BundleError, SourceError, missing files: the user's input
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    auc = report["roc_auc"]
    typer.echo(f"ROC AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}] on {report['n']} items")
    typer.echo(f"report: {path}")
