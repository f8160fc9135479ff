"""MNIST-1D (Greydanus & Kobak, arXiv:2011.14439): data generated offline, and its models.

The data comes from ``mnist1d.data.make_dataset(get_dataset_args())`` — pure numpy, seeded, no
network (``get_dataset`` would download) — and is cached as an npz in the user cache folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def cache_dir() -> Path:
    """``$SUREFIT_CACHE``, else ``$XDG_CACHE_HOME/surefit``, else ``~/.cache/surefit``."""
    if os.environ.get("SUREFIT_CACHE"):
        return Path(os.environ["SUREFIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "surefit"


def cache_name(num_samples: int = 5000, seed: int = 42) -> str:
    """File name of a generated data set in the cache: a hash of its generation arguments."""
    key = json.dumps({"num_samples": num_samples, "seed": seed}, sort_keys=True)
    return f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


def load(num_samples: int = 5000, seed: int = 42, cache: str = "") -> dict[str, Any]:
    """Train (4,000) and test (1,000) arrays of the default MNIST-1D, as float32 / int64."""
    from ..checkpoint import atomic_write
    from . import check_arg, whole

    # the generator makes num_samples // 10 of each digit and keeps 20 % for the test split
    need, fix = "is too few for MNIST-1D's 10 classes", "give at least 100 (the paper's has 5000)"
    check_arg(whole(num_samples, 100), "num_samples", num_samples, need, fix)

    path = (Path(cache) if cache else cache_dir()) / cache_name(num_samples, seed)
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        d = make_dataset(args)
        buf = io.BytesIO()
        np.savez(
            buf,
            x_train=d["x"].astype(np.float32),
            y_train=d["y"].astype(np.int64),
            x_test=d["x_test"].astype(np.float32),
            y_test=d["y_test"].astype(np.int64),
        )
        atomic_write(path, lambda f: f.write(buf.getvalue()))
    with np.load(path) as z:
        arrays = {k: torch.from_numpy(z[k]) for k in z.files}
    return {
        "train": (arrays["x_train"], arrays["y_train"]),
        "test": (arrays["x_test"], arrays["y_test"]),
    }


class ConvNet(nn.Module):
    """The MNIST-1D paper's 1-D CNN: three strided convolutions and a linear head."""

    def __init__(self, channels: int = 25, length: int = 40, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, length)).numel()
        self.head = nn.Linear(flat, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


def cnn(channels: int = 64, classes: int = 10) -> nn.Module:
    return ConvNet(channels=channels, classes=classes)


def mlp(hidden: int = 100, classes: int = 10, dropout: float = 0.0) -> nn.Module:
    """The paper's MLP: 40 -> hidden -> hidden -> classes (with dropout after each ReLU)."""
    return nn.Sequential(
        nn.Linear(40, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, classes),
    )


class GRUNet(nn.Module):
    """The MNIST-1D paper's GRU: a bidirectional GRU over the 40 points, every state to a head."""

    def __init__(self, hidden: int = 6, length: int = 40, classes: int = 10) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden * length, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(x.unsqueeze(-1))
        return self.head(states.flatten(1))


def gru(hidden: int = 6, classes: int = 10) -> nn.Module:
    return GRUNet(hidden=hidden, classes=classes)
