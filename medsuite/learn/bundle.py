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
import shutil
import uuid
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
    "train_config", "data_fingerprint", "created_at", "versions", "files",
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
    overwrite: bool = True,
) -> Path:
    """Write a bundle to ``path`` (a folder, or one zip when it ends in ``.zip``) and return the path.

    ``arch``/``arch_kwargs`` must rebuild ``model`` exactly (checked here, so a bundle that cannot be
    loaded is never written). ``threshold`` is the binary operating point (None for multi-class);
    ``extra_files`` maps relative names (e.g. ``index/cases.json``) to bytes; ``extra_meta`` adds
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
        **extra,
    }
    files[META_FILE] = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False).encode() + b"\n"
    _write_atomic(path, files, overwrite)
    log.info("exported bundle %s (%s, %d files)", path, arch, len(files))
    return path


def _write_atomic(path: Path, files: Mapping[str, bytes], overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise BundleError(f"{path}: already exists (pass overwrite=True to replace it)")
    is_zip = path.suffix.lower() == ".zip"
    if path.exists() and path.is_dir() == is_zip:
        kind = "folder" if path.is_dir() else "file"
        raise BundleError(f"{path}: a {kind} is in the way of this {'zip' if is_zip else 'folder'} bundle")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if is_zip:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for member, data in files.items():
                    zf.writestr(member, data)
            os.replace(tmp, path)  # atomic for files, replacing any old bundle
            return
        for member, data in files.items():
            target = tmp / member
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        if path.exists():  # folders cannot be replaced in one rename: move the old one aside first
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


# ------------------------------------------------------------------------------------------- read
def _read_files(path: Path) -> dict[str, bytes]:
    """Every file of a bundle folder or zip, by relative POSIX name."""
    where = str(path)
    if not path.exists():
        raise BundleError(f"{where}: bundle not found")
    out: dict[str, bytes] = {}
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            if f.is_file():
                out[f.relative_to(path).as_posix()] = f.read_bytes()
        return out
    if not zipfile.is_zipfile(path):
        raise BundleError(f"{where}: not a bundle (neither a folder nor a .zip file)")
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            out[_check_member(info.filename, where)] = zf.read(info)
    return out


def _verified(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(meta, files)`` of a bundle after the pickle, version and sha256 checks."""
    where = str(path)
    files = _read_files(path)
    for member in files:
        reason = _pickle_reason(member, files[member])
        if reason:
            raise BundleError(
                f"{where}: refusing to load: {reason}. Bundles never unpickle; re-export with safetensors"
            )
    if META_FILE not in files:
        raise BundleError(f"{where}: no {META_FILE} (is this a medsuite bundle?)")
    try:
        meta = json.loads(files.pop(META_FILE))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{where}: {META_FILE} is not valid JSON ({exc})") from None
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
    if not isinstance(listed, dict) or MODEL_FILE not in listed:
        raise BundleError(f"{where}: {META_FILE} 'files' must list {MODEL_FILE} with its sha256")
    for member, expected in sorted(listed.items()):
        _check_member(member, where)
        if member not in files:
            raise BundleError(f"{where}: {member} is listed in {META_FILE} but missing from the bundle")
        actual = _sha256(files[member])
        if actual != expected:
            raise BundleError(
                f"{where}: {member} has been modified or corrupted (sha256 {actual[:12]}... "
                f"does not match {str(expected)[:12]}... recorded in {META_FILE})"
            )
    unlisted = sorted(set(files) - set(listed))
    if unlisted:
        raise BundleError(f"{where}: file(s) {unlisted} are not listed in {META_FILE} (added after export?)")
    return meta, files


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
) -> Bundle:
    """Load and verify a bundle folder or zip; the model is rebuilt on ``device`` in eval mode.

    ``block_factory`` rebuilds the input block from ``block_spec`` (default
    `medsuite.data.blocks.block_from_spec`). Raises `BundleError` for a missing, tampered, pickled or
    newer-format bundle, or one whose weights do not fit its architecture.
    """
    import torch

    from medsuite.learn.models import build_model

    path = Path(path)
    meta, files = _verified(path)
    if meta["task"] not in TASKS:
        raise BundleError(f"{path}: task must be one of {TASKS}, got {meta['task']!r}")
    try:
        model = build_model(meta["arch"], **meta["arch_kwargs"])
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path}: cannot rebuild the model: {exc}") from None
    try:
        model.load_state_dict(_state_dict(path, files), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path}: {MODEL_FILE} does not fit architecture {meta['arch']!r}: {exc}") from None
    model.to(torch.device(device)).eval()
    spec = meta.get("block_spec")
    try:
        block = (block_factory or _default_block_factory)(spec)
    except (ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{path}: cannot rebuild the input block from block_spec: {exc}") from None
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
