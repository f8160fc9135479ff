"""The health guards' cost: training throughput with the guards on (the default) as a ratio to
the same run with them off, in one process, interleaved, medians of repeats.

"Off" means health.skip_nonfinite = false, health.rollback_after = 0 and health.checks = false.
Run: .venv/bin/python bench/health_overhead.py [--epochs 5] [--repeats 5]
The model and data are the default recipe's (64-channel 1-D CNN on MNIST-1D, batch 100, AdamW).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import surefit as sf
from surefit.recipes import mnist1d

OFF = dict(skip_nonfinite=False, rollback_after=0, checks=False)


def one(data, epochs: int, guards: bool) -> float:
    torch.manual_seed(0)
    model = mnist1d.cnn(64)
    t0 = time.perf_counter()
    r = sf.fit(model, data["train"], val=0.1, epochs=epochs, lr=1e-2, batch_size=100,
               progress="off", device="cpu", **({} if guards else OFF))  # fmt: skip
    return r.steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = mnist1d.load()
    one(data, 1, True)  # warm-up: imports, allocator
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.repeats):
        for mode in rates:
            rates[mode].append(one(data, args.epochs, mode == "on"))
    base = statistics.median(rates["off"])
    print(f"| health guards | steps/s (median of {args.repeats}) | ratio to off |")
    print("|---|---|---|")
    for mode, values in rates.items():
        med = statistics.median(values)
        print(f"| {mode} | {med:.1f} | {med / base:.3f} |")


if __name__ == "__main__":
    main()
