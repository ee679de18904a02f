"""Predictor benchmarks, side by side in one run (figures go to docs/bundles.md, "The predictor").

1. Inference cost of the chain: plain model vs 4-flip TTA (one batched forward of the flipped copies) vs
   4-flip TTA + temperature calibration, on the default slice_cnn and SliceStack (5 x 64 x 64), batch 64.
   The reference row is a bare ``torch.softmax(model(x))`` loop (what scoring ran before the predictor).
2. Batch-size independence: the largest difference in P(positive) between scoring the same samples in
   batches of 1, 7 and 64 (the acceptance test demands <= 1e-6 between evaluate and score).

    python bench/bench_predictor.py [--n 256] [--repeat 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import median_seconds

from medsuite.learn.models import build_model
from medsuite.learn.predict import FLIPS, NO_TTA, Calibration, Predictor, PredictorSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="samples scored per timing")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model("slice_cnn", in_channels=5, n_classes=2).eval()
    x = np.random.default_rng(0).random((args.n, 5, 64, 64), dtype=np.float32)
    labels = ("benign", "malignant")

    def bare() -> None:
        with torch.inference_mode():
            for i in range(0, len(x), 64):
                torch.softmax(model(torch.from_numpy(x[i:i + 64])).float(), 1).numpy()

    rows = [("bare softmax(model(x)) loop (reference)", bare)]
    for name, tta, cal in (("Predictor, no TTA", NO_TTA, None), ("Predictor, 4-flip TTA", FLIPS, None),
                           ("Predictor, 4-flip TTA + temperature", FLIPS, Calibration("temperature", 1.3))):
        p = Predictor(model, PredictorSettings(labels, "malignant", tta, cal), batch_size=64)
        rows.append((name, lambda p=p: p.predict_proba(x)))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.n} samples 5x64x64, slice_cnn")
    ref = None
    for name, fn in rows:
        s = median_seconds(fn, args.repeat)
        ref = ref or s
        print(f"  {name:<42} {1000 * s / args.n:7.3f} ms/sample   x{s / ref:4.2f}")
    p = Predictor(model, PredictorSettings(labels, "malignant", FLIPS, Calibration("temperature", 1.3)), batch_size=64)
    scores = {bs: Predictor(model, p.settings, batch_size=bs).positive_score(x[:64]) for bs in (1, 7, 64)}
    diff = max(float(np.abs(scores[a] - scores[b]).max()) for a in scores for b in scores)
    print(f"  largest P(positive) difference between batch sizes 1, 7 and 64: {diff:.2e}")


if __name__ == "__main__":
    main()
