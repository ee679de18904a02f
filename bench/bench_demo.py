"""Speed of the demo cohort generator: CPU seconds per patient and patients per second.

    python bench/bench_demo.py                # 12 patients in-process + a 24-patient cohort on 2 workers
    python bench/bench_demo.py --quick        # 6 patients in-process, no cohort run
    python bench/bench_demo.py -n 180 -w 2    # the default cohort (about a minute on 2 free cores)
    python bench/bench_demo.py --figure docs/demo-cohort-slices.png   # slices through 4 nodules (seed 0)
    python bench/bench_demo.py --figure cmp.png --cohorts old_demo new_demo   # rows: existing cohorts
    git archive <commit> | tar -x -C /tmp/old && python bench/bench_demo.py --quick --baseline /tmp/old
        # the same patients made by an older checkout in a child process; prints the speed-up

Per patient: ``make_patient`` (thorax, nodules, scanner effects, DICOM writing) timed with
``time.process_time`` on one core, after one warm-up patient (imports), on the first patients of seed 0
at the default size (256 x 256, slab >= 40 mm, the source scan's real spacing). CPU time does not depend
on the machine's load, wall time does: the cohort run prints both. Planning (choosing scans and nodules
from the LIDC database) is timed separately; it runs once per cohort in the parent process.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def per_patient(n: int, seed: int) -> tuple[float, float, list[float], list[int]]:
    """Planning CPU s, and CPU s and slice count of each of ``n`` patients made in this process."""
    from contextlib import nullcontext
    from dataclasses import replace

    from medsuite.data.demo import cohort as demo

    make_patient, plan_cohort = demo.make_patient, demo.plan_cohort
    # older checkouts (to compare against: PYTHONPATH=<old tree>) have no indexed database copy
    indexed = getattr(demo, "indexed_lidc_copy", None)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "dicom").mkdir()
        t0 = time.process_time()
        specs = plan_cohort(out, n + 1, seed)
        plan_s = time.process_time() - t0
        times, slices = [], []
        copy = indexed(specs[0].db_path, out) if indexed else nullcontext(specs[0].db_path)
        with copy as db_path:  # as make_demo_cohort does, once per cohort
            specs = [replace(s, db_path=db_path) for s in specs]
            make_patient(specs[0])  # warm-up: imports, page cache
            for spec in specs[1:]:
                t0 = time.process_time()
                _, series = make_patient(spec)
                times.append(time.process_time() - t0)
                slices.append(int(series["n_slices"]))
    return plan_s, float(np.mean(times)), times, slices


def cohort(n: int, workers: int, seed: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process and its children) of ``make_demo_cohort``."""
    from medsuite.data.demo import make_demo_cohort

    with tempfile.TemporaryDirectory() as tmp:
        before = os.times()
        t0 = time.perf_counter()
        table = make_demo_cohort(Path(tmp) / "demo", patients=n, seed=seed, workers=workers)
        wall = time.perf_counter() - t0
        after = os.times()
    cpu = sum(after[i] - before[i] for i in range(4))
    print(f"cohort: {n} patients, {len(table)} nodules ({int((table['label'] == 'malignant').sum())} malignant), "
          f"{int((table['split'] == 'test').sum())} in the test split")
    return wall, cpu


def figure(path: Path, cohorts: list[Path], labels: list[str], n: int = 4) -> None:
    """One row per cohort: the axial slice through each of its first ``n`` nodules (lung window, marker
    at the table's world centre), so that cohorts made from the same seed can be compared by eye."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from medsuite.io.reader import read_series

    fig, axes = plt.subplots(len(cohorts), n, figsize=(3.6 * n, 3.5 * len(cohorts)), squeeze=False)
    for row, (root, label) in enumerate(zip(cohorts, labels, strict=True)):
        table = pd.read_csv(root / "nodules.csv").head(n)
        for ax, nod in zip(axes[row], table.itertuples(), strict=False):
            vol = read_series(root / "dicom" / nod.patient_id)
            z, y, x = vol.world_to_index((nod.x_mm, nod.y_mm, nod.z_mm))
            ax.imshow(vol.array[int(round(z))], cmap="gray", vmin=-1350, vmax=150)
            ax.plot([x], [y], "+", color="red", markersize=14)
            ax.set_title(f"{label}{nod.nodule_id} d={nod.diameter_mm:.0f} tex={nod.rendered_texture} "
                         f"calc={nod.rendered_calcification} y={int(nod.label == 'malignant')}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--patients", type=int, default=24, help="patients in the cohort run")
    ap.add_argument("-w", "--workers", type=int, default=2)
    ap.add_argument("--single", type=int, help="patients timed one by one in-process (default 12, 6 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--per-patient-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--figure", type=Path, help="write a PNG of slices through nodules instead of timing")
    ap.add_argument("--cohorts", type=Path, nargs="*", help="with --figure: existing cohort folders (one row each)")
    ap.add_argument("--baseline", type=Path, help="source tree of an older medsuite to time the same patients with")
    args = ap.parse_args()
    if args.figure:
        if args.cohorts:
            figure(args.figure, args.cohorts, [f"{c.name}: " for c in args.cohorts])
            return
        from medsuite.data.demo import make_demo_cohort

        with tempfile.TemporaryDirectory() as tmp:
            make_demo_cohort(Path(tmp) / "demo", patients=4, seed=args.seed, workers=args.workers)
            figure(args.figure, [Path(tmp) / "demo"], [""])
        return
    single = args.single or (6 if args.quick else 12)
    plan_s, mean_s, times, slices = per_patient(single, args.seed)
    print(f"planning ({single + 1} patients): {plan_s:.2f} s CPU")
    print(f"make_patient: {mean_s:.3f} s CPU per patient (mean of {single}; min {min(times):.3f}, "
          f"max {max(times):.3f}; {np.mean(slices):.0f} slices of 256 x 256 on average)")
    print(f"  -> {1 / mean_s:.2f} patients/s per core; default cohort (180) ~ {180 * mean_s / 2:.0f} s on 2 cores")
    if args.baseline:
        import subprocess
        import sys

        env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
        child = subprocess.run([sys.executable, __file__, "--quick", "--single", str(single), "--seed", str(args.seed),
                                "--per-patient-only"], env=env, capture_output=True, text=True, check=True)
        base = float(child.stdout.split("make_patient: ")[1].split(" s CPU")[0])
        print(f"baseline ({args.baseline}): {base:.3f} s CPU per patient -> this tree is {base / mean_s:.1f}x faster")
    if not args.quick:
        wall, cpu = cohort(args.patients, args.workers, args.seed)
        print(f"make_demo_cohort({args.patients} patients, workers={args.workers}): {wall:.1f} s wall, "
              f"{args.patients / wall:.2f} patients/s, {cpu / args.patients:.3f} s CPU per patient (incl. planning)")
        print(f"  load average now: {os.getloadavg()[0]:.1f} (wall time is inflated when the cores are shared)")


if __name__ == "__main__":
    main()
