"""`medsuite convert SRC OUT`: DICOM (folder or file) or NRRD/MHA/NIfTI to NIfTI with correct geometry."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    import pandas as pd

    from medsuite.io.volume import Volume

T = TypeVar("T")


def command(
    src: Annotated[
        Path, typer.Argument(help="A DICOM folder, one DICOM file, or a .nrrd/.mha/.mhd/.nii(.gz) file.")
    ],
    out: Annotated[
        Path,
        typer.Argument(
            help="Output .nii.gz/.nii file, or a folder (one NIfTI per series) for several series."
        ),
    ],
    series: Annotated[
        str | None, typer.Option("--series", help="SeriesInstanceUID to convert when SRC holds several.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
) -> None:
    """Convert SRC to NIfTI. A folder with several series and an output folder converts every series,
    carries on past a bad one and exits with status 1 if any failed."""
    from medsuite.io.sitk_io import NIFTI_SUFFIXES, image_suffix

    try:
        if not src.exists():
            raise _Failure(f"{src}: no such file or folder")
        to_file = image_suffix(out) in NIFTI_SUFFIXES
        if out.suffix.lower() in {".nii", ".gz"} and not to_file:
            raise _Failure(f"{out}: a NIfTI output must end in .nii or .nii.gz")
        if not src.is_dir():
            if not to_file:
                raise _Failure(f"{out}: SRC is one file, so OUT must be a .nii.gz or .nii file")
            _convert_one(lambda: _read_path(src, series), out, force=force)
            return
        from medsuite.io.dicom import scan_folder
        from medsuite.io.load import select_stack

        scan = _guard(lambda: scan_folder([src]))
        table = scan.series
        if len(table) == 0:
            raise _Failure(f"{src}: no DICOM image series found ({len(scan.skipped)} files skipped)")
        if to_file:
            row = _guard(lambda: select_stack(table, series, source=src))
            _convert_one(lambda: _read_row(row), out, force=force)
            return
        rows = table if series is None else table[table["series_uid"] == series]
        if len(rows) == 0:
            _guard(lambda: select_stack(table, series, source=src))  # raises "not found", listing the series
    except _Failure as exc:
        _fail(str(exc))

    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for _, row in rows.iterrows():
        try:
            if row["status"] == "error":
                raise _Failure(f"series {row['series_uid']}: {row['problems']}")
            _convert_one(lambda row=row: _read_row(row), out / _output_name(row, table), force=force)
        except _Failure as exc:
            failed.append(str(exc))
            typer.echo(f"FAILED {exc}", err=True)
    typer.echo(f"converted {len(rows) - len(failed)} of {len(rows)} series into {out}")
    if failed:
        typer.echo(f"{len(failed)} of {len(rows)} series failed (see above)", err=True)
        raise typer.Exit(1)


def _read_path(src: Path, series: str | None) -> Volume:
    from medsuite.io.load import read_volume

    return read_volume(src, series)


def _read_row(row: pd.Series) -> Volume:
    from medsuite.io.reader import read_series

    return read_series(row)


def _convert_one(read: Callable[[], Volume], target: Path, *, force: bool) -> None:
    """Read a volume, write it as NIfTI and report one line; a bad input raises `_Failure`."""
    from medsuite.io.sitk_io import write_nifti

    if target.exists() and not force:
        raise _Failure(f"{target}: already exists (use --force to overwrite)")
    volume = _guard(read)
    _guard(lambda: write_nifti(volume, target))
    spacing = "x".join(f"{s:g}" for s in reversed(volume.spacing))
    size = "x".join(str(n) for n in reversed(volume.shape))
    note = f"; {volume.meta['resampled']}" if volume.meta.get("resampled") else ""
    typer.echo(f"wrote {target} ({size} voxels, {spacing} mm{note})")


def _output_name(row: pd.Series, table: pd.DataFrame) -> str:
    """``<series number>_<series uid>[_<stack>].nii.gz``: unique within the scan, no patient data."""
    uid = str(row["series_uid"])
    name = uid
    number = row.get("series_number")
    if number is not None and str(number) not in ("", "nan", "None"):
        name = f"{int(float(number)):04d}_{uid}"
    if (table["series_uid"] == uid).sum() > 1:
        name += f"_{row['stack_id']}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".nii.gz"


class _Failure(Exception):
    """One input could not be converted; the message names it and says why."""


def _guard(action: Callable[[], T]) -> T:
    """Run ``action``; an input problem (ValueError/OSError, e.g. any DicomError) becomes a `_Failure`."""
    try:
        return action()
    except (ValueError, OSError) as exc:
        raise _Failure(str(exc)) from exc


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
