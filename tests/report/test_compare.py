"""`surefit compare`: one overlay PNG, the best metrics of each run, the config keys that differ."""

from __future__ import annotations

from surefit import compare as cmp
from surefit.cli import main
from surefit.report import fmt, read_run


def _rows(text: str, section: str) -> list[list[str]]:
    lines = text.split(f"{section}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [line.split() for line in lines]


def test_compare_prints_best_metrics_and_config_differences(resumed_run, other_run, tmp_path):
    (a, result_a), (b, result_b) = resumed_run, other_run
    out = tmp_path / "both.png"
    png, text = cmp.compare([a, b], out)
    assert png == out and out.read_bytes().startswith(b"\x89PNG")
    header, *rows = _rows(text, "best metrics")
    assert header[:4] == ["run", "monitor", "best", "step"]  # "best step" is one column
    for row, result in zip(rows, (result_a, result_b), strict=True):
        best = result.best_metrics
        assert row[0] == result.run_dir.name
        assert row[1:3] == ["val_loss", "(min)"]
        assert row[3] == str(best["step"])
        assert row[4:] == [fmt(best[k]) for k in header[4:]]
    assert header[4:] == ["val_loss", "val_accuracy"]
    diffs = dict(cmp.config_differences([read_run(a), read_run(b)]))
    assert diffs == {"log.every_steps": ["1", "2"], "optim.lr": ["0.05", "0.2"]}
    assert "train.run_dir" not in text  # differs in every comparison, says nothing
    assert _rows(text, "config differences")[1:] == [
        ["log.every_steps", "1", "2"],
        ["optim.lr", "0.05", "0.2"],
    ]


def test_compare_of_runs_that_agree_says_so(resumed_run):
    run = read_run(resumed_run[0])
    assert cmp.config_differences([run, run]) == []


def test_same_folder_names_are_told_apart_by_path(tmp_path):
    runs = []
    for parent in ("x", "y"):
        d = tmp_path / parent / "run"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text('{"step": 1, "train_loss": 1.0}\n')
        runs.append(read_run(d))
    assert cmp.labels(runs) == [str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")]


def test_compare_command(resumed_run, other_run, tmp_path, capsys):
    out = tmp_path / "c.png"
    assert main(["compare", str(resumed_run[0]), str(other_run[0]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best metrics" in printed and "optim.lr" in printed and f"wrote {out}" in printed
    assert out.is_file()
    assert main(["compare", str(resumed_run[0])]) == 2
    assert "at least two run directories" in capsys.readouterr().err
    # an --out naming one of a run's own files: refused, the file left as it was
    config = resumed_run[0] / "config.toml"
    kept = config.read_bytes()
    assert main(["compare", str(resumed_run[0]), str(other_run[0]), "--out", str(config)]) == 2
    assert "not a .png file" in capsys.readouterr().err and config.read_bytes() == kept
    assert main(["compare", str(resumed_run[0]), str(other_run[0]), "--out", str(out)]) == 0


def test_runs_without_validation_show_their_final_evaluation_as_fit_does(tmp_path):
    import surefit as sf
    from tests.conftest import make_classification, mlp

    x, y = make_classification(64)
    results = []
    for name, lr in (("a", 0.5), ("b", 0.05)):
        results.append(sf.fit(mlp(), (x, y), epochs=3, lr=lr, batch_size=16, progress="off",
                              run_dir=tmp_path / name))  # fmt: skip
    header, rows = cmp.best_rows([read_run(tmp_path / n) for n in ("a", "b")])
    for row, result in zip(rows, results, strict=True):
        assert result.best_step == -1  # no validation set: the run keeps no best
        assert row[2] == "- (final)"
        assert row[3:] == [fmt(result.best_metrics[k]) for k in header[3:]]
        assert result.best_metrics == result.final_metrics


def test_steps_per_epoch_read_off_epoch_end_and_every_n_steps_evaluations():
    from surefit.report import steps_per_epoch

    ends = [{"step": 10 * e, "epoch": e} for e in (1, 2, 3)]
    assert steps_per_epoch(ends) == 10
    # every 5 steps, 10 an epoch: an evaluation at an epoch's last step comes before that
    # epoch counts as completed
    every = [{"step": s, "epoch": (s - 1) // 10} for s in (5, 10, 15, 20, 25, 30)]
    assert steps_per_epoch(every, every_steps=True) == 10
