"""The run directory: whether a folder is a run to start, continue or refuse, one run at a time
in it, starting over a run that never checkpointed, and whether a resume fits its checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .checkpoint import CheckpointStore, atomic_write_text
from .config import RunConfig
from .errors import CheckpointError, ConfigError

# what decides the data order and a run's position in it: a resume that changes one of them
# continues a different run (with --override, on purpose)
RESUME_FIXED = (
    "data.batch_size",
    "data.drop_last",
    "data.val_fraction",
    "data.stratify",
    "train.accumulate",
    "train.seed",
)
# what the saved optimizer and schedule states are built around: they cannot carry over
RESUME_REFUSED = ("schedule.name", "optim.decay_all", "optim.lr_groups")
# how it resumes, and how this session shows it: not changes of the run
RESUME_FREE = ("train.run_dir", "checkpoint.resume", "checkpoint.override", "log.progress")


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (saved, now)}`` for the options a resumed run changes."""
    same = lambda a, b: (
        json.dumps(a, sort_keys=True, default=str)
        == json.dumps(  # noqa: E731
            b, sort_keys=True, default=str
        )
    )
    changes = {}
    for section, values in now.items():
        old = saved.get(section)
        if not isinstance(values, dict) or not isinstance(old, dict):
            continue
        for k, v in values.items():
            key = f"{section}.{k}"
            if key in RESUME_FREE or k not in old or (key == "task.name" and old[k] == "auto"):
                continue
            if not same(old[k], v):
                changes[key] = (old[k], v)
    return changes


def check_resume_fits(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_samples: int,
    path: Path,
    lr: float | None = None,
    override: bool = False,
    config: dict[str, Any] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume whose model, optimizer, data or data order differ from the checkpoint's
    run; return the options it changes (more epochs or steps, a logger...).

    More epochs or steps are fine; anything that would silently mix two different runs is not.
    """
    meta = state.get("meta", {})
    changes = config_changes(meta.get("config", {}), config or {})
    fixed = [k for k in RESUME_FIXED if k in changes]
    saved, now = state["model"], model.state_dict()
    problems = []
    missing, extra = sorted(set(saved) - set(now)), sorted(set(now) - set(saved))
    if missing or extra:
        problems.append(
            f"model parameters differ (only in checkpoint: {missing[:3]}, "
            f"only in model: {extra[:3]})"
        )
    else:
        for k in saved:
            if tuple(saved[k].shape) != tuple(now[k].shape):
                problems.append(
                    f"model '{k}' has shape {tuple(now[k].shape)}, the checkpoint "
                    f"{tuple(saved[k].shape)}"
                )
                break
    opt = type(optimizer).__name__
    if meta.get("optimizer_class", opt) != opt:
        problems.append(f"optimizer is {opt}, the checkpoint's run used {meta['optimizer_class']}")
    else:
        problems += _moments_misfit(state.get("optimizer"), optimizer)
    n = train_samples
    resized = override and "data.val_fraction" in changes  # asked for: the split moves
    if meta.get("train_samples", n) != n and not resized:
        problems.append(
            f"training data has {n} samples, the checkpoint's run had {meta['train_samples']}"
        )
    saved_lr = meta.get("config", {}).get("optim", {}).get("lr")
    if lr is not None and saved_lr is not None and saved_lr != lr and not override:
        problems.append(
            f"optim.lr is {lr:g}, the run was started with {saved_lr:g} (to change it on "
            "purpose, resume with --override, or fit(override=True))"
        )
    problems += [
        f"{k} is {changes[k][1]!r}, the run was started with {changes[k][0]!r} (the saved "
        "optimizer and schedule states are built around it)"
        for k in RESUME_REFUSED
        if k in changes
    ]
    if fixed and not override:
        problems += [
            f"{k} is {changes[k][1]!r}, the run was started with {changes[k][0]!r} (it decides "
            "the data order; to change it on purpose, resume with --override)"
            for k in fixed
        ]
    if problems:
        raise CheckpointError(
            "cannot resume: " + "; ".join(problems),
            where=str(path),
            fix="resume with the configuration the run was started with (only epochs and "
            "max_steps may grow), or start a new run in a new run_dir",
        )
    return changes


def _moments_misfit(saved: Any, optimizer: torch.optim.Optimizer) -> list[str]:
    """Where the saved optimizer state would give a parameter moments of another shape: torch
    maps saved state to parameters by position only, and a checkpoint whose groups hold the
    parameters in another order (a grouping changed between versions, for tied weights) would
    load without complaint and then step with misfitting tensors."""
    if not isinstance(saved, dict) or "param_groups" not in saved or "state" not in saved:
        return []  # a sharded checkpoint's optimizer loads by parameter name
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ids = [i for g in saved["param_groups"] for i in g.get("params", [])]
    for param, i in zip(params, ids, strict=False):
        for name, value in saved["state"].get(i, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                return [
                    f"the saved optimizer state gives a parameter of shape {tuple(param.shape)} "
                    f"a {name} of shape {tuple(value.shape)} (the parameter groups were built "
                    "differently)"
                ]
    return []


@contextlib.contextmanager
def run_lock(run_dir: Path | None) -> Iterator[None]:
    """Hold ``RUN_DIR/.lock`` while a run trains: a second process opening the same run
    directory is refused instead of resuming from, and writing over, a run that is still going.

    An advisory ``flock``: the kernel drops it when the holder dies, so a killed run leaves no
    stale lock behind. Where fcntl is missing (Windows), runs are not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - POSIX-only
        fcntl = None  # type: ignore[assignment]
    if run_dir is None or fcntl is None or not distributed.is_rank_zero():
        yield
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise ConfigError(
            f"cannot create the run directory {run_dir}: {exc.strerror or exc}",
            where="run_dir",
            fix="choose a run_dir this process can write (a folder, not a file)",
        ) from None
    with handle as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ConfigError(
                f"{run_dir} is in use by a run that is still going (pid {holder})",
                where="run_dir",
                fix="wait for that run to end (a stopped run resumes), or choose another run_dir",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


STEP_LOGS = ("metrics.jsonl", "metrics.csv", "steps.jsonl", "quarantine.jsonl")


def refuse_lost_checkpoints(run_dir: Path) -> None:
    """A ConfigError when the folder's earlier run wrote checkpoints that are gone (its
    checkpoints/ deleted to save disk): starting over would cut its logs and replace its
    config, which only a run that never saved (killed before its first checkpoint) may lose."""
    events = run_dir / "events.jsonl"
    if not events.is_file():
        return
    saved = [
        line for line in events.read_text(encoding="utf-8", errors="replace").splitlines()
        if '"event": "checkpoint"' in line
    ]  # fmt: skip
    if saved:
        raise ConfigError(
            f"{run_dir} holds a run that wrote {len(saved)} checkpoint(s), none of which is "
            "there now: a new run would replace its logs and config",
            where="run_dir",
            fix="give a new run_dir, or delete the folder to start over in it",
        )


def restart_run_dir(run_dir: Path) -> list[str]:
    """Start a run over in a folder whose earlier run wrote logs but no checkpoint (killed or
    crashed before its first save): its per-step logs are cut to nothing, as a resume cuts them
    back to its checkpoint, so the new run's logs are not appended to the old ones;
    events.jsonl keeps its record of what happened. Returns the files cut."""
    cut = [
        name for name in STEP_LOGS if (run_dir / name).is_file() and (run_dir / name).stat().st_size
    ]
    for name in cut:
        atomic_write_text(run_dir / name, "")
    return cut


def _refuse_foreign_files(run_dir: Path) -> None:
    """A ConfigError when the folder holds files by a run's names (config.toml, metrics.jsonl...)
    that no surefit run wrote: a run there would replace them. A run's folder always has
    events.jsonl, whose first line is an event: written right after config.toml."""
    present = [n for n in ("config.toml", *STEP_LOGS) if (run_dir / n).exists()]
    if not present:
        return
    try:
        with (run_dir / "events.jsonl").open(encoding="utf-8") as f:
            first = json.loads(f.readline())
        if isinstance(first, dict) and "event" in first:
            return
    except (OSError, ValueError):
        pass
    raise ConfigError(
        f"{run_dir} holds {', '.join(present)}, which no surefit run wrote (it has no "
        "events.jsonl of one): a run there would replace them",
        where="run_dir",
        fix="choose a new or empty folder as run_dir, e.g. runs/NAME",
    )


def open_run_dir(cfg: RunConfig) -> tuple[Path | None, CheckpointStore | None, bool]:
    """(run_dir, store, resuming) of a config, checked against what its folder holds
    (``checkpoint.resume``); nothing is written yet."""
    if not cfg.train.run_dir:
        if cfg.checkpoint.resume == "must":
            raise ConfigError(
                "resume='must' needs a run_dir",
                where="run_dir",
                fix="pass run_dir= of the run to continue",
            )
        return None, None, False
    run_dir = Path(cfg.train.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"run_dir {run_dir} is a file, not a folder",
            where="run_dir",
            fix="choose a folder (new, or a run's to resume it)",
        )
    store = CheckpointStore(run_dir / "checkpoints", cfg.checkpoint.keep_last)
    has = store.has_checkpoint()
    mode = cfg.checkpoint.resume
    if mode == "must" and not has:
        raise ConfigError(
            f"no checkpoint to resume from in {run_dir}",
            where="resume",
            fix="check the run directory; to start a run there: `surefit fit RECIPE --run-dir "
            "DIR`, or fit(..., resume='auto')",
        )
    if not has:
        _refuse_foreign_files(run_dir)
    if mode == "never" and (has or (run_dir / "metrics.jsonl").exists()):
        raise ConfigError(
            f"{run_dir} already holds a run; starting afresh would mix two runs",
            where="run_dir",
            fix="choose a new run_dir, delete the old one, or resume it with resume='auto'",
        )
    return run_dir, store, has and mode != "never"
