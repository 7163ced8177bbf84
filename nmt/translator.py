"""The translation engine: raw sentences in, detokenized translations out, as one `DecodeConfig` says.

`Translator.from_checkpoints(paths, cfg)` is the one way every front end (`nmt-translate`,
`nmt.evaluate`, the service) builds a system: it loads and checks the checkpoints, moves the
models to the device, quantizes them or casts their weights to the precision they decode in,
builds their inference tables in it, gives them the first checkpoint's shortlist if asked, and
ensembles them. Validation during training builds one from the weights in training with
`Translator.from_models`. Then `translate(lines)` tokenizes, batches by tokens, searches and
detokenizes; with decode.mbr_utility it searches several candidates and returns the one of minimum
Bayes risk (nmt.mbr).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nmt import checkpoint, mbr, shortlist
from nmt.alignment import AttentionMap, attention_maps, format_alignment
from nmt.batching import length_batches
from nmt.config import LOAD_KEYS, DecodeConfig
from nmt.ensemble import Ensemble, check_compatible
from nmt.errors import LineError
from nmt.model import InferenceModel, Seq2Seq
from nmt.precision import DTYPES, autocast, cast_weights, quantize_int8
from nmt.search import Hypothesis, SearchModel, search
from nmt.shortlist import Shortlist
from nmt.tokenization import TextPipeline
from nmt.vocab import UNK, pad

Track = Callable[[list[np.ndarray]], Iterable[np.ndarray]]  # wraps the batches of a call, e.g. in a progress bar


@dataclass
class Translation:
    text: str
    score: float  # the search's score (log-prob / length penalty + coverage penalty); with MBR the expected utility
    tokens: list[int]  # target subword ids, without BOS and EOS
    alignment: list[int]  # per target subword, the source subword position it attended to most

    @staticmethod
    def blank() -> Translation:
        """What a blank line translates to."""
        return Translation("", 0.0, [], [])


class Translator:
    def __init__(
        self,
        model: SearchModel,
        src_pipeline: TextPipeline,
        tgt_pipeline: TextPipeline,
        cfg: DecodeConfig,
    ) -> None:
        self.model = model
        self.src_pipeline = src_pipeline
        self.tgt_pipeline = tgt_pipeline
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        # one stream of draws for the translator's life: the same seed and input give the same samples
        sampled = cfg.sampling or cfg.mbr_samples > 0
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed) if sampled else None
        self.utility = mbr.Utility(cfg.mbr_utility) if cfg.mbr_utility != "none" else None

    @classmethod
    def from_checkpoints(cls, paths: Sequence[Path], cfg: DecodeConfig) -> Translator:
        """The system `cfg` describes from one checkpoint, or an ensemble of several that share
        their vocabularies; the text pipelines come from the first."""
        if cfg.threads or cfg.streams > 1:  # torch's one thread count serves every stream: divide it among them
            torch.set_num_threads(max(1, (cfg.threads or torch.get_num_threads()) // cfg.streams))
        checkpoints = [checkpoint.load(path) for path in paths]
        check_compatible(checkpoints, list(paths))
        # the vocabularies are the same, so the first checkpoint's shortlist serves every model
        table = shortlist.stored(checkpoints[0], paths[0], cfg.shortlist_per_source) if cfg.shortlist else None
        restored = [checkpoint.restore(state, path, checked=True) for state, path in zip(checkpoints, paths)]
        _, src, tgt, _ = restored[0]
        return cls.from_models([model for model, _, _, _ in restored], src, tgt, cfg, table)

    @classmethod
    def from_models(
        cls,
        models: Sequence[Seq2Seq],
        src_pipeline: TextPipeline,
        tgt_pipeline: TextPipeline,
        cfg: DecodeConfig,
        table: dict[str, Any] | None = None,
    ) -> Translator:
        """Models on cfg.device, quantized as cfg.quantize says or with their weights in
        cfg.precision, with their inference tables built in it; several are ensembled. With
        cfg.shortlist their output layers are cut by the shortlist `table` (as `nmt.shortlist.build`
        makes it). The given models are moved and put in eval mode."""
        device = torch.device(cfg.device)
        cut = None
        if cfg.shortlist:
            if table is None:
                raise ValueError("decode.shortlist is set: give from_models the shortlist table")
            cut = Shortlist(table, cfg.shortlist_per_source, cfg.shortlist_frequent, device)
        prepared = []
        for model in models:
            model = model.to(device).eval()
            if cfg.quantize == "int8":
                model = quantize_int8(model)
            elif cfg.precision in DTYPES:
                # the encoder runs once a batch, and autocast runs its packed LSTM in fp32 on the CPU
                model = cast_weights(model, cfg.precision, keep=model.encoder)
            with autocast(cfg.precision, device):
                prepared.append(InferenceModel(model, cut))
        search_model = prepared[0] if len(prepared) == 1 else Ensemble(prepared)
        return cls(search_model, src_pipeline, tgt_pipeline, cfg)

    def with_options(self, **changes: object) -> Translator:
        """The same models and pipelines searching with other settings, checked as any DecodeConfig;
        for what inference itself depends on (device, precision, quantization) build another."""
        fixed = set(LOAD_KEYS) & changes.keys()
        if fixed:
            raise ValueError(f"{sorted(fixed)} are set when the models are loaded: build another Translator")
        return Translator(self.model, self.src_pipeline, self.tgt_pipeline, dataclasses.replace(self.cfg, **changes))

    def translate(self, lines: Sequence[str], track: Track = iter) -> list[list[Translation]]:
        """Up to `nbest` translations per line, best first; a blank line translates to ""."""
        return self.translate_ids(lines, self.source_ids(lines), track)

    def translate_ids(
        self, lines: Sequence[str], src_ids: list[np.ndarray], track: Track = iter
    ) -> list[list[Translation]]:
        """`translate` of lines whose `source_ids` are known."""
        lengths = np.array([len(ids) for ids in src_ids], dtype=np.int64)
        results = [[Translation.blank()] for _ in lines]
        nonempty = np.flatnonzero(lengths > 0)
        # a sentence costs its search rows (the beam) times its length: memory stays put whatever the beam
        batches = [
            nonempty[batch]
            for batch in length_batches(lengths[nonempty] * self.cfg.search_rows(), self.cfg.batch_tokens)
        ]
        search_batch = functools.partial(self._search, src_ids, lengths)
        side_by_side = min(self.cfg.streams, len(batches))
        streams = ThreadPoolExecutor(side_by_side, "nmt-stream") if side_by_side > 1 else None
        try:
            # each stream takes the next batch when it is done; the answers come in batch order
            searched = streams.map(search_batch, batches) if streams else map(search_batch, batches)
            for indices, found in zip(track(batches), searched):
                for index, hyps in zip(indices, found):
                    translations = [self.translation(lines[index], h) for h in hyps]
                    results[index] = translations if self.utility is None else self._mbr(translations, self.utility)
        finally:
            if streams:
                streams.shutdown(cancel_futures=True)
        return results

    def _search(self, src_ids: list[np.ndarray], lengths: np.ndarray, indices: np.ndarray) -> list[list[Hypothesis]]:
        """The hypotheses of the sentences `indices`, searched together (in whichever thread calls:
        autocast is entered here, where it applies)."""
        with autocast(self.cfg.precision, self.device):
            src = pad([src_ids[i] for i in indices]).to(self.device)
            src_len = torch.from_numpy(lengths[indices])
            if self.utility is None:
                return search(self.model, src, src_len, self.cfg, self.generator)
            return mbr.candidates(self.model, src, src_len, self.cfg, self.generator)

    def _mbr(self, candidates: list[Translation], utility: mbr.Utility) -> list[Translation]:
        """The `nbest` distinct candidates of highest expected utility, which becomes their score."""
        ranked = mbr.rank([candidate.text for candidate in candidates], utility)
        return [dataclasses.replace(candidates[index], score=expected) for index, expected in ranked[: self.cfg.nbest]]

    def source_ids(self, lines: Sequence[str]) -> list[np.ndarray]:
        """Each line's source subword ids (none for a blank line); LineError names the first line over
        max_source_length unless decode.truncate_source cuts it."""
        limit, ids = self.cfg.max_source_length, self.src_pipeline.encode(lines)
        for index, sentence in enumerate(ids):
            if len(sentence) > limit and not self.cfg.truncate_source:
                raise LineError(
                    index,
                    f"{len(sentence)} subwords, over max_source_length={limit} (--max-source-length, decode.*); "
                    "split the line, raise the limit, or cut such lines with --truncate-source "
                    "(decode.truncate_source=true)",
                )
        return [np.asarray(sentence[:limit], dtype=np.int64) for sentence in ids]

    def attention(self, lines: Sequence[str], translations: Sequence[Translation]) -> list[AttentionMap | None]:
        """The full attention matrix of each (line, translation of it), by reading the translation
        back through the models (None for a blank line): for heatmaps."""
        with autocast(self.cfg.precision, self.device):
            return attention_maps(
                self.model, self.device, self.src_pipeline, self.tgt_pipeline,
                lines, [t.tokens for t in translations], self.cfg.batch_tokens, self.cfg.max_source_length,
            )  # fmt: skip

    def translation(self, line: str, hypothesis: Hypothesis) -> Translation:
        words = self.tgt_pipeline.words(hypothesis.tokens)
        if self.cfg.replace_unk and UNK in hypothesis.tokens:
            words = self._replace_unk(line, hypothesis, words)
        text = self.tgt_pipeline.moses.detokenize(words)
        return Translation(text, hypothesis.score, hypothesis.tokens, hypothesis.alignment)

    def _replace_unk(self, line: str, hypothesis: Hypothesis, words: list[str]) -> list[str]:
        """Each UNK word of the translation becomes the source word holding the subword it attends to most."""
        source_words = self.src_pipeline.moses.tokenize(line)
        # BPE segments each word on its own, so word by word gives the sentence's pieces
        word_of_piece = [
            w for w, pieces in enumerate(self.src_pipeline.segment([[x] for x in source_words])) for _ in pieces
        ]
        copies = iter(
            source_words[word_of_piece[position]]
            for token, position in zip(hypothesis.tokens, hypothesis.alignment)
            if token == UNK
        )
        unk = self.tgt_pipeline.vocab.pieces[UNK]
        return [next(copies) if word == unk else word for word in words]


def format_translations(
    results: list[list[Translation]], nbest: int, first_line: int = 0, alignments: bool = False
) -> str:
    """The lines nmt-translate prints: the best translation per line, or with nbest > 1 Moses n-best
    rows "LINE ||| translation ||| score"; with `alignments` each gets its alignment."""
    if nbest == 1:
        if not alignments:
            return "".join(f"{hyps[0].text}\n" for hyps in results)
        return "".join(f"{hyps[0].text}\t{format_alignment(hyps[0].alignment)}\n" for hyps in results)
    return "".join(
        f"{first_line + k} ||| {hyp.text} ||| {hyp.score:.4f}"
        + (f" ||| {format_alignment(hyp.alignment)}\n" if alignments else "\n")
        for k, hyps in enumerate(results)
        for hyp in hyps
    )
