"""`surefit sample`: text from a tiny trained char-gpt run, deterministic for a fixed seed."""

from __future__ import annotations

import pytest

from surefit import DataError, recipes
from surefit.cli import main
from tests.conftest import shared_data

pytestmark = pytest.mark.skipif(
    shared_data("tinyshakespeare.txt") is None, reason="shared/data/tinyshakespeare.txt is absent"
)
TINY = [
    "model.args={block = 16, layers = 1, heads = 2, width = 32}",
    "data.args={block = 16, val_windows = 32}",
    "data.batch_size=16",
    "train.max_steps=40",
    "train.eval_every_steps=20",
    "schedule.warmup=5",
    "optim.lr=1e-2",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "run"
    args = ["fit", "char-gpt", "--run-dir", str(path), "--progress", "off"]
    assert main(args + [a for s in TINY for a in ("--set", s)]) == 0
    assert (path / "checkpoints" / "best.pt").exists()
    return path


def sample(capsys, run_dir, *extra: str) -> str:
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--prompt", "ROMEO:", *extra]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1]  # print's newline


def test_sample_continues_the_prompt_by_the_requested_length(capsys, run_dir):
    from surefit.recipes.chargpt import VOCAB

    text = sample(capsys, run_dir, "--tokens", "80", "--seed", "3")
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 80
    assert set(text) <= set(VOCAB)


def test_sample_is_deterministic_for_a_seed(capsys, run_dir):
    a = sample(capsys, run_dir, "--tokens", "60", "--seed", "1", "--top-k", "10")
    b = sample(capsys, run_dir, "--tokens", "60", "--seed", "1", "--top-k", "10")
    c = sample(capsys, run_dir, "--tokens", "60", "--seed", "2", "--top-k", "10")
    assert a == b and a != c


def test_sample_needs_no_training_data(run_dir, monkeypatch, tmp_path):
    from surefit.recipes import chargpt

    monkeypatch.setenv("SUREFIT_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(chargpt, "_shared_copy", lambda: None)
    text = recipes.sample(run_dir, "ROMEO:", tokens=10, temperature=0.5, top_k=1)
    assert len(text) == 16


def test_sample_refuses_what_it_cannot_do(capsys, run_dir, tmp_path):
    assert main(["sample", str(run_dir), "--temperature", "0"]) == 2
    assert "temperature" in capsys.readouterr().err
    assert main(["sample", str(tmp_path)]) == 2
    assert "not a surefit run directory" in capsys.readouterr().err
    with pytest.raises(DataError, match="vocabulary"):
        recipes.sample(run_dir, "ROMEO: \u00e9", tokens=1)


def test_a_model_module_in_the_working_folder_is_found(run_dir, tmp_path):
    """As `surefit fit` finds a factory in the working folder, `surefit sample` finds it too."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = run / "config.toml"
    config.write_text(config.read_text().replace("surefit.recipes.chargpt:gpt", "mylm:gpt"))
    (tmp_path / "mylm.py").write_text("from surefit.recipes.chargpt import gpt, generate\n")
    script = Path(sys.executable).with_name("surefit")  # not `python -m`, which adds the cwd
    r = subprocess.run(
        [str(script), "sample", "run", "--tokens", "5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) > 1


def test_a_config_that_no_longer_fits_the_weights_is_named(capsys, run_dir, tmp_path):
    """config.toml edited after training: the weights do not load into the model it builds."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = run / "config.toml"
    text = config.read_text()
    assert "width = 32" in text
    config.write_text(text.replace("width = 32", "width = 48"))
    capsys.readouterr()
    assert main(["sample", str(run), "--tokens", "5"]) == 2
    err = capsys.readouterr().err
    assert "do not fit the model its config.toml builds" in err and "Traceback" not in err
    config.write_text(text.replace("width = 32", 'width = "wide"'))
    assert main(["sample", str(run), "--tokens", "5"]) == 2
    assert "model.args.width" in capsys.readouterr().err
