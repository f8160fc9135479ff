"""No host sync per step: the host reads device values at log intervals and evaluations only.

Every Python-level way of reading a tensor back to the host is counted by patching it on
``torch.Tensor`` during a fit. Two runs with the same number of epochs, logs and evaluations but
twice the optimizer steps must read the same number of times.
"""

from __future__ import annotations

import collections

import pytest
import torch

import surefit as sf
from tests.conftest import make_classification, mlp

READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    counts: collections.Counter[str] = collections.Counter()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def _fit(steps_per_epoch: int, log_every: int, **kw) -> int:
    x, y = make_classification(800)
    r = sf.fit(mlp(), (x, y), val=(x[:64], y[:64]), epochs=2, batch_size=800 // steps_per_epoch,
               log_every=log_every, progress="off", device="cpu", seed=0, **kw)  # fmt: skip
    return r.steps


# on CPU the guard reads its flag from memory; the device way (CUDA's) is forced here too, where
# SGD without momentum, which keeps no optimizer state, skips on the device from the first step
@pytest.mark.parametrize("kw", [{}, {"optimizer": "sgd", "momentum": 0.0}])
@pytest.mark.parametrize("path", ["host", "device"])
def test_host_reads_do_not_grow_with_steps(host_reads, kw, path, monkeypatch):
    if path == "device":
        from surefit.health import Health

        monkeypatch.setattr(Health, "_reads_on_host", lambda self, loss: False)
    # 2 epochs: 2 evaluations and 2 log intervals in both runs, 200 then 400 optimizer steps
    assert _fit(steps_per_epoch=100, log_every=100, **kw) == 200
    reads_200 = sum(host_reads.values())
    host_reads.clear()
    assert _fit(steps_per_epoch=200, log_every=200, **kw) == 400
    reads_400 = sum(host_reads.values())
    assert reads_400 == reads_200, dict(host_reads)
    # and they are few: a handful per log, per evaluation, and at set-up
    assert reads_200 <= 40, dict(host_reads)


def test_the_counter_sees_a_read_per_step(host_reads):
    # the check can fail: a loop that reads the loss every step is counted at every step
    x, y = make_classification(64)
    seen = []
    sf.fit(mlp(), (x, y), epochs=1, batch_size=8, progress="off", device="cpu", checks=False,
           step=lambda net, b: seen.append(1) or _loss_read(net, b))  # fmt: skip
    assert host_reads["item"] >= len(seen) == 8


def _loss_read(net, batch):
    loss = torch.nn.functional.cross_entropy(net(batch[0]), batch[1])
    loss.item()
    return loss
