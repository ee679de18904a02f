"""Benchmarks for medsuite.learn.metrics and medsuite.learn.bundle (not part of the test run).

Prints, in one run: fast DeLong vs the O(m n) textbook definition (same numbers, time ratio);
vectorised stratified bootstrap vs one scikit-learn call per replicate (same numbers, time ratio);
CI coverage on simulated data with a known true AUC; DeLong vs paired-bootstrap agreement; bundle
export/load times and sizes for the default architectures.

    python bench/bench_learn_metrics.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from medsuite.learn import metrics as M


def _timed(fn, repeat: int = 3):
    best, out = math.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def _delong_definition(y, scores):
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return psi.mean(axis=(1, 2)), np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n


def bench_delong(n: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    scores = rng.normal(y, 1.0, size=(2, n))
    t_fast, (a1, c1) = _timed(lambda: M.delong_roc_variance(y, scores))
    t_def, (a2, c2) = _timed(lambda: _delong_definition(y, scores), repeat=1)
    same = np.allclose(a1, a2) and np.allclose(c1, c2)
    print(
        f"DeLong, N={n}, 2 models: fast {t_fast * 1e3:.1f} ms vs definition {t_def * 1e3:.0f} ms "
        f"-> {t_def / t_fast:.0f}x faster; identical results: {same}"
    )


def bench_bootstrap(n: int, n_boot: int) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    s = rng.normal(y, 1.0)
    idx = M._stratified_indices(y, n_boot, np.random.default_rng(0))
    t_vec, v = _timed(lambda: M._boot_auc_binary(s, y, idx))
    t_loop, w = _timed(lambda: np.array([skm.roc_auc_score(y[i], s[i]) for i in idx]), repeat=1)
    print(
        f"bootstrap AUC, N={n}, n_boot={n_boot}: vectorised {t_vec * 1e3:.0f} ms vs sklearn per replicate "
        f"{t_loop * 1e3:.0f} ms -> {t_loop / t_vec:.0f}x faster; identical: {np.allclose(v, w)}"
    )
    t_full, _ = _timed(lambda: M.classification_report(y, 1 / (1 + np.exp(-s)), n_boot=n_boot), repeat=1)
    print(f"classification_report (binary, all CIs), N={n}, n_boot={n_boot}: {t_full:.2f} s")


def bench_coverage(n_sets: int) -> None:
    truth = stats.norm.cdf(1.0 / math.sqrt(2))
    auc_hits = delong_hits = 0
    se_ratio = []
    for seed in range(n_sets):
        rng = np.random.default_rng(100 + seed)
        y = np.r_[np.zeros(100, int), np.ones(100, int)]
        s = rng.normal(y, 1.0)
        ci = M.roc_auc_ci(s, y, n_boot=500, seed=seed)
        auc_hits += ci["ci_low"] <= truth <= ci["ci_high"]
        shared = rng.normal(size=200)
        a = y + shared + 0.7 * rng.normal(size=200)
        b = y + shared + 0.7 * rng.normal(size=200)  # same generating process: true difference 0
        r = M.paired_auc_difference(y, a, b, n_boot=500, seed=seed)
        delong_hits += r["delong"]["ci_low"] <= 0 <= r["delong"]["ci_high"]
        se_ratio.append(r["delong"]["se"] / r["bootstrap"]["se"])
    print(
        f"coverage over {n_sets} simulated sets (N=200, nominal 95 %): AUC bootstrap CI {auc_hits / n_sets:.1%}, "
        f"DeLong difference CI {delong_hits / n_sets:.1%}; DeLong SE / paired-bootstrap SE median "
        f"{np.median(se_ratio):.3f} (IQR {np.percentile(se_ratio, 25):.3f}-{np.percentile(se_ratio, 75):.3f})"
    )


def bench_bundles() -> None:
    import torch

    from medsuite.learn.bundle import export_bundle, load_bundle
    from medsuite.learn.models import build_model

    cases = {
        "slice_cnn": ({"in_channels": 3}, (1, 3, 64, 64)),
        "multiview_cnn": ({"in_channels": 1}, (1, 3, 1, 64, 64)),
        "series_encoder": ({"in_channels": 1}, (1, 32, 1, 128, 128)),
        "cnn3d": ({"in_channels": 1}, (1, 1, 32, 32, 32)),
    }
    with tempfile.TemporaryDirectory() as d:
        for arch, (kw, shape) in cases.items():
            model = build_model(arch, **kw).eval()
            params = sum(p.numel() for p in model.parameters())
            with torch.no_grad():
                t_fwd, _ = _timed(lambda m=model, s=shape: m(torch.randn(*s)))
            path = Path(d) / f"{arch}.zip"
            t_exp, _ = _timed(
                lambda a=arch, m=model, k=kw, p=path: export_bundle(
                    p,
                    m,
                    arch=a,
                    arch_kwargs=k,
                    block_spec={"type": "X"},
                    labels=["0", "1"],
                    threshold=0.5,
                    task="nodule",
                )
            )
            t_load, _ = _timed(lambda p=path: load_bundle(p, block_factory=dict))
            print(
                f"{arch:15s} {params / 1e6:5.2f} M params, forward {shape}: {t_fwd * 1e3:6.1f} ms (CPU); "
                f"bundle {path.stat().st_size / 1e6:.2f} MB, export {t_exp * 1e3:.0f} ms, load+verify {t_load * 1e3:.0f} ms"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller problems (about 10 s)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the model timings")
    args = ap.parse_args()
    quick = args.quick
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    bench_delong(1000 if quick else 4000)
    bench_bootstrap(1000, 1000 if quick else 2000)
    bench_coverage(50 if quick else 200)
    bench_bundles()


if __name__ == "__main__":
    main()
