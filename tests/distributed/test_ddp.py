"""DDP on 2 CPU processes (gloo): step equivalence, one all-reduce per window, exact metrics.

One torchrun launch runs the three scenarios of ``worker.ddp``; each test compares its output with
the same fit in this single process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import surefit as sf
from tests.conftest import Samples

from . import worker
from .conftest import run_scenario


@pytest.fixture(scope="module")
def ddp_out(out_dir: Path) -> Path:
    run_scenario("ddp", out_dir)
    return out_dir


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_two_ranks_of_16_step_as_one_process_of_32(ddp_out: Path) -> None:
    model = worker.mlp()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    sf.fit(model, train=worker.data(), batch_size=32, max_steps=2, **worker.COMMON)
    two = torch.load(ddp_out / "step.pt")
    assert _max_diff(two, model.state_dict()) < 1e-6
    assert _max_diff(two, start) > 1e-3  # it did train


def test_accumulation_reduces_gradients_once_per_window(ddp_out: Path) -> None:
    saved = torch.load(ddp_out / "accumulate.pt")
    # 2 optimizer steps of 4 micro-batches each; the tiny model's gradients fit in one bucket
    assert saved["calls"] == 2
    model = worker.mlp()
    sf.fit(model, train=worker.data(), batch_size=8, accumulate=4, max_steps=2, **worker.COMMON)
    assert _max_diff(saved["weights"], model.state_dict()) < 1e-6


def test_uneven_validation_split_gives_the_exact_global_metrics(ddp_out: Path) -> None:
    # 11 validation samples (6 + 5 on two ranks) and 13 test samples (7 + 6)
    xv, yv = worker.data(11, seed=1)
    xt, yt = worker.data(13, seed=2)
    model = worker.mlp()
    result = sf.fit(
        model,
        train=worker.data(),
        val=Samples(xv, yv),  # a Dataset's evaluation shards
        test=(xt, yt),
        batch_size=32,
        eval_batch_size=4,
        max_steps=1,
        **worker.COMMON,
    )
    two = torch.load(ddp_out / "metrics.pt")
    with torch.no_grad():
        val_hits = (model(xv).argmax(1) == yv).sum().item()
        test_loss = torch.nn.functional.cross_entropy(model(xt), yt).item()
    assert two["val"]["val_accuracy"] == pytest.approx(val_hits / 11, abs=1e-7)
    assert two["val"]["val_accuracy"] == pytest.approx(result.final_metrics["val_accuracy"])
    assert two["val"]["val_loss"] == pytest.approx(result.final_metrics["val_loss"], abs=1e-6)
    assert two["test"]["test_loss"] == pytest.approx(test_loss, abs=1e-6)
    assert two["test"]["test_accuracy"] == pytest.approx(result.test_metrics["test_accuracy"])


def test_metric_states_are_summed_over_ranks(ddp_out: Path) -> None:
    from surefit.metrics import Overlap

    two = torch.load(ddp_out / "reduce.pt")
    preds, target = worker.rank_share()
    hits = (preds == target).double()
    assert two["total"] == 3.0 and two["count"] == 6  # 1.5 and 3 from each of two ranks
    assert two["mean"] == pytest.approx(hits.mean().item())
    assert two["fraction"] == pytest.approx(hits.mean().item())
    iou = Overlap(3, "iou", skip_background=False)
    iou.update(preds, target)
    assert two["iou"] == pytest.approx(iou.compute().item())


def test_a_stop_on_one_rank_stops_all_at_the_same_step(ddp_out: Path) -> None:
    ranks = [torch.load(ddp_out / f"stop-{r}.pt") for r in (0, 1)]
    assert [r["steps"] for r in ranks] == [3, 3]
    assert [r["reason"] for r in ranks] == ["another rank stopped", "rank 1 only"]
    ranks = [torch.load(ddp_out / f"time-{r}.pt") for r in (0, 1)]
    assert [r["steps"] for r in ranks] == [2, 2]  # a time limit: every rank says so
    assert [r["reason"] for r in ranks] == ["reached max_time_s=1e+06"] * 2


def test_a_stop_asked_at_one_ranks_epoch_end_is_agreed_before_the_next_epoch(ddp_out: Path) -> None:
    """It came after the epoch's last per-step agreement: rank 0 started the next epoch alone
    and the job died in its first collective."""
    ranks = [torch.load(ddp_out / f"epoch-{r}.pt") for r in (0, 1)]
    assert [r["steps"] for r in ranks] == [8, 8]  # one epoch: 64 samples, global batches of 8
    assert [r["reason"] for r in ranks] == ["another rank stopped", "rank 1 at an epoch end"]


def test_a_loss_non_finite_on_one_rank_skips_the_step_on_both(ddp_out: Path) -> None:
    """The gradients (and so the norm) are all-reduced, the loss is not: rank 0 stepped with a
    finite loss where rank 1 skipped, and the replicas drifted apart."""
    a, b = (torch.load(ddp_out / f"inf-{r}.pt") for r in (0, 1))
    assert _max_diff(a, b) == 0.0
