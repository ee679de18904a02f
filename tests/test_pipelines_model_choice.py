"""One model choice for a task: the config check before a run builds the very model the run trains."""

from __future__ import annotations

import pandas as pd

from medsuite.data import MultiView, SliceStack
from medsuite.pipelines.tasks import TASK_ARCH_DEFAULTS, model_choice


def test_the_nodule_task_defaults_apply_to_its_slice_cnn_and_user_kwargs_win():
    block = SliceStack(k=3, size=24, window=["lung", "mediastinum"])
    name, args = model_choice(block, 2, task="nodule")
    assert name == "slice_cnn" and args == {"in_channels": 6, "n_classes": 2,
                                            **TASK_ARCH_DEFAULTS["nodule"]["slice_cnn"]}
    assert model_choice(block, 2, arch_kwargs={"depth": 4}, task="nodule")[1]["depth"] == 4
    assert model_choice(block, 2, task="series")[1] == {"in_channels": 6, "n_classes": 2}  # no nodule defaults
    assert "width" not in model_choice(MultiView(size=24), 2, task="nodule")[1]  # only for the slice CNN


def test_the_pre_run_check_builds_the_model_the_run_trains(monkeypatch):
    import medsuite.learn.models as models
    from medsuite.pipelines.config import config_from_dict
    from medsuite.pipelines.train import _check_model

    built = []
    real = models.build_model
    monkeypatch.setattr(models, "build_model", lambda name, **kw: built.append((name, kw)) or real(name, **kw))
    cfg = config_from_dict({"task": "nodule", "name": "m", "out": "unused", "data": {"table": "unused.csv"},
                            "block": {"type": "SliceStack", "k": 3, "size": 24}}, check_inputs=False)
    _check_model(cfg, pd.DataFrame({"label": ["benign", "malignant"]}))
    assert built == [model_choice(SliceStack(k=3, size=24), 2, task="nodule")]  # what make_learner builds
