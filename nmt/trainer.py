"""The training loop: Adam on label-smoothed cross-entropy, validation, best/last checkpoints.

The trainer reports through two callbacks given by the entry point, `log(record)` for
metrics and `save(name, checkpoint)` for checkpoints, so it never touches files itself.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nmt import checkpoint, metrics
from nmt.config import Config, DecodeConfig
from nmt.data import Batch, EncodedCorpus, PreparedData, epoch_batches, make_batch
from nmt.loss import sequence_loss
from nmt.model import Seq2Seq
from nmt.translator import length_batches, search


@dataclass
class TrainResult:
    best_score: float  # validation BLEU, or minus validation loss when BLEU is off
    steps: int
    epochs: int
    minutes: float


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def validation_loss(model: Seq2Seq, corpus: EncodedCorpus, batch_tokens: int, precision: str) -> float:
    """Per-token negative log-likelihood on a corpus."""
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    for indices in epoch_batches(corpus, batch_tokens, seed=0, epoch=0):
        batch = make_batch(corpus, indices).to(device)
        with autocast(precision, device):
            logits = model(batch.src, batch.src_len, batch.tgt_in)
        out = sequence_loss(logits, batch.tgt_out, label_smoothing=0.0)
        nll, tokens = nll + float(out.nll), tokens + out.tokens
    return nll / max(tokens, 1)


@torch.no_grad()
def greedy_translations(
    model: Seq2Seq, corpus: EncodedCorpus, decode: Callable[[list[int]], str], batch_tokens: int
) -> list[str]:
    lengths = np.array([len(ids) for ids in corpus.src_ids])
    out = [""] * len(corpus)
    greedy = DecodeConfig(beam_size=1, batch_tokens=batch_tokens)
    for indices in length_batches(lengths, batch_tokens):
        for index, hyps in zip(indices, search(model, [corpus.src_ids[i] for i in indices], greedy)):
            out[index] = decode(hyps[0].tokens)
    return out


class Trainer:
    def __init__(
        self,
        model: Seq2Seq,
        data: PreparedData,
        cfg: Config,
        log: Callable[[dict[str, Any]], None],
        save: Callable[[str, dict[str, Any]], None],
    ) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.log, self.save = log, save
        self.device = torch.device(cfg.train.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
        self.step = 0
        self.epoch = 0
        self.best_score = -math.inf
        self.validated_step = -1

    def validate(self) -> dict[str, float]:
        self.model.eval()
        train = self.cfg.train
        loss = validation_loss(self.model, self.data.val, train.batch_tokens, train.precision)
        record = {"valid_loss": loss, "valid_ppl": math.exp(min(loss, 100.0))}
        if train.valid_bleu:
            with autocast(train.precision, self.device):
                hypotheses = greedy_translations(
                    self.model, self.data.val, self.data.tgt_pipeline.decode, train.batch_tokens
                )
            record["valid_bleu"], _ = metrics.bleu(hypotheses, self.data.val.tgt_text)
        self.model.train()
        return record

    def _checkpoint(self, **extra: Any) -> dict[str, Any]:
        return checkpoint.make(
            self.model,
            self.cfg.model,
            self.cfg.data,
            self.data.src_pipeline,
            self.data.tgt_pipeline,
            step=self.step,
            epoch=self.epoch,
            best_score=self.best_score,
            **extra,
        )

    def _validate_and_save(self) -> None:
        record = self.validate()
        score = record.get("valid_bleu", -record["valid_loss"])
        if score > self.best_score:
            self.best_score = score
            self.save("best.pt", self._checkpoint(valid=record))
        self.save("last.pt", self._checkpoint(valid=record, optimizer=self.optimizer.state_dict()))
        self.validated_step = self.step
        self.log({"step": self.step, "epoch": self.epoch, **record, "best_score": self.best_score})

    def train_step(self, batch: Batch) -> tuple[float, float, int]:
        """One update on a batch -> (summed NLL, gradient norm before clipping, target tokens)."""
        train = self.cfg.train
        batch = batch.to(self.device)
        with autocast(train.precision, self.device):
            logits = self.model(batch.src, batch.src_len, batch.tgt_in)
        out = sequence_loss(logits, batch.tgt_out, train.label_smoothing)
        (out.loss / out.tokens).backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.clip_norm or math.inf))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(out.nll.detach()), grad_norm, out.tokens

    def fit(self) -> TrainResult:
        """Train until max_epochs, max_steps or max_minutes; validate each epoch or every valid_every steps."""
        train = self.cfg.train
        torch.manual_seed(train.seed)
        self.model.to(self.device).train()
        start = time.monotonic()
        interval_start, interval_nll, interval_tokens = start, 0.0, 0

        def out_of_budget() -> bool:
            return bool(train.max_steps and self.step >= train.max_steps) or bool(
                train.max_minutes and time.monotonic() - start >= 60 * train.max_minutes
            )

        while not (train.max_epochs and self.epoch >= train.max_epochs) and not out_of_budget():
            self.epoch += 1
            for indices in epoch_batches(self.data.train, train.batch_tokens, train.seed, self.epoch):
                nll, grad_norm, tokens = self.train_step(make_batch(self.data.train, indices))
                self.step += 1
                interval_nll, interval_tokens = interval_nll + nll, interval_tokens + tokens
                if self.step % train.log_every == 0:
                    now = time.monotonic()
                    loss = interval_nll / interval_tokens
                    self.log(
                        {
                            "step": self.step,
                            "epoch": self.epoch,
                            "loss": loss,
                            "ppl": math.exp(min(loss, 100.0)),
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "grad_norm": grad_norm,
                            "tgt_tokens_per_s": interval_tokens / (now - interval_start),
                        }
                    )
                    interval_start, interval_nll, interval_tokens = now, 0.0, 0
                if train.valid_every and self.step % train.valid_every == 0:
                    self._validate_and_save()
                if out_of_budget():
                    break
            if not train.valid_every:
                self._validate_and_save()
        if self.validated_step != self.step:
            self._validate_and_save()
        return TrainResult(self.best_score, self.step, self.epoch, (time.monotonic() - start) / 60)
