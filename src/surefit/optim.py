"""Optimizer from a spec: parameter groups without decay on biases, norms and embeddings,
and per-module learning rates."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import OptimConfig
from .errors import ConfigError

_NO_DECAY_MODULES = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def _no_decay_ids(model: nn.Module) -> set[int]:
    """Parameters that weight decay should not shrink: biases, norm scales, embeddings. By
    identity: a weight tied between an embedding and a head is spared through either owner,
    whichever the model registers first."""
    ids = set()
    rms = getattr(nn, "RMSNorm", None)
    spared = _NO_DECAY_MODULES + ((rms,) if rms is not None else ())
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if isinstance(module, spared) or p.ndim <= 1:
                ids.add(id(p))
    return ids


def _group_lr(names: list[str], cfg: OptimConfig) -> float:
    """The learning rate of the longest ``lr_groups`` prefix that names this parameter (by any
    of its names, where it is shared)."""
    best, lr = -1, cfg.lr
    for prefix, group_lr in cfg.lr_groups.items():
        named = any(n == prefix or n.startswith(prefix + ".") for n in names)
        if named and len(prefix) > best:
            best, lr = len(prefix), float(group_lr)
    return lr


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Group trainable parameters by (learning rate, decays or not)."""
    no_decay = set() if cfg.decay_all else _no_decay_ids(model)
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    every = [n for names in names_of.values() for n in names]
    for prefix in cfg.lr_groups:
        if not any(n == prefix or n.startswith(prefix + ".") for n in every):
            raise ConfigError(
                f"optim.lr_groups prefix '{prefix}' names no parameter of the model",
                where=f"optim.lr_groups.{prefix}",
                fix="use a module name from model.named_modules(), e.g. 'backbone' or 'head'",
            )
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decays = id(p) not in no_decay
        lr = _group_lr(names_of[id(p)], cfg)
        key = (lr, decays)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr,
                "weight_decay": cfg.weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    if not groups:
        raise ConfigError(
            "the model has no trainable parameters",
            where="model",
            fix="check requires_grad on the parameters you want to train",
        )
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """An optimizer named by ``cfg.name`` over grouped parameters."""
    groups = param_groups(model, cfg)
    for g in groups:
        g.pop("names")
    sparse = sparse_gradient_modules(model)
    if sparse and cfg.name not in _SPARSE_OK:
        raise ConfigError(
            f"optimizer '{cfg.name}' takes no sparse gradients, which {sparse[0]} gives "
            "(an nn.Embedding or nn.EmbeddingBag made with sparse=True)",
            where="optim.name",
            fix=f"use optim.name = 'sgd' or 'adagrad', or make {sparse[0]} with sparse=False",
        )
    params = [p for g in groups for p in g["params"]]
    impl = implementation(cfg.name, params, cfg.implementation, sparse=bool(sparse))
    betas = tuple(cfg.betas)
    o = torch.optim
    name = cfg.name
    if name == "sgd":
        return o.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **impl)
    if name == "adam":
        return o.Adam(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **impl)
    if name == "adamw":
        return o.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.eps, **impl)
    if name == "radam":
        return o.RAdam(
            groups,
            lr=cfg.lr,
            betas=betas,
            eps=cfg.eps,
            decoupled_weight_decay=True,
            **_no_fused(impl, name),
        )
    if name == "rmsprop":
        return o.RMSprop(
            groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps, **_no_fused(impl, name)
        )
    if name == "adagrad":
        return o.Adagrad(groups, lr=cfg.lr, eps=cfg.eps, **impl)
    raise ConfigError(f"unknown optimizer '{name}'", where="optim.name", fix="see OPTIMIZERS")


# torch optimizers with a fused kernel, and the device types it runs on (Adagrad's is CPU-only)
_FUSED = {"sgd": None, "adam": None, "adamw": None, "adagrad": ("cpu",)}


_SPARSE_OK = ("sgd", "adagrad")  # the optimizers here that step sparse gradients (not fused)


def sparse_gradient_modules(model: nn.Module) -> list[str]:
    """The modules whose weights get sparse gradients (``sparse=True`` embeddings), by name."""
    return [
        f"module '{name}'"
        for name, m in model.named_modules()
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and m.weight.requires_grad
    ]


def implementation(
    name: str, params: list[torch.Tensor], requested: str = "auto", sparse: bool = False
) -> dict:
    """The optimizer constructor's ``fused``/``foreach`` keywords for ``requested``.

    ``auto`` picks the fused kernel (one kernel for all parameters instead of a Python loop; on
    CPU, AdamW steps a 0.1 M-parameter MLP about 4x faster) where torch has one for this
    optimizer, every parameter is a floating-point tensor on a device it supports and no
    gradient is sparse (a ``sparse=True`` embedding: no fused kernel takes one), and
    otherwise leaves the choice to torch (foreach on CUDA, a for-loop on CPU).
    """
    if requested == "fused" and sparse:
        raise ConfigError(
            "torch's fused optimizers take no sparse gradients (a sparse=True embedding)",
            where="optim.implementation",
            fix="use 'auto', 'foreach' or 'for_loop'",
        )
    if requested == "fused":
        return {"fused": True}
    if requested == "foreach":
        return {"foreach": True}
    if requested == "for_loop":
        return {"foreach": False}
    if name in _FUSED and params and not sparse and _fusable(params, _FUSED[name]):
        return {"fused": True}
    return {}


def _fusable(params: list[torch.Tensor], only: tuple[str, ...] | None) -> bool:
    try:
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        supported = only or tuple(_get_fused_kernels_supported_devices())
    except ImportError:  # a private helper: fall back to the devices torch has long supported
        supported = only or ("cpu", "cuda")
    devices = {p.device for p in params}
    return (
        len(devices) == 1
        and next(iter(devices)).type in supported
        and all(
            p.is_floating_point() and not p.is_sparse and not nn.parameter.is_lazy(p)
            for p in params
        )
        and all(type(p.data) is torch.Tensor for p in params)  # sharded (FSDP) ones: no kernel
    )


def _no_fused(impl: dict[str, Any], name: str) -> dict[str, Any]:
    if impl.get("fused"):
        raise ConfigError(
            f"torch has no fused '{name}'",
            where="optim.implementation",
            fix="use 'auto' or 'foreach'",
        )
    return impl


def params_in_model_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[Any]:
    """The optimizer's parameters in the model's order, so the global norm sums as users' do."""
    in_opt = {id(p): p for g in optimizer.param_groups for p in g["params"]}
    ordered = [p for p in model.parameters() if id(p) in in_opt]
    seen = {id(p) for p in ordered}
    return ordered + [p for i, p in in_opt.items() if i not in seen]


# recipe keys a resumed run may change: each sets the param-group entry of its name
RESUMABLE = ("weight_decay", "momentum", "nesterov", "betas", "eps")


def apply_changes(
    optimizer: torch.optim.Optimizer, model: nn.Module, cfg: OptimConfig, changed: list[str]
) -> None:
    """Set the options a resumed run changed (``optim.KEY`` in ``changed``) in the param groups
    the checkpoint loaded, which hold the old ones: each group takes the value a fresh build of
    this config gives it (weight decay only where the group decays)."""
    names = [k.partition(".")[2] for k in changed if k.startswith("optim.")]
    names = [n for n in names if n in RESUMABLE]
    if not names:
        return
    fresh = build_optimizer(model, cfg)
    for group, built in zip(optimizer.param_groups, fresh.param_groups, strict=True):
        for name in names:
            if name in group and name in built:
                group[name] = built[name]
        if "max_momentum" in group and ({"momentum", "betas"} & set(names)):
            # onecycle cycles the momentum between these: around the new value from now on
            m = group["momentum"] if "momentum" in built else group["betas"][0]
            dip = group["max_momentum"] - group["base_momentum"]
            group["max_momentum"], group["base_momentum"] = m, max(m - dip, 0.0)
