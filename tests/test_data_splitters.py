"""Splitters never put one patient in two sets, follow their fractions, seeds and folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medsuite.data.splitters import (
    ColumnSplitter,
    KFoldPatientSplitter,
    PatientSplitter,
    StratifiedPatientSplitter,
    default_splitter,
)


def _table(n_patients: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        positive = p % 4 == 0  # a quarter of the patients have a malignant nodule
        for j in range(int(rng.integers(1, 5))):
            rows.append({"patient_id": f"P{p}", "series_uid": f"1.{p}", "label": int(positive and j == 0)})
    return pd.DataFrame(rows)


def _assert_partition_without_leak(table: pd.DataFrame, splits: dict) -> None:
    all_rows = np.concatenate([splits[s] for s in ("train", "valid", "test")])
    assert sorted(all_rows.tolist()) == list(range(len(table)))  # every row exactly once
    patients = {s: set(table["patient_id"].iloc[idx]) for s, idx in splits.items()}
    assert not patients["train"] & patients["valid"]
    assert not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]


@pytest.mark.parametrize(
    "splitter",
    [
        PatientSplitter(valid_pct=0.2, seed=0),
        PatientSplitter(valid_pct=0.2, test_pct=0.1, seed=3),
        StratifiedPatientSplitter(valid_pct=0.25, test_pct=0.25, seed=1, positive="1"),
        KFoldPatientSplitter(k=5, fold=2, seed=0),
        KFoldPatientSplitter(k=4, fold=3, seed=0, stratify=True, positive="1"),
    ],
    ids=repr,
)
def test_patient_level_splitters_never_leak(splitter):
    table = _table()
    splits = splitter(table)
    _assert_partition_without_leak(table, splits)
    assert len(splits["train"]) and len(splits["valid"])
    assert all(np.all(np.diff(v) > 0) for v in splits.values())  # sorted row positions


def test_patient_splitter_fractions_and_seed():
    table = _table(50)
    splits = PatientSplitter(valid_pct=0.2, test_pct=0.1, seed=7)(table)
    n_pat = {s: table["patient_id"].iloc[idx].nunique() for s, idx in splits.items()}
    assert n_pat == {"train": 35, "valid": 10, "test": 5}
    again = PatientSplitter(valid_pct=0.2, test_pct=0.1, seed=7)(table)
    other = PatientSplitter(valid_pct=0.2, test_pct=0.1, seed=8)(table)
    assert all(np.array_equal(splits[s], again[s]) for s in splits)
    assert not np.array_equal(splits["valid"], other["valid"])


def test_stratified_keeps_the_positive_patient_share():
    table = _table(80)
    splits = StratifiedPatientSplitter(valid_pct=0.25, seed=0, positive="1")(table)
    per_patient = table.groupby("patient_id")["label"].max()
    for s in ("train", "valid"):
        pats = table["patient_id"].iloc[splits[s]].unique()
        assert per_patient[pats].mean() == pytest.approx(0.25, abs=0.02)


def test_a_patient_is_positive_when_any_row_is_whatever_the_label_spelling():
    # "cancer" < "normal" in text order: a lexicographic max() would call every patient "normal"
    table = _table(80).assign(label=lambda t: np.where(t["label"] == 1, "cancer", "normal"))
    splits = StratifiedPatientSplitter(valid_pct=0.25, seed=0, positive="cancer")(table)
    has_cancer = table.groupby("patient_id")["label"].agg(lambda v: (v == "cancer").any())
    for s in ("train", "valid"):
        pats = table["patient_id"].iloc[splits[s]].unique()
        assert has_cancer[pats].mean() == pytest.approx(0.25, abs=0.02)
    with pytest.raises(ValueError, match="positive class 'cancr' is not among the labels"):
        StratifiedPatientSplitter(positive="cancr")(table)


def test_kfold_folds_cover_every_patient_once():
    table = _table(23)
    seen = []
    for fold in range(5):
        splits = KFoldPatientSplitter(k=5, fold=fold, seed=1)(table)
        _assert_partition_without_leak(table, splits)
        seen.extend(table["patient_id"].iloc[splits["valid"]].unique())
    assert sorted(seen) == sorted(table["patient_id"].unique())


def test_column_splitter_reads_the_split_column_and_refuses_leaks():
    table = _table(10)
    table["split"] = np.where(table["patient_id"].isin(["P1", "P2"]), "valid", np.where(table["patient_id"] == "P3", "Test", "train"))
    splits = ColumnSplitter()(table)
    _assert_partition_without_leak(table, splits)
    assert set(table["patient_id"].iloc[splits["test"]]) == {"P3"}
    assert isinstance(default_splitter(table), ColumnSplitter)
    assert isinstance(default_splitter(table.drop(columns="split")), PatientSplitter)

    extra = pd.DataFrame([{"patient_id": "P0", "series_uid": "1.0b", "label": 0, "split": "valid"}])
    leaky = pd.concat([table, extra], ignore_index=True)  # P0 is also in train
    with pytest.raises(ValueError, match="1 patient.s. appear in both 'train' and 'valid'"):
        ColumnSplitter()(leaky)
    assert len(ColumnSplitter(allow_patient_overlap=True)(leaky)["valid"]) == len(splits["valid"]) + 1
    bad = table.copy()
    bad.loc[0, "split"] = "validation"
    with pytest.raises(ValueError, match=r"must hold train/valid/test; rows \[0\]"):
        ColumnSplitter()(bad)


def test_splitter_errors_are_clear():
    with pytest.raises(ValueError, match="valid_pct"):
        PatientSplitter(valid_pct=0.7, test_pct=0.4)
    with pytest.raises(ValueError, match="cannot fill valid"):
        PatientSplitter(valid_pct=0.5)(_table(1))
    with pytest.raises(ValueError, match="'patient_id' column"):
        PatientSplitter()(pd.DataFrame({"series_uid": ["a", "b"]}))
    with pytest.raises(ValueError, match="cannot make 5 folds"):
        KFoldPatientSplitter(k=5)(_table(3))
    with pytest.raises(ValueError, match="0 <= fold < k"):
        KFoldPatientSplitter(k=3, fold=3)
