"""End-to-end: Python API and CLI produce a bundle and a report on a tiny generated cohort."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pipeline_cohort import make_cohort
from typer.testing import CliRunner

from medsuite.cli import app
from medsuite.data.blocks import SeriesSlices, SliceStack
from medsuite.interpret.index import CaseIndex
from medsuite.learn import roc_auc
from medsuite.learn.bundle import load_bundle
from medsuite.pipelines import classify, nodule

TINY = ["block.k=3", "block.size=24", "block.pixel_mm=1.0", "data.bs=8", "data.num_workers=0", "train.epochs=1",
        "train.lr=0.003", "report.n_boot=200", "report.top_losses=4", "report.tta=true"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    make_cohort(root, patients=10, nodules_per_patient=2)
    return root


def test_python_api_four_lines(cohort: Path, tmp_path: Path) -> None:
    dls = nodule.dataloaders(cohort / "nodules.csv", dicom_root=cohort, block=SliceStack(k=3, size=24, window="lung"), bs=8)
    assert dls.vocab == ["benign", "malignant"]
    assert set(dls.items("test")["patient_id"]).isdisjoint(dls.items("train")["patient_id"])
    learn = nodule.learner(dls, path=tmp_path / "run", progress=False)
    suggestion = learn.lr_find(num_it=12)
    assert suggestion.valley > 0
    learn.fit_one_cycle(1, 3e-3)
    path = learn.export(tmp_path / "m.bundle")
    bundle = load_bundle(path)
    assert bundle.task == "nodule" and bundle.labels == ["benign", "malignant"]
    assert 0.0 <= bundle.threshold <= 1.0
    assert bundle.block.spec() == dls.block.spec()
    index = CaseIndex.from_bundle(bundle)
    assert index is not None and len(index) == len(dls.items("train"))
    assert set(index.labels) == {"benign", "malignant"}
    # what the viewer shows of every reference case: a picture that is not blank (the first window's centre
    # slice, one contrast for all), its diameter, its input patch to open, and centred features
    assert index.meta["thumbnail_scale"] == "fixed" and index.centre is not None
    blank = [i for i, t in enumerate(index.thumbnails) if t.std() < 4.0]
    assert not blank, f"blank thumbnails in the index: cases {blank}"
    diameters = dls.items("train")["diameter_mm"].tolist()
    assert [d["diameter_mm"] for d in index.info] == pytest.approx(diameters)
    assert index.stacks.shape == (len(index), 3, 24, 24) and index.meta["stack_spacing_mm"][0] > 0


def test_cli_train_writes_bundle_report_and_baseline_comparison(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "configs/nodule_malignancy.yaml", "--set", f"data.table={cohort / 'nodules.csv'}",
            "--set", f"data.dicom_root={cohort}", "--set", f"out={out}"]
    for item in TINY:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    html = (out / "report.html").read_text()
    for heading in ("Data", "Training", "Held-out performance", "Against the baselines", "radiomics random forest", "Top losses"):
        assert heading in html
    metrics = json.loads((out / "metrics.json").read_text())
    # the default config fuses the diameter: the image model alone is compared too
    assert set(metrics["comparisons"]) == {"diameter", "radiomics_rf", "image only (no covariates)"}
    assert metrics["report"]["n"] == len(pd.read_csv(cohort / "nodules.csv").query("split == 'test'"))
    # the image-only comparison is reproduced from what the run wrote, as every other figure is
    scores = pd.read_parquet(out / "scores.parquet")
    truth = pd.read_csv(cohort / "nodules.csv").query("split == 'test'")
    y = (truth["label"] == "malignant").to_numpy()
    fused_auc, image_auc = (roc_auc(y, scores[c].to_numpy()) for c in ("probability", "image_probability"))
    image_row = metrics["comparisons"]["image only (no covariates)"]
    assert fused_auc == pytest.approx(image_row["auc_a"], abs=1e-12)
    assert image_auc == pytest.approx(image_row["auc_b"], abs=1e-12)
    assert (out / "malignancy.bundle" / "bundle.json").is_file()
    assert (out / "roc.png").is_file() and (out / "calibration.png").is_file()

    evaluated = CliRunner().invoke(app, ["evaluate", str(out / "malignancy.bundle"), str(cohort / "nodules.csv"),
                                         "--dicom-root", str(cohort), "--out", str(tmp_path / "eval"), "--n-boot", "200"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["n"] == len(pd.read_csv(cohort / "nodules.csv"))
    assert (tmp_path / "eval" / "report.html").is_file()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochz=3", "train.epochz: unknown key"),
        ("train.epochs=ten", "train.epochs: Input should be a valid integer"),
        ("data.table=/nonexistent/nodules.csv", "data.table: file not found"),
        ("block.type=Cube", "block.type"),
    ],
)
def test_cli_config_errors_name_the_key(cohort: Path, override: str, message: str) -> None:
    args = ["train", "configs/nodule_malignancy.yaml", "--set", f"data.table={cohort / 'nodules.csv'}",
            "--set", f"data.dicom_root={cohort}", "--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_config_rejects_an_empty_table(cohort: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    pd.read_csv(cohort / "nodules.csv").head(0).to_csv(empty, index=False)
    result = CliRunner().invoke(app, ["train", "configs/nodule_malignancy.yaml", "--set", f"data.table={empty}",
                                      "--set", f"data.dicom_root={cohort}"])
    assert result.exit_code == 2
    assert "empty" in result.output


def test_series_classification_four_lines(cohort: Path, tmp_path: Path) -> None:
    nodules = pd.read_csv(cohort / "nodules.csv")
    series = nodules.groupby(["series_uid", "patient_id", "split"], as_index=False).size()
    series["label"] = ["large" if int(p[2:]) % 2 else "small" for p in series["patient_id"]]
    table = tmp_path / "series.csv"
    series.to_csv(table, index=False)
    dls = classify.dataloaders(table, dicom_root=cohort, block=SeriesSlices(n=4, size=24, window="lung"), bs=2, positive="large")
    learn = classify.learner(dls, positive="large", path=tmp_path / "run", progress=False)
    learn.fit_one_cycle(1, 1e-3)
    bundle = load_bundle(learn.export(tmp_path / "series.bundle"))
    assert bundle.task == "series" and bundle.labels == ["small", "large"]
    assert bundle.meta["arch"] == "series_encoder"


def test_a_seeded_learner_starts_from_the_same_weights(cohort: Path, tmp_path: Path) -> None:
    import torch

    dls = nodule.dataloaders(cohort / "nodules.csv", dicom_root=cohort, block=SliceStack(k=3, size=24, window="lung"), bs=8)
    a = nodule.learner(dls, path=tmp_path / "a", progress=False, seed=7)
    b = nodule.learner(dls, path=tmp_path / "b", progress=False, seed=7)
    c = nodule.learner(dls, path=tmp_path / "c", progress=False, seed=8)
    wa, wb, wc = (next(iter(x.model.parameters())).detach() for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
