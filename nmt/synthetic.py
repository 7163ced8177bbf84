"""The built-in default corpus: a made-up language pair generated from a seed, no downloads.

The source language has English-like word order (subject, verb, object; adjectives before
nouns); the target language puts the verb last, adjectives after their noun and a prepositional
phrase before the object, so translating needs long-distance reordering, not copying.
Content words are strings of consonant-vowel syllables; their translations replace each
syllable through a fixed cipher and inflect (plural, past tense) differently from the source.
Hundreds of stems times their inflections give a vocabulary where BPE subwords pay off.
"""

from __future__ import annotations

import argparse
import itertools
import random

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
SPLIT_SIZES = {"val": 500, "test": 1000}
# The same lexicon serves every split; each split draws sentences from its own stream.
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}
PREPOSITIONS = {"with": "mit", "near": "bei", "under": "unter", "behind": "hinter", "on": "auf"}


class _Language:
    """The lexicon and grammar of the pair, fixed by the seed."""

    def __init__(self, seed: int, nouns: int = 400, verbs: int = 120, adjectives: int = 120) -> None:
        rng = random.Random(seed)
        syllables = [c + v for c, v in itertools.product(CONSONANTS, VOWELS)]
        shuffled = syllables[:]
        rng.shuffle(shuffled)
        self.cipher = dict(zip(syllables, shuffled))
        stems: set[tuple[str, ...]] = set()
        while len(stems) < nouns + verbs + adjectives:
            stems.add(tuple(rng.choice(syllables) for _ in range(rng.choice((2, 2, 3)))))
        ordered = sorted(stems)
        rng.shuffle(ordered)
        self.nouns = ordered[:nouns]
        self.verbs = ordered[nouns : nouns + verbs]
        self.adjectives = ordered[nouns + verbs :]

    def _target_stem(self, stem: tuple[str, ...]) -> str:
        return "".join(self.cipher[s] for s in stem)

    def noun_phrase(self, rng: random.Random) -> tuple[list[str], list[str]]:
        noun = rng.choice(self.nouns)
        adjectives = [rng.choice(self.adjectives) for _ in range(rng.choice((0, 0, 1, 1, 2)))]
        plural = rng.random() < 0.3
        definite = plural or rng.random() < 0.6
        src_det = "the" if definite else "a"
        tgt_det = ("die" if plural else "der") if definite else "ein"
        src_noun = "".join(noun) + ("s" if plural else "")
        tgt_noun = self._target_stem(noun) + ("en" if plural else "")
        src = [src_det, *("".join(a) for a in adjectives), src_noun]
        tgt = [tgt_det, tgt_noun, *(self._target_stem(a) + "e" for a in adjectives)]
        return src, tgt

    def sentence(self, rng: random.Random) -> tuple[str, str]:
        subject_src, subject_tgt = self.noun_phrase(rng)
        object_src, object_tgt = self.noun_phrase(rng)
        verb = rng.choice(self.verbs)
        past = rng.random() < 0.4
        src_verb = "".join(verb) + ("ed" if past else "s")
        tgt_verb = ("ge" if past else "") + self._target_stem(verb) + "t"
        phrase_src: list[str] = []
        phrase_tgt: list[str] = []
        if rng.random() < 0.5:
            preposition = rng.choice(sorted(PREPOSITIONS))
            np_src, np_tgt = self.noun_phrase(rng)
            phrase_src, phrase_tgt = [preposition, *np_src], [PREPOSITIONS[preposition], *np_tgt]
        mark = "!" if rng.random() < 0.1 else "."
        src = [*subject_src, src_verb, *object_src, *phrase_src]
        tgt = [*subject_tgt, *phrase_tgt, *object_tgt, tgt_verb]
        return _sentence_case(src, mark), _sentence_case(tgt, mark)


def _sentence_case(words: list[str], mark: str) -> str:
    text = " ".join(words)
    return text[0].upper() + text[1:] + mark


def generate_split(split: str, train_pairs: int, seed: int) -> tuple[list[str], list[str]]:
    """Source and target lines of `split` (train, val or test), identical for a given seed."""
    if split not in SPLIT_STREAMS:
        raise KeyError(split)
    language = _Language(seed)
    rng = random.Random(f"{seed}-{SPLIT_STREAMS[split]}")
    size = train_pairs if split == "train" else SPLIT_SIZES[split]
    pairs = [language.sentence(rng) for _ in range(size)]
    return [src for src, _ in pairs], [tgt for _, tgt in pairs]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nmt.synthetic", description="Print one side of a split: python -m nmt.synthetic test src"
    )
    parser.add_argument("split", choices=sorted(SPLIT_STREAMS))
    parser.add_argument("side", choices=("src", "tgt"))
    parser.add_argument("--lines", type=int, default=0, help="only the first N lines (0 = all)")
    parser.add_argument("--train-pairs", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=1234)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    src, tgt = generate_split(args.split, args.train_pairs, args.seed)
    lines = src if args.side == "src" else tgt
    print("\n".join(lines[: args.lines or None]))


if __name__ == "__main__":
    main()
