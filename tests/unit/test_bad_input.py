"""Wrong input through ``surefit.fit``: an error that names the problem and the fix, raised before
the first optimizer step, with nothing written and the model untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import surefit as sf
from surefit.data import TensorData
from surefit.errors import SurefitError
from surefit.splits import split_validation
from tests.conftest import Samples, make_classification, mlp

N = 100


class Spy(sf.Callback):
    """Records whether training started at all."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_fit_start(self, run) -> None:
        self.events.append("on_fit_start")

    def on_step_end(self, run) -> None:
        self.events.append("on_step_end")


def fails_early(error: type[SurefitError], model: nn.Module, train, tmp_path: Path, **kw):
    """Run fit() expecting ``error``; check nothing was stepped, written or changed."""
    run_dir = tmp_path / "run"
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    spy = Spy()
    kw = {"epochs": 1, "batch_size": 16, "device": "cpu", "progress": "off", **kw}
    with pytest.raises(error) as info:
        sf.fit(model, train, run_dir=run_dir, callbacks=[*kw.pop("callbacks", []), spy], **kw)
    assert spy.events == [], "training started before the error"
    assert not run_dir.exists(), "the failed run wrote into run_dir"
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the weights changed"
    err = info.value
    assert err.what and err.where and err.fix, "an error must say what, where and how to fix"
    assert "fix:" in str(err)
    return err


def class_ids(n: int = N, classes: int = 3) -> torch.Tensor:
    return torch.arange(n) % classes  # every class in the first batch


def inputs(n: int = N) -> torch.Tensor:
    return make_classification(n)[0]


# -- targets that do not fit the task or the model -------------------------------------------------


def test_float_targets_with_multiclass(tmp_path):
    y = class_ids().float()
    err = fails_early(sf.DataError, mlp(out=3), (inputs(), y), tmp_path, task="multiclass")
    assert "float32" in err.what and "integer class ids" in err.what
    assert "targets" in err.where
    assert "y.long()" in err.fix


def test_float_val_targets_with_multiclass(tmp_path):
    x, y = inputs(), class_ids()
    err = fails_early(
        sf.DataError, mlp(out=3), (x, y), tmp_path, val=(x, y.float()), task="multiclass"
    )
    assert "integer class ids" in err.what and "val" in err.where


@pytest.mark.parametrize("task", ["multiclass", "auto"])
def test_labels_beyond_the_model_outputs(tmp_path, task):
    err = fails_early(
        sf.DataError, mlp(out=2), (inputs(), class_ids(classes=3)), tmp_path, task=task
    )
    assert "[0, 2]" in err.what and "outputs 2 classes" in err.what
    assert "3 outputs" in err.fix and "0..1" in err.fix


def test_negative_labels(tmp_path):
    y = class_ids() - 1
    err = fails_early(sf.DataError, mlp(out=3), (inputs(), y), tmp_path, task="multiclass")
    assert "[-1, 1]" in err.what


def test_labels_beyond_the_model_outputs_after_the_first_batch(tmp_path):
    # the first batches are valid, so the loss computes; the whole-set check must still catch it
    y = torch.zeros(N, dtype=torch.long)
    y[-5:] = 2
    err = fails_early(sf.DataError, mlp(out=2), (inputs(), y), tmp_path, task="multiclass")
    assert "[0, 2]" in err.what and "outputs 2 classes" in err.what
    assert "train" in err.where and "3 outputs" in err.fix


@pytest.mark.parametrize("task", ["multiclass", "auto"])
def test_class_ids_of_shape_b1(tmp_path, task):
    y = class_ids()[:, None]
    err = fails_early(sf.DataError, mlp(out=3), (inputs(), y), tmp_path, task=task)
    assert "(16,)" in err.what and "(16, 1)" in err.what and "y.squeeze(-1)" in err.fix


def test_sequence_targets_with_class_logits_last_name_the_lm_task(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 8), nn.Linear(8, 5))  # (B, T) ids -> (B, T, 5)
    tokens = torch.arange(N * 7).reshape(N, 7) % 5
    err = fails_early(sf.DataError, model, (tokens[:, :6], tokens[:, 1:]), tmp_path)
    assert "(16, 6, 5)" in err.what and "task='lm'" in err.fix


@pytest.mark.parametrize(
    ("task", "loss", "fits"),
    [("multiclass", "l1", "regression"), ("regression", "ce", "multiclass"),
     ("binary", "mse", "regression")],
)  # fmt: skip
def test_a_loss_name_the_task_cannot_use(tmp_path, task, loss, fits):
    y = torch.randn(N) if task == "regression" else class_ids(classes=2)
    err = fails_early(sf.ConfigError, mlp(out=1 if task != "multiclass" else 3), (inputs(), y),
                      tmp_path, task=task, loss=loss)  # fmt: skip
    assert f"task.loss='{loss}'" in err.what and err.where == "task.loss"
    assert f"'{fits}'" in err.fix


def test_the_loss_ce_picks_multiclass_and_float_class_ids_name_the_fix(tmp_path):
    y = class_ids(classes=3).float()  # ids stored as floats: the loss named says they are classes
    err = fails_early(sf.DataError, mlp(out=3), (inputs(), y), tmp_path, loss="ce")
    assert "task='multiclass'" in err.what and "y.long()" in err.fix


def test_early_stopping_without_a_validation_set(tmp_path):
    err = fails_early(sf.ConfigError, mlp(), (inputs(), class_ids()), tmp_path, patience=2)
    assert "val_loss" in err.what and "no val set" in err.what and "val_fraction" in err.fix


@pytest.mark.parametrize("metrics", [None, ["accuracy"]])
def test_a_monitor_evaluation_does_not_report(tmp_path, metrics):
    x, y = inputs(), class_ids()
    err = fails_early(sf.ConfigError, mlp(), (x, y), tmp_path, val=(x, y), monitor="val_acc",
                      metrics=metrics, patience=2)  # fmt: skip
    assert "val_acc" in err.what and err.where == "train.monitor"
    assert "val_accuracy" in err.fix and "val_loss" in err.fix


def test_a_monitor_without_the_val_prefix(tmp_path):
    x, y = inputs(), class_ids()
    err = fails_early(sf.ConfigError, mlp(), (x, y), tmp_path, val=(x, y), monitor="accuracy")
    assert "'accuracy'" in err.what and "'val_accuracy'" in err.fix and "train_loss" in err.fix


def _ce_step(model, batch):
    out = model(batch[0])
    return F.cross_entropy(out, batch[1]), out


@pytest.mark.parametrize(("options", "named"), [
    (dict(step=_ce_step, task="multiclass", monitor="val_acc"), "val_acc"),
    (dict(step=_ce_step, task="multiclass", metrics=["acc"]), "acc"),
    (dict(step=lambda m, b: F.cross_entropy(m(b[0]), b[1]), metrics=["accuracy"]), "accuracy"),
])  # fmt: skip
def test_a_custom_step_gets_its_monitor_and_metrics_checked_before_training(
    tmp_path, options, named
):
    x, y = inputs(), class_ids()
    err = fails_early(sf.ConfigError, mlp(), (x, y), tmp_path, val=(x, y), **options)
    assert named in err.what


def test_a_step_that_returns_a_loss_per_sample(tmp_path):
    step = lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none")  # noqa: E731
    err = fails_early(sf.DataError, mlp(), (inputs(), class_ids()), tmp_path, step=step)
    assert "scalar" in err.what and "(16,)" in err.what and "loss.mean()" in err.fix


def test_an_unknown_metric_lists_the_metrics_built_on_request_too(tmp_path):
    x, y = inputs(), class_ids()
    err = fails_early(sf.ConfigError, mlp(), (x, y), tmp_path, val=(x, y), metrics=["auc"])
    assert "auc" in err.what and "f1_macro" in err.fix


# the preflight computes the loss before its shape check, so torch warns first; the error is ours
SHAPE_WARNING = "ignore:Using a target size:UserWarning"


@pytest.mark.filterwarnings(SHAPE_WARNING)
@pytest.mark.parametrize("task", ["regression", "auto"])
def test_regression_outputs_b1_against_targets_b(tmp_path, task):
    y = torch.randn(N)
    err = fails_early(sf.DataError, mlp(out=1), (inputs(), y), tmp_path, task=task)
    assert "(16, 1)" in err.what and "(16,)" in err.what and "broadcast" in err.what
    assert "squeeze(-1)" in err.fix and "unsqueeze(1)" in err.fix


@pytest.mark.filterwarnings(SHAPE_WARNING)
def test_regression_outputs_b_against_targets_b1(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1), nn.Flatten(0))
    err = fails_early(
        sf.DataError, model, (inputs(), torch.randn(N, 1)), tmp_path, task="regression"
    )
    assert "(16,)" in err.what and "(16, 1)" in err.what
    assert "y.squeeze(-1)" in err.fix


# -- sizes -----------------------------------------------------------------------------------------


def test_empty_dataset(tmp_path):
    x, y = inputs(), class_ids()
    err = fails_early(sf.DataError, mlp(), (x[:0], y[:0]), tmp_path)
    assert "empty" in err.what and "0 samples" in err.what
    assert err.where == "train" and "non-empty" in err.fix


def test_empty_dataset_object(tmp_path):
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    err = fails_early(sf.DataError, mlp(), empty, tmp_path, task="multiclass")
    assert "empty" in err.what and "non-empty" in err.fix


def test_empty_validation_set(tmp_path):
    x, y = inputs(), class_ids()
    err = fails_early(sf.DataError, mlp(), (x, y), tmp_path, val=(x[:0], y[:0]))
    assert "empty" in err.what and err.where == "val"


@pytest.mark.parametrize("as_numpy", [False, True], ids=["torch", "numpy"])
def test_inputs_and_targets_of_different_lengths(tmp_path, as_numpy):
    x, y = inputs(), class_ids()[:50]
    data = (x.numpy(), y.numpy()) if as_numpy else (x, y)
    err = fails_early(sf.DataError, mlp(), data, tmp_path)
    assert "different lengths" in err.what and "[100, 50]" in err.what
    assert err.where == "train" and "one row per sample" in err.fix


def test_validation_inputs_and_targets_of_different_lengths(tmp_path):
    x, y = inputs(), class_ids()
    err = fails_early(sf.DataError, mlp(), (x, y), tmp_path, val=(x, y[:3]))
    assert "different lengths" in err.what and err.where == "val"


@pytest.mark.parametrize(
    ("val", "named"),
    [
        (1.5, "1.5"),
        (1.0, "1.0"),
        (0.0, "0.0"),
        (-0.2, "-0.2"),
        (10_000, "10000"),
        (N, "100"),
        (-1, "val=-1 is not a number of validation samples"),
        (0, "val=0"),
    ],
)
def test_validation_split_larger_than_the_data(tmp_path, val, named):
    err = fails_early(sf.ConfigError, mlp(), (inputs(), class_ids()), tmp_path, val=val)
    assert err.where == "val" and named in err.what
    assert "0.1" in err.fix


def test_validation_split_of_10000_names_both_sizes(tmp_path):
    err = fails_early(sf.ConfigError, mlp(), (inputs(), class_ids()), tmp_path, val=10_000)
    assert "10000 samples" in err.what and f"of {N}" in err.what
    assert "validation set" in err.fix


def test_val_fraction_out_of_range_as_keyword(tmp_path):
    err = fails_early(sf.ConfigError, mlp(), (inputs(), class_ids()), tmp_path, val_fraction=1.5)
    assert err.where == "data.val_fraction" and "[0, 1)" in err.fix


def test_integer_validation_split_takes_exactly_that_many():
    data = TensorData((inputs(), class_ids()), "train")
    train, val = split_validation(data, 99, seed=0, stratify=True)
    assert (train.num_samples, val.num_samples) == (1, 99)


# -- names -----------------------------------------------------------------------------------------


def test_unknown_optimizer_name(tmp_path):
    err = fails_early(sf.ConfigError, mlp(), (inputs(), class_ids()), tmp_path, optimizer="adamm")
    assert err.where == "optim.name" and "'adamm'" in err.what
    assert "did you mean 'adam'?" in err.fix
    assert "sgd, adam, adamw, radam, rmsprop, adagrad" in err.fix


def test_unknown_fit_keyword(tmp_path):
    err = fails_early(sf.ConfigError, mlp(), (inputs(), class_ids()), tmp_path, learnig_rate=0.1)
    assert err.where == "fit()" and "'learnig_rate'" in err.what


class Typo(sf.Callback):
    def on_epoch_ned(self, run) -> None:  # meant on_epoch_end
        pass


class PlainTypo:  # not a Callback subclass: checked all the same
    def on_step_edn(self, run) -> None:
        pass


@pytest.mark.parametrize(
    ("callback", "hook", "meant"),
    [(Typo(), "on_epoch_ned", "on_epoch_end"), (PlainTypo(), "on_step_edn", "on_step_end")],
)
def test_callback_with_a_misspelled_hook(tmp_path, callback, hook, meant):
    err = fails_early(
        sf.ConfigError, mlp(), (inputs(), class_ids()), tmp_path, callbacks=[callback]
    )
    assert f"'{hook}'" in err.what and "not an event" in err.what
    assert hook in err.where
    assert f"did you mean '{meant}'?" in err.fix


def test_a_dict_of_arrays_is_not_data(tmp_path):
    err = fails_early(sf.DataError, mlp(), {"x": inputs(), "y": class_ids()}, tmp_path)
    assert "dict" in err.what and "(x, y)" in err.fix


def test_drop_last_of_the_only_batch(tmp_path):
    err = fails_early(sf.DataError, mlp(), (inputs(), class_ids()), tmp_path, batch_size=128,
                      drop_last=True)  # fmt: skip
    assert "no batch" in err.what and "100 samples" in err.what and "drop_last" in err.fix


def test_a_list_of_batches_trains_as_a_re_iterable(tmp_path):
    x, y = inputs(), class_ids()
    batches = [(x[i : i + 25], y[i : i + 25]) for i in range(0, N, 25)]
    r = sf.fit(mlp(), batches, epochs=2, progress="off", device="cpu")
    assert r.steps == 8 and r.config.task.name == "multiclass"


def test_a_single_array_is_not_data(tmp_path):
    err = fails_early(sf.DataError, mlp(), np.zeros((N, 8), dtype=np.float32), tmp_path)
    assert "single array" in err.what and "(x, y)" in err.fix


def test_valid_input_passes_the_same_checks(tmp_path):
    # the control: the same set-up with good data trains and writes its run directory
    model = mlp()
    result = sf.fit(
        model,
        (inputs(), class_ids()),
        val=0.2,
        run_dir=tmp_path / "run",
        epochs=1,
        batch_size=16,
        device="cpu",
        progress="off",
    )
    assert result.steps == 5
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


# -- arguments of the wrong kind, and data the model or the loss cannot take ----------------------
@pytest.mark.parametrize(
    ("options", "error", "named", "fix"),
    [
        (dict(optimizer=torch.optim.SGD), sf.ConfigError, "class SGD", "optimizer='sgd'"),
        (dict(schedule="steplr-object"), sf.ConfigError, "torch scheduler", "onecycle"),
        (dict(loss=3), sf.ConfigError, "loss", "outputs, target"),
        (dict(val="0.1"), sf.ConfigError, "val is a str", "val=0.1"),
        (dict(config=5), sf.ConfigError, "config", "recipe.toml"),
        (dict(callbacks=[5]), sf.ConfigError, "callbacks[0] is int", "on_step_end"),
        (dict(callbacks=[sf.Callback]), sf.ConfigError, "the class Callback", "Callback(...)"),
        (dict(seed=2**64), sf.ConfigError, "train.seed", "2**63"),
        (dict(schedule="cosine_restarts", restart_steps=-1), sf.ConfigError, "restart", ">= 1"),
        (dict(milestones=["a"]), sf.ConfigError, "milestones", "[30, 60]"),
        (dict(task="multilabel", pos_weight=[1.0, 2.0]), sf.ConfigError, "2 pos_weight", "3"),
        (dict(data=(torch.randn(N, 5), "ids")), sf.DataError, "(16, 5) float32", "input layer"),
        (dict(data=(torch.randn(N, 8).double(), "ids")), sf.DataError, "float64", "x.float()"),
        (dict(device="meta"), sf.ConfigError, "'meta' is not available", "'cpu'"),
        (dict(device="bogus"), sf.ConfigError, "unknown device", "'cpu'"),
    ],
)  # fmt: skip
def test_arguments_of_the_wrong_kind(tmp_path, options, error, named, fix):
    model = mlp()
    data = options.pop("data", (inputs(), class_ids()))
    if options.get("task") == "multilabel":
        data = (inputs(), (torch.rand(N, 3) > 0.5).float())
    if data[1] == "ids":
        data = (data[0], class_ids())
    if options.get("schedule") == "steplr-object":
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        options = dict(optimizer=opt, schedule=torch.optim.lr_scheduler.StepLR(opt, 1))
    err = fails_early(error, model, data, tmp_path, **options)
    assert named in str(err.what) + err.where and fix in err.fix, str(err)


def test_one_callback_and_one_metric_name_are_taken_as_lists():
    calls = []

    class Count(sf.Callback):
        def on_step_end(self, run):
            calls.append(run.optimizer_step)

    x, y = inputs(), class_ids()
    r = sf.fit(mlp(), (x, y), val=(x, y), callbacks=Count(), metrics="accuracy", epochs=1,
               batch_size=50, progress="off")  # fmt: skip
    assert calls == [1, 2] and "val_accuracy" in r.history[-1]


def test_evaluate_and_lr_find_check_their_data():
    x, y = inputs(), class_ids()
    with pytest.raises(sf.DataError, match=r"\[0, 4\]|range"):
        sf.evaluate(mlp(), (x, y + 2))
    with pytest.raises(sf.DataError, match="input layer|failed"):
        sf.evaluate(mlp(), (torch.randn(N, 5), y))
    with pytest.raises(sf.ConfigError, match="batch_size"):
        sf.evaluate(mlp(), (x, y), batch_size=0)
    with pytest.raises(sf.ConfigError, match="precision"):
        sf.evaluate(mlp(), (x, y), precision="fp8")
    with pytest.raises(sf.DataError, match="class ids"):
        sf.lr_find(mlp(), (x, y.float()), task="multiclass", steps=10)


def test_an_optimizer_object_brings_its_own_rates_and_the_models_parameters(tmp_path):
    model = mlp()
    foreign = torch.optim.SGD(mlp(seed=1).parameters(), lr=0.1)
    err = fails_early(sf.ConfigError, model, (inputs(), class_ids()), tmp_path, optimizer=foreign)
    assert "none of the model's parameters" in err.what
    own = torch.optim.SGD(model.parameters(), lr=0.1)
    err = fails_early(sf.ConfigError, model, (inputs(), class_ids()), tmp_path, optimizer=own,
                      lr=1e-4)  # fmt: skip
    assert "lr=0.0001" in err.what and err.where == "lr"
    for given in ({"momentum": 0.5}, {"implementation": "fused"}, {"decay_all": True}):
        # an object's settings are its own: one given beside it is not silently ignored
        err = fails_early(sf.ConfigError, model, (inputs(), class_ids()), tmp_path, optimizer=own,
                          **given)  # fmt: skip
        assert "given with an optimizer object" in err.what and err.where == next(iter(given))


def test_a_run_dir_that_is_a_file_or_cannot_be_made(tmp_path):
    (tmp_path / "afile").write_text("mine")
    for where, says in ((tmp_path / "afile", "is a file"), (tmp_path / "afile" / "sub", "cannot")):
        with pytest.raises(sf.ConfigError, match=says):
            sf.fit(mlp(), (inputs(), class_ids()), run_dir=where, epochs=1, progress="off")
    assert (tmp_path / "afile").read_text() == "mine"


def test_ranking_targets_of_0_and_1(tmp_path):
    a, b = inputs(), make_classification(N, seed=1)[0]
    y01 = (a[:, 0] > b[:, 0]).float()
    err = fails_early(sf.DataError, mlp(out=1), (a, b, y01), tmp_path, task="ranking")
    assert "+1 and -1" in err.what and "2 * y - 1" in err.fix
    r = sf.fit(mlp(out=1), (a, b, 2 * y01 - 1), task="ranking", epochs=1, progress="off")
    assert r.steps == 2


def test_float_class_ids_with_task_auto_name_the_regression_it_chose(tmp_path):
    err = fails_early(sf.DataError, mlp(), (inputs(), class_ids().float()), tmp_path)
    assert "task 'regression'" in err.what and "(16, 3)" in err.what
    assert "y.long()" in err.fix and "task='multiclass'" in err.fix
    real = fails_early(sf.DataError, mlp(), (inputs(), torch.rand(N)), tmp_path)  # not ids
    assert "y.long()" not in real.fix


class DictSamples(torch.utils.data.Dataset):
    def __init__(self, keys: tuple[str, str] = ("x", "y")) -> None:
        self.x, self.y, self.keys = inputs(), class_ids(), keys

    def __len__(self) -> int:
        return N

    def __getitem__(self, i):
        return {self.keys[0]: self.x[i], self.keys[1]: self.y[i]}


def test_a_dict_batch_whose_keys_forward_does_not_take(tmp_path):
    err = fails_early(sf.DataError, mlp(), DictSamples(), tmp_path, task="multiclass")
    assert "x (16, 8) float32, y (16,) int64" in err.what, err.what  # every tensor, by key
    assert "forward(x=...)" in err.fix and "forward takes input" in err.fix, err.fix

    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x)

    r = sf.fit(Named(), DictSamples(), task="multiclass", epochs=1, batch_size=50, progress="off")
    assert r.steps == 2


def test_a_class_id_out_of_range_past_the_first_batch_is_a_data_error(tmp_path):
    """A Dataset's labels are checked on the first batch only; a bad one later is named, not
    torch's bare IndexError."""
    x, y = make_classification(256)
    y[200] = 7  # three classes
    with pytest.raises(sf.DataError, match="out of range") as info:
        sf.fit(mlp(), Samples(x, y), epochs=1, batch_size=32, progress="off")
    assert "0..C-1" in info.value.fix


def test_a_misspelled_metric_without_a_val_set_is_named_before_training(tmp_path):
    x, y = make_classification(128)
    with pytest.raises(sf.ConfigError, match="unknown metric") as info:
        sf.fit(mlp(), (x, y), test=(x[:32], y[:32]), metrics=["acuracy"], epochs=2,
               progress="off", run_dir=tmp_path / "r")  # fmt: skip
    assert "accuracy" in info.value.fix
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing trained or written


@pytest.mark.parametrize("labels", [np.array(["cat", "dog"] * 50), np.array([1, "a"] * 50, object)])
def test_labels_that_are_not_numbers_are_named(tmp_path, labels):
    err = fails_early(sf.DataError, mlp(), (np.random.rand(100, 8), labels), tmp_path)
    assert "not numbers" in err.what and "class ids" in err.fix
