"""`python -m nmt.plot`: training curves from metrics.jsonl, attention heatmaps, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from nmt import plot
from nmt.errors import NmtError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image


def test_plot_command_writes_curves_of_a_real_run(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = trained_checkpoint.parent.parent
    plot.main([str(run_dir), "-o", str(tmp_path / "plots")])
    names = ["loss", "perplexity", "bleu", "lr"]
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "plots" / f"{name}.png") for name in names]
    for name in names:
        image = assert_png(tmp_path / "plots" / f"{name}.png")
        # two panels side by side (steps, wall time): 11 x 3.8 inches at 100 dpi
        assert image.shape[:2] == (380, 1100)


def test_plot_defaults_to_the_run_folder(trained_checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_bytes((trained_checkpoint.parent.parent / "metrics.jsonl").read_bytes())
    plot.main([str(run_dir)])
    assert sorted(path.name for path in (run_dir / "plots").iterdir()) == [
        "bleu.png", "loss.png", "lr.png", "perplexity.png"
    ]  # fmt: skip


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_missing_or_empty_metrics_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, content: str | None
) -> None:
    if content is not None:
        (tmp_path / "metrics.jsonl").write_text(content)
    with pytest.raises(SystemExit) as stopped:
        plot.main([str(tmp_path)])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "metrics.jsonl") in err
    assert not (tmp_path / "plots").exists()


def test_a_cut_off_last_line_is_skipped_but_a_bad_line_inside_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')  # a run still writing
    assert plot.read_metrics(path) == [{"step": 1, "loss": 2.0}]
    path.write_text('{"step": 1, "loss": 2.0}\nnot json\n{"step": 2, "loss": 1.0}\n')
    with pytest.raises(NmtError, match=r"metrics.jsonl:2: not a metrics record"):
        plot.read_metrics(path)


def test_a_resumed_run_keeps_the_records_written_after_the_resume() -> None:
    records = [
        {"step": 100, "loss": 5.0},
        {"step": 127, "valid_loss": 4.0},
        {"step": 200, "loss": 4.0},  # lost: the run was killed here and resumed from step 127
        {"step": 200, "loss": 3.9},
        {"step": 254, "valid_loss": 3.5},
    ]
    assert plot.resumed_history(records) == [records[0], records[1], records[3], records[4]]


def test_curves_without_wall_time_have_one_panel_and_figures_without_data_are_left_out() -> None:
    records = [{"step": 10, "loss": 3.0, "ppl": 20.0, "lr": 0.001}, {"step": 20, "loss": 2.0, "ppl": 7.4, "lr": 0.001}]
    figures = plot.curve_figures(records)
    assert sorted(figures) == ["loss", "lr", "perplexity"]  # no validation records: no BLEU figure
    assert len(figures["loss"].axes) == 1
    line = figures["loss"].axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [10, 20] and list(line.get_ydata()) == [3.0, 2.0]


def test_attention_figure_labels_pieces_and_checks_shapes(tmp_path: Path) -> None:
    weights = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    figure = plot.attention_figure(weights, ["hou", "se</w>"], ["Ha", "us</w>"], title="line 1")
    axis = figure.axes[0]
    assert [label.get_text() for label in axis.get_xticklabels()] == ["hou@@", "se"]
    assert [label.get_text() for label in axis.get_yticklabels()] == ["Ha@@", "us", "</s>"]
    figure.savefig(tmp_path / "map.png")
    assert_png(tmp_path / "map.png")
    with pytest.raises(ValueError, match="does not fit"):
        plot.attention_figure(weights, ["a"], ["b", "c"])
