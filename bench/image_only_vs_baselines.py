"""The image part of a fused nodule bundle against the diameter and radiomics baselines, paired, on a test split.

A fused bundle's report compares the fused score with each baseline and with the image model alone; this script
gives the row the report does not: the image model alone (the bundle's predictor with ``fused=False``: flip TTA,
no covariates) minus each baseline, DeLong and paired bootstrap, on the same held-out nodules. The baselines are
refitted on the training split exactly as `medsuite train` fits them (same seed), so their AUCs match the report.

    python bench/image_only_vs_baselines.py demo_out/malignancy.bundle demo_out/cohort/nodules.csv \\
        --dicom-root demo_out/cohort --cache demo_out/cache
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("table", type=Path)
    ap.add_argument("--dicom-root", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--positive", default="malignant")
    ap.add_argument("--seed", type=int, default=0, help="the training config's train.seed (the random forest's)")
    args = ap.parse_args()

    from medsuite.data.source import VolumeSource
    from medsuite.data.splitters import ColumnSplitter
    from medsuite.learn.bundle import load_bundle
    from medsuite.learn.metrics import paired_auc_difference
    from medsuite.learn.predict import Predictor
    from medsuite.pipelines import nodule
    from medsuite.pipelines.baselines import diameter_baseline, radiomics_baseline
    from medsuite.pipelines.radiomics import feature_table
    from medsuite.pipelines.tasks import plain_loader

    bundle = load_bundle(args.bundle)
    source = VolumeSource(args.dicom_root, cache_dir=args.cache)
    dls = nodule.dataloaders(args.table, block=bundle.block, positive=args.positive, source=source,
                             splitter=ColumnSplitter("split"), augment=None)
    predictor = Predictor.from_bundle(bundle)
    probs, targets = predictor.predict_loader(plain_loader(dls, args.split), fused=False)
    image = probs[:, predictor.positive_index]
    y = (targets == predictor.positive_index).astype(int)
    train, test = dls.items("train"), dls.items(args.split)
    baselines = [diameter_baseline(train, test, args.positive)]
    f_train, f_test = feature_table(train, source.get), feature_table(test, source.get)
    baselines.append(radiomics_baseline(f_train, train["label"], f_test, test["label"], args.positive, seed=args.seed))
    from sklearn.metrics import roc_auc_score

    print(f"{args.split}: {len(y)} nodules, {int(y.sum())} {args.positive}; image model alone AUC {roc_auc_score(y, image):.3f}")
    for b in baselines:
        c = paired_auc_difference(y, image, np.asarray(b.probs), n_boot=1000)
        d, s = c["delong"], c["bootstrap"]
        print(f"  image alone - {b.name} (AUC {c['auc_b']:.3f}): {c['difference']:+.3f} "
              f"DeLong 95% CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p={d['p_value']:.3g}; "
              f"bootstrap [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]")


if __name__ == "__main__":
    main()
