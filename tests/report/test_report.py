"""`surefit report` on tiny real runs: the plots, their marks, and a self-contained page."""

from __future__ import annotations

import base64
import json
import shutil
from html.parser import HTMLParser

import pytest

from surefit import report
from surefit.cli import main
from surefit.errors import ConfigError
from tests.cli.test_cli import python
from tests.report.conftest import RESUMED_AT

PLOTS = {"loss.png", "metrics.png", "lr.png", "grad_norm.png", "throughput.png"}
PNG = b"\x89PNG\r\n\x1a\n"


def _marks(fig, label: str) -> list[float]:
    """x of the vertical lines whose legend label starts with ``label``, over all panels."""
    return [
        line.get_xdata()[0]
        for ax in fig.axes
        for line in ax.lines
        if line.get_label().startswith(label)
    ]


def test_report_command_writes_every_plot_and_the_page_without_torch(resumed_run, tmp_path):
    run_dir, _ = resumed_run
    r = python(
        tmp_path,
        "import sys\nfrom surefit.cli import main\n"
        f"assert main(['report', {str(run_dir)!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'report imported torch'\n",
    )
    assert r.returncode == 0, r.stderr
    assert {p.name for p in (run_dir / "plots").glob("*.png")} == PLOTS
    for name in PLOTS:
        path = run_dir / "plots" / name
        assert path.read_bytes().startswith(PNG)
        assert f"wrote {path}" in r.stdout
    assert f"wrote {run_dir / 'report.html'}" in r.stdout


def test_a_resumed_run_is_one_line_with_its_resume_point_marked(resumed_run):
    run_dir, result = resumed_run
    run = report.read_run(run_dir)
    steps = [r["step"] for r in run.train]
    assert steps == list(range(1, result.steps + 1))  # every step once, across both segments
    assert run.marks("resume") == [RESUMED_AT]
    for draw in (report.draw_loss, report.draw_lr, report.draw_grad_norm, report.draw_throughput):
        fig = draw(run)
        assert _marks(fig, "resume") == [RESUMED_AT], draw.__name__
        assert _marks(fig, "skipped step") == [7], draw.__name__
        assert _marks(fig, "rollback") == [15], draw.__name__
    (loss,) = [
        ln for ln in report.draw_loss(run).axes[0].lines if "per logged step" in ln.get_label()
    ]
    assert list(loss.get_xdata()) == steps
    # per epoch, the resume point sits halfway between epoch 1 (step 6) and epoch 2 (step 12)
    panels = report.draw_metrics(run).axes
    assert len(panels) >= 2  # loss, accuracy
    assert _marks(report.draw_metrics(run), "resume") == [pytest.approx(1.5)] * len(panels)


def test_one_line_lets_a_later_segment_replace_what_it_repeats():
    records = [{"step": s, "v": "a"} for s in range(1, 11)] + [
        {"step": s, "v": "b"} for s in range(6, 16)
    ]
    line, replaced = report.one_line(records)
    assert [r["step"] for r in line] == list(range(1, 16))
    assert [r["v"] for r in line] == ["a"] * 5 + ["b"] * 10
    assert [(r["step"], r["v"]) for r in replaced] == [(s, "a") for s in range(6, 11)]


def test_steps_taken_again_after_a_rollback_are_drawn_apart(tmp_path):
    lines = [{"step": s, "train_loss": 1.0} for s in range(1, 6)]
    lines += [{"step": 6, "train_loss": 50.0}]  # the spike, then back to step 4
    lines += [{"step": s, "train_loss": 0.9} for s in range(5, 9)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "events.jsonl").write_text(json.dumps({"event": "rollback", "step": 6}) + "\n")
    run = report.read_run(tmp_path)
    ax = report.draw_loss(run).axes[0]
    by_label = {ln.get_label(): ln for ln in ax.lines}
    assert list(by_label["train loss (per logged step)"].get_xdata()) == list(range(1, 9))
    assert list(by_label["train loss, steps taken again"].get_ydata()) == [1.0, 50.0]
    assert _marks(report.draw_loss(run), "rollback") == [6]


def test_grad_norm_histogram_shows_the_clip_threshold_and_fraction(resumed_run):
    run_dir, _ = resumed_run
    run = report.read_run(run_dir)
    norms = [r["grad_norm"] for r in run.train]
    expected = sum(n > 0.5 for n in norms) / len(norms)  # log_every=1: each line is one step
    assert 0 < expected < 1
    assert report.clip_fraction(run) == pytest.approx(expected)
    hist = report.draw_grad_norm(run).axes[0]
    (clip,) = [ln for ln in hist.lines if ln.get_label().startswith("clip_norm 0.5")]
    assert clip.get_xdata()[0] == 0.5
    assert f"clipped in {100 * expected:.1f} % of steps" in clip.get_label()
    assert sum(p.get_height() for p in hist.patches) == len(norms)


def test_missing_keys_and_odd_lines_are_left_out_not_errors(tmp_path):
    run_dir = tmp_path / "partial"
    run_dir.mkdir()
    lines = [
        {"step": 1, "loss": 2.0},  # a per-step line with its own key names
        {"step": 2, "loss": 1.5, "grad_norm": 3.0, "clip_frac": 1.0},
        {"split": "eval", "step": 2, "epoch": 1, "val_loss": 1.7},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "lo'  # cut by a crash
    (run_dir / "metrics.jsonl").write_text(text)
    page, plots = report.write_report(run_dir)
    assert {p.name for p in plots} == {"loss.png", "grad_norm.png"}
    run = report.read_run(run_dir)
    assert [r["step"] for r in run.train] == [1, 2]
    assert report.clip_fraction(run) == pytest.approx(1.0)  # two steps covered, one measured
    assert "No config.toml" in page.read_text()


def test_damaged_config_manifest_and_events_are_left_out_not_errors(tmp_path):
    (tmp_path / "config.toml").write_bytes(b"\xff\xfe name = 1\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 4, "train_loss": 1.0}\n')
    (tmp_path / "events.jsonl").write_text('{"event": "start", "time": NaN, "step": 0}\n')
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "MANIFEST.json").write_text('{"checkpoints": [1, "a"]}')
    (tmp_path / "steps.jsonl").write_text("".join(f'{{"step": {i}}}\n' for i in range(1, 8)))
    page, _ = report.write_report(tmp_path)
    assert "7 optimizer steps" in page.read_text()  # steps.jsonl knows more than the log lines
    # a manifest not UTF-8, a resume at a NaN step, a clip flag that is not a bool
    (tmp_path / "checkpoints" / "MANIFEST.json").write_bytes(b"\xff\xfe")
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write('{"event": "resume", "time": 1.0, "step": NaN}\n')
    with (tmp_path / "steps.jsonl").open("a") as f:
        f.write('{"step": 8, "clipped": "yes", "grad_norm": 1.0}\n')
    page, _ = report.write_report(tmp_path)
    assert "8 optimizer steps" in page.read_text()


def test_the_best_evaluation_is_the_one_the_run_chose_with_min_delta(tmp_path):
    (tmp_path / "config.toml").write_text("[train]\nmin_delta = 0.05\n")
    evals = [(1, 1.0), (2, 0.9), (3, 0.87), (4, 0.84), (5, 0.83)]
    lines = [json.dumps({"split": "eval", "step": s, "val_loss": v}) + "\n" for s, v in evals]
    (tmp_path / "metrics.jsonl").write_text("".join(lines))
    assert report.read_run(tmp_path).best_eval()["step"] == 4  # 0.87 and 0.83 improve < 0.05


def test_an_empty_run_directory_still_gets_a_page(tmp_path):
    (tmp_path / "config.toml").write_text('name = "empty"\n')
    page, plots = report.write_report(tmp_path)
    assert plots == []
    assert "Nothing was logged to plot yet" in page.read_text()


def test_report_of_something_that_is_not_a_run_exits_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "not a surefit run directory" in err and "fix:" in err


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in ("src", "href", "srcset")]


def test_the_page_is_self_contained(resumed_run, written, tmp_path):
    _, result = resumed_run
    page, plots = written
    # moved away from its run directory, the page still has everything
    moved = tmp_path / "elsewhere.html"
    shutil.copyfile(page, moved)
    text = moved.read_text()
    parser = _Links()
    parser.feed(text)
    assert "script" not in parser.tags
    assert all(v.startswith("data:") for _, _, v in parser.refs), parser.refs
    images = [v for tag, k, v in parser.refs if tag == "img"]
    assert len(images) == len(plots) == len(PLOTS)
    inlined = {base64.b64decode(v.split(",", 1)[1]) for v in images}
    assert inlined == {p.read_bytes() for p in plots}
    assert "url(" not in text and "@import" not in text
    # config, best and final metrics, and events are on it
    best = result.best_metrics
    assert f"best evaluation (step {best['step']})" in text
    assert report.fmt(best["val_loss"]) in text
    assert "optim" in text and "clip_norm = 0.5" in text
    for event in ("start", "resume", "skip", "rollback", "end"):
        assert f"<td>{event}</td>" in text
    assert f"resumed at step {RESUMED_AT}" in text


def test_a_plot_that_cannot_be_written_is_a_config_error(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (tmp_path / "afile").write_text("mine")
    fig = plt.figure()
    try:
        with pytest.raises(ConfigError, match="cannot write"):
            report.save_png(fig, tmp_path / "afile" / "x.png")  # under a file
    finally:
        plt.close(fig)
    assert (tmp_path / "afile").read_text() == "mine"
