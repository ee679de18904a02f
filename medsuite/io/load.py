"""`read_volume`: one entry point from "a path the user gave" to a `Volume`.

- a folder: scan it, pick the stack (``stack`` by id, the series asked for, else the only or the largest
  image stack, with a logged note naming the others), read it;
- one DICOM file: the stack it belongs to among the files of its folder, when that stack can be read;
  otherwise the file on its own (a slice, a multi-frame object or a mosaic), and the volume's notes say so;
- a NIfTI / NRRD / MetaImage file: read through SimpleITK.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medsuite.io.errors import DicomError, MixedSeriesError, NotDicomError
from medsuite.io.files import is_regular_file
from medsuite.io.problems import Code, first_fatal
from medsuite.io.sitk_io import is_image_file, read_image
from medsuite.io.volume import Volume

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FileStack", "read_volume", "select_stack", "stack_of_file"]

log = logging.getLogger(__name__)


def read_volume(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    stack: str | None = None,
    volume: int | None = None,
    on_irregular: Literal["resample", "error"] = "resample",
    on_tilt: Literal["correct", "error"] = "correct",
    z_spacing: float | None = None,
    workers: int | None = None,
) -> Volume:
    """Read a folder of DICOM, one DICOM file, or a NIfTI/NRRD/MHA file into a `Volume`.

    ``series_uid`` picks the series in a folder holding several, ``stack`` one stack by its id (see
    ``scan_folder(...).series['stack_id']``), ``volume`` one volume of a 4D stack (default the first);
    the other options go to `medsuite.io.reader.read_series`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file() and is_image_file(path):
        if series_uid is not None or stack is not None or volume is not None:
            raise ValueError(f"{path}: series_uid/stack/volume apply to DICOM input only, not to an image file")
        return read_image(path)

    from medsuite.io.reader import read_series

    options: dict[str, Any] = {
        "volume": volume, "on_irregular": on_irregular, "on_tilt": on_tilt, "z_spacing": z_spacing, "workers": workers,
    }  # fmt: skip
    if path.is_dir():
        from medsuite.io.dicom import scan_folder

        table = scan_folder([path], workers=workers).series
        row = select_stack(table, series_uid, stack=stack, source=path)
        for warning in _warnings(row):
            log.warning("%s: %s", path, warning)
        return read_series(row, **options)
    if not is_regular_file(path):
        raise NotDicomError(f"{path}: not a regular file (FIFO, device or socket): not read", code=Code.NOT_REGULAR_FILE)
    found = stack_of_file(path, series_uid=series_uid, stack=stack, workers=workers)
    if found.row is not None:
        try:
            return read_series(found.row, **options)
        except DicomError as exc:
            reason = str(exc)
        else:  # pragma: no cover - returned above
            reason = ""
    else:
        reason = found.reason
    alone = read_series([str(path)], stack=stack, **options)
    note = f"read {path.name} on its own: {reason}"
    log.warning("%s", note)
    alone.meta.setdefault("notes", []).append(note)
    return alone


@dataclass
class FileStack:
    """The stack a file belongs to in its folder (``row``, a series-table row), or why none is used."""

    row: pd.Series | None
    reason: str
    stack_id: str | None = None


def stack_of_file(
    path: str | os.PathLike[str],
    *,
    series_uid: str | None = None,
    stack: str | None = None,
    workers: int | None = None,
) -> FileStack:
    """Find the stack ``path`` belongs to among the regular files of its folder (not sub-folders).

    Returns the row when that stack can be read (status not 'error'), else the reason it cannot; raises
    when the file itself is not a DICOM image or does not match ``series_uid`` / ``stack``.
    """
    from medsuite.io.dicom import scan_folder

    path = Path(path)
    siblings = sorted(str(p) for p in path.parent.iterdir() if not p.name.startswith(".") and is_regular_file(p))
    if str(path) not in siblings:
        siblings.append(str(path))
    scan = scan_folder(siblings, workers=workers)
    target = os.path.realpath(path)
    rows = [row for _, row in scan.series.iterrows() if any(os.path.realpath(f) == target for f in row["files"])]
    if not rows:
        skipped = scan.skipped[[os.path.realpath(p) == target for p in scan.skipped["path"]]]
        code = Code(skipped.iloc[0]["code"]) if len(skipped) else Code.NOT_DICOM
        reason = skipped.iloc[0]["reason"] if len(skipped) else "not a DICOM image file"
        if code == Code.NOT_DICOM:
            reason = "neither DICOM nor a supported image file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd)"
        raise NotDicomError(f"{path}: {reason}", code=code)
    if series_uid is not None and all(r["series_uid"] != series_uid for r in rows):
        raise DicomError(f"{path}: belongs to series {rows[0]['series_uid']}, not to the requested {series_uid}")
    if stack is not None:
        rows = [r for r in rows if r["stack_id"] == stack]
        if not rows:
            raise DicomError(f"{path}: is not part of stack {stack}")
    if len(rows) > 1:
        ids = ", ".join(str(r["stack_id"]) for r in rows)
        raise MixedSeriesError(f"{path}: its planes belong to {len(rows)} stacks ({ids}); pass stack=ID (--stack ID)", code=Code.SPLIT)
    row = rows[0]
    if row["status"] == "error":
        return FileStack(None, f"its stack {row['stack_id']} cannot be read ({row['problems']})", str(row["stack_id"]))
    return FileStack(row, "", str(row["stack_id"]))


def _warnings(row: pd.Series) -> list[str]:
    return [row["problems"]] if row.get("status") == "warning" and row.get("problems") else []


def select_stack(
    table: pd.DataFrame,
    series_uid: str | None = None,
    *,
    stack: str | None = None,
    source: str | os.PathLike[str] = "",
) -> pd.Series:
    """The series-table row to read from a folder scan.

    With ``stack``: that stack. With ``series_uid``: that series' stack (its largest if it has several).
    Without: the only readable stack, else the largest (by planes) with a logged note listing the others;
    a tie for the largest is an error listing the stack ids to choose from. Stacks whose status is
    ``'error'`` are never picked (asking for one by id raises its problems).
    """
    where = f"{source}: " if str(source) else ""
    if table is None or len(table) == 0:
        raise NotDicomError(f"{where}no DICOM image series found", code=Code.NOT_DICOM)
    if stack is not None:
        rows = table[table["stack_id"] == stack]
        if len(rows) == 0:
            known = ", ".join(table["stack_id"].astype(str)[:10])
            raise DicomError(f"{where}stack {stack} not found; stacks present: {known}")
        row = rows.iloc[0]
        if row["status"] == "error":
            raise DicomError(f"{where}stack {stack} cannot be read: {row['problems']}", code=first_fatal_code(row))
        return row
    if series_uid is not None:
        rows = table[table["series_uid"] == series_uid]
        if len(rows) == 0:
            known = ", ".join(sorted(set(table["series_uid"])))
            raise DicomError(f"{where}series {series_uid} not found; series present: {known}")
    else:
        rows = table
    readable = rows[rows["status"] != "error"]
    if len(readable) == 0:
        problems = "; ".join(f"{r.stack_id}: {r.problems}" for r in rows.itertuples())
        raise DicomError(f"{where}no readable image stack ({problems})", code=first_fatal_code(rows.iloc[0]))
    if len(readable) == 1:
        return readable.iloc[0]
    size = "n_instances" if "n_instances" in readable.columns else None
    ranked = readable.sort_values(size, ascending=False, kind="stable") if size else readable
    first, second = ranked.iloc[0], ranked.iloc[1]
    if size and int(first[size]) == int(second[size]):
        tied = ranked[ranked[size] == first[size]]
        listing = "; ".join(_describe(r) for _, r in tied.iterrows())
        raise MixedSeriesError(
            f"{where}{len(readable)} image stacks and no single largest one ({listing}); choose one with "
            "stack=ID (--stack ID)",
            code=Code.SPLIT,
        )
    others = "; ".join(_describe(r) for _, r in ranked.iloc[1:].iterrows())
    log.warning("%sreading the largest stack, %s; also present: %s", where, _describe(first), others)
    return first


def first_fatal_code(row: pd.Series) -> Code | None:
    """The first fatal `Code` of a series-table row's ``codes`` (None when it has none)."""
    return first_fatal(row.get("codes") if hasattr(row, "get") else None)


def _describe(row: pd.Series) -> str:
    """A PHI-free one-line description of a series-table row."""
    parts = [f"stack {row.get('stack_id') or row['series_uid']}"]
    parts.append(f"{row.get('modality', '')} {row.get('orientation', '')}".strip())
    parts.append(f"{int(row['n_instances'])} instances")
    volumes = row.get("n_volumes")
    if volumes is not None and str(volumes) not in ("", "nan") and int(volumes) > 1:
        parts.append(f"{int(volumes)} volumes")
    if row.get("image_type"):
        parts.append(str(row["image_type"]))
    return ", ".join(p for p in parts if p)
