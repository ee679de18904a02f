"""Checkpoints (safetensors + JSON, atomic), resume — including after SIGKILL mid-epoch — and export."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from learn_core_helpers import TinyNet, resume_main, tiny_dls

from medsuite.learn.basic_metrics import accuracy
from medsuite.learn.callbacks.core import Callback, CancelFitException
from medsuite.learn.callbacks.tracking import SaveBest
from medsuite.learn.checkpoint import load_checkpoint, load_weights, save_checkpoint
from medsuite.learn.learner import Learner, set_seed

HERE = Path(__file__).parent


def test_checkpoint_round_trip_without_pickle(tmp_path):
    set_seed(0)
    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 8)).sum().backward()
    opt.step()
    random.seed(5)
    np.random.seed(5)
    path = save_checkpoint(tmp_path / "c.safetensors", model, opt, None, {"epoch": 2, "note": "x"})
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert "medsuite" in header["__metadata__"]  # plain safetensors: JSON header + raw tensors
    expected_py, expected_np, expected_t = random.random(), np.random.rand(), torch.rand(1)

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    model2 = TinyNet()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5e-2)
    from medsuite.learn.checkpoint import restore_checkpoint

    state = restore_checkpoint(load_checkpoint(path), model2, opt2, None)
    assert state == {"epoch": 2, "note": "x"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k])
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    p0, q0 = next(iter(model.parameters())), next(iter(model2.parameters()))
    assert torch.equal(opt.state[p0]["exp_avg_sq"], opt2.state[q0]["exp_avg_sq"])
    assert random.random() == expected_py and np.random.rand() == expected_np
    assert torch.equal(torch.rand(1), expected_t)


def test_bad_checkpoint_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable"):
        load_checkpoint(bad)
    set_seed(0)
    path = save_checkpoint(tmp_path / "c.safetensors", TinyNet(hidden=4), None, None, {})
    with pytest.raises(ValueError, match="do not fit this model"):
        load_weights(path, TinyNet(hidden=8))


def _learner(path, **kw) -> Learner:
    set_seed(0)
    return Learner(tiny_dls(n_train=80, bs=8), TinyNet(dropout=0.2), path=path, seed=0, progress=False,
                   metrics=[accuracy], **kw)


def test_resume_in_process_matches_uninterrupted(tmp_path):
    full = _learner(tmp_path / "full")
    full.fit_one_cycle(3, 1e-2)
    assert (tmp_path / "full" / "checkpoints" / "last.safetensors").is_file()

    class Crash(Callback):
        def after_batch(self):
            if self.learn.training and self.learn.train_iter == 13:  # epoch 2, after the step-12 checkpoint
                raise CancelFitException()

    part = _learner(tmp_path / "part", checkpoint_every=4, cbs=[Crash(), SaveBest(monitor="accuracy")])
    part.fit_one_cycle(3, 1e-2)
    state = load_checkpoint(part.checkpoint_path).meta["state"]
    assert (state["epoch"], state["iter"], state["train_iter"]) == (1, 2, 12)

    resumed = _learner(tmp_path / "part", checkpoint_every=4, cbs=[SaveBest(monitor="accuracy")])
    resumed.fit_one_cycle(3, 1e-2, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.recorder.losses == full.recorder.losses
    assert resumed.recorder.df.drop(columns="time_s").equals(full.recorder.df.drop(columns="time_s"))
    assert resumed.cbs[-1].best == max(full.recorder.df.accuracy)  # SaveBest state survived

    with pytest.raises(ValueError, match="different fit"):
        _learner(tmp_path / "part").fit_one_cycle(5, 1e-2, resume=True)
    done = _learner(tmp_path / "part")
    done.fit_one_cycle(3, 1e-2, resume=True)  # already finished: loads the final state, trains nothing
    assert torch.equal(done.model.head.weight, full.model.head.weight)


def _run(mode: str, run_dir: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(HERE / "learn_core_helpers.py"), mode, str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    hang = _run("hang", tmp_path / "killed")
    resume_main(["full", str(tmp_path / "full")])  # the uninterrupted run, here, while the other starts
    line = hang.stdout.readline()
    assert line.strip() == "READY", hang.stderr.read()
    hang.send_signal(signal.SIGKILL)
    hang.wait(timeout=30)
    assert hang.returncode == -signal.SIGKILL
    state = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.safetensors").meta["state"]
    assert (state["epoch"], state["iter"], state["train_iter"]) == (1, 5, 15)  # mid-epoch checkpoint
    assert not list((tmp_path / "killed" / "checkpoints").glob(".*"))  # no torn temp file visible

    resumed = _run("resume", tmp_path / "killed")
    out_r, err_r = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err_r
    assert out_r.split() == ["DONE", "30"]  # history restored: all 30 batch losses recorded
    a, b = TinyNet(dropout=0.2), TinyNet(dropout=0.2)
    load_weights(tmp_path / "full" / "final.safetensors", a)
    load_weights(tmp_path / "killed" / "final.safetensors", b)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k  # bit-exact on CPU


def test_export_writes_a_loadable_bundle(tmp_path):
    from medsuite.learn import bundle
    from medsuite.learn.models import build_model

    set_seed(0)
    dls = tiny_dls(n_train=32, n_valid=16, images=True)
    dls.train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(32, 1, 16, 16), torch.randint(0, 2, (32,))), batch_size=8)
    dls.valid = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(16, 1, 16, 16), torch.arange(16) % 2), batch_size=8)
    kwargs = {"in_channels": 1, "n_classes": 2, "width": 4, "depth": 2}
    learn = Learner(dls, build_model("slice_cnn", **kwargs), path=tmp_path, progress=False, metrics=[accuracy])
    learn.fit(1)
    with pytest.raises(ValueError, match="missing bundle fields"):
        learn.export(tmp_path / "b")
    from medsuite.data.blocks import SliceStack

    spec = SliceStack(k=1, size=16).spec()
    out = learn.export(tmp_path / "bundle", arch="slice_cnn", arch_kwargs=kwargs, block_spec=spec,
                       threshold=0.5, task="nodule")
    meta = json.loads((Path(out) / "bundle.json").read_text())
    assert meta["labels"] == ["benign", "malignant"]
    assert meta["metrics"]["accuracy"] == pytest.approx(learn.recorder.last["accuracy"])
    assert meta["train_config"]["fits"][0]["kind"] == "fit"
    loaded = bundle.load_bundle(out)
    for k, v in learn.model.state_dict().items():
        assert torch.equal(v.cpu(), loaded.model.state_dict()[k])


class ScaledLoader(torch.utils.data.DataLoader):
    """A DataLoader subclass with its own behaviour (like the data layer's BlockLoader)."""

    def __iter__(self):
        for x, y in super().__iter__():
            yield x * 2, y


def _custom_learner(path, **kw) -> Learner:
    set_seed(0)
    base = tiny_dls(n_train=80, bs=8)
    g = torch.Generator().manual_seed(7)
    base.train = ScaledLoader(base.train.dataset, batch_size=8, shuffle=True, generator=g)
    return Learner(base, TinyNet(dropout=0.2), path=path, seed=0, progress=False, **kw)


def test_loader_subclass_kept_and_resumed_exactly(tmp_path):
    seen = []

    class Peek(Callback):
        run_valid = False

        def before_batch(self):
            seen.append(float(self.learn.xb.abs().max()))

    full = _custom_learner(tmp_path / "full", cbs=[Peek()])
    full.fit_one_cycle(3, 1e-2)
    assert full.dl_train is full.dls.train  # used as it is: its own __iter__ ran (x doubled)
    assert max(seen) > 2 * float(full.dls.train.dataset.tensors[0].abs().max()) - 1e-6

    class Crash(Callback):
        def after_batch(self):
            if self.learn.training and self.learn.train_iter == 15:
                raise CancelFitException()

    _custom_learner(tmp_path / "part", checkpoint_every=4, cbs=[Crash()]).fit_one_cycle(3, 1e-2)
    resumed = _custom_learner(tmp_path / "part", checkpoint_every=4)  # fresh loader, generator re-seeded
    resumed.fit_one_cycle(3, 1e-2, resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k

    from medsuite.learn.callbacks import ClassBalancedSampling

    with pytest.raises(ValueError, match="cannot take another sampler"):
        _custom_learner(tmp_path / "cb", cbs=[ClassBalancedSampling()]).fit(1)
