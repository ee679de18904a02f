"""Reading a CT series: medsuite vs SimpleITK vs a naive pydicom loop vs raw bytes, and cache reload vs decode.

Generates (or reuses) a synthetic 300-slice 512x512 uncompressed int16 CT series, then times, in one run,
each reader (median of --repeats, page cache warm for all of them) and prints the ratios and the load
average (the machine may be shared). Not a test.

    python bench/bench_io.py                       # series in a temp dir, removed afterwards
    python bench/bench_io.py --data /tmp/bench_ct  # generate once, reuse on later runs
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsuite.io.cache import VolumeCache
from medsuite.io.dicom_write import write_series
from medsuite.io.reader import read_series
from medsuite.io.volume import Volume


def phantom(slices: int, size: int, seed: int = 0) -> Volume:
    """A body-like CT: air padding at -2000 (so it is stored as signed int16), soft tissue, lungs, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size - 0.5
    body = (xx / 0.42) ** 2 + (yy / 0.33) ** 2 < 1
    lungs = ((np.abs(xx) - 0.17) / 0.12) ** 2 + (yy / 0.2) ** 2 < 1
    plane = np.where(body, 40.0, -1000.0) + np.where(lungs, -860.0, 0.0)
    plane[(xx**2 + yy**2) > 0.245] = -2000.0
    noise = rng.normal(0, 20, size=(slices, size, size)).astype(np.float32)
    array = np.round(plane[None] + noise).astype(np.int16)
    return Volume(array, spacing=(1.0, 0.7, 0.7), origin=(-180.0, -180.0, -300.0), modality="CT")


def ensure_series(folder: Path, slices: int, size: int) -> list[Path]:
    """The series' files in ``folder``, written first if the folder does not hold that many slices yet."""
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if len(files) == slices:
        return files
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    written = write_series(phantom(slices, size), folder, patient_id="BENCH", shuffle_names=True)
    print(f"generated {len(written)} files in {time.perf_counter() - t0:.1f} s -> {folder}")
    return sorted(written)


def median_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def read_sitk(files: list[Path]) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(files[0].parent))
    reader.SetFileNames(names)
    return sitk.GetArrayFromImage(reader.Execute())


def read_naive_pydicom(files: list[Path]) -> np.ndarray:
    """What many scripts do: dcmread every file, rescale, sort by position along the normal, stack."""
    import pydicom

    slices = []
    for path in files:
        ds = pydicom.dcmread(path)
        row, col = (
            np.asarray(ds.ImageOrientationPatient[:3], float),
            np.asarray(ds.ImageOrientationPatient[3:], float),
        )
        position = float(np.dot(np.cross(row, col), np.asarray(ds.ImagePositionPatient, float)))
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        slices.append((position, hu))
    slices.sort(key=lambda item: item[0])
    return np.stack([hu for _, hu in slices])


def read_raw(files: list[Path]) -> int:
    return sum(len(path.read_bytes()) for path in files)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="folder for the generated series (kept and reused)")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="medsuite-bench-"))
    try:
        files = ensure_series(args.data or scratch / "series", args.slices, args.size)
        mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"series: {len(files)} files, {mb:.0f} MB, {args.size}x{args.size}, cpus={os.cpu_count()}")
        read_raw(files)  # warm the page cache for everyone

        t_raw, _ = median_of(args.repeats, lambda: read_raw(files))
        t_med, volume = median_of(args.repeats, lambda: read_series(files))
        t_sitk, sitk_array = median_of(args.repeats, lambda: read_sitk(files))
        t_naive, naive = median_of(args.repeats, lambda: read_naive_pydicom(files))
        assert volume.shape == naive.shape == sitk_array.shape, (volume.shape, naive.shape, sitk_array.shape)
        assert np.array_equal(np.asarray(volume.array, np.float32), naive), "medsuite and pydicom disagree"
        print(
            f"medsuite volume: {volume.array.dtype}{list(volume.shape)}, {volume.array.nbytes / 1e6:.0f} MB"
        )

        cache = VolumeCache(scratch / "cache")
        uid = volume.series_uid or "1.2.3"
        params = {"reader": "bench"}
        t_store, _ = median_of(1, lambda: cache.get(uid, params, lambda: read_series(files)))
        t_open, cached = median_of(args.repeats, lambda: cache.get(uid, params, lambda: read_series(files)))
        t_touch, _ = median_of(
            args.repeats, lambda: np.array(cache.get(uid, params, lambda: read_series(files)).array)
        )
        assert np.array_equal(np.asarray(cached.array), np.asarray(volume.array))

        load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
        print(f"\nload average {load}; median of {args.repeats}")
        print(f"{'reader':<44}{'median s':>9}{'vs medsuite':>13}")
        rows = [
            ("raw bytes (read every file, no decoding)", t_raw),
            ("medsuite read_series", t_med),
            ("SimpleITK ImageSeriesReader", t_sitk),
            ("naive pydicom loop (dcmread+pixel_array+sort)", t_naive),
            ("cache miss: decode + store", t_store),
            ("cache hit: get (memory-mapped)", t_open),
            ("cache hit: get + copy every voxel", t_touch),
        ]
        for name, seconds in rows:
            print(f"{name:<44}{seconds:>9.3f}{seconds / t_med:>12.2f}x")
        print(
            f"\nSimpleITK / medsuite: {t_sitk / t_med:.2f}   naive pydicom / medsuite: {t_naive / t_med:.2f}"
            f"   medsuite / raw bytes: {t_med / t_raw:.2f}"
        )
        print(
            f"cache reload speed-up over decoding: {t_med / t_touch:.0f}x (all voxels read), "
            f"{t_med / t_open:.0f}x (memory-mapped open)"
        )
        bench_convert(files[0].parent, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def bench_convert(folder: Path, scratch: Path) -> None:
    """DICOM folder -> .nii.gz: medsuite (scan + read + SimpleITK gzip write) vs the dcm2niix binary."""
    import subprocess

    from medsuite.io.load import read_volume
    from medsuite.io.sitk_io import write_nifti

    t0 = time.perf_counter()
    write_nifti(read_volume(folder), scratch / "medsuite.nii.gz")
    t_ours = time.perf_counter() - t0
    try:
        import dcm2niix
    except ImportError:
        print("dcm2niix not installed; convert comparison skipped")
        return
    out = scratch / "dcm2niix"
    out.mkdir()
    t0 = time.perf_counter()
    subprocess.run(
        [str(dcm2niix.bin), "-z", "y", "-b", "n", "-f", "x", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
    )
    t_theirs = time.perf_counter() - t0
    print(
        f"\nconvert to .nii.gz: medsuite {t_ours:.2f} s, dcm2niix {t_theirs:.2f} s (ratio {t_ours / t_theirs:.2f})"
    )


if __name__ == "__main__":
    main()
