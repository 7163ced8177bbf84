"""`python -m nmt.train`: train a model from the Hydra config and write checkpoints to the run dir.

python -m nmt.train data=multi30k model=bench train=bench train.max_epochs=10 hydra.run.dir=runs/ende
python -m nmt.train data=files data.dir=new_domain train=bench \\
    train.init_from=runs/ende/checkpoints/best.pt hydra.run.dir=runs/ft
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import random
import signal
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from nmt import checkpoint, finetune
from nmt.cache import prepare
from nmt.config import Config, ModelConfig, register_configs
from nmt.data import PreparedData
from nmt.errors import NmtError, exit_on_user_error
from nmt.model import Seq2Seq
from nmt.run_folder import RunFolder
from nmt.tokenization import bpe_progress
from nmt.trainer import Trainer, limit_reached

log = logging.getLogger(__name__)


def resume_path(setting: str, out_dir: Path) -> Path | None:
    if setting == "none":
        return None
    if setting == "auto":
        last = out_dir / "checkpoints" / "last.pt"
        return last if last.exists() else None
    return Path(setting)


def start_distributed(cfg: Config) -> Config:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU), whose collectives wait up to
    train.dist_timeout_minutes; one device per rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return cfg
    cuda = cfg.train.device.startswith("cuda")
    timeout = datetime.timedelta(minutes=cfg.train.dist_timeout_minutes)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
    if not cuda:
        return cfg
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    torch.cuda.set_device(device)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))


@contextlib.contextmanager
def stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT or SIGTERM: finish the update, save last.pt, return. A second SIGINT stops at once."""

    def request_stop(signum: int, frame: object) -> None:
        log.warning("%s: saving checkpoints/last.pt and stopping (again to quit now)", signal.Signals(signum).name)
        trainer.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resumed_config(cfg: Config, state: dict[str, Any], path: Path, explicit: Collection[str]) -> Config:
    """The config a run continues with from its checkpoint `state`, or an error if that would not
    continue the same run. A run that started from a model takes what that fixed from its checkpoint."""
    if finetune.started_from(state):
        cfg = finetune.continued_config(cfg, state, path, explicit)
    checkpoint.check_resumable(state, path, cfg)
    if ModelConfig(**state["model_config"]) != cfg.model:
        raise NmtError(
            f"{path}: trained with model config {state['model_config']}; resume with the same model "
            "settings, or start afresh with train.resume=none or another hydra.run.dir"
        )
    return cfg


def setup(
    cfg: Config, run: RunFolder, resume: Path | None = None, explicit: Collection[str] = ()
) -> tuple[PreparedData, Seq2Seq, Trainer]:
    """Seeds and threads, the prepared corpus, the model and its trainer writing to `run`;
    continued from the checkpoint `resume` if given, else started from train.init_from if set.
    `explicit` holds the keys and groups set on the command line (`model.hidden_size`, `model`):
    a checkpoint the run starts from fixes the architecture and subwords, which they may only repeat."""
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    state, init = None, None
    if resume:
        state = checkpoint.load(resume)
        cfg = resumed_config(cfg, state, resume, explicit)
    elif cfg.train.init_from:
        init = Path(cfg.train.init_from)
        state = checkpoint.load(init)
        cfg = finetune.start_config(cfg, state, init, explicit)
    lead = not dist.is_initialized() or dist.get_rank() == 0
    with bpe_progress(run.bars and sys.stderr.isatty()):
        if dist.is_initialized() and not lead:
            dist.barrier()  # rank 0 prepares the corpus, or finds it in the cache; then the others open it
        data = prepare(cfg.data, checkpoint.pipelines(state) if state else None)
        if dist.is_initialized() and lead:
            dist.barrier()
    log.info(
        "data: %s %s in %.1f s (%d pairs)", "prepared" if data.built else "reused", data.cache, data.seconds, data.pairs
    )
    report = data.train_report
    log.info(
        "training pairs: %d kept; dropped %d with an empty side, %d over %d subwords, %d over length ratio %g",
        report.kept, report.empty, report.too_long, cfg.data.max_length, report.bad_ratio, cfg.data.max_length_ratio,
    )  # fmt: skip
    model = Seq2Seq(cfg.model, data.src_pipeline.vocab_size, data.tgt_pipeline.vocab_size)
    log.info(
        "vocabulary: %d source, %d target; parameters: %d; validation pairs: %d",
        data.src_pipeline.vocab_size, data.tgt_pipeline.vocab_size,
        sum(p.numel() for p in model.parameters()), len(data.val),
    )  # fmt: skip
    trainer = Trainer(model, data, cfg, run)
    if state and resume:
        trainer.load_state_dict(state)
        log.info("resumed from %s at step %d (epoch %d)", resume, trainer.progress.step, trainer.progress.epoch)
    elif state and init:
        trainer.start_from(state, init, keep_optimizer=not cfg.train.init_reset)
        log.info(
            "starting from %s (step %s): its weights, BPE models and vocabularies; %s", init, state.get("step"),
            "a new optimizer and schedule" if cfg.train.init_reset else "its optimizer and schedule",
        )  # fmt: skip
        src_unknown, tgt_unknown = finetune.unknown_pairs(data.train)
        log.info("training pairs with <unk>: %d in the source, %d in the target", src_unknown, tgt_unknown)
        if tgt_unknown > 0.01 * len(data.train):
            log.warning(
                "%.1f%% of the training targets hold subwords the checkpoint's vocabulary lacks, and the model "
                "learns to write <unk> for them; a model trained with a smaller data.bpe_vocab_size splits new "
                "words into pieces it knows", 100 * tgt_unknown / len(data.train),
            )  # fmt: skip
    return data, model, trainer


def run(cfg: Config, out_dir: Path, explicit: Collection[str] = ()) -> float:
    """Train with `cfg`, writing `checkpoints/{best,last}.pt` and `metrics.jsonl` under out_dir;
    continue the run there if `train.resume=auto` finds one, else start from train.init_from if set.
    `explicit`: the keys and groups set on the command line (see `setup`).

    Returns the best validation score (BLEU, or minus the loss), so Hydra sweeps can use it.
    """
    cfg = start_distributed(cfg)
    lead = not dist.is_initialized() or dist.get_rank() == 0
    resume = resume_path(cfg.train.resume, out_dir)
    with RunFolder(out_dir, cfg.train, lead) as folder:
        _, model, trainer = setup(cfg, folder, resume, explicit)
        progress = trainer.progress
        reached = limit_reached(trainer.cfg.train, progress, progress.minutes) if resume else ""
        if reached:  # nothing to train; its checkpoints, metrics and summary stay as they are
            log.warning(
                "%s: this run is finished (%s reached at step %d); nothing was trained or written. To train on, "
                "run again with a higher %s (it may change on resume); train.resume=none or another "
                "hydra.run.dir starts afresh", resume, reached, progress.step, reached.split("=")[0],
            )  # fmt: skip
        else:
            with stop_on_signals(trainer):
                trainer.fit()
            log.info(
                "%s: %d steps, epoch %d, %.1f minutes; best validation score %.2f; checkpoint %s",
                "stopped" if trainer.stop_requested else "done", progress.step, progress.epoch,
                trainer.elapsed_minutes(), progress.best_score, out_dir / "checkpoints" / "best.pt",
            )  # fmt: skip
            folder.summary(progress, trainer.elapsed_minutes(), model, trainer.init_from)
    if dist.is_initialized():
        dist.destroy_process_group()
    return progress.best_score


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(dict_cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)

    def train() -> float:
        named = any(override.startswith("hydra.run.dir=") for override in hydra_cfg.overrides.hydra)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not named:
            # the default folder holds each process's start time and id: every rank would get its own
            raise NmtError("under torchrun, name the run folder with hydra.run.dir=..., the same for every rank")
        overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
        return run(OmegaConf.to_object(dict_cfg), out_dir, {override.key_or_group for override in overrides})

    return exit_on_user_error(train)


if __name__ == "__main__":
    main()
