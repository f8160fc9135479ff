"""Scenarios run by each process of a distributed test (``torchrun ... worker.py NAME OUT``).

The same builders make the single-process references in the tests, so that both sides start
from the same model and data.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from tests.conftest import Samples

torch.set_num_threads(1)


def data(n: int = 64, features: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = (x @ torch.randn(features, classes, generator=g)).argmax(1)
    return x, y


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(x)


class TinyTransformer(nn.Module):
    """Token sequences -> class: embedding, two blocks in a ModuleList, mean pool, head."""

    def __init__(self, vocab: int = 16, dim: int = 16, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def tokens(n: int = 64, seq: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 16, (n, seq), generator=g)
    return x, (x[:, 0] % 3)


COMMON = dict(optimizer="adamw", lr=1e-2, schedule="constant", progress="off", seed=0)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on every rank (gathers FSDP shards)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=False)
    return {k: v.detach().clone() for k, v in get_model_state_dict(model, options=opts).items()}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def ddp_step(out: Path) -> None:
    import surefit as sf

    model = mlp()
    sf.fit(model, train=data(), batch_size=32, max_steps=2, strategy="ddp", **COMMON)
    if rank() == 0:
        torch.save(model.state_dict(), out / "step.pt")


class CountAllReduces:
    """Registers a DDP comm hook at the start of fit that counts bucket all-reduces."""

    def __init__(self) -> None:
        self.calls = 0

    def on_fit_start(self, run) -> None:  # noqa: ANN001
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def hook(state, bucket):  # noqa: ANN001, ANN202
            self.calls += 1
            return default_hooks.allreduce_hook(None, bucket)

        run._trainer.net.register_comm_hook(None, hook)


def ddp_accumulate(out: Path) -> None:
    import surefit as sf

    model, counter = mlp(), CountAllReduces()
    sf.fit(
        model, train=data(), batch_size=8, accumulate=4, max_steps=2, callbacks=[counter], **COMMON
    )
    if rank() == 0:
        torch.save({"weights": model.state_dict(), "calls": counter.calls}, out / "accumulate.pt")


def uneven_eval(out: Path) -> None:
    import surefit as sf

    xv, yv = data(11, seed=1)
    xt, yt = data(13, seed=2)
    result = sf.fit(
        mlp(),
        train=data(),
        val=Samples(xv, yv),  # a Dataset's evaluation shards
        test=(xt, yt),
        batch_size=32,
        eval_batch_size=4,
        max_steps=1,
        **COMMON,
    )
    if rank() == 0:
        torch.save({"val": result.final_metrics, "test": result.test_metrics}, out / "metrics.pt")


class SaveFull:
    """At the end of fit (the process group still up), rank 0 saves the gathered weights."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_fit_end(self, run) -> None:  # noqa: ANN001
        weights = full_state(run.model)
        if rank() == 0:
            torch.save(weights, self.path)


def fsdp_fit(
    run_dir: Path, steps: int, save_to: Path | None = None, pause_at: int = 0, **options: object
) -> nn.Module:
    """The FSDP scenario's fit: SGD, because Adam turns the reduction-order noise of gradients
    that are zero in exact arithmetic (attention key biases) into whole learning-rate steps."""
    import surefit as sf
    from surefit.callbacks import PauseAt

    model = TinyTransformer()
    callbacks = [SaveFull(save_to)] if save_to else []
    sf.fit(
        model,
        train=tokens(48),
        batch_size=16,  # 3 steps an epoch: step 4 is inside the second epoch
        max_steps=steps,
        checkpoint_every=2,
        run_dir=run_dir,
        strategy="fsdp",
        clip_norm=0.05,  # below the gradient norm: every step clips, with the global norm
        callbacks=callbacks + ([PauseAt(pause_at)] if pause_at else []),
        **{**COMMON, "optimizer": "sgd", "lr": 0.1, **options},
    )
    return model


def fsdp(out: Path) -> None:
    """Train to step 4 with checkpoints; keep a copy of that run; resume it to step 6; and run
    0 -> 6 uninterrupted in another run directory, and once more with the blocks' activations
    recomputed in backward (checkpointing applied before fully_shard)."""
    import shutil

    fsdp_fit(out / "run", 4, out / "weights-4.pt")
    if rank() == 0:  # the other rank only reads the run directory until rank 0 joins it again
        shutil.copytree(out / "run", out / "run-at-4")
    fsdp_fit(out / "run", 6, out / "weights-6-resumed.pt")
    fsdp_fit(out / "straight", 6, out / "weights-6-straight.pt")
    fsdp_fit(out / "paused", 6, pause_at=5)  # between checkpoints (every 2, epochs of 3)
    fsdp_fit(out / "paused", 6, out / "weights-6-paused.pt")
    checkpointed = out / "weights-6-checkpointed.pt"
    fsdp_fit(out / "checkpointed", 6, checkpointed, activation_checkpointing=["Block"])


class Fail:
    """Brings rank 1 down at step 2: by SIGKILL, or by raising."""

    def __init__(self, how: str) -> None:
        self.how = how

    def on_step_end(self, run) -> None:  # noqa: ANN001
        if rank() == 1 and run.optimizer_step == 2:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("rank 1 failed on purpose")


def fail(out: Path, how: str) -> None:
    import surefit as sf

    sf.fit(mlp(), train=data(), batch_size=8, max_steps=1000, callbacks=[Fail(how)], **COMMON)


def load() -> dict:
    """The data factory of the test recipe."""
    return {"train": data(), "val": data(11, seed=1)}


RECIPE = """
name = "dist-test"
model = "tests.distributed.worker:mlp"

[data]
name = "tests.distributed.worker:load"
batch_size = 32

[optim]
name = "adamw"
lr = 1e-2

[schedule]
name = "constant"

[train]
max_steps = 2
"""


def reduce_states(out: Path) -> None:
    """surefit's own metrics (Mean, Fraction, Overlap) summed over ranks with uneven shares."""
    from surefit import distributed
    from surefit.metrics import Fraction, Mean, MetricSet, Overlap

    preds, target = rank_share()
    metrics = MetricSet(
        {
            "mean": Mean(lambda p, t: (p == t).float()),
            "fraction": Fraction(lambda p, t: (p == t, torch.ones_like(t))),
            "iou": Overlap(3, "iou", skip_background=False),
        },
        torch.device("cpu"),
    )
    with distributed.process_group("cpu", 60):
        metrics.update(preds, target)
        total, count = distributed.reduce_eval(torch.tensor(1.5, dtype=torch.float64), 3, metrics)
        values = metrics.compute()
    if rank() == 0:
        torch.save({"total": total.item(), "count": count, **values}, out / "reduce.pt")


def rank_share(world: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank r's share (samples r, r + world, ...) of 9 predictions and targets; all on rank -1."""
    g = torch.Generator().manual_seed(3)
    preds, target = torch.randint(0, 3, (9,), generator=g), torch.randint(0, 3, (9,), generator=g)
    r = int(os.environ.get("RANK", "-1"))
    return (preds, target) if r < 0 else (preds[r::world], target[r::world])


class StopOnRankOne:
    """Rank 1 alone asks to stop at step 3 (as a signal or a time limit may on one rank)."""

    def on_step_end(self, run) -> None:  # noqa: ANN001
        if rank() == 1 and run.optimizer_step == 3:
            run.request_stop("rank 1 only")


class TimeUpOnRankOne:
    """Rank 1's clock reaches the time limit first (as a slower or later-started rank's may)."""

    def on_step_end(self, run) -> None:  # noqa: ANN001
        if rank() == 1 and run.optimizer_step == 2:
            run.request_stop("reached max_time_s=1e+06")


class StopAtEpochEndOnRankOne:
    """Rank 1 alone asks to stop in its first epoch's end (after the epoch's last agreement)."""

    def on_epoch_end(self, run) -> None:  # noqa: ANN001
        if rank() == 1 and run.epoch == 1:
            run.request_stop("rank 1 at an epoch end")


def inf_loss_on_rank_one(model, batch):  # noqa: ANN001, ANN201
    """A loss made infinite on rank 1 at step 3 by a constant: its gradients stay finite."""
    import torch.nn.functional as F

    x, y = batch
    out = model(x)
    loss = F.cross_entropy(out, y)
    inf_loss_on_rank_one.calls += 1
    if rank() == 1 and inf_loss_on_rank_one.calls == 3:
        loss = loss + float("inf")
    return loss, out


inf_loss_on_rank_one.calls = 0


def stop_one(out: Path) -> None:
    import surefit as sf

    result = sf.fit(mlp(), train=data(), batch_size=8, epochs=3,
                    callbacks=[StopAtEpochEndOnRankOne()], **COMMON)  # fmt: skip
    torch.save({"steps": result.steps, "reason": result.stop_reason}, out / f"epoch-{rank()}.pt")
    model = mlp()
    sf.fit(model, train=data(), batch_size=8, epochs=1, step=inf_loss_on_rank_one, checks=False,
           **COMMON)  # fmt: skip
    torch.save(full_state(model), out / f"inf-{rank()}.pt")

    result = sf.fit(
        mlp(), train=data(), batch_size=8, max_steps=50, callbacks=[StopOnRankOne()], **COMMON
    )
    torch.save({"steps": result.steps, "reason": result.stop_reason}, out / f"stop-{rank()}.pt")
    result = sf.fit(
        mlp(), train=data(), batch_size=8, max_time_s=1e6, callbacks=[TimeUpOnRankOne()], **COMMON
    )
    torch.save({"steps": result.steps, "reason": result.stop_reason}, out / f"time-{rank()}.pt")


def ddp(out: Path) -> None:
    """The DDP scenarios, one after the other in the same processes (one launch)."""
    ddp_step(out)
    ddp_accumulate(out)
    uneven_eval(out)
    reduce_states(out)
    stop_one(out)


def main() -> None:
    from torch.distributed.elastic.multiprocessing.errors import record

    name, out = sys.argv[1], Path(sys.argv[2])
    scenarios = {
        "ddp": ddp,
        "ddp_step": ddp_step,
        "ddp_accumulate": ddp_accumulate,
        "uneven_eval": uneven_eval,
        "fsdp": fsdp,
        "kill": lambda o: fail(o, "kill"),
        "raise": lambda o: fail(o, "raise"),
    }
    record(scenarios[name])(out)
    from surefit.distributed import leave

    leave(0)  # as `python -m surefit` does under a launcher


if __name__ == "__main__":
    main()
