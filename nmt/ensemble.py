"""Several models searched as one: log p(y_t | y_<t, x) = mean_m log p_m(y_t | y_<t, x).

The mean of log-probabilities is the log of a geometric mean of the distributions; it is not
renormalized, as search only compares sums of it. It needs every model to share the source and
target vocabularies, so that an id means the same piece to all; `check_compatible` names the
file that differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from nmt.errors import NmtError
from nmt.search import SearchModel
from nmt.tokenization import segmentation


class EnsembleSource(NamedTuple):
    parts: tuple  # one encoded source per model

    def index_select(self, order: torch.Tensor) -> EnsembleSource:
        return EnsembleSource(tuple(part.index_select(order) for part in self.parts))


class EnsembleState(NamedTuple):
    parts: tuple  # one decoder state per model

    def index_select(self, order: torch.Tensor) -> EnsembleState:
        return EnsembleState(tuple(part.index_select(order) for part in self.parts))


class Ensemble:
    """A `SearchModel` over several models with the same vocabularies."""

    def __init__(self, models: list[SearchModel]) -> None:
        self.models = models

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[EnsembleSource, EnsembleState]:
        sources, states = zip(*(model.encode(src, src_len) for model in self.models))
        return EnsembleSource(sources), EnsembleState(states)

    def step(
        self, prev_tokens: torch.Tensor, state: EnsembleState, source: EnsembleSource
    ) -> tuple[torch.Tensor, EnsembleState, torch.Tensor]:
        """Mean log-probs (B, W) and mean attention (B, S) of the models."""
        outputs = [model.step(prev_tokens, *parts) for model, parts in zip(self.models, zip(state.parts, source.parts))]
        log_probs, states, attention = zip(*outputs)
        return torch.stack(log_probs).mean(dim=0), EnsembleState(states), torch.stack(attention).mean(dim=0)

    def join(
        self, parts: Sequence[tuple[EnsembleSource, EnsembleState]], src: torch.Tensor
    ) -> tuple[EnsembleSource, EnsembleState]:
        joined = [
            model.join([(source.parts[m], state.parts[m]) for source, state in parts], src)
            for m, model in enumerate(self.models)
        ]
        sources, states = zip(*joined)
        return EnsembleSource(sources), EnsembleState(states)

    def vocabulary(self, source: EnsembleSource) -> torch.Tensor | None:
        """The models share one shortlist (`Translator.from_models`), so their columns are the first's."""
        return self.models[0].vocabulary(source.parts[0])


def check_compatible(checkpoints: list[dict[str, Any]], paths: list[Path]) -> None:
    """Every checkpoint must segment and number text as the first does."""
    first = checkpoints[0]
    for checkpoint, path in zip(checkpoints[1:], paths[1:]):
        for key, what in (
            ("src_vocab", "source vocabulary"),
            ("tgt_vocab", "target vocabulary"),
            ("src_bpe", "source BPE model"),
            ("tgt_bpe", "target BPE model"),
        ):
            theirs, ours = checkpoint[key], first[key]
            if key.endswith("_bpe"):  # models that split words alike may number the pieces apart
                theirs, ours = segmentation(theirs), segmentation(ours)
            if theirs != ours:
                raise NmtError(
                    f"{path}: its {what} differs from {paths[0]}'s; an ensemble needs models trained with "
                    "the same vocabularies (the same data and BPE settings)"
                )
