"""Batch-scoring throughput and memory, side by side in one run (not part of the test suite).

1. decode-only: scan + read_series + block.sample for N series in W worker processes (the ceiling);
   after a warm-up pass (files in the page cache), interleaved with (2), best of ``--repeats`` each;
2. end-to-end: `medsuite score` (local engine, W workers) on the same N series: discovery, reading,
   sampling, batched inference, SQLite rows, Parquet/CSV;
   the ratio end-to-end / decode-only (goal >= 0.8: inference and writing hide behind decoding);
3. peak resident memory of the whole process tree (main + workers) scoring N_small vs N_large series,
   each in a fresh process: flat memory means nothing per series is kept.

    python bench/bench_scoring.py                    # 80 series, 2 workers, memory 20 vs 80 series
    python bench/bench_scoring.py --series 80 --workers 2 --memory 20,80 --slices 48 --size 128 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd


def make_series(root: Path, n: int, slices: int, size: int) -> pd.DataFrame:
    """n CT series with a bright sphere each; returns a nodule table (2 nodules per series)."""
    from pydicom import dcmread

    from medsuite.io.dicom_write import write_series
    from medsuite.io.volume import Volume

    rows = []
    z, y, x = np.mgrid[:slices, :size, :size]
    for i in range(n):
        rng = np.random.default_rng(i)
        array = -800.0 + 30.0 * rng.standard_normal((slices, size, size))
        array[((z - slices / 2) * 1.25) ** 2 + (y - size / 2) ** 2 + (x - size / 2) ** 2 < 64] = 40.0
        vol = Volume(array.astype(np.int16), (1.25, 0.7, 0.7), origin=(-size * 0.35, -size * 0.35, -300.0 - i))
        files = write_series(vol, root / f"s{i:04d}", patient_id=f"BENCH{i:04d}")
        uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        cx, cy, cz = vol.index_to_world(((slices - 1) / 2, size / 2, size / 2))
        rows += [{"series_uid": uid, "patient_id": f"BENCH{i:04d}", "x_mm": cx, "y_mm": cy, "z_mm": cz,
                  "diameter_mm": 11.0, "label": 1, "nodule_id": f"{i}a"},
                 {"series_uid": uid, "patient_id": f"BENCH{i:04d}", "x_mm": cx + 15, "y_mm": cy - 10, "z_mm": cz,
                  "diameter_mm": 5.0, "label": 0, "nodule_id": f"{i}b"}]
    return pd.DataFrame(rows)


def make_bundle(path: Path) -> Path:
    import torch

    from medsuite.data.blocks import SliceStack
    from medsuite.learn.bundle import export_bundle
    from medsuite.learn.models import build_model

    torch.manual_seed(0)
    block = SliceStack(k=5, size=32, spacing_mm=1.25, pixel_mm=0.7, window="lung")
    kwargs = {"in_channels": 5, "n_classes": 2, "width": 8, "depth": 3}
    return export_bundle(path, build_model("slice_cnn", **kwargs), arch="slice_cnn", arch_kwargs=kwargs,
                         block_spec=block.spec(), labels=["benign", "malignant"], threshold=0.5, task="nodule")


def decode_only(folders: list[Path], nodules: pd.DataFrame, bundle: Path, workers: int) -> float:
    """Seconds to scan, read and sample every series in ``workers`` processes (no model, no writing)."""
    from medsuite.io.dicom import scan_folder
    from medsuite.learn.bundle import load_bundle
    from medsuite.pipelines.scoring.stages import Point, WorkItem, prepare, spec_json

    spec = spec_json(load_bundle(bundle).block.spec())
    t0 = time.perf_counter()
    table = scan_folder([str(f) for f in folders], workers=workers).series
    items = []
    for row in table.itertuples():
        pts = nodules[nodules["series_uid"] == row.series_uid]
        items.append(WorkItem(row.series_uid, tuple(row.files), tuple(
            Point(r.nodule_id, r.x_mm, r.y_mm, r.z_mm, r.diameter_mm) for r in pts.itertuples())))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        done = list(pool.map(prepare, items, [spec] * len(items), [{}] * len(items)))
    assert all(p.error is None for p in done), [p.error for p in done if p.error]
    return time.perf_counter() - t0


def tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total / 1024


def peak_memory(bundle: Path, folders: list[Path], nodules_csv: Path, out: Path, workers: int) -> tuple[float, float]:
    """(peak tree RSS MB, seconds) of `medsuite score` over ``folders`` in a fresh process."""
    table = out.with_suffix(".series.csv")
    pd.DataFrame({"path": [str(f) for f in folders]}).to_csv(table, index=False)
    entry = "import typer; from medsuite.commands.score import command; typer.run(command)"
    cmd = [sys.executable, "-c", entry, str(bundle), str(table), "--out", str(out), "--nodules", str(nodules_csv),
           "--workers", str(workers), "--device", "cpu", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"score exited {proc.returncode}: {err.decode()[-2000:]}")
    return peak, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=80)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory", default="20,80", help="two series counts for the memory comparison")
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timings of each; the best is kept")
    args = ap.parse_args()
    small, large = (int(v) for v in args.memory.split(","))
    n_total = max(args.series, large)

    from medsuite.pipelines.scoring import ScoreConfig, score

    with tempfile.TemporaryDirectory(prefix="bench_scoring_") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        nodules = make_series(root / "data", n_total, args.slices, args.size)
        nodules.to_csv(root / "nodules.csv", index=False)
        bundle = make_bundle(root / "bundle")
        print(f"generated {n_total} series of {args.slices}x{args.size}x{args.size} in {time.perf_counter() - t:.1f} s")
        folders = sorted((root / "data").iterdir())

        decode_only(folders[: args.series], nodules, bundle, args.workers)  # warm-up: files in the page cache
        decode_times, e2e_times = [], []
        for rep in range(args.repeats):  # interleaved, best of each: the machine's load changes over time
            t = time.perf_counter()
            summary = score(ScoreConfig(bundle=bundle, inputs=folders[: args.series], out=root / f"e2e{rep}",
                                        nodules=root / "nodules.csv", workers=args.workers, device="cpu",
                                        progress=False))
            e2e_times.append(time.perf_counter() - t)
            assert summary.n_scored == args.series, summary.lines()
            decode_times.append(decode_only(folders[: args.series], nodules, bundle, args.workers))
        decode_s, e2e_s = min(decode_times), min(e2e_times)
        decode_rate, e2e_rate = 60 * args.series / decode_s, 60 * args.series / e2e_s
        print(f"decode-only : {args.series} series in {decode_s:6.1f} s = {decode_rate:7.1f} series/min")
        print(f"end-to-end  : {args.series} series in {e2e_s:6.1f} s = {e2e_rate:7.1f} series/min "
              f"({summary.n_predictions} predictions)")
        print(f"ratio end-to-end / decode-only = {e2e_rate / decode_rate:.2f} (goal >= 0.80)")

        mem = {}
        for n in (small, large):
            mem[n] = peak_memory(bundle, folders[:n], root / "nodules.csv", root / f"mem{n}", args.workers)
            print(f"peak RSS (main + {args.workers} workers) scoring {n:4d} series: {mem[n][0]:7.1f} MB "
                  f"({mem[n][1]:.1f} s)")
        print(f"memory ratio {large}/{small} series = {mem[large][0] / mem[small][0]:.2f} (flat: ~1.0)")
        print(json.dumps({"series": args.series, "workers": args.workers, "decode_per_min": round(decode_rate, 1),
                          "e2e_per_min": round(e2e_rate, 1), "ratio": round(e2e_rate / decode_rate, 3),
                          "peak_rss_mb": {str(k): round(v[0], 1) for k, v in mem.items()}}))


if __name__ == "__main__":
    main()
