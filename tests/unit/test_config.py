"""Configuration: TOML recipes, --set overrides, checks that name the key, fit() keywords."""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
from pathlib import Path

import pytest

import surefit as sf
from surefit import config as cfgmod
from surefit import recipes
from surefit.config import RunConfig, apply_overrides, from_dict, to_toml
from surefit.errors import ConfigError
from surefit.keywords import KEYWORDS, _option_keys, build_config
from tests.conftest import make_classification, mlp

BUILTIN = recipes.HERE / "mnist1d-cnn.toml"


def with_sets(*items: str, base: dict | None = None) -> RunConfig:
    """What `surefit fit --set ITEM ...` builds from a recipe dict."""
    return from_dict(apply_overrides(base or {}, list(items)))


def config_error(*items: str, base: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        with_sets(*items, base=base)
    return info.value


# -- TOML recipes ----------------------------------------------------------------------------------


def test_builtin_recipe_parses_into_typed_sections():
    cfg = cfgmod.load(BUILTIN)
    assert cfg.name == "mnist1d-cnn"
    assert cfg.description and cfg.reference
    assert cfg.model == cfgmod.ModelConfig(
        name="surefit.recipes.mnist1d:cnn", args={"channels": 64}
    )
    assert cfg.data.name == "surefit.recipes.mnist1d:load"
    assert cfg.data.batch_size == 100 and cfg.data.val_fraction == 0.1
    assert cfg.task.name == "multiclass"
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 1e-2 and cfg.optim.weight_decay == 0.01
    assert cfg.schedule.name == "warmup_cosine" and cfg.schedule.min_lr_ratio == 0.01
    assert cfg.train.epochs == 100 and cfg.epochs == 100
    assert cfg.log.every_steps == 50
    # keys the recipe leaves out keep their defaults
    assert cfg.checkpoint == cfgmod.CheckpointConfig()
    assert cfg.train.accumulate == 1 and cfg.optim.betas == [0.9, 0.999]


def test_recipe_file_with_shorthand_and_int_for_float(tmp_path: Path):
    path = tmp_path / "mine.toml"
    path.write_text(
        'name = "mine"\n'
        'model = "mypkg.models:build"\n'
        'data = "mypkg.models:data"\n'
        "[optim]\nlr = 1\nbetas = [0.8, 0.99]\n"
        "[schedule]\nwarmup = 2\n"
        "[train]\nepochs = 3\n"
    )
    cfg = cfgmod.load(path)
    assert cfg.name == "mine"
    assert cfg.model.name == "mypkg.models:build" and cfg.model.args == {}
    assert cfg.data.name == "mypkg.models:data" and cfg.data.batch_size == 64
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.schedule.warmup == 2.0 and isinstance(cfg.schedule.warmup, float)
    assert cfg.optim.betas == [0.8, 0.99]
    assert cfg.train.epochs == 3


def test_empty_recipe_is_the_defaults():
    assert from_dict({}) == RunConfig()
    assert RunConfig().epochs == 10
    assert with_sets("train.max_steps=5").epochs > 10**6  # only max_steps: epochs unlimited


def test_missing_recipe_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        cfgmod.load(tmp_path / "nope.toml")
    assert info.value.where == str(tmp_path / "nope.toml")
    assert "cannot read recipe" in str(info.value) and info.value.fix


def test_invalid_toml_names_the_file_and_the_line(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\n[optim\nlr = 1\n')
    with pytest.raises(ConfigError) as info:
        cfgmod.load(path)
    assert info.value.where == str(path)
    assert "not valid TOML" in str(info.value) and "line 2" in str(info.value)
    assert "TOML syntax" in info.value.fix


# -- --set overrides -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "key", "expected"),
    [
        ("optim.lr=3e-4", "optim.lr", 3e-4),
        ("optim.lr=1", "optim.lr", 1.0),  # an int is accepted for a float
        ("optim.lr=0.5", "optim.lr", 0.5),
        ("train.epochs=5", "train.epochs", 5),
        ("task.ignore_index=-1", "task.ignore_index", -1),
        ("train.compile=true", "train.compile", True),
        ("data.stratify=false", "data.stratify", False),
        ("optim.betas=[0.8, 0.99]", "optim.betas", [0.8, 0.99]),
        ("schedule.milestones=[3, 6]", "schedule.milestones", [3, 6]),
        ('log.loggers=["csv"]', "log.loggers", ["csv"]),
        ("data.args={n = 3}", "data.args", {"n": 3}),
        ("optim.lr_groups={head = 0.1}", "optim.lr_groups", {"head": 0.1}),
        ("model.name=pkg.mod:build", "model.name", "pkg.mod:build"),  # bare string
        ('model.name="pkg.mod:build"', "model.name", "pkg.mod:build"),  # TOML string
        ("train.device=cuda:1", "train.device", "cuda:1"),
        ("train.monitor=val_accuracy", "train.monitor", "val_accuracy"),
        (" optim.lr = 2e-3 ", "optim.lr", 2e-3),
    ],
)
def test_set_values_are_read_as_toml(item, key, expected):
    section, name = key.split(".")
    value = getattr(getattr(with_sets(item), section), name)
    assert value == expected
    assert type(value) is type(expected)


def test_later_set_wins_and_the_recipe_keeps_the_rest():
    base = tomllib.loads(BUILTIN.read_text())
    cfg = with_sets("optim.lr=5e-3", "optim.lr=2e-3", "train.epochs=3", base=base)
    assert cfg.optim.lr == 2e-3 and cfg.train.epochs == 3
    assert (
        cfg.optim.weight_decay == 0.01 and cfg.data.batch_size == 100 and cfg.name == "mnist1d-cnn"
    )
    assert tomllib.loads(BUILTIN.read_text()) == base  # the parsed recipe is not mutated


def test_set_extends_a_shorthand_section():
    cfg = with_sets("model.args={width = 4}", base={"model": "pkg.mod:build"})
    assert cfg.model == cfgmod.ModelConfig(name="pkg.mod:build", args={"width": 4})


def test_set_one_key_of_a_table_keeps_the_others():
    base = {"model": {"name": "m:f", "args": {"hidden": 256, "dropout": 0.5}},
            "optim": {"lr_groups": {"head": 1e-3}}}  # fmt: skip
    cfg = with_sets("model.args.hidden=32", "model.args.block.width=4", "data.args.n=5",
                    "optim.lr_groups.encoder.layer1=1e-4", base=base)  # fmt: skip
    assert cfg.model.args == {"hidden": 32, "dropout": 0.5, "block": {"width": 4}}
    assert cfg.data.args == {"n": 5}
    assert cfg.optim.lr_groups == {"head": 1e-3, "encoder.layer1": 1e-4}  # a prefix, whole
    assert base["model"]["args"] == {"hidden": 256, "dropout": 0.5}  # the recipe not mutated
    for bad in ("model.name.x=1", "model.args.=1", "model.args..x=1"):
        assert "unknown key" in str(config_error(bad, base=base))


def test_set_top_level_keys():
    cfg = with_sets("name=myrun", "description=two words")
    assert cfg.name == "myrun" and cfg.description == "two words"


def test_set_top_level_key_as_toml_string():
    assert with_sets('name="my run"').name == "my run"


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim.lr 3"])
def test_set_without_key_value_form(item):
    err = config_error(item)
    assert err.where == "--set" and "key=value" in str(err) and "--set section.key=value" in err.fix


# -- unknown keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "bad", "suggestion"),
    [
        ("optim.lrr=1", "optim.lrr", "optim.lr"),
        ("trian.epochs=2", "trian.epochs", "train.epochs"),
        ("train.epoch=2", "train.epoch", "train.epochs"),
        ("optim.weight_decy=0", "optim.weight_decy", "optim.weight_decay"),
        ("optim.lr.x=1", "optim.lr.x", "optim.lr"),
        ("epochs=3", "epochs", "train.epochs"),
    ],
)
def test_unknown_set_key_suggests_the_nearest(item, bad, suggestion):
    err = config_error(item)
    assert f"unknown key '{bad}'" in str(err)
    assert f"did you mean '{suggestion}'?" in err.fix


@pytest.mark.parametrize(
    ("recipe", "bad", "suggestion"),
    [
        ({"trian": {"epochs": 1}}, "trian", "train"),
        ({"optim": {"lrr": 1e-3}}, "optim.lrr", "optim.lr"),
        ({"descripton": "x"}, "descripton", "description"),
        ({"data": {"batchsize": 8}}, "data.batchsize", "data.batch_size"),
    ],
)
def test_unknown_recipe_key_suggests_the_nearest(recipe, bad, suggestion):
    with pytest.raises(ConfigError) as info:
        from_dict(recipe)
    assert f"unknown key '{bad}'" in str(info.value)
    assert f"did you mean '{suggestion}'?" in info.value.fix


@pytest.mark.parametrize(
    ("keyword", "fix"),
    [("shuffle", "DataLoader(dataset, batch_size=..., shuffle=False)"),
     ("learning_rate", "lr="), ("max_grad_norm", "clip_norm=")],
)  # fmt: skip
def test_another_loops_keyword_names_what_takes_its_place(keyword, fix):
    x, y = make_classification(32)
    with pytest.raises(ConfigError) as info:
        sf.fit(mlp(), (x, y), progress="off", device="cpu", **{keyword: 1})
    assert f"unknown keyword '{keyword}'" in info.value.what and fix in info.value.fix


def test_a_section_must_be_a_table():
    with pytest.raises(ConfigError) as info:
        from_dict({"optim": 3})
    assert info.value.where == "optim" and "[optim]" in info.value.fix


# -- wrong types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "key", "typ"),
    [
        ("train.epochs=abc", "train.epochs", "int"),
        ("train.epochs=true", "train.epochs", "int"),  # a bool is not an int
        ("train.epochs=2.5", "train.epochs", "int"),
        ("data.batch_size=false", "data.batch_size", "int"),
        ("optim.lr=fast", "optim.lr", "float"),
        ("optim.lr=true", "optim.lr", "float"),
        ("data.stratify=1", "data.stratify", "bool"),
        ("optim.betas=0.9", "optim.betas", "list"),
        ("data.args=3", "data.args", "dict"),
        ("model.name=3", "model.name", "str"),
    ],
)
def test_wrong_type_names_the_key_and_the_type(item, key, typ):
    err = config_error(item)
    assert err.where == key
    article = {
        "int": "an int",
        "float": "a float",
        "bool": "a bool",
        "str": "a string",
        "list": "a list",
        "dict": "a table",
    }[typ]
    assert f"'{key}' must be {article}" in str(err)
    assert key in err.fix and article in err.fix


def test_bool_for_int_in_a_recipe():
    with pytest.raises(ConfigError) as info:
        from_dict({"train": {"accumulate": True}})
    assert info.value.where == "train.accumulate" and "must be an int" in str(info.value)


def test_numpy_numbers_are_numbers():
    import numpy as np

    c = from_dict({"data": {"batch_size": np.int64(32)}, "optim": {"lr": np.float32(0.5)}})
    assert c.data.batch_size == 32 and type(c.data.batch_size) is int and c.optim.lr == 0.5


@pytest.mark.parametrize(
    "item",
    ["optim.lr=inf", "train.clip_norm=nan", "optim.lr_groups={head = inf}",
     "task.class_weights=[1.0, inf]", "health.spike_threshold=inf"],
)  # fmt: skip
def test_infinite_or_nan_numbers_are_refused(item):
    err = config_error(item)
    assert err.where == item.split("=")[0] and "not a finite number" in str(err)


# -- out-of-range values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "key", "allowed"),
    [
        ("optim.lr=0", "optim.lr", "> 0"),
        ("optim.lr=-1e-3", "optim.lr", "> 0"),
        ("data.val_fraction=1.0", "data.val_fraction", "[0, 1)"),
        ("data.val_fraction=1", "data.val_fraction", "[0, 1)"),
        ("data.val_fraction=1.5", "data.val_fraction", "[0, 1)"),
        ("data.val_fraction=-0.1", "data.val_fraction", "[0, 1)"),
        ("train.accumulate=0", "train.accumulate", ">= 1"),
        ("data.batch_size=0", "data.batch_size", ">= 1"),
        ("train.epochs=-1", "train.epochs", ">= 1"),
        ("task.label_smoothing=1.0", "task.label_smoothing", "[0, 1)"),
        ("optim.betas=[0.9]", "optim.betas", "two values in [0, 1)"),
        ("optim.betas=[0.9, 1.0]", "optim.betas", "two values in [0, 1)"),
        ("optim.lr_groups={head = -1}", "optim.lr_groups.head", "> 0"),
        ("schedule.gamma=0", "schedule.gamma", "(0, 1]"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last", ">= 1"),
        ("log.every_steps=0", "log.every_steps", ">= 1"),
        ("optim.momentum=1.5", "optim.momentum", "[0, 1)"),
        ("optim.eps=0", "optim.eps", "> 0"),
        ("task.threshold=2", "task.threshold", "(0, 1)"),
        ("task.top_k=-1", "task.top_k", ">= 1"),
        ("task.class_weights=[-1, 1]", "task.class_weights", ">= 0"),
        ("task.margin=-1", "task.margin", ">= 0"),
        ("data.num_workers=-5", "data.num_workers", "-1 (auto)"),
    ],
)
def test_out_of_range_names_the_key_and_the_allowed_values(item, key, allowed):
    err = config_error(item)
    assert err.where == key
    assert f"'{key}'" in str(err) and "out of range" in str(err)
    assert allowed in err.fix


def test_non_numeric_betas_are_a_config_error():
    err = config_error('optim.betas=["a", "b"]')
    assert err.where == "optim.betas"


@pytest.mark.parametrize(
    ("item", "key", "suggestion", "choices"),
    [
        ("optim.name=adamm", "optim.name", "adam", cfgmod.OPTIMIZERS),
        ("schedule.name=cosin", "schedule.name", "cosine", cfgmod.SCHEDULES),
        ("task.name=multiclas", "task.name", "multiclass", cfgmod.TASKS),
        ("train.precision=bf61", "train.precision", "bf16", cfgmod.PRECISIONS),
        ("log.progress=of", "log.progress", "off", cfgmod.PROGRESS),
        ("checkpoint.resume=mus", "checkpoint.resume", "must", cfgmod.RESUME),
        ("task.loss=hubber", "task.loss", "huber", cfgmod.LOSSES),
    ],
)
def test_unknown_name_suggests_and_lists_the_choices(item, key, suggestion, choices):
    err = config_error(item)
    assert err.where == key and f"'{key}'" in str(err)
    assert f"did you mean '{suggestion}'?" in err.fix
    assert "choose one of: " + ", ".join(c for c in choices if c) in err.fix


@pytest.mark.parametrize(
    ("key", "choices"),
    [
        ("optim.name", cfgmod.OPTIMIZERS),
        ("schedule.name", cfgmod.SCHEDULES),
        ("task.name", cfgmod.TASKS),
        ("train.precision", cfgmod.PRECISIONS),
    ],
)
def test_every_listed_choice_is_accepted(key, choices):
    section, name = key.split(".")
    for choice in choices:
        assert getattr(getattr(with_sets(f"{key}={choice}"), section), name) == choice


# -- fit() keywords --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "value", "item"),
    [
        ("lr", 0.1, "optim.lr=0.1"),
        ("optimizer", "sgd", "optim.name=sgd"),
        ("weight_decay", 0.0, "optim.weight_decay=0.0"),
        ("schedule", "constant", "schedule.name=constant"),
        ("warmup", 0, "schedule.warmup=0"),
        ("task", "regression", "task.name=regression"),
        ("epochs", 3, "train.epochs=3"),
        ("max_steps", 100, "train.max_steps=100"),
        ("batch_size", 32, "data.batch_size=32"),
        ("accumulate", 4, "train.accumulate=4"),
        ("clip_norm", 0.5, "train.clip_norm=0.5"),
        ("precision", "fp32", "train.precision=fp32"),
        ("seed", 7, "train.seed=7"),
        ("device", "cpu", "train.device=cpu"),
        ("run_dir", "runs/x", "train.run_dir=runs/x"),
        ("resume", "never", "checkpoint.resume=never"),
        ("checkpoint_every", 10, "checkpoint.every_steps=10"),
        ("keep_last", 3, "checkpoint.keep_last=3"),
        ("log_every", 5, "log.every_steps=5"),
        ("progress", "off", "log.progress=off"),
        ("loggers", ["csv"], 'log.loggers=["csv"]'),
        ("label_smoothing", 0.1, "task.label_smoothing=0.1"),
        ("patience", 3, "train.patience=3"),
        ("val_fraction", 0.2, "data.val_fraction=0.2"),
        ("momentum", 0.8, "optim.momentum=0.8"),
        ("min_lr_ratio", 0.0, "schedule.min_lr_ratio=0.0"),
    ],
)
def test_fit_keyword_means_the_same_as_set(keyword, value, item):
    assert build_config(None, **{keyword: value}) == with_sets(item)


@pytest.mark.parametrize(
    ("keyword", "value", "key", "expected"),
    [
        ("resume", True, "checkpoint.resume", "must"),
        ("resume", False, "checkpoint.resume", "never"),
        ("resume", None, "checkpoint.resume", "never"),
        ("clip_norm", None, "train.clip_norm", 0.0),
        ("clip_value", None, "train.clip_value", 0.0),
        ("max_steps", None, "train.max_steps", 0),
        ("epochs", None, "train.epochs", 0),
        ("checkpoint_every", None, "checkpoint.every_steps", 0),
        ("run_dir", Path("runs") / "x", "train.run_dir", str(Path("runs") / "x")),
        ("run_dir", None, "train.run_dir", ""),
        ("loggers", "csv", "log.loggers", ["csv"]),
    ],
)
def test_fit_keyword_python_conveniences(keyword, value, key, expected):
    section, name = key.split(".")
    assert getattr(getattr(build_config(None, **{keyword: value}), section), name) == expected


def test_every_fit_keyword_names_a_recipe_key():
    keys = set(cfgmod.all_keys())
    assert set(KEYWORDS.values()) <= keys
    options = _option_keys()
    assert set(options.values()) <= keys
    for name in set(KEYWORDS) & set(options):
        assert KEYWORDS[name] == options[name], name
    objects = {
        "model",
        "train",
        "val",
        "test",
        "loss",
        "metrics",
        "callbacks",
        "step",
        "teacher",
        "config",
        "options",
    }
    params = set(inspect.signature(sf.fit).parameters) - objects
    assert params <= set(KEYWORDS), params - set(KEYWORDS)


def test_fit_keywords_override_a_recipe_and_keep_the_rest():
    cfg = build_config(BUILTIN, epochs=3, lr=5e-3)
    assert cfg.train.epochs == 3 and cfg.optim.lr == 5e-3
    assert cfg.data.batch_size == 100 and cfg.optim.weight_decay == 0.01
    assert cfg == with_sets(
        "train.epochs=3", "optim.lr=5e-3", base=tomllib.loads(BUILTIN.read_text())
    )


@pytest.mark.parametrize(
    ("keyword", "suggestion"),
    [("lrr", "lr"), ("epoch", "epochs"), ("batchsize", "batch_size"), ("optimiser", "optimizer")],
)
def test_unknown_fit_keyword_suggests_the_nearest(keyword, suggestion):
    x, y = make_classification(32)
    with pytest.raises(ConfigError) as info:
        sf.fit(mlp(), (x, y), progress="off", device="cpu", **{keyword: 1})
    assert info.value.where == "fit()" and f"unknown keyword '{keyword}'" in str(info.value)
    assert f"did you mean '{suggestion}'?" in info.value.fix


def test_fit_keyword_out_of_range_names_the_recipe_key():
    x, y = make_classification(32)
    with pytest.raises(ConfigError) as info:
        sf.fit(mlp(), (x, y), lr=-1.0, progress="off", device="cpu")
    assert info.value.where == "optim.lr" and "> 0" in info.value.fix


# -- round trips -----------------------------------------------------------------------------------


def _custom() -> RunConfig:
    return with_sets(
        "name=round-trip",
        'description=quotes " and ünïcode',
        "model.name=pkg.mod:build",
        'model.args={width = 4, tags = ["a", "b"], nested = {k = 1.5}}',
        "optim.lr=3e-4",
        'optim.lr_groups={head = 0.1, "backbone.layer1" = 1e-5}',
        "optim.betas=[0.8, 0.95]",
        "schedule.name=multistep",
        "schedule.milestones=[2, 4]",
        "task.class_weights=[1.0, 2.5]",
        "train.epochs=7",
        "train.max_time_s=12.5",
        "train.deterministic=true",
        'log.loggers=["csv"]',
    )


@pytest.mark.parametrize(
    "make",
    [RunConfig, _custom, lambda: cfgmod.load(BUILTIN)],
    ids=["defaults", "custom", "builtin"],
)
def test_config_round_trips_through_toml_and_dict(make):
    cfg = make()
    text = to_toml(cfg)
    assert from_dict(tomllib.loads(text)) == cfg
    assert from_dict(cfg.to_dict()) == cfg
    assert to_toml(from_dict(tomllib.loads(text))) == text
    parsed = tomllib.loads(text)
    assert set(parsed) == set(cfgmod.META_KEYS) | set(cfgmod.SECTIONS)
    for section, cls in cfgmod.SECTIONS.items():
        assert set(parsed[section]) == {f.name for f in dataclasses.fields(cls)}


def test_replace_is_checked_and_leaves_the_original():
    cfg = RunConfig()
    new = cfg.replace(optim={"lr": 0.5}, train={"epochs": 2})
    assert new.optim.lr == 0.5 and new.train.epochs == 2
    assert cfg.optim.lr == 1e-3 and cfg.train.epochs == 0
    with pytest.raises(ConfigError) as info:
        cfg.replace(optim={"lr": -1.0})
    assert info.value.where == "optim.lr"
    with pytest.raises(ConfigError):
        cfg.replace(optim={"lrr": 0.1})


def test_all_keys_are_unique_and_cover_every_field():
    keys = cfgmod.all_keys()
    assert len(keys) == len(set(keys))
    assert keys[:3] == list(cfgmod.META_KEYS)
    for section, cls in cfgmod.SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"{section}.{f.name}" in keys
