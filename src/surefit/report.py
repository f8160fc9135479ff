"""Plots and a one-page HTML report of a run directory.

Reads only what a run writes (config.toml, metrics.jsonl, steps.jsonl, events.jsonl,
checkpoints/MANIFEST.json),
so it works on a finished, stopped or still running run and imports no torch. matplotlib is
imported when a plot is drawn and renders through its Agg canvas: no display, no global backend.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ConfigError, refuse_to_replace
from .monitor import auto_mode

LOSS_KEYS = ("train_loss", "loss")  # interval lines carry train_loss; per-step lines may say loss
CLIP_KEYS = ("clip_fraction", "clip_frac")
MARKS = {  # event -> (label, colour, line style) of the vertical line that marks it on step plots
    "resume": ("resume", "tab:green", "--"),
    "rollback": ("rollback", "tab:orange", "-."),
    "skip": ("skipped step", "tab:red", ":"),
}


@dataclass
class RunRecords:
    """What a run directory holds, read back; ``train`` is one line across resumed segments."""

    path: Path
    config: dict[str, Any]  # config.toml as written ({} when absent)
    train: list[dict[str, Any]]  # logged training steps (lines without a split)
    replaced: list[dict[str, Any]]  # training lines of steps taken again later (rollbacks)
    evals: list[dict[str, Any]]  # evaluation lines (split "eval")
    tests: list[dict[str, Any]]  # test lines (split "test")
    events: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]  # MANIFEST.json entries
    steps: list[dict[str, Any]] = field(default_factory=list)  # steps.jsonl: one per step

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def clip_norm(self) -> float:
        return float(self.config.get("train", {}).get("clip_norm", 0) or 0)

    def marks(self, event: str) -> list[int]:
        """Optimizer steps of the events named ``event``, each once, in order."""
        named = (e for e in self.events if e.get("event") == event)
        return sorted({int(e["step"]) for e in named if _finite(e.get("step"))})

    def monitor(self) -> tuple[str, str]:
        """(metric, "min" or "max") that picks the best evaluation, as the run chose it."""
        train = self.config.get("train", {})
        name = train.get("monitor") or "val_loss"
        return name, auto_mode(name, train.get("mode", "auto"))

    def has_best(self) -> bool:
        """Whether any evaluation scored the monitored metric: a run without (no validation
        set) keeps no best, and its "best" record is the final one, as ``FitResult``'s."""
        return any(_finite(r.get(self.monitor()[0])) for r in self.evals)

    def best_eval(self) -> dict[str, Any]:
        """The evaluation record where the monitored metric was best (the final one where no
        evaluation scored it; {} without evaluations): an improvement counts only when it beats
        the best by ``train.min_delta``, as in the run."""
        name, mode = self.monitor()
        scored = [r for r in self.evals if _finite(r.get(name))]
        if not scored:
            return self.evals[-1] if self.evals else {}
        delta = self.config.get("train", {}).get("min_delta", 0.0)
        delta = delta if _finite(delta) else 0.0
        sign = 1 if mode == "min" else -1
        best = scored[0]
        for r in scored[1:]:
            if sign * (best[name] - r[name]) > delta:
                best = r
        return best


def _num(record: dict[str, Any], key: str = "step") -> bool:
    return isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a line cut short by a crash (or anything unreadable) is passed."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def one_line(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(line, replaced): the records in step order as one line, and those it leaves out. Where
    the step goes back (steps taken again after a rollback, or a resumed segment that repeats
    some), the later records replace what the earlier ones wrote from that step on."""
    out: list[dict[str, Any]] = []
    replaced: list[dict[str, Any]] = []
    for r in records:
        if not _num(r):
            continue
        while out and out[-1]["step"] >= r["step"]:
            replaced.append(out.pop())
        out.append(r)
    return out, sorted(replaced, key=lambda r: r["step"])


def read_run(run_dir: str | Path) -> RunRecords:
    """Read a run directory; ``ConfigError`` when it is not one."""
    path = Path(run_dir)
    if not (path / "config.toml").is_file() and not (path / "metrics.jsonl").is_file():
        raise ConfigError(
            f"{path} holds no config.toml or metrics.jsonl: it is not a surefit run directory",
            where=str(path),
            fix="give the run directory that `surefit fit` wrote, e.g. runs/mnist1d-cnn",
        )
    config: dict[str, Any] = {}
    if (path / "config.toml").is_file():
        try:
            config = tomllib.loads((path / "config.toml").read_text(errors="replace"))
        except (tomllib.TOMLDecodeError, OSError):
            config = {}  # a damaged config still leaves the metrics to report
    metrics = _read_jsonl(path / "metrics.jsonl")
    manifest_path = path / "checkpoints" / "MANIFEST.json"
    try:
        checkpoints = json.loads(manifest_path.read_text()).get("checkpoints", [])
    except (OSError, ValueError, AttributeError):  # unreadable, not UTF-8, not JSON
        checkpoints = []
    train, replaced = one_line([r for r in metrics if "split" not in r])
    return RunRecords(
        path=path,
        config=config,
        train=train,
        replaced=replaced,
        evals=one_line([r for r in metrics if r.get("split") == "eval"])[0],
        tests=[r for r in metrics if r.get("split") == "test"],
        events=_read_jsonl(path / "events.jsonl"),
        checkpoints=[c for c in checkpoints if isinstance(c, dict)]
        if isinstance(checkpoints, list)
        else [],
        steps=one_line(_read_jsonl(path / "steps.jsonl"))[0],
    )


def series(records: list[dict[str, Any]], *keys: str, x: str = "step") -> tuple[list, list]:
    """(x, y) of the first of ``keys`` each record carries; records without one are left out."""
    xs, ys = [], []
    for r in records:
        key = next((k for k in keys if _num(r, k)), None)
        if key is not None and _num(r, x):
            xs.append(r[x])
            ys.append(float(r[key]))
    return xs, ys


def _has(records: list[dict[str, Any]], *keys: str) -> bool:
    return any(_num(r, k) for r in records for k in keys)


# -- drawing ---------------------------------------------------------------------------------------


def figure(rows: int = 1, cols: int = 1, width: float = 8.0, height: float = 4.2) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_png(fig: Any, path: Path) -> Path:
    refuse_to_replace(path, ".png", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", metadata={"Software": None})
    except OSError as exc:  # under a file, no permission, disk full
        raise ConfigError(
            f"cannot write {path}: {exc}", where="--out", fix="give a path in a writable folder"
        ) from exc
    return path


def _mark_events(ax: Any, run: RunRecords, to_x: Any = None) -> None:
    """Vertical lines at resume points, rollbacks and skipped steps, each kind labelled once."""
    for event, (label, colour, style) in MARKS.items():
        steps = run.marks(event)
        if event == "resume":
            steps = [s for s in steps if s > 0]  # a resume at step 0 is a restart, not a join
        for i, step in enumerate(steps):
            x = to_x(step) if to_x else step
            ax.axvline(
                x,
                color=colour,
                linestyle=style,
                linewidth=1.2 if event != "skip" else 0.8,
                alpha=0.8,
                label=f"{label} ({len(steps)})" if i == 0 else None,
            )


def finish_axes(ax: Any, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def log_if_wide(ax: Any, values: list[float]) -> None:
    positive = [v for v in values if v > 0 and math.isfinite(v)]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 50:
        ax.set_yscale("log")


def draw_loss(run: RunRecords) -> Any:
    """Training loss per logged step and evaluation losses, with resumes, rollbacks and skips."""
    xs, ys = series(run.train, *LOSS_KEYS)
    if not xs and not _has(run.evals, "train_loss", "val_loss"):
        return None
    fig, (ax,) = figure()
    if xs:
        ax.plot(xs, ys, color="tab:blue", linewidth=1.2, label="train loss (per logged step)")
    rx, ry = series(run.replaced, *LOSS_KEYS)
    if rx:
        ax.plot(rx, ry, "x", color="tab:gray", markersize=4, label="train loss, steps taken again")
    evals = (
        ("train_loss", "tab:cyan", "train loss (mean since the last evaluation)"),
        ("val_loss", "tab:purple", "val loss"),
    )
    for key, colour, label in evals:
        ex, ey = series(run.evals, key)
        if ex:
            ax.plot(ex, ey, "o-" if len(ex) <= 40 else "-", color=colour, markersize=3, label=label)
    log_if_wide(ax, ys)
    _mark_events(ax, run)
    finish_axes(ax, "optimizer step", "loss", f"{run.name}: loss")
    return fig


def steps_per_epoch(evals: list[dict[str, Any]], every_steps: bool = False) -> float | None:
    """Optimizer steps per epoch, read off the evaluations. An epoch-end evaluation after
    ``epoch`` completed epochs is at step ``epoch * steps_per_epoch``: the least of step/epoch.
    One every N steps (``every_steps``) is made inside its epoch, before that epoch counts as
    completed, so its step is at most ``(epoch + 1) * steps_per_epoch``, equal at an epoch's
    last step: the most of step/(epoch + 1)."""
    known = [r for r in evals if _num(r) and _num(r, "epoch")]
    if every_steps:
        ratios = [r["step"] / (r["epoch"] + 1) for r in known]
        return max(ratios) if ratios else None
    ratios = [r["step"] / r["epoch"] for r in known if r["epoch"]]
    return min(ratios) if ratios else None


def draw_metrics(run: RunRecords) -> Any:
    """Each evaluated quantity per epoch (train and val loss together), one panel each."""
    keys = [
        k
        for k in dict.fromkeys(k for r in run.evals for k in r)
        if k.startswith(("val_", "train_loss")) and k != "val_loss" and _has(run.evals, k)
    ]
    if not keys:
        return None
    every = bool(run.config.get("train", {}).get("eval_every_steps", 0))
    per = steps_per_epoch(run.evals, every)
    to_x = (lambda step: step / per) if per else (lambda step: step)
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = figure(rows, cols, width=4.0 * cols, height=3.2 * rows)
    for ax, key in zip(axes, keys, strict=False):
        pairs = [(key, key)]
        if key == "train_loss" and _has(run.evals, "val_loss"):
            pairs.append(("val_loss", "val_loss"))
        for name, label in pairs:
            xs, ys = series(run.evals, name)
            style = "o-" if len(xs) <= 40 else "-"
            ax.plot([to_x(x) for x in xs], ys, style, markersize=3, label=label)
        _mark_events(ax, run, to_x)
        finish_axes(
            ax, "epoch" if per else "optimizer step", "loss" if key == "train_loss" else key
        )
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"{run.name}: per {'epoch' if per else 'evaluation'}")
    return fig


def draw_lr(run: RunRecords) -> Any:
    """Learning rate per logged step."""
    xs, ys = series(run.train, "lr")
    if not xs:
        xs, ys = series(run.evals, "lr")
    if not xs:
        return None
    fig, (ax,) = figure(height=3.6)
    ax.plot(xs, ys, color="tab:green", linewidth=1.4, label="learning rate")
    _mark_events(ax, run)
    finish_axes(ax, "optimizer step", "learning rate", f"{run.name}: learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return fig


def clip_fraction(run: RunRecords) -> float | None:
    """Fraction of optimizer steps whose pre-clip gradient norm exceeded ``clip_norm``."""
    steps = [r for r in run.steps if not r.get("skipped")]
    per_step = [r["clipped"] for r in steps if isinstance(r.get("clipped"), bool)]  # else damaged
    if per_step:
        return sum(per_step) / len(per_step)
    weighted, total, last = 0.0, 0, 0
    for r in run.train:
        key = next((k for k in CLIP_KEYS if _num(r, k)), None)
        steps = max(int(r["step"]) - last, 1)
        last = int(r["step"])
        if key is not None:
            weighted += float(r[key]) * steps
            total += steps
    if total:
        return weighted / total
    norms = series(run.train, "grad_norm")[1]
    if run.clip_norm > 0 and norms:
        return sum(n > run.clip_norm for n in norms) / len(norms)
    return None


def _interval(xs: list[float]) -> int:
    """Optimizer steps between logged lines (1 when every step is logged)."""
    gaps = [b - a for a, b in zip(xs, xs[1:], strict=False) if b > a]
    return int(max(set(gaps), key=gaps.count)) if gaps else 1


def _histogram(ax: Any, norms: list[float]) -> None:
    import numpy as np

    finite = [n for n in norms if math.isfinite(n)]
    wide = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 50
    if wide:
        ax.hist(finite, bins=np.geomspace(min(finite), max(finite), 31), color="tab:blue")
        ax.set_xscale("log")
    else:
        ax.hist(finite, bins=min(30, max(5, len(set(finite)))), color="tab:blue")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if len(finite) < len(norms):
        ax.set_xlabel(f"gradient norm ({len(norms) - len(finite)} non-finite not shown)")


def draw_grad_norm(run: RunRecords) -> Any:
    """Histogram of the pre-clip gradient norm with the clip threshold and the fraction of steps
    clipped, beside the norm over training."""
    xs, norms = series(run.steps or run.train, "grad_norm")
    if not norms:
        return None
    every = _interval(xs)
    fig, (hist, line) = figure(1, 2, width=10.0, height=4.0)
    _histogram(hist, norms)
    if run.clip_norm > 0:
        frac = clip_fraction(run)
        label = f"clip_norm {run.clip_norm:g}"
        if frac is not None:
            label += f": clipped in {100 * frac:.1f} % of steps"
        hist.axvline(run.clip_norm, color="tab:red", linestyle="--", label=label)
        line.axhline(run.clip_norm, color="tab:red", linestyle="--", label="clip_norm")
    title = "pre-clip gradient norm"
    if every > 1:
        title += f"\n(each the mean of {every} steps)"
    xlabel = hist.get_xlabel() or "gradient norm"
    finish_axes(hist, xlabel, "logged steps" if every == 1 else "log intervals", title)
    line.plot(xs, norms, color="tab:blue", linewidth=1.0, label="grad norm")
    mx, my = series(run.train, "grad_norm_max")
    if mx and every > 1:
        line.plot(mx, my, color="tab:gray", linewidth=0.8, alpha=0.7, label="max in interval")
    log_if_wide(line, norms + (my if every > 1 else []))
    _mark_events(line, run)
    finish_axes(line, "optimizer step", "gradient norm", "over training")
    fig.suptitle(f"{run.name}: gradient norm")
    return fig


def draw_throughput(run: RunRecords) -> Any:
    """Training samples per second per logged interval."""
    xs, ys = series(run.train, "samples_per_s")
    if not xs:
        return None
    fig, (ax,) = figure(height=3.6)
    ax.plot(xs, ys, color="tab:brown", linewidth=1.2, label="samples/s")
    ax.set_ylim(bottom=0)
    _mark_events(ax, run)
    finish_axes(ax, "optimizer step", "samples per second", f"{run.name}: throughput")
    return fig


PLOTS = {
    "loss.png": draw_loss,
    "metrics.png": draw_metrics,
    "lr.png": draw_lr,
    "grad_norm.png": draw_grad_norm,
    "throughput.png": draw_throughput,
}


def write_plots(run: RunRecords, folder: Path | None = None) -> list[Path]:
    """Every plot the run's records allow, under ``folder`` (default RUN_DIR/plots).

    Each ``draw_*`` function returns a matplotlib Figure, or None when the records hold nothing
    it draws; what a run did not log is left out, never an error.
    """
    folder = folder or run.path / "plots"
    written = []
    for name, draw in PLOTS.items():
        fig = draw(run)
        if fig is not None:
            written.append(save_png(fig, folder / name))
    return written


# -- the HTML page ---------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#666}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#666;font-size:.9em}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px;columns:3 16em}
"""
_NOT_METRICS = {"split", "epoch", "step", "time_s", "samples_per_s", "lr", "grad_norm"}
MAX_EVENT_ROWS = 1000  # a page stays readable; events.jsonl holds them all


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        return f"{value:.3e}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}"
    return str(value)


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="n">{html.escape(fmt(value))}</td>' if numeric else _td(value)


def _td(value: Any) -> str:
    return f"<td>{html.escape(str(value))}</td>"


def _metric_rows(run: RunRecords) -> str:
    """metric | best | final | test, the metric named without its val_/test_ prefix."""
    best, final = run.best_eval(), (run.evals[-1] if run.evals else {})
    test = run.tests[-1] if run.tests else {}

    def bare(key: str) -> str:
        return key.split("_", 1)[1] if key.startswith(("val_", "test_")) else key

    names = [k for r in (best, final, test) for k in r if k not in _NOT_METRICS]
    rows = []
    for name in dict.fromkeys(bare(k) for k in names):
        values = []
        for record, prefix in ((best, "val_"), (final, "val_"), (test, "test_")):
            key = name if name in record and not name.startswith("test") else prefix + name
            values.append(record.get(key, ""))
        rows.append(f"<tr><th>{html.escape(name)}</th>{''.join(_cell(v) for v in values)}</tr>")
    if not rows:
        return "<p>No evaluations were logged.</p>"
    best_head = (
        f"best evaluation (step {best.get('step', '?')})"
        if run.has_best()
        else f"best: none kept (no {run.monitor()[0]})"
    )
    head = (
        f"<tr><th>metric</th><th>{html.escape(best_head)}</th>"
        f"<th>final evaluation (step {final.get('step', '?')})</th><th>test</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _status(run: RunRecords) -> str:
    ends = [e for e in run.events if e.get("event") in ("end", "preempted", "start", "resume")]
    last = ends[-1] if ends else {}
    kind = last.get("event")
    if kind == "end":
        why = {e.get("why") for e in run.events if e.get("event") == "health_stop"}
        if last.get("reason") in why:
            return f"stopped by the health guards: {last.get('reason', '')}"
        return f"finished: {last.get('reason', '')}"
    if kind == "preempted":
        why = str(last.get("signal", "a signal"))
        by = why if why.startswith("paused") else f"paused by {why} at step {last.get('step')}"
        return f"{by}: resumable"
    return "running, or stopped without a final record"


def _event_rows(run: RunRecords) -> str:
    """Every event but the routine checkpoint writes (counted; the manifest lists what is kept)."""
    events = [e for e in run.events if e.get("event") != "checkpoint"]
    writes = len(run.events) - len(events)
    note = f"<p>And {writes} checkpoint writes.</p>" if writes else ""
    if not events:
        return "<p>No events.</p>" + note
    rows = []
    for e in events[:MAX_EVENT_ROWS]:
        when = e.get("time")
        stamp = (
            datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S")
            if _num(e, "time") and _finite(when) and 0 <= when < 1e11
            else ""
        )
        rest = ", ".join(
            f"{k}={fmt(v)}" for k, v in e.items() if k not in ("event", "time", "step")
        )
        rows.append(
            f"<tr>{_td(stamp)}{_td(e.get('event', ''))}{_cell(e.get('step', ''))}{_td(rest)}</tr>"
        )
    more = len(events) - MAX_EVENT_ROWS
    note += f"<p>{more} more in events.jsonl.</p>" if more > 0 else ""
    head = "<tr><th>time (UTC)</th><th>event</th><th>step</th><th>details</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>{note}"


def _checkpoint_rows(run: RunRecords) -> str:
    if not run.checkpoints:
        return "<p>No checkpoints listed.</p>"
    rows = "".join(
        f"<tr>{_td(c.get('file', ''))}{_td(c.get('kind', ''))}{_cell(c.get('step', ''))}"
        f"{_td(str(c.get('sha256', ''))[:16])}</tr>"
        for c in run.checkpoints
    )
    return f"<table><tr><th>file</th><th>kind</th><th>step</th><th>sha256</th></tr>{rows}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(path.stem.replace("_", " "))
    return (
        f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
        f"<figcaption>plots/{html.escape(path.name)}</figcaption></figure>"
    )


def render_html(run: RunRecords, plots: list[Path]) -> str:
    """The report page: self-contained (plots inlined as data URIs), no script, no external link."""
    config_path = run.path / "config.toml"
    config_text = config_path.read_text(errors="replace") if config_path.is_file() else ""
    resumes = [s for s in run.marks("resume") if s > 0]
    steps = max([r["step"] for r in run.train + run.evals + run.steps if _num(r)] or [0])
    facts = [
        _status(run),
        f"{steps} optimizer steps",
        f"{len(resumes) + 1} segment(s)"
        + (f", resumed at step {', '.join(map(str, resumes))}" if resumes else ""),
    ]
    skips, rollbacks = run.marks("skip"), run.marks("rollback")
    if skips or rollbacks:
        facts.append(f"{len(skips)} skipped step(s), {len(rollbacks)} rollback(s)")
    frac = clip_fraction(run)
    if frac is not None:
        facts.append(f"gradient clipped in {100 * frac:.1f} % of steps")
    if run.config.get("name") not in (None, "", "run", run.name):
        facts.insert(0, f"recipe {run.config['name']}")
    title = html.escape(run.name)
    body = [
        f"<h1>{title}</h1>",
        f'<p class="sub">{html.escape(str(run.path))} · {html.escape(" · ".join(facts))}</p>',
        "<h2>Metrics</h2>",
        _metric_rows(run),
        "<h2>Plots</h2>",
        "".join(_image(p) for p in plots) or "<p>Nothing was logged to plot yet.</p>",
        "<h2>Events</h2>",
        _event_rows(run),
        "<h2>Checkpoints</h2>",
        _checkpoint_rows(run),
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(config_text)}</pre>" if config_text else "<p>No config.toml.</p>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>surefit report: {title}</title>'
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(run_dir: str | Path) -> tuple[Path, list[Path]]:
    """Write RUN_DIR/plots/*.png and RUN_DIR/report.html; returns (report path, plot paths)."""
    run = read_run(run_dir)
    plots = write_plots(run)
    out = run.path / "report.html"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_html(run, plots), encoding="utf-8")
    tmp.replace(out)  # a browser that has the page open never reads half of it
    return out, plots
