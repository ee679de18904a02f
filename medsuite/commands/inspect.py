"""`medsuite inspect PATH...`: what is in a DICOM folder: one row per stack, then the skipped files and why.

Patient IDs are personal data: they are shown (and written) only with ``--include-phi``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import pandas as pd

# Columns of the printed table (the CSV/JSON carry every series-table column except, by default, patient_id).
SHOWN = [
    "stack_id", "study_date", "modality", "description", "n_instances", "n_volumes", "size", "spacing",
    "orientation", "transfer_syntax", "status", "problems",
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


def _export(series: pd.DataFrame, skipped: pd.DataFrame, include_phi: bool) -> tuple[pd.DataFrame, dict]:
    table = series if include_phi else series.drop(columns=["patient_id"])
    records = json.loads(table.to_json(orient="records"))
    return table, {"series": records, "skipped": skipped.to_dict(orient="records")}


def _show_stack(row: pd.Series) -> None:
    """Every column of one stack, then its files (in slice order, volume by volume)."""
    for key, value in row.items():
        if key not in ("files", "frames"):
            typer.echo(f"{key:>16}: {value}")
    frames = row.get("frames")
    typer.echo(f"{'files':>16}: {len(row['files'])}")
    for k, path in enumerate(row["files"]):
        part = "" if not isinstance(frames, list) or frames[k] is None else f"  (planes {frames[k]})"
        typer.echo(f"{'':>18}{path}{part}")


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
    stack: Annotated[
        str | None, typer.Option("--stack", help="Show one stack in detail (every column and its files).")
    ] = None,
) -> None:
    """List every image stack under PATHS (one row each: size, spacing, orientation, syntax, problems) and
    every skipped file with the reason. Exits with status 1 if a stack has status 'error' or nothing was found."""
    import pandas as pd

    from medsuite.io.atomic import atomic_write_text
    from medsuite.io.dicom import scan_folder

    try:
        scan = scan_folder(paths, workers=workers)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if stack is not None:
        chosen = scan.series[scan.series["stack_id"] == stack]
        if chosen.empty:
            known = ", ".join(scan.series["stack_id"].astype(str)[:10])
            typer.echo(f"error: no stack {stack} under {', '.join(map(str, paths))}; stacks: {known}", err=True)
            raise typer.Exit(2)
        scan.series = chosen.reset_index(drop=True)
    table, payload = _export(scan.series, scan.skipped, include_phi)
    if csv is not None:
        export = table.copy()
        for column in ("files", "codes", "frames"):
            export[column] = [json.dumps(v) for v in export[column]]
        atomic_write_text(csv, export.to_csv(index=False))
    if as_json:
        typer.echo(json.dumps(payload, indent=2))
    else:
        with pd.option_context("display.max_colwidth", 60, "display.width", 250):
            if scan.series.empty:
                typer.echo("no DICOM image stacks found")
            elif stack is not None:
                _show_stack(table.iloc[0])
            else:
                typer.echo(_display_table(scan.series, include_phi).to_string(index=False))
            if not scan.skipped.empty:
                typer.echo(f"\nskipped {len(scan.skipped)} file(s):")
                typer.echo(scan.skipped.to_string(index=False))
        if csv is not None:
            typer.echo(f"\nseries table written to {csv}")
    if scan.series.empty or (scan.series["status"] == "error").any():
        raise typer.Exit(1)
