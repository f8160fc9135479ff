"""The learning-rate range test: train a few hundred steps while the learning rate grows
exponentially, and read a good learning rate off the loss curve.

The parts are built as ``fit`` builds them (the same config keys, training split, task, optimizer,
precision and clipping); the loss of each step is smoothed with a bias-corrected exponential
moving average; the sweep stops when the smoothed loss passes ``diverge`` times its minimum. The
model's weights and buffers, the optimizer's state and the process RNGs are put back afterwards,
whatever happens, so the model can be trained from where it was.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import Run
from .checks import check_first_batch, raise_first
from .config import RunConfig
from .distributed import resolve_device
from .errors import ConfigError
from .evaluation import compute_batch
from .keywords import DEFAULT, build_config
from .optim import build_optimizer
from .precision import Precision
from .report import figure, finish_axes, save_png
from .state import RngState, modes_kept, seed_everything

RULES = {
    "steepest": "steepest descent of the smoothed loss (against log lr), before its minimum",
    "min/10": "a tenth of the learning rate of the lowest smoothed loss",
}


@dataclass
class LRFindResult:
    """The sweep: one entry per step taken, and the learning rate it suggests."""

    lrs: list[float]  # learning rate of each step (of the first parameter group)
    losses: list[float]  # training loss of each step
    smoothed: list[float]  # bias-corrected EMA of the loss
    suggestion: float | None  # None when the sweep was too short to read
    rule: str  # how the suggestion was chosen, in words
    min_loss_lr: float | None  # learning rate where the smoothed loss was lowest
    stop_reason: str
    plot: Path | None = None

    def summary(self) -> str:
        """The lines ``surefit lr-find`` prints."""
        swept = f"lr {self.lrs[0]:.2e} -> {self.lrs[-1]:.2e}" if self.lrs else "no finite loss"
        lines = [f"lr-find: {len(self.lrs)} steps, {swept} ({self.stop_reason})"]
        if self.suggestion is None:
            lines.append(f"no suggestion: {self.rule}")
        else:
            lines.append(f"suggested lr: {self.suggestion:.2e}  (rule: {self.rule})")
        if self.min_loss_lr is not None:
            low = min(self.smoothed)
            lines.append(f"lowest smoothed loss {low:.4g} at lr {self.min_loss_lr:.2e}")
        if self.plot is not None:
            lines.append(f"plot: {self.plot}")
        return "\n".join(lines)


def suggest(lrs: list[float], smoothed: list[float], rule: str) -> tuple[float | None, str]:
    """(learning rate, the rule in words) read off a sweep."""
    n = len(smoothed)
    if n == 0:
        return None, "the loss was not finite from the first step: look for NaN/Inf in the data"
    if n < 5:
        return None, f"only {n} steps before the loss diverged; lower min_lr"
    low = min(range(n), key=smoothed.__getitem__)
    if rule == "min/10":
        return lrs[low] / 10, RULES[rule]
    start = max(1, n // 10)  # the first steps carry the average's start-up
    if low - start < 3:
        return lrs[low] / 10, RULES["min/10"] + " (the descent was too short to measure a slope)"
    import numpy as np

    slope = np.gradient(np.asarray(smoothed[start : low + 1]), np.log(lrs[start : low + 1]))
    # the minimum's own one-sided slope is no descent: look at the points before it
    return float(lrs[start + int(np.argmin(slope[:-1]))]), RULES[rule]


def _check(min_lr: float, max_lr: float, steps: int, smoothing: float, diverge: float) -> None:
    problems = [
        (min_lr > 0, "min_lr", min_lr, "a positive number, e.g. 1e-7"),
        (max_lr > min_lr, "max_lr", max_lr, f"a number above min_lr={min_lr:g}, e.g. 10"),
        (steps >= 10, "steps", steps, "an integer of at least 10, e.g. 100"),
        (0 <= smoothing < 1, "smoothing", smoothing, "a number in [0, 1), e.g. 0.9"),
        (diverge > 1, "diverge", diverge, "a factor above 1, e.g. 4"),
    ]
    for ok, key, value, allowed in problems:
        if not ok:
            raise ConfigError(f"lr-find {key}={value!r} is out of range", where=key, fix=allowed)


def _endless(data: Any, cfg: RunConfig, device: torch.device) -> Iterator[Any]:
    """Training batches in the run's order, epoch after epoch."""
    epoch = 0
    while True:
        empty = True
        for batch in data.batches(
            cfg.data.batch_size,
            epoch=epoch,
            seed=cfg.train.seed,
            shuffle=True,
            drop_last=cfg.data.drop_last,
            device=device,
        ):
            empty = False
            yield batch
        if empty:
            return
        epoch += 1


class _Sweep:
    """The parts of a sweep, built the way ``fit`` builds them."""

    def __init__(self, run: Run, optimizer: torch.optim.Optimizer | None) -> None:
        cfg = self.cfg = run.cfg
        seed_everything(cfg.train.seed)
        self.device = resolve_device(cfg.train.device)
        train, _, _ = run._data()  # the training split fit() would train on
        self.task = run._task(train).to(self.device)
        self.model = run.model.to(self.device)
        if run.step is None:  # the targets and the model's outputs, as fit checks them
            bs = cfg.data.batch_size
            raise_first(check_first_batch(self.model, self.task, train, bs, self.device, "train"))
        self.batches = _endless(train.to(self.device), cfg, self.device)
        self.precision = Precision(cfg.train.precision, self.device)
        self.optimizer = optimizer or build_optimizer(self.model, cfg.optim)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # ratios to optim.lr (what the suggestion is for) when built from the config, whichever
        # group comes first (lr_groups may cover the first parameters); else to the first group
        first = (cfg.optim.lr if optimizer is None else self.optimizer.param_groups[0]["lr"]) or 1.0
        self.scales = [g["lr"] / first for g in self.optimizer.param_groups]
        self.step_fn = run.step

    def step(self, lr: float) -> float:
        """One optimizer step at ``lr``; returns its loss (read on the host: the sweep needs it)."""
        for group, scale in zip(self.optimizer.param_groups, self.scales, strict=True):
            group["lr"] = lr * scale  # per-group learning rates keep their ratios
        self.optimizer.zero_grad(set_to_none=True)
        window = [next(self.batches) for _ in range(self.cfg.train.accumulate)]
        total = torch.zeros((), device=self.device)
        for batch in window:
            with self.precision.autocast():
                loss, _, _ = compute_batch(self.model, batch, self.task, self.step_fn)
            self.precision.backward(loss / len(window))
            total += loss.detach().float()
        t = self.cfg.train
        self.precision.unscale_and_clip(self.optimizer, self.params, t.clip_norm, t.clip_value)
        self.precision.step(self.optimizer)
        return total.item() / len(window)  # the one intended sync per step


def lr_find(
    model: nn.Module,
    train: Any,
    val: Any = None,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.9,
    diverge: float = 4.0,
    rule: str = "steepest",
    plot: str | Path | None = None,
    optimizer: str | torch.optim.Optimizer = DEFAULT,
    loss: Any = None,
    step: Any = None,
    teacher: nn.Module | None = None,
    config: RunConfig | dict | str | Path | None = None,
    **keywords: Any,
) -> LRFindResult:
    """Sweep the learning rate from ``min_lr`` to ``max_lr`` over ``steps`` optimizer steps and
    suggest one; ``model`` (and a given optimizer) are left as they were.

    ``val`` and the other keywords mean what they mean to ``fit`` (``val`` only decides which part
    of ``train`` is trained on); ``plot`` names a PNG to draw the curve into.
    """
    _check(min_lr, max_lr, steps, smoothing, diverge)
    if rule not in RULES:
        raise ConfigError(f"unknown rule '{rule}'", where="rule", fix=f"one of {', '.join(RULES)}")
    given = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
    names = {} if given is not None or optimizer is DEFAULT else {"optimizer": optimizer}
    cfg = build_config(config, **names, **keywords)
    run = Run(cfg, model, train, val, None, loss=loss, step=step, teacher=teacher)
    with _restored(model, given):
        sweep = _Sweep(run, given)
        model.train()
        lrs, losses, smoothed, stop = _run_sweep(sweep, min_lr, max_lr, steps, smoothing, diverge)
    suggestion, used = suggest(lrs, smoothed, rule)
    low = min(range(len(smoothed)), key=smoothed.__getitem__) if smoothed else None
    result = LRFindResult(
        lrs=lrs,
        losses=losses,
        smoothed=smoothed,
        suggestion=suggestion,
        rule=used,
        min_loss_lr=lrs[low] if low is not None else None,
        stop_reason=stop,
    )
    if plot is not None:
        result.plot = plot_lr_find(result, Path(plot))
    return result


@contextlib.contextmanager
def _restored(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> Iterator[None]:
    """Put back the model's weights, buffers and mode, the optimizer's state and the RNGs."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    rng = RngState().state_dict()
    device = next((t.device for t in weights.values()), None)
    try:
        with modes_kept(model):
            yield
    finally:
        if device is not None and len({t.device for t in weights.values()}) == 1:
            model.to(device)  # the sweep moved it to the run's device
        model.load_state_dict(weights)
        for p in model.parameters():
            p.grad = None  # the sweep's last (maybe diverged) gradients
        if optimizer is not None and saved is not None:
            optimizer.load_state_dict(saved)
        RngState().load_state_dict(rng)


def _run_sweep(
    sweep: _Sweep, min_lr: float, max_lr: float, steps: int, smoothing: float, diverge: float
) -> tuple[list[float], list[float], list[float], str]:
    lrs, losses, smoothed = [], [], []
    average, best = 0.0, math.inf
    for i in range(steps):
        lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
        try:
            value = sweep.step(lr)
        except StopIteration:
            return lrs, losses, smoothed, "the training data yielded no batches"
        average = smoothing * average + (1 - smoothing) * value
        smooth = average / (1 - smoothing ** (i + 1))  # bias-corrected: no pull towards 0
        lrs.append(lr)
        losses.append(value)
        smoothed.append(smooth)
        if not math.isfinite(smooth):
            return lrs[:-1], losses[:-1], smoothed[:-1], f"stopped at lr {lr:.2e}: loss not finite"
        if _diverged(smooth, best, smoothed[0], diverge):
            return lrs, losses, smoothed, f"stopped at lr {lr:.2e}: loss above {diverge:g}x its min"
        best = min(best, smooth)
    return lrs, losses, smoothed, "swept the whole range"


def _diverged(smooth: float, best: float, first: float, diverge: float) -> bool:
    """The smoothed loss above ``diverge`` x its minimum; a loss that can be zero or negative
    (a likelihood) measures the rise against the minimum's size, or the fall to it from the
    first step where the minimum is near zero."""
    if best > 0:
        return smooth > diverge * best
    return smooth - best > (diverge - 1) * max(abs(best), abs(first - best), 1e-12)


def plot_lr_find(result: LRFindResult, out: Path) -> Path:
    """Loss against learning rate (log axis), smoothed and raw, with the suggestion marked."""
    fig, (ax,) = figure(height=4.5)
    ax.plot(result.lrs, result.losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", linewidth=1.6, label="smoothed loss")
    ax.set_xscale("log")
    if result.min_loss_lr is not None:
        ax.plot([result.min_loss_lr], [min(result.smoothed)], "o", color="tab:gray")
    if result.suggestion is not None:
        ax.axvline(
            result.suggestion,
            color="tab:red",
            linestyle="--",
            label=f"suggested lr {result.suggestion:.2e}",
        )
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:  # the divergence would squash the interesting part to a line
        low = min(finite + [v for v in result.losses if math.isfinite(v)])
        top = max(finite[0], min(finite) * 2)
        ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))
    finish_axes(ax, "learning rate", "training loss", "learning-rate range test")
    return save_png(fig, out)


def lr_find_recipe(cfg: RunConfig, **sweep: Any) -> LRFindResult:
    """The range test on a recipe's model and data (built as ``surefit fit`` builds them)."""
    from .recipes import build

    model, train, val, _, teacher = build(cfg)
    return lr_find(model, train, val, teacher=teacher, config=cfg, **sweep)
