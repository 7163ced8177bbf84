"""Shared fixtures: a session cache of prepared corpora, the Multi30k folder (tests skip without it),
and one small trained model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from nmt.batching import Batch
from nmt.config import Config, DataConfig, DecodeConfig, ModelConfig, TrainConfig, register_configs
from nmt.corpus import iter_lines
from nmt.train import run
from nmt.vocab import BOS, EOS, pad

REPO = Path(__file__).resolve().parents[1]
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Prepared corpora go to one fresh folder per session (training subprocesses inherit it), never ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("corpus_cache")
        patch.setenv("NMT_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def multi30k_dir() -> Path:
    if not (MULTI30K / "train.en.gz").exists():
        pytest.skip(f"Multi30k not found at {MULTI30K} (it lives in ../shared/data/multi30k beside the repo)")
    return MULTI30K


def tiny_config(**train_overrides: object) -> Config:
    """The default synthetic task at a reduced budget: fewer pairs, a smaller model, a step cap."""
    train = {
        "batch_tokens": 1500,
        "lr": 0.003,
        "max_epochs": 0,
        "max_steps": 40,
        "log_every": 20,
        "seed": 1,
        **train_overrides,
    }
    return Config(
        data=DataConfig(
            corpus="synthetic",
            src_lang="src",
            tgt_lang="tgt",
            synthetic_train_pairs=3000,
            bpe_vocab_size=600,
            max_length=80,
        ),
        model=ModelConfig(embed_size=64, hidden_size=128, dropout=0.1),
        train=TrainConfig(**train),
        decode=DecodeConfig(),
    )


def compose_train(overrides: list[str]) -> Config:
    """`python -m nmt.train` with these overrides, as a Config."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="train", overrides=overrides))


@pytest.fixture(scope="session")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default recipe (built-in corpus, small model) with a step cap instead of its 4-minute
    budget: a model good enough that a broken search, precision or ensemble shows in its BLEU.
    Its last two validations' checkpoints are kept (step-N.pt), for ensembles."""
    out_dir = tmp_path_factory.mktemp("good_run")
    steps = ["train.max_steps=600", "train.max_epochs=0", "train.max_minutes=0", "train.keep_last=2"]
    run(compose_train(steps), out_dir)
    return out_dir


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained for a few dozen steps: not good, but a real model to decode with."""
    out_dir = tmp_path_factory.mktemp("tiny_run")
    run(tiny_config(), out_dir)
    return out_dir / "checkpoints" / "best.pt"


def read_lines(path: Path) -> list[str]:
    return list(iter_lines(path))


def collate(src_ids: list[np.ndarray], tgt_ids: list[np.ndarray]) -> Batch:
    """A batch made from id lists by padding, independently of `make_batch`'s Arrow gathering."""
    bos, eos = np.array([BOS]), np.array([EOS])
    return Batch(
        src=pad(src_ids),
        src_len=torch.tensor([len(ids) for ids in src_ids]),
        tgt_in=pad([np.concatenate([bos, ids]) for ids in tgt_ids]),
        tgt_out=pad([np.concatenate([ids, eos]) for ids in tgt_ids]),
    )
