"""Side-by-side timings for DICOM reading and scanning (not part of the tests).

    python bench/bench_dicom.py [--slices 300] [--size 512] [--scan-files 3000] [--repeats 3]

1. read_series vs SimpleITK's ImageSeriesReader vs reading the files' raw bytes, on the same uncompressed
   CT series (and RLE), file cache warm for all; the readers take turns (in a shuffled order) within each
   repeat and the medians of ``--repeats`` are printed with their ratios and the load average (the machine
   may be shared).
2. read_series with 2 threads vs the default (1 thread for uncompressed files, up to 8 for compressed ones),
   and read_volume on the folder (scan + read) for the whole "path to volume" cost.
3. scan_folder's header pass: serial vs threads vs processes on many small files.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom import uid as uids

from medsuite.io.dicom import iter_files, scan_headers
from medsuite.io.dicom_write import write_series
from medsuite.io.load import read_volume
from medsuite.io.reader import read_series
from medsuite.io.volume import Volume


def median_of(fn: Callable[[], object], repeats: int) -> float:
    return medians({"fn": fn}, repeats)["fn"]


def medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function; they take turns within a repeat so that load swings hit all alike,
    in a shuffled (seeded) order so that no function always runs after the same one (whatever runs right
    after the raw-bytes reader was measured up to 2x slower: the memory it freed is reclaimed then)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            fn = fns[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def make_series(folder: Path, slices: int, size: int, syntax: str) -> list[Path]:
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 2000, (slices, size, size), dtype=np.int16)
    volume = Volume(array, (1.0, 0.7, 0.7), (-180.0, -180.0, 0.0))
    return write_series(volume, folder, patient_id="BENCH", transfer_syntax=syntax, shuffle_names=True)


def sitk_read(folder: Path, files: list[str] | None) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files if files is not None else reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def read_raw(files: list[str]) -> int:
    """The floor: every file's bytes into memory, no parsing."""
    total = 0
    for name in files:
        with open(name, "rb") as fp:
            total += len(fp.read())
    return total


def bench_read(root: Path, slices: int, size: int, repeats: int, syntax: str) -> None:
    folder = root / f"read-{uids.UID(syntax).name.replace(' ', '_')}"
    paths = make_series(folder, slices, size, syntax)
    files = [str(p) for p in paths]  # slice order, as a series table row lists them
    sitk_read(folder, files)  # warm the file cache
    ours = read_series(files).array
    theirs = sitk.GetArrayFromImage(sitk_read(folder, files))
    assert np.array_equal(ours, theirs), "medsuite and SimpleITK disagree"
    before = load()
    t = medians(
        {
            "raw": lambda: read_raw(files),
            "ours": lambda: read_series(files),
            "two_threads": lambda: read_series(files, workers=2),
            "folder": lambda: read_volume(folder),
            "sitk": lambda: sitk_read(folder, files),
            "sitk_discover": lambda: sitk_read(folder, None),
        },
        repeats,
    )
    name = uids.UID(syntax).name
    print(
        f"\n[{name}] {slices} slices of {size}x{size}, median of {repeats}, load average {before} -> {load()}"
    )
    print(f"  raw bytes of every file (no parsing)   {t['raw']:7.3f} s")
    print(
        f"  medsuite read_series (default)         {t['ours']:7.3f} s   = {t['ours'] / t['raw']:.1f}x raw bytes"
    )
    print(f"  medsuite read_series (2 threads)       {t['two_threads']:7.3f} s")
    print(f"  medsuite read_volume(folder) (+ scan)  {t['folder']:7.3f} s")
    print(
        f"  SimpleITK ImageSeriesReader (files)    {t['sitk']:7.3f} s   medsuite/SimpleITK = {t['ours'] / t['sitk']:.2f}x the time"
    )
    print(
        f"  SimpleITK incl. GetGDCMSeriesFileNames {t['sitk_discover']:7.3f} s   read_volume/SimpleITK = "
        f"{t['folder'] / t['sitk_discover']:.2f}x the time"
    )


def bench_scan(root: Path, n_files: int, repeats: int) -> None:
    folder = root / "scan"
    per_series = 100
    for i in range(max(1, n_files // per_series)):
        rng = np.random.default_rng(i)
        volume = Volume(rng.integers(-1000, 1000, (per_series, 64, 64), dtype=np.int16), (1.0, 0.7, 0.7))
        write_series(volume, folder / f"s{i:03d}", patient_id="BENCH", shuffle_names=True, seed=i)
    files = list(iter_files(folder))
    cores = os.cpu_count() or 1
    print(
        f"\n[scan] header pass over {len(files)} files (64x64 CT slices), {cores} cores, median of {repeats}"
    )
    serial = median_of(lambda: scan_headers(files, workers=1), repeats)
    print(f"  serial                {serial:7.3f} s  ({len(files) / serial:8.0f} files/s)")
    for executor in ("thread", "process"):
        t = median_of(
            lambda executor=executor: scan_headers(files, workers=cores, executor=executor), repeats
        )
        print(
            f"  {executor:8s} x{cores:<2d}          {t:7.3f} s  ({len(files) / t:8.0f} files/s)  speed-up {serial / t:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--scan-files", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsuite-bench-") as tmp:
        root = Path(tmp)
        bench_read(root, args.slices, args.size, args.repeats, uids.ExplicitVRLittleEndian)
        bench_read(root, max(10, args.slices // 5), args.size, args.repeats, uids.RLELossless)
        bench_scan(root, args.scan_files, args.repeats)


if __name__ == "__main__":
    main()
