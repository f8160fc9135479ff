"""Tiny real runs to report on: one resumed in the middle, one plain, both with validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import surefit as sf
from tests.conftest import make_classification, mlp

RESUMED_AT = 9  # optimizer step where the first segment stopped (mid-epoch) and the second went on


def _fit(run_dir: Path, **keywords) -> sf.FitResult:
    x, y = make_classification(256)
    options = dict(
        val=0.25, epochs=3, batch_size=32, log_every=1, progress="off", clip_norm=0.5, lr=0.05
    )
    options.update(keywords)
    return sf.fit(mlp(), (x, y), run_dir=run_dir, **options)


@pytest.fixture(scope="session")
def resumed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sf.FitResult]:
    """A run stopped at step 9 and resumed to its end (3 epochs of 6 steps), with a skipped
    step and a rollback recorded the way the health guards record them."""
    run_dir = tmp_path_factory.mktemp("runs") / "resumed"
    _fit(run_dir, max_steps=RESUMED_AT)
    result = _fit(run_dir)
    with (run_dir / "events.jsonl").open("a") as f:
        f.write(json.dumps({"event": "skip", "step": 7, "why": "grad_norm not finite"}) + "\n")
        f.write(json.dumps({"event": "rollback", "step": 15, "to_step": 9}) + "\n")
    return run_dir, result


@pytest.fixture(scope="session")
def other_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sf.FitResult]:
    run_dir = tmp_path_factory.mktemp("runs") / "other"
    return run_dir, _fit(run_dir, lr=0.2, log_every=2)


@pytest.fixture(scope="session")
def written(resumed_run) -> tuple[Path, list[Path]]:
    """(report.html, plots) of the resumed run, written once."""
    from surefit.report import write_report

    return write_report(resumed_run[0])
