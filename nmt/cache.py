"""Prepared corpora: text to subword ids once, into memory-mapped Arrow files that later runs reuse.

`prepare(cfg)` encodes the train and val splits to BPE ids (nmt/encoding.py: Moses and BPE
through `datasets.map` in `data.num_proc` worker processes, BPE learned on a seeded sample of
at most `data.bpe_sample_size` training pairs) and stores them as one entry of the cache
(`data.cache_dir`, else $NMT_CACHE, else ~/.cache/nmt). The entry's name holds a hash of all
the ids depend on: the data files (path, size, modification time) or the hub or synthetic
source, the splits, languages and BPE settings, and the versions of this format, sacremoses and
tokenizers. A later run with the same key only opens the files, memory-mapped, so its start-up
time and memory do not grow with the corpus; every DDP rank opens the entry rank 0 built.
Length filters (data.max_length, data.max_length_ratio) apply to the lengths at start-up, so
changing them needs no rebuild.

One process builds an entry: it holds a file lock (`.<entry>.lock`, removed when it is done)
while the others preparing the same entry wait, then open what it built. A build is
written to a hidden folder beside the entry and renamed into place once complete, so a killed
build never leaves an entry a later run would trust. The next build removes the leftovers: those
of the same entry whose process (on this host) no longer runs, and any build folder nothing was
written to for a day. Should two builds run at once all the same (hosts whose file system does
not share locks), the first rename wins and the other process uses its result.

An entry holds:
    meta.json                   what it was built from, pair counts, build time
    src_bpe.json, tgt_bpe.json  the BPE models (tokenizers JSON; the same model twice with joint BPE)
    vocab.json                  each side's pieces, most frequent first in that side's training text
    train/, val/                text.arrow (src, tgt; not kept for a streamed training split) and
                                ids*.arrow (src_ids, tgt_ids; one file per worker process)
Ids are stored as the BPE model numbers its pieces; each side's vocabulary is a lookup table
applied when a batch is made, so a checkpoint's pipelines read the entry built with the same BPE.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import logging
import mmap
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout
from tokenizers import Tokenizer

from nmt import synthetic
from nmt.config import DataConfig
from nmt.corpus import split_files
from nmt.data import EncodedCorpus, IdColumn, PreparedData, filter_pairs
from nmt.encoding import SPLITS, encode_splits
from nmt.errors import NmtError
from nmt.tokenization import TextPipeline
from nmt.vocab import Vocabulary

FORMAT_VERSION = 3  # bump when what an entry stores, or how text becomes ids, changes (3: reproducible BPE)
ABANDONED_AFTER = 24 * 3600  # seconds without a write after which any build folder counts as abandoned
Pipelines = tuple[TextPipeline, TextPipeline]
log = logging.getLogger(__name__)


def cache_root(setting: str) -> Path:
    """Where prepared corpora live: data.cache_dir, else $NMT_CACHE, else ~/.cache/nmt."""
    return Path(setting or os.environ.get("NMT_CACHE") or "~/.cache/nmt").expanduser()


def prepare(cfg: DataConfig, pipelines: Pipelines | None = None, cache_dir: Path | None = None) -> PreparedData:
    """The train and val splits as ids, filtered, from the cache; the entry is built first if missing.

    `pipelines` (a checkpoint's) fix the BPE models and vocabularies instead of learning them;
    the entry learned from the same data holds the same BPE model and serves them as it is.
    """
    start = time.monotonic()
    root = cache_dir or cache_root(cfg.cache_dir)
    inputs = key_inputs(cfg)
    entry = root / entry_name(cfg, inputs)
    if pipelines and not (entry.is_dir() and _same_bpe(entry, pipelines)):
        inputs["bpe"] = {"given": _digest(pipeline.bpe.to_str() for pipeline in pipelines)}
        entry = root / entry_name(cfg, inputs)
    built = False
    if not entry.is_dir():
        with _entry_lock(entry):
            built = not entry.is_dir()  # false when another process built it while this one waited
            if built:
                _build(entry, cfg, inputs, pipelines)
    data = _open(entry, cfg, pipelines)
    data.built, data.seconds = built, time.monotonic() - start
    return data


def key_inputs(cfg: DataConfig) -> dict[str, Any]:
    """Everything the stored ids depend on. Length filters are not: they apply when an entry is opened."""
    if cfg.corpus == "files":
        source: dict[str, Any] = {}
        for split in SPLITS:
            for path in split_files(cfg, split):
                stat = path.stat()
                source[str(path.resolve())] = [stat.st_size, stat.st_mtime_ns]
    elif cfg.corpus == "synthetic":  # the generator's code is part of the data it makes
        source = {
            "pairs": cfg.synthetic_train_pairs,
            "seed": cfg.synthetic_seed,
            "code": _digest([inspect.getsource(synthetic)]),
        }
    else:  # a hub dataset's revision is unknown without the network: its name, config and splits stand for it
        source = {"hub": cfg.hub_name, "config": cfg.hub_config, "streaming": cfg.streaming}
    return {
        "format": FORMAT_VERSION,
        "versions": {name: importlib.metadata.version(name) for name in ("sacremoses", "tokenizers")},
        "corpus": cfg.corpus,
        "source": source,
        "splits": [cfg.splits[split] for split in SPLITS],
        "langs": [cfg.src_lang, cfg.tgt_lang],
        "on_bad_line": cfg.on_bad_line,
        "bpe": {
            "vocab_size": cfg.bpe_vocab_size,
            "min_frequency": cfg.bpe_min_frequency,
            "joint": cfg.joint_bpe,
            # only when set, so the entries prepared before the option existed keep their names
            **({"joint_vocab": True} if cfg.joint_vocab else {}),
            "sample_size": cfg.bpe_sample_size,
            "sample_seed": cfg.bpe_sample_seed,
        },
    }


def entry_name(cfg: DataConfig, inputs: dict[str, Any]) -> str:
    """A readable label (corpus and languages) and the hash of the inputs."""
    label = {"files": Path(cfg.dir).resolve().name, "synthetic": "synthetic", "hub": cfg.hub_name}[cfg.corpus]
    label = re.sub(r"[^A-Za-z0-9._]+", "_", f"{label}.{cfg.src_lang}-{cfg.tgt_lang}").strip("_.")
    return f"{label}-{_digest([json.dumps(inputs, sort_keys=True)])}"


def _digest(texts: Iterable[str]) -> str:
    hasher = hashlib.sha256()
    for text in texts:
        hasher.update(text.encode() + b"\0")
    return hasher.hexdigest()[:20]


def _same_bpe(entry: Path, pipelines: Pipelines) -> bool:
    try:
        stored = [Tokenizer.from_file(str(entry / f"{side}_bpe.json")).to_str() for side in ("src", "tgt")]
    except Exception:  # a damaged entry is reported when it is opened
        return False
    return stored == [pipeline.bpe.to_str() for pipeline in pipelines]


@contextlib.contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    """Hold the entry's lock, waiting while another process holds it.

    Only processes that found no entry take it, so torchrun's other ranks, which open the entry
    rank 0 prepared, never wait here. The holder removes the lock file before letting go, so the
    cache keeps none; a process that then wins the removed file locks the file on the path anew.
    """
    root, lock_file = entry.parent, entry.parent / f".{entry.name}.lock"
    lock = FileLock(lock_file)
    try:
        root.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("%s: another process is preparing this corpus; waiting for it", entry)
            lock.acquire()
        while not lock_file.exists():  # won a removed file (recent filelock versions check this themselves)
            lock.release()
            lock.acquire()
    except OSError as error:
        raise _unwritable(root, error) from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # gone already, or another user's in a shared cache
            lock_file.unlink()
        lock.release()


def _unwritable(root: Path, error: OSError) -> NmtError:
    return NmtError(
        f"{root}: cannot keep prepared corpora there ({error}); set data.cache_dir or NMT_CACHE to a writable folder"
    )


def _build(entry: Path, cfg: DataConfig, inputs: dict[str, Any], pipelines: Pipelines | None) -> None:
    """Encode the corpus into a hidden folder, then rename that to `entry` in one step."""
    root = entry.parent
    try:
        _remove_abandoned_builds(root, entry.name)
        work = Path(tempfile.mkdtemp(prefix=f".build-{entry.name}-{socket.gethostname()}-{os.getpid()}-", dir=root))
    except OSError as error:
        raise _unwritable(root, error) from None
    try:
        start = time.monotonic()
        encoded = encode_splits(work, cfg, (pipelines[0].bpe, pipelines[1].bpe) if pipelines else None)
        for side, model in zip(("src", "tgt"), encoded.bpe):
            (work / f"{side}_bpe.json").write_text(model.to_str())
        vocab = {side: vocabulary.pieces for side, vocabulary in zip(("src", "tgt"), encoded.vocabularies)}
        (work / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
        seconds = time.monotonic() - start
        pairs = sum(split["pairs"] for split in encoded.files.values())
        meta = {
            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "pairs_per_second": round(pairs / max(seconds, 1e-9), 1),
            "splits": encoded.files,
            "inputs": inputs,
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        work.chmod(0o755)  # mkdtemp made it private; an entry is for everyone who may read the cache
        try:
            work.rename(entry)
        except OSError:
            if not entry.is_dir():
                raise  # otherwise another process built the same entry first: use theirs
    except OSError as error:
        raise NmtError(
            f"{work}: preparing the corpus failed ({error}); free disk space or set data.cache_dir"
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)  # nothing is left once renamed; a failed build leaves nothing either


def _remove_abandoned_builds(root: Path, name: str) -> None:
    """Builds killed part-way: this entry's whose process (on this host) no longer runs, and any
    build folder, whatever its settings or host, that nothing was written to for ABANDONED_AFTER."""
    for folder in root.glob(".build-*"):
        # .build-{entry}-{host}-{pid}-{mkdtemp's suffix, which has no "-"}
        owner = re.fullmatch(rf"\.build-(.+)-{re.escape(socket.gethostname())}-(\d+)-[^-]*", folder.name)
        if owner and _running(int(owner[2])):
            continue
        if (owner and owner[1] == name) or _untouched_for(folder, ABANDONED_AFTER):
            shutil.rmtree(folder, ignore_errors=True)


def _untouched_for(folder: Path, seconds: float) -> bool:
    """Whether nothing in `folder` was modified for `seconds` (a running build keeps writing)."""
    cutoff = time.time() - seconds
    try:
        return all(path.lstat().st_mtime < cutoff for path in itertools.chain([folder], folder.rglob("*")))
    except OSError:  # changing while we look: in use
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _open(entry: Path, cfg: DataConfig, pipelines: Pipelines | None) -> PreparedData:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if pipelines is None:
            src_bpe = Tokenizer.from_file(str(entry / "src_bpe.json"))
            tgt_bpe = src_bpe if cfg.joint_bpe else Tokenizer.from_file(str(entry / "tgt_bpe.json"))
            vocab = json.loads((entry / "vocab.json").read_text())
            pipelines = (
                TextPipeline(cfg.src_lang, src_bpe, Vocabulary(vocab["src"])),
                TextPipeline(cfg.tgt_lang, tgt_bpe, Vocabulary(vocab["tgt"])),
            )
        lookups = (_lookup(pipelines[0]), _lookup(pipelines[1]))
        train, val = (_open_split(entry, meta["splits"][split], lookups) for split in SPLITS)
    except (OSError, KeyError, ValueError, TypeError, pa.ArrowException) as error:
        raise NmtError(
            f"{entry}: this prepared corpus is damaged ({type(error).__name__}: {error}); "
            "delete the folder and run again"
        ) from None
    train, report = filter_pairs(train, cfg.max_length, cfg.max_length_ratio)
    if not len(train):
        raise NmtError(
            f"no training pairs left after filtering: {report.empty} had an empty side, "
            f"{report.too_long} were over data.max_length={cfg.max_length} subwords, "
            f"{report.bad_ratio} over data.max_length_ratio={cfg.max_length_ratio}"
        )
    val, _ = filter_pairs(val, 10**9, float("inf"))
    pairs = sum(meta["splits"][split]["pairs"] for split in SPLITS)
    return PreparedData(train, val, pipelines[0], pipelines[1], report, cache=entry, pairs=pairs)


def _lookup(pipeline: TextPipeline) -> np.ndarray:
    """BPE-model id -> this side's vocabulary id (UNK for pieces its training text never had)."""
    bpe = pipeline.bpe
    return np.array(pipeline.vocab.ids(bpe.id_to_token(i) for i in range(bpe.get_vocab_size())), dtype=np.int64)


def _open_split(entry: Path, split: dict[str, Any], lookups: tuple[np.ndarray, np.ndarray]) -> EncodedCorpus:
    maps: list[mmap.mmap] = []
    ids = pa.concat_tables([_mapped(entry / name, maps) for name in split["ids"]])
    text = _mapped(entry / split["text"], maps) if split["text"] else None
    corpus = EncodedCorpus(
        IdColumn(ids.column("src_ids"), lookups[0]),
        IdColumn(ids.column("tgt_ids"), lookups[1]),
        text,
        release=lambda: _release(maps),
    )
    corpus.release()  # computing the lengths read every row's offsets
    return corpus


def _mapped(path: Path, maps: list[mmap.mmap]) -> pa.Table:
    """An Arrow stream file as a table whose buffers point into a read-only memory map of it."""
    with path.open("rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    maps.append(mapped)
    return pa.ipc.open_stream(pa.py_buffer(mapped)).read_all()


def _release(maps: list[mmap.mmap]) -> None:
    """Unmap the pages read so far; they stay in the page cache, and a later read maps them again.
    Without this, pages of a memory-mapped corpus count towards the process's resident memory."""
    if hasattr(mmap, "MADV_DONTNEED"):
        for mapped in maps:
            mapped.madvise(mmap.MADV_DONTNEED)
