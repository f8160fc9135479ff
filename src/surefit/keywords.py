"""``fit()``'s arguments: its keywords and a recipe into one RunConfig, and the Python objects it
takes beside them checked before anything is built (a wrong kind of object is a ConfigError that
names the argument and what to pass, not a TypeError from deep inside the run; a single callback
or metric name is taken as a list)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import config as cfgmod
from .config import RunConfig
from .errors import ConfigError


class _Default:
    """Marks a keyword the caller did not give: the config's default (or recipe value) holds."""

    def __repr__(self) -> str:
        return "<default>"


DEFAULT: Any = _Default()

# fit() keyword -> recipe key; these names are the public contract
KEYWORDS = {
    "task": "task.name",
    "optimizer": "optim.name",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "schedule": "schedule.name",
    "warmup": "schedule.warmup",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "batch_size": "data.batch_size",
    "accumulate": "train.accumulate",
    "clip_norm": "train.clip_norm",
    "clip_value": "train.clip_value",
    "precision": "train.precision",
    "seed": "train.seed",
    "deterministic": "train.deterministic",
    "device": "train.device",
    "compile": "train.compile",
    "run_dir": "train.run_dir",
    "resume": "checkpoint.resume",
    "checkpoint_every": "checkpoint.every_steps",
    "keep_last": "checkpoint.keep_last",
    "loggers": "log.loggers",
    "log_every": "log.every_steps",
    "progress": "log.progress",
}


def _option_keys() -> dict[str, str]:
    """Every other recipe key whose name is unique across sections, usable as a fit() keyword."""
    seen: dict[str, list[str]] = {}
    for section, cls in cfgmod.SECTIONS.items():
        for f in dataclasses.fields(cls):
            seen.setdefault(f.name, []).append(f"{section}.{f.name}")
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


def _normalise(key: str, value: Any) -> Any:
    if key in ("train.clip_norm", "train.clip_value", "train.max_steps") and value in (None, False):
        return 0
    if key == "checkpoint.every_steps" and value is None:
        return 0
    if key == "checkpoint.resume" and isinstance(value, bool):
        return "must" if value else "never"
    if key == "train.channels_last" and isinstance(value, bool):
        return "on" if value else "off"
    if key == "checkpoint.resume" and value is None:
        return "never"
    if key == "train.run_dir":
        return "" if value is None else str(value)
    if key == "train.epochs" and value is None:
        return 0
    lists = ("log.loggers", "train.activation_checkpointing", "health.skip_checks")
    if key in lists and isinstance(value, str):  # one name is enough
        return [value]
    return value


# keywords other loops have, with what takes their place here
NOT_KEYWORDS = {
    "shuffle": "the training order is reshuffled every epoch from the seed (so a resume finds "
    "its place); for a fixed order, pass train=DataLoader(dataset, batch_size=..., "
    "shuffle=False), which is iterated as given",
    "num_epochs": "use epochs=N",
    "learning_rate": "use lr=...",
    "gradient_accumulation_steps": "use accumulate=N",
    "max_grad_norm": "use clip_norm=...",
}


def build_config(base: RunConfig | dict | str | Path | None = None, **keywords: Any) -> RunConfig:
    """A RunConfig from a base (recipe path, dict or config) and fit()-style keywords."""
    if isinstance(base, (str, Path)):
        base = cfgmod.load(base)
    data = base.to_dict() if isinstance(base, RunConfig) else dict(base or {})
    options = _option_keys()
    for name, value in keywords.items():
        if value is DEFAULT:
            continue
        key = KEYWORDS.get(name) or options.get(name)
        if key is None:
            known = sorted(set(KEYWORDS) | set(options))
            raise ConfigError(
                f"unknown keyword '{name}'",
                where="fit()",
                fix=NOT_KEYWORDS.get(name) or cfgmod._did_you_mean(name, known),
            )
        section, _, field_name = key.partition(".")
        data.setdefault(section, {})
        data[section] = dict(data[section])
        data[section][field_name] = _normalise(key, value)
    return cfgmod.from_dict(data)


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def fit_objects(
    *,
    model: Any,
    lr: Any,
    weight_decay: Any,
    train: Any,
    val: Any,
    test: Any,
    loss: Any,
    metrics: Any,
    optimizer: Any,
    schedule: Any,
    callbacks: Any,
    step: Any,
    teacher: Any,
    config: Any,
    options: dict[str, Any] | None = None,
) -> tuple[Any, list[Any]]:
    """Raise on an argument of the wrong kind; returns (metrics, callbacks), each as a list
    where one item was given alone."""
    for name, data in (("train", train), ("val", val), ("test", test)):
        if isinstance(data, (str, bytes, Path)):
            fix = "pass tensors (x, y), a Dataset or a DataLoader"
            if name == "val":
                fix += ", or a fraction of train as a number (val=0.1)"
            raise ConfigError(f"{name} is a {type(data).__name__}: {data!r}", where=name, fix=fix)
    if config is not None and not isinstance(config, (dict, str, Path, RunConfig)):
        raise ConfigError(
            f"config must be a recipe path, a dict or a RunConfig, got {_kind(config)}",
            where="config",
            fix="pass config='recipe.toml', a dict of sections, or sf.load_config(...)",
        )
    if loss is not None and not isinstance(loss, str) and not callable(loss):
        raise ConfigError(
            f"loss must be a loss name or a callable, got {_kind(loss)}",
            where="loss",
            fix="pass loss='ce' (see docs/api.md) or a function (outputs, target) -> scalar",
        )
    _optimizer(optimizer)
    if isinstance(optimizer, torch.optim.Optimizer):
        _given_optimizer(optimizer, model, lr, weight_decay, options or {})
    _schedule(schedule)
    if step is not None and not callable(step):
        raise ConfigError(
            f"step must be a function (model, batch) -> loss, got {_kind(step)}",
            where="step",
            fix="pass a function, or leave it out",
        )
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise ConfigError(
            f"teacher must be a torch.nn.Module, got {_kind(teacher)}",
            where="teacher",
            fix="pass the trained teacher model",
        )
    if isinstance(metrics, str):
        metrics = [metrics]
    if callbacks is None:
        callbacks = []
    elif not isinstance(callbacks, (list, tuple)):
        callbacks = [callbacks]
    for i, cb in enumerate(callbacks):
        if isinstance(cb, type):
            raise ConfigError(
                f"callbacks[{i}] is the class {cb.__name__}, not a callback object",
                where="callbacks",
                fix=f"pass an instance: callbacks=[{cb.__name__}(...)]",
            )
        if not any(n.startswith("on_") for n in dir(cb)):
            raise ConfigError(
                f"callbacks[{i}] is {_kind(cb)}, with no event methods",
                where="callbacks",
                fix="pass objects with methods named after events (on_step_end...), e.g. "
                "callbacks=[sf.EarlyStopping(patience=3)]",
            )
    return metrics, list(callbacks)


def _optimizer(optimizer: Any) -> None:
    if optimizer is DEFAULT or isinstance(optimizer, (str, torch.optim.Optimizer)):
        return
    fix = "pass a name (optimizer='sgd') or an instance: torch.optim.SGD(model.parameters(), ...)"
    if isinstance(optimizer, type):
        what = f"optimizer is the class {optimizer.__name__}, not an optimizer"
    else:
        what = f"optimizer must be a name or a torch.optim.Optimizer, got {_kind(optimizer)}"
    raise ConfigError(what, where="optimizer", fix=fix)


def _given_optimizer(
    optimizer: Any, model: Any, lr: Any, weight_decay: Any, options: dict[str, Any]
) -> None:
    """An optimizer object brings its own settings (rates, momentum, implementation...), and
    must hold some of the model's parameters."""
    keys = _option_keys()
    given = [(n, v) for n, v in options.items() if keys.get(n, "").startswith("optim.")]
    for name, value in [("lr", lr), ("weight_decay", weight_decay), *given]:
        if value is not DEFAULT:
            raise ConfigError(
                f"{name}={value!r} given with an optimizer object, which has its own",
                where=name,
                fix=f"set {name} where the optimizer is built, or pass optimizer by name",
            )
    if isinstance(model, nn.Module):
        mine = {id(p) for p in model.parameters()}
        held = [p for g in optimizer.param_groups for p in g["params"]]
        if held and not any(id(p) in mine for p in held):
            raise ConfigError(
                "the optimizer holds none of the model's parameters: it would train nothing",
                where="optimizer",
                fix="build it from this model: torch.optim.SGD(model.parameters(), ...)",
            )


def _schedule(schedule: Any) -> None:
    from .schedule import Schedule

    if schedule is DEFAULT or isinstance(schedule, (str, Schedule)):
        return
    what = f"schedule must be a schedule name, got {_kind(schedule)}"
    if isinstance(schedule, torch.optim.lr_scheduler.LRScheduler) or hasattr(schedule, "step"):
        what = f"schedule is a torch scheduler object ({type(schedule).__name__})"
    raise ConfigError(
        what,
        where="schedule",
        fix="pass its name and settings (schedule='onecycle', 'step' with step_size=..., "
        "'plateau'...; docs/options.md): surefit steps each schedule at its own unit",
    )
