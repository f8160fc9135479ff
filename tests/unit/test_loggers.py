"""Tracker loggers, read back with each library's own reader and compared with metrics.jsonl."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import surefit as sf
from surefit.log import NullConsole, RunLog
from surefit.loggers import metric_values
from tests.conftest import make_classification, mlp
from tests.unit.test_loop import Crash

TIMING = ("samples_per_s", "steps_per_s", "time_s")  # differ between a run and its resumed rerun


def _fit(run_dir: Path, loggers: list[str], **kw):
    x, y = make_classification(96)
    common = dict(
        epochs=2, batch_size=16, log_every=2, val_fraction=0.25, progress="off", device="cpu"
    )
    return sf.fit(mlp(), (x, y), run_dir=run_dir, loggers=loggers, **{**common, **kw})


def _expected(run_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, list[tuple[int, float]]]:
    """metric name -> [(step, value)] as metrics.jsonl holds them."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name, value in metric_values(record).items():
            if name.split("/")[-1] not in skip:
                series.setdefault(name, []).append((record["step"], value))
    return series


def _without(series: dict, skip: tuple[str, ...]) -> dict:
    return {k: v for k, v in series.items() if k.split("/")[-1] not in skip}


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert [s for s, _ in got[name]] == [s for s, _ in want[name]], name
        assert [v for _, v in got[name]] == pytest.approx([v for _, v in want[name]]), name


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No W&B key or mode set, and W&B's own settings and cache kept in the test's folder."""
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store whose tables are made once (that takes a second or two)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def run_dir(tmp_path: Path, _empty_mlflow_store: Path) -> Path:
    """A run directory whose default MLflow store exists already, with no experiment of ours."""
    (tmp_path / "r" / "mlflow").mkdir(parents=True)
    shutil.copyfile(_empty_mlflow_store, tmp_path / "r" / "mlflow" / "mlflow.db")
    return tmp_path / "r"


# -- readers ---------------------------------------------------------------------------------------
def _tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))  # purges orphaned steps, as TensorBoard
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(run_dir: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    run = runs[0]
    series = {
        key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        for key in run.data.metrics
    }
    return client, run, {k: sorted(v, key=lambda sv: sv[0]) for k, v in series.items()}


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file: LevelDB-log framing (32 KiB blocks, 7-byte chunk headers)
    around wandb's own protobuf Record, decoded with wandb.proto."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def _finished_wandb_records(path: Path, wait_s: float = 60.0) -> list:
    """The records once the file ends with the run's exit: wandb's service process writes the
    file and may still be flushing it for a moment after ``finish()`` returns."""
    deadline = time.monotonic() + wait_s
    while True:
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path.name} has no exit record"
        time.sleep(0.1)


def _wandb(run_dir: Path):
    """(run ids, config, metric name -> [(step, value)]) over every offline run in RUN_DIR/wandb."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    ids, config, series = set(), {}, {}
    for path in files:
        for record in _finished_wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                row = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
                for key, value in row.items():
                    if not key.startswith("_"):
                        series.setdefault(key, []).append((row["_step"], value))
    return files, ids, config, series


# -- each tracker against metrics.jsonl ------------------------------------------------------------
def test_import_surefit_imports_no_tracker():
    trackers = ("tensorboard", "mlflow", "wandb", "torch.utils.tensorboard")
    code = f"import sys, surefit.api; print([m for m in {trackers} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tensorboard_holds_the_metrics_of_metrics_jsonl(tmp_path):
    _fit(tmp_path / "r", ["tensorboard"])
    _assert_same(_tensorboard(tmp_path / "r"), _expected(tmp_path / "r"))


def test_mlflow_holds_params_metrics_and_the_best_checkpoint(run_dir):
    _fit(run_dir, ["mlflow", "csv"], lr=2e-3)
    client, run, series = _mlflow(run_dir)
    _assert_same(series, _expected(run_dir))
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.002"
    assert run.data.params["log.loggers"] == "['mlflow', 'csv']"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")]
    assert artifacts == ["checkpoints/best.pt"]


def test_a_shared_mlflow_store_keeps_no_runs_folder_as_its_artifact_root(
    tmp_path, _empty_mlflow_store, monkeypatch
):
    """Runs logging to one store by URI share its experiment: its artifacts must not live in
    the folder of whichever run created it (deleting that run would break the others)."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "shared.db"
    shutil.copyfile(_empty_mlflow_store, store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root, ./mlruns, lands here
    _fit(tmp_path / "a", ["mlflow"])
    _fit(tmp_path / "b", ["mlflow"])
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    assert str(tmp_path / "a") not in experiment.artifact_location
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and all(r.info.artifact_uri for r in runs)
    assert not (tmp_path / "a" / "mlflow").exists() and not (tmp_path / "b" / "mlflow").exists()


def test_wandb_offline_run_holds_config_and_the_metrics_of_metrics_jsonl(tmp_path, wandb_offline):
    _fit(tmp_path / "r", ["wandb"], lr=2e-3)
    files, ids, config, series = _wandb(tmp_path / "r")
    assert len(files) == 1 and len(ids) == 1
    assert config["optim"]["lr"] == 2e-3
    _assert_same(series, _expected(tmp_path / "r"))


# -- resume, failure, rank zero --------------------------------------------------------------------
def test_a_resumed_run_continues_the_same_runs_without_duplicated_steps(run_dir, wandb_offline):
    loggers = ["tensorboard", "mlflow", "wandb", "csv"]
    # checkpoint at step 4, crash at 7: steps 5 to 7 were logged and are logged again on resume
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(run_dir, loggers, callbacks=[Crash(7)], checkpoint_every=4, log_every=1)
    _, crashed, _ = _mlflow(run_dir)
    assert crashed.info.status == "FAILED"
    _fit(run_dir, loggers, checkpoint_every=4, log_every=1)
    want = _expected(run_dir)
    assert [s for s, _ in want["train_loss"]] == list(range(1, 11))

    _assert_same(_without(_tensorboard(run_dir), TIMING), _without(want, TIMING))
    _, run, series = _mlflow(run_dir)
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    _assert_same(_without(series, TIMING), _without(want, TIMING))
    files, ids, _, series = _wandb(run_dir)
    assert len(files) == 2 and len(ids) == 1  # two attempts of one W&B run
    _assert_same(_without(series, TIMING), _without(want, TIMING))
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + len((run_dir / "metrics.jsonl").read_text().splitlines())


class _Interrupt(sf.Callback):
    def on_step_end(self, run):
        if run.optimizer_step == 6:
            raise KeyboardInterrupt


def test_a_preempted_run_ends_killed_and_an_interrupted_one_too(run_dir):
    from tests.resume.test_preemption import SendSignal

    _fit(run_dir, ["mlflow"], callbacks=[SendSignal(3, signal.SIGTERM)])
    client, run, _ = _mlflow(run_dir)
    assert run.info.status == "KILLED"
    assert client.list_artifacts(run.info.run_id) == []  # best.pt only for a finished run
    with pytest.raises(KeyboardInterrupt):
        _fit(run_dir, ["mlflow"], callbacks=[_Interrupt()])
    _, again, series = _mlflow(run_dir)
    assert again.info.run_id == run.info.run_id and again.info.status == "KILLED"
    assert [s for s, _ in series["train_loss"]] == [2, 4, 6]


def test_a_failing_logger_is_recorded_once_and_training_goes_on(tmp_path, monkeypatch):
    from surefit.loggers import TensorBoardSink

    def broken(self, step, values):
        raise OSError("disk gone")

    monkeypatch.setattr(TensorBoardSink, "write", broken)
    r = _fit(tmp_path / "r", ["tensorboard", "csv"])
    assert r.steps == 10
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "logger_failed"]
    assert [(e["logger"], e["error"]) for e in failed] == [("tensorboard", "OSError: disk gone")]
    assert events[-1]["event"] == "end"
    csv_rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines())


def test_an_unreachable_mlflow_server_does_not_stop_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    r = _fit(tmp_path / "r", ["mlflow"])
    assert r.steps == 10
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    assert [e["logger"] for e in events if e["event"] == "logger_failed"] == ["mlflow"]
    assert not (tmp_path / "r" / "mlflow").exists()


def test_only_rank_zero_writes_to_trackers(tmp_path):
    log = RunLog(tmp_path / "r", ["tensorboard", "mlflow"], NullConsole(), enabled=False)
    log.metric({"step": 1, "train_loss": 1.0})
    log.close()
    assert log.trackers == [] and not (tmp_path / "r").exists()


# -- configuration errors --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_package_names_the_extra_before_anything_is_written(tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: import fails
    with pytest.raises(sf.ConfigError, match=rf"pip install 'surefit\[{name}\]'"):
        _fit(tmp_path / "r", ["csv", name])
    assert not (tmp_path / "r").exists()


def test_an_unknown_logger_gets_a_did_you_mean(tmp_path):
    with pytest.raises(sf.ConfigError, match="did you mean 'tensorboard'"):
        _fit(tmp_path / "r", ["tensorbord"])
    assert not (tmp_path / "r").exists()


class _FailAtStart(sf.Callback):
    def on_fit_start(self, run):
        raise RuntimeError("broken before the first record")


def test_a_resumed_run_that_fails_before_its_first_record_ends_failed(run_dir):
    from tests.resume.test_preemption import SendSignal

    _fit(run_dir, ["mlflow"], callbacks=[SendSignal(3, signal.SIGTERM)])
    assert _mlflow(run_dir)[1].info.status == "KILLED"
    with pytest.raises(RuntimeError, match="broken"):
        _fit(run_dir, ["mlflow"], callbacks=[_FailAtStart()])
    assert _mlflow(run_dir)[1].info.status == "FAILED"  # the same run, not left KILLED


def test_a_jsonl_log_is_cut_in_place_never_rewritten(tmp_path):
    """A resume cuts the lines written after its checkpoint by truncating the file: rewriting it
    emptied it first, and a kill in between lost every line. A line torn by a kill is dropped
    before the next is appended, not glued to it."""
    import os

    from surefit.log import JsonlSink

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {i}}}\n' for i in range(5)))
    before = os.stat(path)
    sink = JsonlSink(path)
    sink.load_state_dict({"lines": 5})  # nothing to cut: the file is not touched
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns
    sink.load_state_dict({"lines": 3})
    assert path.read_text().splitlines() == ['{"step": 0}', '{"step": 1}', '{"step": 2}']
    assert os.stat(path).st_ino == before.st_ino  # the same file, cut
    with path.open("a") as f:
        f.write('{"step": 3, "lo')  # torn by a kill
    sink.write({"step": 3})
    assert path.read_text().splitlines()[-2:] == ['{"step": 2}', '{"step": 3}']
