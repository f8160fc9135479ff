"""The data shards and the launcher environment, without processes."""

from __future__ import annotations

import pytest
import torch

from surefit import distributed
from surefit.data import epoch_order, eval_shard
from surefit.errors import ConfigError, DataError


@pytest.mark.parametrize("n, world", [(64, 2), (67, 2), (10, 3), (7, 4)])
def test_train_shards_are_disjoint_equal_and_cover_all_but_the_remainder(n, world):
    shards = [epoch_order(n, 0, 3, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    joined = torch.cat(shards)
    assert len(set(joined.tolist())) == len(joined) == n - n % world
    # position i of rank r is sample i * world + r of the one-process order: global batches match
    order = epoch_order(n, 0, 3)
    for r, s in enumerate(shards):
        assert torch.equal(s, order[r : n - n % world : world])


def test_the_left_out_samples_change_with_the_epoch():
    left = [
        set(range(67)) - set(torch.cat([epoch_order(67, 0, e, r, 2) for r in (0, 1)]).tolist())
        for e in range(4)
    ]
    assert all(len(s) == 1 for s in left) and len({min(s) for s in left}) > 1


@pytest.mark.parametrize("n, batch, world", [(11, 4, 2), (13, 4, 2), (5, 2, 2), (100, 7, 3)])
def test_eval_shards_hold_every_sample_once_in_as_many_batches(n, batch, world):
    shards = [eval_shard(n, batch, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # FSDP: the same number of forwards on each rank
    assert all(len(b) > 0 for s in shards for b in s)
    assert sorted(torch.cat([b for s in shards for b in s]).tolist()) == list(range(n))


def test_an_eval_set_smaller_than_the_world_is_refused():
    with pytest.raises(DataError, match="cannot give each of 4 ranks"):
        eval_shard(3, 8, 0, 4)


def test_launch_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.launch_env() is None  # one process: nothing to set up
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.launch_env() is None  # torchrun with one process: nothing either
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR / MASTER_PORT are not set"):  # not torchrun
        distributed.launch_env()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert distributed.launch_env() == (1, 4)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("MASTER_ADDR")
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        distributed.launch_env()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert distributed.launch_env() == (2, 8)
    assert distributed.rank() == 2 and distributed.local_rank() == 0
