"""Resuming continues the same run or refuses in one line: weights-only checkpoints, changed settings."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from nmt import checkpoint
from nmt.average import average_files
from nmt.errors import NmtError
from nmt.train import run


@pytest.fixture
def last(trained_checkpoint) -> Path:
    """last.pt of the run that made `trained_checkpoint` (best.pt), trained with `tiny_config()`."""
    return trained_checkpoint.parent / "last.pt"


def with_data(cfg, **changes):
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes))


def test_the_same_config_changes_nothing(last):
    assert checkpoint.changed_settings(checkpoint.load(last), tiny_config()) == {}


def test_stopping_reporting_saving_and_placement_may_change(last):
    cfg = tiny_config(
        max_epochs=3, max_steps=80, max_minutes=5.0, patience=4, max_nonfinite=9, log_every=7, progress=False,
        tensorboard=True, save_every=3, keep_last=2, resume="elsewhere/last.pt", threads=1, device="cuda",
        dist_timeout_minutes=60,
    )  # fmt: skip
    cfg = with_data(cfg, num_proc=2, cache_dir="/elsewhere")
    assert checkpoint.changed_settings(checkpoint.load(last), cfg) == {}


def test_changed_data_and_train_settings_are_named(last):
    cfg = with_data(tiny_config(lr=0.001, seed=2), bpe_vocab_size=300)
    assert checkpoint.changed_settings(checkpoint.load(last), cfg) == {
        "data.bpe_vocab_size": (600, 300),
        "train.lr": (0.003, 0.001),
        "train.seed": (1, 2),
    }


def test_older_checkpoint_compares_what_it_has(last):
    state = checkpoint.load(last)
    del state["train_config"], state["data_config"]["bpe_sample_seed"]
    assert checkpoint.changed_settings(state, tiny_config(lr=0.001)) == {}
    assert checkpoint.changed_settings(state, with_data(tiny_config(), bpe_sample_seed=2)) == {
        "data.bpe_sample_seed": (1, 2)
    }


@pytest.mark.parametrize("source", ["best.pt", "average"])
def test_resuming_from_weights_only_is_refused(trained_checkpoint, last, tmp_path, source):
    path = trained_checkpoint
    if source == "average":
        path = tmp_path / "average.pt"
        average_files([trained_checkpoint, last], path)
    with pytest.raises(NmtError) as error:
        run(tiny_config(resume=str(path)), tmp_path / "run")
    message = str(error.value)
    assert message.startswith(f"{path}: holds weights only") and "\n" not in message
    assert f"or start a new run from these weights with train.init_from={path} (fine-tuning" in message
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_left_as_it_is_and_says_how_to_train_on(trained_checkpoint, tmp_path, caplog):
    folder = tmp_path / "run"
    shutil.copytree(trained_checkpoint.parent.parent, folder)
    files = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    best = run(tiny_config(), folder)
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == files
    assert best == torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["progress"]["best_score"]
    message = f"{folder / 'checkpoints' / 'last.pt'}: this run is finished (train.max_steps=40 reached at step 40)"
    assert message in caplog.text and "run again with a higher train.max_steps" in caplog.text


@pytest.mark.parametrize(
    "cfg, named",
    [
        (with_data(tiny_config(), bpe_vocab_size=300), "data.bpe_vocab_size 600 -> 300"),
        (tiny_config(lr=0.001), "train.lr 0.003 -> 0.001"),
    ],
)
def test_resuming_with_changed_settings_is_refused(last, tmp_path, cfg, named):
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=str(last)))
    with pytest.raises(NmtError) as error:
        run(cfg, tmp_path)
    message = str(error.value)
    assert message.startswith(f"{last}: this run was trained with other settings") and "\n" not in message
    assert named in message and "train.resume_changed=true" in message
    assert list(tmp_path.iterdir()) == []


def test_resume_changed_continues_the_run(last, tmp_path, caplog):
    run(tiny_config(resume=str(last), resume_changed=True, lr=0.001, max_steps=42), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 42 and state["train_config"]["lr"] == 0.001
    assert "changed settings (train.resume_changed=true): train.lr 0.003 -> 0.001" in caplog.text


def test_another_optimizer_cannot_continue_a_run_even_with_resume_changed(last, tmp_path):
    with pytest.raises(NmtError) as error:
        run(tiny_config(resume=str(last), resume_changed=True, optimizer="sgd", momentum=0.9), tmp_path)
    message = str(error.value)
    assert message.startswith(f"{last}: this run's adam state cannot continue as train.optimizer=sgd")
    assert "\n" not in message and list(tmp_path.iterdir()) == []
