"""Encoded corpora: aligned subword ids in an Arrow table (memory-mapped from the cache that
`nmt.cache.prepare` builds), the lengths of its rows as numpy arrays, and length filtering.

Filtering and batch planning read only the length arrays and select rows; ids are gathered
from the table when a batch is made (`nmt.batching`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from nmt.batching import index_dtype
from nmt.errors import NmtError
from nmt.tokenization import TextPipeline


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

    def occurrences(self, vocabulary_id: int) -> np.ndarray:
        """(rows,) how many times each row holds `vocabulary_id`; reads every id, one chunk at a time."""
        counts = []
        for offsets, values in zip(self._offsets, self._values):
            seen = np.concatenate([[0], np.cumsum(self._vocabulary_ids(values) == vocabulary_id)])
            counts.append(seen[offsets[1:]] - seen[offsets[:-1]])
        return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)

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
        self.rows = np.arange(size, dtype=index_dtype(size)) if rows is None else rows

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
