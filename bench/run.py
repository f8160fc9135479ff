"""surefit against the best hand-written loop and the framework loops, written to
docs/benchmarks.md.

Run: bench/.venv/bin/python bench/run.py [--quick]   (scripts/setup-bench makes bench/.venv;
with .venv/bin/python the peers that are not installed are skipped with a note)

Every measurement runs in a fresh process, 2 torch threads, the variants of a repeat interleaved
so that load changes on a shared machine hit them alike; tables give medians of the repeats and
every ratio is to (a), the best hand-written loop, measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

WORKLOADS = {
    # name: (description, batch size, epochs, quick epochs)
    "tiny": ("MLP 40-256-256-10 on 4,000 x 40 in-memory samples, batch 128", 128, 20, 5),
    "small": ("the default recipe's 1-D CNN (64 channels) on MNIST-1D, batch 100", 100, 8, 2),
}


def build(workload: str, seed: int = 0):
    """(model, x, y) of a workload, from fixed seeds."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if workload == "tiny":
        model = nn.Sequential(
            nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        g = torch.Generator().manual_seed(1)
        x = torch.randn(4000, 40, generator=g)
        y = torch.randint(0, 10, (4000,), generator=g)
        return model, x, y
    from surefit.recipes import mnist1d

    model = mnist1d.cnn(64)
    x, y = mnist1d.load()["train"]
    return model, x, y


def worker(workload: str, variant: str, epochs: int) -> dict:
    """One timed run in this (fresh) process, after one warm-up epoch on a throw-away model."""
    import torch
    from loops import VARIANTS

    threads = int(os.environ.get("BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    _, fn = VARIANTS[variant]
    bs = WORKLOADS[workload][1]
    model, x, y = build(workload, seed=1)
    fn(model, x, y, 1, bs)  # warm-up: lazy imports, allocator, first-call costs
    model, x, y = build(workload)
    t0 = time.perf_counter()
    steps = fn(model, x, y, epochs, bs)
    seconds = time.perf_counter() - t0
    return {"steps": steps, "seconds": seconds, "steps_per_s": steps / seconds,
            "threads": torch.get_num_threads()}  # fmt: skip


def paired_worker(workload: str, rounds: int, epochs: int) -> dict:
    """(a+), surefit and (a) in one process, alternating for ``rounds`` rounds after a warm-up
    of each: seconds per step of every run, for ratios within a round."""
    import contextlib
    import io

    import torch
    from loops import VARIANTS

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    names, bs = ["a+", "surefit", "surefit-dir", "a"], WORKLOADS[workload][1]
    per_step: dict[str, list[float]] = {v: [] for v in names}
    for r in range(rounds + 1):
        for v in names if r % 2 == 0 else names[::-1]:
            model, x, y = build(workload, seed=1 if r == 0 else 0)
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                t0 = time.perf_counter()
                steps = VARIANTS[v][1](model, x, y, epochs, bs)
                seconds = time.perf_counter() - t0
            if r:  # round 0 is the warm-up
                per_step[v].append(seconds / steps)
    return per_step


def _ratios(per_step: dict[str, list[float]], loop: str, baseline: str) -> list[float]:
    """Each round's steps/s of ``loop`` as a share of ``baseline``'s."""
    pairs = zip(per_step[loop], per_step[baseline], strict=True)
    return [base / mine for mine, base in pairs]


def _speed(per_step: dict[str, list[float]], loop: str, baseline: str) -> float:
    """The median over rounds of ``loop``'s steps/s as a share of ``baseline``'s."""
    return statistics.median(_ratios(per_step, loop, baseline))


def _interval(values: list[float], draws: int = 2000, level: float = 0.9) -> tuple[float, float]:
    """A percentile bootstrap interval of the median of ``values`` (seeded: the same rounds give
    the same interval); how far the table's medians can be trusted on this machine."""
    import random

    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    cut = int(draws * (1 - level) / 2)
    return medians[cut], medians[-cut - 1]


def paired(quick: bool, repeats: int, lines: list[str]) -> None:
    rounds = 3 if quick else 31
    lines += [
        "## Paired, in one process",
        "",
        f"The fresh-process tables above vary by up to 2x between repeats of one loop on a shared "
        f"machine. Here one process per workload runs (a+), surefit (without and with a run "
        f"directory) and (a) in turn, {rounds} "
        "rounds of the throughput table's run (the same epochs) after a warm-up of each, the "
        "order alternating; a round's runs follow each other within seconds, so the median of "
        "the per-round ratios is the steadiest number this machine gives, and its 90 % "
        f"bootstrap interval says how steady. Load {load()}.",
        "",
        "| workload | epochs | surefit / (a+), median of rounds [90 % interval] | "
        "surefit / (a) | (a) / (a+) | surefit's cost over (a+) per step | "
        "surefit with a run directory / (a+) |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload, (_, _, full, short) in WORKLOADS.items():
        epochs = short if quick else full
        t = spawn(["--paired", workload, str(rounds), str(epochs)], timeout=3600)
        extra = statistics.median(a - b for a, b in zip(t["surefit"], t["a+"], strict=True))
        low, high = _interval(_ratios(t, "surefit", "a+"))
        lines.append(
            f"| `{workload}` | {epochs} | {_speed(t, 'surefit', 'a+'):.3f} "
            f"[{low:.3f}, {high:.3f}] | "
            f"{_speed(t, 'surefit', 'a'):.3f} | {_speed(t, 'a', 'a+'):.3f} | "
            f"{extra * 1e6:+.0f} us | {_speed(t, 'surefit-dir', 'a+'):.3f} |"
        )
    lines.append("")


def spawn(args: list[str], timeout: float = 900) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    out = subprocess.run(
        [sys.executable, str(HERE / "run.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def load() -> str:
    """The load averages (1, 5, 15 min) and the time, for the record of a measurement."""
    avg = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"({avg}) at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def throughput(quick: bool, repeats: int, lines: list[str]) -> None:
    from loops import PEER_MODULES, VARIANTS

    threads = os.environ.get("BENCH_THREADS", "2")
    lines += ["## Training throughput", "", f"Every run on {threads} torch thread(s).", ""]
    skipped = [v for v, m in PEER_MODULES.items() if importlib.util.find_spec(m) is None]
    variants = [v for v in VARIANTS if v not in skipped]
    if threads == "1":  # auto cannot choose more threads than the process has: same as pinned
        variants.remove("surefit-auto")
    # at least 5 fresh processes a loop: one loop's repeats vary by up to 2x on a shared
    # machine, and the median of 3 cannot resolve the 5 % the goals are stated in
    repeats = repeats if quick else max(repeats, 5)
    for workload, (desc, _, epochs, quick_epochs) in WORKLOADS.items():
        ep = quick_epochs if quick else epochs
        rates: dict[str, list[float]] = {v: [] for v in variants}
        loads = [load()]
        for i in range(repeats):
            for v in variants if i % 2 == 0 else variants[::-1]:  # no loop always runs first
                r = spawn(["--worker", workload, v, str(ep)])
                rates[v].append(r["steps_per_s"])
                steps = r["steps"]
            loads.append(load())
            print(f"  {workload}: repeat done, load {loads[-1]}", file=sys.stderr)
        base = statistics.median(rates["a"])
        lines += [
            f"### `{workload}`: {desc}",
            "",
            f"{ep} epochs = {steps} optimizer steps per run; load averages (1, 5, 15 min) "
            f"before and after each repeat: {', '.join(loads)}.",
            "",
            f"| loop | steps/s (median of {repeats}) | runs | ratio to (a) | to (a+), paired |",
            "|---|---|---|---|---|",
        ]
        for v in variants:
            med = statistics.median(rates[v])
            runs = " ".join(f"{r:.0f}" for r in rates[v])
            # each repeat's runs follow each other: the median of the per-repeat ratios is less
            # exposed to the machine's slow minutes than the ratio of the medians
            paired = statistics.median(r / q for r, q in zip(rates[v], rates["a+"], strict=True))
            lines.append(
                f"| {VARIANTS[v][0]} | {med:.1f} | {runs} | {med / base:.3f} | {paired:.3f} |"
            )
        for v in skipped:
            note = f"not run: `{PEER_MODULES[v]}` is not installed"
            lines.append(f"| {VARIANTS[v][0]} | {note} | | | |")
        lines.append("")


def import_times(quick: bool, repeats: int, lines: list[str]) -> None:
    py = sys.executable
    cli = [py, "-m", "surefit", "--help"]
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "import torch": [py, "-c", "import torch"],
        "import torch, surefit": [py, "-c", "import torch, surefit"],
        "surefit --help": cli,
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(max(repeats, 5)):
        for k, cmd in cases.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True, cwd=ROOT)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    py0, torch0, sf0, cli0 = med.values()
    lines += [
        "## Import and start-up time",
        "",
        f"Wall time of a fresh process, median of {max(repeats, 5)}, interleaved; load {load()}.",
        "",
        "| command | seconds | ratio |",
        "|---|---|---|",
        f"| python -c pass | {py0:.3f} | 1.00 |",
        f"| import torch | {torch0:.3f} | {torch0 / py0:.1f} to python -c pass |",
        f"| import torch, surefit | {sf0:.3f} | {sf0 / torch0:.2f} to torch, {sf0 - torch0:+.2f} s |",  # noqa: E501
        f"| python -m surefit --help | {cli0:.3f} | {cli0 / py0:.2f} to python -c pass |",
        "",
    ]


def to_accuracy(quick: bool, repeats: int, lines: list[str]) -> None:
    epochs = "10" if quick else "100"
    walls: dict[str, list[float]] = {"surefit": [], "hand": [], "surefit-auto": []}
    accs: dict[str, list[float]] = {k: [] for k in walls}
    for _ in range(repeats):
        for who in walls:
            r = spawn(["--accuracy", who, epochs], timeout=1800)
            walls[who].append(r["seconds"])
            accs[who].append(r["test_accuracy"])
    s, h = statistics.median(walls["surefit"]), statistics.median(walls["hand"])
    sa = statistics.median(walls["surefit-auto"])
    lines += [
        "## The default recipe to test accuracy",
        "",
        f"`mnist1d-cnn` for {epochs} epochs (3,600 train / 400 val, batch 100, AdamW lr 1e-2, "
        "warmup-cosine to 1 %, clip 1.0, an evaluation per epoch, the test set at the end), "
        "surefit's recipe run (run directory, checkpoints and logs at their defaults, the bench's "
        "thread count as for (a)) against (a) "
        f"with the same schedule, fresh processes, {repeats} repeats interleaved, load {load()}.",
        "",
        "| loop | seconds (median) | test accuracy (each run) | ratio to (a) |",
        "|---|---|---|---|",
        f"| (a) hand-written | {h:.1f} | {_accs(accs['hand'])} | 1.000 |",
        f"| surefit recipe | {s:.1f} | {_accs(accs['surefit'])} | {s / h:.3f} |",
        f"| surefit recipe, `train.threads = 0` (its own choice) | {sa:.1f} | "
        f"{_accs(accs['surefit-auto'])} | {sa / h:.3f} |",
        "",
    ]


def _accs(values: list[float]) -> str:
    return " ".join(f"{a:.3f}" for a in values)


def _script_section(script: str, title: str, what: str, quick: bool, repeats: int) -> list[str]:
    """Run one of the bench's own scripts at 30 epochs (5 with --quick); its table, titled."""
    cmd = [sys.executable, str(HERE / script), "--epochs", "5" if quick else "30",
           "--repeats", str(repeats)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    head = f"{what}; one process, interleaved, medians of {repeats}; load {load()}."
    return [f"## {title} (`bench/{script}`)", "", head, "", *out.strip().splitlines(), ""]


def checkpoint_section(quick: bool, repeats: int, lines: list[str]) -> None:
    lines += _script_section(
        "checkpoint_overhead.py",
        "Checkpoint overhead",
        "The default recipe's model and data, batch 100, against the same run writing the same "
        "run directory without periodic checkpoints",
        quick,
        max(repeats, 5),
    )


def health_section(quick: bool, repeats: int, lines: list[str]) -> None:
    lines += _script_section(
        "health_overhead.py",
        "Health guards",
        "The default recipe's model and data, batch 100, no run directory: the guards at their "
        "defaults (non-finite skip, spike rollback with its in-memory copies, first-step checks) "
        "against all three off",
        quick,
        max(repeats, 5),
    )


def memory_section(quick: bool, repeats: int, lines: list[str]) -> None:
    cmd = [sys.executable, str(HERE / "memory.py"), "--repeats", str(repeats),
           "--threads", os.environ["BENCH_THREADS"], *(["--quick"] if quick else [])]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True).stdout
    lines += ["## Activation checkpointing (`bench/memory.py`)", "", f"Load {load()}.", "",
              *out.strip().splitlines(), ""]  # fmt: skip


def instructions_section(quick: bool, repeats: int, lines: list[str]) -> None:
    out = subprocess.run([sys.executable, str(HERE / "instructions.py")], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout  # fmt: skip
    lines += [
        "## Instructions per step (`bench/instructions.py`)",
        "",
        "surefit's own work per step, counted rather than timed: each loop under valgrind's "
        "callgrind, 1 torch thread, in fresh processes of 1 and 3 epochs; the difference of their "
        "totals over the steps in between (imports, set-up and the first epoch cancel). The "
        "count does not depend on the machine's load; instructions are not seconds (the model's "
        f"vector kernels retire more per cycle than the Python around them). Load {load()}.",
        "",
        *out.strip().splitlines(),
        "",
    ]


def cpu_model() -> str:
    """The processor's name (Linux), which says more of a CPU number than the core count."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def header(quick: bool, repeats: int) -> list[str]:
    import torch

    versions = [f"torch {torch.__version__}", f"python {platform.python_version()}"]
    for m in ("surefit", "lightning", "accelerate"):
        if importlib.util.find_spec(m) is not None:
            versions.append(f"{m} {__import__(m).__version__}")
    return [
        "# Benchmarks",
        "",
        f"Written by `python bench/run.py{' --quick' if quick else ''} "
        f"--threads {os.environ['BENCH_THREADS']}`. Every number is a "
        "ratio against a baseline measured in the same run on the same machine; the machine is "
        "shared, so compare ratios, not absolute rates.",
        "",
        f"- Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"{cpu_model()} ({platform.machine()}, torch's CPU kernels: "
        f"{torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} CPU cores, "
        f"{platform.system()}; " + ", ".join(versions),
        f"- Fresh process per run, {os.environ['BENCH_THREADS']} torch thread(s) (`--threads`), "
        "repeats interleaved, medians. Sections can be "
        "run on their own (`--skip`); each section states its own date and load.",
        "",
    ]


CHECKPOINT_NOTES = """Each write serializes the state once in memory (hashed there, not read
back), and best.pt shares the bytes of that step's rolling checkpoint. The work left on the
training thread is the host read of the pending step values, a copy of the state to the CPU and,
without `async_save`, the write and its four fsyncs (file, folder, manifest, folder). The state
pickles a bounded number of Python objects (about 1,300 pickler calls here, most of them the
tensors' own records), so a save costs as much at the hundredth epoch as at the first. An epoch
of this model is 36 steps (about 0.25 s), and a new best writes best.pt and the rolling checkpoint
with it whatever the pace: in a 30-epoch run checked by hand the validation loss improved at 13
epoch ends and 18 of the 30 still saved, so the defaults row differs little from the
every-epoch-end row here. The pace pays on runs of
short epochs that do not improve at each one: on `tiny` (20 epochs of about 60 ms, a save about
8 ms of the loop's time) a save at every epoch end cost about 20 % of the steps/s in one process
(0.752 x (a+) against 0.953 with a save every 5 epochs instead, 12 rounds of 10 epochs). The paced
default saves at the first epoch end, about every 0.8 s after it, and at the end: 0.877 x (a+)
against 0.745 with `max_overhead = 0` (10 rounds of 10 epochs), 0.894 in 10 rounds of 20.
`checkpoint.at_epoch_end = false` leaves only the periodic saves.
"""

HEALTH_NOTES = """Per step on CPU the guard adds one scalar op (GradScaler's own finiteness
kernel over the loss and the norm, into a flag zeroed through a numpy view of it) and a read of
that flag from memory, which waits for nothing on CPU; a bad step is skipped on the host, and
the optimizer runs as in the hand-written loop (on CUDA the flag goes to the fused kernel as its
`found_inf` instead: no sync there). At each sync point there is one host read of the pending
values. The rest is fixed per run: the first-step checks (a forward and backward pass and the
leakage hashes) and the rollback copies (at most every 200 steps). This section's two rows come
from one process, interleaved; on these machines the ratio was 0.980, 0.897 and 1.037 (on
faster than off) in three earlier runs and 0.940 in this one, so it is below what they resolve.
"""

PROFILE_NOTES = """## Where the time goes

- What surefit's cost over (a+) is made of, counted (the instructions table; the machine's load
  does not move it; counted in an earlier run, on an AVX2 machine, as its section says): surefit
  takes fewer instructions a step than (a+), -124k of 9.27M on `tiny` (-1.3 %) and -103k of 0.98M
  on a near-empty model. Before the two changes below it took +37k and +35k.
  (1) Clipping: for parameters that are one (device, dtype) group of plain tensors, surefit
  runs the kernels of torch's `get_total_norm` and `clip_grads_with_norm_` itself (the same
  bits, tested), without their per-call grouping, wrappers and no-grad contexts, which (a+)'s
  `clip_grad_norm_` pays twice a step: -138k instructions a step.
  (2) The host bookkeeping of each step at sync points is plain attribute updates: 13-18k fewer.
- Timed, paired in one process (31 rounds): `tiny` 1.003 [0.932, 1.012] x (a+) and `small`
  0.996 [0.957, 1.015] in this page's run; earlier runs of the same per-step code gave 1.008 /
  1.021, 0.996 / 0.998 and 0.990 / 1.020. The fresh-process tables move with the machine's load
  far more: in this run the per-repeat ratios to (a+) are 0.962 on `tiny` and 1.109 on `small`
  (1.147 and 1.255 with `threads auto`), while one loop's repeats span up to 1.9x; earlier runs
  gave 1.091 / 0.886, 0.87 / 1.51, 0.997 / 1.014 and 1.35 / 0.77. Only the paired figures are
  steady enough to hold against a 5 % goal here; the whole page ran with nothing else on the
  machine (its load, about 1.3-2.0, is the benchmark's own two threads and its processes).
- Time that the counts do not show: on the near-empty model callgrind's cache and branch
  simulation puts surefit at or below (a+) in every count a step (D1 and I1 misses, mispredicted
  branches), yet its CPU time a step was still about +24 us in one paired timing. surefit's run
  also takes about 2 minor page faults a step (about 1,000 a run against (a+)'s 10-160): the
  rollback copies, fresh allocations every 200 steps.
- Machines differ: this run's CPU is named in the header. On an AVX-512 machine the tiny MLP's
  step took about 0.75-1 ms, against about 2-3 ms on AVX2 ones, and surefit's cost per step is
  roughly fixed, so its ratio to (a+) is lower where the model's own kernels are faster. The
  recipe's test accuracy moves with the machine too (the kernels' last bits): 0.954 against
  (a)'s 0.955 on the AVX-512 machines (this page's run), 0.946 against 0.960 on an AVX2 one.
- Threads: the `threads auto` rows are `train.threads = 0`. It gives a model under 30 MFLOP per
  forward batch (the tiny MLP) one thread and the CNN every core, whatever the machine's load at
  the start, because the thread count changes a CPU run's last bits. On an idle 2-core machine two
  threads ran the tiny MLP up to 1.3-1.4x faster than one in earlier runs (in this run's fresh
  processes one thread was the faster: 435 steps/s against 382 on two); on a loaded one two ran
  7-40x slower, hence one. A loaded
  machine gets a note naming `train.threads`. The FLOPs are counted on the first batch of every
  data path (a Dataset's and a DataLoader's too), so the choice does not depend on how the data
  is passed.
- Data paths: surefit over a map-style Dataset (its seeded sampler, one `__getitem__` a sample and
  the collate, as a textbook DataLoader has them) and over the textbook's own DataLoader run near
  the textbook loop's speed on `tiny`, and well below surefit over the tensors: the
  per-sample work is the cost, which the in-memory path (one index gather a batch) does not have.
  A plain `TensorDataset` takes the in-memory path.
- Epoch-end checkpoints (the run-directory rows) are paced by their cost
  (`checkpoint.max_overhead`, 1 % by default; docs/resume.md): on `tiny` an epoch of 32 steps
  takes about 25 ms here, and a save took about 8 ms of the loop's time on the earlier machine,
  so a save at every epoch end would cost far more than the step's own overhead; a put-off save
  leaves the run as if it were written. Paired in one process, surefit with a run directory
  made `tiny` 0.936 x (a+) and `small` 0.914 in this run (0.900 / 0.987 and 0.968 / 0.975 in
  earlier ones): the config, three logs, the paced checkpoints and the final one, steps.jsonl,
  mostly fixed costs against runs of 0.3-2 s, which weigh most on `tiny`'s short runs.
- No CUDA machine was available: the GPU table (bf16, char-gpt tokens/s and MFU) is not measured.
"""

SECTIONS = {
    "throughput": throughput,
    "paired": paired,
    "import": import_times,
    "accuracy": to_accuracy,
    "checkpoint": checkpoint_section,
    "health": health_section,
    "memory": memory_section,
    "instructions": instructions_section,
}
RESULTS = HERE / "results"  # one file per section; docs/benchmarks.md joins those present

LIMITS = """## What limits these numbers

- The machine is shared: a load average above the core count means other work took CPU time
  during the run. Interleaving spreads it across the variants; the per-run columns show the spread.
- All variants do equal work: the same model and initial weights, AdamW (lr 1e-3, weight decay
  0.01), clipping at 1.0, constant learning rate, same batches per epoch. The peers use a
  DataLoader over a TensorDataset as their documentation shows; their loggers, checkpoints,
  progress bars and summaries are off, so they are measured at their fastest. surefit runs with
  its defaults (per-epoch line, device-side loss and norm sums, its optimizer choice), with
  `decay_all = true` so that weight decay covers every parameter in one group, as in the others.
- (a) is torch's default AdamW (a for-loop over parameters on CPU); (a+) is `fused=True`.
- A run times the training call only, after a one-epoch warm-up in the same process; imports and
  data generation are outside it. Import time is its own table.
"""


def _sections_of(page: Path) -> dict[str, str]:
    """The sections a page written by this script holds, between their markers (bench/results/
    is not kept in the repository: a run that measures some sections keeps the others)."""
    import re

    text = page.read_text() if page.exists() else ""
    found = re.finditer(r"<!-- section (\w+) -->\n(.*?)<!-- end \1 -->\n", text, re.S)
    return {m.group(1): m.group(2) for m in found}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs and repeats: a smoke run")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "VARIANT", "EPOCHS"))
    p.add_argument("--paired", nargs=3, metavar=("WORKLOAD", "ROUNDS", "EPOCHS"))
    p.add_argument("--accuracy", nargs=2, metavar=("WHO", "EPOCHS"))
    p.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    p.add_argument("--repeats", type=int, default=0,
                   help="repeats (default 3, throughput at least 5; --quick 1)")  # fmt: skip
    p.add_argument("--skip", default="", help="comma list of sections to skip: throughput,"
                   "paired,import,accuracy,checkpoint,health,memory,instructions")  # fmt: skip
    args = p.parse_args()
    if args.paired:
        print(json.dumps(paired_worker(args.paired[0], int(args.paired[1]), int(args.paired[2]))))
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))))
        return
    if args.accuracy:
        from accuracy import run_accuracy

        print(json.dumps(run_accuracy(args.accuracy[0], int(args.accuracy[1]))))
        return
    repeats = args.repeats or (1 if args.quick else 3)
    os.environ["BENCH_THREADS"] = str(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    RESULTS.mkdir(exist_ok=True)
    for name, fn in SECTIONS.items():
        if name in skip:
            continue
        lines: list[str] = []
        fn(args.quick, repeats, lines)
        (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    notes = {"checkpoint": CHECKPOINT_NOTES, "health": HEALTH_NOTES + "\n" + PROFILE_NOTES}
    kept = _sections_of(Path(args.out))
    body = []
    for n in SECTIONS:
        path = RESULTS / f"{n}.md"
        if not path.exists() and n in kept:  # not measured here: the page's own copy stays
            path.write_text(kept[n])
        if path.exists():
            text = f"<!-- section {n} -->\n{path.read_text()}<!-- end {n} -->\n"
            body.append(text + notes.get(n, ""))
    text = "\n".join(header(args.quick, repeats)) + "\n" + "\n".join(body) + "\n" + LIMITS
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
