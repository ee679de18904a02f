"""Cohort B: a second, differently built synthetic cohort from the same real LIDC-IDRI annotations.

The nodule model's defaults were chosen by cross-validation on the demo cohort; this generator exists to check
that they were not tuned to that generator. Everything that makes the image differs from `medsuite.data.demo`:

- **nodule shape**: the readers' *consensus* (voxels inside at least half of the readers' outlines), not one
  reader's outline; all of a scan's usable nodules (up to ``max_nodules``), not at most four;
- **nodule appearance**: from the nodule's *median* texture and calcification ratings (not one reader's), with
  other HU ranges, a smooth internal texture and a box-shaped slice profile;
- **anatomy**: a simple analytic chest (elliptic body, fat, muscle, one lung with a smooth density field,
  straight vessel segments, a rib ring, a mediastinum) instead of the demo's branching trees;
- **acquisition**: a grid of its own (0.6-0.8 mm pixels, 0.625-2.5 mm slices; not the source scan's), a sharper
  reconstruction kernel (edge enhancement, less smoothing of the noise) and other noise levels;
- **split**: by patient, 60 % / 12 % / 28 % train / valid / test (``--valid``, ``--test``).

    python bench/cohort_b.py /tmp/cohort_b -n 1000 -w 2

Writes ``dicom/<patient>/``, ``nodules.csv`` (the nodule table with ``malignancy``, ``malignancy_mean``,
``malignancy_r1..r4``, ``n_readers``, ``split``) and ``series.csv`` like the demo cohort.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydicom.uid import generate_uid
from scipy import ndimage

from medsuite.data.demo import MAX_DIAMETER_MM, indexed_lidc_copy, reader_ratings
from medsuite.data.lidc import RATING_COLUMNS, LidcDatabase, annotation_mask, lidc_nodules


def consensus_mask(db: LidcDatabase, annotation_ids: list[int]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Voxels inside at least half of the readers' outlines, on the source scan's grid (z, y, x)."""
    parts = [annotation_mask(db, a) for a in annotation_ids]
    spacing = parts[0][1]
    dz = spacing[0]
    lo = np.array([min(int(round(o[2] / dz)) for _, _, o in parts), min(int(o[1]) for _, _, o in parts),
                   min(int(o[0]) for _, _, o in parts)])
    hi = np.array([max(int(round(o[2] / dz)) + m.shape[0] for m, _, o in parts), max(int(o[1]) + m.shape[1] for m, _, o in parts),
                   max(int(o[0]) + m.shape[2] for m, _, o in parts)])
    votes = np.zeros(hi - lo, dtype=np.int16)
    for m, _, o in parts:
        z0, y0, x0 = int(round(o[2] / dz)) - lo[0], int(o[1]) - lo[1], int(o[0]) - lo[2]
        votes[z0:z0 + m.shape[0], y0:y0 + m.shape[1], x0:x0 + m.shape[2]] += m
    mask = votes * 2 >= len(parts)
    if not mask.any():  # readers disagree completely: the largest outline
        mask = votes > 0
    return mask, spacing


def occupancy(mask: np.ndarray, src_spacing: tuple[float, float, float], spacing: tuple[float, float, float],
              thickness: float) -> np.ndarray:
    """The mask resampled to ``spacing`` with a box slice profile of width ``thickness`` (partial volume)."""
    src = np.pad(mask.astype(np.float32), 2)
    src = ndimage.gaussian_filter(src, 0.5)
    com = np.array(ndimage.center_of_mass(src))
    extent = np.asarray(src.shape) * np.asarray(src_spacing) + 2 * thickness
    half = np.ceil(extent / 2 / np.asarray(spacing)).astype(int)
    grids = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing, strict=True)]
    zz, yy, xx = np.meshgrid(*grids, indexing="ij")
    offsets = np.linspace(-thickness / 2, thickness / 2, 4)
    occ = np.zeros(zz.shape, dtype=np.float32)
    for off in offsets:
        coords = np.stack([com[0] + (zz + off) / src_spacing[0], com[1] + yy / src_spacing[1], com[2] + xx / src_spacing[2]])
        occ += ndimage.map_coordinates(src, coords, order=1, mode="constant", cval=0.0) / len(offsets)
    return np.clip(occ * 1.15 - 0.075, 0, 1)


def nodule_values(occ: np.ndarray, spacing: tuple[float, float, float], texture: float, calcification: float,
                  rng: np.random.Generator) -> np.ndarray:
    inside = occ > 0.5
    depth = ndimage.distance_transform_edt(inside, sampling=spacing) if inside.any() else np.zeros(occ.shape)
    rel = depth / (depth.max() + 1e-6)
    smooth = ndimage.gaussian_filter(rng.standard_normal(occ.shape).astype(np.float32), 1.5)
    smooth /= smooth.std() + 1e-6
    t = int(round(texture))
    if t <= 2:
        hu = rng.uniform(-700, -350) + 50 * smooth + 120 * rel
    elif t == 3:
        hu = np.where(rel > rng.uniform(0.3, 0.7), rng.uniform(-60, 40), rng.uniform(-650, -400)) + 40 * smooth
    else:
        hu = rng.uniform(-30, 70) + 20 * smooth - 60 * (rel < 0.2)
    c = int(round(calcification))
    if c < 6:
        dense = {1: rel > 0.6, 2: np.abs(rel - 0.5) < 0.12, 3: rel > 0.1, 4: rel > 0.75, 5: rel > 0.45}[max(1, c)]
        if c == 1:
            dense = dense & (smooth > 0.6)
        hu = np.where(dense, rng.uniform(350, 900), hu)
    return hu.astype(np.float32)


def chest(shape: tuple[int, int, int], spacing: tuple[float, float, float], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An analytic chest around one lung: HU (z, y, x) float32 and the lung mask."""
    nz, ny, nx = shape
    z = (np.arange(nz) - nz / 2) * spacing[0]
    y = (np.arange(ny) - ny / 2) * spacing[1]
    x = (np.arange(nx) - nx / 2) * spacing[2]
    Y, X = np.meshgrid(y, x, indexing="ij")
    a, b = rng.uniform(95, 125), rng.uniform(70, 95)       # the lung (in-plane semi-axes, mm), centred
    bx, by = a + rng.uniform(25, 45), b + rng.uniform(20, 40)  # the body around it
    off = rng.uniform(-15, 15, 2)
    lung2d = ((X - off[0]) / a) ** 2 + ((Y - off[1]) / b) ** 2 < 1
    body2d = ((X - off[0] - a * 0.35) / (bx + a * 0.35)) ** 2 + ((Y - off[1]) / by) ** 2 < 1
    hu2d = np.where(body2d, rng.uniform(-120, -80), -1000.0)
    muscle = body2d & (((X - off[0]) / (a + 12)) ** 2 + ((Y - off[1]) / (b + 12)) ** 2 < 1)
    hu2d = np.where(muscle, rng.uniform(30, 60), hu2d)
    med = (X - off[0] > a * 0.75) & body2d & ~lung2d
    hu2d = np.where(med, rng.uniform(20, 50), hu2d)
    hu = np.repeat(hu2d[None].astype(np.float32), nz, axis=0)
    # ribs: a ring of bony ellipses outside the lung, every ~25 mm along z
    ring = (((X - off[0]) / (a + 6)) ** 2 + ((Y - off[1]) / (b + 6)) ** 2 < 1) & ~lung2d
    phase = rng.uniform(0, 25)
    rib_z = (np.abs(((z - phase) % 25) - 12.5) > 8)[:, None, None]
    hu = np.where(ring[None] & rib_z, rng.uniform(500, 800), hu)
    lung = np.repeat(lung2d[None], nz, axis=0)
    field = ndimage.zoom(rng.standard_normal((max(2, nz // 8), max(2, ny // 16), max(2, nx // 16))).astype(np.float32),
                         (nz / max(2, nz // 8), ny / max(2, ny // 16), nx / max(2, nx // 16)), order=1)[:nz, :ny, :nx]
    base = rng.uniform(-890, -830) + 25 * field + 40 * ((Y - off[1]) / b)[None]
    hu = np.where(lung, base, hu)
    # vessels: straight segments of 0.6-3 mm radius crossing the lung
    Z = z[:, None, None]
    for _ in range(int(rng.integers(25, 45))):
        p0 = np.array([rng.uniform(z[0], z[-1]), rng.uniform(-b, b) + off[1], rng.uniform(-a, a) + off[0]])
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        r = rng.uniform(0.6, 3.0)
        rel = np.stack(np.broadcast_arrays(Z - p0[0], Y[None] - p0[1], X[None] - p0[2])).astype(np.float32)
        t = np.tensordot(d, rel, axes=1)
        dist2 = (rel * rel).sum(0) - t * t
        vessel = (dist2 < r * r) & lung
        hu = np.where(vessel, rng.uniform(20, 60), hu)
    return hu.astype(np.float32), lung


def scanner(hu: np.ndarray, spacing: tuple[float, float, float], noise: float, rng: np.random.Generator) -> np.ndarray:
    """Sharp kernel: light blur, edge enhancement, noise that is only lightly correlated."""
    img = ndimage.gaussian_filter(hu, (0, 0.6, 0.6))
    img = img + 0.6 * (img - ndimage.gaussian_filter(img, (0, 1.5, 1.5)))
    n = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), (0, 0.4, 0.4))
    img = img + n * (noise / (n.std() + 1e-6))
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def make_patient(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from medsuite.io.dicom_write import write_series
    from medsuite.io.volume import Volume

    done = Path(spec["out"]) / "patients" / f"{spec['patient_id']}.json"
    if done.is_file():  # made by an earlier, interrupted run
        saved = json.loads(done.read_text())
        return saved["rows"], saved["series"]
    rng = np.random.default_rng(spec["seed"])
    ps = float(rng.choice([0.6, 0.7, 0.8]))
    dz = float(rng.choice([0.625, 1.0, 1.25, 2.0, 2.5], p=[0.15, 0.3, 0.25, 0.2, 0.1]))
    thickness = dz * float(rng.choice([1.0, 1.0, 1.5]))
    spacing = (dz, ps, ps)
    with LidcDatabase(spec["db"]) as db:
        occs = []
        for n in spec["nodules"]:
            mask, src_sp = consensus_mask(db, n["annotation_ids"])
            occs.append(occupancy(mask, src_sp, spacing, thickness))
    size = 224
    n_slices = int(np.clip(np.ceil(max(48.0, max(o.shape[0] for o in occs) * dz + 16) / dz), 16, 200))
    hu, lung = chest((n_slices, size, size), spacing, rng)
    inner = ndimage.distance_transform_edt(np.pad(lung, ((0, 0), (1, 1), (1, 1))), sampling=spacing)[:, 1:-1, 1:-1]
    rows, placed = [], []
    origin = np.array([-(size - 1) / 2 * ps + rng.uniform(-20, 20), -(size - 1) / 2 * ps + rng.uniform(-20, 20),
                       rng.uniform(-250, -50)])
    for k, (n, occ) in enumerate(zip(spec["nodules"], occs, strict=True)):
        r = 0.5 * max(np.ptp(np.argwhere(occ > 0.5), axis=0) * np.asarray(spacing)) + 1 if (occ > 0.5).any() else 2.0
        cand = np.argwhere(inner > r + 2)
        cand = cand[(cand[:, 0] * dz > r + 2) & ((n_slices - 1 - cand[:, 0]) * dz > r + 2)]
        c = None
        for _ in range(60):
            if not len(cand):
                break
            t = cand[rng.integers(len(cand))]
            if all(np.linalg.norm((t - p) * np.asarray(spacing)) > r + q + 3 for p, q in placed):
                c = t
                break
        if c is None:
            continue
        placed.append((c, r))
        values = nodule_values(occ, spacing, n["texture"], n["calcification"], rng)
        half = np.asarray(occ.shape) // 2
        lo = c - half
        src = tuple(slice(max(0, -lo[a]), occ.shape[a] - max(0, lo[a] + occ.shape[a] - hu.shape[a])) for a in range(3))
        dst = tuple(slice(max(0, lo[a]), min(hu.shape[a], lo[a] + occ.shape[a])) for a in range(3))
        o = occ[src]
        hu[dst] = hu[dst] * (1 - o) + values[src] * o
        com = np.array([s.start for s in dst], float) + np.array(ndimage.center_of_mass(o))
        world = origin + com[::-1] * np.array([ps, ps, dz])
        rows.append({"nodule_id": f"{spec['patient_id']}-b{k + 1}", "patient_id": spec["patient_id"],
                     "x_mm": round(float(world[0]), 3), "y_mm": round(float(world[1]), 3), "z_mm": round(float(world[2]), 3),
                     "diameter_mm": round(float(n["diameter_mm"]), 3), "label": n["label"],
                     "malignancy": float(n["malignancy_median"]), "malignancy_mean": float(n["malignancy_mean"]),
                     "n_readers": int(n["n_readers"]), "split": spec["split"],
                     **{f"malignancy_r{j + 1}": v for j, v in enumerate(n["ratings"])},
                     "slice_thickness": thickness, "pixel_spacing": ps, "manufacturer": spec["manufacturer"],
                     # what the image was drawn from (bench/nodule_ceiling.py): the median ratings, the consensus outline
                     **n["characteristics"], "rendered_texture": int(round(n["texture"])),
                     "rendered_calcification": int(round(n["calcification"])),
                     "rendered_diameter_mm": round(caliper_mm(occ > 0.5, ps), 3)})
    noise = float(rng.uniform(18, 55) * np.sqrt(1.25 / thickness))
    array = scanner(hu, spacing, noise, rng)
    study_uid, series_uid = (str(generate_uid(entropy_srcs=["cohort-b", str(spec["seed"]), part])) for part in ("study", "series"))
    volume = Volume(array, spacing=spacing, origin=tuple(origin), series_uid=series_uid, study_uid=study_uid, modality="CT",
                    meta={"manufacturer": spec["manufacturer"], "slice_thickness": thickness})
    out = Path(spec["out"]) / "dicom" / spec["patient_id"]
    write_series(volume, out, patient_id=spec["patient_id"], study_uid=study_uid, series_uid=series_uid, seed=spec["seed"])
    for r in rows:
        r["series_uid"] = series_uid
    series = {"series_uid": series_uid, "patient_id": spec["patient_id"], "split": spec["split"],
              "label": "malignant" if any(r["label"] == "malignant" for r in rows) else "benign",
              "path": f"dicom/{spec['patient_id']}", "n_nodules": len(rows)}
    done.parent.mkdir(parents=True, exist_ok=True)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": rows, "series": series}))
    tmp.replace(done)
    return rows, series


def caliper_mm(inside: np.ndarray, pixel_mm: float) -> float:
    """The largest in-plane extent (mm) of a rendered nodule over 36 directions, as the demo cohort records it."""
    if not inside.any():
        return 0.0
    pts = np.argwhere(inside)[:, 1:] * pixel_mm
    return float(np.max([np.ptp(pts @ np.array([np.cos(a), np.sin(a)])) for a in np.linspace(0, np.pi, 36)]))


def split_of(u: float, valid: float, test: float) -> str:
    """The split of a patient drawn ``u`` ~ U(0, 1): test, valid, else train."""
    return "test" if u < test else "valid" if u < test + valid else "train"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("-n", "--patients", type=int, default=800)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-nodules", type=int, default=6)
    ap.add_argument("-w", "--workers", type=int, default=2)
    ap.add_argument("--valid", type=float, default=0.12, help="fraction of patients in the valid split")
    ap.add_argument("--test", type=float, default=0.28, help="fraction of patients in the test split")
    args = ap.parse_args()
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    with LidcDatabase() as db:
        table = lidc_nodules(db)
        table = table[table["diameter_mm"] <= MAX_DIAMETER_MM]
        ann = db.annotations(sorted(table["scan_id"].unique())).set_index("annotation_id")
        db_path = str(db.path)
    scans = rng.permutation(sorted(table["scan_id"].unique()))[: args.patients]
    specs = []
    for i, scan_id in enumerate(scans):
        nods = table[table["scan_id"] == scan_id]
        if len(nods) > args.max_nodules:
            nods = nods.iloc[np.sort(rng.choice(len(nods), args.max_nodules, replace=False))]
        nodules = []
        for row in nods.to_dict("records"):
            ids = [int(a) for a in str(row["annotation_ids"]).split(",")]
            nodules.append({"annotation_ids": ids, "diameter_mm": row["diameter_mm"], "label": row["label"],
                            "malignancy_median": row["malignancy_median"], "malignancy_mean": row["malignancy_mean"],
                            "n_readers": row["n_readers"], "texture": row["texture"], "calcification": row["calcification"],
                            "ratings": reader_ratings(ann, ids),
                            "characteristics": {c: row[c] for c in RATING_COLUMNS if c != "malignancy"}})
        specs.append({"patient_id": f"B-{i + 1:04d}", "seed": int(rng.integers(2**31)), "nodules": nodules,
                      "split": split_of(rng.random(), args.valid, args.test), "out": str(args.out),
                      "manufacturer": str(rng.choice(["VENDOR-A", "VENDOR-B", "VENDOR-C"]))})
    (args.out / "dicom").mkdir(parents=True, exist_ok=True)
    with indexed_lidc_copy(db_path, args.out) as fast:
        for s in specs:
            s["db"] = fast
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(make_patient, specs, chunksize=4))
    nodules = pd.DataFrame([r for rows, _ in results for r in rows])
    series = pd.DataFrame([s for _, s in results])
    nodules.to_csv(args.out / "nodules.csv", index=False)
    series.to_csv(args.out / "series.csv", index=False)
    summary = {"patients": len(specs), "nodules": len(nodules), "by_split": nodules["split"].value_counts().to_dict(),
               "malignant": int((nodules["label"] == "malignant").sum()), "seconds": round(time.time() - t0, 1)}
    (args.out / "cohort.json").write_text(json.dumps(summary, indent=1))
    print(summary)


if __name__ == "__main__":
    main()
