"""Top losses, confusion and subgroups come from per-item scalars; items are reloaded by id to show."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsuite.interpret.losses import collect_losses
from medsuite.learn.predict import Predictor


@pytest.fixture()
def table():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2))
    x = torch.randn(20, 4)
    y = torch.tensor([0, 1] * 10)
    batches = [(x[i:i + 6], y[i:i + 6]) for i in range(0, 20, 6)]
    ids = [f"item{i}" for i in range(20)]
    lt = collect_losses(Predictor.plain(model, ["benign", "malignant"]), batches, ids)
    with torch.no_grad():
        logits = model(x)
    return lt, logits, y, ids


def test_top_losses_match_cross_entropy(table):
    lt, logits, y, ids = table
    expected = F.cross_entropy(logits, y, reduction="none").numpy()
    top = lt.top_losses(5)
    assert list(top["item_id"]) == [ids[i] for i in np.argsort(-expected, kind="stable")[:5]]
    np.testing.assert_allclose(top["loss"], np.sort(expected)[::-1][:5], rtol=1e-5)
    assert set(lt.frame.columns) >= {"item_id", "loss", "target", "pred", "p_target", "p_pred", "p_0", "p_1"}
    assert lt.frame.memory_usage(deep=False).sum() < 20 * 200  # scalars only


def test_confusion_and_most_confused(table):
    lt, logits, y, _ = table
    pred = logits.argmax(1).numpy()
    cm = lt.confusion()
    assert cm.loc["benign", "malignant"] == int(((y.numpy() == 0) & (pred == 1)).sum())
    pairs = lt.most_confused()
    assert all(a != p and n >= 1 for a, p, n in pairs)
    assert sum(n for *_, n in pairs) == int((pred != y.numpy()).sum())


def test_subgroups_with_auc_and_bins(table):
    from sklearn.metrics import roc_auc_score

    lt, logits, y, ids = table
    meta = pd.DataFrame({"item_id": ids, "scanner": ["A"] * 10 + ["B"] * 10, "thickness": np.linspace(0.5, 5, 20)})
    out = lt.subgroups(meta, "scanner")
    assert list(out["n"]) == [10, 10]
    probs = torch.softmax(logits, 1)[:, 1].numpy()
    assert out.loc[0, "auc"] == pytest.approx(roc_auc_score(y[:10], probs[:10]))
    binned = lt.subgroups(meta, "thickness", bins=[0, 2.5, 5])
    assert binned["n"].sum() == 20
    with pytest.raises(ValueError, match="no column 'site'"):
        lt.subgroups(meta, "site")


def test_show_reloads_only_the_rows_asked(table):
    lt, *_ = table
    loaded = []
    shown = lt.show(lt.top_losses(3), lambda item_id: loaded.append(item_id) or item_id.upper())
    assert len(shown) == 3 and loaded == [r["item_id"] for r, _ in shown]
    assert shown[0][1] == shown[0][0]["item_id"].upper()


def test_errors_name_the_problem():
    model = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="item ids"):
        collect_losses(Predictor.plain(model, ["x", "y", "z"]), [(torch.randn(2, 4), torch.tensor([0, 1]))], ["a"])
    with pytest.raises(ValueError, match="expected \\(batch, 2\\) logits"):
        collect_losses(Predictor.plain(model, ["x", "y"]), [(torch.randn(2, 4), torch.tensor([0, 1]))], ["a", "b"])
    with pytest.raises(TypeError, match="needs a medsuite.learn.predict.Predictor"):
        collect_losses(model, [(torch.randn(2, 4), torch.tensor([0, 1]))], ["a", "b"])


def test_decisions_follow_the_predictor_threshold_and_named_positive():
    from medsuite.interpret.losses import loss_table

    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.55, 0.45]])
    lt = loss_table(probs, [0, 1, 0], ["a", "b", "c"], ["malignant", "benign"], decisions=[0, 1, 0], positive_index=0)
    assert lt.frame["pred_label"].tolist() == ["malignant", "benign", "malignant"]
    np.testing.assert_allclose(lt.frame["loss"], -np.log([0.7, 0.8, 0.55]))
