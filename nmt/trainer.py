"""The training loop: train.optimizer (Adam, AdamW or SGD) on label-smoothed cross-entropy, validation,
checkpoints, resume.

Everything a resumed run needs to continue as if never stopped is in `Trainer.state_dict()`:
weights, optimizer, schedule, grad scaler, RNG states and `Progress` (step, epoch, position in
the epoch's batch plan, best score, patience). The batch plan of an epoch is a pure function of
(seed, epoch), so the position is just a count of batches done.
A run can also start from another run's model (`start_from`, train.init_from): its weights, and
with train.init_reset=false its optimizer and schedule; it validates once before the first update
(step 0), and its checkpoints name the model it started from.
Under torch.distributed each rank trains on its own share of every update's batches; the loss
is normalized by the target tokens of the whole update, and each batch's dropout masks are drawn
from a seed of its own (`dropout_seed`), so N ranks equal one process with N-fold accumulation.
The trainer writes only through its `RunFolder` (metrics, checkpoints, progress bars) and
validates with `nmt.validation`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nmt import checkpoint, shortlist
from nmt.batching import Batch, epoch_batches, make_batch
from nmt.bpe_dropout import BpeDropout
from nmt.config import Config, TrainConfig
from nmt.data import PreparedData
from nmt.errors import NmtError
from nmt.loss import sequence_loss
from nmt.model import Seq2Seq
from nmt.precision import autocast, grad_scaler
from nmt.run_folder import RunFolder
from nmt.schedule import make_optimizer, make_scheduler
from nmt.validation import validate
from nmt.vocab import PAD


@dataclass
class Progress:
    step: int = 0  # updates done
    epoch: int = 1  # the epoch in progress
    batches_done: int = 0  # batches of this epoch's plan already trained on, by all ranks
    minutes: float = 0.0  # training time so far, over all resumes
    best_score: float = -math.inf  # validation BLEU, or minus the loss
    best_step: int | None = None  # the step of best.pt, and its validation scores (valid_loss, ...)
    best_validation: dict[str, float] = field(default_factory=dict)
    validations_without_improvement: int = 0
    validated_step: int = -1
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    target_tokens: int = 0  # trained on, by all ranks; over update_seconds, the run's mean speed
    update_seconds: float = 0.0  # time in updates: validation and checkpoint writes left out


def limit_reached(train: TrainConfig, progress: Progress, minutes: float) -> str:
    """The stopping setting a run at `progress` after `minutes` of training has reached, as
    `key=value` ("" if none): a run stops there, and one resumed there has nothing left to do."""
    limits = {
        "max_epochs": progress.epoch > train.max_epochs,
        "max_steps": progress.step >= train.max_steps,
        "max_minutes": minutes >= train.max_minutes,
        "patience": progress.validations_without_improvement >= train.patience,
    }
    reached = (name for name, hit in limits.items() if getattr(train, name) and hit)
    return next((f"train.{name}={getattr(train, name)}" for name in reached), "")


def dropout_seed(seed: int, step: int, position: int) -> int:
    """The seed of the dropout masks of batch `position` of update `step`, counted over all ranks
    (rank r holds positions r, r + world, ...): ranks draw different masks, one process accumulating
    N batches draws what N ranks draw, and a resumed run draws what it would have drawn."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(
        self,
        model: Seq2Seq,
        data: PreparedData,
        cfg: Config,
        run: RunFolder,
    ) -> None:
        self.module, self.data, self.cfg, self.run = model, data, cfg, run
        self.device = torch.device(cfg.train.device)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        model.to(self.device)
        self.model = torch.nn.parallel.DistributedDataParallel(model) if self.world > 1 else model
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = make_optimizer(model.parameters(), cfg.train, fused)
        self.scheduler = make_scheduler(self.optimizer, cfg.train)
        self.scaler = grad_scaler(cfg.train.precision, self.device)
        p = cfg.data.bpe_dropout
        self.bpe_dropout = BpeDropout(data.src_pipeline, data.tgt_pipeline, p) if p else None
        self.progress = Progress()
        # built from the training pairs once, stored in every checkpoint (for decode.shortlist)
        self.shortlist = shortlist.build(data.train, data.src_pipeline.vocab_size, data.tgt_pipeline.vocab_size)
        self.init_from: dict[str, Any] | None = None  # {"path", "step"} of the checkpoint this run started from
        self.stop_requested = False  # set from a signal handler: save and return after this update
        self._started, self._minutes_before = time.monotonic(), 0.0

    def elapsed_minutes(self) -> float:
        return self._minutes_before + (time.monotonic() - self._started) / 60

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": dataclasses.asdict(dataclasses.replace(self.progress, minutes=self.elapsed_minutes())),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
        self.init_from = state.get("init_from")

    def start_from(self, state: dict[str, Any], path: Path, keep_optimizer: bool) -> None:
        """Begin this run at a checkpoint's weights and, with `keep_optimizer`, its optimizer and
        schedule state; the step, the data position, the best score and patience start afresh."""
        self.module.load_state_dict(state["model"])
        if keep_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.init_from = {"path": str(path), "step": state.get("step")}

    def _checkpoint(self, **extra: Any) -> dict[str, Any]:
        data = self.data
        return checkpoint.make(
            self.module, self.cfg.model, self.cfg.data, data.src_pipeline, data.tgt_pipeline,
            step=self.progress.step, train_config=dataclasses.asdict(self.cfg.train),
            decode_config=dataclasses.asdict(self.cfg.decode), shortlist=self.shortlist,
            **({"init_from": self.init_from} if self.init_from else {}), **extra,
        )  # fmt: skip

    def validate(self) -> dict[str, float]:
        record = validate(self.module, self.data, self.cfg, self.run.track, self.shortlist)
        self.model.train()
        return record

    def _validate_and_save(self) -> None:
        """Every rank validates (same weights, same result), so all agree on patience and LR."""
        progress = self.progress
        record = self.validate()
        score = record["valid_bleu"] if self.cfg.train.valid_metric == "bleu" else -record["valid_loss"]
        if score > progress.best_score:
            progress.best_score, progress.validations_without_improvement = score, 0
            progress.best_step, progress.best_validation = progress.step, record
            self.run.save("best.pt", self._checkpoint(valid=record))
        else:
            progress.validations_without_improvement += 1
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(score)
        progress.validated_step = progress.step
        self.run.save("last.pt", self._checkpoint(valid=record, **self.state_dict()))
        self.run.log({
            "step": progress.step, "epoch": progress.epoch, "minutes": self.elapsed_minutes(),
            **record, "best_score": progress.best_score,
        })  # fmt: skip

    def update(self, batches: list[Batch]) -> tuple[float, float, int]:
        """One optimizer update over this rank's batches -> (summed NLL, gradient norm, target tokens)."""
        train = self.cfg.train
        tokens = torch.tensor(float(sum(batch.target_tokens for batch in batches)), device=self.device)
        if self.world > 1:
            dist.all_reduce(tokens)
        nll = torch.zeros((), device=self.device)
        for index, batch in enumerate(batches):
            torch.manual_seed(dropout_seed(train.seed, self.progress.step, self.rank + index * self.world))
            batch = batch.to(self.device)
            last = index == len(batches) - 1
            # DDP averages gradients over ranks; scaling by world / tokens makes that a sum over the update
            sync = contextlib.nullcontext() if last or self.world == 1 else self.model.no_sync()
            with sync:
                real = batch.tgt_out != PAD
                with autocast(train.precision, self.device):
                    features = self.model(batch.src, batch.src_len, batch.tgt_in, real)
                out = sequence_loss(features, self.module.output, batch.tgt_out[real], train.label_smoothing)
                self.scaler.scale(out.loss * (self.world / tokens)).backward()
            nll += out.nll.detach()
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), train.clip_norm or math.inf))
        if self.scaler.is_enabled():  # fp16: the scaler skips a step whose scaled gradients overflowed ...
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= scale  # ... and then halves its scale
        else:
            applied = math.isfinite(grad_norm) and bool(torch.isfinite(nll))
            if applied:
                self.optimizer.step()
        if applied:
            self.progress.nonfinite_in_a_row = 0
        else:
            self._skip_nonfinite_update()
        self.optimizer.zero_grad(set_to_none=True)
        if not isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step()
        return float(nll), grad_norm, int(sum(batch.target_tokens for batch in batches))

    def _skip_nonfinite_update(self) -> None:
        progress = self.progress
        progress.nonfinite_in_a_row += 1
        progress.nonfinite_total += 1
        if progress.nonfinite_in_a_row >= self.cfg.train.max_nonfinite:
            raise NmtError(
                f"training diverged: {progress.nonfinite_in_a_row} updates in a row had a non-finite loss or "
                f"gradient (step {progress.step}); lower train.lr, use train.precision=fp32, or resume "
                "from checkpoints/last.pt with different settings"
            )

    def _finished(self) -> bool:
        return self.stop_requested or bool(limit_reached(self.cfg.train, self.progress, self.elapsed_minutes()))

    def fit(self) -> Progress:
        """Train until a limit, early stopping or a stop request; return the final progress."""
        train, progress = self.cfg.train, self.progress
        self.model.train()
        self._started, self._minutes_before = time.monotonic(), progress.minutes
        # the window sums update time only: validation and checkpoint writes do not dilute tokens/s
        window_seconds, window_nll, window_tokens = 0.0, 0.0, 0
        per_update = train.accumulate * self.world
        if self.init_from and progress.validated_step < 0:
            self._validate_and_save()  # step 0: where a run started from a model begins on its own data
        while not self._finished():
            plan = epoch_batches(self.data.train, train.batch_tokens, train.seed, progress.epoch)
            usable = len(plan) - len(plan) % per_update  # every rank makes the same number of updates
            while progress.batches_done < usable and not self._finished():
                update_start = time.monotonic()
                group = plan[progress.batches_done : progress.batches_done + per_update]
                mine = [
                    make_batch(self.data.train, indices, self.bpe_dropout) for indices in group[self.rank :: self.world]
                ]
                nll, grad_norm, tokens = self.update(mine)
                seconds = time.monotonic() - update_start
                window_seconds += seconds
                progress.update_seconds += seconds
                progress.target_tokens += tokens * self.world
                progress.batches_done += per_update
                progress.step += 1
                self.run.updated(progress.epoch, nll / max(tokens, 1))
                window_nll, window_tokens = window_nll + nll, window_tokens + tokens
                if progress.step % train.log_every == 0:
                    self.run.log({
                        "step": progress.step, "epoch": progress.epoch, "minutes": self.elapsed_minutes(),
                        "loss": window_nll / window_tokens, "ppl": math.exp(min(window_nll / window_tokens, 100.0)),
                        "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm,
                        "tgt_tokens_per_s": window_tokens * self.world / window_seconds,
                        "nonfinite_skipped": progress.nonfinite_total,
                    })  # fmt: skip
                    window_seconds, window_nll, window_tokens = 0.0, 0.0, 0
                if train.valid_every and progress.step % train.valid_every == 0:
                    self._validate_and_save()
                elif train.save_every and progress.step % train.save_every == 0:
                    self._save_last()
            if progress.batches_done >= usable:
                if not train.valid_every:
                    self._validate_and_save()
                progress.epoch += 1
                progress.batches_done = 0
        if not self.stop_requested and progress.validated_step != progress.step:
            self._validate_and_save()
        self._save_last()
        return progress

    def _save_last(self) -> None:
        self.run.save("last.pt", self._checkpoint(**self.state_dict()))
