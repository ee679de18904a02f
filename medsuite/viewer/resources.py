"""Server-side resources shared by all sessions: database connections, the bundle, its case index, the volumes
(through the memory-mapped `VolumeCache`) and their compressed form for the browser. Only series recorded in
the database are ever opened; a series whose files cannot be read raises `ImagesUnavailable`, whose message
never contains a server path."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from medsuite.io.volume import Volume
from medsuite.records import store

VOLUME_PARAMS = {"viewer": 2, "reader": "read_volume"}  # 2: volumes carry meta["interpolated_slices"]


class ImagesUnavailable(RuntimeError):
    """The series' images cannot be shown; the message says why in words, without any server path."""


def connect(db: Path) -> sqlite3.Connection:
    """A fresh connection for this request (SQLite connections are cheap; one per call keeps transactions of
    concurrent sessions apart)."""
    return store.connect(db, create=False)


# no spinner of its own (the background warmer calls it too, outside any page): callers show one
@st.cache_resource(show_spinner=False)
def bundle(path: str) -> Any:
    """The loaded bundle (model in eval mode), shared by every session."""
    from medsuite.learn.bundle import load_bundle

    return load_bundle(path)


@st.cache_resource(show_spinner=False)
def case_index(path: str) -> Any:
    """The bundle's similar-case index, or None when it has none."""
    from medsuite.interpret.index import CaseIndex

    return CaseIndex.from_bundle(bundle(path))


@st.cache_resource(show_spinner=False, max_entries=8)
def volume(db: str, cache_root: str, series_uid: str) -> Volume:
    """The series' volume from the volume cache (memmap), read from the DICOM source on first use."""
    with closing(store.connect(db, create=False)) as conn:
        row = conn.execute("SELECT source FROM series WHERE series_uid = ? AND source IS NOT NULL LIMIT 1",
                           (series_uid,)).fetchone()
    if row is None:
        raise ImagesUnavailable("the scoring run recorded no image source for this series")
    from medsuite.io.phi import PhiKeyError, Pseudonymizer

    try:  # scoring seals locations (folder names may hold patient names); the key's holder opens them
        source = Path(Pseudonymizer.from_key_file().unseal(row["source"]))
    except PhiKeyError as exc:
        raise ImagesUnavailable(f"the image location cannot be opened: {exc}") from None

    def load() -> Volume:
        from medsuite.data.source import read_path  # a DICOM folder, or an image file (.mhd, .nrrd, .nii.gz)

        return read_path(source, series_uid)

    from medsuite.io.cache import VolumeCache

    try:
        return VolumeCache(cache_root).get(series_uid, VOLUME_PARAMS, load)
    except ImagesUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message without paths
        raise ImagesUnavailable(why_unavailable(exc)) from exc


def why_unavailable(exc: BaseException) -> str:
    """A reader-facing reason for a failed read: the kind of failure, never the (server-side) file names."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return ("the image files are missing: they were moved or deleted after scoring "
                f"({type(exc).__name__})")
    if isinstance(exc, PermissionError):
        return f"the viewer is not allowed to read the image files ({type(exc).__name__})"
    if isinstance(exc, MemoryError):
        return "the series is too large for this viewer's memory"
    return f"the image files could not be read as one series ({type(exc).__name__})"


@st.cache_resource(show_spinner=False, max_entries=8)
def scan_bytes(db: str, cache_root: str, series_uid: str) -> bytes:
    """The volume as the browser receives it (lossless gzip NIfTI), made once per series and kept."""
    from medsuite.viewer.payload import Grid, encode

    vol = volume(db, cache_root, series_uid)
    return encode(np.asarray(vol.array), Grid.of(vol), description="medsuite scan")


def bundle_path_for(cfg_bundle: Path | None, pred: dict[str, Any]) -> str | None:
    """The bundle to use: ``--bundle`` if given, else the one the run recorded (when it still exists)."""
    if cfg_bundle is not None:
        return str(cfg_bundle)
    path = pred.get("bundle_path")
    return str(path) if path and Path(path).exists() else None


def model_info(b: Any) -> dict[str, str]:
    """Model name, version and date from bundle.json (version: its ``version`` entry, else the bundle hash)."""
    meta = b.meta
    version = meta.get("version") or f"sha256:{b.sha256[:12]}"
    return {"name": b.name, "version": str(version), "date": str(meta.get("created_at", "?")), "sha256": b.sha256}


def nodule_index(vol: Volume, pred: dict[str, Any]) -> np.ndarray | None:
    """The nodule's position as fractional voxel indices (z, y, x), or None for a series prediction."""
    if pred.get("x_mm") is None:
        return None
    return np.asarray(vol.world_to_index(np.array([pred["x_mm"], pred["y_mm"], pred["z_mm"]], dtype=float)))


def series_nodules(conn: sqlite3.Connection, series_uid: str) -> list[dict[str, Any]]:
    """Every nodule predicted in a series (one row per nodule id, from its latest prediction)."""
    rows = conn.execute(
        "SELECT nodule_id, x_mm, y_mm, z_mm, diameter_mm, probability FROM predictions p "
        "WHERE series_uid = ? AND nodule_id != '' AND x_mm IS NOT NULL AND prediction_id = "
        "(SELECT MAX(prediction_id) FROM predictions q WHERE q.series_uid = p.series_uid AND q.nodule_id = p.nodule_id) "
        "ORDER BY nodule_id", (series_uid,)).fetchall()
    return [dict(r) for r in rows]


@st.cache_resource(show_spinner=False)
def predictor(path: str) -> Any:
    """The bundle's `Predictor` (TTA, calibration, threshold): the same chain scoring ran."""
    from medsuite.learn.predict import Predictor

    return Predictor.from_bundle(bundle(path))


WARMER_NICE = 10  # added to the server's nice value for the background warmer's thread


def _lower_priority() -> None:
    """Run this (the warmer's) thread at a lower CPU priority: on a small server that also runs a browser, or
    serves several readers, preparing the next case must not slow the pages being read (Linux nice values are
    per thread; elsewhere this does nothing)."""
    import os
    import threading

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + WARMER_NICE))
    except (AttributeError, OSError):  # not Linux, or not allowed: the warmer runs at normal priority
        pass


@st.cache_resource(show_spinner=False)
def _warmer() -> Any:
    """One background thread, shared by all sessions, that prepares what a reader will probably open next."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="medsuite-viewer-prefetch", initializer=_lower_priority)


def _quietly(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a prefetch that fails is simply not there; opening the case says why
        pass


def prefetch_task(fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` in the background warmer (errors ignored: the real open reports them)."""
    _warmer().submit(_quietly, fn, *args)


def prefetch(db: str, cache_root: str, series_uids: list[str], bundle_path: str | None = None) -> None:
    """In the background: decode these series into the volume cache and their browser payload, and load the
    model bundle, so that opening the next case does not wait for them (failures are left to the real open)."""
    ex = _warmer()
    for uid in series_uids:  # the scans first: the next case's reading view needs them before anything else
        ex.submit(_quietly, scan_bytes, db, cache_root, uid)
    if bundle_path:
        ex.submit(_quietly, predictor, bundle_path)
