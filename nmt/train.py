"""`python -m nmt.train`: train a model from the Hydra config and write checkpoints to the run dir.

python -m nmt.train data=multi30k model=bench train.max_epochs=10 hydra.run.dir=runs/ende
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import signal
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from nmt import checkpoint
from nmt.cache import prepare
from nmt.config import Config, ModelConfig, register_configs
from nmt.errors import NmtError, exit_on_user_error
from nmt.model import Seq2Seq
from nmt.tokenization import bpe_progress
from nmt.trainer import Progress, Trainer

log = logging.getLogger(__name__)


def _format(record: dict[str, Any]) -> str:
    return " | ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items()
    )


def summary_writer_class() -> type:
    """TensorBoard's SummaryWriter; asked for before any work, so a missing extra fails at once."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NmtError(
            "train.tensorboard=true needs the tensorboard package: pip install nmt[tensorboard] "
            "(or pip install tensorboard), or leave train.tensorboard=false"
        ) from None
    return SummaryWriter


def tensorboard_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record -> TensorBoard tags: valid_* and best_score under valid/, the rest
    under train/; step is the x axis (TensorBoard records wall time itself), epoch and minutes are left out."""
    scalars = {}
    for key, value in record.items():
        if key in ("step", "epoch", "minutes") or not isinstance(value, int | float):
            continue
        if key.startswith("valid_"):
            scalars["valid/" + key.removeprefix("valid_")] = float(value)
        elif key == "best_score":
            scalars["valid/best_score"] = float(value)
        else:
            scalars["train/" + key] = float(value)
    return scalars


def training_summary(
    records: list[dict[str, Any]], progress: Progress, minutes: float, model: Seq2Seq, out_dir: Path
) -> dict[str, Any]:
    """What a user wants after training: the best checkpoint, its validation scores, the cost."""
    validations = [r for r in records if "valid_loss" in r]
    best = next((r for r in validations if r["best_score"] == progress.best_score), {})
    speeds = [r["tgt_tokens_per_s"] for r in records if "tgt_tokens_per_s" in r]
    return {
        "best_checkpoint": str(out_dir / "checkpoints" / "best.pt"),
        "best_step": best.get("step"),
        "best_validation": {k: v for k, v in best.items() if k.startswith("valid_")},
        "steps": progress.step,
        "epoch": progress.epoch,
        "minutes": minutes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tgt_tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "nonfinite_skipped": progress.nonfinite_total,
    }


def resume_path(setting: str, out_dir: Path) -> Path | None:
    if setting == "none":
        return None
    if setting == "auto":
        last = out_dir / "checkpoints" / "last.pt"
        return last if last.exists() else None
    return Path(setting)


def start_distributed(cfg: Config) -> Config:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPU); one device per rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return cfg
    cuda = cfg.train.device.startswith("cuda")
    dist.init_process_group(backend="nccl" if cuda else "gloo")
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


def run(cfg: Config, out_dir: Path) -> float:
    """Train with `cfg`, writing `checkpoints/{best,last}.pt` and `metrics.jsonl` under out_dir;
    continue the run there if `train.resume=auto` finds one.

    Returns the best validation score (BLEU, or minus the loss), so Hydra sweeps can use it.
    """
    cfg = start_distributed(cfg)
    lead = not dist.is_initialized() or dist.get_rank() == 0
    writer_class = summary_writer_class() if cfg.train.tensorboard and lead else None
    bars = cfg.train.progress and lead  # tqdm bars also hide themselves when stderr is not a terminal
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    resume = resume_path(cfg.train.resume, out_dir)
    state = checkpoint.load(resume) if resume else None
    if state:
        checkpoint.check_resumable(state, resume, cfg)
    if state and ModelConfig(**state["model_config"]) != cfg.model:
        raise NmtError(
            f"{resume}: trained with model config {state['model_config']}; resume with the same model "
            "settings, or start afresh with train.resume=none or another hydra.run.dir"
        )
    with bpe_progress(bars and sys.stderr.isatty()):
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
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"

    records: list[dict[str, Any]] = []
    writer = writer_class(log_dir=str(out_dir / "tensorboard")) if writer_class else None

    def log_record(record: dict[str, Any]) -> None:
        records.append(record)
        if lead:
            log.info(_format(record))
            with metrics_path.open("a") as file:
                file.write(json.dumps(record) + "\n")
        if writer:
            for tag, value in tensorboard_scalars(record).items():
                writer.add_scalar(tag, value, global_step=record["step"])
            writer.flush()

    def save(name: str, state: dict[str, Any]) -> None:
        if not lead:
            return
        folder = out_dir / "checkpoints"
        checkpoint.save(folder / name, state)
        if name == "last.pt" and cfg.train.keep_last:
            checkpoint.save(folder / f"step-{state['step']}.pt", state)
            kept = sorted(folder.glob("step-*.pt"), key=lambda path: int(path.stem.removeprefix("step-")))
            for old in kept[: -cfg.train.keep_last]:
                old.unlink()

    bar = tqdm(desc="training", unit="step", dynamic_ncols=True, disable=None if bars else True)

    def track(iterable: Iterable[Any], description: str, total: int) -> Iterable[Any]:
        return tqdm(
            iterable, desc=description, total=total, unit="batch", leave=False, dynamic_ncols=True,
            disable=None if bars else True,
        )  # fmt: skip

    def on_update(progress: Progress, nll: float, tokens: int) -> None:
        bar.set_postfix(epoch=progress.epoch, loss=f"{nll / max(tokens, 1):.3f}", refresh=False)
        bar.update()

    trainer = Trainer(model, data, cfg, log_record, save, on_update, track)
    if state:
        trainer.load_state_dict(state)
        log.info("resumed from %s at step %d (epoch %d)", resume, trainer.progress.step, trainer.progress.epoch)
    with stop_on_signals(trainer), bar, writer or contextlib.nullcontext():
        progress = trainer.fit()
    log.info(
        "%s: %d steps, epoch %d, %.1f minutes; best validation score %.2f; checkpoint %s",
        "stopped" if trainer.stop_requested else "done", progress.step, progress.epoch,
        trainer.elapsed_minutes(), progress.best_score, out_dir / "checkpoints" / "best.pt",
    )  # fmt: skip
    if lead:
        summary = training_summary(records, progress, trainer.elapsed_minutes(), model, out_dir)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if dist.is_initialized():
        dist.destroy_process_group()
    return progress.best_score


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(dict_cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    return exit_on_user_error(lambda: run(OmegaConf.to_object(dict_cfg), out_dir))


if __name__ == "__main__":
    main()
