"""torch.distributed: the process group from the launcher's environment, DDP/FSDP wrapping,
gradient sync across accumulation windows, metric reduction, and rank-zero IO.

A single process needs no process group; every helper answers for it without one. Everything
distributed is PyTorch's own (``init_process_group``, ``DistributedDataParallel``, FSDP2's
``fully_shard``, ``torch.distributed.checkpoint``); this module only chooses and connects them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import RunConfig
from .errors import ConfigError
from .speed import compiled


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    if _initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def world_size() -> int:
    if _initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK, or Slurm's SLURM_LOCALID)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))


def is_rank_zero() -> bool:
    """Only rank zero writes logs, plots and single-file checkpoints."""
    return rank() == 0


def shard_coords() -> tuple[int, int]:
    """(rank, world size) of the process group the data is sharded over; (0, 1) without one."""
    if _initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA (this rank's local device), then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
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
    other = device.type not in ("cpu", "cuda")
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if other and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ConfigError(
            f"device '{name}' is not available on this machine",
            where="train.device",
            fix="use device='auto' (CUDA, then MPS, then CPU) or 'cpu'",
        )
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


# -- the process group -----------------------------------------------------------------------------
def launch_env() -> tuple[int, int] | None:
    """(rank, world size) a launcher gave this process, or None for a single process.

    torchrun (and ``surefit fit --nproc``) set RANK and WORLD_SIZE; under Slurm without torchrun,
    SLURM_PROCID and SLURM_NTASKS say the same, and MASTER_ADDR / MASTER_PORT must be exported.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        found = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        what = f"RANK and WORLD_SIZE={found[1]} are set"
        fix = ("launch with torchrun (or surefit fit --nproc N), which sets all four, or export "
               "MASTER_ADDR and MASTER_PORT of the rank-0 host")  # fmt: skip
    elif "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        found = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        what = f"a Slurm job step of {found[1]} tasks"
        fix = ("export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) and "
               "MASTER_PORT=29500 in the batch script, or launch with torchrun")  # fmt: skip
    else:
        return None
    if found[1] > 1 and not ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ):
        raise ConfigError(
            f"{what}, but MASTER_ADDR / MASTER_PORT are not set", where="environment", fix=fix
        )
    return found if found[1] > 1 else None


_joined: list[tuple[int, int]] = []  # the groups this process has joined, in order


@contextlib.contextmanager
def process_group(device: str, timeout_s: float) -> Iterator[None]:
    """Join the launcher's process group for the span of a run, and leave it after.

    gloo on CPU, nccl on CUDA. Nothing happens for a single process, or when the caller already
    joined a group (then the group stays the caller's). ``timeout_s`` bounds how long a collective
    waits for a rank that died, so a lost peer ends the job with an error instead of a hang.
    """
    env = launch_env()
    if env is None or _initialized():
        yield
        return
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    timeout = timedelta(seconds=timeout_s)
    store, _, _ = next(torch.distributed.rendezvous("env://", *env, timeout=timeout))
    # a fresh key prefix for each group this process joins: a second fit() in the same
    # processes must not read the first group's addresses, still in the launcher's store
    _joined.append(env)
    torch.distributed.init_process_group(
        "nccl" if dev.type == "cuda" else "gloo",
        store=torch.distributed.PrefixStore(f"surefit-{len(_joined)}", store),
        rank=env[0],
        world_size=env[1],
        timeout=timeout,
    )
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def leave(code: int) -> None:
    """End a launched rank's process with ``code`` once its run is over and its group left.

    The interpreter's own teardown of a gloo rank now and then aborts after everything is done
    ("terminate called without an active exception", a C++ thread of the backend destroyed while
    joinable), turning a finished run into a failed rank. A launched rank therefore flushes its
    output and leaves with ``os._exit``; a single process exits normally.
    """
    if launch_env() is None:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if _initialized():
        torch.distributed.barrier()


# -- wrapping --------------------------------------------------------------------------------------
def strategy(cfg: RunConfig) -> str:
    """The strategy in effect: "none" for a single process, else ddp or fsdp."""
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return "none"
    return "ddp" if cfg.distributed.strategy == "auto" else cfg.distributed.strategy


def _check(cfg: RunConfig) -> None:
    world = torch.distributed.get_world_size()
    if cfg.data.batch_size % world:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} does not split over {world} processes",
            where="data.batch_size",
            fix=f"use a multiple of {world}: the batch size is the global one, shared by ranks",
        )
    if cfg.checkpoint.every_minutes:
        raise ConfigError(
            "checkpoint.every_minutes is not supported with several processes (ranks would "
            "reach the minute at different steps)",
            where="checkpoint.every_minutes",
            fix="use checkpoint.every_steps",
        )
    if cfg.checkpoint.async_save:
        raise ConfigError(
            "async_save is not supported with several processes",
            where="checkpoint.async_save",
            fix="set checkpoint.async_save=false",
        )


def shard(model: nn.Module, cfg: RunConfig, dtype: torch.dtype | None) -> nn.Module:
    """Under fsdp, ``fully_shard`` each block, then the root, in place; before the optimizer.

    Blocks are the modules whose class name is in ``distributed.shard_modules``, else the entries
    of every ``nn.ModuleList`` (transformer blocks). ``dtype`` (bf16/fp16 runs) is the parameter
    dtype of the forward and backward; gradients are reduced in fp32.
    """
    if strategy(cfg) == "none":
        return model
    _check(cfg)
    if strategy(cfg) != "fsdp" or _is_sharded(model):
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    names = set(cfg.distributed.shard_modules)
    if names:
        blocks = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    else:
        lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
        blocks = [b for lst in lists for b in lst]
    taken: set[int] = set()
    outer = []
    for b in blocks:  # a block inside another block is sharded with it
        if id(b) not in taken:
            outer.append(b)
            taken.update(id(m) for m in b.modules())
    if names and not outer:
        raise ConfigError(
            f"no module of class {sorted(names)} in the model",
            where="distributed.shard_modules",
            fix="name the class of the model's blocks, e.g. ['Block'], or [] for ModuleLists",
        )
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    for b in outer:
        fully_shard(b, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap(model: nn.Module, cfg: RunConfig, device: torch.device) -> nn.Module:
    """What runs: the model under DDP (several processes), compiled when asked (eagerly, with a
    warning, where torch.compile cannot run: see ``speed.compile_problem``); FSDP shards in place
    (see ``shard``), so there the model itself runs."""
    net = model
    kind = strategy(cfg)
    if kind == "ddp":
        _check(cfg)
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    elif kind == "fsdp" and not _is_sharded(model):
        raise ConfigError(
            "strategy 'fsdp' needs the model sharded before its optimizer is built",
            where="distributed.strategy",
            fix="call surefit.distributed.shard(model, config, dtype) first, or use fit()",
        )
    return compiled(net, device) if cfg.train.compile else net


@contextlib.contextmanager
def grad_sync(net: nn.Module, sync: bool) -> Iterator[None]:
    """Reduce gradients across ranks only when ``sync`` (the window's last micro-batch).

    DDP: ``no_sync()``; FSDP2: ``set_requires_gradient_sync(False)``; one process: nothing.
    """
    inner = getattr(net, "_orig_mod", net)  # under torch.compile
    if sync:
        yield
    elif isinstance(inner, DistributedDataParallel):
        with inner.no_sync():
            yield
    elif hasattr(inner, "set_requires_gradient_sync"):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield


def no_grad(net: nn.Module) -> Any:
    """``inference_mode`` for evaluation, or ``no_grad`` under FSDP, whose gathered parameters
    are reused in training (an inference tensor cannot be updated outside inference mode)."""
    sharded = _is_sharded(getattr(net, "_orig_mod", net))
    return torch.no_grad() if sharded else torch.inference_mode()


def stop_together(
    reason: str | None, preempted: str | None, device: torch.device, time_up: str = ""
) -> tuple[str | None, str | None]:
    """With several processes, all stop at the step where any one stops (a signal or a time
    limit reaches ranks at different steps; one rank going on alone would hang in a collective).

    ``time_up``: the reason the time limit gives; a rank stopped by another rank's time limit
    takes that reason (the same run-wide limit), any other stop reads "another rank stopped".
    One 2-element all-reduce and host read per optimizer step, only with several processes.
    """
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return reason, preempted
    code = 0 if reason is None else 1 if time_up and reason == time_up else 2
    flags = torch.tensor([code, preempted is not None], dtype=torch.float32).to(device)
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    stop, signalled = flags.tolist()  # the intended sync of a multi-process step
    if stop and reason is None:
        reason = time_up if stop == 1 else "another rank stopped"
    if signalled and preempted is None:
        preempted = "another rank's signal"
    return reason, preempted


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (one 1-element all-reduce); one process: ``flag``."""
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())  # a host read at epoch ends only


# -- metrics ---------------------------------------------------------------------------------------
def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over all ranks (one all-reduce); one process: ``t`` itself."""
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return t
    t = t.clone()
    torch.distributed.all_reduce(t)
    return t


def reduce_eval(total: torch.Tensor, count: Any, metric_set: Any) -> tuple[torch.Tensor, Any]:
    """Sum an evaluation's loss total, its weight (samples, or the loss's own denominator: a
    number or a tensor) and metric states over all ranks.

    Sums of counts, never a mean of per-rank means, so an uneven split gives the exact global
    value. Metrics written here declare their summed fields in ``sum_states``; torchmetrics'
    metrics gather their own states across ranks when computed. One process: unchanged.
    """
    if not _initialized() or torch.distributed.get_world_size() == 1:
        return total, count
    weight = torch.as_tensor(count, dtype=total.dtype, device=total.device)
    packed = torch.stack([total, weight])
    torch.distributed.all_reduce(packed)
    for metric in getattr(metric_set, "metrics", {}).values():
        for name in getattr(metric, "sum_states", ()):
            value = getattr(metric, name)
            t = torch.as_tensor(value, device=total.device).clone()
            torch.distributed.all_reduce(t)
            setattr(metric, name, int(t.item()) if isinstance(value, int) else t)
    return packed[0], packed[1].item()  # the evaluation's intended sync


# -- checkpoints -----------------------------------------------------------------------------------
def model_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Model and optimizer state keyed by parameter name (sharded DTensors under FSDP), the form
    ``torch.distributed.checkpoint`` saves and reshards to any world size."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer)


def load_model_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, folder: Any
) -> None:
    """Load a ``torch.distributed.checkpoint`` folder into model and optimizer, resharding."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _dcp("load", model, optimizer, folder)
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )


def save_model_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, folder: Any
) -> None:
    """Every rank writes its own shards of model and optimizer into ``folder`` (collective)."""
    _dcp("save", model, optimizer, folder)


def _dcp(op: str, model: nn.Module, optimizer: torch.optim.Optimizer, folder: Any) -> Any:
    import warnings

    import torch.distributed.checkpoint as dcp

    msd, osd = model_optimizer_state(model, optimizer)
    state = {"model": msd, "optimizer": osd}
    with warnings.catch_warnings():  # DCP warns without a process group; one process means it
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        getattr(dcp, op)(state, checkpoint_id=str(folder), no_dist=not _initialized())
    return state
