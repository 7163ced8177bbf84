"""Lexical shortlists: the table against counts made by hand, the batch union, translations that do
not change when the shortlist holds what the full vocabulary would choose, and one-line errors."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from nmt import checkpoint, shortlist, synthetic
from nmt.config import SHORTLIST_WIDTH, DecodeConfig
from nmt.data import EncodedCorpus
from nmt.errors import NmtError
from nmt.translator import Translation, Translator
from nmt.vocab import EOS, SPECIAL_TOKENS

REPO = Path(__file__).resolve().parents[1]


def random_corpus(seed: int, pairs: int, src_size: int, tgt_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """Pairs of id lists (ids from 4 up: no special piece), with repeats inside a sentence and many ties."""
    rng = random.Random(seed)
    src = [[rng.randrange(4, src_size) for _ in range(rng.randint(1, 7))] for _ in range(pairs)]
    tgt = [[rng.randrange(4, tgt_size) for _ in range(rng.randint(1, 9))] for _ in range(pairs)]
    return src, tgt


def dice_by_hand(src: list[list[int]], tgt: list[list[int]], src_size: int) -> list[list[int]]:
    """Each source id's target ids by Dice over sentence pairs, best first, ties by id."""
    pairs, src_count, tgt_count = Counter(), Counter(), Counter()
    for source, target in zip(src, tgt):
        src_count.update(set(source))
        tgt_count.update(set(target))
        pairs.update((s, t) for s in set(source) for t in set(target))
    ranked = [[] for _ in range(src_size)]
    for (s, t), together in pairs.items():
        ranked[s].append((-2 * together / (src_count[s] + tgt_count[t]), t))
    return [[t for _, t in sorted(candidates)][:SHORTLIST_WIDTH] for candidates in ranked]


@pytest.mark.parametrize("budget", [1 << 22, 40], ids=["one chunk", "many chunks and merges"])
def test_the_table_ranks_by_dice_as_counted_by_hand(budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shortlist, "PAIR_BUDGET", budget)
    monkeypatch.setattr(shortlist, "MERGE_AT", 30)
    src, tgt = random_corpus(seed=0, pairs=400, src_size=30, tgt_size=150)
    table = shortlist.build(EncodedCorpus.from_lists(src, tgt), 30, 150)

    expected = dice_by_hand(src, tgt, 30)
    assert table["per_source"].shape == (30, SHORTLIST_WIDTH) and table["per_source"].dtype == torch.int32
    for source, row in enumerate(table["per_source"].tolist()):
        assert row == expected[source] + [-1] * (SHORTLIST_WIDTH - len(expected[source]))
    assert any(len(row) == SHORTLIST_WIDTH for row in expected), "some row is cut at the stored width"
    occurrences = Counter(t for sentence in tgt for t in sentence)
    assert table["frequent"].tolist() == sorted(occurrences, key=lambda t: (-occurrences[t], t))


def test_a_batch_union_is_specials_frequent_and_each_source_piece_s_best() -> None:
    table = {
        "version": shortlist.VERSION,
        "per_source": torch.tensor([[-1, -1, -1], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1], [9, 8, 7], [5, -1, -1]]),
        "frequent": torch.tensor([11, 10, 12]),
    }
    cut = shortlist.Shortlist(table, per_source=2, frequent=2, device=torch.device("cpu"))
    src = torch.tensor([[4, 5, 0], [5, 0, 0]])  # PAD (0) has no candidates
    assert cut.vocabulary(src).tolist() == [*range(len(SPECIAL_TOKENS)), 5, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def restored(trained_checkpoint: Path) -> tuple:
    state = checkpoint.load(trained_checkpoint)
    return (*checkpoint.restore(state, trained_checkpoint), state["shortlist"])


@pytest.fixture(scope="module")
def lines() -> list[str]:
    data = tiny_config().data
    return synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)[0][:40]


def translate(
    restored: tuple, lines: list[str], table: dict | None = None, **decode: object
) -> list[list[Translation]]:
    model, src, tgt, _, _ = restored
    options = {key: value for key, value in decode.items() if key != "models"}
    models = [model] * decode.get("models", 1)
    return Translator.from_models(models, src, tgt, DecodeConfig(**options), table).translate(lines)


def every_piece(restored: tuple) -> dict:
    """A shortlist whose frequent list is the whole target vocabulary."""
    model = restored[0]
    return {
        "version": shortlist.VERSION,
        "per_source": torch.full((model.encoder.embed.num_embeddings, 1), -1, dtype=torch.int32),
        "frequent": torch.arange(model.output.out_features, dtype=torch.int32),
    }


@pytest.mark.parametrize(
    "decode",
    [
        {"beam_size": 4, "nbest": 3, "replace_unk": True},
        {"beam_size": 1},
        {"beam_size": 3, "nbest": 2, "models": 2},
        {"beam_size": 3, "quantize": "int8"},
        {"beam_size": 3, "precision": "bf16"},
    ],
    ids=["beam-nbest-replace_unk", "greedy", "ensemble", "int8", "bf16"],
)
def test_a_shortlist_of_every_piece_changes_nothing(restored: tuple, lines: list[str], decode: dict) -> None:
    full = translate(restored, lines, **decode)
    vocabulary = restored[0].output.out_features
    cut = translate(restored, lines, every_piece(restored), shortlist=True, shortlist_frequent=vocabulary, **decode)
    assert cut == full


def test_greedy_search_keeps_its_output_when_the_shortlist_holds_it(restored: tuple, lines: list[str]) -> None:
    """Greedy search takes each step's most probable token, which a softmax over fewer tokens that
    include it does not change: a shortlist of exactly the chosen pieces gives the same translations,
    however the lines are batched, but for near ties (the product with fewer rows of the output layer
    may round the last bit of a logit otherwise: one line of 40 differed in one token once)."""
    full = translate(restored, lines, beam_size=1)
    chosen = sorted({token for hyps in full for token in hyps[0].tokens} | {EOS})
    table = {**every_piece(restored), "frequent": torch.tensor(chosen, dtype=torch.int32)}
    assert len(chosen) < restored[0].output.out_features / 2
    for batch_tokens in (30, 6000):
        cut = translate(
            restored, lines, table, beam_size=1, shortlist=True, shortlist_frequent=len(chosen),
            batch_tokens=batch_tokens,
        )  # fmt: skip
        same = [c[0].tokens == f[0].tokens for c, f in zip(cut, full)]
        assert sum(same) >= 0.95 * len(lines)
        assert all(c[0].score >= f[0].score - 1e-6 for c, f, alike in zip(cut, full, same) if alike), "renormalized"


def test_translations_use_only_the_pieces_of_their_shortlist(restored: tuple, lines: list[str]) -> None:
    """The trained table without the pieces the full vocabulary's translations use: the search
    finds others, all of them in the batch's shortlist."""
    _, src, _, _, table = restored
    full = translate(restored, lines, beam_size=4, nbest=2)
    chosen = torch.tensor(sorted({token for hyps in full for hyp in hyps for token in hyp.tokens}))
    per_source = table["per_source"].masked_fill(torch.isin(table["per_source"], chosen), -1)
    narrowed = {**table, "per_source": per_source}
    cut = translate(restored, lines, narrowed, beam_size=4, nbest=2, shortlist=True, shortlist_per_source=3,
                    shortlist_frequent=0)  # fmt: skip

    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(ids) for ids in src.encode(lines)], batch_first=True)
    allowed = set(shortlist.Shortlist(narrowed, 3, 0, torch.device("cpu")).vocabulary(ids).tolist())
    used = {token for hyps in cut for hyp in hyps for token in hyp.tokens}
    assert used and used <= allowed and not used & set(chosen.tolist())


def test_training_stores_the_shortlist_and_the_entry_point_rebuilds_it(trained_checkpoint: Path, tmp_path: Path):
    old = tmp_path / "old.pt"
    state = checkpoint.load(trained_checkpoint)
    stored = state.pop("shortlist")
    assert stored["version"] == shortlist.VERSION
    checkpoint.save(old, state)
    before = old.read_bytes()
    with pytest.raises(NmtError, match=r"old.pt: holds no lexical shortlist.*python -m nmt.shortlist"):
        Translator.from_checkpoints([old], DecodeConfig(shortlist=True))

    run = [sys.executable, "-m", "nmt.shortlist", str(old)]
    added = subprocess.run([*run, "-o", str(tmp_path / "new.pt")], capture_output=True, text=True, cwd=REPO)
    assert added.returncode == 0, added.stderr
    rebuilt = checkpoint.load(tmp_path / "new.pt")["shortlist"]
    assert all(torch.equal(rebuilt[key], stored[key]) for key in ("per_source", "frequent"))
    assert old.read_bytes() == before, "the input is left as it was"

    refused = subprocess.run([*run, "-o", str(old)], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 1 and "--in-place" in refused.stderr and "Traceback" not in refused.stderr
    assert old.read_bytes() == before
    replaced = subprocess.run([*run, "--in-place"], capture_output=True, text=True, cwd=REPO)
    assert replaced.returncode == 0 and "shortlist" in checkpoint.load(old)


def test_a_damaged_or_too_narrow_shortlist_is_one_line_naming_the_file(trained_checkpoint: Path, tmp_path: Path):
    state = checkpoint.load(trained_checkpoint)
    path = tmp_path / "x.pt"
    narrow = {**state["shortlist"], "per_source": state["shortlist"]["per_source"][:, :5].contiguous()}
    checkpoint.save(path, {**state, "shortlist": narrow})
    with pytest.raises(NmtError, match="x.pt: its shortlist holds 5 target pieces per source piece"):
        Translator.from_checkpoints([path], DecodeConfig(shortlist=True, shortlist_per_source=6))
    assert Translator.from_checkpoints([path], DecodeConfig(shortlist=True, shortlist_per_source=5))

    outside = state["shortlist"]["frequent"].clone()
    outside[0] = len(state["tgt_vocab"])
    for damaged, problem in (
        ({**state["shortlist"], "frequent": outside}, "names frequent target pieces outside"),
        ({**state["shortlist"], "version": shortlist.VERSION + 1}, "newer than this nmt understands"),
        ({**state["shortlist"], "per_source": state["shortlist"]["per_source"][1:]}, "not one per source piece"),
        ([1, 2], "is not a dict with a version"),
    ):
        checkpoint.save(path, {**state, "shortlist": damaged})
        with pytest.raises(NmtError, match=f"x.pt: its lexical shortlist.*{problem}"):
            Translator.from_checkpoints([path], DecodeConfig(shortlist=True))
        assert Translator.from_checkpoints([path], DecodeConfig()), "decoding without it does not read it"


def test_averaging_keeps_the_shortlist(trained_checkpoint: Path, tmp_path: Path) -> None:
    from nmt.average import average_files

    shutil.copy(trained_checkpoint, tmp_path / "a.pt")
    average_files([tmp_path / "a.pt", trained_checkpoint], tmp_path / "average.pt")
    kept = checkpoint.load(tmp_path / "average.pt")["shortlist"]
    assert torch.equal(kept["per_source"], checkpoint.load(trained_checkpoint)["shortlist"]["per_source"])
