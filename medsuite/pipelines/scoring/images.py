"""Scoring inputs that are image files rather than DICOM: MetaImage (.mhd/.mha, LUNA16's format), NRRD and
NIfTI, given directly, found in a folder, or listed in a table's ``path`` column.

Each file is one series: its ``series_uid`` is the table's where a table names it, else the file name
without its suffix (LUNA16's ``<seriesuid>.mhd``). Only the header is read here (size, spacing,
orientation); the volume is read later by the worker that samples it. These formats do not say which
modality they hold, except a MetaImage ``Modality`` entry: a table's ``modality`` column supplies it,
and where nothing does, the eligibility rules see an unknown modality (so a CT model never scores an
MR volume by accident; ``--rule modality=any`` accepts it knowingly).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsuite.io.sitk_io import image_suffix, is_image_file

__all__ = ["DATA_FILE_SUFFIXES", "image_data_files", "image_parts", "image_series_table", "split_image_inputs", "table_image_names"]

# data files that sit beside a header file (MetaImage .raw/.zraw, detached NRRD .raw/.raw.gz): not inputs
DATA_FILE_SUFFIXES = (".raw", ".zraw", ".raw.gz", ".gz")
_METAIMAGE_MODALITY = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_NM": "NM", "MET_MOD_US": "US",
                       "MET_MOD_OTHER": "OT"}


def split_image_inputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """``(image files, other paths)``: image files given directly or found under the folders of ``paths``
    (each once), and the inputs left for the DICOM scan."""
    images: dict[Path, None] = {}
    others: list[Path] = []
    for path in paths:
        if path.is_file() and is_image_file(path):
            images.setdefault(path, None)
            continue
        others.append(path)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p)):
                images.setdefault(found, None)
    return list(images), others


def table_image_names(inputs: list[str | Path]) -> dict[Path, dict[str, str]]:
    """For tables among ``inputs``: ``{resolved image path: {"series_uid", "modality"}}`` from their rows."""
    from medsuite.data.tables import read_table

    names: dict[Path, dict[str, str]] = {}
    for raw in inputs:
        path = Path(raw)
        if not (path.is_file() and path.suffix.lower() in (".csv", ".parquet")):
            continue
        table = read_table(path)
        if "path" not in table.columns:
            continue
        for _, row in table.iterrows():
            value = row["path"]
            if not isinstance(value, str) or not is_image_file(value):
                continue
            file = Path(value) if Path(value).is_absolute() else path.parent / value
            entry: dict[str, str] = {}
            for column in ("series_uid", "modality"):
                if column in table.columns and isinstance(row[column], str) and row[column].strip():
                    entry[column] = row[column].strip()
            names.setdefault(file.resolve(), entry)
    return names


def image_parts(images: list[Path] | tuple[Path, ...]) -> set[str]:
    """Absolute paths of the image files and of their data files (``x.raw`` / ``x.zraw`` beside ``x.mhd``,
    or whatever the header names): inputs read as images, which the DICOM scan must neither read nor list
    as "not DICOM"."""
    parts: set[str] = set()
    for path in images:
        parts.add(os.path.abspath(path))
        stem = path.name[: -len(image_suffix(path) or "")]
        for suffix in DATA_FILE_SUFFIXES:
            parts.add(os.path.abspath(path.with_name(stem + suffix)))
        try:
            parts.update(os.path.abspath(f) for f in image_data_files(path))
        except (OSError, ValueError):  # an unreadable header: the series becomes an error row when read
            pass
    return parts


_HEADER_KEYS = {".mhd": ("elementdatafile",), ".nhdr": ("data file", "datafile")}


def image_data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files holding the voxels of a detached header (MetaImage ``.mhd``: its ``ElementDataFile``,
    NRRD ``.nhdr``: its ``data file``), as SimpleITK finds them (relative to the header's folder); ``[]``
    for a format that keeps the voxels in the file itself. Handles a single name, ``LIST`` (one name a
    line after it) and a numbered pattern (``slice%03d.raw 1 40 1``)."""
    path = Path(path)
    keys = _HEADER_KEYS.get(image_suffix(path) or "")
    if keys is None:
        return []
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)  # headers are text and small; a detached header holds no voxels
    lines = head.decode("latin-1").splitlines()
    for i, line in enumerate(lines):
        key, sep, value = line.partition("=" if keys[0] == "elementdatafile" else ":")
        if not sep or key.strip().lower() not in keys:
            continue
        value = value.strip()
        words = value.split()
        if not words or value.upper() == "LOCAL":
            return []
        if words[0].upper() == "LIST":
            names = [x.strip() for x in lines[i + 1:] if x.strip()]
        elif "%" in words[0] and len(words) >= 3:
            first, last = int(words[1]), int(words[2])
            step = int(words[3]) if len(words) > 3 else 1
            if step == 0:
                raise ValueError(f"{path}: data file pattern {value!r} has step 0")
            names = [words[0] % n for n in range(first, last + (1 if step > 0 else -1), step)]
        else:
            names = [value]
        return [Path(n) if Path(n).is_absolute() else path.parent / n for n in names]
    raise ValueError(f"{path}: the header names no data file ({' / '.join(keys)})")


def _header(path: Path) -> dict[str, Any]:
    """Size, spacing, orientation and (MetaImage) modality of one image file, from its header only."""
    import SimpleITK as sitk

    from medsuite.io.orientation import orientation_label

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = [line for line in str(exc).splitlines() if line.strip()]
        raise ValueError(f"{path}: cannot read the image header ({reason[-1] if reason else exc})") from exc
    size, spacing = reader.GetSize(), reader.GetSpacing()
    if len(size) == 4 and size[3] == 1:
        size, spacing = size[:3], spacing[:3]
    if len(size) != 3:
        raise ValueError(f"{path}: a {len(size)}D image; scoring needs one 3D volume per file")
    direction = np.asarray(reader.GetDirection(), dtype=np.float64)
    direction = direction.reshape(int(round(np.sqrt(direction.size))), -1)[:3, :3]
    modality = ""
    if "Modality" in reader.GetMetaDataKeys():
        modality = _METAIMAGE_MODALITY.get(reader.GetMetaData("Modality").strip(), "")
    return {"n_instances": int(size[2]), "rows": int(size[1]), "cols": int(size[0]),
            "spacing_z": float(spacing[2]), "spacing_y": float(spacing[1]), "spacing_x": float(spacing[0]),
            "orientation": orientation_label(direction[:, 2]), "modality": modality}


def image_series_table(files: list[Path], names: dict[Path, dict[str, str]], columns: list[str]) -> pd.DataFrame:
    """One series-table row (``columns``) per image file; a file whose header cannot be read gets status
    ``error`` and the reason, so the run records it and carries on."""
    rows = []
    for path in files:
        given = names.get(path.resolve(), {})
        uid = given.get("series_uid") or path.name[: -len(image_suffix(path) or "")]
        row: dict[str, Any] = {c: None for c in columns}
        row.update({c: "" for c in ("study_uid", "patient_id", "study_date", "description", "manufacturer",
                                    "image_type") if c in row})  # not recorded in these formats
        row.update({"stack_id": uid, "series_uid": uid, "status": "ok", "problems": "", "files": [str(path)],
                    "transfer_syntax": image_suffix(path)})
        try:
            row.update(_header(path))
        except ValueError as exc:
            row.update({"status": "error", "problems": str(exc)})
        if given.get("modality"):
            row["modality"] = given["modality"].upper()
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)
