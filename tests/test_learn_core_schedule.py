"""One-cycle schedule, AdamW parameter groups, and the learning-rate finder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from learn_core_helpers import TinyNet, tiny_dls
from matplotlib.figure import Figure

from medsuite.learn.learner import Learner, set_seed
from medsuite.learn.lr_find import edge, minimum, steep, valley
from medsuite.learn.optim import param_groups
from medsuite.learn.schedule import OneCycleSchedule, combined_cos


def test_one_cycle_shape():
    s = OneCycleSchedule(1e-2, pct_start=0.25, div=25, final_div=1e4)
    assert s.lr(0) == pytest.approx(1e-2 / 25)
    assert s.lr(0.25) == pytest.approx(1e-2)
    assert s.lr(1) == pytest.approx(1e-2 / 1e4)
    assert s.mom(0) == pytest.approx(0.95) and s.mom(0.25) == pytest.approx(0.85) and s.mom(1) == pytest.approx(0.95)
    lrs = [s.lr(p) for p in np.linspace(0, 1, 101)]
    peak = int(np.argmax(lrs))
    assert peak == 25
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1], strict=True))  # rising
    assert all(a >= b for a, b in zip(lrs[peak:-1], lrs[peak + 1:], strict=True))  # falling
    # cosine: halfway through the warm-up the lr is the midpoint
    assert combined_cos(0.125, 0.25, 0.0, 1.0, 0.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_max"):
        OneCycleSchedule(0)


def test_fit_one_cycle_sets_lr_and_beta1(tmp_path):
    set_seed(0)
    learn = Learner(tiny_dls(), TinyNet(), path=tmp_path, progress=False, checkpoint=False)
    learn.fit_one_cycle(2, 1e-2)
    lrs, moms = np.array(learn.recorder.lrs), np.array(learn.recorder.moms)
    n = len(lrs)
    s = OneCycleSchedule(1e-2)
    expected = [s.lr(i / n) for i in range(n)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-9)
    np.testing.assert_allclose(moms, [s.mom(i / n) for i in range(n)], rtol=1e-9)
    assert learn.opt.param_groups[0]["betas"][1] == 0.99  # beta2 untouched


def test_adamw_groups_exclude_norm_and_bias():
    model = TinyNet()
    groups = {g["name"]: g for g in param_groups(model, 0.05)}
    decay_ids = {id(p) for p in groups["decay"]["params"]}
    no_decay_ids = {id(p) for p in groups["no_decay"]["params"]}
    assert decay_ids == {id(model.body[0].weight), id(model.head.weight)}
    assert {id(model.body[1].weight), id(model.body[1].bias), id(model.body[0].bias), id(model.head.bias)} == no_decay_ids
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.05

    learn = Learner(tiny_dls(), model, progress=False, wd=0.05, checkpoint=False)
    learn.create_opt()
    assert isinstance(learn.opt, torch.optim.AdamW)
    assert sorted(g["weight_decay"] for g in learn.opt.param_groups) == [0.0, 0.05]


def test_suggestion_functions_follow_fastai():
    lrs = np.logspace(-6, 0, 50)
    x = np.log10(lrs)
    losses = 1 + (x + 3) ** 2 / 10  # minimum at 1e-3
    losses[x > -1] += 10 * (x[x > -1] + 1)  # diverges at the end
    assert minimum(lrs, losses)[0] == pytest.approx(lrs[np.argmin(losses)] / 10)
    s, i = steep(lrs, losses)
    grads = np.diff(losses) / np.diff(np.log(lrs))
    assert i == int(np.argmin(grads)) and s == lrs[i]
    v, j = valley(lrs, losses)
    assert 1e-6 < v < 1e-3  # inside the descending valley, before the minimum
    e, k = edge(lrs, losses)  # where the loss first rises 25 % above its running minimum, over 20
    assert losses[k] > 1.25 * losses[:k].min() and (losses[:k] <= 1.25 * np.minimum.accumulate(losses[:k])).all()
    assert e == pytest.approx(lrs[k] / 20)
    noisy = losses + np.random.default_rng(0).normal(0, 0.02, losses.size)  # flat noise moves 'minimum', not the edge
    assert edge(lrs, noisy)[1] == k
    assert edge(lrs[:10], losses[:10]) == (pytest.approx(lrs[9] / 20), 9)  # never diverged: the end of the sweep


def test_lr_find_restores_state_and_suggests(tmp_path):
    set_seed(0)
    learn = Learner(tiny_dls(n_train=128, bs=16), TinyNet(), path=tmp_path, progress=False)
    learn.fit(1, lr=1e-3)
    state = {k: v.clone() for k, v in learn.model.state_dict().items()}
    opt_state = {k: v.clone() for k, v in learn.opt.state[learn.opt.param_groups[0]["params"][0]].items()}
    rows = len(learn.recorder.epochs)
    rng = torch.get_rng_state()
    files = sorted(p.name for p in tmp_path.rglob("*"))

    res = learn.lr_find(num_it=60)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    restored = learn.opt.state[learn.opt.param_groups[0]["params"][0]]
    assert all(torch.equal(restored[k], v) for k, v in opt_state.items())
    assert len(learn.recorder.epochs) == rows and torch.equal(torch.get_rng_state(), rng)
    assert sorted(p.name for p in tmp_path.rglob("*")) == files  # no temp or checkpoint file written

    assert 1e-7 <= res.lrs[0] < res.lrs[-1] <= 10
    assert np.all(np.diff(np.log(res.lrs)) > 0)  # exponential sweep
    for v in (res.valley, res.steep, res.minimum, res.edge):
        assert 1e-8 < v < 10
    assert isinstance(res.plot(), Figure)
    if res.diverged:  # stopped at divergence: last smoothed loss above 4x the best
        assert res.losses[-1] > 4 * res.losses.min() or not math.isfinite(res.losses[-1])


def test_lr_find_stops_on_divergence(tmp_path):
    set_seed(0)
    learn = Learner(tiny_dls(n_train=128, bs=16), TinyNet(), path=tmp_path, progress=False,
                    opt_func=torch.optim.SGD, wd=0.0)
    res = learn.lr_find(start_lr=1e-3, end_lr=1e6, num_it=100)
    assert res.diverged and len(res.lrs) < 100
    assert res.losses[-1] > 4 * res.losses.min() or not math.isfinite(res.losses[-1])
    assert learn.opt is None  # created for the sweep, dropped with it
