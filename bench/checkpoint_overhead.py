"""Training throughput with checkpoints (sync and async), as a ratio to the same run writing the
same run directory (logs, metrics) with no periodic checkpoint, in one process, interleaved,
medians of repeats.

Run: .venv/bin/python bench/checkpoint_overhead.py [--epochs 30] [--repeats 3] [--every 50]
The model and data are the default recipe's (64-channel 1-D CNN on MNIST-1D, batch 100).
Variants:
- none: no periodic checkpoint (only the one every run writes when it ends);
- every N: a rolling checkpoint every N optimizer steps, nothing else;
- every epoch end + best: a checkpoint at each epoch's end (checkpoint.max_overhead = 0), best.pt
  on each improvement;
- defaults: epoch-end checkpoints paced by their cost (max_overhead = 0.01), best.pt on each
  improvement (with the rolling checkpoint of its step).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import surefit as sf
from surefit.recipes import mnist1d

NO_PERIODIC = dict(at_epoch_end=False, save_best=False, checkpoint_every=0)


def one(data, epochs: int, every: int, mode: str, policy: str) -> float:
    torch.manual_seed(0)
    model = mnist1d.cnn(64)
    if policy == "none":
        kw = dict(NO_PERIODIC)
    elif policy == "every":
        kw = dict(NO_PERIODIC, checkpoint_every=every)
    elif policy == "epochs":
        kw = dict(max_overhead=0)
    else:
        kw = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = sf.fit(model, data["train"], val=0.1, epochs=epochs, lr=1e-2, batch_size=100,
                   progress="off", device="cpu", run_dir=f"{tmp}/run",
                   async_save=mode == "async", **kw)  # fmt: skip
        return r.steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args()
    data = mnist1d.load()
    one(data, 1, args.every, "sync", "none")  # warm-up: imports, allocator
    variants = [("sync", "none")] + [
        (mode, policy) for policy in ("every", "epochs", "defaults") for mode in ("sync", "async")
    ]
    rates: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            rates[v].append(one(data, args.epochs, args.every, *v))
    base = statistics.median(rates[("sync", "none")])
    steps = args.epochs * 36
    print(f"{args.epochs} epochs = {steps} optimizer steps per run.\n")
    print(f"| checkpoints | steps/s (median of {args.repeats}) | ratio to none | "
          "to none, median of the repeats' ratios |")  # fmt: skip
    print("|---|---|---|---|")
    names = {"none": "none", "every": f"every {args.every} steps",
             "epochs": "every epoch end + best",
             "defaults": "defaults (paced epoch ends + best)"}  # fmt: skip
    for (mode, policy), values in rates.items():
        med = statistics.median(values)
        label = names[policy] if policy == "none" else f"{mode}, {names[policy]}"
        # a repeat's runs follow each other: its ratio is less exposed to the machine's slow
        # minutes than the ratio of the medians
        paired = statistics.median(
            v / n for v, n in zip(values, rates[("sync", "none")], strict=True)
        )
        print(f"| {label} | {med:.1f} | {med / base:.3f} | {paired:.3f} |")


if __name__ == "__main__":
    main()
