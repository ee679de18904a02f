"""Sampling speed of medsuite's 2.5D blocks versus an equivalent MONAI pipeline, in one run, one core.

    python bench/bench_data.py            # full run (about a minute)
    python bench/bench_data.py --quick    # smaller volume, fewer samples

A synthetic CT-like volume (int16 HU, 0.75 x 0.75 x 1.25 mm) is stored both as a VolumeCache entry
(memory-mapped .npy, what training reads) and as an uncompressed NIfTI (what MONAI's LoadImage reads).
Both pipelines cut the same thing at the same random world points: 5 axial slices 1 mm apart, 64 x 64 at
1 mm, lung window.

- medsuite: ``SliceStack(k=5, size=64, spacing_mm=1.0, pixel_mm=1.0).sample(volume, point)`` on the
  memory-mapped cache entry (crop first, resample only the crop).
- MONAI with its own caching (the fair comparison, printed first): a ``monai.data.CacheDataset`` whose
  deterministic transforms ``LoadImaged -> EnsureChannelFirstd -> Spacingd(1 mm)`` run once per series and are
  kept in RAM, followed per sample by a crop at the point and ``ScaleIntensityRanged``; the one-off cache fill
  and the RAM it holds per series are printed too.
- MONAI without a cache (reference only: it re-reads and resamples the whole NIfTI for every sample, which
  nobody would train with): ``LoadImage -> EnsureChannelFirst -> Spacing -> SpatialCrop -> ScaleIntensityRange``.

Ratios are printed against the medsuite figure from the same run; absolute figures depend on the machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: figures are per core
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def make_volume(shape: tuple[int, int, int], seed: int = 0):
    """A chest-like CT: air outside an elliptical body, lungs at about -850 HU, noise, some nodules."""
    from medsuite.io.volume import Volume

    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = shape[1] / 2, shape[2] / 2
    body = ((y - cy) / (0.42 * shape[1])) ** 2 + ((x - cx) / (0.47 * shape[2])) ** 2 < 1
    lungs = (((y - cy) / (0.3 * shape[1])) ** 2 + ((np.abs(x - cx) - 0.22 * shape[2]) / (0.17 * shape[2])) ** 2) < 1
    arr = np.where(body, 40, -1000) + np.zeros(shape, dtype=np.int16)
    arr = np.where(lungs & np.ones(shape, bool), -850, arr)
    arr = (arr + rng.normal(0, 20, shape)).astype(np.int16)
    return Volume(arr, (1.25, 0.75, 0.75), (-150.0, -150.0, -300.0), series_uid="1.2.3.bench", modality="CT")


def random_points(volume, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0.2, 0.8, size=(n, 3)) * (np.asarray(volume.shape) - 1)
    return volume.index_to_world(idx)


def rate(fn, points, min_s: float = 2.0) -> tuple[float, float]:
    """Samples per wall-clock second and per CPU second (this process, one thread) of ``fn(point)``,
    cycling over ``points`` until ``min_s`` seconds have passed. The CPU-second figure is what one core
    delivers even when other processes share the machine."""
    fn(points[0])  # warm up (imports, page cache)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        for p in points:
            fn(p)
            n += 1
            if n % 50 == 0 and time.perf_counter() - t0 >= min_s:
                break
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            return n / elapsed, n / max(time.process_time() - c0, 1e-9)


def _crop_at(img, point_lps):
    """The 64 x 64 x 5 voxels (1 mm) of a resampled MONAI image around a world LPS point."""
    from monai.transforms import SpatialCrop

    ras = np.array([-point_lps[0], -point_lps[1], point_lps[2], 1.0])
    ijk = np.linalg.inv(np.asarray(img.affine, dtype=np.float64)) @ ras
    return SpatialCrop(roi_center=np.round(ijk[:3]).astype(int).tolist(), roi_size=(64, 64, 5))(img)


def monai_uncached(nifti: Path):
    """Per sample: read the NIfTI, resample the whole volume, crop, window (no cache)."""
    from monai.transforms import EnsureChannelFirst, LoadImage, ScaleIntensityRange, Spacing

    load, chan = LoadImage(reader="NibabelReader", image_only=True), EnsureChannelFirst()
    spacing = Spacing(pixdim=(1.0, 1.0, 1.0), mode="bilinear")
    window = ScaleIntensityRange(a_min=-1350.0, a_max=150.0, b_min=0.0, b_max=1.0, clip=True)
    return lambda point: window(_crop_at(spacing(chan(load(str(nifti)))), point))


def monai_cache_dataset(nifti: Path):
    """MONAI's own caching: a CacheDataset holds the loaded, resampled series; each sample is a crop of it.

    Returns ``(sample_fn, fill_seconds, cached_bytes)``. ``copy_cache=False`` because the crop does not
    modify the cached image (MONAI's default deep-copies it for every sample, which is far slower)."""
    from monai.data import CacheDataset
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityRange, Spacingd

    deterministic = Compose([LoadImaged("image", reader="NibabelReader", image_only=True), EnsureChannelFirstd("image"),
                             Spacingd("image", pixdim=(1.0, 1.0, 1.0), mode="bilinear")])
    t0 = time.perf_counter()
    dataset = CacheDataset([{"image": str(nifti)}], transform=deterministic, cache_rate=1.0, num_workers=0,
                           copy_cache=False, progress=False)
    fill = time.perf_counter() - t0
    window = ScaleIntensityRange(a_min=-1350.0, a_max=150.0, b_min=0.0, b_max=1.0, clip=True)
    image = dataset[0]["image"]
    return (lambda point: window(_crop_at(dataset[0]["image"], point))), fill, int(image.numel() * image.element_size())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller volume and shorter timings")
    args = ap.parse_args()

    import SimpleITK as sitk
    import torch

    from medsuite.data.augment import Augment
    from medsuite.data.blocks import MultiView, Patch3D, SeriesSlices, SliceStack
    from medsuite.io.cache import VolumeCache

    torch.set_num_threads(1)
    shape = (120, 320, 320) if args.quick else (240, 512, 512)
    min_s = 1.0 if args.quick else 3.0
    with tempfile.TemporaryDirectory(prefix="medsuite-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        vol_mem = make_volume(shape)
        cache = VolumeCache(tmp / "cache")
        vol = cache.get(vol_mem.series_uid, {"bench": 1}, lambda v=vol_mem: v)  # memory-mapped, like training
        nifti = tmp / "scan.nii"
        sitk.WriteImage(vol_mem.to_sitk(), str(nifti))
        del vol_mem
        points = random_points(vol, 200)
        print(f"volume {shape} int16, spacing {vol.spacing} mm; prepared in {time.perf_counter() - t0:.1f} s")
        print(f"one core (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, torch threads {torch.get_num_threads()})\n")

        stack = SliceStack(k=5, size=64, spacing_mm=1.0, pixel_mm=1.0, window="lung")
        aug, rng = Augment(), np.random.default_rng(0)
        series = SeriesSlices(n=16, size=128)
        rows = [
            ("medsuite SliceStack(k=5, 64x64), aug off", rate(lambda p: stack.sample(vol, p), points, min_s)),
            ("medsuite SliceStack(k=5, 64x64), Augment()", rate(lambda p: stack.sample(vol, p, aug=aug, rng=rng), points, min_s)),
            ("medsuite MultiView(views=9, 64x64)", rate(lambda p: MultiView(views=9, size=64).sample(vol, p), points, min_s)),
            ("medsuite Patch3D(32^3 at 1 mm)", rate(lambda p: Patch3D(size=32).sample(vol, p), points, min_s)),
            ("medsuite SeriesSlices(n=16, 128x128)", rate(lambda p: series.sample(vol), points[:3], min_s)),
        ]
        torch.set_num_threads(1)
        cached, fill_s, cached_bytes = monai_cache_dataset(nifti)
        rows.append((f"MONAI CacheDataset (fill {fill_s:.1f} s/series), crop+window", rate(cached, points, min_s)))
        rows.append(("MONAI without cache: Load+Spacing+crop per sample", rate(monai_uncached(nifti), points[: 3 if args.quick else 5], min_s=0.0)))

        ours_wall, ours_cpu = rows[0][1]
        width = max(len(r[0]) for r in rows)
        print(f"{'pipeline':<{width}}  samples/s (wall)  samples/CPU-s  vs SliceStack (CPU)")
        for name, (wall, cpu) in rows:
            print(f"{name:<{width}}  {wall:16.1f}  {cpu:13.1f}  {cpu / ours_cpu:10.3g}x")
        cache_cpu, uncached_cpu = rows[5][1][1], rows[6][1][1]
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nHEADLINE (fair): medsuite SliceStack vs MONAI CacheDataset: {ours_cpu / cache_cpu:.2f}x per CPU second; "
              f"MONAI also spent {fill_s:.1f} s filling its cache and holds {cached_bytes / 2**20:.0f} MiB of RAM per series "
              f"(medsuite: a memory-mapped int16 cache entry, {vol.array.nbytes / 2**20:.0f} MiB on disk, paged in on demand)")
        print(f"reference (unfair to MONAI): vs MONAI without a cache: {ours_cpu / uncached_cpu:.0f}x per CPU second")
        print(f"medsuite SliceStack: {ours_cpu:.0f} samples per CPU second, {ours_wall:.0f} per wall second; "
              f"machine load average {load:.1f}")


if __name__ == "__main__":
    main()
