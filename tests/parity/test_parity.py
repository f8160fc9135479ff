"""surefit == a hand-written canonical loop, bit for bit (fp32, CPU).

surefit picks torch's fused optimizer kernels where they exist (optim.implementation = "auto"), and
a fused step rounds differently from the for-loop one, so the hand loop here builds its optimizer
the way the fastest hand-written loop does, with ``fused=True``; the last test pins
``implementation = "for_loop"`` against torch's default constructor.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import surefit as sf
from surefit.data import epoch_order
from tests.conftest import make_classification, mlp


def hand_loop(model, x, y, *, epochs, batch_size, seed, make_opt, accumulate=1, clip=None):
    """The loop an expert writes by hand, with surefit's data order."""
    torch.manual_seed(seed)
    opt = make_opt(model)
    n = len(x)
    for epoch in range(epochs):
        order = epoch_order(n, seed, epoch)
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        for w in range(0, len(batches), accumulate):
            window = batches[w : w + accumulate]
            opt.zero_grad(set_to_none=True)
            for idx in window:
                loss = F.cross_entropy(model(x[idx]), y[idx])
                (loss / len(window)).backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return model


def _fit(model, x, y, **kw):
    return sf.fit(
        model, (x, y), task="multiclass", schedule="constant", progress="off", device="cpu", **kw
    )


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fit_equals_hand_written_loop_bitwise(name):
    x, y = make_classification(200)
    a, b = mlp(seed=1), mlp(seed=1)
    if name == "sgd":
        _fit(
            a,
            x,
            y,
            optimizer="sgd",
            lr=0.1,
            weight_decay=0.0,
            momentum=0.9,
            clip_norm=None,
            epochs=3,
            batch_size=32,
            seed=7,
        )
        make = lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, fused=True)
    else:
        _fit(
            a,
            x,
            y,
            optimizer="adamw",
            lr=1e-2,
            weight_decay=0.0,
            clip_norm=None,
            epochs=3,
            batch_size=32,
            seed=7,
        )
        make = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0, fused=True)
    hand_loop(b, x, y, epochs=3, batch_size=32, seed=7, make_opt=make)
    for (name_a, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name_a


def test_parity_with_weight_decay_groups_and_clipping():
    x, y = make_classification(160)
    a, b = mlp(seed=2), mlp(seed=2)
    _fit(
        a,
        x,
        y,
        optimizer="adamw",
        lr=1e-2,
        weight_decay=0.1,
        clip_norm=0.5,
        epochs=2,
        batch_size=16,
        seed=3,
    )

    def make(m):
        decay = [p for p in m.parameters() if p.ndim > 1]
        no_decay = [p for p in m.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=1e-2, fused=True)

    hand_loop(b, x, y, epochs=2, batch_size=16, seed=3, make_opt=make, clip=0.5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_accumulation_4x8_equals_1x32():
    x, y = make_classification(32)
    a, b = mlp(seed=3), mlp(seed=3)
    common = dict(
        optimizer="sgd", lr=0.5, weight_decay=0.0, momentum=0.0, clip_norm=None, epochs=1, seed=0
    )
    _fit(a, x, y, batch_size=8, accumulate=4, **common)
    _fit(b, x, y, batch_size=32, accumulate=1, **common)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)


def test_short_last_window_divides_by_its_real_size():
    # 5 micro-batches with accumulate=4: windows of 4 and 1; the 1-batch window must not be /4
    x, y = make_classification(40)
    a, b = mlp(seed=4), mlp(seed=4)
    common = dict(
        optimizer="sgd", lr=0.3, weight_decay=0.0, momentum=0.0, clip_norm=None, epochs=1, seed=0
    )
    _fit(a, x, y, batch_size=8, accumulate=4, **common)
    make = lambda m: torch.optim.SGD(m.parameters(), lr=0.3, fused=True)
    hand_loop(b, x, y, epochs=1, batch_size=8, seed=0, make_opt=make, accumulate=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)

    # and the same hand loop dividing the short window by 4 differs: the test can fail
    c = mlp(seed=4)
    torch.manual_seed(0)
    opt = torch.optim.SGD(c.parameters(), lr=0.3, fused=True)
    order = epoch_order(40, 0, 0)
    batches = [order[i : i + 8] for i in range(0, 40, 8)]
    for w in range(0, 5, 4):
        opt.zero_grad()
        for idx in batches[w : w + 4]:
            (F.cross_entropy(c(x[idx]), y[idx]) / 4).backward()
        opt.step()
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_fit_trains_the_given_model_in_place_and_reports():
    x, y = make_classification(300)
    model = mlp(seed=5)
    before = [p.detach().clone() for p in model.parameters()]
    r = sf.fit(
        model, (x, y), val=0.2, epochs=15, lr=3e-2, batch_size=32, progress="off", device="cpu"
    )
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert r.model is model
    assert r.best_metrics["val_accuracy"] > 0.8
    assert len(r.history) == 15 and r.history[-1]["epoch"] == 15
    assert math.isfinite(r.history[-1]["train_loss"])


@pytest.mark.parametrize("implementation", ["for_loop", "fused"])
def test_implementation_override_equals_that_torch_constructor(implementation):
    x, y = make_classification(200)
    a, b = mlp(seed=2), mlp(seed=2)
    _fit(a, x, y, optimizer="adamw", lr=1e-2, weight_decay=0.0, clip_norm=None, epochs=2,
         batch_size=32, seed=5, implementation=implementation)  # fmt: skip
    kw = {"foreach": False} if implementation == "for_loop" else {"fused": True}
    make = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0, **kw)
    hand_loop(b, x, y, epochs=2, batch_size=32, seed=5, make_opt=make)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
