"""Greedy search, sampling and beam search over batched tensors, set by one `DecodeConfig`.

All take any `SearchModel`: `encode(src, src_len) -> (source, state)` and
`step(prev_tokens, state, source) -> (log_probs, state, attention)`, where `source` and
`state` reorder with `index_select`; beam search keeps one source per sentence for its K
state rows (rows a * K .. a * K + K - 1 belong to sentence a), so `step` must accept a
source per group of consecutive rows. The columns of the log-probs are the target tokens
`vocabulary(source)` names (a lexical shortlist), or the whole vocabulary in order; tokens
without a column cannot be chosen. Hypotheses are ranked by the GNMT score

    s(y | x) = log p(y | x) / lp(|y|) + cp(x, y)
    lp(n) = ((5 + n) / 6) ** alpha                      length penalty, |y| counting EOS
    cp(x, y) = beta * sum_i log min(sum_t a_t(i), 1)    coverage penalty over source positions i

A hypothesis holds at least `min_length` tokens before EOS is allowed and at most
`ratio * source length + offset` before EOS is forced; with `no_repeat_ngram` N > 0 no
n-gram of N tokens occurs twice in it. Sentences leave the batch as soon as they are done,
so later steps only pay for the rest; in a `BeamSearch` others may join it between steps
(continuous batching), for which a model's `join` merges encoded sources and states.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from nmt.config import DecodeConfig
from nmt.vocab import BOS, EOS, PAD

# Attention can underflow to exactly 0 on a source position; log 0 would make one ignored
# word outweigh everything else, so coverage is floored here (log = -23).
MIN_COVERAGE = 1e-10


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS and EOS
    score: float  # length-normalized (plus coverage penalty), what hypotheses are ranked by
    log_prob: float  # sum of token log-probabilities, EOS included
    alignment: list[int] = field(default_factory=list)  # per token, the source position attended most


class SearchModel(Protocol):
    """What search needs of a model (a `Seq2Seq` prepared for inference, an `Ensemble`, a test's
    fake): the encoded source and the decoder state it returns reorder with `index_select(order)`."""

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[Any, Any]:
        """src (B, S) padded ids, src_len (B,) -> (encoded source, initial decoder state)."""
        ...

    def step(self, prev_tokens: torch.Tensor, state: Any, source: Any) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """prev_tokens (R,) -> log-probs (R, W) in fp32, next state, attention (R, S)."""
        ...

    def vocabulary(self, source: Any) -> torch.Tensor | None:
        """The target ids of the W columns of `step`'s log-probs for this encoded source, sorted
        (a batch's shortlist), or None: all V tokens, column i for token i."""
        ...

    def join(self, parts: Sequence[tuple[Any, Any]], src: torch.Tensor) -> tuple[Any, Any]:
        """(encoded source, decoder state) of several groups of sentences as one batch, in order
        (for `BeamSearch.add`); src (B, S) holds the ids of all their sentences, and each source is
        cut or padded to S positions."""
        ...


class Columns:
    """Which target token each column of a step's log-probs stands for (`SearchModel.vocabulary`)."""

    def __init__(self, ids: torch.Tensor | None) -> None:
        self.ids = ids  # (W,) sorted, or None for all tokens in order
        self.eos = EOS if ids is None else int(torch.searchsorted(ids, EOS))
        if ids is not None and (self.eos == len(ids) or int(ids[self.eos]) != EOS):
            raise ValueError("a step's columns must include EOS, or no translation could end")

    def tokens(self, columns: torch.Tensor) -> torch.Tensor:
        return columns if self.ids is None else self.ids[columns]

    def of(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (any shape) -> their columns, and whether each has one (same shape)."""
        if self.ids is None:
            return tokens, torch.ones_like(tokens, dtype=torch.bool)
        columns = torch.searchsorted(self.ids, tokens).clamp(max=len(self.ids) - 1)
        return columns, self.ids[columns] == tokens


EVERY_TOKEN = Columns(None)


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def coverage_penalty(coverage: torch.Tensor, src_len: torch.Tensor, beta: float) -> torch.Tensor:
    """coverage (R, S) summed attention, src_len (R,) -> beta * sum_i log min(coverage_i, 1), (R,)."""
    real = torch.arange(coverage.size(1), device=coverage.device) < src_len.unsqueeze(1)
    log_coverage = coverage.clamp(MIN_COVERAGE, 1.0).log()
    return beta * torch.where(real, log_coverage, 0.0).sum(dim=1)


def max_lengths(src_len: torch.Tensor, ratio: float, offset: int) -> torch.Tensor:
    # the epsilon keeps e.g. 100 * 2.3 = 229.99999999999997 from losing a token
    return (src_len.double() * ratio + 1e-9).floor().long() + offset


def ban_repeated_ngrams(
    log_probs: torch.Tensor, history: torch.Tensor, n: int, columns: Columns = EVERY_TOKEN
) -> torch.Tensor:
    """log_probs (R, W), history (R, t) of tokens, left-padded with -1 in rows that are younger: a
    token that would complete an n-gram already in the row's history gets -inf (in place)."""
    if n <= 0 or history.size(1) < n:
        return log_probs
    windows = history.unfold(1, n, 1)  # (R, t - n + 1, n), every n-gram so far
    suffix = history[:, history.size(1) - n + 1 :].unsqueeze(1)  # (R, 1, n - 1), what the next n-gram starts with
    seen = (windows[:, :, :-1] == suffix).all(dim=2) & (windows[:, :, 0] >= 0)  # a window of padding is no n-gram
    rows, starts = seen.nonzero(as_tuple=True)
    banned, present = columns.of(windows[rows, starts, -1])
    log_probs[rows[present], banned[present]] = float("-inf")
    return log_probs


def _constrain(
    log_probs: torch.Tensor,
    young: list[bool],
    at_limit: list[bool],
    history: torch.Tensor,
    cfg: DecodeConfig,
    columns: Columns,
) -> torch.Tensor:
    """Apply min length, no-repeat n-grams and the length limit to a step's log_probs (R, W);
    `young` (under min_length) and `at_limit` are per row, on the host, so steps that force nothing
    cost nothing."""
    limited = torch.tensor(at_limit, device=log_probs.device).nonzero().squeeze(1) if any(at_limit) else None
    eos = log_probs[limited, columns.eos] if limited is not None else None  # before min length: the limit wins
    if all(young):
        log_probs[:, columns.eos] = float("-inf")
    elif any(young):
        log_probs[torch.tensor(young, device=log_probs.device), columns.eos] = float("-inf")
    log_probs = ban_repeated_ngrams(log_probs, history, cfg.no_repeat_ngram, columns)
    if limited is not None:  # rows at their limit may only end
        log_probs[limited] = float("-inf")
        log_probs[limited, columns.eos] = eos
    return log_probs


def sample(log_probs: torch.Tensor, cfg: DecodeConfig, generator: torch.Generator | None) -> torch.Tensor:
    """One column per row of log_probs (R, W), drawn from the distribution at `cfg.temperature`, cut
    to the `sampling_topk` most likely tokens (0 = all), to the fewest whose probability reaches
    `sampling_topp` (1 = all) and to those of probability at least `sampling_epsilon` (0 = all;
    epsilon sampling, Hewitt et al., 2022)."""
    logits = log_probs / cfg.temperature
    if 0 < cfg.sampling_topk < logits.size(1):
        kth = logits.topk(cfg.sampling_topk, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.sampling_topp < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        cumulative = sorted_logits.softmax(dim=1).cumsum(dim=1)
        # drop a token when the more likely ones before it already reach top_p; the first always stays
        drop = (cumulative - sorted_logits.softmax(dim=1)) >= cfg.sampling_topp
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if cfg.sampling_epsilon > 0:
        drop = logits.softmax(dim=1) < cfg.sampling_epsilon
        drop.scatter_(1, logits.argmax(dim=1, keepdim=True), False)  # the most likely token always stays
        logits = logits.masked_fill(drop, float("-inf"))
    # inverse transform sampling, the first token whose cumulative probability exceeds a uniform
    # draw: on the CPU about 9x faster than torch.multinomial (20 against 177 ms for 384 x 5,688)
    cumulative = logits.softmax(dim=1).cumsum(dim=1)  # (R, V)
    draws = torch.rand((logits.size(0), 1), generator=generator, device=logits.device) * cumulative[:, -1:]
    return torch.searchsorted(cumulative, draws, right=True).squeeze(1)  # right: never a token of probability 0


def search(
    model: SearchModel,
    src: torch.Tensor,
    src_len: torch.Tensor,
    cfg: DecodeConfig,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """The search `cfg` asks for: sampling, greedy search (beam size 1) or beam search."""
    if cfg.sampling or cfg.beam_size == 1:
        return greedy_search(model, src, src_len, cfg, generator)
    return beam_search(model, src, src_len, cfg)


@torch.no_grad()
def greedy_search(
    model: SearchModel,
    src: torch.Tensor,
    src_len: torch.Tensor,
    cfg: DecodeConfig,
    generator: torch.Generator | None = None,
) -> list[list[Hypothesis]]:
    """The most probable token at each step (or, with `cfg.sampling`, a drawn one); one hypothesis
    per sentence."""
    device = src.device
    source, state = model.encode(src, src_len)
    columns = Columns(model.vocabulary(source))
    limits = max_lengths(src_len, cfg.max_length_ratio, cfg.max_length_offset).tolist()
    batch = src.size(0)
    prev = torch.full((batch,), BOS, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch, device=device)
    history = torch.empty((batch, 0), dtype=torch.long, device=device)
    alignment = torch.empty((batch, 0), dtype=torch.long, device=device)
    coverage = torch.zeros(src.shape, device=device)
    lengths = src_len.to(device)
    active = list(range(batch))  # original index of each active sentence
    hypotheses: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for t in range(max(limits) + 1):
        step_log_probs, state, attention = model.step(prev, state, source)
        young, at_limit = [t < cfg.min_length] * len(limits), [limit == t for limit in limits]
        step_log_probs = _constrain(step_log_probs, young, at_limit, history, cfg, columns)
        chosen = sample(step_log_probs, cfg, generator) if cfg.sampling else step_log_probs.argmax(dim=1)
        log_prob += step_log_probs.gather(1, chosen.unsqueeze(1)).squeeze(1)
        prev = columns.tokens(chosen)
        coverage += attention.float()
        ends = prev == EOS
        for a in ends.nonzero().squeeze(1).tolist():
            total = float(log_prob[a])
            score = total / length_penalty(t + 1, cfg.length_penalty)
            if cfg.coverage_penalty:
                score += float(coverage_penalty(coverage[a : a + 1], lengths[a : a + 1], cfg.coverage_penalty))
            hypotheses[active[a]] = [Hypothesis(history[a].tolist(), score, total, alignment[a].tolist())]
        keep = (~ends).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        history = torch.cat([history, prev.unsqueeze(1)], dim=1)[keep]
        alignment = torch.cat([alignment, attention.argmax(dim=1, keepdim=True)], dim=1)[keep]
        if keep.numel() < len(active):
            source, state = source.index_select(keep), state.index_select(keep)
            coverage, lengths, log_prob = coverage[keep], lengths[keep], log_prob[keep]
            kept = keep.tolist()
            active, limits = [active[i] for i in kept], [limits[i] for i in kept]
        prev = prev[keep]
    return hypotheses


@torch.no_grad()
def beam_search(
    model: SearchModel, src: torch.Tensor, src_len: torch.Tensor, cfg: DecodeConfig
) -> list[list[Hypothesis]]:
    """The `nbest` best of the hypotheses that beam search finishes, per sentence, best first:
    a `BeamSearch` that every sentence joins at the start."""
    beams = BeamSearch(model, cfg)
    beams.add(src, src_len, list(range(src.size(0))))
    found: dict[int, list[Hypothesis]] = {}
    while beams.keys:
        found.update(beams.step())
    return [found[index] for index in range(src.size(0))]


class BeamSearch:
    """Beam search over a batch that sentences may join between steps: continuous batching, as the
    service runs it (requests' sentences join while others are under way, so the batch stays full).

    Each step extends the K live hypotheses of every sentence by every token and keeps the top 2K
    of its K x W candidates: those ending in EOS within the first K are finished, the first K
    others live on. A sentence is done with K finished hypotheses or at its length limit, and then
    leaves the batch. Every sentence counts its own steps (its age) for min_length, its length
    limit and the length penalty; a sentence's search is the same whenever it joins (fp32 steps
    are batch-invariant; a shortlist is cut for the sentences live together).
    """

    def __init__(self, model: SearchModel, cfg: DecodeConfig) -> None:
        self.model, self.cfg, self.K = model, cfg, cfg.beam_size
        self.use_coverage = cfg.coverage_penalty != 0.0
        # per live sentence, on the host: the caller's key, steps so far, the step it must end at, its source length
        self.keys: list[Any] = []
        self.ages: list[int] = []
        self.limits: list[int] = []
        self.src_lengths: list[int] = []
        self.found: list[list[Hypothesis]] = []  # its finished hypotheses
        self.columns = EVERY_TOKEN
        self.rows_each = 1  # state rows a sentence: 1 while every sentence is new (its K beams are alike), else K
        # set by the first `add`: per sentence its padded ids (A, S), encoded source, scores (A, K) and
        # count of finished hypotheses (A,); per state row (A*G) the state and previous token; per hypothesis
        # (A*K) its tokens and most attended positions (left-padded with -1), summed attention
        # (A*K, S, or 0 columns without a coverage penalty) and source length
        self.src = self.source = self.state = self.prev = self.scores = self.num_finished = None
        self.history = self.alignment = self.coverage = self.lengths = None

    @torch.no_grad()
    def add(self, src: torch.Tensor, src_len: torch.Tensor, keys: list[Any]) -> None:
        """Sentences src (B, S) padded ids, src_len (B,), known by `keys`, join at the next step."""
        device, K, count = src.device, self.K, len(keys)
        source, state = self.model.encode(src, src_len)
        prev = torch.full((count,), BOS, dtype=torch.long, device=device)
        if self.keys and self.rows_each == K:  # the others are under way: the newcomers take K rows at once
            expand = torch.arange(count, device=device).repeat_interleave(K)
            state, prev = state.index_select(expand), prev[expand]
        scores = torch.full((count, K), float("-inf"), device=device)
        scores[:, 0] = 0.0  # all beams start as the same empty hypothesis: keep one
        width = self.history.size(1) if self.keys else 0
        no_tokens = torch.full((count * K, width), -1, dtype=torch.long, device=device)
        coverage = torch.zeros((count * K, src.size(1) if self.use_coverage else 0), device=device)
        lengths = src_len.to(device).repeat_interleave(K)
        num_finished = torch.zeros(count, dtype=torch.long, device=device)
        if not self.keys:
            self.rows_each = 1
            self.src, self.source, self.state, self.prev, self.scores = src, source, state, prev, scores
            self.history, self.alignment, self.coverage = no_tokens, no_tokens, coverage
            self.lengths, self.num_finished = lengths, num_finished
        else:
            length = max(self.src_lengths + src_len.tolist())
            self.src = torch.cat([_fit(self.src, length, PAD), _fit(src, length, PAD)])
            self.source, self.state = self.model.join([(self.source, self.state), (source, state)], self.src)
            covered = length if self.use_coverage else 0
            self.coverage = torch.cat([_fit(self.coverage, covered, 0.0), _fit(coverage, covered, 0.0)])
            self.prev, self.scores = torch.cat([self.prev, prev]), torch.cat([self.scores, scores])
            self.history, self.alignment = torch.cat([self.history, no_tokens]), torch.cat([self.alignment, no_tokens])
            self.lengths = torch.cat([self.lengths, lengths])
            self.num_finished = torch.cat([self.num_finished, num_finished])
        self.columns = Columns(self.model.vocabulary(self.source))
        self.keys += keys
        self.found += [[] for _ in keys]
        self.ages += [0] * count
        self.limits += max_lengths(src_len, self.cfg.max_length_ratio, self.cfg.max_length_offset).tolist()
        self.src_lengths += src_len.tolist()

    def drop(self, keys: Collection[Any]) -> None:
        """Sentences nobody waits for any more end at the next step, as at their length limit."""
        self.limits = [age if key in keys else limit for key, age, limit in zip(self.keys, self.ages, self.limits)]

    @torch.no_grad()
    def step(self) -> list[tuple[Any, list[Hypothesis]]]:
        """Extend every live sentence by one token; the sentences done leave, each as (key, its
        `nbest` best hypotheses, best first)."""
        cfg, K, device, columns = self.cfg, self.K, self.prev.device, self.columns
        # (A*G, W), (A*G, S): G rows a sentence, one at a first step for all (its K beams are alike), else K
        log_probs, state, attention = self.model.step(self.prev, self.state, self.source)
        num_active, G = len(self.keys), self.rows_each
        at_limit = [age == limit for age, limit in zip(self.ages, self.limits)]
        young = [age < cfg.min_length for age in self.ages]
        log_probs = _constrain(log_probs, _rows(young, G), _rows(at_limit, G), self.history, cfg, columns)
        # a sentence's best 2K of its K x W candidates are among the best 2K tokens of each of its
        # rows, so the scores are added to K x 2K log-probs rather than K x W
        per_row = min(2 * K, log_probs.size(1))
        row_log_probs, row_columns = log_probs.topk(per_row, dim=1)  # (A*G, 2K)
        row_tokens = columns.tokens(row_columns)
        if G != K:
            expand = torch.arange(num_active, device=device).repeat_interleave(K)
            row_log_probs, row_tokens, attention = row_log_probs[expand], row_tokens[expand], attention[expand]
            state = state.index_select(expand)
        if self.use_coverage:
            self.coverage += attention.float()
        candidates = (self.scores.view(-1, 1) + row_log_probs).view(num_active, K * per_row)
        top_scores, top_ids = candidates.topk(min(2 * K, K * per_row), dim=1)  # (A, 2K)
        top_beams, top_tokens = top_ids // per_row, row_tokens.view(num_active, -1).gather(1, top_ids)
        ends = top_tokens == EOS
        rank = torch.arange(top_ids.size(1), device=device)
        finishing = ends & (rank < K) & top_scores.isfinite()  # (A, 2K)
        fin_a, fin_j = finishing.nonzero(as_tuple=True)
        if fin_a.numel():
            self._finish(fin_a, fin_a * K + top_beams[fin_a, fin_j], top_scores[fin_a, fin_j])
            self.num_finished += finishing.sum(dim=1)
        # the first K candidates that do not end live on
        survivors = (ends.long() * top_ids.size(1) + rank).argsort(dim=1)[:, :K]
        scores = top_scores.gather(1, survivors)
        beams, tokens = top_beams.gather(1, survivors), top_tokens.gather(1, survivors)
        done = (self.num_finished >= K) | ~scores[:, 0].isfinite()
        done |= torch.tensor(at_limit, device=device)
        keep = (~done).nonzero().squeeze(1)
        kept = keep.tolist()
        leaving = [
            (key, sorted(found, key=lambda h: h.score, reverse=True)[: cfg.nbest])
            for key, found in itertools.compress(zip(self.keys, self.found), done.tolist())
        ]
        rows = (keep.unsqueeze(1) * K + beams[keep]).view(-1)  # (A'*K,) rows of this step that live on
        self.state = state.index_select(rows)
        self.rows_each = K
        if len(kept) < num_active:
            self.source, self.src = self.source.index_select(keep), self.src[keep]
            self.num_finished = self.num_finished[keep]
            lists = (self.keys, self.found, self.limits, self.src_lengths, self.ages)
            self.keys, self.found, self.limits, self.src_lengths, self.ages = ([v[i] for i in kept] for v in lists)
        self.ages = [age + 1 for age in self.ages]
        width = max(self.ages, default=0)  # the oldest sentence's tokens; the columns before are padding
        self.history = torch.cat([self.history[rows], tokens[keep].view(-1, 1)], dim=1)[:, -width or None :]
        aligned = attention.argmax(dim=1, keepdim=True)[rows]
        self.alignment = torch.cat([self.alignment[rows], aligned], dim=1)[:, -width or None :]
        self.coverage, self.lengths = self.coverage[rows], self.lengths[rows]
        self.scores, self.prev = scores[keep], tokens[keep].view(-1)
        return leaving

    def _finish(self, sentences: torch.Tensor, rows: torch.Tensor, totals: torch.Tensor) -> None:
        """Hypotheses that end at this step: the row `rows` of each sentence of `sentences` with EOS,
        of log-prob `totals`."""
        cfg, indices = self.cfg, sentences.tolist()
        penalties = [length_penalty(self.ages[a] + 1, cfg.length_penalty) for a in indices]
        scores = totals / torch.tensor(penalties, device=totals.device)
        if self.use_coverage:
            scores += coverage_penalty(self.coverage[rows], self.lengths[rows], cfg.coverage_penalty)
        for a, tokens, aligned, total, score in zip(
            indices, self.history[rows].tolist(), self.alignment[rows].tolist(), totals.tolist(), scores.tolist()
        ):
            age = self.ages[a]
            self.found[a].append(Hypothesis(tokens[len(tokens) - age :], score, total, aligned[len(aligned) - age :]))


def _rows(per_sentence: list[bool], rows_each: int) -> list[bool]:
    return per_sentence if rows_each == 1 else [value for value in per_sentence for _ in range(rows_each)]


def _fit(tensor: torch.Tensor, length: int, fill: float) -> torch.Tensor:
    """tensor (N, L, ...) cut or padded with `fill` to (N, length, ...)."""
    if tensor.size(1) >= length:
        return tensor[:, :length]
    padding = tensor.new_full((tensor.size(0), length - tensor.size(1), *tensor.shape[2:]), fill)
    return torch.cat([tensor, padding], dim=1)
