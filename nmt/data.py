"""Parallel corpora: reading, encoded corpora over Arrow tables, filtering, and token-budget batches.

A corpus comes from local files (plain or gzipped, one sentence per line), from the HF hub
through `datasets` (downloaded, or streamed with data.streaming), or from the built-in synthetic
generator. It is read lazily, a chunk of pairs at a time, so reading costs no memory in
proportion to its size. `nmt.cache.prepare` encodes it into an `EncodedCorpus`: subword ids in
an Arrow table (memory-mapped from the cache) and the lengths of its rows as numpy arrays.
Batches hold at most `batch_tokens` padded tokens of the longer side, from examples of similar
length, so padding stays small; their order is shuffled with a seeded generator each epoch.
A batch plan is computed from the length arrays alone; a batch's ids are gathered from the
table when the batch is made.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

from nmt import synthetic
from nmt.config import DataConfig
from nmt.errors import NmtError
from nmt.tokenization import TextPipeline
from nmt.vocab import BOS, EOS, PAD, pad

datasets.disable_progress_bars()

CHUNK_PAIRS = 50_000  # pairs read, encoded and stored together: few Arrow chunks, bounded memory


def iter_lines(path: Path, on_bad_line: str = "error") -> Iterator[str]:
    """Lines of a UTF-8 text file (gzipped if it ends in .gz), split on "\\n" only, read lazily.

    A line that is not valid UTF-8 stops with an error naming it, or with on_bad_line="skip"
    reads as "", so the pair it belongs to is dropped like any pair with an empty side.
    """
    try:
        file = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise NmtError(f"{path}: file not found") from None
    except OSError as error:
        raise NmtError(f"{path}: cannot read ({error})") from None
    with file:
        lines = enumerate(file, start=1)
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError) as error:  # a corrupt or truncated gzip stream
                raise NmtError(f"{path}: cannot read ({error})") from None
            try:
                text = line.removesuffix(b"\n").decode("utf-8")
            except UnicodeDecodeError as error:
                if on_bad_line == "skip":
                    yield ""
                    continue
                raise NmtError(
                    f"{path}:{number}: invalid UTF-8 at byte {error.start}; convert the file to UTF-8 "
                    "or set data.on_bad_line=skip to drop such pairs"
                ) from None
            yield text.removesuffix("\r")


def read_lines(path: Path, on_bad_line: str = "error") -> list[str]:
    return list(iter_lines(path, on_bad_line))


def iter_parallel(src_path: Path, tgt_path: Path, on_bad_line: str = "error") -> Iterator[tuple[str, str]]:
    """Aligned (source, target) lines; files of different lengths are an error once the shorter ends."""
    src, tgt = iter_lines(src_path, on_bad_line), iter_lines(tgt_path, on_bad_line)
    for pairs, (src_line, tgt_line) in enumerate(itertools.zip_longest(src, tgt)):
        if src_line is None or tgt_line is None:
            rest = 1 + sum(1 for _ in (src if tgt_line is None else tgt))
            src_count, tgt_count = (pairs + rest, pairs) if tgt_line is None else (pairs, pairs + rest)
            raise NmtError(
                f"parallel files differ in length: {src_path} has {src_count} lines, "
                f"{tgt_path} has {tgt_count}; they must be aligned line by line"
            )
        yield src_line, tgt_line


def read_parallel(src_path: Path, tgt_path: Path, on_bad_line: str = "error") -> datasets.Dataset:
    pairs = list(iter_parallel(src_path, tgt_path, on_bad_line))
    return datasets.Dataset.from_dict({"src": [s for s, _ in pairs], "tgt": [t for _, t in pairs]})


def _corpus_file(directory: Path, prefix: str, lang: str) -> Path:
    for name in (f"{prefix}.{lang}.gz", f"{prefix}.{lang}"):
        if (directory / name).exists():
            return directory / name
    raise NmtError(f"{directory / f'{prefix}.{lang}'}[.gz]: file not found")


def split_files(cfg: DataConfig, split: str) -> tuple[Path, Path]:
    """The source and target files of a split alias or prefix of a `files` corpus."""
    name = cfg.splits.get(split, split)
    directory = Path(cfg.dir)
    return _corpus_file(directory, name, cfg.src_lang), _corpus_file(directory, name, cfg.tgt_lang)


def split_chunks(cfg: DataConfig, split: str, size: int = CHUNK_PAIRS) -> Iterator[dict[str, list[str]]]:
    """The raw pairs of a split alias (train, val, test) or, for files, a prefix, read lazily:
    {"src": [...], "tgt": [...]} with at most `size` pairs each."""
    name = cfg.splits.get(split, split)
    if cfg.corpus == "hub":
        yield from _hub_chunks(cfg, name, size)
        return
    if cfg.corpus == "synthetic":
        if name not in synthetic.SPLIT_STREAMS:
            raise NmtError(f"data: the synthetic corpus has splits {sorted(synthetic.SPLIT_STREAMS)}, not {split!r}")
        src, tgt = synthetic.generate_split(name, cfg.synthetic_train_pairs, cfg.synthetic_seed)
        pairs: Iterator[tuple[str, str]] = zip(src, tgt)
    else:
        pairs = iter_parallel(*split_files(cfg, split), cfg.on_bad_line)
    while chunk := list(itertools.islice(pairs, size)):
        yield {"src": [src for src, _ in chunk], "tgt": [tgt for _, tgt in chunk]}


def load_split(cfg: DataConfig, split: str) -> datasets.Dataset:
    """The raw `src`/`tgt` pairs of a split, in memory: for test sets and other small splits."""
    chunks = list(split_chunks(cfg, split))
    return datasets.Dataset.from_dict(
        {side: [line for chunk in chunks for line in chunk[side]] for side in ("src", "tgt")}
    )


def _hub_chunks(cfg: DataConfig, name: str, size: int) -> Iterator[dict[str, list[str]]]:
    """A hub dataset with a `translation` column ({lang: text}) or one column per language,
    through the datasets cache or, with data.streaming, over the network as it is read."""
    where = f"hub dataset {cfg.hub_name!r} (config {cfg.hub_config or None!r}, split {name!r})"
    advice = (
        "check the name, config and split and the network connection (HF_HUB_OFFLINE=1 allows only data "
        "already in the datasets cache), or download the corpus and use data=files"
    )
    try:
        dataset = datasets.load_dataset(cfg.hub_name, cfg.hub_config or None, split=name, streaming=cfg.streaming)
        batches = iter(dataset.iter(batch_size=size))
    except Exception as error:  # datasets raises many types: no network, no such dataset, config or split
        raise NmtError(f"{where}: cannot load it ({error}); {advice}") from None
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as error:  # a stream can fail half-way
            raise NmtError(f"{where}: reading failed ({error}); {advice}") from None
        if "translation" in batch:
            first = batch["translation"][0] if batch["translation"] else {}
            missing = {cfg.src_lang, cfg.tgt_lang} - set(first)
            if missing:
                raise NmtError(f"{where}: its translation column has no {sorted(missing)}; set data.src_lang/tgt_lang")
            yield {
                "src": [pair[cfg.src_lang] for pair in batch["translation"]],
                "tgt": [pair[cfg.tgt_lang] for pair in batch["translation"]],
            }
            continue
        missing = {cfg.src_lang, cfg.tgt_lang} - set(batch)
        if missing:
            raise NmtError(f"{where}: no column for {sorted(missing)}")
        yield {"src": batch[cfg.src_lang], "tgt": batch[cfg.tgt_lang]}


def _index_dtype(size: int) -> type[np.signedinteger]:
    return np.int32 if size < 2**31 else np.int64


class IdColumn:
    """One side's subword ids: an Arrow list column read through numpy views of its chunks
    (zero-copy when the table is memory-mapped), and the lookup from stored to vocabulary ids."""

    def __init__(self, column: pa.ChunkedArray, lookup: np.ndarray | None = None) -> None:
        chunks = [chunk for chunk in column.chunks if len(chunk)]
        self._offsets = [chunk.offsets.to_numpy() for chunk in chunks]  # (rows + 1,) into the chunk's values
        self._values = [chunk.values.to_numpy() for chunk in chunks]
        self._starts = np.cumsum([0, *(len(chunk) for chunk in chunks)])  # the first row of each chunk
        self.lookup = lookup  # stored id -> vocabulary id; None: the stored ids are vocabulary ids

    def lengths(self) -> np.ndarray:
        """(rows,) int32: the number of ids in each row."""
        if not self._offsets:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([np.diff(offsets) for offsets in self._offsets])

    def row(self, row: int) -> np.ndarray:
        chunk = int(np.searchsorted(self._starts, row, side="right")) - 1
        local, offsets = row - self._starts[chunk], self._offsets[chunk]
        return self._vocabulary_ids(self._values[chunk][offsets[local] : offsets[local + 1]])

    def fill(self, out: np.ndarray, rows: np.ndarray, first: int) -> None:
        """Write the vocabulary ids of table row rows[i] into out[i, first : first + its length]."""
        chunk_of = np.searchsorted(self._starts, rows, side="right") - 1
        for chunk in np.unique(chunk_of):
            mine = np.flatnonzero(chunk_of == chunk)
            local = rows[mine] - self._starts[chunk]
            begin = self._offsets[chunk][local].astype(np.int64)
            length = self._offsets[chunk][local + 1] - begin
            # each id's position inside its row: 0 .. length - 1, row after row
            within = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
            ids = self._values[chunk][np.repeat(begin, length) + within]
            out[np.repeat(mine, length), first + within] = self._vocabulary_ids(ids)

    def _vocabulary_ids(self, ids: np.ndarray) -> np.ndarray:
        return (ids if self.lookup is None else self.lookup[ids]).astype(np.int64)


class _Rows(Sequence[np.ndarray]):
    """The vocabulary ids of a corpus's rows, read one at a time (for validation sets and tests)."""

    def __init__(self, column: IdColumn, rows: np.ndarray) -> None:
        self._column, self._rows = column, rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._column.row(int(self._rows[index]))


def _nothing() -> None:
    pass


class EncodedCorpus:
    """Aligned subword-id sequences (no BOS/EOS) and their raw text: rows of an Arrow table.

    `rows` are the table rows this corpus holds, so filtering selects rows and copies no ids;
    `src_len` and `tgt_len` are their lengths, the only per-example data batch planning reads.
    `release()` hands back the memory-mapped pages read so far (they stay in the page cache).
    """

    def __init__(
        self,
        src: IdColumn,
        tgt: IdColumn,
        text: pa.Table | None = None,
        rows: np.ndarray | None = None,
        lengths: tuple[np.ndarray, np.ndarray] | None = None,
        release: Callable[[], None] = _nothing,
    ) -> None:
        self.src, self.tgt, self.text, self.release = src, tgt, text, release
        self.src_len, self.tgt_len = lengths if lengths is not None else (src.lengths(), tgt.lengths())
        size = len(self.src_len)
        self.rows = np.arange(size, dtype=_index_dtype(size)) if rows is None else rows

    @classmethod
    def from_lists(
        cls,
        src_ids: Sequence[Sequence[int]],
        tgt_ids: Sequence[Sequence[int]],
        src_text: list[str] | None = None,
        tgt_text: list[str] | None = None,
    ) -> EncodedCorpus:
        """An in-memory corpus of vocabulary ids (tests, small data)."""

        def column(ids: Sequence[Sequence[int]]) -> pa.ChunkedArray:
            offsets = np.concatenate([[0], np.cumsum([len(row) for row in ids], dtype=np.int64)]).astype(np.int32)
            values = np.concatenate([np.asarray(row, dtype=np.int64) for row in ids]) if len(ids) else []
            return pa.chunked_array([pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int64()))])

        text = None if src_text is None else pa.table({"src": src_text, "tgt": tgt_text})
        return cls(IdColumn(column(src_ids)), IdColumn(column(tgt_ids)), text)

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return self.src_len, self.tgt_len

    def select(self, positions: np.ndarray) -> EncodedCorpus:
        lengths = (self.src_len[positions], self.tgt_len[positions])
        return EncodedCorpus(self.src, self.tgt, self.text, self.rows[positions], lengths, self.release)

    @property
    def src_ids(self) -> Sequence[np.ndarray]:
        return _Rows(self.src, self.rows)

    @property
    def tgt_ids(self) -> Sequence[np.ndarray]:
        return _Rows(self.tgt, self.rows)

    @property
    def src_text(self) -> list[str]:
        return self._text("src")

    @property
    def tgt_text(self) -> list[str]:
        return self._text("tgt")

    def _text(self, side: str) -> list[str]:
        if self.text is None:
            raise NmtError("this corpus keeps no text: a streamed training split stores only subword ids")
        return self.text.column(side).take(pa.array(self.rows)).to_pylist()


@dataclass
class FilterReport:
    kept: int
    empty: int
    too_long: int
    bad_ratio: int


def filter_pairs(corpus: EncodedCorpus, max_length: int, max_ratio: float) -> tuple[EncodedCorpus, FilterReport]:
    """Drop pairs with an empty side, a side over `max_length` subwords, or a skewed length ratio."""
    src_len, tgt_len = corpus.lengths()
    empty = (src_len == 0) | (tgt_len == 0)
    too_long = ~empty & ((src_len > max_length) | (tgt_len > max_length))
    ratio = np.maximum(src_len, tgt_len) / np.maximum(np.minimum(src_len, tgt_len), 1)
    bad_ratio = ~empty & ~too_long & (ratio > max_ratio)
    keep = np.flatnonzero(~(empty | too_long | bad_ratio))
    report = FilterReport(len(keep), int(empty.sum()), int(too_long.sum()), int(bad_ratio.sum()))
    return corpus.select(keep), report


@dataclass
class PreparedData:
    train: EncodedCorpus
    val: EncodedCorpus
    src_pipeline: TextPipeline
    tgt_pipeline: TextPipeline
    train_report: FilterReport
    cache: Path | None = None  # the prepared-corpus folder the splits are read from
    built: bool = False  # whether this preparation encoded the corpus, rather than reusing the cache
    seconds: float = 0.0  # spent encoding (when built) or opening the cache
    pairs: int = 0  # pairs in the train and val splits, before filtering


@dataclass
class Batch:
    """Padded id tensors; `tgt_in` starts with BOS, `tgt_out` ends with EOS."""

    src: torch.Tensor  # (B, S)
    src_len: torch.Tensor  # (B,) on CPU, for packing
    tgt_in: torch.Tensor  # (B, T)
    tgt_out: torch.Tensor  # (B, T)

    @property
    def target_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.src.to(device), self.src_len, self.tgt_in.to(device), self.tgt_out.to(device))


def collate(src_ids: list[np.ndarray], tgt_ids: list[np.ndarray]) -> Batch:
    bos, eos = np.array([BOS]), np.array([EOS])
    return Batch(
        src=pad(src_ids),
        src_len=torch.tensor([len(ids) for ids in src_ids]),
        tgt_in=pad([np.concatenate([bos, ids]) for ids in tgt_ids]),
        tgt_out=pad([np.concatenate([ids, eos]) for ids in tgt_ids]),
    )


def plan_batches(
    src_len: np.ndarray, tgt_len: np.ndarray, batch_tokens: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Group example indices into batches of at most `batch_tokens` padded tokens.

    Examples are sorted by (target, source) length, ties broken at random, and cut greedily,
    so each batch holds examples of near-equal length; the batch order is then shuffled.
    A batch costs rows * max(longest source, longest target + 1), the +1 for BOS/EOS.
    Everything is numpy over the length arrays: about a second for millions of examples.
    """
    cost = np.maximum(src_len, tgt_len + 1)
    if len(cost) and cost.max() > batch_tokens:
        raise NmtError(
            f"a sentence of {int(cost.max())} tokens does not fit batch_tokens={batch_tokens}; "
            "raise batch_tokens or lower data.max_length"
        )
    order = rng.permutation(len(cost)).astype(_index_dtype(len(cost)))
    if not len(order):
        return []
    # target length first: the decoder's time loop is the expensive part, padding there costs most
    order = order[np.argsort(_length_key(tgt_len[order], src_len[order]), kind="stable")]
    batches = np.split(order, _greedy_cuts(cost[order], batch_tokens))
    rng.shuffle(batches)
    return batches


def _length_key(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """One integer per example ordering like (major, minor); a stable sort on it equals
    np.lexsort((minor, major)), and is a radix sort when the key fits 16 bits."""
    width = int(minor.max()) + 1
    top = (int(major.max()) + 1) * width
    dtype = np.int16 if top < 2**15 else np.int32 if top < 2**31 else np.int64
    return major.astype(dtype) * dtype(width) + minor.astype(dtype)


def _greedy_cuts(cost: np.ndarray, budget: int) -> list[int]:
    """Where examples in this order are cut into batches: a batch grows while its rows times
    its largest cost stay within the budget."""
    cuts, start = [], 0
    while start < len(cost):
        # rows * cost[start] <= budget bounds the batch, so the next example to look at is the last
        window = cost[start : start + budget // int(cost[start]) + 1]
        fits = np.maximum.accumulate(window) * np.arange(1, len(window) + 1) <= budget
        start += len(window) if fits.all() else int(np.argmin(fits))
        cuts.append(start)
    return cuts[:-1]


def epoch_batches(corpus: EncodedCorpus, batch_tokens: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batch plan of one epoch: the same for the same seed and epoch, different across epochs."""
    src_len, tgt_len = corpus.lengths()
    return plan_batches(src_len, tgt_len, batch_tokens, np.random.default_rng([seed, epoch]))


def make_batch(corpus: EncodedCorpus, indices: np.ndarray) -> Batch:
    """The padded batch of examples `indices`, gathered from the table with numpy."""
    indices = np.asarray(indices, dtype=np.int64)
    rows = corpus.rows[indices]
    src_len, tgt_len = corpus.src_len[indices].astype(np.int64), corpus.tgt_len[indices].astype(np.int64)
    src = np.full((len(rows), src_len.max(initial=0)), PAD, dtype=np.int64)
    corpus.src.fill(src, rows, first=0)
    tgt_in = np.full((len(rows), tgt_len.max(initial=0) + 1), PAD, dtype=np.int64)
    corpus.tgt.fill(tgt_in, rows, first=1)
    tgt_in[:, 0] = BOS
    tgt_out = np.full_like(tgt_in, PAD)
    tgt_out[:, :-1] = tgt_in[:, 1:]
    tgt_out[np.arange(len(rows)), tgt_len] = EOS
    # pages read from a memory-mapped table would otherwise add up to the whole corpus over an epoch
    corpus.release()
    return Batch(torch.from_numpy(src), torch.from_numpy(src_len), torch.from_numpy(tgt_in), torch.from_numpy(tgt_out))
