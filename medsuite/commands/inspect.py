"""`medsuite inspect PATH...`: what is in a DICOM folder: one row per stack, then the skipped files and why.

Patient IDs are personal data: they are shown (and written) only with ``--include-phi``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import pandas as pd

# Columns of the printed table (the CSV/JSON carry every series-table column except, by default, patient_id).
SHOWN = [
    "stack_id", "study_date", "modality", "description", "n_instances", "size", "spacing", "orientation",
    "transfer_syntax", "status", "problems",
]  # fmt: skip


def _display_table(series: pd.DataFrame, include_phi: bool) -> pd.DataFrame:
    table = series.copy()
    table["size"] = [f"{r}x{c}" for r, c in zip(table["rows"], table["cols"], strict=True)]
    table["spacing"] = [
        f"{z:.3g} x {y:.3g} x {x:.3g}"
        for z, y, x in zip(table["spacing_z"], table["spacing_y"], table["spacing_x"], strict=True)
    ]
    columns = (["patient_id"] if include_phi else []) + SHOWN
    return table[columns]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _export(series: pd.DataFrame, skipped: pd.DataFrame, include_phi: bool) -> tuple[pd.DataFrame, dict]:
    table = series if include_phi else series.drop(columns=["patient_id"])
    records = json.loads(table.to_json(orient="records"))
    return table, {"series": records, "skipped": skipped.to_dict(orient="records")}


def command(
    paths: Annotated[
        list[Path], typer.Argument(help="DICOM folders and/or files (any names, no DICOMDIR needed).")
    ],
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Also write the series table to this CSV file.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the series table and skipped files as JSON instead.")
    ] = False,
    include_phi: Annotated[
        bool, typer.Option("--include-phi", help="Show and write patient IDs (hidden by default).")
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Parallel header readers (default: all cores).")
    ] = None,
) -> None:
    """List every image stack under PATHS (one row each: size, spacing, orientation, syntax, problems) and
    every skipped file with the reason. Exits with status 1 if a stack has status 'error' or nothing was found."""
    import pandas as pd

    from medsuite.io.dicom import scan_folder

    try:
        scan = scan_folder(paths, workers=workers)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    table, payload = _export(scan.series, scan.skipped, include_phi)
    if csv is not None:
        export = table.copy()
        export["files"] = [json.dumps(f) for f in export["files"]]
        _write_atomic(csv, export.to_csv(index=False))
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        with pd.option_context("display.max_colwidth", 60, "display.width", 250):
            if scan.series.empty:
                typer.echo("no DICOM image stacks found")
            else:
                typer.echo(_display_table(scan.series, include_phi).to_string(index=False))
            if not scan.skipped.empty:
                typer.echo(f"\nskipped {len(scan.skipped)} file(s):")
                typer.echo(scan.skipped.to_string(index=False))
        if csv is not None:
            typer.echo(f"\nseries table written to {csv}")
    if scan.series.empty or (scan.series["status"] == "error").any():
        raise typer.Exit(1)
