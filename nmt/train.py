"""`python -m nmt.train`: train a model from the Hydra config and write checkpoints to the run dir.

python -m nmt.train data=multi30k model=bench train.max_epochs=10 hydra.run.dir=runs/ende
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nmt import checkpoint
from nmt.config import Config, register_configs
from nmt.data import prepare
from nmt.errors import exit_on_user_error
from nmt.model import Seq2Seq
from nmt.trainer import Trainer

log = logging.getLogger(__name__)


def _format(record: dict[str, Any]) -> str:
    return " | ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items()
    )


def run(cfg: Config, out_dir: Path) -> float:
    """Train with `cfg`, writing `checkpoints/{best,last}.pt` and `metrics.jsonl` under out_dir.

    Returns the best validation score (BLEU, or minus the loss), so Hydra sweeps can use it.
    """
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = prepare(cfg.data)
    report = data.train_report
    log.info(
        "training pairs: %d kept; dropped %d with an empty side, %d over %d subwords, %d over length ratio %g",
        report.kept,
        report.empty,
        report.too_long,
        cfg.data.max_length,
        report.bad_ratio,
        cfg.data.max_length_ratio,
    )
    model = Seq2Seq(cfg.model, data.src_pipeline.vocab_size, data.tgt_pipeline.vocab_size)
    log.info(
        "vocabulary: %d source, %d target; parameters: %d; validation pairs: %d",
        data.src_pipeline.vocab_size,
        data.tgt_pipeline.vocab_size,
        sum(p.numel() for p in model.parameters()),
        len(data.val),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"

    def log_record(record: dict[str, Any]) -> None:
        log.info(_format(record))
        with metrics_path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def save(name: str, state: dict[str, Any]) -> None:
        checkpoint.save(out_dir / "checkpoints" / name, state)

    result = Trainer(model, data, cfg, log_record, save).fit()
    log.info(
        "done: %d steps, %d epochs, %.1f minutes; best validation score %.2f; checkpoint %s",
        result.steps,
        result.epochs,
        result.minutes,
        result.best_score,
        out_dir / "checkpoints" / "best.pt",
    )
    return result.best_score


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(dict_cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    return exit_on_user_error(lambda: run(OmegaConf.to_object(dict_cfg), out_dir))


if __name__ == "__main__":
    main()
