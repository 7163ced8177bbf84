"""Raw sentences in, detokenized translations out: tokenization, batching by tokens, search."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nmt.config import DecodeConfig
from nmt.search import Constraints, Hypothesis, Sampling, beam_search, greedy_search
from nmt.tokenization import TextPipeline
from nmt.vocab import UNK, pad


@dataclass
class Translation:
    text: str
    score: float
    tokens: list[int]


@dataclass(frozen=True)
class SearchOptions:
    """Search settings beyond DecodeConfig's."""

    constraints: Constraints = Constraints()
    sampling: Sampling | None = None  # draw tokens instead of searching (beam size is ignored)
    seed: int = 0  # of the sampling generator
    replace_unk: bool = False  # an UNK becomes the source word it attends to most


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16 (CPU and CUDA) and fp16 (CUDA); fp32 runs as it is."""
    if precision in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def search(
    model: nn.Module,
    src_ids: list[np.ndarray],
    cfg: DecodeConfig,
    options: SearchOptions = SearchOptions(),
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """Search for one batch of id sequences (none empty), in their order."""
    device = next(model.parameters()).device
    src = pad(src_ids).to(device)
    src_len = torch.tensor([len(ids) for ids in src_ids])
    limits = (cfg.max_length_ratio, cfg.max_length_offset)
    if options.sampling is not None or cfg.beam_size == 1:
        return greedy_search(
            model,
            src,
            src_len,
            *limits,
            cfg.length_penalty,
            constraints=options.constraints,
            sampling=options.sampling,
            generator=generator,
        )
    return beam_search(
        model, src, src_len, cfg.beam_size, cfg.nbest, *limits, cfg.length_penalty, constraints=options.constraints
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


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the LSTM and linear layers (weights int8, activations
    quantized per call), for CPU inference; a new model, the original is untouched."""
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear, nn.LSTM, nn.LSTMCell}, dtype=torch.qint8, inplace=False
        )


class Translator:
    def __init__(
        self,
        model: nn.Module,
        src_pipeline: TextPipeline,
        tgt_pipeline: TextPipeline,
        cfg: DecodeConfig,
        precision: str = "fp32",
        options: SearchOptions = SearchOptions(),
    ) -> None:
        self.model = model.eval()
        self.src_pipeline = src_pipeline
        self.tgt_pipeline = tgt_pipeline
        self.cfg = cfg
        self.precision = precision
        self.options = options
        self.generator = torch.Generator(next(model.parameters()).device).manual_seed(options.seed)

    @property
    def rows_per_sentence(self) -> int:
        """Beam search holds beam_size rows a sentence: batches shrink to match, so memory stays put."""
        return 1 if self.options.sampling is not None else self.cfg.beam_size

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, next(self.model.parameters()).device)

    def translate(self, lines: Sequence[str]) -> list[list[Translation]]:
        """Up to `nbest` translations per line, best first; a blank line translates to ""."""
        src_ids = [np.asarray(ids, dtype=np.int64) for ids in self.src_pipeline.encode(lines)]
        lengths = np.array([len(ids) for ids in src_ids], dtype=np.int64)
        results: list[list[Translation]] = [[Translation("", 0.0, [])] for _ in lines]
        nonempty = np.flatnonzero(lengths > 0)
        with self.autocast():
            for batch in length_batches(lengths[nonempty], self.cfg.batch_tokens // self.rows_per_sentence):
                indices = nonempty[batch]
                hypotheses = search(self.model, [src_ids[i] for i in indices], self.cfg, self.options, self.generator)
                for index, hyps in zip(indices, hypotheses):
                    results[index] = [self._translation(lines[index], h) for h in hyps]
        return results

    def _translation(self, line: str, hypothesis: Hypothesis) -> Translation:
        words = self.tgt_pipeline.words(hypothesis.tokens)
        if self.options.replace_unk and UNK in hypothesis.tokens:
            words = self._replace_unk(line, hypothesis, words)
        return Translation(self.tgt_pipeline.moses.detokenize(words), hypothesis.score, hypothesis.tokens)

    def _replace_unk(self, line: str, hypothesis: Hypothesis, words: list[str]) -> list[str]:
        """Each UNK word of the translation becomes the source word holding the subword it attends to most."""
        source_words = self.src_pipeline.moses.tokenize(line)
        # BPE segments each word on its own, so word by word gives the sentence's pieces
        word_of_piece = [
            w for w, pieces in enumerate(self.src_pipeline.segment([[x] for x in source_words])) for _ in pieces
        ]
        copies = iter(
            source_words[word_of_piece[position]]
            for token, position in zip(hypothesis.tokens, hypothesis.alignment)
            if token == UNK
        )
        unk = self.tgt_pipeline.vocab.pieces[UNK]
        return [next(copies) if word == unk else word for word in words]
