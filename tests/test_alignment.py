"""Attention maps and hard alignments (nmt/alignment.py) and what nmt-translate makes of them:
--alignments beside each translation, --attention-dir heatmaps, stdout holding only translations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from matplotlib.image import imread

from nmt import synthetic, translate
from nmt.alignment import AttentionMap, format_alignment
from nmt.config import DecodeConfig
from nmt.translator import Translator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def lines() -> list[str]:
    data = tiny_config().data
    source, _ = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)
    return [source[0], source[1], "", source[2], source[3]]  # a blank line in the middle


@pytest.fixture(scope="module")
def source_file(lines: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("attention") / "input.src"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def parse_pairs(field: str) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for i, j in (pair.split("-") for pair in field.split())]


def test_alignment_is_the_argmax_per_target_piece() -> None:
    weights = np.array([[0.1, 0.9, 0.0], [0.6, 0.2, 0.2], [0.0, 0.0, 1.0]])  # 2 pieces + the EOS row
    found = AttentionMap(["a", "b", "c"], ["x", "y"], weights)
    assert found.alignment() == [(1, 0), (0, 1)]
    assert format_alignment([i for i, _ in found.alignment()]) == "1-0 0-1"


@pytest.mark.parametrize("beam_size", [1, 3])
def test_forced_attention_reproduces_the_search_alignment(
    trained_checkpoint: Path, lines: list[str], beam_size: int
) -> None:
    """The heatmaps (read back through the model) and --alignments (kept by the search) agree."""
    translator = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=beam_size))
    sentences = [line for line in lines if line]
    for line in sentences:
        # one sentence at a time, as in the maps' first rows: the same shapes give the same floats
        (translation, *_), *_ = translator.translate([line])
        (found,) = translator.attention([line], [translation])
        ids = translator.src_pipeline.encode([line])[0]
        assert [i for i, _ in found.alignment()] == translation.alignment
        assert found.weights.shape == (len(translation.tokens) + 1, len(ids))
        assert np.allclose(found.weights.sum(axis=1), 1.0, atol=1e-5)
        assert found.src_pieces == translator.src_pipeline.segment([translator.src_pipeline.moses.tokenize(line)])[0]


def test_alignments_and_heatmaps_beside_unchanged_translations(
    trained_checkpoint: Path, lines: list[str], source_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model_args = ["-m", str(trained_checkpoint), "-i", str(source_file), "--beam-size", "3"]
    translate.main(model_args)
    plain = capsys.readouterr()
    heatmaps = tmp_path / "heatmaps"
    translate.main([*model_args, "--alignments", "--attention-dir", str(heatmaps)])
    out = capsys.readouterr()

    # stdout: exactly the translations, each followed by its alignment; progress only on stderr
    rows = out.out.split("\n")
    assert rows[-1] == "" and len(rows) - 1 == len(lines)
    assert [row.split("\t")[0] for row in rows[:-1]] == plain.out.splitlines()
    assert all(row.count("\t") == 1 for row in rows[:-1])
    assert "nmt-translate:" in out.err and "nmt-translate:" not in out.out

    translator = Translator.from_checkpoints([trained_checkpoint], DecodeConfig(beam_size=3))
    for line, row, hyps in zip(lines, rows, translator.translate(lines)):
        pairs = parse_pairs(row.split("\t")[1])
        if not line:
            assert pairs == []
            continue
        source_pieces = len(translator.src_pipeline.encode([line])[0])
        assert [j for _, j in pairs] == list(range(len(hyps[0].tokens)))  # one pair per target piece
        assert all(0 <= i < source_pieces for i, _ in pairs)

    # one heatmap per non-blank line, named by its 1-based line number
    assert sorted(path.name for path in heatmaps.iterdir()) == ["000001.png", "000002.png", "000004.png", "000005.png"]
    for path in heatmaps.iterdir():
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50


def test_nbest_alignments_are_a_fourth_field(
    trained_checkpoint: Path, lines: list[str], source_file: Path, capsys: pytest.CaptureFixture
) -> None:
    translate.main(
        ["-m", str(trained_checkpoint), "-i", str(source_file), "--beam-size", "3", "--nbest", "2", "--alignments"]
    )
    rows = capsys.readouterr().out.splitlines()
    assert {int(row.split(" ||| ")[0]) for row in rows} == set(range(len(lines)))
    for row in rows:
        number, _, _, field = row.split(" ||| ")
        pairs = parse_pairs(field)
        assert [j for _, j in pairs] == list(range(len(pairs)))
        assert (pairs == []) == (lines[int(number)] == "")


def test_stdout_is_untouched_without_the_new_options(
    trained_checkpoint: Path, source_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--attention-dir alone writes files and leaves stdout exactly the translations."""
    args = ["-m", str(trained_checkpoint), "-i", str(source_file), "--quiet"]
    translate.main(args)
    plain = capsys.readouterr()
    translate.main([*args, "--attention-dir", str(tmp_path / "maps")])
    with_maps = capsys.readouterr()
    assert with_maps.out == plain.out and "\t" not in with_maps.out
    assert with_maps.err == plain.err == ""
    assert len(list((tmp_path / "maps").glob("*.png"))) == 4
