"""What ``surefit doctor --profile`` and ``--max-batch`` report, as library functions.

``profile_run(cfg)`` trains a recipe for a few steps in a scratch run directory and returns where
the time went (waiting for data against the step) and the throughput, optionally with the torch
profiler's top operators. ``max_batch(cfg)`` finds the largest power-of-two batch that fits: on
CUDA by trying forward + backward + optimizer step; on CPU from the memory one sample needs
(activations saved for backward) and the memory the system has available.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .callbacks import Callback
from .config import RunConfig
from .log import warnings_held


@dataclass(frozen=True)
class ProfileReport:
    steps: int  # optimizer steps run
    batch_size: int  # samples per micro-batch, as the run counted them
    threads: int  # CPU threads the run used
    seconds: float  # wall time of the steps (epoch clocks summed)
    data_wait_s: float  # of which waiting for the next batch
    step_s: float  # of which in the step (forward, backward, optimizer, logging)
    data_wait_share: float  # data_wait_s / seconds
    samples_per_s: float
    steps_per_s: float
    advice: str  # the input-bound warning, '' when the run is not input-bound
    top_ops: str = ""  # torch profiler table, when asked for
    warnings: tuple[str, ...] = ()  # every warning of the run (advice's too), with its fix
    first_step_s: float = 0.0  # the first step alone (under compile: its compilation)
    later_steps_per_s: float = 0.0  # the steps after the first

    def lines(self) -> list[str]:
        """The report as console lines."""
        out = [
            f"{self.steps} steps of batch {self.batch_size} on {self.threads} CPU thread(s): "
            f"{self.steps_per_s:.1f} steps/s, {self.samples_per_s:,.0f} samples/s",
            f"time: {self.seconds:.2f} s = data wait {self.data_wait_s:.2f} s "
            f"({self.data_wait_share:.0%}) + step {self.step_s:.2f} s",
        ]
        if self.later_steps_per_s:
            out.append(
                f"compile: the first step took {self.first_step_s:.2f} s (compiling the model), "
                f"included above; the steps after it ran {self.later_steps_per_s:.1f} steps/s"
            )
        out += [f"warning: {w}" for w in self.warnings]
        if self.top_ops:
            out += ["", self.top_ops]
        return out


def profile_run(cfg: RunConfig, steps: int = 50, top_ops: int = 0) -> ProfileReport:
    """Train the recipe ``cfg`` for ``steps`` optimizer steps (no evaluation or checkpoint
    before the last step, no time limit, progress off, a scratch run directory) and report the
    data-wait / step split and the throughput; with ``top_ops`` > 0, also the torch profiler's
    top operators by self time over those steps alone (from the first epoch's start, after the
    set-up, the checks and the thread choice, to the last step: not the final evaluation)."""
    from . import recipes

    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = cfg.replace(
            # epochs 0: as many as the steps take (a recipe of few short epochs ran fewer);
            # evaluations every steps + 1: none at the steps or the epoch ends in between
            train={
                "max_steps": steps,
                "epochs": 0,
                "max_time_s": 0.0,
                "run_dir": str(Path(tmp) / "run"),
                "eval_every_steps": steps + 1,
            },
            checkpoint={
                "at_epoch_end": False,
                "save_best": False,
                "every_steps": 0,
                "every_minutes": 0.0,
                "check_resume": False,
            },
            log={"progress": "off"},
        )
        window = _Window(steps, top_ops)
        try:
            with warnings_held():  # the report gives what the profile finds
                result = recipes.run(run_cfg, callbacks=[window])
        finally:
            window.stop()  # a run that ended early or raised leaves no profiler running
        events = _events(Path(tmp) / "run" / "events.jsonl")
    report = _report(events, result.steps, window, result.warnings)
    compiled = cfg.train.compile and not any(
        w["check"] == "compile_fallback" for w in result.warnings
    )
    if compiled and window.step_ends:  # (a fallback ran eagerly: its first step compiled nothing)
        first = window.step_ends[0] - window.t0
        later = len(window.step_ends) - 1
        span = window.step_ends[-1] - window.step_ends[0]
        report = dataclasses.replace(
            report, first_step_s=first, later_steps_per_s=later / span if later and span else 0.0
        )
    return report


class _Window(Callback):
    """The profile's callback: the clock and the samples from the first epoch's start, and the
    torch profiler over the same window, stopped at the last step, the run's end, or in any case
    by ``stop`` (a profiler left running crashes the interpreter at exit)."""

    def __init__(self, steps: int, top_ops: int) -> None:
        self.steps, self.top_ops = steps, top_ops
        self.t0 = 0.0
        self.step_ends: list[float] = []
        self.samples = self.micro_batches = 0
        self.table = ""
        self._prof: Any = None
        self._trainer: Any = None

    def on_epoch_start(self, run: Any) -> None:
        if self._trainer is not None:
            return
        self._trainer = run._trainer  # the counters of samples and micro-batches
        self._start_counts = (self._trainer.counters.samples, self._trainer.counters.micro_batch)
        if self.top_ops > 0:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + (
                [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
            )
            self._prof = profile(activities=acts)
            self._prof.start()
        self.t0 = time.perf_counter()

    def on_step_end(self, run: Any) -> None:
        self.step_ends.append(time.perf_counter())
        if run.optimizer_step >= self.steps:
            self.stop()

    def on_fit_end(self, run: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self._trainer is not None and not self.micro_batches:
            c, (s0, m0) = self._trainer.counters, self._start_counts
            self.samples, self.micro_batches = c.samples - s0, c.micro_batch - m0
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.stop()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=self.top_ops)
            self.table = table


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(s) for s in path.read_text().splitlines()] if path.exists() else []


def _report(
    events: list[dict[str, Any]], steps: int, window: _Window, warned: list[dict[str, Any]]
) -> ProfileReport:
    waits = [e for e in events if e["event"] == "data_wait"]
    threads = [e["threads"] for e in events if e["event"] == "threads"] or [0]
    advice = [e["message"] for e in events if e["event"] == "input_bound"]
    seconds = max(sum(e["epoch_s"] for e in waits), 1e-9)
    wait = sum(e["data_wait_s"] for e in waits)
    lines = tuple(w["what"] + (f"; fix: {w['fix']}" if w.get("fix") else "") for w in warned)
    return ProfileReport(
        steps=steps,
        batch_size=round(window.samples / window.micro_batches) if window.micro_batches else 0,
        threads=threads[-1],
        seconds=seconds,
        data_wait_s=wait,
        step_s=seconds - wait,
        data_wait_share=wait / seconds,
        samples_per_s=window.samples / seconds,
        steps_per_s=steps / seconds,
        advice=advice[-1] if advice else "",
        top_ops=window.table,
        warnings=lines,
    )


@dataclass(frozen=True)
class BatchReport:
    device: str  # where it was measured
    max_batch: int  # largest power-of-two batch that fits (0: not even one)
    bytes_per_sample: float  # activation memory one sample adds (saved for backward)
    fixed_bytes: int  # parameters, gradients, optimizer state, what any batch saves
    tried: dict[int, bool] = field(default_factory=dict)  # CUDA: batch size -> fitted
    limit: int = 0  # the largest batch the search tries (0: no limit)

    def lines(self) -> list[str]:
        mib = 2**20
        capped = " (the search's limit: a larger batch may fit)" if (
            self.limit and self.max_batch >= self.limit) else ""  # fmt: skip
        out = [
            f"largest power-of-two batch on {self.device}: {self.max_batch}{capped}",
            f"memory: {self.fixed_bytes / mib:.1f} MiB fixed (weights, gradients, optimizer "
            f"state, what any batch saves) + {self.bytes_per_sample / mib:.3f} MiB per sample",
        ]
        if self.tried:
            tries = (f"{b} {'ok' if ok else 'out of memory'}" for b, ok in self.tried.items())
            out.append("tried: " + ", ".join(tries))
        return out


def max_batch(cfg: RunConfig, limit: int = 1 << 16) -> BatchReport:
    """The largest power-of-two training batch of recipe ``cfg`` up to ``limit``: on CUDA by
    running forward, backward and an optimizer step at doubling sizes until one runs out of
    memory; on CPU from the activation bytes per sample and the memory available."""
    from .distributed import resolve_device
    from .precision import Precision
    from .speed import activation_checkpointing

    model, task, sample = _build(cfg)
    device = resolve_device(cfg.train.device)
    model.to(device)
    fixed = _fixed_bytes(model)
    # the forward as the run makes it: its precision, its checkpointed blocks
    autocast = Precision(cfg.train.precision, device).autocast
    with activation_checkpointing(model, list(cfg.train.activation_checkpointing)):
        # two sizes: what a batch saves grows by the per-sample bytes; what it saves at any size
        # (autocast's low-precision copies of the weights) is fixed memory
        small, large = (_saved_bytes(model, task, sample, n, device, autocast) for n in (8, 16))
        per_sample = max(large - small, 0) / 8
        fixed += max(int(small - 8 * per_sample), 0)
        if device.type != "cuda":
            free = _available_bytes()
            fits = int((free - fixed) // max(per_sample, 1)) if free > fixed else 0
            best = 1 << (fits.bit_length() - 1) if fits >= 1 else 0
            return BatchReport(device.type, min(best, limit), per_sample, fixed, limit=limit)
        tried: dict[int, bool] = {}
        b = 1
        while b <= limit:
            tried[b] = _fits_cuda(model, task, sample, b, device, autocast)
            if not tried[b]:
                break
            b *= 2
    ok = [k for k, v in tried.items() if v]
    return BatchReport(str(device), max(ok) if ok else 0, per_sample, fixed, tried, limit)


def _build(cfg: RunConfig) -> tuple[torch.nn.Module, Any, Any]:
    """The recipe's model, task and one training batch (host tensors)."""
    import dataclasses

    from . import recipes
    from .data import as_data
    from .splits import peek_target
    from .tasks import build_task, infer_task

    model = recipes.resolve(cfg.model.name, "model.name")(**cfg.model.args)
    train, _, _ = recipes._split(recipes.resolve(cfg.data.name, "data.name")(**cfg.data.args))
    data = as_data(train, "train")
    sample = next(iter(data.batches(min(8, cfg.data.batch_size))))
    name = cfg.task.name
    if name == "auto":
        name = infer_task(peek_target(data), cfg.task.loss)
    return model, build_task(dataclasses.replace(cfg.task, name=name)), sample


def _grow(batch: Any, size: int, device: torch.device) -> Any:
    """``batch`` repeated along its first dimension to ``size`` rows, on ``device``."""

    def one(t: Any) -> Any:
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return t
        idx = torch.arange(size) % t.shape[0]
        return t.index_select(0, idx).to(device)

    if isinstance(batch, dict):
        return {k: one(v) for k, v in batch.items()}
    return tuple(one(t) for t in batch)


def _saved_bytes(
    model: Any, task: Any, sample: Any, size: int, device: torch.device, autocast: Any
) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward of ``size``
    (the parameters it saves are counted in the fixed memory, not here); a block under
    activation checkpointing saves its inputs only, through this same hook."""
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.random.fork_rng(devices=[]), hooks, autocast():
        task.compute(model, _grow(sample, size, device))
    return total


def _fixed_bytes(model: torch.nn.Module) -> int:
    """Weights + gradients + two Adam moments: four copies of the parameters."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def _available_bytes() -> int:
    """Memory a process can take without swapping (psutil's ``available``: free memory plus
    the caches the kernel gives back, not the bare free pages)."""
    import psutil

    return int(psutil.virtual_memory().available)


def _fits_cuda(
    model: Any, task: Any, sample: Any, size: int, device: torch.device, autocast: Any
) -> bool:
    opt = torch.optim.AdamW(model.parameters())
    try:
        with torch.random.fork_rng(devices=[device]):
            with autocast():
                loss, _, _ = task.compute(model, _grow(sample, size, device))
            loss.backward()
            opt.step()
            torch.cuda.synchronize(device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        del opt
        torch.cuda.empty_cache()
