"""The ``surefit`` command: parsing and calling the library, nothing else.

``surefit --help`` and ``surefit recipes`` import no torch; the library loads when a run starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, recipes
from . import config as cfgmod
from .errors import SurefitError

EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT/SIGUSR1 after a checkpoint: resumable (EX_TEMPFAIL)

EXAMPLES = """examples:
  surefit fit                                   the default run: 1-D CNN on MNIST-1D
  surefit fit recipe.toml --set optim.lr=1e-3 --set train.epochs=5
  surefit resume runs/mnist1d-cnn               continue a stopped run where it stopped
  surefit recipes                               list the built-in recipes
  surefit recipes show mnist1d-cnn > my.toml    copy one out to edit
  surefit sample runs/char-gpt --prompt "ROMEO:"  generate text from a char-gpt run
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="surefit",
        description="Train PyTorch models with a loop that is right by default.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"surefit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    fit = sub.add_parser(
        "fit",
        help="train a recipe (default: the built-in mnist1d-cnn)",
        description="Train a recipe: a built-in name or a TOML file. Keys are documented in "
        "docs/options.md; any of them can be overridden with --set section.key=value.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  surefit fit\n  surefit fit mnist1d-cnn --set train.epochs=5\n"
        "  surefit fit my.toml --set optim.lr=3e-4 --run-dir runs/try1",
    )
    fit.add_argument(
        "recipe",
        nargs="?",
        default=recipes.DEFAULT,
        help=f"built-in recipe name or path to a .toml file (default: {recipes.DEFAULT})",
    )
    _common(fit)
    fit.add_argument(
        "--run-dir",
        help="run directory (default: runs/NAME, or runs/NAME-2... when that one is taken)",
    )

    res = sub.add_parser(
        "resume",
        help="continue a stopped run from its newest good checkpoint",
        description="Continue the run in RUN_DIR from its newest checkpoint, with the config "
        "it was started with (config.toml). --set train.epochs=N extends it.",
    )
    res.add_argument("run_dir", help="the run directory to continue")
    res.add_argument(
        "--override", action="store_true", help="allow a changed learning rate (--set optim.lr=...)"
    )
    _common(res)

    exp = sub.add_parser(
        "export",
        help="write a run's model weights as a safetensors file",
        description="Write the model weights of RUN_DIR's best checkpoint (or the newest, with "
        "--which last) to a safetensors file; surefit.load_weights(model, FILE) reads it back.",
    )
    exp.add_argument("run_dir", help="the run directory")
    exp.add_argument(
        "--to", required=True, metavar="FILE", help="output file, e.g. model.safetensors"
    )
    exp.add_argument(
        "--which",
        choices=["best", "last"],
        default="best",
        help="best checkpoint (default; the newest if there is no best) or the newest",
    )

    _sample_parser(sub)

    rec = sub.add_parser(
        "recipes",
        help="list built-in recipes, or print one",
        description="List the built-in recipes, or print one as TOML to copy and edit.",
    )
    rec.add_argument(
        "action",
        nargs="?",
        choices=["list", "show"],
        default="list",
        help="list (default) or show NAME",
    )
    rec.add_argument("name", nargs="?", help="recipe to show")
    return p


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    smp = sub.add_parser(
        "sample",
        help="generate text from a language-model run's best checkpoint",
        description="Rebuild the model of RUN_DIR (a char-gpt run, say) from its config.toml, "
        "load its best checkpoint and print PROMPT followed by generated text.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='example:\n  surefit sample runs/char-gpt --prompt "ROMEO:" --tokens 300',
    )
    smp.add_argument("run_dir", help="the run directory")
    smp.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    smp.add_argument("--tokens", type=int, default=500, help="tokens to generate (default 500)")
    smp.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature, > 0 (default 0.8)"
    )
    smp.add_argument(
        "--top-k", type=int, default=0, help="sample among the k likeliest tokens; 0 = all"
    )
    smp.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set optim.lr=1e-3 (repeatable)",
    )
    p.add_argument(
        "--progress",
        choices=cfgmod.PROGRESS,
        help="progress display: bar, one line per epoch, or off (default: auto)",
    )
    p.add_argument("--device", help="device to train on: auto, cpu, cuda, cuda:1, mps")


def _free_run_dir(name: str) -> str:
    base = Path("runs") / name
    if not base.exists() or not any(base.iterdir()):
        return str(base)
    n = 2
    while (Path("runs") / f"{name}-{n}").exists():
        n += 1
    return str(Path("runs") / f"{name}-{n}")


def _build(text: str, name: str, where: str, args: argparse.Namespace) -> cfgmod.RunConfig:
    data = cfgmod.parse_toml(text, where=where)
    data.setdefault("name", name)
    sets = list(args.overrides)
    if args.progress:
        sets.append(f"log.progress={args.progress}")
    if args.device:
        sets.append(f"train.device={args.device}")
    return cfgmod.from_dict(cfgmod.apply_overrides(data, sets))


def cmd_fit(args: argparse.Namespace) -> int:
    name, text = recipes.source(args.recipe)
    cfg = _build(text, name, args.recipe, args)
    if args.run_dir:
        cfg = cfg.replace(train={"run_dir": args.run_dir})
    elif not cfg.train.run_dir:
        cfg = cfg.replace(train={"run_dir": _free_run_dir(cfg.name)})
    return _exit_code(recipes.run(cfg))


def _exit_code(result: object) -> int:
    """0 when the run finished; EXIT_PREEMPTED when a signal paused it with a checkpoint."""
    return EXIT_PREEMPTED if getattr(result, "preempted", False) else 0


def cmd_resume(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    config_path = recipes.config_of(run_dir)
    cfg = _build(config_path.read_text(), run_dir.name, str(config_path), args)
    cfg = cfg.replace(
        train={"run_dir": str(run_dir)},
        checkpoint={"resume": "must", "override": bool(args.override)},
    )
    return _exit_code(recipes.run(cfg))


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import export_weights

    path = export_weights(args.run_dir, args.to, args.which)
    print(f"wrote {path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    text = recipes.sample(
        args.run_dir,
        args.prompt,
        tokens=args.tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
    )
    print(text)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            from .errors import ConfigError

            raise ConfigError(
                "which recipe?",
                where="surefit recipes show",
                fix="surefit recipes show NAME (names: surefit recipes)",
            )
        sys.stdout.write(recipes.source(args.name)[1])
        return 0
    rows = recipes.describe()
    width = max(len(n) for n, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    commands = {
        "fit": cmd_fit,
        "resume": cmd_resume,
        "export": cmd_export,
        "sample": cmd_sample,
        "recipes": cmd_recipes,
    }
    try:
        return commands[args.command](args)
    except SurefitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
