"""Epoch-end saves paced by their cost (checkpoint.max_overhead): fewer files, the same run."""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

import surefit as sf
import surefit.checkpoint as ck
from surefit.checkpoint import CheckpointStore, Saves
from tests.conftest import Mul, SpikeAt, make_classification


class _Crash(sf.Callback):
    def on_step_end(self, run):
        if run.optimizer_step == 70:
            raise RuntimeError("simulated crash")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), Mul())


@pytest.fixture
def slow_disk(monkeypatch):
    """The pace's clock (only checkpoint.py reads it) advances one second a reading: every save
    costs a second, and the next epoch end comes one second after it, far inside the 100 s that
    max_overhead = 0.01 asks for, so every epoch-end save after the first is put off."""
    clock = iter(range(1, 1 << 30))
    monkeypatch.setattr(ck, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))


def _run(run_dir, callbacks=(), spikes=(45, 46, 47), **kw):
    x, y = make_classification(320)  # 20 steps an epoch
    model = _model()
    spikes = SpikeAt(model[3], set(spikes))  # a rollback in epoch 3, read at step 50
    options = dict(epochs=4, batch_size=16, lr=3e-3, log_every=10, checks=False, progress="off",
                   seed=0, run_dir=str(run_dir), keep_last=10)  # fmt: skip
    options.update(kw)
    sf.fit(model, (x, y), callbacks=[spikes, *callbacks], **options)
    return model


def _events(run_dir, name):
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _records(run_dir):
    """metrics.jsonl without its clock readings."""
    drop = ("time_s", "samples_per_s", "steps_per_s")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def _steps(run_dir):
    return sorted(e["step"] for e in CheckpointStore(run_dir / "checkpoints").latest())


def test_paced_epoch_end_saves_leave_the_run_as_if_written(tmp_path, slow_disk):
    """The rollback at step 50 goes to the copy taken at the epoch end of step 40 in both runs,
    although only one of them wrote a checkpoint there."""
    every = _run(tmp_path / "every", max_overhead=0)
    paced = _run(tmp_path / "paced")
    assert _steps(tmp_path / "every") == [20, 40, 60, 80]
    assert _steps(tmp_path / "paced") == [20, 80]  # the first epoch end (measured), the end
    paced_events = _events(tmp_path / "paced", "checkpoints_paced")
    assert len(paced_events) == 1 and paced_events[0]["step"] == 40
    assert paced_events[0]["save_s"] == 1.0 and paced_events[0]["every_s"] == 100.0
    for run in ("every", "paced"):
        assert [e["to_step"] for e in _events(tmp_path / run, "rollback")] == [40]
    assert _same(every, paced)
    assert _records(tmp_path / "every") == _records(tmp_path / "paced")


def test_a_crash_after_paced_saves_resumes_exactly_from_the_last_written(tmp_path, slow_disk):
    straight = _run(tmp_path / "straight")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "crashed", callbacks=[_Crash()])
    assert _steps(tmp_path / "crashed") == [20]  # steps 40 and 60 were put off
    resumed = _run(tmp_path / "crashed")
    assert _steps(tmp_path / "crashed") == [20, 40, 80]  # a new session measures again
    assert _same(straight, resumed)
    assert _records(tmp_path / "straight") == _records(tmp_path / "crashed")


def test_a_new_best_and_explicit_schedules_are_never_put_off(tmp_path, slow_disk):
    x, y = make_classification(320)
    sf.fit(nn.Linear(8, 3), (x, y), val=(x[:64], y[:64]), epochs=3, batch_size=32, lr=1e-2,
           progress="off", run_dir=str(tmp_path / "r"), keep_last=10, checkpoint_every=4,
           max_overhead=0.5)  # fmt: skip
    best_steps = [e["step"] for e in _events(tmp_path / "r", "checkpoint") if e["kind"] == "best"]
    improved = [10 * (i + 1) for i, h in enumerate(_history(tmp_path / "r")) if h["best"]]
    assert best_steps == improved and improved
    steps = _steps(tmp_path / "r")
    assert set(range(4, 31, 4)) <= set(steps)  # every 4 steps, as asked
    assert set(improved) <= set(steps)  # the rolling checkpoint goes with a new best


def _history(run_dir):
    """Per evaluation: whether it improved on every earlier one (val_loss, min)."""
    evals = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "val_loss" in m]  # fmt: skip
    out, low = [], float("inf")
    for m in evals:
        out.append({"best": m["val_loss"] < low})
        low = min(low, m["val_loss"])
    return out


def test_a_failed_save_is_not_paced_and_the_next_epoch_end_tries_again(tmp_path):
    calls = []

    class Store:
        def save(self, state, *, step, kind):
            calls.append(step)
            if step == 1:
                raise OSError(28, "No space left on device")
            return tmp_path / f"last-{step}"

    saves = Saves(Store(), async_save=False, max_overhead=0.01, record=lambda *a: None)
    assert not saves.put_off()  # nothing measured yet
    saves.write(dict, 1, ("last",))
    assert saves.cost is None and not saves.put_off()
    saves.write(dict, 2, ("last",))
    assert saves.cost is not None and saves.put_off()  # measured, and just now
    saves.write(dict, 3, ("best",))  # best.pt alone does not move the pace
    assert saves.put_off()
    assert calls == [1, 2, 3]
    assert not Saves(Store(), False, 0.0, lambda *a: None).put_off()  # 0: every epoch end


@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
def test_max_overhead_out_of_range_is_a_config_error(tmp_path, value):
    x, y = make_classification(64)
    with pytest.raises(sf.ConfigError, match="max_overhead"):
        sf.fit(nn.Linear(8, 3), (x, y), epochs=1, max_overhead=value, progress="off")


class _Saved(sf.Callback):
    def __init__(self) -> None:
        self.paths: list[str] = []

    def on_checkpoint(self, run, path):
        self.paths.append(path.name)


def test_the_last_epoch_end_is_saved_once_and_a_longer_resume_stays_exact(tmp_path):
    """The run's last epoch end is written by its final save alone (with best.pt when that
    epoch improved, after the last log line); a resume for more epochs then equals the longer
    run, a rollback included (spikes at 45-47, past the first part's 40 steps)."""
    saved = _Saved()
    # the same rates however far epochs reaches; 16 steps an epoch
    more = dict(val=0.2, schedule="constant", spikes=(42, 43, 44, 45))
    _run(tmp_path / "r", callbacks=[saved], epochs=2, **more)
    writes = [(e["kind"], e["step"]) for e in _events(tmp_path / "r", "checkpoint")]
    assert len(writes) == len(set(writes)) and len(saved.paths) == len(set(saved.paths))
    last = max(s for _, s in writes)
    assert ("last", last) in writes and saved.paths[-1] == f"last-{last:09d}.pt"
    resumed = _run(tmp_path / "r", epochs=4, **more)
    whole = _run(tmp_path / "w", epochs=4, **more)
    rollbacks = [[e["to_step"] for e in _events(tmp_path / d, "rollback")] for d in "rw"]
    assert rollbacks[0] == rollbacks[1] == [last] and _same(resumed, whole)
    evals = [[r for r in _records(tmp_path / d) if r.get("split") == "eval"] for d in "rw"]
    assert evals[0] == evals[1] and len(evals[0]) == 4
