"""The encoder-decoder: p(y | x) = prod_t softmax(W_o h~_t)[y_t].

`forward` scores a whole target sequence (training); `encode` and `step` serve search,
with all search state held in `EncodedSource` and `DecoderState`, which reorder by
`index_select` so beam search never needs to know the model's internals. `InferenceModel` is a
model as search uses it: its token-gate table built once, carried in every `EncodedSource`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.decoder import Decoder, DecoderState
from nmt.dropout import word_dropout
from nmt.encoder import Encoder
from nmt.vocab import PAD


class EncodedSource(NamedTuple):
    memory: torch.Tensor  # (B, S, H)
    keys: torch.Tensor  # (B, S, H), attention keys precomputed from memory
    mask: torch.Tensor  # (B, S), True on real tokens
    gate_table: torch.Tensor | None = None  # (V, 4H) every token's embedding gates (Decoder.gate_table), or None

    def index_select(self, order: torch.Tensor) -> EncodedSource:
        memory, keys, mask = (tensor.index_select(0, order) for tensor in (self.memory, self.keys, self.mask))
        return EncodedSource(memory, keys, mask, self.gate_table)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> None:
        super().__init__()
        self.word_dropout = cfg.word_dropout
        self.encoder = Encoder(src_vocab_size, cfg.embed_size, cfg.hidden_size, cfg.encoder_layers, cfg.dropout)
        self.decoder = Decoder(
            tgt_vocab_size, cfg.embed_size, cfg.hidden_size, cfg.decoder_layers, cfg.attention, cfg.dropout
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
        if cfg.tie_embeddings:
            self.output.weight = self.decoder.embed.weight
        if cfg.share_embeddings:  # with tie_embeddings: three-way tying (Press & Wolf, 2017)
            if src_vocab_size != tgt_vocab_size:
                raise ValueError("shared embeddings need one vocabulary for both sides")
            self.encoder.embed.weight = self.decoder.embed.weight
        with torch.no_grad():
            self.encoder.embed.weight[PAD].zero_()
            self.decoder.embed.weight[PAD].zero_()

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
        With `reuse_logits` (no gradients) the log-probs are written over the logits."""
        hidden, state, attention = self.decoder(
            prev_tokens.unsqueeze(1), state, source.memory, source.keys, source.mask, source.gate_table
        )
        logits = self.logits(self.output_proj(hidden.squeeze(1))).float()
        log_probs = torch.log_softmax(logits, dim=-1, out=logits if reuse_logits else None)
        return log_probs, state, attention.squeeze(1)


class InferenceModel:
    """A Seq2Seq as search uses it (a `SearchModel`): in eval mode, with the table of every token's
    embedding gates built once, at construction, for the weights and precision it decodes with.
    Build it inside the autocast context it will decode in; build a new one when the weights change."""

    def __init__(self, model: Seq2Seq) -> None:
        self.model = model.eval()
        with torch.no_grad():
            self.gate_table = model.decoder.gate_table()

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[EncodedSource, DecoderState]:
        return self.model.encode(src, src_len, self.gate_table)

    def step(
        self, prev_tokens: torch.Tensor, state: DecoderState, source: EncodedSource
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        # on the CPU the (B, V) scores overwrite the logits: the largest tensor of a step is then
        # allocated once, which lets decoding batches grow within the same memory; the CPU kernel
        # finishes reading a row before writing it (checked equal in tests), GPU kernels are not
        # relied on to do the same
        return self.model.step(prev_tokens, state, source, reuse_logits=self.gate_table.device.type == "cpu")
