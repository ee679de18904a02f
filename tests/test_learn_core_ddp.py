"""DDP on CPU with gloo, 2 processes: pad-free sharded validation gives the single-process metrics."""

from __future__ import annotations

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
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = launch(ddp_worker, 2, str(tmp_path / "ddp"), backend="gloo")
        # single process, same data and init, global batch 16 = 2 ranks x 8
        set_seed(0)
        dls = tiny_dls(n_train=64, n_valid=30, bs=16, shuffle=False)
        dls.valid = torch.utils.data.DataLoader(dls.valid.dataset, batch_size=8)
        single = Learner(dls, TinyNet(norm=False), path=tmp_path / "single", seed=0, progress=False,
                         metrics=[accuracy, roc_auc])
        single.fit_one_cycle(2, 1e-2)
    finally:
        torch.set_num_threads(prev)
    assert res["n_batches"] == 2 * 4  # each rank: 32 items / bs 8 per epoch
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(res["weights"][k], v, rtol=1e-5, atol=1e-6)
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
