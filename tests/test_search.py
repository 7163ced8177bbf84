"""Greedy and beam search against scripted models with hand-computed answers, and on real models."""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from nmt import checkpoint, synthetic
from nmt.config import DecodeConfig, ModelConfig
from nmt.ensemble import Ensemble
from nmt.model import InferenceModel, Seq2Seq
from nmt.search import (
    BeamSearch,
    Hypothesis,
    ban_repeated_ngrams,
    beam_search,
    coverage_penalty,
    greedy_search,
    length_penalty,
    max_lengths,
    sample,
)
from nmt.shortlist import Shortlist
from nmt.vocab import BOS, EOS, PAD, UNK

A, B = 4, 5  # two ordinary target tokens
VOCAB = 6
# (source sentence without padding, tokens generated so far) -> {next token: probability}
NextTokens = Callable[[tuple[int, ...], tuple[int, ...]], dict[int, float]]
# (tokens generated so far) -> the source position the step attends to, all of its weight
Attend = Callable[[tuple[int, ...]], int]


class FakeSource(NamedTuple):
    src: torch.Tensor  # (B, S)

    def index_select(self, order: torch.Tensor) -> FakeSource:
        return FakeSource(self.src.index_select(0, order))


class FakeState(NamedTuple):
    fed: torch.Tensor  # (B, t): every token fed so far, BOS first

    def index_select(self, order: torch.Tensor) -> FakeState:
        return FakeState(self.fed.index_select(0, order))


class ScriptedModel:
    """A model whose next-token distribution is a function of the source and the prefix.

    The prefix lives in the state, so a search that reorders states wrongly scores the wrong prefix.
    """

    def __init__(self, next_tokens: NextTokens, vocab_size: int = VOCAB, attend: Attend = lambda prefix: 0) -> None:
        self.next_tokens = next_tokens
        self.vocab_size = vocab_size
        self.attend = attend
        self.step_rows: list[int] = []  # batch rows of each step call

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[FakeSource, FakeState]:
        return FakeSource(src), FakeState(torch.empty((src.size(0), 0), dtype=torch.long))

    def step(
        self, prev_tokens: torch.Tensor, state: FakeState, source: FakeSource
    ) -> tuple[torch.Tensor, FakeState, torch.Tensor]:
        fed = torch.cat([state.fed, prev_tokens.unsqueeze(1)], dim=1)
        rows = []
        attention = torch.zeros(fed.size(0), source.src.size(1))
        per_row = source.src.repeat_interleave(fed.size(0) // source.src.size(0), dim=0)  # beams share a source
        for row, (src_row, padded_row) in enumerate(zip(per_row.tolist(), fed.tolist())):
            fed_row = [token for token in padded_row if token != PAD]  # rows that joined later are left-padded
            assert fed_row[0] == BOS
            sentence = tuple(token for token in src_row if token != PAD)
            log_probs = [-math.inf] * self.vocab_size
            for token, prob in self.next_tokens(sentence, tuple(fed_row[1:])).items():
                log_probs[token] = math.log(prob)
            rows.append(log_probs)
            attention[row, self.attend(tuple(fed_row[1:]))] = 1.0
        self.step_rows.append(len(rows))
        return torch.tensor(rows), FakeState(fed), attention

    def vocabulary(self, source: FakeSource) -> None:
        return None  # every token has its column

    def join(self, parts: list[tuple[FakeSource, FakeState]], src: torch.Tensor) -> tuple[FakeSource, FakeState]:
        width = max(state.fed.size(1) for _, state in parts)
        fed = [F.pad(state.fed, (width - state.fed.size(1), 0), value=PAD) for _, state in parts]
        return FakeSource(src), FakeState(torch.cat(fed))


def scripted(table: dict[tuple[int, ...], dict[int, float]]) -> ScriptedModel:
    """Distributions by prefix; prefixes the test does not care about can only end."""
    return ScriptedModel(lambda sentence, prefix: table.get(prefix, {EOS: 1.0}))


def sources(*lengths: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded sources whose content tells sentences apart: sentence i is (i + 4) repeated."""
    src = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    for row, length in enumerate(lengths):
        src[row, :length] = row + 4
    return src, torch.tensor(lengths)


Batch = tuple[torch.Tensor, torch.Tensor]


def one_sentence(batch: Batch, row: int) -> Batch:
    """Row `row` of a batch as a batch of its own, without the padding."""
    src, src_len = batch
    return src[row : row + 1, : src_len[row]], src_len[row : row + 1]


def beam(
    model: object,
    batch: Batch,
    beam_size: int,
    nbest: int,
    alpha: float = 0.0,
    ratio: float = 1.0,
    offset: int = 0,
    **decode: object,
) -> list[list[Hypothesis]]:
    """Beam search with these settings; `decode` holds further DecodeConfig keys."""
    src, src_len = batch
    cfg = DecodeConfig(
        beam_size=beam_size, length_penalty=alpha, max_length_ratio=ratio, max_length_offset=offset, **decode
    )
    cfg.nbest = nbest  # past the config's check: beam search can finish more than beam_size hypotheses
    return beam_search(model, src, src_len, cfg)


def greedy(
    model: object,
    batch: Batch,
    alpha: float = 0.0,
    ratio: float = 1.0,
    offset: int = 0,
    **decode: object,
) -> list[list[Hypothesis]]:
    src, src_len = batch
    cfg = DecodeConfig(beam_size=1, length_penalty=alpha, max_length_ratio=ratio, max_length_offset=offset, **decode)
    return greedy_search(model, src, src_len, cfg)


def assert_hypotheses(actual: list[Hypothesis], expected: list[tuple[list[int], float, float]]) -> None:
    """expected: (tokens, log-prob, score) per hypothesis, best first."""
    assert [h.tokens for h in actual] == [tokens for tokens, _, _ in expected]
    for hypothesis, (_, log_prob, score) in zip(actual, expected):
        assert hypothesis.log_prob == pytest.approx(log_prob, rel=1e-6)
        assert hypothesis.score == pytest.approx(score, rel=1e-6)


def test_length_penalty_and_limits_follow_the_formulas() -> None:
    assert length_penalty(7, 0.0) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(1, 0.6) == pytest.approx(1.0)
    assert length_penalty(10, 0.5) == pytest.approx(2.5**0.5)
    assert max_lengths(torch.tensor([2, 3, 10]), 1.5, 1).tolist() == [4, 5, 16]


# Greedy takes A (0.6) and then can only end with 0.4: 0.24 in all.
# B (0.4) is worse first but ends with 0.9: 0.36.
GREEDY_TRAP = {
    (): {A: 0.6, B: 0.4},
    (A,): {EOS: 0.4, A: 0.35, B: 0.25},
    (B,): {EOS: 0.9, A: 0.1},
}


def test_greedy_takes_the_locally_best_token() -> None:
    (hypotheses,) = greedy(scripted(GREEDY_TRAP), sources(5))
    assert_hypotheses(hypotheses, [([A], math.log(0.24), math.log(0.24))])


def test_beam_search_finds_what_greedy_misses() -> None:
    (hypotheses,) = beam(scripted(GREEDY_TRAP), sources(5), beam_size=2, nbest=2)
    assert_hypotheses(hypotheses, [([B], math.log(0.36), math.log(0.36)), ([A], math.log(0.24), math.log(0.24))])


# Ending right away is likeliest (0.5) and finishes at step 0; the two live beams go on
# to finish at step 2 as A A (0.3 * 0.6 * 0.8) and B B (0.2 * 0.7 * 0.6).
# B EOS (0.04) ranks below the beam at step 1 and must not finish.
EARLY_END = {
    (): {EOS: 0.5, A: 0.3, B: 0.2},
    (A,): {A: 0.6, B: 0.3, EOS: 0.1},
    (B,): {B: 0.7, EOS: 0.2, A: 0.1},
    (A, A): {EOS: 0.8, A: 0.2},
    (B, B): {EOS: 0.6, B: 0.4},
}


def test_a_hypothesis_that_ends_early_is_kept_while_the_others_continue() -> None:
    model = scripted(EARLY_END)
    (hypotheses,) = beam(model, sources(5), beam_size=2, nbest=2)

    assert_hypotheses(hypotheses, [([], math.log(0.5), math.log(0.5)), ([A, A], math.log(0.144), math.log(0.144))])
    assert model.step_rows == [1, 2, 2]  # the empty hypotheses of the first step share one row


def test_beam_search_returns_every_finished_hypothesis_up_to_nbest_ranked_by_score() -> None:
    (hypotheses,) = beam(scripted(EARLY_END), sources(5), beam_size=2, nbest=3, alpha=1.0)
    expected = [
        ([], math.log(0.5), math.log(0.5) / length_penalty(1, 1.0)),
        ([A, A], math.log(0.144), math.log(0.144) / length_penalty(3, 1.0)),
        ([B, B], math.log(0.084), math.log(0.084) / length_penalty(3, 1.0)),
    ]
    assert_hypotheses(hypotheses, expected)


def test_greedy_ends_at_once_when_eos_is_best() -> None:
    (hypotheses,) = greedy(scripted(EARLY_END), sources(5), alpha=1.0)
    assert_hypotheses(hypotheses, [([], math.log(0.5), math.log(0.5) / length_penalty(1, 1.0))])


def never_ends(probs: dict[int, float]) -> ScriptedModel:
    return ScriptedModel(lambda sentence, prefix: probs)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_greedy_forces_eos_at_ratio_times_source_length_plus_offset(alpha: float) -> None:
    # limits: floor(2 * 1.5) + 1 = 4 and floor(3 * 1.5) + 1 = 5
    model = never_ends({A: 0.9, EOS: 0.1})
    results = greedy(model, sources(2, 3), alpha=alpha, ratio=1.5, offset=1)

    for hypotheses, limit in zip(results, (4, 5)):
        log_prob = limit * math.log(0.9) + math.log(0.1)
        assert_hypotheses(hypotheses, [([A] * limit, log_prob, log_prob / length_penalty(limit + 1, alpha))])
    assert len(model.step_rows) == 6


def test_beam_search_forces_eos_at_ratio_times_source_length_plus_offset() -> None:
    # EOS is too unlikely to enter the beam, so every hypothesis runs to its limit
    model = never_ends({A: 0.6, B: 0.3999, EOS: 1e-4})
    results = beam(model, sources(2, 3), beam_size=2, nbest=2, ratio=1.5, offset=1)

    for hypotheses, limit in zip(results, (4, 5)):
        best, second = hypotheses
        assert best.tokens == [A] * limit
        assert best.log_prob == pytest.approx(limit * math.log(0.6) + math.log(1e-4), rel=1e-6)
        assert sorted(second.tokens) == [A] * (limit - 1) + [B]
        assert second.log_prob == pytest.approx((limit - 1) * math.log(0.6) + math.log(0.3999 * 1e-4), rel=1e-6)
    # the shorter sentence leaves the batch after its limit step
    assert model.step_rows == [2] + [4] * 4 + [2]


# A short hypothesis, B (0.6), against a long one, A x 9 (0.4): every other step is certain.
SHORT_OR_LONG = {(): {B: 0.6, A: 0.4}, (B,): {EOS: 1.0}, **{(A,) * n: {A: 1.0} for n in range(1, 9)}}
SHORT_OR_LONG[(A,) * 9] = {EOS: 1.0}


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_length_penalty_decides_between_a_short_and_a_long_hypothesis(alpha: float) -> None:
    (hypotheses,) = beam(scripted(SHORT_OR_LONG), sources(10), beam_size=2, nbest=2, alpha=alpha)

    short = ([B], math.log(0.6), math.log(0.6) / ((5 + 2) / 6) ** alpha)
    long = ([A] * 9, math.log(0.4), math.log(0.4) / ((5 + 10) / 6) ** alpha)
    # alpha 0 ranks by log-prob; alpha 0.5 still favours the short one (-0.4729 vs -0.5795),
    # alpha 1 the long one (-0.4378 vs -0.3665)
    assert_hypotheses(hypotheses, [long, short] if alpha == 1.0 else [short, long])


def test_greedy_normalizes_its_score_with_the_length_penalty() -> None:
    (hypotheses,) = greedy(scripted(SHORT_OR_LONG), sources(10), alpha=1.0)
    assert_hypotheses(hypotheses, [([B], math.log(0.6), math.log(0.6) / (7 / 6))])


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_min_length_holds_eos_back(search: str) -> None:
    # EOS is best at every step; from step 2 on it is allowed
    model = never_ends({EOS: 0.5, A: 0.3, B: 0.2})
    if search == "greedy":
        (hypotheses,) = greedy(model, sources(5), min_length=2)
    else:
        (hypotheses,) = beam(model, sources(5), beam_size=2, nbest=1, min_length=2)
    assert_hypotheses(hypotheses, [([A, A], math.log(0.3 * 0.3 * 0.5), math.log(0.3 * 0.3 * 0.5))])


def test_the_length_limit_wins_over_min_length() -> None:
    model = never_ends({EOS: 0.5, A: 0.3, B: 0.2})
    (hypotheses,) = greedy(model, sources(2), ratio=1.0, offset=0, min_length=5)
    assert_hypotheses(hypotheses, [([A, A], math.log(0.3 * 0.3 * 0.5), math.log(0.3 * 0.3 * 0.5))])


def test_ban_repeated_ngrams_bans_what_would_complete_a_seen_ngram() -> None:
    history = torch.tensor([[A, B, A], [A, B, B], [B, A, B]])
    banned = ban_repeated_ngrams(torch.zeros(3, VOCAB), history, 2).isinf()
    # row 0 ends in A and "A B" occurred; row 1 ends in B and "B B" occurred; row 2 ends in B, "B A" occurred
    assert banned.nonzero().tolist() == [[0, B], [1, B], [2, A]]
    trigram_history = torch.tensor([[A, B, A, B], [A, B, B, A]])
    banned = ban_repeated_ngrams(torch.zeros(2, VOCAB), trigram_history, 3).isinf()
    assert banned.nonzero().tolist() == [[0, A]]  # row 0 ends in "A B" and "A B A" occurred
    assert not ban_repeated_ngrams(torch.zeros(3, VOCAB), history[:, :1], 2).isinf().any()


def test_no_repeat_ngram_of_one_never_repeats_a_token() -> None:
    model = never_ends({A: 0.6, B: 0.3, EOS: 0.1})
    # A, then B (A is spent), then only EOS is left
    (hypotheses,) = greedy(model, sources(5), no_repeat_ngram=1)
    log_prob = math.log(0.6 * 0.3 * 0.1)
    assert_hypotheses(hypotheses, [([A, B], log_prob, log_prob)])

    # A B and B A tie; A A B and the like would be likelier without the ban
    (hypotheses,) = beam(model, sources(5), beam_size=2, nbest=2, no_repeat_ngram=1)
    assert sorted(h.tokens for h in hypotheses) == [[A, B], [B, A]]
    assert [h.log_prob for h in hypotheses] == pytest.approx([log_prob, log_prob])


def test_coverage_penalty_follows_the_formula() -> None:
    coverage = torch.tensor([[0.5, 2.0, 0.0], [0.25, 0.0, 0.0]])
    penalty = coverage_penalty(coverage, torch.tensor([2, 3]), beta=0.2)
    # positions past the source length do not count; an unattended one counts as 1e-10
    assert penalty.tolist() == pytest.approx([0.2 * math.log(0.5), 0.2 * (math.log(0.25) + 2 * math.log(1e-10))])


# B ends at once but attends to source position 0 twice; A A attends to 0, 1, 1 and covers both.
COVERAGE = {(): {B: 0.6, A: 0.4}, (B,): {EOS: 1.0}, (A,): {A: 1.0}, (A, A): {EOS: 1.0}}


def attend_one_after_a(prefix: tuple[int, ...]) -> int:
    return 1 if prefix and prefix[-1] == A else 0


@pytest.mark.parametrize("beta", [0.0, 0.2])
def test_coverage_penalty_prefers_the_hypothesis_that_covers_the_source(beta: float) -> None:
    model = ScriptedModel(lambda sentence, prefix: COVERAGE.get(prefix, {EOS: 1.0}), attend=attend_one_after_a)
    (hypotheses,) = beam(model, sources(2), beam_size=2, nbest=2, offset=2, coverage_penalty=beta)

    short = ([B], math.log(0.6), math.log(0.6) + beta * math.log(1e-10))
    long = ([A, A], math.log(0.4), math.log(0.4))
    assert_hypotheses(hypotheses, [long, short] if beta else [short, long])
    # each token is aligned to the position its step attended to
    assert {tuple(h.tokens): h.alignment for h in hypotheses} == {(B,): [0], (A, A): [0, 1]}


def test_greedy_reports_alignment_and_coverage_penalty() -> None:
    model = ScriptedModel(lambda sentence, prefix: COVERAGE.get(prefix, {EOS: 1.0}), attend=attend_one_after_a)
    (hypotheses,) = greedy(model, sources(2), offset=2, coverage_penalty=0.2)
    assert_hypotheses(hypotheses, [([B], math.log(0.6), math.log(0.6) + 0.2 * math.log(1e-10))])
    assert hypotheses[0].alignment == [0]


def test_sampling_draws_within_top_k_and_top_p_and_repeats_with_a_seed() -> None:
    log_probs = torch.tensor([[0.05, 0.1, 0.15, 0.3, 0.4]]).log().expand(2000, 5)

    def draws(seed: int = 0, **sampling: float) -> torch.Tensor:
        return sample(log_probs, DecodeConfig(sampling=True, **sampling), torch.Generator().manual_seed(seed))

    assert set(draws(sampling_topk=2).tolist()) == {3, 4}
    assert set(draws(sampling_topp=0.7).tolist()) == {3, 4}  # 0.4 + 0.3 reaches 0.7
    assert set(draws(sampling_topp=0.75).tolist()) == {2, 3, 4}
    assert set(draws(sampling_topk=1, temperature=5.0).tolist()) == {4}
    assert set(draws(sampling_epsilon=0.12).tolist()) == {2, 3, 4}  # 0.1 and 0.05 are below epsilon
    assert set(draws(sampling_epsilon=0.5).tolist()) == {4}  # none reaches it: the most likely stays
    assert len(set(draws().tolist())) == 5
    many = sample(log_probs[:1].expand(50000, 5), DecodeConfig(sampling=True), torch.Generator().manual_seed(0))
    frequencies = torch.bincount(many, minlength=5).double() / 50000
    assert torch.allclose(frequencies, log_probs[0].exp().double(), atol=0.007)  # 50,000 draws: 3 sigma
    assert torch.equal(draws(3, sampling_topp=0.9), draws(3, sampling_topp=0.9))
    assert not torch.equal(draws(3, sampling_topp=0.9), draws(4, sampling_topp=0.9))
    # a high temperature flattens the distribution: the least likely token is drawn more often
    hot = (draws(temperature=10.0) == 0).float().mean()
    assert hot > 2 * (draws() == 0).float().mean()


def test_greedy_with_top_1_sampling_is_greedy() -> None:
    model = ScriptedModel(hashed_next_tokens)
    batch = sources(3, 1, 6, 2)
    src, src_len = batch
    cfg = DecodeConfig(sampling=True, sampling_topk=1, length_penalty=0.6, max_length_ratio=1.0, max_length_offset=2)
    sampled = greedy_search(model, src, src_len, cfg, generator=torch.Generator())
    assert sampled == greedy(ScriptedModel(hashed_next_tokens), batch, alpha=0.6, offset=2)


def hashed_next_tokens(sentence: tuple[int, ...], prefix: tuple[int, ...]) -> dict[int, float]:
    """A fixed pseudo-random distribution per (sentence, prefix); EOS grows likelier with length."""
    generator = torch.Generator().manual_seed(zlib.crc32(repr((sentence, prefix)).encode()))
    logits = 2 * torch.randn(VOCAB, dtype=torch.float64, generator=generator)
    logits[EOS] += len(prefix) - len(sentence)
    allowed = [UNK, EOS, A, B]
    probs = torch.softmax(logits[allowed], dim=0)
    return dict(zip(allowed, probs.tolist()))


@pytest.mark.parametrize(("beam_size", "alpha"), [(1, 0.0), (3, 0.0), (3, 1.0), (4, 0.6)])
def test_beam_search_gives_each_sentence_the_same_result_batched_or_alone(beam_size: int, alpha: float) -> None:
    batch = sources(3, 1, 6, 2)
    batched_model = ScriptedModel(hashed_next_tokens)
    batched = beam(batched_model, batch, beam_size, nbest=beam_size, alpha=alpha, offset=2)

    # one row per sentence at the first step, then sentences finished at different steps, so the
    # batch shrank more than once
    assert batched_model.step_rows[0] == len(batch[0])
    rows_per_sentence = [rows // beam_size for rows in batched_model.step_rows[1:]]
    assert len(set(rows_per_sentence)) >= 3
    assert rows_per_sentence == sorted(rows_per_sentence, reverse=True)
    for row, hypotheses in enumerate(batched):
        (alone,) = beam(
            ScriptedModel(hashed_next_tokens), one_sentence(batch, row), beam_size, beam_size, alpha, offset=2
        )
        assert len(hypotheses) == beam_size
        assert hypotheses == alone


def test_greedy_gives_each_sentence_the_same_result_batched_or_alone() -> None:
    batch = sources(3, 1, 6, 2)
    batched = greedy(ScriptedModel(hashed_next_tokens), batch, alpha=0.6, offset=2)

    assert len({len(hypotheses[0].tokens) for hypotheses in batched}) >= 2
    for row, hypotheses in enumerate(batched):
        (alone,) = greedy(ScriptedModel(hashed_next_tokens), one_sentence(batch, row), alpha=0.6, offset=2)
        assert hypotheses == alone


def joined_search(
    model: object, batch: Batch, cfg: DecodeConfig, joins: dict[int, list[list[int]]]
) -> tuple[list[list[Hypothesis]], list[list[int]]]:
    """Beam search in one `BeamSearch` that each group of rows of `joins[k]` joins before step k;
    also the live sentences' ages at each step."""
    src, src_len = batch
    beams, found, ages = BeamSearch(model, cfg), {}, []
    for step in range(100):
        for rows in joins.get(step, []):
            beams.add(src[rows, : int(src_len[rows].max())], src_len[rows], rows)
        if beams.keys:
            ages.append(list(beams.ages))
            found.update(beams.step())
        if len(found) == len(src):
            return [found[row] for row in range(len(src))], ages
    raise AssertionError("the search did not end")


JOINS = {0: [[0, 1], [5]], 2: [[2]], 3: [[3], [4]]}  # two groups join new sentences, and sentences under way


@pytest.mark.parametrize(
    "decode",
    [
        {"beam_size": 3, "length_penalty": 0.6},
        {"beam_size": 4, "no_repeat_ngram": 2, "min_length": 3, "coverage_penalty": 0.4},
        {"beam_size": 1},
    ],
    ids=["beam", "constraints and coverage", "beam of one"],
)
def test_a_sentence_that_joins_a_search_under_way_gets_what_it_gets_alone(decode: dict) -> None:
    """Continuous batching: each sentence's hypotheses and scores are the same whichever step it
    joins at, with its own min length, length limit, n-grams, coverage and length penalty."""
    batch = sources(3, 2, 6, 2, 4, 5)
    cfg = DecodeConfig(max_length_ratio=1.0, max_length_offset=2, nbest=decode["beam_size"], **decode)
    attend = lambda prefix: len(prefix) % 2  # noqa: E731  coverage then depends on the length
    joined, ages = joined_search(ScriptedModel(hashed_next_tokens, attend=attend), batch, cfg, JOINS)

    assert any(0 in step and max(step) > 0 for step in ages), "no sentence joined others under way"
    for row, hypotheses in enumerate(joined):
        src, src_len = one_sentence(batch, row)
        (alone,) = beam_search(ScriptedModel(hashed_next_tokens, attend=attend), src, src_len, cfg)
        assert len(hypotheses) == decode["beam_size"]
        assert hypotheses == alone


def test_joining_is_batch_invariant_on_real_models_and_cuts_the_shortlist_for_the_live_sentences() -> None:
    """fp32 models, one and an ensemble: the same tokens and scores joined or alone; with a
    shortlist, the output layer after a join is cut for the sentences then live."""
    batch = random_sources(3, [5, 2, 7, 3, 4, 6])
    cfg = DecodeConfig(beam_size=4, nbest=4, max_length_ratio=1.5, max_length_offset=3, no_repeat_ngram=3)
    models = [InferenceModel(small_seq2seq(seed)) for seed in (3, 4)]
    for model in (models[0], Ensemble(models)):
        joined, _ = joined_search(model, batch, cfg, JOINS)
        for row, hypotheses in enumerate(joined):
            (alone,) = beam_search(model, *one_sentence(batch, row), cfg)
            assert [h.tokens for h in hypotheses] == [h.tokens for h in alone]
            assert [h.score for h in hypotheses] == pytest.approx([h.score for h in alone], abs=1e-5)

    table = {"per_source": torch.randint(EOS + 1, 25, (30, 2), dtype=torch.int32), "frequent": torch.tensor([7, 8])}
    shortlist = Shortlist(table, 2, 2, torch.device("cpu"))
    beams = BeamSearch(InferenceModel(small_seq2seq(3), shortlist), cfg)
    src, src_len = batch
    beams.add(src[:2, :5], src_len[:2], [0, 1])
    beams.step()
    beams.add(src[2:4], src_len[2:4], [2, 3])
    live = src[[row for row in range(4) if row in beams.keys]]
    assert torch.equal(beams.model.vocabulary(beams.source), shortlist.vocabulary(live))


class Shortlisted:
    """A model that gives log-probs only for the tokens `ids`, as with a lexical shortlist, or with
    `narrow=False` for every token, -inf outside `ids` (the same distribution, full width)."""

    def __init__(self, model: ScriptedModel, ids: list[int], narrow: bool) -> None:
        self.model, self.ids, self.narrow = model, torch.tensor(ids), narrow

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[FakeSource, FakeState]:
        return self.model.encode(src, src_len)

    def step(self, prev: torch.Tensor, state: FakeState, source: FakeSource) -> tuple:
        log_probs, state, attention = self.model.step(prev, state, source)
        if self.narrow:
            return log_probs[:, self.ids], state, attention
        outside = torch.ones(log_probs.size(1), dtype=torch.bool).index_fill(0, self.ids, False)
        return log_probs.masked_fill(outside, -math.inf), state, attention

    def vocabulary(self, source: FakeSource) -> torch.Tensor | None:
        return self.ids if self.narrow else None


@pytest.mark.parametrize(
    "ids", [[UNK, EOS, A, B], [EOS, B], [PAD, UNK, BOS, EOS, B]], ids=["all", "no A", "no A no UNK"]
)
@pytest.mark.parametrize(
    "decode",
    [
        {"beam_size": 3},
        {"beam_size": 1},
        {"beam_size": 4, "no_repeat_ngram": 2, "min_length": 2},
        {"beam_size": 2, "min_length": 9},
    ],
    ids=["beam", "greedy", "constraints", "limit over min_length"],
)
def test_a_step_over_some_tokens_searches_as_one_over_all_with_the_rest_impossible(
    ids: list[int], decode: dict
) -> None:
    """Columns for the tokens of `vocabulary(source)` only: the same hypotheses and scores as the
    full width with -inf outside them; whatever a constraint bans or forces, by token."""
    batch = sources(3, 1, 6, 2)
    search = beam if decode["beam_size"] > 1 else greedy
    options = {key: value for key, value in decode.items() if key != "beam_size"}
    sizes = {"beam_size": decode["beam_size"], "nbest": decode["beam_size"]} if search is beam else {}

    def run(narrow: bool) -> list[list[Hypothesis]]:
        return search(Shortlisted(ScriptedModel(hashed_next_tokens), ids, narrow), batch, offset=3, **sizes, **options)

    narrow, wide = run(True), run(False)
    assert narrow == wide
    assert {token for hyps in narrow for hyp in hyps for token in hyp.tokens} <= set(ids) - {EOS}
    if decode.get("min_length") == 9:
        assert all(len(hyp.tokens) <= 3 * 1 + 3 for hyp in narrow[0]), "the limit still forces EOS"


def test_sampling_draws_only_the_tokens_of_the_step_s_columns() -> None:
    cfg = DecodeConfig(sampling=True, temperature=2.0, seed=0)
    src, src_len = sources(3, 1, 6, 2)
    model = Shortlisted(ScriptedModel(hashed_next_tokens), [UNK, EOS, B], narrow=True)
    drawn = greedy_search(model, src, src_len, cfg, torch.Generator().manual_seed(0))
    tokens = {token for hyps in drawn for token in hyps[0].tokens}
    assert tokens and tokens <= {UNK, B}


EXHAUSTIVE_CHOICES = (UNK, A)  # ordinary tokens; PAD and BOS get no probability


def random_table(seed: int, steps: int, vocab: int) -> torch.Tensor:
    """p(next | step, previous token), (steps + 1, vocab, vocab), zero outside UNK, A and EOS."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.full((steps + 1, vocab, vocab), -math.inf, dtype=torch.float64)
    allowed = [*EXHAUSTIVE_CHOICES, EOS]
    logits[:, :, allowed] = 2 * torch.randn(steps + 1, vocab, len(allowed), dtype=torch.float64, generator=generator)
    return torch.softmax(logits, dim=-1)


def table_model(table: torch.Tensor) -> ScriptedModel:
    def next_tokens(sentence: tuple[int, ...], prefix: tuple[int, ...]) -> dict[int, float]:
        probs = table[len(prefix), prefix[-1] if prefix else BOS]
        return {token: float(probs[token]) for token in (*EXHAUSTIVE_CHOICES, EOS)}

    return ScriptedModel(next_tokens, vocab_size=table.size(-1))


def enumerate_sequences(table: torch.Tensor, max_len: int, alpha: float) -> list[tuple[list[int], float, float]]:
    """Every sequence of at most max_len choices, then EOS, with its log-prob and score, best first."""
    results = []
    for length in range(max_len + 1):
        for tokens in itertools.product(EXHAUSTIVE_CHOICES, repeat=length):
            previous = (BOS, *tokens)
            log_prob = sum(math.log(table[t, previous[t], token]) for t, token in enumerate((*tokens, EOS)))
            results.append((list(tokens), log_prob, log_prob / length_penalty(length + 1, alpha)))
    return sorted(results, key=lambda result: result[2], reverse=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_a_wide_beam_finds_the_best_of_all_sequences(seed: int, alpha: float) -> None:
    max_len = 3
    table = random_table(seed, max_len, vocab=5)
    everything = enumerate_sequences(table, max_len, alpha)
    assert len(everything) == 1 + 2 + 4 + 8

    # the limit forces EOS after max_len tokens: source length 3, ratio 1, offset 0
    (hypotheses,) = beam(table_model(table), sources(max_len), beam_size=16, nbest=15, alpha=alpha)

    assert_hypotheses(hypotheses[:1], everything[:1])
    assert_hypotheses(hypotheses, everything)


@pytest.mark.parametrize("nbest", [1, 2, 3])
def test_nbest_lists_have_the_requested_size_and_are_sorted(nbest: int) -> None:
    results = beam(ScriptedModel(hashed_next_tokens), sources(3, 5, 2), beam_size=3, nbest=nbest, alpha=0.6, offset=3)
    full = beam(ScriptedModel(hashed_next_tokens), sources(3, 5, 2), beam_size=3, nbest=3, alpha=0.6, offset=3)

    for hypotheses, all_hypotheses in zip(results, full):
        assert len(hypotheses) == nbest
        scores = [h.score for h in all_hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert len(set(map(tuple, (h.tokens for h in all_hypotheses)))) == 3
        assert hypotheses == all_hypotheses[:nbest]


def small_seq2seq(seed: int) -> Seq2Seq:
    torch.manual_seed(seed)
    model = Seq2Seq(ModelConfig(embed_size=16, hidden_size=24, attention="general", dropout=0.0), 30, 25).eval()
    with torch.no_grad():
        # at the default +-0.1 init the outputs hardly depend on the input; larger weights and a
        # boost to EOS make sentences end at different steps, so the batch shrinks as it would
        for parameter in model.parameters():
            parameter.uniform_(-1.0, 1.0)
        model.output.bias[EOS] += 1.5
    return model


def random_sources(seed: int, lengths: list[int], vocab: int = 30) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    for row, length in enumerate(lengths):
        src[row, :length] = torch.randint(EOS + 1, vocab, (length,), generator=generator)
    return src, torch.tensor(lengths)


@pytest.mark.parametrize("seed", [0, 1])
def test_beam_of_one_is_greedy_on_a_real_model(seed: int) -> None:
    model = small_seq2seq(seed)
    batch = random_sources(seed, [5, 2, 7, 3, 4, 6, 1, 8])

    by_beam = beam(model, batch, beam_size=1, nbest=1, alpha=0.0, ratio=1.0, offset=2)
    by_greedy = greedy(model, batch, alpha=0.0, ratio=1.0, offset=2)

    assert [h[0].tokens for h in by_beam] == [h[0].tokens for h in by_greedy]
    for (beam_hypothesis,), (greedy_hypothesis,) in zip(by_beam, by_greedy):
        assert beam_hypothesis.log_prob == pytest.approx(greedy_hypothesis.log_prob, abs=1e-5)
        assert beam_hypothesis.score == pytest.approx(greedy_hypothesis.score, abs=1e-5)
    lengths = {len(h[0].tokens) for h in by_greedy}
    assert len(lengths) >= 3, "the check is weak if every sentence stops at the same step"


def test_beam_log_probs_are_what_the_model_assigns_to_the_hypotheses() -> None:
    """Rescoring each hypothesis by teacher forcing, alone, gives its log-prob: states were reordered right."""
    model = small_seq2seq(2)
    batch = random_sources(2, [4, 7, 2])
    results = beam(model, batch, beam_size=4, nbest=4, alpha=0.0, ratio=1.0, offset=2)

    with torch.no_grad():
        for row, hypotheses in enumerate(results):
            assert len(hypotheses) == 4
            for hypothesis in hypotheses:
                tgt_in = torch.tensor([[BOS, *hypothesis.tokens]])
                tgt_out = torch.tensor([*hypothesis.tokens, EOS])
                logits = model.logits(model(*one_sentence(batch, row), tgt_in))
                log_prob = torch.log_softmax(logits[0], dim=-1).gather(1, tgt_out.unsqueeze(1)).sum()
                assert hypothesis.log_prob == pytest.approx(float(log_prob), abs=1e-4)


@pytest.fixture(scope="module")
def trained_model_and_test_sources(trained_checkpoint: Path) -> tuple[Seq2Seq, Batch]:
    model, src_pipeline, _, _ = checkpoint.restore(checkpoint.load(trained_checkpoint), trained_checkpoint)
    data = tiny_config().data
    lines, _ = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)
    ids = src_pipeline.encode(lines[:50])
    src = torch.full((len(ids), max(map(len, ids))), PAD, dtype=torch.long)
    for row, sentence in enumerate(ids):
        src[row, : len(sentence)] = torch.tensor(sentence)
    return model, (src, torch.tensor([len(sentence) for sentence in ids]))


def test_beam_search_never_scores_below_greedy_on_a_trained_model(
    trained_model_and_test_sources: tuple[Seq2Seq, Batch],
) -> None:
    model, batch = trained_model_and_test_sources
    assert model.training is False
    assert min(batch[1].tolist()) > 0

    by_greedy = greedy(model, batch, alpha=0.0, ratio=2.0, offset=10)
    by_beam = beam(model, batch, beam_size=5, nbest=5, alpha=0.0, ratio=2.0, offset=10)

    assert len(by_beam) == len(by_greedy) == 50
    for (greedy_hypothesis,), hypotheses in zip(by_greedy, by_beam):
        assert len(hypotheses) == 5
        scores = [h.score for h in hypotheses]
        assert scores == sorted(scores, reverse=True)
        assert hypotheses[0].log_prob >= greedy_hypothesis.log_prob - 1e-4
