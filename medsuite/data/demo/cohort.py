"""The offline demo cohort: synthetic chest CT DICOM series holding real LIDC-IDRI nodules.

Each demo patient is built from one real LIDC-IDRI scan: its pixel spacing, slice spacing, slice
thickness and contrast flag, and up to ``max_nodules`` of its real nodules (those the default label rule
labels, 3-30 mm). The thorax is synthetic (`phantom`); each nodule's shape is one reader's real outline,
its appearance follows that reader's texture/calcification ratings, and its label is the nodule's real
consensus malignancy. Output (``OUT``): ``dicom/<patient>/`` (one CT series each; some RLE-compressed,
some with shuffled extension-less file names), ``nodules.csv`` (nodule table with a patient-level
``split``), ``series.csv`` (series-label table: "malignant" when the patient has a malignant nodule) and
``cohort.json`` (parameters and counts). Deterministic for a given ``seed`` (pixels and tables).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medsuite.data.lidc import BENIGN, MALIGNANT, LidcDatabase, lidc_nodules
from medsuite.io.atomic import atomic_dir, atomic_path, atomic_write_json, remove_stale_temps, temp_path_for
from medsuite.io.workers import worker_pool

MANUFACTURERS = (("GE MEDICAL SYSTEMS", 0.5, 14.0), ("SIEMENS", 0.25, 12.0), ("TOSHIBA", 0.13, 16.0),
                 ("Philips", 0.12, 13.0))  # name, share, noise (HU at 2.5 mm, average habitus)
SPLIT_FRACTIONS = (("test", 0.33), ("valid", 0.15))  # the rest is train
MAX_DIAMETER_MM = 30.0  # larger lesions are masses, not nodules (Fleischner glossary)
UID_ROOT = "medsuite-demo"
RLE_SHARE = 0.06  # share of series written RLE-compressed
READER_SLOTS = 4  # LIDC-IDRI had four readers: columns malignancy_r1 .. malignancy_r4 of the nodule table


@dataclass(frozen=True)
class PatientSpec:
    """Everything one worker needs to build one patient's series (picklable, no open handles)."""

    index: int
    patient_id: str
    seed: int
    scan: dict[str, Any]
    nodules: list[dict[str, Any]]
    size: int
    manufacturer: str
    noise_hu: float
    transfer_syntax: str
    shuffle_names: bool
    split: str
    out_dir: str
    db_path: str
    study_date: str = "20240101"
    slab_mm: float = 40.0
    extra: dict[str, Any] = field(default_factory=dict)


class DemoError(ValueError):
    """A bad demo-cohort request (output folder, sizes); the message names the path or parameter."""


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[UID_ROOT, *[str(p) for p in parts]]))


def _atomic_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _pick_scans(db: LidcDatabase, patients: int, max_nodules: int, rng: np.random.Generator) -> list[tuple[dict, pd.DataFrame]]:
    """Random LIDC scans with at least one usable (labelled, 3-30 mm) nodule, with those nodules."""
    scans = db.scans()
    annotated = set(db.annotations()["scan_id"])
    order = [int(s) for s in rng.permutation(sorted(annotated))]
    chosen: list[tuple[dict, pd.DataFrame]] = []
    start = 0
    while len(chosen) < patients and start < len(order):
        batch = order[start:start + max(2 * (patients - len(chosen)), 8)]
        start += len(batch)
        table = lidc_nodules(db, scan_ids=batch)
        table = table[table["diameter_mm"] <= MAX_DIAMETER_MM]
        for scan_id in batch:
            nods = table[table["scan_id"] == scan_id]
            if len(nods) == 0:
                continue
            if len(nods) > max_nodules:
                nods = nods.iloc[np.sort(rng.choice(len(nods), size=max_nodules, replace=False))]
            chosen.append((scans[scans["scan_id"] == scan_id].iloc[0].to_dict(), nods))
            if len(chosen) == patients:
                break
    if len(chosen) < patients:
        raise DemoError(f"patients={patients}: the LIDC database has only {len(chosen)} scans with usable nodules")
    return chosen


def reader_ratings(annotations: pd.DataFrame, annotation_ids: list[int]) -> list[float]:
    """The malignancy rating of each reader outline of one nodule, in `READER_SLOTS` slots (NaN where no reader).

    LIDC-IDRI readers are anonymous: slot k is the nodule's k-th outline (by annotation id), not a person."""
    ratings = [float(annotations.loc[a, "malignancy"]) for a in sorted(annotation_ids)][:READER_SLOTS]
    return ratings + [float("nan")] * (READER_SLOTS - len(ratings))


def _assign_splits(counts: list[int], rng: np.random.Generator) -> list[str]:
    """Patient-level split hitting the nodule fractions of SPLIT_FRACTIONS (test ≈ 33 % of nodules)."""
    total = sum(counts)
    splits = ["train"] * len(counts)
    order = rng.permutation(len(counts))
    pos = 0
    for name, frac in SPLIT_FRACTIONS:
        got = 0
        while pos < len(order) and got < frac * total:
            splits[order[pos]] = name
            got += counts[order[pos]]
            pos += 1
    return splits


def plan_cohort(out: Path, patients: int, seed: int, *, size: int = 256, max_nodules: int = 4, slab_mm: float = 40.0,
                rle_share: float = RLE_SHARE, shuffle_share: float = 0.3,
                db_path: str | Path | None = None) -> list[PatientSpec]:
    """Decide every patient (source scan, nodules and the reader outline to render, scanner, split)."""
    from pydicom import uid as uids

    rng = np.random.default_rng(seed)
    with LidcDatabase(db_path) as db:
        picked = _pick_scans(db, patients, max_nodules, rng)
        ann = db.annotations([int(s["scan_id"]) for s, _ in picked]).set_index("annotation_id")
        path = str(db.path)
    splits = _assign_splits([len(n) for _, n in picked], rng)
    names, shares, noises = zip(*MANUFACTURERS, strict=True)
    specs = []
    for i, ((scan, nods), split) in enumerate(zip(picked, splits, strict=True)):
        nodules = []
        for row in nods.to_dict("records"):
            ann_ids = [int(a) for a in str(row["annotation_ids"]).split(",")]
            ann_id = int(rng.choice(ann_ids))
            reader = ann.loc[ann_id]
            nodules.append({**{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()},
                            "annotation_id": ann_id, "reader_texture": int(reader["texture"]),
                            "reader_calcification": int(reader["calcification"]),
                            "reader_ratings": reader_ratings(ann, ann_ids)})
        m = int(rng.choice(len(names), p=np.asarray(shares) / sum(shares)))
        # RLE for a few series: pydicom's own RLE encoder is slow (~0.2 s a 256x256 slice)
        syntax = uids.RLELossless if rng.random() < rle_share else uids.ExplicitVRLittleEndian
        specs.append(PatientSpec(
            index=i, patient_id=f"DEMO-{i + 1:04d}", seed=int(rng.integers(2**31)),
            scan={k: (v.item() if isinstance(v, np.generic) else v) for k, v in scan.items()},
            nodules=nodules, size=size, manufacturer=names[m], noise_hu=float(noises[m]),
            transfer_syntax=str(syntax), shuffle_names=bool(rng.random() < shuffle_share), split=split,
            out_dir=str(out), db_path=path, study_date=f"2024{1 + i % 12:02d}{1 + i % 28:02d}", slab_mm=slab_mm,
        ))
    return specs


def make_patient(spec: PatientSpec) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Build and write one patient's series; returns its nodule rows and its series row."""
    from medsuite.data.demo.nodules import insert, nodule_hu, nodule_occupancy, place_nodules
    from medsuite.data.demo.phantom import finish, render_thorax, sample_thorax
    from medsuite.io.dicom_write import write_series
    from medsuite.io.volume import Volume

    rng = np.random.default_rng(spec.seed)
    scan = spec.scan
    ps = float(scan["pixel_spacing"])
    thickness = float(scan["slice_thickness"])
    dz = float(scan["slice_spacing"]) if np.isfinite(scan["slice_spacing"]) and scan["slice_spacing"] > 0 else thickness
    spacing = (dz, ps, ps)
    thorax = sample_thorax(rng, contrast=bool(scan["contrast_used"]))
    with LidcDatabase(spec.db_path) as db:
        occs = [nodule_occupancy(db, n["annotation_id"], spacing, thickness) for n in spec.nodules]
    z_extent = max(spec.slab_mm, max(o.shape[0] for o in occs) * dz + 8.0)
    n_slices = int(np.clip(np.ceil(z_extent / dz), 8, 160))
    size = spec.size
    fov = size * ps
    if fov >= 2 * thorax.body_a + 20:
        cx = 0.0
    else:  # targeted reconstruction centred on one lung
        side = float(rng.choice([-1.0, 1.0]))
        inner = thorax.body_a - thorax.fat - thorax.muscle
        cx = side * min((thorax.mediastinum_half + inner) / 2 + 10, inner - fov / 2 + 25)
    origin = np.array([cx - (size - 1) / 2 * ps, -(size - 1) / 2 * ps + 5.0, rng.uniform(-200, -120)])
    xs = origin[0] + np.arange(size) * ps
    ys = origin[1] + np.arange(size) * ps
    zs = origin[2] + np.arange(n_slices) * dz
    hu, lung = render_thorax(thorax, zs, ys, xs, spacing, rng)
    radii = [0.5 * max(np.ptp(np.argwhere(o > 0.5), axis=0) * np.asarray(spacing)) + 1.0 if (o > 0.5).any() else 2.0
             for o in occs]
    centres = place_nodules(lung, spacing, radii, rng)
    volume_geom = Volume(np.zeros((1, 1, 1), np.int16), spacing=spacing, origin=tuple(origin))
    rows = []
    for k, (nod, occ, centre) in enumerate(zip(spec.nodules, occs, centres, strict=True)):
        if centre is None:
            continue
        values = nodule_hu(occ, spacing, nod["reader_texture"], nod["reader_calcification"], rng)
        com = insert(hu, occ, values, centre)
        x, y, z = volume_geom.index_to_world(com)
        inside = occ > 0.5
        rendered_d = 0.0
        if inside.any():
            pts = np.argwhere(inside)[:, 1:] * ps
            rendered_d = float(np.max([np.ptp(pts @ np.array([np.cos(a), np.sin(a)])) for a in np.linspace(0, np.pi, 36)]))
        rows.append({
            "nodule_id": f"{spec.patient_id}-n{k + 1}", "patient_id": spec.patient_id,
            "x_mm": round(float(x), 3), "y_mm": round(float(y), 3), "z_mm": round(float(z), 3),
            "diameter_mm": round(float(nod["diameter_mm"]), 3), "label": str(nod["label"]),
            "malignancy": float(nod["malignancy_median"]), "malignancy_mean": float(nod["malignancy_mean"]),
            "n_readers": int(nod["n_readers"]), "split": spec.split,
            **{f"malignancy_r{k + 1}": r for k, r in enumerate(nod["reader_ratings"])},
            "texture": nod["texture"], "calcification": nod["calcification"], "subtlety": nod["subtlety"],
            "sphericity": nod["sphericity"], "margin": nod["margin"], "lobulation": nod["lobulation"],
            "spiculation": nod["spiculation"], "internal_structure": nod["internal_structure"],
            "rendered_texture": nod["reader_texture"], "rendered_calcification": nod["reader_calcification"],
            "rendered_diameter_mm": round(rendered_d, 3),
            "manufacturer": spec.manufacturer, "slice_thickness": thickness, "pixel_spacing": ps,
            "lidc_scan_id": int(scan["scan_id"]), "lidc_annotation_id": int(nod["annotation_id"]),
            "lidc_nodule_id": nod["nodule_id"],
        })
    noise = float(np.clip(spec.noise_hu * np.sqrt(2.5 / thickness) * thorax.body_a / 155.0, 6.0, 45.0))
    array = finish(hu, spacing, thickness, noise, rng)
    study_uid, series_uid = _uid(spec.seed, spec.patient_id, "study"), _uid(spec.seed, spec.patient_id, "series")
    volume = Volume(array, spacing=spacing, origin=tuple(origin), series_uid=series_uid, study_uid=study_uid,
                    modality="CT", meta={"manufacturer": spec.manufacturer, "slice_thickness": thickness,
                                         "study_date": spec.study_date, "window_center": -600.0,
                                         "window_width": 1500.0, "description": "DEMO CHEST CT (synthetic)"})
    final = Path(spec.out_dir) / "dicom" / spec.patient_id
    with atomic_dir(final, overwrite=True) as tmp:  # whole series or nothing; a killed run's leftovers go
        write_series(volume, tmp, patient_id=spec.patient_id, study_uid=study_uid, series_uid=series_uid,
                     transfer_syntax=spec.transfer_syntax, shuffle_names=spec.shuffle_names, seed=spec.seed)
    for r in rows:
        r["series_uid"] = series_uid
    series = {
        "series_uid": series_uid, "study_uid": study_uid, "patient_id": spec.patient_id,
        "label": MALIGNANT if any(r["label"] == MALIGNANT for r in rows) else BENIGN, "split": spec.split,
        "path": f"dicom/{spec.patient_id}", "n_nodules": len(rows),
        "max_diameter_mm": max((r["diameter_mm"] for r in rows), default=float("nan")), "manufacturer": spec.manufacturer,
        "slice_thickness": thickness, "slice_spacing": dz, "pixel_spacing": ps, "n_slices": n_slices,
        "rows": size, "cols": size, "contrast": bool(scan["contrast_used"]),
        "transfer_syntax": "RLELossless" if "1.2.840.10008.1.2.5" == spec.transfer_syntax else "ExplicitVRLittleEndian",
        "shuffled_names": spec.shuffle_names, "lidc_scan_id": int(scan["scan_id"]),
    }
    return rows, series


def make_demo_cohort(out: str | Path, patients: int = 180, seed: int = 0, workers: int | None = None, *,
                     size: int = 256, max_nodules: int = 4, slab_mm: float = 40.0, rle_share: float = RLE_SHARE,
                     shuffle_share: float = 0.3, overwrite: bool = False,
                     db_path: str | Path | None = None, progress: bool = False) -> pd.DataFrame:
    """Generate the demo cohort under ``out`` and return its nodule table (also ``out/nodules.csv``).

    ``patients`` series (one per patient) are generated by ``workers`` processes (default: all cores;
    1 = in-process). ``size`` is the in-plane matrix (256: a targeted field of view on one lung at the
    real pixel spacing; 512: the whole chest); ``slab_mm`` the minimum height of the slab (slices are
    added for tall nodules); ``rle_share`` / ``shuffle_share`` the share of series written RLE-compressed /
    with shuffled file names. ``overwrite`` replaces an earlier demo cohort in ``out``."""
    if patients < 1:
        raise DemoError(f"patients must be >= 1, got {patients}")
    if size < 64 or size > 1024:
        raise DemoError(f"size must be between 64 and 1024 pixels, got {size}")
    if not 8 <= slab_mm <= 400:
        raise DemoError(f"slab_mm must be between 8 and 400 mm, got {slab_mm}")
    if not (0 <= rle_share <= 1 and 0 <= shuffle_share <= 1):
        raise DemoError(f"rle_share and shuffle_share must be in [0, 1], got {rle_share}, {shuffle_share}")
    if not 1 <= max_nodules <= 8:
        raise DemoError(f"max_nodules must be between 1 and 8, got {max_nodules}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DemoError(f"{out}: folder exists and is not empty; choose another folder, or replace the demo "
                            "cohort in it with --overwrite (overwrite=True in Python)")
        if not (out / "cohort.json").is_file():
            raise DemoError(f"{out}: refusing to overwrite a folder that is not a demo cohort (no cohort.json)")
    out.mkdir(parents=True, exist_ok=True)
    # marked incomplete first: a run killed from here on leaves a folder that --overwrite replaces and that
    # is never mistaken for a finished cohort (the tables and the final cohort.json come last)
    atomic_write_json(out / "cohort.json", {"complete": False, "seed": seed, "requested_patients": patients}, indent=1)
    for name in ("nodules.csv", "series.csv"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "dicom", ignore_errors=True)
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    specs = plan_cohort(out, patients, seed, size=size, max_nodules=max_nodules, slab_mm=slab_mm,
                        rle_share=rle_share, shuffle_share=shuffle_share, db_path=db_path)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    with indexed_lidc_copy(specs[0].db_path, out) as fast_db:
        jobs = [replace(s, db_path=fast_db) for s in specs]
        if workers == 1 or len(jobs) == 1:
            results = list(_progress(map(make_patient, jobs), len(jobs), progress))
        else:
            with worker_pool(min(workers, len(jobs)), context="spawn") as pool:  # workers die with us
                results = list(_progress(pool.map(make_patient, jobs), len(jobs), progress))
    nodules = pd.DataFrame([r for rows, _ in results for r in rows])
    front = ["series_uid", "patient_id", "x_mm", "y_mm", "z_mm", "diameter_mm", "label", "nodule_id",
             "malignancy", "n_readers", "split"]
    nodules = nodules[front + [c for c in nodules.columns if c not in front]]
    series = pd.DataFrame([s for _, s in results])
    _atomic_csv(nodules, out / "nodules.csv")
    _atomic_csv(series, out / "series.csv")
    summary = {
        "complete": True, "seed": seed, "patients": patients, "size": size, "max_nodules": max_nodules,
        "nodules": len(nodules), "by_split": nodules["split"].value_counts().to_dict(),
        "malignant": int((nodules["label"] == MALIGNANT).sum()), "label_rule": "median",
        "lidc_database": Path(specs[0].db_path).name,
        "specs": [{k: v for k, v in asdict(s).items() if k in ("patient_id", "manufacturer", "transfer_syntax",
                                                               "shuffle_names", "split")} for s in specs],
    }
    atomic_write_json(out / "cohort.json", summary, indent=1)
    nodules.attrs["source"] = str(out / "nodules.csv")
    return nodules


@contextmanager
def indexed_lidc_copy(db_path: str | Path, out: Path) -> Iterator[str]:
    """A temporary copy of the LIDC database with indexes on the columns a patient's outlines are looked
    up by (contours by annotation, slice positions by scan): the shipped file has none, so each look-up
    scanned the tables (~30 ms CPU an outline). Falls back to ``db_path`` if the copy cannot be made.

    The copy (26 MB) lives in ``out`` under a `medsuite.io.atomic` temporary name, so the copy of a run
    killed with SIGKILL is removed by the next run instead of staying in /tmp."""
    target = out / "lidc-indexed.sqlite"
    remove_stale_temps(target)
    copy = temp_path_for(target)
    try:
        try:
            src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
            dst = sqlite3.connect(copy)
            try:
                src.backup(dst)
                dst.execute("create index if not exists medsuite_contours_annotation on contours(annotation_id)")
                dst.execute("create index if not exists medsuite_zvals_scan on zvals(scan_id)")
                dst.commit()
            finally:
                src.close()
                dst.close()
        except sqlite3.Error:
            yield str(db_path)
            return
        yield str(copy)
    finally:
        copy.unlink(missing_ok=True)


def _progress(iterable: Any, total: int, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="demo patients", unit="patient")
