"""Launching test scenarios through torchrun on loopback: gloo, CPU, one thread a process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("worker.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, **extra)
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    return env


def torchrun(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180, nproc: int = 2
) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` on 127.0.0.1 with ``nproc`` processes."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "--monitor-interval=0.2",
        *args,
    ]
    return subprocess.run(
        cmd, env=env or torchrun_env(), capture_output=True, text=True, timeout=timeout
    )


def run_scenario(name: str, out: Path, **extra: str) -> subprocess.CompletedProcess:
    done = torchrun(str(WORKER), name, str(out), env=torchrun_env(**extra))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dist")
