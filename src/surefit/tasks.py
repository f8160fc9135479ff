"""Task -> loss, output checks and metrics.

A task knows how a batch becomes a loss: ``compute(net, batch) -> (loss, preds, target)``, where
``preds``/``target`` are what its metrics read. Checks run once, on the first batch, before any
optimizer step, and raise a ``DataError`` that names the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import TaskConfig
from .errors import ConfigError, DataError
from .metrics import (
    R2,
    Flat,
    Fraction,
    Mapped,
    Mean,
    MetricSet,
    Overlap,
    PresentMacro,
    top_k_hits,
    torchmetric,
)

LossFn = Callable[[Any, Any], torch.Tensor]


def _float_target(target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return target if target.dtype == like.dtype else target.to(like.dtype)


def _whole(values: torch.Tensor) -> bool:
    """Whether every value is a non-negative whole number (a host read: checks only)."""
    return bool(((values >= 0) & (values == values.round())).all())


def _class_ids(target: torch.Tensor) -> torch.Tensor:
    """int64 class ids, as cross_entropy needs them, from any integer or bool dtype."""
    if target.dtype == torch.long or target.is_floating_point():
        return target
    return target.long()


class Task:
    """Base task: ``outputs = net(*inputs)``, ``loss = loss_fn(outputs, target)``."""

    name = "custom"
    metric_names: tuple[str, ...] = ()
    on_request: tuple[str, ...] = ()  # metrics built only when named in metrics=[...]
    inferred = False  # chosen by task 'auto' from the targets (the checks question some choices)

    def __init__(self, cfg: TaskConfig | None = None, loss: LossFn | None = None) -> None:
        self.cfg = cfg or TaskConfig()
        self.custom_loss = loss
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> Task:
        self.device = device
        return self

    # -- the step ------------------------------------------------------------------------------
    def split(self, batch: Any) -> tuple[tuple, Any]:
        """Inputs and target of a batch: all but the last element are the model's inputs."""
        if isinstance(batch, Mapping):
            target = batch.get("labels", batch.get("y", batch.get("target")))
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "y", "target")}
            return (inputs,), target
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(
                f"a batch must be (inputs..., target), got {type(batch).__name__}",
                where="train batch",
                fix="yield (x, y) pairs, or pass step=fn to handle batches yourself",
            )
        return tuple(batch[:-1]), batch[-1]

    def forward(self, net: nn.Module, inputs: tuple) -> Any:
        """The model's outputs; a built-in task takes the ``logits`` of a model that returns a
        dict of them (Hugging Face's ``ModelOutput`` is one), as its loss and metrics read
        a tensor."""
        out = net(**inputs[0]) if len(inputs) == 1 and isinstance(inputs[0], dict) else net(*inputs)
        if type(out) is torch.Tensor:  # the common case, without the ABC check below
            return out
        if self.name != "custom" and isinstance(out, Mapping) and "logits" in out:
            return out["logits"]
        return out

    def compute(self, net: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        inputs, target = self.split(batch)
        outputs = self.forward(net, inputs)
        return self.loss(outputs, target), outputs, target

    def preview(self, net: nn.Module, batch: Any) -> tuple[Any, Any]:
        """(outputs, target) of a batch without the loss, for the checks that precede it."""
        inputs, target = self.split(batch)
        return self.forward(net, inputs), target

    def check_batch(self, batch: Any, where: str) -> None:
        """The first batch's check for a task whose preview gives no outputs to check."""

    def loss(self, outputs: Any, target: Any) -> torch.Tensor:
        if self.custom_loss is not None:
            return self.custom_loss(outputs, target)
        try:
            return self.default_loss(outputs, target)
        except IndexError as exc:  # torch's "Target 3 is out of bounds", in a batch past the first
            fix = "class ids must be in 0..C-1 for C outputs: check every label (the checks "
            fix += "see the first batch, or in-memory targets whole)"
            raise DataError(f"a target is out of range: {exc}", where="targets", fix=fix) from exc

    def default_loss(self, outputs: Any, target: Any) -> torch.Tensor:
        raise ConfigError(
            "task 'custom' has no loss of its own",
            where="fit(task=...)",
            fix="pass loss=callable(outputs, target), a task name, or step=fn",
        )

    def loss_weight(self, target: Any) -> torch.Tensor | None:
        """What this task's mean loss over a batch divides by, where that is not the batch's
        sample count (ignored targets, class weights, tokens): evaluation weights each batch's
        loss by it, so a set's loss does not depend on the batch size. None: the sample count."""
        return None

    # -- checks and metrics ----------------------------------------------------------------------
    def check(self, outputs: Any, target: Any, where: str) -> None:
        """Raise a DataError when outputs and targets do not fit this task (first batch)."""

    def check_targets(self, targets: torch.Tensor, num_outputs: int, where: str) -> None:
        """Whole-set target checks for in-memory data (one read at set-up)."""

    def metric_inputs(self, preds: Any, target: Any) -> tuple[Any, Any]:
        return preds, target

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        return {}

    def metrics(self, outputs: Any, wanted: Any, device: torch.device) -> MetricSet:
        """The metric set for evaluation; ``outputs`` is a sample output for sizes."""
        if isinstance(wanted, dict):
            built = {k: v if hasattr(v, "update") else Mean(v) for k, v in wanted.items()}
            for m in built.values():  # a user's metric object serves every evaluation: from zero
                if hasattr(m, "reset"):
                    m.reset()
            return MetricSet(built, device)
        names = list(wanted) if wanted else None
        built = self.build_metrics(outputs, names)
        if names:
            unknown = [n for n in names if n not in built]
            if unknown:
                known = set(self.build_metrics(outputs, None)) | set(self.on_request)
                raise ConfigError(
                    f"unknown metric(s) {unknown} for task '{self.name}'",
                    where="metrics",
                    fix=f"choose from {sorted(known)}",
                )
            built = {n: built[n] for n in names}
        return MetricSet(built, device)


class Multiclass(Task):
    """Class ids (B,) against logits (B, C): cross-entropy with smoothing and class weights."""

    name = "multiclass"
    on_request = ("f1_macro", "auroc")

    def __init__(self, cfg: TaskConfig | None = None, loss: LossFn | None = None) -> None:
        super().__init__(cfg, loss)
        self._weight: torch.Tensor | None = None

    def to(self, device: torch.device) -> Multiclass:
        if self.cfg.class_weights:  # built here, never under the preflight's inference mode
            self._weight = torch.tensor(self.cfg.class_weights, dtype=torch.float32, device=device)
        return super().to(device)  # type: ignore[return-value]

    def default_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self._weight is None else self._weight.to(outputs.dtype)
        return F.cross_entropy(
            outputs,
            _class_ids(target),
            weight=weight,
            label_smoothing=self.cfg.label_smoothing,
            ignore_index=self.cfg.ignore_index,
        )

    def loss_weight(self, target: Any) -> torch.Tensor | None:
        """cross_entropy's mean: over the targets not ignored, each by its class weight."""
        if self.custom_loss is not None or target.is_floating_point():
            return None
        keep = target != self.cfg.ignore_index
        if self._weight is None:
            return keep.sum()
        return (self._weight[_class_ids(target).clamp(min=0)] * keep).sum()

    def check(self, outputs: Any, target: Any, where: str) -> None:
        if not isinstance(outputs, torch.Tensor) or outputs.dim() < 2:
            shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs)
            raise DataError(
                f"task='{self.name}' needs logits of shape (batch, classes), "
                f"the model gave {shape}",
                where=f"{where}, model outputs",
                fix="end the model with nn.Linear(features, num_classes) (no softmax)",
            )
        if target.is_floating_point() and target.shape != outputs.shape:
            raise DataError(
                f"targets are {str(target.dtype).replace('torch.', '')} but task='{self.name}' "
                "needs integer class ids",
                where=f"{where}, targets",
                fix="pass y.long(), or use task='multilabel' for 0/1 float targets "
                "(or 'regression' for real values)",
            )
        if not target.is_floating_point():
            _check_id_shape(self.name, outputs, target, where)
        if self.cfg.class_weights and len(self.cfg.class_weights) != outputs.shape[1]:
            raise ConfigError(
                f"{len(self.cfg.class_weights)} class weights for {outputs.shape[1]} classes",
                where="task.class_weights",
                fix="give one weight per class",
            )
        if not target.is_floating_point():
            self.check_targets(target, outputs.shape[1], where)

    def check_targets(self, targets: torch.Tensor, num_outputs: int, where: str) -> None:
        if targets.is_floating_point():
            return
        valid = targets[targets != self.cfg.ignore_index]
        if valid.numel() == 0:
            return
        lo, hi = int(valid.min()), int(valid.max())  # one read at set-up, not per step
        if lo < 0 or hi >= num_outputs:
            raise DataError(
                f"class ids range over [{lo}, {hi}] but the model outputs {num_outputs} classes",
                where=f"{where}, targets",
                fix=f"give the model's last layer {hi + 1} outputs, or relabel the targets "
                f"to 0..{num_outputs - 1}",
            )

    def metric_inputs(self, preds: Any, target: Any) -> tuple[Any, Any]:
        """Class probabilities as targets (soft labels, mixup): scored against their top class."""
        if target.is_floating_point() and target.shape == preds.shape:
            target = target.argmax(1)
        return preds.detach(), target

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        classes, ignore = outputs.shape[1], self.cfg.ignore_index
        metrics: dict[str, Any] = {"accuracy": Fraction(top_k_hits(1, ignore))}
        top_k = self.cfg.top_k or (5 if classes >= 10 else 0)
        if 1 < top_k < classes:
            metrics[f"top{top_k}"] = Fraction(top_k_hits(top_k, ignore))
        wanted = set(names or ())  # on request only: not defaults of this task
        if "f1_macro" in wanted:
            metrics["f1_macro"] = torchmetric(
                "MulticlassF1Score",
                num_classes=classes,
                average="macro",
                ignore_index=self.cfg.ignore_index,
            )
        if "auroc" in wanted:  # one-vs-rest, macro, exact over the set (every score kept)
            auroc = torchmetric("MulticlassAUROC", num_classes=classes, average="none",
                                ignore_index=self.cfg.ignore_index)  # fmt: skip
            metrics["auroc"] = PresentMacro(auroc, lambda p: p.float().softmax(1), classes,
                                            ignore=self.cfg.ignore_index)  # fmt: skip
        return metrics


def _check_id_shape(task: str, outputs: torch.Tensor, target: torch.Tensor, where: str) -> None:
    """Class ids (B, d1, ...) for logits (B, C, d1, ...), the class dimension second."""
    want = (outputs.shape[0], *outputs.shape[2:])
    if tuple(target.shape) == want:
        return
    fix = "return logits (B, C) for class ids (B,), or (B, C, d1, ...) for ids (B, d1, ...)"
    if target.shape[0] != outputs.shape[0]:
        fix = "the model must return one row of logits per sample"
    elif target.dim() == outputs.dim() and target.shape[-1] == 1:
        fix = "pass the class ids as y.squeeze(-1), of shape " + str(want)
    elif target.dim() == outputs.dim() - 1 and target.shape == outputs.shape[:-1]:
        fix = "the class dimension is last: pass task='lm' (logits (B, T, V) for ids (B, T))"
    raise DataError(
        f"task='{task}' needs class ids of shape {want} for logits {tuple(outputs.shape)}, "
        f"got {tuple(target.shape)}",
        where=f"{where}, targets",
        fix=fix,
    )


class Binary(Task):
    """0/1 targets against one logit per sample: BCE with logits and pos_weight."""

    name = "binary"
    on_request = ("precision", "recall", "auroc")
    _ON_REQUEST = {"precision": "BinaryPrecision", "recall": "BinaryRecall"}  # thresholded

    def default_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _float_target(target, outputs)
        if target.shape != outputs.shape and target.numel() == outputs.numel():
            target = target.reshape(outputs.shape)  # (B,) vs (B, 1) is unambiguous for 0/1 labels
        pos = self.cfg.pos_weight
        pw = torch.tensor(pos, dtype=outputs.dtype, device=outputs.device) if pos else None
        return F.binary_cross_entropy_with_logits(outputs, target, pos_weight=pw)

    def check(self, outputs: Any, target: Any, where: str) -> None:
        if outputs.numel() != target.numel():
            raise DataError(
                f"model outputs {tuple(outputs.shape)} do not match targets {tuple(target.shape)}",
                where=where,
                fix="task='binary' needs one logit per sample: end the model with "
                "nn.Linear(features, 1)"
                if self.name == "binary"
                else "the model needs one logit per label",
            )
        if bool(((target != 0) & (target != 1)).any()):  # one read, at the first-batch check
            raise DataError(
                f"task='{self.name}' needs 0/1 targets, got other values",
                where=f"{where}, targets",
                fix="map labels to 0/1, or use task='multiclass' for class ids or "
                "'regression' for real values",
            )
        labels = outputs.shape[-1] if outputs.dim() > 1 else 1
        if self.cfg.pos_weight and len(self.cfg.pos_weight) not in (1, labels):
            raise ConfigError(
                f"{len(self.cfg.pos_weight)} pos_weight values for {labels} label(s)",
                where="task.pos_weight",
                fix=f"give one weight, or one per label ({labels})",
            )

    def metric_inputs(self, preds: Any, target: Any) -> tuple[Any, Any]:
        """Probabilities: AUROC ranks them; the other metrics threshold them (``_hard``)."""
        probs = torch.sigmoid(preds.detach().float())
        return probs.reshape(target.shape) if probs.numel() == target.numel() else probs, (
            target.long()
        )

    def _hard(self, probs: torch.Tensor) -> torch.Tensor:
        return (probs > self.cfg.threshold).long()

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        wanted = set(names or ())
        metrics = {"accuracy": "BinaryAccuracy", "f1": "BinaryF1Score"}
        metrics |= {n: c for n, c in self._ON_REQUEST.items() if n in wanted}
        built = {n: Mapped(torchmetric(c), self._hard) for n, c in metrics.items()}
        if "auroc" in wanted:  # exact over the set: every probability kept until compute
            built["auroc"] = torchmetric("BinaryAUROC")
        return built


class Multilabel(Binary):
    """Several independent 0/1 labels per sample (B, L): BCE with logits per label."""

    name = "multilabel"

    on_request = ("auroc",)

    def metric_inputs(self, preds: Any, target: Any) -> tuple[Any, Any]:
        return torch.sigmoid(preds.detach().float()), target.long()

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        labels = outputs.shape[-1]
        built = {
            "f1": Mapped(
                torchmetric("MultilabelF1Score", num_labels=labels, average="micro"), self._hard
            ),
            "f1_macro": Mapped(
                torchmetric("MultilabelF1Score", num_labels=labels, average="macro"), self._hard
            ),
            "accuracy": Mapped(
                torchmetric("MultilabelAccuracy", num_labels=labels, average="micro"), self._hard
            ),
        }
        if names and "auroc" in names:  # per label, macro
            auroc = torchmetric("MultilabelAUROC", num_labels=labels, average="none")
            built["auroc"] = PresentMacro(auroc, lambda p: p, labels)
        return built


class Regression(Task):
    """Real-valued targets: MSE (default), L1, Huber(delta) or SmoothL1."""

    name = "regression"

    def default_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _float_target(target, outputs)
        kind = self.cfg.loss or "mse"
        if kind == "l1":
            return F.l1_loss(outputs, target)
        if kind == "huber":
            return F.huber_loss(outputs, target, delta=self.cfg.huber_delta)
        if kind == "smooth_l1":
            return F.smooth_l1_loss(outputs, target, beta=self.cfg.huber_delta)
        return F.mse_loss(outputs, target)

    def check(self, outputs: Any, target: Any, where: str) -> None:
        if outputs.shape != target.shape:
            fix = "compare like with like"
            if outputs.dim() == target.dim() + 1 and outputs.shape[-1] == 1:
                fix = "return output.squeeze(-1) from the model, or pass y.unsqueeze(1) as targets"
            elif target.dim() == outputs.dim() + 1 and target.shape[-1] == 1:
                fix = "pass y.squeeze(-1) as targets, or make the model return (batch, 1)"
            elif target.dim() == 1 and outputs.dim() == 2 and _whole(target):
                fix = (  # class ids held as floats: task auto read them as regression targets
                    "the targets look like class ids stored as floats: pass y.long() (task "
                    "'auto' then picks multiclass) or task='multiclass'; regression targets "
                    f"would be shaped {tuple(outputs.shape)} like the outputs"
                )
            raise DataError(
                f"model outputs {tuple(outputs.shape)} and targets {tuple(target.shape)} differ in "
                "shape; the loss would broadcast them silently into a wrong value (task "
                "'regression')",
                where=where,
                fix=fix,
            )

    def metric_inputs(self, preds: Any, target: Any) -> tuple[Any, Any]:
        return preds.detach().float(), target.float()

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        outs = outputs.shape[-1] if outputs.dim() > 1 else 1
        return {
            "mae": Flat(torchmetric("MeanAbsoluteError")),
            "rmse": Flat(torchmetric("MeanSquaredError", squared=False)),
            "r2": R2(
                torchmetric("R2Score", **({"multioutput": "uniform_average"} if outs > 1 else {})),
                outs,
            ),
        }


class LanguageModel(Task):
    """Next-token ids (B, T) against logits (B, T, V): token cross-entropy with ignore_index."""

    name = "lm"

    def default_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            outputs.flatten(0, -2),
            _class_ids(target).flatten(),
            ignore_index=self.cfg.ignore_index,
            label_smoothing=self.cfg.label_smoothing,
        )

    def loss_weight(self, target: Any) -> torch.Tensor | None:
        """The token mean: over the positions not ignored."""
        return None if self.custom_loss is not None else (target != self.cfg.ignore_index).sum()

    def check(self, outputs: Any, target: Any, where: str) -> None:
        if outputs.dim() != target.dim() + 1 or outputs.shape[:-1] != target.shape:
            raise DataError(
                f"task='lm' needs logits (B, T, V) for targets (B, T); got {tuple(outputs.shape)} "
                f"and {tuple(target.shape)}",
                where=where,
                fix="return the logits of every position from the model",
            )
        Multiclass.check_targets(self, target, outputs.shape[-1], where)  # type: ignore[arg-type]

    def check_targets(self, targets: torch.Tensor, num_outputs: int, where: str) -> None:
        Multiclass.check_targets(self, targets, num_outputs, where)  # type: ignore[arg-type]

    def metric_inputs(self, preds: Any, target: Any) -> tuple[Any, Any]:
        return preds.detach().argmax(-1), target

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        ignore = self.cfg.ignore_index

        def hits(p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            keep = t != ignore
            return (p == t) & keep, keep

        # perplexity is exp(val_loss), added by the evaluator from the loss it already has
        return {"accuracy": Fraction(hits)}


class Segmentation(Task):
    """Per-pixel classes: CE (or BCE for one channel) mixed with soft Dice for imbalanced masks."""

    name = "segmentation"

    def default_loss(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.cfg.dice_weight
        if outputs.shape[1] == 1:
            target = _float_target(target, outputs).reshape(outputs.shape)
            base = F.binary_cross_entropy_with_logits(outputs, target)
            probs, onehot = torch.sigmoid(outputs), target
        else:
            target = _class_ids(target)
            base = F.cross_entropy(outputs, target, ignore_index=self.cfg.ignore_index)
            probs = outputs.softmax(1)
            onehot = F.one_hot(target.clamp(min=0), outputs.shape[1]).movedim(-1, 1).to(probs.dtype)
            valid = (target != self.cfg.ignore_index).unsqueeze(1).to(probs.dtype)
            probs, onehot = probs * valid, onehot * valid  # ignored pixels count in no class
        dims = (0, *range(2, outputs.dim()))
        inter = (probs * onehot).sum(dims)
        dice = 1 - (2 * inter + 1) / (probs.sum(dims) + onehot.sum(dims) + 1)
        return (1 - w) * base + w * dice.mean()

    def loss_weight(self, target: Any) -> torch.Tensor | None:
        """The pixels the cross-entropy's mean divided by (those not ignored). With a Dice term
        the loss is not a mean over pixels (the batch's soft Dice): weighted by samples then."""
        if self.custom_loss is not None or self.cfg.dice_weight:
            return None
        if target.is_floating_point():  # BCE masks: every pixel
            return torch.tensor(target.numel(), device=target.device)
        return (target != self.cfg.ignore_index).sum()

    def check(self, outputs: Any, target: Any, where: str) -> None:
        if outputs.dim() < 3:
            raise DataError(
                f"task='segmentation' needs outputs (B, C, H, ...), got {tuple(outputs.shape)}",
                where=where,
                fix="return per-pixel logits with the class channel second",
            )
        if outputs.shape[1] > 1:
            Multiclass.check_targets(self, target, outputs.shape[1], where)  # type: ignore[arg-type]

    def metric_inputs(self, preds: Any, target: Any) -> tuple[Any, Any]:
        preds = preds.detach()
        if preds.shape[1] == 1:
            hard = (torch.sigmoid(preds.float()) > self.cfg.threshold).long().squeeze(1)
            return hard, target.reshape(hard.shape).long()
        keep = target != self.cfg.ignore_index
        return preds.argmax(1)[keep], target[keep]

    def build_metrics(self, outputs: Any, names: list[str] | None) -> dict[str, Any]:
        classes = max(outputs.shape[1], 2)
        return {"dice": Overlap(classes, "dice", True), "iou": Overlap(classes, "iou", True)}


TASK_CLASSES: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        Task,
        Multiclass,
        Binary,
        Multilabel,
        Regression,
        LanguageModel,
        Segmentation,
    )
}


REGRESSION_LOSSES = ("mse", "l1", "huber", "smooth_l1")
TASK_LOSSES = {  # the loss names (task.loss) each task can use
    "multiclass": ("ce",),
    "lm": ("ce",),
    "distillation": ("ce",),
    "segmentation": ("ce", "bce"),
    "binary": ("bce",),
    "multilabel": ("bce",),
    "regression": REGRESSION_LOSSES,
}


def infer_task(target: Any, loss: str = "") -> str:
    """The task of targets ``(N, ...)`` and the loss named (``task.loss``): regression for a
    regression loss or real values, binary (one label) or multilabel for ``bce`` or bool
    targets, multiclass for ``ce`` or integer class ids (``ce`` with float targets is
    multiclass over class probabilities)."""
    if isinstance(target, torch.Tensor):
        if loss in REGRESSION_LOSSES:
            return "regression"
        if loss == "ce":
            return "multiclass"
        if loss == "bce" or target.dtype == torch.bool:
            return "multilabel" if target.dim() == 2 and target.shape[1] > 1 else "binary"
        return "regression" if target.is_floating_point() else "multiclass"
    raise ConfigError(
        "cannot infer the task from the data",
        where="fit(task=...)",
        fix="pass task='multiclass', 'binary', 'multilabel', 'regression', ... or step=fn",
    )


def check_loss_name(task: str, loss: str, inferred: bool = False) -> None:
    """A ConfigError when ``task.loss`` names a loss the task cannot use."""
    if not loss or loss in TASK_LOSSES.get(task, ()):
        return
    how = " (inferred from the targets)" if inferred else ""
    fits = [t for t, names in TASK_LOSSES.items() if loss in names and t != "distillation"]
    own = TASK_LOSSES.get(task)
    fix = f"leave task.loss empty (task '{task}' has its own loss)"
    if own:
        fix = f"use task.loss = {' or '.join(repr(n) for n in own)}, or leave it empty"
    raise ConfigError(
        f"task.loss='{loss}' does not apply to task '{task}'{how}",
        where="task.loss",
        fix=f"{fix}; '{loss}' is a loss of task {' or '.join(repr(t) for t in fits)}",
    )


def build_task(
    cfg: TaskConfig, loss: LossFn | None = None, teacher: nn.Module | None = None
) -> Task:
    check_loss_name(cfg.name, cfg.loss)
    from .distill import Distillation  # they build on Task: imported once it is defined
    from .pairwise import Ranking, Triplet

    more = {"ranking": Ranking, "triplet": Triplet, "distillation": Distillation}
    cls = {**TASK_CLASSES, **more}[cfg.name]
    if cls is Distillation:
        return Distillation(cfg, loss, teacher=teacher)
    return cls(cfg, loss)
