"""Every built-in recipe, shortened with --set overrides, learns; and the recipes command."""

from __future__ import annotations

import json
import math
import sys

import pytest

from surefit import recipes
from surefit.cli import main
from tests.conftest import shared_data

ALL = [
    "char-gpt",
    "char-gpt-gpu",
    "mnist1d-cnn",
    "mnist1d-gru",
    "mnist1d-mlp",
    "tabular-binary",
    "tabular-multiclass",
    "tabular-regression",
]
TINY_GPT = [
    "model.args={block = 16, layers = 1, heads = 2, width = 32}",
    "data.args={block = 16, val_windows = 64}",
    "data.batch_size=16",
    "train.max_steps=150",
    "train.eval_every_steps=75",
    "schedule.warmup=10",
    "optim.lr=1e-2",
    "log.every_steps=25",
]
needs_shakespeare = pytest.mark.skipif(
    shared_data("tinyshakespeare.txt") is None, reason="shared/data/tinyshakespeare.txt is absent"
)


def fit(recipe: str, run_dir, sets: list[str]) -> list[dict]:
    args = ["fit", recipe, "--run-dir", str(run_dir), "--progress", "off"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    return [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]


def evals(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("split") == "eval"]


def test_recipes_lists_every_recipe_with_its_description(capsys):
    assert recipes.names() == ALL
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ALL
    for (name, text), line in zip(recipes.describe(), lines, strict=True):
        assert text and line.split(None, 1)[1].strip() == text, name


@pytest.mark.parametrize("name", ALL)
def test_every_recipe_states_its_reference(name):
    from surefit import config as cfgmod

    text = recipes.source(name)[1]
    cfg = cfgmod.from_dict(cfgmod.parse_toml(text, where=name))
    assert cfg.name == name and cfg.reference and cfg.description
    assert text.startswith("#")  # the comment with the published number and what surefit reached


def test_a_builtin_name_wins_over_a_folder_or_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist1d-cnn").mkdir()  # its run directory, seen from runs/
    (tmp_path / "tabular-binary").write_text('name = "mine"\n')
    builtin = (recipes.HERE / "mnist1d-cnn.toml").read_text()
    assert recipes.source("mnist1d-cnn") == ("mnist1d-cnn", builtin)
    assert recipes.source("tabular-binary")[1].startswith("#")  # the built-in's comment
    assert recipes.source("./tabular-binary") == ("tabular-binary", 'name = "mine"\n')


def test_a_shown_recipe_is_an_editable_copy_that_runs(tmp_path, capsys):
    assert main(["recipes", "show", "tabular-multiclass"]) == 0
    text = capsys.readouterr().out
    assert text == recipes.source("tabular-multiclass")[1]
    mine = tmp_path / "my.toml"
    text = text.replace("epochs = 60", "epochs = 2").replace('"tabular-multiclass"', '"mine"')
    mine.write_text(text)
    records = fit(str(mine), tmp_path / "run", [])
    assert [e["epoch"] for e in evals(records)] == [1, 2]
    assert (tmp_path / "run" / "config.toml").read_text().count('name = "mine"') == 1


def test_mnist1d_mlp_learns(tmp_path, mnist1d_cache):
    records = fit("mnist1d-mlp", tmp_path / "run", ["train.epochs=4"])
    assert evals(records)[-1]["val_accuracy"] > 0.3  # chance is 0.1
    test = next(r for r in records if r.get("split") == "test")
    assert test["test_accuracy"] > 0.3


def test_mnist1d_gru_learns(tmp_path, mnist1d_cache):
    records = fit("mnist1d-gru", tmp_path / "run", ["train.epochs=3"])
    e = evals(records)
    assert e[-1]["val_accuracy"] > 0.25 and e[-1]["val_loss"] < e[0]["val_loss"]


def test_tabular_binary_learns(tmp_path):
    records = fit("tabular-binary", tmp_path / "run", ["train.epochs=5"])
    test = next(r for r in records if r.get("split") == "test")
    assert test["test_accuracy"] > 0.85  # the majority class is 0.63


def test_tabular_multiclass_learns(tmp_path):
    records = fit("tabular-multiclass", tmp_path / "run", ["train.epochs=3"])
    test = next(r for r in records if r.get("split") == "test")
    assert test["test_accuracy"] > 0.6  # chance is 0.1


def test_tabular_regression_learns(tmp_path):
    records = fit("tabular-regression", tmp_path / "run", ["train.epochs=20"])
    test = next(r for r in records if r.get("split") == "test")
    assert test["test_r2"] > 0.2  # predicting the mean gives about 0


def test_tabular_splits_are_disjoint_and_scaled_on_train_only():
    from surefit.recipes import tabular

    data = tabular.load("breast_cancer")
    x_train = data["train"][0]
    assert abs(float(x_train.mean())) < 1e-5 and abs(float(x_train.std(0).mean()) - 1) < 0.01
    assert abs(float(data["test"][0].mean())) > 1e-4  # test statistics were not used
    sizes = {k: len(v[1]) for k, v in data.items()}
    assert sizes == {"train": 364, "val": 91, "test": 114}


def test_a_missing_scikit_learn_names_the_extra(monkeypatch):
    from surefit import ConfigError
    from surefit.recipes import tabular

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now raises ImportError
    with pytest.raises(ConfigError) as err:
        tabular.load("digits")
    assert "scikit-learn" in str(err.value) and "surefit[tabular]" in str(err.value)


@needs_shakespeare
def test_char_gpt_learns(tmp_path):
    records = fit("char-gpt", tmp_path / "run", TINY_GPT)
    e = evals(records)
    assert [r["step"] for r in e] == [75, 150]
    assert e[-1]["val_loss"] < math.log(65) - 1.0  # uniform guessing over 65 characters: 4.17
    assert e[-1]["val_loss"] < e[0]["val_loss"]


@needs_shakespeare
def test_a_damaged_cached_copy_of_the_text_is_replaced(tmp_path):
    from surefit.recipes import chargpt

    good = chargpt.text_path(cache=str(tmp_path)).read_bytes()
    (tmp_path / chargpt.FILE).write_bytes(good[: len(good) // 5])  # truncated
    assert chargpt.text_path(cache=str(tmp_path)).read_bytes() == good


@needs_shakespeare
def test_char_gpt_data_is_nanogpt_split_with_fixed_val_windows():
    from surefit.recipes import chargpt

    a, b = chargpt.load(block=8, val_windows=5), chargpt.load(block=8, val_windows=5)
    assert len(a["train"]) == 1_003_854 - 8 and len(a["val"]) == 5
    assert all(bool((a["val"][i][0] == b["val"][i][0]).all()) for i in range(5))
    x, y = a["train"][10]
    assert x.shape == y.shape == (8,) and bool((x[1:] == y[:-1]).all())
    assert chargpt.decode(a["train"][0][0].tolist()) == "First Ci"
