"""The default recipe (mnist1d-cnn) against (a), the best hand-written loop, on the same schedule:
wall time of the whole run (model, data, training, per-epoch evaluation, test) and test accuracy."""

from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F


def _recipe(epochs: int, run_dir: str, auto_threads: bool = False) -> Any:
    """The default recipe as shipped, for ``epochs``, on the bench's thread count (as (a)), or
    with its own choice (``train.threads = 0``) when ``auto_threads``."""
    from surefit import config, recipes

    _, text = recipes.source(recipes.DEFAULT)
    cfg = config.from_dict(config.parse_toml(text, where="recipe"))
    threads = 0 if auto_threads else torch.get_num_threads()
    return cfg.replace(train={"epochs": epochs, "run_dir": run_dir, "threads": threads})


def surefit_run(epochs: int, auto_threads: bool = False) -> dict[str, Any]:
    from surefit import recipes

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _recipe(epochs, f"{tmp}/run", auto_threads)
        t0 = time.perf_counter()
        r = recipes.run(cfg)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "test_accuracy": r.test_metrics["test_accuracy"]}


def _evaluate(model: Any, x: Any, y: Any, bs: int = 400) -> tuple[float, float]:
    model.eval()
    loss, hits = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)
    with torch.inference_mode():
        for i in range(0, len(x), bs):
            out = model(x[i : i + bs])
            loss += F.cross_entropy(out, y[i : i + bs], reduction="sum").double()
            hits += (out.argmax(1) == y[i : i + bs]).sum()
    model.train()
    both = torch.stack([loss / len(x), hits.double() / len(x)]).tolist()
    return both[0], both[1]


def hand_run(epochs: int) -> dict[str, Any]:
    """(a): the recipe's schedule written by hand; surefit's data split for equal data."""
    from surefit.data import TensorData
    from surefit.recipes import mnist1d
    from surefit.splits import split_validation

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = mnist1d.cnn(64)
    data = mnist1d.load()
    train, val = split_validation(TensorData(data["train"], "train"), 0.1, 0, stratify=True)
    (x, y), (xv, yv) = train.tensors, val.tensors
    xt, yt = data["test"]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-2)
    bs, n = 100, len(x)
    total = epochs * math.ceil(n / bs)
    warm = round(0.05 * total)

    def shape(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm - 1))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    params = list(model.parameters())
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, bs):
            idx = order[i : i + bs]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        _evaluate(model, xv, yv)
    _, acc = _evaluate(model, xt, yt)
    return {"seconds": time.perf_counter() - t0, "test_accuracy": acc}


def run_accuracy(who: str, epochs: int) -> dict[str, Any]:
    import os

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if who == "hand":
        return hand_run(epochs)
    return surefit_run(epochs, auto_threads=who == "surefit-auto")
