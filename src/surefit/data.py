"""Turning user data into device batches, with the data order a function of coordinates.

Three paths:

* in-memory tensors (tuples of tensors or numpy arrays): one index gather per batch on whole
  tensors, no per-sample ``__getitem__`` and no collate;
* a ``Dataset``: a ``DataLoader`` over our own seeded sampler, with tuned defaults;
* a ``DataLoader``: iterated exactly as given.

The training order of an epoch is ``epoch_order(n, seed, epoch, rank, world_size)``, so resuming at
batch k skips k batches of *indices* and loads nothing it does not use.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    Sampler,
    TensorDataset,
)

from .distributed import shard_coords
from .errors import DataError
from .seeding import SeededSamples, draws, keeping_rng
from .state import derive_seed

Batch = tuple


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (host metadata, no sync)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size_of(batch[0])
    if isinstance(batch, Mapping) and batch:
        return batch_size_of(next(iter(batch.values())))
    return 1


def epoch_order(
    n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
) -> torch.Tensor:
    """The sample indices one rank visits in one epoch: a pure function of its arguments.

    With several ranks, the permutation's last ``n % world_size`` samples sit this epoch out, so
    that every rank takes the same number of steps (a short rank would hang the others in a
    collective); rank r takes every world_size-th of the rest, from position r. Which samples sit
    out changes with the epoch's permutation.
    """
    if shuffle:
        gen = torch.Generator().manual_seed(derive_seed(seed, epoch))
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    return order[: n - n % world_size][rank::world_size] if world_size > 1 else order


def eval_shard(n: int, batch_size: int, rank: int, world_size: int) -> list[torch.Tensor]:
    """One rank's evaluation batches: every sample once over all ranks, none dropped.

    Rank r takes samples r, r + world_size, ... (shares differ by at most one); every rank cuts
    its share into the same number of batches, since under FSDP each forward is a collective.
    """
    if n < world_size:
        raise DataError(
            f"an evaluation set of {n} samples cannot give each of {world_size} ranks one",
            where="val",
            fix="use a larger evaluation set, or fewer processes",
        )
    per_rank = max(1, batch_size // world_size)
    count = min(math.ceil(math.ceil(n / world_size) / per_rank), n // world_size)
    return list(torch.tensor_split(torch.arange(n)[rank::world_size], count))


def _train_count(n: int, batch_size: int, drop_last: bool) -> int:
    """Optimizer-side batches per epoch (per rank: the batch size is shared by the ranks)."""
    _, world = shard_coords()
    n -= n % world
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move tensors inside tuples, lists and dicts to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (tuple, list)):
        moved = [to_device(o, device, non_blocking) for o in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)  # namedtuple
    if isinstance(obj, Mapping):  # a dict, or a mapping such as transformers' BatchEncoding
        moved = {k: to_device(v, device, non_blocking) for k, v in obj.items()}
        if type(obj) is dict:
            return moved
        try:
            return type(obj)(moved)  # its own type: a step may read it by attribute
        except TypeError:  # one that cannot be built from a dict (defaultdict): a plain one
            return moved
    return obj


def _as_tensor(a: Any, where: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "biufc":  # strings, objects (a pandas column of mixed values)
            raise DataError(
                f"{where} holds a numpy array of {a.dtype} values, which is not numbers",
                where=where,
                fix="encode labels as class ids (e.g. np.unique(y, return_inverse=True)[1]) "
                "and columns as numbers before passing them",
            )
        t = torch.from_numpy(np.ascontiguousarray(a))
        # numpy defaults to float64 and int32/int64; models and losses want float32 and int64
        if t.is_floating_point() and t.dtype == torch.float64:
            t = t.float()
        elif not t.is_floating_point() and t.dtype not in (torch.bool, torch.uint8, torch.int64):
            t = t.long()
        return t
    raise DataError(
        f"expected a tensor or numpy array, got {type(a).__name__}",
        where=where,
        fix="pass (x, y) as torch tensors or numpy arrays, or a Dataset / DataLoader",
    )


class TensorData:
    """In-memory tensors batched by index gather; the fast path."""

    origin: torch.Tensor | None = None  # of a split: each row's index in the data as given

    def __init__(self, tensors: Sequence[Any], where: str) -> None:
        self.tensors = tuple(_as_tensor(t, f"{where}[{i}]") for i, t in enumerate(tensors))
        if not self.tensors:
            raise DataError(f"{where} holds no tensors", where=where, fix="pass (x, y)")
        lengths = [len(t) if t.dim() else 0 for t in self.tensors]
        if len(set(lengths)) > 1:
            raise DataError(
                f"{where} tensors have different lengths {lengths}",
                where=where,
                fix="inputs and targets must have one row per sample: check how they were built",
            )
        if lengths[0] == 0:
            raise DataError(
                f"{where} is empty (0 samples)", where=where, fix="pass a non-empty set"
            )
        self.num_samples = lengths[0]
        self.staged: torch.device | None = None  # CUDA device batches are copied to, if any

    def to(self, device: torch.device, on_device: str = "auto") -> TensorData:
        """Move the tensors to ``device``; on CUDA, when ``on_device`` says so (``off``, or
        ``auto`` with the data over half the free memory), keep them in pinned host memory and
        copy each batch ahead on a side stream instead (see ``prefetch_to``)."""
        self.staged = None
        if device.type == "cuda" and not _fits_on(device, self.tensors, on_device):
            self.tensors = tuple(t.cpu().pin_memory() for t in self.tensors)
            self.staged = device
            return self
        self.tensors = tuple(t.to(device) for t in self.tensors)
        return self

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return _train_count(self.num_samples, batch_size, drop_last)

    def batches(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = False,
        start_batch: int = 0,
        drop_last: bool = False,
        device: torch.device | None = None,
    ) -> Iterator[Batch]:
        """Yield batches of epoch ``epoch`` from batch ``start_batch`` on (this rank's share)."""
        host = self._batches(batch_size, epoch, seed, shuffle, start_batch, drop_last)
        return prefetch_to(host, self.staged) if self.staged is not None else host

    def _batches(
        self,
        batch_size: int,
        epoch: int,
        seed: int,
        shuffle: bool,
        start_batch: int,
        drop_last: bool,
    ) -> Iterator[Batch]:
        count = self.num_batches(batch_size, drop_last)
        rank, world = shard_coords()
        if not shuffle and world == 1:
            for b in range(start_batch, count):
                yield tuple(t[b * batch_size : (b + 1) * batch_size] for t in self.tensors)
            return
        dev = self.tensors[0].device
        if not shuffle:
            for idx in eval_shard(self.num_samples, batch_size, rank, world)[start_batch:]:
                yield tuple(t.index_select(0, idx.to(dev)) for t in self.tensors)
            return
        order = epoch_order(self.num_samples, seed, epoch, rank, world).to(dev)
        size = batch_size // world
        for b in range(start_batch, count):
            idx = order[b * size : (b + 1) * size]
            yield tuple([t.index_select(0, idx) for t in self.tensors])

    def sample(self, indices: torch.Tensor, device: torch.device) -> Batch:
        """The samples at ``indices`` as one batch (to re-examine a skipped window)."""
        idx = indices.to(self.tensors[0].device)
        return tuple(t.index_select(0, idx).to(device) for t in self.tensors)

    def window_indices(
        self, batch_size: int, epoch: int, seed: int, batch0: int, batches: int, drop_last: bool
    ) -> torch.Tensor:
        return _window(self, batch_size, epoch, seed, batch0, batches, drop_last)


def _fits_on(device: torch.device, tensors: Sequence[torch.Tensor], on_device: str) -> bool:
    """Whether in-memory data goes to the accelerator: ``on``, ``off``, or (``auto``) when
    it takes at most half of the device's free memory, leaving the rest to the model."""
    if on_device != "auto":
        return on_device == "on"
    size = sum(t.numel() * t.element_size() for t in tensors)
    free, _ = torch.cuda.mem_get_info(device)
    return size <= free // 2


def prefetch_to(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """``batches`` (host tensors) on ``device``: each is copied on a side stream while the step
    before it runs, and the step's stream waits for its copy only (an event per batch).

    Written here because torch's DataLoader prefetches worker output, not batches gathered from
    tensors already in memory; pinned staging and its lifetime are torch's caching host
    allocator's, and ``record_stream`` keeps the device memory until the step's stream is done.
    """
    stream = torch.cuda.Stream(device)

    def issue(batch: Batch) -> tuple[Batch, Any]:
        with torch.cuda.stream(stream):
            moved = tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
            done = torch.cuda.Event()
            done.record(stream)
        return moved, done

    def use(pair: tuple[Batch, Any]) -> Batch:
        batch, done = pair
        current = torch.cuda.current_stream(device)
        current.wait_event(done)
        for t in batch:
            t.record_stream(current)
        return batch

    pending = None
    for batch in batches:
        ready, pending = pending, issue(batch)  # the next copy starts before this step
        if ready is not None:
            yield use(ready)
    if pending is not None:
        yield use(pending)


def _window(
    data: Any, batch_size: int, epoch: int, seed: int, batch0: int, batches: int, drop_last: bool
) -> torch.Tensor:
    """Sample indices of ``batches`` shuffled batches from ``batch0`` of an epoch: the data order
    is a function of (seed, epoch), so a past window is found again without having kept it."""
    end = min((batch0 + batches) * batch_size, data.num_batches(batch_size, drop_last) * batch_size)
    return epoch_order(data.num_samples, seed, epoch)[batch0 * batch_size : end]


class EpochBatches(Sampler[list[int]]):
    """This rank's batches of sample indices for the epoch set last, from a start batch (resume)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        keyed: bool = False,
    ) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.start = 0, 0
        self.keyed = keyed  # yield (epoch, index) keys, for SeededSamples

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _batches(self) -> list[torch.Tensor]:
        rank, world = shard_coords()
        if not self.shuffle and world > 1:
            return eval_shard(self.n, self.batch_size, rank, world)
        order = epoch_order(self.n, self.seed, self.epoch, rank, world, shuffle=self.shuffle)
        size = self.batch_size // world
        chunks = list(torch.split(order, size))
        if self.drop_last and chunks and len(chunks[-1]) < size:
            chunks.pop()
        return chunks

    def __iter__(self) -> Iterator[list[Any]]:
        if self.keyed:
            e = self.epoch
            return iter([[(e, i) for i in c.tolist()] for c in self._batches()[self.start :]])
        return iter([c.tolist() for c in self._batches()[self.start :]])

    def __len__(self) -> int:
        return max(0, len(self._batches()) - self.start)


def _auto_workers(device: torch.device) -> int:
    # on a CPU-only run, workers compete with the compute threads for the same cores
    if device.type == "cpu":
        return 0
    from .perf import usable_cores  # (perf reads data's paths: imported when called)

    return max(0, min(4, usable_cores() - 1))  # the cores this process may use, one for the step


class DatasetData:
    """A map-style Dataset, loaded through a DataLoader over our seeded sampler."""

    origin: torch.Tensor | None = None  # of a split: each sample's index in the Dataset given

    def __init__(self, dataset: Dataset, where: str) -> None:
        try:
            self.num_samples = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(
                f"{where} Dataset has no len()",
                where=where,
                fix="give it __len__, or pass a DataLoader to iterate it as given",
            ) from None
        if self.num_samples == 0:
            raise DataError(
                f"{where} is empty (0 samples)", where=where, fix="pass a non-empty set"
            )
        self.dataset = dataset
        self._first: tuple[Any, bool] | None = None
        self._loaders: dict[tuple, tuple[DataLoader, EpochBatches]] = {}
        self.num_workers = -1
        # the DataLoader draws its workers' base seed at every new iterator: from this generator,
        # seeded per epoch, and not from the global RNG, whose stream a resumed run must continue
        # exactly (a model's dropout draws from it)
        self._generator = torch.Generator()

    def to(self, device: torch.device, on_device: str = "auto") -> DatasetData:
        return self  # batches are moved as they are made (pinned, non-blocking on CUDA)

    def first_sample(self) -> tuple[Any, bool]:
        """The first sample (loaded once: task inference reads it) and whether loading it drew
        from a global RNG, which switches on per-sample seeding for training (seeding.py)."""
        if self._first is None:
            self._first = draws(lambda: self.dataset[0])
        return self._first

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return _train_count(self.num_samples, batch_size, drop_last)

    def _loader(
        self, batch_size: int, seed: int, shuffle: bool, drop_last: bool, device: torch.device
    ) -> tuple[DataLoader, EpochBatches]:
        key = (batch_size, seed, shuffle, drop_last)
        if key not in self._loaders:
            # random transforms: seeded per sample, in training and evaluation alike (so that
            # neither depends on num_workers, nor draws from the process's RNGs)
            keyed = self.first_sample()[1]
            sampler = EpochBatches(self.num_samples, batch_size, seed, shuffle, drop_last, keyed)
            workers = self.num_workers if self.num_workers >= 0 else _auto_workers(device)
            loader = DataLoader(
                SeededSamples(self.dataset, seed) if keyed else self.dataset,
                batch_sampler=sampler,
                num_workers=workers,
                pin_memory=device.type == "cuda",
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
                generator=self._generator,
            )
            self._loaders[key] = (loader, sampler)
        return self._loaders[key]

    def batches(
        self,
        batch_size: int,
        *,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = False,
        start_batch: int = 0,
        drop_last: bool = False,
        device: torch.device | None = None,
    ) -> Iterator[Batch]:
        device = device or torch.device("cpu")
        loader, sampler = self._loader(batch_size, seed, shuffle, drop_last, device)
        sampler.set_epoch(epoch, start_batch)
        self._generator.manual_seed(derive_seed(seed, epoch, 1))
        in_here = sampler.keyed and loader.num_workers == 0  # samples reseed this process's RNGs
        for batch in keeping_rng(loader) if in_here else loader:
            yield _as_batch(to_device(batch, device, non_blocking=device.type == "cuda"))

    def close(self) -> None:
        """Stop the worker processes of the loaders made so far, which persist between epochs
        (torch ends them only when the loader is collected, and a reference cycle keeps it:
        they piled up over fits in one process). Its own ``_shutdown_workers`` is how torch's
        loader iterator ends them."""
        for loader, _ in self._loaders.values():
            shutdown = getattr(getattr(loader, "_iterator", None), "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
                loader._iterator = None
        self._loaders.clear()

    def sample(self, indices: torch.Tensor, device: torch.device) -> Batch:
        """The samples at ``indices`` as one batch (to re-examine a skipped window)."""
        from torch.utils.data import default_collate

        batch = default_collate([self.dataset[int(i)] for i in indices])
        return _as_batch(to_device(batch, device))

    def window_indices(
        self, batch_size: int, epoch: int, seed: int, batch0: int, batches: int, drop_last: bool
    ) -> torch.Tensor:
        return _window(self, batch_size, epoch, seed, batch0, batches, drop_last)


def close_loaders(*splits: Any) -> None:
    """Stop the worker processes that Dataset splits keep for their next epoch."""
    for d in splits:
        if isinstance(d, DatasetData):
            d.close()


def loader_workers(data: Any) -> int:
    """The worker processes ``data``'s DataLoader loads with (0: the main process, or none)."""
    if isinstance(data, DatasetData):
        return max((loader.num_workers for loader, _ in data._loaders.values()), default=0)
    return int(getattr(getattr(data, "loader", None), "num_workers", 0) or 0)


class LoaderData:
    """A user's DataLoader (or any re-iterable of batches), iterated exactly as given."""

    def __init__(self, loader: Any, where: str) -> None:
        self.loader = loader
        self.where = where
        self._epoch_start: dict[str, Any] | None = None  # RNG states the epoch's order came from
        self._resumed: dict[str, Any] | None = None  # the checkpoint's, for a mid-epoch resume
        try:
            self.num_samples = len(loader.dataset) if hasattr(loader, "dataset") else None
        except TypeError:
            self.num_samples = None

    def to(self, device: torch.device, on_device: str = "auto") -> LoaderData:
        return self  # batches are moved as they are made (non-blocking on CUDA)

    def generators(self) -> list[torch.Generator]:
        """The generators the loader draws its order and worker seeds from (its own, its
        sampler's), each once."""
        loader = self.loader
        sampler = getattr(loader, "sampler", None)
        inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        found = (getattr(o, "generator", None) for o in (loader, sampler, inner))
        return list({id(g): g for g in found if isinstance(g, torch.Generator)}.values())

    def num_batches(self, batch_size: int = 0, drop_last: bool = False) -> int | None:
        try:
            return len(self.loader)
        except TypeError:
            return None

    def batches(
        self,
        batch_size: int = 0,
        *,
        epoch: int = 0,
        seed: int = 0,
        shuffle: bool = False,
        start_batch: int = 0,
        drop_last: bool = False,
        device: torch.device | None = None,
    ) -> Iterator[Batch]:
        device = device or torch.device("cpu")
        sampler = getattr(self.loader, "sampler", None)
        batch_sampler = getattr(self.loader, "batch_sampler", None)
        parts = (sampler, batch_sampler, getattr(batch_sampler, "sampler", None))
        if shard_coords()[1] > 1 and not any(isinstance(o, DistributedSampler) for o in parts):
            raise DataError(
                f"{self.where} is a DataLoader without a DistributedSampler: every rank would "
                "load all of it",
                where=self.where,
                fix="pass the Dataset (surefit shards it), or build the DataLoader with "
                "sampler=DistributedSampler(dataset)",
            )
        for part in {id(o): o for o in parts if hasattr(o, "set_epoch")}.values():
            part.set_epoch(epoch)  # e.g. DistributedSampler, wherever the loader holds it
        empty = True
        for batch in self._started(epoch, start_batch):
            empty = False
            yield _as_batch(to_device(batch, device, non_blocking=device.type == "cuda"))
        if empty and start_batch == 0:
            raise DataError(
                f"{self.where} DataLoader yielded no batches",
                where=self.where,
                fix="check its dataset is not empty and drop_last is not dropping all",
            )

    def _started(self, epoch: int, skip: int) -> Iterator[Any]:
        """The epoch's iterator, past its first ``skip`` batches (a user's loader can only be
        skipped by loading). A loader draws its order (a RandomSampler's permutation, its
        workers' base seed) from torch's CPU RNG or its own generators when the epoch starts:
        their states then are kept (``state_dict``), and a run resumed mid-epoch makes its
        iterator and loads the skipped batches from those states, in a fork of the RNG, so that
        it visits the epoch's order and leaves the RNG state (dropout) as the checkpoint holds
        it. The run never stopped draws as a plain loop over the loader would."""
        gens = self.generators()
        saved = self._resumed if skip else None
        if saved is None or saved["epoch"] != epoch or len(saved["generators"]) != len(gens):
            self._epoch_start = {"epoch": epoch, "rng": torch.get_rng_state(),
                                 "generators": [g.get_state() for g in gens]}  # fmt: skip
            batches = iter(self.loader)  # an older checkpoint's resume: skipped by loading
            for _ in itertools.islice(batches, skip):
                pass
            return batches
        self._epoch_start = saved
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(saved["rng"])
            for g, state in zip(gens, saved["generators"], strict=True):
                g.set_state(state)
            batches = iter(self.loader)
            for _ in itertools.islice(batches, skip):
                pass
            return batches

    def state_dict(self) -> dict[str, Any]:
        """Where the current epoch's order came from (see ``_started``)."""
        return {"epoch_start": self._epoch_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resumed = state.get("epoch_start")


def _as_batch(batch: Any) -> Any:
    return tuple(batch) if isinstance(batch, list) else batch


def _is_batch(obj: Any) -> bool:
    """A dict, or a tuple or list of tensors or arrays (a batch, not a column of values)."""
    arrays = (torch.Tensor, np.ndarray)
    return isinstance(obj, dict) or (
        isinstance(obj, (tuple, list)) and bool(obj) and all(isinstance(v, arrays) for v in obj)
    )


def as_data(obj: Any, where: str) -> TensorData | DatasetData | LoaderData:
    """Wrap what a user passed as ``train``/``val``/``test``."""
    if isinstance(obj, list) and obj and all(_is_batch(b) for b in obj):
        return LoaderData(obj, where)  # a list of batches: re-iterable, taken as given
    if isinstance(obj, (tuple, list)):
        return TensorData(obj, where)
    if isinstance(obj, dict):
        raise DataError(
            f"{where} is a dict; surefit needs inputs and targets",
            where=where,
            fix=f"pass {where}=(x, y), a Dataset whose items are dicts (with a 'labels', 'y' or "
            "'target' key), or a DataLoader of such batches",
        )
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        raise DataError(
            f"{where} is a single array; surefit needs inputs and targets",
            where=where,
            fix=f"pass {where}=(x, y), or a Dataset that yields (x, y) pairs",
        )
    if isinstance(obj, IterableDataset):  # a stream: no index, so no order surefit can draw
        raise DataError(
            f"{where} is an IterableDataset ({type(obj).__name__}): its samples cannot be drawn "
            "by index",
            where=where,
            fix=f"pass {where}=DataLoader(dataset, batch_size=...), which surefit iterates as "
            "given (shuffle and shard it in the dataset)",
        )
    if isinstance(obj, DataLoader) or (
        hasattr(obj, "__iter__")
        and not isinstance(obj, Dataset)
        and not hasattr(obj, "__getitem__")
    ):
        return LoaderData(obj, where)
    if isinstance(obj, TensorDataset) and type(obj).__getitem__ is TensorDataset.__getitem__:
        # the same samples gathered by index, one call a batch instead of one a sample
        return TensorData(obj.tensors, where)
    if isinstance(obj, Dataset) or hasattr(obj, "__getitem__"):
        return DatasetData(obj, where)
    raise DataError(
        f"cannot use {type(obj).__name__} as {where} data",
        where=where,
        fix="pass (x, y) tensors or numpy arrays, a torch Dataset, or a DataLoader",
    )
