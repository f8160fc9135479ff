"""Small tabular data sets bundled with scikit-learn, and an MLP for them.

``load_breast_cancer`` (binary), ``load_digits`` (10 classes) and ``load_diabetes`` (regression)
read files shipped inside scikit-learn, so they work offline. The split is seeded and stratified
for classes; features are standardised with statistics of the training split only (and so is the
regression target), so nothing about validation or test leaks into training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from . import check_arg

DATASETS = {
    "breast_cancer": ("load_breast_cancer", True),  # (scikit-learn loader, classification?)
    "digits": ("load_digits", True),
    "diabetes": ("load_diabetes", False),
}


def _sklearn() -> Any:
    try:
        import sklearn.datasets
        import sklearn.model_selection
        import sklearn.preprocessing
    except ImportError:
        raise ConfigError(
            "the tabular recipes need scikit-learn, which is not installed",
            where="data.name",
            fix="pip install 'surefit[tabular]'",
        ) from None
    return sklearn


def arrays(dataset: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(X, y, is_classification) of a bundled data set."""
    if dataset not in DATASETS:
        raise ConfigError(
            f"unknown tabular data set '{dataset}'",
            where="data.args.dataset",
            fix=f"choose one of: {', '.join(DATASETS)}",
        )
    loader, classes = DATASETS[dataset]
    x, y = getattr(_sklearn().datasets, loader)(return_X_y=True)
    return x, y, classes


def splits(
    dataset: str, test_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Seeded train/val/test numpy splits (stratified for classes), before any scaling."""
    for key, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
        check_arg(ok, key, value, "must lie between 0 and 1", "a share of the samples, e.g. 0.2")
    sk = _sklearn()
    x, y, classes = arrays(dataset)

    def split(x: np.ndarray, y: np.ndarray, share: float) -> list[np.ndarray]:
        try:
            return sk.model_selection.train_test_split(
                x, y, test_size=share, random_state=seed, stratify=y if classes else None
            )
        except ValueError as exc:  # too few samples of a class for a stratified split
            raise ConfigError(
                f"cannot split {dataset} with test_fraction={test_fraction}, "
                f"val_fraction={val_fraction}: {exc}",
                where="data.args",
                fix="keep each split a fair share of the samples, e.g. 0.2 each",
            ) from None

    x_rest, x_test, y_rest, y_test = split(x, y, test_fraction)
    x_train, x_val, y_train, y_val = split(x_rest, y_rest, val_fraction)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def load(
    dataset: str = "breast_cancer",
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """Standardised float32 features; int64 classes, or a float32 target standardised on train."""
    parts = splits(dataset, test_fraction, val_fraction, seed)
    classes = DATASETS[dataset][1]
    scaler = _sklearn().preprocessing.StandardScaler().fit(parts["train"][0])
    y_mean, y_std = parts["train"][1].mean(), parts["train"][1].std()
    out = {}
    for name, (x, y) in parts.items():
        xt = torch.from_numpy(scaler.transform(x).astype(np.float32))
        if classes:
            yt = torch.from_numpy(y.astype(np.int64))
        else:
            yt = torch.from_numpy(((y - y_mean) / y_std).astype(np.float32))
        out[name] = (xt, yt)
    return out


def mlp(
    features: int, outputs: int, hidden: int = 64, layers: int = 2, dropout: float = 0.1
) -> nn.Module:
    """``layers`` hidden ReLU layers with dropout; one output is returned as shape (batch,)."""
    mods: list[nn.Module] = []
    width = features
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    mods.append(nn.Linear(width, outputs))
    if outputs == 1:
        mods.append(nn.Flatten(0))
    return nn.Sequential(*mods)
