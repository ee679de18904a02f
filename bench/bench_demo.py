"""Speed of the demo cohort generator: CPU seconds per patient and patients per second.

    python bench/bench_demo.py                # 12 patients in-process + a 24-patient cohort on 2 workers
    python bench/bench_demo.py --quick        # 6 patients in-process, no cohort run
    python bench/bench_demo.py -n 180 -w 2    # the default cohort (about a minute on 2 free cores)

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
    from dataclasses import replace

    from medsuite.data.demo.cohort import _indexed_copy, make_patient, plan_cohort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "dicom").mkdir()
        t0 = time.process_time()
        specs = plan_cohort(out, n + 1, seed)
        plan_s = time.process_time() - t0
        times, slices = [], []
        with _indexed_copy(specs[0].db_path) as db_path:  # as make_demo_cohort does, once per cohort
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
        make_demo_cohort(Path(tmp) / "demo", patients=n, seed=seed, workers=workers)
        wall = time.perf_counter() - t0
        after = os.times()
    cpu = sum(after[i] - before[i] for i in range(4))
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--patients", type=int, default=24, help="patients in the cohort run")
    ap.add_argument("-w", "--workers", type=int, default=2)
    ap.add_argument("--single", type=int, default=12, help="patients timed one by one in-process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    single = 6 if args.quick else args.single
    plan_s, mean_s, times, slices = per_patient(single, args.seed)
    print(f"planning ({single + 1} patients): {plan_s:.2f} s CPU")
    print(f"make_patient: {mean_s:.3f} s CPU per patient (mean of {single}; min {min(times):.3f}, "
          f"max {max(times):.3f}; {np.mean(slices):.0f} slices of 256 x 256 on average)")
    print(f"  -> {1 / mean_s:.2f} patients/s per core; default cohort (180) ~ {180 * mean_s / 2:.0f} s on 2 cores")
    if not args.quick:
        wall, cpu = cohort(args.patients, args.workers, args.seed)
        print(f"make_demo_cohort({args.patients} patients, workers={args.workers}): {wall:.1f} s wall, "
              f"{args.patients / wall:.2f} patients/s, {cpu / args.patients:.3f} s CPU per patient (incl. planning)")
        print(f"  load average now: {os.getloadavg()[0]:.1f} (wall time is inflated when the cores are shared)")


if __name__ == "__main__":
    main()
