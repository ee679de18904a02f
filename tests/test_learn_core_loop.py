"""Learner loop: events, state replacement, cancel exceptions, errors, predictions, AMP options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from learn_core_helpers import TinyCNN, TinyNet, tiny_dls

from medsuite.learn.basic_metrics import accuracy, roc_auc
from medsuite.learn.callbacks.core import (
    Callback,
    CallbackError,
    CancelBatchException,
    CancelFitException,
    CancelTrainException,
    CancelValidateException,
)
from medsuite.learn.learner import Learner, set_seed


def make(tmp_path, **kw) -> Learner:
    set_seed(0)
    kw.setdefault("progress", False)
    dls = kw.pop("dls", None) or tiny_dls()
    return Learner(dls, kw.pop("model", None) or TinyNet(), path=tmp_path, **kw)


class EventLog(Callback):
    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith(("before_", "after_")):
            return lambda: object.__getattribute__(self, "events").append(name)
        return object.__getattribute__(self, name)


def test_events_fire_in_loop_order(tmp_path):
    log = EventLog()
    learn = make(tmp_path, cbs=[log], checkpoint=False)
    learn.fit(1)
    ev = log.events
    assert ev[0] == "before_fit" and ev[-1] == "after_fit"
    assert ev[1:3] == ["before_epoch", "before_train"]
    first = ev[ev.index("before_batch"): ev.index("after_batch") + 1]
    assert first == ["before_batch", "after_pred", "after_loss", "before_backward", "after_backward",
                     "before_step", "after_step", "after_batch"]
    assert ev.count("before_step") == len(learn.dls.train)  # only training batches step
    n_valid = len(learn.dls.valid)
    assert ev.count("before_batch") == len(learn.dls.train) + n_valid
    assert ev.index("after_train") < ev.index("before_validate") < ev.index("after_validate") < ev.index("after_epoch")
    assert not any(e.startswith("after_cancel") for e in ev)


def test_callbacks_can_replace_batch_and_loss(tmp_path):
    seen = {}

    class Replace(Callback):
        def before_batch(self):
            self.learn.xb = torch.zeros_like(self.learn.xb)

        def after_pred(self):
            seen["pred_input_zero"] = True

        def after_loss(self):
            if self.learn.training:
                self.learn.loss_grad = self.learn.loss_grad * 0  # no gradient signal at all

    learn = make(tmp_path, cbs=[Replace()], checkpoint=False, opt_func=torch.optim.SGD, wd=0.0)
    before = {k: v.clone() for k, v in learn.model.state_dict().items()}
    learn.fit(1, lr=0.5)
    after = learn.model.state_dict()
    # zero loss => zero gradients => SGD leaves the weights unchanged (BN running stats do change)
    assert torch.equal(before["head.weight"], after["head.weight"])
    assert torch.equal(before["body.0.weight"], after["body.0.weight"])


def test_callback_order_attribute(tmp_path):
    calls = []

    class A(Callback):
        order = 5

        def before_fit(self):
            calls.append("A")

    class B(Callback):
        order = -5

        def before_fit(self):
            calls.append("B")

    make(tmp_path, cbs=[A(), B()], checkpoint=False).fit(1)
    assert calls == ["B", "A"]


def test_callback_error_names_callback_and_event(tmp_path):
    class Broken(Callback):
        def after_loss(self):
            raise ZeroDivisionError("boom")

    learn = make(tmp_path, cbs=[Broken()], checkpoint=False)
    with pytest.raises(CallbackError, match="Broken.*after_loss.*ZeroDivisionError: boom") as info:
        learn.fit(1)
    assert info.value.callback == "Broken" and info.value.event == "after_loss"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_cancel_batch_skips_step(tmp_path):
    class SkipAll(Callback):
        run_valid = False

        def before_batch(self):
            raise CancelBatchException()

    log = EventLog()
    learn = make(tmp_path, cbs=[SkipAll(), log], checkpoint=False)
    w = learn.model.head.weight.detach().clone()
    learn.fit(1)
    assert torch.equal(w, learn.model.head.weight)
    assert log.events.count("after_cancel_batch") == len(learn.dls.train)
    assert "before_step" not in log.events


def test_cancel_fit_train_validate(tmp_path):
    class StopAt3(Callback):
        def after_batch(self):
            if self.learn.training and self.learn.train_iter == 2:
                raise CancelFitException()

    log = EventLog()
    learn = make(tmp_path, cbs=[StopAt3(), log], checkpoint=False)
    learn.fit(5)
    assert log.events.count("before_step") == 3
    assert "after_cancel_fit" in log.events and log.events[-1] == "after_fit"

    class NoTrain(Callback):
        def before_train(self):
            raise CancelTrainException()

    learn = make(tmp_path, cbs=[NoTrain()], checkpoint=False, metrics=[accuracy])
    w = learn.model.head.weight.detach().clone()
    learn.fit(1)
    assert torch.equal(w, learn.model.head.weight)
    assert "accuracy" in learn.recorder.last  # validation still ran

    class NoValid(Callback):
        def before_validate(self):
            raise CancelValidateException()

    learn = make(tmp_path, cbs=[NoValid()], checkpoint=False, metrics=[accuracy])
    learn.fit(1)
    assert "valid_loss" not in learn.recorder.last and "train_loss" in learn.recorder.last


def test_show_training_loop_lists_callbacks(tmp_path, capsys):
    class Mine(Callback):
        def after_loss(self):
            pass

    learn = make(tmp_path, cbs=[Mine()])
    text = learn.show_training_loop()
    line = next(x for x in text.splitlines() if x.strip().startswith("after_loss"))
    assert "Mine" in line
    assert "Recorder" in next(x for x in text.splitlines() if x.strip().startswith("after_batch"))
    assert "after_loss" in capsys.readouterr().out


def test_recorder_metrics_and_preds(tmp_path):
    learn = make(tmp_path, metrics=[accuracy, roc_auc], checkpoint=False)
    learn.fit_one_cycle(4, 1e-2)
    df = learn.recorder.df
    assert list(df.epoch) == [0, 1, 2, 3]
    assert {"train_loss", "valid_loss", "accuracy", "roc_auc", "lr", "mom"} <= set(df.columns)
    assert df.train_loss.iloc[-1] < df.train_loss.iloc[0]
    assert len(learn.recorder.batch_df) == 4 * len(learn.dls.train)

    preds = learn.get_preds(with_loss=True, with_embeddings=True)
    n = len(learn.dls.valid.dataset)
    assert preds.probs.shape == (n, 2) and preds.targets.shape == (n,)
    assert preds.losses.shape == (n,) and preds.embeddings.shape == (n, 16)
    np.testing.assert_allclose(preds.probs.sum(1), 1, rtol=1e-5)
    # per-item losses are the cross-entropy of each item
    ce = -np.log(preds.probs[np.arange(n), preds.targets])
    np.testing.assert_allclose(preds.losses, ce, rtol=1e-4, atol=1e-5)
    res = learn.validate()
    assert res["accuracy"] == pytest.approx(accuracy(preds.targets, preds.probs))
    assert res["valid_loss"] == pytest.approx(df.valid_loss.iloc[-1], rel=1e-6)
    assert res["accuracy"] > 0.7  # separable toy data: it actually learns

    x0 = learn.dls.valid.dataset[0][0]
    p = learn.predict(x0)
    np.testing.assert_allclose(p.probs, preds.probs[0], rtol=1e-5)
    assert p.label == learn.dls.vocab[p.index]


def test_per_item_loss_without_reduction_attribute(tmp_path):
    def my_loss(pred, y):
        return torch.nn.functional.cross_entropy(pred, y)

    assert isinstance(make(tmp_path, loss_func=torch.nn.CrossEntropyLoss).loss_func, torch.nn.CrossEntropyLoss)
    learn = make(tmp_path, loss_func=my_loss, checkpoint=False)
    learn.fit(1)
    preds = learn.get_preds(with_loss=True)
    ce = -np.log(preds.probs[np.arange(len(preds.targets)), preds.targets])
    np.testing.assert_allclose(preds.losses, ce, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_clear(tmp_path):
    with pytest.raises(TypeError, match="train and .valid"):
        Learner(object(), TinyNet(), path=tmp_path)
    with pytest.raises(ValueError, match="amp must be"):
        Learner(tiny_dls(), TinyNet(), path=tmp_path, amp="int8")
    dls = tiny_dls()
    dls.train = [torch.zeros(4, 8)]  # batches that are not (x, y)
    learn = Learner(dls, TinyNet(), path=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"\(x, y\) pairs"):
        learn.fit(1)


def test_bf16_autocast_channels_last_and_determinism(tmp_path):
    dls = tiny_dls(images=True)
    learn = make(tmp_path / "a", dls=dls, model=TinyCNN(), amp="bf16", channels_last=True, checkpoint=False)
    assert learn.amp_dtype == torch.bfloat16
    seen = {}

    class Peek(Callback):
        def after_pred(self):
            seen["dtype"] = self.learn.pred.dtype
            seen["cl"] = self.learn.xb.is_contiguous(memory_format=torch.channels_last)

    learn.add_cbs([Peek()])
    learn.fit(1)
    assert seen == {"dtype": torch.bfloat16, "cl": True}
    assert np.isfinite(learn.recorder.last["train_loss"])

    weights = []
    for run in range(2):
        set_seed(1)
        model = TinyNet(dropout=0.3)
        learn = make(tmp_path / f"d{run}", model=model, seed=3, deterministic=True, checkpoint=False)
        learn.fit_one_cycle(2, 1e-2)
        weights.append(learn.model.head.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the fit


def test_dict_metrics_are_prefixed(tmp_path):
    from medsuite.learn.learner import compute_metrics

    def auc_ci(probs, targets):
        return {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9, "method": "bootstrap"}

    out = compute_metrics([auc_ci, accuracy], np.array([[0.2, 0.8], [0.9, 0.1]]), np.array([1, 1]))
    assert out == {"auc_ci": 0.8, "auc_ci_ci_low": 0.7, "auc_ci_ci_high": 0.9, "accuracy": 0.5}


def test_fp16_grad_scaler_path_with_clipping_and_resume(tmp_path):
    from medsuite.learn.callbacks import GradientClip
    from medsuite.learn.checkpoint import load_checkpoint

    learn = make(tmp_path, amp="fp16", cbs=[GradientClip(1.0)])
    assert learn.amp_dtype == torch.float16 and learn.scaler is not None
    learn.fit(2, lr=1e-2)
    assert np.isfinite(learn.recorder.df.train_loss).all()
    saved = load_checkpoint(learn.checkpoint_path).meta["scaler"]
    assert saved["scale"] == learn.scaler.get_scale() and saved["_growth_tracker"] > 0
    again = make(tmp_path, amp="fp16", cbs=[GradientClip(1.0)])
    again.fit(2, lr=1e-2, resume=True)  # finished run: restores the state, scaler included
    assert again.scaler.state_dict() == learn.scaler.state_dict()
    assert torch.equal(again.model.head.weight, learn.model.head.weight)


def test_compile_is_opt_in(tmp_path):
    learn = make(tmp_path, compile={"backend": "eager"}, checkpoint=False)
    learn.fit(1)
    assert learn._fwd_model is not learn.model  # the training forward went through torch.compile
    assert np.isfinite(learn.recorder.last["train_loss"])
    plain = make(tmp_path, checkpoint=False)
    assert plain._forward_model() is plain.model  # not compiled unless asked
