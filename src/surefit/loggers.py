"""Sinks for the experiment trackers people already use: TensorBoard, MLflow, Weights & Biases.

Each sink imports its library when it opens (``import surefit`` imports none of them) and gets
exactly the records metrics.jsonl gets. A record's numeric fields become metrics named like the
field (``train_loss``, ``lr``) at the record's ``step``; the fields of an evaluation or test
record are prefixed with its split (``eval/val_loss``, ``eval/train_loss``, ``test/test_acc``),
because an evaluation record repeats names of the training record at the same step.

A sink's state (its run id) goes into the checkpoint, so a resumed run continues the same
TensorBoard folder, MLflow run and W&B run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .errors import ConfigError

# logger name -> (module that must be importable, the pip extra that installs it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


def _installed(module: str) -> bool:
    if module in sys.modules:  # a test (or a user) may block a module with sys.modules[m] = None
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check_installed(names: list[str]) -> None:
    """Raise a ConfigError naming the extra to install for a tracker whose package is missing."""
    for name in names:
        if name in TRACKERS and not _installed(TRACKERS[name][0]):
            module, extra = TRACKERS[name]
            raise ConfigError(
                f"logger '{name}' needs the '{module}' package, which is not installed",
                where="log.loggers",
                fix=f"pip install 'surefit[{extra}]', or remove '{name}' from log.loggers",
            )


def metric_values(record: dict[str, Any]) -> dict[str, float]:
    """The metrics of one metrics.jsonl record, named as every tracker sink names them."""
    split = record.get("split")
    prefix = f"{split}/" if split else ""
    return {
        prefix + key: float(value)
        for key, value in record.items()
        if key not in ("step", "split")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    }


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


class TrackerSink:
    """A tracker's sink: opened on first use, written at the log interval, closed with a status.

    ``replays`` says whether the tracker can take records again for steps it already has (a
    resumed TensorBoard purges them); the others are not sent again what they were sent before a
    crash (a bit-exact resume recomputes the same values).
    """

    name = ""
    replays = False

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        self.run_dir, self.config = run_dir, config
        self.resumed: dict[str, Any] | None = None  # the checkpoint's state of this sink
        self.purge_step: int | None = None  # first step a resumed run writes again
        self.opened = False

    def ensure_open(self) -> None:
        if not self.opened:
            self.open()
            self.opened = True

    def open(self) -> None: ...
    def write(self, step: int, values: dict[str, float]) -> None: ...
    def finish(self, status: str, best: Path | None) -> None: ...

    def close(self, status: str, best: Path | None) -> None:
        if not self.opened and self.resumed and status == "FAILED":
            self.ensure_open()  # a resumed run that failed before its first record: say so
        if self.opened:
            self.opened = False
            self.finish(status, best)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], purge_step: int) -> None:
        self.resumed, self.purge_step = state, purge_step

    @property
    def project(self) -> str:
        log = self.config.get("log", {})
        return log.get("project") or self.config.get("name") or "surefit"


class TensorBoardSink(TrackerSink):
    """Event files in ``RUN_DIR/tensorboard``; a resumed run purges the steps it writes again."""

    name, replays = "tensorboard", True

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = self.run_dir / "tensorboard"
        self.writer = SummaryWriter(str(self.folder), purge_step=self.purge_step)

    def write(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # at the log interval only: a crash loses no logged step

    def finish(self, status: str, best: Path | None) -> None:
        self.writer.close()


class MlflowSink(TrackerSink):
    """One MLflow run: params = the flattened config, metrics by step, best.pt as an artifact.

    The tracking URI is ``log.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in
    ``RUN_DIR/mlflow/`` (artifacts beside it).
    """

    name = "mlflow"

    def open(self) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.config.get("log", {}).get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        local = self.run_dir / "mlflow"
        own_store = not uri  # this run directory's own: its experiment's artifacts beside it
        if own_store:
            local.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(local / 'mlflow.db').resolve()}"
        quiet = logging.getLogger("mlflow.store.db.utils")  # "Creating initial tables" at INFO
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            self.client = client = MlflowClient(tracking_uri=uri)
        finally:
            quiet.setLevel(level)
        run_id = (self.resumed or {}).get("run_id")
        if run_id and self._exists(run_id):
            client.update_run(run_id, status="RUNNING")
            have = set(client.get_run(run_id).data.params)
        else:
            experiment = client.get_experiment_by_name(self.project)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:
                # a store given by URI is shared by runs: its experiments keep the store's
                # artifact root, not the folder of whichever run happened to create them
                where = local / "artifacts" if own_store else None
                experiment_id = client.create_experiment(
                    self.project, artifact_location=where.resolve().as_uri() if where else None
                )
            run_id = client.create_run(experiment_id, run_name=self.run_dir.name).info.run_id
            have = set()
        self.run_id = run_id
        # a param cannot change in MLflow: a resumed run adds only those it did not have
        params = [Param(k, str(v)) for k, v in flatten(self.config).items() if k not in have]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            client.log_batch(run_id, params=params[i : i + 100])

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def write(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str, best: Path | None) -> None:
        if status == "FINISHED" and best is not None and best.is_file():
            self.client.log_artifact(self.run_id, str(best), "checkpoints")
        self.client.set_terminated(self.run_id, status)

    def state_dict(self) -> dict[str, Any]:
        self.ensure_open()  # a checkpoint before the first record still names the run
        return {"run_id": self.run_id}


class WandbSink(TrackerSink):
    """A W&B run under ``RUN_DIR/wandb``: offline unless WANDB_API_KEY (or WANDB_MODE) is set.

    It never prompts: without a key it runs offline (``wandb sync RUN_DIR/wandb/offline-run-*``
    uploads it later), silent, without console capture.
    """

    name = "wandb"

    def open(self) -> None:
        mode = os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline"
        )
        import wandb

        self.run_id = (self.resumed or {}).get("run_id") or uuid.uuid4().hex[:12]
        settings = wandb.Settings(
            silent=True, console="off", x_disable_stats=True, save_code=False, disable_git=True
        )
        self.run = wandb.init(
            project=self.project,
            name=self.run_dir.name,
            id=self.run_id,
            resume="allow",
            dir=str(self.run_dir),
            mode=mode,
            config=self.config,
            settings=settings,
        )

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def finish(self, status: str, best: Path | None) -> None:
        if status == "KILLED" and hasattr(self.run, "mark_preempting"):
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)

    def state_dict(self) -> dict[str, Any]:
        self.ensure_open()
        return {"run_id": self.run_id}


SINKS: dict[str, type[TrackerSink]] = {
    "tensorboard": TensorBoardSink,
    "mlflow": MlflowSink,
    "wandb": WandbSink,
}
