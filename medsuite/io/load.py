"""`read_volume`: one entry point from "a path the user gave" to a `Volume`.

- a folder: scan it, pick the stack (the series asked for, else the only or the largest image stack, with
  a logged note naming the others), read it;
- one DICOM file: the stack it belongs to among the files of its folder (or just that file);
- a NIfTI / NRRD / MetaImage file: read through SimpleITK.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medsuite.io.errors import DicomError, MixedSeriesError, NotDicomError
from medsuite.io.sitk_io import is_image_file, read_image
from medsuite.io.volume import Volume

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def read_volume(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    on_irregular: Literal["resample", "error"] = "resample",
    on_tilt: Literal["correct", "error"] = "correct",
    workers: int | None = None,
) -> Volume:
    """Read a folder of DICOM, one DICOM file, or a NIfTI/NRRD/MHA file into a `Volume`.

    ``series_uid`` picks the series in a folder holding several; the other options go to `read_series`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file() and is_image_file(path):
        if series_uid is not None:
            raise ValueError(f"{path}: series_uid applies to DICOM input only, not to an image file")
        return read_image(path)

    options: dict[str, Any] = {"on_irregular": on_irregular, "on_tilt": on_tilt, "workers": workers}
    if path.is_dir():
        from medsuite.io.dicom import scan_folder
        from medsuite.io.reader import read_series

        table = scan_folder([path], workers=workers).series
        return read_series(select_stack(table, series_uid, source=path), **options)

    file_uid = _dicom_series_uid(path)
    if series_uid is not None and series_uid != file_uid:
        raise DicomError(f"{path}: belongs to series {file_uid}, not to the requested {series_uid}")
    from medsuite.io.dicom import scan_folder
    from medsuite.io.reader import read_series

    siblings = sorted(p for p in path.parent.iterdir() if p.is_file())
    table = scan_folder(siblings, workers=workers).series
    target = path.resolve()
    for _, row in table.iterrows():
        if any(Path(f).resolve() == target for f in row["files"]):
            return read_series(row, **options)
    return read_series([path], **options)


def select_stack(
    table: pd.DataFrame, series_uid: str | None = None, *, source: str | os.PathLike[str] = ""
) -> pd.Series:
    """The series-table row to read from a folder scan.

    With ``series_uid``: that series' stack (its largest if it has several). Without: the only readable
    stack, else the largest (by instances) with a logged note listing the others; a tie for the largest
    is an error asking for a series UID. Stacks whose status is ``'error'`` are never picked.
    """
    where = f"{source}: " if str(source) else ""
    if table is None or len(table) == 0:
        raise NotDicomError(f"{where}no DICOM image series found")
    if series_uid is not None:
        rows = table[table["series_uid"] == series_uid]
        if len(rows) == 0:
            known = ", ".join(sorted(set(table["series_uid"])))
            raise DicomError(f"{where}series {series_uid} not found; series present: {known}")
    else:
        rows = table
    readable = rows[rows["status"] != "error"]
    if len(readable) == 0:
        problems = "; ".join(f"{r.series_uid}: {r.problems}" for r in rows.itertuples())
        raise DicomError(f"{where}no readable image stack ({problems})")
    if len(readable) == 1:
        return readable.iloc[0]
    ranked = readable.sort_values("n_instances", ascending=False, kind="stable")
    first, second = ranked.iloc[0], ranked.iloc[1]
    if int(first["n_instances"]) == int(second["n_instances"]):
        tied = ranked[ranked["n_instances"] == first["n_instances"]]
        listing = "; ".join(_describe(r) for _, r in tied.iterrows())
        raise MixedSeriesError(
            f"{where}{len(readable)} image stacks and no single largest one ({listing}); choose one by series UID"
        )
    others = "; ".join(_describe(r) for _, r in ranked.iloc[1:].iterrows())
    log.warning("%sreading the largest stack, %s; also present: %s", where, _describe(first), others)
    return first


def _describe(row: pd.Series) -> str:
    """A PHI-free one-line description of a series-table row."""
    parts = [f"series {row['series_uid']}"]
    if row.get("stack_id") not in (None, "", row["series_uid"]):
        parts.append(f"stack {row['stack_id']}")
    parts.append(f"{row.get('modality', '')} {row.get('orientation', '')}".strip())
    parts.append(f"{int(row['n_instances'])} instances")
    return ", ".join(p for p in parts if p)


def _dicom_series_uid(path: Path) -> str:
    """SeriesInstanceUID of one file, or `NotDicomError` naming the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise NotDicomError(
            f"{path}: neither DICOM nor a supported image file (.nii, .nii.gz, .nrrd, .mha, .mhd): {exc}"
        ) from exc
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    if not uid:
        raise NotDicomError(f"{path}: DICOM file without a SeriesInstanceUID")
    return uid
