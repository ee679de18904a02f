"""Top losses, most-confused pairs and subgroup performance from per-item scalars.

`collect_losses` runs the model once over a loader and keeps only a few numbers per item (loss, target,
prediction, probabilities), never the input or output tensors; items are reloaded by id when shown
(`LossTable.show`). Subgroups join the stored ids with any table column (scanner, slice thickness, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from torch import nn


@dataclass
class LossTable:
    """Per-item results: ``frame`` has ``item_id, loss, target, pred, p_target, p_pred`` (+ ``p_<class>``)."""

    frame: pd.DataFrame
    vocab: list[Any]

    def top_losses(self, k: int = 9, *, largest: bool = True) -> pd.DataFrame:
        """The ``k`` items with the largest (or smallest) loss, worst first."""
        return self.frame.sort_values("loss", ascending=not largest, kind="stable").head(k).reset_index(drop=True)

    def confusion(self) -> pd.DataFrame:
        """Confusion matrix (rows: actual, columns: predicted), labelled with the vocab."""
        from sklearn.metrics import confusion_matrix

        n = len(self.vocab)
        cm = confusion_matrix(self.frame["target"], self.frame["pred"], labels=list(range(n)))
        names = [str(v) for v in self.vocab]
        return pd.DataFrame(cm, index=pd.Index(names, name="actual"), columns=pd.Index(names, name="predicted"))

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """Off-diagonal (actual, predicted, count) pairs with at least ``min_count`` items, most frequent first."""
        cm = self.confusion()
        pairs = [(a, p, int(cm.loc[a, p])) for a in cm.index for p in cm.columns if a != p and cm.loc[a, p] >= min_count]
        return sorted(pairs, key=lambda t: -t[2])

    def subgroups(self, table: pd.DataFrame, by: str, *, id_column: str = "item_id", bins: int | Sequence[float] | None = None) -> pd.DataFrame:
        """Per-subgroup ``n, accuracy, mean_loss`` and, for two classes with both present, ``auc``.

        ``table`` supplies the ``by`` column for each ``id_column`` value (e.g. the nodule table with
        ``nodule_id``); a numeric column can be cut into ``bins`` (a count or the edges).
        """
        from sklearn.metrics import roc_auc_score

        source = table.attrs.get("source", "table")
        for col in (by, id_column):
            if col not in table.columns:
                raise ValueError(f"{source}: no column {col!r} for subgroup analysis; columns are {list(table.columns)}")
        groups = table[[id_column, by]].drop_duplicates(id_column).rename(columns={id_column: "item_id"})
        groups["item_id"] = groups["item_id"].astype(str)
        merged = self.frame.merge(groups, on="item_id", how="left")
        missing = int(merged[by].isna().sum())
        key = merged[by]
        if bins is not None:
            key = pd.cut(key.astype(float), bins=bins)
        rows = []
        for value, g in merged.groupby(key, observed=True, dropna=True):
            row = {by: value if bins is None else str(value), "n": len(g), "accuracy": float((g["target"] == g["pred"]).mean()),
                   "mean_loss": float(g["loss"].mean()), "auc": np.nan}
            if len(self.vocab) == 2 and g["target"].nunique() == 2:
                row["auc"] = float(roc_auc_score(g["target"], g["p_1"]))
            rows.append(row)
        out = pd.DataFrame(rows)
        out.attrs["unmatched_items"] = missing
        return out

    def show(self, rows: pd.DataFrame, load_item: Callable[[str], Any]) -> list[tuple[dict, Any]]:
        """Reload the items of ``rows`` (e.g. `top_losses`) through ``load_item(item_id)`` for display."""
        return [(r.to_dict(), load_item(str(r["item_id"]))) for _, r in rows.iterrows()]


def collect_losses(
    model: nn.Module,
    batches: Iterable[Any],
    item_ids: Sequence[str],
    vocab: Sequence[Any],
    *,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    device: str = "cpu",
) -> LossTable:
    """Run ``model`` over ``(x, y)`` batches (loader order = ``item_ids`` order) and keep per-item scalars.

    ``loss_fn(logits, y)`` must return per-item losses (default: cross-entropy, reduction 'none').
    """
    import torch
    import torch.nn.functional as F

    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="none"))
    losses, targets, probs = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, y in batches:
                logits = model(torch.as_tensor(x).float().to(device))
                y = torch.as_tensor(y).long().to(device)
                item_loss = loss_fn(logits, y)
                if item_loss.ndim != 1 or len(item_loss) != len(y):
                    raise ValueError(f"loss_fn must return one loss per item, got shape {tuple(item_loss.shape)}")
                losses.append(item_loss.float().cpu().numpy())
                targets.append(y.cpu().numpy())
                probs.append(torch.softmax(logits.float(), 1).cpu().numpy())
    finally:
        model.train(was_training)
    if not losses:
        raise ValueError("collect_losses: the loader yielded no batches")
    loss, target, prob = np.concatenate(losses), np.concatenate(targets), np.concatenate(probs)
    if len(loss) != len(item_ids):
        raise ValueError(f"collect_losses: {len(loss)} items from the loader but {len(item_ids)} item ids")
    if prob.shape[1] != len(vocab):
        raise ValueError(f"collect_losses: the model has {prob.shape[1]} outputs but the vocab {len(vocab)} classes")
    pred = prob.argmax(1)
    frame = pd.DataFrame({
        "item_id": [str(i) for i in item_ids], "loss": loss, "target": target, "pred": pred,
        "actual_label": [vocab[t] for t in target], "pred_label": [vocab[p] for p in pred],
        "p_target": prob[np.arange(len(prob)), target], "p_pred": prob.max(1),
        **{f"p_{c}": prob[:, c] for c in range(prob.shape[1])},
    })
    return LossTable(frame, list(vocab))
