"""One self-contained checkpoint file: weights, config, BPE models, training position.

It holds only tensors and plain Python data, so it loads with `torch.load(weights_only=True)`:
a checkpoint is data, never code. Writes go to a temporary file in the same folder, are
fsynced, then renamed over the target, so a crash mid-write leaves the old file intact.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from nmt.config import DataConfig, ModelConfig
from nmt.errors import NmtError
from nmt.model import Seq2Seq
from nmt.tokenization import TextPipeline
from nmt.vocab import Vocabulary

FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format_version",
    "model",
    "model_config",
    "data_config",
    "src_bpe",
    "tgt_bpe",
    "src_vocab",
    "tgt_vocab",
)


def save(path: Path, checkpoint: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def make(
    model: Seq2Seq, model_cfg: ModelConfig, data_cfg: DataConfig, src: TextPipeline, tgt: TextPipeline, **extra: Any
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(model_cfg),
        "data_config": dataclasses.asdict(data_cfg),
        "src_bpe": src.bpe.to_str(),
        "tgt_bpe": tgt.bpe.to_str(),
        "src_vocab": src.vocab.pieces,
        "tgt_vocab": tgt.vocab.pieces,
        **extra,
    }


def load(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint; every failure is an NmtError that names the file."""
    if not path.is_file():
        raise NmtError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise NmtError(f"{path}: refused, it holds code or objects, not checkpoint data ({error})") from None
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise NmtError(f"{path}: not a readable nmt checkpoint (truncated or another format: {error})") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise NmtError(f"{path}: not an nmt checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise NmtError(
            f"{path}: checkpoint format {checkpoint['format_version']} is newer than this nmt "
            f"understands ({FORMAT_VERSION}); upgrade nmt"
        )
    return checkpoint


def pipelines(checkpoint: dict[str, Any]) -> tuple[TextPipeline, TextPipeline]:
    """The source and target text pipelines (Moses, BPE, vocabulary) a checkpoint carries."""
    data_cfg = DataConfig(**checkpoint["data_config"])
    src = TextPipeline(
        data_cfg.src_lang, Tokenizer.from_str(checkpoint["src_bpe"]), Vocabulary(checkpoint["src_vocab"])
    )
    tgt = TextPipeline(
        data_cfg.tgt_lang, Tokenizer.from_str(checkpoint["tgt_bpe"]), Vocabulary(checkpoint["tgt_vocab"])
    )
    return src, tgt


def restore(checkpoint: dict[str, Any], path: Path) -> tuple[Seq2Seq, TextPipeline, TextPipeline, ModelConfig]:
    """The model (in eval mode, on CPU) and text pipelines a checkpoint describes."""
    model_cfg = ModelConfig(**checkpoint["model_config"])
    src, tgt = pipelines(checkpoint)
    model = Seq2Seq(model_cfg, src.vocab_size, tgt.vocab_size)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        first_line = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise NmtError(f"{path}: weights do not match the model and vocabulary it describes: {first_line}") from None
    return model.eval(), src, tgt, model_cfg
