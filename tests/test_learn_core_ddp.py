"""DDP on CPU with gloo, 2 processes: the same training, lr_find and metrics as one process at the same global batch."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from learn_core_helpers import TinyNet, ddp_worker, tiny_dls

from medsuite.learn.basic_metrics import accuracy, roc_auc
from medsuite.learn.distributed import ShardSampler, launch
from medsuite.learn.learner import Learner, set_seed


def test_shard_sampler_is_disjoint_and_complete():
    for n in (0, 1, 7, 30):
        for w in (1, 2, 3, 4):
            shards = [list(ShardSampler(range(n), r, w)) for r in range(w)]
            assert sum(shards, []) == list(range(n))  # rank order restores the loader order
            assert all(len(s) == len(ShardSampler(range(n), r, w)) for r, s in enumerate(shards))
    with pytest.raises(ValueError, match="rank 2"):
        ShardSampler(range(4), 2, 2)


@pytest.mark.ddp
def test_ddp_two_processes_match_single_process(tmp_path):
    """DDP = one process: 2 gloo ranks x batch 8 with shuffling and batch norm train the weights (and the
    running statistics) of one process with batch 16, and run one lr_find: the single process's."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = launch(ddp_worker, 2, str(tmp_path / "ddp"), backend="gloo")
        # single process, same data and init, global batch 16 = 2 ranks x 8
        set_seed(0)
        dls = tiny_dls(n_train=64, n_valid=30, bs=16, shuffle=True)
        dls.valid = torch.utils.data.DataLoader(dls.valid.dataset, batch_size=8)
        # no bias right before the batch norm: its gradient is zero in exact arithmetic, and AdamW turns the
        # rounding noise into steps, so that bias (and the running mean it shifts with it) would drift apart
        # by ~1e-5 between any two runs that sum in another order (docs/training.md)
        single = Learner(dls, TinyNet(norm=True, pre_norm_bias=False), path=tmp_path / "single", seed=0, progress=False,
                         metrics=[accuracy, roc_auc])
        found = single.lr_find(num_it=12)
        single.fit_one_cycle(2, 1e-2)
    finally:
        torch.set_num_threads(prev)
    assert res["n_batches"] == 2 * 4  # each rank: 32 items / bs 8 per epoch
    for k, v in single.model.state_dict().items():  # weights, BatchNorm running mean/var and counter
        torch.testing.assert_close(res["weights"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # one lr_find for the group: the same curve and suggestions on both ranks, those of the single process
    (losses0, *suggest0), (losses1, *suggest1) = res["lr_find"]
    assert losses0 == losses1 and suggest0 == suggest1
    np.testing.assert_allclose(losses0, found.losses, rtol=1e-5)
    assert suggest0 == pytest.approx([found.valley, found.steep, found.minimum], rel=1e-6)
    # gathered predictions cover the 30 validation items once each, in loader order
    assert res["probs"].shape == (30, 2)
    np.testing.assert_array_equal(res["targets"], dls.valid.dataset.tensors[1].numpy())
    # metrics from the sharded validation equal single-process validation of the same weights
    single.model.load_state_dict(res["weights"])
    ref = single.validate()
    for k in ("accuracy", "roc_auc", "valid_loss"):
        assert res["last"][k] == pytest.approx(ref[k], rel=1e-6, abs=1e-7), k
    assert res["last"]["accuracy"] == ref["accuracy"]
    # only rank 0 wrote the run's files
    assert (tmp_path / "ddp" / "checkpoints" / "last.safetensors").is_file()
    assert (tmp_path / "ddp" / "history.csv").read_text().count("\n") == 3


def test_epoch_sampler_deals_the_single_process_order_round_robin():
    """Rank r of W takes positions r, r+W, ... of the single-process order (padded to a multiple of W):
    the ranks' batch t together is the single process's batch t, with the same item seeds."""
    from torch.utils.data import RandomSampler

    from medsuite.learn.loaders import EpochSampler

    data = list(range(10))
    single = EpochSampler(RandomSampler(data), seed=3, item_seeds=True)
    single.set_epoch(2)
    ranks = [EpochSampler(RandomSampler(data), seed=3, item_seeds=True, rank=r, world_size=3) for r in range(3)]
    for s in ranks:
        s.set_epoch(2)
    whole = list(single)
    shares = [list(s) for s in ranks]
    assert [len(s) for s in ranks] == [4, 4, 4] and all(len(x) == 4 for x in shares)
    for pos, item in enumerate(whole):
        assert shares[pos % 3][pos // 3] == item  # same index, same augmentation seed
    assert [shares[r][3][0] for r in range(1, 3)] == [whole[0][0], whole[1][0]]  # padding repeats the start
    ranks[1].set_skip(2)
    assert list(ranks[1]) == shares[1][2:] and len(ranks[1]) == 2


def test_sync_batchnorm_is_plain_batchnorm_outside_a_group_and_converts_back():
    from torch import nn

    from medsuite.learn.distributed import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12)))
    ref = copy.deepcopy(model)
    params = {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    converted = convert_sync_batchnorm(model)
    assert converted is model and isinstance(model[1], SyncBatchNorm) and isinstance(model[2][1], SyncBatchNorm)
    assert {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()} == params  # shared tensors
    x = torch.randn(5, 1, 4, 4)
    torch.testing.assert_close(model(x), ref(x))  # training mode, no group: plain batch norm, same stats
    torch.testing.assert_close(model[1].running_var, ref[1].running_var)
    revert_sync_batchnorm(model)
    assert type(model[1]) is nn.BatchNorm2d and type(model[2][1]) is nn.BatchNorm1d
    assert {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()} == params


def test_learner_refuses_torchrun_processes_outside_the_distributed_context(monkeypatch, tmp_path):
    """Under torchrun the caller joins the group (`distrib_ctx`); a learner never does it by itself, and
    does not train alone on every rank either."""
    from medsuite.learn.distributed import distrib_ctx, is_distributed

    with distrib_ctx() as distributed:  # not under torchrun: nothing happens
        assert distributed is False and not is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="distrib_ctx"):
        Learner(tiny_dls(), TinyNet(), progress=False)
