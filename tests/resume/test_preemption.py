"""Signals: a checkpoint at the next step boundary, a resumable exit, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import surefit as sf
from surefit.checkpoint import CheckpointStore, export_weights
from tests.conftest import Samples, make_classification, mlp


class SendSignal(sf.Callback):
    def __init__(self, at_step, sig):
        self.at_step, self.sig = at_step, sig

    def on_step_end(self, run):
        if run.optimizer_step == self.at_step:
            os.kill(os.getpid(), self.sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signal_checkpoints_at_the_boundary_and_resume_is_exact(tmp_path, sig):
    x, y = make_classification(96)
    common = dict(
        val=(x[:32], y[:32]),
        lr=1e-2,
        batch_size=16,
        seed=3,
        progress="off",
        accumulate=2,
        epochs=3,
        device="cpu",
    )
    straight = mlp(seed=8)
    sf.fit(straight, (x, y), run_dir=tmp_path / "a", **common)
    r = sf.fit(
        mlp(seed=8), (x, y), run_dir=tmp_path / "b", callbacks=[SendSignal(4, sig)], **common
    )
    assert r.preempted and signal.Signals(sig).name in r.stop_reason and r.steps == 4
    assert CheckpointStore(tmp_path / "b" / "checkpoints").latest()[0]["step"] == 4
    events = (tmp_path / "b" / "events.jsonl").read_text()
    assert '"signal"' in events and '"preempted"' in events
    resumed = mlp(seed=1)
    r2 = sf.fit(resumed, (x, y), run_dir=tmp_path / "b", resume="must", **common)
    assert not r2.preempted and r2.steps == 9
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    drop = ("time_s", "samples_per_s", "steps_per_s")
    lines = lambda d: [
        {k: v for k, v in json.loads(s).items() if k not in drop}
        for s in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
    ]
    assert lines("a") == lines("b")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


MODULE = """
import os, signal, torch
from torch import nn

class Net(nn.Module):
    def __init__(self, kill_at):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        self.calls, self.kill_at = 0, kill_at

    def forward(self, x):
        self.calls += self.training  # training-mode passes (the checks run one)
        if self.training and self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.body(x)

def build(kill_at=0):
    return Net(kill_at)

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return {"train": (x, y), "val": (x[:32], y[:32])}
"""


def test_cli_exits_75_on_sigterm_and_resume_finishes_the_same_run(tmp_path):
    (tmp_path / "sigpkg").mkdir()
    (tmp_path / "sigpkg" / "__init__.py").write_text("")
    (tmp_path / "sigpkg" / "m.py").write_text(textwrap.dedent(MODULE))
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'model = "sigpkg.m:build"\n[data]\nname = "sigpkg.m:data"\nbatch_size = 16\n'
        "[train]\nepochs = 3\ndevice = 'cpu'\n"
    )

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "surefit", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = cli("fit", "r.toml", "--run-dir", "runs/a", "--set", "model.args={kill_at=14}")
    assert r.returncode == 75, r.stderr
    assert "surefit resume" in r.stdout
    r = cli("resume", "runs/a", "--set", "model.args={kill_at=0}")
    assert r.returncode == 0, r.stderr
    r = cli("fit", "r.toml", "--run-dir", "runs/b")
    assert r.returncode == 0, r.stderr

    def last_weights(run):
        store = CheckpointStore(tmp_path / run / "checkpoints")
        entry = store.latest()[0]
        return entry["step"], torch.load(store.folder / entry["file"], weights_only=True)["model"]

    (step_a, a), (step_b, b) = last_weights("runs/a"), last_weights("runs/b")
    assert step_a == step_b == 24
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_export_to_safetensors_and_load_weights(tmp_path):
    x, y = make_classification(64)
    model = mlp(seed=2)
    sf.fit(
        model,
        (x, y),
        val=(x[:16], y[:16]),
        epochs=2,
        batch_size=16,
        progress="off",
        run_dir=tmp_path / "run",
        device="cpu",
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "surefit",
            "export",
            str(tmp_path / "run"),
            "--to",
            str(tmp_path / "w.safetensors"),
            "--which",
            "last",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    fresh = sf.load_weights(mlp(seed=5), tmp_path / "w.safetensors")
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(sf.CheckpointError, match="do not fit this model"):
        sf.load_weights(mlp(hidden=7), tmp_path / "w.safetensors")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "surefit",
            "export",
            str(tmp_path / "nope"),
            "--to",
            str(tmp_path / "x.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    # a --to naming one of the run's own files is refused, and the file is left as it was
    config = tmp_path / "run" / "config.toml"
    kept = config.read_bytes()
    with pytest.raises(sf.ConfigError, match="not a .safetensors file"):
        export_weights(tmp_path / "run", config)
    assert config.read_bytes() == kept
    export_weights(tmp_path / "run", tmp_path / "w.safetensors")  # an earlier export: replaced
    assert sf.load_weights(mlp(seed=5), tmp_path / "w.safetensors") is not None


def test_a_damaged_best_checkpoint_is_never_exported_or_restored(tmp_path, capsys):
    x, y = make_classification(64)
    common = dict(val=(x[:16], y[:16]), batch_size=16, epochs=2, progress="off", device="cpu",
                  schedule="constant", lr=1e-2)  # fmt: skip
    model = mlp()
    r = sf.fit(model, (x, y), run_dir=tmp_path / "r", **common)
    best = tmp_path / "r" / "checkpoints" / "best.pt"
    good = torch.load(best, weights_only=True)["model"]
    data = bytearray(best.read_bytes())
    key = next(iter(good))
    at = bytes(data).find(good[key].numpy().tobytes()[:16])  # inside a weight's bytes
    data[at] ^= 0xFF
    best.write_bytes(bytes(data))
    skipped = []
    out = export_weights(tmp_path / "r", tmp_path / "w.safetensors",
                         on_skip=lambda p, why: skipped.append(why))  # fmt: skip
    assert skipped and "sha256" in skipped[0]
    weights = sf.load_weights(mlp(), out).state_dict()
    latest = torch.load(r.checkpoint.parent / "last-000000008.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], latest[k]) for k in latest)  # the newest good one instead
    with pytest.raises(sf.CheckpointError, match="no run directory"):
        export_weights(tmp_path / "nope", tmp_path / "x.safetensors")
    with pytest.raises(sf.ConfigError, match="not a .safetensors file"):
        export_weights(tmp_path / "r", tmp_path)  # a folder
    with pytest.raises(sf.ConfigError, match="cannot write"):
        export_weights(tmp_path / "r", best / "w.safetensors")  # under a file
    # restore_best passes over it too, and keeps the weights the run holds
    held = {k: v.clone() for k, v in model.state_dict().items()}
    r2 = sf.fit(model, (x, y), run_dir=tmp_path / "r", restore_best=True, **common)
    assert r2.steps == 8 and all(torch.equal(v, model.state_dict()[k]) for k, v in held.items())
    events = (tmp_path / "r" / "events.jsonl").read_text()
    assert '"checkpoint_skipped"' in events and "best.pt" in events


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": lambda: mlp(hidden=9)}, "shape"),
        ({"optimizer": "sgd"}, "optimizer is SGD"),
        ({"n": 80}, "training data has 80 samples"),
    ],
)
def test_resume_refuses_a_changed_model_optimizer_or_data(tmp_path, change, message):
    x, y = make_classification(96)
    sf.fit(mlp(), (x, y), epochs=1, batch_size=16, progress="off", run_dir=tmp_path / "r")
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    n = change.get("n", 96)
    model = change.get("model", mlp)()
    with pytest.raises(sf.CheckpointError, match=message):
        sf.fit(
            model,
            (x[:n], y[:n]),
            epochs=2,
            batch_size=16,
            progress="off",
            optimizer=change.get("optimizer", "adamw"),
            run_dir=tmp_path / "r",
        )
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
    # more epochs with the same set-up are fine
    r = sf.fit(mlp(), (x, y), epochs=2, batch_size=16, progress="off", run_dir=tmp_path / "r")
    assert r.steps == 12


@pytest.mark.parametrize(
    ("option", "value"),
    [("batch_size", 8), ("accumulate", 2), ("seed", 1), ("drop_last", True)],
)
def test_resume_refuses_a_changed_data_order_unless_overridden(tmp_path, option, value):
    x, y = make_classification(100)
    common = dict(batch_size=16, progress="off", run_dir=tmp_path / "r", device="cpu")
    sf.fit(mlp(), (x, y), epochs=1, **common)
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(sf.CheckpointError, match=rf"\.{option} is {value!r}") as info:
        sf.fit(mlp(), (x, y), epochs=2, **{**common, option: value})
    assert "--override" in info.value.what
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
    r = sf.fit(mlp(), (x, y), epochs=2, override=True, **{**common, option: value})
    assert r.steps > 7
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    changed = [e for e in events if e["event"] == "config_changed"]
    assert len(changed) == 1 and changed[0]["train.epochs"] == [1, 2]
    assert any(k.endswith(f".{option}") for k in changed[0])


def test_resume_in_a_dataset_loads_no_sample_of_the_skipped_batches(tmp_path):
    from torch.utils.data import Dataset

    x, y = make_classification(400)

    class Counting(Dataset):
        def __init__(self):
            self.loaded = []

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            self.loaded.append(i)
            return x[i], y[i]

    common = dict(batch_size=8, epochs=1, progress="off", run_dir=tmp_path / "r", device="cpu")
    with pytest.raises(RuntimeError, match="simulated crash"):
        sf.fit(mlp(), Counting(), callbacks=[_Crash(46)], checkpoint_every=45, **common)
    data = Counting()
    r = sf.fit(mlp(), data, **common)
    assert r.steps == 50
    # 5 batches of 8 remain; before training, task inference reads 1 sample, the checks 8
    assert len(data.loaded) == 1 + 8 + 5 * 8


class _PauseAt(sf.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, run):
        if run.optimizer_step == self.at_step:
            run.pause("test")


def _dropout_net():
    torch.manual_seed(4)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    )


def test_resume_over_a_dataset_is_exact_with_a_model_that_draws_random_numbers(tmp_path):
    """The DataLoader over a Dataset seeds its iterators from its own generator: a resumed run
    continues the global RNG stream (the model's dropout) exactly where the paused run left it."""
    x, y = make_classification(96)
    data = Samples(x, y)

    common = dict(val=(x[:32], y[:32]), batch_size=16, epochs=3, progress="off", device="cpu")
    straight = _dropout_net()
    sf.fit(straight, data, run_dir=tmp_path / "a", **common)
    r = sf.fit(_dropout_net(), data, run_dir=tmp_path / "b", callbacks=[_PauseAt(8)], **common)
    assert r.preempted and r.steps == 8  # mid-epoch: 6 steps an epoch
    resumed = _dropout_net()
    assert sf.fit(resumed, data, run_dir=tmp_path / "b", resume="must", **common).steps == 18
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_run_directory_in_use_is_refused_and_free_again_when_its_holder_dies(tmp_path):
    x, y = make_classification(64)
    common = dict(batch_size=16, epochs=1, progress="off", device="cpu", run_dir=tmp_path / "r")
    sf.fit(mlp(), (x, y), **common)
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    code = (
        "import sys, time; from pathlib import Path; from surefit.rundir import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            sf.ConfigError, match=f"in use by a run that is still going .pid {holder.pid}"
        ):
            sf.fit(mlp(), (x, y), **{**common, "epochs": 2})
        assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    assert sf.fit(mlp(), (x, y), **{**common, "epochs": 2}).steps == 8  # no stale lock


def test_a_run_that_crashed_before_its_first_checkpoint_starts_over_with_clean_logs(tmp_path):
    x, y = make_classification(64)
    common = dict(batch_size=16, epochs=2, progress="off", device="cpu", run_dir=tmp_path / "r",
                  log_every=1)  # fmt: skip
    with pytest.raises(RuntimeError, match="simulated crash"):
        sf.fit(mlp(), (x, y), callbacks=[_Crash(3)], **common)
    assert not (tmp_path / "r" / "checkpoints" / "MANIFEST.json").exists()
    straight = sf.fit(mlp(), (x, y), **{**common, "run_dir": tmp_path / "s"})
    again = sf.fit(mlp(), (x, y), **common)
    assert again.steps == straight.steps == 8
    read = lambda run, name: (tmp_path / run / name).read_text().splitlines()  # noqa: E731
    steps = [json.loads(s)["step"] for s in read("r", "steps.jsonl")]
    assert steps == list(range(1, 9))
    metric_steps = lambda run: [json.loads(s)["step"] for s in read(run, "metrics.jsonl")]  # noqa: E731
    assert metric_steps("r") == metric_steps("s")
    events = [json.loads(s)["event"] for s in read("r", "events.jsonl")]
    assert events.count("start") == 2 and "restart" in events  # the crash stays on record


def test_a_deleted_manifest_is_rebuilt_from_the_checkpoint_files(tmp_path):
    x, y = make_classification(64)
    common = dict(batch_size=16, progress="off", device="cpu", run_dir=tmp_path / "r",
                  schedule="constant")  # fmt: skip
    sf.fit(mlp(), (x, y), epochs=1, **common)
    manifest = tmp_path / "r" / "checkpoints" / "MANIFEST.json"
    good = json.loads(manifest.read_text())
    manifest.write_text('{"checkpoints": [{"file": "last-000000004.pt"}]}')
    with pytest.raises(sf.CheckpointError, match="manifest is unreadable") as info:
        sf.fit(mlp(), (x, y), epochs=2, **common)
    assert "delete it to rebuild" in info.value.fix
    for key, wrong in (("step", "4"), ("file", 7), ("file", "../elsewhere.pt")):
        entry = {**good["checkpoints"][0], key: wrong}
        manifest.write_text(json.dumps({**good, "checkpoints": [entry]}))
        with pytest.raises(sf.CheckpointError, match="wrong kind"):
            sf.fit(mlp(), (x, y), epochs=2, **common)
    manifest.unlink()
    straight = mlp()
    sf.fit(straight, (x, y), epochs=2, **{**common, "run_dir": tmp_path / "s"})
    resumed = mlp()
    assert sf.fit(resumed, (x, y), epochs=2, **common).steps == 8
    assert all(
        torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters(), strict=True)
    )
    assert manifest.exists()


def test_checkpoints_and_config_get_the_mode_of_every_other_file_of_the_run(tmp_path):
    x, y = make_classification(32)
    sf.fit(mlp(), (x, y), val=(x, y), epochs=1, batch_size=16, progress="off", run_dir=tmp_path)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    plain = mode(tmp_path / "metrics.jsonl")  # made by open(): 0666 less the umask
    written = [tmp_path / "config.toml", *(tmp_path / "checkpoints").iterdir()]
    assert len(written) >= 4 and all(mode(p) == plain for p in written)


@pytest.mark.parametrize("limit", ["max_steps", "epochs"])
def test_resuming_a_finished_run_trains_and_writes_nothing(tmp_path, limit):
    x, y = make_classification(64)
    common = dict(val=(x[:16], y[:16]), batch_size=16, progress="off", device="cpu",
                  run_dir=tmp_path / "r", **({"max_steps": 5} if limit == "max_steps" else
                                             {"epochs": 2}))  # fmt: skip
    first = sf.fit(mlp(), (x, y), **common)
    files = lambda: {  # noqa: E731
        p.name: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.suffix in (".pt", ".json")
    }
    logs = lambda: [(tmp_path / "r" / n).read_text() for n in ("metrics.jsonl", "steps.jsonl")]  # noqa: E731
    before, before_logs = files(), logs()
    again = sf.fit(mlp(), (x, y), **common)
    assert again.steps == first.steps and again.history == first.history
    assert files() == before and logs() == before_logs
    fewer = {**common, limit: 1}  # asking for less than was trained: nothing more, and said so
    model = mlp()
    short = sf.fit(model, (x, y), **fewer)
    assert short.steps == first.steps and files() == before and logs() == before_logs
    assert ("already at step" if limit == "max_steps" else "more than epochs=1") in (
        short.stop_reason
    )
    saved = torch.load(first.checkpoint, weights_only=False)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


class _Augmented(torch.utils.data.Dataset):
    """A Dataset whose transform draws from torch's, python's and numpy's global RNGs."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        import random

        import numpy as np

        jitter = (
            0.1 * torch.randn(self.x.shape[1]) + 0.01 * random.random() + 0.01 * np.random.rand()
        )
        return self.x[i] + jitter, self.y[i]


def test_an_augmented_val_dataset_leaves_the_rng_alone_and_ignores_the_worker_count():
    x, y = make_classification(96)
    common = dict(batch_size=16, epochs=2, progress="off", device="cpu")
    runs = []
    for workers in (0, 1):
        model = _dropout_net()
        val = _Augmented(x[:32], y[:32])
        r = sf.fit(model, (x, y), val=val, num_workers=workers, **common)
        runs.append((model, [h["val_loss"] for h in r.history]))
    (a, va), (b, vb) = runs
    assert va == vb  # each val sample's augmentation is seeded by its index
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    plain = _dropout_net()  # the val set's draws did not move the dropout's RNG
    sf.fit(plain, (x, y), val=(x[:32], y[:32]), **common)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), plain.parameters(), strict=True))


def test_random_transforms_of_a_dataset_resume_exactly_and_ignore_the_worker_count(tmp_path):
    x, y = make_classification(96)

    common = dict(val=(x[:32], y[:32]), batch_size=16, epochs=3, progress="off", device="cpu")
    straight = _dropout_net()
    sf.fit(straight, _Augmented(x, y), run_dir=tmp_path / "a", **common)
    sf.fit(
        _dropout_net(), _Augmented(x, y), run_dir=tmp_path / "b", callbacks=[_PauseAt(8)], **common
    )
    resumed = _dropout_net()
    sf.fit(resumed, _Augmented(x, y), run_dir=tmp_path / "b", resume="must", **common)
    workers = _dropout_net()
    sf.fit(workers, _Augmented(x, y), num_workers=2, **common)
    for p, q, w in zip(
        straight.parameters(), resumed.parameters(), workers.parameters(), strict=True
    ):
        assert torch.equal(p, q) and torch.equal(p, w)
    # the augmentation does differ between epochs and samples
    ds = __import__("surefit.seeding", fromlist=["SeededSamples"]).SeededSamples(
        _Augmented(x, y), 0
    )
    assert not torch.equal(ds[(0, 5)][0], ds[(1, 5)][0]) and torch.equal(
        ds[(1, 5)][0], ds[(1, 5)][0]
    )


class _Crash(sf.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, run):
        if run.optimizer_step == self.at_step:
            raise RuntimeError("simulated crash")


def test_disk_full_during_a_save_keeps_the_previous_checkpoint_and_goes_on(tmp_path, monkeypatch):
    import errno

    import surefit.checkpoint as ck

    x, y = make_classification(64)
    real_save = torch.save
    calls = {"n": 0}

    def flaky(obj, f, *a, **k):
        calls["n"] += 1
        if obj["counters"]["optimizer_step"] == 6:  # the write of step 6 fails half-way
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", flaky)
    real_write = ck.atomic_write

    def full_disk(path, write):  # a disk that fills up while the file is written
        if path.name.startswith("last-000000008"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, write)

    monkeypatch.setattr(ck, "atomic_write", full_disk)
    r = sf.fit(
        mlp(),
        (x, y),
        epochs=3,
        batch_size=16,
        progress="off",
        checkpoint_every=2,
        keep_last=10,
        run_dir=tmp_path / "r",
        device="cpu",
    )
    assert r.steps == 12
    folder = tmp_path / "r" / "checkpoints"
    assert not list(folder.glob(".*.tmp"))  # no half-written file left behind
    store = CheckpointStore(folder)
    steps = [e["step"] for e in store.latest()]
    assert steps == [12, 10, 4, 2]  # the failed ones are simply absent
    state, _ = store.load_latest()
    assert state["counters"]["optimizer_step"] == 12
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "checkpoint_failed"]
    assert {e["step"] for e in failed} == {6, 8} and "No space" in failed[0]["error"]


def test_changed_learning_rate_needs_an_explicit_override(tmp_path):
    x, y = make_classification(96)
    common = dict(
        batch_size=16, progress="off", run_dir=tmp_path / "r", device="cpu", schedule="constant"
    )
    sf.fit(mlp(), (x, y), epochs=1, lr=1e-2, **common)
    with pytest.raises(sf.CheckpointError, match="override"):
        sf.fit(mlp(), (x, y), epochs=2, lr=5e-3, **common)
    r = sf.fit(mlp(), (x, y), epochs=2, lr=5e-3, override=True, **common)
    assert r.steps == 12 and r.history[-1]["lr"] == pytest.approx(5e-3)
    assert '"lr_override"' in (tmp_path / "r" / "events.jsonl").read_text()


def test_checkpoint_every_minutes(tmp_path):
    x, y = make_classification(64)
    sf.fit(
        mlp(),
        (x, y),
        epochs=1,
        batch_size=16,
        progress="off",
        run_dir=tmp_path / "r",
        every_minutes=1e-9,
        keep_last=10,
        device="cpu",
    )
    steps = [e["step"] for e in CheckpointStore(tmp_path / "r" / "checkpoints").latest()]
    assert steps == [4, 3, 2, 1]  # a minute too short to miss any step


def test_a_checkpoint_loads_weights_only_in_a_fresh_process(tmp_path):
    x, y = make_classification(64)
    sf.fit(
        mlp(),
        (x, y),
        val=(x, y),
        epochs=1,
        batch_size=16,
        progress="off",
        run_dir=tmp_path / "r",
        device="cpu",
    )
    path = CheckpointStore(tmp_path / "r" / "checkpoints").latest()[0]["file"]
    code = (
        "import sys, torch, surefit\n"
        f"s = torch.load({str(tmp_path / 'r' / 'checkpoints' / path)!r}, weights_only=True)\n"
        "print(sorted(s), sorted(s['rng']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for part in (
        "model",
        "optimizer",
        "rng",
        "counters",
        "schedule",
        "meta",
        "python",
        "numpy_keys",
    ):
        assert f"'{part}'" in r.stdout, part


def test_async_saving_writes_the_same_checkpoints_and_resumes_exactly(tmp_path):
    x, y = make_classification(96)
    common = dict(
        val=(x[:32], y[:32]),
        lr=1e-2,
        batch_size=16,
        seed=3,
        progress="off",
        accumulate=2,
        epochs=3,
        device="cpu",
        checkpoint_every=2,
        keep_last=20,
        max_overhead=0,  # every epoch end in both: the pace reads the clock
    )
    sf.fit(mlp(seed=8), (x, y), run_dir=tmp_path / "sync", **common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sf.fit(
            mlp(seed=8),
            (x, y),
            run_dir=tmp_path / "async",
            async_save=True,
            callbacks=[_Crash(5)],
            **common,
        )
    sf.fit(mlp(seed=1), (x, y), run_dir=tmp_path / "async", async_save=True, **common)

    def entries(run):
        store = CheckpointStore(tmp_path / run / "checkpoints")
        return {
            e["step"]: torch.load(store.folder / e["file"], weights_only=True)
            for e in store.latest()
        }

    a, b = entries("sync"), entries("async")
    assert sorted(a) == sorted(b)
    for step in a:
        for part in ("model", "counters"):
            sa, sb = a[step][part], b[step][part]
            assert sa.keys() == sb.keys()
            assert all(
                torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k]
                for k in sa
            ), (step, part)


def test_extending_max_steps_on_resume_stretches_the_schedule(tmp_path):
    x, y = make_classification(256)
    common = dict(batch_size=16, progress="off", run_dir=tmp_path / "r", device="cpu", lr=0.01)
    first = sf.fit(mlp(), (x, y), max_steps=20, eval_every_steps=10, **common)
    assert first.history[-1]["lr"] == pytest.approx(0.001)  # the end of a 20-step cosine
    longer = sf.fit(mlp(), (x, y), max_steps=40, eval_every_steps=10, **common)
    lrs = [h["lr"] for h in longer.history]
    from surefit.schedule import WarmupCosine

    # the 30th update (index 29) of a cosine that now ends at step 40, not at 20 (where it
    # would be at its floor): a record holds the rate of its last update
    assert lrs[2] == pytest.approx(0.01 * WarmupCosine(2, 40, 0.1)(29)) and lrs[2] > 0.002
    assert lrs[-1] == pytest.approx(0.001)


def test_extending_max_steps_that_ended_at_an_epoch_end_resumes_exactly(tmp_path):
    """The first part's last evaluation is its epoch end's: the longer run does not repeat it."""
    x, y = make_classification(64)
    xv, yv = make_classification(32, seed=1)
    common = dict(val=(xv, yv), batch_size=16, progress="off", lr=0.01, epochs=9)
    common["schedule"] = "constant"  # the same rates however far max_steps reaches
    sf.fit(mlp(), (x, y), max_steps=8, run_dir=tmp_path / "r", **common)
    sf.fit(mlp(), (x, y), max_steps=16, run_dir=tmp_path / "r", **common)
    sf.fit(mlp(), (x, y), max_steps=16, run_dir=tmp_path / "w", **common)
    evals = [
        [(r["step"], r["val_loss"]) for r in map(json.loads, lines) if r.get("split") == "eval"]
        for lines in ((tmp_path / d / "metrics.jsonl").read_text().splitlines() for d in "rw")
    ]
    assert evals[0] == evals[1] and [s for s, _ in evals[1]] == [4, 8, 12, 16]


def _early_stopped(tmp_path, name, callbacks=()):
    x, y = make_classification(96)
    xv, yv = make_classification(32, seed=1)  # another rule: the val loss soon stops improving
    return sf.fit(_dropout_net(), (x, y), val=(xv, yv), epochs=40, patience=2, lr=0.05,
                  batch_size=16, progress="off", run_dir=tmp_path / name,
                  callbacks=list(callbacks))  # fmt: skip


def test_a_run_that_stopped_early_stays_stopped_when_resumed(tmp_path):
    first = _early_stopped(tmp_path, "r")
    assert first.stop_reason.startswith("early stopping") and first.steps < 40 * 6
    files = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*.pt")}
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text()
    again = _early_stopped(tmp_path, "r")
    assert again.steps == first.steps and again.stop_reason == first.stop_reason
    assert files == {p: p.read_bytes() for p in (tmp_path / "r").rglob("*.pt")}
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics


def test_a_pause_for_one_session_leaves_early_stopping_exact(tmp_path):
    """The pausing callback comes first in the list in one session only: the early-stopping
    state is found by its name, not by its place in the list."""
    whole = _early_stopped(tmp_path, "whole")
    paused = _early_stopped(tmp_path, "p", callbacks=[_PauseAt(8)])
    assert paused.preempted and paused.steps == 8
    resumed = _early_stopped(tmp_path, "p")
    assert resumed.steps == whole.steps and resumed.stop_reason == whole.stop_reason
    pairs = zip(whole.model.parameters(), resumed.model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_a_run_that_started_fresh_does_not_overwrite_a_checkpoint_written_meanwhile(
    tmp_path, monkeypatch
):
    """Another process took the run directory between this run's look at it and its lock."""
    from surefit import api

    x, y = make_classification(64)
    common = dict(epochs=1, batch_size=16, progress="off", run_dir=tmp_path / "r")
    real, written = api.Run.checks, []

    def checks_while_another_run_finishes(self, trainer, parts):
        monkeypatch.setattr(api.Run, "checks", real)
        sf.fit(mlp(), (x, y), **common)  # the other process
        written.extend(p.read_bytes() for p in sorted((tmp_path / "r").rglob("*.*")))
        return real(self, trainer, parts)

    monkeypatch.setattr(api.Run, "checks", checks_while_another_run_finishes)
    with pytest.raises(sf.ConfigError, match="gained a checkpoint") as info:
        sf.fit(mlp(), (x, y), **common)
    assert "resume" in info.value.fix
    assert written == [p.read_bytes() for p in sorted((tmp_path / "r").rglob("*.*"))]


def test_optimizer_options_changed_on_resume_apply_and_a_new_schedule_is_refused(tmp_path):
    x, y = make_classification(64)
    common = dict(batch_size=16, progress="off", run_dir=tmp_path / "r", lr=0.01)
    sf.fit(mlp(), (x, y), epochs=1, **common)
    config = (tmp_path / "r" / "config.toml").read_text()
    with pytest.raises(sf.CheckpointError, match="schedule.name"):
        sf.fit(mlp(), (x, y), epochs=2, schedule="onecycle", **common)
    assert (tmp_path / "r" / "config.toml").read_text() == config
    groups = []

    class Look(sf.Callback):
        def on_fit_start(self, run):
            groups.extend(dict(g) for g in run._trainer.optimizer.param_groups)

    sf.fit(mlp(), (x, y), epochs=2, weight_decay=0.5, betas=[0.8, 0.99], callbacks=[Look()],
           **common)  # fmt: skip
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.5]  # biases still not decayed
    assert all(tuple(g["betas"]) == (0.8, 0.99) for g in groups)


def test_a_pause_right_after_a_skipped_step_resumes_exactly(tmp_path):
    """The pause's checkpoint reads the steps since the last sync point: what it decides (a
    rollback, a stop) waits for the next scheduled sync point, where the run without the pause
    decides it; and it holds the rollback copy that run holds."""
    x, y = make_classification(256)
    x[::37, 0] = float("nan")  # a few bad samples: their batches' steps are skipped
    common = dict(epochs=2, batch_size=16, progress="off", log_every=7, lr=0.01, checks=False)
    straight = sf.fit(mlp(), (x, y), run_dir=tmp_path / "a", **common)
    lines = [json.loads(s) for s in (tmp_path / "a" / "steps.jsonl").read_text().splitlines()]
    ats = [r["step"] for r in lines if r.get("skipped") and r["step"] % 7 not in (0, 6)]
    assert straight.health_stop and straight.steps == 28  # after a rollback (steps 6-8 bad)
    for at in (ats[0], ats[-1]):  # the first: its rollback copy (step 0) is on no disk
        run = tmp_path / f"b{at}"
        paused = sf.fit(mlp(), (x, y), run_dir=run, callbacks=[_PauseAt(at)], **common)
        assert paused.preempted and paused.steps == at
        resumed = sf.fit(mlp(), (x, y), run_dir=run, **common)
        pairs = zip(straight.model.parameters(), resumed.model.parameters(), strict=True)
        assert all(torch.equal(p, q) for p, q in pairs), at
        got = [json.loads(s) for s in (run / "steps.jsonl").read_text().splitlines()]
        assert [r["lr"] for r in got] == [r["lr"] for r in lines], at


def _paused_and_resumed(tmp_path, kw, pause, callbacks=(), later=None):
    """A run paused at step ``pause`` and resumed (with ``later`` changing keywords); the model."""
    from surefit.callbacks import PauseAt

    x, y = make_classification(128)
    first = sf.fit(mlp(), (x, y), run_dir=tmp_path, callbacks=[*callbacks, PauseAt(pause)], **kw)
    assert first.preempted
    model = mlp(seed=5)
    r = sf.fit(
        model, (x, y), run_dir=tmp_path, callbacks=list(callbacks), **{**kw, **(later or {})}
    )
    return model, r


def test_restore_best_without_best_pt_survives_a_resume(tmp_path):
    """save_best off: the best weights are held in memory, and go into each checkpoint, so a
    resumed run restores them as the uninterrupted one does."""
    x, y = make_classification(128)
    kw = dict(val=(x[:32], y[:32]), epochs=6, batch_size=16, lr=0.3, optimizer="sgd",
              schedule="constant", progress="off", restore_best=True, save_best=False)  # fmt: skip
    straight = mlp()
    r1 = sf.fit(straight, (x, y), run_dir=tmp_path / "a", **kw)
    assert r1.best_step < r1.steps  # the last weights are not the best: restoring matters
    resumed, r2 = _paused_and_resumed(tmp_path / "b", kw, pause=r1.best_step + 3)
    assert r2.best_step == r1.best_step
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters(),
                                                 strict=True))  # fmt: skip


def test_a_onecycle_run_resumed_for_more_epochs_stretches_its_schedule(tmp_path):
    kw = dict(epochs=2, batch_size=16, schedule="onecycle", progress="off")
    _, r = _paused_and_resumed(tmp_path, kw, pause=5, later={"epochs": 4})
    assert r.steps == 32 and "completed" in r.stop_reason


def test_a_run_resumed_mid_epoch_does_not_start_that_epoch_again(tmp_path):
    class Starts(sf.Callback):
        def __init__(self):
            self.starts = []

        def on_epoch_start(self, run):
            self.starts.append(run.epoch)

        def state_dict(self):
            return {"starts": list(self.starts)}

        def load_state_dict(self, state):
            self.starts = list(state["starts"])

    kw = dict(epochs=3, batch_size=16, progress="off")
    straight = Starts()
    x, y = make_classification(128)
    sf.fit(mlp(), (x, y), run_dir=tmp_path / "a", callbacks=[straight], **kw)
    resumed = Starts()
    _paused_and_resumed(tmp_path / "b", kw, pause=5, callbacks=[resumed])
    assert straight.starts == resumed.starts == [0, 1, 2]


def test_a_run_whose_checkpoints_were_deleted_is_not_started_over(tmp_path):
    """Deleting checkpoints/ to save disk must not let the next fit there replace the run's
    logs and config: only a run that never saved is started over."""
    import shutil

    x, y = make_classification(64)
    kw = dict(epochs=2, batch_size=16, progress="off", run_dir=tmp_path / "r")
    sf.fit(mlp(), (x, y), **kw)
    shutil.rmtree(tmp_path / "r" / "checkpoints")
    files = {n: (tmp_path / "r" / n).read_bytes() for n in ("metrics.jsonl", "config.toml")}
    with pytest.raises(sf.ConfigError, match="none of which is there now"):
        sf.fit(mlp(), (x, y), **{**kw, "epochs": 1})
    assert files == {n: (tmp_path / "r" / n).read_bytes() for n in files}


def test_a_resume_reads_past_a_damaged_line_of_its_metrics_log(tmp_path):
    from surefit.callbacks import PauseAt

    x, y = make_classification(64)
    kw = dict(epochs=3, batch_size=16, progress="off", run_dir=tmp_path / "r", loggers=["csv"])
    sf.fit(mlp(), (x, y), callbacks=[PauseAt(6)], **kw)
    metrics = tmp_path / "r" / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 1
    metrics.write_bytes(b'{"step": 4, "tr\xff\xfe garbage\n' + b"".join(lines[1:]))
    r = sf.fit(mlp(), (x, y), **kw)
    assert r.steps == 12 and "completed" in r.stop_reason
    assert metrics.read_bytes().startswith(b'{"step": 4, "tr\xff\xfe garbage\n')  # kept as it was
