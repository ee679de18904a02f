"""The predictor: the one way medsuite turns model inputs into probabilities, scores and labels.

A `Predictor` holds a model and its `PredictorSettings` and runs one chain, always the same:

    samples -> model (device, precision) -> test-time augmentation (mean softmax over flips)
            -> late fusion with table covariates, e.g. the nodule's diameter (binary, optional)
            -> calibration (temperature scaling or isotonic, optional) -> probabilities
            -> threshold on P(positive) (binary) or arg-max (multi-class) -> labels

The settings travel in ``bundle.json`` under ``"predictor"`` (`PredictorSettings.to_json`), so export,
evaluation, reports, both scoring engines, explanations, the similar-case index and the viewer all score
exactly alike. `Predictor.module` is the same chain as a differentiable ``nn.Module`` (returning the log
of the calibrated probabilities) for Captum, so explanations explain what is scored.

The positive class is given once, by name (``positive``); its index is ``labels.index(positive)``.
Metrics of a binary problem are computed on `Predictor.positive_score` against ``target == positive_index``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FLIPS",
    "NO_TTA",
    "PRECISIONS",
    "THRESHOLD_RULES",
    "Calibration",
    "Fusion",
    "OperatingPoint",
    "Predictor",
    "PredictorError",
    "PredictorModule",
    "PredictorSettings",
    "check_threshold_rule",
    "choose_threshold",
    "fit_calibration",
    "fit_fusion",
]

SETTINGS_VERSION = 1
NO_TTA: tuple[tuple[int, ...], ...] = ((),)
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))  # identity and the in-plane flips
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
CALIBRATIONS = ("temperature", "isotonic")
COVARIATE_TRANSFORMS = ("log", "identity")
_LOG_FLOOR = 0.5  # log transform: values below (sizes under half a millimetre, missing as 0) count as this
THRESHOLD_RULES = ("youden", "sensitivity>=X", "specificity>=X", "fixed:X")
_TINY = 1e-30  # log() of a probability that underflowed to 0


class PredictorError(ValueError):
    """Invalid predictor settings (the message names the key and the reason) or an impossible request."""


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Calibration:
    """A fitted calibration map applied to the TTA probabilities.

    ``temperature``: ``p' = softmax(log(p) / T)`` (any number of classes). ``isotonic`` (binary only):
    ``P'(positive) = interp(P(positive), x, y)`` with scikit-learn's ``IsotonicRegression`` thresholds,
    clipped outside them. ``fitted_on`` says on what (split, n) and what it changed (NLL, ECE).
    """

    method: str
    temperature: float | None = None
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    fitted_on: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in CALIBRATIONS:
            raise PredictorError(f"predictor.calibration.method: {self.method!r} is not one of {list(CALIBRATIONS)}")
        if self.method == "temperature":
            t = self.temperature
            if t is None or not math.isfinite(t) or t <= 0:
                raise PredictorError(f"predictor.calibration.temperature: must be a positive number, got {t!r}")
        else:
            if len(self.x) < 1 or len(self.x) != len(self.y):
                raise PredictorError(f"predictor.calibration: isotonic needs equally long x and y (got {len(self.x)} "
                                     f"and {len(self.y)} values)")
            xs, ys = np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)
            if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))) or np.any(np.diff(xs) < 0) or np.any(np.diff(ys) < 0):
                raise PredictorError("predictor.calibration: isotonic x and y must be finite and non-decreasing")
            if ys.min() < 0 or ys.max() > 1:
                raise PredictorError("predictor.calibration: isotonic y values must lie in [0, 1]")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "fitted_on": dict(self.fitted_on)}
        if self.method == "temperature":
            out["temperature"] = float(self.temperature)  # type: ignore[arg-type]
        else:
            out["x"], out["y"] = [float(v) for v in self.x], [float(v) for v in self.y]
        return out

    @classmethod
    def from_json(cls, d: Any) -> Calibration | None:
        if d is None:
            return None
        if not isinstance(d, Mapping) or "method" not in d:
            raise PredictorError(f"predictor.calibration: expected null or an object with a 'method', got {d!r}")
        try:
            return cls(method=str(d["method"]), temperature=None if d.get("temperature") is None else float(d["temperature"]),
                       x=tuple(float(v) for v in d.get("x", ())), y=tuple(float(v) for v in d.get("y", ())),
                       fitted_on=dict(d.get("fitted_on") or {}))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PredictorError):
                raise
            raise PredictorError(f"predictor.calibration: {exc}") from None


@dataclass(frozen=True)
class Fusion:
    """Late fusion of the image's P(positive) with covariates of the item's table row (binary problems).

    ``z = image_weight * logit(P_image) + sum_k weights[k] * t_k(row[covariates[k]]) + bias``, ``P = sigmoid(z)``,
    where ``t_k`` is ``log`` (sizes; values below 0.5, and 0, count as 0.5) or ``identity``. Fitted by logistic
    regression on the validation split (`fit_fusion`); ``fitted_on`` records n and the validation AUC of the
    image alone and fused. A predictor with a fusion needs the covariates with every sample."""

    covariates: tuple[str, ...]
    transforms: tuple[str, ...]
    image_weight: float
    weights: tuple[float, ...]
    bias: float
    fitted_on: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        covs, tfs = tuple(str(c) for c in self.covariates), tuple(str(t) for t in self.transforms)
        object.__setattr__(self, "covariates", covs)
        object.__setattr__(self, "transforms", tfs)
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not covs or len(set(covs)) != len(covs):
            raise PredictorError(f"predictor.fusion.covariates: need distinct column names, got {list(covs)}")
        if len(tfs) != len(covs) or any(t not in COVARIATE_TRANSFORMS for t in tfs):
            raise PredictorError(f"predictor.fusion.transforms: one of {list(COVARIATE_TRANSFORMS)} per covariate, got {list(tfs)}")
        if len(self.weights) != len(covs):
            raise PredictorError(f"predictor.fusion.weights: one per covariate ({len(covs)}), got {len(self.weights)}")
        if not all(math.isfinite(v) for v in (*self.weights, float(self.image_weight), float(self.bias))):
            raise PredictorError("predictor.fusion: weights and bias must be finite numbers")

    def design(self, covariates: Any, n: int) -> np.ndarray:
        """The transformed covariates ``(n, k)`` float64 from a mapping / DataFrame of columns (each n values)."""
        cols = []
        for name, tf in zip(self.covariates, self.transforms, strict=True):
            try:
                values = covariates[name]
            except (KeyError, IndexError, TypeError):
                raise PredictorError(f"this predictor fuses the image with {name!r} from the item's table row; "
                                     f"give it (covariates={{{name!r}: ...}}, one value per sample)") from None
            v = np.asarray(values, dtype=np.float64).reshape(-1)
            if v.shape[0] != n:
                raise PredictorError(f"covariate {name!r}: {v.shape[0]} values for {n} samples")
            if tf == "log":
                bad = ~np.isfinite(v) | (v < 0)
                if bad.any():
                    raise PredictorError(f"covariate {name!r}: {int(bad.sum())} missing or negative value(s) "
                                         f"(e.g. {v[bad][0]!r}); a size must be given for every item")
                v = np.log(np.maximum(v, _LOG_FLOOR))
            elif not np.all(np.isfinite(v)):
                raise PredictorError(f"covariate {name!r}: missing values")
            cols.append(v)
        return np.stack(cols, axis=1)

    def apply(self, image: torch.Tensor, design: torch.Tensor, positive_index: int) -> torch.Tensor:
        """Fused probabilities (B, 2) from image probabilities (B, 2) and the design (B, k); differentiable."""
        p = image[:, positive_index].clamp(1e-7, 1 - 1e-7)
        w = torch.as_tensor(self.weights, dtype=image.dtype, device=image.device)
        z = float(self.image_weight) * torch.log(p / (1 - p)) + design.to(image.dtype) @ w + float(self.bias)
        q = torch.sigmoid(z)
        return torch.stack([q if k == positive_index else 1 - q for k in range(image.shape[1])], dim=1)

    def describe(self) -> str:
        parts = [f"{w:+.3g} x {t}({c})" for c, t, w in zip(self.covariates, self.transforms, self.weights, strict=True)]
        return f"logit P = {self.image_weight:.3g} x logit P(image) {' '.join(parts)} {self.bias:+.3g}"

    def to_json(self) -> dict[str, Any]:
        return {"covariates": list(self.covariates), "transforms": list(self.transforms),
                "image_weight": float(self.image_weight), "weights": list(self.weights), "bias": float(self.bias),
                "fitted_on": dict(self.fitted_on)}

    @classmethod
    def from_json(cls, d: Any) -> Fusion | None:
        if d is None:
            return None
        if not isinstance(d, Mapping):
            raise PredictorError(f"predictor.fusion: expected null or an object, got {d!r}")
        try:
            return cls(tuple(d["covariates"]), tuple(d["transforms"]), float(d["image_weight"]), tuple(d["weights"]),
                       float(d["bias"]), dict(d.get("fitted_on") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PredictorError):
                raise
            raise PredictorError(f"predictor.fusion: {exc!r}") from None


def fit_fusion(image_probs: Any, targets: Any, covariates: Any, names: Sequence[str], *, positive_index: int,
               transforms: Sequence[str] | None = None, split: str = "valid") -> Fusion:
    """Logistic regression of the positive class on ``logit(P_image(positive))`` and the transformed covariates
    (``log`` by default: sizes), on the validation split's TTA image probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    p = np.asarray(image_probs, dtype=np.float64)
    y = (np.asarray(targets).reshape(-1) == positive_index).astype(int)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) != len(y):
        raise PredictorError(f"fit_fusion: needs binary probabilities (n, 2) and n targets; got {p.shape}, {y.shape}")
    if y.min() == y.max():
        raise PredictorError(f"fusion needs both classes on the {split} split")
    draft = Fusion(tuple(names), tuple(transforms or ["log"] * len(names)), 1.0, (0.0,) * len(names), 0.0)
    design = draft.design(covariates, len(y))
    q = np.clip(p[:, positive_index], 1e-7, 1 - 1e-7)
    x = np.column_stack([np.log(q / (1 - q)), design])
    lr = LogisticRegression(C=10.0, max_iter=1000).fit(x, y)
    fused = lr.predict_proba(x)[:, 1]
    fitted = {"split": split, "n": int(len(y)), "auc_image": float(roc_auc_score(y, q)), "auc_fused": float(roc_auc_score(y, fused))}
    return Fusion(draft.covariates, draft.transforms, float(lr.coef_[0, 0]), tuple(float(w) for w in lr.coef_[0, 1:]),
                  float(lr.intercept_[0]), fitted)


@dataclass(frozen=True)
class OperatingPoint:
    """The binary decision threshold on P(positive), the rule that chose it and what it gave where chosen."""

    threshold: float
    rule: str = "fixed:0.5"
    sensitivity: float | None = None
    specificity: float | None = None
    split: str | None = None
    n: int | None = None
    n_positive: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, float | int) and 0.0 <= float(self.threshold) <= 1.0):
            raise PredictorError(f"predictor.threshold.value: must lie in [0, 1], got {self.threshold!r}")
        _parse_rule(self.rule)

    def to_json(self) -> dict[str, Any]:
        return {"value": float(self.threshold), "rule": self.rule, "sensitivity": self.sensitivity,
                "specificity": self.specificity, "split": self.split, "n": self.n, "n_positive": self.n_positive}

    @classmethod
    def from_json(cls, d: Any) -> OperatingPoint | None:
        if d is None:
            return None
        if not isinstance(d, Mapping) or "value" not in d:
            raise PredictorError(f"predictor.threshold: expected null or an object with a 'value', got {d!r}")
        try:
            return cls(float(d["value"]), str(d.get("rule", "fixed")), _opt_float(d.get("sensitivity")),
                       _opt_float(d.get("specificity")), d.get("split"), _opt_int(d.get("n")), _opt_int(d.get("n_positive")))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PredictorError):
                raise
            raise PredictorError(f"predictor.threshold: {exc}") from None


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


@dataclass(frozen=True)
class PredictorSettings:
    """Everything besides the weights that decides a prediction (stored in bundle.json under "predictor").

    ``labels``: class names, index = the model's output column. ``positive``: the positive class's name
    (binary problems; None for multi-class). ``tta``: the flips averaged at test time, each a tuple of
    (negative) sample axes, ``((),)`` for none. ``calibration``: a `Calibration` or None.
    ``operating_point``: the binary threshold and how it was chosen (None: 0.5, or arg-max for multi-class).
    """

    labels: tuple[str, ...]
    positive: str | None = None
    tta: tuple[tuple[int, ...], ...] = NO_TTA
    calibration: Calibration | None = None
    operating_point: OperatingPoint | None = None
    fusion: Fusion | None = None

    def __post_init__(self) -> None:
        labels = tuple(str(v) for v in self.labels)
        object.__setattr__(self, "labels", labels)
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise PredictorError(f"predictor.labels: need at least two distinct class names, got {list(labels)}")
        if len(labels) == 2:
            if self.positive is None:
                raise PredictorError(f"predictor.positive: a binary problem needs its positive class, one of {list(labels)}")
            if str(self.positive) not in labels:
                raise PredictorError(f"predictor.positive: {self.positive!r} is not one of the labels {list(labels)}")
            object.__setattr__(self, "positive", str(self.positive))
        else:
            if self.positive is not None:
                raise PredictorError(f"predictor.positive: a {len(labels)}-class problem has no positive class "
                                     f"(got {self.positive!r}); decisions are the arg-max")
            if self.operating_point is not None:
                raise PredictorError("predictor.threshold: a threshold applies to binary problems only")
            if self.calibration is not None and self.calibration.method == "isotonic":
                raise PredictorError("predictor.calibration: isotonic calibration is for binary problems; "
                                     "use temperature scaling for more classes")
            if self.fusion is not None:
                raise PredictorError("predictor.fusion: late fusion with covariates is for binary problems")
        flips = _check_flips(self.tta)
        object.__setattr__(self, "tta", flips)

    @property
    def binary(self) -> bool:
        return len(self.labels) == 2

    @property
    def positive_index(self) -> int | None:
        return None if self.positive is None else self.labels.index(self.positive)

    @property
    def threshold(self) -> float | None:
        """The binary decision threshold (0.5 when none was chosen); None for multi-class (arg-max)."""
        if not self.binary:
            return None
        return 0.5 if self.operating_point is None else float(self.operating_point.threshold)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SETTINGS_VERSION,
            "labels": list(self.labels),
            "positive": self.positive,
            "positive_index": self.positive_index,
            "tta": None if self.tta == NO_TTA else {"flips": [list(f) for f in self.tta]},
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "threshold": None if self.operating_point is None else self.operating_point.to_json(),
            "fusion": None if self.fusion is None else self.fusion.to_json(),
        }

    @classmethod
    def from_json(cls, d: Any, labels: Sequence[str] | None = None) -> PredictorSettings:
        """Parse bundle.json's "predictor" section; ``labels`` (the bundle's) must agree with it."""
        if not isinstance(d, Mapping):
            raise PredictorError(f"predictor: expected an object, got {type(d).__name__}")
        version = d.get("version")
        if not isinstance(version, int) or version < 1:
            raise PredictorError(f"predictor.version: expected a positive integer, got {version!r}")
        if version > SETTINGS_VERSION:
            raise PredictorError(f"predictor.version {version} is newer than this medsuite reads ({SETTINGS_VERSION}); "
                                 "upgrade medsuite")
        names = [str(v) for v in (d.get("labels") if d.get("labels") is not None else (labels or []))]
        if labels is not None and names != [str(v) for v in labels]:
            raise PredictorError(f"predictor.labels {names} differ from the bundle's labels {list(labels)}")
        tta = d.get("tta")
        if tta is None:
            flips: Any = NO_TTA
        elif isinstance(tta, Mapping) and isinstance(tta.get("flips"), list):
            flips = tta["flips"]
        else:
            raise PredictorError(f"predictor.tta: expected null or {{'flips': [[...], ...]}}, got {tta!r}")
        settings = cls(tuple(names), d.get("positive"), flips, Calibration.from_json(d.get("calibration")),
                       OperatingPoint.from_json(d.get("threshold")), Fusion.from_json(d.get("fusion")))
        stored_index = d.get("positive_index")
        if stored_index is not None and stored_index != settings.positive_index:
            raise PredictorError(f"predictor.positive_index {stored_index!r} does not match positive {settings.positive!r} "
                                 f"(index {settings.positive_index} of {names})")
        return settings

    @classmethod
    def from_bundle_meta(cls, meta: Mapping[str, Any]) -> PredictorSettings:
        """The settings of a bundle: its "predictor" section, or (bundles written before it existed) plain
        settings from ``labels`` and ``threshold`` with the convention they were scored with then
        (binary positive class = the last label, no TTA, no calibration)."""
        labels = [str(v) for v in meta.get("labels") or []]
        if "predictor" in meta and meta["predictor"] is not None:
            return cls.from_json(meta["predictor"], labels)
        threshold = meta.get("threshold")
        op = None
        if len(labels) == 2 and threshold is not None:
            op = OperatingPoint(float(threshold), "unknown (bundle written without predictor settings)")
        return cls(tuple(labels), labels[-1] if len(labels) == 2 else None, NO_TTA, None, op)


def _check_flips(tta: Any) -> tuple[tuple[int, ...], ...]:
    try:
        flips = tuple(tuple(int(a) for a in f) for f in tta)
    except TypeError:
        raise PredictorError(f"predictor.tta.flips: expected a list of axis lists, got {tta!r}") from None
    if not flips:
        raise PredictorError("predictor.tta.flips: empty; use [[]] (or null) for no test-time augmentation")
    for i, f in enumerate(flips):
        if any(a >= 0 for a in f) or len(set(f)) != len(f):
            raise PredictorError(f"predictor.tta.flips[{i}]: {list(f)} must be distinct negative sample axes "
                                 "(-1 = the last, e.g. [-2, -1] flips both in-plane axes)")
    if len(set(flips)) != len(flips):
        raise PredictorError(f"predictor.tta.flips: {[list(f) for f in flips]} lists a flip twice")
    return flips


# ------------------------------------------------------------------------------- threshold choice
def _parse_rule(rule: str) -> tuple[str, float | None]:
    text = str(rule).strip()
    if text == "youden" or text.startswith("unknown"):
        return text, None
    for kind in ("sensitivity>=", "specificity>=", "fixed:"):
        if text.startswith(kind):
            try:
                value = float(text[len(kind):])
            except ValueError:
                break
            if not 0.0 <= value <= 1.0:
                raise PredictorError(f"threshold rule {rule!r}: {value} is not in [0, 1]")
            return kind, value
    raise PredictorError(f"threshold rule {rule!r}: choose one of {list(THRESHOLD_RULES)} (e.g. 'sensitivity>=0.9')")


def check_threshold_rule(rule: str) -> str:
    """``rule`` if it is a threshold rule `choose_threshold` knows (see `THRESHOLD_RULES`), else `PredictorError`."""
    _parse_rule(rule)
    return str(rule)


def choose_threshold(scores: Any, positive: Any, rule: str = "youden", *, split: str | None = "valid") -> OperatingPoint:
    """The operating point chosen by ``rule`` on ``scores`` (P(positive)) against ``positive`` (bool/0-1).

    ``youden``: maximise sensitivity + specificity - 1; ``sensitivity>=X``: the highest specificity that
    keeps sensitivity >= X; ``specificity>=X``: the highest sensitivity keeping specificity >= X;
    ``fixed:X``: X. Predictions are positive when ``score >= threshold``; the sensitivity and specificity
    it gives on these data are stored with it.
    """
    from sklearn.metrics import roc_curve

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(positive).astype(bool).ravel()
    if s.shape != y.shape or s.size == 0:
        raise PredictorError(f"choose_threshold: {s.size} scores for {y.size} targets")
    kind, value = _parse_rule(rule)
    n_pos = int(y.sum())
    if kind == "fixed:":
        t = float(value)  # type: ignore[arg-type]
    else:
        if n_pos == 0 or n_pos == y.size:
            raise PredictorError(f"threshold rule {rule!r} needs positive and negative items; got {n_pos} positive of {y.size}")
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
        finite = np.isfinite(thr)
        fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
        if kind == "youden":
            i = int(np.argmax(tpr - fpr))
        elif kind == "sensitivity>=":
            ok = np.flatnonzero(tpr >= value - 1e-12)
            i = int(ok[np.argmin(fpr[ok])]) if ok.size else int(np.argmax(tpr))
        else:
            ok = np.flatnonzero(1.0 - fpr >= value - 1e-12)
            i = int(ok[np.argmax(tpr[ok])]) if ok.size else int(np.argmin(fpr))
        t = float(np.clip(thr[i], 0.0, 1.0))
    pred = s >= t
    sens = float((pred & y).sum() / n_pos) if n_pos else None
    spec = float((~pred & ~y).sum() / (y.size - n_pos)) if y.size - n_pos else None
    rule_text = "youden" if kind == "youden" else f"{kind}{value:g}"
    return OperatingPoint(t, rule_text, sens, spec, split, int(y.size), n_pos)


# ----------------------------------------------------------------------------------- calibration
def _apply_calibration(raw: torch.Tensor, calibration: Calibration | None, positive_index: int | None) -> torch.Tensor:
    """Calibrated probabilities from TTA probabilities ``raw`` (B, C); differentiable; one implementation
    for scoring (CPU, float64) and for explanations (the model's device, float32)."""

    if calibration is None:
        return raw
    if calibration.method == "temperature":
        return torch.softmax(torch.log(raw.clamp_min(_TINY)) / float(calibration.temperature), dim=1)
    xs = torch.as_tensor(calibration.x, dtype=raw.dtype, device=raw.device)
    ys = torch.as_tensor(calibration.y, dtype=raw.dtype, device=raw.device)
    p = raw[:, positive_index]
    q = _interp(p, xs, ys)
    other = 1.0 - q
    cols = [q if k == positive_index else other for k in range(raw.shape[1])]
    return torch.stack(cols, dim=1)


def _interp(p: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``numpy.interp(p, xs, ys)`` in torch (clipped outside ``xs``), so gradients flow through it."""

    if xs.numel() == 1:
        return ys.expand_as(p).clone() + 0.0 * p
    pc = p.clamp(xs[0], xs[-1])
    i = torch.searchsorted(xs, pc.detach(), right=True).clamp(1, xs.numel() - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    span = x1 - x0
    w = torch.where(span > 0, (pc - x0) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(pc))
    out = y0 + w * (y1 - y0)
    return torch.where(pc >= xs[-1], ys[-1] + 0.0 * pc, out)


def fit_calibration(raw_probs: Any, targets: Any, method: str, *, positive_index: int | None = None,
                    split: str = "valid") -> Calibration:
    """Fit ``method`` ('temperature' or 'isotonic') on TTA probabilities ``raw_probs`` (N, C) and class ids.

    Temperature scaling minimises the negative log-likelihood over T in [0.05, 20] (Guo et al. 2017);
    isotonic regression (binary) is scikit-learn's ``IsotonicRegression(out_of_bounds='clip')`` on
    P(positive). ``fitted_on`` records n and the NLL / ECE before and after, on these data.
    """
    from scipy.optimize import minimize_scalar

    p = np.asarray(raw_probs, dtype=np.float64)
    y = np.asarray(targets).astype(np.int64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[0] == 0:
        raise PredictorError(f"fit_calibration: probabilities {p.shape} and targets {y.shape} do not match")
    if method not in CALIBRATIONS:
        raise PredictorError(f"calibration {method!r}: choose one of {list(CALIBRATIONS)}")
    if len(np.unique(y)) < 2:
        raise PredictorError(f"calibration needs at least two classes on the {split} split; it has only {np.unique(y).tolist()}")
    if method == "temperature":
        logp = np.log(np.clip(p, _TINY, None))

        def nll(log_t: float) -> float:
            z = logp / math.exp(log_t)
            z = z - z.max(axis=1, keepdims=True)
            return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

        res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded",
                              options={"xatol": 1e-6})
        cal = Calibration("temperature", temperature=float(math.exp(res.x)))
    else:
        if p.shape[1] != 2 or positive_index is None:
            raise PredictorError("isotonic calibration is for binary problems with a positive class")
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
        iso.fit(p[:, positive_index], (y == positive_index).astype(np.float64))
        cal = Calibration("isotonic", x=tuple(float(v) for v in iso.X_thresholds_),
                          y=tuple(float(v) for v in iso.y_thresholds_))
    after = _apply_calibration(torch.from_numpy(p), cal, positive_index).numpy()
    fitted = {"split": split, "n": int(len(y)), "nll_before": _nll(p, y), "nll_after": _nll(after, y),
              "ece_before": _ece(p, y, positive_index), "ece_after": _ece(after, y, positive_index)}
    return replace(cal, fitted_on=fitted)


def _nll(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def _ece(p: np.ndarray, y: np.ndarray, positive_index: int | None) -> float:
    from medsuite.learn.metrics import expected_calibration_error

    if p.shape[1] == 2 and positive_index is not None:
        return expected_calibration_error((y == positive_index).astype(np.int64), p[:, positive_index])
    return expected_calibration_error(y, p)


# ------------------------------------------------------------------------------------ the chain
def _resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:

    if precision not in PRECISIONS:
        raise PredictorError(f"precision {precision!r}: choose one of {list(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class Predictor:
    """A model plus its `PredictorSettings`: the chain every inference path in medsuite runs.

    Numpy in, numpy out, batched (``batch_size`` samples a forward pass), gradients off. ``device`` is the
    model's; ``precision`` is 'fp32' (default), 'bf16', 'fp16' or 'auto' (bf16/fp16 autocast on CUDA,
    fp32 on CPU). The model is put in eval mode for each call and its previous mode restored.
    """

    def __init__(self, model: nn.Module, settings: PredictorSettings, *, precision: str = "fp32",
                 batch_size: int = 32) -> None:
        if not isinstance(settings, PredictorSettings):
            raise TypeError(f"settings must be PredictorSettings, got {type(settings).__name__}")
        if batch_size < 1:
            raise PredictorError(f"batch_size must be at least 1, got {batch_size}")
        self.model, self.settings = model, settings
        self.precision, self.batch_size = precision, int(batch_size)
        self._amp = _resolve_precision(precision, self.device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_bundle(cls, bundle: Any, *, precision: str = "fp32", batch_size: int = 32) -> Predictor:
        """The predictor a loaded bundle (`medsuite.learn.bundle.load_bundle`) defines, on its model's device.

        Any object with ``.model`` and ``.meta`` works; one without ``.meta`` but with ``.labels`` (and
        ``.threshold``) is read as a bundle written before the predictor section (see `from_bundle_meta`)."""
        meta = getattr(bundle, "meta", None)
        if meta is None:
            meta = {"labels": list(bundle.labels), "threshold": getattr(bundle, "threshold", None)}
        try:
            settings = PredictorSettings.from_bundle_meta(meta)
        except PredictorError as exc:
            raise PredictorError(f"{getattr(bundle, 'path', 'bundle')}: bundle.json {exc}") from None
        return cls(bundle.model, settings, precision=precision, batch_size=batch_size)

    @classmethod
    def load(cls, path: Any, *, device: str = "cpu", precision: str = "fp32", batch_size: int = 32) -> Predictor:
        """Load a bundle (verified, no pickle) onto ``device`` and return its predictor (e.g. in a Ray actor)."""
        from medsuite.learn.bundle import load_bundle

        return cls.from_bundle(load_bundle(path, device=device), precision=precision, batch_size=batch_size)

    @classmethod
    def plain(cls, model: nn.Module, labels: Sequence[str] | None = None, positive: str | None = None,
              **kwargs: Any) -> Predictor:
        """A predictor without TTA or calibration (threshold 0.5 / arg-max). ``labels`` default to the
        class indices as text and ``positive`` of a binary problem to the last label."""
        if labels is None:
            n = getattr(model, "n_classes", None)
            if n is None:
                raise PredictorError(f"{type(model).__name__} has no n_classes attribute: give the labels")
            labels = [str(i) for i in range(int(n))]
        labels = [str(v) for v in labels]
        if positive is None and len(labels) == 2:
            positive = labels[-1]
        return cls(model, PredictorSettings(tuple(labels), positive), **kwargs)

    def with_settings(self, **changes: Any) -> Predictor:
        """A predictor with the same model and some settings replaced (e.g. ``calibration=...``)."""
        return Predictor(self.model, replace(self.settings, **changes), precision=self.precision, batch_size=self.batch_size)

    def with_model(self, model: nn.Module) -> Predictor:
        """The same settings around another model (e.g. a randomised copy for sanity checks)."""
        return Predictor(model, self.settings, precision=self.precision, batch_size=self.batch_size)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def labels(self) -> list[str]:
        return list(self.settings.labels)

    @property
    def positive(self) -> str | None:
        return self.settings.positive

    @property
    def positive_index(self) -> int | None:
        return self.settings.positive_index

    @property
    def threshold(self) -> float | None:
        return self.settings.threshold

    @property
    def tta(self) -> tuple[tuple[int, ...], ...]:
        return self.settings.tta

    def __repr__(self) -> str:
        s = self.settings
        cal = None if s.calibration is None else s.calibration.method
        fusion = None if s.fusion is None else list(s.fusion.covariates)
        return (f"Predictor({type(self.model).__name__}, labels={list(s.labels)}, positive={s.positive!r}, "
                f"tta={len(s.tta)} view(s), fusion={fusion}, calibration={cal}, threshold={s.threshold}, "
                f"device={self.device}, precision={self.precision})")

    # ------------------------------------------------------------------ the chain (torch)
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for every TTA view of a batch, flip-major ``(F * B, C)`` float32 (one forward)."""
        flips = self.settings.tta
        if flips == NO_TTA:
            views = x
        else:
            if any(-a > x.ndim - 1 for f in flips for a in f):
                raise PredictorError(f"predictor.tta flips {[list(f) for f in flips]} do not fit samples of shape "
                                     f"{tuple(x.shape[1:])}")
            views = torch.cat([torch.flip(x, f) if f else x for f in flips])
        with self._autocast():
            logits = self.model(views)
        if logits.ndim != 2 or logits.shape[1] != len(self.settings.labels):
            raise PredictorError(f"the model returned shape {tuple(logits.shape)}; expected (batch, "
                                 f"{len(self.settings.labels)}) logits for labels {list(self.settings.labels)}")
        return logits.float()

    def tta_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Mean softmax over the TTA flips of a batch (differentiable; flips run as one batch)."""
        probs = torch.softmax(self._logits(x), dim=1)
        n = len(self.settings.tta)
        return probs.reshape(n, x.shape[0], -1).mean(0) if n > 1 else probs

    def calibrate_tensor(self, raw: torch.Tensor) -> torch.Tensor:
        return _apply_calibration(raw, self.settings.calibration, self.settings.positive_index)

    def log_odds(self, x: torch.Tensor, design: torch.Tensor | None = None) -> torch.Tensor:
        """``log(p_k / (1 - p_k))`` of the calibrated TTA (and fused) probabilities, per class ``(B, C)``,
        differentiable. ``design``: a fusing predictor's transformed covariates ``(B, k)`` (`design`).

        The same chain as `tta_probs` + `fuse_tensor` + `calibrate_tensor`, computed in log space so that it
        keeps its gradient where a probability rounds to 1 (``sigmoid`` of it is the probability). Isotonic
        calibration maps probabilities, so it saturates where they do.
        """
        n = len(self.settings.tta)
        logp = torch.log_softmax(self._logits(x), dim=1)
        if n > 1:
            logp = torch.logsumexp(logp.reshape(n, x.shape[0], -1), dim=0) - math.log(n)
        fusion = self.settings.fusion
        if fusion is not None:
            if design is None:
                raise PredictorError(f"this predictor fuses the image with {list(fusion.covariates)} from the item's "
                                     "table row: give the covariates with the samples")
            pos = self.settings.positive_index
            w = torch.as_tensor(fusion.weights, dtype=logp.dtype, device=logp.device)
            z = (float(fusion.image_weight) * (logp[:, pos] - logp[:, 1 - pos])
                 + design.to(device=logp.device, dtype=logp.dtype) @ w + float(fusion.bias))
            logp = torch.stack([torch.nn.functional.logsigmoid(z if k == pos else -z) for k in range(2)], dim=1)
        cal = self.settings.calibration
        if cal is not None and cal.method == "temperature":
            logp = torch.log_softmax(logp / float(cal.temperature), dim=1)
        elif cal is not None:
            logp = torch.log(_apply_calibration(logp.exp(), cal, self.settings.positive_index).clamp_min(_TINY))
        c = logp.shape[1]
        others = logp.unsqueeze(1).expand(-1, c, -1).masked_fill(torch.eye(c, dtype=torch.bool, device=logp.device), -math.inf)
        return logp - torch.logsumexp(others, dim=2)
    def fuse_tensor(self, image: torch.Tensor, design: torch.Tensor | None) -> torch.Tensor:
        """Image probabilities fused with the covariates' design (`design`); identity without a fusion."""
        fusion = self.settings.fusion
        if fusion is None:
            return image
        if design is None:
            raise PredictorError(f"this predictor fuses the image with {list(fusion.covariates)} from the item's table "
                                 "row: give the covariates with the samples")
        return fusion.apply(image, design.to(image.device), self.settings.positive_index)

    def design(self, covariates: Any, n: int) -> np.ndarray | None:
        """The fusion's transformed covariates ``(n, k)`` (None when the predictor has no fusion)."""
        if self.settings.fusion is None:
            return None
        if covariates is None:
            raise PredictorError(f"this predictor fuses the image with {list(self.settings.fusion.covariates)} from the "
                                 "item's table row: give them (covariates=...)")
        return self.settings.fusion.design(covariates, n)

    @property
    def module(self) -> nn.Module:
        """The chain as a differentiable ``nn.Module`` returning the per-class log-odds of the calibrated
        TTA probabilities (`log_odds`): ``sigmoid`` of its output is what `predict_proba` returns, its arg-max
        is the arg-max class, and Captum attributes exactly that."""
        return PredictorModule(self)

    def module_for(self, covariates: Any = None) -> nn.Module:
        """`module` with one item's covariates bound (a fusing predictor; a mapping of single values): every
        row of the batch, as Captum expands it, uses them. Without a fusion this is `module`."""
        if self.settings.fusion is None:
            return PredictorModule(self)
        design = self.design({k: np.atleast_1d(np.asarray(v, dtype=np.float64)) for k, v in dict(covariates or {}).items()}
                             if covariates is not None else None, 1)
        return PredictorModule(self, torch.from_numpy(design).float())

    def image_only(self) -> Predictor:
        """The image model's own chain (TTA, no fusion, no calibration, threshold 0.5): what a fusing predictor's
        image part says. Its attributions equal the full chain's up to a positive factor (the covariates add a
        constant per item to the log-odds, which calibration by temperature only rescales)."""
        return self.with_settings(fusion=None, calibration=None, operating_point=None)

    # ------------------------------------------------------------------ numpy API
    def _batches(self, samples: Any) -> Iterator[torch.Tensor]:
        x = samples if isinstance(samples, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        for i in range(0, len(x), self.batch_size):
            yield x[i:i + self.batch_size].to(self.device, dtype=torch.float32)

    def image_proba(self, samples: Any) -> np.ndarray:
        """TTA probabilities of the image model alone, ``(n, C)`` float64: before any fusion and calibration."""
        out = []
        with _eval(self.model), torch.inference_mode():
            for xb in self._batches(samples):
                out.append(self.tta_probs(xb).float().cpu().numpy())
        if not out:
            return np.zeros((0, len(self.settings.labels)), dtype=np.float64)
        return np.concatenate(out).astype(np.float64)

    def fuse(self, image_probs: Any, covariates: Any = None) -> np.ndarray:
        """Fuse image probabilities (`image_proba`) with the items' covariates (a mapping or DataFrame of
        columns, one value per item); a copy of ``image_probs`` when the predictor has no fusion."""
        image = np.asarray(image_probs, dtype=np.float64)
        design = self.design(covariates, len(image))
        if design is None:
            return image.copy()
        with torch.inference_mode():
            return self.fuse_tensor(torch.from_numpy(image), torch.from_numpy(design)).numpy()

    def raw_proba(self, samples: Any, covariates: Any = None) -> np.ndarray:
        """TTA (and fused) probabilities before calibration, ``(n, C)`` float64 (the reliability diagram's
        "before"). ``covariates``: the items' table columns a fusing predictor needs (see `fuse`)."""
        return self.fuse(self.image_proba(samples), covariates)

    def calibrate(self, raw: Any) -> np.ndarray:
        """Apply the calibration to TTA probabilities (from `raw_proba`); `predict_proba` is exactly this."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.settings.calibration is None:
            return raw.copy()
        with torch.inference_mode():
            return self.calibrate_tensor(torch.from_numpy(raw)).numpy()

    def predict_proba(self, samples: Any, covariates: Any = None) -> np.ndarray:
        """Calibrated TTA probabilities ``(n, C)`` float64 of a stack of samples ``(n, *sample_shape)``
        (with their table covariates when the predictor fuses them, see `fuse`)."""
        return self.calibrate(self.raw_proba(samples, covariates))

    def positive_score(self, samples_or_probs: Any, *, probs: bool = False, covariates: Any = None) -> np.ndarray:
        """P(positive) ``(n,)``: of samples, or (``probs=True``) read from `predict_proba` output."""
        if self.positive_index is None:
            raise PredictorError(f"a {len(self.labels)}-class predictor has no positive class")
        p = np.asarray(samples_or_probs, dtype=np.float64) if probs else self.predict_proba(samples_or_probs, covariates)
        return p[:, self.positive_index]

    def decide_index(self, probs: Any) -> np.ndarray:
        """Class ids: binary ``P(positive) >= threshold`` -> positive, else the other class; multi-class arg-max."""
        p = np.asarray(probs, dtype=np.float64)
        p = p[None] if p.ndim == 1 else p
        if self.settings.binary:
            pos = self.positive_index
            return np.where(p[:, pos] >= self.threshold, pos, 1 - pos).astype(np.int64)
        return p.argmax(axis=1).astype(np.int64)

    def decide(self, probs: Any) -> list[str]:
        """Label names of `decide_index`."""
        return [self.settings.labels[i] for i in self.decide_index(probs)]

    def score_of(self, probs: Any) -> np.ndarray:
        """The one number reported per item: P(positive) (binary), else the probability of the arg-max class."""
        p = np.asarray(probs, dtype=np.float64)
        p = p[None] if p.ndim == 1 else p
        if self.settings.binary:
            return p[:, self.positive_index]
        return p.max(axis=1)

    def embed(self, samples: Any) -> np.ndarray:
        """Penultimate features ``(n, D)`` float32 of the un-augmented samples (``model.embed``)."""
        if not callable(getattr(self.model, "embed", None)):
            raise PredictorError(f"{type(self.model).__name__} has no embed(x) method")
        out = []
        with _eval(self.model), torch.inference_mode():
            for xb in self._batches(samples):
                with self._autocast():
                    out.append(self.model.embed(xb).float().cpu().numpy())
        if not out:
            raise PredictorError("embed: no samples")
        return np.concatenate(out).astype(np.float32)

    def predict_loader(self, loader: Iterable[Any], *, calibrated: bool = True, covariates: Any = None,
                       fused: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(probs (n, C), targets (n,))`` over a loader of ``(x, y)`` batches, in its order. ``covariates``:
        the items' table columns in the loader's order (a fusing predictor needs them); ``fused=False`` gives
        the image model's TTA probabilities alone (no fusion, no calibration)."""
        probs, targets = [], []
        for batch in loader:
            x, y = batch
            probs.append(self.image_proba(x))
            targets.append(np.asarray(y.cpu() if hasattr(y, "cpu") else y).astype(np.int64).reshape(-1))
        if not probs:
            raise PredictorError("predict_loader: the loader yielded no batches")
        image = np.concatenate(probs)
        if not fused:
            return image, np.concatenate(targets)
        raw = self.fuse(image, covariates)
        return (self.calibrate(raw) if calibrated else raw), np.concatenate(targets)


class PredictorModule(nn.Module):
    """A predictor's chain as an ``nn.Module``: the per-class log-odds of the calibrated TTA probabilities
    (`Predictor.log_odds`, shape (B, C); ``sigmoid`` gives the probabilities).

    ``tta`` (the flips) and ``gradcam_layer`` (the model's) tell LayerGradCam how the flipped copies of the
    input are stacked in that layer's batch: flip-major, ``len(tta)`` blocks of the input batch.
    """

    def __init__(self, predictor: Predictor, design: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = predictor.model
        self.predictor = predictor
        self.tta = predictor.settings.tta
        self.n_classes = len(predictor.settings.labels)
        self.bound_design = design  # (1, k): one item's covariates, used for every row (`Predictor.module_for`)

    @property
    def gradcam_layer(self) -> nn.Module | None:
        return getattr(self.model, "gradcam_layer", None)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)

    def forward(self, x: torch.Tensor, design: torch.Tensor | None = None) -> torch.Tensor:
        """``design``: a fusing predictor's transformed covariates ``(B, k)`` (`Predictor.design`; Captum:
        ``additional_forward_args``); default: the bound ones of `Predictor.module_for`."""
        if design is None and self.bound_design is not None:
            design = self.bound_design.to(x.device).expand(x.shape[0], -1)
        return self.predictor.log_odds(x, design)
