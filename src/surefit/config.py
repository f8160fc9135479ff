"""Typed run configuration: TOML recipes, ``--set`` overrides, and checks that name the key.

This module imports no torch, so ``surefit --help`` and ``surefit recipes`` stay fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

TASKS = (
    "auto",
    "multiclass",
    "binary",
    "multilabel",
    "regression",
    "lm",
    "segmentation",
    "ranking",
    "triplet",
    "distillation",
    "custom",
)
LOSSES = ("", "ce", "bce", "mse", "l1", "huber", "smooth_l1")
OPTIMIZERS = ("sgd", "adam", "adamw", "radam", "rmsprop", "adagrad")
SCHEDULES = (
    "constant",
    "step",
    "multistep",
    "exponential",
    "cosine",
    "warmup_cosine",
    "warmup_linear",
    "onecycle",
    "plateau",
    "cosine_restarts",
)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("auto", "ddp", "fsdp")
PROGRESS = ("auto", "bar", "epoch", "off")
RESUME = ("auto", "never", "must")
MODES = ("auto", "min", "max")
IMPLEMENTATIONS = ("auto", "foreach", "fused", "for_loop")
TOGGLES = ("auto", "on", "off")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str = ""  # built-in model name, or an import path "package.module:factory"
    args: dict = field(default_factory=dict)  # keyword arguments for the factory


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    name: str = ""  # built-in dataset name, or an import path "package.module:factory"
    args: dict = field(default_factory=dict)  # keyword arguments for the factory
    batch_size: int = 64  # samples per micro-batch over all ranks (each of N takes 1/N)
    eval_batch_size: int = 0  # samples per evaluation batch; 0 = 4 x batch_size
    val_fraction: float = 0.0  # share of train carved out for validation when no val set is given
    stratify: bool = True  # keep class proportions in that split (classification targets)
    drop_last: bool = False  # drop the last short training batch of each epoch
    num_workers: int = -1  # DataLoader workers for Dataset inputs; -1 = auto (0 on CPU-only runs)
    on_device: str = "auto"  # one of TOGGLES; auto: on the GPU if under half its free memory


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    name: str = "auto"  # one of TASKS; "auto" infers multiclass or regression from the targets
    loss: str = ""  # ce, bce or mse/l1/huber/smooth_l1 (regression); picks the task when auto
    label_smoothing: float = 0.0  # multiclass/lm cross-entropy label smoothing, in [0, 1)
    class_weights: list = field(default_factory=list)  # per-class loss weights; [] = equal
    pos_weight: list = field(default_factory=list)  # BCE positive weight per label; [] = 1
    huber_delta: float = 1.0  # huber/smooth_l1 transition point, in target units
    ignore_index: int = -100  # target id skipped by cross-entropy (lm, segmentation)
    dice_weight: float = 0.5  # segmentation: loss = (1 - w) * CE/BCE + w * soft Dice
    margin: float = 1.0  # ranking and triplet margin
    temperature: float = 2.0  # distillation softening temperature
    alpha: float = 0.5  # distillation: weight of the soft (teacher) loss; 1 - alpha on labels
    teacher: str = ""  # distillation: import path of the teacher factory (recipes only)
    top_k: int = 0  # also report top-k accuracy; 0 = auto (5 when there are 10+ classes)
    threshold: float = 0.5  # binary/multilabel decision threshold on probabilities
    metrics: list = field(default_factory=list)  # metric names to report; [] = the task's defaults


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    name: str = "adamw"  # one of OPTIMIZERS
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # decoupled for adamw and radam, L2 for the others
    momentum: float = 0.9  # sgd and rmsprop momentum
    nesterov: bool = False  # sgd Nesterov momentum
    betas: list = field(default_factory=lambda: [0.9, 0.999])  # adam-family betas
    eps: float = 1e-8  # adam-family/rmsprop/adagrad epsilon
    decay_all: bool = False  # also decay biases, normalisation and embedding weights
    lr_groups: dict = field(default_factory=dict)  # parameter-name prefix -> learning rate
    implementation: str = "auto"  # one of IMPLEMENTATIONS; auto = fused where torch has it


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    name: str = "warmup_cosine"  # one of SCHEDULES
    warmup: float = 0.05  # < 1: fraction of all optimizer steps; >= 1: optimizer steps
    min_lr_ratio: float = 0.1  # final lr = peak lr * this (cosine, warmup_*)
    step_size: int = 10  # "step": epochs between decays
    milestones: list = field(default_factory=list)  # "multistep": epochs at which lr decays
    gamma: float = 0.1  # step/multistep/exponential: lr multiplier per decay
    plateau_factor: float = 0.1  # "plateau": lr multiplier when the metric stalls
    plateau_patience: int = 5  # "plateau": evaluations without improvement before decaying
    restart_steps: int = 0  # "cosine_restarts": first cycle, optimizer steps; 0 = one epoch
    restart_mult: int = 1  # "cosine_restarts": cycle length multiplier


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 0  # passes over the training data; 0 = 10, or unlimited when max_steps is set
    max_steps: int = 0  # stop after this many optimizer steps; 0 = no limit
    max_time_s: float = 0.0  # stop after this many seconds of training; 0 = no limit
    accumulate: int = 1  # micro-batches per optimizer step
    clip_norm: float = 1.0  # clip the global gradient L2 norm to this; 0 = off
    clip_value: float = 0.0  # clip each gradient element to +-this; 0 = off
    precision: str = "auto"  # one of PRECISIONS
    seed: int = 0  # drives python, numpy, torch and the data order
    deterministic: bool = False  # torch deterministic algorithms (and cudnn flags on CUDA)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    compile: bool = False  # run the model through torch.compile; eagerly (one warning) if it fails
    channels_last: str = "auto"  # one of TOGGLES; NHWC conv weights; auto = on for convs on CUDA
    activation_checkpointing: list = field(default_factory=list)  # block class names to recompute
    threads: int = 0  # torch intra-op CPU threads of the run; 0 = auto (by model size; loop.md)
    eval_every_steps: int = 0  # optimizer steps between evaluations; 0 = at each epoch's end
    monitor: str = ""  # metric that defines "best"; "" = val_loss
    mode: str = "auto"  # one of MODES; auto = min for a loss or error (see monitor.py), else max
    patience: int = 0  # early stopping after this many evaluations without improvement; 0 = off
    min_delta: float = 0.0  # smallest change of the monitored metric that counts as improvement
    restore_best: bool = False  # load the best weights into the model when training ends
    run_dir: str = ""  # run directory; "" = write nothing (fit) or runs/NAME (CLI)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    every_steps: int = 0  # optimizer steps between checkpoints; 0 = off (epoch ends, the end)
    keep_last: int = 2  # rolling last-*.pt files kept
    save_best: bool = True  # write best.pt whenever the monitored metric improves
    at_epoch_end: bool = True  # also save at epoch ends (as often as max_overhead allows)
    max_overhead: float = 0.01  # most time share epoch-end saves take; 0 = save at every one
    resume: str = "auto"  # auto: continue a run_dir that holds a checkpoint; never; must
    every_minutes: float = 0.0  # wall-clock minutes between checkpoints; 0 = off
    override: bool = False  # allow a resume with a changed learning rate (optim.lr)
    async_save: bool = False  # copy state to CPU and write it from a background thread
    check_resume: bool = False  # before training, check on copies that stop + resume is exact


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    every_steps: int = 50  # optimizer steps between metric reads (the only host syncs)
    progress: str = "auto"  # one of PROGRESS; auto = bar on a terminal, one line per epoch else
    loggers: list = field(default_factory=list)  # csv, tensorboard, mlflow, wandb; jsonl always
    project: str = ""  # MLflow experiment / W&B project name; "" = the run's name
    mlflow_uri: str = ""  # MLflow tracking URI; "" = $MLFLOW_TRACKING_URI, else SQLite in run dir


CHECKS = (
    "targets",
    "probabilities",
    "initial_loss",
    "batchnorm_accumulation",
    "batchnorm_batch",
    "leakage",
    "unused_parameters",
    "lr_too_high",
    "data_wait",
    "eval_not_finite",
)
ROLLBACK_FROM = ("memory", "checkpoint")


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    skip_nonfinite: bool = True  # skip optimizer steps whose loss or grad norm is NaN/Inf
    max_bad_fraction: float = 0.05  # stop when more than this share of steps were skipped
    spike_threshold: float = 8.0  # a loss this many robust deviations above the median spikes
    rollback_after: int = 3  # consecutive skipped or spiking steps that roll back; 0 = never
    max_rollbacks: int = 3  # rollbacks allowed before the run stops with a diagnosis
    rollback_lr_factor: float = 1.0  # multiply the learning rate by this at each rollback
    rollback_from: str = "memory"  # one of ROLLBACK_FROM: a snapshot in memory, or checkpoints
    checks: bool = True  # run the first-step checks (see CHECKS) before training
    skip_checks: list = field(default_factory=list)  # names from CHECKS to switch off


@dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    strategy: str = "auto"  # one of STRATEGIES when several processes run; auto = ddp
    shard_modules: list = field(default_factory=list)  # fsdp block classes; [] = ModuleList items
    timeout_s: float = 600.0  # seconds a collective may wait for a missing rank before failing


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "task": TaskConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "log": LogConfig,
    "health": HealthConfig,
    "distributed": DistributedConfig,
}
META_KEYS = ("name", "description", "reference")  # free-text top-level keys of a recipe


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    name: str = "run"  # recipe or run name
    description: str = ""
    reference: str = ""  # the published result a recipe reproduces, with its source
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def epochs(self) -> int:
        """Epochs to run: ``train.epochs``, else 10, or unlimited when only max_steps is set."""
        if self.train.epochs:
            return self.train.epochs
        return 1 << 30 if self.train.max_steps else 10

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: dict[str, Any]) -> RunConfig:
        """A copy with ``section={key: value}`` changes applied and checked."""
        data = self.to_dict()
        for section, values in changes.items():
            data[section].update(values)
        return from_dict(data)


def all_keys() -> list[str]:
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    return list(META_KEYS) + keys


def _did_you_mean(bad: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(bad, choices, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(choices)}"


_A = {
    int: "an int",
    float: "a float",
    bool: "a bool",
    str: "a string",
    list: "a list",
    dict: "a table",
}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's annotation; ints are accepted for floats."""
    expected = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}
    typ = expected.get(str(annotation))
    if typ in (int, float) and isinstance(value, numbers.Number) and not isinstance(value, bool):
        if isinstance(value, numbers.Integral):  # numpy integers too
            return typ(value)
        if typ is float and isinstance(value, numbers.Real):  # numpy floats
            return float(value)
    if typ is list and isinstance(value, tuple):
        return list(value)
    if typ is None or (isinstance(value, typ) and not (typ is int and isinstance(value, bool))):
        return value
    raise ConfigError(
        f"'{key}' must be {_A[typ]}, got {type(value).__name__} {value!r}",
        where=key,
        fix=f"give '{key}' {_A[typ]} value",
    )


def _section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(
            f"'{name}' must be a table of keys, got {values!r}",
            where=name,
            fix=f"write it as a [{name}] section",
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            full = [f"{name}.{k}" for k in fields]
            raise ConfigError(
                f"unknown key '{name}.{key}'",
                where=f"[{name}]",
                fix=_did_you_mean(f"{name}.{key}", full),
            )
        kwargs[key] = _coerce(f"{name}.{key}", value, fields[key].type)
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> RunConfig:
    """Build and check a RunConfig from nested dicts (a parsed recipe)."""
    data = dict(data)
    # shorthand: model = "pkg.mod:build" at top level means [model] name = ...
    for short in ("model", "data"):
        if isinstance(data.get(short), str):
            data[short] = {"name": data[short]}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            kwargs[key] = _section(key, SECTIONS[key], value)
        elif key in META_KEYS:
            kwargs[key] = _coerce(key, value, "str")
        else:
            raise ConfigError(
                f"unknown key '{key}'",
                where="top level of the recipe",
                fix=_did_you_mean(key, list(SECTIONS) + list(META_KEYS)),
            )
    config = RunConfig(**kwargs)
    validate(config)
    return config


def load(path: str | Path) -> RunConfig:
    """Read a TOML recipe file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM an editor wrote is not TOML
    except OSError as exc:
        raise ConfigError(
            f"cannot read recipe: {exc.strerror}", where=str(path), fix="check the path"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            "cannot read recipe: not UTF-8 text", where=str(path), fix="a recipe is TOML text"
        ) from None
    return from_dict(parse_toml(text, where=str(path)))


def parse_toml(text: str, *, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"not valid TOML: {exc}", where=where, fix="fix the TOML syntax"
        ) from None


def _parse_value(raw: str) -> Any:
    """A --set value is read as TOML (1e-3, true, [1, 2], "x"), else taken as a bare string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a parsed recipe."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override '{item}' is not of the form key=value",
                where="--set",
                fix="write it as --set section.key=value, e.g. --set optim.lr=1e-3",
            )
        section, dot, name = key.partition(".")
        if not dot and key in META_KEYS:
            value = _parse_value(raw.strip())
            data[key] = value if isinstance(value, str) else raw.strip()
            continue
        name, deeper, inner = name.partition(".")  # model.args.hidden: one key of a table field
        cls = SECTIONS.get(section)
        tables = {f.name for f in dataclasses.fields(cls) if str(f.type) == "dict"} if cls else ()
        if cls is None or not name or (deeper and (name not in tables or "" in inner.split("."))):
            raise ConfigError(
                f"unknown key '{key}'", where="--set", fix=_did_you_mean(key, all_keys())
            )
        data.setdefault(section, {})
        if isinstance(data[section], str):
            data[section] = {"name": data[section]}
        value = _parse_value(raw.strip())
        if inner:
            _set_in_table(data[section], name, inner, value)
        else:
            data[section][name] = value
    return data


def _set_in_table(values: dict[str, Any], name: str, inner: str, value: Any) -> None:
    """``--set model.args.hidden=64`` sets one key of the table ``model.args``, keeping the
    others. A factory's ``args`` nest on dots (``model.args.block.width``); ``optim.lr_groups``
    takes the rest whole, as its keys are parameter-name prefixes (``encoder.layer1``)."""
    held = values.get(name) or {}
    if not isinstance(held, dict):
        raise ConfigError(
            f"--set {name}.{inner}: '{name}' is {held!r}, not a table of keys",
            where=name,
            fix=f"set {name} as a table ({name} = {{ ... }}), or only its keys",
        )
    table = values[name] = dict(held)
    keys = [inner] if name == "lr_groups" else inner.split(".")
    for k in keys[:-1]:
        inside = table.get(k)
        table[k] = dict(inside) if isinstance(inside, dict) else {}
        table = table[k]
    table[keys[-1]] = value


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' = {value!r} is out of range", where=key, fix=f"use {allowed}")


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown {key.split('.')[-1]} '{value}' for '{key}'",
            where=key,
            fix=f"{hint}choose one of: {', '.join(c for c in choices if c)}",
        )


def _finite(c: RunConfig) -> None:
    """Every number of the config (lists and group rates included) is finite: inf passes the
    range checks below and NaN fails them with a confusing message."""
    for section, values in c.to_dict().items():
        for key, value in values.items() if isinstance(values, dict) else ():
            if key == "args":  # the factories' own arguments
                continue
            items = value.values() if isinstance(value, dict) else value
            items = items if isinstance(value, (dict, list, tuple)) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in items):
                raise ConfigError(
                    f"'{section}.{key}' = {value!r} is not a finite number",
                    where=f"{section}.{key}",
                    fix="give a finite value (docs/options.md gives its range)",
                )


def validate(c: RunConfig) -> None:
    """Range and choice checks that a type alone cannot express."""
    _finite(c)
    _choice("task.name", c.task.name, TASKS)
    _choice("task.loss", c.task.loss, LOSSES)
    _choice("optim.name", c.optim.name, OPTIMIZERS)
    _choice("optim.implementation", c.optim.implementation, IMPLEMENTATIONS)
    _choice("schedule.name", c.schedule.name, SCHEDULES)
    _choice("train.precision", c.train.precision, PRECISIONS)
    _choice("train.mode", c.train.mode, MODES)
    _choice("train.channels_last", c.train.channels_last, TOGGLES)
    for name in c.train.activation_checkpointing:
        ok = isinstance(name, str) and name.isidentifier()
        _require(ok, "train.activation_checkpointing", name, "module class names, e.g. ['Block']")
    _choice("log.progress", c.log.progress, PROGRESS)
    _choice("data.on_device", c.data.on_device, TOGGLES)
    _choice("checkpoint.resume", c.checkpoint.resume, RESUME)
    _choice("health.rollback_from", c.health.rollback_from, ROLLBACK_FROM)
    for name in c.health.skip_checks:
        _choice("health.skip_checks", str(name), CHECKS)
    h = c.health
    _require(0 <= h.max_bad_fraction <= 1, "health.max_bad_fraction", h.max_bad_fraction, "[0, 1]")
    _require(h.spike_threshold > 0, "health.spike_threshold", h.spike_threshold, "a value > 0")
    _require(h.rollback_after >= 0, "health.rollback_after", h.rollback_after, ">= 0")
    _require(h.max_rollbacks >= 0, "health.max_rollbacks", h.max_rollbacks, ">= 0")
    _require(
        0 < h.rollback_lr_factor <= 1,
        "health.rollback_lr_factor",
        h.rollback_lr_factor,
        "a factor in (0, 1], e.g. 0.5",
    )
    _choice("distributed.strategy", c.distributed.strategy, STRATEGIES)
    if c.distributed.strategy == "fsdp" and c.train.restore_best:  # one process or many
        raise ConfigError(
            "restore_best is not supported under fsdp (best weights are a sharded checkpoint)",
            where="train.restore_best",
            fix="set train.restore_best=false and load checkpoints/best with the DCP tools",
        )
    _require(c.distributed.timeout_s > 0, "distributed.timeout_s", c.distributed.timeout_s, "> 0")
    _require(c.data.batch_size >= 1, "data.batch_size", c.data.batch_size, "an integer >= 1")
    _require(c.train.threads >= 0, "train.threads", c.train.threads, "0 (auto) or a count >= 1")
    _require(c.data.eval_batch_size >= 0, "data.eval_batch_size", c.data.eval_batch_size, ">= 0")
    _require(
        0.0 <= c.data.val_fraction < 1.0,
        "data.val_fraction",
        c.data.val_fraction,
        "a fraction in [0, 1), e.g. 0.1",
    )
    _require(
        c.task.label_smoothing >= 0 and c.task.label_smoothing < 1,
        "task.label_smoothing",
        c.task.label_smoothing,
        "a value in [0, 1)",
    )
    _require(c.task.huber_delta > 0, "task.huber_delta", c.task.huber_delta, "a value > 0")
    _require(c.task.temperature > 0, "task.temperature", c.task.temperature, "a value > 0")
    _require(0 <= c.task.alpha <= 1, "task.alpha", c.task.alpha, "a value in [0, 1]")
    _require(c.task.margin >= 0, "task.margin", c.task.margin, "a value >= 0")
    _require(0 <= c.task.dice_weight <= 1, "task.dice_weight", c.task.dice_weight, "[0, 1]")
    _require(c.task.top_k >= 0, "task.top_k", c.task.top_k, "0 (auto) or k >= 1")
    _require(
        0 < c.task.threshold < 1, "task.threshold", c.task.threshold, "a probability in (0, 1)"
    )
    for key in ("class_weights", "pos_weight"):
        w = getattr(c.task, key)
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in w)
        _require(ok and (not w or any(w)), f"task.{key}", w, "weights >= 0, not all 0")
    _require(c.data.num_workers >= -1, "data.num_workers", c.data.num_workers, "-1 (auto) or >= 0")
    _require(c.optim.lr > 0, "optim.lr", c.optim.lr, "a learning rate > 0, e.g. 1e-3")
    _require(0 <= c.optim.momentum < 1, "optim.momentum", c.optim.momentum, "a value in [0, 1)")
    _require(c.optim.eps > 0, "optim.eps", c.optim.eps, "a value > 0, e.g. 1e-8")
    _require(c.optim.weight_decay >= 0, "optim.weight_decay", c.optim.weight_decay, ">= 0")
    _require(
        len(c.optim.betas) == 2
        and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
            for b in c.optim.betas
        ),
        "optim.betas",
        c.optim.betas,
        "two values in [0, 1), e.g. [0.9, 0.999]",
    )
    for prefix, lr in c.optim.lr_groups.items():
        ok = isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0
        _require(ok, f"optim.lr_groups.{prefix}", lr, "a learning rate > 0")
    s = c.schedule
    _require(s.warmup >= 0, "schedule.warmup", s.warmup, "a fraction in [0, 1) or steps >= 1")
    _require(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio", s.min_lr_ratio, "[0, 1]")
    _require(s.step_size >= 1, "schedule.step_size", s.step_size, "epochs >= 1")
    _require(0 < s.gamma <= 1, "schedule.gamma", s.gamma, "a factor in (0, 1]")
    _require(0 < s.plateau_factor < 1, "schedule.plateau_factor", s.plateau_factor, "(0, 1)")
    _require(s.restart_mult >= 1, "schedule.restart_mult", s.restart_mult, "an integer >= 1")
    _require(s.restart_steps >= 0, "schedule.restart_steps", s.restart_steps, "0 (epoch) or >= 1")
    _require(s.plateau_patience >= 0, "schedule.plateau_patience", s.plateau_patience, ">= 0")
    ok = all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in s.milestones)
    _require(ok, "schedule.milestones", s.milestones, "epochs >= 1, e.g. [30, 60]")
    if c.optim.name == "sgd" and c.optim.nesterov and c.optim.momentum == 0:
        raise ConfigError(
            "optim.nesterov = true needs momentum: Nesterov momentum of 0 is no momentum",
            where="optim.nesterov",
            fix="set optim.momentum, e.g. 0.9, or nesterov = false",
        )
    t = c.train
    if t.compile and t.activation_checkpointing:
        raise ConfigError(
            "train.activation_checkpointing does not work under train.compile (torch.compile "
            "breaks its graph at the checkpoint hooks, and the recomputation then fails)",
            where="train.activation_checkpointing",
            fix="use one of the two, or call torch.utils.checkpoint.checkpoint in the model's "
            "forward, which torch.compile traces",
        )
    _require(t.epochs >= 0, "train.epochs", t.epochs, "an integer >= 1 (0 = default)")
    _require(0 <= t.seed < 2**63, "train.seed", t.seed, "an integer in [0, 2**63)")
    _require(t.max_steps >= 0, "train.max_steps", t.max_steps, "0 (no limit) or more")
    _require(t.max_time_s >= 0, "train.max_time_s", t.max_time_s, "0 (no limit) or more")
    _require(t.accumulate >= 1, "train.accumulate", t.accumulate, "an integer >= 1")
    _require(t.clip_norm >= 0, "train.clip_norm", t.clip_norm, "0 (off) or a norm > 0")
    _require(t.clip_value >= 0, "train.clip_value", t.clip_value, "0 (off) or a value > 0")
    _require(t.eval_every_steps >= 0, "train.eval_every_steps", t.eval_every_steps, ">= 0")
    _require(t.patience >= 0, "train.patience", t.patience, "0 (off) or evaluations >= 1")
    _require(t.min_delta >= 0, "train.min_delta", t.min_delta, ">= 0 (an improvement's size)")
    _require(c.checkpoint.keep_last >= 1, "checkpoint.keep_last", c.checkpoint.keep_last, ">= 1")
    _require(
        c.checkpoint.every_steps >= 0,
        "checkpoint.every_steps",
        c.checkpoint.every_steps,
        "0 (epoch ends) or steps >= 1",
    )
    _require(
        c.checkpoint.every_minutes >= 0,
        "checkpoint.every_minutes",
        c.checkpoint.every_minutes,
        "0 (off) or minutes > 0",
    )
    _require(
        0 <= c.checkpoint.max_overhead < 1,
        "checkpoint.max_overhead",
        c.checkpoint.max_overhead,
        "0 (a save at every epoch end) or a share of the training time in (0, 1)",
    )
    _require(c.log.every_steps >= 1, "log.every_steps", c.log.every_steps, "steps >= 1")


def to_toml(config: RunConfig) -> str:
    import tomli_w

    return tomli_w.dumps(config.to_dict())
