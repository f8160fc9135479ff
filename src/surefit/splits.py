"""Looks at the data before a run: the seeded validation split carved out of the training data,
the targets task inference reads, and users' DataLoaders kept on their order across such looks
(their generators put back), so the run starts where a hand-written loop over them would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .data import DatasetData, LoaderData, TensorData
from .errors import ConfigError
from .state import RngState, derive_seed


def split_validation(
    data: TensorData | DatasetData | LoaderData, val: float | int, seed: int, stratify: bool
) -> tuple[Any, Any]:
    """Carve a seeded validation split (stratified for class ids) out of the training data."""
    if isinstance(data, LoaderData):
        raise ConfigError(
            "cannot carve a validation split out of a DataLoader",
            where="val",
            fix="pass val= explicitly, or pass the Dataset instead of the DataLoader",
        )
    n = data.num_samples
    n_val = int(round(val * n)) if isinstance(val, float) else int(val)
    if isinstance(val, float) and not 0 < val < 1:
        raise ConfigError(f"val fraction {val} is outside (0, 1)", where="val", fix="e.g. val=0.1")
    if not isinstance(val, float) and n_val < 1:
        raise ConfigError(
            f"val={val} is not a number of validation samples",
            where="val",
            fix="give a count of at least 1 (val=500), a fraction (val=0.1), or a validation set",
        )
    if n_val >= n or n_val < 1:
        raise ConfigError(
            f"a validation split of {n_val} samples leaves {max(n - n_val, 0)} of {n} for training",
            where="val",
            fix="use a validation fraction such as 0.1, or pass a validation set",
        )
    gen = torch.Generator().manual_seed(derive_seed(seed, -1))
    targets = data.tensors[-1] if isinstance(data, TensorData) else None
    if stratify and targets is not None and targets.dim() == 1 and not targets.is_floating_point():
        val_idx = _stratified(targets.cpu(), n_val, gen)
    else:
        val_idx = torch.randperm(n, generator=gen)[:n_val]
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    train_idx = mask.nonzero().squeeze(1)
    val_idx = val_idx.sort().values
    if isinstance(data, TensorData):
        pick = lambda idx: TensorData(tuple(t[idx] for t in data.tensors), "split")  # noqa: E731
        parts = pick(train_idx), pick(val_idx)
    else:
        sub = torch.utils.data.Subset
        parts = (
            DatasetData(sub(data.dataset, train_idx.tolist()), "train"),
            DatasetData(sub(data.dataset, val_idx.tolist()), "val"),
        )
    parts[0].origin, parts[1].origin = train_idx, val_idx  # what the quarantine names
    return parts


def _stratified(targets: torch.Tensor, n_val: int, gen: torch.Generator) -> torch.Tensor:
    """Exactly ``n_val`` indices, shared out between classes by largest remainder."""
    classes, counts = torch.unique(targets, return_counts=True)
    quota = counts.double() * n_val / len(targets)
    take = quota.floor().long()
    short = n_val - int(take.sum())
    if short > 0:
        take[torch.argsort(quota - take, descending=True)[:short]] += 1
    picks = []
    for c, k in zip(classes.tolist(), take.tolist(), strict=True):
        idx = (targets == c).nonzero().squeeze(1)
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    return torch.cat(picks)


def loader_orders(*splits: Any) -> list[tuple[torch.Generator, torch.Tensor]]:
    """The states of the generators users' DataLoaders draw their order and worker seeds from:
    a look at a first batch draws from them, and would start the run on the loader's second
    order instead of its first unless they are put back (``restore_orders``)."""
    gens = [g for d in splits if isinstance(d, LoaderData) for g in d.generators()]
    return [(g, g.get_state()) for g in gens]


def restore_orders(saved: list[tuple[torch.Generator, torch.Tensor]]) -> None:
    for g, state in saved:
        g.set_state(state)


@contextlib.contextmanager
def order_kept(*splits: Any) -> Iterator[None]:
    """Users' DataLoaders draw their next order as if what runs inside had not iterated them."""
    saved = loader_orders(*splits)
    try:
        yield
    finally:
        restore_orders(saved)


def peek_target(data: Any) -> Any:
    """The targets of a first sample or batch, to infer the task; restores the RNGs it may use."""
    if isinstance(data, TensorData):
        return data.tensors[-1]
    rng = RngState().state_dict()
    try:
        from_dataset = isinstance(data, DatasetData)
        if from_dataset:
            item = data.first_sample()[0]
        else:
            with order_kept(data):
                item = next(iter(data.batches(1)))
    finally:
        RngState().load_state_dict(rng)
    if isinstance(item, dict):  # the keys Task.split reads
        item = (None, item.get("labels", item.get("y", item.get("target"))))
    if isinstance(item, (tuple, list)) and len(item) >= 2 and item[-1] is not None:
        target = torch.as_tensor(item[-1])
        return target.unsqueeze(0) if from_dataset else target  # (N, ...), like the others
    return None
