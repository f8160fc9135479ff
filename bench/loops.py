"""The training loops bench/run.py compares: one function per variant, equal work in each.

Every variant trains the same model from the same initial weights with AdamW (lr 1e-3, weight
decay 0.01), global gradient-norm clipping at 1.0 and a constant learning rate, for the same
number of optimizer steps over the same data with batches of the same size. Each returns the
optimizer steps it took; the caller times it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LR, WD, CLIP = 1e-3, 0.01, 1.0


def hand(model: nn.Module, x: Any, y: Any, epochs: int, bs: int, fused: bool = False) -> int:
    """(a) / (a+): in-memory tensors, index gather per batch, no host read per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD, fused=fused or None)
    params = list(model.parameters())
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), bs):
            idx = order[i : i + bs]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, CLIP)
            opt.step()
            steps += 1
    return steps


def _loader(x: Any, y: Any, bs: int) -> Any:
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)


def textbook(model: nn.Module, x: Any, y: Any, epochs: int, bs: int) -> int:
    """(b): a DataLoader over a TensorDataset, ``loss.item()`` every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    loader, steps, running = _loader(x, y, bs), 0, 0.0
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            running += loss.item()
            steps += 1
    return steps


def lightning(model: nn.Module, x: Any, y: Any, epochs: int, bs: int) -> int:
    """(c): PyTorch Lightning's Trainer, with its logger, checkpoints, bar and summary off."""
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            xb, yb = batch
            return F.cross_entropy(self.net(xb), yb)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=WD)

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=CLIP,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), _loader(x, y, bs))
    return trainer.global_step


def accelerate(model: nn.Module, x: Any, y: Any, epochs: int, bs: int) -> int:
    """(d): HF Accelerate's prepare / backward / clip_grad_norm_ around a plain loop."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WD)
    model, opt, loader = acc.prepare(model, opt, _loader(x, y, bs))
    steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
            steps += 1
    return steps


def surefit(
    model: nn.Module,
    x: Any,
    y: Any,
    epochs: int,
    bs: int,
    threads: int = 2,
    folder: bool = False,
    data: str = "tensors",
) -> int:
    """surefit's ``fit()`` with its defaults (logging, bar setting, guards, optimizer choice),
    the schedule constant and no validation split, as in the other variants. ``folder``: with a
    run directory, as ``surefit fit`` always has (config, metrics and event logs, checkpoints at
    their defaults); ``fit()`` without one writes nothing. ``data``: the tensors (the in-memory
    path), a map-style Dataset of the same samples (surefit's DataLoader path: its seeded
    sampler, per-sample ``__getitem__`` and collate; a plain TensorDataset would take the
    in-memory path), or the textbook's own DataLoader, iterated as given."""
    import surefit as sf

    opts: dict[str, Any] = {"threads": threads} if _has_threads_option() else {}
    if folder:
        opts["run_dir"] = _scratch() / "run"
    train = {"tensors": (x, y), "dataset": _Samples(x, y), "loader": _loader(x, y, bs)}
    r = sf.fit(
        model,
        train[data],
        epochs=epochs,
        batch_size=bs,
        lr=LR,
        weight_decay=WD,
        clip_norm=CLIP,
        schedule="constant",
        decay_all=True,  # weight decay on every parameter, in one group, as the other loops do
        device="cpu",
        **opts,
    )
    return r.steps


class _Samples(torch.utils.data.Dataset):
    """The tensors' samples one by one, as a Dataset that reads or decodes them would give."""

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self.x[i], self.y[i]


def _scratch() -> Any:
    """A fresh temporary folder, removed when the process exits (outside the timed call)."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp(prefix="surefit-bench-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _threads() -> int:
    import os

    return int(os.environ.get("BENCH_THREADS", "2"))


def _has_threads_option() -> bool:
    from surefit.config import TrainConfig

    return "threads" in TrainConfig.__dataclass_fields__


VARIANTS = {
    "a": ("(a) hand-written, best", lambda *a: hand(*a)),
    "a+": ("(a+) hand-written, AdamW fused", lambda *a: hand(*a, fused=True)),
    "b": ("(b) textbook DataLoader + .item()", textbook),
    "c": ("(c) PyTorch Lightning Trainer", lightning),
    "d": ("(d) HF Accelerate", accelerate),
    "surefit": ("surefit fit(), the bench's threads", lambda *a: surefit(*a, threads=_threads())),
    "surefit-auto": ("surefit fit(), threads auto", lambda *a: surefit(*a, threads=0)),
    "surefit-dir": (
        "surefit fit(), the bench's threads, a run directory",
        lambda *a: surefit(*a, threads=_threads(), folder=True),
    ),
    "surefit-dataset": (
        "surefit fit() over a map-style Dataset (its DataLoader path)",
        lambda *a: surefit(*a, threads=_threads(), data="dataset"),
    ),
    "surefit-loader": (
        "surefit fit() over the textbook's DataLoader",
        lambda *a: surefit(*a, threads=_threads(), data="loader"),
    ),
}
PEER_MODULES = {"c": "lightning", "d": "accelerate"}
