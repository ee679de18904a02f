"""Sanity checks for attribution methods, run on the bundle's predictor (`medsuite.learn.predict.Predictor`:
the TTA and calibration chain scoring uses; its ``module`` is what the methods attribute, its probabilities
are what the curves follow, and the targets are its decisions).

- Model-parameter randomization (Adebayo et al., NeurIPS 2018): re-initialise the weights layer by layer
  (cascading from the output, or one layer at a time) and compare the attributions with the trained
  model's by Spearman rank correlation. A method whose maps barely change does not explain the model
  (it behaves like an edge detector) and fails.
- Deletion / insertion curves (Petsiuk et al., RISE 2018): remove (or reveal) input pixels in the order the
  attribution ranks them and follow the target probability; the area under the curve measures faithfulness
  (deletion: lower is better; insertion: higher is better), next to a random order as reference.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medsuite.interpret.attributions import SampleLayout, attribute
from medsuite.io.atomic import atomic_path, atomic_write_bytes

if TYPE_CHECKING:
    from torch import nn

    from medsuite.learn.predict import Predictor


@dataclass
class SanityCase:
    """One model input prepared for the checks: sample, baseline (IG start / deletion fill), layout, mm spacing."""

    case_id: str
    x: np.ndarray
    baseline: np.ndarray
    layout: SampleLayout
    pixel_spacing_mm: tuple[float, ...]


# A method: a name understood by `attributions.attribute`, or a callable (model, case, target) -> sample-shaped array.
Method = str | Callable[["nn.Module", SanityCase, int], np.ndarray]


def _attribution_grid(method: Method, model: nn.Module, case: SanityCase, target: int, options: dict) -> np.ndarray:
    if callable(method):
        values = np.asarray(method(model, case, target), dtype=np.float32)
    else:
        values = attribute(method, model, case.x, case.layout, case.pixel_spacing_mm, baseline=case.baseline,
                           target=target, **options.get(method, {})).values
    return case.layout.to_grid(values)


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), as Spearman's coefficient needs."""
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (0 when either is constant: nothing left to rank)."""
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def parametrised_layers(model: nn.Module) -> list[str]:
    """Names of modules that hold parameters themselves, in registration (roughly input → output) order."""
    return [name for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))]


def _reinit(module: nn.Module, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.normal_(0.0, 0.05)
    for buf_name in ("running_mean", "running_var"):  # normalisation statistics are learned too
        buf = getattr(module, buf_name, None)
        if buf is not None:
            buf.fill_(0.0 if buf_name == "running_mean" else 1.0)


def randomized_models(model: nn.Module, mode: str = "cascading", *, seed: int = 0,
                      max_layers: int | None = None) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(layer name, model copy)`` with weights re-initialised.

    ``cascading``: from the output layer down, each step randomising one more layer (the same copy, mutated).
    ``independent``: a fresh copy per layer with only that layer randomised. The original is never touched.
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"randomization mode must be 'cascading' or 'independent', got {mode!r}")
    names = parametrised_layers(model)[::-1]
    if not names:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise")
    keep = set(range(len(names)))
    if max_layers is not None and max_layers < len(names):  # evenly spaced steps, always the last one
        keep = {int(round(v)) for v in np.linspace(len(names) - 1, 0, max_layers)}
    work = copy.deepcopy(model) if mode == "cascading" else None
    for i, name in enumerate(names):
        if mode == "independent" and i not in keep:
            continue
        target = work if work is not None else copy.deepcopy(model)
        _reinit(target.get_submodule(name), seed + i)
        if i in keep:
            yield name, target


@dataclass
class RandomizationResult:
    """Spearman correlations (mean over cases) between trained and randomized attributions, per step."""

    method: str
    mode: str
    layers: list[str]
    spearman_abs: list[float]
    spearman_signed: list[float]
    threshold: float
    passed: bool
    verdict: str


def _targets(predictor: Predictor, cases: Sequence[SanityCase]) -> list[int]:
    """The predictor's decision for each case (the class scoring reports)."""
    probs = predictor.predict_proba(np.stack([c.x for c in cases]))
    return [int(t) for t in predictor.decide_index(probs)]


def _check_predictor(predictor: Any) -> None:
    from medsuite.learn.predict import Predictor

    if not isinstance(predictor, Predictor):
        raise TypeError(f"sanity checks run on a medsuite.learn.predict.Predictor, got {type(predictor).__name__} "
                        "(Predictor.from_bundle(bundle), or Predictor.plain(model, labels))")


def randomization_test(
    predictor: Predictor,
    cases: Sequence[SanityCase],
    method: Method,
    *,
    name: str | None = None,
    mode: str = "cascading",
    threshold: float = 0.5,
    max_layers: int | None = None,
    options: dict | None = None,
    seed: int = 0,
) -> RandomizationResult:
    """Model-parameter randomization test of one method on ``cases``.

    The method passes when, with the model fully randomized (cascading: the last step; independent: the
    median over layers), the rank correlation of |attribution| with the trained model's falls below ``threshold``.
    Targets stay the trained predictor's decisions; the randomized copies keep its TTA and calibration.
    """
    _check_predictor(predictor)
    options = options or {}
    label = name or (method if isinstance(method, str) else getattr(method, "__name__", "custom"))
    if not cases:
        raise ValueError("randomization_test needs at least one case")
    targets = _targets(predictor, cases)
    module = predictor.module
    reference = [_attribution_grid(method, module, c, t, options) for c, t in zip(cases, targets, strict=True)]
    layers, s_abs, s_signed = [], [], []
    for layer, randomized in randomized_models(predictor.model, mode, seed=seed, max_layers=max_layers):
        randomized.eval()
        chain = predictor.with_model(randomized).module
        maps = [_attribution_grid(method, chain, c, t, options) for c, t in zip(cases, targets, strict=True)]
        layers.append(layer)
        s_abs.append(float(np.mean([spearman(np.abs(r), np.abs(m)) for r, m in zip(reference, maps, strict=True)])))
        s_signed.append(float(np.mean([spearman(r, m) for r, m in zip(reference, maps, strict=True)])))
    final = s_abs[-1] if mode == "cascading" else float(np.median(s_abs))
    passed = bool(final < threshold)
    verdict = (f"passes: attributions change with the weights (rank correlation {final:.2f} < {threshold})" if passed
               else f"FAILS: attributions barely change when the weights are randomized (rank correlation "
                    f"{final:.2f} >= {threshold}); they do not explain this model")
    return RandomizationResult(label, mode, layers, s_abs, s_signed, threshold, passed, verdict)


@dataclass
class FaithfulnessResult:
    """Deletion and insertion curves (mean over cases) and their AUCs, with a random-order reference."""

    method: str
    fractions: list[float]
    deletion: list[float]
    insertion: list[float]
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    per_case: list[dict] = field(default_factory=list)


def _curves(predictor: Predictor, case: SanityCase, order: np.ndarray, target: int, fractions: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray]:
    n = order.size
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    rank = rank.reshape(case.layout.grid_shape)
    deleted, inserted = [], []
    for f in fractions:
        m = case.layout.expand(rank < int(round(f * n)))
        deleted.append(np.where(m, case.baseline, case.x))
        inserted.append(np.where(m, case.x, case.baseline))
    p = predictor.predict_proba(np.stack(deleted + inserted).astype(np.float32))[:, target]
    return p[: len(fractions)], p[len(fractions):]


def deletion_insertion(
    predictor: Predictor,
    cases: Sequence[SanityCase],
    method: Method,
    *,
    name: str | None = None,
    n_steps: int = 20,
    batch_size: int = 32,
    options: dict | None = None,
    seed: int = 0,
) -> FaithfulnessResult:
    """Deletion/insertion curves of one method: pixels ranked by attribution (descending), ``n_steps`` fractions.

    Deleted pixels take the case's baseline value; insertion starts from the baseline. The target is the
    predictor's decision and the curves follow its probability of that class (``batch_size`` samples a
    forward pass). AUC is the trapezoid area over the removed/revealed fraction in [0, 1].
    """
    from medsuite.learn.predict import Predictor

    _check_predictor(predictor)
    options = options or {}
    label = name or (method if isinstance(method, str) else getattr(method, "__name__", "custom"))
    fractions = np.linspace(0.0, 1.0, n_steps + 1)
    rng = np.random.default_rng(seed)
    batched = Predictor(predictor.model, predictor.settings, precision=predictor.precision, batch_size=batch_size)
    module = predictor.module
    dels, ins, rdels, rins, per_case = [], [], [], [], []
    for case, target in zip(cases, _targets(predictor, cases), strict=True):
        grid = _attribution_grid(method, module, case, target, options)
        order = np.argsort(-grid.ravel(), kind="stable")
        d, i = _curves(batched, case, order, target, fractions)
        rd, ri = _curves(batched, case, rng.permutation(grid.size), target, fractions)
        dels.append(d), ins.append(i), rdels.append(rd), rins.append(ri)
        per_case.append({"case_id": case.case_id, "target": target, "deletion_auc": float(np.trapezoid(d, fractions)),
                         "insertion_auc": float(np.trapezoid(i, fractions))})
    mean = [np.mean(v, axis=0) for v in (dels, ins, rdels, rins)]
    return FaithfulnessResult(label, fractions.tolist(), mean[0].tolist(), mean[1].tolist(),
                              float(np.trapezoid(mean[0], fractions)), float(np.trapezoid(mean[1], fractions)),
                              float(np.trapezoid(mean[2], fractions)), float(np.trapezoid(mean[3], fractions)), per_case)


# ----------------------------------------------------------------------------- report
def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def write_sanity_report(
    out_dir: str | Path,
    randomization: Sequence[RandomizationResult],
    faithfulness: Sequence[FaithfulnessResult],
    *,
    context: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``sanity.json``, ``sanity.html`` and PNG plots (randomization correlations, deletion/insertion)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if randomization:
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in randomization:
            ax.plot(range(1, len(r.layers) + 1), r.spearman_abs, marker="o", label=f"{r.method} ({r.mode})")
        ax.axhline(randomization[0].threshold, color="grey", ls="--", lw=1, label="pass threshold")
        ax.set_xlabel("layers randomized (from the output)" if randomization[0].mode == "cascading" else "layer")
        ax.set_ylabel("Spearman |attr| vs trained")
        ax.set_ylim(-0.2, 1.05)
        ax.legend(fontsize=8)
        ax.set_title("Model-parameter randomization (Adebayo et al. 2018)")
        _save_figure(fig, out / "randomization.png")
        plt.close(fig)
        paths["randomization_png"] = out / "randomization.png"
    if faithfulness:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for f in faithfulness:
            axes[0].plot(f.fractions, f.deletion, label=f"{f.method} (AUC {f.deletion_auc:.3f})")
            axes[1].plot(f.fractions, f.insertion, label=f"{f.method} (AUC {f.insertion_auc:.3f})")
        f0 = faithfulness[0]
        for ax, kind, auc in ((axes[0], "deletion", f0.random_deletion_auc), (axes[1], "insertion", f0.random_insertion_auc)):
            ax.set_title(f"{kind} (random order AUC ~{auc:.3f})")
            ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'revealed'}")
            ax.set_ylabel("target probability")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=8)
        _save_figure(fig, out / "faithfulness.png")
        plt.close(fig)
        paths["faithfulness_png"] = out / "faithfulness.png"
    summary = {
        "context": context or {},
        "randomization": [asdict(r) for r in randomization],
        "faithfulness": [asdict(f) for f in faithfulness],
        "notes": ["Deletion AUC: lower is better; insertion AUC: higher is better; compare with the random order.",
                  "A method that FAILS randomization shows image structure, not what this model learned."],
    }
    atomic_write_bytes(out / "sanity.json", json.dumps(summary, indent=1).encode())
    paths["json"] = out / "sanity.json"
    rows_r = "".join(f"<tr><td>{r.method}</td><td>{r.mode}</td><td>{r.spearman_abs[-1]:.3f}</td>"
                     f"<td class={'ok' if r.passed else 'bad'}>{r.verdict}</td></tr>" for r in randomization)
    rows_f = "".join(f"<tr><td>{f.method}</td><td>{f.deletion_auc:.3f}</td><td>{f.random_deletion_auc:.3f}</td>"
                     f"<td>{f.insertion_auc:.3f}</td><td>{f.random_insertion_auc:.3f}</td></tr>" for f in faithfulness)
    ctx = "".join(f"<li>{k}: {v}</li>" for k, v in (context or {}).items())
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>Attribution sanity report</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse}}.ok{{color:#060}}.bad{{color:#a00;font-weight:bold}}</style></head><body>
<h1>Attribution sanity report</h1><ul>{ctx}</ul>
<h2>Model-parameter randomization</h2><table><tr><th>method</th><th>mode</th><th>final Spearman |attr|</th><th>verdict</th></tr>{rows_r}</table>
{'<img src="randomization.png" width="640">' if randomization else ''}
<h2>Deletion / insertion</h2><table><tr><th>method</th><th>deletion AUC</th><th>random</th><th>insertion AUC</th><th>random</th></tr>{rows_f}</table>
{'<img src="faithfulness.png" width="860">' if faithfulness else ''}
<p>Deletion AUC: lower is better. Insertion AUC: higher is better. Saliency shows where the model looked, not a lesion
segmentation (Arun et al., Radiology: AI 2021).</p></body></html>"""
    atomic_write_bytes(out / "sanity.html", html.encode())
    paths["html"] = out / "sanity.html"
    return paths
