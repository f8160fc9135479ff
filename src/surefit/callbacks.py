"""A small closed set of events, and callbacks that see a view of the run, not the trainer."""

from __future__ import annotations

import difflib
import math
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .monitor import auto_mode

if TYPE_CHECKING:
    from torch import nn

EVENTS = (
    "on_fit_start",  # (view) after set-up, before the first step
    "on_epoch_start",  # (view) before its first batch (a run resumed mid-epoch: not again)
    "on_step_end",  # (view) after each optimizer step
    "on_eval_end",  # (view, metrics) after each evaluation; metrics are host floats
    "on_epoch_end",  # (view)
    "on_checkpoint",  # (view, path) after a checkpoint is written
    "on_fit_end",  # (view) after training, before the test evaluation
    "on_exception",  # (view, error) when training raises
)


class Callback:
    """Base whose hooks do nothing; override the ones you need. Callbacks return nothing."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def check_callback(cb: Any) -> None:
    """A misspelled hook is an error at registration, not a silent no-op."""
    for name in dir(cb):
        if name.startswith("on_") and name not in EVENTS and callable(getattr(cb, name)):
            close = difflib.get_close_matches(name, EVENTS, n=1)
            raise ConfigError(
                f"callback {type(cb).__name__} defines '{name}', which is not an event",
                where=f"callbacks: {type(cb).__name__}.{name}",
                fix=(f"did you mean '{close[0]}'? " if close else "")
                + f"events: {', '.join(EVENTS)}",
            )


class RunView:
    """What a callback may see and do."""

    def __init__(self, trainer: Any) -> None:
        self._trainer = trainer

    @property
    def model(self) -> nn.Module:
        return self._trainer.model

    @property
    def epoch(self) -> int:
        return self._trainer.counters.epoch

    @property
    def optimizer_step(self) -> int:
        return self._trainer.counters.optimizer_step

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._trainer.history

    @property
    def lr(self) -> float:
        return self._trainer.optimizer.param_groups[0]["lr"]

    @property
    def run_dir(self) -> Any:
        return self._trainer.p.run_dir

    def request_stop(self, why: str) -> None:
        """Stop after the current optimizer step; ``why`` goes to the log."""
        self._trainer.request_stop(why)

    def pause(self, why: str) -> None:
        """Stop after the current optimizer step as a preemption does: a checkpoint, no final
        evaluation, so that ``surefit resume`` continues as if never stopped."""
        self._trainer.pause(why)


class Best:
    """Tracks the best value of a monitored metric."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0) -> None:
        self.monitor, self.mode, self.min_delta = monitor, auto_mode(monitor, mode), min_delta
        self.value = math.inf if self.mode == "min" else -math.inf
        self.step = -1

    def improved(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.value - self.min_delta
        return value > self.value + self.min_delta

    def update(self, value: float | None, step: int) -> bool:
        if self.improved(value):
            self.value, self.step = float(value), step  # type: ignore[arg-type]
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "step": self.step, "monitor": self.monitor, "mode": self.mode}

    def tracks(self, state: dict[str, Any]) -> bool:
        """Whether a saved state tracked this metric in this direction (a resume may change
        ``train.monitor`` or ``train.mode``: the old best then says nothing of the new one)."""
        return (state.get("monitor", self.monitor), state.get("mode", self.mode)) == (
            self.monitor,
            self.mode,
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.tracks(state):  # else the tracking starts over with this run's metric
            self.value, self.step = float(state["value"]), int(state["step"])


class PauseAt(Callback):
    """Pause the run (see ``RunView.pause``) when it reaches optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_fit_start(self, run: RunView) -> None:
        if run.optimizer_step >= self.step:  # a resumed run already past it would never pause
            raise ConfigError(
                f"pause step {self.step} is not ahead of the run, which is at optimizer step "
                f"{run.optimizer_step}",
                where="--pause-at",
                fix=f"pause at a later step (> {run.optimizer_step}), or continue it with "
                "`surefit resume RUN_DIR`",
            )

    def on_step_end(self, run: RunView) -> None:
        if run.optimizer_step == self.step:
            run.pause(f"paused at step {self.step}")


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` evaluations."""

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 5,
        min_delta: float = 0.0,
    ) -> None:
        if patience < 1:
            raise ConfigError(
                f"patience={patience}", where="EarlyStopping", fix="use patience >= 1"
            )
        self.best = Best(monitor, mode, min_delta)
        self.patience = patience
        self.bad_evals = 0

    def on_fit_start(self, run: RunView) -> None:
        if self.bad_evals >= self.patience:  # resumed from the run it stopped: still stopped
            run.request_stop(self._why())

    def _why(self) -> str:
        return (
            f"early stopping: {self.best.monitor} has not improved for {self.bad_evals} "
            f"evaluations (best {self.best.value:.6g} at step {self.best.step}; "
            f"{'lower' if self.best.mode == 'min' else 'higher'} is better)"
        )

    def on_eval_end(self, run: RunView, metrics: dict[str, float]) -> None:
        value = metrics.get(self.best.monitor)
        if value is None:
            raise ConfigError(
                f"early stopping monitors '{self.best.monitor}', which evaluation does not report",
                where="train.monitor",
                fix=f"monitor one of: {', '.join(sorted(metrics))}",
            )
        if self.best.update(value, run.optimizer_step):
            self.bad_evals = 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            run.request_stop(self._why())

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best.state_dict(), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best.load_state_dict(state["best"])
        self.bad_evals = int(state["bad_evals"]) if self.best.tracks(state["best"]) else 0


class CallbackStates:
    """The run's callbacks as one checkpoint part: each stateful callback under its class name
    (and its number among callbacks of that class), so that a callback added or left out (a
    pause for one session) does not move the others' states."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = callbacks

    def _keyed(self) -> list[tuple[str, str, Any]]:
        """(key, the key by list position that older checkpoints used, callback)."""
        seen: dict[str, int] = {}
        out = []
        for i, c in enumerate(self.callbacks):
            name = type(c).__name__
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name}#{seen[name]}"
            out.append((key, f"{i}:{name}", c))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {key: c.state_dict() for key, _, c in self._keyed() if hasattr(c, "state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, old, c in self._keyed():
            saved = state.get(key, state.get(old))
            if saved is not None and hasattr(c, "load_state_dict"):
                c.load_state_dict(saved)
