"""Global attention over the encoder states s_1..s_S for a decoder query h_t.

    score(h_t, s) = h_t . s                       dot       (Luong)
                  = h_t . (W_a s)                 general   (Luong)
                  = v . tanh(W_q h_t + W_k s)     additive  (Bahdanau)
    a_t = softmax(score(h_t, s_1..S)) over non-padding positions
    c_t = sum_s a_t(s) s

The parts that depend on s only (W_a s, W_k s) are computed once per batch by
`project_keys`; each decoder step then costs one batched product with the keys. Several
queries may share one source (the hypotheses of a beam): they are read as consecutive groups
of queries per source, so the encoder states are never copied per hypothesis, and each step
reads them once per sentence rather than once per hypothesis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nmt.activation import tanh


class Attention(nn.Module):
    def __init__(self, kind: str, query_size: int, memory_size: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention needs equal sizes, got query {query_size}, memory {memory_size}")
        if kind == "general":
            self.key_proj = nn.Linear(memory_size, query_size, bias=False)
        elif kind == "additive":
            self.key_proj = nn.Linear(memory_size, query_size, bias=False)
            self.query_proj = nn.Linear(query_size, query_size, bias=True)
            self.v = nn.Linear(query_size, 1, bias=False)

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """memory (B, S, M) -> keys (B, S, Q)."""
        return memory if self.kind == "dot" else self.key_proj(memory)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B * G, Q), keys (B, S, Q), memory (B, S, M), mask (B, S) True on real tokens
        -> context (B * G, M), weights (B * G, S); queries b * G .. b * G + G - 1 attend to source b."""
        batch, length = mask.shape
        grouped = query.view(batch, -1, query.size(1))  # (B, G, Q)
        if self.kind == "additive":
            hidden = tanh(keys.unsqueeze(1) + self.query_proj(grouped).unsqueeze(2))  # (B, G, S, Q)
            scores = self.v(hidden).squeeze(3)
        else:
            scores = torch.bmm(keys, grouped.transpose(1, 2)).transpose(1, 2)  # (B, G, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(memory.dtype)
        context = torch.bmm(weights, memory)  # (B, G, M)
        return context.view(query.size(0), -1), weights.reshape(query.size(0), length)
