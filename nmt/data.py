"""Parallel corpora: reading, tokenization to ids, filtering, and token-budget batches.

A corpus comes from local files (plain or gzipped, one sentence per line), from the HF hub
through `datasets`, or from the built-in synthetic generator; each becomes a `datasets.Dataset`
with `src` and `tgt` columns, and is tokenized with `Dataset.map`.
Batches hold at most `batch_tokens` padded tokens of the longer side, from examples of similar
length, so padding stays small; their order is shuffled with a seeded generator each epoch.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from nmt import synthetic
from nmt.config import DataConfig
from nmt.errors import NmtError
from nmt.tokenization import MosesText, TextPipeline, build_pipelines
from nmt.vocab import BOS, EOS, PAD, pad

datasets.disable_progress_bars()


def read_lines(path: Path, on_bad_line: str = "error") -> list[str]:
    """Lines of a UTF-8 text file (gzipped if it ends in .gz), split on "\\n" only.

    A line that is not valid UTF-8 stops with an error naming it, or with on_bad_line="skip"
    reads as "", so the pair it belongs to is dropped like any pair with an empty side.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise NmtError(f"{path}: file not found") from None
    except (OSError, EOFError) as error:
        raise NmtError(f"{path}: cannot read ({error})") from None
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    decoded = []
    for number, line in enumerate(lines, start=1):
        try:
            decoded.append(line.decode("utf-8").removesuffix("\r"))
        except UnicodeDecodeError as error:
            if on_bad_line == "skip":
                decoded.append("")
                continue
            raise NmtError(
                f"{path}:{number}: invalid UTF-8 at byte {error.start}; convert the file to UTF-8 "
                "or set data.on_bad_line=skip to drop such pairs"
            ) from None
    return decoded


def read_parallel(src_path: Path, tgt_path: Path, on_bad_line: str = "error") -> datasets.Dataset:
    src, tgt = read_lines(src_path, on_bad_line), read_lines(tgt_path, on_bad_line)
    if len(src) != len(tgt):
        raise NmtError(
            f"parallel files differ in length: {src_path} has {len(src)} lines, "
            f"{tgt_path} has {len(tgt)}; they must be aligned line by line"
        )
    return datasets.Dataset.from_dict({"src": src, "tgt": tgt})


def _corpus_file(directory: Path, prefix: str, lang: str) -> Path:
    for name in (f"{prefix}.{lang}.gz", f"{prefix}.{lang}"):
        if (directory / name).exists():
            return directory / name
    raise NmtError(f"{directory / f'{prefix}.{lang}'}[.gz]: file not found")


def load_split(cfg: DataConfig, split: str) -> datasets.Dataset:
    """The raw `src`/`tgt` pairs of a split alias (train, val, test) or, for files, a prefix."""
    name = cfg.splits.get(split, split)
    if cfg.corpus == "synthetic":
        if name not in synthetic.SPLIT_STREAMS:
            raise NmtError(f"data: the synthetic corpus has splits {sorted(synthetic.SPLIT_STREAMS)}, not {split!r}")
        src, tgt = synthetic.generate_split(name, cfg.synthetic_train_pairs, cfg.synthetic_seed)
        return datasets.Dataset.from_dict({"src": src, "tgt": tgt})
    if cfg.corpus == "files":
        directory = Path(cfg.dir)
        src_path, tgt_path = _corpus_file(directory, name, cfg.src_lang), _corpus_file(directory, name, cfg.tgt_lang)
        return read_parallel(src_path, tgt_path, cfg.on_bad_line)
    return _load_hub_split(cfg, name)


def _load_hub_split(cfg: DataConfig, name: str) -> datasets.Dataset:
    """A hub dataset with a `translation` column ({lang: text}) or one column per language."""
    dataset = datasets.load_dataset(cfg.hub_name, cfg.hub_config or None, split=name)
    if "translation" in dataset.column_names:
        return dataset.map(
            lambda batch: {
                "src": [pair[cfg.src_lang] for pair in batch["translation"]],
                "tgt": [pair[cfg.tgt_lang] for pair in batch["translation"]],
            },
            batched=True,
            remove_columns=dataset.column_names,
        )
    missing = {cfg.src_lang, cfg.tgt_lang} - set(dataset.column_names)
    if missing:
        raise NmtError(f"hub dataset {cfg.hub_name}: no column for {sorted(missing)}")
    return dataset.select_columns([cfg.src_lang, cfg.tgt_lang]).rename_columns(
        {cfg.src_lang: "src", cfg.tgt_lang: "tgt"}
    )


def tokenize(pairs: datasets.Dataset, src: MosesText, tgt: MosesText) -> datasets.Dataset:
    """Add Moses-token columns `src_tokens` and `tgt_tokens`."""
    return pairs.map(
        lambda batch: {
            "src_tokens": [src.tokenize(line) for line in batch["src"]],
            "tgt_tokens": [tgt.tokenize(line) for line in batch["tgt"]],
        },
        batched=True,
        new_fingerprint=f"moses-{src.lang}-{tgt.lang}-{pairs._fingerprint}",
    )


@dataclass
class EncodedCorpus:
    """Subword ids of aligned sentences (no BOS/EOS), with the raw text they came from."""

    src_ids: list[np.ndarray]
    tgt_ids: list[np.ndarray]
    src_text: list[str]
    tgt_text: list[str]

    def __len__(self) -> int:
        return len(self.src_ids)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.fromiter((len(ids) for ids in self.src_ids), dtype=np.int64, count=len(self)),
            np.fromiter((len(ids) for ids in self.tgt_ids), dtype=np.int64, count=len(self)),
        )


def encode(tokenized: datasets.Dataset, src: TextPipeline, tgt: TextPipeline) -> EncodedCorpus:
    def to_ids(batch: dict) -> dict:
        return {
            "src_ids": src.encode_tokens(batch["src_tokens"]),
            "tgt_ids": tgt.encode_tokens(batch["tgt_tokens"]),
        }

    encoded = tokenized.map(to_ids, batched=True, new_fingerprint=f"ids-{tokenized._fingerprint}")
    encoded = encoded.with_format("numpy", columns=["src_ids", "tgt_ids"], output_all_columns=True)
    return EncodedCorpus(
        src_ids=[np.asarray(ids, dtype=np.int64) for ids in encoded["src_ids"]],
        tgt_ids=[np.asarray(ids, dtype=np.int64) for ids in encoded["tgt_ids"]],
        src_text=list(tokenized["src"]),
        tgt_text=list(tokenized["tgt"]),
    )


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
    kept = EncodedCorpus(
        src_ids=[corpus.src_ids[i] for i in keep],
        tgt_ids=[corpus.tgt_ids[i] for i in keep],
        src_text=[corpus.src_text[i] for i in keep],
        tgt_text=[corpus.tgt_text[i] for i in keep],
    )
    return kept, FilterReport(len(keep), int(empty.sum()), int(too_long.sum()), int(bad_ratio.sum()))


@dataclass
class PreparedData:
    train: EncodedCorpus
    val: EncodedCorpus
    src_pipeline: TextPipeline
    tgt_pipeline: TextPipeline
    train_report: FilterReport


def prepare(cfg: DataConfig, pipelines: tuple[TextPipeline, TextPipeline] | None = None) -> PreparedData:
    """Read train and val, learn BPE on train (unless `pipelines` are given), encode both, filter train."""
    src_moses, tgt_moses = MosesText(cfg.src_lang), MosesText(cfg.tgt_lang)
    train_tokens = tokenize(load_split(cfg, "train"), src_moses, tgt_moses)
    val_tokens = tokenize(load_split(cfg, "val"), src_moses, tgt_moses)
    src_pipeline, tgt_pipeline = pipelines or build_pipelines(
        cfg.src_lang,
        cfg.tgt_lang,
        train_tokens["src_tokens"],
        train_tokens["tgt_tokens"],
        cfg.bpe_vocab_size,
        cfg.bpe_min_frequency,
        cfg.joint_bpe,
    )
    train, report = filter_pairs(encode(train_tokens, src_pipeline, tgt_pipeline), cfg.max_length, cfg.max_length_ratio)
    if not len(train):
        raise NmtError(
            f"no training pairs left after filtering: {report.empty} had an empty side, "
            f"{report.too_long} were over data.max_length={cfg.max_length} subwords, "
            f"{report.bad_ratio} over data.max_length_ratio={cfg.max_length_ratio}"
        )
    val, _ = filter_pairs(encode(val_tokens, src_pipeline, tgt_pipeline), 10**9, float("inf"))
    return PreparedData(train, val, src_pipeline, tgt_pipeline, report)


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
    """
    cost = np.maximum(src_len, tgt_len + 1)
    if len(cost) and cost.max() > batch_tokens:
        raise NmtError(
            f"a sentence of {int(cost.max())} tokens does not fit batch_tokens={batch_tokens}; "
            "raise batch_tokens or lower data.max_length"
        )
    order = rng.permutation(len(cost))
    # target length first: the decoder's time loop is the expensive part, padding there costs most
    order = order[np.lexsort((src_len[order], tgt_len[order]))]
    batches, start, longest = [], 0, 0
    for position, index in enumerate(order):
        longest_with = max(longest, cost[index])
        if longest_with * (position - start + 1) > batch_tokens:
            batches.append(order[start:position])
            start, longest_with = position, cost[index]
        longest = longest_with
    if start < len(order):
        batches.append(order[start:])
    rng.shuffle(batches)
    return batches


def epoch_batches(corpus: EncodedCorpus, batch_tokens: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batch plan of one epoch: the same for the same seed and epoch, different across epochs."""
    src_len, tgt_len = corpus.lengths()
    return plan_batches(src_len, tgt_len, batch_tokens, np.random.default_rng([seed, epoch]))


def make_batch(corpus: EncodedCorpus, indices: np.ndarray) -> Batch:
    return collate([corpus.src_ids[i] for i in indices], [corpus.tgt_ids[i] for i in indices])
