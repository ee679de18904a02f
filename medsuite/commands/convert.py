"""`medsuite convert SRC OUT`: DICOM (folder or file) or NRRD/MHA/NIfTI to NIfTI with correct geometry.

- A folder and one output file: the stack asked for (``--stack``/``--series``), else the only or largest one.
- A folder and an output folder: every stack, one NIfTI each; a bad stack is reported and the rest carry on.
- One DICOM file: the stack it belongs to in its folder when that stack can be read, else the file alone
  (a slice, a multi-frame object, a mosaic); the output line says which.
- 4D stacks (fMRI, DTI, perfusion, mosaic time series): ``--volume N`` (default the first, and said) or
  ``--volume all`` for one 4D NIfTI, as dcm2niix writes them.
Outputs are written atomically: a killed conversion leaves no partial file, and the next run removes the
temporary files of killed runs.
"""

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
    src: Annotated[Path, typer.Argument(help="A DICOM folder, one DICOM file, or a .nrrd/.mha/.mhd/.nii(.gz) file.")],
    out: Annotated[
        Path, typer.Argument(help="Output .nii.gz/.nii file, or a folder (one NIfTI per stack) for several stacks.")
    ],
    series: Annotated[
        str | None, typer.Option("--series", help="SeriesInstanceUID to convert when SRC holds several.")
    ] = None,
    stack: Annotated[
        str | None,
        typer.Option("--stack", help="Stack id to convert (see `medsuite inspect`): magnitude/phase, echoes, planes."),
    ] = None,
    volume: Annotated[
        str | None,
        typer.Option("--volume", help="Volume of a 4D stack: a number from 0 (default 0), or 'all' for a 4D NIfTI."),
    ] = None,
    z_step: Annotated[
        float | None,
        typer.Option("--z-step", help="Slice step (mm) for irregularly spaced stacks (default: the smallest acquired step)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
    allow_missing_files: Annotated[bool, typer.Option(
        "--allow-missing-files",
        help="Convert a stack even though files beside it could not be read (they may be its slices); "
             "the NIfTI's .json sidecar records it. Default: refuse such a stack (exit status 1).")] = False,
) -> None:
    """Convert SRC to NIfTI. A folder with several stacks and an output folder converts every stack,
    carries on past a bad one and exits with status 1 if any failed (also a stack refused because files
    beside it could not be read, unless --allow-missing-files)."""
    from medsuite.io.sitk_io import NIFTI_SUFFIXES, image_suffix

    try:
        if not src.exists():
            raise _Failure(f"{src}: no such file or folder")
        to_file = image_suffix(out) in NIFTI_SUFFIXES
        if out.suffix.lower() in {".nii", ".gz"} and not to_file:
            raise _Failure(f"{out}: a NIfTI output must end in .nii or .nii.gz")
        which = _volume_choice(volume)
        if z_step is not None and not z_step > 0:
            raise _Failure(f"--z-step {z_step}: must be a positive number of mm")
        options = {"z_spacing": z_step, "allow_missing": allow_missing_files}
        if not src.is_dir():
            if not to_file:
                raise _Failure(f"{out}: SRC is one file, so OUT must be a .nii.gz or .nii file")
            _convert_path(src, out, series=series, stack=stack, which=which, options=options, force=force)
            return
        from medsuite.io.dicom import scan_folder
        from medsuite.io.load import select_stack

        scan = _guard(lambda: scan_folder([src]))
        table = scan.series
        if len(table) == 0:
            raise _Failure(f"{src}: no DICOM image series found ({len(scan.skipped)} files skipped)")
        if to_file:
            row = _guard(lambda: select_stack(table, series, stack=stack, source=src))
            _convert_row(row, out, which=which, options=options, force=force)
            return
        rows = table
        if series is not None:
            rows = rows[rows["series_uid"] == series]
        if stack is not None:
            rows = rows[rows["stack_id"] == stack]
        if len(rows) == 0:
            _guard(lambda: select_stack(table, series, stack=stack, source=src))  # raises "not found", listing them
    except _Failure as exc:
        _fail(str(exc))

    out.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for _, row in rows.iterrows():
        try:
            if row["status"] == "error":
                raise _Failure(f"stack {row['stack_id']}: {row['problems']}")
            _convert_row(row, out / _output_name(row, table), which=which, options=options, force=force)
        except _Failure as exc:
            failed.append(str(exc))
            typer.echo(f"FAILED {exc}", err=True)
    typer.echo(f"converted {len(rows) - len(failed)} of {len(rows)} stack(s) into {out}")
    if failed:
        typer.echo(f"{len(failed)} of {len(rows)} stack(s) failed (see above)", err=True)
        raise typer.Exit(1)


def _volume_choice(volume: str | None) -> int | str | None:
    if volume is None:
        return None
    if volume.strip().lower() == "all":
        return "all"
    try:
        index = int(volume)
    except ValueError:
        raise _Failure(f"--volume {volume}: expected a volume number (0, 1, ...) or 'all'") from None
    if index < 0:
        raise _Failure(f"--volume {volume}: volume numbers start at 0")
    return index


def _convert_path(src: Path, out: Path, *, series, stack, which, options, force: bool) -> None:
    """One file: an image file, or a DICOM file's stack (else the file alone)."""
    from medsuite.io.sitk_io import is_image_file

    if is_image_file(src):
        if which is not None or stack is not None or series is not None:
            raise _Failure(f"{src}: --series/--stack/--volume apply to DICOM input only")
        from medsuite.io.load import read_volume

        _write(lambda: read_volume(src), out, force=force, what="")
        return
    from medsuite.io.load import stack_of_file

    if out.exists() and not force:
        raise _Failure(f"{out}: already exists (use --force to overwrite)")
    found = _guard(lambda: stack_of_file(src, series_uid=series, stack=stack))
    if found.row is not None:
        try:
            _convert_row(found.row, out, which=which, options=options, force=force)
            return
        except _Incomplete:
            raise  # converting the one file on its own would hide the very slices the refusal is about
        except _Failure as exc:
            reason = str(exc)
    else:
        reason = found.reason
    typer.echo(f"note: converting {src.name} on its own: {reason}", err=True)
    _convert_files([str(src)], out, stack=stack, which=which, options=options, force=force)


def _convert_row(row: pd.Series, target: Path, *, which, options, force: bool) -> None:
    """Convert one series-table row (one volume, or all volumes as 4D); warnings are printed first.

    A stack whose folder holds files that could not be read is refused unless ``allow_missing``: such a
    file may be a slice, and a lost *end* slice leaves a regular-looking, shorter volume that nothing
    downstream could tell from a complete one (a lost middle slice at least shows as a gap)."""
    from medsuite.io.dicom import unread_neighbours

    if unread_neighbours(row) and not options.get("allow_missing"):
        raise _Incomplete(f"stack {row['stack_id']}: {row['problems']}; not converted, since the volume may lack "
                       "these slices (pass --allow-missing-files to convert the files that could be read; the "
                       "NIfTI's .json sidecar then records it)")
    if row.get("status") == "warning" and row.get("problems"):
        typer.echo(f"warning: stack {row['stack_id']}: {row['problems']}", err=True)
    _convert_files(row, target, stack=None, which=which, options=options, force=force)


def _convert_files(source, target: Path, *, stack, which, options, force: bool) -> None:
    from medsuite.io.reader import read_series, read_series_volumes
    from medsuite.io.sitk_io import write_nifti_4d

    if target.exists() and not force:
        raise _Failure(f"{target}: already exists (use --force to overwrite)")
    read_options = {"z_spacing": options.get("z_spacing")}
    if which == "all":
        volumes = _guard(lambda: read_series_volumes(source, stack=stack, **read_options))
        _sidecar(volumes, target)
        _guard(lambda: write_nifti_4d(volumes, target))
        _report(target, volumes[0], f"; {len(volumes)} volumes (4D)")
        return
    volume = _guard(lambda: read_series(source, stack=stack, volume=which, **read_options))
    info = volume.meta.get("volume")
    extra = ""
    if info and info["count"] > 1:
        extra = f"; volume {info['index']} of {info['count']} (0-based"
        extra += ", the first: pass --volume N or --volume all)" if which is None else ")"
    _write(lambda: volume, target, force=True, what=extra)


def _write(read: Callable[[], Volume], target: Path, *, force: bool, what: str) -> None:
    from medsuite.io.sitk_io import write_nifti

    if target.exists() and not force:
        raise _Failure(f"{target}: already exists (use --force to overwrite)")
    volume = _guard(read)
    _sidecar([volume], target)
    _guard(lambda: write_nifti(volume, target))
    _report(target, volume, what)


# facts about the voxels, never file names (the notes may hold them; the terminal shows those)
SIDECAR_KEYS = ("unread_files", "interpolated_slices", "resampled", "gantry_tilt_deg", "volume", "mosaic")


def sidecar_path(target: Path) -> Path:
    """``out.nii.gz`` -> ``out.json`` (beside it, as dcm2niix names its sidecars)."""
    name = target.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return target.with_name(name + ".json")


def _sidecar(volumes: list[Volume], target: Path) -> None:
    """Write ``<out>.json`` when the volume is not simply what was acquired (files that could not be read,
    interpolated or regridded slices, a tilt correction, one volume of a 4D stack): what NIfTI cannot say.
    For a 4D NIfTI of several volumes a fact that differs between them is a list, one entry per volume.
    Written before the NIfTI, so that a NIfTI never stands without it; an older sidecar of ours that no
    longer applies is removed."""
    from medsuite.io.atomic import atomic_write_json

    path = sidecar_path(target)
    per = [{k: v.meta[k] for k in SIDECAR_KEYS if v.meta.get(k) not in (None, [], "", 0)} for v in volumes]
    if len(volumes) > 1:  # all of them are written: "one volume of a 4D stack" no longer applies
        per = [{k: v for k, v in f.items() if k != "volume"} for f in per]
    keys = [k for k in SIDECAR_KEYS if any(k in f for f in per)]
    facts = {k: per[0].get(k) if all(f.get(k) == per[0].get(k) for f in per) else [f.get(k) for f in per]
             for k in keys}
    if facts:
        complete = not any(v.meta.get("unread_files") for v in volumes)
        _guard(lambda: atomic_write_json(path, {"written_by": "medsuite convert", "nifti": target.name,
                                                "complete": complete, **facts,
                                                **({"volumes": len(volumes)} if len(volumes) > 1 else {})}))
        return
    try:
        import json

        if json.loads(path.read_text(encoding="utf-8")).get("written_by") == "medsuite convert":
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _report(target: Path, volume: Volume, extra: str) -> None:
    spacing = "x".join(f"{s:g}" for s in reversed(volume.spacing))
    size = "x".join(str(n) for n in reversed(volume.shape))
    note = f"; {volume.meta['resampled']}" if volume.meta.get("resampled") else ""
    if volume.meta.get("mosaic"):
        note += f"; {volume.meta['mosaic']}"
    for line in volume.meta.get("notes", []):
        if line.startswith("read ") and "on its own" in line:
            note += f"; {line}"
    typer.echo(f"wrote {target} ({size} voxels, {spacing} mm{extra}{note})")


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


class _Incomplete(_Failure):
    """A stack refused because files beside it could not be read: final, never retried file by file."""


def _guard(action: Callable[[], T]) -> T:
    """Run ``action``; an input problem (ValueError/OSError, e.g. any DicomError) becomes a `_Failure`."""
    try:
        return action()
    except (ValueError, OSError) as exc:
        raise _Failure(str(exc)) from exc
    except MemoryError as exc:
        raise _Failure(f"not enough memory: {exc}") from exc


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)
