"""A disk cache of decoded (and preprocessed) volumes, keyed by series UID and preprocessing parameters.

Each entry is a folder ``<root>/<series_uid>/<hash>/`` holding ``array.npy`` and ``meta.json``. The hash is
the sha256 of the canonical JSON of ``{"format": CACHE_FORMAT, "params": params}``, so a change in the
preprocessing parameters (or in this file format) can never hit a stale entry.

Why this shape:
- ``array.npy`` is opened with ``np.load(mmap_mode="r")``: a memory-mapped, read-only array, so several
  DataLoader workers (and processes) share the page cache instead of each holding a copy.
- Writes are atomic (`medsuite.io.atomic.atomic_dir`): an entry is built in a temp folder beside it, fsynced,
  then renamed into place; temp folders of writers killed mid-write are removed by the next writer of that
  entry. If another process renamed its entry first, ours is dropped and theirs is used. Readers never see
  a half-written entry.
- Every read validates the entry (JSON parses, format and key match, array file has exactly the expected
  size, shape and dtype). A corrupt entry is removed and rebuilt, never served.
- No pickle: arrays are loaded with ``allow_pickle=False``; metadata is plain JSON.
- Patient identifiers (`PHI_META_KEYS`) are dropped from the stored metadata unless ``keep_phi=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsuite.io.atomic import atomic_dir, remove_stale_temps
from medsuite.io.volume import Volume

log = logging.getLogger(__name__)

#: Bumped whenever the entry layout or the meaning of a stored field changes.
CACHE_FORMAT = 1
#: Meta keys that identify a patient; not written to the cache unless ``keep_phi=True``.
PHI_META_KEYS: frozenset[str] = frozenset(
    {"patient_id", "patient_name", "patient_birth_date", "accession_number"}
)

_ARRAY = "array.npy"
_META = "meta.json"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_MAX_ATTEMPTS = 4


class CacheError(ValueError):
    """A cache entry or request is invalid; the message names the entry and the reason."""


@dataclass(frozen=True)
class CacheEntry:
    """One stored entry, as listed by `VolumeCache.entries`."""

    series_uid: str
    key: str
    path: Path
    params: dict[str, Any]
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    created: float


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces, no NaN): equal parameters give equal text.

    numpy scalars/arrays, tuples and paths are converted; anything else that JSON cannot hold is a
    `CacheError` naming the offending key.
    """
    return json.dumps(
        _jsonable(value, "params", strict=True), sort_keys=True, separators=(",", ":"), allow_nan=False
    )


def params_hash(params: Mapping[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON of ``params`` plus the cache format version."""
    if not isinstance(params, Mapping):
        raise CacheError(f"cache params must be a mapping (dict), got {type(params).__name__}")
    text = canonical_json({"format": CACHE_FORMAT, "params": dict(params)})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class VolumeCache:
    """Disk cache of `Volume`s under ``root``; see the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike[str], *, keep_phi: bool = False) -> None:
        self.root = Path(root)
        self.keep_phi = keep_phi
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"VolumeCache(root={str(self.root)!r})"

    # ------------------------------------------------------------------ public verbs
    def get(self, series_uid: str, params: Mapping[str, Any], loader: Callable[[], Volume]) -> Volume:
        """The cached volume for ``(series_uid, params)``; on a miss call ``loader()``, store, return.

        The returned array is always the stored, read-only, memory-mapped one, so a hit and a miss give
        the same object kind. A corrupt entry is removed and rebuilt.
        """
        path = self._entry_path(series_uid, params)
        for _ in range(_MAX_ATTEMPTS):
            if path.exists():
                try:
                    return self._load(path, series_uid)
                except (CacheError, FileNotFoundError) as exc:
                    if path.exists():
                        log.warning("volume cache: removing corrupt entry %s (%s)", path, exc)
                        self._discard(path)
                    continue
            volume = loader()
            if not isinstance(volume, Volume):
                raise CacheError(
                    f"cache loader for series {series_uid} returned {type(volume).__name__}, not a Volume"
                )
            self._store(path, series_uid, dict(params), volume)
        raise CacheError(f"{path}: entry could not be written and read back after {_MAX_ATTEMPTS} attempts")

    def contains(self, series_uid: str, params: Mapping[str, Any]) -> bool:
        """True when a valid entry exists for ``(series_uid, params)`` (validated, but no pixels are read)."""
        path = self._entry_path(series_uid, params)
        try:
            self._load(path, series_uid)  # maps the array, reads no pixels
        except (CacheError, FileNotFoundError):
            return False
        return True

    def remove(self, series_uid: str, params: Mapping[str, Any] | None = None) -> int:
        """Remove the entry for ``(series_uid, params)``, or every entry of the series when ``params`` is
        None. Returns the number of entries removed."""
        if params is not None:
            path = self._entry_path(series_uid, params)
            return int(path.exists() and self._discard(path))
        series_dir = self.root / _safe_uid(series_uid)
        if not series_dir.is_dir():
            return 0
        removed = sum(self._discard(p) for p in sorted(series_dir.iterdir()) if _is_entry_name(p.name))
        _rmdir_if_empty(series_dir)
        return removed

    def clear(self) -> int:
        """Remove every entry and every leftover temp folder; returns the number of entries removed."""
        removed = 0
        for child in sorted(self.root.iterdir()):
            if child.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(child, ignore_errors=True)
            elif child.is_dir():
                _remove_dead_writers(child)
                removed += sum(self._discard(p) for p in sorted(child.iterdir()) if _is_entry_name(p.name))
                _rmdir_if_empty(child)
        return removed

    def entries(self) -> Iterator[CacheEntry]:
        """Every valid entry (corrupt ones are skipped here; `get` removes them)."""
        for series_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and _is_entry_name(p.name)):
            for path in sorted(series_dir.iterdir()):
                if not _is_entry_name(path.name):
                    continue
                try:
                    meta = self._read_meta(path, None)
                except (CacheError, FileNotFoundError):
                    continue
                if _safe_uid(meta["series_uid"]) != series_dir.name:
                    continue
                yield CacheEntry(
                    series_uid=meta["series_uid"],
                    key=path.name,
                    path=path,
                    params=meta["params"],
                    shape=tuple(meta["shape"]),
                    dtype=meta["dtype"],
                    nbytes=_dir_size(path),
                    created=float(meta["created"]),
                )

    def __len__(self) -> int:
        return sum(1 for _ in self.entries())

    def size_bytes(self) -> int:
        """Bytes on disk under ``root`` (entries plus any temp folders of writers still at work)."""
        return _dir_size(self.root)

    def prune_temp(self, older_than_s: float = 3600.0) -> int:
        """Remove temp folders of writers that died (any age) and trash older than ``older_than_s`` seconds."""
        now = time.time()
        removed = 0
        for child in list(self.root.iterdir()):
            if child.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                if now - child.stat().st_mtime > older_than_s:
                    shutil.rmtree(child, ignore_errors=True)
                    removed += 1
            elif child.is_dir() and _is_entry_name(child.name):
                removed += _remove_dead_writers(child)
        return removed

    # ------------------------------------------------------------------ internals
    def _entry_path(self, series_uid: str, params: Mapping[str, Any]) -> Path:
        return self.root / _safe_uid(series_uid) / params_hash(params)

    def _read_meta(self, path: Path, series_uid: str | None) -> dict[str, Any]:
        try:
            text = (path / _META).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError) as exc:
            raise CacheError(f"{path / _META}: unreadable ({exc})") from exc
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CacheError(f"{path / _META}: not valid JSON ({exc.msg})") from exc
        required = {
            "format",
            "key",
            "series_uid",
            "params",
            "shape",
            "dtype",
            "spacing",
            "origin",
            "direction",
        }
        if not isinstance(meta, dict) or not required <= meta.keys():
            raise CacheError(f"{path / _META}: missing fields {sorted(required - set(meta or {}))}")
        if meta["format"] != CACHE_FORMAT:
            raise CacheError(f"{path / _META}: cache format {meta['format']}, expected {CACHE_FORMAT}")
        if meta["key"] != path.name or (series_uid is not None and meta["series_uid"] != series_uid):
            raise CacheError(f"{path / _META}: belongs to another key or series")
        return meta

    def _load(self, path: Path, series_uid: str) -> Volume:
        meta = self._read_meta(path, series_uid)
        array_path = path / _ARRAY
        try:
            array = np.load(array_path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            raise CacheError(f"{array_path}: unreadable array ({exc})") from exc
        if list(array.shape) != list(meta["shape"]) or str(array.dtype) != meta["dtype"]:
            raise CacheError(
                f"{array_path}: array is {array.dtype}{list(array.shape)}, meta.json says {meta['dtype']}{meta['shape']}"
            )
        expected = array.offset + array.nbytes
        actual = array_path.stat().st_size
        if actual != expected:
            raise CacheError(f"{array_path}: file is {actual} bytes, expected {expected}")
        try:
            return Volume(
                array=array,
                spacing=tuple(meta["spacing"]),
                origin=tuple(meta["origin"]),
                direction=np.asarray(meta["direction"], dtype=np.float64),
                series_uid=meta["series_uid"],
                study_uid=meta.get("study_uid", ""),
                modality=meta.get("modality", ""),
                meta=meta.get("meta", {}),
            )
        except (ValueError, TypeError) as exc:
            raise CacheError(f"{path / _META}: invalid geometry ({exc})") from exc

    def _store(self, path: Path, series_uid: str, params: dict[str, Any], volume: Volume) -> None:
        array = np.ascontiguousarray(volume.array)
        if array.dtype.hasobject or array.dtype.kind not in "biuf":
            raise CacheError(f"series {series_uid}: cannot cache an array of dtype {array.dtype}")
        stored_meta = {k: v for k, v in volume.meta.items() if self.keep_phi or k not in PHI_META_KEYS}
        meta = {
            "format": CACHE_FORMAT,
            "key": path.name,
            "series_uid": series_uid,
            "params": _jsonable(params, "params", strict=True),
            "shape": list(array.shape),
            "dtype": str(array.dtype),
            "spacing": list(volume.spacing),
            "origin": list(volume.origin),
            "direction": np.asarray(volume.direction).tolist(),
            "study_uid": volume.study_uid,
            "modality": volume.modality,
            "meta": _jsonable(stored_meta, "meta", strict=False),
            "created": time.time(),
        }
        try:
            with atomic_dir(path) as tmp:  # temp folder beside the entry; stale ones of dead writers removed
                with open(tmp / _ARRAY, "wb") as handle:
                    np.save(handle, array, allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
                with open(tmp / _META, "w", encoding="utf-8") as handle:
                    json.dump(meta, handle, indent=1, allow_nan=False)
                    handle.flush()
                    os.fsync(handle.fileno())
                _fsync_dir(tmp)
        except FileExistsError:
            log.debug("volume cache: another writer stored %s first; using theirs", path)

    def _discard(self, path: Path) -> bool:
        """Move an entry out of the way atomically, then delete it; False if it was already gone."""
        trash = self.root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True


# ---------------------------------------------------------------------- helpers
def _safe_uid(series_uid: str) -> str:
    """A folder name for a series UID. DICOM UIDs (digits and dots) are kept as they are; anything else is
    replaced by a hash, so no UID can escape the root or collide with temp names (meta.json keeps the UID)."""
    if not isinstance(series_uid, str) or not series_uid:
        raise CacheError(f"cache series_uid must be a non-empty string, got {series_uid!r}")
    if (
        all(c.isdigit() or c == "." for c in series_uid)
        and not series_uid.startswith(".")
        and len(series_uid) <= 64
    ):
        return series_uid
    return "h" + hashlib.sha256(series_uid.encode("utf-8")).hexdigest()[:40]


def _is_entry_name(name: str) -> bool:
    return not name.startswith(".")  # temp folders of writers (medsuite.io.atomic) and trash are hidden


def _jsonable(value: Any, where: str, *, strict: bool) -> Any:
    """Plain-JSON copy of ``value``. Non-strict mode (metadata) turns unknown objects into strings and
    non-finite floats into None; strict mode (cache keys) refuses them with the offending key."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if strict:
            raise CacheError(f"cache {where}: {value} is not allowed in a cache key")
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item(), where, strict=strict)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise CacheError(f"cache {where}: key {k!r} is not a string")
            out[k] = _jsonable(v, f"{where}.{k}", strict=strict)
        return out
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where, strict=strict)
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if strict:
        raise CacheError(
            f"cache {where}: {type(value).__name__} is not JSON (use numbers, strings, lists, dicts)"
        )
    # pydicom values: DSfloat/IS are float/int subclasses (handled above), MultiValue iterates, the rest is text.
    if hasattr(value, "__iter__") and not isinstance(value, bytes | bytearray):
        return [_jsonable(v, f"{where}[{i}]", strict=strict) for i, v in enumerate(value)]
    return str(value)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dir_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _remove_dead_writers(series_dir: Path) -> int:
    """Remove the temp folders of entries whose writer died (kill -9) in one series folder."""
    targets = {p.name[1:].split(".", 1)[0] for p in series_dir.iterdir() if p.name.startswith(".")}
    return sum(len(remove_stale_temps(series_dir / name)) for name in targets if name)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass
