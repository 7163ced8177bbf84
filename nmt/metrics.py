"""Corpus BLEU and chrF with sacrebleu, on detokenized text against raw references."""

from __future__ import annotations

from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF

from nmt.tokenization import MosesText


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Detokenized, cased sacreBLEU (13a tokenization) and its signature."""
    metric = BLEU()
    return metric.corpus_score(list(hypotheses), [list(references)]).score, str(metric.get_signature())


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    metric = CHRF()
    return metric.corpus_score(list(hypotheses), [list(references)]).score, str(metric.get_signature())


def tokenized_lowercase_bleu(
    hypotheses: Sequence[str], references: Sequence[str], moses: MosesText
) -> tuple[float, str]:
    """BLEU as most Multi30k papers report it: Moses-tokenized, lowercased, no further tokenization."""

    def prepare(lines: Sequence[str]) -> list[str]:
        return [" ".join(moses.tokenize(line)) for line in lines]

    # force: the input is tokenized on purpose, which sacrebleu would otherwise warn about
    metric = BLEU(tokenize="none", lowercase=True, force=True)
    score = metric.corpus_score(prepare(hypotheses), [prepare(references)]).score
    return score, f"{metric.get_signature()}|pre:moses-tok"
