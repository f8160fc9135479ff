"""Which way a monitored metric improves, read from its name: shared by the run (best.pt, early
stopping) and by the report, which reads a finished run's logs and must agree with it."""

from __future__ import annotations

import re

# words of a metric's name that mean lower is better (its name split on "_", "-", "/", ".")
LOWER_IS_BETTER = {
    "loss", "nll", "err", "error", "errors", "mae", "mse", "rmse", "msle", "rmsle", "mape",
    "smape", "perplexity", "ppl", "wer", "cer", "ter", "eer", "fpr", "fnr", "bpc", "bpd",
    "distance", "dist", "regret", "latency",
}  # fmt: skip


def auto_mode(monitor: str, mode: str) -> str:
    """min for losses and errors (``val_loss``, ``val_err``, ``val_top1_error``, ``val_wer``,
    any name containing "loss" or "error"), max for scores."""
    if mode != "auto":
        return mode
    lowered = monitor.lower()
    words = set(re.split(r"[_\-/.\s]+", lowered))
    lower = words & LOWER_IS_BETTER or any(k in lowered for k in ("loss", "error"))
    return "min" if lower else "max"
