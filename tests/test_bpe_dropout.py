"""BPE-dropout on stored ids: the words stay, their pieces split along BPE's merges, as often as p says."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from nmt.batching import make_batch
from nmt.bpe_dropout import BpeDropout, merge_table, split_pieces
from nmt.cache import prepare
from nmt.tokenization import TextPipeline, learn_bpe
from nmt.vocab import Vocabulary


@pytest.fixture(scope="module")
def pipeline() -> TextPipeline:
    lines = ["the cat sat on the mat", "the cats ate the rat", "a theme of that hat"] * 3
    bpe = learn_bpe(lines, 60, 1)
    return TextPipeline("en", bpe, Vocabulary.build([list(bpe.get_vocab())]))  # every piece BPE knows


def encoded(pipeline: TextPipeline, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = pipeline.encode(lines)
    tokens = np.zeros((len(rows), max(map(len, rows))), dtype=np.int64)
    for index, row in enumerate(rows):
        tokens[index, : len(row)] = row
    return tokens, np.array([len(row) for row in rows])


def test_the_merge_table_holds_the_two_pieces_that_make_each_piece(pipeline: TextPipeline) -> None:
    table, pieces = merge_table(pipeline), pipeline.vocab.pieces
    split = np.flatnonzero(table[:, 0] >= 0)
    assert len(split) and all(pieces[table[i, 0]] + pieces[table[i, 1]] == pieces[i] for i in split)
    assert (table[[i for i, piece in enumerate(pieces) if len(piece) == 1], 0] == -1).all()  # characters


@pytest.mark.parametrize("p", [0.0, 0.3, 0.9])
def test_splitting_keeps_the_words_and_p_zero_keeps_the_pieces(pipeline: TextPipeline, p: float) -> None:
    lines = ["the cat sat on the mat", "that theme", "the rat"]
    tokens, lengths = encoded(pipeline, lines)
    torch.manual_seed(0)
    split, split_lengths = split_pieces(tokens, lengths, merge_table(pipeline), p)
    words = [pipeline.words(row[:n]) for row, n in zip(split.tolist(), split_lengths)]
    assert words == [line.split() for line in lines]
    assert (split_lengths >= lengths).all() and (split[np.arange(split.shape[1]) >= split_lengths[:, None]] == 0).all()
    if p == 0.0:
        assert np.array_equal(split, tokens)
    else:
        assert (split_lengths > lengths).any()


def test_each_piece_splits_with_probability_p_and_the_seed_repeats_the_draws(pipeline: TextPipeline) -> None:
    table = merge_table(pipeline)
    splittable = int(np.flatnonzero(table[:, 0] >= 0)[0])
    tokens, lengths = np.full((1, 20000), splittable), np.array([20000])
    torch.manual_seed(5)
    split, split_lengths = split_pieces(tokens, lengths, table, 0.25)
    left, right = table[splittable]
    # the first split of each piece is drawn with p; what its parts do afterwards is their own draw
    assert split_lengths[0] > 20000
    kept = np.count_nonzero(split[0] == splittable)
    assert abs(kept / 20000 - 0.75) < 0.015
    torch.manual_seed(5)
    again, _ = split_pieces(tokens, lengths, table, 0.25)
    assert np.array_equal(split, again) and {left, right} & set(split[0].tolist())


def test_training_batches_split_while_the_text_stays_the_same() -> None:
    cfg = tiny_config()
    data = prepare(cfg.data)
    indices = np.arange(40)
    plain = make_batch(data.train, indices)
    torch.manual_seed(0)
    dropped = make_batch(data.train, indices, BpeDropout(data.src_pipeline, data.tgt_pipeline, 0.5))
    assert dropped.src.shape[1] > plain.src.shape[1] and dropped.tgt_in.shape[1] > plain.tgt_in.shape[1]
    for side, pipe, ids, n in (
        ("src", data.src_pipeline, dropped.src, dropped.src_len),
        ("tgt", data.tgt_pipeline, dropped.tgt_in[:, 1:], (dropped.tgt_out != 0).sum(dim=1) - 1),
    ):
        before = getattr(data.train, f"{side}_ids")
        assert [pipe.decode(row[:k]) for row, k in zip(ids.tolist(), n.tolist())] == [
            pipe.decode(before[i]) for i in indices
        ]
    assert (dropped.tgt_in[:, 0] == 2).all() and (dropped.tgt_out[:, :-1][dropped.tgt_in[:, 1:] != 0] != 0).all()
