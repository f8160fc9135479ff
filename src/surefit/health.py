"""Training health: non-finite steps skipped, bad samples quarantined (forensics.py finds them
and the NaN's origin), loss spikes rolled back, and the per-step statistics behind the logs.

The skip decision costs no sync. On CPU the flag is read from its memory (a CPU kernel is done
when it returns) and the host skips the step. On CUDA it stays on the device where torch lets it:
a fused optimizer takes a ``found_inf`` flag (the mechanism GradScaler uses) and leaves weights,
moments and its step count untouched when it is set; other optimizers cannot skip on the device,
and for them the guard reads one flag per optimizer step (a sync, the one GradScaler's fp16 path
makes too).
Everything else — which step was bad, the quarantine, spikes, rollbacks — is decided on the
host at the next sync point (log interval, evaluation, checkpoint), from the per-step values kept
on the device until then. The learning-rate schedule counts the steps attempted, applied or
skipped, so nothing the run computes depends on when the host reads the flags.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import cpu_copy
from .config import HealthConfig
from .distributed import sum_over_ranks, world_size
from .errors import CheckpointError
from .forensics import nonfinite_rows
from .log import JsonlSink
from .spikes import LossWindow
from .state import wide

SNAPSHOT_EVERY = 200  # optimizer steps between in-memory rollback copies (and at checkpoints)
LR_HIGH_FACTOR, LR_HIGH_STEPS = 5.0, 50  # pre-clip norm above 5x clip_norm for 50 steps in a row


@dataclass(slots=True)
class _Step:
    """What the host knows of one optimizer step before the next sync point."""

    step: int
    epoch: int
    batch0: int  # first micro-batch of the window, within the epoch
    batches: int
    samples: int
    loss: torch.Tensor  # the micro-batch mean losses as computed (0-d for one), on the device
    norm: torch.Tensor  # pre-clip global gradient norm, on the device
    lr: float = float("nan")  # the first group's learning rate this step used
    counts: tuple[int, ...] = ()  # samples of each micro-batch (this rank's)


@dataclass
class _Sums:
    """Host sums of accepted steps over a log interval or an epoch."""

    loss: float = 0.0
    samples: int = 0
    steps: int = 0
    skipped: int = 0
    norm: float = 0.0
    norm_max: float = 0.0
    clipped: int = 0
    norms: list[float] = field(default_factory=list)  # epoch sums only: for percentiles
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, samples: int, norm: float, clipped: bool) -> None:
        self.loss += loss
        self.samples += samples
        self.steps += 1
        self.norm += norm
        if norm > self.norm_max:
            self.norm_max = norm
        if clipped:
            self.clipped += 1

    def state(self) -> dict[str, Any]:
        state = {k: v for k, v in vars(self).items() if k != "t0"}
        state["norms"] = torch.tensor(self.norms, dtype=torch.float64)  # one object to pickle
        return state


def _sums(state: dict[str, Any]) -> _Sums:
    norms = state.get("norms", [])
    return _Sums(**{**state, "norms": norms.tolist() if torch.is_tensor(norms) else list(norms)})


def _no_actions() -> dict[str, Any]:
    return {"rollback": "", "stop": ""}


def _merged(first: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    return {
        "rollback": first["rollback"] or then["rollback"],
        "stop": first["stop"] or then["stop"],
    }


def _flag_nonfinite(found: torch.Tensor, one: torch.Tensor, loss: Any, norm: Any) -> None:
    """Set the zeroed ``found`` to 1.0 when ``loss`` or ``norm`` is NaN or Inf: GradScaler's own
    check (``_amp_foreach_non_finite_check_and_unscale_``, scaling in place by ``one``, so the
    values stay as they are) in one kernel, where isfinite, not and a cast took three."""
    if loss.dtype == norm.dtype == torch.float32:
        torch._amp_foreach_non_finite_check_and_unscale_([loss, norm], found, one)
    else:
        torch.logical_not(torch.isfinite(loss + norm), out=found)


def _finite(loss: float, norm: float) -> bool:
    return math.isfinite(loss) and math.isfinite(norm)


def _pending_values(pending: list[_Step]) -> tuple[list[float], Iterator[float], list[float]]:
    """The pending steps' values in one host read: each micro-batch's loss x samples (float64)
    and its samples, both summed over ranks, and each step's pre-clip gradient norm."""
    micro = [p.loss for p in pending]
    if all(m.dim() == 0 for m in micro):
        flat = torch.stack(micro)
    else:
        flat = torch.cat([m.reshape(-1) for m in micro])
    counts = [float(n) for p in pending for n in (p.counts or (p.samples,))]
    dtype = wide(flat.device)
    weights = torch.tensor(counts, dtype=dtype, device=flat.device)
    # every rank decides on the same numbers: losses and samples summed over ranks (the gradient
    # norm is already global after the gradient all-reduce)
    summed = sum_over_ranks(torch.stack([flat.to(dtype) * weights, weights]))
    norms = torch.stack([p.norm for p in pending]).to(dtype)
    values = torch.cat([summed.flatten(), norms.to(summed.device)]).tolist()  # the one read
    m = len(counts)
    return values[:m], iter(values[m : 2 * m]), values[2 * m :]


class Health:
    """Guards the optimizer step and keeps the per-step statistics; one per run."""

    def __init__(
        self,
        cfg: HealthConfig,
        clip_norm: float,
        run_dir: Path | None = None,
        log: Any = None,
        enabled_io: bool = True,
        scaler: bool = False,
    ) -> None:
        self.cfg, self.clip_norm, self.log, self.scaler = cfg, clip_norm, log, scaler
        self.pending: list[_Step] = []
        self.interval, self.epoch = _Sums(), _Sums()
        self.epoch_index = -1
        self.recent = LossWindow()
        self.run_length = 0  # consecutive skipped or spiking steps
        self.steps = self.skipped = self.scaler_skips = self.spikes = self.rollbacks = 0
        self.origin_reported = False
        self.high_norm_run = 0  # consecutive steps with the pre-clip norm far above clip_norm
        self._watch_lr = clip_norm > 0 and cfg.checks and "lr_too_high" not in cfg.skip_checks
        self._lr_high_norm = LR_HIGH_FACTOR * clip_norm
        self._epoch_t0: dict[int, float] = {}
        folder = run_dir if enabled_io else None
        self.quarantine = JsonlSink(folder / "quarantine.jsonl") if folder else None
        self.per_step = JsonlSink(folder / "steps.jsonl") if folder else None
        self.snapshot: dict[str, Any] | None = None
        self.snapshot_step = -(1 << 62)
        self.deferred = _no_actions()  # a pause's decisions, for the next scheduled sync point
        self._flags: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cpu_flag: tuple[torch.Tensor, torch.Tensor, Any] | None = None  # + a numpy view
        self._multi = world_size() > 1  # several processes: the loss check spans them
        self._eval_warned = False  # the non-finite evaluation warning is given once a session

    # -- the hot path ------------------------------------------------------------------------------
    def step(
        self, precision: Any, optimizer: torch.optim.Optimizer, loss: torch.Tensor, norm: Any
    ) -> bool:
        """The optimizer step unless the loss or the grad norm is non-finite.

        Returns False only when the host skipped the step without calling ``optimizer.step``;
        a step skipped on the device (or by GradScaler) returns True.
        """
        if not self.cfg.skip_nonfinite or precision.scaler is not None:
            scaler = precision.scaler
            before = scaler.get_scale() if scaler is not None and not optimizer.state else None
            precision.step(optimizer)  # fp16: GradScaler skips inf/NaN gradients itself
            if before is not None and scaler.get_scale() < before:  # a skipped first step
                optimizer.state.clear()  # (see below): lazily made state may be unfilled
            return True
        if self._multi:  # a loss non-finite on one rank skips the step on all (the gradients,
            loss = sum_over_ranks(loss.detach().float())  # and so the norm, are already global)
        if self._reads_on_host(loss):
            return self._cpu_step(optimizer, loss, norm)
        # before the first update the fused step makes the state itself (SGD's momentum as
        # torch.empty_like, for the kernel to fill): a step skipped then would leave it garbage,
        # so until the state exists the check is read on the host (SGD without momentum makes
        # none: its kernel only reads the gradients and the flag)
        groups = optimizer.param_groups
        ready = optimizer.state or (
            isinstance(optimizer, torch.optim.SGD) and not any(g.get("momentum") for g in groups)
        )
        if ready and all(g.get("fused") for g in groups):
            optimizer.grad_scale, optimizer.found_inf = None, self._found(loss, norm)
            try:  # GradScaler's protocol: the fused kernel does nothing when found_inf is 1
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf
            return True
        if not bool(torch.isfinite(loss + norm)):  # the documented per-step read: this
            # optimizer cannot skip on the device
            return False
        optimizer.step()
        return True

    def _reads_on_host(self, loss: torch.Tensor) -> bool:
        """The flag is read on the host where that waits for nothing: on CPU."""
        return loss.is_cpu

    def _cpu_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, norm: Any) -> bool:
        """On CPU a kernel has finished when it returns, so the flag is read from its memory
        (a numpy view made once) and the step is skipped on the host: no sync (there is no
        device to wait for), no zeroing op, and no ``found_inf`` work inside the optimizer (the
        fused kernel's step-count correction), which on bench/'s tiny MLP were the largest
        share of surefit's cost over the hand-written loop (docs/benchmarks.md)."""
        if self._cpu_flag is None:
            found = torch.zeros(())
            self._cpu_flag = (found, torch.ones(()), found.numpy())
        found, one, view = self._cpu_flag
        view[()] = 0.0  # zeroed in memory: no op
        _flag_nonfinite(found, one, loss, norm)
        if view[()]:
            return False
        optimizer.step()
        return True

    def _found(self, loss: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        """A float flag on the device, 1.0 when ``loss`` or ``norm`` is NaN or Inf."""
        device = loss.device
        if device not in self._flags:
            self._flags[device] = (torch.zeros((), device=device), torch.ones((), device=device))
        found, one = self._flags[device]
        found.zero_()
        _flag_nonfinite(found, one, loss, norm)
        return found

    def record(self, step: _Step) -> None:
        if step.epoch not in self._epoch_t0:  # host time only: when the epoch's first step ended
            self._epoch_t0 = {step.epoch: time.perf_counter()}
        self.pending.append(step)

    # -- sync points -------------------------------------------------------------------------------
    def sync(
        self, examine: Callable[[_Step, bool], dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Read the pending steps (one host read) and decide; returns what the loop must do:
        ``rollback`` (a reason) and ``stop`` (a reason)."""
        actions = _no_actions()
        if not self.pending:
            return actions
        pending, self.pending = self.pending, []
        losses, counts, norms = _pending_values(pending)
        values, lines, isfinite = iter(losses), [], math.isfinite
        rollback_after = self.cfg.rollback_after
        try:
            for p, norm in zip(pending, norms, strict=True):
                if len(p.counts) > 1:  # left to right, as a device sum would add
                    loss = samples = 0.0
                    for _ in p.counts:
                        loss, samples = loss + next(values), samples + next(counts)
                else:  # 0.0 + as the sum from 0.0 gives (a -0.0 loss is 0.0)
                    loss, samples = 0.0 + next(values), 0.0 + next(counts)
                p.samples = int(samples)
                self.steps += 1
                if p.epoch != self.epoch_index:
                    t0 = self._epoch_t0.get(p.epoch, time.perf_counter())
                    self.epoch, self.epoch_index = _Sums(t0=t0), p.epoch
                spikes = self.spikes
                if isfinite(loss) and isfinite(norm):
                    self._accept(p, loss, norm)
                else:
                    self._reject(p, loss, norm, examine, actions)
                if self.per_step is not None:
                    lines.append(self._step_line(p, loss, norm, spike=self.spikes > spikes))
                if rollback_after and self.run_length >= rollback_after:
                    self.run_length = 0
                    if not actions["rollback"]:
                        actions["rollback"] = (
                            f"{self.cfg.rollback_after} bad or spiking steps in a row"
                        )
        finally:  # steps.jsonl: one write and flush per sync point, not one per step
            if self.per_step is not None:
                self.per_step.write_many(lines)
        self._check_limits(actions)
        return actions

    def defer(self, actions: dict[str, Any]) -> dict[str, Any]:
        """Hold what a pause's sync decided (a rollback, a stop) for the next
        scheduled sync point, where the run without the pause decides it; nothing to do now."""
        self.deferred = _merged(self.deferred, actions)
        return _no_actions()

    def healthy(self) -> bool:
        """Not amid spikes, and no rollback decided and held for the next sync point: the state
        now is one to roll back to."""
        return not self.run_length and not self.deferred["rollback"]

    def with_deferred(self, actions: dict[str, Any]) -> dict[str, Any]:
        """``actions`` and what a pause before this sync point held back."""
        held, self.deferred = self.deferred, _no_actions()
        return _merged(held, actions)

    def _step_line(self, p: _Step, loss: float, norm: float, spike: bool) -> dict[str, Any]:
        """One line of steps.jsonl: what each optimizer step did (for plots and forensics)."""
        record = {"step": p.step, "loss": loss / max(p.samples, 1), "grad_norm": norm, "lr": p.lr}
        if self.clip_norm > 0:
            record["clipped"] = bool(norm > self.clip_norm)
        if not _finite(loss, norm):
            record["skipped"] = True
        if spike:
            record["spike"] = True
        return record

    def _accept(self, p: _Step, loss: float, norm: float) -> None:
        """Host bookkeeping of one finite step (at a sync point, once per step: kept to plain
        attribute updates, with the rare paths behind a comparison)."""
        clipped = norm > self.clip_norm > 0
        self.interval.add(loss, p.samples, norm, clipped)
        self.epoch.add(loss, p.samples, norm, clipped)
        self.epoch.norms.append(norm)  # the epoch's percentiles
        if self._watch_lr:
            if norm > self._lr_high_norm:
                self.high_norm_run += 1
                if self.high_norm_run == LR_HIGH_STEPS:
                    self._warn_lr(norm, p.step)
            else:
                self.high_norm_run = 0
        mean = loss / (p.samples or 1)
        if self.recent.is_spike(mean, self.cfg.spike_threshold):
            self.spikes += 1
            self.run_length += 1
            self._event("spike", step=p.step, loss=mean, median=self.recent.median())
        else:
            self.run_length = 0
            self.recent.append(mean)

    def _warn_lr(self, norm: float, step: int) -> None:
        """Warn once when clipping does the learning rate's job for many steps in a row."""
        what = (
            f"the pre-clip gradient norm was above {LR_HIGH_FACTOR:g} x clip_norm "
            f"({self.clip_norm:g}) for {LR_HIGH_STEPS} steps in a row (now {norm:.3g})"
        )
        fix = (
            "lower optim.lr (clipping hides a learning rate that is too high), or raise "
            f"train.clip_norm if {self.clip_norm:g} is below the norm of healthy steps"
        )
        if self.log is not None:
            self.log.warn("lr_too_high", what, fix, step=step)

    def check_eval(self, monitor: str, value: Any, step: int, data: Any) -> None:
        """Warn once when the monitored evaluation value is NaN or Inf: best.pt, restore_best,
        early stopping and the plateau schedule pass over such an evaluation, so a run whose
        every evaluation is NaN would otherwise end with no best and no word of why."""
        skip = not self.cfg.checks or "eval_not_finite" in self.cfg.skip_checks
        if skip or self._eval_warned or not isinstance(value, float) or math.isfinite(value):
            return
        self._eval_warned = True
        what = (
            f"{monitor} is {value} at step {step}: best.pt, restore_best, early stopping and "
            "the plateau schedule pass over evaluations whose monitored value is not finite"
        )
        count, first = nonfinite_rows(data)
        if count:
            shown = ", ".join(map(str, first)) + (", ..." if count > len(first) else "")
            what += f"; {count} validation sample(s) hold NaN or Inf (index {shown})"
            fix = "drop or repair those samples (torch.isfinite(x).all(dim=1) finds them)"
        else:
            fix = ("check the validation data for NaN/Inf (torch.isfinite(x).all()) and the "
                   "model's outputs on it (an overflow, a log of 0)")  # fmt: skip
        if self.log is not None:
            self.log.warn("eval_not_finite", what, fix, step=step)

    def _reject(
        self, p: _Step, loss: float, norm: float, examine: Any, actions: dict[str, Any]
    ) -> None:
        which = "+".join(n for n, v in (("loss", loss), ("grad", norm)) if not math.isfinite(v))
        if self.scaler and which == "grad":  # an fp16 overflow: GradScaler skipped and rescales
            self.scaler_skips += 1
            return
        self.run_length += 1
        if not (self.cfg.skip_nonfinite or self.scaler):
            self._event("nonfinite", step=p.step, bad=which, grad_norm=norm, applied=True)
            return
        for sums in (self.interval, self.epoch):
            sums.skipped += 1
        self.skipped += 1
        record: dict[str, Any] = {
            "epoch": p.epoch,
            "step": p.step,
            "batch": p.batch0,
            "batches": p.batches,
            "bad": which,
            "grad_norm": norm,
        }
        if examine is not None:
            record.update(examine(p, not self.origin_reported))
        if "origin" in record:
            self.origin_reported = True
            self._event("nan_origin", step=p.step, **record["origin"])
        if self.quarantine is not None:
            self.quarantine.write(record)
        self._event("skip", step=p.step, bad=which, grad_norm=norm)

    def _check_limits(self, actions: dict[str, Any]) -> None:
        frac = self.cfg.max_bad_fraction
        if self.skipped >= 10 and self.skipped > frac * self.steps:
            actions["stop"] = (
                f"{self.skipped} of {self.steps} steps had a non-finite loss or gradient "
                f"(more than health.max_bad_fraction={frac:g}); see quarantine.jsonl and the "
                "nan_origin event for where it starts"
            )
        if actions["rollback"] and self.rollbacks >= self.cfg.max_rollbacks:
            f = self.cfg.rollback_lr_factor
            fix = (
                f"each rollback already multiplied the rate by {f:g}: lower optim.lr, or look "
                "for a cause other than the rate (data, loss, model)"
                if f < 1
                else "lower optim.lr, or set health.rollback_lr_factor below 1 (e.g. 0.5) so "
                "that each rollback also lowers it"
            )
            actions["stop"] = actions["stop"] or (
                f"training diverged again after {self.rollbacks} rollback(s) "
                f"({actions['rollback']}); {fix}"
            )
            actions["rollback"] = ""

    def _event(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.event(event, **fields)

    # -- rollback ----------------------------------------------------------------------------------
    def snapshot_wanted(self) -> bool:
        return bool(self.cfg.rollback_after) and self.cfg.rollback_from == "memory"

    def take_snapshot(self, parts: dict[str, Any], step: int, force: bool = False) -> None:
        """Remember the state to roll back to, when the run is healthy (memory mode only): at
        each checkpoint (``force``; a resumed run holds the same copy) and at a sync point at
        most every SNAPSHOT_EVERY steps (a copy costs the model and optimizer state)."""
        if not self.snapshot_wanted():
            return
        if self.run_length or not (force or step - self.snapshot_step >= SNAPSHOT_EVERY):
            return
        self.snapshot = cpu_copy({k: v.state_dict() for k, v in parts.items()})
        self.snapshot_step = step

    def first_snapshot(
        self, parts: dict[str, Any], step: int, store: Any, loaded: dict[str, Any] | None
    ) -> None:
        """The rollback copy a run starts with: the one the uninterrupted run holds. A checkpoint
        written off the schedule (a signal, a pause) carries it (``loaded``); one from before
        that, which recorded only the step of its copy, has that step's checkpoint read back
        from ``store`` while still on disk (not under FSDP); otherwise the copy is the state the
        run starts from."""
        if loaded is not None:  # a pause's checkpoint held it
            self.snapshot = loaded
            return
        at = self.snapshot_step
        behind = 0 <= at < step and self.snapshot_wanted()
        if behind and store is not None and not store.in_place:  # not FSDP
            same = lambda st: st.get("counters", {}).get("optimizer_step") == at  # noqa: E731
            with contextlib.suppress(CheckpointError):
                state = store.load_latest(accept=same)[0]
                self.snapshot = {k: state[k] for k in parts}
                return
        self.take_snapshot(parts, step, force=True)
        if behind:  # not on disk (taken between checkpoints): the state now, on the same cadence
            self.snapshot_step = at

    def rollback(self, parts: dict[str, Any], saved: dict[str, Any] | None, why: str) -> bool:
        """Load the last good state into ``parts``; False when there is none."""
        state = self.snapshot if self.cfg.rollback_from == "memory" else saved
        if state is None:
            return False
        kept = state is self.snapshot  # loaded from a copy: an optimizer keeps the tensors it is
        for name, part in parts.items():  # given and steps them, and the copy may serve again
            if name in state:
                part.load_state_dict(cpu_copy(state[name]) if kept else state[name])
        self.rollbacks += 1  # the spike history is kept: it describes the healthy run
        if self.cfg.rollback_from == "memory":
            to_step = self.snapshot_step
        else:
            to_step = state.get("counters", {}).get("optimizer_step")
        self._event(
            "rollback",
            why=why,
            rollbacks=self.rollbacks,
            lr_factor=self.cfg.rollback_lr_factor,
            to_step=to_step,  # the step whose state the run went back to
        )
        return True

    # -- records -----------------------------------------------------------------------------------
    def interval_record(self) -> dict[str, float]:
        """The log interval's values; resets the interval."""
        s = self.interval
        seconds = max(time.perf_counter() - s.t0, 1e-9)
        record = {
            "train_loss": s.loss / s.samples if s.samples else float("nan"),
            "grad_norm": s.norm / s.steps if s.steps else float("nan"),
            "grad_norm_max": s.norm_max,
            "samples_per_s": s.samples / seconds,
            "steps_per_s": (s.steps + s.skipped) / seconds,
        }
        if self.clip_norm > 0:
            record["clip_fraction"] = s.clipped / max(s.steps, 1)
        if s.skipped:
            record["skipped_steps"] = s.skipped
        self.interval = _Sums()
        return record

    def epoch_record(self) -> dict[str, float]:
        """The unfinished or finished epoch's values so far (for the evaluation record)."""
        s = self.epoch
        if not s.samples:
            return {}
        record = {
            "train_loss": s.loss / s.samples,
            "grad_norm": s.norm / max(s.steps, 1),
            "samples_per_s": s.samples / max(time.perf_counter() - s.t0, 1e-9),
        }
        if s.norms:
            q = sorted(s.norms)
            for pct in (50, 90, 99):
                record[f"grad_norm_p{pct}"] = q[min(len(q) - 1, int(len(q) * pct / 100))]
        if self.clip_norm > 0:
            record["clip_fraction"] = s.clipped / max(s.steps, 1)
        if s.skipped:
            record["skipped_steps"] = s.skipped
        return record

    def counts(self) -> dict[str, int]:
        return {
            "skipped_steps": self.skipped,
            "spikes": self.spikes,
            "rollbacks": self.rollbacks,
        }

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Host state only: the loop syncs (empties ``pending``) before it saves."""
        return {
            "interval": self.interval.state(),
            "epoch": self.epoch.state(),
            "epoch_index": self.epoch_index,
            "recent": torch.tensor(list(self.recent), dtype=torch.float64),
            "run_length": self.run_length,
            "counts": [self.steps, self.skipped, self.scaler_skips, self.spikes, self.rollbacks],
            "origin_reported": self.origin_reported,
            "high_norm_run": self.high_norm_run,
            "snapshot_step": self.snapshot_step,  # where the rollback copy was taken
            "deferred": dict(self.deferred),
            "quarantine": self.quarantine.state_dict() if self.quarantine else {"lines": 0},
            "steps_file": self.per_step.state_dict() if self.per_step else {"lines": 0},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.interval, self.epoch = _sums(state["interval"]), _sums(state["epoch"])
        self.epoch_index = int(state["epoch_index"])
        recent = state["recent"]  # a float64 tensor; a list in older checkpoints
        self.recent = LossWindow(recent.tolist() if torch.is_tensor(recent) else recent)
        self.run_length = int(state["run_length"])
        counts = [int(c) for c in state["counts"]]
        self.steps, self.skipped, self.scaler_skips, self.spikes, self.rollbacks = counts
        self.origin_reported = bool(state["origin_reported"])
        self.high_norm_run = int(state.get("high_norm_run", 0))
        self.snapshot_step = int(state.get("snapshot_step", self.snapshot_step))
        self.deferred = {**_no_actions(), **state.get("deferred", {})}
        if self.quarantine is not None:
            self.quarantine.load_state_dict(state["quarantine"])
        if self.per_step is not None:
            self.per_step.load_state_dict(state.get("steps_file", {"lines": 0}))
