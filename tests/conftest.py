"""Shared test set-up: one torch thread, a private cache, and tiny models and data."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from surefit.callbacks import Callback

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def shared_data(name: str) -> Path | None:
    """A file of the shared data folder beside the project, when present."""
    for base in (ROOT.parent / "shared" / "data", ROOT / "shared" / "data"):
        if (base / name).is_file():
            return base / name
    return None


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path_factory.getbasetemp() / "cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("SUREFIT_CACHE", str(cache))


@pytest.fixture
def mnist1d_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default MNIST-1D in the test cache: copied from shared data, or generated offline."""
    from surefit.recipes import mnist1d

    cache = tmp_path_factory.getbasetemp() / "cache"
    cache.mkdir(exist_ok=True)
    src = shared_data("mnist1d.npz")
    target = cache / mnist1d.cache_name()
    if src is not None and not target.exists():
        shutil.copyfile(src, target)
    return cache


def make_classification(n: int = 256, features: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    y = (x @ w).argmax(1)
    return x, y


class Samples(torch.utils.data.Dataset):
    """A map-style Dataset over tensors that is not a plain TensorDataset, so that it takes
    surefit's DataLoader path (a TensorDataset takes the in-memory one)."""

    def __init__(self, *columns: torch.Tensor) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(c[i] for c in self.columns)


def mlp(features: int = 8, out: int = 3, hidden: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, out)
    )


class Mul(torch.nn.Module):
    """Multiplies by ``mult`` in training mode: a switch for loss spikes (SpikeAt)."""

    def __init__(self) -> None:
        super().__init__()
        self.mult = 1.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.mult if self.training else h


class SpikeAt(Callback):
    """A callback that blows up the outputs through ``mul`` (a loss spike) at the given optimizer
    steps, whatever the segment of the run."""

    def __init__(self, mul: Mul, steps: set[int]) -> None:
        self.mul, self.steps = mul, steps

    def on_step_end(self, run: Any) -> None:
        self.mul.mult = 300.0 if run.optimizer_step + 1 in self.steps else 1.0
