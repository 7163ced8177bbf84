"""Typed configuration: one dataclass per config group, registered in Hydra's ConfigStore.

The dataclasses are the schema: Hydra rejects unknown keys and wrong types when it merges
the YAML files of `conf/` into them, and `__post_init__` rejects impossible values when an
entry point turns the merged config into objects with `OmegaConf.to_object`.
Library code receives these dataclasses and never imports Hydra.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from nmt.errors import NmtError

T = TypeVar("T")

ATTENTION_TYPES = ("dot", "general", "additive")
CORPUS_KINDS = ("synthetic", "files", "hub")
PRECISIONS = ("fp32", "bf16", "fp16")
QUANTIZATIONS = ("none", "int8")
SCHEDULES = ("constant", "plateau", "inverse_sqrt", "exponential")
OPTIMIZERS = ("adam", "adamw", "sgd")
VALID_METRICS = ("bleu", "loss")
SHORTLIST_WIDTH = 100  # target pieces stored per source piece in a lexical shortlist (nmt/shortlist.py)


def field_default(item: dataclasses.Field) -> Any:
    """A config field's default value (a fresh one for fields with a default factory)."""
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


def _require(condition: bool, key: str, allowed: str) -> None:
    if not condition:
        raise NmtError(f"config: {key} must be {allowed}")


@dataclass
class DataConfig:
    """Where the parallel corpus comes from and how its text becomes subword ids."""

    corpus: str = "synthetic"  # synthetic (built in) | files ({dir}/{split}.{lang}[.gz]) | hub (datasets)
    dir: str = ""  # folder of the `files` corpus
    src_lang: str = "en"
    tgt_lang: str = "de"
    # split alias -> file prefix (files) or split name (hub); `train`, `val`, `test` are used by training
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    hub_name: str = ""  # e.g. "bentrevett/multi30k" or "wmt14"
    hub_config: str = ""  # e.g. "de-en"; empty for none
    synthetic_train_pairs: int = 12000
    synthetic_seed: int = 1234
    max_length: int = 100  # training pairs longer than this many subwords on either side are dropped
    max_length_ratio: float = 3.0  # ... and pairs whose subword length ratio exceeds this
    bpe_vocab_size: int = 8000
    bpe_min_frequency: int = 2
    bpe_dropout: float = 0.0  # training batches: a subword splits into the two pieces BPE merged with this probability
    joint_bpe: bool = True  # one BPE model for both languages (each side keeps its own vocabulary ...)
    joint_vocab: bool = False  # ... unless this: one vocabulary of both sides' pieces (model.share_embeddings)
    on_bad_line: str = "error"  # a line that is not UTF-8: error | skip (its pair is dropped as empty)
    bpe_sample_size: int = 1_000_000  # BPE is learned on at most this many training pairs (a seeded sample); 0 = all
    bpe_sample_seed: int = 1
    streaming: bool = False  # hub: read over the network while encoding; only training ids are stored (huge corpora)
    cache_dir: str = ""  # prepared corpora (Arrow files) live here; "" = $NMT_CACHE, else ~/.cache/nmt
    num_proc: int = 0  # processes preparing a corpus; 0 = one per usable CPU (fewer for small corpora)

    def __post_init__(self) -> None:
        _require(self.corpus in CORPUS_KINDS, "data.corpus", f"one of {CORPUS_KINDS}")
        _require(self.corpus != "files" or bool(self.dir), "data.dir", "set for data.corpus=files (data.dir=FOLDER)")
        _require(
            self.corpus != "hub" or bool(self.hub_name),
            "data.hub_name",
            "set for data.corpus=hub (the dataset's name on the hub: data.hub_name=wmt14)",
        )
        _require(self.src_lang != self.tgt_lang, "data.tgt_lang", "different from data.src_lang")
        _require(self.max_length >= 1, "data.max_length", ">= 1")
        _require(self.max_length_ratio >= 1.0, "data.max_length_ratio", ">= 1.0")
        _require(self.bpe_vocab_size >= 8, "data.bpe_vocab_size", ">= 8")
        _require(0.0 <= self.bpe_dropout < 1.0, "data.bpe_dropout", "in [0, 1)")
        _require(self.synthetic_train_pairs >= 1, "data.synthetic_train_pairs", ">= 1")
        _require(self.on_bad_line in ("error", "skip"), "data.on_bad_line", "error or skip")
        _require(not self.joint_vocab or self.joint_bpe, "data.joint_vocab", "false unless data.joint_bpe=true")
        _require(self.bpe_sample_size >= 0, "data.bpe_sample_size", ">= 0")
        _require(not self.streaming or self.corpus == "hub", "data.streaming", "false unless data.corpus=hub")
        _require(self.num_proc >= 0, "data.num_proc", ">= 0")
        for alias in ("train", "val"):
            _require(alias in self.splits, f"data.splits.{alias}", "set")


class Dropouts(NamedTuple):
    embed: float  # on embeddings
    hidden: float  # on the encoder's states and between stacked LSTM layers
    attentional: float  # on the decoder's attentional state h~


@dataclass
class ModelConfig:
    """The network: embeddings, a bidirectional LSTM encoder, an attentional LSTM decoder."""

    embed_size: int = 256  # source and target embeddings
    hidden_size: int = 512  # decoder units; the encoder has hidden_size / 2 per direction
    encoder_layers: int = 1
    decoder_layers: int = 1
    attention: str = "general"  # dot | general (Luong) | additive (Bahdanau)
    dropout: float = 0.3  # each of the three below that is not set on its own
    embed_dropout: float | None = None  # on the source and target embeddings; null = dropout
    hidden_dropout: float | None = None  # on the encoder's states and between stacked LSTM layers; null = dropout
    attentional_dropout: float | None = None  # on the decoder's attentional state h~; null = dropout
    word_dropout: float = 0.0  # training: each source and target input subword becomes <unk> with this probability
    tie_embeddings: bool = False  # decoder output layer shares the target embedding matrix
    share_embeddings: bool = False  # source and target embeddings are one matrix (needs data.joint_vocab=true)

    def dropouts(self) -> Dropouts:
        """The three dropout rates, each its own or `dropout`."""
        rates = (self.embed_dropout, self.hidden_dropout, self.attentional_dropout)
        return Dropouts(*(self.dropout if rate is None else rate for rate in rates))

    def __post_init__(self) -> None:
        _require(self.embed_size >= 1, "model.embed_size", ">= 1")
        _require(
            self.hidden_size >= 2 and self.hidden_size % 2 == 0,
            "model.hidden_size",
            "an even number >= 2 (the bidirectional encoder has hidden_size / 2 per direction)",
        )
        _require(self.encoder_layers >= 1, "model.encoder_layers", ">= 1")
        _require(self.decoder_layers >= 1, "model.decoder_layers", ">= 1")
        _require(self.attention in ATTENTION_TYPES, "model.attention", f"one of {ATTENTION_TYPES}")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", "in [0, 1)")
        for name in ("embed_dropout", "hidden_dropout", "attentional_dropout"):
            rate = getattr(self, name)
            _require(rate is None or 0.0 <= rate < 1.0, f"model.{name}", "in [0, 1), or null for model.dropout")
        _require(0.0 <= self.word_dropout < 1.0, "model.word_dropout", "in [0, 1)")


@dataclass
class TrainConfig:
    """Optimization, validation and stopping."""

    seed: int = 1  # initial weights, batch order, and each batch's dropout masks (with the step, see trainer.py)
    batch_tokens: int = 4000  # padded tokens (longer side, with BOS/EOS) per batch
    accumulate: int = 1  # batches per update (gradient accumulation)
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw (weight decay decoupled from the gradient) | sgd (with momentum)
    weight_decay: float = 0.0  # adam, sgd: an L2 term added to the gradient; adamw: decay of the weights per step
    momentum: float = 0.0  # sgd: heavy-ball momentum (0 = plain SGD)
    schedule: str = "constant"  # constant | plateau | inverse_sqrt | exponential
    warmup_steps: int = 0  # linear warm-up (inverse_sqrt, exponential)
    decay_rate: float = 0.5  # exponential: lr *= decay_rate every decay_every steps after warm-up
    decay_every: int = 10000
    plateau_factor: float = 0.5  # plateau: lr *= factor after plateau_patience validations without improvement
    plateau_patience: int = 2  # plateau: validations in a row without a better valid_metric, counted as patience
    clip_norm: float = 1.0  # 0 disables gradient-norm clipping
    label_smoothing: float = 0.1
    max_epochs: int = 10  # 0 = no limit
    max_steps: int = 0  # updates; 0 = no limit
    max_minutes: float = 0.0  # wall-clock budget for the training loop, summed over resumes; 0 = no limit
    log_every: int = 100  # steps
    progress: bool = True  # progress bars on stderr for BPE, training, validation (only when stderr is a terminal)
    tensorboard: bool = False  # also write metrics.jsonl's scalars as TensorBoard events to <run>/tensorboard/
    valid_every: int = 0  # steps; 0 = at the end of each epoch
    valid_metric: str = "bleu"  # bleu (of the decoded validation set) | loss: selects best.pt, drives patience
    valid_beam_size: int = 1  # beam of the validation BLEU search (1 = greedy); the rest of the search is decode.*
    patience: int = 0  # stop after this many validations in a row without a better valid_metric; 0 = off
    save_every: int = 0  # steps between last.pt writes (also at each validation and at the end); 0 = those only
    keep_last: int = 0  # also keep step-N.pt for the last N saves; 0 = only last.pt and best.pt
    resume: str = "auto"  # auto (continue the run in the output dir if any) | none | PATH of a last.pt
    resume_changed: bool = False  # continue a run even though its data or train settings changed
    init_from: str = ""  # PATH of a checkpoint whose weights, BPE models and vocabularies start a new run (fine-tuning)
    init_reset: bool = True  # with init_from: a fresh optimizer and schedule; false keeps the checkpoint's (a last.pt)
    max_nonfinite: int = 5  # abort after this many skipped updates in a row: non-finite loss or gradient (fp16: scaled)
    precision: str = "fp32"  # fp32 | bf16 (autocast, master weights stay fp32) | fp16 (CUDA, grad scaler)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = "cpu"
    # torchrun: how long a rank waits for the others (a barrier while rank 0 prepares the corpus, an all-reduce)
    # before the run fails; for gloo and NCCL alike (NCCL's own default would be 10 minutes)
    dist_timeout_minutes: float = 30.0

    def __post_init__(self) -> None:
        _require(0 <= self.seed < 2**32, "train.seed", "in [0, 2**32)")
        _require(self.batch_tokens >= 1, "train.batch_tokens", ">= 1")
        _require(self.accumulate >= 1, "train.accumulate", ">= 1")
        _require(self.optimizer in OPTIMIZERS, "train.optimizer", f"one of {OPTIMIZERS}")
        _require(self.weight_decay >= 0, "train.weight_decay", ">= 0")
        _require(0 <= self.momentum < 1, "train.momentum", "in [0, 1)")
        _require(self.optimizer == "sgd" or self.momentum == 0, "train.momentum", "0 unless train.optimizer=sgd")
        _require(self.schedule in SCHEDULES, "train.schedule", f"one of {SCHEDULES}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", ">= 0")
        _require(0 < self.decay_rate <= 1, "train.decay_rate", "in (0, 1]")
        _require(self.decay_every >= 1, "train.decay_every", ">= 1")
        _require(0 < self.plateau_factor < 1, "train.plateau_factor", "in (0, 1)")
        _require(self.plateau_patience >= 1, "train.plateau_patience", ">= 1")
        _require(self.valid_metric in VALID_METRICS, "train.valid_metric", f"one of {VALID_METRICS}")
        _require(self.patience >= 0, "train.patience", ">= 0")
        _require(self.save_every >= 0, "train.save_every", ">= 0")
        _require(self.keep_last >= 0, "train.keep_last", ">= 0")
        _require(self.max_nonfinite >= 1, "train.max_nonfinite", ">= 1")
        _require(self.lr > 0, "train.lr", "> 0")
        _require(self.clip_norm >= 0, "train.clip_norm", ">= 0")
        _require(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", "in [0, 1)")
        _require(self.max_epochs >= 0, "train.max_epochs", ">= 0")
        _require(self.max_steps >= 0, "train.max_steps", ">= 0")
        _require(self.max_minutes >= 0, "train.max_minutes", ">= 0")
        _require(
            self.max_epochs or self.max_steps or self.max_minutes,
            "train.max_epochs, train.max_steps or train.max_minutes",
            "set (> 0), or training never stops",
        )
        _require(self.log_every >= 1, "train.log_every", ">= 1")
        _require(self.valid_every >= 0, "train.valid_every", ">= 0")
        _require(self.valid_beam_size >= 1, "train.valid_beam_size", ">= 1")
        _require(self.precision in PRECISIONS, "train.precision", f"one of {PRECISIONS}")
        _require(self.threads >= 0, "train.threads", ">= 0")
        _require(self.dist_timeout_minutes > 0, "train.dist_timeout_minutes", "> 0")
        _require(
            not self.init_from or self.resume in ("auto", "none"),
            "train.resume",
            "auto or none with train.init_from (a run either continues a last.pt or starts from a model, not both)",
        )


def option(default: Any, help: str, at_load: bool = False) -> Any:
    """A config field with its help text, which `add_flags` (and the service) show to users;
    `at_load`: a DecodeConfig field that shapes the models as they are loaded (LOAD_KEYS)."""
    return field(default=default, metadata={"help": help, "at_load": at_load})


@dataclass
class DecodeConfig:
    """Search and inference: one schema for `nmt-translate` (as --flags), `nmt.evaluate` and
    training (as decode.* keys) and the service. An option added here appears in all of them."""

    beam_size: int = option(5, "hypotheses kept per sentence; 1 = greedy search")
    nbest: int = option(1, "translations returned per sentence, best first (at most beam_size)")
    batch_tokens: int = option(
        6000, "a batch's sentences x beam_size (1 when sampling) x its longest source in subwords, at most"
    )
    max_length_ratio: float = option(2.0, "a translation ends at ratio x source subwords + max_length_offset")
    max_length_offset: int = option(10, "subwords added to max_length_ratio x source subwords")
    min_length: int = option(0, "target subwords before the end of sentence may be chosen")
    max_source_length: int = option(
        1024, "a sentence of more source subwords is refused (search time grows with its square length)"
    )
    truncate_source: bool = option(False, "cut sentences over max_source_length subwords instead of refusing them")
    length_penalty: float = option(1.0, "GNMT alpha: score = log-prob / ((5 + length) / 6) ** alpha; 0 = raw log-prob")
    coverage_penalty: float = option(0.0, "GNMT beta: adds beta x sum of log(min(attention received, 1)); 0 = off")
    no_repeat_ngram: int = option(0, "N > 0: no N-gram of subwords occurs twice in a translation")
    replace_unk: bool = option(False, "an unknown word in a translation becomes the source word it attends to most")
    sampling: bool = option(
        False, "draw each token from the model's distribution instead of searching (back-translation); nbest 1"
    )
    sampling_topk: int = option(0, "with sampling: draw among the K most likely tokens; 0 = all")
    sampling_topp: float = option(1.0, "with sampling: draw among the fewest tokens reaching probability P; 1 = all")
    sampling_epsilon: float = option(
        0.0, "with sampling: draw among the tokens of probability >= E (the most likely always stays); 0 = all"
    )
    temperature: float = option(1.0, "with sampling: divides the log-probabilities; > 1 flattens, < 1 sharpens")
    seed: int = option(0, "with sampling: seed of the random generator")
    mbr_utility: str = option(
        "none",
        "chrf or bleu: minimum Bayes risk, the candidate of highest mean sentence-level score (sacrebleu) "
        "against the other candidates; nbest lists distinct ones by that mean, their score; none = off",
    )
    mbr_candidates: int = option(
        16, "with mbr_utility: N candidates per sentence: the best N - mbr_samples of a beam search that wide, ..."
    )
    mbr_samples: int = option(0, "with mbr_utility: ... and mbr_samples draws, shaped by sampling_* and temperature")
    shortlist: bool = option(
        False,
        "cut the output layer to each batch's lexical shortlist (stored in the checkpoint; python -m nmt.shortlist "
        "adds one): faster, and the softmax is over the shortlist",
        at_load=True,
    )
    shortlist_per_source: int = option(
        5, f"with shortlist: target pieces per source piece of the batch (at most {SHORTLIST_WIDTH})", at_load=True
    )
    shortlist_frequent: int = option(
        1000, "with shortlist: the N target pieces most frequent in training, always in", at_load=True
    )
    precision: str = option("fp32", "fp32, bf16 (autocast) or fp16 (autocast, CUDA only)", at_load=True)
    quantize: str = option(
        "none", "none or int8 (dynamic quantization of linear and LSTM weights, CPU only)", at_load=True
    )
    device: str = option("cpu", "cpu, cuda, cuda:1, ...", at_load=True)
    threads: int = option(
        0, "torch intra-op threads of the whole process, shared by the streams; 0 = torch's default", at_load=True
    )
    streams: int = option(
        1, "batches searched side by side, each in a thread with threads / streams intra-op threads (CPU)", at_load=True
    )

    def __post_init__(self) -> None:
        _require(self.beam_size >= 1, "decode.beam_size", ">= 1")
        if self.mbr_utility == "none":
            _require(1 <= self.nbest <= self.beam_size, "decode.nbest", "in [1, decode.beam_size]")
        else:  # nbest lists candidates
            _require(1 <= self.nbest <= self.mbr_candidates, "decode.nbest", "in [1, decode.mbr_candidates] with MBR")
        _require(self.batch_tokens >= 1, "decode.batch_tokens", ">= 1")
        _require(self.max_length_ratio > 0, "decode.max_length_ratio", "> 0")
        _require(self.max_length_offset >= 0, "decode.max_length_offset", ">= 0")
        _require(self.min_length >= 0, "decode.min_length", ">= 0")
        _require(self.max_source_length >= 1, "decode.max_source_length", ">= 1")
        _require(self.length_penalty >= 0, "decode.length_penalty", ">= 0")
        _require(self.coverage_penalty >= 0, "decode.coverage_penalty", ">= 0")
        _require(self.no_repeat_ngram >= 0, "decode.no_repeat_ngram", ">= 0")
        _require(not self.sampling or self.nbest == 1, "decode.nbest", "1 with decode.sampling (one draw a sentence)")
        _require(self.sampling_topk >= 0, "decode.sampling_topk", ">= 0")
        _require(0 < self.sampling_topp <= 1, "decode.sampling_topp", "in (0, 1]")
        _require(self.temperature > 0, "decode.temperature", "> 0")
        _require(0 <= self.sampling_epsilon < 1, "decode.sampling_epsilon", "in [0, 1)")
        for key in SAMPLING_KEYS:
            _require(
                self.sampling or self.mbr_samples > 0 or getattr(self, key) == DECODE_DEFAULTS[key],
                f"decode.{key}",
                "left at its default without decode.sampling or decode.mbr_samples (it only shapes sampling)",
            )
        self._check_mbr()
        _require(
            1 <= self.shortlist_per_source <= SHORTLIST_WIDTH,
            "decode.shortlist_per_source",
            f"in [1, {SHORTLIST_WIDTH}]",
        )
        _require(self.shortlist_frequent >= 0, "decode.shortlist_frequent", ">= 0")
        for key in SHORTLIST_KEYS:
            _require(
                self.shortlist or getattr(self, key) == DECODE_DEFAULTS[key],
                f"decode.{key}",
                "left at its default without decode.shortlist (it only shapes the shortlist)",
            )
        _require(self.precision in PRECISIONS, "decode.precision", f"one of {PRECISIONS}")
        _require(
            self.precision != "fp16" or self.device.startswith("cuda"), "decode.precision", "fp32 or bf16 on the CPU"
        )
        _require(self.quantize in QUANTIZATIONS, "decode.quantize", f"one of {QUANTIZATIONS}")
        _require(self.quantize == "none" or self.device == "cpu", "decode.quantize", "none unless decode.device=cpu")
        _require(self.threads >= 0, "decode.threads", ">= 0")
        _require(self.streams >= 1, "decode.streams", ">= 1")
        _require(self.streams == 1 or self.device == "cpu", "decode.streams", "1 unless decode.device=cpu")
        _require(
            self.streams == 1 or not (self.sampling or self.mbr_samples),
            "decode.streams",
            "1 when drawing samples (one seeded stream of draws, taken in batch order)",
        )

    def search_rows(self) -> int:
        """The search rows a sentence holds at once: its beam, one draw, or with MBR the wider of the
        candidates' beam and their draws (they are searched one after the other)."""
        if self.mbr_utility != "none":
            return max(self.mbr_candidates - self.mbr_samples, self.mbr_samples)
        return 1 if self.sampling else self.beam_size

    def _check_mbr(self) -> None:
        _require(self.mbr_utility in MBR_UTILITIES, "decode.mbr_utility", f"one of {MBR_UTILITIES}")
        if self.mbr_utility == "none":
            for key in MBR_KEYS:
                _require(
                    getattr(self, key) == DECODE_DEFAULTS[key],
                    f"decode.{key}",
                    "left at its default without decode.mbr_utility (it only shapes MBR's candidates)",
                )
            return
        _require(self.mbr_candidates >= 2, "decode.mbr_candidates", ">= 2 (MBR compares candidates)")
        _require(0 <= self.mbr_samples <= self.mbr_candidates, "decode.mbr_samples", "in [0, decode.mbr_candidates]")
        _require(
            not self.sampling,
            "decode.sampling",
            "false with decode.mbr_utility (MBR draws its candidates with decode.mbr_samples)",
        )
        _require(
            self.beam_size == DECODE_DEFAULTS["beam_size"],
            "decode.beam_size",
            "left at its default with decode.mbr_utility (the candidates' beam is mbr_candidates - mbr_samples wide)",
        )


MBR_UTILITIES = ("none", "chrf", "bleu")
SAMPLING_KEYS = ("sampling_topk", "sampling_topp", "sampling_epsilon", "temperature", "seed")
MBR_KEYS = ("mbr_candidates", "mbr_samples")  # they need decode.mbr_utility
SHORTLIST_KEYS = ("shortlist_per_source", "shortlist_frequent")
# some of a request's DecodeConfig fields as sorted (name, value) pairs: the service's requests
# with equal ones share a search
DecodeOptions = tuple[tuple[str, Any], ...]
LOAD_KEYS = tuple(item.name for item in dataclasses.fields(DecodeConfig) if item.metadata["at_load"])
DECODE_DEFAULTS = {item.name: item.default for item in dataclasses.fields(DecodeConfig)}


def add_flags(parser: argparse.ArgumentParser, schema: type, title: str) -> None:
    """A group `title` of --flags, one per field of the dataclass `schema`: the field's name with
    dashes, its type, default and help text; a bool field gets --flag and --no-flag."""
    group, types, defaults = parser.add_argument_group(title), typing.get_type_hints(schema), schema()
    for item in dataclasses.fields(schema):
        flag, default = "--" + item.name.replace("_", "-"), getattr(defaults, item.name)
        if types[item.name] is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=item.metadata["help"])
        else:
            group.add_argument(flag, type=types[item.name], default=default, help=item.metadata["help"])


def from_flags(args: argparse.Namespace, schema: type[T]) -> T:
    """The dataclass `schema` from the flags `add_flags` made; its __post_init__ checks the values."""
    return schema(**{item.name: getattr(args, item.name) for item in dataclasses.fields(schema)})


# decode.* keys that training does not take from the decode group (the rest all shape validation's search)
VALIDATION_OVERRIDES = {
    "beam_size": "train.valid_beam_size",
    "sampling": "search (a sampled validation BLEU would pick best.pt by chance)",
    "nbest": "the best translation",
    "precision": "train.precision",
    "device": "train.device",
    "quantize": "the training weights (no quantization)",
    "threads": "train.threads",
    "streams": "one stream (validation searches between training steps)",
    "mbr_utility": "search (MBR would search and compare mbr_candidates translations a sentence)",
}


@dataclass
class Config:
    """`python -m nmt.train`."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        _require(
            not self.model.share_embeddings or self.data.joint_vocab,
            "model.share_embeddings",
            "false unless data.joint_vocab=true (one vocabulary for both sides)",
        )
        _require(
            self.train.batch_tokens > self.data.max_length,
            "train.batch_tokens",
            f"> data.max_length ({self.data.max_length}), so the longest training sentence fits a batch",
        )
        for key, instead in VALIDATION_OVERRIDES.items():
            _require(
                getattr(self.decode, key) == getattr(DecodeConfig(), key),
                f"decode.{key}",
                f"left at its default in training, where validation uses {instead}",
            )
        self.validation_decode()  # what validation will search with must be possible (fp16 needs CUDA, ...)

    def validation_decode(self) -> DecodeConfig:
        """The search of validation BLEU: decode.* but for what training itself decides."""
        train = self.train
        return dataclasses.replace(
            self.decode, beam_size=train.valid_beam_size, precision=train.precision, device=train.device
        )


@dataclass
class EvaluateConfig:
    """`python -m nmt.evaluate`: translate a split (or a source file) and score it."""

    checkpoint: str = ""  # the model to score ...
    checkpoints: list[str] = field(default_factory=list)  # ... or several, as an ensemble: checkpoints=[a.pt,b.pt]
    data: DataConfig = field(default_factory=DataConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    split: str = "test"  # alias from data.splits, or a file prefix in data.dir
    source: str = ""  # with `reference`: score these files instead of a split
    reference: str = ""
    tokenized_lc: bool = False  # also BLEU on Moses-tokenized lowercased text (Multi30k literature)

    def __post_init__(self) -> None:
        _require(
            bool(self.checkpoint) != bool(self.checkpoints),
            "checkpoint or checkpoints",
            "given, one of them (checkpoint=PATH, or checkpoints=[A.pt,B.pt] for an ensemble)",
        )
        _require(bool(self.source) == bool(self.reference), "source and reference", "given together")

    @property
    def models(self) -> list[str]:
        return self.checkpoints or [self.checkpoint]


# Each inference process holds its own copy of the model and torch's runtime (~370 MB of RSS for
# the benchmark model on 2026-12-03, most of it torch's libraries): the automatic count stops here.
MAX_AUTO_PROCESSES = 8


def usable_cpus() -> int:
    """The CPUs this process may run on: a container's share, not the host's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class ServeConfig:
    """`nmt-serve`: where it listens, and the limits that keep one client from harming the others."""

    host: str = option("127.0.0.1", "address to listen on; 0.0.0.0 exposes the service to the network")
    port: int = option(8000, "TCP port")
    max_wait_ms: float = option(0.0, "an idle model waits this long for more requests before its first search step")
    processes: int = option(
        0,
        "inference processes per model, each translating its own batches with its own copy of the model; 0 = on "
        f"a CPU one per usable core, divided among the models (at most {MAX_AUTO_PROCESSES}), on a GPU 1. With "
        "decode.threads 0 the cores are divided among all processes",
    )
    model_niceness: int = option(
        5,
        "niceness of the inference processes (0-19): when CPU is short, the HTTP side (/healthz, refusals) runs first",
    )
    max_sentences: int = option(64, "texts in one request")
    max_chars: int = option(2000, "characters in one text")
    max_body_bytes: int = option(1_000_000, "bytes in one request body")
    max_beam_size: int = option(10, "the largest beam_size a request may ask for")
    max_nbest: int = option(5, "the largest nbest a request may ask for")
    max_queue: int = option(1024, "sentences waiting per model; more are refused with 429")
    timeout_s: float = option(
        30.0, "a request not answered by then gets 504; its sentences leave the queue, or the beam search that has them"
    )
    api_key: str = option("", "if set (or $NMT_API_KEY), every endpoint but /healthz needs 'Authorization: Bearer KEY'")

    def __post_init__(self) -> None:
        _require(0 < self.port < 65536, "serve.port", "in [1, 65535]")
        _require(self.max_wait_ms >= 0, "serve.max_wait_ms", ">= 0")
        _require(self.processes >= 0, "serve.processes", ">= 0")
        for key in (
            "max_sentences",
            "max_chars",
            "max_body_bytes",
            "max_beam_size",
            "max_nbest",
            "max_queue",
        ):
            _require(getattr(self, key) >= 1, f"serve.{key}", ">= 1")
        _require(self.timeout_s > 0, "serve.timeout_s", "> 0")
        _require(0 <= self.model_niceness <= 19, "serve.model_niceness", "in [0, 19]")


@dataclass
class ServedModel:
    """One model of `nmt-serve --config models.yaml`: its checkpoints (several: an ensemble) and decode settings."""

    checkpoints: list[str] = field(default_factory=list)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def __post_init__(self) -> None:
        _require(bool(self.checkpoints), "checkpoints", "a list of one or more checkpoint files")


@dataclass
class ServedModels:
    """`nmt-serve --config models.yaml`: `models: {id: {checkpoints: [...], decode: {...}}}`."""

    models: dict[str, ServedModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(bool(self.models), "models", "at least one model id with its checkpoints")


def register_configs() -> None:
    """Make the schemas known to Hydra; `conf/*.yaml` name them in their defaults lists. `${nmt.pid:}`
    in a default run folder is the process id, so runs started in the same microsecond get their own."""
    from hydra.core.config_store import ConfigStore  # only the Hydra entry points need it
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("nmt.pid", os.getpid, use_cache=True, replace=True)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=Config)
    store.store(name="evaluate_schema", node=EvaluateConfig)
