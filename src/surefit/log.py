"""Log sinks: the console (progress bar or one line per epoch), metrics.jsonl, events.jsonl, CSV,
and the trackers of ``loggers`` (TensorBoard, MLflow, W&B).

Every sink receives host floats at the log interval; nothing here reads a device tensor.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .errors import ConfigError, SurefitWarning
from .loggers import SINKS, TRACKERS, TrackerSink, check_installed, metric_values

KNOWN_LOGGERS = ("jsonl", "csv", *TRACKERS)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or math.isnan(value) or math.isinf(value):
            return f"{value:g}"
        return f"{value:.3e}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}"
    return str(value)


class JsonlSink:
    """Appends one JSON object per line; its position is part of the run state."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        self._file: TextIO | None = None

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` with one write and one flush."""
        if not records:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _cut_at_line(self.path, None)  # a line torn by a kill would swallow the next one
            self._file = self.path.open("a")
        self._file.write("".join(json.dumps(r, allow_nan=True) + "\n" for r in records))
        self._file.flush()
        self.lines += len(records)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def state_dict(self) -> dict[str, Any]:
        return {"lines": self.lines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Cut lines written after the checkpoint, so a resumed run neither repeats nor skips."""
        self.close()
        keep = int(state["lines"])
        _cut_at_line(self.path, keep)
        self.lines = keep


def _cut_at_line(path: Path, keep: int | None) -> None:
    """Truncate ``path`` in place after its ``keep``-th complete line (None: after its last),
    dropping a torn last line: the lines kept are never rewritten, so a kill at any moment
    leaves them as they were (rewriting the file emptied it first)."""
    if not path.exists():
        return
    with path.open("rb") as f:
        if keep is None:  # only the tail: a file that ends its last line is left untouched
            size = f.seek(0, os.SEEK_END)
            if size == 0 or (f.seek(size - 1), f.read(1))[1] == b"\n":
                return
            f.seek(max(0, size - (1 << 20)))
            tail_start = f.tell()
            nl = f.read().rfind(b"\n")  # a torn line is one write: far below 1 MiB
            os.truncate(path, tail_start + nl + 1 if nl >= 0 else tail_start)
            return
        data = f.read()
    end, n = 0, 0
    while keep is None or n < keep:
        nl = data.find(b"\n", end)
        if nl < 0:
            break
        end, n = nl + 1, n + 1
    if end < len(data):
        os.truncate(path, end)


class CsvSink:
    """metrics.csv with one column per metric name seen so far (rewritten when a name appears)."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows, self.columns = path, [], []

    def write(self, record: dict[str, Any]) -> None:
        self.rows.append(record)
        new = [k for k in record if k not in self.columns]
        self.columns += new
        if new or not self.path.exists():
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, self.columns)
                w.writeheader()
                w.writerows(self.rows)
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(record)

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Rewrite metrics.csv from the records a resumed run keeps."""
        self.rows, self.columns = [], []
        self.path.unlink(missing_ok=True)
        for record in records:
            if record:  # a line damaged on disk has no values to keep
                self.write(record)

    def close(self) -> None:
        pass


class Console:
    """A tqdm bar per epoch on a terminal, one line per epoch otherwise; rank zero only."""

    def __init__(self, progress: str, epochs: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        if progress == "auto":
            progress = "bar" if getattr(self.stream, "isatty", lambda: False)() else "epoch"
        self.mode, self.bar = progress, None
        self.epochs = _shown(epochs)

    def epoch_start(self, epoch: int, steps: int | None, done: int = 0) -> None:
        if self.mode != "bar":
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=steps,
            initial=done,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            file=self.stream,
            leave=False,
            dynamic_ncols=True,
            unit="step",
        )

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def postfix(self, values: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: _fmt(v) for k, v in values.items()}, refresh=False)

    def epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def line(self, text: str) -> None:
        if self.mode == "off":
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, file=sys.stdout, flush=True)

    def note(self, text: str) -> None:
        """A remark on the machine rather than the run (stderr: the run's output stays clean)."""
        if self.mode != "off":
            print(f"note: {text}", file=sys.stderr, flush=True)


def _shown(epochs: int) -> int | str:
    """The epoch count a person reads: "?" when only max_steps bounds the run (config.epochs)."""
    return epochs if epochs < (1 << 30) else "?"


def epoch_line(epoch: int, epochs: int, values: dict[str, Any]) -> str:
    keys = [k for k in ("train_loss", "val_loss") if k in values]
    keys += [k for k in values if k.startswith("val_") and k not in keys]
    keys += [k for k in ("lr", "grad_norm") if k in values]
    parts = [f"epoch {epoch}/{_shown(epochs)}"] + [f"{k} {_fmt(values[k])}" for k in keys]
    if "samples_per_s" in values:
        parts.append(f"{values['samples_per_s']:,.0f} samples/s")
    return "  ".join(parts)


def _outside_surefit() -> int:
    """The ``stacklevel`` of ``warnings.warn`` called from ``RunLog.warn`` that names the first
    caller outside this package (the user's ``fit(...)`` line, not surefit's own)."""
    package = str(Path(__file__).resolve().parent) + os.sep
    frame, level = sys._getframe(2), 2  # the caller of RunLog.warn: stacklevel 2
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


@contextlib.contextmanager
def warnings_held() -> Iterator[None]:
    """No ``SurefitWarning`` from a run made inside a command that reports on it itself (the
    resume check's runs, a profile's scratch run): their warnings are that command's to give."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SurefitWarning)
        yield


class RunLog:
    """The run's sinks in one place: only rank zero writes (``enabled``).

    A tracker sink that raises (a package broken, a server unreachable) is recorded once as a
    ``logger_failed`` event and dropped; training goes on with the other sinks.
    """

    def __init__(
        self,
        run_dir: Path | None,
        loggers: list[str],
        console: Console,
        enabled: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        _check_loggers(loggers)
        self.console = console
        self.rank_zero = enabled
        self.enabled = enabled and run_dir is not None
        self.warnings: list[dict[str, Any]] = []  # every warning of this session, for the result
        self.metrics = JsonlSink(run_dir / "metrics.jsonl") if run_dir else None
        self.events = JsonlSink(run_dir / "events.jsonl") if run_dir else None
        on = run_dir is not None and self.enabled
        self.csv = CsvSink(run_dir / "metrics.csv") if on and "csv" in loggers else None
        self.trackers: list[TrackerSink] = (
            [SINKS[name](run_dir, config or {}) for name in dict.fromkeys(loggers) if name in SINKS]
            if on
            else []
        )
        self.sent: set[tuple[Any, Any]] = set()  # (split, step) the trackers had before a resume
        self.ended = "FINISHED"
        self.started = time.time()

    def metric(self, record: dict[str, Any]) -> None:
        if self.enabled and self.metrics is not None:
            self.metrics.write(record)
            if self.csv is not None:
                self.csv.write(record)
            key, values = (record.get("split"), record.get("step")), metric_values(record)
            for sink in list(self.trackers):
                if sink.replays or sink.resumed is None or key not in self.sent:
                    self._guard(sink, lambda s: (s.ensure_open(), s.write(int(key[1]), values)))

    def event(self, event: str, **fields: Any) -> None:
        if event == "preempted":  # paused to be resumed: trackers end the run as killed
            self.ended = "KILLED"
        if self.enabled and self.events is not None:
            self.events.write({"event": event, "time": round(time.time(), 3), **fields})

    def warn(
        self,
        check: str,
        what: str,
        fix: str = "",
        category: type[Warning] = SurefitWarning,
        **fields: Any,
    ) -> None:
        """A warning of the run, wherever it can be read: a ``warning`` event, the result's
        ``warnings``, and the console's ``warning:`` line; with no console (``progress="off"``)
        a ``SurefitWarning`` instead, so that it is never silent. Rank zero only."""
        if not self.rank_zero:
            return
        record = {"check": check, "what": what, "fix": fix, **fields}
        self.warnings.append(record)
        self.event("warning", **record)
        if getattr(self.console, "mode", None) == "off":
            text = f"{what}" + (f"; fix: {fix}" if fix else "")
            warnings.warn(text, category, stacklevel=_outside_surefit())
        else:
            self.console.line(f"warning: {what}" + (f"\n  fix: {fix}" if fix else ""))

    def _guard(self, sink: TrackerSink, call: Any) -> Any:
        """Run ``call(sink)``; on an error record it, drop the sink and go on."""
        try:
            return call(sink)
        except Exception as exc:
            self.trackers.remove(sink)
            self.event("logger_failed", logger=sink.name, error=f"{type(exc).__name__}: {exc}")
            self.warn("logger", f"logger '{sink.name}' failed and is off: {exc}")
            return None

    def state_dict(self) -> dict[str, Any]:
        trackers = {s.name: self._guard(s, lambda s: s.state_dict()) for s in list(self.trackers)}
        return {
            "metrics": self.metrics.state_dict() if self.metrics else {"lines": 0},
            "events": self.events.state_dict() if self.events else {"lines": 0},
            "loggers": {name: state for name, state in trackers.items() if state is not None},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # events.jsonl is not cut back: what happened after the checkpoint (a crash) stays recorded
        if not (self.enabled and self.metrics is not None):
            return
        before = _read_records(self.metrics.path)
        self.metrics.load_state_dict(state["metrics"])
        kept = before[: self.metrics.lines]
        self.sent = {(r.get("split"), r.get("step")) for r in before[self.metrics.lines :]}
        if self.csv is not None:
            self.csv.restore(kept)
        steps = [r.get("step") for r in kept]
        purge_step = max((int(t) for t in steps if isinstance(t, int)), default=0) + 1
        saved = state.get("loggers", {})
        for sink in self.trackers:
            if sink.name in saved:
                sink.load_state_dict(saved[sink.name], purge_step)

    def close(self, error: BaseException | None = None) -> None:
        """Close every sink; trackers end their run FINISHED, FAILED on an error, KILLED when
        interrupted or preempted (then only a finished run logs best.pt to MLflow)."""
        status = self.ended
        if error is not None:
            status = "FAILED" if isinstance(error, Exception) else "KILLED"
        best = self.metrics.path.parent / "checkpoints" / "best.pt" if self.metrics else None
        for sink in list(self.trackers):
            self._guard(sink, lambda s: s.close(status, best))
        for sink in [self.metrics, self.events, self.csv]:
            if sink is not None:
                sink.close()


def _check_loggers(loggers: list[str]) -> None:
    """Unknown names and missing packages fail here, before training or any write."""
    for name in loggers:
        if name not in KNOWN_LOGGERS:
            close = difflib.get_close_matches(str(name), KNOWN_LOGGERS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"unknown logger '{name}'",
                where="log.loggers",
                fix=f"{hint}choose from {', '.join(KNOWN_LOGGERS)} (jsonl is always written)",
            )
    check_installed(loggers)


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSONL log; a line damaged on disk (not JSON, not UTF-8) is an
    empty record in its place, so that the lines keep their positions (a resume cuts by line)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True):
        if line.endswith("\n"):
            try:
                record = json.loads(line)
            except ValueError:
                record = {}
            records.append(record if isinstance(record, dict) else {})
    return records


class NullConsole:
    """The console of a run that shows nothing (no log, or not rank zero)."""

    def step(self) -> None: ...
    def postfix(self, values: dict[str, Any]) -> None: ...
    def epoch_start(self, *args: Any) -> None: ...
    def epoch_end(self) -> None: ...
    def line(self, text: str) -> None: ...

    def note(self, text: str) -> None: ...


def summary(result: Any) -> str:
    """The final lines a person reads: why it stopped, best and test metrics, where things are."""
    lines = [f"done: {result.stop_reason} ({result.steps} optimizer steps)"]
    best = {k: v for k, v in result.best_metrics.items() if k.startswith("val_")}
    if best:
        values = "  ".join(f"{k} {_fmt(v)}" for k, v in best.items())
        if result.best_step >= 0:
            lines.append(f"best:  {values}  (step {result.best_step})")
        else:  # every evaluation's monitored value was NaN or Inf (a warning said so)
            lines.append(f"best:  none, no evaluation was finite; last:  {values}")
    if result.test_metrics:
        lines.append(
            "test:  " + "  ".join(f"{k} {_fmt(v)}" for k, v in result.test_metrics.items())
        )
    if result.run_dir is not None:
        lines.append(f"run directory: {result.run_dir}")
        if result.preempted:
            lines.append(f"checkpoint written; continue with: surefit resume {result.run_dir}")
    return "\n".join(lines)
