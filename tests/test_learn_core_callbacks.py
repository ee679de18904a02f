"""Built-in callbacks: MixUp/CutMix, label smoothing, accumulation, clipping, class-balanced sampling,
early stopping, SaveBest, activation stats, progress and loggers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from learn_core_helpers import TinyCNN, TinyNet, tiny_dls
from matplotlib.figure import Figure

from medsuite.learn.basic_metrics import accuracy
from medsuite.learn.callbacks import (
    ActivationStats,
    Callback,
    CallbackError,
    ClassBalancedSampling,
    CSVLogger,
    CutMix,
    EarlyStopping,
    GradientAccumulation,
    GradientClip,
    LabelSmoothingCrossEntropy,
    MixUp,
    ProgressCallback,
    SaveBest,
    TensorBoardLogger,
)
from medsuite.learn.checkpoint import load_weights
from medsuite.learn.learner import Learner, set_seed


def make(tmp_path, dls=None, model=None, **kw) -> Learner:
    set_seed(0)
    kw.setdefault("progress", False)
    kw.setdefault("checkpoint", False)
    return Learner(dls or tiny_dls(), model or TinyNet(), path=tmp_path, **kw)


class Capture(Callback):
    """Keeps the (x, y, loss) each training batch reached the loss with."""

    order = 50
    run_valid = False

    def __init__(self):
        self.batches = []

    def after_loss(self):
        self.batches.append((self.learn.xb.clone(), self.learn.yb.clone(), self.learn.pred.detach().clone(),
                             float(self.learn.loss)))


@pytest.mark.parametrize("cls", [MixUp, CutMix])
def test_mixup_and_cutmix_mix_targets_and_loss_uses_them(tmp_path, cls):
    dls = tiny_dls(images=True)
    cap, mix = Capture(), cls(alpha=1.0)
    learn = make(tmp_path, dls=dls, model=TinyCNN(), cbs=[mix, cap])
    learn.fit(1)
    assert len(cap.batches) == len(dls.train)
    x, y, pred, loss = cap.batches[-1]
    assert y.shape == (x.shape[0], 2) and y.dtype == torch.float32  # soft targets
    np.testing.assert_allclose(y.sum(1).numpy(), 1, rtol=1e-6)
    lam = float(mix.lam)
    assert 0.5 <= lam <= 1.0 or cls is CutMix
    # each target is the blend of two one-hot labels with the mixing weight (1.0 when both agree)
    row_max = y.max(1).values.numpy()
    assert np.all(np.isclose(row_max, 1.0) | np.isclose(row_max, max(lam, 1 - lam), atol=1e-6))
    assert ((y > 0) & (y < 1)).any() or lam in (0.0, 1.0)
    # the recorded loss is cross-entropy against those mixed targets
    expected = float(-(y * F.log_softmax(pred, 1)).sum(1).mean())
    assert loss == pytest.approx(expected, rel=1e-5)
    # validation is untouched: metrics use hard labels
    learn.metrics = [accuracy]
    assert 0 <= learn.validate()["accuracy"] <= 1


def test_cutmix_pastes_a_box_with_lam_the_kept_area():
    class Fake:
        training = True

    torch.manual_seed(0)
    cm = CutMix(alpha=1.0)
    learn = Fake()
    x = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(4)])
    learn.xb, learn.yb = x, torch.tensor([0, 1, 0, 1])
    cm.learn = learn
    cm.before_batch()
    out = learn.xb
    for i in range(4):
        kept = float((out[i] == i).float().mean())
        if int(cm.perm[i]) != i:
            assert kept == pytest.approx(float(cm.lam))
    learn.pred = torch.zeros(4, 2)
    cm.after_pred()
    assert torch.allclose(learn.yb.sum(1), torch.ones(4))


def test_label_smoothing_matches_formula():
    pred = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.1
    lf = LabelSmoothingCrossEntropy(eps)
    target = F.one_hot(y, 3).float() * (1 - eps) + eps / 3
    expected = -(target * F.log_softmax(pred, 1)).sum(1).mean()
    assert float(lf(pred, y)) == pytest.approx(float(expected), rel=1e-6)
    lf.reduction = "none"
    assert lf(pred, y).shape == (6,)
    with pytest.raises(ValueError, match="eps"):
        LabelSmoothingCrossEntropy(1.5)


class GradGrab(Callback):
    order = 30  # after accumulation / clipping

    def __init__(self):
        self.grads = []

    def before_step(self):
        self.grads.append({n: p.grad.clone() for n, p in self.learn.model.named_parameters()})
        self.norms = getattr(self, "norms", []) + [float(torch.norm(torch.stack(
            [p.grad.norm() for p in self.learn.model.parameters()])))]


def test_gradient_accumulation_equals_big_batch(tmp_path):
    dls8 = tiny_dls(n_train=32, bs=8, shuffle=False)
    dls32 = tiny_dls(n_train=32, bs=32, shuffle=False)
    g_acc, g_big = GradGrab(), GradGrab()
    # no BatchNorm in the way: batch statistics would differ between bs 8 and bs 32
    set_seed(0)
    m1 = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    m2 = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    m2.load_state_dict(m1.state_dict())
    Learner(dls8, m1, path=tmp_path / "a", progress=False, checkpoint=False,
            cbs=[GradientAccumulation(4), g_acc]).fit(1)
    Learner(dls32, m2, path=tmp_path / "b", progress=False, checkpoint=False, cbs=[g_big]).fit(1)
    assert len(g_acc.grads) == 1 and len(g_big.grads) == 1  # 4 batches of 8 -> one step
    for name, g in g_big.grads[0].items():
        torch.testing.assert_close(g_acc.grads[0][name], g, rtol=1e-5, atol=1e-7)


def test_gradient_clip_bounds_norm(tmp_path):
    grab = GradGrab()
    learn = make(tmp_path, cbs=[GradientClip(max_norm=0.01), grab], lr=1.0)
    learn.fit(1)
    assert max(grab.norms) <= 0.01 * (1 + 1e-4)
    assert float(learn.grad_norm) > 0.01  # it had something to clip


def test_class_balanced_sampling_evens_out_classes(tmp_path):
    dls = tiny_dls(n_train=400, bs=20, pos_share=0.1)
    labels = dls.train.dataset.tensors[1]
    assert labels.float().mean() < 0.15

    class Labels(Callback):
        run_valid = False

        def __init__(self):
            self.ys = []

        def before_batch(self):
            self.ys.append(self.learn.yb.clone())

    seen = Labels()
    learn = make(tmp_path, dls=dls, cbs=[ClassBalancedSampling(), seen])
    learn.fit(2)
    share = float(torch.cat(seen.ys).float().mean())
    assert 0.42 < share < 0.58
    assert learn.train_sampler is None  # uninstalled after the fit


def test_early_stopping_after_patience(tmp_path):
    class FakeMetric(Callback):
        order = 65  # after the recorder logged the row, before the tracker reads it
        values = [1.0, 0.5, 0.6, 0.7, 0.4, 0.3]

        def after_epoch(self):
            self.learn.recorder.epochs[-1]["score"] = self.values[self.learn.epoch]

    es = EarlyStopping(monitor="score", comp=np.less, patience=2)
    learn = make(tmp_path, cbs=[FakeMetric(), es])
    learn.fit(6)
    assert len(learn.recorder.epochs) == 4  # best at epoch 1, no gain at 2 and 3 -> stop
    assert es.stopped_epoch == 3 and es.best == 0.5


def test_save_best_keeps_weights_of_best_epoch(tmp_path):
    snaps = {}

    class Snap(Callback):
        order = 90

        def after_epoch(self):
            snaps[self.learn.epoch] = {k: v.clone() for k, v in self.learn.model.state_dict().items()}

    class FakeMetric(Callback):
        order = 65
        values = [0.3, 0.9, 0.5, 0.8]

        def after_epoch(self):
            self.learn.recorder.epochs[-1]["auc"] = self.values[self.learn.epoch]

    sb = SaveBest(monitor="auc", fname="best")
    learn = make(tmp_path, cbs=[FakeMetric(), sb, Snap()])
    learn.fit(4, lr=1e-2)
    assert sb.best == 0.9 and sb.best_epoch == 1
    model = TinyNet()
    load_weights(tmp_path / "models" / "best.safetensors", model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snaps[1][k]), k
    assert not torch.equal(snaps[1]["head.weight"], snaps[3]["head.weight"])


def test_activation_stats_and_colorful_dimension(tmp_path):
    stats = ActivationStats(every=1)
    learn = make(tmp_path, cbs=[stats])
    learn.fit(2)
    df = stats.stats
    assert set(df.layer) == {"body.0", "body.1", "head"}
    n_batches = 2 * len(learn.dls.train)
    assert (df.groupby("layer").size() == n_batches).all()
    # BatchNorm output (train mode) has batch mean ~0 and std ~1 per feature
    bn = df[df.layer == "body.1"]
    assert bn["mean"].abs().max() < 0.3 and bn["std"].between(0.8, 1.2).all()
    assert df["near_zero"].between(0, 1).all()
    hist = stats.histograms("body.1")
    assert hist.shape == (n_batches, 60)
    assert hist.sum(1).max() <= 8 * 16  # counts of the batch's activations inside the range
    assert isinstance(stats.color_dim(), Figure) and isinstance(stats.plot_layer_stats("head"), Figure)
    assert not stats.handles  # hooks removed after fit
    with pytest.raises(CallbackError, match="ActivationStats.*before_fit.*no module named"):
        make(tmp_path, cbs=[ActivationStats(modules=["nope"])]).fit(1)


def test_progress_table_csv_and_tensorboard(tmp_path, capsys):
    import io

    stream = io.StringIO()
    learn = make(tmp_path, metrics=[accuracy], cbs=[ProgressCallback(stream=stream), CSVLogger()])
    learn.fit(2)
    out = stream.getvalue()
    assert "train_loss" in out and "accuracy" in out and out.count("\n") >= 2
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[1]["valid_loss"]) == pytest.approx(learn.recorder.df.valid_loss.iloc[1])

    import tensorboard  # noqa: F401  (the [tensorboard] extra; installed by .ci/run)
    learn = make(tmp_path, cbs=[TensorBoardLogger()])
    learn.fit(1)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
