"""train.compile's eager fallback, train.channels_last and train.activation_checkpointing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import surefit as sf
from surefit import distributed, speed
from surefit.checkpoint import load_file
from surefit.errors import ConfigError
from surefit.keywords import build_config
from surefit.recipes.chargpt import GPT
from tests.conftest import make_classification, mlp

COMMON = dict(optimizer="adamw", lr=1e-2, schedule="constant", batch_size=32, seed=0)


def _events(run_dir: Path, name: str) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- compile ---------------------------------------------------------------------------------------
@pytest.fixture
def fresh_probe():
    speed.compile_problem.cache_clear()
    yield
    speed.compile_problem.cache_clear()


def _no_compiler(*args, **kwargs):
    raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(a long trace)")


def test_compile_without_a_compiler_runs_eagerly_with_one_message(
    fresh_probe, monkeypatch, tmp_path, capsys
):
    x, y = make_classification()
    eager = mlp()
    sf.fit(eager, (x, y), max_steps=6, progress="off", **COMMON)
    monkeypatch.setattr(torch, "compile", _no_compiler)
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error", speed.CompileFallbackWarning)  # reported, not warned
        result = sf.fit(
            model, (x, y), max_steps=6, compile=True, run_dir=tmp_path / "r", progress="epoch",
            **COMMON,
        )  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("torch.compile is not available") == 1, out
    assert "No working C++ compiler found" in out and "train.compile = false" in out
    assert "long trace" not in out
    [event] = _events(tmp_path / "r", "compile_fallback")
    assert event["why"] == "RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    assert result.steps == 6 and _equal(model, eager)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inductor's imports
def test_a_missing_cxx_compiler_is_found_by_the_probe(fresh_probe):
    import torch._inductor.config as inductor

    torch._dynamo.reset()  # the probe compiles afresh
    with inductor.patch({"cpp.cxx": ("/nonexistent/g++",), "fx_graph_cache": False}):
        problem = speed.compile_problem(torch.device("cpu"))
    torch._dynamo.reset()
    assert problem is not None and "C++ compiler" in problem, problem


def test_wrap_on_its_own_warns_and_returns_the_model(fresh_probe, monkeypatch):
    monkeypatch.setattr(torch, "compile", _no_compiler)
    model = mlp()
    with pytest.warns(speed.CompileFallbackWarning, match="running eagerly"):
        net = distributed.wrap(model, build_config(compile=True), torch.device("cpu"))
    assert net is model


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")
def test_a_compiled_run_matches_the_eager_run():
    if speed.compile_problem(torch.device("cpu")) is not None:
        pytest.skip("torch.compile cannot run here")
    x, y = make_classification()
    eager, compiled = mlp(), mlp()
    sf.fit(eager, (x, y), max_steps=4, progress="off", **COMMON)
    sf.fit(compiled, (x, y), max_steps=4, progress="off", compile=True, **COMMON)
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[k], v, rtol=1e-5, atol=1e-6)


# -- channels_last -------------------------------------------------------------------------------
def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def images(n: int = 64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_channels_last_on_converts_conv_weights_and_trains_like_the_default(tmp_path):
    plain, nhwc = cnn(), cnn()
    first_weight = nhwc[0].weight
    # SGD: Adam would turn the rounding noise of gradients that are zero in exact arithmetic
    # (the bias of a convolution before BatchNorm) into whole learning-rate steps
    kw = dict(max_steps=4, progress="off", **{**COMMON, "optimizer": "sgd"})
    sf.fit(plain, images(), **kw)
    sf.fit(nhwc, images(), channels_last=True, run_dir=tmp_path / "r", **kw)
    assert nhwc[0].weight is first_weight  # the optimizer's parameters are the model's
    for conv in (nhwc[0], nhwc[3]):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.state_dict().keys() == nhwc.state_dict().keys()
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(nhwc.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    [event] = _events(tmp_path / "r", "channels_last")
    assert event["on"] is True and event["why"] == "train.channels_last = on"


def test_channels_last_auto_is_off_on_cpu_and_says_why(tmp_path):
    model = cnn()
    sf.fit(model, images(), max_steps=1, progress="off", run_dir=tmp_path / "r", **COMMON)
    assert not model[0].weight.is_contiguous(memory_format=torch.channels_last)
    [event] = _events(tmp_path / "r", "channels_last")
    assert event["on"] is False and "cpu" in event["why"]


def test_channels_last_on_without_2d_or_3d_convolutions_says_it_changed_nothing(tmp_path):
    sf.fit(mlp(), make_classification(), max_steps=1, progress="off", channels_last=True,
           run_dir=tmp_path / "r", **COMMON)  # fmt: skip
    [event] = _events(tmp_path / "r", "channels_last")
    assert event["on"] is False and "no Conv2d/Conv3d" in event["why"]


def test_channels_last_choice():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert speed.channels_last_choice(cnn(), "auto", cuda, "none")[0]
    assert speed.channels_last_choice(cnn(), "auto", cuda, "ddp")[0]
    assert not speed.channels_last_choice(cnn(), "auto", cpu, "none")[0]
    assert not speed.channels_last_choice(mlp(), "auto", cuda, "none")[0]
    assert not speed.channels_last_choice(cnn(), "auto", cuda, "fsdp")[0]
    assert not speed.channels_last_choice(cnn(), "off", cuda, "none")[0]
    with pytest.raises(ConfigError, match="fsdp"):
        speed.channels_last_choice(cnn(), "on", cuda, "fsdp")


def test_channels_last_takes_auto_on_off_and_fit_takes_bools():
    assert build_config(channels_last=True).train.channels_last == "on"
    assert build_config(channels_last=False).train.channels_last == "off"
    with pytest.raises(ConfigError, match="one of: auto, on, off"):
        build_config(channels_last="yes")


# -- activation checkpointing ----------------------------------------------------------------------
def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(block=16, layers=2, heads=2, width=32, dropout=0.1)


def text(n: int = 64):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 65, (n, 16), generator=g)
    return x, torch.roll(x, -1, dims=1)


class CountForwards:
    """Counts the forward calls of every Block (a recomputation calls forward again)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handles = [b.register_forward_pre_hook(self.count) for b in model.blocks]

    def count(self, module, args) -> None:  # noqa: ANN001
        self.calls += 1 if module.training else 0


def test_checkpointed_blocks_recompute_and_train_bit_for_bit(tmp_path):
    plain, checked = tiny_gpt(), tiny_gpt()
    counts = CountForwards(plain), CountForwards(checked)
    kw = dict(task="lm", max_steps=3, progress="off", **{**COMMON, "batch_size": 16})
    sf.fit(plain, text(), **kw)
    result = sf.fit(
        checked, text(), activation_checkpointing=["Block"], run_dir=tmp_path / "r", **kw
    )
    assert counts[1].calls == 2 * counts[0].calls > 0  # every block ran again in backward
    assert _equal(plain, checked)  # dropout drew the same masks when recomputed
    [event] = _events(tmp_path / "r", "activation_checkpointing")
    assert event["modules"] == ["blocks.0", "blocks.1"]
    # the model comes back without hooks, and best.pt loads into a plain model
    for block in checked.blocks:  # only the test's own counting hook is left
        assert list(block._forward_pre_hooks.values()) == [counts[1].count]
        assert not block._forward_hooks
    fresh = tiny_gpt()
    fresh.load_state_dict(load_file(result.checkpoint)["model"])
    assert _equal(fresh, checked) and speed.checkpointed(checked) == []


def test_checkpointed_run_resumes_exactly():
    result = sf.fit(
        tiny_gpt(), text(), task="lm", activation_checkpointing=["Block"], check_resume=True,
        progress="off", **{**COMMON, "batch_size": 16},
    )  # fmt: skip
    assert result.resume_check.exact, result.resume_check.report()


def test_an_unknown_class_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="no module of class") as err:
        sf.fit(tiny_gpt(), text(), task="lm", max_steps=1, activation_checkpointing=["Blok"])
    assert "Block" in err.value.fix and "LayerNorm" in err.value.fix
    with pytest.raises(ConfigError, match="only the model itself"):
        sf.fit(tiny_gpt(), text(), task="lm", max_steps=1, activation_checkpointing=["GPT"])
    with pytest.raises(ConfigError, match="never called") as err:  # its hooks would never fire
        sf.fit(tiny_gpt(), text(), task="lm", max_steps=1, activation_checkpointing=["ModuleList"])
    assert "Block" in err.value.fix
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        build_config(activation_checkpointing=[3])


def test_activation_checkpointing_and_compile_are_refused_together():
    with pytest.raises(ConfigError, match="does not work under train.compile"):
        build_config(activation_checkpointing=["Block"], compile=True)


def test_hooks_are_removed_when_the_run_raises():
    model = tiny_gpt()

    class Boom:
        def on_step_end(self, run) -> None:  # noqa: ANN001
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sf.fit(
            model, text(), task="lm", max_steps=3, activation_checkpointing=["Block"],
            callbacks=[Boom()], progress="off",
        )  # fmt: skip
    assert speed.checkpointed(model) == []
