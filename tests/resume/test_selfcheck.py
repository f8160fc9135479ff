"""The resume self-check: exact setups pass, a setup that breaks exactness is caught and named."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch
from torch import nn

import surefit as sf
from tests.conftest import make_classification, mlp


def dropout_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def test_fit_check_resume_passes_on_an_exact_setup(tmp_path):
    x, y = make_classification(256)
    model = dropout_mlp()  # dropout: the check must leave the RNG as it found it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = sf.fit(model, (x, y), val=(x[:64], y[:64]), epochs=2, batch_size=16, accumulate=2,
               progress="off", run_dir=str(tmp_path), check_resume=True)  # fmt: skip
    assert r.resume_check.exact, r.resume_check.report()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    (check,) = [e for e in events if e["event"] == "resume_check"]
    assert check["exact"] is True and check["steps"] == [8, 16]
    # the real run is the run without the check: the check trained copies on the RNG it put back
    same = sf.fit(dropout_mlp(), (x, y), val=(x[:64], y[:64]), epochs=2, batch_size=16,
                  accumulate=2, progress="off")  # fmt: skip
    pairs = zip(model.parameters(), same.model.parameters(), strict=True)
    assert all((a == b).all() for a, b in pairs)
    assert any(not (before[k] == v).all() for k, v in model.state_dict().items())


class HalveEvery:
    """A stateful callback without state_dict: it breaks exact resume."""

    def __init__(self):
        self.calls = 0

    def on_step_end(self, run):
        self.calls += 1
        if self.calls % 5 == 0:
            for g in run._trainer.optimizer.param_groups:
                g["lr"] *= 0.5


def test_the_check_leaves_a_users_loader_to_draw_its_first_order(tmp_path):
    """A DataLoader with its own generator: the check's runs iterate it; the real run after it
    must still train on the order it would have drawn without the check."""
    x, y = make_classification(256)

    def run(check):
        own = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(x, y)
        loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True, generator=own)
        return sf.fit(mlp(), loader, epochs=2, progress="off", check_resume=check)

    checked, plain = run(True), run(False)
    assert checked.resume_check.exact, checked.resume_check.report()
    pairs = zip(checked.model.parameters(), plain.model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_fit_check_resume_names_what_breaks_exactness():
    x, y = make_classification(256)
    r = sf.fit(mlp(), (x, y), epochs=2, batch_size=16, progress="off", schedule="constant",
               callbacks=[HalveEvery()], check_resume=True)  # fmt: skip
    check = r.resume_check
    assert not check.exact
    assert "model" in check.differing and "optimizer" in check.differing
    assert any("callback without state_dict" in c for c in check.causes)
    assert "NOT exact" in check.report()


FACTORIES = """
import torch
from torch import nn

def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.Tanh(), nn.Linear(16, 3))

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return {"train": (x, y), "val": (x[:40].clone() + 1, y[:40])}
"""

RECIPE = """
name = "check-case"
[model]
name = "check_case:model"
[data]
name = "check_case:data"
batch_size = 16
[train]
epochs = 3
accumulate = 3
"""


def test_check_resume_command_in_fresh_processes(tmp_path):
    (tmp_path / "check_case.py").write_text(textwrap.dedent(FACTORIES))
    (tmp_path / "r.toml").write_text(RECIPE)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "surefit",
            "check-resume",
            "r.toml",
            "--steps",
            "5",
            "--keep",
            "kept",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resume is exact: 5 steps" in done.stdout
    events = (tmp_path / "kept" / "split" / "events.jsonl").read_text()
    assert '"event": "preempted"' in events and '"event": "resume"' in events
    again = subprocess.run(done.args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--keep kept is not an empty folder" in again.stderr
