"""MBR decoding: utilities against sacrebleu's own sentence scores, expected utilities and ties by
hand, and candidates from scripted models where the MBR choice is not the most probable one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sacrebleu import sentence_bleu, sentence_chrf
from test_search import ScriptedModel, scripted, sources

from nmt.config import DecodeConfig
from nmt.errors import NmtError
from nmt.mbr import Utility, candidates, expected_utilities, rank
from nmt.vocab import EOS

SENTENCES = [
    "A dog runs through the grass.",
    "A dog is running through the grass.",
    "The dog runs across green grass!",
    "Two men (in hats) play chess.",
    "a a a a a a",
    "grass",
    "",
]
SENTENCE_SCORES = {"chrf": sentence_chrf, "bleu": sentence_bleu}


@pytest.mark.parametrize("name", ["chrf", "bleu"])
def test_the_utility_matrix_is_sacrebleus_sentence_score_of_every_pair(name: str) -> None:
    expected = [[SENTENCE_SCORES[name](h, [r]).score for r in SENTENCES] for h in SENTENCES]
    assert Utility(name).matrix(SENTENCES).tolist() == expected


class TableUtility(Utility):
    """A utility read from a table of texts -> scores, to check the averaging by hand."""

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        self.table = table

    def matrix(self, texts: list[str]) -> np.ndarray:
        return np.array([[self.table[(h, r)] for r in texts] for h in texts])


def test_copies_of_a_text_are_references_as_often_as_they_occur_but_never_its_own() -> None:
    utility = TableUtility({("x", "x"): 100.0, ("y", "y"): 100.0, ("x", "y"): 10.0, ("y", "x"): 30.0})
    # x: one other x (100) and y (10) over 2 references; y: x twice (30 + 30)
    assert expected_utilities(["x", "y", "x"], utility).tolist() == [55.0, 30.0, 55.0]
    assert rank(["x", "y", "x"], utility) == [(0, 55.0), (1, 30.0)]  # distinct texts, first candidate's index
    assert expected_utilities(["y"], utility).tolist() == [0.0]  # nothing to compare with


def test_equal_expected_utilities_keep_candidate_order() -> None:
    utility = TableUtility({(a, b): 100.0 if a == b else 50.0 for a in "pqr" for b in "pqr"})
    assert [index for index, _ in rank(["r", "p", "q"], utility)] == [0, 1, 2]


def test_the_consensus_wins_over_the_most_probable_outlier() -> None:
    texts = ["A zebra sleeps.", "A dog runs fast.", "The dog runs fast."]  # best model score first
    ranked = rank(texts, Utility("chrf"))
    mean = [np.mean([sentence_chrf(h, [r]).score for r in texts if r != h]) for h in texts]
    assert [index for index, _ in ranked] == sorted(range(3), key=lambda i: -mean[i])
    assert ranked[0][0] != 0 and [u for _, u in ranked] == pytest.approx(sorted(mean, reverse=True))


# (prefix) -> next tokens: the most probable translation (4: p 0.4) is alone; 5 7 (0.35) and 6 7 (0.25) agree
OUTLIER_AND_CONSENSUS = {(): {4: 0.4, 5: 0.35, 6: 0.25}, (5,): {7: 1.0}, (6,): {7: 1.0}}
WORDS = {4: "A zebra sleeps.", 5: "A dog", 6: "The dog", 7: "runs fast."}


def text(tokens: list[int]) -> str:
    return " ".join(WORDS[token] for token in tokens)


def mbr_config(**decode: object) -> DecodeConfig:
    return DecodeConfig(mbr_utility="chrf", length_penalty=0.0, max_length_ratio=1.0, max_length_offset=2, **decode)


def test_beam_candidates_are_the_beam_searchs_best_and_mbr_picks_the_consensus() -> None:
    model = ScriptedModel(lambda sentence, prefix: OUTLIER_AND_CONSENSUS.get(prefix, {EOS: 1.0}), vocab_size=8)
    found = candidates(model, *sources(1), mbr_config(mbr_candidates=3), None)
    assert [h.tokens for h in found[0]] == [[4], [5, 7], [6, 7]]  # best model score first: the outlier
    ranked = rank([text(h.tokens) for h in found[0]], Utility("chrf"))
    assert ranked[0][0] in (1, 2)  # MBR: one of the two that agree, where beam search returns the outlier


def test_drawn_candidates_follow_the_beam_ones_and_repeat_with_the_seed() -> None:
    model = ScriptedModel(lambda sentence, prefix: OUTLIER_AND_CONSENSUS.get(prefix, {EOS: 1.0}), vocab_size=8)
    cfg = mbr_config(mbr_candidates=40, mbr_samples=38, sampling_epsilon=0.38)  # epsilon keeps only token 4

    def draw(seed: int) -> list[list[list[int]]]:
        found = candidates(model, *sources(2, 1), cfg, torch.Generator().manual_seed(seed))
        return [[h.tokens for h in hyps] for hyps in found]

    first = draw(0)
    assert all(hyps[:2] == [[4], [5, 7]] and hyps[2:] == [[4]] * 38 for hyps in first)  # beam of 2, then draws
    free = mbr_config(mbr_candidates=40, mbr_samples=40)
    drawn = candidates(model, *sources(1), free, torch.Generator().manual_seed(0))[0]
    assert {tuple(h.tokens) for h in drawn} == {(4,), (5, 7), (6, 7)}  # 40 draws from 0.4 / 0.35 / 0.25
    again = candidates(model, *sources(1), free, torch.Generator().manual_seed(0))[0]
    assert [h.tokens for h in again] == [h.tokens for h in drawn]


@pytest.mark.parametrize(
    ("decode", "key"),
    [
        ({"mbr_candidates": 8}, "decode.mbr_candidates must be left at its default without decode.mbr_utility"),
        ({"mbr_utility": "comet"}, "decode.mbr_utility must be one of"),
        ({"mbr_utility": "chrf", "mbr_candidates": 1}, "decode.mbr_candidates must be >= 2"),
        ({"mbr_utility": "chrf", "mbr_candidates": 4, "mbr_samples": 5}, "decode.mbr_samples must be in"),
        ({"mbr_utility": "chrf", "sampling": True}, "decode.sampling must be false with decode.mbr_utility"),
        ({"mbr_utility": "chrf", "beam_size": 8}, "decode.beam_size must be left at its default with"),
        ({"mbr_utility": "chrf", "mbr_candidates": 4, "nbest": 5}, r"decode.nbest must be in \[1, decode.mbr_cand"),
        ({"mbr_utility": "chrf", "sampling_epsilon": 0.1}, "decode.sampling_epsilon must be left at its default"),
    ],
)
def test_mbr_settings_that_make_no_sense_are_refused_naming_the_key(decode: dict, key: str) -> None:
    with pytest.raises(NmtError, match=key):
        DecodeConfig(**decode)


def test_mbr_may_list_more_translations_than_the_unused_beam_size() -> None:
    assert DecodeConfig(mbr_utility="bleu", mbr_candidates=12, mbr_samples=12, nbest=10, sampling_topp=0.9).nbest == 10


def test_a_beam_that_finishes_fewer_hypotheses_gives_fewer_candidates() -> None:
    found = candidates(scripted({(): {EOS: 1.0}}), *sources(3), mbr_config(mbr_candidates=4), None)
    assert [[h.tokens for h in hyps] for hyps in found] == [[[]]]  # only the empty translation exists
    assert rank([text(h.tokens) for h in found[0]], Utility("chrf")) == [(0, 0.0)]
