"""One batch's loss through the task or a user's step, and the evaluation of a whole set: eval
mode under inference, losses weighted by what each batch's mean divided by, metrics synced once."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .data import batch_size_of
from .distributed import no_grad, reduce_eval
from .errors import DataError
from .metrics import perplexity
from .precision import Precision
from .state import modes_kept, wide
from .tasks import Task

StepFn = Callable[[nn.Module, Any], Any]


def compute_batch(
    net: nn.Module, batch: Any, task: Task, step: StepFn | None
) -> tuple[Any, Any, Any]:
    """(loss, predictions, targets) of one batch, through the task or the user's step."""
    if step is None:
        return task.compute(net, batch)
    out = step(net, batch)
    loss, outputs = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
    target = None
    if outputs is not None and isinstance(batch, (tuple, list)):
        target = batch[-1]
    elif outputs is not None and isinstance(batch, Mapping):  # the keys the task's split reads
        target = next((batch[k] for k in ("labels", "y", "target") if k in batch), None)
    return loss, outputs, target


def evaluate_data(
    net: nn.Module,
    data: Any,
    *,
    task: Task,
    step: StepFn | None,
    precision: Precision,
    metrics: Any,
    device: torch.device,
    batch_size: int,
    prefix: str,
) -> dict[str, float]:
    """Loss and metrics over ``data``: eval mode under inference mode, then the mode it had."""
    total, count, metric_set = None, 0, None
    with modes_kept(net, training=False):
        with no_grad(net), precision.autocast():
            for batch in data.batches(batch_size, shuffle=False, device=device):
                loss, preds, target = compute_batch(net, batch, task, step)
                # the loss's own denominator (tokens, targets not ignored), else the samples
                n = task.loss_weight(target) if step is None else None
                if n is None:
                    n = batch_size_of(batch)
                    weighted = loss.detach().to(wide(loss.device)) * n
                else:  # a batch of only ignored targets has a NaN mean and weighs nothing
                    weighted = torch.where(n > 0, loss.detach().to(wide(loss.device)) * n, 0.0)
                total = weighted if total is None else total + weighted
                count += n
                # a step's batch without a target the task can read: the loss, and only the
                # user's own metrics (metrics={name: fn}), which may not need one
                if preds is not None and (
                    step is None or target is not None or isinstance(metrics, dict)
                ):
                    if metric_set is None:
                        metric_set = task.metrics(preds, metrics, device)
                    metric_set.update(*task.metric_inputs(preds, target))
    if total is None:
        raise DataError(
            f"the {prefix} data yielded no batches",
            where=prefix,
            fix="pass a non-empty evaluation set",
        )
    total, count = reduce_eval(total, count, metric_set)  # sums over ranks; one process: as is
    values = {"loss": (total / count).item()}  # the evaluation's intended sync
    if metric_set is not None:
        values.update(metric_set.compute())
    if task.name == "lm":
        values["perplexity"] = perplexity(values["loss"])
    return {f"{prefix}_{k}": v for k, v in values.items()}
