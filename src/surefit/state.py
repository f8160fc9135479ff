"""The Stateful protocol, run counters, seeding and RNG state capture."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Stateful(Protocol):
    """Anything a checkpoint holds: it can give and take back its state."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class Counters:
    """Where the run is: each count names its unit."""

    epoch: int = 0  # epochs finished
    optimizer_step: int = 0  # optimizer steps taken, all epochs (skipped non-finite ones included)
    batch_in_epoch: int = 0  # micro-batches consumed in the current epoch
    micro_batch: int = 0  # forward/backward passes, all epochs
    samples: int = 0  # training samples seen, all epochs

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def derive_seed(*coords: int) -> int:
    """A 63-bit seed that is a pure function of integer coordinates (seed, epoch, ...)."""
    digest = hashlib.sha256(",".join(str(int(c)) for c in coords).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def wide(device: torch.device) -> torch.dtype:
    """The dtype sums of losses and counts are kept in: float64, but float32 on Apple's MPS,
    which has no float64 (a CUDA or CPU run keeps every bit it had)."""
    return torch.float32 if device.type == "mps" else torch.float64


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) from one integer."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Torch's deterministic algorithms, and cudnn's flags, on or off."""
    import os

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False if on else torch.backends.cudnn.benchmark


@contextlib.contextmanager
def settings_kept() -> Iterator[None]:
    """Put back torch's deterministic-algorithms switch and cudnn's flags after the block (a
    run with ``deterministic = true`` sets them for itself, not for the process after it)."""
    kept = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(kept[0], warn_only=kept[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = kept[2:]


@contextlib.contextmanager
def modes_kept(net: torch.nn.Module, training: bool | None = None) -> Iterator[None]:
    """``net`` in train (``training=True``) or eval mode for the block (None: as it is), then
    every module back in the mode it had: a batch norm the user froze with ``.eval()`` inside a
    training model stays frozen after an evaluation or a check."""
    modes = [(m, m.training) for m in net.modules()]
    if training is not None:
        net.train(training)
    try:
        yield
    finally:
        for module, mode in modes:  # parents first: each module's own call is its last
            module.train(mode)


class RngState:
    """The process RNGs (python, numpy, torch CPU and CUDA) as checkpointable state.

    Saved as tensors and plain values so that ``torch.load(weights_only=True)`` reads them. The
    Python generator's 625 words are one int64 tensor: ``torch.save`` spends about 0.6 us on
    every Python object it pickles (0.41 ms for the words as a list, 0.13 ms as a tensor).
    """

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        version, words, gauss = random.getstate()
        state: dict[str, Any] = {
            "python": torch.tensor(words, dtype=torch.int64),
            "python_gauss": gauss,
            "python_version": version,
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "numpy_gauss": [int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        py = state["python"]
        if isinstance(py, torch.Tensor):
            words = tuple(py.tolist())
            random.setstate((state["python_version"], words, state.get("python_gauss")))
        else:  # older checkpoints: a list of the words, then the gauss value
            random.setstate((state["python_version"], tuple(py[:-1]), py[-1]))
        has_gauss, gauss = state["numpy_gauss"]
        keys = state["numpy_keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, state["numpy_pos"], int(has_gauss), gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
