"""Pictures of a run: training curves from metrics.jsonl, and attention heatmaps.

    python -m nmt.plot runs/ende                 # writes runs/ende/plots/{loss,perplexity,bleu,lr}.png
    python -m nmt.plot runs/ende -o figures/

Each curve figure has two panels, the quantity against update steps and against training wall
time (minutes, summed over resumes). Figures are drawn on matplotlib's Agg canvas, so no display
is needed; `curve_figures` and `attention_figure` return figures and only `main` writes files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nmt.errors import NmtError, exit_on_user_error
from nmt.files import atomic_output
from nmt.tokenization import END_OF_WORD
from nmt.vocab import SPECIAL_TOKENS

# file name -> title, y-axis label, log scale, and the curves: (metrics.jsonl key, legend label)
CURVES: dict[str, tuple[str, str, bool, list[tuple[str, str]]]] = {
    "loss": ("loss", "nats per target token", False, [("loss", "training"), ("valid_loss", "validation")]),
    "perplexity": ("perplexity", "perplexity", True, [("ppl", "training"), ("valid_ppl", "validation")]),
    "bleu": ("validation BLEU and chrF (greedy)", "score", False, [("valid_bleu", "BLEU"), ("valid_chrf", "chrF")]),
    "lr": ("learning rate", "learning rate", False, [("lr", "learning rate")]),
}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a cut-off last line (a run still writing) is left out."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NmtError(f"{path}: not found; give the folder of a run of python -m nmt.train") from None
    except OSError as error:
        raise NmtError(f"{path}: cannot read ({error})") from None
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise NmtError(f"{path}:{number}: not a metrics record (a JSON object with a step)") from None
        records.append(record)
    if not records:
        raise NmtError(
            f"{path}: no records yet; training writes one every train.log_every steps and at each validation"
        )
    return records


def resumed_history(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the run as it finally went: a resumed run repeats the steps after its last
    checkpoint, and the later records of those steps replace the earlier ones."""
    kept: dict[bool, list[dict[str, Any]]] = {False: [], True: []}  # by: is a validation record
    for record in records:
        series = kept["valid_loss" in record]
        while series and series[-1]["step"] >= record["step"]:
            series.pop()
        series.append(record)
    return sorted(kept[False] + kept[True], key=lambda record: record["step"])


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # the Agg canvas: PNGs without a display or pyplot's global state
    return figure


def curve_figures(records: Sequence[dict[str, Any]], title: str = "") -> dict[str, Figure]:
    """Figures for loss, perplexity, validation BLEU/chrF and learning rate (those with data),
    each against steps and, where the records carry `minutes`, against wall time."""
    history = resumed_history(records)
    timed = all("minutes" in record for record in history)
    figures = {}
    for name, (heading, ylabel, log_scale, curves) in CURVES.items():
        present = [(key, label) for key, label in curves if any(key in record for record in history)]
        if not present:
            continue
        figure = _figure(11 if timed else 6, 3.8)
        axes = figure.subplots(1, 2 if timed else 1, squeeze=False)[0]
        for axis, x_key, x_label in zip(axes, ("step", "minutes"), ("update steps", "training wall time (minutes)")):
            for key, label in present:
                points = [(record[x_key], record[key]) for record in history if key in record]
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=label)
            axis.set_xlabel(x_label)
            axis.set_ylabel(ylabel)
            axis.set_yscale("log" if log_scale else "linear")
            axis.grid(alpha=0.3)
            if len(present) > 1:
                axis.legend()
        figure.suptitle(f"{title}: {heading}" if title else heading)
        figures[name] = figure
    return figures


def display_piece(piece: str) -> str:
    """A BPE piece as people read subwords: "hou" -> "hou@@" (the word goes on), "se</w>" -> "se"."""
    if piece in SPECIAL_TOKENS:
        return piece
    return piece.removesuffix(END_OF_WORD) if piece.endswith(END_OF_WORD) else piece + "@@"


def attention_figure(
    weights: np.ndarray, src_pieces: Sequence[str], tgt_pieces: Sequence[str], title: str = ""
) -> Figure:
    """A heatmap of attention weights (len(tgt_pieces) [+ 1 for EOS], len(src_pieces)): source
    pieces along the top, target pieces down the side, darker = more attention."""
    rows, columns = weights.shape
    if columns != len(src_pieces) or rows not in (len(tgt_pieces), len(tgt_pieces) + 1):
        raise ValueError(f"attention {weights.shape} does not fit {len(src_pieces)} source, {len(tgt_pieces)} target")
    tgt_labels = [display_piece(piece) for piece in tgt_pieces] + ["</s>"] * (rows - len(tgt_pieces))
    figure = _figure(min(2.5 + 0.32 * columns, 40), min(1.6 + 0.3 * rows, 40))
    axis = figure.subplots()
    image = axis.imshow(weights, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    axis.set_xticks(range(columns), [display_piece(piece) for piece in src_pieces], rotation=90)
    axis.set_yticks(range(rows), tgt_labels)
    axis.xaxis.tick_top()
    axis.tick_params(length=0)
    figure.colorbar(image, ax=axis, fraction=0.04, pad=0.02, label="attention")
    if title:
        axis.set_title(title, fontsize="medium")
    return figure


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nmt.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder of python -m nmt.train (holds metrics.jsonl)")
    parser.add_argument("-o", "--output-dir", type=Path, help="where the PNGs go (default: RUN_DIR/plots)")
    return parser


def write_curves(run_dir: Path, out_dir: Path) -> list[Path]:
    figures = curve_figures(read_metrics(run_dir / "metrics.jsonl"), title=run_dir.name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NmtError(f"{out_dir}: cannot create the output folder ({error})") from None
    written = []
    for name, figure in figures.items():
        path = out_dir / f"{name}.png"
        with atomic_output(path, "wb", into_special_files=False) as file:
            figure.savefig(file, format="png")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    for path in exit_on_user_error(lambda: write_curves(args.run_dir, args.output_dir or args.run_dir / "plots")):
        print(path, file=sys.stdout)


if __name__ == "__main__":
    main()
