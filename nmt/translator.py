"""Raw sentences in, detokenized translations out: tokenization, batching by tokens, search."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nmt.config import DecodeConfig
from nmt.data import pad
from nmt.model import Seq2Seq
from nmt.search import Hypothesis, beam_search, greedy_search
from nmt.tokenization import TextPipeline


@dataclass
class Translation:
    text: str
    score: float
    tokens: list[int]


def search(model: Seq2Seq, src_ids: list[np.ndarray], cfg: DecodeConfig) -> list[list[Hypothesis]]:
    """Search for one batch of id sequences (none empty), in their order."""
    device = next(model.parameters()).device
    src = pad(src_ids).to(device)
    src_len = torch.tensor([len(ids) for ids in src_ids])
    if cfg.beam_size == 1:
        return greedy_search(model, src, src_len, cfg.max_length_ratio, cfg.max_length_offset, cfg.length_penalty)
    return beam_search(
        model, src, src_len, cfg.beam_size, cfg.nbest, cfg.max_length_ratio, cfg.max_length_offset, cfg.length_penalty
    )


def length_batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Indices sorted by length, cut so rows * longest <= batch_tokens (a long line goes alone)."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or lengths[order[end]] * (end + 1 - start) > batch_tokens:
            batches.append(order[start:end])
            start = end
    return batches


class Translator:
    def __init__(
        self,
        model: Seq2Seq,
        src_pipeline: TextPipeline,
        tgt_pipeline: TextPipeline,
        cfg: DecodeConfig,
        precision: str = "fp32",
    ) -> None:
        self.model = model.eval()
        self.src_pipeline = src_pipeline
        self.tgt_pipeline = tgt_pipeline
        self.cfg = cfg
        self.precision = precision

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            device_type = next(self.model.parameters()).device.type
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def translate(self, lines: Sequence[str]) -> list[list[Translation]]:
        """Up to `nbest` translations per line, best first; a blank line translates to ""."""
        src_ids = [np.asarray(ids, dtype=np.int64) for ids in self.src_pipeline.encode(lines)]
        lengths = np.array([len(ids) for ids in src_ids], dtype=np.int64)
        results: list[list[Translation]] = [[Translation("", 0.0, [])] for _ in lines]
        nonempty = np.flatnonzero(lengths > 0)
        with self._autocast():
            for batch in length_batches(lengths[nonempty], self.cfg.batch_tokens):
                indices = nonempty[batch]
                hypotheses = search(self.model, [src_ids[i] for i in indices], self.cfg)
                for index, hyps in zip(indices, hypotheses):
                    results[index] = [Translation(self.tgt_pipeline.decode(h.tokens), h.score, h.tokens) for h in hyps]
        return results
