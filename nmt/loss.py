"""Label-smoothed cross-entropy over target tokens, kept outside the model.

    loss = sum_t (1 - eps) * -log p(y_t) + eps * mean_v -log p(v)
The plain negative log-likelihood comes from the same log-softmax, for perplexity.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from nmt.vocab import PAD


class LossOutput(NamedTuple):
    loss: torch.Tensor  # summed over tokens, what training minimizes
    nll: torch.Tensor  # summed negative log-likelihood, for perplexity
    tokens: int


def sequence_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> LossOutput:
    """logits (..., V), target (...) with PAD where there is no token: (B, T, V) and (B, T), or (N, V) and (N,)."""
    log_probs = F.log_softmax(logits.float(), dim=-1).reshape(-1, logits.size(-1))  # (N, V)
    target = target.reshape(-1)
    real = target != PAD
    nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    # sum, then scale the (N,) result: mean's backward would divide the whole (N, V) gradient
    smooth = -log_probs.sum(dim=1) / log_probs.size(1)
    per_token = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    return LossOutput(per_token[real].sum(), nll[real].sum(), int(real.sum()))
