"""The design's layer order, read from the source with ``ast``; and snapshots of the public surface.

A module may import from its own layer or any lower one. Only upward imports fail, each reported as
``file:line  module (layer) imports target (layer)``.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

import surefit

PACKAGE = "surefit"
SRC = Path(surefit.__file__).resolve().parent

# top to bottom; a module may import from its own layer or any layer below it
LAYERS: list[set[str]] = [
    {"cli"},
    {"recipes", "lrfind", "profile"},  # they build a recipe's parts as `fit` does
    {"api", "selfcheck"},
    {"loop"},
    {"callbacks", "checkpoint", "rundir", "log", "loggers", "health", "forensics", "checks"},
    {
        "precision",
        "schedule",
        "optim",
        "tasks",
        "metrics",
        "data",
        "splits",
        "distributed",
        "perf",
        "speed",
        "evaluation",
        "seeding",
        "keywords",
        "pairwise",
        "distill",
    },
    {"state"},
    {"report", "compare"},  # read run directories only
    {"config", "monitor", "spikes"},
    {"errors"},
]
EXEMPT = {PACKAGE, f"{PACKAGE}.__main__"}  # the package's __init__ and __main__


def module_name(path: Path, root: Path = SRC, package: str = PACKAGE) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def layer_of(module: str, layers: list[set[str]] = LAYERS) -> int | None:
    """Layer index (0 = top) of ``surefit.x`` or ``surefit.x.y`` (a package counts as a whole)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for i, names in enumerate(layers):
        if parts[1] in names:
            return i
    return None


def _is_submodule(module: str, root: Path, package: str) -> bool:
    rel = Path(*module.split(".")[1:]) if module != package else Path()
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def imported_modules(
    source: str,
    module: str,
    *,
    is_package: bool,
    root: Path = SRC,
    package: str = PACKAGE,
    lazy: dict[str, tuple[str, str]] | None = None,
) -> list[tuple[int, str]]:
    """(line, surefit module) for every import of the package in ``source``, at any depth.

    ``from surefit import x`` resolves to the submodule ``x`` when there is one, to the module a
    lazily loaded name comes from (``surefit._LAZY``), and to the package itself otherwise.
    """
    lazy = surefit._LAZY if lazy is None else lazy
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == package]
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            stem = base[: len(base) - (node.level - 1)]
            target = ".".join(stem + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != package:
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if _is_submodule(sub, root, package):
                found.append((node.lineno, sub))
            elif target == package and alias.name in lazy:
                found.append((node.lineno, f"{package}.{lazy[alias.name][0]}"))
            else:
                found.append((node.lineno, target))
    return found


def upward_imports(
    root: Path = SRC,
    package: str = PACKAGE,
    layers: list[set[str]] = LAYERS,
    lazy: dict[str, tuple[str, str]] | None = None,
) -> tuple[list[str], list[str]]:
    """(violations, modules without a layer) over every module under ``root``."""
    violations, unplaced = [], []
    exempt = {package, f"{package}.__main__"}
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root, package)
        if module in exempt:
            continue
        own = layer_of(module, layers)
        if own is None:
            unplaced.append(module)
            continue
        imports = imported_modules(
            path.read_text(),
            module,
            is_package=path.stem == "__init__",
            root=root,
            package=package,
            lazy=lazy,
        )
        for line, target in imports:
            if target in exempt:
                continue
            theirs = layer_of(target, layers)
            if theirs is None:
                unplaced.append(target)
            elif theirs < own:
                where = path.relative_to(root.parent).as_posix()
                violations.append(
                    f"{where}:{line}  {module} (layer {own}) imports {target} (layer {theirs})"
                )
    return violations, sorted(set(unplaced))


def test_every_module_has_a_layer():
    _, unplaced = upward_imports()
    assert unplaced == [], f"add these modules to LAYERS: {unplaced}"


def test_no_module_imports_upward():
    violations, _ = upward_imports()
    assert violations == [], "upward imports:\n" + "\n".join(violations)


def test_nothing_but_main_imports_the_cli():
    importers = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        if module == f"{PACKAGE}.__main__":
            continue
        for line, target in imported_modules(
            path.read_text(), module, is_package=path.stem == "__init__"
        ):
            if target == f"{PACKAGE}.cli":
                importers.append(f"{path.name}:{line}")
    assert importers == []


def test_recipes_modules_count_as_the_recipes_layer():
    assert layer_of("surefit.recipes") == layer_of("surefit.recipes.mnist1d") == 1


def test_the_checker_finds_an_upward_import(tmp_path: Path):
    # a tiny package with the same layers: the check must be able to fail
    pkg = tmp_path / "pkg"
    (pkg / "recipes").mkdir(parents=True)
    files = {
        "__init__.py": "from .errors import E\n",
        "__main__.py": "from .cli import main\n",
        "cli.py": "from . import recipes\nfrom .api import fit\n",
        "api.py": "from .loop import Trainer\nfrom . import config\n",
        "loop.py": "def f():\n    from .api import fit\n",  # upward, inside a function
        "config.py": "import pkg.errors\n",
        "errors.py": "from pkg import api\n",  # upward, absolute, through the package
        "state.py": "from pkg import fit\n",  # upward, through a lazily loaded name
        "recipes/__init__.py": "from ..config import X\n",
        "recipes/extra.py": "from .. import cli\n",  # upward from a recipes module
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    violations, unplaced = upward_imports(pkg, "pkg", lazy={"fit": ("api", "fit")})
    assert unplaced == []
    assert [v.split()[0] for v in violations] == [
        "pkg/errors.py:1",
        "pkg/loop.py:2",
        "pkg/recipes/extra.py:1",
        "pkg/state.py:1",
    ]
    assert "pkg.loop (layer 3) imports pkg.api (layer 2)" in violations[1]


# -- snapshots of the public surface ---------------------------------------------------------------


def test_public_names_snapshot():
    assert sorted(surefit.__all__) == [
        "Callback",
        "CheckpointError",
        "ConfigError",
        "DataError",
        "EarlyStopping",
        "FitResult",
        "RunConfig",
        "SurefitWarning",
        "__version__",
        "evaluate",
        "fit",
        "load_config",
        "load_weights",
        "lr_find",
    ]
    assert len(surefit.__all__) == len(set(surefit.__all__))


@pytest.mark.parametrize("name", sorted(surefit.__all__))
def test_every_public_name_resolves(name):
    assert getattr(surefit, name) is not None


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        s
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction)
        for s in (a.option_strings or [a.dest])
    )


def test_cli_commands_and_flags_snapshot():
    from surefit.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert _options(parser) == ["--help", "--version", "-h"]
    assert {name: _options(p) for name, p in sub.choices.items()} == {
        "fit": [
            "--device",
            "--help",
            "--nproc",
            "--pause-at",
            "--progress",
            "--run-dir",
            "--set",
            "-h",
            "recipe",
        ],
        "resume": [
            "--device",
            "--help",
            "--nproc",
            "--override",
            "--progress",
            "--set",
            "-h",
            "run_dir",
        ],
        "doctor": [
            "--device",
            "--help",
            "--max-batch",
            "--profile",
            "--progress",
            "--set",
            "--top-ops",
            "-h",
            "recipe",
        ],
        "check-resume": [
            "--device",
            "--help",
            "--keep",
            "--progress",
            "--set",
            "--steps",
            "-h",
            "recipe",
        ],
        "export": ["--help", "--to", "--which", "-h", "run_dir"],
        "sample": [
            "--help",
            "--prompt",
            "--seed",
            "--temperature",
            "--tokens",
            "--top-k",
            "-h",
            "run_dir",
        ],
        "recipes": ["--help", "-h", "action", "name"],
        "report": ["--help", "-h", "run_dir"],
        "compare": ["--help", "--out", "-h", "run_dirs"],
        "lr-find": [
            "--device",
            "--help",
            "--max-lr",
            "--min-lr",
            "--out",
            "--rule",
            "--set",
            "--steps",
            "-h",
            "recipe",
        ],
    }
    choices = {
        name: {a.dest: list(a.choices) for a in p._actions if a.choices}
        for name, p in sub.choices.items()
    }
    assert choices == {
        "fit": {"progress": ["auto", "bar", "epoch", "off"]},
        "resume": {"progress": ["auto", "bar", "epoch", "off"]},
        "doctor": {"progress": ["auto", "bar", "epoch", "off"]},
        "check-resume": {"progress": ["auto", "bar", "epoch", "off"]},
        "export": {"which": ["best", "last"]},
        "sample": {},
        "recipes": {"action": ["list", "show"]},
        "report": {},
        "compare": {},
        "lr-find": {"rule": ["steepest", "min/10"]},
    }
