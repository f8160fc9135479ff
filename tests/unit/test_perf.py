"""Optimizer implementation choice, CPU thread choice, and the data-wait measurement."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch import nn

import surefit as sf
from surefit import perf
from surefit.config import OptimConfig
from surefit.optim import build_optimizer, implementation
from tests.conftest import Samples, make_classification, mlp


def test_auto_picks_fused_where_torch_has_it_and_torch_default_elsewhere():
    params = list(mlp().parameters())
    assert implementation("adamw", params) == {"fused": True}
    assert implementation("sgd", params) == {"fused": True}
    assert implementation("rmsprop", params) == {}  # no fused RMSprop in torch
    assert implementation("adamw", [torch.zeros(3, dtype=torch.long)]) == {}
    assert implementation("adamw", params, "for_loop") == {"foreach": False}
    opt = build_optimizer(mlp(), OptimConfig(name="adamw"))
    assert opt.defaults["fused"] is True
    opt = build_optimizer(mlp(), OptimConfig(name="adamw", implementation="for_loop"))
    assert not opt.defaults["fused"]


class _Bag(torch.nn.Module):
    """Token ids -> a sparse-gradient embedding, averaged -> logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.out = torch.nn.Embedding(50, 8, sparse=True), torch.nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(ids).mean(1))


def test_sparse_gradients_are_measured_clipped_and_stepped_without_fused_kernels(tmp_path):
    ids = torch.randint(0, 50, (128, 5), generator=torch.Generator().manual_seed(0))
    y = (ids[:, 0] > 25).long()
    with pytest.raises(sf.ConfigError, match="takes no sparse gradients") as err:
        sf.fit(_Bag(), (ids, y), epochs=1, progress="off")  # the default: adamw
    assert "'sgd' or 'adagrad'" in err.value.fix and "module 'emb'" in err.value.fix
    with pytest.raises(sf.ConfigError, match="fused optimizers take no sparse"):
        sf.fit(_Bag(), (ids, y), epochs=1, progress="off", optimizer="sgd", implementation="fused")
    for name in ("sgd", "adagrad"):
        model = _Bag()
        r = sf.fit(model, (ids, y), epochs=2, batch_size=32, progress="off", optimizer=name,
                   lr=0.5, clip_norm=0.05, clip_value=0.01, run_dir=tmp_path / name)  # fmt: skip
        events = [
            json.loads(e) for e in (tmp_path / name / "events.jsonl").read_text().splitlines()
        ]
        (opt,) = [e for e in events if e["event"] == "optimizer"]
        assert opt["implementation"] != "fused" and r.steps == 8
        steps = [json.loads(s) for s in (tmp_path / name / "steps.jsonl").read_text().splitlines()]
        assert all(s["grad_norm"] > 0 and math.isfinite(s["grad_norm"]) for s in steps)
    # the norm and the clips of a sparse gradient are those of its dense equal
    from surefit.precision import _sparse_norm_and_clip

    def grads(model):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(ids), y).backward()
        return list(model.parameters())

    model = _Bag()
    norm = _sparse_norm_and_clip(grads(model), 0.05, 0.001)
    got = [p.grad.to_dense() for p in model.parameters()]
    dense = [p.grad.to_dense() for p in grads(model)]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in dense]))
    assert torch.allclose(norm, expected)
    coef = torch.clamp(0.05 / (expected + 1e-6), max=1.0)
    for g, d in zip(got, dense, strict=True):
        assert torch.allclose(g, (d * coef).clamp(-0.001, 0.001))


@pytest.mark.parametrize(
    ("options", "got"),
    [({}, "fused"), ({"implementation": "for_loop"}, "for-loop"),
     ({"optimizer": "rmsprop"}, "torch's default")],
)  # fmt: skip
def test_the_optimizer_implementation_a_run_got_is_an_event(tmp_path, options, got):
    sf.fit(mlp(), make_classification(32), epochs=1, progress="off", run_dir=tmp_path / "r",
           device="cpu", **options)  # fmt: skip
    events = (tmp_path / "r" / "events.jsonl").read_text().splitlines()
    (e,) = [e for e in map(json.loads, events) if e["event"] == "optimizer"]
    assert e["implementation"] == got and e["class"] in ("AdamW", "RMSprop")


def test_thread_choice_goes_by_model_and_cores_never_by_load():
    cpu = torch.device("cpu")
    assert perf.choose_threads(3, cpu, None).threads == 3
    assert perf.choose_threads(3, cpu, None, resumed=2).threads == 3  # pinned wins
    assert perf.choose_threads(0, cpu, 10**10, resumed=2).threads == 2  # the resumed run's count
    before = torch.get_num_threads()
    assert perf.choose_threads(0, cpu, 1_000_000, cores=2).threads == 1  # a small model
    # a big model: the usable cores, at most torch's current count
    assert perf.choose_threads(0, cpu, 10**10, cores=64).threads == before
    assert perf.choose_threads(0, cpu, 10**10, cores=1).threads == 1
    torch.set_num_threads(2)
    try:
        assert perf.choose_threads(0, cpu, 10**10, cores=2).threads == 2
        assert perf.choose_threads(0, cpu, None, cores=2).threads == 2
    finally:
        torch.set_num_threads(before)
    assert perf.choose_threads(0, torch.device("cuda"), None).threads == before


def test_a_busy_machine_gets_a_note_not_another_thread_count():
    choice = perf.ThreadChoice(2, 2, "2 cores")
    busy = perf.with_busy_note(choice, busy=1.3, cores=2)
    assert busy.threads == 2 and "train.threads = 1" in busy.note and "1.3 of 2" in busy.note
    assert perf.with_busy_note(choice, busy=0.3, cores=2).note == ""  # rounds to two free
    assert perf.with_busy_note(perf.ThreadChoice(1, 2, ""), busy=1.5, cores=2).note == ""


def test_cpu_use_counts_other_processes():
    import subprocess
    import sys

    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        import time

        time.sleep(0.2)  # the child's start-up
        use = perf.CpuUse()
        assert use.busy_elsewhere(window=0.4) >= 0.5  # a whole core, less scheduling noise
    finally:
        child.wait()


def test_a_resumed_run_keeps_its_thread_count(tmp_path):
    x, y = make_classification(64)
    run = dict(batch_size=16, progress="off", run_dir=tmp_path / "r", device="cpu")
    sf.fit(mlp(), (x, y), epochs=1, max_steps=3, threads=2, **run)  # stops mid-epoch
    from surefit.checkpoint import CheckpointStore

    state = CheckpointStore(tmp_path / "r" / "checkpoints").load_latest()[0]
    assert state["counters"]["optimizer_step"] == 3 and state["meta"]["threads"] == 2
    before = torch.get_num_threads()
    sf.fit(mlp(), (x, y), epochs=2, threads=0, resume=True, **run)  # auto would take one
    assert torch.get_num_threads() == before
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    first, second = [e for e in events if e["event"] == "threads"]
    assert first["threads"] == 2 and second["threads"] == 2
    assert "resumed" in second["reason"]


def test_flop_count_changes_no_state():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    stats = model[1].running_mean.clone()
    rng = torch.get_rng_state()
    flops = perf.forward_flops(model, lambda: model(x))
    assert flops == 2 * 16 * (4 * 8 + 8 * 2)
    assert torch.equal(model[1].running_mean, stats) and torch.equal(torch.get_rng_state(), rng)
    assert model.training


def test_fit_records_and_restores_the_thread_count(tmp_path):
    x, y = make_classification(64)
    before = torch.get_num_threads()
    sf.fit(mlp(), (x, y), epochs=1, batch_size=16, progress="off", run_dir=tmp_path / "r",
           threads=2, device="cpu")  # fmt: skip
    assert torch.get_num_threads() == before
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    (threads,) = [e for e in events if e["event"] == "threads"]
    assert threads["threads"] == 2 and threads["reason"] == "train.threads = 2"
    assert any(e["event"] == "data_wait" for e in events)


def test_the_thread_choice_counts_the_same_flops_on_every_data_path(tmp_path):
    """A conv net's FLOPs are 2 x params x batch only by far (1,000 times fewer here): every
    data path counts them on its first batch, so the choice does not depend on the data type."""
    from torch.utils.data import DataLoader

    x, y = torch.randn(128, 1, 1000), torch.arange(128) % 3
    net = lambda: nn.Sequential(nn.Conv1d(1, 64, 5), nn.AdaptiveAvgPool1d(1), nn.Flatten(),  # noqa: E731
                                nn.Linear(64, 3))  # fmt: skip
    reasons = []
    for i, data in enumerate([(x, y), Samples(x, y), DataLoader(Samples(x, y), batch_size=64)]):
        sf.fit(net(), data, epochs=1, batch_size=64, progress="off", run_dir=tmp_path / f"{i}",
               threads=0, device="cpu")  # fmt: skip
        events = (tmp_path / f"{i}" / "events.jsonl").read_text().splitlines()
        (e,) = [e for e in map(json.loads, events) if e["event"] == "threads"]
        reasons.append(e["reason"])
    assert len(set(reasons)) == 1 and "40.8 MFLOP" in reasons[0], reasons


def test_threads_must_not_be_negative():
    with pytest.raises(sf.ConfigError, match="train.threads"):
        sf.fit(mlp(), make_classification(16), threads=-1, progress="off")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_wait_time_is_the_time_spent_fetching(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(perf.time, "perf_counter", clock)

    def slow_batches():
        for i in range(4):
            clock.now += 3.0  # fetching a batch takes 3 s
            yield i

    timed = perf.TimedBatches(slow_batches(), torch.device("cpu"))
    for _ in timed:
        clock.now += 1.0  # the step takes 1 s
    s = timed.summary()
    assert s["data_wait_s"] == 12.0 and s["epoch_s"] == 16.0 and s["data_wait_share"] == 0.75
    advice = perf.input_bound_advice(s, "DatasetData", torch.device("cpu"))
    assert "75%" in advice and "num_workers > 0" in advice
    busy = perf.input_bound_advice(s, "DatasetData", torch.device("cpu"), workers=2)
    assert "raise data.num_workers above 2" in busy and "> 0" not in busy
    loader = perf.input_bound_advice(s, "LoaderData", torch.device("cpu"), workers=3)
    assert "num_workers above 3" in loader and "persistent_workers=True" in loader
    made = torch.utils.data.DataLoader(range(4), num_workers=3, persistent_workers=True)
    kept = perf.input_bound_advice(s, "LoaderData", torch.device("cpu"), 3, made)
    assert "num_workers above 3" in kept and "persistent_workers" not in kept  # already set
    on_cpu = perf.input_bound_advice(s, "TensorData", torch.device("cpu"))
    assert "larger batches" in on_cpu and "on_device" not in on_cpu  # nothing to move on CPU
    quick = {**s, "data_wait_share": 0.05}
    assert perf.input_bound_advice(quick, "DatasetData", torch.device("cpu")) == ""
    tiny = {"epoch_s": 0.02, "data_wait_s": 0.0044, "data_wait_share": 0.22}  # a jitter's share
    assert perf.input_bound_advice(tiny, "TensorData", torch.device("cpu")) == ""


def _recipe(cache):
    from surefit import config, recipes

    _, text = recipes.source("mnist1d-cnn")
    cfg = config.from_dict(config.parse_toml(text, where="recipe"))
    return cfg.replace(data={"args": {"cache": str(cache)}}, model={"args": {"channels": 8}})


def test_profile_run_splits_the_time(mnist1d_cache, monkeypatch):
    from surefit import checkpoint, loop
    from surefit.profile import profile_run

    evaluated, saved = [], []
    original_eval, original_write = loop.Trainer._evaluate_and_track, checkpoint.Saves.write

    def evaluate(self):
        evaluated.append(self.counters.optimizer_step)
        return original_eval(self)

    def write(self, state, step, kinds):
        saved.append(step)
        return original_write(self, state, step, kinds)

    monkeypatch.setattr(loop.Trainer, "_evaluate_and_track", evaluate)
    monkeypatch.setattr(checkpoint.Saves, "write", write)
    # one epoch of 2 steps in the recipe: the profile still takes the steps it asks for
    short = _recipe(mnist1d_cache).replace(train={"epochs": 1}, data={"batch_size": 1800})
    r = profile_run(short, steps=5, top_ops=5)
    assert r.steps == 5 and r.threads >= 1
    assert set(evaluated) == set(saved) == {5}  # nothing between the steps, only at the end
    assert "Self CPU" in r.top_ops and "convolution" in r.top_ops
    assert 0 <= r.data_wait_s <= r.seconds and r.step_s > 0 and r.steps_per_s > 0
    assert any("steps/s" in line for line in r.lines())


def test_a_profile_that_stops_early_counts_its_samples_and_stops_its_profiler(
    mnist1d_cache, monkeypatch
):
    """A run that ends before its steps (a callback, a health stop) must not leave torch's
    profiler running: the interpreter crashed at exit. Samples are those the run counted."""
    from surefit import recipes
    from surefit.profile import profile_run

    class StopAt3(sf.Callback):
        def on_step_end(self, run):
            if run.optimizer_step == 3:
                run.request_stop("a test")

    original = recipes.run
    monkeypatch.setattr(
        recipes,
        "run",
        lambda cfg, callbacks=(), **kw: original(cfg, callbacks=[*callbacks, StopAt3()], **kw),
    )
    cfg = _recipe(mnist1d_cache).replace(
        train={"accumulate": 2, "max_time_s": 0.001}, data={"batch_size": 50}
    )
    r = profile_run(cfg, steps=10, top_ops=3)
    assert not torch.autograd.profiler._is_profiler_enabled
    assert r.steps == 3 and "Self CPU" in r.top_ops  # max_time_s left out: the stop was ours
    assert r.batch_size == 50 and r.samples_per_s == pytest.approx(3 * 2 * 50 / r.seconds)


def test_max_batch_of_a_dataset_of_dicts(tmp_path, monkeypatch):
    from surefit import config
    from surefit.profile import max_batch

    (tmp_path / "dictdata.py").write_text(
        "import torch\n"
        "class Dicts(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 64\n"
        "    def __getitem__(self, i):\n"
        "        return {'x': torch.full((4,), float(i)), 'labels': torch.tensor(i % 2)}\n"
        "def data(): return {'train': Dicts()}\n"
        "class Net(torch.nn.Linear):\n"
        "    def forward(self, x): return super().forward(x)\n"
        "def model(): return Net(4, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    text = 'name = "d"\n[model]\nname = "dictdata:model"\n[data]\nname = "dictdata:data"\n'
    cfg = config.from_dict(config.parse_toml(text, where="recipe"))
    r = max_batch(cfg, limit=64)
    assert r.max_batch == 64 and r.bytes_per_sample > 0


def test_max_batch_on_cpu_is_a_power_of_two(mnist1d_cache):
    from surefit.profile import max_batch

    r = max_batch(_recipe(mnist1d_cache), limit=256)
    assert r.device == "cpu" and r.bytes_per_sample > 0 and r.fixed_bytes > 0
    assert r.max_batch == 256  # 8 channels on 40 points: far below the memory of any machine
    assert "256 (the search's limit" in r.lines()[0]
    # the forward as the run makes it: bf16 activations, a checkpointed block keeps its inputs
    bf16 = max_batch(_recipe(mnist1d_cache).replace(train={"precision": "bf16"}), limit=256)
    whole = _recipe(mnist1d_cache).replace(train={"activation_checkpointing": ["Sequential"]})
    recomputed = max_batch(whole, limit=256)
    assert recomputed.bytes_per_sample < bf16.bytes_per_sample < r.bytes_per_sample
    # bf16's copies of the weights are saved at any batch size: fixed memory, not per sample
    assert bf16.bytes_per_sample <= 0.75 * r.bytes_per_sample and bf16.fixed_bytes > r.fixed_bytes


@pytest.mark.parametrize("deterministic", [False, True])
def test_cudnn_benchmark_only_for_non_deterministic_cuda_runs(deterministic):
    from types import SimpleNamespace

    from surefit.config import RunConfig

    cfg = RunConfig().replace(train={"deterministic": deterministic})
    parts = SimpleNamespace(device=torch.device("cuda"), config=cfg)
    before = torch.backends.cudnn.benchmark
    with perf._cudnn_benchmark(parts):
        assert torch.backends.cudnn.benchmark is (True if not deterministic else before)
    assert torch.backends.cudnn.benchmark is before


# -- in-memory data kept on the host for CUDA: the policy and the side-stream prefetch ---------
def test_on_device_policy(monkeypatch):
    """``auto`` puts the data on the accelerator when it takes at most half its free memory."""
    from surefit.data import _fits_on

    cuda = torch.device("cuda")
    x = [torch.zeros(1000, dtype=torch.float32)]  # 4,000 bytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (8_000, 80_000))
    assert _fits_on(cuda, x, "auto")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (7_999, 80_000))
    assert not _fits_on(cuda, x, "auto")
    assert _fits_on(cuda, x, "on") and not _fits_on(cuda, x, "off")


def test_prefetch_copies_the_next_batch_before_the_step(monkeypatch):
    """Each batch's copy is issued on the side stream before the previous batch is handed to
    the step, and the step's stream waits on that batch's own event, then owns its memory."""
    from surefit import data

    log: list[tuple] = []

    class Fake:
        def __init__(self, name: str, where: str = "host") -> None:
            self.name, self.where = name, where

        def pin_memory(self):
            return self

        def to(self, device, non_blocking=False):
            log.append(("copy", self.name, non_blocking, stream_now[-1]))
            return Fake(self.name, "device")

        def record_stream(self, stream):
            log.append(("owned", self.name, stream))

    class Event:
        def __init__(self) -> None:
            self.batch = None

        def record(self, stream):
            log.append(("recorded", stream))

    class Current:
        def wait_event(self, event):
            log.append(("wait", event))

    stream_now = ["current"]
    current = Current()

    class StreamCtx:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            stream_now.append(self.stream)

        def __exit__(self, *exc):
            stream_now.pop()

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: "side")
    monkeypatch.setattr(torch.cuda, "stream", StreamCtx)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: current)
    batches = [(Fake(f"x{i}"), Fake(f"y{i}")) for i in range(3)]
    out = []
    for batch in data.prefetch_to(iter(batches), torch.device("cuda")):
        out.append(tuple(t.name for t in batch))
        log.append(("step", batch[0].name))
    assert out == [("x0", "y0"), ("x1", "y1"), ("x2", "y2")]
    assert all(t.where == "device" for t in batch)
    copies = [e for e in log if e[0] == "copy"]
    assert all(nb and stream == "side" for _, _, nb, stream in copies)  # async, side stream
    order = [e[1] for e in log if e[0] in ("copy", "step") and e[1].startswith("x")]
    assert order == ["x0", "x1", "x0", "x2", "x1", "x2"]  # copy i+1 precedes step i
    waits = [e for e in log if e[0] == "wait"]
    assert len(waits) == 3 and len({id(e[1]) for e in waits}) == 3  # one event per batch
    assert [e[1] for e in log if e[0] == "owned"] == ["x0", "y0", "x1", "y1", "x2", "y2"]
    assert list(data.prefetch_to(iter([]), torch.device("cuda"))) == []


def test_on_device_choice_is_checked():
    from surefit.errors import ConfigError

    with pytest.raises(ConfigError, match="on_device"):
        sf.fit(torch.nn.Linear(2, 2), (torch.zeros(4, 2), torch.zeros(4).long()), on_device="gpu")


def test_the_busy_note_goes_to_stderr_and_an_event_without_delaying_the_start(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(perf, "ONE_THREAD_FLOPS", 0)  # the MLP counts as big: every core
    monkeypatch.setattr(perf, "usable_cores", lambda: 2)
    monkeypatch.setattr(perf, "SAMPLE_S", 0.0)  # any window is long enough
    windows = []

    def busy(self, window=0.1):
        windows.append(window)
        return 1.5

    monkeypatch.setattr(perf.CpuUse, "busy_elsewhere", busy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sf.fit(mlp(), make_classification(64), epochs=1, batch_size=16, run_dir=tmp_path / "r",
               device="cpu", log_every=2)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert windows == [0]  # measured once, at a sync point, over the time already gone by
    out = capsys.readouterr()
    assert "note: other processes keep 1.5 of 2 cores busy" in out.err
    assert "train.threads = 1" in out.err and "note:" not in out.out
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    (threads,) = [e for e in events if e["event"] == "threads"]
    (note,) = [e for e in events if e["event"] == "busy_cores"]
    assert threads["threads"] == note["threads"] == 2 and note["busy"] == 1.5
    assert "train.threads = 1" in note["note"]
    names = [e["event"] for e in events]
    assert names.index("busy_cores") < names.index("checkpoint")  # at step 2's sync, mid-epoch


class SlowSamples(torch.utils.data.Dataset):
    """A Dataset whose every sample takes 4 ms to load: an input-bound epoch on any machine."""

    def __init__(self) -> None:
        self.x, self.y = make_classification(64)

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i):
        time.sleep(0.004)
        return self.x[i], self.y[i]


@pytest.mark.parametrize("skip", [[], ["data_wait"]])
def test_the_input_bound_warning_names_the_fix_unless_skipped(tmp_path, skip):
    sf.fit(mlp(), SlowSamples(), epochs=1, batch_size=16, progress="off", run_dir=tmp_path / "r",
           skip_checks=skip)  # fmt: skip
    events = [json.loads(s) for s in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    (wait,) = [e for e in events if e["event"] == "data_wait"]  # measured either way
    assert wait["data_wait_share"] > 0.2 and wait["data_wait_s"] >= 0.25
    bound = [e["message"] for e in events if e["event"] == "input_bound"]
    assert bound == ([] if skip else bound[:1]) and len(bound) == (0 if skip else 1)
    assert skip or "num_workers > 0" in bound[0]


def test_every_surefit_name_the_bench_imports_exists():
    """bench/ runs outside the tests; a module move must not break its imports unseen (its
    imports of surefit sit inside functions, so importing the scripts would not find one)."""
    import ast
    import importlib
    import importlib.util
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench"
    wanted = []
    for script in sorted(bench.glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("surefit"):
                wanted += [(script.name, node.module, a.name) for a in node.names]
    assert len(wanted) > 5  # the scan found the bench's imports

    def found(module: str, name: str) -> bool:  # a name in the module, or a submodule of it
        parent = importlib.import_module(module)
        if hasattr(parent, name):
            return True
        return (
            hasattr(parent, "__path__") and importlib.util.find_spec(f"{module}.{name}") is not None
        )

    assert [w for w in wanted if not found(w[1], w[2])] == []


def test_the_bench_page_keeps_the_sections_a_run_did_not_measure(tmp_path, monkeypatch):
    """bench/results/ is not in the repository: a run of some sections (``--skip``) on a fresh
    checkout takes the others from docs/benchmarks.md as it was, not drops them."""
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    import run

    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    page = tmp_path / "benchmarks.md"
    skip_all = ",".join(run.SECTIONS)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "import.md").write_text("## Import and start-up time\n\n| a | 1 |\n")
    monkeypatch.setattr(sys, "argv", ["run.py", "--out", str(page), "--skip", skip_all])
    run.main()
    first = page.read_text()
    assert "| a | 1 |" in first and "## What limits these numbers" in first
    (tmp_path / "results" / "import.md").unlink()  # a fresh checkout: no results
    run.main()
    undated = lambda text: [l for l in text.splitlines() if not l.startswith("- Written")]  # noqa: E731, E741
    assert undated(page.read_text()) == undated(first)
    assert run._sections_of(page) == {"import": "## Import and start-up time\n\n| a | 1 |\n"}


def test_a_profile_relays_the_compile_fallback_and_claims_no_compilation(
    mnist1d_cache, monkeypatch
):
    from surefit import speed
    from surefit.profile import profile_run

    monkeypatch.setattr(speed, "compile_problem", lambda device: "no C++ compiler (a test)")
    cfg = _recipe(mnist1d_cache).replace(train={"compile": True})
    lines = profile_run(cfg, steps=3).lines()
    assert any(line.startswith("warning: torch.compile is not available") for line in lines)
    assert not any(line.startswith("compile:") for line in lines)  # it ran eagerly
