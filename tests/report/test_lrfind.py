"""The learning-rate range test: it leaves the model as it was and reads a sensible range."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import surefit as sf
from surefit.cli import main
from surefit.lrfind import suggest
from tests.conftest import make_classification, mlp


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)
    )


def test_lr_find_restores_weights_buffers_optimizer_and_rngs_exactly(tmp_path):
    x, y = make_classification(256)
    model = _net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x[:32]).sum().backward()
    optimizer.step()  # moments to restore, not only an empty state
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {
        i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(optimizer.state.values())
    }
    rng = torch.get_rng_state()
    result = sf.lr_find(
        model, (x, y), optimizer=optimizer, batch_size=32, steps=30, plot=tmp_path / "lr.png"
    )
    assert len(result.lrs) >= 10 and result.plot.read_bytes().startswith(b"\x89PNG")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())  # BatchNorm stats included
    assert not model.training  # the mode it had
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3]
    for i, s in enumerate(optimizer.state.values()):
        assert all(torch.equal(s[k], v) for k, v in moments[i].items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_lr_find_reads_a_sensible_range_on_a_tiny_problem():
    x, y = make_classification(512)
    model = mlp()
    result = sf.lr_find(
        model, (x, y), optimizer="sgd", batch_size=32, min_lr=1e-4, max_lr=1e3, steps=80
    )
    assert "steepest" in result.rule
    assert "stopped" in result.stop_reason and len(result.lrs) < 80  # diverged before 1e3
    assert 1e-3 < result.suggestion < result.min_loss_lr < result.lrs[-1]
    at = result.lrs.index(result.suggestion)
    assert result.smoothed[at] < result.smoothed[0]  # the loss was falling there
    low = min(result.smoothed)
    assert low < 0.6 * result.smoothed[0]
    # the suggestion trains: better than a learning rate a thousand times smaller
    final = {}
    for lr in (result.suggestion, result.suggestion / 1000):
        final[lr] = sf.fit(
            mlp(),
            (x, y),
            optimizer="sgd",
            lr=lr,
            epochs=3,
            batch_size=32,
            progress="off",
            schedule="constant",
        ).final_metrics["train_loss"]
    assert final[result.suggestion] < final[result.suggestion / 1000]


def test_a_loss_below_zero_sweeps_until_it_rises_not_at_once():
    """A loss that goes below zero (a log-likelihood, a loss with a constant): "above 4x its
    minimum" must be read as a rise of 3x the minimum's size, not as any value above 4 x (a
    negative number), which stopped the sweep as soon as the loss crossed zero."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g) + 0.05 * torch.randn(512, 1, generator=g)
    shifted = lambda out, target: torch.nn.functional.mse_loss(out, target) - 1.0  # noqa: E731
    torch.manual_seed(0)
    result = sf.lr_find(nn.Linear(4, 1), (x, y), loss=shifted, batch_size=32, optimizer="sgd",
                        min_lr=1e-2, max_lr=10.0, steps=80)  # fmt: skip
    assert min(result.smoothed) < -0.5, result.stop_reason  # well past zero, towards -1
    assert result.suggestion is not None and result.smoothed[-1] > min(result.smoothed) + 1


def test_learning_rate_groups_keep_their_ratio_to_optim_lr_whichever_comes_first(monkeypatch):
    import surefit.lrfind as lrfind

    seen, real_step = [], lrfind._Sweep.step

    def step(self, lr):
        value = real_step(self, lr)
        seen.append((lr, [g["lr"] for g in self.optimizer.param_groups]))
        return value

    monkeypatch.setattr(lrfind._Sweep, "step", step)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))  # "0" comes first
    x, y = make_classification(256)
    sf.lr_find(model, (x, y), batch_size=32, steps=12, lr=1e-3, lr_groups={"0": 1e-4},
               min_lr=1e-5, max_lr=1e-2)  # fmt: skip
    lr, groups = seen[-1]
    assert any(math.isclose(g, lr) for g in groups), (lr, groups)  # optim.lr's groups: at lr
    assert any(math.isclose(g, lr / 10) for g in groups)  # "0" keeps its tenth of it


def test_min_over_ten_rule_and_a_sweep_too_short_to_read():
    lrs = [10.0 ** (i / 4) for i in range(-20, 0)]
    smoothed = [2.0 - 0.1 * i for i in range(15)] + [1.0, 2.0, 4.0, 8.0, 16.0]
    assert suggest(lrs, smoothed, "min/10") == (
        pytest.approx(lrs[14] / 10),
        suggest(lrs, smoothed, "min/10")[1],
    )
    lr, rule = suggest(lrs, smoothed, "steepest")
    assert lrs[2] <= lr < lrs[14] and "steepest" in rule
    assert suggest(lrs[:3], smoothed[:3], "steepest")[0] is None


def test_a_loss_not_finite_from_the_first_step_gives_no_suggestion_and_says_why(tmp_path):
    x, y = make_classification(128)
    x[::2] = float("nan")
    r = sf.lr_find(mlp(), (x, y), steps=20, plot=tmp_path / "lr.png", device="cpu")
    assert r.suggestion is None and r.lrs == []
    assert "not finite from the first step" in r.summary() and "no finite loss" in r.summary()


@pytest.mark.parametrize(
    ("keywords", "key"),
    [
        ({"min_lr": 0.0}, "min_lr"),
        ({"min_lr": 1.0, "max_lr": 0.1}, "max_lr"),
        ({"steps": 3}, "steps"),
        ({"diverge": 1.0}, "diverge"),
        ({"rule": "fastest"}, "rule"),
    ],
)
def test_bad_sweep_settings_name_the_key(keywords, key):
    x, y = make_classification(64)
    with pytest.raises(sf.ConfigError) as err:
        sf.lr_find(mlp(), (x, y), **keywords)
    assert err.value.where == key


def test_lr_find_command_on_a_recipe(mnist1d_cache, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["lr-find", "mnist1d-cnn", "--set", "model.args={channels=4}", "--steps", "20"]
    assert main([*argv, "--min-lr", "1e-5", "--max-lr", "1"]) == 0
    out = capsys.readouterr().out
    assert "suggested lr: " in out and "(rule: " in out
    # the suggestion was measured with the user's --set: the command to try keeps them
    assert "try: surefit fit mnist1d-cnn --set 'model.args={channels=4}' --set optim.lr=" in out
    plot = tmp_path / "runs" / "mnist1d-cnn-lr-find.png"
    assert f"plot: {plot.relative_to(tmp_path)}" in out and plot.is_file()
    assert not any(p.is_dir() for p in (tmp_path / "runs").iterdir())  # it writes no run
    suggested = float(out.split("suggested lr: ")[1].split()[0])
    assert math.isfinite(suggested) and 1e-5 <= suggested <= 1
