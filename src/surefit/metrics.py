"""Metric accumulators that live on the device and sync only when computed.

torchmetrics provides the classification and regression metrics (built with
``validate_args=False`` so an update never reads a value back to the host). The few written
here — multiclass and top-k accuracy (importing torchmetrics costs about a second of every run's
start), segmentation overlap, ranking and triplet accuracy, masked token accuracy — are running sums
in a handful of lines, exact over the whole set rather than a mean of batch means, where
torchmetrics either has no such metric or changed its input format between recent releases.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .state import wide


class Mean:
    """Running mean of a per-batch value, weighted by the batch's sample count."""

    sum_states = ("total", "count")  # summed over ranks before compute

    def __init__(self, fn: Callable[[Any, Any], torch.Tensor] | None = None) -> None:
        self.fn = fn
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0  # samples; a host int, known without reading the device

    def add(self, value: torch.Tensor, count: int) -> None:
        weighted = value.detach().to(wide(value.device)) * count
        self.total = weighted if self.total is None else self.total + weighted
        self.count += int(count)

    def update(self, preds: Any, target: Any) -> None:
        assert self.fn is not None
        value = torch.as_tensor(self.fn(preds, target))
        n = target.shape[0] if isinstance(target, torch.Tensor) and target.dim() else 1
        self.add(value.float().mean(), n)

    def compute(self) -> torch.Tensor:
        if self.total is None:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count

    def to(self, device: torch.device) -> Mean:
        return self


class Fraction:
    """Share of hits over all counted items: ``sum(hits) / sum(counted)``."""

    sum_states = ("num", "den")

    def __init__(self, hits: Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.hits = hits
        self.reset()

    def reset(self) -> None:
        self.num: torch.Tensor | int = 0
        self.den: torch.Tensor | int = 0

    def update(self, preds: Any, target: Any) -> None:
        hit, counted = self.hits(preds, target)
        self.num = self.num + hit.sum()
        self.den = self.den + counted.sum()

    def compute(self) -> torch.Tensor:
        num = torch.as_tensor(self.num)
        return num.to(wide(num.device)) / max(torch.as_tensor(self.den), 1)

    def to(self, device: torch.device) -> Fraction:
        return self


class Overlap:
    """Dice and IoU over a whole set: per-class intersection and sizes, summed on the device."""

    sum_states = ("inter", "pred", "true")

    def __init__(self, num_classes: int, kind: str, skip_background: bool) -> None:
        self.num_classes, self.kind, self.skip_background = num_classes, kind, skip_background
        self.reset()

    def reset(self) -> None:
        self.inter: torch.Tensor | int = 0
        self.pred: torch.Tensor | int = 0
        self.true: torch.Tensor | int = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        # preds and target are class ids of the same shape (B, ...)
        classes = torch.arange(self.num_classes, device=preds.device).view(-1, 1)
        p = preds.reshape(1, -1) == classes
        t = target.reshape(1, -1) == classes
        self.inter = self.inter + (p & t).sum(1)
        self.pred = self.pred + p.sum(1)
        self.true = self.true + t.sum(1)

    def compute(self) -> torch.Tensor:
        inter, pred, true = (
            torch.as_tensor(v).cpu().double() for v in (self.inter, self.pred, self.true)
        )
        if self.kind == "dice":
            score = 2 * inter / (pred + true).clamp(min=1)
        else:
            score = inter / (pred + true - inter).clamp(min=1)
        present = (true > 0) | (pred > 0)
        if self.skip_background and self.num_classes > 1:
            present[0] = False
        return score[present].mean() if present.any() else torch.tensor(1.0, dtype=torch.float64)

    def to(self, device: torch.device) -> Overlap:
        return self


class MetricSet:
    """Named metrics updated together; ``compute`` is where they reach the host."""

    def __init__(self, metrics: dict[str, Any], device: torch.device) -> None:
        self.metrics = {name: m.to(device) for name, m in metrics.items()}

    def update(self, preds: Any, target: Any) -> None:
        for m in self.metrics.values():
            m.update(preds, target)

    def compute(self) -> dict[str, float]:
        """Read every metric once (the intended sync of an evaluation)."""
        values = [torch.as_tensor(m.compute()).reshape(()) for m in self.metrics.values()]
        if not values:
            return {}
        host = torch.stack([v.cpu().double() for v in values]).tolist()
        return dict(zip(self.metrics, host, strict=True))

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()

    def __len__(self) -> int:
        return len(self.metrics)


def torchmetric(cls_name: str, **kwargs: Any) -> Any:
    import torchmetrics

    cls = getattr(torchmetrics.classification, cls_name, None) or getattr(
        torchmetrics.regression, cls_name
    )
    if "classification" in cls.__module__:
        kwargs["validate_args"] = False
    return cls(**kwargs)


def top_k_hits(k: int, ignore: int) -> Any:
    """Micro accuracy within the top ``k`` logits (dim 1), ignoring ``ignore`` targets: two
    device-side counts instead of torchmetrics, whose import costs about a second."""

    def hits(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = target != ignore
        if k == 1:
            hit = logits.argmax(1) == target
        else:
            hit = (logits.topk(k, dim=1).indices == target.unsqueeze(1)).any(1)
        return hit & keep, keep

    return hits


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


class Mapped:
    """A metric fed ``fn(preds)``: one task's metrics take hard labels, others scores (AUROC),
    all from the same batch of outputs."""

    def __init__(self, metric: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.metric, self.fn = metric, fn

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(self.fn(preds), target)

    def compute(self) -> torch.Tensor:
        return self.metric.compute()

    def reset(self) -> None:
        self.metric.reset()

    def to(self, device: torch.device) -> Mapped:
        self.metric.to(device)
        return self


class PresentMacro(Mapped):
    """A per-class torchmetrics metric (``average=None``) averaged over the classes (labels) the
    set holds both positives and negatives of. torchmetrics' macro AUROC scores a class absent
    from the set as 0, which pulls the average down by the share of absent classes (a model at
    0.995 on each class present reported 0.746 with one of four absent); sklearn's one-vs-rest
    AUROC refuses such a set. Multiclass ``target`` holds class ids (``ignore`` left out);
    multilabel a (N, labels) 0/1 matrix."""

    sum_states = ("positives", "total")

    def __init__(self, metric: Any, fn: Callable[[torch.Tensor], torch.Tensor], classes: int,
                 ignore: int | None = None) -> None:  # fmt: skip
        super().__init__(metric, fn)
        self.classes, self.ignore = classes, ignore
        self.reset()

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds, target)
        if self.ignore is None:  # multilabel
            positives = target.to(wide(target.device)).sum(0)
            total = torch.tensor(float(target.shape[0]))
        else:  # counted on the device: no boolean indexing, which would read back the count
            ids = target.reshape(-1)  # (B,) class ids, or (B, d1, ...) per position
            keep = ids != self.ignore
            dtype = wide(target.device)
            positives = torch.zeros(self.classes, dtype=dtype, device=target.device)
            positives.index_add_(0, ids.clamp(min=0, max=self.classes - 1), keep.to(dtype))
            total = keep.sum().to(dtype)
        self.positives = positives if self.positives is None else self.positives + positives
        self.total = total.to(positives.device) + self.total

    def compute(self) -> torch.Tensor:
        values = torch.as_tensor(self.metric.compute()).cpu().double()
        if self.positives is None:
            return torch.tensor(float("nan"), dtype=torch.float64)
        both = (self.positives > 0) & (self.positives < self.total)
        return values[both.to(values.device)].mean() if bool(both.any()) else values.new_tensor(
            float("nan"))  # fmt: skip

    def reset(self) -> None:
        self.metric.reset()
        self.positives: torch.Tensor | None = None
        self.total: Any = 0.0


class R2(Mapped):
    """torchmetrics' R2Score over (samples, outputs): outputs (B, d1, ..., k) count each
    position as a sample of k outputs (torchmetrics takes 1-D or 2-D only); a set of fewer than
    two samples has no variance to explain, and its R2 is NaN (torchmetrics raises)."""

    sum_states = ("samples",)  # over ranks: every rank decides alike

    def __init__(self, metric: Any, outputs: int) -> None:
        super().__init__(metric, lambda t: t.reshape(-1, outputs) if t.dim() > 2 else t)
        self.samples = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = self.fn(preds), self.fn(target)
        self.samples += preds.shape[0]
        self.metric.update(preds, target)

    def compute(self) -> torch.Tensor:
        if self.samples < 2:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.metric.compute()

    def reset(self) -> None:
        self.metric.reset()
        self.samples = 0


class Flat(Mapped):
    """A torchmetrics metric fed flattened values: one number over every output of a sample."""

    def __init__(self, metric: Any) -> None:
        super().__init__(metric, lambda t: t.reshape(-1))

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(self.fn(preds), self.fn(target))
