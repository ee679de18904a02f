"""Top losses, most-confused pairs and subgroup performance from per-item scalars.

`collect_losses` runs the bundle's predictor (`medsuite.learn.predict.Predictor`: TTA, calibration, the
threshold) once over a loader, or `loss_table` takes probabilities already computed; only a few numbers per
item are kept (loss, target, the predictor's decision, probabilities), never the input or output tensors;
items are reloaded by id when shown (`LossTable.show`). The loss is the cross-entropy of the predictor's
probabilities. Subgroups join the stored ids with any table column (scanner, slice thickness, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from medsuite.learn.predict import Predictor


@dataclass
class LossTable:
    """Per-item results: ``frame`` has ``item_id, loss, target, pred, p_target, p_pred`` (+ ``p_<class>``);
    ``pred`` is the predictor's decision (threshold on P(positive) for binary problems, else arg-max)."""

    frame: pd.DataFrame
    vocab: list[Any]
    positive_index: int | None = None

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
                pos = 1 if self.positive_index is None else self.positive_index
                row["auc"] = float(roc_auc_score(g["target"] == pos, g[f"p_{pos}"]))
            rows.append(row)
        out = pd.DataFrame(rows)
        out.attrs["unmatched_items"] = missing
        return out

    def show(self, rows: pd.DataFrame, load_item: Callable[[str], Any]) -> list[tuple[dict, Any]]:
        """Reload the items of ``rows`` (e.g. `top_losses`) through ``load_item(item_id)`` for display."""
        return [(r.to_dict(), load_item(str(r["item_id"]))) for _, r in rows.iterrows()]


def loss_table(probs: Any, targets: Any, item_ids: Sequence[str], vocab: Sequence[Any], *,
               decisions: Any = None, positive_index: int | None = None) -> LossTable:
    """A `LossTable` from probabilities ``(N, C)`` (the predictor's), class ids and item ids; ``decisions``
    are the predicted class ids (default arg-max)."""
    prob = np.asarray(probs, dtype=np.float64)
    target = np.asarray(targets).astype(np.int64).reshape(-1)
    if prob.ndim != 2 or len(prob) != len(target):
        raise ValueError(f"loss_table: probabilities {prob.shape} do not match {len(target)} targets")
    if len(prob) != len(item_ids):
        raise ValueError(f"loss_table: {len(prob)} items but {len(item_ids)} item ids")
    if prob.shape[1] != len(vocab):
        raise ValueError(f"loss_table: {prob.shape[1]} probability columns but the vocab has {len(vocab)} classes")
    pred = prob.argmax(1) if decisions is None else np.asarray(decisions).astype(np.int64)
    p_target = prob[np.arange(len(prob)), target]
    frame = pd.DataFrame({
        "item_id": [str(i) for i in item_ids], "loss": -np.log(np.clip(p_target, 1e-12, None)), "target": target,
        "pred": pred, "actual_label": [vocab[t] for t in target], "pred_label": [vocab[p] for p in pred],
        "p_target": p_target, "p_pred": prob[np.arange(len(prob)), pred],
        **{f"p_{c}": prob[:, c] for c in range(prob.shape[1])},
    })
    return LossTable(frame, list(vocab), positive_index)


def collect_losses(predictor: Predictor, batches: Iterable[Any], item_ids: Sequence[str],
                   vocab: Sequence[Any] | None = None) -> LossTable:
    """Run ``predictor`` over ``(x, y)`` batches (loader order = ``item_ids`` order) and keep per-item scalars."""
    from medsuite.learn.predict import Predictor

    if not isinstance(predictor, Predictor):
        raise TypeError(f"collect_losses needs a medsuite.learn.predict.Predictor, got {type(predictor).__name__}")
    probs, targets = predictor.predict_loader(batches)
    return loss_table(probs, targets, item_ids, list(vocab) if vocab is not None else predictor.labels,
                      decisions=predictor.decide_index(probs), positive_index=predictor.positive_index)
