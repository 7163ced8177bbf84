"""Where a translation looked: attention matrices of finished translations, and hard alignments.

Search returns each translation's hard alignment itself (`Hypothesis.alignment`: per target piece,
the source piece it attended to most). The full matrices, for heatmaps, come from teacher forcing:
the model reads the source, then is fed the translation's own tokens, BOS first, and `step`
reports its attention at each target position. The decoder is deterministic at inference, so
these are the weights the search saw while it chose those tokens, for a single model, an ensemble
(mean attention) or an int8 model alike, and for any search (beam, greedy, sampling) without the
search keeping every matrix of every beam.

Alignments are written as pairs `i-j` (0-based source piece i, target piece j), as fast_align and
Moses write them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nmt.batching import length_batches
from nmt.search import SearchModel
from nmt.tokenization import TextPipeline
from nmt.vocab import BOS, pad


@dataclass
class AttentionMap:
    """Attention of one translation: `weights[j, i]` is target piece j's weight on source piece i.
    The last row is the step that produced EOS, so `weights` has len(tgt_pieces) + 1 rows."""

    src_pieces: list[str]
    tgt_pieces: list[str]
    weights: np.ndarray  # (len(tgt_pieces) + 1, len(src_pieces)), rows sum to 1

    def alignment(self) -> list[tuple[int, int]]:
        """(source position, target position) for each target piece, in target order."""
        return [(int(i), j) for j, i in enumerate(self.weights[: len(self.tgt_pieces)].argmax(axis=1))]


def format_alignment(source_positions: Sequence[int]) -> str:
    """The source position of each target piece, [0, 2] -> "0-0 2-1"."""
    return " ".join(f"{i}-{j}" for j, i in enumerate(source_positions))


@torch.no_grad()
def forced_attention(
    model: SearchModel,
    device: torch.device,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    batch_tokens: int,
) -> list[np.ndarray]:
    """Attention while the model reads each target (no BOS/EOS) after its source (not empty):
    one float32 array (len(tgt) + 1, len(src)) per pair, the last row for EOS."""
    lengths = np.array([len(ids) for ids in src_ids], dtype=np.int64)
    out: list[np.ndarray] = [np.empty(0)] * len(src_ids)
    for batch in length_batches(lengths, batch_tokens):
        src = pad([np.asarray(src_ids[i], dtype=np.int64) for i in batch]).to(device)
        src_len = torch.from_numpy(lengths[batch])
        source, state = model.encode(src, src_len)
        prev = pad([np.array([BOS, *tgt_ids[i]], dtype=np.int64) for i in batch]).to(device)  # (B, T + 1)
        rows = []
        for t in range(prev.size(1)):
            _, state, attention = model.step(prev[:, t], state, source)  # attention (B, S)
            rows.append(attention.float())
        weights = torch.stack(rows, dim=1).cpu().numpy()  # (B, T + 1, S)
        for row, index in enumerate(batch):
            out[index] = weights[row, : len(tgt_ids[index]) + 1, : lengths[index]]
    return out


def attention_maps(
    model: SearchModel,
    device: torch.device,
    src_pipeline: TextPipeline,
    tgt_pipeline: TextPipeline,
    lines: Sequence[str],
    translations: Sequence[Sequence[int]],
    batch_tokens: int,
    max_source_length: int,
) -> list[AttentionMap | None]:
    """One map per (raw source line, target ids of its translation); None for a blank line. The
    source is cut to `max_source_length` subwords, as search cuts it."""
    pieces = [
        p[:max_source_length] for p in src_pipeline.segment([src_pipeline.moses.tokenize(line) for line in lines])
    ]
    nonempty = [k for k, p in enumerate(pieces) if p]
    weights = forced_attention(
        model,
        device,
        [src_pipeline.vocab.ids(pieces[k]) for k in nonempty],
        [translations[k] for k in nonempty],
        batch_tokens,
    )
    maps: list[AttentionMap | None] = [None] * len(lines)
    for k, w in zip(nonempty, weights):
        maps[k] = AttentionMap(pieces[k], [tgt_pipeline.vocab.pieces[t] for t in translations[k]], w)
    return maps
