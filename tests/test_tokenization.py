from __future__ import annotations

import pytest
from conftest import read_lines
from hypothesis import given, settings
from hypothesis import strategies as st
from sacremoses import MosesPunctNormalizer
from tokenizers import Tokenizer

from nmt.synthetic import generate_split
from nmt.tokenization import END_OF_WORD, MosesText, TextPipeline, learn_bpe
from nmt.vocab import BOS, EOS, FILLER, PAD, SIZE_MULTIPLE, SPECIAL_TOKENS, UNK, Vocabulary

MULTI30K_LINES = 2000


def learn_pipelines(src_lines, tgt_lines, src_lang, tgt_lang, vocab_size, joint=True):
    src_moses, tgt_moses = MosesText(src_lang), MosesText(tgt_lang)
    src_tokens = [src_moses.tokenize(line) for line in src_lines]
    tgt_tokens = [tgt_moses.tokenize(line) for line in tgt_lines]
    text = {"src": [" ".join(tokens) for tokens in src_tokens], "tgt": [" ".join(tokens) for tokens in tgt_tokens]}
    if joint:
        src_bpe = tgt_bpe = learn_bpe([*text["src"], *text["tgt"]], vocab_size, 2)
    else:
        src_bpe, tgt_bpe = learn_bpe(text["src"], vocab_size, 2), learn_bpe(text["tgt"], vocab_size, 2)

    def pipeline(lang, bpe, tokens):
        """Each side's vocabulary holds the pieces that occur on that side, as in preparation."""
        unfinished = TextPipeline(lang, bpe, Vocabulary(SPECIAL_TOKENS))
        return TextPipeline(lang, bpe, Vocabulary.build(unfinished.segment(tokens)))

    return pipeline(src_lang, src_bpe, src_tokens), pipeline(tgt_lang, tgt_bpe, tgt_tokens)


FILLERS = {FILLER.format(i) for i in range(SIZE_MULTIPLE)}


def reloaded(pipeline, lang):
    return TextPipeline(lang, Tokenizer.from_str(pipeline.bpe.to_str()), Vocabulary(list(pipeline.vocab.pieces)))


@pytest.fixture(scope="module")
def synthetic_lines():
    return generate_split("train", 400, 1234)


@pytest.fixture(scope="module")
def synthetic_pipelines(synthetic_lines):
    return learn_pipelines(*synthetic_lines, "src", "tgt", vocab_size=300)


@pytest.fixture(scope="module")
def multi30k(multi30k_dir):
    en = read_lines(multi30k_dir / "train.en.gz")[:MULTI30K_LINES]
    de = read_lines(multi30k_dir / "train.de.gz")[:MULTI30K_LINES]
    en_pipeline, de_pipeline = learn_pipelines(en, de, "en", "de", vocab_size=2000)
    return {"en": (en, en_pipeline), "de": (de, de_pipeline)}


SIDES = ["en", "de"]


@pytest.mark.parametrize("side", SIDES)
def test_multi30k_words_give_back_the_moses_tokens(multi30k, side):
    lines, pipeline = multi30k[side]
    all_ids = pipeline.encode(lines)
    checked = 0
    for line, ids in zip(lines, all_ids):
        if UNK in ids:
            continue
        assert pipeline.words(ids) == pipeline.moses.tokenize(line), line
        checked += 1
    assert checked >= 0.99 * len(lines)


PUNCTUATION_CASES = ["«Ja», sagt er.", "1,5 km", "a  -  b", "„Gut“ ...", "l’été , 3 000 ; (x)"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from(PUNCTUATION_CASES))
def test_precompiled_normalizer_equals_sacremoses(text):
    for lang in ("en", "de", "fr"):
        assert MosesText(lang).normalize(text) == MosesPunctNormalizer(lang=lang).normalize(text)


@pytest.mark.parametrize("side", SIDES)
def test_precompiled_normalizer_equals_sacremoses_on_multi30k(multi30k, side):
    lines, pipeline = multi30k[side]
    ours, theirs = MosesText(pipeline.moses.lang), MosesPunctNormalizer(lang=pipeline.moses.lang)
    assert [ours.normalize(line) for line in lines] == [theirs.normalize(line) for line in lines]


@pytest.mark.parametrize("side", SIDES)
def test_multi30k_bpe_splits_rare_words_into_several_pieces(multi30k, side):
    lines, pipeline = multi30k[side]
    tokens = sum(len(pipeline.moses.tokenize(line)) for line in lines)
    pieces = sum(len(ids) for ids in pipeline.encode(lines))
    assert pieces > 1.05 * tokens


@pytest.mark.parametrize("side", SIDES)
def test_multi30k_decode_equals_moses_round_trip(multi30k, side):
    lines, pipeline = multi30k[side]
    moses = pipeline.moses
    for line, ids in zip(lines, pipeline.encode(lines)):
        assert pipeline.decode(ids) == moses.detokenize(moses.tokenize(line)), line


@pytest.mark.parametrize("side", SIDES)
def test_multi30k_moses_round_trip_restores_almost_every_raw_line(multi30k, side):
    lines, pipeline = multi30k[side]
    moses = pipeline.moses
    restored = sum(moses.detokenize(moses.tokenize(line)) == line for line in lines)
    assert restored >= 0.95 * len(lines)


def test_multi30k_joint_bpe_gives_each_side_a_vocabulary_starting_with_the_specials(multi30k):
    _, en_pipeline = multi30k["en"]
    _, de_pipeline = multi30k["de"]
    assert en_pipeline.bpe is de_pipeline.bpe
    for pipeline in (en_pipeline, de_pipeline):
        assert 500 < pipeline.vocab_size <= 2000
        assert [pipeline.vocab.pieces[i] for i in (PAD, UNK, BOS, EOS)] == ["<pad>", "<unk>", "<s>", "</s>"]
        assert len(set(pipeline.vocab.pieces)) == pipeline.vocab_size


@pytest.mark.parametrize("side", SIDES)
def test_multi30k_saved_bpe_and_vocabulary_give_identical_ids(multi30k, side):
    lines, pipeline = multi30k[side]
    restored = reloaded(pipeline, side)
    assert restored.vocab_size == pipeline.vocab_size
    assert restored.encode(lines) == pipeline.encode(lines)


def test_synthetic_lines_survive_encode_and_decode_exactly(synthetic_lines, synthetic_pipelines):
    for lines, pipeline in zip(synthetic_lines, synthetic_pipelines):
        all_ids = pipeline.encode(lines)
        assert len(all_ids) == len(lines)
        for line, ids in zip(lines, all_ids):
            assert UNK not in ids
            assert pipeline.words(ids) == pipeline.moses.tokenize(line)
            assert pipeline.decode(ids) == line


def test_synthetic_special_ids_and_saved_pipeline_round_trip(synthetic_lines, synthetic_pipelines):
    for lang, lines, pipeline in zip(("src", "tgt"), synthetic_lines, synthetic_pipelines):
        assert pipeline.vocab.pieces[:4] == list(SPECIAL_TOKENS)
        restored = reloaded(pipeline, lang)
        assert restored.encode(lines) == pipeline.encode(lines)
        assert [restored.decode(ids) for ids in restored.encode(lines[:20])] == lines[:20]


def test_vocabulary_sizes_are_a_multiple_of_8_filled_with_pieces_no_text_produces(synthetic_lines, synthetic_pipelines):
    for lines, pipeline in zip(synthetic_lines, synthetic_pipelines):
        assert pipeline.vocab_size % SIZE_MULTIPLE == 0
        fillers = {i for i, piece in enumerate(pipeline.vocab.pieces) if piece in FILLERS}
        assert fillers == set(range(pipeline.vocab_size - len(fillers), pipeline.vocab_size))
        assert not fillers & {i for ids in pipeline.encode(lines) for i in ids}
    counts = {"a": 3, "b": 1, "c": 2, "<unk>": 9}
    assert Vocabulary.from_counts(counts).pieces == [*SPECIAL_TOKENS, "a", "c", "b", FILLER.format(0)]
    assert Vocabulary.from_counts(counts, min_count=2).pieces[4:] == ["a", "c", FILLER.format(0), FILLER.format(1)]


def test_decode_skips_pad_bos_and_eos(synthetic_pipelines):
    pipeline, _ = synthetic_pipelines
    ids = pipeline.encode(["The cat sleeps."])[0]
    assert pipeline.decode([BOS, *ids, EOS, PAD, PAD]) == pipeline.decode(ids)


def test_unseen_character_becomes_unk(synthetic_pipelines):
    pipeline, _ = synthetic_pipelines
    ids = pipeline.encode(["The \u2603 sleeps."])[0]
    assert UNK in ids
    assert "<unk>" in pipeline.words(ids)


def test_empty_and_blank_lines_encode_to_no_ids(synthetic_pipelines):
    pipeline, _ = synthetic_pipelines
    assert pipeline.encode(["", "   ", "The end."])[:2] == [[], []]
    assert pipeline.decode([]) == ""


def test_words_rebuild_multi_piece_words_from_end_of_word_markers(synthetic_pipelines):
    pipeline, _ = synthetic_pipelines
    pieces = pipeline.vocab.pieces[len(SPECIAL_TOKENS) :]
    inner = next(piece for piece in pieces if len(piece) > 1 and not piece.endswith(END_OF_WORD))
    final = next(piece for piece in pieces if piece.endswith(END_OF_WORD) and len(piece) > len(END_OF_WORD) + 1)
    ids = pipeline.vocab.ids([inner, final, final])
    stem = final[: -len(END_OF_WORD)]
    assert pipeline.words(ids) == [inner + stem, stem]
    assert pipeline.words(pipeline.vocab.ids([final, inner])) == [stem, inner]
    assert pipeline.words(pipeline.vocab.ids([inner, "<unk>", final])) == [inner, "<unk>", stem]


def test_separate_bpe_gives_each_side_its_own_vocabulary(synthetic_lines):
    src_pipeline, tgt_pipeline = learn_pipelines(*synthetic_lines, "src", "tgt", vocab_size=300, joint=False)
    assert src_pipeline.bpe is not tgt_pipeline.bpe
    assert src_pipeline.bpe.to_str() != tgt_pipeline.bpe.to_str()
    src_vocab, tgt_vocab = set(src_pipeline.vocab.pieces), set(tgt_pipeline.vocab.pieces)
    assert src_vocab != tgt_vocab
    assert {"the" + END_OF_WORD, "under" + END_OF_WORD} <= src_vocab - tgt_vocab
    assert {"ein" + END_OF_WORD, "unter" + END_OF_WORD} <= tgt_vocab - src_vocab
    for pipeline, lines in zip((src_pipeline, tgt_pipeline), synthetic_lines):
        assert [pipeline.decode(ids) for ids in pipeline.encode(lines[:50])] == lines[:50]


def test_joint_bpe_shares_the_merges_but_keeps_each_sides_pieces(synthetic_pipelines):
    src_pipeline, tgt_pipeline = synthetic_pipelines
    assert src_pipeline.bpe is tgt_pipeline.bpe
    merged = set(src_pipeline.bpe.get_vocab())
    src_vocab, tgt_vocab = set(src_pipeline.vocab.pieces), set(tgt_pipeline.vocab.pieces)
    assert (src_vocab | tgt_vocab) - FILLERS <= merged
    assert {"the" + END_OF_WORD, "under" + END_OF_WORD} <= src_vocab - tgt_vocab
    assert {"ein" + END_OF_WORD, "unter" + END_OF_WORD} <= tgt_vocab - src_vocab


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.text(), max_size=5))
def test_encode_and_decode_never_raise_on_any_text(synthetic_pipelines, lines):
    pipeline, _ = synthetic_pipelines
    all_ids = pipeline.encode(lines)
    assert len(all_ids) == len(lines)
    for ids in all_ids:
        assert all(0 <= i < pipeline.vocab_size and i not in (PAD, BOS, EOS) for i in ids)
        assert isinstance(pipeline.decode(ids), str)


WORDS = st.text(alphabet="abdefgiklmnoprstuvz", min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(words=st.lists(WORDS, min_size=1, max_size=8), mark=st.sampled_from([".", "!", ",", ""]))
def test_words_give_back_the_tokens_of_any_line_without_unk(synthetic_pipelines, words, mark):
    pipeline, _ = synthetic_pipelines
    line = " ".join(words) + mark
    ids = pipeline.encode([line])[0]
    if UNK not in ids:
        assert pipeline.words(ids) == pipeline.moses.tokenize(line)


def test_bpe_learned_twice_on_the_same_lines_is_the_same_model() -> None:
    """Every pair here is as frequent as every other: tokenizers' own trainer broke such ties by
    numbers it gave in hash-map order, so each call learned other merges."""
    lines = ["ab ba cd dc ef fe gh hg ij ji"] * 2
    models = {learn_bpe(lines, 30, 1).to_str() for _ in range(6)}
    assert len(models) == 1


def test_bpe_knows_each_character_inside_words_and_at_their_end() -> None:
    bpe = learn_bpe(["xa bx"], 9, 5)  # no pair is frequent enough to merge
    assert set(bpe.get_vocab()) == {*SPECIAL_TOKENS, "a", "b", "x", f"a{END_OF_WORD}", f"x{END_OF_WORD}"}


def test_bpe_of_text_with_private_use_characters_keeps_them_apart_from_word_ends() -> None:
    """The learner spells word-final characters with private-use stand-ins, never ones the text holds."""
    private = "\U000f0000"
    bpe = learn_bpe([f"a{private} {private}a {private}{private}"] * 3, 40, 1)
    pipeline = TextPipeline("en", bpe, Vocabulary(SPECIAL_TOKENS))
    words = [f"a{private}", f"{private}a", f"{private}{private}", f"{private}{private}a"]
    assert ["".join(pieces).removesuffix(END_OF_WORD) for pieces in pipeline.segment([[w] for w in words])] == words
    assert all(piece.count(END_OF_WORD) <= 1 for piece in bpe.get_vocab())
