"""Write docs/options.md from src/surefit/config.py: every recipe key, its default and meaning.

Run: .venv/bin/python scripts/gen_options.py   (a test checks the file is current)
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render() -> str:
    from surefit import config

    source = (ROOT / "src" / "surefit" / "config.py").read_text()
    comment = {}
    current = None
    for line in source.splitlines():
        m = re.match(r"class (\w+)Config\b", line)
        if m:
            current = m.group(1)
        m = re.match(r"    (\w+): [^=]+= .*?#\s*(.*)$", line)
        if m and current:
            comment[(current, m.group(1))] = m.group(2).strip()
    choices = {
        "task.name": config.TASKS, "task.loss": config.LOSSES[1:], "optim.name": config.OPTIMIZERS,
        "optim.implementation": config.IMPLEMENTATIONS, "schedule.name": config.SCHEDULES,
        "train.precision": config.PRECISIONS, "train.mode": config.MODES,
        "train.channels_last": config.TOGGLES, "data.on_device": config.TOGGLES,
        "log.progress": config.PROGRESS, "checkpoint.resume": config.RESUME,
        "distributed.strategy": config.STRATEGIES,
    }  # fmt: skip
    out = [
        "# Options",
        "",
        "Every recipe key, by section, with its default. In a recipe they are TOML keys of the",
        "section (`[optim]` then `lr = 3e-3`); on the command line `--set optim.lr=3e-3`; from",
        "Python the `fit()` keyword of the same name where one exists (`fit(lr=3e-3)`, see",
        "docs/api.md) or any key whose name is unique across sections",
        "(`fit(label_smoothing=0.1)`).",
        "",
        "Top-level keys: `name` (the run's name; the CLI's default run directory is `runs/NAME`),",
        "`description`, `reference` (the published result a recipe reproduces).",
        "",
        "This file is generated from `src/surefit/config.py` by `scripts/gen_options.py`.",
    ]
    for section, cls in config.SECTIONS.items():
        prefix = cls.__name__.removesuffix("Config")
        out += [
            "",
            f"## [{section}]",
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = comment.get((prefix, f.name), "")
            key = f"{section}.{f.name}"
            if key in choices:
                text += "; one of: " + ", ".join(f"`{c}`" for c in choices[key])
            shown = str(default).lower() if isinstance(default, bool) else repr(default)
            out.append(f"| `{key}` | {f.type} | `{shown}` | {text.replace('|', '/')} |")
    out += [
        "",
        "## Schedule units",
        "",
        "Each schedule steps in its own unit; the user never places `scheduler.step()`:",
        "",
        "- per optimizer step: `constant`, `cosine`, `warmup_cosine`, `warmup_linear`, `onecycle`,",
        "  `cosine_restarts` (total length = epochs x optimizer steps per epoch, capped by",
        "  `train.max_steps`);",
        "- per epoch: `step`, `multistep`, `exponential`;",
        "- per evaluation, with the monitored metric: `plateau` (needs a validation set).",
        "",
        "`warmup_cosine` and `warmup_linear` rise linearly over the `warmup` steps (the first",
        "update at peak / warmup, the last warmup update at the peak), then fall at every step",
        "to `min_lr_ratio` x the peak at the last update; `cosine` falls from the peak at the",
        "first update. `onecycle` rises over the `warmup` steps (at least two; torch's 30 % of",
        "the run when `warmup` is 0), then anneals to far below the peak; its momentum (SGD's",
        "`momentum`, Adam's first beta) falls from the configured value by 0.1 as the rate",
        "rises and comes back as it falls (torch's 0.95 to 0.85, around the run's own value);",
        "an optimizer without momentum, or at momentum 0, keeps it. `cosine_restarts`",
        "falls from each group's rate to `min_lr_ratio` x that rate over `restart_steps` (an",
        "epoch when 0; a training set without a length needs `restart_steps`), then starts",
        "again, each cycle `restart_mult` times longer. `multistep` needs its `milestones`.",
        "",
        "An optimizer object an earlier `fit` ran starts again from that schedule's base rates",
        "(as torch's schedulers do), unless a group's `lr` was set to another value since:",
        "then from that value. A resumed run takes the rate of its first step from this run's",
        "shape at the checkpoint's position (an extended run's longer decay from its first",
        "resumed step).",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    (ROOT / "docs" / "options.md").write_text(render())
