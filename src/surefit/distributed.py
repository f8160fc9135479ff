"""torch.distributed facts the rest of the library asks for, in one place.

A single process needs no process group; these helpers answer for it without one.
"""

from __future__ import annotations

import os

import torch


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    """Only rank zero writes logs, plots and single-file checkpoints."""
    return rank() == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA (this rank's local device), then MPS, then CPU."""
    from .errors import ConfigError

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"unknown device '{name}'",
            where="train.device",
            fix="use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'",
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' asked for, but CUDA is not available",
            where="train.device",
            fix="use device='auto' or 'cpu'",
        )
    return device
