"""Minimum Bayes risk decoding: of N candidate translations of a sentence, the one that agrees most
with the others (Kumar & Byrne, 2004; Eikema & Aziz, 2020; Freitag et al., 2023).

The candidates stand in for the model's distribution: candidate h's expected utility is its mean
sentence-level score (sacrebleu's chrF or BLEU on detokenized text) against the other N - 1 as
references,

    E[u(h)] = 1 / (N - 1) * sum_{j != h} u(h, y_j),

so a text that occurs k times is k references (k draws of it estimate its probability), and a
candidate is never its own reference. The candidates come from `candidates`: the best of a beam
search and/or draws from the model. `rank` orders the distinct texts by expected utility, ties
in candidate order (the beam's best first). Each distinct text is scored once against each other:
`Utility.matrix` extracts every text's n-grams once and counts the matches of all pairs together.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from sacrebleu.metrics import BLEU, CHRF

from nmt.config import DECODE_DEFAULTS, MBR_KEYS, SAMPLING_KEYS, DecodeConfig
from nmt.search import Hypothesis, SearchModel, greedy_search, search


class Utility:
    """Sentence-level chrF (sacrebleu's `sentence_chrf`) or BLEU (`sentence_bleu`: effective order,
    exponential smoothing) of every text of a list against every other as its reference.

    The statistics are counted here, as sacrebleu counts them (tests check the matrix against
    `sentence_score`), and scored by sacrebleu's own formula for them."""

    def __init__(self, name: str) -> None:
        if name not in ("chrf", "bleu"):
            raise ValueError(f"no MBR utility {name!r}: chrf or bleu")
        self.name = name
        self.metric = CHRF() if name == "chrf" else BLEU(effective_order=True)

    def matrix(self, texts: Sequence[str]) -> np.ndarray:
        """(M, M) float64: [i, j] = the score of texts[i] with texts[j] as its one reference."""
        metric = self.metric
        # what sacrebleu extracts from a reference, it extracts alike from a hypothesis
        info = [metric._extract_reference_info([metric._preprocess_segment(text)]) for text in texts]
        size = len(texts)
        if self.name == "chrf":
            columns = []
            for n in range(metric.order):
                total, matches = _matches([grams["ref_ngrams"][0][n] for grams in info])
                # sacrebleu counts no hypothesis n-gram of an order the reference has none of
                columns += [np.where(total[None, :] > 0, total[:, None], 0), np.broadcast_to(total, matches.shape)]
                columns.append(matches)
            table = np.stack(columns, axis=2)  # (M, M, 3 x orders): hypothesis, reference n-grams, matches
            return np.array([[metric._compute_f_score(row) for row in rows] for rows in table.tolist()])
        orders = [_split_orders(grams["ref_ngrams"], metric.max_ngram_order) for grams in info]
        totals, matches = zip(*(_matches([counts[n] for counts in orders]) for n in range(metric.max_ngram_order)))
        lengths = np.array([grams["ref_lens"][0] for grams in info])
        table = np.stack(
            [
                np.broadcast_to(lengths[:, None], (size, size)),  # hypothesis length
                np.broadcast_to(lengths, (size, size)),  # reference length
                *matches,  # per order: clipped matches
                *(np.broadcast_to(total[:, None], (size, size)) for total in totals),  # per order: hypothesis n-grams
            ],
            axis=2,
        )
        return np.array([[metric._compute_score_from_stats(row).score for row in rows] for rows in table.tolist()])


def _split_orders(ngrams: Counter, orders: int) -> list[Counter]:
    """BLEU's one counter of n-gram tuples of every order -> one counter per order."""
    split: list[Counter] = [Counter() for _ in range(orders)]
    for gram, count in ngrams.items():
        split[len(gram) - 1][gram] = count
    return split


def _matches(counters: Sequence[Counter]) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram counts of M texts (one order) -> (M,) n-grams of each, (M, M) clipped matches
    sum_g min(count_i(g), count_j(g)) of every pair."""
    vocabulary = {gram: column for column, gram in enumerate({gram for counts in counters for gram in counts})}
    counts = np.zeros((len(counters), len(vocabulary)), dtype=np.int64)  # (M, G)
    for row, counter in enumerate(counters):
        counts[row, [vocabulary[gram] for gram in counter]] = list(counter.values())
    return counts.sum(axis=1), np.minimum(counts[:, None, :], counts[None, :, :]).sum(axis=2)


def expected_utilities(texts: Sequence[str], utility: Utility) -> np.ndarray:
    """(N,) each candidate's mean utility against the other N - 1 candidates (0 for a lone candidate)."""
    distinct, inverse, counts = np.unique(np.asarray(texts, dtype=object), return_inverse=True, return_counts=True)
    scores = utility.matrix(list(distinct))  # (M, M), each distinct pair once
    # every copy of text j is a reference; the candidate itself is not
    totals = scores @ counts - np.diag(scores)
    return totals[inverse] / max(len(texts) - 1, 1)


def rank(texts: Sequence[str], utility: Utility) -> list[tuple[int, float]]:
    """The distinct texts, best first: (index of the text's first candidate, expected utility);
    equal expected utilities keep candidate order."""
    expected = expected_utilities(texts, utility)
    first: dict[str, int] = {}
    for index, text in enumerate(texts):
        first.setdefault(text, index)
    return [(index, float(expected[index])) for index in sorted(first.values(), key=lambda i: (-expected[i], i))]


def candidates(
    model: SearchModel, src: torch.Tensor, src_len: torch.Tensor, cfg: DecodeConfig, generator: torch.Generator | None
) -> list[list[Hypothesis]]:
    """Per sentence, the best `mbr_candidates - mbr_samples` of a beam search that wide (fewer when
    it finishes fewer), then `mbr_samples` draws; every other search setting is `cfg`'s."""
    without_mbr = {key: DECODE_DEFAULTS[key] for key in ("mbr_utility", *MBR_KEYS)}
    found: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    width = cfg.mbr_candidates - cfg.mbr_samples
    if width:
        unsampled = {key: DECODE_DEFAULTS[key] for key in SAMPLING_KEYS}
        beam = dataclasses.replace(cfg, **without_mbr, **unsampled, beam_size=width, nbest=width)
        for mine, best in zip(found, search(model, src, src_len, beam)):
            mine.extend(best)
    if cfg.mbr_samples:
        draw = dataclasses.replace(cfg, **without_mbr, sampling=True, nbest=1)
        copies = torch.arange(src.size(0)).repeat_interleave(cfg.mbr_samples)  # (B * samples,) the sentence of a row
        drawn = greedy_search(model, src[copies.to(src.device)], src_len[copies], draw, generator)
        for sentence, hypotheses in zip(copies.tolist(), drawn):
            found[sentence].extend(hypotheses)
    return found
