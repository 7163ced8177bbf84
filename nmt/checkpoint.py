"""One self-contained checkpoint file: weights, config, BPE models, training position.

It holds only tensors and plain Python data, so it loads with `torch.load(weights_only=True)`:
a checkpoint is data, never code. Writes go to a temporary file in the same folder, are
fsynced, then renamed over the target, so a crash mid-write leaves the old file intact.

A file read back is checked before anything is built from it (`check`): format, configs,
BPE models, vocabularies, and the weights' names and shapes against the network built on
the meta device, so a damaged or altered file fails with one line naming it and allocates nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import reprlib
import types
import typing
from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

import torch
from tokenizers import Tokenizer

from nmt.config import Config, DataConfig, ModelConfig, field_default
from nmt.errors import NmtError
from nmt.files import atomic_output
from nmt.model import Seq2Seq
from nmt.tokenization import TextPipeline
from nmt.vocab import SPECIAL_TOKENS, Vocabulary

log = logging.getLogger(__name__)

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
# Far beyond any network that fits in memory. The meta-device build allocates nothing, but it
# takes time per layer, and its shape arithmetic must stay within int64.
SIZE_LIMITS = {"embed_size": 2**24, "hidden_size": 2**24, "encoder_layers": 64, "decoder_layers": 64}
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "progress", "rng")  # what `Trainer.load_state_dict` reads
# Settings a resumed run may change and still be the same run: when to stop, what to report, how
# often to save, where it runs. Every other data or train setting shapes the updates (corpus,
# subwords, batches, optimizer, schedule, the validations that drive plateau and best.pt), so a
# change makes another run, or is silently ignored: the BPE models and the optimizer's learning
# rate come from the checkpoint.
MAY_CHANGE_ON_RESUME = frozenset(
    {
        "data.cache_dir",
        "data.num_proc",
        "train.max_epochs",
        "train.max_steps",
        "train.max_minutes",
        "train.patience",
        "train.max_nonfinite",
        "train.log_every",
        "train.progress",
        "train.tensorboard",
        "train.save_every",
        "train.keep_last",
        "decode.batch_tokens",
        "train.resume",
        "train.resume_changed",
        "train.threads",
        "train.device",
        "train.dist_timeout_minutes",
    }
)

# How a run started (train.init_from, its model; train.init_reset). A resume that leaves
# train.init_from unset continues whichever run it finds, the checkpoint that run started from being
# no longer needed; one that sets it must name that run's own start.
START_SETTINGS = frozenset({"train.init_from", "train.init_reset"})

T = TypeVar("T")


def save(path: Path, checkpoint: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, "wb", into_special_files=False) as file:
        torch.save(checkpoint, file)


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
    check(checkpoint, path)
    return checkpoint


def check(checkpoint: Any, path: Path) -> None:
    """Everything `pipelines` and `restore` rely on, checked on plain data and on the meta device."""
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise NmtError(f"{path}: not an nmt checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    version = checkpoint["format_version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise NmtError(
            f"{path}: checkpoint format {version} is newer than this nmt understands ({FORMAT_VERSION}); upgrade nmt"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise NmtError(
            f"{path}: checkpoint format {reprlib.repr(version)} is not one nmt writes "
            f"(an integer from 1 to {FORMAT_VERSION}); the file is damaged or altered"
        )
    if any(key not in checkpoint for key in REQUIRED_KEYS):
        raise NmtError(f"{path}: not an nmt checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    model_cfg = _config(ModelConfig, checkpoint["model_config"], "model_config", path)
    _config(DataConfig, checkpoint["data_config"], "data_config", path)
    for key in ("src_bpe", "tgt_bpe"):
        _check_bpe(checkpoint[key], key, path)
    src_size, tgt_size = (len(_vocabulary(checkpoint[key], key, path)) for key in ("src_vocab", "tgt_vocab"))
    _check_weights(checkpoint["model"], model_cfg, src_size, tgt_size, path)


def pipelines(checkpoint: dict[str, Any]) -> tuple[TextPipeline, TextPipeline]:
    """The source and target text pipelines (Moses, BPE, vocabulary) a checked checkpoint carries."""
    data_cfg = DataConfig(**checkpoint["data_config"])
    src = TextPipeline(
        data_cfg.src_lang, Tokenizer.from_str(checkpoint["src_bpe"]), Vocabulary(checkpoint["src_vocab"])
    )
    tgt = TextPipeline(
        data_cfg.tgt_lang, Tokenizer.from_str(checkpoint["tgt_bpe"]), Vocabulary(checkpoint["tgt_vocab"])
    )
    return src, tgt


def restore(
    checkpoint: dict[str, Any], path: Path, checked: bool = False
) -> tuple[Seq2Seq, TextPipeline, TextPipeline, ModelConfig]:
    """The model (in eval mode, on CPU) and text pipelines a checkpoint describes. The model's
    weights are the checkpoint's tensors, not copies. `checked`: it comes from `load`, which checked
    it; anything else (an average about to be written) is checked here."""
    if not checked:
        check(checkpoint, path)
    model_cfg = ModelConfig(**checkpoint["model_config"])
    src, tgt = pipelines(checkpoint)
    # built on the meta device and given the stored tensors: no initialization and no copy, which
    # took a third of loading a checkpoint
    with torch.device("meta"):
        model = Seq2Seq(model_cfg, src.vocab_size, tgt.vocab_size)
    model.load_state_dict(checkpoint["model"], assign=True)
    model.tie(model_cfg)  # assigning made a parameter of each name, tied or not
    return model.eval(), src, tgt, model_cfg


def changed_settings(state: dict[str, Any], cfg: Config) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (value in the checkpoint, value now) for each data, train or decode setting that
    differs (decode.* shapes validation, so best.pt and the schedule), except those in
    MAY_CHANGE_ON_RESUME, and START_SETTINGS when train.init_from is unset. A setting the checkpoint
    lacks (it is older) counts at its default; a checkpoint without a train or decode config (older)
    is compared on what it has."""
    changed = {}
    stored = {"data": state["data_config"], "train": state.get("train_config"), "decode": state.get("decode_config")}
    for group, current in (("data", cfg.data), ("train", cfg.train), ("decode", cfg.decode)):
        if not isinstance(stored[group], dict):
            continue
        for field in dataclasses.fields(current):
            key, now = f"{group}.{field.name}", getattr(current, field.name)
            before = stored[group].get(field.name, field_default(field))
            ignored = key in MAY_CHANGE_ON_RESUME or (key in START_SETTINGS and not cfg.train.init_from)
            if not ignored and before != now:
                changed[key] = (before, now)
    return changed


def check_resumable(state: dict[str, Any], path: Path, cfg: Config) -> None:
    """Refuse to continue a run from a checkpoint unless that continues the same run: it must hold
    the training state (best.pt and averages hold weights only), and its data and train settings
    must be today's (or train.resume_changed=true)."""
    missing = [key for key in TRAINING_STATE if key not in state]
    if missing:
        raise NmtError(
            f"{path}: holds weights only, without the training state a resume needs ({', '.join(missing)}); "
            f"resume from the last.pt of that run, or start a new run from these weights with train.init_from={path} "
            "(fine-tuning: a fresh optimizer and schedule) and train.resume=none or another hydra.run.dir"
        )
    changed = changed_settings(state, cfg)
    if "train.optimizer" in changed:
        before, now = changed["train.optimizer"]
        raise NmtError(
            f"{path}: this run's {before} state cannot continue as train.optimizer={now}, even with "
            f"train.resume_changed=true; resume with train.optimizer={before}, or start afresh with "
            "train.resume=none or another hydra.run.dir (train.init_from=PATH keeps the weights)"
        )
    listing = "; ".join(f"{key} {reprlib.repr(old)} -> {reprlib.repr(new)}" for key, (old, new) in changed.items())
    if changed and not cfg.train.resume_changed:
        raise NmtError(
            f"{path}: this run was trained with other settings ({listing}); resume with the same values, "
            "set train.resume_changed=true to continue it anyway, or start afresh with train.resume=none "
            "or another hydra.run.dir"
        )
    if changed:
        log.warning(
            "continuing %s with changed settings (train.resume_changed=true): %s; the BPE models and the "
            "optimizer's learning rate still come from the checkpoint",
            path, listing,
        )  # fmt: skip


def _fits(value: Any, kind: Any) -> bool:
    """Whether a value read from a checkpoint has a config field's type (a float field takes an int)."""
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    if kind in (int, str, bool):
        return isinstance(value, kind)
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) in (types.UnionType, typing.Union):  # float | None
        return any(_fits(value, member) for member in typing.get_args(kind))
    if typing.get_origin(kind) is dict:
        key_kind, value_kind = typing.get_args(kind)
        return isinstance(value, dict) and all(_fits(k, key_kind) and _fits(v, value_kind) for k, v in value.items())
    raise TypeError(f"checkpoint.py cannot check config fields of type {kind}; teach _fits")


def _config(cls: type[T], values: Any, key: str, path: Path) -> T:
    """A config dataclass from a checkpoint's dict: known keys, right types, possible values.
    Keys the dict lacks take their defaults (a checkpoint older than the field)."""
    if not isinstance(values, dict):
        raise NmtError(f"{path}: {key} is a {type(values).__name__}, not a dict of settings")
    kinds = typing.get_type_hints(cls)
    for name, value in values.items():
        if name not in kinds:
            raise NmtError(f"{path}: {key} has an unknown setting {reprlib.repr(name)}; the file is damaged or altered")
        if not _fits(value, kinds[name]):
            kind = getattr(kinds[name], "__name__", kinds[name])
            raise NmtError(f"{path}: {key}.{name} is {reprlib.repr(value)}, not of type {kind}")
    try:
        return cls(**values)
    except NmtError as error:
        raise NmtError(f"{path}: {key} holds an impossible value ({error})") from None


def _check_bpe(text: Any, key: str, path: Path) -> None:
    if not isinstance(text, str):
        raise NmtError(f"{path}: {key} is a {type(text).__name__}, not a BPE model's JSON text")
    try:
        Tokenizer.from_str(text)
    except Exception as error:  # tokenizers raises a bare Exception
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise NmtError(f"{path}: {key} is not a BPE model tokenizers can read ({reason})") from None


def _vocabulary(pieces: Any, key: str, path: Path) -> Vocabulary:
    if not isinstance(pieces, list) or not all(isinstance(piece, str) for piece in pieces):
        raise NmtError(f"{path}: {key} is not a list of strings")
    if tuple(pieces[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise NmtError(f"{path}: {key} does not start with the special pieces {', '.join(SPECIAL_TOKENS)}")
    duplicates = [piece for piece, count in Counter(pieces).items() if count > 1]
    if duplicates:
        raise NmtError(f"{path}: {key} holds {reprlib.repr(duplicates[0])} more than once")
    return Vocabulary(pieces)


def _check_weights(weights: Any, model_cfg: ModelConfig, src_size: int, tgt_size: int, path: Path) -> None:
    """The stored tensors against the network the configs and vocabularies describe, built on the meta device."""
    for name, limit in SIZE_LIMITS.items():
        if getattr(model_cfg, name) > limit:
            raise NmtError(f"{path}: model_config.{name} is {getattr(model_cfg, name)}, over {limit}; altered?")
    if not isinstance(weights, dict):
        raise NmtError(f"{path}: model is a {type(weights).__name__}, not a dict of weights")
    with torch.device("meta"):
        expected = Seq2Seq(model_cfg, src_size, tgt_size).state_dict()
    problem = _mismatch(weights, expected)
    if problem:
        raise NmtError(f"{path}: weights do not match the model and vocabularies it describes: {problem}")


def _mismatch(weights: dict[Any, Any], expected: dict[str, torch.Tensor]) -> str:
    if missing := sorted(expected.keys() - weights.keys()):
        return f"{len(missing)} missing, such as {missing[0]}"
    if unexpected := sorted(map(str, weights.keys() - expected.keys())):
        return f"{len(unexpected)} unexpected, such as {reprlib.repr(unexpected[0])}"
    for name, tensor in expected.items():
        stored = weights[name]
        if not isinstance(stored, torch.Tensor) or not stored.is_floating_point():
            return f"{name} is not a floating-point tensor"
        if stored.shape != tensor.shape:
            return f"{name} has shape {tuple(stored.shape)}, they need {tuple(tensor.shape)}"
    return ""
