"""The encoder-decoder: p(y | x) = prod_t softmax(W_o h~_t)[y_t].

`forward` scores a whole target sequence (training); `encode` and `step` serve search,
with all search state held in `EncodedSource` and `DecoderState`, which reorder by
`index_select` so beam search never needs to know the model's internals. `InferenceModel` is a
model as search uses it: its token-gate table built once, carried in every `EncodedSource`, and
with a lexical shortlist (nmt/shortlist.py) the output layer cut to each batch's target pieces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import ModelConfig
from nmt.decoder import Decoder, DecoderState
from nmt.dropout import word_dropout
from nmt.encoder import Encoder
from nmt.vocab import PAD

if TYPE_CHECKING:
    from nmt.shortlist import Shortlist


class OutputRows(NamedTuple):
    """The output layer cut to a batch's shortlist: `ids` (U,) sorted target ids, `layer` maps
    features (B, E or H) to their logits (B, U)."""

    ids: torch.Tensor
    layer: Callable[[torch.Tensor], torch.Tensor]


def output_rows(weight: torch.Tensor, bias: torch.Tensor, ids: torch.Tensor) -> OutputRows:
    """The rows `ids` of an output layer's weight and bias (`Seq2Seq.output_weights`), gathered
    once for the steps of a batch; an int8 weight makes an int8 layer of them."""
    if not weight.is_quantized:
        return OutputRows(ids, functools.partial(F.linear, weight=weight[ids], bias=bias[ids]))
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear  # loaded by quantization already

    layer = QuantizedLinear(weight.size(1), len(ids))
    layer.set_weight_bias(weight.index_select(0, ids), bias[ids])
    return OutputRows(ids, layer)


class EncodedSource(NamedTuple):
    memory: torch.Tensor  # (B, S, H)
    keys: torch.Tensor  # (B, S, H), attention keys precomputed from memory
    mask: torch.Tensor  # (B, S), True on real tokens
    gate_table: torch.Tensor | None = None  # (V, 4H) every token's embedding gates (Decoder.gate_table), or None
    output: OutputRows | None = None  # the batch's shortlist, or None for the whole vocabulary

    def index_select(self, order: torch.Tensor) -> EncodedSource:
        memory, keys, mask = (tensor.index_select(0, order) for tensor in (self.memory, self.keys, self.mask))
        return EncodedSource(memory, keys, mask, self.gate_table, self.output)

    def fit(self, length: int) -> EncodedSource:
        """The same sentences over `length` positions: cut (past every sentence's end) or padded."""
        if length <= self.mask.size(1):
            return self._replace(memory=self.memory[:, :length], keys=self.keys[:, :length], mask=self.mask[:, :length])
        more = length - self.mask.size(1)
        return self._replace(
            memory=F.pad(self.memory, (0, 0, 0, more)), keys=F.pad(self.keys, (0, 0, 0, more)),
            mask=F.pad(self.mask, (0, more), value=False),
        )  # fmt: skip


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.word_dropout = cfg.word_dropout
        dropouts = cfg.dropouts()
        self.encoder = Encoder(src_vocab_size, cfg.embed_size, cfg.hidden_size, cfg.encoder_layers, dropouts)
        self.decoder = Decoder(
            tgt_vocab_size, cfg.embed_size, cfg.hidden_size, cfg.decoder_layers, cfg.attention, dropouts
        )
        # Tying needs the output layer's input to match the embedding size.
        self.output_proj = (
            nn.Linear(cfg.hidden_size, cfg.embed_size, bias=False)
            if cfg.tie_embeddings and cfg.hidden_size != cfg.embed_size
            else nn.Identity()
        )
        self.output = nn.Linear(cfg.embed_size if cfg.tie_embeddings else cfg.hidden_size, tgt_vocab_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -0.1, 0.1)
        if cfg.share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError("shared embeddings need one vocabulary for both sides")
        self.tie(cfg)
        with torch.no_grad():
            self.encoder.embed.weight[PAD].zero_()
            self.decoder.embed.weight[PAD].zero_()

    def tie(self, cfg: ModelConfig) -> None:
        """Make the tied weights one parameter: the decoder's embedding is the output layer's
        (tie_embeddings) and the encoder's (share_embeddings; with both, three-way tying, Press &
        Wolf, 2017). Needed again after load_state_dict(assign=True), which gives each name its own."""
        if cfg.tie_embeddings:
            self.output.weight = self.decoder.embed.weight
        if cfg.share_embeddings:
            self.encoder.embed.weight = self.decoder.embed.weight

    def encode(
        self, src: torch.Tensor, src_len: torch.Tensor, gate_table: torch.Tensor | None = None
    ) -> tuple[EncodedSource, DecoderState]:
        encoded = self.encoder(src, src_len)
        keys = self.decoder.attention.project_keys(encoded.memory)
        # under autocast the keys come out in bf16 and the memory does not: cast it once here,
        # not in every decoder step's product with the attention weights
        memory = encoded.memory.to(keys.dtype)
        return EncodedSource(memory, keys, src != PAD, gate_table), self.decoder.init_state(encoded)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.output(features)

    def vocabulary(self, source: EncodedSource) -> torch.Tensor | None:
        """The target ids of the columns of `step`'s log-probs: the batch's shortlist, or None for all."""
        return None if source.output is None else source.output.ids

    def output_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The output layer's weight (V, E or H) and bias (V,): its parameters, or for an int8 layer
        (nmt.precision) its int8 weight unpacked (a copy)."""
        layer = self.output
        if isinstance(layer, nn.Linear):
            return layer.weight, layer.bias
        return layer.weight(), layer.bias()

    def forward(
        self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced inputs of the output layer (`logits` turns them into scores, the loss
        applies the layer itself): (B, T, E or H) for tgt_in (B, T), or (N, E or H) at the N
        positions where the boolean (B, T) `positions` is True (training skips padding this way)."""
        if self.training and self.word_dropout:
            src, tgt_in = word_dropout(src, self.word_dropout), word_dropout(tgt_in, self.word_dropout)
        source, state = self.encode(src, src_len)
        hidden, _, _ = self.decoder(tgt_in, state, source.memory, source.keys, source.mask)
        return self.output_proj(hidden if positions is None else hidden[positions])

    def step(
        self, prev_tokens: torch.Tensor, state: DecoderState, source: EncodedSource, reuse_logits: bool = False
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """One decoding step: prev_tokens (B,) -> log-probs (B, V) in fp32, new state, attention (B, S).
        `source` holds B sources, or one per group of B / len(source) consecutive rows (a beam).
        With `reuse_logits` (no gradients) the log-probs are written over the logits.
        With a shortlist (`source.output`) they are (B, U), column j for token `source.output.ids[j]`,
        and the softmax is over those U tokens, as in Marian."""
        hidden, state, attention = self.decoder(
            prev_tokens.unsqueeze(1), state, source.memory, source.keys, source.mask, source.gate_table
        )
        layer = self.logits if source.output is None else source.output.layer
        logits = layer(self.output_proj(hidden.squeeze(1))).float()
        log_probs = torch.log_softmax(logits, dim=-1, out=logits if reuse_logits else None)
        return log_probs, state, attention.squeeze(1)


class InferenceModel:
    """A Seq2Seq as search uses it (a `SearchModel`): in eval mode, with the table of every token's
    embedding gates built once, at construction, for the weights and precision it decodes with, and
    with a `shortlist` the output layer cut to each batch's (the members of an ensemble share one,
    so that they cut to the same tokens). Build it inside the autocast context it will decode in;
    build a new one when the weights change."""

    def __init__(self, model: Seq2Seq, shortlist: Shortlist | None = None) -> None:
        self.model = model.eval()
        self.shortlist = shortlist
        with torch.no_grad():
            self.gate_table = model.decoder.gate_table()
            # what batches cut their output layers from; int8 unpacks its weight here, once
            self.output_weights = model.output_weights() if shortlist is not None else None

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[EncodedSource, DecoderState]:
        source, state = self.model.encode(src, src_len, self.gate_table)
        if self.shortlist is not None:
            source = source._replace(output=output_rows(*self.output_weights, self.shortlist.vocabulary(src)))
        return source, state

    def vocabulary(self, source: EncodedSource) -> torch.Tensor | None:
        return self.model.vocabulary(source)

    def join(
        self, parts: Sequence[tuple[EncodedSource, DecoderState]], src: torch.Tensor
    ) -> tuple[EncodedSource, DecoderState]:
        """Several batches' sources and states as one (`SearchModel.join`); with a shortlist, the
        output layer is cut again for all their sentences."""
        sources = [source.fit(src.size(1)) for source, _ in parts]
        memory, keys, mask = (torch.cat(tensors) for tensors in zip(*(source[:3] for source in sources)))
        output = None if self.shortlist is None else output_rows(*self.output_weights, self.shortlist.vocabulary(src))
        source = EncodedSource(memory, keys, mask, self.gate_table, output)
        return source, DecoderState.cat([state for _, state in parts])

    def step(
        self, prev_tokens: torch.Tensor, state: DecoderState, source: EncodedSource
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        # on the CPU the (B, V) scores overwrite the logits: the largest tensor of a step is then
        # allocated once, which lets decoding batches grow within the same memory; the CPU kernel
        # finishes reading a row before writing it (checked equal in tests), GPU kernels are not
        # relied on to do the same
        return self.model.step(prev_tokens, state, source, reuse_logits=self.gate_table.device.type == "cpu")
