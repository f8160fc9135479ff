"""Autocast, GradScaler (fp16 only), backward, unscale + clip, and the optimizer step."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from .errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_NO_AUTOCAST = contextlib.nullcontext()  # reusable: fp32 enters it at every micro-batch


def resolve(precision: str, device: torch.device) -> str:
    """``auto`` is fp32 on CPU, bf16 on CUDA where supported, fp16 on other CUDA devices."""
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision='fp16' needs a CUDA device, this run is on {device.type}",
            where="train.precision",
            fix="use precision='bf16' (works on CPU) or 'fp32'",
        )
    return precision


class Precision:
    """Everything that changes with the numeric precision of a run, in one place."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.mode = resolve(precision, device)
        self.device = device
        self.dtype = _DTYPES.get(self.mode)
        self.scaler = torch.amp.GradScaler(device.type) if self.mode == "fp16" else None
        self._one_group: bool | None = None  # the parameters are one foreach group (first clip)
        self._sparse = False  # some gradients are sparse (first clip)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """torch.autocast to the run's dtype; a shared no-op context for fp32."""
        if self.dtype is None:
            return _NO_AUTOCAST
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_and_clip(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[torch.Tensor],
        clip_norm: float,
        clip_value: float,
    ) -> torch.Tensor:
        """Unscale (fp16), measure the global grad norm before clipping, clip; no host sync."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        if self._one_group is None:  # a parameter's gradient is sparse at every step or never
            self._sparse = any(g.is_sparse for g in grads)
            self._one_group = _one_foreach_group(params) and not self._sparse
        if self._one_group and not grads[0].requires_grad:
            norm = _norm_and_clip(grads, clip_norm)
        elif self._sparse:
            return _sparse_norm_and_clip(params, clip_norm, clip_value)
        else:
            norm = torch.nn.utils.get_total_norm(grads)
            if hasattr(norm, "full_tensor"):  # FSDP: per-shard norms (a DTensor), summed
                norm = norm.full_tensor()
            if clip_norm > 0:  # the same two steps as clip_grad_norm_, with the global norm
                torch.nn.utils.clip_grads_with_norm_(params, clip_norm, norm)
        if clip_value > 0:
            torch.nn.utils.clip_grad_value_(params, clip_value)
        return norm

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step, through the scaler under fp16 (which skips on inf/NaN grads)."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scaler": self.scaler.state_dict() if self.scaler else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def _one_foreach_group(params: list[torch.Tensor]) -> bool:
    """Whether every gradient of ``params`` falls in one (device, dtype) group of plain tensors
    on a device with foreach kernels: then ``_norm_and_clip`` does what torch's
    ``get_total_norm`` and ``clip_grads_with_norm_`` do. Decided once from the parameters (a
    gradient has its parameter's device and dtype; torch refuses any other)."""
    if not params or any(type(p) not in (torch.Tensor, torch.nn.Parameter) for p in params):
        return False  # a DTensor (FSDP) or another subclass: torch's own path
    first = params[0]
    same = all(p.device == first.device and p.dtype == first.dtype for p in params)
    return same and first.device.type in ("cpu", "cuda")


def _sparse_norm_and_clip(
    params: list[torch.Tensor], clip_norm: float, clip_value: float
) -> torch.Tensor:
    """The global norm, clipped by norm and by value, where some gradients are sparse
    (``nn.Embedding(sparse=True)``), which torch's ``get_total_norm`` and ``clip_grad_value_``
    have no kernels for: a sparse gradient is coalesced (its repeated rows summed), and its
    norm and its clamp are those of its values; the scaling by the clip coefficient is torch's
    ``clip_grads_with_norm_`` expression."""
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    grads = [p.grad for p in params if p.grad is not None]
    values = [g.values() if g.is_sparse else g for g in grads]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v) for v in values]))
    if clip_norm > 0:
        coef = torch.clamp(float(clip_norm) / (norm + 1e-6), max=1.0)
        for v in values:  # a coalesced gradient's values() are its storage
            v.mul_(coef)
    if clip_value > 0:
        for v in values:
            v.clamp_(-clip_value, clip_value)
    return norm


def _norm_and_clip(grads: list[torch.Tensor], clip_norm: float) -> torch.Tensor:
    """torch's ``get_total_norm`` then ``clip_grads_with_norm_`` for one group of gradients: the
    same kernels and expressions, so the same bits, without their grouping by device and dtype,
    wrappers and no-grad contexts (twice a step; the gradients need none of it here). Written
    out because that per-call work was a measurable share of a small model's step on the host."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    if clip_norm > 0:
        clip_coef = float(clip_norm) / (norm + 1e-6)
        torch._foreach_mul_(grads, torch.clamp(clip_coef, max=1.0))
    return norm
