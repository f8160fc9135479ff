"""The fit/evaluate loop: the canonical step order, accumulation windows, evaluation, events.

One optimizer step, as in DESIGN.md:
zero_grad -> forward (autocast) -> loss / window size -> backward (scaled) -> unscale ->
global grad norm (pre-clip) -> clip -> step (through the scaler) -> scheduler (per batch).
Loss and grad-norm sums stay on the device; the host reads them at the log interval only.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .callbacks import EVENTS, Best, CallbackStates, RunView
from .checkpoint import CheckpointStore, Saves, preemption_signals
from .config import RunConfig
from .data import batch_size_of
from .distributed import any_rank, grad_sync, stop_together, world_size, wrap
from .errors import CheckpointError, DataError
from .evaluation import StepFn, compute_batch, evaluate_data
from .forensics import examine_window
from .health import Health, _Step
from .log import NullConsole, RunLog, epoch_line
from .optim import params_in_model_order
from .perf import CpuUse, TimedBatches, note_busy_cores, report_wait, run_threads
from .precision import Precision
from .schedule import Schedule
from .state import Counters, RngState
from .tasks import Task


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


class Trainer:
    """Runs the loop over Parts; usable on its own, and what ``fit()`` drives."""

    def __init__(self, parts: Parts) -> None:
        self.p = parts
        cfg = parts.config
        self.cfg = cfg
        self.model = parts.model  # what checkpoints read
        self.net = wrap(parts.model, cfg, parts.device)  # what runs: DDP, compiled, or the model
        self.optimizer = parts.optimizer
        self.params = params_in_model_order(parts.model, self.optimizer)
        self.device = parts.device
        self.counters = Counters()
        self.best = Best(cfg.train.monitor or "val_loss", cfg.train.mode, cfg.train.min_delta)
        self.history: list[dict[str, Any]] = []
        self.health = Health(
            cfg.health,
            cfg.train.clip_norm,
            parts.run_dir,
            parts.log,
            enabled_io=parts.log is not None and parts.log.enabled,
            scaler=parts.precision.scaler is not None,
        )
        self.view = RunView(self)
        self.stop_reason: str | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_eval_step = -1
        self.elapsed_s = 0.0  # training seconds of earlier sessions of this run
        self._saved_step = -1
        self._saved_at = time.perf_counter()  # when the last rolling checkpoint was written
        self.saves = Saves.of(parts.store, cfg, self._record_save)  # None without a store
        self._keep_copy, self._loaded_copy = False, None  # the rollback copy in a pause's save
        limit = cfg.train.max_time_s
        self._time_up = f"reached max_time_s={limit:g}" if limit else ""  # the stop's reason
        self.preempted: str | None = None  # the signal that stopped the run, if one did
        self.health_stop = ""  # why the health guards stopped the run, if they did
        self._best_due = False  # best.pt is written with the next save at this step
        self._config_dict = cfg.to_dict()  # the resolved config, as every checkpoint holds it
        self.resumed_threads = 0  # the thread count a resumed run's checkpoint was written with
        self.threads = 0  # the thread count this run trains with, once it has started
        self.last_lr: float | None = None  # the first group's rate at the last update
        auto_cpu = cfg.train.threads == 0 and parts.device.type == "cpu"
        self._cpu_use = CpuUse() if auto_cpu else None  # other processes' CPU use from here on
        bs, acc = cfg.data.batch_size, cfg.train.accumulate
        self.batches_per_epoch = parts.train.num_batches(bs, cfg.data.drop_last)
        if self.batches_per_epoch == 0:  # drop_last with fewer samples than one batch
            raise DataError(
                f"an epoch has no batch: data.drop_last drops the only, short batch of "
                f"{parts.train.num_samples} samples (batch_size {bs})",
                where="data.batch_size",
                fix="lower batch_size, or set drop_last = false",
            )
        self._multi = world_size() > 1
        self._asked: list[tuple[str, str | None]] = []  # stops asked for, not agreed yet
        self._plain_zero_grad = type(self.optimizer).zero_grad is torch.optim.Optimizer.zero_grad
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
            "callbacks": CallbackStates(self.p.callbacks),
            "health": self.health,
        }
        if self.p.log is not None:
            parts["log"] = self.p.log
        if hasattr(self.p.train, "state_dict"):  # a user's DataLoader: its epoch's RNG states
            parts["data"] = self.p.train
        return parts

    def state_dict(self) -> dict[str, Any]:
        from . import __version__

        state = {name: part.state_dict() for name, part in self.parts().items()}
        # one string, not a list of dicts: torch.save spends ~0.6 us on every Python object it
        # pickles, and the history grows by an epoch's record (~30 objects) at every epoch
        state["history"] = json.dumps(self.history)
        state["meta"] = {
            "surefit_version": __version__,
            "torch_version": str(torch.__version__),
            "config": self._config_dict,
            "elapsed_s": self._elapsed(),
            "last_eval_step": self.last_eval_step,
            "stop_reason": self.stop_reason or "",
            "health_stop": self.health_stop,
            "optimizer_class": type(self.optimizer).__name__,
            "train_samples": getattr(self.p.train, "num_samples", None) or -1,
            "threads": self.threads or torch.get_num_threads(),  # a CPU run's bits depend on it
            "healthy": self.health.healthy(),  # not amid spikes: a state to roll back to
            "last_lr": self.last_lr,  # what a record made before this session's first update says
        }
        if self._keep_copy and self.health.snapshot is not None and not self.p.store.in_place:
            state["rollback_copy"] = self.health.snapshot  # as the run without the pause holds
        if self.best_state is not None:  # restore_best without best.pt: the copy goes on
            state["best_state"] = self.best_state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.parts().items():
            if name in state:
                part.load_state_dict(state[name])
        history = state.get("history", [])
        self.history = json.loads(history) if isinstance(history, str) else list(history)
        meta = state.get("meta", {})
        self.elapsed_s = float(meta.get("elapsed_s", 0.0))
        self.last_eval_step = int(meta.get("last_eval_step", -1))
        self.resumed_threads = int(meta.get("threads", 0))
        self.health_stop = str(meta.get("health_stop", ""))  # stays stopped (api: unless changed)
        self.last_lr = meta.get("last_lr")
        self._saved_step = self.counters.optimizer_step  # this state is on disk already
        self._loaded_copy, self.best_state = state.get("rollback_copy"), state.get("best_state")

    # -- events ------------------------------------------------------------------------------------
    def emit(self, event: str, *args: Any) -> None:
        assert event in EVENTS  # internal: the loop names only known events
        for cb in self.p.callbacks:
            hook = getattr(cb, event, None)
            if hook is not None:
                hook(self.view, *args)

    def request_stop(self, why: str, preempted: str | None = None) -> None:
        """Stop at this step boundary (``preempted``: as a pause); with several processes at the
        next agreement (``_agree``), so that every rank stops at one step."""
        if self._multi:
            self._asked.append((why, preempted))  # a signal handler may append while it reads
            return
        self.preempted = self.preempted or preempted
        self.stop_reason = self.stop_reason or why

    def pause(self, why: str) -> None:
        """Stop at this step boundary with a checkpoint and no final evaluation (resumable)."""
        self.request_stop(why, preempted=why)

    def _agreed(self) -> bool:
        """No stop, agreed by every rank (the stops asked at an epoch's end, in its evaluation,
        save or callbacks, or before the first epoch)."""
        if self._multi:
            self._agree()
        return self.stop_reason is None

    def _agree(self) -> None:
        """Every rank stops where any asked to (a signal, a callback, the time limit, the guards):
        one all-reduce; what is asked while it runs is agreed at the next one."""
        n = len(self._asked)
        asked, reason, pre = self._asked[:n], self.stop_reason, self.preempted
        del self._asked[:n]
        for why, preempted in asked:
            reason, pre = reason or why, pre or preempted
        self.stop_reason, self.preempted = stop_together(reason, pre, self.device, self._time_up)

    # -- the step ----------------------------------------------------------------------------------
    def compute(self, batch: Any) -> tuple[Any, Any, Any]:
        return compute_batch(self.net, batch, self.p.task, self.p.step)

    def _micro_step(self, batch: Any, divisor: int) -> torch.Tensor:
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
        return loss.detach()

    def _zero_grad(self) -> None:
        """``optimizer.zero_grad(set_to_none=True)``: the same effect, written out for torch's
        own optimizers (its profiler scope and foreach grouping took 15 us a step in bench/'s
        tiny MLP loop, 1.5 % of its step); an optimizer with its own zero_grad gets it called."""
        if not self._plain_zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
            return
        for p in self.params:
            p.grad = None

    def _optimizer_step(self, window: list[Any]) -> _Step:
        """Steps 1-7 for one accumulation window. The micro-batch losses stay as they are on
        the device (weighting by batch size happens at the sync point, on the host), so the
        hot path adds no tensor op per micro-batch beyond the model's own."""
        t, c = self.cfg.train, self.counters
        self._zero_grad()  # 1
        if len(window) == 1:  # no accumulation: nothing to hold back from the all-reduce
            batch = window[0]
            loss = self._micro_step(batch, divisor=1)  # 2-4
            losses, counts = loss, (batch_size_of(batch),)
        else:
            micro = []
            for i, batch in enumerate(window):  # 2-4; gradients reduced on the last
                with grad_sync(self.net, sync=i == len(window) - 1):
                    micro.append(self._micro_step(batch, divisor=len(window)))
            losses = torch.stack(micro)
            loss, counts = losses.sum(), tuple(batch_size_of(b) for b in window)
        norm = self.p.precision.unscale_and_clip(  # 5
            self.optimizer, self.params, t.clip_norm, t.clip_value
        )
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this update used (a host float)
        self.last_lr = lr  # what the next record reports
        stepped = self.health.step(self.p.precision, self.optimizer, loss, norm)  # 6
        # 7: the schedule counts steps attempted, so a skipped step's rate goes unused (as its
        # batch does), the schedule ends where planned, and which step was skipped (known on the
        # host at the next sync point only) cannot move the rates of the steps after it
        self.p.schedule.after_optimizer_step(optimizer_stepped=stepped)
        return _Step(
            step=c.optimizer_step + 1,
            epoch=c.epoch,
            batch0=c.batch_in_epoch,
            batches=len(window),
            samples=sum(counts),
            loss=losses,
            norm=norm,
            lr=lr,
            counts=counts,
        )

    def _after_step(self, step: _Step) -> None:  # 8
        c, t = self.counters, self.cfg.train
        self.health.record(step)  # loss and norm stay on the device until the next sync point
        c.optimizer_step += 1
        c.batch_in_epoch += step.batches
        c.micro_batch += step.batches
        c.samples += step.samples
        self._console().step()
        if c.optimizer_step % self.cfg.log.every_steps == 0:
            self._flush_interval()
        self.emit("on_step_end")
        if t.eval_every_steps and c.optimizer_step % t.eval_every_steps == 0:
            self._evaluate_and_track()
        every, minutes = self.cfg.checkpoint.every_steps, self.cfg.checkpoint.every_minutes
        due = (every and c.optimizer_step % every == 0) or (
            minutes and time.perf_counter() - self._saved_at >= 60 * minutes
        )
        if due or self._best_due:  # best.pt: an evaluation at this step improved
            self.save("last" if due else "")
        self._check_limits()

    def _check_limits(self) -> None:
        t = self.cfg.train
        step = self.counters.optimizer_step
        if t.max_steps and step >= t.max_steps:  # past it: a resume asked for fewer steps
            past = f" (already at step {step})" if step > t.max_steps else ""
            self.request_stop(f"reached max_steps={t.max_steps}{past}")
        if t.max_time_s and self._elapsed() >= t.max_time_s:
            self.request_stop(self._time_up)

    # -- logging -----------------------------------------------------------------------------------
    def _console(self) -> Any:
        return self.p.log.console if self.p.log is not None else NullConsole()

    def _elapsed(self) -> float:
        return self.elapsed_s + (
            time.perf_counter() - self._t_start if hasattr(self, "_t_start") else 0.0
        )

    def _record_lr(self) -> float:
        """A record's ``lr``: the last update's (the group holds the next one's by then)."""
        return self.optimizer.param_groups[0]["lr"] if self.last_lr is None else self.last_lr

    def _flush_interval(self) -> dict[str, float]:
        """Write the log interval's record: the log interval's one intended sync."""
        self._sync()
        if self._cpu_use is not None and note_busy_cores(self.p, self.threads, self._cpu_use):
            self._cpu_use = None
        if not (self.health.interval.steps or self.health.interval.skipped):
            return {}
        record = {
            "step": self.counters.optimizer_step,
            "epoch": self.counters.epoch,
            **self.health.interval_record(),
            "lr": self._record_lr(),
        }
        if self.p.log is not None:
            self.p.log.metric(record)
            self._console().postfix({"loss": record["train_loss"], "lr": record["lr"]})
        return record

    def _sync(self, snapshot: bool | None = False, defer: bool = False) -> None:
        """Read the pending steps and act on what health decides (at log, eval and save);
        ``snapshot``: force a rollback copy (True), or take none (None: a save off schedule);
        ``defer``: a pause's sync, whose decisions wait for the next scheduled one."""
        actions = self.health.sync(self._examine)
        actions = self.health.defer(actions) if defer else self.health.with_deferred(actions)
        if actions["rollback"]:
            saved = None
            if self.cfg.health.rollback_from == "checkpoint" and self.p.store is not None:
                self.saves.drain()
                healthy = lambda st: st.get("meta", {}).get("healthy", True)  # noqa: E731
                with contextlib.suppress(CheckpointError):  # none written while healthy
                    saved = self.p.store.load_latest(accept=healthy)[0]
            scale = self.p.schedule.base_lr()
            if self.health.rollback(self._rollback_parts(), saved, actions["rollback"]):
                # the rate goes down from where it was, not from the copy's: each rollback again
                loaded = self.p.schedule.base_lr()
                known = isinstance(scale, float) and isinstance(loaded, float) and loaded
                ratio = self.cfg.health.rollback_lr_factor * (scale / loaded if known else 1.0)
                if ratio != 1:
                    self.p.schedule.rescale(ratio)
                self._console().line(f"rolled back: {actions['rollback']}")
            else:
                actions["stop"] = f"diverged ({actions['rollback']}) with no state to roll back to"
        if actions["stop"]:
            self.health_stop = self.health_stop or actions["stop"]
            self._console().line(f"stopping: {actions['stop']}")
            if self.p.log is not None:
                self.p.log.event("health_stop", why=actions["stop"])
            self.request_stop(actions["stop"])
        if snapshot is not None:
            step = self.counters.optimizer_step
            self.health.take_snapshot(self._rollback_parts(), step, force=snapshot)

    def _rollback_parts(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "schedule": self.p.schedule,
            "precision": self.p.precision,
        }

    def _examine(self, p: _Step, origin: bool) -> dict[str, Any]:
        net = getattr(self.net, "_orig_mod", self.net)  # eager: the replay's hooks break graphs

        def loss_of(batch: Any) -> Any:
            with self.p.precision.autocast():
                return compute_batch(net, batch, self.p.task, self.p.step)[0]

        d = self.cfg.data
        where = (d.batch_size, p.epoch, self.cfg.train.seed, p.batch0, p.batches, d.drop_last)
        return examine_window(net, self.p.train, where, loss_of, self.device, origin)

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
        c = self.counters
        self._sync()
        record: dict[str, Any] = {"epoch": c.epoch, "step": c.optimizer_step}
        record.update(self.health.epoch_record())
        if self.p.val is not None:
            record.update(self.evaluate(self.p.val, "val"))
        record["lr"] = self._record_lr()
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
        self.health.check_eval(self.best.monitor, monitored, c.optimizer_step, self.p.val)
        self.p.schedule.after_eval(monitored)
        if self.best.update(monitored, c.optimizer_step):
            self._on_best()
        self.emit("on_eval_end", {k: v for k, v in record.items() if isinstance(v, (int, float))})
        return record

    def _on_best(self) -> None:
        if self.p.store is not None and self.cfg.checkpoint.save_best:
            self._best_due = True  # written with the next save at this step (one serialization)
        elif self.cfg.train.restore_best:
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }

    # -- checkpoints -------------------------------------------------------------------------------
    def save(
        self, kind: str = "last", snapshot: bool | None = True, defer: bool = False
    ) -> Path | None:
        """Write a checkpoint ("last"), and best.pt when an evaluation at this step improved
        (``kind=""``: best.pt only, if due). A failed write (disk full, any OSError) leaves the
        previous checkpoints and the manifest as they were; the run records it, goes on, and tries
        again at the next save."""
        kinds = tuple(k for k in (kind, "best" if self._best_due else "") if k)
        self._best_due = False
        if self.p.store is None or not kinds:
            return None
        self._sync(snapshot=snapshot, defer=defer)  # the checkpoint holds host state only
        step = self.counters.optimizer_step
        if "last" in kinds:
            self._saved_step, self._saved_at = step, time.perf_counter()
        return self.saves.write(self.state_dict, step, kinds)

    def _epoch_end_save(self) -> None:
        """The epoch-end checkpoint, unless the pace puts it off (``Saves.put_off``): then the
        training state goes on as if it were written (the same sync and rollback copy), so a run
        computes the same numbers however fast its disk is."""
        final = self.counters.epoch >= self.cfg.epochs or self.stop_reason is not None
        if final and self.saves is not None:  # the run's last save, after its last log line,
            self._sync(snapshot=True)  # writes this step (and best.pt, if due) once
            return
        if not self.cfg.checkpoint.at_epoch_end or self.saves is None:
            self.save("")  # best.pt, if due
            return
        wait = not self._best_due and self.saves.put_off()
        if self._multi:  # every rank saves, or none (a save ends in a barrier)
            wait = not any_rank(not wait, self.device)
        if not wait:
            self.save("last")
            return
        self._sync(snapshot=True)
        self.saves.note_put_off(self.p.log, self.counters.optimizer_step)

    def _record_save(
        self, step: int, kinds: tuple[str, ...], path: Path | None, exc: Exception | None
    ) -> None:
        log = self.p.log
        if exc is not None and "last" in kinds and self._saved_step == step:
            self._saved_step = -1  # not on disk: the end of the run saves again
        for kind in kinds:
            if exc is not None and log is not None:
                log.event("checkpoint_failed", kind=kind, step=step, error=str(exc))
            elif log is not None and path is not None:
                name = "best.pt" if kind == "best" else f"last-{step:09d}.pt"
                log.event("checkpoint", kind=kind, step=step, file=name)
        if exc is not None and log is not None:  # the run goes on
            fix = "free space on the run directory's disk or fix its permissions"
            log.warn("checkpoint", f"checkpoint at step {step} not written: {exc}", fix, step=step)
        elif path is not None:
            self.emit("on_checkpoint", path)

    # -- the run -----------------------------------------------------------------------------------
    def fit(self) -> None:
        """Train until epochs, max_steps, max_time_s or a callback stops the run."""
        self._t_start = time.perf_counter()
        self.health.first_snapshot(self._rollback_parts(), self.counters.optimizer_step,
                                   self.p.store, self._loaded_copy)  # fmt: skip
        if not self.net.training:  # a model left in eval mode; modules frozen inside one stay so
            self.net.train()
        self.emit("on_fit_start")
        try:
            threads = run_threads(self.p, self.resumed_threads)
            with preemption_signals(self._on_signal), threads as choice:
                self.threads = choice.threads  # what checkpoints record, the last one too
                self._cpu_use = self._cpu_use if choice.threads > 1 else None
                self._check_limits()  # a resumed run may have reached them already
                if self.health_stop:  # resumed from the run the guards stopped
                    self.request_stop(self.health_stop)
                while self._agreed() and self.counters.epoch < self.cfg.epochs:
                    self._train_epoch()
            if self.stop_reason is None:
                done = self.counters.epoch
                past = f", more than epochs={self.cfg.epochs}" if done > self.cfg.epochs else ""
                self.stop_reason = f"completed {done} epochs{past}"
            # a preempted run stops as if paused: no extra evaluation or log line, so that its
            # resumed continuation equals the uninterrupted run
            step, changed = self.counters.optimizer_step, False
            if self.preempted is None:
                if self.p.val is not None and self.last_eval_step != step:
                    changed = bool(self._evaluate_and_track())
                changed = bool(self._flush_interval()) or changed
            # the last checkpoint holds the run as it ended (a resumed finished run trains and
            # writes nothing); off the schedule: no rollback copy, and a pause's decisions wait
            # for the next scheduled sync point, as in the run without the pause
            kind = "last" if changed or self._saved_step != step else ""
            self._keep_copy = self.preempted is not None
            self.save(kind, snapshot=None, defer=self._keep_copy)
        except BaseException as exc:
            self.emit("on_exception", exc)
            raise
        finally:
            self._console().epoch_end()
            for sink in (self.health.quarantine, self.health.per_step):
                if sink is not None:
                    sink.close()
            if self.saves is not None:  # every background write is durable before fit returns
                self.saves.close()
        self.emit("on_fit_end")

    def _on_signal(self, name: str) -> None:
        if (self.preempted or any(p for _, p in self._asked)) and name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.request_stop(f"preempted by {name}", preempted=name)
        if self.p.log is not None:
            self.p.log.event("signal", signal=name, step=self.counters.optimizer_step)

    def _train_epoch(self) -> None:
        c, cfg = self.counters, self.cfg
        if not c.batch_in_epoch:  # a run resumed mid-epoch had it before its checkpoint
            self.emit("on_epoch_start")
        if self.stop_reason is not None and not self._multi:  # stopped in on_epoch_start
            return
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
        # accumulation windows, aligned to the epoch's start; data wait vs step, per epoch
        batches = TimedBatches(batches, self.device, window=cfg.train.accumulate)
        for window in batches:
            self._after_step(self._optimizer_step(window))
            if self._multi:  # one small all-reduce per step, only with several processes
                self._agree()
            if self.stop_reason is not None:
                break
        self._console().epoch_end()
        report_wait(batches, self.p, c.epoch)
        whole = c.batch_in_epoch == self.batches_per_epoch  # a stop at the last step ends it
        if self.stop_reason is not None and (self.preempted is not None or not whole):
            return  # mid-epoch stop or a pause: the counters keep the position for a resume
        c.epoch += 1
        c.batch_in_epoch = 0
        self.p.schedule.after_epoch()
        if not cfg.train.eval_every_steps:
            record = self._evaluate_and_track()
            self._console().line(epoch_line(c.epoch, self.cfg.epochs, record))
        self._epoch_end_save()
        self.emit("on_epoch_end")
