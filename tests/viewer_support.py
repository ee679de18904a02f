"""A small scored database for the viewer tests: generated DICOM series, a tiny nodule bundle with a
similar-case index, scored through the real scoring engine (imported by tests/test_viewer_*.py and
tests/test_browser_*.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scoring_support as S


def make_bundle_with_index(path: Path) -> Path:
    """The scoring tests' tiny slice_cnn nodule bundle, plus a 12-case index built with its own model."""
    import torch

    from medsuite.data.blocks import SliceStack
    from medsuite.interpret.index import build_case_index
    from medsuite.learn.bundle import export_bundle, load_bundle
    from medsuite.learn.models import build_model
    from medsuite.learn.predict import FLIPS, OperatingPoint, Predictor, PredictorSettings

    # seed 2: an untrained model whose Grad-CAM of the decided class is not all negative (ReLU would blank it)
    plain = S.make_bundle(path.with_name(path.name + "-plain"), "nodule", seed=2)
    b = load_bundle(plain)
    block = SliceStack(k=3, size=16, spacing_mm=2.0, pixel_mm=1.0, window="lung")
    samples, ids, labels = [], [], []
    for i in range(12):
        vol = S.make_volume(i)
        centre = vol.index_to_world((6.0, 12.0, 12.0)) + np.array([0.0, 0.0, 0.0])
        samples.append(block.sample(vol, centre))
        ids.append(f"ref{i:02d}")
        labels.append(int(i % 3 != 0))  # 8 malignant, 4 benign
    x = torch.as_tensor(np.stack(samples)).float()
    index = build_case_index(Predictor.from_bundle(b), [x], ids, labels=labels, preview=block.preview,
                             value_range=(0.0, 1.0), info=[{"diameter_mm": 4.0 + i} for i in range(12)],
                             block_spec=block.spec(), meta={"window": "lung"})
    arch_kwargs = b.meta["arch_kwargs"]
    model = build_model("slice_cnn", **arch_kwargs)
    model.load_state_dict(b.model.state_dict())
    settings = PredictorSettings(("benign", "malignant"), "malignant", FLIPS, None,
                                 OperatingPoint(0.5, "youden", 0.8, 0.75, "valid", 40, 12))
    metrics = {"test": {"n": 50, "confusion": {"threshold": 0.5, "sensitivity": 0.7, "specificity": 0.9}}}
    return export_bundle(path, model, arch="slice_cnn", arch_kwargs=arch_kwargs, block_spec=block.spec(),
                         labels=["benign", "malignant"], threshold=0.5, task="nodule", metrics=metrics,
                         extra_files=index.to_extra_files(),
                         extra_meta={"version": "1.2.0"}, predictor=settings.to_json())


def make_scored_db(root: Path, n_series: int = 2) -> dict:
    """Cohort + bundle + a scoring run written through `store.connect` (the schema the scoring engine fills;
    the engine itself is tested by the scoring tests and takes tens of seconds to start workers)."""
    from contextlib import closing

    from medsuite.learn.bundle import load_bundle
    from medsuite.learn.predict import Predictor
    from medsuite.records import store

    cohort = S.make_cohort(root / "cohort", n_good=n_series, extras=False)
    nodules = S.nodule_table(cohort, outside=False)
    bundle_path = make_bundle_with_index(root / "bundle")
    b = load_bundle(bundle_path)
    predictor = Predictor.from_bundle(b)
    db = root / "out" / "medsuite.db"
    at = "2025-01-01T00:00:00.000+00:00"
    with closing(store.connect(db)) as conn:
        conn.execute("INSERT INTO runs(run_id, started_at, finished_at, bundle_name, bundle_sha256, bundle_path, task, "
                     "engine, status) VALUES ('run1', ?, ?, ?, ?, ?, 'nodule', 'local', 'finished')",
                     (at, at, b.name, b.sha256, str(bundle_path)))
        for i, uid in enumerate(cohort["good"]):
            conn.execute("INSERT INTO series(run_id, series_uid, modality, description, n_slices, spacing_z, spacing_y, "
                         "spacing_x, orientation, source, status) VALUES ('run1', ?, 'CT', 'chest', ?, ?, ?, ?, "
                         "'axial', ?, 'scored')", (uid, S.SHAPE[0], *S.SPACING, str(root / "cohort" / f"case{i:03d}")))
        for _, row in nodules.iterrows():
            vol = S.make_volume(cohort["good"].index(row["series_uid"]))
            x = b.block.sample(vol, np.array([row["x_mm"], row["y_mm"], row["z_mm"]]))
            p = float(predictor.positive_score(x[None])[0])  # what scoring records: the bundle's predictor
            conn.execute("INSERT INTO predictions(run_id, bundle_sha256, series_uid, nodule_id, x_mm, y_mm, z_mm, "
                         "diameter_mm, probability, label, threshold, created_at) VALUES ('run1', ?, ?, ?, ?, ?, ?, ?, ?, ?, 0.5, ?)",
                         (b.sha256, row["series_uid"], row["nodule_id"], row["x_mm"], row["y_mm"], row["z_mm"],
                          row["diameter_mm"], p, "malignant" if p >= 0.5 else "benign", at))
    return {"root": root, "db": db, "bundle": bundle_path, "cohort": cohort, "n_predictions": len(nodules)}


def make_plain_db(path: Path, n: int = 5) -> Path:
    """A database with one run and ``n`` predictions (no images): for review, audit and worklist logic."""
    from contextlib import closing

    from medsuite.records import store

    at = "2025-01-01T00:00:00.000+00:00"
    with closing(store.connect(path)) as conn:
        for run in ("runA", "runB"):
            conn.execute("INSERT INTO runs(run_id, started_at, bundle_name, bundle_sha256, task, engine) "
                         "VALUES (?, ?, 'm', 'sha', 'nodule', 'local')", (run, at))
        for i in range(n):
            p = (i + 0.5) / n
            conn.execute("INSERT INTO predictions(run_id, bundle_sha256, series_uid, nodule_id, x_mm, y_mm, z_mm, "
                         "diameter_mm, probability, label, threshold, created_at) VALUES (?, 'sha', ?, ?, 0, 0, 0, 6, ?, ?, 0.5, ?)",
                         ("runA" if i % 2 == 0 else "runB", f"1.2.3.{i}", f"n{i}", p, "malignant" if p >= 0.5 else "benign", at))
    return path
