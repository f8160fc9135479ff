"""The ``surefit`` command, run as a user runs it: in a subprocess, in a fresh folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import surefit
from surefit import recipes

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SUREFIT_CACHE"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p
    )
    env["OMP_NUM_THREADS"] = "1"
    return env


def cli(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m surefit ARGS`` with the working folder ``tmp_path``."""
    return subprocess.run(
        [sys.executable, "-m", "surefit", *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def python(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- help, version, recipes ------------------------------------------------------------------------


def test_help_lists_the_commands(tmp_path):
    r = cli(tmp_path, "--help")
    assert r.returncode == 0, r.stderr
    for word in ("fit", "resume", "recipes", "--version", "--help", "examples:"):
        assert word in r.stdout
    assert r.stderr == ""


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        (
            "fit",
            [
                "recipe",
                "--set",
                "KEY=VALUE",
                "--progress",
                "--device",
                "--run-dir",
                recipes.DEFAULT,
            ],
        ),
        ("resume", ["run_dir", "--set", "--progress", "--device"]),
        ("recipes", ["list", "show", "name"]),
    ],
)
def test_subcommand_help(tmp_path, command, mentions):
    r = cli(tmp_path, command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: surefit {command}")
    for word in mentions:
        assert word in r.stdout, word


def test_version(tmp_path):
    r = cli(tmp_path, "--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"surefit {surefit.__version__}"


@pytest.mark.parametrize("args", [["recipes"], ["recipes", "list"]])
def test_recipes_lists_the_builtin_recipes(tmp_path, args):
    r = cli(tmp_path, *args)
    assert r.returncode == 0, r.stderr
    rows = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert "mnist1d-cnn" in rows
    assert rows["mnist1d-cnn"].startswith("1-D CNN on MNIST-1D")
    assert sorted(rows) == recipes.names()


def test_recipes_show_prints_valid_toml(tmp_path):
    r = cli(tmp_path, "recipes", "show", "mnist1d-cnn")
    assert r.returncode == 0, r.stderr
    shown = tomllib.loads(r.stdout)
    assert shown == tomllib.loads((recipes.HERE / "mnist1d-cnn.toml").read_text())
    assert shown["name"] == "mnist1d-cnn"
    surefit.config.from_dict(shown)  # and a valid recipe


# -- errors: one paragraph, no traceback, exit 2, nothing written ----------------------------------


ERRORS = [
    pytest.param(
        ["fit", "--set", "optim.lrr=1"],
        ["optim.lrr", "did you mean 'optim.lr'?"],
        id="unknown-set-key",
    ),
    pytest.param(
        ["fit", "--set", "trian.epochs=2"],
        ["trian.epochs", "'train.epochs'"],
        id="misspelled-section",
    ),
    pytest.param(
        ["fit", "--set", "train.epochs=abc"], ["train.epochs", "must be an int"], id="wrong-type"
    ),
    pytest.param(
        ["fit", "--set", "optim.lr=-1"], ["optim.lr", "out of range", "> 0"], id="out-of-range"
    ),
    pytest.param(
        ["fit", "--set", "optim.name=adamm"],
        ["optim.name", "did you mean 'adam'?"],
        id="unknown-optimizer",
    ),
    pytest.param(["fit", "--set", "optim.lr"], ["key=value"], id="not-key-value"),
    pytest.param(
        ["fit", "missing.toml"], ["missing.toml", "no recipe file"], id="missing-recipe-file"
    ),
    pytest.param(["fit", "bad.toml"], ["bad.toml", "not valid TOML", "line 2"], id="invalid-toml"),
    pytest.param(
        ["fit", "typo.toml"],
        ["optim.lrr", "did you mean 'optim.lr'?"],
        id="unknown-key-in-recipe-file",
    ),
    pytest.param(
        ["fit", "mnist1d-cnm"],
        ["'mnist1d-cnm'", "did you mean 'mnist1d-cnn'?"],
        id="unknown-recipe-name",
    ),
    pytest.param(
        ["fit", "nosuchrecipe"], ["'nosuchrecipe'", "mnist1d-cnn"], id="unknown-recipe-name-far"
    ),
    pytest.param(
        ["recipes", "show", "nosuch"], ["'nosuch'", "mnist1d-cnn"], id="show-unknown-recipe"
    ),
    pytest.param(["recipes", "show"], ["which recipe?"], id="show-without-name"),
    pytest.param(["recipes", "show", "bad.toml"], ["not valid TOML"], id="show-a-non-recipe"),
    pytest.param(["resume", "nowhere"], ["nowhere", "config.toml"], id="resume-not-a-run"),
    pytest.param(["fit", "--progress", "bogus"], ["--progress", "bogus"], id="argparse-choice"),
    pytest.param(
        ["fit", "--set", 'optim.betas=["a", "b"]'],
        ["optim.betas"],
        id="non-numeric-betas",
    ),
    pytest.param(["fit", "--set", "optim.lr=inf"], ["optim.lr", "finite"], id="infinite-lr"),
    pytest.param(
        ["fit", "--set", "model.args={chanels=8}"],
        ["model.args", "chanels", "channels"],
        id="misspelled-factory-argument",
    ),
    pytest.param(
        ["fit", "--set", "model.args.channels=abc"],
        ["model.args.channels", "'abc'", "takes int"],
        id="factory-argument-of-the-wrong-type",
    ),
    pytest.param(
        ["fit", "--set", "model.args.channels=true"],
        ["model.args.channels", "True"],
        id="factory-argument-a-bool-for-an-int",
    ),
    pytest.param(["fit", "binary.toml"], ["binary.toml", "UTF-8"], id="not-a-text-recipe"),
    pytest.param(["fit", "--pause-at", "0"], ["--pause-at", "below 1"], id="pause-at-zero"),
    pytest.param(
        ["check-resume", "--steps", "2", "--keep", "bad.toml"],
        ["--keep bad.toml", "empty folder"],
        id="check-resume-keep-a-file",
    ),
    pytest.param(
        ["check-resume", "--steps", "0"], ["--steps", "below 1"], id="check-resume-zero-steps"
    ),
    pytest.param(
        ["doctor", "mnist1d-cnn", "--top-ops", "5"], ["--top-ops", "--profile"], id="top-ops-alone"
    ),
    pytest.param(["fit", "--set", "name=.."], ["'..'", "runs/", "--run-dir"], id="name-up"),
    pytest.param(["fit", "--set", 'name=""'], ["''", "runs/"], id="name-empty"),
    pytest.param(["lr-find", "--set", "name=a/b"], ["'a/b'", "runs/"], id="lr-find-name-path"),
    pytest.param(
        ["fit", "mnist1d-mlp", "--set", "data.args.num_samples=5"],
        ["data.args.num_samples", "at least 100"],
        id="mnist1d-too-few-samples",
    ),
    pytest.param(
        ["fit", "tabular-binary", "--set", "data.args.test_fraction=1.5"],
        ["data.args.test_fraction", "between 0 and 1"],
        id="tabular-fraction-out-of-range",
    ),
    pytest.param(
        ["fit", "tabular-binary", "--set", "data.args.val_fraction=0.999"],
        ["cannot split breast_cancer", "data.args"],
        id="tabular-split-without-train",
    ),
    pytest.param(
        ["fit", "char-gpt", "--set", 'data.args.path="short.txt"'],
        ["too short for windows of 64", "data.args.block"],
        id="char-gpt-short-text",
    ),
    pytest.param(
        ["fit", "char-gpt", "--set", "data.args.val_windows=0"],
        ["data.args.val_windows", ">= 1"],
        id="char-gpt-no-val-windows",
    ),
]


@pytest.mark.parametrize(("args", "mentions"), ERRORS)
def test_user_errors_are_one_paragraph_without_traceback(tmp_path, args, mentions):
    (tmp_path / "bad.toml").write_text('name = "x"\n[optim\nlr = 1\n')
    (tmp_path / "typo.toml").write_text("[optim]\nlrr = 1e-3\n")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00name")
    (tmp_path / "short.txt").write_text("hello world\n" * 50)  # 60 characters of validation
    r = cli(tmp_path, *args)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert err.startswith("error:") or "error:" in err.splitlines()[-1], err
    assert "\n\n" not in err, "more than one paragraph"
    for word in mentions:
        assert word in err, word
    assert not (tmp_path / "runs").exists()
    assert r.stdout == ""


# -- a user's own model and data, trained and resumed ----------------------------------------------


MODELS = """
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def _make(n, g):
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def data():
    g = torch.Generator().manual_seed(0)
    x, y = _make(96, g)
    xv, yv = _make(32, g)
    return {"train": (x, y), "val": (xv, yv)}
"""

RECIPE = """
name = "mine"
description = "the user's own model and data"

[model]
name = "mypkg.models:build"

[data]
name = "mypkg.models:data"
batch_size = 16

[task]
name = "multiclass"

[optim]
lr = 1e-2

[train]
epochs = 5
"""


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evals(run_dir: Path) -> list[dict]:
    return [r for r in _jsonl(run_dir / "metrics.jsonl") if r.get("split") == "eval"]


@pytest.mark.slow
def test_fit_a_recipe_of_the_users_own_model_and_data_then_resume(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(textwrap.dedent(MODELS))
    (tmp_path / "recipe.toml").write_text(RECIPE)

    r = cli(tmp_path, "fit", "recipe.toml", "--set", "train.epochs=2", "--progress", "off")
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "mine"
    for name in (
        "config.toml",
        "metrics.jsonl",
        "events.jsonl",
        "checkpoints/MANIFEST.json",
        "checkpoints/best.pt",
    ):
        assert (run_dir / name).is_file(), name
    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert config["model"]["name"] == "mypkg.models:build"
    assert config["train"]["epochs"] == 2 and config["train"]["run_dir"] == str(
        Path("runs") / "mine"
    )
    first = _evals(run_dir)
    assert [e["epoch"] for e in first] == [1, 2]
    assert all("val_loss" in e and "val_accuracy" in e for e in first)
    events = [e["event"] for e in _jsonl(run_dir / "events.jsonl")]
    assert events[0] == "start" and events[-1] == "end"
    manifest = json.loads((run_dir / "checkpoints" / "MANIFEST.json").read_text())
    assert "best.pt" in {c["file"] for c in manifest["checkpoints"]}

    r = cli(
        tmp_path,
        "resume",
        str(Path("runs") / "mine"),
        "--set",
        "train.epochs=3",
        "--progress",
        "off",
    )
    assert r.returncode == 0, r.stderr
    evals = _evals(run_dir)
    assert [e["epoch"] for e in evals] == [1, 2, 3], "history continues at epoch 3"
    steps = [e["step"] for e in evals]
    assert steps == sorted(set(steps)), "duplicated or out-of-order eval lines"
    assert evals[:2] == first, "the first session's history is kept as it was"
    events = [e["event"] for e in _jsonl(run_dir / "events.jsonl")]
    assert events.count("start") == 1 and events.count("resume") == 1
    assert events[-1] == "end"
    assert tomllib.loads((run_dir / "config.toml").read_text())["train"]["epochs"] == 3
    assert not (tmp_path / "runs" / "mine-2").exists(), "resume continues, it does not start anew"
    assert events.count("config_changed") == 1  # train.epochs 2 -> 3, on record

    # paused with the console off: the way to continue still reaches the user, on stderr
    r = cli(
        tmp_path, "fit", "recipe.toml", "--run-dir", "p", "--pause-at", "2", "--progress", "off"
    )
    assert r.returncode == 75 and "continue with: surefit resume p" in r.stderr
    # the same command again: the run is at the pause step, which would never come again
    files = lambda: {  # noqa: E731
        f: f.read_bytes() for f in (tmp_path / "p").rglob("*") if f.suffix in (".pt", ".json")
    }
    kept = files()
    r = cli(
        tmp_path, "fit", "recipe.toml", "--run-dir", "p", "--pause-at", "2", "--progress", "off"
    )
    assert r.returncode == 2 and "not ahead of the run" in r.stderr, r.stderr
    assert files() == kept and kept
    # the display is chosen per session: `--progress off` of the first is not the resume's
    r = cli(tmp_path, "resume", "p")
    assert r.returncode == 0 and "done:" in r.stdout, r.stdout + r.stderr
    events = [e["event"] for e in _jsonl(tmp_path / "p" / "events.jsonl")]
    assert "config_changed" not in events


# -- the command stays light -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["recipes"], ["recipes", "show", "mnist1d-cnn"], ["--help"], ["fit", "--help"]],
    ids=["recipes", "show", "help", "fit-help"],
)
def test_help_and_recipes_do_not_import_torch(tmp_path, argv):
    code = textwrap.dedent(f"""
        import sys
        import surefit.cli
        assert "torch" not in sys.modules, "import surefit.cli imported torch"
        try:
            rc = surefit.cli.main({argv!r})
        except SystemExit as exc:
            rc = exc.code
        assert "torch" not in sys.modules, "the command imported torch"
        sys.exit(rc)
    """)
    r = python(tmp_path, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout


def test_a_recipes_task_metrics_are_built_and_checked(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(MODELS)
    (tmp_path / "mine.toml").write_text(RECIPE.replace("epochs = 5", "epochs = 1"))
    r = cli(tmp_path, "fit", "mine.toml", "--set", 'task.metrics=["nope"]', "--run-dir", "bad")
    assert r.returncode == 2 and "nope" in r.stderr and "f1_macro" in r.stderr, r.stderr
    r = cli(tmp_path, "fit", "mine.toml", "--set", 'task.metrics=["f1_macro"]', "--run-dir", "ok")
    assert r.returncode == 0, r.stderr
    assert "val_f1_macro" in _evals(tmp_path / "ok")[-1]
