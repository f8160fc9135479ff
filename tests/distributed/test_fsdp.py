"""FSDP2 on 2 CPU processes (gloo) with a tiny transformer: trains, checkpoints through
torch.distributed.checkpoint, and resumes exactly on 2 processes and closely on 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from surefit import distributed
from surefit.keywords import build_config
from surefit.optim import build_optimizer

from . import worker
from .conftest import run_scenario


@pytest.fixture(scope="module")
def fsdp_out(out_dir: Path) -> Path:
    run_scenario("fsdp", out_dir)
    return out_dir


def test_fsdp_trains_and_writes_sharded_checkpoints(fsdp_out: Path) -> None:
    start = worker.TinyTransformer().state_dict()
    trained = torch.load(fsdp_out / "weights-4.pt")
    assert max((trained[k] - start[k]).abs().max().item() for k in start) > 1e-3
    folder = fsdp_out / "run-at-4" / "checkpoints" / "last-000000004"
    assert (folder / ".metadata").is_file() and (folder / "state.pt").is_file()
    assert len(list(folder.glob("*.distcp"))) == 2  # one shard file per rank


def test_sharded_checkpoint_loads_into_one_process(fsdp_out: Path) -> None:
    model = worker.TinyTransformer(seed=1)
    optimizer = build_optimizer(model, build_config(optimizer="sgd", lr=0.1).optim)
    folder = fsdp_out / "run-at-4" / "checkpoints" / "last-000000004"
    distributed.load_model_optimizer_state(model, optimizer, folder)
    saved = torch.load(fsdp_out / "weights-4.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_resume_on_two_processes_is_exact(fsdp_out: Path) -> None:
    resumed = torch.load(fsdp_out / "weights-6-resumed.pt")
    straight = torch.load(fsdp_out / "weights-6-straight.pt")
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k


def test_a_pause_between_checkpoints_resumes_exactly(fsdp_out: Path) -> None:
    paused = torch.load(fsdp_out / "weights-6-paused.pt")
    straight = torch.load(fsdp_out / "weights-6-straight.pt")
    for k in straight:
        assert torch.equal(paused[k], straight[k]), k


def test_activation_checkpointing_under_fsdp_changes_nothing(fsdp_out: Path) -> None:
    checkpointed = torch.load(fsdp_out / "weights-6-checkpointed.pt")
    straight = torch.load(fsdp_out / "weights-6-straight.pt")
    assert checkpointed.keys() == straight.keys()
    for k in straight:
        assert torch.equal(checkpointed[k], straight[k]), k


def test_resume_on_one_process_continues_the_run(fsdp_out: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(fsdp_out / "run-at-4", run)
    model = worker.fsdp_fit(run, 6)
    straight = torch.load(fsdp_out / "weights-6-straight.pt")
    # the same samples per step (the batch size is global); only the reduction order differs
    diff = max((model.state_dict()[k] - straight[k]).abs().max().item() for k in straight)
    assert diff < 1e-5
