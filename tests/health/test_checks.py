"""Each first-step check: one setup that triggers it, one correct setup that does not."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import surefit as sf
from tests.conftest import make_classification, mlp


def _warnings(run_dir, check):
    if not (run_dir / "events.jsonl").exists():
        return []
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "warning" and e["check"] == check]


def _fit(model, tmp_path, **kw):
    x, y = kw.pop("data", make_classification(256))
    options = dict(epochs=1, batch_size=32, progress="off", run_dir=str(tmp_path))
    options.update(kw)
    return sf.fit(model, (x, y), **options)


def test_softmax_fed_to_cross_entropy_is_an_error(tmp_path):
    with pytest.raises(sf.DataError, match="softmax") as info:
        _fit(nn.Sequential(mlp(), nn.Softmax(dim=1)), tmp_path, task="multiclass")
    assert "remove the final softmax" in str(info.value)
    assert not tmp_path.joinpath("metrics.jsonl").exists()  # nothing written
    _fit(mlp(), tmp_path / "ok", task="multiclass")  # logits: no error


def test_sigmoid_fed_to_bce_is_an_error(tmp_path):
    x, y = make_classification(256, classes=2)
    with pytest.raises(sf.DataError, match="sigmoid"):
        _fit(
            nn.Sequential(mlp(out=1), nn.Sigmoid()),
            tmp_path,
            data=(x, y.float()[:, None]),
            task="binary",
        )
    _fit(mlp(out=1), tmp_path / "ok", data=(x, y.float()[:, None]), task="binary")


class FunctionalSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp(out=1)

    def forward(self, x):
        return torch.sigmoid(self.body(x)).squeeze(-1)  # no nn.Sigmoid module to see


def test_probabilities_are_told_from_logits_that_happen_to_lie_in_0_1(tmp_path):
    x, y = make_classification(256, classes=2)
    with pytest.raises(sf.DataError, match="sigmoid"):
        _fit(FunctionalSigmoid(), tmp_path, data=(x, y.float()), task="binary")
    model = mlp(out=1)
    with torch.no_grad():  # logits all in [0.4, 0.6]: still logits, no false alarm
        model[2].weight.mul_(0.01)
        model[2].bias.fill_(0.5)
    _fit(model, tmp_path / "ok", data=(x, y.float()[:, None]), task="binary")


class Scaled(nn.Module):
    """A final activation followed by a clamp, a cast or a scaling, or a sigmoid gate."""

    def __init__(self, out, then):
        super().__init__()
        self.body, self.then = mlp(out=out), then

    def forward(self, x):
        return self.then(self.body(x))


@pytest.mark.parametrize(
    "then",
    [lambda z: torch.sigmoid(z).clamp(1e-7, 1 - 1e-7), lambda z: torch.sigmoid(z).double().float(),
     lambda z: torch.sigmoid(z) * 1.0],
)  # fmt: skip
def test_a_sigmoid_behind_a_clamp_cast_or_scaling_is_still_probabilities(tmp_path, then):
    x, y = make_classification(256, classes=2)
    with pytest.raises(sf.DataError, match="sigmoid"):
        _fit(Scaled(1, then), tmp_path, data=(x, y.float()[:, None]), task="binary")
    gate = lambda z: torch.sigmoid(z) * (3 * z)  # noqa: E731  a gate: values far outside [0, 1]
    _fit(Scaled(1, gate), tmp_path / "ok", data=(x, y.float()[:, None]), task="binary")


@pytest.mark.parametrize(
    "loss", [nn.CrossEntropyLoss(), torch.nn.functional.cross_entropy], ids=["module", "function"]
)
@pytest.mark.parametrize("task", ["multiclass", "auto"])
def test_softmax_is_caught_with_cross_entropy_given_as_the_loss(tmp_path, loss, task):
    with pytest.raises(sf.DataError, match="softmax"):
        _fit(nn.Sequential(mlp(), nn.Softmax(dim=1)), tmp_path, task=task, loss=loss)
    _fit(mlp(), tmp_path / "ok", task=task, loss=loss)


def test_a_loss_that_no_parameter_reaches_is_an_error_that_names_the_fix(tmp_path):
    def step(model, batch):
        x, y = batch
        out = model(x)
        return torch.nn.functional.cross_entropy(out.detach(), y), out

    with pytest.raises(sf.DataError, match="does not depend on any trainable") as info:
        _fit(mlp(), tmp_path, step=step)
    assert ".detach()" in info.value.fix


def test_a_check_can_be_switched_off(tmp_path):
    model = nn.Sequential(mlp(), nn.Softmax(dim=1))
    _fit(model, tmp_path, task="multiclass", skip_checks=["probabilities"])
    with pytest.raises(sf.ConfigError, match="did you mean"):
        _fit(model, tmp_path / "b", skip_checks=["probabilites"])


def test_initial_loss_far_from_log_c_warns(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(60)
    _fit(model, tmp_path)
    (w,) = _warnings(tmp_path, "initial_loss")
    assert "log 3" in w["what"]
    _fit(mlp(), tmp_path / "ok")
    assert _warnings(tmp_path / "ok", "initial_loss") == []
    x, y = make_classification(256)
    x[0, 1] = float("nan")  # in the first batch: the loss is NaN, the model is not to blame
    _fit(mlp(), tmp_path / "nan", data=(x, y))
    (w,) = _warnings(tmp_path / "nan", "initial_loss")
    assert "hold NaN or Inf" in w["what"] and "quarantine" in w["fix"]


def test_float_labels_that_task_auto_reads_as_values_warn(tmp_path):
    x, y = make_classification(256, classes=2)
    labels = y.float().unsqueeze(1)  # 0.0 / 1.0: labels stored as floats
    r = _fit(mlp(out=1), tmp_path, data=(x, labels))
    (w,) = _warnings(tmp_path, "targets")
    assert "regression" in w["what"] and "task='binary'" in w["fix"]
    assert r.config.task.name == "regression"
    _fit(mlp(out=1), tmp_path / "said", data=(x, labels), task="regression")  # chosen: no warning
    assert _warnings(tmp_path / "said", "targets") == []
    _fit(mlp(out=1), tmp_path / "binary", data=(x, labels), task="binary")
    assert _warnings(tmp_path / "binary", "targets") == []
    values = labels + 0.5 * torch.rand(labels.shape, generator=torch.Generator().manual_seed(0))
    _fit(mlp(out=1), tmp_path / "values", data=(x, values))  # real values: regression, quietly
    assert _warnings(tmp_path / "values", "targets") == []


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def test_no_initial_loss_warning_from_a_batch_norm_that_has_seen_no_batch(tmp_path):
    """In eval mode an untrained batch norm normalises nothing: unscaled inputs gave a false
    'first loss far from log C'; the step itself (train mode) starts near log C."""
    x, y = make_classification(256)
    _fit(_bn_model(), tmp_path, data=(50 * x, y))
    assert _warnings(tmp_path, "initial_loss") == []


def test_modules_frozen_in_eval_mode_stay_frozen_through_evaluations(tmp_path):
    x, y = make_classification(256)
    model = _bn_model()
    model[1].eval()  # a frozen batch norm inside a training model
    stats = model[1].running_mean.clone()
    _fit(model, tmp_path, data=(x, y), val=(x[:64], y[:64]), epochs=2)
    assert model.training and not model[1].training
    assert torch.equal(model[1].running_mean, stats)  # never updated by a training forward
    sf.evaluate(model, (x[:64], y[:64]))
    assert model.training and not model[1].training


def test_batchnorm_with_accumulation_warns(tmp_path):
    _fit(_bn_model(), tmp_path, accumulate=2)
    (w,) = _warnings(tmp_path, "batchnorm_accumulation")
    assert "GroupNorm" in w["fix"]
    _fit(_bn_model(), tmp_path / "ok", accumulate=1)
    assert _warnings(tmp_path / "ok", "batchnorm_accumulation") == []


def test_a_one_sample_last_batch_that_batchnorm_cannot_train_on_is_an_error_first(tmp_path):
    x, y = make_classification(65)  # 4 batches of 16 and one of 1
    with pytest.raises(sf.DataError) as info:
        _fit(_bn_model(), tmp_path / "r", data=(x, y), batch_size=16)
    assert "one sample (65 samples, batch 16)" in info.value.what
    assert "drop_last=True" in info.value.fix and not (tmp_path / "r").exists()
    assert _fit(_bn_model(), tmp_path / "d", data=(x, y), batch_size=16, drop_last=True).steps == 4
    # a DataLoader of the user's batches by its own size: 65 = 6 x 10 + 5 trains, 4 x 16 + 1 not
    loader = lambda size, **kw: torch.utils.data.DataLoader(  # noqa: E731
        torch.utils.data.TensorDataset(x, y), batch_size=size, **kw
    )
    assert sf.fit(_bn_model(), loader(10), epochs=1, batch_size=64, progress="off").steps == 7
    with pytest.raises(sf.DataError, match="one sample") as info:
        sf.fit(_bn_model(), loader(16), epochs=1, progress="off")
    assert "DataLoader(..., drop_last=True)" in info.value.fix
    assert sf.fit(_bn_model(), loader(16, drop_last=True), epochs=1, progress="off").steps == 4
    # BatchNorm2d normalises over the pixels too: one image trains, and the run goes through
    images = (torch.randn(65, 1, 6, 6, generator=torch.Generator().manual_seed(0)), y % 2)
    convs = []
    for checks in (True, False):  # the probe leaves the batch-norm statistics as they were
        torch.manual_seed(0)
        convs.append(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(),
                                   nn.Linear(64, 2)))  # fmt: skip
        r = _fit(convs[-1], tmp_path / f"c{checks}", data=images, batch_size=16, checks=checks)
        assert r.steps == 5
    a, b = (c.state_dict() for c in convs)
    assert all(torch.equal(a[k], b[k]) for k in a)


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(9, 3)

    def forward(self, group, features):
        return self.linear(torch.cat([group, features], 1))


def test_leakage_compares_every_input_of_a_sample(tmp_path):
    x, y = make_classification(120)
    group = torch.zeros(120, 1)  # one column alike in every sample: the samples still differ
    data = (group[:100], x[:100], y[:100])
    sf.fit(_TwoInputs(), data, val=(group[100:], x[100:], y[100:]), epochs=1, progress="off",
           run_dir=str(tmp_path / "a"))  # fmt: skip
    assert _warnings(tmp_path / "a", "leakage") == []
    sf.fit(_TwoInputs(), data, val=(group[:5], x[:5], y[:5]), epochs=1, progress="off",
           run_dir=str(tmp_path / "b"))  # fmt: skip
    (w,) = _warnings(tmp_path / "b", "leakage")
    assert w["what"].startswith("5 validation sample(s)")


def test_train_val_leakage_warns_with_count(tmp_path):
    x, y = make_classification(256)
    sf.fit(
        mlp(),
        (x, y),
        val=(x[10:30].clone(), y[10:30]),
        epochs=1,
        progress="off",
        run_dir=str(tmp_path),
    )
    (w,) = _warnings(tmp_path, "leakage")
    assert w["what"].startswith("20 validation sample(s)") and "train 10 = val 0" in w["what"]
    xv, yv = make_classification(64, seed=5)
    sf.fit(mlp(), (x, y), val=(xv, yv), epochs=1, progress="off", run_dir=str(tmp_path / "ok"))
    assert _warnings(tmp_path / "ok", "leakage") == []


def test_leakage_is_found_between_datasets_of_dict_samples():
    from surefit.checks import _leakage
    from surefit.data import DatasetData

    x, y = make_classification(64)

    class Dicts(torch.utils.data.Dataset):
        def __init__(self, lo, hi):
            self.lo, self.n = lo, hi - lo

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return {"x": x[self.lo + i], "labels": y[self.lo + i]}

    leak = _leakage(DatasetData(Dicts(0, 64), "train"), DatasetData(Dicts(10, 30), "val"))
    assert leak.level == "warning" and leak.what.startswith("20 validation sample(s)")
    clean = _leakage(DatasetData(Dicts(0, 32), "train"), DatasetData(Dicts(32, 64), "val"))
    assert clean.level == "ok" and clean.what == "no sample of 32 in val is in train"


class WithSpare(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()
        self.spare = nn.Linear(3, 3)  # defined, never called

    def forward(self, x):
        return self.body(x)


def test_unused_parameters_warn_by_name(tmp_path):
    _fit(WithSpare(), tmp_path)
    (w,) = _warnings(tmp_path, "unused_parameters")
    assert "spare.weight" in w["what"] and "spare.bias" in w["what"]
    _fit(mlp(), tmp_path / "ok")
    assert _warnings(tmp_path / "ok", "unused_parameters") == []


class TrainingOnlyHead(nn.Module):
    """An auxiliary head that adds to the logits in training only (as Inception's does)."""

    def __init__(self):
        super().__init__()
        self.body, self.aux = mlp(), nn.Linear(8, 3)

    def forward(self, x):
        out = self.body(x)
        return out + 0.1 * self.aux(x) if self.training else out


def test_a_head_used_in_training_only_is_not_unused(tmp_path):
    _fit(TrainingOnlyHead(), tmp_path)
    assert _warnings(tmp_path, "unused_parameters") == []


def test_lr_too_high_for_the_clip_warns(tmp_path):
    x, y = make_classification(1024)
    _fit(mlp(), tmp_path, data=(x, y), batch_size=8, clip_norm=0.01, log_every=20)
    (w,) = _warnings(tmp_path, "lr_too_high")
    assert "lower optim.lr" in w["fix"]
    _fit(mlp(), tmp_path / "ok", data=(x, y), batch_size=8, clip_norm=1.0, log_every=20)
    assert _warnings(tmp_path / "ok", "lr_too_high") == []


def test_a_warning_reaches_the_result_and_is_never_silent(tmp_path, capsys):
    """With no console and no run directory a warning is a SurefitWarning; with a console it is
    a line and no Python warning; either way it is in FitResult.warnings."""
    x, y = make_classification(1024)
    kw = dict(epochs=1, batch_size=8, clip_norm=0.01, log_every=20)
    with pytest.warns(sf.SurefitWarning, match="pre-clip gradient norm") as caught:
        quiet = sf.fit(mlp(), (x, y), progress="off", **kw)
    assert len([w for w in caught if "pre-clip" in str(w.message)]) == 1
    [record] = [w for w in quiet.warnings if w["check"] == "lr_too_high"]
    assert "lower optim.lr" in record["fix"] and record["step"] > 0
    assert "lower optim.lr" in str(caught[0].message)  # the fix travels with it
    assert caught[0].filename == __file__  # it points at the fit() call, not into surefit
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", sf.SurefitWarning)  # shown on the console instead
        shown = sf.fit(mlp(), (x, y), progress="epoch", run_dir=tmp_path, **kw)
    out = capsys.readouterr().out
    assert out.count("warning: the pre-clip gradient norm") == 1
    assert shown.warnings == quiet.warnings
    [event] = _warnings(tmp_path, "lr_too_high")
    assert {k: event[k] for k in record} == record  # the event holds what the result holds
    assert [w["check"] for w in shown.warnings] == [
        e["check"] for e in _events(tmp_path) if e["event"] == "warning"
    ]


def test_a_first_step_check_warning_without_a_console_is_a_python_warning():
    x, y = make_classification(256)
    with pytest.warns(sf.SurefitWarning, match="also appear in the training data"):
        r = sf.fit(mlp(), (x, y), val=(x[:50], y[:50]), epochs=1, progress="off")
    [record] = [w for w in r.warnings if w["check"] == "leakage"]
    assert "50 validation sample(s)" in record["what"] and record["fix"]


def test_the_runs_a_resume_check_makes_give_no_warnings_of_their_own(tmp_path, capsys):
    x, y = make_classification(256)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sf.SurefitWarning)
        r = sf.fit(mlp(), (x, y), val=(x[:50], y[:50]), epochs=1, progress="epoch",
                   run_dir=tmp_path, check_resume=True)  # fmt: skip
    assert r.resume_check is not None
    assert capsys.readouterr().out.count("also appear in the training data") == 1
    assert [w["check"] for w in r.warnings] == ["leakage"]


def _events(run_dir):
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def test_checks_leave_rng_and_model_untouched():
    """Checking runs forward/backward passes; the run that follows must not notice them."""
    x, y = make_classification(128)
    a, b = (nn.Sequential(_bn_model(), nn.Dropout(0.3)) for _ in range(2))  # buffers, RNG
    sf.fit(a, (x, y), epochs=1, progress="off", seed=3)
    sf.fit(b, (x, y), epochs=1, progress="off", seed=3, checks=False)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


RECIPE = """
name = "doctor-case"
[model]
name = "doctor_case:model"
[data]
name = "doctor_case:data"
batch_size = 32
[train]
epochs = 1
"""

FACTORIES = """
import torch
from torch import nn

def model(softmax=False):
    torch.manual_seed(0)
    layers = [nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)]
    return nn.Sequential(*layers, nn.Softmax(dim=1)) if softmax else nn.Sequential(*layers)

def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return {"train": (x, y), "val": (x[:40].clone(), y[:40])}
"""


@pytest.mark.parametrize("softmax", [False, True])
def test_doctor_reports_every_check(tmp_path, softmax):
    (tmp_path / "doctor_case.py").write_text(textwrap.dedent(FACTORIES))
    (tmp_path / "r.toml").write_text(RECIPE)
    args = [sys.executable, "-m", "surefit", "doctor", "r.toml"]
    if softmax:
        args += ["--set", "model.args={softmax=true}"]
    else:
        args += ["--profile", "--max-batch"]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert "warning leakage: 40 validation sample(s)" in out  # val is a slice of train
    if softmax:
        assert done.returncode == 1, done.stderr
        assert "error   probabilities" in out and "fix: remove the final softmax" in out
    else:
        assert done.returncode == 0, out + done.stderr
        assert "ok      unused_parameters" in out and "0 error(s)" in out
        assert "steps/s" in out and "data wait" in out and "largest power-of-two batch" in out
    assert not (tmp_path / "runs").exists()  # doctor writes nothing


@pytest.mark.parametrize("off", ["health.checks=false", 'health.skip_checks=["leakage"]'])
def test_doctor_runs_the_checks_a_config_turns_off_and_says_so(tmp_path, off):
    (tmp_path / "doctor_case.py").write_text(textwrap.dedent(FACTORIES))
    (tmp_path / "r.toml").write_text(RECIPE)
    args = [sys.executable, "-m", "surefit", "doctor", "r.toml", "--set", off]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning leakage: 40 validation sample(s)" in done.stdout
    skipped = "all of them" if "false" in off else "leakage"
    assert f"the run itself skips {skipped}" in done.stdout


def test_a_validation_set_that_evaluates_to_nan_is_named_once(tmp_path, capsys):
    x, y = make_classification(256)
    xv, yv = make_classification(64, seed=1)
    xv[[3, 40]] = float("nan")
    r = _fit(mlp(), tmp_path / "nan", data=(x, y), val=(xv, yv), epochs=3, restore_best=True,
             progress="epoch")  # fmt: skip
    (warned,) = _warnings(tmp_path / "nan", "eval_not_finite")  # once, not per evaluation
    assert "val_loss is nan" in warned["what"] and "2 validation sample(s)" in warned["what"]
    assert "index 3, 40" in warned["what"] and warned["step"] == 8
    assert r.best_step == -1 and not (tmp_path / "nan" / "checkpoints" / "best.pt").exists()
    out = capsys.readouterr().out
    assert "warning: val_loss is nan" in out and "best:  none, no evaluation was finite" in out
    ok = _fit(mlp(), tmp_path / "ok", data=(x[8:], y[8:]), val=(xv[4:40], yv[4:40]), epochs=2)
    assert ok.best_step > 0 and not _warnings(tmp_path / "ok", "eval_not_finite")
    off = _fit(mlp(), tmp_path / "off", data=(x[8:], y[8:]), val=(xv, yv),
               skip_checks=["eval_not_finite"])  # fmt: skip
    assert off.best_step == -1 and not _warnings(tmp_path / "off", "eval_not_finite")
