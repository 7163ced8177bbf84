"""Corpus text to BPE ids with `datasets.map`: the work behind `nmt.cache.prepare`.

`encode_splits(work, cfg)` writes, for the train and val splits, under `work`:
    {split}/text.arrow   the raw pairs (src, tgt), read a chunk at a time
    {split}/ids*.arrow   BPE-model ids (src_ids, tgt_ids; list<uint16>), one file per worker process
in two maps over `data.num_proc` worker processes: Moses normalization and tokenization into
space-separated tokens; then, once BPE is learned on a seeded sample of at most
`data.bpe_sample_size` training pairs, BPE encoding. With data.streaming the training split is
read twice from the hub (for a seeded sample of pairs to learn BPE on, drawn in one pass, then to
encode everything in this process) and only its ids are stored: a corpus larger than the disk
needs room for its ids only.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.utils import tqdm
from tokenizers import Tokenizer

from nmt.config import DataConfig, usable_cpus
from nmt.corpus import CHUNK_PAIRS, split_chunks
from nmt.tokenization import MosesText, learn_bpe
from nmt.vocab import Vocabulary

SPLITS = ("train", "val")
PAIRS_PER_PROCESS = 20_000  # below this many pairs per worker, starting workers costs more than it saves
TEXT_SCHEMA = pa.schema([("src", pa.string()), ("tgt", pa.string())])
TOKENS_SCHEMA = pa.schema([("src_tok", pa.string()), ("tgt_tok", pa.string())])


@dataclass
class EncodedSplits:
    files: dict[str, dict[str, Any]]  # per split: pairs, its text file (None when streamed) and id files, under work
    bpe: tuple[Tokenizer, Tokenizer]  # the source and target BPE models (one object twice with joint BPE)
    vocabularies: tuple[Vocabulary, Vocabulary]  # each side's pieces in its training text, most frequent first


def encode_splits(work: Path, cfg: DataConfig, bpe: tuple[Tokenizer, Tokenizer] | None = None) -> EncodedSplits:
    """Encode the train and val splits into files under `work`, learning BPE unless `bpe` is given."""
    procs = cfg.num_proc or usable_cpus()
    moses = _Moses(cfg.src_lang, cfg.tgt_lang)
    tokens: dict[str, datasets.Dataset] = {}
    files: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        if split == "train" and cfg.streaming:
            continue
        text = work / split / "text.arrow"
        pairs = _write_arrow(text, TEXT_SCHEMA, _tables(split_chunks(cfg, split), TEXT_SCHEMA), f"reading {split}")
        raw = datasets.Dataset.from_file(str(text))
        tokens[split] = _map(raw, moses, work / split / "moses.arrow", procs, f"Moses-tokenizing {split}", 1000)
        files[split] = {"pairs": pairs, "text": f"{split}/text.arrow"}
    if bpe is None and cfg.streaming:
        pairs = _reservoir(split_chunks(cfg, "train"), cfg.bpe_sample_size, cfg.bpe_sample_seed)
        sample = (
            moses({side: lines[start : start + CHUNK_PAIRS] for side, lines in pairs.items()})
            for start in range(0, len(pairs["src"]), CHUNK_PAIRS)
        )
        path = work / "train" / "sample.arrow"
        _write_arrow(path, TOKENS_SCHEMA, _tables(sample, TOKENS_SCHEMA), "Moses-tokenizing the BPE sample")
        bpe = _learn_bpe(cfg, datasets.Dataset.from_file(str(path)))
    elif bpe is None:
        bpe = _learn_bpe(cfg, _sample(tokens["train"], cfg.bpe_sample_size, cfg.bpe_sample_seed))
    encoder = _Bpe(bpe[0].to_str(), bpe[1].to_str(), max(model.get_vocab_size() for model in bpe))
    ids: dict[str, datasets.Dataset] = {}
    for split, tokenized in tokens.items():
        description = f"encoding {split} to BPE ids"
        ids[split] = _map(tokenized, encoder, work / split / "ids.arrow", procs, description, CHUNK_PAIRS)
    if cfg.streaming:
        path = work / "train" / "ids.arrow"
        encoded = (encoder(moses(chunk)) for chunk in split_chunks(cfg, "train"))
        files["train"] = {"pairs": _write_arrow(path, encoder.schema, encoded, "streaming train"), "text": None}
        ids["train"] = datasets.Dataset.from_file(str(path))
    for split, dataset in ids.items():
        files[split]["ids"] = [str(Path(file["filename"]).relative_to(work)) for file in dataset.cache_files]
    for leftover in [*work.glob("*/moses*.arrow"), *work.glob("*/sample.arrow")]:
        leftover.unlink()
    counts = [_piece_counts(ids["train"].data.column(f"{side}_ids"), model) for side, model in zip(("src", "tgt"), bpe)]
    if cfg.joint_vocab:  # one BPE model numbers both sides' pieces alike
        joint = _vocabulary(bpe[0], counts[0] + counts[1])
        return EncodedSplits(files, bpe, (joint, joint))
    return EncodedSplits(files, bpe, (_vocabulary(bpe[0], counts[0]), _vocabulary(bpe[1], counts[1])))


def _tables(chunks: Iterable[dict[str, list[str]]], schema: pa.Schema) -> Iterator[pa.Table]:
    for chunk in chunks:
        yield pa.table(chunk, schema=schema)


def _reservoir(chunks: Iterable[dict[str, list[str]]], size: int, seed: int) -> dict[str, list[str]]:
    """At most `size` pairs (0: all) of a stream of chunks, each pair as likely as any other, drawn
    by `seed` in one pass (reservoir sampling, Vitter's algorithm R), in corpus order. One uniform
    draw per pair after the first `size`, so the sample does not depend on the chunk sizes."""
    rng = np.random.default_rng(seed)
    kept: dict[str, list[str]] = {"src": [], "tgt": []}
    positions: list[int] = []  # the corpus position of the pair in each slot
    seen = 0
    with tqdm(desc="sampling pairs to learn BPE on", unit=" pairs", dynamic_ncols=True) as bar:
        for chunk in chunks:
            count = len(chunk["src"])
            filled = count if not size else max(0, min(count, size - seen))
            for side in kept:
                kept[side].extend(chunk[side][:filled])
            positions.extend(range(seen, seen + filled))
            # pair number t (from 0) takes slot j, uniform in [0, t], when j < size: probability size / (t + 1)
            numbers = np.arange(seen + filled, seen + count)
            slots = (rng.random(len(numbers)) * (numbers + 1)).astype(np.int64)
            for offset in np.flatnonzero(slots < size):
                slot, index = int(slots[offset]), filled + int(offset)
                for side in kept:
                    kept[side][slot] = chunk[side][index]
                positions[slot] = seen + index
            seen += count
            bar.update(count)
    order = np.argsort(positions, kind="stable")
    return {side: [lines[i] for i in order] for side, lines in kept.items()}


def _write_arrow(path: Path, schema: pa.Schema, tables: Iterable[pa.Table], description: str) -> int:
    """Tables into one Arrow stream file (the format datasets reads) -> rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with (
        pa.OSFile(str(path), "wb") as sink,
        pa.ipc.new_stream(sink, schema) as writer,
        tqdm(desc=description, unit=" pairs", dynamic_ncols=True) as bar,
    ):
        for table in tables:
            writer.write_table(table)
            rows += table.num_rows
            bar.update(table.num_rows)
    return rows


def _map(
    dataset: datasets.Dataset, function: Callable[[dict], Any], path: Path, procs: int, description: str, batch: int
) -> datasets.Dataset:
    """`dataset.map(function)` into `path` (one file per worker process), replacing its columns."""
    features = getattr(function, "features", None)
    if not len(dataset):  # datasets writes no file for an empty dataset
        _write_arrow(path, features.arrow_schema if features else TOKENS_SCHEMA, [], description)
        return datasets.Dataset.from_file(str(path))
    procs = max(1, min(procs, len(dataset) // PAIRS_PER_PROCESS))
    with _one_thread_per_worker(procs > 1):
        return dataset.map(
            function,
            batched=True,
            batch_size=batch,
            writer_batch_size=batch,  # one Arrow chunk per batch: few chunks for make_batch to look through
            num_proc=procs if procs > 1 else None,
            remove_columns=dataset.column_names,
            features=features,
            cache_file_name=str(path),
            new_fingerprint=hashlib.sha256(str(path).encode()).hexdigest()[:32],
            load_from_cache_file=False,
            desc=description,
        )


@contextlib.contextmanager
def _one_thread_per_worker(forking: bool) -> Iterator[None]:
    """Worker processes encode on one thread each; saying so before the fork keeps tokenizers
    from warning that it turns its own threads off in a forked process."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    if forking:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if forking and previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        elif forking:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


class _Moses:
    """Map function: raw pairs -> space-separated Moses tokens (a Moses token never holds a space).
    The tokenizers are made on first use, in the worker process that uses them."""

    def __init__(self, src_lang: str, tgt_lang: str) -> None:
        self.langs = (src_lang, tgt_lang)
        self._moses: tuple[MosesText, MosesText] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_moses": None}

    def __call__(self, batch: dict[str, list[str]]) -> dict[str, list[str]]:
        if self._moses is None:
            self._moses = (MosesText(self.langs[0]), MosesText(self.langs[1]))
        src, tgt = self._moses
        return {
            "src_tok": [" ".join(src.tokenize(line)) for line in batch["src"]],
            "tgt_tok": [" ".join(tgt.tokenize(line)) for line in batch["tgt"]],
        }


class _Bpe:
    """Map function: Moses tokens -> BPE-model ids, a table of list<uint16> columns (uint32 past
    65,536 pieces). The models travel as JSON and are loaded in each worker process."""

    def __init__(self, src_bpe: str, tgt_bpe: str, pieces: int) -> None:
        self.models = (src_bpe, tgt_bpe)
        self.dtype = np.uint16 if pieces <= 2**16 else np.uint32
        value = datasets.Value("uint16" if self.dtype == np.uint16 else "uint32")
        self.features = datasets.Features({"src_ids": datasets.List(value), "tgt_ids": datasets.List(value)})
        self.schema = self.features.arrow_schema
        self._bpe: tuple[Tokenizer, Tokenizer] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bpe": None}

    def __call__(self, batch: dict[str, list[str]]) -> pa.Table:
        if self._bpe is None:
            self._bpe = (Tokenizer.from_str(self.models[0]), Tokenizer.from_str(self.models[1]))
        columns = [self._ids(bpe, batch[f"{side}_tok"]) for bpe, side in zip(self._bpe, ("src", "tgt"))]
        return pa.Table.from_arrays(columns, schema=self.schema)

    def _ids(self, bpe: Tokenizer, lines: list[str]) -> pa.Array:
        ids = [
            encoding.ids
            for start in range(0, len(lines), 10_000)  # bounds the Encoding objects alive at once
            for encoding in bpe.encode_batch_fast(lines[start : start + 10_000], add_special_tokens=False)
        ]
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(row) for row in ids], out=offsets[1:])
        values = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(offsets[-1]))
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _sample(tokens: datasets.Dataset, size: int, seed: int) -> datasets.Dataset:
    """At most `size` pairs (0: all), drawn without replacement by `seed`, in corpus order."""
    if not size or len(tokens) <= size:
        return tokens
    chosen = np.sort(np.random.default_rng(seed).choice(len(tokens), size=size, replace=False))
    return tokens.select(chosen, keep_in_memory=True)


def _learn_bpe(cfg: DataConfig, sample: datasets.Dataset) -> tuple[Tokenizer, Tokenizer]:
    """One BPE model for both sides (joint) or one per side, on the sample's Moses tokens."""

    def lines(column: str) -> Iterator[str]:
        for batch in sample.select_columns([column]).iter(batch_size=10_000):
            yield from batch[column]

    def learn(texts: Iterable[str]) -> Tokenizer:
        return learn_bpe(texts, cfg.bpe_vocab_size, cfg.bpe_min_frequency)

    if cfg.joint_bpe:
        model = learn(itertools.chain(lines("src_tok"), lines("tgt_tok")))
        return model, model
    return learn(lines("src_tok")), learn(lines("tgt_tok"))


def _piece_counts(column: pa.ChunkedArray, bpe: Tokenizer) -> np.ndarray:
    counts = np.zeros(bpe.get_vocab_size(), dtype=np.int64)
    for chunk in column.chunks:
        counts += np.bincount(chunk.flatten().to_numpy(), minlength=len(counts))
    return counts


def _vocabulary(bpe: Tokenizer, counts: np.ndarray) -> Vocabulary:
    """The pieces of a side's training text, most frequent first, ties alphabetical: what
    `Vocabulary.build` makes of the segmented text, here from counts of BPE-model ids."""
    return Vocabulary.from_counts({bpe.id_to_token(int(i)): int(counts[i]) for i in np.flatnonzero(counts)})
