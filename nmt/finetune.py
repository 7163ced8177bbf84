"""Starting a run from a trained model (fine-tuning, domain adaptation): `train.init_from=PATH`.

The new run takes the checkpoint's weights and encodes its own corpus with the checkpoint's
text pipelines (Moses for its languages, its BPE models and vocabularies, never learned again),
so a word the first corpus never had becomes BPE pieces, or UNK, exactly as in translation.
The checkpoint therefore fixes the settings those depend on: the network's shape, the subword
settings and, with train.init_reset=false (which keeps its optimizer and schedule state), the
optimizer and schedule settings. The run takes them from the checkpoint; a key set on the
command line may repeat them, and one that contradicts them fails before any work.
The step counters, the position in the data, the best score and patience always start afresh.

A run started so is resumed like any other (its own last.pt wins over train.init_from), and its
checkpoints fix the same settings, so the same command line resumes it.
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from nmt.config import Config, DataConfig, ModelConfig, TrainConfig, field_default
from nmt.data import EncodedCorpus
from nmt.errors import NmtError
from nmt.vocab import UNK

# taken from the checkpoint unless set on the command line, where it may differ: a dropout shapes no weight
ADJUSTABLE = tuple(f"model.{item.name}" for item in dataclasses.fields(ModelConfig) if item.name.endswith("dropout"))
# the network's shape, which the weights have: every model key but the dropouts
ARCHITECTURE = tuple(
    f"model.{item.name}" for item in dataclasses.fields(ModelConfig) if f"model.{item.name}" not in ADJUSTABLE
)
# how the BPE models were learned: the run uses the checkpoint's models, so it records their settings
SUBWORDS = tuple(
    f"data.{name}"
    for name in (
        "bpe_vocab_size",
        "bpe_min_frequency",
        "joint_bpe",
        "joint_vocab",
        "bpe_sample_size",
        "bpe_sample_seed",
    )
)
# what the optimizer and schedule state stand for (fixed only with train.init_reset=false, which keeps it)
OPTIMIZER = tuple(
    f"train.{name}"
    for name in (
        "lr", "optimizer", "weight_decay", "momentum",
        "schedule", "warmup_steps", "decay_rate", "decay_every", "plateau_factor", "plateau_patience",
    )
)  # fmt: skip
KEPT_STATE = ("optimizer", "scheduler")  # what train.init_reset=false takes from the checkpoint
SCHEMAS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def fixed_keys(init_reset: bool) -> tuple[str, ...]:
    """The settings a checkpoint fixes for a run started from it."""
    return ARCHITECTURE + SUBWORDS + (() if init_reset else OPTIMIZER)


def start_config(cfg: Config, state: dict[str, Any], path: Path, explicit: Collection[str]) -> Config:
    """The config of a run starting from the checkpoint `state` (read from `path`): its languages
    must be the run's, and the settings it fixes replace the run's unless `explicit` (the keys and
    groups set on the command line) names them with other values, which is an error."""
    langs = (_stored(state, "data.src_lang"), _stored(state, "data.tgt_lang"))
    ours = (cfg.data.src_lang, cfg.data.tgt_lang)
    if ours == langs[::-1]:
        raise NmtError(
            f"{path}: translates {langs[0]}->{langs[1]}, the other direction of this run's data "
            f"({ours[0]}->{ours[1]}); start from a {ours[0]}->{ours[1]} checkpoint"
        )
    if ours != langs:
        raise NmtError(
            f"{path}: translates {langs[0]}->{langs[1]}, but this run's data is {ours[0]}->{ours[1]}; "
            f"start from a {ours[0]}->{ours[1]} checkpoint, or set data.src_lang and data.tgt_lang"
        )
    missing = [key for key in KEPT_STATE if key not in state]
    if not cfg.train.init_reset and missing:
        raise NmtError(
            f"{path}: holds weights only, without the optimizer and schedule train.init_reset=false keeps "
            f"({', '.join(missing)}); start from a last.pt, or leave train.init_reset=true"
        )
    return inherit(cfg, state, path, explicit, fixed_keys(cfg.train.init_reset), ADJUSTABLE)


def continued_config(cfg: Config, state: dict[str, Any], path: Path, explicit: Collection[str]) -> Config:
    """The config of a run resumed from `state`, a checkpoint of a run that started from a model:
    what its start fixed (dropout included) comes from it again."""
    init_reset = _stored(state, "train.init_reset")
    return inherit(cfg, state, path, explicit, fixed_keys(init_reset) + ADJUSTABLE, ())


def started_from(state: dict[str, Any]) -> str:
    """The checkpoint the run that wrote `state` started from ("" for a run trained from scratch)."""
    return _stored(state, "train.init_from")


def inherit(
    cfg: Config,
    state: dict[str, Any],
    path: Path,
    explicit: Collection[str],
    fixed: Collection[str],
    adjustable: Collection[str],
) -> Config:
    """`cfg` with the checkpoint's values of the `fixed` and `adjustable` keys, except adjustable
    keys set on the command line. A fixed key set there (`model.hidden_size`, or any model key
    when the model group is chosen: `model=bench`) with another value is an error naming each."""
    changes: dict[str, dict[str, Any]] = {}
    conflicts = []
    for key in (*fixed, *adjustable):
        group, name = key.split(".")
        stored, now = _stored(state, key), getattr(getattr(cfg, group), name)
        chosen = key in explicit or (group == "model" and "model" in explicit)
        if chosen and key in adjustable:
            continue
        if chosen and stored != now:
            conflicts.append(f"{key} is {reprlib.repr(stored)} there, {reprlib.repr(now)} here")
        changes.setdefault(group, {})[name] = stored
    if conflicts:
        raise NmtError(
            f"{path}: the command line contradicts settings this checkpoint fixes ({'; '.join(conflicts)}); "
            "drop those overrides: the run takes them from the checkpoint"
        )
    replaced = {group: dataclasses.replace(getattr(cfg, group), **values) for group, values in changes.items()}
    return dataclasses.replace(cfg, **replaced)


def unknown_pairs(corpus: EncodedCorpus) -> tuple[int, int]:
    """How many pairs hold a source, and a target, subword the vocabularies lack (UNK): a word with
    a letter the BPE model never saw, or a piece that never stood alone in the first corpus."""
    src, tgt = (int(np.count_nonzero(column.occurrences(UNK)[corpus.rows])) for column in (corpus.src, corpus.tgt))
    corpus.release()  # reading every id mapped the pages of the whole split
    return src, tgt


def _stored(state: dict[str, Any], key: str) -> Any:
    """A setting as the checkpoint holds it; one it lacks (it is older) at its default."""
    group, name = key.split(".")
    values = state.get(f"{group}_config")
    default = field_default(next(item for item in dataclasses.fields(SCHEMAS[group]) if item.name == name))
    return values.get(name, default) if isinstance(values, dict) else default
