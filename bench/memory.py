"""Peak memory and throughput with activation checkpointing, as ratios to the same run without.

Run: .venv/bin/python bench/memory.py [--quick] [--repeats 3]
The model is the char-gpt recipe's (GPT, 4 layers, 4 heads, width 128, context 64), trained on
random token windows (memory and speed do not depend on the tokens) with the recipe's optimizer
settings. Each run is a fresh process (``--child``), the variants of a repeat interleaved; the
table gives medians of the repeats. Peak memory: on CPU the process's maximum resident set
(``os.wait4``'s rusage of that child, the per-process form of ``RUSAGE_CHILDREN``), and that
peak less the resident set just before ``fit`` (what training added: activations, gradients,
optimizer state); on CUDA ``torch.cuda.max_memory_allocated``. Steps/s counts the optimizer steps
after the first few (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = {"off": [], "on": ["Block"]}  # train.activation_checkpointing of each variant


class _Clock:
    """Times the optimizer steps after ``warm`` of them."""

    def __init__(self, warm: int) -> None:
        self.warm, self.start, self.end, self.steps = warm, 0.0, 0.0, 0

    def on_step_end(self, run) -> None:  # noqa: ANN001
        if run.optimizer_step == self.warm:
            self.start = time.perf_counter()
        self.end, self.steps = time.perf_counter(), run.optimizer_step - self.warm


def child(variant: str, steps: int, batch: int, threads: int) -> dict:
    """One run of the recipe's model in this (fresh) process; its measurements."""
    import resource

    import torch

    import surefit as sf
    from surefit.config import from_dict, parse_toml
    from surefit.recipes import chargpt, source

    torch.set_num_threads(threads)
    cfg = from_dict(parse_toml(source("char-gpt")[1], where="char-gpt"))
    torch.manual_seed(0)
    model = chargpt.gpt(**cfg.model.args)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, len(chargpt.VOCAB), (4 * batch, model.block + 1), generator=g)
    cuda = torch.cuda.is_available()
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clock = _Clock(warm=min(5, steps // 3))
    sf.fit(
        model, (tokens[:, :-1], tokens[:, 1:]), task="lm", max_steps=steps, batch_size=batch,
        optimizer="adamw", lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
        betas=cfg.optim.betas, schedule="constant", progress="off", threads=threads,
        device="cuda" if cuda else "cpu", activation_checkpointing=VARIANTS[variant],
        callbacks=[clock],
    )  # fmt: skip
    return {
        "before_mib": before_kib / 1024,  # Linux reports ru_maxrss in KiB
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "steps_per_s": clock.steps / (clock.end - clock.start),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }


def spawn(variant: str, steps: int, batch: int, threads: int) -> dict:
    """Run ``child`` in a fresh process; add that process's peak resident set."""
    cmd = [sys.executable, str(HERE / "memory.py"), "--child", variant, "--steps", str(steps),
           "--batch", str(batch), "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code != 0:
        sys.exit(f"{variant} run failed (exit {code}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mib"] = usage.ru_maxrss / 1024
    return result


def table(runs: dict[str, list[dict]], description: str) -> str:
    def med(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[variant])

    for rs in runs.values():
        for r in rs:
            r["added_mib"] = r["peak_mib"] - r["before_mib"]
    cuda = runs["off"][0]["cuda_peak_mib"] is not None
    keys = ["cuda_peak_mib"] if cuda else ["peak_mib", "added_mib"]
    names = {"cuda_peak_mib": "peak CUDA memory allocated", "peak_mib": "peak RSS",
             "added_mib": "RSS added by training"}  # fmt: skip
    head = ["activation checkpointing"]
    for k in keys:
        head += [f"{names[k]}, MiB", "ratio to off"]
    head += ["steps/s", "ratio to off"]
    lines = [description, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant in runs:
        row = [f"{variant} ({VARIANTS[variant] or 'none'})"]
        for k in keys + ["steps_per_s"]:
            row += [f"{med(variant, k):.1f}", f"{med(variant, k) / med('off', k):.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, smaller batch, 1 repeat")
    p.add_argument("--repeats", type=int, default=0, help="repeats (default 3, --quick 1)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (default 30, quick 10)")
    p.add_argument("--batch", type=int, default=0, help="batch size (default 128, quick 32)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    p.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args()
    steps = args.steps or (10 if args.quick else 30)
    batch = args.batch or (32 if args.quick else 128)
    if args.child:
        print(json.dumps(child(args.child, steps, batch, args.threads)))
        return
    repeats = args.repeats or (1 if args.quick else 3)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for variant in VARIANTS:  # interleaved: load changes hit both alike
            runs[variant].append(spawn(variant, steps, batch, args.threads))
    device = runs["off"][0]["device"]
    description = (
        f"char-gpt recipe model (4 layers, width 128, context 64) on random tokens, batch "
        f"{batch}, {steps} optimizer steps, {args.threads} torch threads on {device}, a fresh "
        f"process per run, medians of {repeats}; on = every Block recomputed in backward."
    )
    print(table(runs, description))


if __name__ == "__main__":
    main()
