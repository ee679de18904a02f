"""Atomic training checkpoints in safetensors + JSON (no pickle), with everything needed to resume.

One checkpoint is one ``.safetensors`` file: tensors for the model, the optimiser state and the RNG
states; the non-tensor parts (optimiser hyper-parameters, scaler, python/numpy RNG, loop position,
recorder history, callback states) as JSON in the file's metadata under the key ``medsuite``. Files are
written under a temporary name and moved into place with `os.replace` (`medsuite.io.atomic`), so a run
killed at any moment leaves either the previous checkpoint or the new one, never a torn file, and the
temporary it may leave is removed by the next save.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = [
    "FORMAT",
    "Checkpoint",
    "capture_rng",
    "load_checkpoint",
    "load_weights",
    "restore_rng",
    "save_checkpoint",
    "save_weights",
]

FORMAT = "medsuite-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``tensors`` by flat key and ``meta`` (the JSON part)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix/`` with the prefix removed."""
        cut = len(prefix) + 1
        return {k[cut:]: v for k, v in self.tensors.items() if k.startswith(prefix + "/")}


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    from medsuite.io.atomic import atomic_path

    path = Path(path)
    seen: set[tuple[int, int]] = set()
    clean: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.device.index or 0) if t.numel() else (id(t), -1)
        # safetensors refuses tensors sharing memory (tied weights, views): give duplicates their own copy.
        clean[k] = t.clone().contiguous() if key in seen else t.contiguous()
        seen.add(key)
    with atomic_path(path) as tmp:  # a killed save's temporary is removed by the next one
        save_file(clean, str(tmp), metadata=metadata)
    return path


def save_weights(path: str | Path, model: torch.nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Model weights only (``state_dict``), atomically."""
    return _atomic_save(dict(model.state_dict()), Path(path), {"medsuite": json.dumps(meta or {})})


def load_weights(path: str | Path, model: torch.nn.Module, strict: bool = True) -> dict[str, Any]:
    """Load weights written by `save_weights` (or a checkpoint's model part) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    ckpt = load_checkpoint(path)
    state = ckpt.section("model") if any(k.startswith("model/") for k in ckpt.tensors) else ckpt.tensors
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit this model: {e}") from e
    return ckpt.meta


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The python, numpy, torch CPU and CUDA generator states as (tensors, JSON)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    return tensors, meta


def restore_rng(ckpt: Checkpoint) -> None:
    """Put back the generator states captured by `capture_rng`."""
    rng = ckpt.meta.get("rng", {})
    if "rng/torch" in ckpt.tensors:
        torch.set_rng_state(ckpt.tensors["rng/torch"].to(torch.uint8))
    cuda = [ckpt.tensors[k] for k in sorted(ckpt.tensors) if k.startswith("rng/cuda/")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda])
    if "numpy" in rng and "rng/numpy" in ckpt.tensors:
        n = rng["numpy"]
        keys = ckpt.tensors["rng/numpy"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    if "python" in rng:
        p = rng["python"]
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _json_safe(value: Any, where: str) -> Any:
    try:
        json.dumps(value)
    except TypeError as e:
        raise TypeError(f"checkpoint: {where} is not JSON-serialisable ({e})") from e
    return value


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt/{idx}/{key}"] = value
            else:
                extra.setdefault(str(idx), {})[key] = _json_safe(value, f"optimizer state {idx}.{key}")
    groups = [_json_safe(dict(g), "optimizer param_groups") for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state_extra": extra}


def _unflatten_optimizer(ckpt: Checkpoint) -> dict[str, Any]:
    meta = ckpt.meta["optimizer"]
    state: dict[int, dict[str, Any]] = {}
    for key, value in ckpt.section("opt").items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["state_extra"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer | None,
                    scaler: Any | None, state: dict[str, Any],
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model + optimiser + scaler + RNG states + ``state`` (JSON-able loop state) atomically;
    ``extra_tensors`` are stored under ``extra/<key>`` (read back with ``ckpt.section("extra")``)."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"extra/{k}": v for k, v in (extra_tensors or {}).items()})
    meta: dict[str, Any] = {"format": FORMAT, "state": _json_safe(state, "loop state")}
    if opt is not None:
        opt_tensors, meta["optimizer"] = _flatten_optimizer(opt)
        tensors.update(opt_tensors)
    if scaler is not None:
        meta["scaler"] = _json_safe(scaler.state_dict(), "GradScaler state")
    rng_tensors, meta["rng"] = capture_rng()
    tensors.update(rng_tensors)
    return _atomic_save(tensors, Path(path), {"medsuite": json.dumps(meta)})


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint (or weights) file; a missing, truncated or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get("medsuite", "{}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: checkpoint metadata is not valid JSON ({e})") from e
    fmt = meta.get("format")
    if fmt is not None and fmt != FORMAT:
        raise ValueError(f"{path}: checkpoint format {fmt!r} is not supported (expected {FORMAT!r})")
    return Checkpoint(tensors=tensors, meta=meta)


def restore_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, opt: torch.optim.Optimizer | None,
                       scaler: Any | None, path: str | Path = "checkpoint") -> dict[str, Any]:
    """Load model/optimiser/scaler/RNG from ``ckpt``; returns its loop ``state``."""
    try:
        model.load_state_dict(ckpt.section("model"))
    except RuntimeError as e:
        raise ValueError(f"{path}: model weights do not fit this model: {e}") from e
    if opt is not None and "optimizer" in ckpt.meta:
        try:
            opt.load_state_dict(_unflatten_optimizer(ckpt))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: optimizer state does not fit this optimizer: {e}") from e
    if scaler is not None and "scaler" in ckpt.meta:
        scaler.load_state_dict(ckpt.meta["scaler"])
    restore_rng(ckpt)
    return ckpt.meta.get("state", {})
