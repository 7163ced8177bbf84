"""Parallel corpora as raw text: local files (plain or gzipped, one sentence per line), the HF hub
through `datasets` (downloaded, or streamed with data.streaming), or the built-in synthetic
generator. Everything is read lazily, a chunk of pairs at a time, so reading costs no memory in
proportion to the corpus; `nmt.cache` encodes what is read here into an `EncodedCorpus`.
"""

from __future__ import annotations

import gzip
import itertools
import zlib
from collections.abc import Iterator
from pathlib import Path

import datasets

from nmt import synthetic
from nmt.config import DataConfig
from nmt.errors import NmtError

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
            except (OSError, EOFError, zlib.error) as error:  # a corrupt or truncated gzip stream
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
