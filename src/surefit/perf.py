"""Where a run's time goes, and the CPU thread count it runs with.

* ``choose_threads``: torch's intra-op thread count for the run. Small models lose more to
  thread hand-off than they gain from a second core, and on a loaded machine every extra thread
  waits for a core; the choice goes by the forward pass's FLOPs per batch and the usable cores,
  never by the momentary load (the count changes a run's bits), which gets a note instead.
* ``TimedBatches``: wraps a batch iterator and splits each epoch's wall time into time spent
  waiting for the next batch and time in the step (CPU clock around the fetch; on CUDA, events
  recorded without a sync and read once at the epoch's end).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import loader_workers
from .splits import order_kept
from .state import RngState, modes_kept

# Forward FLOPs per batch under which a run counts as small: bench/'s tiny MLP (20 MFLOP per
# batch) ran 7-40x slower on two threads than on one on a loaded 2-core machine, and 1.3x faster
# on an idle one; the default recipe's CNN is 39 MFLOP.
ONE_THREAD_FLOPS = 30e6
BUSY_NOTE = 0.5  # cores busy elsewhere above which a run on every core gets the note
SAMPLE_S = 0.1  # the shortest window over which the CPU use of other processes is measured
WAIT_WARNING_SHARE = 0.2  # the input-bound warning fires above this share of an epoch's time
WAIT_WARNING_MIN_S = 0.1  # ...and above this wait: a short epoch's share is the scheduler's noise


@dataclass(frozen=True)
class ThreadChoice:
    threads: int  # torch.get_num_threads() for the run
    previous: int  # what it was before the run
    reason: str  # why, for the run's events and console
    note: str = ""  # the machine is busy: what the user may want to change (with_busy_note)


class CpuUse:
    """The CPU time other processes take on this process's cores, over the window since it was
    made: the kernel's busy time of those cores less this process's own (psutil reads both)."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        affinity = _affinity()
        self._cpus = sorted(affinity) if affinity else None
        self._t0, self._busy0, self._own0 = self._read()

    def _read(self) -> tuple[float, float, float]:
        import psutil

        per_cpu = psutil.cpu_times(percpu=True)
        busy = 0.0
        for i in self._cpus if self._cpus is not None else range(len(per_cpu)):
            if i >= len(per_cpu):  # a CPU gone offline since
                continue
            t = per_cpu[i]
            # guest time is counted in user time already; idle and iowait are not busy
            total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
            busy += total - t.idle - getattr(t, "iowait", 0.0)
        own = self._process.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def busy_elsewhere(self, window: float = SAMPLE_S) -> float:
        """Cores kept busy by other processes on average since this object was made (waiting
        until ``window`` seconds have passed)."""
        time.sleep(max(0.0, window - self.elapsed()))
        t, busy, own = self._read()
        return max(0.0, (busy - self._busy0 - (own - self._own0)) / max(t - self._t0, 1e-9))


def forward_flops(model: nn.Module, forward: Callable[[], Any]) -> int | None:
    """FLOPs of ``forward()`` (one forward pass of ``model``), counted by torch without changing
    any state (eval mode, no grad, RNG forked); None where torch's counter cannot count it."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with modes_kept(model, training=False), torch.random.fork_rng(devices=[]), torch.no_grad():
            counter = FlopCounterMode(display=False)
            with counter:
                forward()
        return int(counter.get_total_flops())
    except Exception:  # any model torch's counter cannot trace: no estimate
        return None


def batch_flops(parts: Any) -> int | None:
    """Forward FLOPs of one training batch of ``parts`` (a loop's Parts), counted on its first
    batch whatever the data path (a Dataset's or a user's DataLoader's is loaded with the RNGs
    and the loader's order put back); estimated as 2 x parameters x batch size (low for conv
    nets) with a custom step (calling it would run the user's code once more) or where the
    forward cannot be counted."""
    cfg, model = parts.config, parts.model
    batch, rng = None, RngState().state_dict()
    try:
        if parts.step is None:
            with order_kept(parts.train):
                batch = next(iter(parts.train.batches(cfg.data.batch_size, device=parts.device)))
    except Exception:  # a loader that cannot be peeked at: the estimate
        batch = None
    finally:
        RngState().load_state_dict(rng)
    if batch is not None:
        inputs, _ = parts.task.split(batch)
        counted = forward_flops(model, lambda: parts.task.forward(model, inputs))
        if counted:
            return counted
    params = sum(p.numel() for p in model.parameters())
    return 2 * params * cfg.data.batch_size


@contextlib.contextmanager
def run_threads(parts: Any, resumed: int = 0) -> Iterator[ThreadChoice]:
    """The thread count for a run of ``parts`` (``resumed``: the count its checkpoint was written
    with), recorded as a ``threads`` event; the process gets its previous count back when the run
    ends."""
    requested = parts.config.train.threads
    on_cpu = parts.device.type == "cpu"
    flops = batch_flops(parts) if requested <= 0 and on_cpu and not resumed else None
    choice = choose_threads(requested, parts.device, flops, resumed=resumed)
    if parts.log is not None:
        parts.log.event("threads", threads=choice.threads, reason=choice.reason)
    with threads_for_run(choice), _cudnn_benchmark(parts):
        yield choice


@contextlib.contextmanager
def _cudnn_benchmark(parts: Any) -> Iterator[None]:
    """cuDNN picks the fastest convolution algorithms for the run's shapes (by timing them once
    per shape) on CUDA when the run is not deterministic; the flag is restored afterwards."""
    before = torch.backends.cudnn.benchmark
    if parts.device.type == "cuda" and not parts.config.train.deterministic:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def choose_threads(
    requested: int,
    device: torch.device,
    flops: int | None,
    cores: int | None = None,
    resumed: int = 0,
) -> ThreadChoice:
    """The intra-op thread count: ``requested`` when > 0; a resumed run's own count; else, on CPU,
    one thread for a small model and the cores this process may use (at most torch's current
    count) for the rest.

    The choice depends on the machine and the model, never on the momentary load: the thread
    count changes a CPU run's last bits (kernels split their sums by thread), so two runs of one
    configuration on one machine compute the same numbers, and a resumed run keeps the count it
    was started with. A small model gains least from a second thread and loses most (several
    times its speed) when that thread waits for a busy core, so it takes one.
    """
    previous = torch.get_num_threads()
    if requested > 0:
        return ThreadChoice(requested, previous, f"train.threads = {requested}")
    if device.type != "cpu":
        return ThreadChoice(previous, previous, f"torch's default on {device.type}")
    if resumed > 0:
        return ThreadChoice(resumed, previous, "the count the resumed run was started with")
    cores = cores or usable_cores()
    if flops is not None and flops < ONE_THREAD_FLOPS:
        return ThreadChoice(1, previous, f"small model: {flops / 1e6:.3g} MFLOP per forward batch")
    size = f", {flops / 1e6:.3g} MFLOP per forward batch" if flops is not None else ""
    return ThreadChoice(max(1, min(previous, cores)), previous, f"{cores} cores{size}")


def note_busy_cores(parts: Any, threads: int, since: CpuUse) -> bool:
    """Once ``since`` spans SAMPLE_S or more: a ``busy_cores`` event and a note on stderr when
    other processes keep so many of the cores busy that some of the run's ``threads`` wait for
    one. Measured at a sync point of the running loop rather than before the first step, which
    would have to wait for the window. True once measured."""
    if since.elapsed() < SAMPLE_S:
        return False
    busy = since.busy_elsewhere(window=0)
    note = with_busy_note(ThreadChoice(threads, threads, ""), busy).note
    if note and parts.log is not None:
        parts.log.event("busy_cores", threads=threads, busy=round(busy, 2), note=note)
        if hasattr(parts.log.console, "note"):
            parts.log.console.note(note)
    return True


def with_busy_note(choice: ThreadChoice, busy: float, cores: int | None = None) -> ThreadChoice:
    """``choice`` with a note when other processes keep ``busy`` cores occupied, so that some of
    the run's threads would wait for a core."""
    cores = cores or usable_cores()
    free = max(1, round(cores - busy))
    if busy < BUSY_NOTE or choice.threads <= free:
        return choice
    note = (
        f"other processes keep {busy:.1f} of {cores} cores busy; {choice.threads} threads may run "
        f"several times slower than {free} now: set train.threads = {free} (the thread count "
        "changes the last bits of a CPU run's results)"
    )
    return ThreadChoice(choice.threads, choice.previous, choice.reason, note)


def _affinity() -> set[int] | None:
    """The CPUs this process may run on, where the platform says (Linux)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def usable_cores() -> int:
    """The number of CPU cores this process may run on."""
    return len(_affinity() or ()) or os.cpu_count() or 1


@contextlib.contextmanager
def threads_for_run(choice: ThreadChoice) -> Iterator[None]:
    """Use ``choice.threads`` for the block, then give the process its previous count back."""
    torch.set_num_threads(choice.threads)
    try:
        yield
    finally:
        torch.set_num_threads(choice.previous)


class TimedBatches:
    """Iterate ``batches``, adding the seconds spent waiting for each batch to ``wait_s``.

    With ``window`` > 0 it yields lists of that many batches (the last may be shorter): the
    loop's accumulation windows, grouped here so that a step passes one generator, not two.
    On CUDA the batch fetch is host work that overlaps the device's queue; the step's device time
    is bracketed by events recorded at each fetch and read at ``summary()`` (one sync per epoch).
    """

    def __init__(self, batches: Iterable[Any], device: torch.device, window: int = 0) -> None:
        self.batches = batches
        self.cuda = device.type == "cuda"
        self.window = window
        self.wait_s = 0.0
        self.count = 0
        self.t0 = time.perf_counter()
        self.events: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return self._grouped() if self.window > 1 else self._timed(as_list=self.window == 1)

    def _timed(self, as_list: bool) -> Iterator[Any]:
        clock, it = time.perf_counter, iter(self.batches)
        while True:
            t = clock()
            if self.cuda:
                self._mark()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += clock() - t
            self.count += 1
            yield [batch] if as_list else batch

    def _grouped(self) -> Iterator[list[Any]]:
        window: list[Any] = []
        for batch in self._timed(as_list=False):
            window.append(batch)
            if len(window) == self.window:
                yield window
                window = []
        if window:
            yield window

    def _mark(self) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.events.append(event)

    def summary(self) -> dict[str, float]:
        """Seconds of the epoch so far: total, waiting for data, the rest; and the wait share."""
        total = max(time.perf_counter() - self.t0, 1e-9)
        out = {"epoch_s": total, "data_wait_s": self.wait_s, "step_s": total - self.wait_s}
        if self.cuda and len(self.events) > 1:
            self.events[-1].synchronize()
            device_ms = self.events[0].elapsed_time(self.events[-1])
            out["device_busy_s"] = device_ms / 1000
        out["data_wait_share"] = self.wait_s / total
        return out


def input_bound_advice(
    summary: dict[str, float],
    data_kind: str,
    device: torch.device,
    workers: int = 0,
    loader: Any = None,
) -> str:
    """The warning's text when the wait share is above ``WAIT_WARNING_SHARE`` and the wait above
    ``WAIT_WARNING_MIN_S``; '' otherwise. ``workers``: the loader processes already in use;
    ``loader``: the user's DataLoader, whose settings the advice leaves out when already made."""
    share = summary.get("data_wait_share", 0.0)
    if share <= WAIT_WARNING_SHARE or summary.get("data_wait_s", 0.0) < WAIT_WARNING_MIN_S:
        return ""
    cores = usable_cores()
    more = (
        f"raise data.num_workers above {workers} (this process may use {cores} cores)"
        if workers
        else "set data.num_workers > 0"
    )
    loader_more = f"raise the DataLoader's num_workers above {workers}" if workers else (
        "give the DataLoader num_workers > 0")  # fmt: skip
    settings = [loader_more]
    if not getattr(loader, "persistent_workers", False):
        settings.append("set persistent_workers=True")
    if device.type == "cuda" and not getattr(loader, "pin_memory", False):
        settings.append("pin_memory=True")
    gather = (
        "gathering the batches and copying them to the device is the cost; keep the tensors on "
        'the device (data.on_device = "on"), or use larger batches'
        if device.type == "cuda"
        else "gathering the batches by index is the cost; use larger batches (fewer gathers)"
    )
    fixes = {
        "TensorData": f"the in-memory path is already used: {gather}",
        "DatasetData": "pass in-memory tensors (x, y) if the data fits in memory, or "
        f"{more} and keep __getitem__ light (precompute transforms)",
        "LoaderData": ", ".join(settings)
        + ", or pass in-memory tensors / the Dataset so surefit batches it",
    }
    fix = fixes.get(data_kind, "make the data faster to load")
    return (
        f"input-bound: {share:.0%} of the epoch waited for data "
        f"({summary['data_wait_s']:.2f} s of {summary['epoch_s']:.2f} s); fix: {fix}"
    )


def report_wait(timed: TimedBatches, parts: Any, epoch: int) -> dict[str, float]:
    """Record an epoch's data-wait split as a ``data_wait`` event; warn when input-bound."""
    summary = timed.summary()
    if parts.log is not None:
        parts.log.event("data_wait", epoch=epoch, **{k: round(v, 4) for k, v in summary.items()})
        health = parts.config.health
        quiet = not health.checks or "data_wait" in health.skip_checks
        advice = "" if quiet else input_bound_advice(
            summary, type(parts.train).__name__, parts.device, loader_workers(parts.train),
            getattr(parts.train, "loader", None),
        )  # fmt: skip
        if advice:
            parts.log.event("input_bound", epoch=epoch, message=advice)
            parts.log.warn("data_wait", advice, epoch=epoch)
    return summary
