"""`VolumeSource`: series UID -> `Volume`, from scanned folders (DICOM, or image files SimpleITK reads:
MetaImage .mhd/.mha, NRRD, NIfTI), a table's ``path`` column, or volumes already in memory; read through the
volume cache.

An image file found in a folder is one series named by its file name without the suffix (LUNA16's
``subset0/<seriesuid>.mhd``); files named otherwise are matched through a table's ``path`` column.

Built for DataLoader workers: the source holds only the scan's file lists and paths. Volumes are opened
lazily in each worker (through `VolumeCache`, whose arrays are read-only memory maps, so workers share the
page cache instead of copying volumes) and kept in a small per-source LRU that is never pickled.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medsuite.io.sitk_io import image_suffix, is_image_file
from medsuite.io.volume import Volume

__all__ = ["SourceError", "VolumeSource", "find_image_files", "read_files", "read_path", "table_paths"]

READER_VERSION = 2  # bumped when medsuite.io reads differently (2: regridding step, interpolated_slices, stacks)


class SourceError(KeyError, ValueError):
    """A series the source cannot provide (a `KeyError` for lookups, a `ValueError` as bad input);
    ``str()`` gives the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def find_image_files(root: str | os.PathLike[str]) -> dict[str, Path]:
    """``{series uid: path}`` of every image file (.mhd, .mha, .nrrd, .nhdr, .nii, .nii.gz) under ``root``,
    keyed by the file name without its suffix. Two files with one name are an error naming both."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    found: dict[str, Path] = {}
    for path in files:
        if not is_image_file(path):
            continue
        uid = path.name[: -len(image_suffix(path) or "")]
        if uid in found:
            raise SourceError(f"{root}: two image files are named {uid!r} ({found[uid]} and {path}); "
                              "give the table a 'path' column to say which is which")
        found[uid] = path
    return found


def table_paths(table: Any, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """``{series_uid: path}`` from a table's ``path`` column (relative paths from ``base_dir``, else from
    the table file's folder); rows with an empty path are left out. A series given two paths is an error."""
    import pandas as pd

    if "path" not in getattr(table, "columns", ()):
        return {}
    source = table.attrs.get("source")
    base = Path(base_dir) if base_dir is not None else Path(source).parent if source else Path.cwd()
    out: dict[str, Path] = {}
    for uid, value in zip(table["series_uid"].astype(str), table["path"], strict=True):
        if value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip():
            continue
        path = Path(str(value)).expanduser()
        path = path if path.is_absolute() else base / path
        if out.setdefault(uid, path) != path:
            raise SourceError(f"{source or 'table'}: series {uid} has two paths ({out[uid]} and {path})")
    return out


def read_files(files: Iterable[str | os.PathLike[str]], series_uid: str | None = None, **options: Any) -> Volume:
    """The volume of one series given as its files: one image file (read by SimpleITK), else DICOM
    instances (`read_series`, with ``options``). ``series_uid`` names an image file's volume."""
    files = [Path(f) for f in files]
    if len(files) == 1 and is_image_file(files[0]):
        return _read_image(files[0], series_uid)
    from medsuite.io.reader import read_series

    return read_series(files, **options)


def read_path(path: str | os.PathLike[str], series_uid: str | None = None, **options: Any) -> Volume:
    """The volume at ``path``: an image file (named ``series_uid``), a DICOM file or folder (the series
    ``series_uid`` in it, see `medsuite.io.load.read_volume`), or a folder of image files, one of which
    is named ``<series_uid>.<suffix>``."""
    from medsuite.io.load import read_volume

    path = Path(path)
    if path.is_file() and is_image_file(path):
        return _read_image(path, series_uid)
    if path.is_dir() and series_uid is not None:
        images = find_image_files(path)
        if series_uid in images:
            return _read_image(images[series_uid], series_uid)
    return read_volume(path, series_uid, **options)


def _holds_files(path: Path) -> bool:
    """A file, or a folder with at least one file somewhere below it."""
    return path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*")))


def _read_image(path: Path, series_uid: str | None) -> Volume:
    from medsuite.io.load import read_volume

    volume = read_volume(path)
    if series_uid and not volume.series_uid:
        volume = volume.with_array(volume.array, series_uid=str(series_uid))
    return volume


class VolumeSource:
    """Where the volumes of a table come from.

    dicom_root: folder(s) scanned once: DICOM headers with `scan_folder` (read with `read_series`), and
        image files (.mhd, .mha, .nrrd, .nii, .nii.gz), each one series named by its file name without suffix.
    cache_dir: a `VolumeCache` root; the first read of a series stores it, later reads memory-map it.
    paths: ``series_uid -> file or folder`` (NIfTI/NRRD/MHA or DICOM), e.g. a table's ``path`` column
        (`VolumeSource.for_table` reads it).
    volumes: ``series_uid -> Volume`` already in memory (copied to each DataLoader worker).
    max_open: volumes kept open per process (memory maps are cheap; in-memory reads are not).
    """

    def __init__(
        self,
        dicom_root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        paths: Mapping[str, str | os.PathLike[str]] | None = None,
        volumes: Mapping[str, Volume] | None = None,
        on_irregular: str = "resample",
        on_tilt: str = "correct",
        max_open: int = 8,
        scan_workers: int | None = None,
    ) -> None:
        if dicom_root is None and paths is None and volumes is None:
            raise ValueError("VolumeSource needs a dicom_root, paths or volumes")
        if isinstance(dicom_root, (str, os.PathLike)):
            dicom_root = [dicom_root]
        self.dicom_roots = [Path(p) for p in dicom_root] if dicom_root is not None else []
        for root in self.dicom_roots:
            if not root.exists():
                raise FileNotFoundError(f"{root}: scan folder not found")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.paths = {str(k): Path(v) for k, v in (paths or {}).items()}
        self.volumes = {str(k): v for k, v in (volumes or {}).items()}
        self.on_irregular, self.on_tilt = on_irregular, on_tilt
        self.max_open = max(1, int(max_open))
        self.scan_workers = scan_workers
        self._rows: dict[str, Any] | None = None  # series_uid -> series-table row (file list), after the scan
        self._images: dict[str, Path] = {}  # series_uid -> image file found under the roots, after the scan
        self._open: OrderedDict[str, Volume] = OrderedDict()

    @classmethod
    def for_table(cls, table: Any, dicom_root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None,
                  *, base_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> VolumeSource:
        """The source of a nodule or series table: its ``path`` column where given (relative paths from
        the table's folder, or ``base_dir``), else the series found under ``dicom_root``."""
        paths = table_paths(table, base_dir)
        if dicom_root is None and not paths:
            raise SourceError(f"{table.attrs.get('source', 'table')}: no 'path' column and no scan folder: "
                              "give the folder with the scans (dicom_root) or a 'path' per row")
        return cls(dicom_root, paths=paths, **kwargs)  # `check` reports paths that are gone or empty

    # ------------------------------------------------------------------ pickling (DataLoader workers)
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # never ship open volumes/memory maps to workers
        return state

    def __repr__(self) -> str:
        parts = [f"dicom_root={[str(r) for r in self.dicom_roots]}"] if self.dicom_roots else []
        parts += [f"paths={len(self.paths)}"] if self.paths else []
        parts += [f"volumes={len(self.volumes)}"] if self.volumes else []
        parts += [f"cache_dir={str(self.cache_dir)!r}"] if self.cache_dir else []
        return f"VolumeSource({', '.join(parts)})"

    # ------------------------------------------------------------------ discovery
    def scan(self) -> VolumeSource:
        """Scan the roots once (DICOM headers, image file names); later calls do nothing. Returns self."""
        if self._rows is not None or not self.dicom_roots:
            self._rows = self._rows or {}
            return self
        from medsuite.io.dicom import scan_folder
        from medsuite.io.load import select_stack

        images: dict[str, Path] = {}
        for root in self.dicom_roots:
            for uid, path in find_image_files(root).items():
                if images.setdefault(uid, path) != path:
                    raise SourceError(f"two image files are named {uid!r} ({images[uid]} and {path})")
        dicom_roots = [r for r in self.dicom_roots if not (r.is_file() and is_image_file(r))]
        table = scan_folder(dicom_roots, workers=self.scan_workers).series if dicom_roots else None
        rows: dict[str, Any] = {}
        if table is not None and len(table):
            readable = table[table["status"] != "error"]
            for uid in readable["series_uid"].unique():
                rows[str(uid)] = select_stack(readable, uid, source=self.dicom_roots[0])
        self._rows, self._images = rows, images
        return self

    @property
    def series_uids(self) -> list[str]:
        """Every series this source can provide."""
        self.scan()
        return sorted(set(self._rows or {}) | set(self._images) | set(self.paths) | set(self.volumes))

    def __contains__(self, series_uid: object) -> bool:
        return str(series_uid) in set(self.series_uids)

    def check(self, series_uids: Iterable[str], *, files: bool = False) -> None:
        """Raise `SourceError` listing the series (of a table) this source cannot provide; with ``files``,
        also those given a path that no longer exists or holds no file (checked before a long run)."""
        wanted = {str(u) for u in series_uids}
        known = set(self.series_uids)
        if files:
            known -= {u for u in wanted & set(self.paths) if not _holds_files(self.paths[u])}
        missing = sorted(wanted - known)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise SourceError(f"{self!r}: {len(missing)} series of the table not found: {shown} "
                              f"({len(wanted) - len(missing)} of {len(wanted)} found)")

    # ------------------------------------------------------------------ reading
    def get(self, series_uid: str) -> Volume:
        """The volume of ``series_uid`` (memory-mapped when cached); kept open in a small LRU."""
        uid = str(series_uid)
        if uid in self._open:
            self._open.move_to_end(uid)
            return self._open[uid]
        volume = self._with_pad(self._load(uid))
        self._open[uid] = volume
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return volume

    def _load(self, uid: str) -> Volume:
        if uid in self.volumes:
            return self.volumes[uid]
        if uid not in self.paths:
            self.scan()
        path = self.paths.get(uid) or self._images.get(uid)
        if path is not None:
            params = {"reader": "read_volume", "version": READER_VERSION, "path": str(path.resolve()),
                      "on_irregular": self.on_irregular, "on_tilt": self.on_tilt}
            return self._cached(uid, params, lambda: self._read_path(uid, path))
        if uid not in (self._rows or {}):
            raise SourceError(f"{self!r}: series {uid} not found")
        row = self._rows[uid]
        params = {"reader": "read_series", "version": READER_VERSION,
                  "on_irregular": self.on_irregular, "on_tilt": self.on_tilt}
        return self._cached(uid, params, lambda: self._read_row(row))

    def _cached(self, uid: str, params: dict[str, Any], loader: Any) -> Volume:
        if self.cache_dir is None:
            return loader()
        from medsuite.io.cache import VolumeCache

        return VolumeCache(self.cache_dir).get(uid, params, loader)

    def _read_row(self, row: Any) -> Volume:
        from medsuite.io.reader import read_series

        return read_series(row, on_irregular=self.on_irregular, on_tilt=self.on_tilt)

    def _read_path(self, uid: str, path: Path) -> Volume:
        return read_path(path, uid, on_irregular=self.on_irregular, on_tilt=self.on_tilt)

    @staticmethod
    def _with_pad(volume: Volume) -> Volume:
        """Record the padding value once per opened volume (non-CT: its minimum) so samples need not scan it."""
        if "pad_value" in volume.meta or volume.modality.upper() == "CT":
            return volume
        return volume.with_array(volume.array, meta={**volume.meta, "pad_value": float(np.min(volume.array))})
