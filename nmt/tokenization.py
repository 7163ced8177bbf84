"""Text to subword ids and back: Moses normalization and tokenization, then BPE.

`TextPipeline.encode` and `decode` are inverse up to Moses detokenization:
raw text -> normalize -> tokenize -> BPE pieces -> ids, and ids -> pieces -> words -> detokenize.
BPE is HF `tokenizers` over Moses tokens; a piece that ends a word carries the `</w>` suffix,
so words are rebuilt without guessing. The BPE model travels inside checkpoints as JSON text,
each side's vocabulary as a list of pieces.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sacremoses import MosesDetokenizer, MosesPunctNormalizer, MosesTokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from nmt.vocab import BOS, EOS, PAD, SPECIAL_TOKENS, UNK, Vocabulary

END_OF_WORD = "</w>"


# The BOM and zero-width spaces vanish; other control characters (tab, NUL, ...) become spaces.
# Training and translation both go through `clean`, so stray bytes never split or merge words
# differently on the two sides of a model.
_CLEANUP = dict.fromkeys(map(ord, "\ufeff\u200b\u2060"), None) | {c: " " for c in [*range(32), 0x7F]}


def clean(line: str) -> str:
    return line.translate(_CLEANUP)


class MosesText:
    """Moses punctuation normalization, tokenization and detokenization for one language."""

    def __init__(self, lang: str) -> None:
        self.lang = lang
        self._normalizer = MosesPunctNormalizer(lang=lang)
        # MosesPunctNormalizer.normalize looks each of its ~45 patterns up in re's cache on every
        # call; the same substitutions compiled once normalize about twice as fast
        self._substitutions = [(re.compile(pattern), text) for pattern, text in self._normalizer.substitutions]
        self._tokenizer = MosesTokenizer(lang=lang)
        self._detokenizer = MosesDetokenizer(lang=lang)

    def normalize(self, line: str) -> str:
        """`MosesPunctNormalizer(lang).normalize` (its default options)."""
        for pattern, replacement in self._substitutions:
            line = pattern.sub(replacement, line)
        return line.strip()

    def tokenize(self, line: str) -> list[str]:
        return self._tokenizer.tokenize(self.normalize(clean(line)), escape=False, aggressive_dash_splits=False)

    def detokenize(self, tokens: Sequence[str]) -> str:
        return self._detokenizer.detokenize(list(tokens))


# Whether the BPE trainer draws its progress bar. The entry point decides (train.progress, a
# terminal on stderr) and `learn_bpe` is reached through data preparation, so a context variable
# carries the choice there instead of a flag threaded through every data function.
_BPE_PROGRESS: contextvars.ContextVar[bool] = contextvars.ContextVar("bpe_progress", default=False)


@contextlib.contextmanager
def bpe_progress(enabled: bool) -> Iterator[None]:
    """Inside this block, BPE learning shows the `tokenizers` trainer's progress bar on stderr."""
    token = _BPE_PROGRESS.set(enabled)
    try:
        yield
    finally:
        _BPE_PROGRESS.reset(token)


def learn_bpe(lines: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    """Learn BPE merges on lines of space-separated Moses tokens (Moses tokens never hold
    whitespace), as the prepared-corpus cache stores them; ids 0-3 are the special symbols.
    The same lines give the same model in every process."""
    # tokenizers' trainer numbers the end-of-word forms of characters (`e</w>`) in the order it
    # meets them in a hash map of the words, and breaks ties between equally frequent pairs by
    # those numbers: two runs on one corpus learned different merges. Here each word's last
    # character is spelled as a stand-in character of its own, which the trainer numbers in
    # code-point order like every character, and the learned model spells `c</w>` again.
    words: Counter[str] = Counter()
    for line in lines:
        words.update(line.split())
    alphabet = set(itertools.chain.from_iterable(words))
    free = (char for char in map(chr, range(0xF0000, 0x110000)) if char not in alphabet)  # the private use planes
    stand_in = dict(zip(sorted({word[-1] for word in words}), free))
    spelled = {stand: char + END_OF_WORD for char, stand in stand_in.items()}

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=sorted(alphabet),  # a character seen only at the end of words has its inner form too
        show_progress=_BPE_PROGRESS.get(),
    )
    # each word as many times as it occurs, in strings of at most 10,000 occurrences: tokenizers
    # holds ~360 bytes per occurrence of a string while it splits it (one word 1,000,000 times in
    # one string: +360 MB peak; in strings of 10,000: +10 MB; 2026-12-03)
    occurrences = (
        " ".join(itertools.repeat(word[:-1] + stand_in[word[-1]], min(10_000, count - start)))
        for word, count in words.items()
        for start in range(0, count, 10_000)
    )
    tokenizer.train_from_iterator(occurrences, trainer=trainer)

    def spell(piece: str) -> str:
        return piece[:-1] + spelled[piece[-1]] if piece[-1] in spelled else piece

    learned = json.loads(tokenizer.to_str())["model"]
    bpe = Tokenizer(
        models.BPE(
            vocab={spell(piece): i for piece, i in learned["vocab"].items()},
            merges=[(spell(left), spell(right)) for left, right in bpe_merges(learned)],
            unk_token=SPECIAL_TOKENS[UNK],
            end_of_word_suffix=END_OF_WORD,
        )
    )
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bpe.decoder = decoders.BPEDecoder(suffix=END_OF_WORD)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        assert bpe.token_to_id(token) == token_id, "BPE trainer must put specials first"
    return bpe


def segmentation(bpe_json: str) -> dict[str, Any]:
    """What decides how a BPE model (as JSON text) splits words: its settings, its pieces and its
    merges in rank order, not the numbers it gives the pieces (the vocabularies number pieces).
    Read and written again by this tokenizers version, so that models saved by others compare."""
    model = json.loads(Tokenizer.from_str(bpe_json).to_str())["model"]
    return model | {"vocab": sorted(model["vocab"]), "merges": bpe_merges(model)}


def bpe_merges(model: dict[str, Any]) -> list[list[str]]:
    """A BPE model's merges as pairs: older tokenizers versions write each as one string "a b"."""
    return [pair.split(" ") if isinstance(pair, str) else pair for pair in model["merges"]]


class TextPipeline:
    """One language's full path between raw text and subword ids."""

    def __init__(self, lang: str, bpe: Tokenizer, vocab: Vocabulary) -> None:
        self.moses = MosesText(lang)
        self.bpe = bpe
        self.vocab = vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def segment(self, batch: Sequence[list[str]]) -> list[list[str]]:
        """Moses tokens -> BPE pieces."""
        # tokenizers cannot take an empty pre-tokenized sequence
        nonempty = [tokens if tokens else ["x"] for tokens in batch]
        encodings = self.bpe.encode_batch(nonempty, is_pretokenized=True, add_special_tokens=False)
        return [enc.tokens if tokens else [] for enc, tokens in zip(encodings, batch)]

    def encode_tokens(self, batch: Sequence[list[str]]) -> list[list[int]]:
        """Moses tokens -> subword ids (no BOS/EOS)."""
        return [self.vocab.ids(pieces) for pieces in self.segment(batch)]

    def encode(self, lines: Sequence[str]) -> list[list[int]]:
        """Raw lines -> subword ids (no BOS/EOS)."""
        return self.encode_tokens([self.moses.tokenize(line) for line in lines])

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.vocab.pieces[i] for i in ids if i not in (PAD, BOS, EOS)]

    def decode(self, ids: Iterable[int]) -> str:
        """Subword ids -> detokenized text; PAD, BOS and EOS are skipped."""
        return self.moses.detokenize(self.words(ids))

    def words(self, ids: Iterable[int]) -> list[str]:
        """Subword ids -> Moses tokens, joining pieces up to each end-of-word marker."""
        words, current = [], ""
        for piece in self.pieces(ids):
            if piece.endswith(END_OF_WORD):
                words.append(current + piece[: -len(END_OF_WORD)])
                current = ""
            elif piece == SPECIAL_TOKENS[UNK]:
                if current:
                    words.append(current)
                words.append(piece)
                current = ""
            else:
                current += piece
        if current:
            words.append(current)
        return words
