"""BPE-dropout on the stored subword ids of training batches (after Provilkov et al., 2020).

Each subword of a batch is split, with probability p, back into the two pieces whose BPE merge
made it, and each of those again with probability p, and so on: the model sees the words of its
training text in many segmentations, and learns the pieces inside frequent words too. The
original drops each merge while a word is merged up from its characters, which can also reach
segmentations off the deterministic one's merge tree; walking that tree down works on the ids the
prepared-corpus cache stores, costs numpy work per batch, and draws from torch's generator, so a
resumed run draws the same splits. A piece stays whole when either part is not in its side's
vocabulary (it would train <unk>).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from nmt.tokenization import TextPipeline, bpe_merges
from nmt.vocab import PAD, UNK


def merge_table(pipeline: TextPipeline) -> np.ndarray:
    """(V, 2) int64: the vocabulary ids of the two pieces whose merge made each piece; -1 for pieces
    no merge made (characters, specials) or whose parts are not both in the vocabulary."""
    parts: dict[str, tuple[str, str]] = {}
    for left, right in bpe_merges(json.loads(pipeline.bpe.to_str())["model"]):
        parts.setdefault(left + right, (left, right))  # the first merge making a piece is the one BPE applies
    table = np.full((pipeline.vocab_size, 2), -1, dtype=np.int64)
    for index, piece in enumerate(pipeline.vocab.pieces):
        ids = pipeline.vocab.ids(parts.get(piece, ()))
        if len(ids) == 2 and UNK not in ids:
            table[index] = ids
    return table


def split_pieces(tokens: np.ndarray, lengths: np.ndarray, table: np.ndarray, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Padded ids (B, T) and their lengths (B,) -> the rows with each piece split along `table` with
    probability p, recursively, padded again, and their new lengths."""
    rows = np.repeat(np.arange(len(lengths)), lengths)  # (N,) the row of each real token
    flat = tokens[np.arange(tokens.shape[1]) < lengths[:, None]]  # (N,) the real tokens, row after row
    live = table[flat, 0] >= 0  # pieces whose split is still to be drawn
    while live.any():
        chosen = np.zeros(len(flat), dtype=bool)
        chosen[live] = torch.rand(int(live.sum())).numpy() < p
        parts = table[flat[chosen]]  # (splits, 2)
        repeats = 1 + chosen.astype(np.int64)
        left = (np.cumsum(repeats) - repeats)[chosen]  # where each split piece's left part lands
        flat, rows = np.repeat(flat, repeats), np.repeat(rows, repeats)
        flat[left], flat[left + 1] = parts[:, 0], parts[:, 1]
        live = np.zeros(len(flat), dtype=bool)
        live[left] = live[left + 1] = True  # only the new parts are drawn for again
        live &= table[flat, 0] >= 0
    lengths = np.bincount(rows, minlength=len(lengths))
    out = np.full((len(lengths), lengths.max(initial=0)), PAD, dtype=tokens.dtype)
    out[np.arange(out.shape[1]) < lengths[:, None]] = flat
    return out, lengths


class BpeDropout:
    """data.bpe_dropout of a model's two sides: `(src, src_len, tgt, tgt_len)` of a batch, split."""

    def __init__(self, src: TextPipeline, tgt: TextPipeline, p: float) -> None:
        self.p = p
        self.tables = (merge_table(src), merge_table(tgt))

    def __call__(
        self, src: np.ndarray, src_len: np.ndarray, tgt: np.ndarray, tgt_len: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        src, src_len = split_pieces(src, src_len, self.tables[0], self.p)
        tgt, tgt_len = split_pieces(tgt, tgt_len, self.tables[1], self.p)
        return src, src_len, tgt, tgt_len
