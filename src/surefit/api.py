"""``fit()`` and ``evaluate()``: keyword arguments -> config -> parts -> Trainer -> result."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import config as cfgmod
from .callbacks import EarlyStopping, check_callback
from .checkpoint import CheckpointStore, atomic_write_text, for_strategy
from .checks import Finding, check_first_batch, raise_first, run_checks
from .config import RunConfig
from .data import DatasetData, as_data, close_loaders
from .distributed import (
    is_rank_zero,
    process_group,
    resolve_device,
    shard,
    strategy,
    world_size,
)
from .errors import ConfigError
from .evaluation import compute_batch, evaluate_data
from .keywords import DEFAULT, build_config, fit_objects
from .log import Console, RunLog, summary
from .loop import Parts, Trainer
from .monitor import auto_mode
from .optim import apply_changes, build_optimizer
from .precision import Precision
from .rundir import (
    check_resume_fits,
    open_run_dir,
    refuse_lost_checkpoints,
    restart_run_dir,
    run_lock,
)
from .schedule import Schedule, build_schedule, mark_left_rates
from .speed import Note, activation_checkpointing, prepare, record, reported_fallback
from .splits import peek_target, split_validation
from .state import seed_everything, set_deterministic, settings_kept
from .tasks import Task, build_task, check_loss_name, infer_task


@dataclass
class FitResult:
    """What came out of a run."""

    history: list[dict[str, Any]]  # one record per evaluation
    best_metrics: dict[str, Any]  # the evaluation record where the monitored metric was best
    final_metrics: dict[str, Any]  # the last evaluation record
    test_metrics: dict[str, float]  # evaluation of ``test`` after training ({} without test data)
    best_step: int  # optimizer step of the best evaluation (-1 without validation)
    stop_reason: str  # why training ended
    preempted: bool  # stopped by a signal with a checkpoint: `surefit resume` continues it
    steps: int  # optimizer steps taken in the whole run
    run_dir: Path | None
    checkpoint: Path | None  # best.pt if written, else the newest last-*.pt
    config: RunConfig = field(repr=False)
    model: nn.Module = field(repr=False)
    resume_check: Any = None  # the verdict of check_resume=True (a selfcheck.ResumeCheck)
    health_stop: str = ""  # why the health guards stopped a diverging run ("" when they did not)
    # every warning this call gave (check, what, fix, and where known the step), in order
    warnings: list[dict[str, Any]] = field(default_factory=list)


def _skipped(log: RunLog) -> Callable[[Path, str], None]:
    """What an unreadable checkpoint passed over leaves: a console line and an event."""

    def on_skip(path: Path, why: str) -> None:
        log.console.line(f"skipping unreadable checkpoint {path.name}: {why}")
        log.event("checkpoint_skipped", file=path.name, why=why)

    return on_skip


def _restore_best(trainer: Trainer) -> bool:
    """Load the best evaluated weights into the model; False when there are none."""
    state = None
    if trainer.saves is not None:  # verified; a damaged best.pt is reported and passed over
        trainer.saves.drain()
        state = trainer.p.store.load_best(on_skip=_skipped(trainer.p.log))
    if state is not None:
        trainer.model.load_state_dict(state["model"])
        return True
    if trainer.best_state is not None:
        trainer.model.load_state_dict(trainer.best_state)
        return True
    return False


def _total_steps(cfg: RunConfig, trainer_steps_per_epoch: int | None) -> int:
    epochs, max_steps = cfg.epochs, cfg.train.max_steps
    if trainer_steps_per_epoch is None:
        if not max_steps:
            raise ConfigError(
                "the training data has no length, so the run length is unknown",
                where="train",
                fix="set max_steps, or give the DataLoader's dataset a __len__",
            )
        return max_steps
    total = epochs * trainer_steps_per_epoch
    return min(total, max_steps) if max_steps else total


def fit(
    model: nn.Module,
    train: Any = None,
    val: Any = None,
    test: Any = None,
    *,
    task: str | Task = DEFAULT,
    loss: Any = None,
    metrics: Any = None,
    optimizer: str | torch.optim.Optimizer = DEFAULT,
    lr: float = DEFAULT,
    weight_decay: float = DEFAULT,
    schedule: str | Schedule = DEFAULT,
    warmup: float = DEFAULT,
    epochs: int = DEFAULT,
    max_steps: int | None = DEFAULT,
    batch_size: int = DEFAULT,
    accumulate: int = DEFAULT,
    clip_norm: float | None = DEFAULT,
    clip_value: float | None = DEFAULT,
    precision: str = DEFAULT,
    seed: int = DEFAULT,
    deterministic: bool = DEFAULT,
    device: str = DEFAULT,
    compile: bool = DEFAULT,
    run_dir: str | Path | None = DEFAULT,
    resume: str | bool = DEFAULT,
    checkpoint_every: int | None = DEFAULT,
    keep_last: int = DEFAULT,
    callbacks: list[Any] | None = None,
    step: Any = None,
    loggers: list[str] = DEFAULT,
    teacher: nn.Module | None = None,
    config: RunConfig | dict | str | Path | None = None,
    **options: Any,
) -> FitResult:
    """Train ``model`` in place and return what came out.

    Keywords left out take the values of ``config`` (a recipe) or the defaults of docs/options.md;
    any other recipe key with a unique name is accepted as a keyword too (``label_smoothing=0.1``,
    ``patience=5``, ``val_fraction=0.1``...).
    """
    metrics, callbacks = fit_objects(
        model=model, lr=lr, weight_decay=weight_decay, train=train, val=val, test=test,
        loss=loss, metrics=metrics, optimizer=optimizer, schedule=schedule, callbacks=callbacks,
        step=step, teacher=teacher, config=config, options=options,
    )  # fmt: skip
    if isinstance(val, float) and 0 < val < 1 and "val_fraction" not in options:  # recorded
        options["val_fraction"], val = val, None
    names = dict(
        task=task if isinstance(task, str) or task is DEFAULT else DEFAULT,
        optimizer=optimizer if isinstance(optimizer, str) or optimizer is DEFAULT else DEFAULT,
        schedule=schedule if isinstance(schedule, str) or schedule is DEFAULT else DEFAULT,
    )
    if isinstance(loss, str):
        options["loss"] = loss
        loss = None
    if isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics):
        options["metrics"] = list(metrics)
        metrics = None
    cfg = build_config(
        config,
        **names,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        accumulate=accumulate,
        clip_norm=clip_norm,
        clip_value=clip_value,
        precision=precision,
        seed=seed,
        deterministic=deterministic,
        device=device,
        compile=compile,
        run_dir=run_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
        loggers=loggers,
        **options,
    )
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model must be a torch.nn.Module, got {type(model).__name__}",
            where="fit(model)",
            fix="pass the nn.Module to train",
        )
    if train is None:
        raise ConfigError("no training data", where="fit(train=...)", fix="pass train=(x, y)")
    return Run(
        cfg,
        model,
        train,
        val,
        test,
        task_obj=task if isinstance(task, Task) else None,
        loss=loss,
        metrics=metrics,
        optimizer=optimizer if isinstance(optimizer, torch.optim.Optimizer) else None,
        schedule=schedule if isinstance(schedule, Schedule) else None,
        callbacks=list(callbacks or []),
        step=step,
        teacher=teacher,
    ).execute()


class Run:
    """Assembles the parts of one run from a config and the user's objects, and runs it."""

    def __init__(
        self,
        cfg: RunConfig,
        model: nn.Module,
        train: Any,
        val: Any,
        test: Any,
        *,
        task_obj: Task | None = None,
        loss: Any = None,
        metrics: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        schedule: Schedule | None = None,
        callbacks: list[Any] | None = None,
        step: Any = None,
        teacher: nn.Module | None = None,
        console: Console | None = None,
    ) -> None:
        self.cfg, self.model, self.step = cfg, model, step
        self.task_obj, self.loss, self.teacher = task_obj, loss, teacher
        self.metrics = metrics or list(cfg.task.metrics) or None  # a recipe's task.metrics too
        self.optimizer, self.schedule = optimizer, schedule
        self.callbacks = callbacks or []
        self.raw = (train, val, test)
        self.console = console

    def _data(self) -> tuple[Any, Any, Any]:
        train_raw, val_raw, test_raw = self.raw
        c = self.cfg
        train = as_data(train_raw, "train")
        val = None
        if isinstance(val_raw, (float, int)) and not isinstance(val_raw, bool):
            train, val = split_validation(train, val_raw, c.train.seed, c.data.stratify)
        elif val_raw is not None:
            val = as_data(val_raw, "val")
        elif c.data.val_fraction > 0:
            train, val = split_validation(train, c.data.val_fraction, c.train.seed, c.data.stratify)
        test = as_data(test_raw, "test") if test_raw is not None else None
        for d in (train, val, test):
            if isinstance(d, DatasetData):
                d.num_workers = c.data.num_workers
        return train, val, test

    def _task(self, train: Any) -> Task:
        if self.task_obj is not None:
            return self.task_obj
        name, inferred = self.cfg.task.name, False
        if name == "auto":
            if self.step is not None or self.loss is not None:
                name = "custom"
            else:
                name, inferred = infer_task(peek_target(train), self.cfg.task.loss), True
                check_loss_name(name, self.cfg.task.loss, inferred=True)
        task = build_task(dataclasses.replace(self.cfg.task, name=name), self.loss, self.teacher)
        task.inferred = inferred
        return task

    def _build(
        self,
    ) -> tuple[Trainer, Parts, Path | None, CheckpointStore | None, bool, list[Note]]:
        """Every part of the run, built and checked, and the set-up decisions to record;
        nothing is written yet."""
        c = self.cfg
        for cb in self.callbacks:
            check_callback(cb)
        run_dir, store, resuming = open_run_dir(c)
        seed_everything(c.train.seed)
        if c.train.deterministic:
            set_deterministic(True)
        device = resolve_device(c.train.device)
        train, val, test = self._data()
        task = self._task(train).to(device)
        if c.task.name == "auto":  # the run's config records the task it ran
            c = self.cfg = dataclasses.replace(c, task=dataclasses.replace(c.task, name=task.name))
        self.model.to(device)
        for d in (train, val, test):
            if d is not None:
                d.to(device, c.data.on_device)
        notes = prepare(self.model, c, device, strategy(c))  # channels_last, before the optimizer
        precision = Precision(c.train.precision, device)
        if self.optimizer is not None and strategy(c) == "fsdp":
            raise ConfigError(
                "an optimizer object under fsdp would step the parameters fully_shard replaces: "
                "it would train nothing",
                where="optimizer",
                fix="pass the optimizer by name (optimizer='adamw', with lr=... and the optim "
                "keywords): it is built after sharding",
            )
        shard(self.model, c, precision.dtype)  # fsdp: before the optimizer sees the parameters
        optimizer = self.optimizer or build_optimizer(self.model, c.optim)
        store = for_strategy(store, c.distributed.strategy, self.model, optimizer)
        callbacks = list(self.callbacks)
        monitor = c.train.monitor or "val_loss"
        if c.train.patience:
            callbacks.append(
                EarlyStopping(monitor, c.train.mode, c.train.patience, c.train.min_delta)
            )
        console = self.console or Console(c.log.progress if is_rank_zero() else "off", c.epochs)
        log = RunLog(run_dir, list(c.log.loggers), console, is_rank_zero(), c.to_dict())
        parts = Parts(
            model=self.model,
            task=task,
            optimizer=optimizer,
            schedule=None,  # type: ignore[arg-type]
            precision=precision,
            config=c,
            device=device,
            train=train,
            val=val,
            test=test,
            step=self.step,
            metrics=self.metrics,
            callbacks=callbacks,
            log=log,
            store=store,
            run_dir=run_dir,
        )
        with reported_fallback():  # a compile fallback is one of the notes
            trainer = Trainer(parts)
        parts.schedule = self.schedule or build_schedule(
            c.schedule,
            optimizer,
            total_steps=_total_steps(c, trainer.steps_per_epoch),
            steps_per_epoch=trainer.steps_per_epoch or 0,  # 0: unknown (no len())
            mode=auto_mode(monitor, c.train.mode),
        )
        if c.train.patience and val is None and monitor.startswith("val_"):
            raise ConfigError(
                f"early stopping (patience={c.train.patience}) monitors '{monitor}', "
                "but there is no val set",
                where="train.patience",
                fix="pass val=..., or val_fraction=0.1, or patience=0",
            )
        if c.schedule.name == "plateau" and val is None:
            raise ConfigError(
                "schedule 'plateau' steps on a validation metric, but there is no val set",
                where="schedule.name",
                fix="pass val=..., or val_fraction=0.1",
            )
        d = optimizer.defaults  # the implementation changes a run's last bits: recorded
        how = "fused" if d.get("fused") else {True: "foreach", False: "for-loop"}.get(
            d.get("foreach"), "torch's default")  # fmt: skip
        notes.append(Note("optimizer", {"class": type(optimizer).__name__, "implementation": how}))
        return trainer, parts, run_dir, store, resuming, notes

    def checks(self, trainer: Trainer, parts: Parts) -> list[Finding]:
        """The first-step checks (see checks.py) on this run's model and data."""

        def loss_of(batch: Any) -> Any:
            with parts.precision.autocast():
                return compute_batch(trainer.net, batch, parts.task, parts.step)[0]

        def outputs_of(batch: Any) -> Any:
            with parts.precision.autocast():
                return compute_batch(trainer.net, batch, parts.task, parts.step)[1]

        splits = {"train": parts.train, "val": parts.val}
        return run_checks(
            trainer.net,
            parts.task,
            self.cfg,
            splits,
            parts.precision,
            parts.device,
            loss_of,
            custom_step=parts.step is not None,
            metrics=parts.metrics,
            outputs_of=outputs_of,
        )

    def doctor(self) -> list[Finding]:
        """Run every first-step check without training or writing anything."""
        with activation_checkpointing(self.model, self.cfg.train.activation_checkpointing):
            trainer, parts, *_ = self._build()
            return self.checks(trainer, parts)

    def execute(self) -> FitResult:
        c = self.cfg
        with (
            process_group(c.train.device, c.distributed.timeout_s),
            activation_checkpointing(self.model, c.train.activation_checkpointing),  # before fsdp
            contextlib.ExitStack() as held,  # the run directory's lock, once taken
            settings_kept(),  # deterministic = true holds for this run only
        ):
            return self._execute(held)

    def _execute(self, held: contextlib.ExitStack) -> FitResult:
        trainer, parts, run_dir, store, resuming, notes = self._build()
        held.callback(close_loaders, parts.train, parts.val, parts.test)  # their workers
        c = self.cfg  # as built: the task auto chose
        findings = self.checks(trainer, parts)
        raise_first(findings)  # before anything is written
        check = None
        if c.checkpoint.check_resume and not resuming:
            from .selfcheck import check_in_process

            if world_size() > 1:
                raise ConfigError(
                    "check_resume=True runs its check in this process, not across ranks",
                    where="checkpoint.check_resume",
                    fix="check with one process, or with `surefit check-resume RECIPE` (fresh "
                    "processes), and launch the run without it",
                )

            check = check_in_process(self)
        held.enter_context(run_lock(run_dir))  # one run at a time in a run directory
        if not resuming and store is not None and store.has_checkpoint():
            raise ConfigError(  # written by a run that held the lock while this one started
                f"{run_dir} gained a checkpoint while this run was starting (another process)",
                where="run_dir",
                fix="run it again to resume that run, or choose another run_dir",
            )
        log, console = parts.log, parts.log.console  # type: ignore[union-attr]
        swept = store.sweep() if store is not None else []
        if swept:
            log.event("swept", files=swept)
            console.line("removed what a killed run left half-written: " + ", ".join(swept))
        test = parts.test
        if resuming and store is not None:
            state, path = store.load_latest(on_skip=_skipped(log))
            changes = check_resume_fits(
                state,
                trainer.model,
                trainer.optimizer,
                getattr(trainer.p.train, "num_samples", None) or -1,
                path,
                lr=None if self.optimizer is not None else c.optim.lr,
                override=c.checkpoint.override,
                config=c.to_dict(),
            )
            if changes:
                log.event("config_changed", **{k: list(v) for k, v in changes.items()})
                console.line("resumed with changed options: " + ", ".join(
                    f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))  # fmt: skip
            trainer.load_state_dict(state)
            if self.optimizer is None:  # weight decay, betas... as configured now
                apply_changes(trainer.optimizer, trainer.model, c.optim, list(changes))
            if changes:  # a run the guards stopped goes on with the options changed to save it
                trainer.health_stop = ""
            saved_lr = state.get("meta", {}).get("config", {}).get("optim", {}).get("lr")
            if self.optimizer is None and saved_lr and saved_lr != c.optim.lr:
                parts.schedule.rescale(c.optim.lr / saved_lr)
                log.event("lr_override", old=saved_lr, new=c.optim.lr)
            console.line(
                f"resuming {run_dir} from {path.name} (step {trainer.counters.optimizer_step})"
            )
        if run_dir is not None and is_rank_zero():
            if not resuming:
                refuse_lost_checkpoints(run_dir)  # before anything of the new run is written
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.toml", cfgmod.to_toml(c))
            cut = [] if resuming else restart_run_dir(run_dir)
            if cut:
                console.line(f"{run_dir} holds a run with no checkpoint: starting it over")
                log.event("restart", cut=cut)
            log.event("resume" if resuming else "start", step=trainer.counters.optimizer_step)
        record(notes, log)
        if check is not None:
            console.line(check.report())
            log.event("resume_check", **dataclasses.asdict(check))
        for f in findings:
            if f.level == "warning" and not resuming:
                log.warn(f.check, f.what, f.fix)
        try:
            trainer.fit()
            test_metrics: dict[str, float] = {}
            if trainer.preempted is not None:  # paused, not finished: resume continues it
                log.event(
                    "preempted", step=trainer.counters.optimizer_step, signal=trainer.preempted
                )
            else:
                if c.train.restore_best:
                    _restore_best(trainer)
                if test is not None:
                    test_metrics = trainer.evaluate(test, "test")
                    step_now = trainer.counters.optimizer_step
                    log.metric({"split": "test", "step": step_now, **test_metrics})
                log.event("end", step=trainer.counters.optimizer_step, reason=trainer.stop_reason)
        except BaseException as exc:  # trackers mark their run failed (or killed), then re-raise
            log.close(error=exc)
            raise
        log.close()
        result = self._result(trainer, test_metrics, run_dir, store)
        result.resume_check, result.health_stop = check, trainer.health_stop
        result.warnings = list(log.warnings)
        console.line(summary(result))
        return result

    def _result(
        self,
        trainer: Trainer,
        test_metrics: dict[str, float],
        run_dir: Path | None,
        store: CheckpointStore | None,
    ) -> FitResult:
        if self.optimizer is not None:  # the user's object: what a later fit of it starts from
            mark_left_rates(self.optimizer)
        history = trainer.history
        best = next(
            (h for h in history if h["step"] == trainer.best.step), history[-1] if history else {}
        )
        ckpt = None
        if store is not None:
            best_path = store.folder / "best.pt"
            if not best_path.exists():  # under fsdp, a sharded checkpoint's folder
                best_path = store.folder / "best"
            latest = store.latest()
            ckpt = (
                best_path
                if best_path.exists()
                else (store.folder / latest[0]["file"] if latest else None)
            )
        return FitResult(
            history=history,
            best_metrics=best,
            final_metrics=history[-1] if history else {},
            test_metrics=test_metrics,
            best_step=trainer.best.step,
            stop_reason=trainer.stop_reason or "",
            preempted=trainer.preempted is not None,
            steps=trainer.counters.optimizer_step,
            run_dir=run_dir,
            checkpoint=ckpt,
            config=self.cfg,
            model=self.model,
        )


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    task: str | Task = "auto",
    loss: Any = None,
    metrics: Any = None,
    batch_size: int = 256,
    device: str = "auto",
    precision: str = "fp32",
    step: Any = None,
    prefix: str = "test",
) -> dict[str, float]:
    """Loss and metrics of ``model`` over ``data``, in eval mode under inference mode."""
    named_loss = {"loss": loss} if isinstance(loss, str) else {}
    loss = None if named_loss else loss
    names = {"task": task if isinstance(task, str) else DEFAULT, **named_loss}
    cfg = build_config(None, precision=precision, batch_size=batch_size, **names)  # checked
    dev = resolve_device(device)
    source = as_data(data, prefix).to(dev)
    model.to(dev)
    if isinstance(task, Task):
        task_obj = task
    else:
        name = cfg.task.name
        if name == "auto":
            name = (
                "custom"
                if (step is not None or loss is not None)
                else infer_task(peek_target(source), cfg.task.loss)
            )
            check_loss_name(name, cfg.task.loss, inferred=True)
        task_obj = build_task(dataclasses.replace(cfg.task, name=name), loss)
    task_obj.to(dev)
    named = [metrics] if isinstance(metrics, str) else metrics
    named = list(named) if isinstance(named, (list, tuple)) else named
    if step is None:
        raise_first(check_first_batch(model, task_obj, source, batch_size, dev, prefix))
    return evaluate_data(
        model,
        source,
        task=task_obj,
        step=step,
        precision=Precision(precision, dev),
        metrics=named,
        device=dev,
        batch_size=batch_size,
        prefix=prefix,
    )
