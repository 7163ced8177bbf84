"""Subword vocabularies (special symbols with fixed ids first, then pieces by frequency) and padding."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
# Vocabulary sizes are rounded up to a multiple of 8 with pieces that never occur (BPE pieces
# hold no spaces): the output layer's fp32 products ran 4-50% faster on our benchmark CPU at a
# width of 5,688 than at 5,683, beam search 7% faster. They are never a training target, so
# training pushes their probability down like that of any wrong token.
SIZE_MULTIPLE = 8
FILLER = "<filler {}>"


class Vocabulary:
    """A bijection between pieces and ids; pieces it has not seen map to UNK."""

    def __init__(self, pieces: Sequence[str]) -> None:
        if tuple(pieces[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary starts with {SPECIAL_TOKENS}")
        self.pieces = list(pieces)
        self._ids = {piece: index for index, piece in enumerate(self.pieces)}

    @classmethod
    def build(cls, segmented: Iterable[Sequence[str]], min_count: int = 1) -> Vocabulary:
        """Pieces seen at least `min_count` times, most frequent first (ties alphabetical)."""
        return cls.from_counts(Counter(piece for pieces in segmented for piece in pieces), min_count)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int = 1) -> Vocabulary:
        """Pieces counted at least `min_count` times, most frequent first (ties alphabetical),
        then fillers up to a multiple of SIZE_MULTIPLE."""
        frequent = sorted(
            (p for p, n in counts.items() if n >= min_count and p not in SPECIAL_TOKENS), key=lambda p: (-counts[p], p)
        )
        size = len(SPECIAL_TOKENS) + len(frequent)
        fillers = [FILLER.format(i) for i in range(-size % SIZE_MULTIPLE)]
        return cls([*SPECIAL_TOKENS, *frequent, *fillers])

    def __len__(self) -> int:
        return len(self.pieces)

    def ids(self, pieces: Iterable[str]) -> list[int]:
        return [self._ids.get(piece, UNK) for piece in pieces]


def pad(sequences: Sequence[np.ndarray]) -> torch.Tensor:
    """Id sequences -> (B, longest) tensor, filled with PAD after each sequence's end."""
    out = np.full((len(sequences), max(len(ids) for ids in sequences)), PAD, dtype=np.int64)
    for row, ids in enumerate(sequences):
        out[row, : len(ids)] = ids
    return torch.from_numpy(out)
