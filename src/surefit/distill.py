"""Knowledge distillation: a student trained on a frozen teacher's softened outputs as well as the
labels (Hinton et al., 2015). It is multiclass with a loss of its own: the teacher runs beside the
student in every step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TaskConfig
from .errors import ConfigError
from .tasks import LossFn, Multiclass


class Distillation(Multiclass):
    """KL to a frozen teacher's softened outputs (scaled by T^2), mixed with the label loss."""

    name = "distillation"

    def __init__(
        self,
        cfg: TaskConfig | None = None,
        loss: LossFn | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__(cfg, loss)
        if teacher is None:
            raise ConfigError(
                "task='distillation' needs a teacher model",
                where="fit(teacher=...)",
                fix="pass teacher=trained_model (or task.teacher in a recipe)",
            )
        self.teacher = teacher.eval()  # run under no_grad: its parameters are left as they are

    def to(self, device: torch.device) -> Distillation:
        self.teacher.to(device)
        return super().to(device)  # type: ignore[return-value]

    def compute(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        inputs, target = self.split(batch)
        outputs = self.forward(net, inputs)
        self.teacher.eval()
        with torch.no_grad():  # no_grad, not inference_mode: the soft targets enter autograd
            teacher_out = self.forward(self.teacher, inputs)
        t = self.cfg.temperature
        # over the class axis (dim 1, as cross-entropy takes it: (B, C) or (B, C, d1, ...)),
        # summed over the classes and averaged over the samples and positions
        soft = F.kl_div(
            F.log_softmax(outputs / t, 1),
            F.log_softmax(teacher_out / t, 1),
            reduction="none",
            log_target=True,
        ).sum(1).mean() * (t * t)
        hard = self.loss(outputs, target)
        return self.cfg.alpha * soft + (1 - self.cfg.alpha) * hard, outputs, target

    def loss_weight(self, target: Any) -> torch.Tensor | None:
        return None  # the soft term is a mean over samples: weigh the mix by samples
