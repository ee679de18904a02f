"""Viewer speed: server time to change a slice (three linked views rendered) and to open a case (volume from
the memmap cache + first render), on a 512x512 CT of 300 slices. Run: python bench/viewer_render.py"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "viewer"))
import images  # noqa: E402

from medsuite.io.cache import VolumeCache  # noqa: E402
from medsuite.io.volume import Volume  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    arr = (rng.normal(-700, 200, (300, 512, 512))).astype(np.int16)
    vol = Volume(arr, (1.0, 0.7, 0.7), origin=(0.0, 0.0, 0.0), series_uid="1.2.3.bench", modality="CT")
    with tempfile.TemporaryDirectory() as d:
        cache = VolumeCache(d)
        cache.get(vol.series_uid, {"viewer": 1}, lambda: vol)  # fill the cache (as the first ever open does)
        t0 = time.perf_counter()
        cached = cache.get(vol.series_uid, {"viewer": 1}, lambda: vol)
        geo = images.Geometry(tuple(cached.spacing))
        nod = (150.0, 256.0, 256.0)
        first = [images.render(cached.array, geo, p, (150, 256, 256), (1500, -600), nodule_zyx=nod, nodule_radius_mm=8)
                 for p in images.PLANES]
        open_s = time.perf_counter() - t0
        times = []
        for z in range(100, 140):
            t = time.perf_counter()
            for p in images.PLANES:
                images.render(cached.array, geo, p, (z, 256, 256), (1500, -600), nodule_zyx=nod, nodule_radius_mm=8)
            times.append(time.perf_counter() - t)
        print(f"open a case (cache hit + 3 views): {open_s * 1000:.0f} ms; views {[f.shape for f in first]}")
        print(f"change a slice (3 views re-rendered): median {np.median(times) * 1000:.1f} ms, "
              f"p95 {np.percentile(times, 95) * 1000:.1f} ms over {len(times)} slices")


if __name__ == "__main__":
    main()
