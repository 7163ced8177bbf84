"""A training run's folder and what the user sees of the run while it trains.

    <run>/metrics.jsonl          one JSON object per log interval and per validation
    <run>/tensorboard/           the same scalars as TensorBoard events (train.tensorboard=true)
    <run>/checkpoints/last.pt    with training state; best.pt; step-N.pt for the last train.keep_last saves
    <run>/summary.json           the best checkpoint, its validation scores, steps, minutes, speed

Under torch.distributed only rank 0 writes (`lead`).
Progress bars go to stderr when it is a terminal and train.progress is on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn
from tqdm import tqdm

from nmt import checkpoint
from nmt.config import TrainConfig
from nmt.errors import NmtError
from nmt.files import atomic_output

if TYPE_CHECKING:
    from nmt.trainer import Progress

log = logging.getLogger(__name__)


def summary_writer_class() -> type:
    """TensorBoard's SummaryWriter; asked for before any work, so a missing extra fails at once."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NmtError(
            "train.tensorboard=true needs the tensorboard package: pip install tensorboard "
            '(in a checkout: pip install -e ".[tensorboard]"), or leave train.tensorboard=false'
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


def _format(record: dict[str, Any]) -> str:
    return " | ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items()
    )


class RunFolder:
    def __init__(self, path: Path, cfg: TrainConfig, lead: bool = True) -> None:
        self.path, self.cfg, self.lead = path, cfg, lead
        writer_class = summary_writer_class() if cfg.tensorboard and lead else None
        self.bars = cfg.progress and lead  # tqdm bars also hide themselves when stderr is not a terminal
        self.writer = writer_class(log_dir=str(path / "tensorboard")) if writer_class else None
        self.bar = tqdm(desc="training", unit="step", dynamic_ncols=True, disable=None if self.bars else True)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        if self.writer:
            self.writer.close()

    def log(self, record: dict[str, Any]) -> None:
        """A line of metrics.jsonl (and the log, and TensorBoard)."""
        if not self.lead:
            return
        log.info(_format(record))
        self.path.mkdir(parents=True, exist_ok=True)  # not before: a run refused at start-up leaves nothing
        with (self.path / "metrics.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")
        if self.writer:
            for tag, value in tensorboard_scalars(record).items():
                self.writer.add_scalar(tag, value, global_step=record["step"])
            self.writer.flush()

    def save(self, name: str, state: dict[str, Any]) -> None:
        """checkpoints/`name`; a last.pt is also kept as step-N.pt for the last train.keep_last saves."""
        if not self.lead:
            return
        folder = self.path / "checkpoints"
        checkpoint.save(folder / name, state)
        if name == "last.pt" and self.cfg.keep_last:
            checkpoint.save(folder / f"step-{state['step']}.pt", state)
            kept = sorted(folder.glob("step-*.pt"), key=lambda path: int(path.stem.removeprefix("step-")))
            for old in kept[: -self.cfg.keep_last]:
                old.unlink()

    def updated(self, epoch: int, loss: float) -> None:
        """One update done: the training bar moves."""
        self.bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", refresh=False)
        self.bar.update()

    def track(self, batches: list[Any], description: str) -> Iterable[Any]:
        """`batches` in a transient progress bar (validation)."""
        disable = None if self.bars else True
        return tqdm(batches, desc=description, unit="batch", leave=False, dynamic_ncols=True, disable=disable)

    def summary(
        self, progress: Progress, minutes: float, model: nn.Module, init_from: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What a user wants after training, written to summary.json: the best checkpoint, its
        validation scores, the cost, and the checkpoint the run started from (`init_from`: path, step).
        All from `progress`, which covers the whole run, resumes included."""
        summary = {
            "best_checkpoint": str(self.path / "checkpoints" / "best.pt"),
            "best_step": progress.best_step,
            "best_validation": progress.best_validation,
            "steps": progress.step,
            "epoch": progress.epoch,
            "minutes": minutes,
            "parameters": sum(p.numel() for p in model.parameters()),
            "tgt_tokens_per_s": progress.target_tokens / progress.update_seconds if progress.update_seconds else None,
            "nonfinite_skipped": progress.nonfinite_total,
            "init_from": init_from["path"] if init_from else None,
            "init_from_step": init_from["step"] if init_from else None,
        }
        if self.lead:
            self.path.mkdir(parents=True, exist_ok=True)
            with atomic_output(self.path / "summary.json") as file:
                file.write(json.dumps(summary, indent=2) + "\n")
        return summary
