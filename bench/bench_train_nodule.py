"""How long `medsuite train` takes with the default nodule configuration at a given training-set size.

    python bench/bench_train_nodule.py COHORT --train-nodules 1200 --out /tmp/bench_train
    python bench/bench_train_nodule.py COHORT --train-nodules 1200 --set train.epochs=10   # any config override

COHORT is a folder with ``nodules.csv`` and the scans (`medsuite demo-data COHORT -n 700` has 1,433 nodules).
Patients are taken in a fixed random order until the training split holds ``--train-nodules`` nodules; the
next patients give the validation split (a fifth of that) and the held-out test split (the rest, at most 500
nodules). The run is `python -m medsuite train configs/nodule_malignancy.yaml` in a fresh process, so the figure
includes start-up, the volume cache, lr_find, the fit, export, evaluation, the baselines and the report.
Printed: wall time and CPU time of the run, the time of each stage (``metrics.json`` ``timings``), the load
average before and after (the machine may be shared: compare runs at similar load), and the test AUCs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def split_table(table: pd.DataFrame, n_train: int, seed: int = 0) -> pd.DataFrame:
    """A patient-level train / valid / test split with about ``n_train`` training nodules."""
    patients = np.random.default_rng(seed).permutation(table["patient_id"].astype(str).unique())
    counts = table.groupby(table["patient_id"].astype(str)).size()
    split, total = {}, 0
    targets = (("train", n_train), ("valid", n_train // 5), ("test", 500))
    order = iter(patients)
    for name, want in targets:
        got = 0
        for p in order:
            split[p] = name
            got += int(counts[p])
            if got >= want:
                break
        total += got
    out = table[table["patient_id"].astype(str).isin(split)].copy()
    out["split"] = out["patient_id"].astype(str).map(split)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cohort", type=Path)
    ap.add_argument("--train-nodules", type=int, default=1200)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "nodule_malignancy.yaml")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_train_nodule"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    table = pd.read_csv(args.cohort / "nodules.csv")
    bench = split_table(table, args.train_nodules)
    args.out.mkdir(parents=True, exist_ok=True)
    table_path = args.out / "nodules.csv"
    bench.to_csv(table_path, index=False)
    sizes = bench["split"].value_counts().to_dict()
    cmd = [sys.executable, "-m", "medsuite", "train", str(args.config), "--set", f"data.table={table_path}",
           "--set", f"data.dicom_root={args.cohort}", "--set", f"out={args.out / 'run'}",
           "--set", f"data.cache_dir={args.out / 'cache'}", *[x for o in args.overrides for x in ("--set", o)]]
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"medsuite train failed with exit code {proc.returncode}")
    metrics = json.loads((args.out / "run" / "metrics.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"nodules: {sizes} (config {args.config.name}{', ' + ', '.join(args.overrides) if args.overrides else ''})")
    print(f"medsuite train: wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min; load average before "
          f"{load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")
    for stage, seconds in metrics.get("timings", {}).items():
        print(f"  {stage:<10} {seconds / 60:6.2f} min")
    auc = metrics["report"]["roc_auc"]
    print(f"test AUC {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]")
    for name, c in metrics.get("comparisons", {}).items():
        print(f"  minus {name}: {c['difference']:+.3f} DeLong 95% CI [{c['delong']['ci_low']:+.3f}, {c['delong']['ci_high']:+.3f}]")


if __name__ == "__main__":
    main()
