"""First-step checks: the classic loop bugs, caught on the first batches before any step.

Each check has a name (``config.CHECKS``) and can be switched off with ``health.skip_checks``.
Errors stop a run before anything is written; warnings go to the console and events.jsonl.
``surefit doctor`` runs them all and prints every finding instead of stopping at the first.
The first-batch work runs under the RNG state it found (in eval mode, but for the gradient check,
which runs in train mode and puts the buffers back), so checking changes nothing the run does next.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .config import CHECKS, RunConfig
from .distributed import no_grad, shard_coords
from .errors import ConfigError, DataError, SurefitError
from .splits import loader_orders, order_kept, restore_orders
from .state import RngState, modes_kept

TARGET_KEYS = ("labels", "y", "target")  # the keys Task.split reads a dict batch's target from
MAX_HASHED = 200_000  # in-memory samples per split hashed by the leakage check (bounded cost)
# what an evaluation record holds beside the val set's metrics (health.epoch_record, the loop)
TRAIN_RECORD = ("train_loss", "grad_norm", "grad_norm_p50", "grad_norm_p90", "grad_norm_p99",
                "clip_fraction", "lr", "samples_per_s", "time_s")  # fmt: skip
MAX_LOADED = 5_000  # Dataset samples per split loaded for it (each __getitem__ may decode)


@dataclass
class Finding:
    """One check's verdict: ok, warning or error, with what is wrong and how to fix it."""

    check: str
    level: str  # "ok", "warning" or "error"
    what: str = ""
    fix: str = ""
    where: str = ""

    def line(self) -> str:
        text = f"{self.level:8s}{self.check}"
        if self.what:
            text += f": {self.what}"
        if self.fix:
            text += f"\n{'':8s}fix: {self.fix}"
        return text


def run_checks(
    net: nn.Module,
    task: Any,
    cfg: RunConfig,
    splits: dict[str, Any],
    precision: Any,
    device: torch.device,
    loss_of: Callable[[Any], Any],
    custom_step: bool = False,
    metrics: Any = None,
    outputs_of: Callable[[Any], Any] | None = None,
) -> list[Finding]:
    """Every enabled first-step check; errors come back as findings (``raise_first`` raises).
    With a custom ``step`` function the checks that need the task's outputs are left out.
    ``outputs_of(batch)``: the predictions evaluation computes (None: the loss only)."""
    skip = set(cfg.health.skip_checks) if cfg.health.checks else set(CHECKS)
    findings: list[Finding] = []
    rng = RngState().state_dict()  # a user's loader may draw from the global RNG when iterated
    orders = loader_orders(*splits.values())  # ...and from its own generators
    modes = contextlib.ExitStack()
    modes.enter_context(modes_kept(net))  # each module's own mode, put back at the end
    try:
        first = {n: _first_batch(d, cfg, device) for n, d in splits.items() if d is not None}
        name = "train"
        try:
            if not custom_step:
                for name, batch in first.items():
                    findings += _batch_checks(net, task, batch, splits[name], name, precision, skip)
            if not any(f.level == "error" for f in findings):  # config checks: never skipped
                name, monitor = "val", cfg.train.monitor
                findings += _evaluation(net, task, first.get("val"), monitor, metrics, outputs_of,
                                        first.get("test", first.get("train")))  # fmt: skip
            if "unused_parameters" not in skip and not any(f.level == "error" for f in findings):
                name = "train"
                findings.append(_unused_parameters(net, first["train"], loss_of))
        except (RuntimeError, IndexError, ValueError, TypeError) as exc:  # torch's, not ours
            findings.append(_failed(exc, name, first[name], net))
        if "batchnorm_accumulation" not in skip:
            findings.append(_batchnorm_accumulation(net, cfg.train.accumulate))
        if "batchnorm_batch" not in skip and not any(f.level == "error" for f in findings):
            findings.append(_one_sample_batch(net, splits["train"], first["train"], cfg, loss_of))
        if "leakage" not in skip and "val" in first:
            findings.append(_leakage(splits["train"], splits["val"]))
    finally:
        net.zero_grad(set_to_none=True)
        modes.close()
        RngState().load_state_dict(rng)
        restore_orders(orders)
    return findings


def check_first_batch(
    net: nn.Module, task: Any, data: Any, batch_size: int, device: torch.device, name: str
) -> list[Finding]:
    """The model's outputs and the targets of ``data``'s first batch, checked as ``fit`` checks
    its splits (for ``evaluate``: labels out of range, shapes, a model that cannot take them)."""
    with order_kept(data):
        batch = next(iter(data.batches(batch_size, shuffle=False, device=device)), None)
    if batch is None:
        return []  # evaluation says the set is empty
    try:
        with modes_kept(net, training=False), no_grad(net):
            outputs, target = task.preview(net, batch)
            if outputs is None:
                return []
            return [_targets(task, outputs, target, data, name)]
    except (RuntimeError, IndexError, ValueError, TypeError) as exc:  # torch's, not ours
        return [_failed(exc, name, batch, net)]


def _failed(exc: Exception, name: str, batch: Any, net: nn.Module) -> Finding:
    """The model or the loss raised on a first batch: what the batch held, and the likely fix."""
    items = batch.items() if isinstance(batch, Mapping) else enumerate(
        batch if isinstance(batch, (tuple, list)) else [batch])  # fmt: skip
    tensors = {k: t for k, t in items if isinstance(t, torch.Tensor)}
    held = ", ".join(
        (f"{k} " if isinstance(batch, Mapping) else "")
        + f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
        for k, t in tensors.items()
    )
    message = (str(exc).strip().splitlines() or [""])[0][:300]
    params = {p.dtype for p in net.parameters() if p.is_floating_point()}
    floats = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if isinstance(batch, Mapping) and "keyword argument" in message:
        inputs = [k for k in batch if k not in TARGET_KEYS]
        fix = (
            f"the keys of a dict batch other than {', '.join(TARGET_KEYS)} go to forward by name "
            f"(forward({', '.join(f'{k}=...' for k in inputs)})): name them as forward's "
            f"parameters{_forward_params(net)}, yield (x, y) tuples, or pass step=fn"
        )
    elif floats and params and not floats <= params:
        fix = "cast the inputs to the model's dtype (x.float()), or the model to theirs"
    else:
        fix = (
            "make the model's input layer fit the batch (features, channels, length), and the "
            "targets fit the task (docs/api.md: tasks)"
        )
    return Finding(
        "data",
        "error",
        f"the model or the loss failed on the first {name} batch ({held}): "
        f"{type(exc).__name__}: {message}",
        fix,
        f"{name} batch 0",
    )


def _forward_params(net: nn.Module) -> str:
    """`` (forward takes a, b)``: the names of a module's forward parameters, where known."""
    module = getattr(net, "module", net)  # DDP's own forward takes *args
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return ""
    return f" ({type(module).__name__}.forward takes {', '.join(names)})" if names else ""


def raise_first(findings: list[Finding]) -> None:
    for f in findings:
        if f.level == "error":
            cls = ConfigError if f.check == "config" else DataError
            raise cls(f.what, where=f.where or f.check, fix=f.fix)


def _first_batch(data: Any, cfg: RunConfig, device: torch.device) -> Any:
    batch = next(iter(data.batches(cfg.data.batch_size, shuffle=False, device=device)), None)
    if batch is None:
        raise DataError("the data yielded no batches", where="data", fix="pass a non-empty set")
    return batch


def _batch_checks(
    net: nn.Module,
    task: Any,
    batch: Any,
    data: Any,
    name: str,
    precision: Any,
    skip: set[str],
) -> list[Finding]:
    net.eval()
    with torch.enable_grad(), precision.autocast():  # the graph tells which op made the outputs
        outputs, target = task.preview(net, batch)
    if outputs is None:  # a task without a preview checks its batch itself
        return _task_batch_check(task, batch, name) if "targets" not in skip else []
    ops = (_last_op(outputs), _last_op(outputs, SHAPE_OPS + SCALING_OPS))
    outputs = outputs.detach() if isinstance(outputs, torch.Tensor) else outputs
    # a batch norm that has seen no batch normalises nothing in eval mode: the first loss is not
    # the step's (which normalises by the batch), so it says nothing of the last layer's scale
    fresh_norm = any(
        isinstance(m, nn.modules.batchnorm._NormBase)
        and m.track_running_stats
        and int(m.num_batches_tracked or 0) == 0
        for m in net.modules()
    )
    with no_grad(net):
        found = []
        if "targets" not in skip:
            found.append(_targets(task, outputs, target, data, name))
            if found[-1].level == "error":
                return found  # the loss itself would fail on these targets
        as_task = _logits_task(task)  # a loss given as torch's cross-entropy is the task's own
        if "probabilities" not in skip and as_task:
            found.append(_probabilities(as_task, outputs, *ops))
        if "initial_loss" not in skip and name == "train" and task.custom_loss is None:
            if not fresh_norm:
                found.append(_initial_loss(task, outputs, target))
    return [f for f in found if f is not None]


def _task_batch_check(task: Any, batch: Any, name: str) -> list[Finding]:
    try:
        task.check_batch(batch, f"{name} batch 0")
    except SurefitError as exc:
        return [Finding("targets", "error", exc.what, exc.fix, exc.where)]
    return [Finding("targets", "ok", f"{name} batches fit task '{task.name}'")]


def _evaluation(
    net: nn.Module,
    task: Any,
    batch: Any,
    monitor: str,
    metrics: Any,
    outputs_of: Callable[[Any], Any] | None,
    other: Any = None,
) -> list[Finding]:
    """The metrics evaluation will report, and ``train.monitor`` among them: known before the
    first step instead of at the first epoch's end. Without a val set, the metrics are built on
    ``other`` (the test or the training batch): a misspelled one is named before training,
    not after it, at the test evaluation."""
    if monitor and not monitor.startswith("val_"):
        if monitor in TRAIN_RECORD:
            return []
        what = f"monitor '{monitor}' is not a value the evaluation record holds"
        fix = f"use 'val_{monitor}' (measured on the val set) or one of: {', '.join(TRAIN_RECORD)}"
        return [Finding("config", "error", what, fix, "train.monitor")]
    if outputs_of is None or (batch is None and (other is None or not metrics)):
        return []  # no val set (the run says so where it needs one)
    names_only, batch = batch is None, other if batch is None else batch
    net.eval()
    with no_grad(net):
        outputs = outputs_of(batch)
    built: list[str] = []
    if outputs is not None:
        try:
            built = list(task.metrics(outputs, metrics, torch.device("cpu")).metrics)
        except ConfigError as exc:
            return [Finding("config", "error", exc.what, exc.fix, exc.where)]
    elif metrics:
        what = f"metrics {list(metrics)} need predictions, but step=fn returns only the loss"
        return [Finding("config", "error", what, "return (loss, outputs) from step", "metrics")]
    names = [f"val_{n}" for n in ("loss", *built, *(["perplexity"] if task.name == "lm" else []))]
    if names_only or not monitor or monitor in names:
        return []
    what = f"monitor '{monitor}' is not among the evaluation metrics"
    return [Finding("config", "error", what, f"use one of: {', '.join(names)}", "train.monitor")]


def _targets(task: Any, outputs: Any, target: Any, data: Any, name: str) -> Finding:
    if task.name != "custom" and not isinstance(outputs, torch.Tensor):
        kind = f"a {type(outputs).__name__}" + (
            f" of {len(outputs)}" if isinstance(outputs, (tuple, list, dict)) else ""
        )
        what = f"the model returns {kind}; task '{task.name}' reads one tensor of outputs"
        fix = ("return the tensor alone (or a dict with 'logits'), or pass step=fn that returns "
               "(loss, outputs)")  # fmt: skip
        return Finding("targets", "error", what, fix, f"{name} batch 0, model outputs")
    try:
        task.check(outputs, target, f"{name} batch 0")
        tensors = getattr(data, "tensors", None)
        if tensors is not None and isinstance(outputs, torch.Tensor) and outputs.dim() > 1:
            task.check_targets(tensors[-1], outputs.shape[-1 if task.name == "lm" else 1], name)
    except SurefitError as exc:
        check = "config" if isinstance(exc, ConfigError) else "targets"
        return Finding(check, "error", exc.what, exc.fix, exc.where)
    labels = _labels_read_as_values(task, tensors[-1] if tensors else target, name)
    return labels or Finding("targets", "ok", f"{name} targets fit task '{task.name}'")


def _labels_read_as_values(task: Any, target: Any, name: str) -> Finding | None:
    """A warning where task 'auto' chose regression for float targets that are all 0 or 1: most
    often labels stored as floats, which mse on the model's logits trains badly."""
    if task.name != "regression" or not getattr(task, "inferred", False) or name != "train":
        return None
    if not isinstance(target, torch.Tensor):
        return None
    if not target.is_floating_point() or target.numel() < 2:
        return None
    zeros = target == 0
    if not bool((zeros | (target == 1)).all()) or bool(zeros.all()) or not bool(zeros.any()):
        return None
    what = "task 'auto' chose regression (mse) for float targets that are all 0 or 1"
    fix = ("if they are labels, pass task='binary' (or 'multilabel' for several columns), or "
           "give them as bool; pass task='regression' to fit them by mse")  # fmt: skip
    return Finding("targets", "warning", what, fix, f"{name} targets")


SHAPE_OPS = ("View", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Clone", "Permute", "Expand")
# ops that keep values near where they were: sigmoid(z).clamp(eps, 1 - eps), .double().float(),
# * 1.0; a gate such as sigmoid(a) * b passes too, hence the values must be in [0, 1] as well
SCALING_OPS = ("Clamp", "ToCopy", "Mul", "Div")


def _last_op(outputs: Any, through: tuple[str, ...] = SHAPE_OPS) -> str:
    """The autograd op that produced ``outputs``, looking through ``through`` ops (first
    operand; "" unknown)."""
    fn = getattr(outputs, "grad_fn", None)
    while fn is not None and fn.name().startswith(through) and fn.next_functions:
        fn = fn.next_functions[0][0]
    return fn.name() if fn is not None else ""


def _logits_task(task: Any) -> str:
    """The task whose logits check applies: the task's own loss, or a loss given as torch's
    cross-entropy (``nn.CrossEntropyLoss``, ``F.cross_entropy``: multiclass) or BCE with logits
    (binary); '' for any other loss."""
    loss = task.custom_loss
    if loss is None:
        return task.name
    if isinstance(loss, nn.CrossEntropyLoss) or loss is F.cross_entropy:
        return task.name if task.name in ("multiclass", "lm", "segmentation") else "multiclass"
    if isinstance(loss, nn.BCEWithLogitsLoss) or loss is F.binary_cross_entropy_with_logits:
        return task.name if task.name in ("binary", "multilabel") else "binary"
    return ""


def _probabilities(task: str, outputs: Any, last_op: str = "", deep_op: str = "") -> Finding | None:
    """Outputs that are probabilities given to a loss that expects logits: made by a final
    softmax or sigmoid (read from the autograd graph; ``deep_op`` looks through clamps, casts and
    scalings too, and counts where every output is in [0, 1]), or, for softmax when the graph is
    not there, rows in [0, 1] that sum to 1 (which logits practically never do)."""
    if not isinstance(outputs, torch.Tensor) or not outputs.is_floating_point():
        return None
    out = outputs.float()
    in_unit = bool(((out >= 0) & (out <= 1)).all())  # one read at set-up, not per step
    if task in ("multiclass", "lm", "segmentation") and out.dim() >= 2 and out.shape[1] > 1:
        sums = out.sum(-1 if task == "lm" else 1)
        by_value = in_unit and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3))
        if last_op.startswith("Softmax") or (in_unit and deep_op.startswith("Softmax")) or by_value:
            return Finding(
                "probabilities",
                "error",
                "the model's outputs are in [0, 1] and sum to 1: they look like softmax "
                "probabilities, but cross-entropy applies log-softmax itself",
                "remove the final softmax from the model (return logits); apply softmax only "
                "when you need probabilities at inference",
                "model outputs",
            )
    sigmoid = last_op.startswith("Sigmoid") or (in_unit and deep_op.startswith("Sigmoid"))
    if task in ("binary", "multilabel") and sigmoid:
        return Finding(
            "probabilities",
            "error",
            "the model's outputs come out of a sigmoid: they are probabilities, but binary "
            "cross-entropy with logits applies the sigmoid itself",
            "remove the final sigmoid from the model (return logits)",
            "model outputs",
        )
    return Finding("probabilities", "ok", "outputs are logits")


def _initial_loss(task: Any, outputs: Any, target: Any) -> Finding | None:
    """An untrained classifier should start near log C (log 2 per label for BCE)."""
    if task.name in ("multiclass", "lm") and outputs.dim() >= 2:
        classes = outputs.shape[-1 if task.name == "lm" else 1]
        expected, why = math.log(classes), f"log {classes} for {classes} classes"
    elif task.name in ("binary", "multilabel"):
        expected, why = math.log(2), "log 2 per label"
    else:
        return None
    observed = float(task.loss(outputs, target))  # one read at set-up
    if not math.isfinite(observed) and not bool(torch.isfinite(outputs).all()):
        return Finding(
            "initial_loss",
            "warning",
            f"the first loss is {observed:.3g}: the model's outputs on the first batch hold "
            "NaN or Inf",
            "look for NaN/Inf in the inputs (those steps are skipped and quarantined: see "
            "quarantine.jsonl and the nan_origin event) or in the model's weights",
            "train batch 0",
        )
    if not math.isfinite(observed) or observed > 1.5 * expected + 0.5:
        return Finding(
            "initial_loss",
            "warning",
            f"the first loss is {observed:.3g}, an untrained model should give about "
            f"{expected:.3g} ({why})",
            "the last layer's outputs are too large at initialisation: scale its weights down "
            "(e.g. init the final Linear with std 0.01 or zero bias), check the input scaling, "
            "or ignore this for a pretrained model",
            "train batch 0",
        )
    return Finding("initial_loss", "ok", f"first loss {observed:.3g} (expected ~{expected:.3g})")


def _batchnorm_accumulation(net: nn.Module, accumulate: int) -> Finding:
    bn = [n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if accumulate > 1 and bn:
        return Finding(
            "batchnorm_accumulation",
            "warning",
            f"BatchNorm ({', '.join(bn[:3])}{'...' if len(bn) > 3 else ''}) with gradient "
            f"accumulation over {accumulate} micro-batches: its statistics see one micro-batch, "
            "not the effective batch",
            "use GroupNorm or LayerNorm, or a larger micro-batch with train.accumulate = 1",
            "model",
        )
    return Finding("batchnorm_accumulation", "ok")


@contextlib.contextmanager
def buffers_kept(net: nn.Module) -> Iterator[None]:
    """Train mode, as the step runs, with the buffers it moves (batch-norm statistics) put back
    afterwards: a check's forward leaves the model as it found it."""
    net.train()
    buffers = [(b, b.clone()) for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _last_batch_size(data: Any, cfg: RunConfig) -> int | None:
    """Samples in this process's last training batch of an epoch (None: unknown, or dropped).
    A user's DataLoader batches by its own batch size and sampler, not by data.batch_size."""
    loader = getattr(data, "loader", None)
    if loader is not None:
        size = getattr(loader, "batch_size", None)  # None: a batch_sampler of its own
        if not size or getattr(loader, "drop_last", False):
            return None
        try:
            return len(loader.sampler) % size
        except (TypeError, AttributeError):  # an iterable dataset: no length
            return None
    n = getattr(data, "num_samples", None)
    if not isinstance(n, int) or cfg.data.drop_last:
        return None
    world = shard_coords()[1]
    return ((n - n % world) // world) % (cfg.data.batch_size // world)


def _one_sample_batch(
    net: nn.Module, data: Any, batch: Any, cfg: RunConfig, loss_of: Callable[[Any], Any]
) -> Finding:
    """BatchNorm cannot train on one value per channel: a last batch of one sample (n % batch
    == 1) would end the run at the first epoch's end. Tried on one sample of the first batch,
    in train mode, with the buffers put back."""
    bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    if not bn or _last_batch_size(data, cfg) != 1:
        return Finding("batchnorm_batch", "ok")
    n, world = data.num_samples, shard_coords()[1]
    batch_size = getattr(getattr(data, "loader", None), "batch_size", cfg.data.batch_size)
    one = lambda v: v[:1] if isinstance(v, torch.Tensor) and v.dim() else v  # noqa: E731
    single = (
        {k: one(v) for k, v in batch.items()}
        if isinstance(batch, Mapping)
        else type(batch)(one(v) for v in batch)
    )
    try:
        with buffers_kept(net), torch.no_grad():
            loss_of(single)
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        what = (
            f"the last training batch of each epoch holds one sample ({n} samples, batch "
            f"{batch_size}{f' over {world} processes' if world > 1 else ''}), and "
            "BatchNorm cannot train on one value per channel: the run would fail there"
        )
        fix = (
            "pass DataLoader(..., drop_last=True)"
            if hasattr(data, "loader")
            else "set drop_last=True (data.drop_last)"
        ) + ", or a batch size that leaves no single sample"
        return Finding("batchnorm_batch", "error", what, fix, "data.batch_size")
    return Finding("batchnorm_batch", "ok", "a one-sample last batch trains")


def _unused_parameters(net: nn.Module, batch: Any, loss_of: Callable[[Any], Any]) -> Finding:
    """Parameters that get no gradient from a backward pass (unused layers, frozen by mistake).

    In train mode, as the step runs (a head used only in training, an auxiliary classifier, is
    used), with the buffers it moves (batch-norm statistics) put back afterwards."""
    net.zero_grad(set_to_none=True)
    try:
        with buffers_kept(net):  # put back after the backward, which reads them
            loss = loss_of(batch)
            if isinstance(loss, torch.Tensor) and loss.dim() != 0:  # as the step would say
                what = f"the loss must be a scalar tensor, got shape {tuple(loss.shape)}"
                fix = "reduce it (loss.mean()), or return (loss, outputs) from step=fn"
                return Finding("loss", "error", what, fix, "train batch 0")
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                if not any(p.requires_grad for p in net.parameters()):
                    return Finding("unused_parameters", "ok", "no trainable parameters")
                what = "the loss does not depend on any trainable parameter: backward would fail"
                fix = ("compute it from the model's outputs, without .detach(), .item(), numpy "
                       "or torch.no_grad() between them and the loss")  # fmt: skip
                return Finding("loss", "error", what, fix, "train batch 0")
            loss.backward()
            unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        net.zero_grad(set_to_none=True)
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        return Finding(
            "unused_parameters",
            "warning",
            f"{len(unused)} trainable parameter(s) receive no gradient: {shown}",
            "remove the unused layers, call them in forward(), or freeze them on purpose with "
            "requires_grad_(False)",
            "model",
        )
    return Finding("unused_parameters", "ok", "every trainable parameter gets a gradient")


def _sample_hashes(data: Any) -> dict[bytes, int] | None:
    """First index of each distinct input sample, by a hash of its bytes (one copy to host)."""
    tensors = getattr(data, "tensors", None)
    if tensors is not None:  # every input of a sample (all but the target), not just the first
        inputs = [t[:MAX_HASHED].numpy(force=True) for t in tensors[: max(1, len(tensors) - 1)]]
        rows: Any = inputs[0] if len(inputs) == 1 else zip(*inputs, strict=True)
    elif getattr(data, "dataset", None) is not None:
        ds = data.dataset
        rows = (ds[i] for i in range(min(len(ds), MAX_LOADED)))
        rows = (r[:-1] if isinstance(r, (tuple, list)) and len(r) > 1 else r for r in rows)
    else:
        return None
    out: dict[bytes, int] = {}
    for i, row in enumerate(rows):
        raw = _input_bytes(row)
        if raw is not None:
            out.setdefault(hashlib.blake2b(raw, digest_size=16).digest(), i)
    return out or None  # None: no sample could be hashed, so nothing was checked


def _input_bytes(row: Any) -> bytes | None:
    """The bytes of a sample's inputs: an array, or a dict's values other than its target."""
    if isinstance(row, dict):
        parts = [_input_bytes(v) for k, v in sorted(row.items()) if k not in TARGET_KEYS]
        return b"".join(parts) if parts and None not in parts else None  # type: ignore[arg-type]
    if isinstance(row, (tuple, list)):  # several inputs
        parts = [_input_bytes(v) for v in row]
        return b"".join(parts) if parts and None not in parts else None  # type: ignore[arg-type]
    if isinstance(row, torch.Tensor):
        row = row.numpy(force=True)
    return row.tobytes() if hasattr(row, "tobytes") else None


def _leakage(train: Any, val: Any) -> Finding:
    """Identical input samples in train and validation (hash of each sample's bytes)."""
    a, b = _sample_hashes(train), _sample_hashes(val)
    if a is None or b is None:
        return Finding("leakage", "ok", "not checked: the data path has no indexable samples")
    both = [(a[h], i) for h, i in b.items() if h in a]
    if both:
        examples = ", ".join(f"train {t} = val {v}" for t, v in both[:3])
        return Finding(
            "leakage",
            "warning",
            f"{len(both)} validation sample(s) also appear in the training data ({examples})",
            "deduplicate before splitting, or split by a group key (e.g. by source file)",
            "val",
        )
    return Finding("leakage", "ok", f"no sample of {len(b)} in val is in train")
