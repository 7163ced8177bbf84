"""Greedy and beam search over batched tensors.

Both take any model with `encode(src, src_len) -> (source, state)` and
`step(prev_tokens, state, source) -> (log_probs, state, attention)`, where `source` and
`state` reorder with `index_select`. Hypotheses are ranked by the GNMT length-normalized
score log p(y | x) / lp(|y|), lp(n) = ((5 + n) / 6) ** alpha, with |y| counting EOS.
A hypothesis may hold at most `ratio * source length + offset` tokens before EOS is forced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nmt.vocab import BOS, EOS


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # length-normalized, what hypotheses are ranked by
    log_prob: float  # sum of token log-probabilities, EOS included


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def max_lengths(src_len: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
    # the epsilon keeps e.g. 100 * 2.3 = 229.99999999999997 from losing a token
    return (src_len.double() * ratio + 1e-9).floor().long() + offset


def _force_eos(log_probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows that reached their length limit may only end: every other token gets -inf."""
    only_eos = torch.full_like(log_probs[0], float("-inf"))
    only_eos[EOS] = 0.0
    return torch.where(rows.unsqueeze(1), log_probs + only_eos, log_probs)


@torch.no_grad()
def greedy_search(
    model: torch.nn.Module,
    src: torch.Tensor,
    src_len: torch.Tensor,
    max_length_ratio: float,
    max_length_offset: int,
    alpha: float = 0.0,
) -> list[list[Hypothesis]]:
    """The most probable token at each step; one hypothesis per sentence."""
    source, state = model.encode(src, src_len)
    limits = max_lengths(src_len, max_length_ratio, max_length_offset).to(src.device)
    batch = src.size(0)
    prev = torch.full((batch,), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(batch, dtype=torch.bool, device=src.device)
    log_prob = torch.zeros(batch, device=src.device)
    steps = []
    for t in range(int(limits.max()) + 1):
        step_log_probs, state, _ = model.step(prev, state, source)
        step_log_probs = _force_eos(step_log_probs, limits == t)
        best_log_prob, prev = step_log_probs.max(dim=1)
        log_prob += torch.where(done, 0.0, best_log_prob)
        steps.append(torch.where(done, EOS, prev))
        done |= prev == EOS
        if done.all():
            break
    hypotheses = []
    for tokens, total in zip(torch.stack(steps, dim=1).tolist(), log_prob.tolist()):
        tokens = tokens[: tokens.index(EOS)]
        hypotheses.append([Hypothesis(tokens, total / length_penalty(len(tokens) + 1, alpha), total)])
    return hypotheses


@torch.no_grad()
def beam_search(
    model: torch.nn.Module,
    src: torch.Tensor,
    src_len: torch.Tensor,
    beam_size: int,
    nbest: int,
    max_length_ratio: float,
    max_length_offset: int,
    alpha: float,
) -> list[list[Hypothesis]]:
    """The `nbest` best of the hypotheses that beam search finishes, per sentence, best first.

    Each step extends the K live hypotheses of every active sentence by every token and
    keeps the top 2K of the K x V candidates: those ending in EOS within the first K are
    finished, the first K others live on. A sentence is done with K finished hypotheses or
    at its length limit, and then leaves the batch, so later steps only pay for the rest.
    """
    device, K = src.device, beam_size
    source, state = model.encode(src, src_len)
    batch = src.size(0)
    expand = torch.arange(batch, device=device).repeat_interleave(K)
    source, state = source.index_select(expand), state.index_select(expand)
    limits = max_lengths(src_len, max_length_ratio, max_length_offset).to(device)
    scores = torch.full((batch, K), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start as the same empty hypothesis: keep one
    prev = torch.full((batch * K,), BOS, dtype=torch.long, device=device)
    history = torch.empty((batch * K, 0), dtype=torch.long, device=device)
    active = list(range(batch))  # original index of each active sentence
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for t in range(int(limits.max()) + 1):
        log_probs, state, _ = model.step(prev, state, source)  # (A*K, V)
        log_probs = _force_eos(log_probs, (limits == t).repeat_interleave(K))
        num_active, vocab = len(active), log_probs.size(1)
        candidates = (scores.view(-1, 1) + log_probs).view(num_active, K * vocab)
        top_scores, top_ids = candidates.topk(min(2 * K, K * vocab), dim=1)  # (A, 2K)
        top_beams, top_tokens = top_ids // vocab, top_ids % vocab
        ends = top_tokens == EOS
        rank = torch.arange(top_ids.size(1), device=device)
        finishing = ends & (rank < K) & top_scores.isfinite()
        for a, j in finishing.nonzero().tolist():
            tokens = history[a * K + top_beams[a, j]].tolist()
            total = float(top_scores[a, j])
            finished[active[a]].append(Hypothesis(tokens, total / length_penalty(t + 1, alpha), total))
        # the first K candidates that do not end live on
        survivors = (ends.long() * top_ids.size(1) + rank).argsort(dim=1)[:, :K]
        scores = top_scores.gather(1, survivors)
        beams, tokens = top_beams.gather(1, survivors), top_tokens.gather(1, survivors)
        done = (limits == t) | ~scores[:, 0].isfinite()
        done |= torch.tensor([len(finished[i]) >= K for i in active], device=device)
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        rows = (keep.unsqueeze(1) * K + beams[keep]).view(-1)  # (A'*K,) rows of the previous step
        state = state.index_select(rows)
        history = torch.cat([history[rows], tokens[keep].view(-1, 1)], dim=1)
        if keep.numel() < num_active:
            source = source.index_select((keep.unsqueeze(1) * K + torch.arange(K, device=device)).view(-1))
            limits = limits[keep]
            active = [active[i] for i in keep.tolist()]
        scores, prev = scores[keep], tokens[keep].view(-1)
    return [sorted(hyps, key=lambda h: h.score, reverse=True)[:nbest] for hyps in finished]
