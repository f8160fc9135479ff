"""Built-in recipes (NAME.toml beside this file) and running any recipe.

Listing and showing recipes import no torch; running one builds its model and data from the
import paths it names (``package.module:factory``).
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RunConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..log import Console

HERE = Path(__file__).parent
DEFAULT = "mnist1d-cnn"


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def describe() -> list[tuple[str, str]]:
    """(name, description) of every built-in recipe."""
    out = []
    for name in names():
        data = tomllib.loads((HERE / f"{name}.toml").read_text())
        out.append((name, data.get("description", "")))
    return out


def source(name_or_path: str) -> tuple[str, str]:
    """(name, TOML text) of a built-in recipe name or a recipe file path. A built-in name wins
    over a file or folder of that name without ``.toml`` (``runs/mnist1d-cnn`` seen from
    ``runs/``); ``./NAME`` reads the file."""
    path = Path(name_or_path)
    builtin = name_or_path in names()
    if path.suffix == ".toml" or (path.exists() and not builtin):
        if not path.is_file():
            raise ConfigError(
                f"no recipe file {path}",
                where=str(path),
                fix="check the path, or run `surefit recipes` for built-in names",
            )
        try:
            return path.stem, path.read_text(encoding="utf-8-sig")  # an editor's BOM
        except (UnicodeDecodeError, OSError) as exc:
            raise ConfigError(
                f"cannot read recipe {path}: {exc}",
                where=str(path),
                fix="a recipe is a UTF-8 TOML text file (docs/recipes.md)",
            ) from None
    if builtin:
        return name_or_path, (HERE / f"{name_or_path}.toml").read_text()
    import difflib

    close = difflib.get_close_matches(name_or_path, names(), n=1)
    raise ConfigError(
        f"no recipe named '{name_or_path}'",
        where="recipe",
        fix=(f"did you mean '{close[0]}'? " if close else "")
        + f"built-in recipes: {', '.join(names())}; or give a path to a .toml file",
    )


def check_arg(ok: bool, key: str, value: Any, need: str, fix: str) -> None:
    """A ConfigError naming ``data.args.KEY`` when a built-in factory's argument is out of its
    range (``ok`` false), before the factory fails deep inside numpy or torch."""
    if not ok:
        raise ConfigError(f"data.args.{key} = {value!r} {need}", where=f"data.args.{key}", fix=fix)


def whole(value: Any, low: int) -> bool:
    """``value`` is an int (not a bool) of at least ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def resolve(path: str, key: str) -> Any:
    """Import ``package.module:attribute``; a failure names the recipe key."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"'{path}' is not an import path", where=key, fix="write it as 'package.module:factory'"
        )
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the user's own packages in the working folder
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import '{module_name}': {exc}",
            where=key,
            fix="check the module name and that it is importable from here",
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"module '{module_name}' has no '{attr}'", where=key, fix="check the factory's name"
        ) from None


def _split(data: Any) -> tuple[Any, Any, Any]:
    if isinstance(data, dict):
        unknown = set(data) - {"train", "val", "test"}
        if "train" not in data or unknown:
            raise ConfigError(
                "a data factory must return {'train': ..., 'val': ..., 'test': ...}",
                where="data.name",
                fix="return a dict with 'train' and optionally 'val' and 'test'",
            )
        return data["train"], data.get("val"), data.get("test")
    if isinstance(data, tuple) and len(data) in (2, 3) and isinstance(data[0], (tuple, list)):
        return (*data, None)[:3]  # type: ignore[return-value]
    raise ConfigError(
        f"a data factory must return a dict {{'train', 'val', 'test'}}, got {type(data).__name__}",
        where="data.name",
        fix="return {'train': (x, y), 'val': ..., 'test': ...} (tensors, arrays or Datasets; "
        "see docs/recipes.md)",
    )


def _call(factory: Any, args: dict[str, Any], key: str) -> Any:
    """``factory(**args)``, the arguments checked against its signature first: a misspelled
    argument is a config error, while a TypeError from inside the factory stays what it is."""
    import inspect

    try:
        inspect.signature(factory).bind(**args)
    except TypeError as exc:
        try:
            accepted = ", ".join(inspect.signature(factory).parameters) or "none"
        except (TypeError, ValueError):
            accepted = "see the factory"
        raise ConfigError(
            f"{key} do not fit {getattr(factory, '__name__', 'the factory')}(): {exc}",
            where=key,
            fix=f"its arguments: {accepted}",
        ) from None
    except ValueError:  # no signature to check (a builtin): let the call decide
        return factory(**args)
    _check_types(factory, args, key)
    return factory(**args)


# what an argument annotated with each plain type accepts: an int where a float is expected,
# never a bool for a number
_ACCEPTS = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


def _check_types(factory: Any, args: dict[str, Any], key: str) -> None:
    """A config error for an argument whose value does not fit its annotation, where that is a
    plain ``int``, ``float``, ``bool`` or ``str`` (``channels = "abc"`` for ``channels: int``),
    before the factory fails deep inside with a TypeError. Unions, sequences and unannotated
    arguments are left to the factory (``padding="same"`` is as valid as ``padding=1``)."""
    import typing

    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # annotations that do not resolve: nothing to check against
        return
    name_of = getattr(factory, "__name__", "the factory")
    for name, value in args.items():
        kind = hints.get(name)
        if kind not in _ACCEPTS:
            continue
        a_bool_for_a_number = isinstance(value, bool) and kind is not bool
        if isinstance(value, _ACCEPTS[kind]) and not a_bool_for_a_number:
            continue
        raise ConfigError(
            f"{key}.{name} = {value!r} is of type {type(value).__name__}; {name_of}() takes "
            f"{kind.__name__} there",
            where=f"{key}.{name}",
            fix=f"give it as {kind.__name__}",
        )


def build(cfg: RunConfig) -> tuple[Any, Any, Any, Any, Any]:
    """(model, train, val, test, teacher) from the recipe's factories, the model seeded."""
    from ..state import seed_everything

    for key, value in (("model.name", cfg.model.name), ("data.name", cfg.data.name)):
        if not value:
            raise ConfigError(
                f"the recipe sets no {key}", where=key, fix=f"set {key} = 'package.module:factory'"
            )
    seed_everything(cfg.train.seed)  # the model's initial weights follow the run's seed
    model = _call(resolve(cfg.model.name, "model.name"), cfg.model.args, "model.args")
    train, val, test = _split(
        _call(resolve(cfg.data.name, "data.name"), cfg.data.args, "data.args")
    )
    teacher = resolve(cfg.task.teacher, "task.teacher")() if cfg.task.teacher else None
    return model, train, val, test, teacher


def run(
    cfg: RunConfig,
    console: Console | None = None,
    doctor: bool = False,
    callbacks: list[Any] | None = None,
) -> Any:
    """Build the recipe's model and data from their factories and train (a FitResult), or with
    ``doctor`` run the first-step checks only (a list of findings)."""
    from ..api import Run

    model, train, val, test, teacher = build(cfg)
    the_run = Run(
        cfg, model, train, val, test, teacher=teacher, console=console, callbacks=callbacks
    )
    return the_run.doctor() if doctor else the_run.execute()


def config_of(run_dir: Path) -> Path:
    """The ``config.toml`` of a run directory; a folder without one is a ConfigError."""
    path = run_dir / "config.toml"
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} holds no config.toml: it is not a surefit run directory",
            where=str(run_dir),
            fix="give the run directory that `surefit fit` made",
        )
    return path


def _checkpoint_state(run_dir: Path) -> dict[str, Any]:
    """The best checkpoint's state of a run directory, else its newest good one."""
    from ..checkpoint import run_state

    return run_state(run_dir, "best", _skipped)


def _skipped(path: Path, why: str) -> None:
    print(f"skipping unreadable checkpoint {why}", file=sys.stderr)


def sample(
    run_dir: str | Path,
    prompt: str = "\n",
    tokens: int = 500,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
) -> str:
    """Text generated by a run's best model through its recipe module's ``generate``.

    The model is rebuilt from the run's ``config.toml`` and loaded from its best checkpoint; no
    training data is read.
    """
    from .. import config as cfgmod

    run_dir = Path(run_dir)
    cfg = cfgmod.load(config_of(run_dir))
    factory = resolve(cfg.model.name, "model.name")  # the working folder's packages too
    module_name = cfg.model.name.partition(":")[0]
    generate = getattr(importlib.import_module(module_name), "generate", None)
    if generate is None:
        raise ConfigError(
            f"the model of this run ({cfg.model.name}) cannot generate text",
            where="model.name",
            fix="sample from a run of a language-model recipe, e.g. char-gpt",
        )
    if tokens < 0:
        raise ConfigError(f"--tokens {tokens} is negative", where="--tokens", fix="e.g. 500")
    model = _call(factory, cfg.model.args, "model.args")
    try:
        model.load_state_dict(_checkpoint_state(run_dir)["model"])
    except RuntimeError as exc:
        from ..errors import CheckpointError

        raise CheckpointError(
            "the run's weights do not fit the model its config.toml builds: "
            + str(exc).splitlines()[0],
            where=str(config_of(run_dir)),
            fix="restore the model section of config.toml to the one the run trained with",
        ) from None
    return generate(model, prompt, tokens=tokens, temperature=temperature, top_k=top_k, seed=seed)
