"""Tasks on pairs and triplets of inputs: ranking (which of two ranks higher) and metric learning
(an anchor nearer its positive than its negative). Their batches are not (inputs, target), so they
compute their own loss and check their own first batch (there are no outputs to preview)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataError
from .metrics import Fraction
from .tasks import Task, _float_target


class Ranking(Task):
    """Batches (x1, x2, y) with y = +1 when x1 should rank higher: MarginRankingLoss on scores."""

    name = "ranking"

    def preview(self, net: nn.Module, batch: Any) -> tuple[Any, Any]:
        return None, None

    def check_batch(self, batch: Any, where: str) -> None:
        if not isinstance(batch, (tuple, list)) or len(batch) != 3:
            raise DataError(
                "task='ranking' needs batches (x1, x2, y)",
                where=where,
                fix="pass train=(x1, x2, y) with y = +1 where x1 should rank higher, else -1",
            )
        y = batch[2]
        plus_minus = self.custom_loss is None and isinstance(y, torch.Tensor)
        if plus_minus and bool(((y != 1) & (y != -1)).any()):  # one read, at the check
            raise DataError(
                "task='ranking' needs targets of +1 and -1, got other values",
                where=f"{where}, targets",
                fix="map 0/1 labels to -1/+1: y = 2 * y - 1",
            )

    def compute(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        x1, x2, y = batch
        s1, s2 = net(x1).reshape(-1), net(x2).reshape(-1)
        diff = s1 - s2
        return self.loss(diff, y), diff, y

    def default_loss(self, diff: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # MarginRankingLoss(s1, s2, y) == mean(relu(-y * (s1 - s2) + margin))
        return F.margin_ranking_loss(
            diff, torch.zeros_like(diff), _float_target(y, diff), margin=self.cfg.margin
        )

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        return {"ranking_accuracy": Fraction(lambda d, y: ((d * y) > 0, torch.ones_like(d)))}


class Triplet(Task):
    """Batches (anchor, positive, negative) of inputs: TripletMarginLoss on the embeddings."""

    name = "triplet"

    def preview(self, net: nn.Module, batch: Any) -> tuple[Any, Any]:
        return None, None

    def compute(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        a, p, n = (net(x) for x in batch)
        if self.custom_loss is not None:
            loss = self.custom_loss((a, p, n), None)
        else:
            loss = F.triplet_margin_loss(a, p, n, margin=self.cfg.margin)
        d_ap, d_an = F.pairwise_distance(a, p), F.pairwise_distance(a, n)
        return loss, d_an - d_ap, None

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        return {"triplet_accuracy": Fraction(lambda gap, _: (gap > 0, torch.ones_like(gap)))}
