"""`VolumeSource`: series UID -> `Volume`, from a scanned DICOM folder (through the volume cache), image
paths, or volumes already in memory.

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

from medsuite.io.volume import Volume

READER_VERSION = 1


class SourceError(KeyError):
    """A series the source cannot provide; ``str()`` gives the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class VolumeSource:
    """Where the volumes of a table come from.

    dicom_root: folder(s) scanned once (headers only) with `scan_folder`; series are read with `read_series`.
    cache_dir: a `VolumeCache` root; the first read of a series stores it, later reads memory-map it.
    paths: ``series_uid -> file or folder`` (NIfTI/NRRD/MHA or DICOM), e.g. a series table's ``path`` column.
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
                raise FileNotFoundError(f"{root}: DICOM folder not found")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.paths = {str(k): Path(v) for k, v in (paths or {}).items()}
        self.volumes = {str(k): v for k, v in (volumes or {}).items()}
        self.on_irregular, self.on_tilt = on_irregular, on_tilt
        self.max_open = max(1, int(max_open))
        self.scan_workers = scan_workers
        self._rows: dict[str, Any] | None = None  # series_uid -> series-table row (file list), after the scan
        self._open: OrderedDict[str, Volume] = OrderedDict()

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
        """Scan the DICOM roots once (headers only); later calls do nothing. Returns self."""
        if self._rows is not None or not self.dicom_roots:
            self._rows = self._rows or {}
            return self
        from medsuite.io.dicom import scan_folder
        from medsuite.io.load import select_stack

        table = scan_folder(self.dicom_roots, workers=self.scan_workers).series
        rows: dict[str, Any] = {}
        if len(table):
            readable = table[table["status"] != "error"]
            for uid in readable["series_uid"].unique():
                rows[str(uid)] = select_stack(readable, uid, source=self.dicom_roots[0])
        self._rows = rows
        return self

    @property
    def series_uids(self) -> list[str]:
        """Every series this source can provide."""
        self.scan()
        return sorted(set(self._rows or {}) | set(self.paths) | set(self.volumes))

    def __contains__(self, series_uid: object) -> bool:
        return str(series_uid) in set(self.series_uids)

    def check(self, series_uids: Iterable[str]) -> None:
        """Raise `SourceError` listing the series (of a table) this source cannot provide."""
        known = set(self.series_uids)
        missing = sorted({str(u) for u in series_uids} - known)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise SourceError(f"{self!r}: {len(missing)} series of the table not found: {shown}")

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
        if uid in self.paths:
            path = self.paths[uid]
            params = {"reader": "read_volume", "version": READER_VERSION, "path": str(path.resolve()),
                      "on_irregular": self.on_irregular, "on_tilt": self.on_tilt}
            return self._cached(uid, params, lambda: self._read_path(uid, path))
        self.scan()
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
        from medsuite.io.load import read_volume
        from medsuite.io.sitk_io import is_image_file

        if path.is_file() and is_image_file(path):
            volume = read_volume(path)
            return volume if volume.series_uid else volume.with_array(volume.array, series_uid=uid)
        return read_volume(path, uid, on_irregular=self.on_irregular, on_tilt=self.on_tilt)

    @staticmethod
    def _with_pad(volume: Volume) -> Volume:
        """Record the padding value once per opened volume (non-CT: its minimum) so samples need not scan it."""
        if "pad_value" in volume.meta or volume.modality.upper() == "CT":
            return volume
        return volume.with_array(volume.array, meta={**volume.meta, "pad_value": float(np.min(volume.array))})
