"""Lexical shortlists: the target pieces that a batch's source pieces are likely to translate into.

With `decode.shortlist=true` each batch's output layer is cut to the union of
- the k best target pieces of each source piece in the batch (decode.shortlist_per_source),
- the N target pieces most frequent in the training targets (decode.shortlist_frequent),
- the special pieces,
so that a search step multiplies its hypotheses by U rows of the output layer instead of V, and
normalizes its softmax over those U tokens, as Marian does (`Seq2Seq.step`; search works on the
U columns, `SearchModel.vocabulary`).

The table behind it is built once from the training pairs (`build`) and stored, versioned, in every
checkpoint that training writes; `python -m nmt.shortlist` adds one to an older checkpoint. A source
piece s ranks the target pieces t by the Dice coefficient of their occurrence in the same pairs

    dice(s, t) = 2 c(s, t) / (c(s) + c(t))

c(s, t): training pairs with s in the source and t in the target; c(s), c(t): pairs with each.
Marian takes p(t | s) from word alignments; without an aligner, the co-occurrence estimate
p(t | s) = c(s, t) / c(s) ranks the most frequent target pieces ("." , "ein") first for every
source piece, and those are in the frequent list already, while pointwise mutual information ranks
first the pairs seen once. Dice asks both pieces to occur mostly together, as a piece and its
translation do (Smadja et al., 1996, extract bilingual lexicons with it).

    python -m nmt.shortlist runs/old/checkpoints/best.pt -o runs/old/checkpoints/best-shortlist.pt
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nmt import checkpoint
from nmt.batching import padded_ids
from nmt.config import SHORTLIST_WIDTH as WIDTH
from nmt.config import DataConfig
from nmt.errors import NmtError, exit_on_user_error
from nmt.files import check_distinct
from nmt.vocab import EOS, PAD, SPECIAL_TOKENS

if TYPE_CHECKING:  # the data pipeline stays out of nmt-translate's imports
    from nmt.data import EncodedCorpus

VERSION = 1  # bump when what the stored table means changes
PAIR_BUDGET = 1 << 22  # (sentence, source position, target position) triples looked at in one chunk
MERGE_AT = 1 << 24  # pair codes held before they are merged into counts (128 MB), unless the counts hold more


def build(corpus: EncodedCorpus, src_vocab_size: int, tgt_vocab_size: int) -> dict[str, Any]:
    """A corpus's shortlist table, as checkpoints store it: `per_source` (src_vocab_size, WIDTH) int32, each
    source piece's target pieces best first (-1 where it has fewer), and `frequent` int32, the target
    pieces of the corpus most frequent first."""
    pair_counts = _PairCounts()
    src_pairs = np.zeros(src_vocab_size, dtype=np.int64)  # c(s)
    tgt_pairs = np.zeros(tgt_vocab_size, dtype=np.int64)  # c(t)
    tgt_tokens = np.zeros(tgt_vocab_size, dtype=np.int64)  # occurrences, for the frequent list
    src_len, tgt_len = corpus.lengths()
    longest = max(int(src_len.max(initial=1)) * int(tgt_len.max(initial=1)), 1)
    chunk = max(PAIR_BUDGET // longest, 1)
    for start in range(0, len(corpus), chunk):
        rows = corpus.rows[start : start + chunk]
        src = padded_ids(corpus.src, rows, src_len[start : start + chunk])  # (n, S)
        tgt = padded_ids(corpus.tgt, rows, tgt_len[start : start + chunk])  # (n, T)
        sentence = np.arange(len(rows), dtype=np.int64)[:, None]
        # a piece counts once per sentence pair however often it occurs there
        src_pairs += np.bincount(_present(src, sentence, src_vocab_size), minlength=src_vocab_size)
        tgt_pairs += np.bincount(_present(tgt, sentence, tgt_vocab_size), minlength=tgt_vocab_size)
        tgt_tokens += np.bincount(tgt[tgt != PAD], minlength=tgt_vocab_size)
        both = (src != PAD)[:, :, None] & (tgt != PAD)[:, None, :]  # (n, S, T)
        n, i, j = both.nonzero()
        pair = src[n, i] * tgt_vocab_size + tgt[n, j]
        pair_counts.add(_distinct(n * (src_vocab_size * tgt_vocab_size) + pair) % (src_vocab_size * tgt_vocab_size))
    corpus.release()
    pairs, together = pair_counts.total()
    s, t = pairs // tgt_vocab_size, pairs % tgt_vocab_size
    dice = 2.0 * together / (src_pairs[s] + tgt_pairs[t])
    order = np.lexsort((t, -dice, s))  # by source piece, best first, ties by target id
    s, t = s[order], t[order]
    rank = np.arange(len(s)) - np.searchsorted(s, s)  # position within its source piece's list
    kept = rank < WIDTH
    per_source = np.full((src_vocab_size, WIDTH), -1, dtype=np.int32)
    per_source[s[kept], rank[kept]] = t[kept]
    occurring = np.flatnonzero(tgt_tokens)
    frequent = occurring[np.argsort(-tgt_tokens[occurring], kind="stable")]
    return {
        "version": VERSION,
        "per_source": torch.from_numpy(per_source),
        "frequent": torch.from_numpy(frequent.astype(np.int32)),
    }


def _present(ids: np.ndarray, sentence: np.ndarray, vocab_size: int) -> np.ndarray:
    """The distinct ids of each row of ids (n, L) but PAD, one entry per (row, id)."""
    real = ids != PAD
    return _distinct(np.broadcast_to(sentence, ids.shape)[real] * vocab_size + ids[real]) % vocab_size


def _distinct(codes: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2's hashing np.unique took 8x longer on these int64 codes."""
    codes = np.sort(codes)
    return codes[_starts(codes)]


def _starts(codes: np.ndarray) -> np.ndarray:
    """Where each run of equal values of a sorted array begins."""
    return np.flatnonzero(np.diff(codes, prepend=codes[:1] - 1))


class _PairCounts:
    """Counts of (source, target) pair codes, summed over chunks; merged when the pending chunks
    outgrow both MERGE_AT and the merged counts, so memory follows the distinct pairs and merging
    costs O(n log n) over the whole corpus."""

    def __init__(self) -> None:
        self.codes, self.counts = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        self.pending: list[np.ndarray] = []

    def add(self, codes: np.ndarray) -> None:
        self.pending.append(codes)
        if sum(map(len, self.pending)) > max(len(self.codes), MERGE_AT):
            self._merge()

    def total(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.codes, self.counts

    def _merge(self) -> None:
        codes = np.sort(np.concatenate([self.codes[:0], *self.pending]))  # a pending code: one sentence pair
        starts = _starts(codes)
        codes, counts = codes[starts], np.diff(starts, append=len(codes))
        if len(self.codes):
            codes, counts = np.concatenate([self.codes, codes]), np.concatenate([self.counts, counts])
            order = np.argsort(codes)
            codes, counts = codes[order], counts[order]
            starts = _starts(codes)
            codes, counts = codes[starts], np.add.reduceat(counts, starts)
        self.codes, self.counts, self.pending = codes, counts, []


class Shortlist:
    """A shortlist table (`build`) cut to k candidates per source piece and the N most frequent
    target pieces; `vocabulary(src)` is a batch's union."""

    def __init__(self, table: dict[str, Any], per_source: int, frequent: int, device: torch.device) -> None:
        candidates = table["per_source"][:, :per_source].long()
        # -1 fills the rows of source pieces with fewer candidates; EOS, always in the union,
        # takes its place, so that one `unique` makes the union
        self.candidates = candidates.masked_fill(candidates < 0, EOS).to(device)  # (V_src, k)
        always = torch.cat([torch.arange(len(SPECIAL_TOKENS)), table["frequent"][:frequent].long()])
        self.always = always.unique().to(device)

    def vocabulary(self, src: torch.Tensor) -> torch.Tensor:
        """src (B, S) padded source ids -> the target ids of the batch's shortlist, sorted (U,)."""
        return torch.cat([self.always, self.candidates[src].flatten()]).unique()


def stored(checkpoint: dict[str, Any], path: Path, per_source: int) -> dict[str, Any]:
    """The shortlist table a checkpoint holds, checked, with at least `per_source` candidates per
    source piece; otherwise a one-line NmtError naming the file and what to do."""
    table = checkpoint.get("shortlist")
    if table is None:
        raise NmtError(
            f"{path}: holds no lexical shortlist, which decode.shortlist=true (--shortlist) needs (checkpoints "
            f"written before it existed); add one with `python -m nmt.shortlist {path} -o NEW.pt`, which reads "
            "the corpus it was trained on, or decode without it"
        )
    problem = _problem(table, len(checkpoint["src_vocab"]), len(checkpoint["tgt_vocab"]))
    if problem:
        raise NmtError(f"{path}: its lexical shortlist {problem}; add a new one with `python -m nmt.shortlist`")
    width = table["per_source"].size(1)
    if per_source > width:
        raise NmtError(
            f"{path}: its shortlist holds {width} target pieces per source piece; ask for at most that many "
            f"with decode.shortlist_per_source (--shortlist-per-source), not {per_source}"
        )
    return table


def _problem(table: Any, src_size: int, tgt_size: int) -> str:
    if not isinstance(table, dict) or not isinstance(table.get("version"), int):
        return "is not a dict with a version"
    if table["version"] > VERSION:
        return f"has format {table['version']}, newer than this nmt understands ({VERSION}): upgrade nmt, or"
    for key, dims in (("per_source", 2), ("frequent", 1)):
        tensor = table.get(key)
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int32 or tensor.dim() != dims:
            return f"lacks {key}, a {dims}-dimensional int32 tensor"
    per_source, frequent = table["per_source"], table["frequent"]
    if per_source.size(0) != src_size:
        return f"has {per_source.size(0)} rows, not one per source piece ({src_size})"
    if per_source.numel() and not (int(per_source.min()) >= -1 and int(per_source.max()) < tgt_size):
        return f"names target pieces outside 0..{tgt_size - 1}"
    if frequent.numel() and not (int(frequent.min()) >= 0 and int(frequent.max()) < tgt_size):
        return f"names frequent target pieces outside 0..{tgt_size - 1}"
    return ""


def add_to_checkpoint(path: Path, output: Path | None, data_dir: str = "") -> dict[str, Any]:
    """Write `output` (None: replace `path`, atomically): the checkpoint at `path` with a shortlist
    built from the training split of the corpus its data config names (in `data_dir` if given),
    encoded with its own BPE models and vocabularies. Returns the table."""
    from nmt.cache import prepare  # the data pipeline, which nmt-translate does without

    if output is not None:
        check_distinct(output, [path], "the checkpoint read (--in-place replaces it)")
    state = checkpoint.load(path)
    data_cfg = DataConfig(**state["data_config"])
    if data_dir:
        data_cfg = dataclasses.replace(data_cfg, dir=data_dir)
    data = prepare(data_cfg, checkpoint.pipelines(state))
    state["shortlist"] = build(data.train, len(state["src_vocab"]), len(state["tgt_vocab"]))
    checkpoint.save(output or path, state)
    return state["shortlist"]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nmt.shortlist", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", type=Path, help="the checkpoint with its shortlist, a new file")
    where.add_argument("--in-place", action="store_true", help="replace the checkpoint itself (atomically)")
    parser.add_argument("--data-dir", default="", help="the corpus folder, if not the one its data config names")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    table = exit_on_user_error(lambda: add_to_checkpoint(args.checkpoint, args.output, args.data_dir))
    per_source = table["per_source"]
    print(
        f"{args.output or args.checkpoint}: a shortlist of up to {per_source.size(1)} target pieces for each of "
        f"{per_source.size(0)} source pieces, and {table['frequent'].numel()} target pieces by frequency"
    )


if __name__ == "__main__":
    main()
