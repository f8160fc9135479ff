"""Loop behaviour: evaluation mode, precision, data paths, stopping, host syncs, resume."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surefit as sf
from tests.conftest import Samples, make_classification, mlp


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.body(x)


def test_evaluation_runs_in_eval_mode_under_inference_and_returns_to_train_mode():
    x, y = make_classification(128)
    model = DropoutNet()
    seen = []

    class Probe(sf.Callback):
        def on_eval_end(self, run, metrics):
            seen.append(run.model.training)

    sf.fit(
        model,
        (x, y),
        val=(x[:64], y[:64]),
        epochs=1,
        batch_size=32,
        progress="off",
        callbacks=[Probe()],
    )
    assert model.training and seen == [True]
    # evaluation twice of a dropout model gives identical results: dropout is off
    a = sf.evaluate(model, (x, y), task="multiclass")
    b = sf.evaluate(model, (x, y), task="multiclass")
    assert a == b
    assert model.training  # evaluate() restores the mode it found
    model.modes.clear()
    sf.evaluate(model, (x, y), task="multiclass")
    assert model.modes and not any(model.modes)


@pytest.mark.parametrize("with_dir", [False, True])
def test_the_callback_view_has_every_documented_property(tmp_path, with_dir):
    x, y = make_classification(64)
    seen = []

    class Look(sf.Callback):
        def on_epoch_end(self, run):
            seen.append((run.epoch, run.optimizer_step, run.lr, len(run.history), run.run_dir))
            assert isinstance(run.model, torch.nn.Module)

    run_dir = tmp_path / "r" if with_dir else None
    sf.fit(mlp(), (x, y), epochs=2, batch_size=32, lr=1e-2, schedule="constant",
           progress="off", run_dir=run_dir, callbacks=[Look()])  # fmt: skip
    assert seen == [(1, 2, 1e-2, 1, run_dir), (2, 4, 1e-2, 2, run_dir)]


def test_bf16_on_cpu_trains_and_converges():
    x, y = make_classification(256)
    model = mlp(hidden=32)
    r = sf.fit(
        model, (x, y), val=0.25, precision="bf16", epochs=20, lr=3e-2, batch_size=32, progress="off"
    )
    assert r.history[-1]["val_loss"] < 0.6 * r.history[0]["val_loss"]
    assert r.best_metrics["val_accuracy"] > 0.8
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_fp16_off_cuda_is_a_config_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: fp16 is valid here")
    x, y = make_classification(32)
    with pytest.raises(sf.ConfigError, match="fp16"):
        sf.fit(mlp(), (x, y), precision="fp16", epochs=1, progress="off")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for fp16 + GradScaler")
def test_fp16_with_grad_scaler_trains_on_cuda():
    x, y = make_classification(256)
    model = mlp(hidden=32)
    r = sf.fit(
        model,
        (x, y),
        val=0.25,
        precision="fp16",
        epochs=10,
        lr=3e-2,
        batch_size=32,
        device="cuda",
        progress="off",
    )
    assert r.history[-1]["val_loss"] < r.history[0]["val_loss"]


def _same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_tensors_numpy_dataset_and_dataloader_paths():
    x, y = make_classification(96)
    common = dict(optimizer="sgd", lr=0.1, epochs=2, batch_size=16, progress="off", seed=1)
    a, b, c, t = mlp(seed=6), mlp(seed=6), mlp(seed=6), mlp(seed=6)
    sf.fit(a, (x, y), **common)
    sf.fit(b, (x.numpy(), y.numpy()), **common)
    sf.fit(c, Samples(x, y), **common)
    sf.fit(t, TensorDataset(x, y), **common)
    assert _same_weights(a, b)  # numpy float32 goes the same way as the tensors
    assert _same_weights(a, c)  # a Dataset follows the same seeded order as the fast path
    assert _same_weights(a, t)  # a TensorDataset takes the fast path itself
    from surefit.data import DatasetData, TensorData, as_data

    assert isinstance(as_data(TensorDataset(x, y), "train"), TensorData)
    assert isinstance(as_data(Samples(x, y), "train"), DatasetData)

    class Augmented(TensorDataset):  # its own __getitem__: loaded sample by sample
        def __getitem__(self, i):
            return self.tensors[0][i] * 2, self.tensors[1][i]

    assert isinstance(as_data(Augmented(x, y), "train"), DatasetData)
    d = mlp(seed=6)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    r = sf.fit(d, loader, val=loader, **common)
    assert r.steps == 12 and not _same_weights(a, d)  # iterated as given: in order


def test_max_steps_stops_mid_epoch_and_max_steps_alone_runs_past_default_epochs():
    x, y = make_classification(64)
    r = sf.fit(mlp(), (x, y), max_steps=5, batch_size=16, progress="off")
    assert r.steps == 5 and "max_steps" in r.stop_reason
    r = sf.fit(mlp(), (x, y), max_steps=50, batch_size=16, progress="off")
    assert r.steps == 50  # 4 steps per epoch: past the 10-epoch default


def test_max_steps_at_an_epoch_end_finishes_that_epoch():
    """The epoch's end (evaluation, epoch-unit schedule, on_epoch_end) runs as with epochs."""
    x, y = make_classification(64)
    ends, rates = [], []

    class Ends(sf.Callback):
        def on_epoch_end(self, run):
            ends.append(run.epoch)
            rates.append(run.lr)  # the next epoch's: the epoch schedule stepped

    common = dict(batch_size=16, progress="off", schedule="step", step_size=1, gamma=0.5, lr=0.01)
    a, b = mlp(), mlp()
    by_steps = sf.fit(a, (x, y), epochs=5, max_steps=8, callbacks=[Ends()], **common)
    by_epochs = sf.fit(b, (x, y), epochs=2, **common)
    assert by_steps.steps == 8 and "max_steps" in by_steps.stop_reason and ends == [1, 2]
    assert [h["epoch"] for h in by_steps.history] == [h["epoch"] for h in by_epochs.history]
    assert by_steps.history[-1]["lr"] == by_epochs.history[-1]["lr"] == 0.005  # epoch 2's
    assert rates == [0.005, 0.0025]
    assert _same_weights(a, b)


def test_deterministic_holds_for_the_run_only_and_a_val_fraction_is_recorded():
    x, y = make_classification(64)
    assert not torch.are_deterministic_algorithms_enabled()
    seen = []

    class Look(sf.Callback):
        def on_step_end(self, run):
            seen.append(torch.are_deterministic_algorithms_enabled())

    r = sf.fit(mlp(), (x, y), val=0.25, deterministic=True, epochs=1, batch_size=16,
               progress="off", callbacks=[Look()])  # fmt: skip
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()
    assert r.config.data.val_fraction == 0.25 and r.steps == 3  # 48 of 64 samples trained on


def test_the_bar_of_a_run_bounded_by_max_steps_alone_shows_no_epoch_count():
    import io

    from surefit.log import Console

    bar = Console("bar", 1 << 30, stream=io.StringIO())
    bar.epoch_start(0, 10)
    assert bar.bar.desc == "epoch 1/?"
    bar.epoch_end()


def test_a_stop_in_on_epoch_start_takes_no_step():
    class StopFirst(sf.Callback):
        def on_epoch_start(self, run):
            run.request_stop("not today")

    x, y = make_classification(64)
    r = sf.fit(mlp(), (x, y), batch_size=16, progress="off", callbacks=[StopFirst()])
    assert r.steps == 0 and r.stop_reason == "not today"


def test_early_stopping_and_restore_best(tmp_path):
    x, y = make_classification(64)
    xv, yv = make_classification(64, seed=1)  # labels from another rule: val loss rises
    model = mlp()
    r = sf.fit(
        model,
        (x, y),
        val=(xv, yv),
        epochs=40,
        lr=5e-2,
        batch_size=16,
        patience=2,
        restore_best=True,
        progress="off",
        run_dir=tmp_path / "run",
        device="cpu",
    )
    assert "early stopping" in r.stop_reason and len(r.history) < 40
    best = min(h["val_loss"] for h in r.history)
    assert r.best_metrics["val_loss"] == best
    now = sf.evaluate(model, (xv, yv), task="multiclass", prefix="val", device="cpu")
    assert now["val_loss"] == pytest.approx(best, rel=1e-6)  # the best weights were put back


@pytest.mark.parametrize(
    ("name", "mode"),
    [("val_loss", "min"), ("val_err", "min"), ("val_top1_error", "min"), ("val_wer", "min"),
     ("val_ppl", "min"), ("val_accuracy", "max"), ("val_auroc", "max"), ("val_r2", "max"),
     ("val_interrater", "max")],
)  # fmt: skip
def test_a_custom_metrics_direction_is_read_from_its_name_by_the_run_and_the_report(
    tmp_path, name, mode
):
    from surefit.report import read_run

    x, y = make_classification(64)
    rate = lambda out, t: (out.argmax(1) != t).float().mean()  # noqa: E731
    r = sf.fit(mlp(), (x, y), val=(x, y), metrics={name[4:]: rate}, monitor=name, epochs=4,
               lr=5e-2, batch_size=16, progress="off", run_dir=tmp_path, device="cpu")  # fmt: skip
    values = [h[name] for h in r.history]
    assert r.best_metrics[name] == (min if mode == "min" else max)(values)
    assert read_run(tmp_path).monitor() == (name, mode)


def test_no_host_sync_per_step(monkeypatch):
    """Reads of device values are bounded by logs and evaluations, not by steps."""
    x, y = make_classification(512)
    calls = {"n": 0}
    for name in ("item", "tolist", "cpu", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=original, **k):
            # count surefit's own reads (torch's CPU optimizers read their step counters)
            if "surefit" in sys._getframe(1).f_code.co_filename.replace("\\", "/").split("/"):
                calls["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    # 200 steps, log every 100, one evaluation at the end (epoch end)
    sf.fit(
        mlp(),
        (x, y),
        val=(x[:32], y[:32]),
        max_steps=200,
        epochs=100,
        batch_size=4,
        log_every=100,
        eval_every_steps=200,
        progress="off",
        clip_norm=1.0,
    )
    assert calls["n"] < 40, calls["n"]


class Crash(sf.Callback):
    def __init__(self, at_step):
        self.at_step = at_step

    def on_step_end(self, run):
        if run.optimizer_step == self.at_step:
            raise RuntimeError("simulated crash")


def test_checkpoint_resume_continues_to_the_same_weights(tmp_path):
    x, y = make_classification(96)
    common = dict(
        val=(x[:32], y[:32]),
        lr=1e-2,
        batch_size=16,
        seed=3,
        progress="off",
        checkpoint_every=4,
        accumulate=2,
        epochs=4,
    )
    straight = mlp(seed=8)
    sf.fit(straight, (x, y), run_dir=tmp_path / "a", **common)
    # the same run crashes at step 7; the checkpoint of step 4 is mid-epoch (3 steps an epoch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sf.fit(mlp(seed=8), (x, y), run_dir=tmp_path / "b", callbacks=[Crash(7)], **common)
    resumed = mlp(seed=99)  # weights come from the checkpoint
    r = sf.fit(resumed, (x, y), run_dir=tmp_path / "b", resume="must", **common)
    assert r.steps == 12
    assert _same_weights(straight, resumed)
    a_lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b_lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    drop = ("time_s", "samples_per_s", "steps_per_s")
    strip = lambda lines: [{k: v for k, v in json.loads(s).items() if k not in drop} for s in lines]
    assert strip(a_lines) == strip(b_lines)  # no line repeated or missing, same values


def _truncate(data: bytes) -> bytes:
    return data[:100]


def _flip_a_bit(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :]


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
    x, y = make_classification(64)
    common = dict(lr=1e-2, batch_size=16, progress="off", checkpoint_every=2, keep_last=3)
    sf.fit(mlp(), (x, y), epochs=2, run_dir=tmp_path / "r", **common)
    ckpts = sorted((tmp_path / "r" / "checkpoints").glob("last-*.pt"))
    ckpts[-1].write_bytes(damage(ckpts[-1].read_bytes()))
    r = sf.fit(mlp(), (x, y), epochs=3, run_dir=tmp_path / "r", **common)
    assert r.steps == 12
    assert not (tmp_path / "r" / "metrics.jsonl").read_text().count("\n\n")
    events = (tmp_path / "r" / "events.jsonl").read_text()
    assert '"checkpoint_skipped"' in events and ckpts[-1].name in events


def test_a_resume_removes_what_a_killed_run_left_half_written(tmp_path):
    x, y = make_classification(64)
    common = dict(lr=1e-2, batch_size=16, progress="off", checkpoint_every=2, keep_last=2)
    sf.fit(mlp(), (x, y), epochs=2, run_dir=tmp_path / "r", **common)
    folder = tmp_path / "r" / "checkpoints"
    kept = sorted(p.name for p in folder.iterdir())
    left = [".last-000000010.pt.k3j2.tmp", ".MANIFEST.json.a1.tmp", "last-000000009.pt"]
    for name in left:  # a write cut short; a checkpoint killed before the manifest named it
        (folder / name).write_bytes(b"x" * 100)
    (folder / "notes.txt").write_text("mine")  # not surefit's: left alone
    r = sf.fit(mlp(), (x, y), epochs=3, run_dir=tmp_path / "r", **common)
    assert r.steps == 12
    names = {p.name for p in folder.iterdir()}  # keep_last=2: the resumed run's last two
    assert names == {"MANIFEST.json", "last-000000010.pt", "last-000000012.pt", "notes.txt"}
    assert kept == ["MANIFEST.json", "last-000000006.pt", "last-000000008.pt"]
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    swept = next(e for e in events if e["event"] == "swept")
    assert sorted(swept["files"]) == sorted(left)


def test_without_a_manifest_the_checkpoint_files_are_kept(tmp_path):
    x, y = make_classification(64)
    common = dict(lr=1e-2, batch_size=16, progress="off", checkpoint_every=2)
    sf.fit(mlp(), (x, y), epochs=2, run_dir=tmp_path / "r", **common)
    folder = tmp_path / "r" / "checkpoints"
    (folder / "MANIFEST.json").unlink()  # lost: rebuilt from the files present
    r = sf.fit(mlp(), (x, y), epochs=3, run_dir=tmp_path / "r", **common)
    assert r.steps == 12
    events = (tmp_path / "r" / "events.jsonl").read_text()
    resume = next(json.loads(e) for e in events.splitlines() if '"resume"' in e)
    assert resume["step"] == 8 and '"swept"' not in events


def test_existing_run_dir_is_not_overwritten_by_a_fresh_run(tmp_path):
    x, y = make_classification(32)
    sf.fit(mlp(), (x, y), epochs=1, run_dir=tmp_path / "r", progress="off")
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(sf.ConfigError, match="already holds a run"):
        sf.fit(mlp(), (x, y), epochs=1, run_dir=tmp_path / "r", resume="never", progress="off")
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("files", [("config.toml",), ("metrics.jsonl", "events.jsonl")])
def test_files_no_run_wrote_are_never_replaced_by_one(tmp_path, files):
    x, y = make_classification(32)
    for name in files:  # a project's own config.toml; logs of another tool
        (tmp_path / name).write_text("[tool]\nkey = 1\n" if name.endswith("toml") else "{}\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(sf.ConfigError, match="which no surefit run wrote"):
        sf.fit(mlp(), (x, y), epochs=1, run_dir=tmp_path, progress="off")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_checkpoints_load_without_unpickling_code(tmp_path):
    import pickle

    from surefit.checkpoint import load_file

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(sf.CheckpointError, match="loaded safely"):
        load_file(path)


def _python_objects(obj) -> int:
    """What torch.save pickles one by one: every container, key and plain value."""
    if isinstance(obj, dict):
        return 1 + sum(_python_objects(k) + _python_objects(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return 1 + sum(_python_objects(v) for v in obj)
    return 1


def _newest(run_dir):
    from surefit.checkpoint import CheckpointStore

    return CheckpointStore(run_dir / "checkpoints").load_latest()[0]


def test_checkpoint_objects_do_not_grow_with_the_run_and_older_lists_still_resume(tmp_path):
    from surefit.checkpoint import CheckpointStore

    x, y = make_classification(64)
    common = dict(val=(x[:16], y[:16]), lr=1e-2, batch_size=16, progress="off", seed=1,
                  schedule="constant")  # fmt: skip
    sf.fit(mlp(), (x, y), epochs=2, run_dir=tmp_path / "short", **common)
    sf.fit(mlp(), (x, y), epochs=8, run_dir=tmp_path / "long", **common)
    short, long = _newest(tmp_path / "short"), _newest(tmp_path / "long")
    assert len(json.loads(long["history"])) == 8
    assert _python_objects(long) == _python_objects(short)  # history, RNG and norms: one each
    # a checkpoint written as lists (history, Python RNG words, health windows) resumes exactly
    old = {**long, "history": json.loads(long["history"])}
    rng = dict(long["rng"])
    rng["python"] = rng["python"].tolist() + [rng.pop("python_gauss")]
    old["rng"] = rng
    health = dict(long["health"])
    health["recent"] = health["recent"].tolist()
    for key in ("interval", "epoch"):
        health[key] = {**health[key], "norms": health[key]["norms"].tolist()}
    old["health"] = health
    step = int(long["counters"]["optimizer_step"])
    CheckpointStore(tmp_path / "long" / "checkpoints").save(old, step=step, kind="last")
    resumed, straight = mlp(seed=5), mlp()
    sf.fit(resumed, (x, y), epochs=9, run_dir=tmp_path / "long", resume="must", **common)
    sf.fit(straight, (x, y), epochs=9, run_dir=tmp_path / "straight", **common)
    assert _same_weights(straight, resumed)
    clock = ("time_s", "samples_per_s", "steps_per_s")
    records = lambda run: [
        {k: v for k, v in r.items() if k not in clock}
        for r in json.loads(_newest(tmp_path / run)["history"])
    ]
    assert records("long") == records("straight")


def test_a_loader_with_its_own_generator_trains_on_its_first_order():
    """The checks and the task inference look at a first batch; the loader's generator is put
    back after each look, so the run starts on the order a fresh loop over it would see."""
    x, y = make_classification(96)
    seen, started = [], []

    class Lookup(torch.nn.Module):  # the batch holds sample ids: the order can be read off it
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, i):
            if started and self.training and torch.is_grad_enabled():
                seen.append(i.tolist())
            return self.net(x[i])

    class Start(sf.Callback):
        def on_fit_start(self, run):
            started.append(True)

    def loader(workers=0):
        return DataLoader(TensorDataset(torch.arange(96), y), batch_size=16, shuffle=True,
                          generator=torch.Generator().manual_seed(5))  # fmt: skip

    sf.fit(Lookup(), loader(), epochs=2, progress="off", callbacks=[Start()])  # task auto
    fresh = loader()
    want = [b[0].tolist() for _ in range(2) for b in fresh]
    assert seen == want


def test_a_datasets_loader_workers_end_with_the_fit():
    """Workers persist between epochs; when fit returns none is left (they piled up over fits
    in one process before)."""
    import multiprocessing

    x, y = make_classification(64)
    for _ in range(2):
        r = sf.fit(mlp(), Samples(x, y), val=Samples(x[:16], y[:16]), epochs=2, batch_size=16,
                   num_workers=2, progress="off", device="cpu")  # fmt: skip
        assert r.steps == 8 and multiprocessing.active_children() == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("clip", [0.0, 1e-3, 1e6])
def test_the_one_group_clip_gives_torchs_bits(dtype, clip):
    """The written-out norm and clip for one (device, dtype) group against torch's
    get_total_norm + clip_grads_with_norm_: the same norm and gradients, bit for bit."""
    from surefit.precision import _norm_and_clip, _one_foreach_group

    g = torch.Generator().manual_seed(0)
    shapes = [(64, 40), (64,), (10, 64), (10,), (3, 3, 5)]
    mine = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    for a, b in zip(mine, theirs, strict=True):
        a.grad = torch.randn(a.shape, generator=g).to(dtype) * 3
        b.grad = a.grad.clone()
    assert _one_foreach_group(mine)
    norm = _norm_and_clip([p.grad for p in mine], clip)
    expected = torch.nn.utils.get_total_norm([p.grad for p in theirs])
    if clip > 0:
        torch.nn.utils.clip_grads_with_norm_(theirs, clip, expected)
    assert torch.equal(norm, expected)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(mine, theirs, strict=True))
    assert not _one_foreach_group([*mine, torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])


# -- a user's DataLoader: resumed mid-epoch, and the batches it yields -----------------------------
def _dropout_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))


@pytest.mark.parametrize("own_generator", [False, True])
def test_a_shuffling_dataloader_resumed_mid_epoch_ends_with_the_same_weights(
    tmp_path, own_generator
):
    """A DataLoader draws its order (and its workers' seed) when an epoch starts: from torch's
    RNG, or from a generator of its own. Resumed mid-epoch, the run must visit the same order,
    and dropout must draw the same masks, as the run never stopped."""
    from surefit.callbacks import PauseAt

    x, y = make_classification(96)

    def loader():
        g = torch.Generator().manual_seed(5) if own_generator else None
        return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)

    common = dict(epochs=3, lr=1e-2, progress="off", device="cpu", seed=2)
    straight = _dropout_net(1)
    sf.fit(straight, loader(), run_dir=tmp_path / "a", **common)
    r = sf.fit(_dropout_net(1), loader(), run_dir=tmp_path / "b", callbacks=[PauseAt(8)], **common)
    assert r.preempted and r.steps == 8  # 6 steps an epoch: two into the second
    resumed = _dropout_net(7)  # its weights come from the checkpoint
    sf.fit(resumed, loader(), run_dir=tmp_path / "b", **common)
    assert _same_weights(straight, resumed)


def test_each_epoch_of_a_batch_sampler_over_a_distributed_sampler_has_its_own_order():
    from torch.utils.data import BatchSampler, DistributedSampler

    from surefit.data import LoaderData

    x, y = make_classification(64)
    ds = TensorDataset(x, torch.arange(64))
    inner = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    data = LoaderData(DataLoader(ds, batch_sampler=BatchSampler(inner, 16, False)), "train")
    orders = [torch.cat([b[1] for b in data.batches(epoch=e)]) for e in (0, 1, 0)]
    assert sorted(orders[0].tolist()) == list(range(64))
    assert not torch.equal(orders[0], orders[1]) and torch.equal(orders[0], orders[2])


def test_named_tuple_and_mapping_samples_train():
    import collections

    x, y = make_classification(64)
    Sample = collections.namedtuple("Sample", "x y")

    class Tuples(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return Sample(x[i], y[i])

    r = sf.fit(mlp(), Tuples(), epochs=1, batch_size=16, progress="off", task="multiclass")
    assert r.steps == 4 and r.config.task.name == "multiclass"

    class Mappings(torch.utils.data.Dataset):  # a Mapping that is not a dict (a BatchEncoding)
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return collections.UserDict({"x": x[i], "labels": y[i]})

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = mlp()

        def forward(self, x):
            return self.body(x)

    r = sf.fit(Net(), DataLoader(Mappings(), batch_size=16), val=DataLoader(Mappings(), 32),
               epochs=1, progress="off", task="multiclass")  # fmt: skip
    assert r.steps == 4 and 0 <= r.history[-1]["val_accuracy"] <= 1
    kinds = []

    def step(model, batch):  # the batch keeps its type: read by key and by its own class
        kinds.append(type(batch))
        return torch.nn.functional.cross_entropy(model(batch["x"]), batch["labels"])

    sf.fit(Net(), DataLoader(Mappings(), batch_size=16), step=step, epochs=1, progress="off")
    assert set(kinds) == {collections.UserDict}


def test_an_iterable_dataset_is_named_with_the_fix():
    x, y = make_classification(64)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(x, y, strict=True))

        def __len__(self):
            return 64

    with pytest.raises(sf.DataError, match="IterableDataset") as info:
        sf.fit(mlp(), Stream(), epochs=1, progress="off", task="multiclass")
    assert "DataLoader(dataset" in info.value.fix
    r = sf.fit(mlp(), DataLoader(Stream(), batch_size=16), epochs=1, progress="off",
               task="multiclass")  # fmt: skip
    assert r.steps == 4


class _Tied(nn.Module):
    """An embedding whose weight the output head shares, the head registered first or second."""

    def __init__(self, head_first: bool):
        super().__init__()
        torch.manual_seed(0)
        if head_first:
            self.head = nn.Linear(16, 10, bias=False)
            self.emb = nn.Embedding(10, 16)
        else:
            self.emb = nn.Embedding(10, 16)
            self.head = nn.Linear(16, 10, bias=False)
        self.head.weight = self.emb.weight
        self.mid = nn.Linear(16, 16)

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids))))


@pytest.mark.parametrize("head_first", [False, True])
def test_a_tied_embedding_is_spared_weight_decay_whichever_owner_comes_first(head_first):
    from surefit.config import OptimConfig
    from surefit.optim import param_groups

    model = _Tied(head_first)
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    decayed = {n for g in groups if g["weight_decay"] for n in g["names"]}
    assert decayed == {"mid.weight"}
    by_head = param_groups(model, OptimConfig(lr=1e-3, lr_groups={"head": 1e-4}))  # its 2nd name
    rate = {n: g["lr"] for g in by_head for n in g["names"]}
    assert rate[next(n for n in rate if n.endswith("weight") and "mid" not in n)] == 1e-4
    assert rate["mid.weight"] == 1e-3


def test_a_resume_whose_groups_hold_the_parameters_in_another_order_is_refused():
    """torch maps saved optimizer state to parameters by position: a checkpoint whose groups
    were built in another order (tied weights grouped differently by an older version) would
    load and step with moments of the wrong shape."""
    from surefit.rundir import _moments_misfit

    lin = nn.Linear(4, 3)
    opt = torch.optim.Adam([lin.weight, lin.bias])
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    assert _moments_misfit(saved, torch.optim.Adam([lin.weight, lin.bias])) == []
    (problem,) = _moments_misfit(saved, torch.optim.Adam([lin.bias, lin.weight]))
    assert "shape (3,)" in problem and "exp_avg" in problem


def test_the_sweep_puts_back_a_sharded_checkpoint_killed_between_its_renames(tmp_path):
    from surefit.checkpoint import MANIFEST, CheckpointStore

    folder = tmp_path / "checkpoints"
    (folder / ".best.old").mkdir(parents=True)  # the save moved best aside, then was killed
    (folder / ".best.old" / "state.pt").write_bytes(b"kept")
    (folder / ".best.tmp").mkdir()  # its half-written replacement
    entry = {"file": "best", "kind": "best", "step": 4, "sha256": "0" * 64}
    (folder / MANIFEST).write_text(json.dumps({"checkpoints": [entry]}))
    assert CheckpointStore(folder).sweep() == [".best.tmp"]
    assert (folder / "best" / "state.pt").read_bytes() == b"kept"


def test_a_resume_that_monitors_another_metric_tracks_its_best_from_the_resume(tmp_path):
    """The saved best is the old metric's (a val_loss near 1): read as the best accuracy it
    would never be beaten, best.pt would stay the old one and early stopping would fire."""
    from surefit.callbacks import PauseAt

    x, y = make_classification(256)
    common = dict(val=(x[:64], y[:64]), epochs=6, batch_size=32, lr=5e-2, progress="off",
                  patience=2, run_dir=tmp_path)  # fmt: skip
    sf.fit(mlp(), (x, y), callbacks=[PauseAt(8)], **common)  # two epochs on val_loss
    r = sf.fit(mlp(), (x, y), monitor="val_accuracy", **common)
    after = [h for h in r.history if h["step"] > 8]
    assert after and r.best_step in {h["step"] for h in after}
    assert r.best_metrics["val_accuracy"] == max(h["val_accuracy"] for h in after)
    assert "early stopping" not in r.stop_reason or len(after) > 2


def test_a_changed_validation_split_resumes_when_asked_for(tmp_path):
    from surefit.callbacks import PauseAt

    x, y = make_classification(256)
    common = dict(epochs=3, batch_size=32, progress="off", run_dir=tmp_path)
    sf.fit(mlp(), (x, y), val_fraction=0.25, callbacks=[PauseAt(4)], **common)
    with pytest.raises(sf.CheckpointError, match="--override"):
        sf.fit(mlp(), (x, y), val_fraction=0.5, **common)
    r = sf.fit(mlp(), (x, y), val_fraction=0.5, override=True, **common)
    assert r.steps > 4 and not r.preempted
