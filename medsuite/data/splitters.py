"""Splitters: table -> row positions of the train / valid / test sets, never splitting a patient.

Every splitter is a callable ``splitter(table) -> {"train": idx, "valid": idx, "test": idx}`` (numpy int
arrays of row *positions*, each sorted; ``test`` may be empty). Splits are at patient level: all rows of a
patient land in one set, so nodules of one person never leak between training and evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("train", "valid", "test")


def _patients(table: pd.DataFrame, col: str) -> np.ndarray:
    if col not in table.columns:
        raise ValueError(f"{table.attrs.get('source', 'table')}: splitting by patient needs a {col!r} column")
    if table[col].isna().any():
        rows = table.index[table[col].isna()].tolist()[:5]
        raise ValueError(f"{table.attrs.get('source', 'table')}: empty {col!r} in rows {rows}; every row needs a patient")
    return table[col].astype(str).to_numpy()


def _check_pcts(valid_pct: float, test_pct: float) -> None:
    if not (0 <= valid_pct < 1 and 0 <= test_pct < 1 and valid_pct + test_pct < 1):
        raise ValueError(f"need 0 <= valid_pct, test_pct and valid_pct + test_pct < 1; got {valid_pct}, {test_pct}")


def _rows_of(patients: np.ndarray, groups: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for split in SPLITS:
        chosen = groups.get(split, np.array([], dtype=str))
        out[split] = np.flatnonzero(np.isin(patients, chosen)).astype(np.int64)
    return out


def _count(n: int, pct: float) -> int:
    """Patients for a set of ``pct``: rounded, and at least one when ``pct`` > 0 and there are patients to spare."""
    if pct <= 0:
        return 0
    return max(1, int(round(n * pct)))


@dataclass(frozen=True)
class PatientSplitter:
    """Random split of *patients* into train/valid(/test) by ``valid_pct`` and ``test_pct``."""

    valid_pct: float = 0.2
    test_pct: float = 0.0
    seed: int = 0
    patient_col: str = "patient_id"

    def __post_init__(self) -> None:
        _check_pcts(self.valid_pct, self.test_pct)

    def __call__(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        patients = _patients(table, self.patient_col)
        unique = np.unique(patients)
        n_valid, n_test = _count(len(unique), self.valid_pct), _count(len(unique), self.test_pct)
        if n_valid + n_test >= len(unique):
            raise ValueError(
                f"{len(unique)} patient(s) cannot fill valid ({n_valid}) and test ({n_test}) and keep some for training"
            )
        order = np.random.default_rng(self.seed).permutation(unique)
        return _rows_of(
            patients,
            {"valid": order[:n_valid], "test": order[n_valid : n_valid + n_test], "train": order[n_valid + n_test :]},
        )


def _patient_labels(table: pd.DataFrame, patients: np.ndarray, label_col: str,
                    positive: str | None) -> tuple[np.ndarray, np.ndarray]:
    """One label a patient, for stratifying: ``positive`` when any of the patient's rows has it, else the
    patient's most frequent label (ties: the first in sorted order). Labels compare as text."""
    if label_col not in table.columns:
        raise ValueError(f"{table.attrs.get('source', 'table')}: stratifying needs a {label_col!r} column")
    labels = table[label_col].astype(str).to_numpy()
    if positive is not None and str(positive) not in set(labels):
        raise ValueError(f"{table.attrs.get('source', 'table')}: the positive class {positive!r} is not among the "
                         f"labels {sorted(set(labels))}")
    frame = pd.DataFrame({"patient": patients, "label": labels})
    per: dict[str, str] = {}
    for patient, group in frame.groupby("patient", sort=True):
        values = group["label"]
        if positive is not None and (values == str(positive)).any():
            per[str(patient)] = str(positive)
        else:
            counts = values.value_counts()
            per[str(patient)] = sorted(counts.index[counts == counts.max()])[0]
    unique = np.array(sorted(per), dtype=str)
    return unique, np.array([per[p] for p in unique], dtype=str)


@dataclass(frozen=True)
class StratifiedPatientSplitter:
    """Patient-level split that keeps each set's share of (patient-level) labels close to the whole table's.

    A patient counts as ``positive`` when any of their rows is (e.g. one malignant nodule among benign ones);
    without ``positive`` a patient's label is their most frequent one.
    """

    valid_pct: float = 0.2
    test_pct: float = 0.0
    seed: int = 0
    label_col: str = "label"
    patient_col: str = "patient_id"
    positive: str | None = None

    def __post_init__(self) -> None:
        _check_pcts(self.valid_pct, self.test_pct)

    def __call__(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        from sklearn.model_selection import train_test_split

        patients = _patients(table, self.patient_col)
        unique, labels = _patient_labels(table, patients, self.label_col, self.positive)
        n_valid, n_test = _count(len(unique), self.valid_pct), _count(len(unique), self.test_pct)
        if n_valid + n_test >= len(unique):
            raise ValueError(f"{len(unique)} patient(s) cannot fill valid ({n_valid}) and test ({n_test}) and keep some for training")
        try:
            rest, valid, rest_y, _ = train_test_split(unique, labels, test_size=n_valid, stratify=labels, random_state=self.seed)
            test = np.array([], dtype=str)
            if n_test:
                rest, test = train_test_split(rest, test_size=n_test, stratify=rest_y, random_state=self.seed + 1)
        except ValueError as exc:
            raise ValueError(f"cannot stratify {len(unique)} patients by {self.label_col!r}: {exc}") from exc
        return _rows_of(patients, {"train": rest, "valid": valid, "test": test})


@dataclass(frozen=True)
class KFoldPatientSplitter:
    """Fold ``fold`` of ``k`` patient-level folds as the validation set (optionally stratified by label)."""

    k: int = 5
    fold: int = 0
    seed: int = 0
    stratify: bool = False
    label_col: str = "label"
    patient_col: str = "patient_id"
    positive: str | None = None

    def __post_init__(self) -> None:
        if self.k < 2 or not 0 <= self.fold < self.k:
            raise ValueError(f"KFoldPatientSplitter: need k >= 2 and 0 <= fold < k, got k={self.k}, fold={self.fold}")

    def __call__(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        patients = _patients(table, self.patient_col)
        unique = np.unique(patients)
        if len(unique) < self.k:
            raise ValueError(f"{len(unique)} patient(s) cannot make {self.k} folds")
        if self.stratify:
            from sklearn.model_selection import StratifiedKFold

            unique, labels = _patient_labels(table, patients, self.label_col, self.positive)
            folds = StratifiedKFold(n_splits=self.k, shuffle=True, random_state=self.seed).split(unique, labels)
            valid = unique[list(folds)[self.fold][1]]
        else:
            order = np.random.default_rng(self.seed).permutation(unique)
            valid = np.array_split(order, self.k)[self.fold]
        train = np.setdiff1d(unique, valid)
        return _rows_of(patients, {"train": train, "valid": valid})


@dataclass(frozen=True)
class ColumnSplitter:
    """Sets from a column (``split``) holding ``train`` / ``valid`` / ``test``; a patient in two sets is an
    error unless ``allow_patient_overlap``."""

    col: str = "split"
    patient_col: str = "patient_id"
    allow_patient_overlap: bool = False

    def __call__(self, table: pd.DataFrame) -> dict[str, np.ndarray]:
        source = table.attrs.get("source", "table")
        if self.col not in table.columns:
            raise ValueError(f"{source}: no {self.col!r} column to split by")
        values = table[self.col].astype(str).str.strip().str.lower().to_numpy()
        bad = ~np.isin(values, SPLITS)
        if bad.any():
            rows = np.flatnonzero(bad)[:5].tolist()
            raise ValueError(f"{source}: column {self.col!r} must hold train/valid/test; rows {rows} hold {sorted(set(values[bad]))}")
        out = {split: np.flatnonzero(values == split).astype(np.int64) for split in SPLITS}
        if not self.allow_patient_overlap and self.patient_col in table.columns:
            patients = table[self.patient_col].astype(str).to_numpy()
            sets = {s: set(patients[idx]) for s, idx in out.items()}
            for i, a in enumerate(SPLITS):
                for b in SPLITS[i + 1 :]:
                    if sets[a] & sets[b]:
                        raise ValueError(
                            f"{source}: {len(sets[a] & sets[b])} patient(s) appear in both {a!r} and {b!r} "
                            f"(column {self.col!r}); that leaks patients between sets"
                        )
        return out


def default_splitter(table: pd.DataFrame) -> ColumnSplitter | PatientSplitter:
    """`ColumnSplitter` when the table has a ``split`` column, else a seeded 80/20 `PatientSplitter`."""
    return ColumnSplitter() if "split" in table.columns else PatientSplitter(valid_pct=0.2, seed=0)
