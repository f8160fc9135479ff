"""Learning-rate schedules by name, each with the unit it steps in.

The user never decides where ``scheduler.step()`` goes: ``unit`` is "step" (after every optimizer
step), "epoch" (after every epoch) or "metric" (after every evaluation, with the monitored value).
All are ``torch.optim.lr_scheduler`` objects; the warmup/cosine shapes are closed-form multipliers
for ``LambdaLR`` (per-group floors follow each group's own learning rate, and there is no
recursive drift).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler as lrs

from .config import ScheduleConfig
from .errors import ConfigError


@dataclass
class Constant:
    def __call__(self, step: int) -> float:
        return 1.0


def _decay_progress(step: int, warmup: int, total: int) -> float:
    """0 at the peak step, 1 at the last of ``total`` steps: the decay starts from the last
    warmup step (which runs at the peak), so the peak is one step, not two."""
    peak = max(warmup - 1, 0)
    return min(1.0, (step - peak) / max(1, total - 1 - peak))


@dataclass
class WarmupCosine:
    """Linear warmup to the peak over ``warmup`` steps, then cosine to ``min_ratio``."""

    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = _decay_progress(step, self.warmup, self.total)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class WarmupLinear:
    """Linear warmup to the peak, then linear decay to ``min_ratio`` at ``total``."""

    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = _decay_progress(step, self.warmup, self.total)
        return 1 - (1 - self.min_ratio) * progress


@dataclass
class CosineRestarts:
    """Cosine from the peak to ``min_ratio`` over ``first`` steps, then again over ``first x
    mult`` steps, and so on: torch's ``CosineAnnealingWarmRestarts`` as a multiplier, so that
    every parameter group falls to its own floor (torch's takes one ``eta_min`` for all)."""

    first: int
    mult: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        t, period = step, self.first
        if self.mult == 1:
            t %= period
        while t >= period:  # mult > 1: the cycles grow, so this runs log(step) times
            t, period = t - period, period * self.mult
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t / period))


def warmup_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    """Warmup as optimizer steps: a fraction of all steps below 1, a step count from 1 up."""
    if cfg.warmup < 1:
        return int(round(cfg.warmup * total_steps))
    return int(cfg.warmup)


class Schedule:
    """A torch scheduler and the unit it steps in ("step", "epoch", "metric"; "fixed": never)."""

    def __init__(self, scheduler: Any, unit: str, total_steps: int) -> None:
        self.scheduler = scheduler
        self.unit = unit
        self.total_steps = total_steps

    def after_optimizer_step(self, optimizer_stepped: bool = True) -> None:
        """One step of a per-step schedule, after every step attempted (``optimizer_stepped``:
        False for a step skipped without calling the optimizer)."""
        if self.unit != "step":
            return
        # OneCycleLR raises past its last step; a run may outlive an estimate of its length
        if (
            isinstance(self.scheduler, lrs.OneCycleLR)
            and self.scheduler.last_epoch + 1 >= self.total_steps
        ):
            return
        if optimizer_stepped:
            self.scheduler.step()
            return
        with warnings.catch_warnings():  # torch's "scheduler before optimizer" check, at a
            warnings.simplefilter("ignore")  # first step the guard skipped
            self.scheduler.step()

    def after_epoch(self) -> None:
        if self.unit == "epoch":
            self.scheduler.step()

    def after_eval(self, value: float | None) -> None:
        if self.unit == "metric" and value is not None:
            self.scheduler.step(value)

    def rescale(self, ratio: float) -> None:
        """Scale every group's learning rate and the schedule's bases (an lr override)."""
        for g in self.scheduler.optimizer.param_groups:
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if isinstance(g.get(key), float):
                    g[key] *= ratio
        if hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [b * ratio for b in self.scheduler.base_lrs]
        if hasattr(self.scheduler, "_last_lr"):
            self.scheduler._last_lr = [g["lr"] for g in self.scheduler.optimizer.param_groups]

    def base_lr(self) -> float:
        """The first group's base rate: the schedule's ``initial_lr`` (a plateau schedule has
        none: the group's rate)."""
        group = self.scheduler.optimizer.param_groups[0]
        return group.get("initial_lr", group["lr"])

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The position comes from the checkpoint; the shape (warmup, total steps) from this
        run's config, so extending a run's epochs or max_steps stretches the schedule."""
        if isinstance(self.scheduler, lrs.LambdaLR):  # (a cosine_restarts checkpoint of an
            # earlier version holds torch's CosineAnnealingWarmRestarts, without lr_lambdas)
            state = {**state, "lr_lambdas": [None] * len(self.scheduler.lr_lambdas)}
        shape = {}  # OneCycleLR keeps its shape in its state: this run's is kept instead
        if isinstance(self.scheduler, lrs.OneCycleLR):
            shape = {k: getattr(self.scheduler, k) for k in ("total_steps", "_schedule_phases")}
        self.scheduler.load_state_dict(state)
        self.scheduler.__dict__.update(shape)
        if self.unit == "step":  # the next update's rate from this run's shape, not the saved
            self._rate_at_position()  # run's (the same value where the shape is unchanged)

    def _rate_at_position(self) -> None:
        """Set every group's rate to the schedule's value at its position (LambdaLR, OneCycleLR):
        the saved rate comes from the shape the checkpoint was written under, and an extended
        run's first step would take it."""
        sched = self.scheduler
        if not isinstance(sched, (lrs.LambdaLR, lrs.OneCycleLR)):
            return
        try:
            with lrs._enable_get_lr_call(sched):  # torch's own guard for get_lr outside step
                values = sched.get_lr()
        except ValueError:  # OneCycleLR past its end (a run asked to stop before where it is)
            return
        for group, value in zip(sched.optimizer.param_groups, values, strict=True):
            # the saved rate where the shapes agree (it may differ from the formula in its last
            # bits after a rescale, and a resume must step with exactly the rate saved)
            if not math.isclose(float(group["lr"]), float(value), rel_tol=1e-9, abs_tol=0.0):
                group["lr"] = value
        sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]


# what torch's schedulers leave in an optimizer's groups (OneCycleLR's momenta included)
SCHEDULER_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
LEFT_AT = "surefit_left_lr"  # the rate a fit left in a group of an optimizer object it ran


def mark_left_rates(optimizer: torch.optim.Optimizer) -> None:
    """Stamp each group with the rate this fit left in it: a later fit of the same optimizer
    object then tells a rate the user set since (its schedule starts from it) from the one
    the schedule left (it starts again from the earlier bases, as torch's schedulers do)."""
    for group in optimizer.param_groups:
        group[LEFT_AT] = group["lr"]


def _forget_old_bases(optimizer: torch.optim.Optimizer) -> None:
    """An earlier fit's schedule left its bases (``initial_lr``...) in the groups, which win
    over ``lr`` in torch's schedulers; where the user has set another ``lr`` since, that rate
    is the base now, and the old bases go."""
    for group in optimizer.param_groups:
        left = group.pop(LEFT_AT, None)
        if left is not None and group["lr"] != left:
            for key in SCHEDULER_KEYS:
                group.pop(key, None)


CYCLED_DIP = 0.1  # onecycle's momentum dip at the peak rate: torch's 0.95 -> 0.85


def _cycled(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """OneCycleLR's momentum cycle around the momentum (or Adam's beta1) each group is set to:
    from it down by ``CYCLED_DIP`` at the peak rate and back, instead of torch's fixed
    0.95/0.85, which would replace what the run configured. An optimizer without momentum
    (Adagrad), or a group at momentum 0, is not cycled."""
    values = []
    for g in optimizer.param_groups:
        m = g.get("momentum", (g.get("betas") or (None,))[0])
        values.append(float(m) if isinstance(m, (int, float)) else 0.0)
    if not all(v > 0 for v in values):
        return {"cycle_momentum": False}
    return {
        "cycle_momentum": True,
        "max_momentum": values,
        "base_momentum": [max(v - CYCLED_DIP, 0.0) for v in values],
    }


def build_schedule(
    cfg: ScheduleConfig,
    optimizer: torch.optim.Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    mode: str = "min",
) -> Schedule:
    """The schedule ``cfg.name`` over ``total_steps`` optimizer steps."""
    total = max(1, total_steps)
    warm = min(warmup_steps(cfg, total), total)
    name = cfg.name
    _forget_old_bases(optimizer)  # an optimizer object an earlier fit ran (a resume loads the
    # checkpoint's groups after this)
    if name == "constant":
        # never stepped: its factor is always 1, and a step per batch costs a Python call chain
        return Schedule(lrs.LambdaLR(optimizer, Constant()), "fixed", total)
    if name in ("warmup_cosine", "cosine"):
        shape = WarmupCosine(warm if name == "warmup_cosine" else 0, total, cfg.min_lr_ratio)
        return Schedule(lrs.LambdaLR(optimizer, shape), "step", total)
    if name == "warmup_linear":
        return Schedule(
            lrs.LambdaLR(optimizer, WarmupLinear(warm, total, cfg.min_lr_ratio)), "step", total
        )
    if name == "onecycle":
        peaks = [g.get("max_lr", g["lr"]) for g in optimizer.param_groups]  # a rerun: its peak
        # torch's rise ends at step pct x total - 1 and divides by that length: a one-step
        # warmup would make it zero, so the shortest rise is two steps (one run of one step
        # keeps torch's default)
        pct = min(1.0, max(warm, 2) / total) if warm and total > 1 else 0.3
        sched = lrs.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=total, pct_start=pct, **_cycled(optimizer)
        )
        return Schedule(sched, "step", total)
    if name == "step":
        return Schedule(
            lrs.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma), "epoch", total
        )
    if name == "multistep":
        if not cfg.milestones:
            raise ConfigError(
                "schedule multistep without milestones never decays the learning rate",
                where="schedule.milestones",
                fix="give the epochs to decay at, e.g. schedule.milestones = [30, 60], or use "
                "schedule 'constant'",
            )
        sched = lrs.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
        return Schedule(sched, "epoch", total)
    if name == "exponential":
        return Schedule(lrs.ExponentialLR(optimizer, gamma=cfg.gamma), "epoch", total)
    if name == "plateau":
        sched = lrs.ReduceLROnPlateau(
            optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
        return Schedule(sched, "metric", total)
    if name == "cosine_restarts":
        if not cfg.restart_steps and steps_per_epoch < 1:
            raise ConfigError(
                "schedule cosine_restarts restarts every epoch (restart_steps = 0), but the "
                "training data has no length to tell an epoch's steps",
                where="schedule.restart_steps",
                fix="set schedule.restart_steps to the steps of the first cycle",
            )
        first = cfg.restart_steps or steps_per_epoch
        shape = CosineRestarts(first, cfg.restart_mult, cfg.min_lr_ratio)
        return Schedule(lrs.LambdaLR(optimizer, shape), "step", total)
    raise ValueError(name)  # unreachable: config.validate checks the name
