"""surefit: a PyTorch training loop that is right by default and finishes what it starts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "EarlyStopping",
    "Callback",
    "FitResult",
    "RunConfig",
    "SurefitWarning",
    "__version__",
    "evaluate",
    "fit",
    "load_config",
    "load_weights",
    "lr_find",
]

from .errors import CheckpointError, ConfigError, DataError, SurefitWarning

# torch-heavy names load on first use, so `import surefit` for the CLI's help stays fast
_LAZY = {
    "fit": ("api", "fit"),
    "evaluate": ("api", "evaluate"),
    "FitResult": ("api", "FitResult"),
    "EarlyStopping": ("callbacks", "EarlyStopping"),
    "Callback": ("callbacks", "Callback"),
    "RunConfig": ("config", "RunConfig"),
    "load_config": ("config", "load"),
    "load_weights": ("checkpoint", "load_weights"),
    "lr_find": ("lrfind", "lr_find"),
}

if TYPE_CHECKING:
    from .api import FitResult, evaluate, fit
    from .callbacks import Callback, EarlyStopping
    from .checkpoint import load_weights
    from .config import RunConfig
    from .config import load as load_config
    from .lrfind import lr_find


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'surefit' has no attribute {name!r}")
