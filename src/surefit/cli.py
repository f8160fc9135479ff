"""The ``surefit`` command: parsing and calling the library, nothing else.

``surefit --help`` and ``surefit recipes`` import no torch; the library loads when a run starts.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from . import __version__, recipes
from . import config as cfgmod
from .errors import ConfigError, SurefitError

EXIT_DIVERGED = 3  # the health guards stopped the run: too many bad steps or rollbacks
EXIT_PREEMPTED = 75  # stopped by SIGTERM/SIGINT/SIGUSR1 after a checkpoint: resumable (EX_TEMPFAIL)

EXAMPLES = """examples:
  surefit fit                                   the default run: 1-D CNN on MNIST-1D
  surefit fit recipe.toml --set optim.lr=1e-3 --set train.epochs=5
  surefit resume runs/mnist1d-cnn               continue a stopped run where it stopped
  surefit recipes                               list the built-in recipes
  surefit recipes show mnist1d-cnn > my.toml    copy one out to edit
  surefit report runs/mnist1d-cnn               plots and report.html of a run
  surefit compare runs/a runs/b                 overlay runs: best metrics, config differences
  surefit lr-find mnist1d-cnn                   learning-rate range test of a recipe
  surefit sample runs/char-gpt --prompt "ROMEO:"  generate text from a char-gpt run
"""


def _count(low: int) -> Any:
    """An argparse type: an integer >= ``low`` (a usage error, exit 2, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    return parse


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
    _recipe(fit)
    _common(fit)
    _nproc(fit)
    fit.add_argument(
        "--run-dir",
        help="run directory (default: runs/NAME, or runs/NAME-2... when that one is taken)",
    )
    fit.add_argument(
        "--pause-at",
        type=_count(1),
        metavar="STEP",
        help="stop at this optimizer step as a preemption does (checkpoint, exit 75); "
        "`surefit resume` continues exactly",
    )

    res = sub.add_parser(
        "resume",
        help="continue a stopped run from its newest good checkpoint",
        description="Continue the run in RUN_DIR from its newest checkpoint, with the config "
        "it was started with (config.toml). --set train.epochs=N extends it.",
    )
    res.add_argument("run_dir", help="the run directory to continue")
    res.add_argument(
        "--override",
        action="store_true",
        help="allow a changed learning rate or data order (batch size, accumulation, seed)",
    )
    _common(res)
    _nproc(res)

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

    doc = sub.add_parser(
        "doctor",
        help="check a recipe's data, model, loss and optimizer on a few batches",
        description="Run every first-step check (targets, probabilities fed to a logits loss, "
        "initial loss, BatchNorm with accumulation, train/val leakage, unused parameters) on "
        "the first batches without training or writing anything. Exit 1 when a check fails.",
    )
    _recipe(doc)
    _common(doc)
    doc.add_argument(
        "--profile",
        action="store_true",
        help="also run 50 steps: time waiting for data vs in the step, and throughput",
    )
    doc.add_argument(
        "--top-ops",
        type=_count(0),
        default=0,
        metavar="N",
        help="with --profile: torch profiler's top N",
    )
    doc.add_argument(
        "--max-batch",
        action="store_true",
        help="also find the largest power-of-two batch that fits (CUDA: by trying)",
    )

    chk = sub.add_parser(
        "check-resume",
        help="check that stop + resume is bit-exact on this recipe and machine",
        description="Train STEPS optimizer steps, checkpoint, continue STEPS more in a fresh "
        "process, and compare with 2 x STEPS uninterrupted steps bit for bit (weights, "
        "optimizer, schedule, RNG, metrics). Exit 0 when exact, 1 when not, with what differs "
        "and the likely cause.",
    )
    _recipe(chk)
    chk.add_argument(
        "--steps", type=_count(1), default=8, help="steps before the stop (default: 8)"
    )
    chk.add_argument("--keep", metavar="DIR", help="keep the runs' directories under DIR")
    _common(chk)

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
    _report_commands(sub)
    return p


def _report_commands(sub: Any) -> None:
    rep = sub.add_parser(
        "report",
        help="plots (RUN_DIR/plots/*.png) and a one-page RUN_DIR/report.html of a run",
        description="Draw a run's loss, metrics, learning rate, gradient norm and throughput "
        "(resumes, skipped steps and rollbacks marked) under RUN_DIR/plots/, and write "
        "RUN_DIR/report.html: one self-contained page that opens offline.",
    )
    rep.add_argument("run_dir", help="the run directory")
    cmp = sub.add_parser(
        "compare",
        help="overlay runs' curves; print their best metrics and config differences",
        description="Overlay the loss, validation and learning-rate curves of two or more runs "
        "in one PNG, and print a table of their best metrics and of the config keys that differ.",
    )
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    cmp.add_argument(
        "--out", default="compare.png", metavar="FILE", help="the PNG to write (%(default)s)"
    )
    lrf = sub.add_parser(
        "lr-find",
        help="learning-rate range test of a recipe: plot and a suggested learning rate",
        description="Train a recipe for up to --steps optimizer steps while the learning rate "
        "grows exponentially from --min-lr to --max-lr; stop when the smoothed loss diverges; "
        "save the plot and print a suggested optim.lr with the rule used. Writes no run.",
    )
    _recipe(lrf)
    _overrides(lrf)
    lrf.add_argument("--min-lr", type=float, default=1e-7, help="first learning rate (%(default)g)")
    lrf.add_argument("--max-lr", type=float, default=10.0, help="last learning rate (%(default)g)")
    lrf.add_argument("--steps", type=_count(2), default=100, help="optimizer steps (%(default)d)")
    lrf.add_argument(
        "--rule",
        choices=["steepest", "min/10"],
        default="steepest",
        help="steepest descent of the smoothed loss (default), or the lowest loss's lr / 10",
    )
    lrf.add_argument(
        "--out", metavar="FILE", help="the PNG to write (default: runs/NAME-lr-find.png)"
    )


def _recipe(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe",
        nargs="?",
        default=recipes.DEFAULT,
        help=f"built-in recipe name or path to a .toml file (default: {recipes.DEFAULT})",
    )


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
    smp.add_argument(
        "--tokens", type=_count(1), default=500, help="tokens to generate (default 500)"
    )
    smp.add_argument(
        "--temperature", type=float, default=0.8, help="softmax temperature, > 0 (default 0.8)"
    )
    smp.add_argument(
        "--top-k", type=_count(0), default=0, help="sample among the k likeliest tokens; 0 = all"
    )
    smp.add_argument("--seed", type=int, default=0, help="seed of the sampling (default 0)")


def _common(p: argparse.ArgumentParser) -> None:
    _overrides(p)
    p.add_argument(
        "--progress",
        choices=cfgmod.PROGRESS,
        help="progress display: bar, one line per epoch, or off (default: auto)",
    )


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set optim.lr=1e-3 (repeatable)",
    )
    p.add_argument("--device", help="device to train on: auto, cpu, cuda, cuda:1, mps")


def _nproc(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc",
        type=_count(1),
        default=1,
        metavar="N",
        help="processes on this machine, launched through torch's elastic launcher (torchrun)",
    )


def _plain_name(name: str, default: str) -> str:
    """``name`` when it can be one folder's name under runs/ (its run directory, its lr-find plot);
    a ConfigError when it would point elsewhere (``..``, ``a/b``) or nowhere (``""``)."""
    if name and name not in (".", "..") and not {"/", "\\", "\0"} & set(name):
        return name
    raise ConfigError(
        f"name = {name!r} cannot name a folder under runs/",
        where="name",
        fix=f"give a plain name without path separators (e.g. --set name={default}), or a "
        "folder with --run-dir",
    )


def _free_run_dir(name: str) -> str:
    base = Path("runs") / name
    if not base.exists() or (base.is_dir() and not any(base.iterdir())):
        return str(base)  # (a file by that name: the next free name, as for a used folder)
    n = 2
    while (Path("runs") / f"{name}-{n}").exists():
        n += 1
    return str(Path("runs") / f"{name}-{n}")


def _build(text: str, name: str, where: str, args: argparse.Namespace) -> cfgmod.RunConfig:
    data = cfgmod.parse_toml(text, where=where)
    data.setdefault("name", name)
    sets = list(args.overrides)
    if getattr(args, "progress", None):
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
        cfg = cfg.replace(train={"run_dir": _free_run_dir(_plain_name(cfg.name, name))})
    if args.nproc > 1:  # every process gets the run directory chosen here
        return _launch(args.nproc, [*args.argv, "--run-dir", cfg.train.run_dir], cfg.train.run_dir)
    if args.pause_at is not None:
        from .callbacks import PauseAt

        return _exit_code(recipes.run(cfg, callbacks=[PauseAt(args.pause_at)]))
    return _exit_code(recipes.run(cfg))


def cmd_doctor(args: argparse.Namespace) -> int:
    name, text = recipes.source(args.recipe)
    cfg = _build(text, name, args.recipe, args).replace(train={"run_dir": ""})
    # the doctor runs every check; the run itself keeps to the config's choice
    every = cfg.replace(health={"checks": True, "skip_checks": []})
    findings = recipes.run(every, doctor=True)
    for f in findings:
        print(f.line())
    skipped = "all of them" if not cfg.health.checks else ", ".join(cfg.health.skip_checks)
    if skipped:
        print(f"\n(the run itself skips {skipped}: health.checks / health.skip_checks)")
    count = {level: sum(f.level == level for f in findings) for level in ("ok", "warning", "error")}
    print(f"\n{count['ok']} ok, {count['warning']} warning(s), {count['error']} error(s)")
    if count["error"]:
        return 1
    from . import profile

    if args.profile:
        print("\n" + "\n".join(profile.profile_run(cfg, top_ops=args.top_ops).lines()))
    if args.max_batch:
        print("\n" + "\n".join(profile.max_batch(cfg).lines()))
    return 0


def cmd_check_resume(args: argparse.Namespace) -> int:
    from .selfcheck import check_processes

    name, text = recipes.source(args.recipe)
    cfg = _build(text, name, args.recipe, args)
    check = check_processes(cfg, max(1, args.steps), args.keep or "")
    print(check.report())
    return 0 if check.exact else 1


def _launch(nproc: int, argv: list[str], run_dir: str) -> int:
    """Run ``surefit ARGV`` in ``nproc`` processes through torch.distributed.run (torchrun)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    rest, skip = [], False
    for a in argv:  # the children are the processes: they must not launch again
        if skip or a == "--nproc" or a.startswith("--nproc="):
            skip = a == "--nproc"
            continue
        rest.append(a)
    launch = ["--standalone", f"--nproc-per-node={nproc}", "-m", "surefit", *rest]
    try:
        run(get_args_parser().parse_args(launch))
    except ChildFailedError as exc:  # each rank has printed its own error above
        rank, failure = exc.get_first_failure()
        if failure.exitcode == EXIT_PREEMPTED:  # paused (a signal, --pause-at): not a failure
            print(f"paused; continue with: surefit resume {run_dir}", file=sys.stderr)
            return EXIT_PREEMPTED
        print(f"error: rank {rank} failed first (exit code {failure.exitcode})", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as exc:  # torchrun passed the signal on: each rank checkpointed
        print(f"stopped by {exc.sigval.name}; continue with: surefit resume {run_dir}",
              file=sys.stderr)  # fmt: skip
        return EXIT_PREEMPTED
    return 0


def _exit_code(result: Any) -> int:
    """0 when the run finished; EXIT_PREEMPTED when a signal paused it with a checkpoint;
    EXIT_DIVERGED when the health guards stopped it."""
    if getattr(result, "preempted", False):
        quiet = result.config.log.progress == "off"  # the summary with this hint was not printed
        if quiet and os.environ.get("RANK", "0") == "0":  # once, from rank 0
            where = f"surefit resume {result.run_dir}"
            print(f"stopped at step {result.steps}; continue with: {where}", file=sys.stderr)
        return EXIT_PREEMPTED
    if getattr(result, "health_stop", ""):
        if result.config.log.progress == "off" and os.environ.get("RANK", "0") == "0":
            print(f"stopped by the health guards: {result.health_stop}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    config_path = recipes.config_of(run_dir)
    _, text = recipes.source(str(config_path))  # a damaged config.toml is a ConfigError
    cfg = _build(text, run_dir.name, str(config_path), args)
    progress_set = any(s.strip().startswith("log.progress") for s in args.overrides)
    cfg = cfg.replace(
        train={"run_dir": str(run_dir)},
        checkpoint={"resume": "must", "override": bool(args.override) or cfg.checkpoint.override},
        # a display, chosen per session: --progress or --set log.progress=..., else auto
        log={"progress": cfg.log.progress if args.progress or progress_set else "auto"},
    )
    if args.nproc > 1:
        return _launch(args.nproc, args.argv, str(run_dir))
    return _exit_code(recipes.run(cfg))


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import export_weights

    path = export_weights(
        args.run_dir,
        args.to,
        args.which,
        on_skip=lambda p, why: print(f"skipping unreadable checkpoint {why}", file=sys.stderr),
    )
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
        text = recipes.source(args.name)[1]
        cfgmod.parse_toml(text, where=args.name)  # a recipe, not any file: TOML or an error
        sys.stdout.write(text)
        return 0
    rows = recipes.describe()
    width = max(len(n) for n, _ in rows)
    for name, text in rows:
        print(f"{name:<{width}}  {text}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    page, plots = write_report(args.run_dir)
    for path in plots:
        print(f"wrote {path}")
    print(f"wrote {page}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    png, text = compare(args.run_dirs, args.out)
    print(text)
    print(f"\nwrote {png}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from .lrfind import lr_find_recipe

    name, text = recipes.source(args.recipe)
    cfg = _build(text, name, args.recipe, args)
    out = args.out or str(Path("runs") / f"{_plain_name(cfg.name, name)}-lr-find.png")
    result = lr_find_recipe(
        cfg, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps, rule=args.rule, plot=out
    )
    print(result.summary())
    if result.suggestion is not None:
        sets = "".join(f" --set {shlex.quote(s)}" for s in args.overrides)  # what it swept with
        print(f"try: surefit fit {args.recipe}{sets} --set optim.lr={result.suggestion:.2g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "top_ops", 0) and not args.profile:
        parser.error("--top-ops needs --profile (the operators are those of the profile's steps)")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = globals()["cmd_" + args.command.replace("-", "_")]  # each command is cmd_NAME
    try:
        return handler(args)
    except SurefitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`surefit compare ... | head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's own recipe)
        return 1


if __name__ == "__main__":
    sys.exit(main())
