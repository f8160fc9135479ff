"""Several runs side by side: their curves overlaid in one PNG, best metrics and config differences.

Like ``report``, reads run directories only and imports no torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .report import (
    LOSS_KEYS,
    RunRecords,
    figure,
    finish_axes,
    fmt,
    log_if_wide,
    read_run,
    save_png,
    series,
)

# keys that differ between runs without changing what was trained
NOT_CONFIG = {
    "train.run_dir",
    "description",
    "reference",
    "checkpoint.resume",  # `surefit resume` sets it to "must"
    "checkpoint.override",
    "log.progress",  # how the console looked
    "log.loggers",  # where else the records went
}


def labels(runs: list[RunRecords]) -> list[str]:
    """Each run's folder name, or its whole path where two folder names are the same."""
    names = [r.path.name for r in runs]
    return names if len(set(names)) == len(names) else [str(r.path) for r in runs]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys and their values as JSON text: ``{"optim.lr": "0.01", ...}``."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value)
    return out


def config_differences(runs: list[RunRecords]) -> list[tuple[str, list[str]]]:
    """(key, each run's value) for every config key whose value is not the same in all runs."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f} - NOT_CONFIG)
    values = [(k, [f.get(k, "-") for f in flat]) for k in keys]
    return [(k, v) for k, v in values if len(set(v)) > 1]


def best_rows(runs: list[RunRecords]) -> tuple[list[str], list[list[str]]]:
    """Header and one row per run: the monitored metric, the best evaluation's step and metrics,
    and the test metrics."""
    best = [r.best_eval() for r in runs]
    tests = [r.tests[-1] if r.tests else {} for r in runs]
    keys = [k for b in best for k in b if k.startswith("val_")]
    if not keys:  # no validation set: the training loss is what there is
        keys = [k for b in best for k in b if k == "train_loss"]
    keys += [k for t in tests for k in t if k.startswith("test_")]
    keys = list(dict.fromkeys(keys))
    header = ["run", "monitor", "best step", *keys]
    rows = []
    for label, run, b, t in zip(labels(runs), runs, best, tests, strict=True):
        name, mode = run.monitor()
        values = [fmt(b[k]) if k in b else fmt(t[k]) if k in t else "-" for k in keys]
        step = str(b.get("step", "-")) if run.has_best() else "- (final)"  # none kept
        rows.append([label, f"{name} ({mode})", step, *values])
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


Series = Callable[[RunRecords], tuple[list, list]]


def _panels(runs: list[RunRecords]) -> list[tuple[str, Series]]:
    panels: list[tuple[str, Series]] = [
        ("train loss", lambda r: series(r.train, *LOSS_KEYS)),
        ("val loss", lambda r: series(r.evals, "val_loss")),
    ]
    monitor = runs[0].monitor()[0]
    if monitor in ("val_loss", "train_loss"):  # then the first other validation metric
        others = (k for r in runs for e in r.evals for k in e if k.startswith("val_"))
        monitor = next((k for k in others if k != "val_loss"), monitor)
    if monitor not in ("val_loss", "train_loss"):
        panels.append((monitor, lambda r: series(r.evals, monitor)))
    panels.append(("learning rate", lambda r: series(r.train, "lr")))
    return panels


def plot_compare(runs: list[RunRecords], out: Path) -> Path:
    """Train loss, val loss, the monitored metric and the learning rate of each run, overlaid."""
    panels = _panels(runs)
    fig, axes = figure(2, 2, width=11.0, height=7.0)
    for ax, (title, get) in zip(axes, panels, strict=False):
        values = []
        for label, run in zip(labels(runs), runs, strict=True):
            xs, ys = get(run)
            if xs:
                ax.plot(xs, ys, "o-" if len(xs) < 30 else "-", markersize=3, label=label)
            values += ys
        if "loss" in title:
            log_if_wide(ax, values)
        finish_axes(ax, "optimizer step", title, title)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return save_png(fig, out)


def compare(run_dirs: list[str | Path], out: str | Path) -> tuple[Path, str]:
    """Overlay the runs' curves into one PNG; returns its path and the text of both tables."""
    if len(run_dirs) < 2:
        raise ConfigError(
            "compare needs at least two run directories",
            where="surefit compare",
            fix="surefit compare runs/a runs/b [runs/c ...]",
        )
    runs = [read_run(d) for d in run_dirs]
    png = plot_compare(runs, Path(out))
    header, rows = best_rows(runs)
    text = "best metrics\n" + text_table(header, rows) + "\n\nconfig differences\n"
    diffs = config_differences(runs)
    if diffs:
        text += text_table(["key", *labels(runs)], [[k, *v] for k, v in diffs])
    else:
        text += "(none)"
    return png, text
