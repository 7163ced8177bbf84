"""Label-smoothed cross-entropy over target tokens, with the output layer folded in.

    p = softmax(W h + b)
    loss = sum_t (1 - eps) * -log p(y_t) + eps * mean_v -log p(v)
    d loss / d(W h + b) = p - q,  q = (1 - eps) onehot(y_t) + eps / V

The (N, V) logits are the largest tensors of training, several times over once their fp32 copy,
log-softmax and gradients are kept for backward. Here they only ever exist a chunk of rows at a
time: each chunk's gradient is known in closed form (above), so it is taken in the forward pass,
multiplied into the gradients of h, W and b at once, and the chunk is freed. The plain negative
log-likelihood comes from the same log-softmax, for perplexity.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nmt.vocab import PAD

# 512 x a 6k vocabulary is ~12 MB of fp32 logits at a time; bf16 training peaked ~80 MB lower
# than with 1024 rows at the same speed (scripts/bench_train.py, 2026-11-27)
CHUNK_ROWS = 512


class LossOutput(NamedTuple):
    loss: torch.Tensor  # summed over tokens, what training minimizes
    nll: torch.Tensor  # summed negative log-likelihood, for perplexity
    tokens: int


class _OutputLayerCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, target, label_smoothing, chunk_rows):
        wants_grad = any(ctx.needs_input_grad[:3])
        dtype = hidden.dtype  # bf16 under autocast: the products run in it, gradients sum in fp32
        weight_c = weight.to(dtype)
        bias_c = None if bias is None else bias.to(dtype)
        vocab = weight.size(0)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        nll = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if wants_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants_grad else None
        grad_bias = None if bias is None or not wants_grad else torch.zeros(vocab, device=weight.device)
        for start in range(0, hidden.size(0), chunk_rows):
            rows = hidden[start : start + chunk_rows]
            tokens = target[start : start + chunk_rows].unsqueeze(1)
            real = (tokens != PAD).float()  # (C, 1)
            log_probs = F.linear(rows, weight_c, bias_c).float().log_softmax(dim=1)
            token_nll = -log_probs.gather(1, tokens) * real
            smooth = -log_probs.sum(dim=1, keepdim=True) * (real / vocab)
            loss += ((1.0 - label_smoothing) * token_nll + label_smoothing * smooth).sum()
            nll += token_nll.sum()
            if wants_grad:
                grad = log_probs.exp_().sub_(label_smoothing / vocab)  # p - eps / V, in place
                grad.scatter_add_(1, tokens, torch.full_like(token_nll, label_smoothing - 1.0))
                grad = grad.mul_(real).to(dtype)  # padding rows contribute nothing
                grad_hidden[start : start + chunk_rows] = grad @ weight_c
                grad_weight += (grad.t() @ rows).float()
                if grad_bias is not None:
                    grad_bias += grad.float().sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss.to(torch.float32)
        return (
            grad_hidden * scale.to(grad_hidden.dtype),
            grad_weight * scale,
            None if grad_bias is None else grad_bias * scale,
            None,
            None,
            None,
        )


def sequence_loss(
    hidden: torch.Tensor,
    output: nn.Linear,
    target: torch.Tensor,
    label_smoothing: float,
    chunk_rows: int = CHUNK_ROWS,
) -> LossOutput:
    """hidden (..., H), the output layer's input, and target (...) with PAD where there is no token:
    (B, T, H) and (B, T), or (N, H) and (N,)."""
    hidden = hidden.reshape(-1, hidden.size(-1))
    target = target.reshape(-1)
    loss, nll = _OutputLayerCrossEntropy.apply(hidden, output.weight, output.bias, target, label_smoothing, chunk_rows)
    return LossOutput(loss, nll, int((target != PAD).sum()))
