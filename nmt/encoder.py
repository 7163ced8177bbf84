"""Bidirectional LSTM encoder over packed sequences.

    x_i = E_src w_i
    s_i = [LSTM_fwd(x_1..i) ; LSTM_bwd(x_i..S)]        memory, (B, S, 2 * H/2)
    final state per layer: [h_fwd ; h_bwd], [c_fwd ; c_bwd]   (L, B, H)
Packing makes every sentence's states independent of the padding around it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.config import Dropouts
from nmt.dropout import Dropout
from nmt.vocab import PAD


class EncoderOutput(NamedTuple):
    memory: torch.Tensor  # (B, S, H)
    final_h: torch.Tensor  # (L, B, H)
    final_c: torch.Tensor  # (L, B, H)


def embedding(vocab_size: int, embed_size: int) -> nn.Embedding:
    """An embedding table left for its owner to initialize (Seq2Seq draws every weight uniformly):
    nn.Embedding's own init, normal_, imports torch._dynamo (1.5 s) on the meta device, where
    loading a checkpoint builds the model to check and take its weights."""
    return nn.Embedding.from_pretrained(torch.empty(vocab_size, embed_size), freeze=False, padding_idx=PAD)


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int, dropouts: Dropouts) -> None:
        super().__init__()
        self.embed = embedding(vocab_size, embed_size)
        self.embed_dropout = Dropout(dropouts.embed)
        self.hidden_dropout = Dropout(dropouts.hidden)
        self.rnn = nn.LSTM(
            embed_size,
            hidden_size // 2,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropouts.hidden if num_layers > 1 else 0.0,
        )

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> EncoderOutput:
        """src (B, S) ids, src_len (B,) on CPU."""
        embedded = self.embed_dropout(self.embed(src))
        packed = pack_padded_sequence(embedded, src_len, batch_first=True, enforce_sorted=False)
        output, (h, c) = self.rnn(packed)
        memory, _ = pad_packed_sequence(output, batch_first=True, total_length=src.size(1))
        layers, batch = self.rnn.num_layers, src.size(0)
        # (L * 2, B, H/2) -> (L, B, H): concatenate the two directions of each layer
        h = h.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)
        c = c.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)
        return EncoderOutput(self.hidden_dropout(memory), h, c)
