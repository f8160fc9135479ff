"""The README's main job, shortened: `surefit fit` on the embedded default recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest


@pytest.mark.slow
def test_default_recipe_end_to_end(tmp_path, mnist1d_cache):
    env = {**os.environ, "SUREFIT_CACHE": str(mnist1d_cache)}
    r = subprocess.run(
        [sys.executable, "-m", "surefit", "fit", "--set", "train.epochs=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "epoch 1/2" in out and "epoch 2/2" in out
    for word in ("train_loss", "val_loss", "val_accuracy", "lr", "grad_norm", "samples/s"):
        assert word in out.splitlines()[0], word
    assert "test:" in out and "test_accuracy" in out
    run = tmp_path / "runs" / "mnist1d-cnn"
    assert f"run directory: {os.path.join('runs', 'mnist1d-cnn')}" in out
    cfg = tomllib.loads((run / "config.toml").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["args"]["channels"] == 64
    records = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [rec for rec in records if rec.get("split") == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]
    assert evals[-1]["val_accuracy"] > 0.3  # learning after 2 of 100 epochs (chance is 0.1)
    test = [rec for rec in records if rec.get("split") == "test"]
    assert len(test) == 1 and 0 < test[0]["test_accuracy"] <= 1
    manifest = json.loads((run / "checkpoints" / "MANIFEST.json").read_text())
    files = {e["file"] for e in manifest["checkpoints"]}
    assert "best.pt" in files and all((run / "checkpoints" / f).exists() for f in files)
    # a second `surefit fit` starts a new run beside the first, never on top of it
    r2 = subprocess.run(
        [sys.executable, "-m", "surefit", "fit", "--set", "train.max_steps=3", "--progress", "off"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r2.returncode == 0, r2.stderr
    assert (tmp_path / "runs" / "mnist1d-cnn-2" / "config.toml").exists()
