"""A seeded Learner draws from its own random stream: the caller's generators are untouched by a fit, and what
the caller draws between two fits does not change the second fit."""

from __future__ import annotations

import random

import numpy as np
import torch
from learn_core_helpers import TinyNet, tiny_dls

from medsuite.learn.learner import Learner


def _learner(seed: int | None) -> Learner:
    torch.manual_seed(1)  # the same initial weights for every learner of the test
    return Learner(tiny_dls(), TinyNet(dropout=0.3), seed=seed, progress=False)


def _global_state() -> tuple[torch.Tensor, np.ndarray, tuple]:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def test_a_seeded_fit_leaves_the_callers_generators_as_they_were():
    learn = _learner(seed=7)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    before = _global_state()
    learn.fit(1)
    after = _global_state()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]


def test_the_callers_draws_between_fits_do_not_change_a_seeded_run():
    quiet, busy = _learner(seed=7), _learner(seed=7)
    quiet.fit(1)
    quiet.fit(1)
    busy.fit(1)
    torch.rand(1000), np.random.rand(1000), random.random()  # the caller's own use of the global generators
    busy.fit(1)
    for (name, a), b in zip(quiet.model.state_dict().items(), busy.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_without_a_seed_the_learner_uses_the_global_generators():
    a, b = _learner(seed=None), _learner(seed=None)
    torch.manual_seed(5)
    a.fit(1)
    torch.manual_seed(6)
    b.fit(1)
    assert not all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True))
