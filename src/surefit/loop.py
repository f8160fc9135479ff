"""The fit/evaluate loop: the canonical step order, accumulation windows, evaluation, events.

One optimizer step, as in DESIGN.md:
zero_grad -> forward (autocast) -> loss / window size -> backward (scaled) -> unscale ->
global grad norm (pre-clip) -> clip -> step (through the scaler) -> scheduler (per batch).
Loss and grad-norm sums stay on the device; the host reads them at the log interval only.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .callbacks import EVENTS, Best, RunView
from .checkpoint import CheckpointStore, cpu_copy
from .config import RunConfig
from .errors import DataError
from .log import NullConsole, RunLog, epoch_line
from .perf import TimedBatches, report_wait, run_threads
from .precision import Precision
from .schedule import Schedule
from .state import Counters, RngState
from .tasks import Task, perplexity

StepFn = Callable[[nn.Module, Any], Any]


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (host metadata, no sync)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size_of(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_size_of(next(iter(batch.values())))
    return 1


@dataclass
class Parts:
    """What a Trainer is built from; ``api.fit`` assembles it from keywords or a recipe."""

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    precision: Precision
    config: RunConfig
    device: torch.device
    train: Any
    val: Any = None
    test: Any = None
    step: StepFn | None = None
    metrics: Any = None
    callbacks: list[Any] = field(default_factory=list)
    log: RunLog | None = None
    store: CheckpointStore | None = None
    run_dir: Path | None = None


class _Accumulators:
    """Device-side running sums of the unfinished log interval and epoch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset_interval()
        self.reset_epoch()

    def reset_interval(self) -> None:
        z = torch.zeros((), dtype=torch.float64, device=self.device)
        self.loss, self.norm, self.norm_max, self.clipped = z, z.clone(), z.clone(), z.clone()
        self.samples, self.steps, self.t0 = 0, 0, time.perf_counter()

    def reset_epoch(self) -> None:
        z = torch.zeros((), dtype=torch.float64, device=self.device)
        self.epoch_loss, self.epoch_norm = z, z.clone()
        self.epoch_samples, self.epoch_steps, self.epoch_t0 = 0, 0, time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        keys = (
            "loss",
            "norm",
            "norm_max",
            "clipped",
            "samples",
            "steps",
            "epoch_loss",
            "epoch_norm",
            "epoch_samples",
            "epoch_steps",
        )
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v.to(self.device, copy=True) if isinstance(v, torch.Tensor) else v)
        self.t0 = self.epoch_t0 = time.perf_counter()


class _CallbackStates:
    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = callbacks

    def state_dict(self) -> dict[str, Any]:
        return {
            f"{i}:{type(c).__name__}": c.state_dict()
            for i, c in enumerate(self.callbacks)
            if hasattr(c, "state_dict")
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, c in enumerate(self.callbacks):
            key = f"{i}:{type(c).__name__}"
            if key in state and hasattr(c, "load_state_dict"):
                c.load_state_dict(state[key])


class Trainer:
    """Runs the loop over Parts; usable on its own, and what ``fit()`` drives."""

    def __init__(self, parts: Parts) -> None:
        self.p = parts
        cfg = parts.config
        self.cfg = cfg
        self.model = parts.model  # what checkpoints read
        self.net = torch.compile(parts.model) if cfg.train.compile else parts.model  # what runs
        self.optimizer = parts.optimizer
        self.params = _params_in_model_order(parts.model, self.optimizer)
        self.device = parts.device
        self.counters = Counters()
        self.best = Best(cfg.train.monitor or "val_loss", cfg.train.mode, cfg.train.min_delta)
        self.history: list[dict[str, Any]] = []
        self.acc = _Accumulators(self.device)
        self.view = RunView(self)
        self.stop_reason: str | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_eval_step = -1
        self.elapsed_s = 0.0  # training seconds of earlier sessions of this run
        self._saved_step = -1
        self._saved_at = time.perf_counter()  # when the last rolling checkpoint was written
        self._executor: Any = None  # the background checkpoint writer (async_save)
        self._pending: list[tuple[int, str, Any]] = []
        self.preempted: str | None = None  # the signal that stopped the run, if one did
        bs, acc = cfg.data.batch_size, cfg.train.accumulate
        self.batches_per_epoch = parts.train.num_batches(bs, cfg.data.drop_last)
        self.steps_per_epoch = (
            math.ceil(self.batches_per_epoch / acc) if self.batches_per_epoch else None
        )

    # -- state -----------------------------------------------------------------------------------
    def parts(self) -> dict[str, Any]:
        """The registry of named stateful parts a checkpoint holds."""
        parts: dict[str, Any] = {
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.p.schedule,
            "precision": self.p.precision,
            "counters": self.counters,
            "rng": RngState(),
            "best": self.best,
            "callbacks": _CallbackStates(self.p.callbacks),
            "accumulators": self.acc,
        }
        if self.p.log is not None:
            parts["log"] = self.p.log
        return parts

    def state_dict(self) -> dict[str, Any]:
        from . import __version__

        state = {name: part.state_dict() for name, part in self.parts().items()}
        state["history"] = self.history
        state["meta"] = {
            "surefit_version": __version__,
            "torch_version": str(torch.__version__),
            "config": self.cfg.to_dict(),
            "elapsed_s": self._elapsed(),
            "last_eval_step": self.last_eval_step,
            "stop_reason": self.stop_reason or "",
            "optimizer_class": type(self.optimizer).__name__,
            "train_samples": getattr(self.p.train, "num_samples", None) or -1,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts().items():
            if name in state:
                part.load_state_dict(state[name])
        self.history = list(state.get("history", []))
        meta = state.get("meta", {})
        self.elapsed_s = float(meta.get("elapsed_s", 0.0))
        self.last_eval_step = int(meta.get("last_eval_step", -1))

    # -- events ------------------------------------------------------------------------------------
    def emit(self, event: str, *args: Any) -> None:
        assert event in EVENTS  # internal: the loop names only known events
        for cb in self.p.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self.view, *args)

    def request_stop(self, why: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = why

    # -- the step ----------------------------------------------------------------------------------
    def compute(self, batch: Any) -> tuple[Any, Any, Any]:
        return compute_batch(self.net, batch, self.p.task, self.p.step)

    def _micro_step(self, batch: Any, divisor: int) -> None:
        with self.p.precision.autocast():  # 2
            loss, _, _ = self.compute(batch)  # 3
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise DataError(
                f"the loss must be a scalar tensor, got {getattr(loss, 'shape', type(loss))}",
                where=f"train step {self.counters.optimizer_step}",
                fix="reduce it (loss.mean()), or return (loss, outputs) from step=fn",
            )
        # the last window of an epoch can be short: divide by its real length
        self.p.precision.backward(loss / divisor if divisor > 1 else loss)  # 4
        n, loss = batch_size_of(batch), loss.detach()
        self.acc.loss.add_(loss, alpha=n)  # in place, one kernel each (sums in float64)
        self.acc.epoch_loss.add_(loss, alpha=n)
        self.acc.samples += n
        self.acc.epoch_samples += n

    def _optimizer_step(self, window: list[Any]) -> torch.Tensor:
        t = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)  # 1
        for batch in window:  # 2-4
            self._micro_step(batch, divisor=len(window))
        norm = self.p.precision.unscale_and_clip(  # 5
            self.optimizer, self.params, t.clip_norm, t.clip_value
        )
        self.p.precision.step(self.optimizer)  # 6
        self.p.schedule.after_optimizer_step()  # 7
        return norm

    def _windows(self, batches: Iterable[Any]) -> Iterator[list[Any]]:
        """Group micro-batches into accumulation windows aligned to the epoch's start."""
        size, window = self.cfg.train.accumulate, []
        for batch in batches:
            window.append(batch)
            if len(window) == size:
                yield window
                window = []
        if window:
            yield window

    def _after_step(self, window: list[Any], norm: torch.Tensor) -> None:  # 8
        c, t, a = self.counters, self.cfg.train, self.acc
        c.optimizer_step += 1
        c.batch_in_epoch += len(window)
        c.micro_batch += len(window)
        c.samples += sum(batch_size_of(b) for b in window)
        norm = norm.detach()
        a.norm.add_(norm)
        a.epoch_norm.add_(norm)
        a.epoch_steps += 1
        torch.maximum(a.norm_max, norm, out=a.norm_max)
        if t.clip_norm > 0:
            a.clipped.add_(norm > t.clip_norm)
        a.steps += 1
        self._console().step()
        if c.optimizer_step % self.cfg.log.every_steps == 0:
            self._flush_interval()
        self.emit("on_step_end")
        if t.eval_every_steps and c.optimizer_step % t.eval_every_steps == 0:
            self._evaluate_and_track()
        every, minutes = self.cfg.checkpoint.every_steps, self.cfg.checkpoint.every_minutes
        if (every and c.optimizer_step % every == 0) or (
            minutes and time.perf_counter() - self._saved_at >= 60 * minutes
        ):
            self.save("last")
        if t.max_steps and c.optimizer_step >= t.max_steps:
            self.request_stop(f"reached max_steps={t.max_steps}")
        if t.max_time_s and self._elapsed() >= t.max_time_s:
            self.request_stop(f"reached max_time_s={t.max_time_s:g}")

    # -- logging -----------------------------------------------------------------------------------
    def _console(self) -> Any:
        return self.p.log.console if self.p.log is not None else NullConsole()

    def _elapsed(self) -> float:
        return self.elapsed_s + (
            time.perf_counter() - self._t_start if hasattr(self, "_t_start") else 0.0
        )

    def _flush_interval(self) -> dict[str, float]:
        """Read the interval's sums from the device: the log interval's one intended sync."""
        a = self.acc
        if a.steps == 0:
            return {}
        loss, norm, norm_max, clipped = torch.stack(
            [a.loss, a.norm, a.norm_max, a.clipped]
        ).tolist()
        seconds = max(time.perf_counter() - a.t0, 1e-9)
        record = {
            "step": self.counters.optimizer_step,
            "epoch": self.counters.epoch,
            "train_loss": loss / max(a.samples, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": norm / a.steps,
            "grad_norm_max": norm_max,
            "samples_per_s": a.samples / seconds,
            "steps_per_s": a.steps / seconds,
        }
        if self.cfg.train.clip_norm > 0:
            record["clip_fraction"] = clipped / a.steps
        if self.p.log is not None:
            self.p.log.metric(record)
            self._console().postfix({"loss": record["train_loss"], "lr": record["lr"]})
        a.reset_interval()
        return record

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, data: Any, prefix: str = "val") -> dict[str, float]:
        """Loss and metrics over ``data``, in eval and inference mode."""
        bs = self.cfg.data.eval_batch_size or 4 * self.cfg.data.batch_size
        return evaluate_data(
            self.net,
            data,
            task=self.p.task,
            step=self.p.step,
            precision=self.p.precision,
            metrics=self.p.metrics,
            device=self.device,
            batch_size=bs,
            prefix=prefix,
        )

    def _evaluate_and_track(self) -> dict[str, float]:
        c, a = self.counters, self.acc
        record: dict[str, Any] = {"epoch": c.epoch, "step": c.optimizer_step}
        if a.epoch_samples:
            loss, norm = torch.stack([a.epoch_loss, a.epoch_norm]).tolist()  # evaluation's sync
            record["train_loss"] = loss / a.epoch_samples
            record["grad_norm"] = norm / max(a.epoch_steps, 1)
            record["samples_per_s"] = a.epoch_samples / max(time.perf_counter() - a.epoch_t0, 1e-9)
        if self.p.val is not None:
            record.update(self.evaluate(self.p.val, "val"))
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        record["time_s"] = round(self._elapsed(), 3)
        self.last_eval_step = c.optimizer_step
        self.history.append(record)
        if self.p.log is not None:
            self.p.log.metric({"split": "eval", **record})
        monitored = record.get(self.best.monitor)
        if self.best.monitor not in record and self.p.val is not None:
            from .errors import ConfigError

            raise ConfigError(
                f"monitor '{self.best.monitor}' is not among the evaluation metrics",
                where="train.monitor",
                fix=f"use one of: {', '.join(sorted(record))}",
            )
        self.p.schedule.after_eval(monitored)
        if self.best.update(monitored, c.optimizer_step):
            self._on_best()
        self.emit("on_eval_end", {k: v for k, v in record.items() if isinstance(v, (int, float))})
        return record

    def _on_best(self) -> None:
        if self.p.store is not None and self.cfg.checkpoint.save_best:
            self.save("best")
        elif self.cfg.train.restore_best:
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self, kind: str) -> Path | None:
        """Write a checkpoint. A failed write (disk full, any OSError) leaves the previous
        checkpoints and the manifest as they were; the run records it, goes on, and tries again
        at the next save."""
        if self.p.store is None:
            return None
        step = self.counters.optimizer_step
        if kind == "last":
            self._saved_step, self._saved_at = step, time.perf_counter()
        if self.cfg.checkpoint.async_save:
            # state copied to CPU now; written by one background thread, in order
            self._drain(keep=1)  # before the copy: at most two snapshots in memory
            snapshot = cpu_copy(self.state_dict())
            future = self._writer().submit(self.p.store.save, snapshot, step=step, kind=kind)
            self._pending.append((step, kind, future))
            return None
        try:
            path = self.p.store.save(self.state_dict(), step=step, kind=kind)
        except OSError as exc:
            self._saved_step = -1 if kind == "last" else self._saved_step
            self._record_save(step, kind, None, exc)
            return None
        self._record_save(step, kind, path, None)
        return path

    def _record_save(self, step: int, kind: str, path: Path | None, exc: Exception | None) -> None:
        if exc is not None:
            if self.p.log is not None:
                self.p.log.event("checkpoint_failed", kind=kind, step=step, error=str(exc))
                self.p.log.console.line(f"warning: checkpoint at step {step} not written: {exc}")
            return
        if self.p.log is not None and path is not None:
            self.p.log.event("checkpoint", kind=kind, step=step, file=path.name)
        self.emit("on_checkpoint", path)

    def _writer(self) -> Any:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(1, thread_name_prefix="surefit-checkpoint")
        return self._executor

    def _drain(self, keep: int = 0) -> None:
        """Wait for background writes until at most ``keep`` are in flight; log their outcome."""
        while len(self._pending) > keep:
            step, kind, future = self._pending.pop(0)
            try:
                self._record_save(step, kind, future.result(), None)
            except OSError as exc:
                self._record_save(step, kind, None, exc)

    def restore_best_weights(self) -> bool:
        """Load the best evaluated weights into the model; False when there are none."""
        self._drain()
        if self.p.store is not None and (self.p.store.folder / "best.pt").exists():
            from .checkpoint import load_file

            self.model.load_state_dict(load_file(self.p.store.folder / "best.pt")["model"])
            return True
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            return True
        return False

    # -- the run -----------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train until epochs, max_steps, max_time_s or a callback stops the run."""
        self._t_start = time.perf_counter()
        self.net.train()
        self.emit("on_fit_start")
        try:
            with self._preemption_signals(), run_threads(self.p):
                while self.counters.epoch < self.cfg.epochs and self.stop_reason is None:
                    self._train_epoch()
            if self.stop_reason is None:
                self.stop_reason = f"completed {self.counters.epoch} epochs"
            # a preempted run stops as if paused: no extra evaluation or log line, so that its
            # resumed continuation equals the uninterrupted run
            if self.preempted is None:
                if self.p.val is not None and self.last_eval_step != self.counters.optimizer_step:
                    self._evaluate_and_track()
                self._flush_interval()
            if self._saved_step != self.counters.optimizer_step:
                self.save("last")
        except BaseException as exc:
            self.emit("on_exception", exc)
            raise
        finally:
            self._console().epoch_end()
            self._drain()  # every background write is durable before fit returns or raises
            if self._executor is not None:
                self._executor.shutdown()
        self.emit("on_fit_end")

    @contextlib.contextmanager
    def _preemption_signals(self) -> Iterator[None]:
        """SIGTERM, SIGUSR1 and SIGINT stop at the next optimizer-step boundary, with a checkpoint;
        a second SIGINT stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        names = [n for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n)]
        previous = {n: signal.getsignal(getattr(signal, n)) for n in names}

        def handler(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if self.preempted is not None and name == "SIGINT":
                raise KeyboardInterrupt  # the second Ctrl-C: stop now
            self.preempted = self.preempted or name
            self.request_stop(f"preempted by {name}")
            if self.p.log is not None:
                self.p.log.event("signal", signal=name, step=self.counters.optimizer_step)

        for n in names:
            signal.signal(getattr(signal, n), handler)
        try:
            yield
        finally:
            for n in names:
                signal.signal(getattr(signal, n), previous[n])

    def _train_epoch(self) -> None:
        c, cfg = self.counters, self.cfg
        if c.batch_in_epoch == 0:
            self.acc.reset_epoch()
        self.emit("on_epoch_start")
        done = c.batch_in_epoch // cfg.train.accumulate
        self._console().epoch_start(c.epoch, self.steps_per_epoch, done)
        batches = self.p.train.batches(
            cfg.data.batch_size,
            epoch=c.epoch,
            seed=cfg.train.seed,
            shuffle=True,
            start_batch=c.batch_in_epoch,
            drop_last=cfg.data.drop_last,
            device=self.device,
        )
        batches = TimedBatches(batches, self.device)  # data wait vs step, per epoch
        for window in self._windows(batches):
            norm = self._optimizer_step(window)
            self._after_step(window, norm)
            if self.stop_reason is not None:
                break
        self._console().epoch_end()
        report_wait(batches, self.p, c.epoch)
        if self.stop_reason is not None:
            return  # mid-epoch stop: the counters keep the position for a resume
        c.epoch += 1
        c.batch_in_epoch = 0
        self.p.schedule.after_epoch()
        if not cfg.train.eval_every_steps:
            record = self._evaluate_and_track()
            self._console().line(epoch_line(c.epoch, self._epochs_shown(), record))
        self.save("last")
        self.emit("on_epoch_end")

    def _epochs_shown(self) -> int | str:
        return self.cfg.epochs if self.cfg.epochs < (1 << 30) else "?"


def compute_batch(
    net: nn.Module, batch: Any, task: Task, step: StepFn | None
) -> tuple[Any, Any, Any]:
    """(loss, predictions, targets) of one batch, through the task or the user's step."""
    if step is None:
        return task.compute(net, batch)
    out = step(net, batch)
    loss, outputs = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
    target = batch[-1] if isinstance(batch, (tuple, list)) and outputs is not None else None
    return loss, outputs, target


def evaluate_data(
    net: nn.Module,
    data: Any,
    *,
    task: Task,
    step: StepFn | None,
    precision: Precision,
    metrics: Any,
    device: torch.device,
    batch_size: int,
    prefix: str,
) -> dict[str, float]:
    """Loss and metrics over ``data``: eval mode under inference mode, then the mode it had."""
    was_training = net.training
    net.eval()
    total, count, metric_set = None, 0, None
    try:
        with torch.inference_mode(), precision.autocast():
            for batch in data.batches(batch_size, shuffle=False, device=device):
                loss, preds, target = compute_batch(net, batch, task, step)
                n = batch_size_of(batch)
                weighted = loss.detach().double() * n
                total = weighted if total is None else total + weighted
                count += n
                if preds is not None:
                    if metric_set is None:
                        metric_set = task.metrics(preds, metrics, device)
                    metric_set.update(*task.metric_inputs(preds, target))
    finally:
        net.train(was_training)
    if total is None:
        raise DataError(
            f"the {prefix} data yielded no batches",
            where=prefix,
            fix="pass a non-empty evaluation set",
        )
    values = {"loss": (total / count).item()}  # the evaluation's intended sync
    if metric_set is not None:
        values.update(metric_set.compute())
    if task.name == "lm":
        values["perplexity"] = perplexity(values["loss"])
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _params_in_model_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Any]:
    """The optimizer's parameters in the model's order, so the global norm sums as users' do."""
    in_opt = {id(p): p for g in optimizer.param_groups for p in g["params"]}
    ordered = [p for p in model.parameters() if id(p) in in_opt]
    seen = {id(p) for p in ordered}
    return ordered + [p for i, p in in_opt.items() if i not in seen]
