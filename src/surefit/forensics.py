"""Where a skipped step went bad: its window's samples replayed one by one (which are bad on
their own) and the batch replayed with forward hooks (the first module whose output is
non-finite), without changing anything the run does next."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .state import RngState, modes_kept

MAX_EXAMINED = 4096  # samples of a bad window checked one by one


def _nonfinite(obj: Any) -> bool:
    """True when a tensor (or any tensor inside a tuple, list or dict) holds NaN or Inf."""
    if isinstance(obj, torch.Tensor):
        return obj.is_floating_point() and not bool(torch.isfinite(obj).all())
    if isinstance(obj, (tuple, list)):
        return any(_nonfinite(o) for o in obj)
    if isinstance(obj, dict):
        return any(_nonfinite(o) for o in obj.values())
    return False


def nonfinite_rows(data: Any, shown: int = 5) -> tuple[int, list[int]]:
    """How many samples of in-memory ``data`` hold NaN or Inf in any tensor, and the first
    ``shown`` of them by their index in the data the user gave; (0, []) for other data paths."""
    tensors = getattr(data, "tensors", None)
    if not tensors:
        return 0, []
    n = len(tensors[0])
    bad = torch.zeros(n, dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        if t.is_floating_point():
            bad |= ~torch.isfinite(t.reshape(n, -1)).all(dim=1)
    rows = bad.nonzero().flatten()
    given = getattr(data, "origin", None)
    first = [int(given[i]) if given is not None else int(i) for i in rows[:shown].tolist()]
    return int(rows.numel()), first


def examine_window(
    net: nn.Module,
    data: Any,
    where: tuple[int, int, int, int, int, bool],
    loss_of: Callable[[Any], Any],
    device: torch.device,
    origin: bool,
) -> dict[str, Any]:
    """Sample indices of a skipped window, the bad ones among them, and (when ``origin``) where
    the NaN started, by replaying the window's samples. ``where`` is (batch_size, epoch, seed,
    first batch, batches, drop_last). Possible where the data path knows sample indices (not a
    user's DataLoader: there the quarantine records the batch position only)."""
    if not hasattr(data, "window_indices"):
        return {}
    idx = data.window_indices(*where)
    given = getattr(data, "origin", None)  # a split's positions in the data the user gave
    named = lambda pos: [int(given[i]) if given is not None else int(i) for i in pos]  # noqa: E731
    found: dict[str, Any] = {"indices": named(idx.tolist())}
    found["bad_samples"] = named(
        replay(net, lambda: examine_samples(idx, lambda i: data.sample(i, device), loss_of))
    )
    if origin:
        batch = data.sample(idx, device)
        found["origin"] = replay(net, lambda: nan_origin(net, batch, loss_of))
    return found


def examine_samples(
    indices: torch.Tensor, sample: Callable[[torch.Tensor], Any], loss_of: Callable[[Any], Any]
) -> list[int]:
    """Indices of the samples that are themselves bad: non-finite inputs or targets, or a
    non-finite loss when the sample is alone in a batch (eval mode, no gradients)."""
    bad = []
    for i in indices[:MAX_EXAMINED].tolist():
        batch = sample(torch.tensor([i]))
        if _nonfinite(batch):
            bad.append(int(i))
            continue
        loss = loss_of(batch)
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            bad.append(int(i))
    return bad


def nan_origin(net: nn.Module, batch: Any, loss_of: Callable[[Any], Any]) -> dict[str, Any]:
    """Replay one batch with forward hooks: the first module whose output is non-finite, and
    whether its inputs (or the data) or its own weights already were."""
    if _nonfinite(batch):
        return {"module": "<data>", "inputs_nonfinite": True, "weights_nonfinite": False}
    found: list[dict[str, Any]] = []

    def hook(name: str) -> Any:
        def fn(module: nn.Module, inputs: Any, output: Any) -> None:
            if not found and _nonfinite(output):
                weights = any(_nonfinite(p) for p in module.parameters(recurse=False))
                found.append(
                    {
                        "module": name or type(module).__name__,
                        "type": type(module).__name__,
                        "inputs_nonfinite": _nonfinite(inputs),
                        "weights_nonfinite": weights,
                    }
                )

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in net.named_modules()]
    try:
        loss = loss_of(batch)
    finally:
        for h in handles:
            h.remove()
    if found:
        return found[0]
    if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
        return {"module": "<loss>", "inputs_nonfinite": False, "weights_nonfinite": False}
    return {"module": "<backward>", "inputs_nonfinite": False, "weights_nonfinite": False}


def replay(net: nn.Module, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in eval mode without gradients, leaving the RNG and the module modes as they
    were, so that looking at a batch changes nothing the run will do next."""
    rng = RngState().state_dict()
    try:
        with modes_kept(net, training=False), torch.no_grad():
            return fn()
    finally:
        RngState().load_state_dict(rng)
