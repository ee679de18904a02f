"""Viewer speed on the server: time to open a case (volume from the memmap cache + three views) and to change a
slice (three linked views re-rendered, with and without an attribution overlay).

Run on a scored demo:  python bench/viewer_render.py --db DEMO/scores/medsuite.db [--cases 5]
Without --db it uses a synthetic 512x512 CT of 300 slices. The volume cache goes to a temp folder (the
database's folder is only read). Prints medians; the machine's load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from medsuite.io.cache import VolumeCache  # noqa: E402
from medsuite.io.volume import Volume  # noqa: E402
from medsuite.viewer import images

PARAMS = {"viewer": 1, "reader": "read_volume"}
WINDOW = (1500.0, -600.0)


def three_views(arr: np.ndarray, geo: images.Geometry, cursor: tuple[int, int, int], nod, overlay=None) -> None:
    for axis, p in enumerate(images.PLANES):
        ov = None
        if overlay is not None:
            ov = images.overlay_plane(overlay, (cursor[0] - 2, cursor[1] - 30, cursor[2] - 30), arr.shape, p,
                                      cursor[axis], 1.0)
        images.render(arr, geo, p, cursor, WINDOW, nodule_zyx=nod, nodule_radius_mm=8.0, overlay=ov)


def measure(vol_loader, uid: str, nod_world, cache: VolumeCache) -> dict[str, float]:
    t = time.perf_counter()
    vol = cache.get(uid, PARAMS, vol_loader)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    vol = cache.get(uid, PARAMS, vol_loader)
    geo = images.Geometry(tuple(vol.spacing), bool(vol.direction[2, 0] >= 0))
    nod = np.asarray(vol.world_to_index(np.asarray(nod_world, float))) if nod_world is not None else np.array(vol.shape) / 2
    c = tuple(int(v) for v in np.clip(np.rint(nod), 0, np.array(vol.shape) - 1))
    three_views(vol.array, geo, c, tuple(nod))
    warm = time.perf_counter() - t
    rng = np.random.default_rng(0)
    attr = rng.random((8, 64, 64)).astype(np.float32)
    plain, withov = [], []
    for dz in range(-3, 4):
        cur = (int(np.clip(c[0] + dz, 0, vol.shape[0] - 1)), c[1], c[2])
        t = time.perf_counter()
        three_views(vol.array, geo, cur, tuple(nod))
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        three_views(vol.array, geo, cur, tuple(nod), overlay=attr)
        withov.append(time.perf_counter() - t)
    return {"cold_open": cold, "open": warm, "slice": float(np.median(plain)), "slice_overlay": float(np.median(withov)),
            "shape": vol.shape}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", type=Path, default=None, help="scored database (predictions + series.source)")
    ap.add_argument("--cases", type=int, default=5)
    a = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as d:
        cache = VolumeCache(d)
        if a.db is None:
            rng = np.random.default_rng(0)
            vol = Volume(rng.normal(-700, 200, (300, 512, 512)).astype(np.int16), (1.0, 0.7, 0.7),
                         origin=(0.0, 0.0, 0.0), series_uid="1.2.3.bench", modality="CT")
            results.append(measure(lambda: vol, vol.series_uid, None, cache))
        else:
            from medsuite.io.load import read_volume

            with sqlite3.connect(f"file:{a.db}?mode=ro", uri=True) as conn:
                rows = conn.execute(
                    "SELECT p.series_uid, s.source, p.x_mm, p.y_mm, p.z_mm FROM predictions p JOIN series s "
                    "USING (series_uid) GROUP BY p.series_uid ORDER BY MAX(p.probability) DESC LIMIT ?",
                    (a.cases,)).fetchall()
            for uid, src, x, y, z in rows:
                results.append(measure(lambda s=src, u=uid: read_volume(s, u), uid, (x, y, z), cache))
    ms = {k: np.median([r[k] for r in results]) * 1000 for k in ("cold_open", "open", "slice", "slice_overlay")}
    print(f"{len(results)} case(s), shapes {sorted({r['shape'] for r in results})}")
    print(f"open a case, first time (read DICOM + write the memmap cache): median {ms['cold_open']:.0f} ms")
    print(f"open a case (cache hit + 3 views): median {ms['open']:.0f} ms")
    print(f"change a slice (3 views): median {ms['slice']:.1f} ms; with an attribution overlay {ms['slice_overlay']:.1f} ms")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")


if __name__ == "__main__":
    main()
