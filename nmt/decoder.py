"""LSTM decoder with attention and input feeding (Luong et al., 2015).

    x_t = [E_tgt y_{t-1} ; h~_{t-1}]                    input feeding
    (h_t, c_t) = LSTM(x_t, (h_{t-1}, c_{t-1}))          L stacked layers
    c_t, a_t = Attention(h_t, s_1..S)
    h~_t = tanh(W_c [c_t ; h_t])                        attentional state, fed to the output layer
    h_0 = tanh(W_h h_enc), c_0 = tanh(W_m c_enc)        bridge from the encoder's final top layer

The first layer's gate pre-activations split as W_ih x_t + W_hh h_{t-1} + b =
(W_e E y_{t-1} + b) + W_r [h~_{t-1} ; h_{t-1}]: the embedding part has no recurrence, so it runs
for all steps as one matrix multiply before the time loop, and each step pays one product
with W_r. In search even the embedding part goes: W_e E y + b is looked up in a (V, 4H) table of
every token's gates, which whoever decodes builds once for the weights it decodes with
(`gate_table`) and passes in. Its gate equations
are torch.nn.LSTMCell's (gate order i, f, g, o); the upper layers are nn.LSTMCell itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nmt.activation import tanh
from nmt.attention import Attention
from nmt.config import Dropouts
from nmt.dropout import Dropout
from nmt.encoder import EncoderOutput, embedding


class DecoderState(NamedTuple):
    h: torch.Tensor  # (L, B, H)
    c: torch.Tensor  # (L, B, H)
    feed: torch.Tensor  # (B, H), h~ of the previous step

    def index_select(self, order: torch.Tensor) -> DecoderState:
        return DecoderState(
            self.h.index_select(1, order), self.c.index_select(1, order), self.feed.index_select(0, order)
        )

    @staticmethod
    def cat(states: Sequence[DecoderState]) -> DecoderState:
        """The rows of several states, in order."""
        return DecoderState(
            torch.cat([s.h for s in states], dim=1), torch.cat([s.c for s in states], dim=1),
            torch.cat([s.feed for s in states]),
        )  # fmt: skip


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.LSTMCell's update from precomputed gate pre-activations (B, 4H)."""
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * tanh(g)
    # h takes the gates' dtype (bf16 under autocast), so the next step's products need no cast;
    # the cell state keeps the precision it came in with (fp32 from init_state)
    return (torch.sigmoid(o) * tanh(c)).to(gates.dtype), c


class Decoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_size: int,
        hidden_size: int,
        num_layers: int,
        attention: str,
        dropouts: Dropouts,
    ) -> None:
        super().__init__()
        self.embed = embedding(vocab_size, embed_size)
        self.embed_gates = nn.Linear(embed_size, 4 * hidden_size)  # W_e, b
        self.recurrent_gates = nn.Linear(2 * hidden_size, 4 * hidden_size, bias=False)  # W_r for [h~; h]
        self.upper_cells = nn.ModuleList(nn.LSTMCell(hidden_size, hidden_size) for _ in range(num_layers - 1))
        self.attention = Attention(attention, hidden_size, hidden_size)
        self.combine = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.bridge_h = nn.Linear(hidden_size, hidden_size)
        self.bridge_c = nn.Linear(hidden_size, hidden_size)
        self.embed_dropout = Dropout(dropouts.embed)
        self.hidden_dropout = Dropout(dropouts.hidden)
        self.attentional_dropout = Dropout(dropouts.attentional)

    def init_state(self, encoded: EncoderOutput) -> DecoderState:
        layers = 1 + len(self.upper_cells)
        h = tanh(self.bridge_h(encoded.final_h[-1])).float()
        c = tanh(self.bridge_c(encoded.final_c[-1])).float()
        return DecoderState(
            h.unsqueeze(0).repeat(layers, 1, 1), c.unsqueeze(0).repeat(layers, 1, 1), torch.zeros_like(h)
        )

    def input_gates(self, tokens: torch.Tensor, gate_table: torch.Tensor | None = None) -> torch.Tensor:
        """W_e E y + b for tokens (B, T) -> (B, T, 4H); looked up in `gate_table` when given."""
        if gate_table is not None:
            return F.embedding(tokens, gate_table)
        return self.embed_gates(self.embed_dropout(self.embed(tokens)))

    def gate_table(self) -> torch.Tensor:
        """W_e E + b for the whole vocabulary (V, 4H), in the dtype of the products it replaces
        (bf16 under autocast): for inference, where no dropout applies to the embeddings."""
        return self.embed_gates(self.embed.weight)

    def forward(
        self,
        tgt_in: torch.Tensor,
        state: DecoderState,
        memory: torch.Tensor,
        keys: torch.Tensor,
        mask: torch.Tensor,
        gate_table: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Teacher-forced steps over tgt_in (B, T) -> h~ (B, T, H), final state, attention (B, T, S).
        memory, keys and mask may hold one source per group of consecutive rows (see Attention)."""
        # unbind once: indexing [:, t] per step would make backward zero-fill (B, T, 4H) at every step
        embed_gates = self.input_gates(tgt_in, gate_table).unbind(1)  # T x (B, 4H)
        h, c, feed = list(state.h.unbind(0)), list(state.c.unbind(0)), state.feed
        outputs, attention = [], []
        for step_gates in embed_gates:
            gates = step_gates + self.recurrent_gates(torch.cat([feed, h[0]], dim=1))
            h[0], c[0] = lstm_cell(gates, c[0])
            top = h[0]
            for layer, cell in enumerate(self.upper_cells, start=1):
                h[layer], c[layer] = cell(self.hidden_dropout(top), (h[layer], c[layer]))
                top = h[layer]
            context, weights = self.attention(top, keys, memory, mask)
            feed = self.attentional_dropout(tanh(self.combine(torch.cat([context, top], dim=1))))
            outputs.append(feed)
            attention.append(weights)
        state = DecoderState(torch.stack(h), torch.stack(c), feed)
        return torch.stack(outputs, dim=1), state, torch.stack(attention, dim=1)
