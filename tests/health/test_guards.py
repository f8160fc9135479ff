"""Faults injected into tiny real runs: skipped, quarantined, traced, rolled back."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surefit as sf
from surefit.selfcheck import _equal
from tests.conftest import Mul, Samples, SpikeAt, make_classification, mlp


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _events(run_dir, name):
    return [e for e in _lines(run_dir / "events.jsonl") if e["event"] == name]


def _finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _fit(model, train, run_dir, **kw):
    options = dict(
        epochs=2, batch_size=16, progress="off", run_dir=str(run_dir), log_every=5, seed=0
    )
    options.update(kw)
    return sf.fit(model, train, **options)


@pytest.mark.parametrize("optimizer", ["adamw", "radam"])  # fused (device skip), host read
def test_nan_inputs_are_skipped_and_exactly_the_bad_samples_quarantined(tmp_path, optimizer):
    x, y = make_classification(256)
    x[5, 2] = float("nan")
    x[77, 0] = float("inf")
    model = mlp()
    r = _fit(model, (x, y), tmp_path, optimizer=optimizer)
    assert _finite(model)
    quarantine = _lines(tmp_path / "quarantine.jsonl")
    assert len(quarantine) == 4  # two bad samples, two epochs
    assert {i for q in quarantine for i in q["bad_samples"]} == {5, 77}
    for q in quarantine:
        assert set(q["bad_samples"]) <= set(q["indices"]) and len(q["indices"]) == 16
        assert q["bad"] in ("loss+grad", "grad")  # tanh(inf) is finite, its gradient is not
    origin = _events(tmp_path, "nan_origin")
    assert len(origin) == 1 and origin[0]["module"] == "<data>"
    assert sum(h.get("skipped_steps", 0) for h in r.history) == 4
    steps = _lines(tmp_path / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(1, r.steps + 1))
    assert sorted(s["step"] for s in steps if s.get("skipped")) == sorted(
        q["step"] for q in quarantine
    )
    assert r.best_metrics["val_loss" if "val_loss" in r.best_metrics else "train_loss"] < 2


def test_skipped_step_leaves_weights_and_optimizer_untouched():
    """A run whose last batch is bad ends exactly as the clean run that stops before it."""
    from torch.utils.data import DataLoader, TensorDataset

    x, y = make_classification(64)
    bad = x.clone()
    bad[60, 0] = float("nan")  # in the last of four batches
    clean_model, bad_model = mlp(), mlp()
    kw = dict(epochs=2, progress="off", schedule="constant")
    sf.fit(clean_model, DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16), **kw)
    sf.fit(bad_model, DataLoader(TensorDataset(bad, y), batch_size=16), **kw)
    for a, b in zip(clean_model.parameters(), bad_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_huge_targets_are_skipped(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = x.sum(1, keepdim=True)
    y[9] = 1e30  # squared error overflows float32
    model = nn.Linear(8, 1)
    _fit(model, (x, y), tmp_path, task="regression", epochs=1)
    assert _finite(model)
    quarantine = _lines(tmp_path / "quarantine.jsonl")
    assert [q["bad_samples"] for q in quarantine] == [[9]]


def test_a_loss_that_returns_inf(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = x.sum(1, keepdim=True)
    y[[3, 40]] = -12345.0  # a marker the loss turns into Inf

    def loss(out, target):
        return F.mse_loss(out, target) + torch.where((target == -12345).any(), torch.inf, 0.0)

    model = nn.Linear(8, 1)
    _fit(model, (x, y), tmp_path, loss=loss, epochs=1)
    assert _finite(model)
    quarantine = _lines(tmp_path / "quarantine.jsonl")
    assert sorted(i for q in quarantine for i in q["bad_samples"]) == [3, 40]
    assert all(q["bad"].startswith("loss") for q in quarantine)
    origin = _events(tmp_path, "nan_origin")
    assert origin[0]["module"] == "<loss>"


class Poison(nn.Module):
    """Turns a row into NaN when its first input is the marker 99."""

    def forward(self, x):
        return torch.where((x[:, :1] == 99), torch.full_like(x, float("nan")), x)


def test_nan_origin_names_the_layer(tmp_path):
    x, y = make_classification(128)
    x[21, 0] = 99.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Identity(), nn.Tanh(), nn.Linear(8, 3))
    model[1] = Poison()  # after the first layer: its input is finite, its output is not
    model[0].weight.data[0].zero_()
    model[0].bias.data[0] = 0.0
    with torch.no_grad():
        model[0].weight[0, 0] = 1.0  # row 0 of the first layer passes input 0 through
    model[0].weight.requires_grad_(False)
    model[0].bias.requires_grad_(False)
    _fit(model, (x, y), tmp_path, epochs=1)
    origin = _events(tmp_path, "nan_origin")
    assert len(origin) == 1
    assert origin[0]["module"] == "1" and origin[0]["type"] == "Poison"
    assert origin[0]["inputs_nonfinite"] is False and origin[0]["weights_nonfinite"] is False
    assert [q["bad_samples"] for q in _lines(tmp_path / "quarantine.jsonl")] == [[21]]
    assert _finite(model)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_the_quarantine_names_samples_by_their_index_in_the_data_given(tmp_path, as_dataset):
    x, y = make_classification(320)
    x[250, 3] = float("nan")
    data = Samples(x, y) if as_dataset else (x, y)
    _fit(mlp(), data, tmp_path, val=0.2, epochs=1, checks=False)  # the split moves positions
    (record,) = _lines(tmp_path / "quarantine.jsonl")
    assert record["bad_samples"] == [250] and 250 in record["indices"]


@pytest.fixture(params=["host", "device"])
def skip_path(request, monkeypatch):
    """Both ways a step is skipped: on CPU the host reads the flag from memory; the device way
    (CUDA's, where a read would sync) hands it to a fused kernel, which CPU kernels take too."""
    from surefit.health import Health

    if request.param == "device":
        monkeypatch.setattr(Health, "_reads_on_host", lambda self, loss: False)
    return request.param


def test_a_skipped_first_step_leaves_no_unfilled_optimizer_state(tmp_path, skip_path):
    """Fused SGD makes its momentum buffers with empty_like on its first step, for the kernel to
    fill; a first step skipped on the device would leave them holding whatever memory held."""
    from surefit.data import epoch_order

    x, y = make_classification(96)
    x[epoch_order(96, 0, 0)[0], 3] = float("nan")  # in the first batch
    seen = []

    class Look(sf.Callback):
        def on_step_end(self, run):
            if run.optimizer_step <= 2:
                seen.append({k: dict(v) for k, v in run._trainer.optimizer.state.items()})

    model = mlp()
    r = _fit(model, (x, y), tmp_path, optimizer="sgd", lr=0.05, callbacks=[Look()], checks=False)
    assert [q["step"] for q in _lines(tmp_path / "quarantine.jsonl")][0] == 1
    assert seen[0] == {}  # step 1 skipped: no state, as if it never ran
    assert seen[1] and all(torch.isfinite(v["momentum_buffer"]).all() for v in seen[1].values())
    assert _finite(model) and r.steps == 12


def test_too_many_bad_batches_stop_the_run(tmp_path, capsys):
    x, y = make_classification(512)
    x[::3, 1] = float("nan")  # a third of the samples: nearly every batch
    r = _fit(model := mlp(), (x, y), tmp_path, epochs=3)
    assert "max_bad_fraction" in r.stop_reason and r.health_stop == r.stop_reason
    assert _events(tmp_path, "health_stop")
    assert _finite(model)
    from surefit.cli import EXIT_DIVERGED, _exit_code

    capsys.readouterr()
    assert _exit_code(r) == EXIT_DIVERGED == 3
    assert "stopped by the health guards" in capsys.readouterr().err  # no console said it
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".lock"}
    again = _fit(mlp(), (x, y), tmp_path, epochs=3)  # resumed: the guards' stop holds
    assert again.steps == r.steps and again.health_stop == r.health_stop
    written = ("events.jsonl", "config.toml")  # the resume's own record
    assert all(b == p.read_bytes() for p, b in files.items() if p.name not in written)
    from surefit import report

    status = report._status(report.read_run(tmp_path))  # the page's first fact
    assert status == f"stopped by the health guards: {r.stop_reason}"


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "rmsprop"])  # rmsprop has no fused kernel
def test_skipped_steps_keep_the_schedule_on_its_plan_whatever_the_log_interval(
    optimizer, skip_path
):
    """The schedule counts the steps attempted: a skipped step's rate goes unused, the run ends
    at the floor, and the weights do not depend on when the host learns of the skip."""
    x, y = make_classification(200)
    x[17, 3] = float("nan")  # one skipped step an epoch

    def run(every):
        model, rates = mlp(), []

        class Rates(sf.Callback):
            def on_step_end(self, run):
                rates.append(run.lr)

        r = sf.fit(model, (x, y), optimizer=optimizer, lr=0.05, schedule="warmup_cosine",
                   warmup=0.2, epochs=2, batch_size=16, seed=3, progress="off", log_every=every,
                   callbacks=[Rates()])  # fmt: skip
        return model, rates, r

    (a, rates_a, r), (b, rates_b, _) = run(1), run(50)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert rates_a == rates_b and len(rates_a) == r.steps == 26
    from surefit.schedule import WarmupCosine

    plan = WarmupCosine(round(0.2 * 26), 26, 0.1)
    assert rates_a == pytest.approx([0.05 * plan(s + 1) for s in range(26)], rel=1e-12)
    assert r.history[-1]["lr"] == pytest.approx(0.05 * 0.1)  # the last update's: the floor


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adagrad"])  # fused on CPU
def test_the_host_and_the_device_skip_leave_the_same_run(optimizer, monkeypatch):
    """The step the host skips on CPU and the one the fused kernel skips (CUDA's way) leave the
    same weights, moments and step counts: a skipped step is as if it never ran."""
    from surefit.health import Health

    x, y = make_classification(160)
    x[[3, 40, 41, 150]] = float("nan")  # bad batches, the first among them

    def run():
        model = mlp()
        r = sf.fit(model, (x, y), optimizer=optimizer, lr=0.05, epochs=2, batch_size=16,
                   progress="off", checks=False)  # fmt: skip
        return model, r

    host, r = run()
    monkeypatch.setattr(Health, "_reads_on_host", lambda self, loss: False)
    device, _ = run()
    assert all(torch.equal(p, q) for p, q in zip(host.parameters(), device.parameters(),
                                                 strict=True))  # fmt: skip
    assert _finite(host) and r.steps == 20


def _spiky_step(spike_at: range):
    calls = {"n": 0}

    def step(model, batch):
        x, y = batch
        calls["n"] += 1
        out = model(x)
        if calls["n"] in spike_at:  # a burst of garbage: wrong labels, a blown-up loss
            return 20 * F.cross_entropy(out, (y + 1) % 3), out
        return F.cross_entropy(out, y), out

    return step


def test_a_forced_spike_rolls_back_and_the_run_recovers(tmp_path):
    x, y = make_classification(1536, seed=1)
    x, y, xv, yv = x[:1024], y[:1024], x[1024:], y[1024:]
    kw = dict(val=(xv, yv), epochs=6, batch_size=32, lr=3e-3, log_every=10, task="multiclass")
    clean = _fit(mlp(), (x, y), tmp_path / "clean", step=_spiky_step(range(0)), **kw)
    spiky = _fit(mlp(), (x, y), tmp_path / "spiky", step=_spiky_step(range(75, 80)), **kw)
    rollbacks = _events(tmp_path / "spiky", "rollback")
    assert len(rollbacks) == 1 and "in a row" in rollbacks[0]["why"]
    assert _events(tmp_path / "spiky", "spike")
    assert not _events(tmp_path / "clean", "rollback")
    acc = lambda r: r.history[-1]["val_accuracy"]  # noqa: E731
    assert abs(acc(spiky) - acc(clean)) <= 0.01, (acc(spiky), acc(clean))


def test_a_rollback_from_checkpoints_skips_one_written_amid_spikes(tmp_path):
    x, y = make_classification(1024, seed=1)
    seen = {}

    class Weights(sf.Callback):
        def on_step_end(self, run):
            seen[run.optimizer_step] = [p.detach().clone() for p in run.model.parameters()]

    _fit(mlp(), (x, y), tmp_path, step=_spiky_step(range(51, 54)), epochs=1, batch_size=16,
         checkpoint_every=17, rollback_from="checkpoint", callbacks=[Weights()])  # fmt: skip
    assert [e["step"] for e in _events(tmp_path, "spike")] == [50, 51, 52]  # a checkpoint at 51
    assert len(_events(tmp_path, "rollback")) == 1
    # read at the sync point of step 55 (log_every 5), the rollback sets the weights back to a
    # checkpoint's: step 34's, before the spikes, not step 51's, amid them
    same = lambda s: all(torch.equal(a, b) for a, b in zip(seen[s], seen[55], strict=True))  # noqa: E731
    assert [s for s in sorted(seen) if s < 55 and same(s)] == [34]


def test_a_rollback_after_a_resume_from_a_pause_goes_where_the_uninterrupted_run_went(tmp_path):
    """A pause at step 120 writes a checkpoint off the schedule (every 50 steps): the resumed run
    must roll back to step 100's copy, as the uninterrupted run does, not to 120."""
    from surefit.callbacks import PauseAt

    x, y = make_classification(4096)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), Mul())

    kw = dict(epochs=1, batch_size=16, log_every=10, lr=3e-3, checks=False, checkpoint_every=50)
    spikes = {150, 151, 152}
    straight = model()
    _fit(straight, (x, y), tmp_path / "a", callbacks=[SpikeAt(straight[3], spikes)], **kw)
    first = model()
    _fit(first, (x, y), tmp_path / "b", callbacks=[SpikeAt(first[3], spikes), PauseAt(120)], **kw)
    resumed = model()
    _fit(resumed, (x, y), tmp_path / "b", callbacks=[SpikeAt(resumed[3], spikes)], **kw)
    assert len(_events(tmp_path / "a", "rollback")) == len(_events(tmp_path / "b", "rollback")) == 1
    assert all(
        torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters(), strict=True)
    )
    steps = lambda d: (tmp_path / d / "steps.jsonl").read_text()  # noqa: E731
    assert steps("a") == steps("b")


@pytest.mark.parametrize(
    "spikes, pause", [({20, 21, 22}, 22), ({20, 21, 22}, 23), ({36, 37, 38}, 26)]
)
def test_rollbacks_to_checkpoints_after_a_pause_go_where_the_uninterrupted_run_went(
    tmp_path, spikes, pause
):
    """rollback_from="checkpoint": a pause's checkpoint taken while a rollback waits for its sync
    point (step 24) is no state to roll back to; and the epoch-end saves are not paced by the
    clock, which had put off step 32's save in one session and not in a resumed one."""
    from surefit.callbacks import PauseAt

    x, y = make_classification(256)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3), Mul())

    kw = dict(epochs=3, batch_size=16, log_every=4, lr=3e-3, checks=False,
              rollback_from="checkpoint")  # fmt: skip
    straight = model()
    _fit(straight, (x, y), tmp_path / "a", callbacks=[SpikeAt(straight[3], spikes)], **kw)
    first = model()
    _fit(first, (x, y), tmp_path / "b", callbacks=[SpikeAt(first[3], spikes), PauseAt(pause)], **kw)
    resumed = model()
    _fit(resumed, (x, y), tmp_path / "b", callbacks=[SpikeAt(resumed[3], spikes)], **kw)
    to = [[e["to_step"] for e in _events(tmp_path / d, "rollback")] for d in "ab"]
    assert to[0] == to[1] == [16 if pause < 26 else 32]
    assert all(
        torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters(), strict=True)
    )


def test_two_rollbacks_to_one_copy_restore_its_optimizer_state_both_times(tmp_path):
    """The optimizer keeps the tensors it loads and steps them in place: loading the copy itself
    let the first rollback's training overwrite what the second one went back to."""
    x, y = make_classification(8192, seed=1)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seen = {}

    class State(sf.Callback):
        def on_step_end(self, run):
            moments = [v for s in opt.state_dict()["state"].values() for v in s.values()]
            seen[run.optimizer_step] = [t.detach().clone() for t in [*model.parameters(), *moments]]

    step = _spiky_step(set(range(215, 221)) | set(range(250, 262)))  # two bursts after step 200
    _fit(model, (x, y), tmp_path, step=step, optimizer=opt, epochs=1, batch_size=32, max_steps=300,
         callbacks=[State()])  # fmt: skip
    assert [e["to_step"] for e in _events(tmp_path, "rollback")] == [200, 200]
    same = lambda a, b, n: all(torch.equal(p, q) for p, q in zip(a[:n], b[:n], strict=True))  # noqa: E731
    params = len(list(model.parameters()))
    back = [s for s in sorted(seen) if s > 200 and same(seen[s], seen[200], params)]
    assert len(back) == 2  # the steps the two rollbacks happened at
    assert all(same(seen[s], seen[200], len(seen[200])) for s in back)  # moments and step counts


def test_rollbacks_are_bounded(tmp_path):
    x, y = make_classification(1024, seed=1)
    step = _spiky_step(range(40, 400))  # garbage from step 40 on: no rollback can help
    r = _fit(mlp(), (x, y), tmp_path, step=step, epochs=20, batch_size=32, max_rollbacks=2)
    assert len(_events(tmp_path, "rollback")) == 2
    assert "rollback" in r.stop_reason


@pytest.mark.parametrize("schedule", ["constant", "plateau"])  # plateau: no initial_lr to go by
def test_each_rollback_lowers_the_rate_again(tmp_path, schedule):
    x, y = make_classification(1024, seed=1)
    seen = {}

    class Rates(sf.Callback):
        def on_step_end(self, run):
            seen[run.optimizer_step] = run.lr

    step = _spiky_step(range(40, 400))
    r = _fit(mlp(), (x, y), tmp_path, step=step, epochs=20, batch_size=32, lr=3e-3,
             schedule=schedule, plateau_patience=100, rollback_lr_factor=0.5,
             val=(x[:64], y[:64]) if schedule == "plateau" else None,
             callbacks=[Rates()])  # fmt: skip
    assert len(_events(tmp_path, "rollback")) == 3 and r.health_stop
    assert sorted(set(seen.values()), reverse=True) == pytest.approx(
        [3e-3, 1.5e-3, 7.5e-4, 3.75e-4]
    )
    assert "already multiplied the rate by 0.5" in r.health_stop


def test_health_state_round_trips():
    from surefit.config import HealthConfig
    from surefit.health import Health, _Step

    h = Health(HealthConfig(), clip_norm=1.0)
    for i, loss in enumerate([1.0, 2.0, math.nan, 1.5]):
        h.record(
            _Step(
                i + 1,
                0,
                i,
                1,
                4,
                torch.tensor(loss),  # the mean loss of its one micro-batch of 4 samples
                torch.tensor(0.5 + i),
            )
        )
    actions = h.sync()
    assert actions == {"rollback": "", "stop": ""} and h.skipped == 1
    state = h.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)  # as a checkpoint holds it
    buf.seek(0)
    g = Health(HealthConfig(), clip_norm=1.0)
    g.load_state_dict(torch.load(buf, weights_only=True))
    assert _equal(g.state_dict(), state)
    assert list(g.recent) == list(h.recent) and g.epoch.norms == h.epoch.norms
    assert g.epoch_record()["train_loss"] == pytest.approx(1.5)
    assert g.epoch_record()["clip_fraction"] == pytest.approx(2 / 3)


def test_steps_file_holds_each_steps_values_and_the_report_uses_them(tmp_path):
    from surefit.report import clip_fraction, read_run

    x, y = make_classification(256)
    _fit(mlp(), (x, y), tmp_path, log_every=1, clip_norm=0.5, epochs=1)
    steps = _lines(tmp_path / "steps.jsonl")
    logged = [m for m in _lines(tmp_path / "metrics.jsonl") if "split" not in m]
    assert [s["grad_norm"] for s in steps] == [m["grad_norm"] for m in logged]
    assert [s["loss"] for s in steps] == pytest.approx([m["train_loss"] for m in logged])
    clipped = sum(s["grad_norm"] > 0.5 for s in steps)
    assert 0 < clipped < len(steps)
    assert clip_fraction(read_run(tmp_path)) == clipped / len(steps)
