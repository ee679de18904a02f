"""Model bundles: one folder or ``.zip`` holding everything needed to use a trained model, with no pickle.

A bundle holds ``model.safetensors`` (the weights), ``bundle.json`` (how to rebuild the model and its input
block, labels, operating threshold, metrics with CIs, training config, data fingerprint, versions and the
sha256 of every other file) and optional extra files such as the similar-case index under ``index/``.
Loading verifies every hash, refuses pickles and bundles of a newer format, and rebuilds the model with
`medsuite.learn.models.build_model` and ``load_state_dict(strict=True)``. Writing is atomic: a folder or
zip is written under a temporary name next to the target and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import stat
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "InitReport",
    "data_fingerprint",
    "export_bundle",
    "init_from_bundle",
    "load_bundle",
]

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "bundle.json"
TASKS = ("nodule", "series")
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_RESERVED = {
    "format_version", "name", "task", "arch", "arch_kwargs", "block_spec", "labels", "threshold", "metrics",
    "train_config", "data_fingerprint", "created_at", "versions", "files", "predictor",
}  # fmt: skip

log = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle that cannot be written or loaded; the message starts with the bundle path."""


# ------------------------------------------------------------------------------------------ helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _to_json(value: Any, where: str) -> Any:
    """Plain JSON types (numpy scalars/arrays, tuples and paths converted; NaN/inf become None)."""
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _to_json(value.tolist(), where)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"{where}: a {type(value).__name__} cannot be stored in bundle.json (JSON values only)")


def _check_member(name: str, where: str) -> str:
    """A safe relative POSIX path inside the bundle (no absolute paths, no '..')."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name or name != p.as_posix():
        raise BundleError(f"{where}: file name {name!r} is not a plain relative path inside the bundle")
    return name


def _pickle_reason(name: str, data: bytes | None) -> str | None:
    """Why ``name`` looks like a pickle / torch checkpoint, or None."""
    if name.lower().endswith(PICKLE_SUFFIXES):
        return f"{name} is a pickle/torch checkpoint file ({Path(name).suffix})"
    if data is not None and name.endswith(".safetensors"):
        if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
            return f"{name} starts with the pickle magic bytes although it should be safetensors"
        if data[:4] == b"PK\x03\x04":
            return f"{name} is a zip (torch.save) checkpoint although it should be safetensors"
        if len(data) < 9 or data[8:9] != b"{":
            return f"{name} is not a safetensors file (no JSON header)"
    return None


def _versions() -> dict[str, str]:
    import monai
    import safetensors
    import torch

    from medsuite import __version__

    return {
        "medsuite": __version__,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------ export
def export_bundle(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any],
    block_spec: Mapping[str, Any],
    labels: list[str] | tuple[str, ...],
    threshold: float | None,
    task: str,
    metrics: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    data_fingerprint: str | None = None,
    extra_files: Mapping[str, bytes] | None = None,
    name: str | None = None,
    extra_meta: Mapping[str, Any] | None = None,
    predictor: Mapping[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a bundle to ``path`` (a folder, or one zip when it ends in ``.zip``) and return the path.

    ``arch``/``arch_kwargs`` must rebuild ``model`` exactly (checked here, so a bundle that cannot be
    loaded is never written). ``threshold`` is the binary operating point (None for multi-class);
    ``predictor`` is the predictor's settings (`PredictorSettings.to_json`: TTA, calibration, fusion,
    threshold and its rule, positive class), checked against ``labels`` and ``threshold`` and stored under
    ``"predictor"``; ``extra_files`` maps relative names (e.g. ``index/cases.json``) to bytes; ``extra_meta`` adds
    JSON entries to bundle.json (e.g. ``eligibility``, ``modality``). An existing bundle at ``path``
    is replaced atomically when ``overwrite`` is true, else it is an error.
    """
    from safetensors.torch import save as save_safetensors

    from medsuite.learn.models import ARCHITECTURES, build_model

    path = Path(path)
    where = str(path)
    if task not in TASKS:
        raise BundleError(f"{where}: task must be one of {TASKS}, got {task!r}")
    if arch not in ARCHITECTURES:
        raise BundleError(f"{where}: unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    try:
        arch_kwargs = _to_json(dict(arch_kwargs), "arch_kwargs")
        stored = {
            "block_spec": _to_json(dict(block_spec), "block_spec")
            if isinstance(block_spec, Mapping)
            else None,
            "metrics": _to_json(dict(metrics or {}), "metrics"),
            "train_config": _to_json(dict(train_config or {}), "train_config"),
            "extra": _to_json(dict(extra_meta or {}), "extra_meta"),
        }
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from None
    if not isinstance(block_spec, Mapping) or "type" not in block_spec:
        raise BundleError(f"{where}: block_spec must be a block's spec() dict with a 'type' key")
    labels = [str(label) for label in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise BundleError(f"{where}: labels must be at least two distinct names, got {labels}")
    n_classes = getattr(model, "n_classes", None)
    if n_classes is not None and n_classes != len(labels):
        raise BundleError(f"{where}: the model has {n_classes} outputs but {len(labels)} labels {labels}")
    if threshold is not None:
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise BundleError(f"{where}: threshold must lie in [0, 1], got {threshold}")

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    import torch

    try:
        with torch.device("meta"):  # shapes only: no memory, no random init
            rebuilt = build_model(arch, **arch_kwargs).state_dict()
    except ValueError as exc:
        raise BundleError(f"{where}: {exc}") from None
    mismatch = sorted(
        set(state) ^ set(rebuilt)
        | {k for k in set(state) & set(rebuilt) if state[k].shape != rebuilt[k].shape}
    )
    if mismatch:
        raise BundleError(
            f"{where}: build_model({arch!r}, **{arch_kwargs}) does not rebuild this model "
            f"({len(mismatch)} differing parameter(s), e.g. {mismatch[:3]}); pass the arch_kwargs it was built with"
        )

    files: dict[str, bytes] = {MODEL_FILE: save_safetensors(state)}
    for member, data in (extra_files or {}).items():
        _check_member(member, where)
        if member in (MODEL_FILE, META_FILE):
            raise BundleError(f"{where}: extra file {member!r} would overwrite the bundle's own file")
        if not isinstance(data, bytes | bytearray):
            raise BundleError(f"{where}: extra file {member!r} must be bytes, got {type(data).__name__}")
        reason = _pickle_reason(member, bytes(data))
        if reason:
            raise BundleError(f"{where}: refusing to write {reason}")
        files[member] = bytes(data)

    predictor_json = _checked_predictor(predictor, labels, threshold, where)
    extra = stored["extra"]
    clash = sorted(_RESERVED & set(extra))
    if clash:
        raise BundleError(f"{where}: extra_meta may not set the reserved key(s) {clash}")
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name or path.name.removesuffix(".zip"),
        "task": task,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "block_spec": stored["block_spec"],
        "labels": labels,
        "threshold": threshold,
        "metrics": stored["metrics"],
        "train_config": stored["train_config"],
        "data_fingerprint": data_fingerprint,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
        "files": {member: _sha256(data) for member, data in sorted(files.items())},
        **({"predictor": predictor_json} if predictor_json is not None else {}),
        **extra,
    }
    files[META_FILE] = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    _write_atomic(path, files, overwrite)
    log.info("exported bundle %s (%s, %d files)", path, arch, len(files))
    return path


def _checked_predictor(predictor: Mapping[str, Any] | None, labels: list[str], threshold: float | None,
                       where: str) -> dict[str, Any] | None:
    """The predictor settings as stored: parsed (so a bundle that cannot be scored is never written) and
    agreeing with the bundle's labels and threshold."""
    if predictor is None:
        return None
    from medsuite.learn.predict import PredictorError, PredictorSettings

    try:
        settings = PredictorSettings.from_json(_to_json(dict(predictor), "predictor"), labels=labels)
    except (PredictorError, ValueError) as exc:
        raise BundleError(f"{where}: {exc}") from None
    point = settings.operating_point
    if threshold is not None and point is not None and abs(point.threshold - threshold) > 1e-12:
        raise BundleError(f"{where}: threshold {threshold} differs from the predictor's {point.threshold}")
    return settings.to_json()


def _write_atomic(path: Path, files: Mapping[str, bytes], overwrite: bool) -> None:
    """The bundle folder or zip written under a temporary name beside ``path`` and renamed into place
    (`medsuite.io.atomic`); temporaries of writers killed earlier are removed first."""
    from medsuite.io.atomic import atomic_dir, atomic_path

    if path.is_symlink():
        raise BundleError(f"{path}: is a symbolic link; write the bundle to a real path")
    if path.exists() and not overwrite:
        raise BundleError(f"{path}: already exists (pass overwrite=True to replace it)")
    is_zip = path.suffix.lower() == ".zip"
    if path.exists() and path.is_dir() == is_zip:
        kind = "folder" if path.is_dir() else "file"
        raise BundleError(f"{path}: a {kind} is in the way of this {'zip' if is_zip else 'folder'} bundle")
    if is_zip:
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for member, data in files.items():
                zf.writestr(member, data)
        return
    with atomic_dir(path, overwrite=True) as tmp:
        for member, data in files.items():
            target = tmp / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


# ------------------------------------------------------------------------------------------- read
# Limits a bundle must respect before anything is inflated, parsed or built (docs/bundles.md, "Limits").
MAX_FILES = 64  # files in a bundle
MAX_DIR_DEPTH = 8  # folder nesting inside a bundle folder
MAX_META_BYTES = 16 * 2**20  # bundle.json
MAX_WEIGHTS_BYTES = 2**30  # model.safetensors
MAX_EXTRA_BYTES = 512 * 2**20  # each extra file (the case index ...)
MAX_TOTAL_BYTES = 2 * 2**30  # all files together
MAX_LABELS = 256
MAX_SAMPLE_VALUES = 2**22  # values in one input sample (block_spec output shape), 16 MiB as float32
MAX_SAMPLE_DIM = 4096  # any one dimension of a sample
ARCH_LIMITS = {"depth": 10, "subunits": 8, "n_views": 16, "in_channels": 4096, "n_classes": MAX_LABELS}
MAX_ARCH_INT = 65536  # any other integer architecture argument (width, attention_dim ...)
_ZIP_SYMLINK = 0o120000


def _limit_for(member: str) -> int:
    return MAX_META_BYTES if member == META_FILE else MAX_WEIGHTS_BYTES if member == MODEL_FILE else MAX_EXTRA_BYTES


def _check_size(where: str, member: str, size: int) -> None:
    limit = _limit_for(member)
    if size > limit:
        raise BundleError(f"{where}: {member} is {size:,} bytes; a bundle file may hold at most {limit:,} "
                          "(refused before reading it)")


class _Reader:
    """Reads a bundle folder or zip safely: no symbolic links or special files anywhere, every size known
    and bounded *before* a byte is read or inflated, and only the files that bundle.json lists are read."""

    def __init__(self, path: Path) -> None:
        self.path, self.where = path, str(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise BundleError(f"{self.where}: bundle not found") from None
        except OSError as exc:
            raise BundleError(f"{self.where}: cannot read the bundle ({exc.strerror or exc})") from None
        if stat.S_ISLNK(st.st_mode):
            raise BundleError(f"{self.where}: is a symbolic link; bundles are read only from real files and "
                              "folders (pass the link's target if you trust it)")
        self.zip: zipfile.ZipFile | None = None
        if stat.S_ISDIR(st.st_mode):
            self.sizes = self._scan_folder()
        elif stat.S_ISREG(st.st_mode):
            self.sizes = self._scan_zip()
        else:
            raise BundleError(f"{self.where}: not a regular file or folder (a device, FIFO or socket)")
        total = sum(self.sizes.values())
        if total > MAX_TOTAL_BYTES:
            raise BundleError(f"{self.where}: the bundle's files hold {total:,} bytes; at most {MAX_TOTAL_BYTES:,} "
                              "are read (refused before reading them)")

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def _scan_folder(self) -> dict[str, int]:
        sizes: dict[str, int] = {}

        def walk(folder: Path, rel: str, depth: int) -> None:
            if depth > MAX_DIR_DEPTH:
                raise BundleError(f"{self.where}: folders nested more than {MAX_DIR_DEPTH} deep ({rel})")
            with os.scandir(folder) as entries:
                for entry in entries:
                    name = f"{rel}{entry.name}"
                    if entry.is_symlink():
                        raise BundleError(f"{self.where}: {name} is a symbolic link; bundles may not contain links")
                    if entry.is_dir(follow_symlinks=False):
                        walk(Path(entry.path), name + "/", depth + 1)
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        raise BundleError(f"{self.where}: {name} is not a regular file (a device, FIFO or socket)")
                    sizes[_check_member(name, self.where)] = st.st_size
                    if len(sizes) > MAX_FILES:
                        raise BundleError(f"{self.where}: more than {MAX_FILES} files; not a medsuite bundle")

        walk(self.path, "", 0)
        return sizes

    def _scan_zip(self) -> dict[str, int]:
        try:
            self.zip = zipfile.ZipFile(self.path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
            raise BundleError(f"{self.where}: not a bundle (neither a folder nor a readable .zip file: {exc})") from None
        if len(infos) > MAX_FILES * 2:
            raise BundleError(f"{self.where}: the zip lists {len(infos)} entries; not a medsuite bundle")
        sizes: dict[str, int] = {}
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if stat.S_IFMT(info.external_attr >> 16) == _ZIP_SYMLINK:
                raise BundleError(f"{self.where}: {info.filename} is a symbolic link inside the zip; bundles may "
                                  "not contain links")
            if info.is_dir():
                continue
            name = _check_member(info.filename, self.where)
            if name in sizes:
                raise BundleError(f"{self.where}: {name} appears twice in the zip")
            if info.flag_bits & 0x1:
                raise BundleError(f"{self.where}: {name} is encrypted")
            sizes[name] = int(info.file_size)
            self.infos[name] = info
        if len(sizes) > MAX_FILES:
            raise BundleError(f"{self.where}: more than {MAX_FILES} files; not a medsuite bundle")
        return sizes

    def read(self, member: str) -> bytes:
        """One file's bytes, never more than its known size (and its size limit)."""
        size = self.sizes[member]
        _check_size(self.where, member, size)
        try:
            if self.zip is not None:
                with self.zip.open(self.infos[member]) as fh:  # inflation stops at the declared size
                    data = fh.read(size + 1)
            else:
                fd = os.open(self.path / member, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                        raise BundleError(f"{self.where}: {member} changed while the bundle was read")
                    with os.fdopen(fd, "rb", closefd=False) as fh:
                        data = fh.read(size + 1)
                finally:
                    os.close(fd)
        except BundleError:
            raise
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
            raise BundleError(f"{self.where}: {member} cannot be read ({exc})") from None
        if len(data) != size:
            raise BundleError(f"{self.where}: {member} holds {len(data)} bytes, not the {size} its entry declares")
        return data


def _load_json(where: str, data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{where}: {META_FILE} is not valid JSON ({str(exc)[:200]})") from None


def _verified(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(meta, files)`` of a bundle after the link, size, listing, pickle, version and sha256 checks.

    bundle.json is read first (at most `MAX_META_BYTES`); a file it does not list is refused before anything
    else is read, so nothing unlisted is ever inflated."""
    where = str(path)
    reader = _Reader(path)
    try:
        if META_FILE not in reader.sizes:
            raise BundleError(f"{where}: no {META_FILE} (is this a medsuite bundle?)")
        meta = _load_json(where, reader.read(META_FILE))
        if not isinstance(meta, dict):
            raise BundleError(f"{where}: {META_FILE} must hold a JSON object")
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleError(f"{where}: {META_FILE} has no integer format_version (got {version!r})")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{where}: bundle format_version {version} is newer than this medsuite supports "
                f"(format_version {FORMAT_VERSION}); upgrade medsuite to load it"
            )
        if version < 1:
            raise BundleError(
                f"{where}: bundle format_version {version} is not supported (this medsuite reads {FORMAT_VERSION})"
            )
        missing = [k for k in ("arch", "arch_kwargs", "labels", "task", "files") if k not in meta]
        if missing:
            raise BundleError(f"{where}: {META_FILE} lacks required key(s) {missing}")
        listed = meta["files"]
        if not isinstance(listed, dict) or MODEL_FILE not in listed or len(listed) > MAX_FILES:
            raise BundleError(f"{where}: {META_FILE} 'files' must list {MODEL_FILE} with its sha256 "
                              f"(and at most {MAX_FILES} files)")
        for member in [*listed, *reader.sizes]:
            _check_member(member, where)
            reason = _pickle_reason(member, None)  # by name only: nothing is read yet
            if reason:
                raise BundleError(
                    f"{where}: refusing to load: {reason}. Bundles never unpickle; re-export with safetensors")
        unlisted = sorted(set(reader.sizes) - set(listed) - {META_FILE})
        if unlisted:
            raise BundleError(f"{where}: file(s) {unlisted[:5]} are not listed in {META_FILE} (added after export?); "
                              "refused without reading them")
        for member in sorted(listed):
            if member not in reader.sizes:
                raise BundleError(f"{where}: {member} is listed in {META_FILE} but missing from the bundle")
            _check_size(where, member, reader.sizes[member])
        files: dict[str, bytes] = {}
        for member, expected in sorted(listed.items()):
            data = reader.read(member)
            reason = _pickle_reason(member, data)
            if reason:
                raise BundleError(
                    f"{where}: refusing to load: {reason}. Bundles never unpickle; re-export with safetensors")
            actual = _sha256(data)
            if actual != expected:
                raise BundleError(
                    f"{where}: {member} has been modified or corrupted (sha256 {actual[:12]}... "
                    f"does not match {str(expected)[:12]}... recorded in {META_FILE})"
                )
            files[member] = data
    finally:
        reader.close()
    return meta, files


def _safetensors_header(where: str, data: bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` from a safetensors file's header, checked against the file's length,
    without creating a tensor."""
    if len(data) < 8:
        raise BundleError(f"{where}: {MODEL_FILE} is too short to be safetensors")
    n = int.from_bytes(data[:8], "little")
    if n > min(len(data) - 8, MAX_META_BYTES):
        raise BundleError(f"{where}: {MODEL_FILE} has a header of {n:,} bytes; it cannot be safetensors")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{where}: {MODEL_FILE} has no readable safetensors header ({str(exc)[:200]})") from None
    if not isinstance(header, dict):
        raise BundleError(f"{where}: {MODEL_FILE} has no readable safetensors header")
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    payload = len(data) - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = str(entry["dtype"]), tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            if not (0 <= int(lo) <= int(hi) <= payload) or any(d < 0 for d in shape):
                raise ValueError("offsets outside the file")
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: {MODEL_FILE}: tensor {name!r} has a bad header entry ({exc})") from None
        out[str(name)] = (dtype, shape)
    return out


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _check_arch_kwargs(where: str, kwargs: Any) -> dict[str, Any]:
    """Architecture arguments bounded before any module is built (`ARCH_LIMITS`, `MAX_ARCH_INT`)."""
    if not isinstance(kwargs, dict):
        raise BundleError(f"{where}: arch_kwargs must be a JSON object, got {type(kwargs).__name__}")
    for key, value in kwargs.items():
        if isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        if isinstance(value, int):
            limit = ARCH_LIMITS.get(key, MAX_ARCH_INT)
            if not 0 <= value <= limit:
                raise BundleError(f"{where}: arch_kwargs {key}={value} is outside 0..{limit}; refused before "
                                  "building the model")
        elif isinstance(value, float):
            if not math.isfinite(value) or abs(value) > MAX_ARCH_INT:
                raise BundleError(f"{where}: arch_kwargs {key}={value} is not a usable number")
        else:
            raise BundleError(f"{where}: arch_kwargs {key} must be a number, string or boolean, "
                              f"got {type(value).__name__}")
    return kwargs


def _check_meta(where: str, meta: dict[str, Any]) -> None:
    """The plain fields of bundle.json: task, architecture name, labels, threshold."""
    from medsuite.learn.models import ARCHITECTURES

    if meta["task"] not in TASKS:
        raise BundleError(f"{where}: task must be one of {TASKS}, got {meta['task']!r}")
    if not isinstance(meta["arch"], str) or meta["arch"] not in ARCHITECTURES:
        raise BundleError(f"{where}: unknown architecture {meta['arch']!r}; known: {sorted(ARCHITECTURES)}")
    labels = meta["labels"]
    if (not isinstance(labels, list) or not 2 <= len(labels) <= MAX_LABELS
            or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in labels) or len(set(labels)) != len(labels)):
        raise BundleError(f"{where}: labels must be 2 to {MAX_LABELS} distinct names, got "
                          f"{str(labels)[:200]}")
    threshold = meta.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                  or not 0.0 <= float(threshold) <= 1.0):
        raise BundleError(f"{where}: threshold must be a number in [0, 1] or null, got {threshold!r}")
    _check_arch_kwargs(where, meta["arch_kwargs"])


def _check_block(where: str, block: Any) -> tuple[int, ...] | None:
    """The input block's sample shape, bounded (`MAX_SAMPLE_VALUES`, `MAX_SAMPLE_DIM`); None if unknown."""
    try:
        shape = tuple(int(d) for d in block.output_shape)
    except AttributeError:
        return None
    except (TypeError, ValueError, OverflowError) as exc:
        raise BundleError(f"{where}: the input block has no usable output shape ({exc})") from None
    if any(d < 1 or d > MAX_SAMPLE_DIM for d in shape) or math.prod(shape) > MAX_SAMPLE_VALUES:
        raise BundleError(f"{where}: block_spec gives samples of shape {shape}; at most {MAX_SAMPLE_VALUES:,} "
                          f"values and {MAX_SAMPLE_DIM} per dimension are allowed (refused before sampling)")
    return shape


def _check_predictor(where: str, meta: dict[str, Any], sample_shape: tuple[int, ...] | None) -> None:
    """The predictor section parsed at load (not first when scoring), and its test-time flips checked
    against the axes a sample has (a flip of axis -99 would fail on every series)."""
    from medsuite.learn.predict import PredictorError, PredictorSettings

    try:
        settings = PredictorSettings.from_bundle_meta(meta)
    except PredictorError as exc:
        raise BundleError(f"{where}: bundle.json {exc}") from None
    if sample_shape is not None:
        for flip in settings.tta:
            if any(axis < -len(sample_shape) for axis in flip):
                raise BundleError(f"{where}: predictor.tta flip {list(flip)} names an axis a sample does not have "
                                  f"(samples have {len(sample_shape)} axes, shape {sample_shape})")


def _meta_model(where: str, meta: dict[str, Any]) -> nn.Module:
    """The architecture built on the ``meta`` device: shapes only, no memory, no random init."""
    import torch

    from medsuite.learn.models import build_model

    try:
        with torch.device("meta"):
            return build_model(meta["arch"], **meta["arch_kwargs"])
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError, IndexError, NotImplementedError) as exc:
        raise BundleError(f"{where}: cannot rebuild the model: {exc}") from None


def _check_model(where: str, meta: dict[str, Any], model: nn.Module, header: dict[str, tuple[str, tuple[int, ...]]],
                 sample_shape: tuple[int, ...] | None) -> None:
    """Weights file, labels and input block agree with the (meta-device) model, before any allocation."""
    import torch

    expected = {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in model.state_dict().items()}
    if set(expected) != set(header):
        extra, missing = sorted(set(header) - set(expected)), sorted(set(expected) - set(header))
        raise BundleError(f"{where}: {MODEL_FILE} does not fit architecture {meta['arch']!r} "
                          f"({len(missing)} missing tensor(s), e.g. {missing[:3]}; {len(extra)} unexpected, e.g. {extra[:3]})")
    for key, (dtype, shape) in expected.items():
        got_dtype, got_shape = header[key]
        if got_shape != shape or _SAFETENSORS_DTYPES.get(got_dtype) != dtype:
            raise BundleError(f"{where}: {MODEL_FILE} does not fit architecture {meta['arch']!r} with "
                              f"{meta['arch_kwargs']}: {key} is {_SAFETENSORS_DTYPES.get(got_dtype, got_dtype)} "
                              f"{list(got_shape)}, the architecture needs {dtype} {list(shape)} (refused before "
                              "allocating the model)")
    n_labels = len(meta["labels"])
    n_classes = getattr(model, "n_classes", None)
    if n_classes is not None and int(n_classes) != n_labels:
        raise BundleError(f"{where}: the model has {n_classes} outputs but the bundle lists {n_labels} labels "
                          f"{meta['labels']}")
    if sample_shape is None:
        return
    try:
        with torch.no_grad():
            out = model.eval()(torch.empty((1, *sample_shape), device="meta"))
    except NotImplementedError:  # an operation without a meta kernel: the shapes are checked at inference
        return
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise BundleError(f"{where}: the model cannot take the samples its block_spec makes (shape "
                          f"{list(sample_shape)}): {str(exc)[:300]}") from None
    if tuple(out.shape) != (1, n_labels):
        raise BundleError(f"{where}: the model gives outputs of shape {list(out.shape)[1:]} for {n_labels} labels")


def _state_dict(path: Path, files: Mapping[str, bytes]) -> dict[str, Any]:
    from safetensors.torch import load as load_safetensors

    try:
        return load_safetensors(files[MODEL_FILE])
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"{path}: {MODEL_FILE} cannot be read as safetensors ({exc})") from None


@dataclass(frozen=True, eq=False)
class Bundle:
    """A loaded bundle: the model (eval mode, on the requested device), its input block and metadata."""

    path: Path
    model: nn.Module
    meta: dict[str, Any]
    block: Any
    extra: Mapping[str, bytes] = field(repr=False)
    sha256: str

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def task(self) -> str:
        return str(self.meta["task"])

    @property
    def labels(self) -> list[str]:
        return list(self.meta["labels"])

    @property
    def threshold(self) -> float | None:
        return self.meta.get("threshold")

    @property
    def block_spec(self) -> dict[str, Any]:
        return dict(self.meta.get("block_spec") or {})

    def read_extra(self, name: str) -> bytes | None:
        """An extra file's bytes (e.g. ``index/cases.json``), or None when the bundle has no such file."""
        return self.extra.get(name)


def _default_block_factory(spec: Mapping[str, Any]) -> Any:
    from medsuite.data.blocks import block_from_spec

    return block_from_spec(spec)


def load_bundle(
    path: str | Path,
    device: str = "cpu",
    *,
    block_factory: Callable[[Mapping[str, Any]], Any] | None = None,
    expected_sha256: str | None = None,
) -> Bundle:
    """Load and verify a bundle folder or zip; the model is rebuilt on ``device`` in eval mode.

    ``expected_sha256``: the bundle's `Bundle.sha256` as published by whoever trained it (obtained over a
    channel you trust); any other bundle is refused. The listed hashes alone prove integrity (nothing was
    changed *after* bundle.json was written), not origin: anyone can write a new bundle.json.

    ``block_factory`` rebuilds the input block from ``block_spec`` (default
    `medsuite.data.blocks.block_from_spec`). Every check runs before memory is allocated for the model:
    no links or special files, sizes within the limits (docs/bundles.md), only listed files read, sha256 of
    each, no pickle, a known format version, bounded architecture arguments and sample shape, weights that
    fit the architecture, as many labels as the model has outputs, a model that takes the block's samples.
    Any failure is a `BundleError` naming the bundle and the reason.
    """
    import torch

    path = Path(path)
    where = str(path)
    meta, files = _verified(path)
    if expected_sha256 is not None and _sha256(_canonical(meta)) != str(expected_sha256).lower():
        raise BundleError(f"{where}: bundle sha256 {_sha256(_canonical(meta))[:16]}… is not the expected "
                          f"{str(expected_sha256)[:16]}…: not the bundle you pinned")
    _check_meta(where, meta)
    spec = meta.get("block_spec")
    try:
        block = (block_factory or _default_block_factory)(spec)
    except Exception as exc:  # a user's factory may raise anything: it is this bundle's block_spec at fault
        raise BundleError(f"{where}: cannot rebuild the input block from block_spec: {str(exc)[:300]}") from None
    sample_shape = _check_block(where, block)
    _check_predictor(where, meta, sample_shape)
    model = _meta_model(where, meta)
    _check_model(where, meta, model, _safetensors_header(where, files[MODEL_FILE]), sample_shape)
    state = _state_dict(path, files)  # allocates what the weights file holds, nothing more
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise BundleError(f"{where}: {MODEL_FILE} does not fit architecture {meta['arch']!r}: {exc}") from None
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise BundleError(f"{where}: {MODEL_FILE} leaves {len(left)} tensor(s) of the model unset, e.g. {left[:3]}")
    try:
        model.to(torch.device(device)).eval()
    except (RuntimeError, ValueError) as exc:
        raise BundleError(f"{where}: cannot move the model to {device!r}: {exc}") from None
    extra = {k: v for k, v in files.items() if k != MODEL_FILE}
    return Bundle(
        path=path, model=model, meta=meta, block=block, extra=extra, sha256=_sha256(_canonical(meta))
    )


# ------------------------------------------------------------------------------ transfer learning
@dataclass(frozen=True)
class InitReport:
    """What `init_from_bundle` did: parameters copied, model parameters left as they were (with why),
    and bundle parameters the model has no place for."""

    loaded: list[str]
    skipped: dict[str, str]
    unused: list[str]


def init_from_bundle(model: nn.Module, bundle_path: str | Path, strict: bool = False) -> InitReport:
    """Copy every weight of a (verified) bundle whose name and shape match ``model``'s, e.g. to fine-tune
    a nodule model into a new task with a different head. ``strict=True`` requires a complete match."""
    import torch

    path = Path(bundle_path)
    _, files = _verified(path)
    source = _state_dict(path, files)
    target = model.state_dict()
    loaded, skipped = [], {}
    for key, tensor in target.items():
        if key not in source:
            skipped[key] = "not in bundle"
        elif tuple(source[key].shape) != tuple(tensor.shape):
            skipped[key] = f"shape {tuple(source[key].shape)} in bundle vs {tuple(tensor.shape)} in model"
        else:
            loaded.append(key)
    unused = sorted(set(source) - set(target))
    report = InitReport(loaded=loaded, skipped=skipped, unused=unused)
    if strict and (skipped or unused):
        raise BundleError(
            f"{path}: strict init failed: {len(skipped)} model parameter(s) not loaded "
            f"(e.g. {dict(list(skipped.items())[:3])}) and {len(unused)} bundle parameter(s) unused"
        )
    with torch.no_grad():
        model.load_state_dict({k: source[k] for k in loaded}, strict=False)
    log.info(
        "init_from_bundle %s: %d loaded, %d skipped, %d unused", path, len(loaded), len(skipped), len(unused)
    )
    return report


# --------------------------------------------------------------------------------- data fingerprint
def data_fingerprint(
    table: pd.DataFrame, id_columns: list[str] | None = None, label_column: str = "label"
) -> str:
    """sha256 over the sorted (ids, label) rows of a training table: which items, with which labels.

    ``id_columns`` default: ``series_uid`` plus ``nodule_id`` (or, without it, the nodule's world
    position ``x_mm, y_mm, z_mm``) when present. The hash does not depend on row order.
    """
    if id_columns is None:
        cols = set(table.columns)
        extra = ["nodule_id"] if "nodule_id" in cols else [c for c in ("x_mm", "y_mm", "z_mm") if c in cols]
        id_columns = [c for c in ("series_uid", *extra) if c in cols]
    if not id_columns:
        raise ValueError(
            "data_fingerprint: the table has no 'series_uid' or 'nodule_id' column; pass id_columns"
        )
    missing = [c for c in [*id_columns, label_column] if c not in table.columns]
    if missing:
        raise ValueError(f"data_fingerprint: table lacks column(s) {missing}; it has {list(table.columns)}")
    rows = sorted(
        json.dumps([str(v) for v in row])
        for row in table[[*id_columns, label_column]].itertuples(index=False)
    )
    digest = hashlib.sha256()
    digest.update(json.dumps([*id_columns, label_column]).encode())
    for row in rows:
        digest.update(row.encode() + b"\n")
    return digest.hexdigest()
