"""Each named schedule steps in its own unit and traces the LR of a hand-driven scheduler."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler as lrs

import surefit as sf
from tests.conftest import make_classification, mlp

N, BS, EPOCHS, LR = 96, 16, 4, 0.1  # 6 optimizer steps per epoch, 24 in all
STEPS_PER_EPOCH, TOTAL = N // BS, (N // BS) * EPOCHS


class Trace(sf.Callback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, run):
        self.lrs.append(run.lr)


def traced(schedule, **kw):
    x, y = make_classification(N)
    trace = Trace()
    r = sf.fit(
        mlp(),
        (x, y),
        val=kw.pop("val", None),
        schedule=schedule,
        optimizer="sgd",
        lr=LR,
        epochs=EPOCHS,
        batch_size=BS,
        progress="off",
        callbacks=[trace],
        **kw,
    )
    return trace.lrs, r


def hand(make, unit, metrics=None):
    opt = torch.optim.SGD(mlp().parameters(), lr=LR)
    sched = make(opt)
    out = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            opt.step()  # no gradients: changes nothing, keeps torch's order check quiet
            if unit == "step":
                sched.step()
            out.append(opt.param_groups[0]["lr"])
        if unit == "epoch":
            sched.step()
        elif unit == "metric":
            sched.step(metrics[epoch])
    return out


@pytest.mark.parametrize(
    ("name", "kw", "make", "unit"),
    [
        ("constant", {}, lambda o: lrs.LambdaLR(o, lambda s: 1.0), "step"),
        ("step", {"step_size": 2, "gamma": 0.5}, lambda o: lrs.StepLR(o, 2, 0.5), "epoch"),
        (
            "multistep",
            {"milestones": [1, 3], "gamma": 0.3},
            lambda o: lrs.MultiStepLR(o, [1, 3], 0.3),
            "epoch",
        ),
        ("exponential", {"gamma": 0.7}, lambda o: lrs.ExponentialLR(o, 0.7), "epoch"),
        (
            "onecycle",
            {"warmup": 0.25},
            lambda o: lrs.OneCycleLR(o, max_lr=LR, total_steps=TOTAL, pct_start=0.25),
            "step",
        ),
        (
            "cosine_restarts",
            {"min_lr_ratio": 0.1},
            lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=STEPS_PER_EPOCH, eta_min=0.1 * LR),
            "step",
        ),
    ],
)
def test_trace_equals_hand_driven_torch_scheduler(name, kw, make, unit):
    got, _ = traced(name, **kw)
    want = hand(make, unit)
    assert len(got) == TOTAL
    # OneCycleLR refuses to step past its last step; surefit holds the last lr instead
    if name == "onecycle":
        want = want[:-1] + [got[-1]]
    assert got == pytest.approx(want, rel=1e-12, abs=0)


@pytest.mark.parametrize("mult", [1, 2])
def test_cosine_restarts_falls_to_each_groups_own_floor(mult):
    """torch's CosineAnnealingWarmRestarts for one group; with several, each group falls from
    its own rate to its own floor (torch's one eta_min lifted a 1e-4 group toward 1e-3)."""
    from surefit.config import ScheduleConfig
    from surefit.schedule import build_schedule

    model = mlp()
    groups = [{"params": model[0].parameters(), "lr": LR}, {"params": model[2].parameters(),
              "lr": LR / 100}]  # fmt: skip
    opt = torch.optim.SGD(groups, lr=LR)
    cfg = ScheduleConfig(name="cosine_restarts", restart_steps=3, restart_mult=mult)
    s = build_schedule(cfg, opt, total_steps=40, steps_per_epoch=6)
    ref_opt = torch.optim.SGD(mlp().parameters(), lr=LR)
    ref = lrs.CosineAnnealingWarmRestarts(ref_opt, T_0=3, T_mult=mult, eta_min=0.1 * LR)
    for _ in range(40):
        opt.step()
        s.after_optimizer_step()
        ref_opt.step()
        ref.step()
        high, low = (g["lr"] for g in opt.param_groups)
        assert high == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
        assert low == pytest.approx(high / 100, rel=1e-12) and 0.1 * LR / 100 <= low <= LR / 100


def test_onecycle_builds_and_runs_for_every_length_and_warmup():
    """torch's OneCycleLR divides by the rise's length: a one-step warmup (the default 5 % of
    10-29 steps) made it zero. Every length and warmup now rises to the peak and falls."""
    from surefit.config import ScheduleConfig
    from surefit.schedule import build_schedule

    for total in range(1, 41):
        for warmup in range(total + 1):
            opt = torch.optim.SGD(mlp().parameters(), lr=LR)
            s = build_schedule(
                ScheduleConfig(name="onecycle", warmup=warmup), opt, total_steps=total,
                steps_per_epoch=total,
            )  # fmt: skip
            seen = [opt.param_groups[0]["lr"]]
            for _ in range(total):
                opt.step()
                s.after_optimizer_step()
                seen.append(opt.param_groups[0]["lr"])
            assert all(math.isfinite(v) and 0 < v <= LR * (1 + 1e-12) for v in seen)
            if 0 < warmup < total - 1:  # (without one, torch's 30 % rise ends between steps)
                assert max(seen) == pytest.approx(LR) and seen[-1] < LR / 100


def test_onecycle_with_a_one_step_warmup_trains():
    got, r = traced("onecycle", warmup=1)
    assert r.steps == TOTAL and max(got) == pytest.approx(LR) and got.index(max(got)) == 0


def closed_form_warmup_cosine(step, warmup, total, floor):
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup + 1) / max(1, total - warmup))  # from the peak step
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def test_warmup_cosine_steps_per_batch_warms_up_then_decays_to_the_floor():
    got, _ = traced("warmup_cosine", warmup=4, min_lr_ratio=0.1)
    want = [LR * closed_form_warmup_cosine(s + 1, 4, TOTAL, 0.1) for s in range(TOTAL)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got.index(max(got)) == 2  # after 3 updates the 4th step runs at the peak
    assert got[-1] == pytest.approx(0.1 * LR)
    assert len(set(got)) > STEPS_PER_EPOCH  # changes within epochs: per batch, not per epoch


@pytest.mark.parametrize("name", ["warmup_cosine", "warmup_linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_the_updates_run_at_the_peak_once_then_fall_to_the_floor(name, warmup):
    got, _ = traced(name, warmup=warmup, min_lr_ratio=0.1)
    warmup = 0 if name == "cosine" else warmup  # cosine has no warmup
    first = LR / warmup if warmup else LR  # the first update's rate; run.lr is the next one's
    used = [first, *got[:-1]]  # the rate of each of the TOTAL updates
    peak = used.index(max(used))
    assert peak == max(warmup - 1, 0) and used.count(max(used)) == 1, used
    assert all(a > b for a, b in zip(used[peak:-1], used[peak + 1 :], strict=True)), used
    assert used[-1] == pytest.approx(0.1 * LR) and used[peak] == pytest.approx(LR)


def test_warmup_given_as_a_fraction_or_as_steps_agree():
    a, _ = traced("warmup_linear", warmup=0.25)
    b, _ = traced("warmup_linear", warmup=6)
    assert a == b


def test_plateau_steps_with_the_monitored_validation_metric():
    x, y = make_classification(48, seed=9)
    got, r = traced("plateau", val=(x, y), plateau_patience=0, plateau_factor=0.5)
    val_losses = [h["val_loss"] for h in r.history]
    want = hand(
        lambda o: lrs.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=0),
        "metric",
        metrics=val_losses,
    )
    assert got == pytest.approx(want)


def test_plateau_without_validation_is_a_config_error():
    with pytest.raises(sf.ConfigError, match="plateau"):
        traced("plateau")


def test_a_record_reports_the_rate_its_last_update_used():
    """An epoch's record is made after its epoch schedule stepped: its ``lr`` is still the rate
    the epoch trained at, as steps.jsonl has it, not the next epoch's."""
    x, y = make_classification(N)
    _, r = traced("step", val=(x, y), step_size=1, gamma=0.5)
    assert [h["lr"] for h in r.history] == pytest.approx([LR * 0.5**e for e in range(EPOCHS)])
    got, r = traced("warmup_cosine", val=(x, y), warmup=4)
    assert r.history[-1]["lr"] == pytest.approx(got[-2])  # the last update's, not the next's


class Momenta(sf.Callback):
    def __init__(self):
        self.values = []

    def on_step_end(self, run):
        g = run._trainer.optimizer.param_groups[0]  # the optimizer surefit built by name
        self.values.append(g["momentum"] if "momentum" in g else g["betas"][0])


@pytest.mark.parametrize(
    ("optimizer", "kw", "peak"),
    [("sgd", {"momentum": 0.5}, 0.5), ("adamw", {"betas": [0.6, 0.99]}, 0.6), ("sgd", {}, 0.9)],
)
def test_onecycle_cycles_the_momentum_the_run_configured_not_torchs_default(optimizer, kw, peak):
    x, y = make_classification(N)
    seen = Momenta()
    sf.fit(mlp(), (x, y), optimizer=optimizer, schedule="onecycle", lr=LR, epochs=2,
           batch_size=BS, progress="off", callbacks=[seen], **kw)  # fmt: skip
    assert max(seen.values) == pytest.approx(peak, abs=1e-3)
    assert min(seen.values) == pytest.approx(peak - 0.1, abs=1e-2)


def test_onecycle_leaves_an_optimizer_without_momentum_alone():
    x, y = make_classification(N)
    trace = Trace()
    sf.fit(mlp(), (x, y), optimizer="adagrad", schedule="onecycle", lr=LR, epochs=2,
           batch_size=BS, progress="off", callbacks=[trace])  # fmt: skip
    assert max(trace.lrs) == pytest.approx(LR, rel=1e-6) and trace.lrs[-1] < LR / 100
    seen = Momenta()  # SGD at momentum 0: nothing to cycle, nothing set
    sf.fit(mlp(), (x, y), optimizer="sgd", momentum=0.0, schedule="onecycle", lr=LR, epochs=1,
           batch_size=BS, progress="off", callbacks=[seen])  # fmt: skip
    assert set(seen.values) == {0.0}


@pytest.mark.parametrize("schedule", ["warmup_cosine", "onecycle"])
def test_an_optimizer_an_earlier_fit_ran_restarts_from_its_bases_or_from_a_rate_set_since(
    schedule,
):
    x, y = make_classification(N)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    common = dict(optimizer=opt, epochs=1, batch_size=BS, progress="off", schedule=schedule,
                  warmup=2, min_lr_ratio=0.0)  # fmt: skip
    sf.fit(model, (x, y), **common)
    assert opt.param_groups[0]["lr"] < 1e-3  # the schedule left it near 0
    again = Trace()  # fit again as it is: the same schedule from its base (torch's way)
    sf.fit(model, (x, y), callbacks=[again], **common)
    assert max(again.lrs) == pytest.approx(1e-2, rel=1e-9)
    for g in opt.param_groups:  # a rate set since: the next schedule's base
        g["lr"] = 1e-3
    lower = Trace()
    sf.fit(model, (x, y), callbacks=[lower], **common)
    assert max(lower.lrs) == pytest.approx(1e-3, rel=1e-9)


def test_cosine_restarts_every_epoch_needs_a_loader_with_a_length():
    x, y = make_classification(N)

    class Stream:
        def __iter__(self):
            for i in range(0, N, BS):
                yield x[i : i + BS], y[i : i + BS]

    with pytest.raises(sf.ConfigError, match="restart_steps"):
        sf.fit(mlp(), Stream(), schedule="cosine_restarts", max_steps=12, progress="off",
               task="multiclass")  # fmt: skip
    sf.fit(mlp(), Stream(), schedule="cosine_restarts", restart_steps=3, max_steps=12,
           progress="off", task="multiclass")  # fmt: skip


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"schedule": "multistep"}, "schedule.milestones"),
        ({"optimizer": "sgd", "momentum": 0.0, "nesterov": True}, "optim.nesterov"),
    ],
)
def test_settings_that_would_silently_do_nothing_or_crash_in_torch(options, key):
    x, y = make_classification(N)
    with pytest.raises(sf.ConfigError) as info:
        sf.fit(mlp(), (x, y), epochs=1, progress="off", **options)
    assert info.value.where == key


def test_an_extended_run_takes_its_new_shapes_rate_from_its_first_resumed_step(tmp_path):
    import json

    from surefit.callbacks import PauseAt

    x, y = make_classification(N)
    common = dict(optimizer="sgd", lr=LR, batch_size=BS, progress="off", schedule="cosine",
                  log_every=1)  # fmt: skip
    sf.fit(mlp(), (x, y), epochs=2, run_dir=tmp_path / "a", callbacks=[PauseAt(5)], **common)
    sf.fit(mlp(), (x, y), epochs=4, run_dir=tmp_path / "a", **common)
    sf.fit(mlp(), (x, y), epochs=4, run_dir=tmp_path / "b", **common)

    def rates(run):  # the rate each update used, by step
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: r["lr"] for r in map(json.loads, lines) if "lr" in r}

    resumed, straight = rates("a"), rates("b")
    assert resumed[6] == pytest.approx(straight[6], rel=1e-12)  # the first resumed step
    assert [resumed[s] for s in range(6, 25)] == pytest.approx(
        [straight[s] for s in range(6, 25)], rel=1e-12
    )
