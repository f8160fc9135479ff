"""A real run killed with SIGKILL at seeded steps and resumed each time ends bit-identical."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = """
import os, signal, sys, torch
import surefit as sf
from torch import nn

torch.set_num_threads(1)
kill_at, run_dir = int(sys.argv[1]), sys.argv[2]
g = torch.Generator().manual_seed(0)
x = torch.randn(120, 8, generator=g)
y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))

class Kill(sf.Callback):
    def on_step_end(self, run):
        if run.optimizer_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

sf.fit(model, (x, y), val=(x[:40], y[:40]), optimizer="adamw", lr=1e-2,
       schedule="warmup_cosine", warmup=0.2, accumulate=2, clip_norm=1.0, batch_size=8,
       epochs=4, checkpoint_every=3, run_dir=run_dir, progress="off", device="cpu",
       callbacks=[Kill()])
"""


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_is_bitwise_identical(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT))

    def run(kill_at, run_dir):
        return subprocess.run(
            [sys.executable, str(script), str(kill_at), str(tmp_path / run_dir)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert run(0, "straight").returncode == 0
    # 15 micro-batches an epoch, 8 optimizer steps an epoch (the last window is short), 32 in all
    kills = sorted(random.Random(1234).sample(range(2, 32), 5))
    for k in kills:
        r = run(k, "chaos")
        assert r.returncode == -9, (k, r.stderr[-2000:])
    assert run(0, "chaos").returncode == 0

    def last(run_dir):
        from surefit.checkpoint import CheckpointStore

        store = CheckpointStore(tmp_path / run_dir / "checkpoints")
        entry = store.latest()[0]
        return torch.load(store.folder / entry["file"], weights_only=True)

    a, b = last("straight"), last("chaos")
    assert a["counters"] == b["counters"]
    for part in ("model", "optimizer", "schedule", "rng"):
        assert _equal(a[part], b[part]), part
    drop = ("time_s", "samples_per_s", "steps_per_s")
    lines = lambda d: [
        {k: v for k, v in json.loads(s).items() if k not in drop}
        for s in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
    ]
    assert lines("straight") == lines("chaos")


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


KILL_IN_WRITE = """
import os, signal, sys, torch
import surefit as sf
import surefit.checkpoint as ck
from torch import nn

run_dir, kill = sys.argv[1], sys.argv[2] == "kill"
real_write, calls = ck.atomic_write, [0]

def slow_write(path, write):
    if path.suffix == ".pt":
        calls[0] += 1
        if kill and calls[0] == 3:  # the third checkpoint: half written, then the process dies
            with open(path.parent / f".{path.name}.killed.tmp", "wb") as f:
                f.write(b"x" * 1000)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    return real_write(path, write)

ck.atomic_write = slow_write
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(64, 8, generator=g)
y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
r = sf.fit(model, (x, y), epochs=2, batch_size=8, checkpoint_every=2, run_dir=run_dir,
           progress="off", device="cpu")
print("steps", r.steps)
"""


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_then_resume_succeeds(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(textwrap.dedent(KILL_IN_WRITE))
    run_dir = tmp_path / "r"
    cmd = [sys.executable, str(script), str(run_dir)]
    r = subprocess.run([*cmd, "kill"], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    folder = run_dir / "checkpoints"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert [e["step"] for e in manifest["checkpoints"]] == [2, 4]  # the 6th never got in
    assert (folder / ".last-000000006.pt.killed.tmp").exists()
    r = subprocess.run([*cmd, "resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "steps 16" in r.stdout
    assert not list(folder.glob(".*.tmp"))  # the half-written file is gone
    events = [json.loads(s) for s in (run_dir / "events.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 4}.items() <= next(
        e for e in events if e["event"] == "resume"
    ).items()
