"""Training that never loses work: exact resume, signals, atomic saves, stopping, accumulation, DDP."""

import datetime
import json
import math
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import collate, tiny_config

from nmt import checkpoint
from nmt.average import average
from nmt.batching import epoch_batches, make_batch
from nmt.cache import prepare
from nmt.dropout import Dropout
from nmt.errors import NmtError
from nmt.model import Seq2Seq
from nmt.run_folder import RunFolder
from nmt.schedule import exponential, inverse_sqrt, make_optimizer
from nmt.train import start_distributed
from nmt.trainer import Trainer, dropout_seed

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.synthetic_train_pairs=1500", "data.bpe_vocab_size=300", "model.embed_size=32", "model.hidden_size=64",
    "train.batch_tokens=600", "train.max_epochs=0", "train.max_minutes=0", "train.valid_metric=loss",
    "train.log_every=5",
]  # fmt: skip


def train_cli(run_dir: Path, *overrides: str, launcher: tuple[str, ...] = (sys.executable, "-m")) -> subprocess.Popen:
    return subprocess.Popen(
        [*launcher, "nmt.train", *TINY, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return stdout + stderr


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def wait_for_step(path: Path, minimum: int, process: subprocess.Popen) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            step = torch.load(path, weights_only=True)["step"]
        except Exception:  # not written yet, or being replaced right now
            step = -1
        if step >= minimum:
            return step
        time.sleep(0.05)
    raise TimeoutError(path)


def test_run_killed_mid_epoch_resumes_to_identical_weights(tmp_path):
    # with every source of training randomness: dropout, word dropout, BPE-dropout
    steps = ["train.max_steps=24", "train.save_every=2", "model.word_dropout=0.1", "data.bpe_dropout=0.1"]
    finish(train_cli(tmp_path / "straight", *steps))
    interrupted = train_cli(tmp_path / "resumed", *steps)
    killed_at = wait_for_step(tmp_path / "resumed" / "checkpoints" / "last.pt", 8, interrupted)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    assert killed_at < 24
    log = finish(train_cli(tmp_path / "resumed", *steps))
    assert "resumed from" in log
    straight = weights(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = weights(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    process = train_cli(tmp_path, "train.max_steps=100000", "train.save_every=3")
    wait_for_step(tmp_path / "checkpoints" / "last.pt", 3, process)
    process.send_signal(signal.SIGTERM)
    log = finish(process)
    assert "stopped" in log
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["progress"]["step"] == state["step"] >= 3


def test_checkpoint_survives_a_kill_during_writing(tmp_path):
    target = tmp_path / "last.pt"
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from nmt.checkpoint import save
        big = torch.randn(4_000_000)
        for i in range(10**6):
            save(Path({str(target)!r}), {{"step": i, "weights": big}})
    """)], cwd=REPO)  # fmt: skip
    deadline = time.monotonic() + 60
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.37)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert torch.load(target, weights_only=True)["weights"].numel() == 4_000_000


def tiny_trainer(tmp_path, **train):
    cfg = tiny_config(**{"valid_metric": "loss", "progress": False, **train})
    data = prepare(cfg.data)
    torch.manual_seed(0)
    model = Seq2Seq(cfg.model, data.src_pipeline.vocab_size, data.tgt_pipeline.vocab_size)
    return Trainer(model, data, cfg, RunFolder(tmp_path, cfg.train))


def without_dropout(trainer):
    for module in trainer.module.modules():
        if isinstance(module, Dropout):
            module.p = 0.0
    return trainer


def saved_step(tmp_path, name):
    return torch.load(tmp_path / "checkpoints" / name, weights_only=True)["step"]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def validation_losses(trainer, losses):
    remaining = iter(losses)
    trainer.validate = lambda: {"valid_loss": next(remaining), "valid_ppl": 1.0}


def test_early_stopping_after_patience_validations_without_improvement(tmp_path):
    trainer = tiny_trainer(tmp_path, max_steps=1000, valid_every=2, patience=2)
    validation_losses(trainer, [3.0, 2.0, 2.5, 2.0, 1.0])
    progress = trainer.fit()
    assert [r["valid_loss"] for r in records(tmp_path) if "valid_loss" in r] == [3.0, 2.0, 2.5, 2.0]
    assert progress.step == 8 and progress.best_score == -2.0
    assert saved_step(tmp_path, "best.pt") == 4 and saved_step(tmp_path, "last.pt") == 8


def test_the_summary_after_a_resume_covers_the_whole_run(tmp_path):
    first = tiny_trainer(tmp_path, max_steps=4, valid_every=2)
    validation_losses(first, [3.0, 2.0])
    first.fit()
    resumed = tiny_trainer(tmp_path, max_steps=8, valid_every=2)
    resumed.load_state_dict(torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True))
    validation_losses(resumed, [2.5, 2.2])
    progress = resumed.fit()
    summary = resumed.run.summary(progress, resumed.elapsed_minutes(), resumed.module)
    assert summary["best_step"] == 4 and summary["best_validation"] == {"valid_loss": 2.0, "valid_ppl": 1.0}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    corpus = first.data.train
    plan = epoch_batches(corpus, 1500, seed=1, epoch=1)[:8]  # the 8 updates of both processes
    assert progress.target_tokens == sum(make_batch(corpus, indices).target_tokens for indices in plan)
    assert summary["tgt_tokens_per_s"] == progress.target_tokens / progress.update_seconds


def test_every_batch_of_a_run_has_its_own_dropout_seed():
    seeds = {dropout_seed(seed, step, position) for seed in (1, 2) for step in range(200) for position in range(8)}
    assert len(seeds) == 2 * 200 * 8


def test_accumulating_two_batches_equals_one_update_on_both(tmp_path):
    # SGD: Adam's first step, lr * g / (|g| + eps), turns rounding in a gradient of ~eps into a
    # visible change of the weight, which would test the rounding rather than the accumulation
    trainer = without_dropout(tiny_trainer(tmp_path, lr=1e-2, optimizer="sgd"))
    corpus = trainer.data.train
    first, second = epoch_batches(corpus, 600, seed=1, epoch=1)[:2]

    def batch(indices):
        return collate([corpus.src_ids[i] for i in indices], [corpus.tgt_ids[i] for i in indices])

    start = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    trainer.update([batch(first), batch(second)])
    accumulated = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    reference = without_dropout(tiny_trainer(tmp_path, lr=1e-2, optimizer="sgd"))
    reference.module.load_state_dict(start)
    reference.update([batch([*first, *second])])
    for name, tensor in reference.module.state_dict().items():
        torch.testing.assert_close(accumulated[name], tensor, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "fp16-grad-scaler"])
def test_nonfinite_updates_are_skipped_counted_then_abort(tmp_path, scaled):
    trainer = tiny_trainer(tmp_path, max_nonfinite=3)
    if scaled:  # fp16's path (its autocast needs CUDA): the scaler finds the overflow and skips the step itself
        trainer.scaler = torch.amp.GradScaler("cpu")
    corpus = trainer.data.train
    batch = collate([corpus.src_ids[0]], [corpus.tgt_ids[0]])
    trainer.update([batch])
    before = {k: v.clone() for k, v in trainer.module.state_dict().items()}
    with torch.no_grad():
        trainer.module.output.bias.fill_(math.nan)
        before["output.bias"].fill_(math.nan)
    for _ in range(2):
        trainer.update([batch])
    after = trainer.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k != "output.bias")
    assert (trainer.progress.nonfinite_total, trainer.progress.nonfinite_in_a_row) == (2, 2)
    assert trainer.scaler.get_scale() == (2.0**16 / 4 if scaled else 1.0)
    with pytest.raises(NmtError, match="3 updates in a row"):
        trainer.update([batch])


def test_schedules():
    assert [inverse_sqrt(s, 4) for s in (1, 2, 4, 16)] == [0.25, 0.5, 1.0, 0.5]
    assert exponential(1, 0, 0.5, 10) == 0.5**0.1
    assert exponential(30, 10, 0.5, 10) == 0.25 and exponential(5, 10, 0.5, 10) == 0.5


@pytest.mark.parametrize(
    ("optimizer", "extra", "expected"),
    [
        # Adam's first step moves each weight by lr against the sign of its gradient (+ the L2 term)
        ("adam", {}, lambda w, g: w - 0.1 * torch.sign(g + 0.5 * w)),
        # AdamW decays the weight itself, apart from the gradient
        ("adamw", {}, lambda w, g: w * (1 - 0.1 * 0.5) - 0.1 * torch.sign(g)),
        # SGD (its momentum buffer starts as the first gradient)
        ("sgd", {"momentum": 0.9}, lambda w, g: w - 0.1 * (g + 0.5 * w)),
    ],
)
def test_the_optimizer_of_train_optimizer_takes_its_first_step_by_its_formula(optimizer, extra, expected):
    cfg = tiny_config(optimizer=optimizer, lr=0.1, weight_decay=0.5, **extra).train
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    start, gradient = weight.detach().clone(), torch.tensor([0.3, 0.2, -4.0])
    update = make_optimizer([weight], cfg, fused=True)
    weight.grad = gradient.clone()
    update.step()
    assert torch.allclose(weight.detach(), expected(start, gradient), atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_patience_and_plateau_patience_both_act_at_the_nth_validation_without_improvement(tmp_path, n):
    trainer = tiny_trainer(
        tmp_path, lr=0.01, max_steps=20, valid_every=1, patience=n, schedule="plateau", plateau_patience=n
    )
    validation_losses(trainer, [3.0, 2.0, *[2.5] * n, 1.0])  # the best at validation 2, then n worse
    rates = []  # the learning rate each validation found
    validate = trainer.validate
    trainer.validate = lambda: rates.append(trainer.optimizer.param_groups[0]["lr"]) or validate()
    assert trainer.fit().step == 2 + n  # stopped by validation 2 + n ...
    assert rates == [0.01] * (2 + n) and trainer.optimizer.param_groups[0]["lr"] == 0.005  # ... which halved the rate


def test_average_of_identical_checkpoints_is_the_checkpoint(trained_checkpoint):
    state = checkpoint.load(trained_checkpoint)
    averaged = average([state, state], [trained_checkpoint, trained_checkpoint])
    assert all(torch.equal(averaged["model"][k], state["model"][k]) for k in state["model"])
    checkpoint.restore(averaged, trained_checkpoint)


def test_the_process_group_waits_train_dist_timeout_minutes(monkeypatch):
    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **options: joined.append(options))
    start_distributed(tiny_config(dist_timeout_minutes=7.5))
    assert joined == [{"backend": "gloo", "timeout": datetime.timedelta(minutes=7.5)}]


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_gloo_ranks_equal_one_process_accumulating_two_dropout_included(tmp_path):
    common = ["train.max_steps=3", "model.dropout=0.3", "train.seed=3"]
    ddp = train_cli(tmp_path / "ddp", *common, launcher=("torchrun", "--nproc_per_node=2", "--master_port=29533", "-m"))
    finish(ddp)
    finish(train_cli(tmp_path / "single", *common, "train.accumulate=2"))
    single = weights(tmp_path / "single" / "checkpoints" / "last.pt")
    distributed = weights(tmp_path / "ddp" / "checkpoints" / "last.pt")
    for name in single:
        torch.testing.assert_close(distributed[name], single[name], atol=1e-5, rtol=0)
