"""surefit's own work per optimizer step, counted in instructions rather than seconds.

Timings on a shared machine spread by more than the few per cent a loop's own cost is; an
instruction count does not depend on the load. Each loop runs under valgrind's callgrind in a
fresh process for E and E + 2 epochs; the difference of the two processes' totals, over the steps
in between, is the loop's marginal count per step (imports, set-up and the first epoch cancel).
Instructions are not time (the model's vector kernels retire more per cycle than the Python
around them), so this says how much work surefit adds, and the paired timings say what it costs.

Run: .venv/bin/python bench/instructions.py   (needs valgrind; about 8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = {  # name: (what, batch size, steps per epoch)
    "tiny": ("bench/'s `tiny` MLP, batch 128", 128, 32),
    "empty": ("a near-empty model (Linear 4 -> 3), batch 32: the loop's own work", 32, 125),
}
VARIANTS = ("a+", "surefit")


def child(variant: str, workload: str, epochs: int) -> None:
    """One run, in the process valgrind counts (one torch thread: a worker thread's spinning
    would count as work)."""
    import torch
    from torch import nn

    sys.path.insert(0, str(HERE))
    import loops
    from run import build

    torch.set_num_threads(1)
    if workload == "empty":
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(4000, 4, generator=g), torch.randint(0, 3, (4000,), generator=g)
        model = nn.Linear(4, 3)
    else:
        model, x, y = build(workload)
    bs = WORKLOADS[workload][1]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if variant == "a+":
            loops.hand(model, x, y, epochs, bs, fused=True)
        else:
            loops.surefit(model, x, y, epochs, bs, threads=1)


def count(variant: str, workload: str, epochs: int) -> int:
    """Instructions of a whole process running ``variant`` for ``epochs`` epochs."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
           __file__, "--child", variant, workload, str(epochs)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stderr
    return int(next(line for line in out.splitlines() if "Collected" in line).split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=3, metavar=("VARIANT", "WORKLOAD", "EPOCHS"))
    p.add_argument("--epochs", type=int, default=1, help="E: the shorter run's epochs")
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    if shutil.which("valgrind") is None:
        print("not run: valgrind is not installed")
        return
    e = args.epochs
    runs = [(v, w, ep) for w in WORKLOADS for v in VARIANTS for ep in (e, e + 2)]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        totals = dict(zip(runs, pool.map(lambda r: count(*r), runs), strict=True))
    print("| workload | (a+) instructions per step | surefit | surefit's extra | share of (a+) |")
    print("|---|---|---|---|---|")
    for w, (what, _, per_epoch) in WORKLOADS.items():
        steps = 2 * per_epoch
        a, s = ((totals[(v, w, e + 2)] - totals[(v, w, e)]) / steps for v in VARIANTS)
        print(f"| {what} | {a:,.0f} | {s:,.0f} | {s - a:+,.0f} | {(s - a) / a:+.2%} |")


if __name__ == "__main__":
    main()
