"""Random Dataset transforms that resume exactly: each sample draws from the global RNGs seeded
by (seed, epoch, index) just before it loads.

A transform that draws from torch's CPU generator, python's ``random`` or numpy's legacy RNG
(torchvision's random flips and crops, albumentations) otherwise takes its numbers from a running
stream: the main process's (shared with the model's dropout) or a DataLoader worker's, seeded
once when the iterator starts. Either way a sample's augmentation depends on what was drawn
before it, so a resumed run, or one with another worker count, augments differently. torch's
DataLoader seeds workers, not samples, and no data library seeds map-style Datasets per sample:
hence these few lines. The seeding is switched on only for a Dataset whose first sample draws
from those RNGs (a probe at set-up), and the main process's RNG states are put back after every
batch, so loading data changes nothing the model draws.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .state import derive_seed


def rng_state() -> tuple[Any, Any, torch.Tensor]:
    """The global python, numpy and torch (CPU) RNG states, as the libraries give them (state's
    RngState is their checkpoint form, converted to tensors: too dear to take at every batch)."""
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def set_rng_state(state: tuple[Any, Any, torch.Tensor]) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


def draws(load: Any) -> tuple[Any, bool]:
    """``load()``'s result, and whether it advanced a global RNG (the states are put back)."""
    before = rng_state()
    try:
        item = load()
    finally:
        after = rng_state()
        set_rng_state(before)
    moved = (
        before[0] != after[0]
        or not np.array_equal(before[1][1], after[1][1])
        or before[1][2] != after[1][2]
        or not torch.equal(before[2], after[2])
    )
    return item, moved


def seed_sample(seed: int, epoch: int, index: int) -> None:
    """Seed the global RNGs for one sample of one epoch (torch's CPU generator directly:
    ``torch.manual_seed`` also visits every accelerator, 100x slower)."""
    s = derive_seed(seed, epoch, index)
    torch.default_generator.manual_seed(s)
    random.seed(s)
    np.random.seed(s % (1 << 32))


class SeededSamples(Dataset):
    """``dataset`` read by keys ``(epoch, index)``: the global RNGs seeded for each sample first,
    in whichever process loads it."""

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed_sample(self.seed, epoch, index)
        return self.dataset[index]


def keeping_rng(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches``, with the global RNG states put back after each one is made (samples loaded
    in this process reseed them)."""
    it = iter(batches)
    while True:
        saved = rng_state()
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            set_rng_state(saved)
        yield batch
