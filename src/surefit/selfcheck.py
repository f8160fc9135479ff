"""A resume self-check users run on their own setup: stop, resume, and compare bit for bit.

``surefit check-resume RECIPE`` trains a few steps in one process, checkpoints, continues in a
fresh process, and compares the result with an uninterrupted run in a third process.
``fit(..., check_resume=True)`` does the same in-process on fresh copies of the user's objects
before the real run. When the two differ, the report names the state that differs, the first
step whose metrics differ, and the likely cause. No library offers this, so it is written here.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointStore
from .config import RunConfig, to_toml
from .log import warnings_held
from .state import RngState

# wall-clock values, and events.jsonl's position (events record what happened: a resume is one)
IGNORED = {"samples_per_s", "steps_per_s", "time_s", "elapsed_s", "time", "events"}


@dataclass
class ResumeCheck:
    """The verdict: ``exact``, or which parts differ, from which step, and the likely causes."""

    exact: bool
    steps: tuple[int, int]  # (first segment, whole run) in optimizer steps
    differing: list[str] = field(default_factory=list)  # state parts that differ
    first_step: int | None = None  # first logged step whose metrics differ
    causes: list[str] = field(default_factory=list)

    def report(self) -> str:
        k, n = self.steps
        if self.exact:
            return (
                f"resume is exact: {k} steps, checkpoint, {n - k} more in a fresh start equal "
                f"{n} uninterrupted steps bit for bit (weights, optimizer, schedule, RNG, metrics)"
            )
        lines = [f"resume is NOT exact after {k} + {n - k} steps (vs {n} uninterrupted)"]
        lines.append(f"  differs: {', '.join(self.differing) or 'metrics only'}")
        if self.first_step is not None:
            lines.append(f"  first differing metrics at step {self.first_step}")
        lines += [f"  likely: {c}" for c in self.causes]
        return "\n".join(lines)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - IGNORED
        return all(k in a and k in b and _equal(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def compare(full_dir: Path, resumed_dir: Path, steps: tuple[int, int]) -> ResumeCheck:
    """Compare the newest checkpoints and the metrics of two run directories."""
    a = CheckpointStore(full_dir / "checkpoints").load_latest()[0]
    b = CheckpointStore(resumed_dir / "checkpoints").load_latest()[0]
    for state in (a, b):  # JSON text in the checkpoint; compared record by record
        if isinstance(state.get("history"), str):
            state["history"] = json.loads(state["history"])
    differing = [k for k in sorted(set(a) | set(b)) if k != "meta" and not _equal(a[k], b[k])]
    first = None
    full, resumed = _metrics(full_dir), _metrics(resumed_dir)
    for x, y in zip(full, resumed, strict=False):
        if not _equal(x, y):
            first = int(x.get("step", -1))
            break
    if first is None and len(full) != len(resumed):
        differing.append("metrics.jsonl (line count)")
    result = ResumeCheck(not differing and first is None, steps, differing, first)
    result.causes = _causes(result)
    return result


def _causes(check: ResumeCheck) -> list[str]:
    if check.exact:
        return []
    causes = []
    parts = set(check.differing)
    if parts & {"callbacks"}:
        causes.append("a callback's state_dict() does not capture all of its state")
    if "model" in parts or "optimizer" in parts or check.first_step is not None:
        causes.append(
            "randomness that is not restored: a DataLoader passed as it is, or a callback or "
            "the model's code, drawing from a generator that the checkpoint does not hold"
        )
        causes.append(
            "a stateful callback without state_dict()/load_state_dict() that changes training "
            "(e.g. the learning rate or the data)"
        )
        causes.append(
            "nondeterministic kernels (CUDA atomics, cuDNN autotuning): set "
            "train.deterministic = true and compare again"
        )
    return causes


# -- in one process, on fresh copies of the user's objects (fit(check_resume=True)) ------------
def check_in_process(run: Any, first_steps: int = 8) -> ResumeCheck:
    """Run ``first_steps`` + ``first_steps`` steps with a checkpoint between against an
    uninterrupted run, each on fresh deep copies of ``run``'s model, optimizer and callbacks.
    The random number generators are put back afterwards, the users' DataLoaders' own too: the
    run that follows is the run it would have been without the check."""
    from .callbacks import PauseAt
    from .data import LoaderData
    from .splits import loader_orders, restore_orders

    k, n = first_steps, 2 * first_steps
    originals = (run.model, run.optimizer, run.schedule, run.callbacks, run.cfg)
    rng = RngState().state_dict()
    orders = loader_orders(*(LoaderData(d, "") for d in run.raw if d is not None))
    with tempfile.TemporaryDirectory(prefix="surefit-check-") as tmp:
        segments = (
            ("full", None, "never"),
            ("split", PauseAt(k), "never"),
            ("split", None, "must"),
        )
        for name, pause, resume in segments:
            fresh = copy.deepcopy((run.model, run.optimizer, run.schedule, run.callbacks))
            run.model, run.optimizer, run.schedule, run.callbacks = fresh
            if pause is not None:
                run.callbacks = [*run.callbacks, pause]
            epochs = originals[4].epochs
            run.cfg = originals[4].replace(
                train={"max_steps": n, "run_dir": f"{tmp}/{name}", "epochs": epochs},
                checkpoint={"resume": resume, "check_resume": False},
                log={"progress": "off", "loggers": []},
            )
            try:
                with warnings_held():  # the run being checked gave them already
                    run.execute()
            finally:
                run.model, run.optimizer, run.schedule, run.callbacks, run.cfg = originals
                RngState().load_state_dict(rng)
                restore_orders(orders)
        result = compare(Path(tmp, "full"), Path(tmp, "split"), (k, n))
    return result


# -- in fresh processes (surefit check-resume) -----------------------------------------------
def check_processes(cfg: RunConfig, first_steps: int = 8, keep: str = "") -> ResumeCheck:
    """The same check with each segment in a fresh ``python -m surefit`` process."""
    k, n = first_steps, 2 * first_steps
    with tempfile.TemporaryDirectory(prefix="surefit-check-") as tmp:
        base = Path(keep) if keep else Path(tmp)
        from .errors import ConfigError

        if keep and base.exists() and (not base.is_dir() or any(base.iterdir())):
            raise ConfigError(
                f"--keep {keep} is not an empty folder: the check would continue the runs it "
                "holds, or write into a file",
                where="--keep",
                fix="give a new or empty folder",
            )
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot make --keep {keep}: {exc.strerror or exc}",
                where="--keep",
                fix="give a folder this process can create",
            ) from None
        recipe = base / "recipe.toml"
        recipe.write_text(to_toml(cfg.replace(checkpoint={"check_resume": False})))
        common = ["--progress", "off", "--set", f"train.epochs={cfg.epochs}"]
        common += ["--set", f"train.max_steps={n}"]
        _surefit("fit", str(recipe), "--run-dir", str(base / "full"), *common)
        _surefit(
            "fit", str(recipe), "--run-dir", str(base / "split"), "--pause-at", str(k), *common
        )
        _surefit("resume", str(base / "split"), *common)
        return compare(base / "full", base / "split", (k, n))


def _surefit(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "surefit", *args], capture_output=True, text=True, check=False
    )
    if done.returncode not in (0, 75):  # 75: paused with a checkpoint, as asked
        from .errors import ConfigError

        raise ConfigError(
            f"a segment of the resume check failed (exit {done.returncode}): "
            f"{done.stderr.strip()[-2000:]}",
            where=f"surefit {' '.join(args[:2])}",
            fix="run the recipe with `surefit fit` first to see the error",
        )
