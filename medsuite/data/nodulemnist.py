"""NoduleMNIST3D (MedMNIST v2): ready-made 28³ nodule patches from LIDC-IDRI, as a table and a dataset.

The ``nodulemnist3d.npz`` file holds ``train_images``/``val_images``/``test_images`` (N, 28, 28, 28) uint8
and the matching ``*_labels`` (N, 1) with 0 = benign, 1 = malignant. The patches have no world
geometry, so they feed a `Patch3D`-shaped model directly, not the world-mm samplers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medsuite.data.tables import TableError

SPLITS = {"train": "train", "valid": "val", "test": "test"}


def load_nodulemnist3d(path: str | Path) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """``({split: images (N, 28, 28, 28) uint8}, table)``; the table has one row a patch:
    ``nodule_id, split, index, label``. Splits are ``train``/``valid``/``test`` (the file's ``val``)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: NoduleMNIST3D file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise TableError(f"{path}: not a readable .npz file ({exc})") from exc
    images: dict[str, np.ndarray] = {}
    rows = []
    with data:
        for split, key in SPLITS.items():
            if f"{key}_images" not in data or f"{key}_labels" not in data:
                raise TableError(f"{path}: missing arrays {key}_images/{key}_labels (has {sorted(data.files)})")
            x, y = data[f"{key}_images"], data[f"{key}_labels"].reshape(-1)
            if x.ndim != 4 or len(x) != len(y):
                raise TableError(f"{path}: {key}_images must be (N, D, H, W) with N = len({key}_labels), "
                                 f"got {x.shape} and {y.shape}")
            if not np.isin(y, [0, 1]).all():
                raise TableError(f"{path}: {key}_labels must be 0/1, got {sorted(np.unique(y))[:5]}")
            images[split] = x
            rows += [{"nodule_id": f"nodulemnist3d/{split}/{i}", "split": split, "index": i, "label": "malignant" if int(v) else "benign"}
                     for i, v in enumerate(y)]
    table = pd.DataFrame(rows)
    table.attrs["source"] = str(path)
    return images, table


class NoduleMNIST3D:
    """A map-style dataset of one split: item ``i`` is ``(x float32 (1, D, H, W) in [0, 1], y int64)``;
    works with a torch DataLoader (tensors are made lazily so this module does not import torch)."""

    def __init__(self, path: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        images, table = load_nodulemnist3d(path)
        self.images = images[split]
        self.table = table[table["split"] == split].reset_index(drop=True)
        self.labels = (self.table["label"] == "malignant").to_numpy(dtype=np.int64)
        self.vocab = ["benign", "malignant"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):  # noqa: ANN204 - returns torch tensors
        import torch

        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)[None]
        return x, torch.tensor(self.labels[i], dtype=torch.int64)
