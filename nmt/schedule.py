"""The optimizer, and learning-rate schedules: the factor each one applies to the base rate, as pure functions.

constant:      1
inverse_sqrt:  min(step / warmup, sqrt(warmup / step))         (warmup then 1/sqrt decay)
exponential:   min(step / warmup, 1) * rate ** (max(step - warmup, 0) / every)
plateau:       multiplied by `factor` each time `plateau_patience` validations in a row do not beat
               the best score (counted as early stopping's `patience` counts: N means after the Nth)
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from nmt.config import TrainConfig


def inverse_sqrt(step: int, warmup: int) -> float:
    step = max(step, 1)
    if warmup and step < warmup:
        return step / warmup
    return math.sqrt(max(warmup, 1) / step)


def exponential(step: int, warmup: int, rate: float, every: int) -> float:
    ramp = min(max(step, 1) / warmup, 1.0) if warmup else 1.0
    return ramp * rate ** (max(step - warmup, 0) / every)


def make_optimizer(parameters: Iterable[torch.nn.Parameter], cfg: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """train.optimizer at train.lr, with its weight decay (and momentum for SGD); `fused`: torch's
    single-kernel update (CPU and CUDA)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused)
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """Step-based schedules step after each update; `plateau` steps after each validation."""
    if cfg.schedule == "plateau":
        # PyTorch lowers the rate when more than `patience` validations did not improve, and counts an
        # improvement only above a relative threshold; the trainer's count is ">= N, any better score"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience - 1, threshold=0.0
        )
    factors = {
        "constant": lambda step: 1.0,
        "inverse_sqrt": lambda step: inverse_sqrt(step, cfg.warmup_steps),
        "exponential": lambda step: exponential(step, cfg.warmup_steps, cfg.decay_rate, cfg.decay_every),
    }
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors[cfg.schedule])
