"""Token-budget batches: examples of similar length grouped so that padding stays small.

One cost model serves training and translation: a batch costs its rows times its costliest
example, and grows while that stays within the budget. For training an example costs
max(source length, target length + 1) padded tokens (the +1 for BOS/EOS) and the plan is
shuffled with a seeded generator each epoch; for search it costs its source length times the
search rows it holds (the beam). A plan is computed from numpy length arrays alone; a batch's ids
are gathered from the corpus's Arrow table when the batch is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from nmt.errors import NmtError
from nmt.vocab import BOS, EOS, PAD

if TYPE_CHECKING:  # nmt.data brings pyarrow, which translation does not need
    from nmt.bpe_dropout import BpeDropout
    from nmt.data import EncodedCorpus, IdColumn


def index_dtype(size: int) -> type[np.signedinteger]:
    return np.int32 if size < 2**31 else np.int64


@dataclass
class Batch:
    """Padded id tensors; `tgt_in` starts with BOS, `tgt_out` ends with EOS."""

    src: torch.Tensor  # (B, S)
    src_len: torch.Tensor  # (B,) on CPU, for packing
    tgt_in: torch.Tensor  # (B, T)
    tgt_out: torch.Tensor  # (B, T)

    @property
    def target_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.src.to(device), self.src_len, self.tgt_in.to(device), self.tgt_out.to(device))


def plan_batches(
    src_len: np.ndarray, tgt_len: np.ndarray, batch_tokens: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Group example indices into batches of at most `batch_tokens` padded tokens.

    Examples are sorted by (target, source) length, ties broken at random, and cut greedily,
    so each batch holds examples of near-equal length; the batch order is then shuffled.
    A batch costs rows * max(longest source, longest target + 1), the +1 for BOS/EOS.
    Everything is numpy over the length arrays: about a second for millions of examples.
    """
    cost = np.maximum(src_len, tgt_len + 1)
    if len(cost) and cost.max() > batch_tokens:
        raise NmtError(
            f"a sentence of {int(cost.max())} tokens does not fit batch_tokens={batch_tokens}; "
            "raise batch_tokens or lower data.max_length"
        )
    order = rng.permutation(len(cost)).astype(index_dtype(len(cost)))
    if not len(order):
        return []
    # target length first: the decoder's time loop is the expensive part, padding there costs most
    order = order[np.argsort(_length_key(tgt_len[order], src_len[order]), kind="stable")]
    batches = np.split(order, _greedy_cuts(cost[order], batch_tokens))
    rng.shuffle(batches)
    return batches


def _length_key(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """One integer per example ordering like (major, minor); a stable sort on it equals
    np.lexsort((minor, major)), and is a radix sort when the key fits 16 bits."""
    width = int(minor.max()) + 1
    top = (int(major.max()) + 1) * width
    dtype = np.int16 if top < 2**15 else np.int32 if top < 2**31 else np.int64
    return major.astype(dtype) * dtype(width) + minor.astype(dtype)


def _greedy_cuts(cost: np.ndarray, budget: int) -> list[int]:
    """Where examples in this order are cut into batches: a batch grows while its rows times
    its largest cost stay within the budget."""
    cuts, start = [], 0
    while start < len(cost):
        # rows * cost[start] <= budget bounds the batch, so the next example to look at is the last
        window = cost[start : start + budget // int(cost[start]) + 1]
        fits = np.maximum.accumulate(window) * np.arange(1, len(window) + 1) <= budget
        # an example over the budget on its own still makes a batch (translation allows that)
        start += len(window) if fits.all() else max(int(np.argmin(fits)), 1)
        cuts.append(start)
    return cuts[:-1]


def length_batches(cost: np.ndarray, budget: int) -> list[np.ndarray]:
    """Indices sorted by cost (stable), cut so rows x costliest <= budget; an example over the budget
    goes alone. For search, where the order of batches does not matter."""
    order = np.argsort(cost, kind="stable")
    return np.split(order, _greedy_cuts(cost[order], budget)) if len(order) else []


def epoch_batches(corpus: EncodedCorpus, batch_tokens: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batch plan of one epoch: the same for the same seed and epoch, different across epochs."""
    src_len, tgt_len = corpus.lengths()
    return plan_batches(src_len, tgt_len, batch_tokens, np.random.default_rng([seed, epoch]))


def padded_ids(column: IdColumn, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The ids of table rows `rows` of a column, (n, longest of `lengths`), PAD after each row's ids."""
    ids = np.full((len(rows), int(lengths.max(initial=0))), PAD, dtype=np.int64)
    column.fill(ids, rows, first=0)
    return ids


def make_batch(corpus: EncodedCorpus, indices: np.ndarray, bpe_dropout: BpeDropout | None = None) -> Batch:
    """The padded batch of examples `indices`, gathered from the table with numpy; `bpe_dropout`
    splits its subwords (training)."""
    indices = np.asarray(indices, dtype=np.int64)
    rows = corpus.rows[indices]
    src_len, tgt_len = corpus.src_len[indices].astype(np.int64), corpus.tgt_len[indices].astype(np.int64)
    src, tgt = padded_ids(corpus.src, rows, src_len), padded_ids(corpus.tgt, rows, tgt_len)
    # pages read from a memory-mapped table would otherwise add up to the whole corpus over an epoch
    corpus.release()
    if bpe_dropout is not None:
        src, src_len, tgt, tgt_len = bpe_dropout(src, src_len, tgt, tgt_len)
    tgt_in = np.concatenate([np.full((len(rows), 1), BOS), tgt], axis=1)
    tgt_out = np.concatenate([tgt, np.full((len(rows), 1), PAD)], axis=1)
    tgt_out[np.arange(len(rows)), tgt_len] = EOS
    return Batch(torch.from_numpy(src), torch.from_numpy(src_len), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out))
