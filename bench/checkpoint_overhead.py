"""Training throughput with checkpoints every N optimizer steps (sync and async), as a ratio to the
same run without checkpoints, measured in one process, interleaved, medians of repeats.

Run: .venv/bin/python bench/checkpoint_overhead.py [--epochs 5] [--repeats 3] [--every 50]
The model and data are the default recipe's (64-channel 1-D CNN on MNIST-1D, batch 100).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import surefit as sf
from surefit.recipes import mnist1d


def one(data, epochs: int, mode: str, every: int) -> float:
    torch.manual_seed(0)
    model = mnist1d.cnn(64)
    kw = {}
    with tempfile.TemporaryDirectory() as tmp:
        if mode != "none":
            kw = dict(run_dir=f"{tmp}/run", checkpoint_every=every, async_save=mode == "async")
        t0 = time.perf_counter()
        r = sf.fit(model, data["train"], val=0.1, epochs=epochs, lr=1e-2, batch_size=100,
                   progress="off", device="cpu", **kw)  # fmt: skip
        return r.steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(2)
    data = mnist1d.load()
    one(data, 1, "none", args.every)  # warm-up: imports, allocator
    rates: dict[str, list[float]] = {"none": [], "sync": [], "async": []}
    for _ in range(args.repeats):
        for mode in rates:
            rates[mode].append(one(data, args.epochs, mode, args.every))
    base = statistics.median(rates["none"])
    print(f"| checkpoints | steps/s (median of {args.repeats}) | ratio to none |")
    print("|---|---|---|")
    for mode, values in rates.items():
        med = statistics.median(values)
        label = "none" if mode == "none" else f"{mode}, every {args.every} steps + epoch ends"
        print(f"| {label} | {med:.1f} | {med / base:.3f} |")


if __name__ == "__main__":
    main()
