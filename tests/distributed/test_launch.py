"""Launching: torchrun -m surefit with two "nodes" on one machine, ``surefit fit --nproc``, and a
rank that fails bringing the whole job down with its error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from surefit import recipes
from surefit.config import load

from . import worker
from .conftest import WORKER, free_port, torchrun, torchrun_env


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(worker.RECIPE)
    return path


def _final_loss(run_dir: Path) -> float:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("split") == "eval"][-1]["val_loss"]


def test_two_nodes_on_one_machine_complete_a_run(tmp_path: Path) -> None:
    recipe, port, run_dir = _recipe(tmp_path), free_port(), tmp_path / "run"
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                f"--node-rank={rank}",
                "--nproc-per-node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=two-nodes",
                "-m",
                "surefit",
                "fit",
                str(recipe),
                "--run-dir",
                str(run_dir),
                "--progress",
                "off",
            ],
            env=torchrun_env(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = [n.communicate(timeout=180)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    # rank 0 alone wrote the run directory; its result equals one process with the global batch
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "MANIFEST.json",
        "best.pt",
        "last-000000002.pt",
    ]
    cfg = load(recipe).replace(log={"progress": "off"})
    result = recipes.run(cfg)
    assert abs(_final_loss(run_dir) - result.final_metrics["val_loss"]) < 1e-6


def _fit_nproc(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "surefit", "fit", str(_recipe(tmp_path)), "--nproc", "2"]
        + ["--progress", "off", "--run-dir", str(tmp_path / "run"), *extra],
        env=torchrun_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_fit_nproc_launches_through_torchrun(tmp_path: Path) -> None:
    done, run_dir = _fit_nproc(tmp_path), tmp_path / "run"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    events = [json.loads(x)["event"] for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "end"  # one writer: no duplicated lines
    assert events.count("start") == 1


def test_fit_nproc_exits_2_on_a_configuration_error(tmp_path: Path) -> None:
    done = _fit_nproc(tmp_path, "--set", "data.batch_size=33")
    assert done.returncode == 2
    assert "data.batch_size=33 does not split over 2 processes" in done.stderr
    assert "error: rank" in done.stderr


def _failing(how: str, tmp_path: Path) -> subprocess.CompletedProcess:
    # the bound: the job ends (the other rank does not hang in a collective) before the timeout
    return torchrun(str(WORKER), how, str(tmp_path), timeout=240)


def test_a_killed_rank_ends_the_job_with_its_error(tmp_path: Path) -> None:
    done = _failing("kill", tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "SIGKILL" in out and "rank      : 1" in out, out[-3000:]


def test_a_raising_rank_ends_the_job_with_its_error(tmp_path: Path) -> None:
    done = _failing("raise", tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in out, out[-3000:]
