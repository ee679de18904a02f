"""K-fold cross-validation of nodule-model variants on a cohort's *training* patients (never its test split).

Every design choice of the default nodule pipeline was made with this script: each variant is trained on k-1
folds of the training patients (split by patient, stratified by label) and scored on the held-out fold, next to
the diameter-only and radiomics + random-forest baselines fitted on the same folds. Out-of-fold predictions are
kept per nodule, so ensembles can be scored afterwards without training again.

    python bench/nodule_cv.py COHORT --variants base soft_mix --folds 5 --out /tmp/cv
    python bench/nodule_cv.py COHORT --summary --out /tmp/cv          # the table of every run so far
    python bench/nodule_cv.py COHORT --summary --out /tmp/cv --ensemble base_tta soft_mix soft_ms2

The summary also scores each variant's out-of-fold predictions fused late with the diameter, as exported
predictors do (cross-fitted, `late_fused`): the "fuse" variant instead trains the diameter into the network.

COHORT is a folder with ``nodules.csv`` (and the scans under it), e.g. `medsuite demo-data` output.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BASE: dict[str, Any] = {
    "block": {"type": "SliceStack", "k": 7, "size": 40, "spacing_mm": 2.0, "pixel_mm": 0.8, "window": ["lung", "mediastinum"]},
    "arch": "slice_cnn", "kwargs": {"width": 16, "depth": 3, "subunits": 1},
    "epochs": 60, "lr": 2e-3, "wd": 0.01, "bs": 32, "soft": None, "fuse": None, "tta": False,
}


def _v(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    for k, v in changes.items():
        if k in ("block", "kwargs") and isinstance(v, dict) and v.get("type", out[k].get("type")) == out[k].get("type"):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


VARIANTS: dict[str, dict[str, Any]] = {
    "base": _v(),
    "base_tta": _v(tta=True),
    "soft_mean": _v(soft="mean", tta=True),
    "soft_mix": _v(soft="mix", tta=True),
    "fuse": _v(fuse="diameter", tta=True),
    "soft_mix_fuse": _v(soft="mix", fuse="diameter", tta=True),
    # the 9 planes of Setio et al. (axial, coronal, sagittal, six diagonals) as channels of one 2D CNN
    "soft_mv9c": _v(soft="mix", tta=True, block={"type": "MultiView", "views": 9, "size": 40, "pixel_mm": 0.8,
                                                 "as_channels": True, "window": ["lung", "mediastinum"]}),
    # two scales: the base stack and one twice as coarse (64 mm field, 24 mm deep), as channels
    "soft_ms2": _v(soft="mix", tta=True, block=[BASE["block"], {**BASE["block"], "pixel_mm": 1.6, "spacing_mm": 4.0}]),
}


def training_table(cohort: Path) -> pd.DataFrame:
    """The cohort's nodules without its test split (the k folds are drawn from these patients only)."""
    from medsuite.data.tables import read_table, validate_nodule_table

    table = validate_nodule_table(read_table(cohort / "nodules.csv"))
    if "split" in table.columns:
        table = table[table["split"].astype(str) != "test"]
    return table.reset_index(drop=True)


def fold_ids(table: pd.DataFrame, k: int, seed: int = 0) -> np.ndarray:
    """Fold number per row: patients stratified by 'has a malignant nodule', never split."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = (table["label"].astype(str) == "malignant").to_numpy(int)
    folds = np.full(len(table), -1)
    for f, (_, idx) in enumerate(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(table, y, table["patient_id"])):
        folds[idx] = f
    return folds


def soft_target(table: pd.DataFrame, mode: str) -> np.ndarray:
    """P(malignant) targets from the readers' ratings: 'mean' = (mean rating - 1) / 4; 'mix' = half the hard
    label plus half that (so the hard label is still target > 0.5)."""
    col = "malignancy_mean" if "malignancy_mean" in table.columns else "malignancy"
    q = np.clip((table[col].to_numpy(float) - 1.0) / 4.0, 0.0, 1.0)
    hard = (table["label"].astype(str) == "malignant").to_numpy(float)
    q = np.where(np.isfinite(q), q, hard)
    if mode == "mean":
        return q
    if mode == "mix":
        return 0.5 * hard + 0.5 * q
    raise ValueError(f"unknown soft-target mode {mode!r}")


def _source(cohort: Path, cache: Path) -> Any:
    """Volumes by series folder (the cohort's series.csv), so that no process scans the whole cohort."""
    from medsuite.data.source import VolumeSource

    series = pd.read_csv(cohort / "series.csv", dtype={"series_uid": str})
    return VolumeSource(paths={u: cohort / p for u, p in zip(series["series_uid"], series["path"], strict=True)}, cache_dir=cache)


BANK_AUGMENTS = 24  # geometric augmentations stored per nodule (plus the plain sample)


def _bank_worker(args: tuple) -> list[tuple[int, np.ndarray]]:
    cohort, cache, spec, group, n_aug = args
    from medsuite.data.blocks import block_from_spec
    from medsuite.pipelines.nodule import NODULE_AUGMENT

    block = block_from_spec(spec)
    volume = _source(cohort, cache).get(group[0][1])
    out = []
    for pos, _, center in group:
        rng = np.random.default_rng(1000 + pos)
        xs = [block.sample(volume, center)]
        xs += [block.sample(volume, center, aug=NODULE_AUGMENT.draw(rng)) for _ in range(n_aug)]
        out.append((pos, np.round(np.clip(np.stack(xs), 0, 1) * 255).astype(np.uint8)))
    return out


def sample_bank(cohort: Path, table: pd.DataFrame, spec: dict[str, Any], out: Path, n_aug: int = BANK_AUGMENTS) -> np.ndarray:
    """(nodules, 1 + n_aug, *sample shape) uint8: the plain sample, then geometric augmentations (windowed, x255).
    Built once per block spec (2 processes) and memory-mapped from ``out/banks``."""
    import hashlib
    from concurrent.futures import ProcessPoolExecutor

    from medsuite.data.blocks import block_from_spec

    key = hashlib.sha256(json.dumps([spec, n_aug, table["nodule_id"].astype(str).tolist()], sort_keys=True).encode()).hexdigest()[:16]
    path = out / "banks" / f"{key}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    block = block_from_spec(spec)
    cache = out / "cache"
    src = _source(cohort, cache)
    for uid in table["series_uid"].astype(str).unique():  # fill the volume cache before the workers read it
        src.get(uid)
    groups = [[(int(i), str(r.series_uid), np.array([r.x_mm, r.y_mm, r.z_mm])) for i, r in g.iterrows()]
              for _, g in table.groupby("series_uid", sort=False)]
    bank = np.lib.format.open_memmap(str(path) + ".tmp.npy", mode="w+", dtype=np.uint8, shape=(len(table), 1 + n_aug, *block.output_shape))
    t0 = time.time()
    with ProcessPoolExecutor(2) as pool:
        for res in pool.map(_bank_worker, [(cohort, cache, spec, g, n_aug) for g in groups], chunksize=4):
            for pos, arr in res:
                bank[pos] = arr
    bank.flush()
    del bank
    os.replace(str(path) + ".tmp.npy", path)
    print(f"bank {key}: {len(table)} nodules x {1 + n_aug} samples in {time.time() - t0:.0f} s", flush=True)
    return np.load(path, mmap_mode="r")


class _Stacked:
    """Several banks of the same nodules and augmentation draws, read as one with their channels stacked."""

    def __init__(self, banks: list[np.ndarray]) -> None:
        self.banks = banks
        self.shape = (banks[0].shape[0], banks[0].shape[1], sum(b.shape[2] for b in banks), *banks[0].shape[3:])

    def __getitem__(self, key: tuple[int, int]) -> np.ndarray:
        return np.concatenate([b[key] for b in self.banks], axis=0)


class BankDataset:
    """Items of one fold from the bank: training draws one stored augmentation at random (+ intensity jitter,
    noise), evaluation the plain sample. ``y`` is the class id, or ``[1-p, p]`` with soft targets; with ``tab``
    the input is ``(image, table features)``."""

    def __init__(self, bank: np.ndarray, rows: np.ndarray, y: np.ndarray, *, train: bool, soft: np.ndarray | None = None,
                 tab: np.ndarray | None = None) -> None:
        self.bank, self.rows, self.targets, self.train, self.soft, self.tab = bank, rows, y, train, soft, tab

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int, r: int = 0) -> np.ndarray:
        return self.bank[self.rows[i], r].astype(np.float32) / 255.0

    def __getitem__(self, i: int) -> Any:
        import torch

        if self.train:
            r = int(torch.randint(1, self.bank.shape[1], ()))
            x = self.image(i, r)
            g = torch.rand(3)
            if g[0] < 0.5:
                x = x * np.float32(1 + 0.2 * (float(g[1]) - 0.5))
            if g[2] < 0.5:
                x = x + 0.02 * torch.randn(x.shape).numpy()
        else:
            x = self.image(i)
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        y = torch.tensor([1.0 - self.soft[i], self.soft[i]]) if self.soft is not None else torch.tensor(int(self.targets[i]))
        if self.tab is not None:
            x = (x, torch.tensor(self.tab[i], dtype=torch.float32))
        return x, y


def _fused(model: Any, n_tab: int, mean: np.ndarray, std: np.ndarray) -> Any:
    import torch
    from torch import nn

    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image = model
            self.register_buffer("tab_mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("tab_std", torch.tensor(std, dtype=torch.float32))
            self.head = nn.Linear(model.embed_dim + n_tab, model.n_classes)
            self.embed_dim, self.n_classes = model.embed_dim + n_tab, model.n_classes

        def forward(self, xt: Any) -> Any:
            x, t = xt
            z = torch.cat([self.image.embed(x), (t - self.tab_mean) / self.tab_std], dim=1)
            return self.head(z)

    return Fused()


def run_fold(cohort: Path, table: pd.DataFrame, folds: np.ndarray, fold: int, variant: dict[str, Any], seed: int,
             out: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    import types

    import torch

    from medsuite.data.blocks import block_from_spec
    from medsuite.pipelines import nodule

    specs = variant["block"] if isinstance(variant["block"], list) else [variant["block"]]
    banks = [sample_bank(cohort, table, spec, out) for spec in specs]
    bank = banks[0] if len(banks) == 1 else _Stacked(banks)
    block = block_from_spec(specs[0])
    y = (table["label"].astype(str) == "malignant").to_numpy(int)
    tr, va = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    soft = soft_target(table, variant["soft"]) if variant["soft"] else None
    tab = np.log(np.clip(table[["diameter_mm"]].to_numpy(float), 0.5, None)) if variant["fuse"] else None
    ds_tr = BankDataset(bank, tr, y[tr], train=True, soft=None if soft is None else soft[tr], tab=None if tab is None else tab[tr])
    ds_va = BankDataset(bank, va, y[va], train=False, tab=None if tab is None else tab[va])
    dls = types.SimpleNamespace(
        train=torch.utils.data.DataLoader(ds_tr, batch_size=variant["bs"], shuffle=True, drop_last=True),
        valid=torch.utils.data.DataLoader(ds_va, batch_size=128), vocab=["benign", "malignant"], block=block,
        positive="malignant")
    dls.fingerprint = lambda: ""
    kwargs = {**variant["kwargs"], **({"in_channels": bank.shape[2]} if len(specs) > 1 else {})}
    learn = nodule.learner(dls, variant["arch"], arch_kwargs=kwargs, wd=variant["wd"], seed=seed, progress=False)
    if tab is not None:
        learn.model = _fused(learn.model, tab.shape[1], tab[tr].mean(0), tab[tr].std(0) + 1e-6)
        learn.opt = None
    lr = variant["lr"]
    t0 = time.time()
    if isinstance(lr, str):
        res = learn.lr_find()
        lr = float(np.clip(getattr(res, lr), 1e-4, 3e-2))
    learn.fit_one_cycle(variant["epochs"], lr)
    train_s = time.time() - t0
    model = learn.model.eval()
    flips = ((), (-1,), (-2,), (-2, -1)) if variant["tta"] else ((),)
    probs = []
    with torch.no_grad():
        for start in range(0, len(va), 128):
            idx = list(range(start, min(start + 128, len(va))))
            x = torch.stack([torch.from_numpy(ds_va.image(i)) for i in idx])
            ps = []
            for d in flips:
                xi = torch.flip(x, d) if d else x
                inp = (xi, torch.tensor(ds_va.tab[idx], dtype=torch.float32)) if tab is not None else xi
                ps.append(torch.softmax(model(inp).float(), 1)[:, 1])
            probs.append(torch.stack(ps).mean(0).numpy())
    res = pd.DataFrame({"nodule_id": table["nodule_id"].astype(str).to_numpy()[va], "y": y[va],
                        "p": np.concatenate(probs), "fold": fold, "seed": seed})
    return res, {"lr": lr, "train_s": train_s, "epochs": variant["epochs"]}


def radiomics_features(cohort: Path, table: pd.DataFrame, cache: Path) -> pd.DataFrame:
    path = cache.parent / "radiomics.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    from medsuite.pipelines.radiomics import feature_table

    src = _source(cohort, cache)
    feats = feature_table(table, src.get)
    feats.index = feats.index.astype(str)
    feats.to_parquet(path)
    return feats


def baselines(table: pd.DataFrame, folds: np.ndarray, feats: pd.DataFrame) -> pd.DataFrame:
    from medsuite.pipelines.baselines import diameter_baseline, radiomics_baseline

    rows = []
    for f in np.unique(folds):
        tr, va = table[folds != f], table[folds == f]
        d = diameter_baseline(tr, va, "malignant").probs
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline

        ftr, fva = feats.loc[tr["nodule_id"].astype(str)], feats.loc[va["nodule_id"].astype(str)]
        rf = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True),
                           RandomForestClassifier(n_estimators=300, min_samples_leaf=3, random_state=0, n_jobs=1))
        rf.fit(ftr, (tr["label"] == "malignant").astype(int))
        r = rf.predict_proba(fva)[:, 1]
        rows.append(pd.DataFrame({"nodule_id": va["nodule_id"].astype(str).to_numpy(), "y": (va["label"] == "malignant").astype(int).to_numpy(),
                                  "diameter": d, "radiomics": r, "fold": f}))
    del radiomics_baseline
    return pd.concat(rows, ignore_index=True)


def late_fused(runs: pd.DataFrame, diameters: pd.Series) -> np.ndarray:
    """Out-of-fold P(malignant) of the late fusion that exported nodule predictors use (`fit_fusion`: logistic
    regression on the image's log-odds and the log diameter), cross-fitted: fold f's fusion is fitted on the
    other folds' out-of-fold predictions, so no nodule's own label is used to score it."""
    import torch

    from medsuite.learn.predict import fit_fusion

    p = runs["p"].to_numpy(float)
    probs = np.c_[1 - p, p]
    diameter = runs["nodule_id"].map(diameters).to_numpy(float)
    y, fold = runs["y"].to_numpy(int), runs["fold"].to_numpy()
    out = np.zeros(len(runs))
    for f in np.unique(fold):
        fit, held = fold != f, fold == f
        fusion = fit_fusion(probs[fit], y[fit], {"diameter_mm": diameter[fit]}, ["diameter_mm"], positive_index=1,
                            split="other folds")
        design = fusion.design({"diameter_mm": diameter[held]}, int(held.sum()))
        out[held] = fusion.apply(torch.as_tensor(probs[held]), torch.as_tensor(design), 1)[:, 1].numpy()
    return out


def _run_row(name: str, seed: Any, g: pd.DataFrame, base: pd.DataFrame, table: pd.DataFrame | None,
             train_min: float, fuse: bool) -> dict[str, Any]:
    """The summary row of one variant's out-of-fold predictions ``g`` (columns nodule_id, y, p, fold)."""
    from sklearn.metrics import roc_auc_score

    def per_fold(frame: pd.DataFrame, a: str, b: str | None = None) -> float:
        return float(np.mean([roc_auc_score(h["y"], h[a]) - (roc_auc_score(h["y"], h[b]) if b else 0.0)
                              for _, h in frame.groupby("fold")]))

    aucs = [roc_auc_score(h["y"], h["p"]) for _, h in g.groupby("fold")]
    m = base.merge(g[["nodule_id", "p"]], on="nodule_id")
    row = {"variant": name, "seed": seed, "folds": len(aucs), "cv_auc_mean": np.mean(aucs),
           "cv_auc_sd": np.std(aucs, ddof=1) if len(aucs) > 1 else np.nan,
           "minus_diameter": per_fold(m, "p", "diameter"), "minus_radiomics": per_fold(m, "p", "radiomics"),
           "pooled_auc": roc_auc_score(g["y"], g["p"]), "train_min": train_min}
    if table is not None and len(aucs) > 1 and fuse:
        diameters = table.set_index(table["nodule_id"].astype(str))["diameter_mm"]
        m = m.assign(fused=late_fused(m, diameters))
        row.update(fused_auc=per_fold(m, "fused"), fused_minus_diameter=per_fold(m, "fused", "diameter"),
                   fused_minus_radiomics=per_fold(m, "fused", "radiomics"))
    return row


def summarize(out: Path, table: pd.DataFrame | None = None, ensembles: list[list[str]] | None = None) -> pd.DataFrame:
    """One row a baseline and a variant (per seed): mean and SD of the per-fold AUCs, the mean per-fold
    difference to each baseline on the same folds; with ``table`` (for the diameters) and two or more folds
    also the cross-fitted late fusion with the diameter (`late_fused`): ``fused_auc`` and its differences.
    Each of ``ensembles`` (a list of variant names) adds a row for the mean of those variants' out-of-fold
    probabilities (seed 0, the nodules all of them scored), at the sum of their training times."""
    from sklearn.metrics import roc_auc_score

    base = pd.read_csv(out / "baselines.csv", dtype={"nodule_id": str})
    rows = []
    for name, col in (("diameter", "diameter"), ("radiomics_rf", "radiomics")):
        aucs = [roc_auc_score(g["y"], g[col]) for _, g in base.groupby("fold")]
        rows.append({"variant": name, "runs": 1, "cv_auc_mean": np.mean(aucs), "cv_auc_sd": np.std(aucs, ddof=1),
                     "pooled_auc": roc_auc_score(base["y"], base[col]), "train_min": 0.0})
    minutes: dict[tuple[str, Any], float] = {}
    runs_of: dict[str, pd.DataFrame] = {}
    for path in sorted(out.glob("runs_*.csv")):
        name = path.stem[len("runs_"):]
        runs_of[name] = runs = pd.read_csv(path, dtype={"nodule_id": str})
        meta = [json.loads(line) for line in (out / f"meta_{name}.jsonl").read_text().splitlines()]
        for seed, g in runs.groupby("seed"):
            minutes[(name, seed)] = np.mean([x["train_s"] for x in meta if x["seed"] == seed]) / 60
            rows.append(_run_row(name, seed, g, base, table, minutes[(name, seed)],
                                 fuse=not VARIANTS.get(name, {}).get("fuse")))
    for members in ensembles or []:
        missing = [v for v in members if v not in runs_of]
        if missing:
            raise SystemExit(f"--ensemble: no runs of {missing} in {out}")
        parts = [runs_of[v].query("seed == 0")[["nodule_id", "y", "fold", "p"]].rename(columns={"p": v}) for v in members]
        joined = parts[0]
        for part in parts[1:]:
            joined = joined.merge(part.drop(columns=["y", "fold"]), on="nodule_id")
        joined = joined.assign(p=joined[members].mean(axis=1))
        rows.append(_run_row("+".join(members), 0, joined, base, table,
                             sum(minutes[(v, 0)] for v in members), fuse=True))
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cohort", type=Path)
    ap.add_argument("--variants", nargs="*", default=[])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only-folds", type=int, nargs="*")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--summary", action="store_true")
    ap.add_argument("--ensemble", nargs="+", action="append", metavar="VARIANT",
                    help="with --summary: also score the mean of these variants' out-of-fold predictions (repeatable)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("CV_THREADS", "2")))
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    table = training_table(args.cohort)
    folds = fold_ids(table, args.folds)
    if not (args.out / "baselines.csv").is_file():
        feats = radiomics_features(args.cohort, table, cache)
        baselines(table, folds, feats).to_csv(args.out / "baselines.csv", index=False)
    for name in args.variants:
        variant = VARIANTS[name]
        runs_path = args.out / f"runs_{name}.csv"
        done = pd.read_csv(runs_path) if runs_path.is_file() else pd.DataFrame(columns=["fold", "seed"])
        for seed in args.seeds:
            for f in args.only_folds if args.only_folds is not None else range(args.folds):
                if ((done["fold"] == f) & (done["seed"] == seed)).any():
                    continue
                preds, meta = run_fold(args.cohort, table, folds, f, variant, seed, args.out)
                preds.to_csv(runs_path, mode="a", header=not runs_path.is_file(), index=False)
                with open(args.out / f"meta_{name}.jsonl", "a") as fh:
                    fh.write(json.dumps({"fold": f, "seed": seed, **meta, "load": os.getloadavg()[0]}) + "\n")
                from sklearn.metrics import roc_auc_score

                print(f"{name} fold {f} seed {seed}: AUC {roc_auc_score(preds['y'], preds['p']):.4f} "
                      f"({meta['train_s']:.0f} s, lr {meta['lr']:.2e}, load {os.getloadavg()[0]:.1f})", flush=True)
    if args.summary or args.variants:
        pd.set_option("display.width", 200)
        print(summarize(args.out, table, args.ensemble).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
