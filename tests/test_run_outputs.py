"""What a training run leaves for its user: metrics.jsonl with the documented keys, TensorBoard
events with the same scalars (train.tensorboard=true), progress bars on stderr only."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_config
from tokenizers import trainers

from nmt import tokenization
from nmt.errors import NmtError
from nmt.run_folder import tensorboard_scalars
from nmt.tokenization import bpe_progress, learn_bpe
from nmt.train import run

REPO = Path(__file__).resolve().parents[1]
TRAIN_KEYS = {"step", "epoch", "minutes", "loss", "ppl", "lr", "grad_norm", "tgt_tokens_per_s", "nonfinite_skipped"}
VALID_KEYS = {"step", "epoch", "minutes", "valid_loss", "valid_ppl", "valid_bleu", "valid_chrf", "best_score"}


class TerminalLike(io.StringIO):
    """A stderr that says it is a terminal, as an interactive user's is."""

    def isatty(self) -> bool:
        return True


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def bpe_bars(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[bool]:
    """The show_progress of every BPE trainer made while the test runs. The cache of prepared
    corpora starts empty, so the run learns BPE instead of reusing a prepared corpus."""
    monkeypatch.setenv("NMT_CACHE", str(tmp_path / "corpus_cache"))
    seen: list[bool] = []
    real = trainers.BpeTrainer

    def recording(**settings: object) -> trainers.BpeTrainer:
        seen.append(bool(settings["show_progress"]))
        return real(**settings)

    monkeypatch.setattr(tokenization.trainers, "BpeTrainer", recording)
    return seen


def quick_run(out_dir: Path, **train: object) -> tuple[str, str]:
    """A 4-step run with a terminal-like stderr -> (stdout, stderr)."""
    stdout, stderr = io.StringIO(), TerminalLike()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        run(tiny_config(max_steps=4, log_every=2, **train), out_dir)
    return stdout.getvalue(), stderr.getvalue()


def test_metrics_jsonl_has_the_documented_keys(trained_checkpoint: Path) -> None:
    records = read_records(trained_checkpoint.parent.parent)
    train = [r for r in records if "loss" in r]
    valid = [r for r in records if "valid_loss" in r]
    assert len(train) == 2 and valid and len(train) + len(valid) == len(records)  # 40 steps, a log every 20
    assert all(set(r) == TRAIN_KEYS for r in train)
    assert all(set(r) == VALID_KEYS for r in valid)
    minutes = [r["minutes"] for r in records]
    assert minutes == sorted(minutes) and minutes[0] > 0


def test_tensorboard_events_hold_the_metrics_and_bars_go_to_stderr(tmp_path: Path, bpe_bars: list[bool]) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    stdout, stderr = quick_run(tmp_path, tensorboard=True)
    assert stdout == ""
    assert "training" in stderr and "validation" in stderr
    assert bpe_bars == [True]  # joint BPE: one trainer, its bar on

    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    records = read_records(tmp_path)
    expected = {tag for record in records for tag in tensorboard_scalars(record)}
    assert expected >= {"train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tgt_tokens_per_s"}
    assert expected >= {"valid/loss", "valid/ppl", "valid/bleu", "valid/chrf"}
    assert set(events.Tags()["scalars"]) == expected
    losses = events.Scalars("train/loss")
    assert [event.step for event in losses] == [r["step"] for r in records if "loss" in r] == [2, 4]
    assert [event.value for event in losses] == pytest.approx([r["loss"] for r in records if "loss" in r])
    assert events.Scalars("valid/bleu")[0].value == pytest.approx(records[-1]["valid_bleu"])


def test_progress_false_draws_no_bars_and_no_tensorboard_by_default(tmp_path: Path, bpe_bars: list[bool]) -> None:
    stdout, stderr = quick_run(tmp_path, progress=False)
    assert stdout == stderr == ""
    assert bpe_bars == [False]
    assert not (tmp_path / "tensorboard").exists()


def test_missing_tensorboard_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(NmtError, match=r'pip install tensorboard .*pip install -e "\.\[tensorboard\]"'):
        run(tiny_config(tensorboard=True), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_bpe_progress_is_on_only_inside_its_block(bpe_bars: list[bool]) -> None:
    lines = ["a b ab", "ba abab"] * 5
    learn_bpe(lines, 20, 1)
    with bpe_progress(True):
        learn_bpe(lines, 20, 1)
    learn_bpe(lines, 20, 1)
    assert bpe_bars == [False, True, False]


def test_tensorboard_tags_group_training_and_validation() -> None:
    record = {"step": 4, "epoch": 1, "minutes": 0.1, "valid_bleu": 3.0, "best_score": 3.0}
    assert tensorboard_scalars(record) == {"valid/bleu": 3.0, "valid/best_score": 3.0}
    assert tensorboard_scalars({"step": 2, "loss": 5.0, "lr": 0.1}) == {"train/loss": 5.0, "train/lr": 0.1}


TRAIN_WHEN_TOLD = """
import os, runpy, time
from pathlib import Path
import nmt.train  # the imports take seconds; done before both are told to start
Path(f"ready-{os.getpid()}").touch()
while not Path("go").exists():
    time.sleep(0.01)
runpy.run_module("nmt.train", run_name="__main__", alter_sys=True)  # python -m nmt.train OVERRIDES
"""


def test_two_runs_started_at_once_get_their_own_run_folders(tmp_path: Path) -> None:
    """Both processes pick Hydra's default run folder within milliseconds of each other; with a
    folder per second they shared it and overwrote each other's checkpoints and metrics."""
    overrides = [
        "data.synthetic_train_pairs=200", "data.bpe_vocab_size=100", "data.num_proc=1",
        f"data.cache_dir={tmp_path / 'cache'}", "model.embed_size=8", "model.hidden_size=8",
        "train.batch_tokens=600", "train.max_epochs=0", "train.max_steps=1", "train.valid_metric=loss",
        "train.threads=1",
    ]  # fmt: skip
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN_WHEN_TOLD, *overrides],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        for _ in range(2)
    ]
    while len(list(tmp_path.glob("ready-*"))) < 2:
        assert all(process.poll() is None for process in processes), [p.communicate()[1] for p in processes]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    finished = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [stderr for _, stderr in finished]
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 2
    for folder in folders:
        assert (folder / "checkpoints" / "last.pt").exists() and (folder / "checkpoints" / "best.pt").exists()
        assert [record["step"] for record in read_records(folder)] == [1]  # its own run's only record
