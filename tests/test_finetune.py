"""Starting a run from a trained model (train.init_from): the checkpoint's weights, BPE models and
vocabularies on a new corpus, a fresh or kept optimizer, a step-0 validation, exact resume, and
one-line refusals that write nothing."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from test_trainer import finish, wait_for_step, weights

from nmt import checkpoint, finetune, synthetic
from nmt.average import average_files
from nmt.config import Config, ModelConfig
from nmt.errors import NmtError
from nmt.run_folder import RunFolder
from nmt.train import run, setup
from nmt.vocab import UNK

REPO = Path(__file__).resolve().parents[1]
ODD_LINE = ("The Ωmega zukolibade ran .", "Der Ωmega zukolibade lief .")  # a letter and a word the model never saw


@pytest.fixture(scope="module")
def new_corpus(tmp_path_factory) -> Path:
    """A different small corpus in files: the base model's language, sentences it was not trained on
    (the synthetic test stream) and one odd pair; its validation set is the base run's."""
    folder = tmp_path_factory.mktemp("new_corpus")
    train_src, train_tgt = synthetic.generate_split("test", 0, 1234)
    val_src, val_tgt = synthetic.generate_split("val", 0, 1234)
    for split, src, tgt in (("train", [*train_src, ODD_LINE[0]], [*train_tgt, ODD_LINE[1]]), ("val", val_src, val_tgt)):
        (folder / f"{split}.src").write_text("".join(f"{line}\n" for line in src))
        (folder / f"{split}.tgt").write_text("".join(f"{line}\n" for line in tgt))
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """The runs here train with train.threads=1 (quicker on a busy machine); later tests get torch's setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def last(trained_checkpoint) -> Path:
    return trained_checkpoint.parent / "last.pt"


def on_corpus(corpus: Path, **train) -> Config:
    """`tiny_config` (the base model's) with `train` changes, on the corpus in `corpus`."""
    cfg = tiny_config(
        **{"valid_metric": "loss", "max_steps": 6, "log_every": 2, "progress": False, "threads": 1, **train}
    )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus="files", dir=str(corpus), num_proc=1))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fine_tuning_starts_at_the_models_validation_loss_not_from_scratch(trained_checkpoint, new_corpus, tmp_path):
    run(on_corpus(new_corpus, init_from=str(trained_checkpoint)), tmp_path / "fine_tuned")
    run(on_corpus(new_corpus), tmp_path / "scratch")
    tuned = [r for r in records(tmp_path / "fine_tuned") if "valid_loss" in r]
    scratch = [r for r in records(tmp_path / "scratch") if "valid_loss" in r]
    # the same validation text through the same pipelines and weights: the base run's last score, at step 0
    base = checkpoint.load(trained_checkpoint)
    assert tuned[0]["step"] == 0 and tuned[0]["valid_loss"] == pytest.approx(base["valid"]["valid_loss"], rel=1e-6)
    # and ahead of a model trained from scratch on the new corpus even after as many updates as the fine-tuning
    assert tuned[-1]["step"] == scratch[-1]["step"] == 6
    assert tuned[0]["valid_loss"] < scratch[-1]["valid_loss"] - 0.3
    summary = json.loads((tmp_path / "fine_tuned" / "summary.json").read_text())
    assert (summary["init_from"], summary["init_from_step"], summary["steps"]) == (
        str(trained_checkpoint),
        base["step"],
        6,
    )
    assert json.loads((tmp_path / "scratch" / "summary.json").read_text())["init_from"] is None


def test_the_new_corpus_is_encoded_with_the_checkpoints_bpe_and_vocabularies(trained_checkpoint, new_corpus, tmp_path):
    base = checkpoint.load(trained_checkpoint)
    cfg = on_corpus(new_corpus, init_from=str(trained_checkpoint))
    # settings the checkpoint fixes, left at other values without being named on the command line: its own win
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden_size=512, dropout=0.3))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, bpe_vocab_size=8000, joint_bpe=False))
    data, model, trainer = setup(cfg, RunFolder(tmp_path, cfg.train))
    assert trainer.cfg.model == ModelConfig(**base["model_config"])
    assert (trainer.cfg.data.bpe_vocab_size, trainer.cfg.data.joint_bpe) == (600, True)
    assert all(torch.equal(tensor, base["model"][name]) for name, tensor in model.state_dict().items())
    for side, pipeline in (("src", data.src_pipeline), ("tgt", data.tgt_pipeline)):
        assert pipeline.vocab.pieces == base[f"{side}_vocab"] and pipeline.bpe.to_str() == base[f"{side}_bpe"]
    translation_src, translation_tgt = checkpoint.pipelines(base)  # what nmt-translate encodes with
    src_ids, tgt_ids = translation_src.encode(data.train.src_text), translation_tgt.encode(data.train.tgt_text)
    assert [list(ids) for ids in data.train.src_ids] == src_ids and [list(ids) for ids in data.train.tgt_ids] == tgt_ids
    odd = data.train.src_text.index(ODD_LINE[0])
    assert UNK in src_ids[odd] and "zukolibade" not in base["src_vocab"]
    unknown = (sum(UNK in ids for ids in src_ids), sum(UNK in ids for ids in tgt_ids))
    assert finetune.unknown_pairs(data.train) == unknown  # as the log reports them
    assert len(translation_src.segment([["zukolibade"]])[0]) > 1  # an unseen word: several known pieces
    assert trainer.optimizer.state_dict()["state"] == {} and trainer.scheduler.last_epoch == 0
    assert trainer.progress.step == 0 and trainer.init_from == {"path": str(trained_checkpoint), "step": base["step"]}


def test_init_reset_false_keeps_the_optimizer_and_schedule(last, new_corpus, tmp_path):
    base = checkpoint.load(last)
    cfg = on_corpus(new_corpus, init_from=str(last), init_reset=False, lr=0.1, schedule="inverse_sqrt")
    _, _, trainer = setup(cfg, RunFolder(tmp_path, cfg.train))
    kept = trainer.optimizer.state_dict()
    assert kept["param_groups"] == base["optimizer"]["param_groups"] and kept["param_groups"][0]["lr"] == 0.003
    for index, state in base["optimizer"]["state"].items():
        assert all(torch.equal(kept["state"][index][key], value) for key, value in state.items())
    assert trainer.scheduler.state_dict() == base["scheduler"] and trainer.scheduler.last_epoch == 40
    assert (trainer.cfg.train.lr, trainer.cfg.train.schedule) == (0.003, "constant")
    assert trainer.progress.step == 0 and trainer.progress.best_score == -float("inf")


def test_resume_of_a_fine_tuning_run_is_exact_and_needs_not_the_model_it_started_from(trained_checkpoint, tmp_path):
    start, base_step = tmp_path / "base.pt", checkpoint.load(trained_checkpoint)["step"]
    shutil.copy(trained_checkpoint, start)
    overrides = [
        "data.synthetic_seed=7", "data.synthetic_train_pairs=1000", "data.num_proc=1", "train.max_steps=24",
        "train.save_every=2", "train.max_epochs=0", "train.max_minutes=0", "train.valid_metric=loss",
        "train.log_every=5", "train.threads=1", f"train.init_from={start}",
    ]  # fmt: skip

    def train(run_dir: Path) -> subprocess.Popen:
        command = [sys.executable, "-m", "nmt.train", *overrides, f"hydra.run.dir={run_dir}"]
        return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    finish(train(tmp_path / "straight"))
    interrupted = train(tmp_path / "resumed")
    wait_for_step(tmp_path / "resumed" / "checkpoints" / "last.pt", 6, interrupted)
    interrupted.send_signal(signal.SIGTERM)
    assert "stopped" in finish(interrupted)
    stopped_at = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["step"]
    start.unlink()  # a resume continues the fine-tuning run: the model it started from is not read again
    assert "resumed from" in finish(train(tmp_path / "resumed"))
    assert 6 <= stopped_at < 24
    straight = weights(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = weights(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    # validated at step 0 once: the resumed run did not start again
    validated = [r["step"] for r in records(tmp_path / "resumed") if "valid_loss" in r]
    assert validated == [r["step"] for r in records(tmp_path / "straight") if "valid_loss" in r] == [0, 15, 24]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert (summary["init_from"], summary["init_from_step"], summary["steps"]) == (str(start), base_step, 24)


def test_resume_compares_init_from_only_when_it_is_named(last):
    state = checkpoint.load(last)
    assert checkpoint.changed_settings(state, tiny_config(init_from="other.pt")) == {
        "train.init_from": ("", "other.pt")
    }
    state["train_config"] |= {"init_from": "base.pt", "init_reset": False}
    assert checkpoint.changed_settings(state, tiny_config()) == {}  # the run found is continued, as it started
    assert checkpoint.changed_settings(state, tiny_config(init_from="base.pt", init_reset=False)) == {}
    assert checkpoint.changed_settings(state, tiny_config(init_from="other.pt")) == {
        "train.init_from": ("base.pt", "other.pt"),
        "train.init_reset": (False, True),
    }


def refused(cfg, out_dir: Path, explicit=()) -> str:
    with pytest.raises(NmtError) as error:
        run(cfg, out_dir, explicit)
    assert not out_dir.exists()
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize(
    ("model", "data", "explicit", "named"),
    [
        ({"hidden_size": 64}, {}, ["model.hidden_size"], "model.hidden_size is 128 there, 64 here"),
        ({"attention": "dot"}, {}, ["model"], "model.attention is 'general' there, 'dot' here"),
        ({}, {"bpe_vocab_size": 300}, ["data.bpe_vocab_size"], "data.bpe_vocab_size is 600 there, 300 here"),
        ({}, {"joint_bpe": False}, ["data", "data.joint_bpe"], "data.joint_bpe is True there, False here"),
    ],
)
def test_an_override_that_contradicts_the_checkpoint_is_refused(
    trained_checkpoint, new_corpus, tmp_path, model, data, explicit, named
):
    cfg = on_corpus(new_corpus, init_from=str(trained_checkpoint))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data))
    message = refused(cfg, tmp_path / "run", explicit)
    assert message.startswith(f"{trained_checkpoint}: the command line contradicts settings this checkpoint fixes")
    assert named in message and "drop those overrides" in message


def test_the_command_line_names_what_it_overrides(trained_checkpoint, tmp_path):
    command = [
        sys.executable, "-m", "nmt.train", f"train.init_from={trained_checkpoint}", "model.hidden_size=64",
        "model.dropout=0.2", f"hydra.run.dir={tmp_path}",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: {trained_checkpoint}: the command line contradicts settings this checkpoint fixes "
        "(model.hidden_size is 128 there, 64 here); drop those overrides: the run takes them from the checkpoint"
    )
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()


def bad_checkpoint(kind: str, folder: Path, trained_checkpoint: Path) -> tuple[Path, str]:
    path = folder / f"{kind}.pt"
    if kind == "corrupt":
        path.write_bytes(trained_checkpoint.read_bytes()[:5000])
        return path, "not a readable nmt checkpoint"
    if kind == "newer":
        torch.save({**checkpoint.load(trained_checkpoint), "format_version": checkpoint.FORMAT_VERSION + 1}, path)
        return path, "is newer than this nmt understands"
    return path, "checkpoint not found"


@pytest.mark.parametrize("kind", ["missing", "corrupt", "newer"])
def test_a_bad_checkpoint_is_refused(trained_checkpoint, new_corpus, tmp_path, kind):
    path, reason = bad_checkpoint(kind, tmp_path, trained_checkpoint)
    message = refused(on_corpus(new_corpus, init_from=str(path)), tmp_path / "run")
    assert message.startswith(f"{path}: ") and reason in message


def test_a_checkpoint_of_the_other_direction_is_refused(trained_checkpoint, new_corpus, tmp_path):
    cfg = on_corpus(new_corpus, init_from=str(trained_checkpoint))
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, src_lang="tgt", tgt_lang="src"))
    assert refused(cfg, tmp_path / "run") == (
        f"{trained_checkpoint}: translates src->tgt, the other direction of this run's data (tgt->src); "
        "start from a tgt->src checkpoint"
    )


@pytest.mark.parametrize("source", ["best.pt", "average"])
def test_keeping_the_optimizer_needs_a_last_pt(trained_checkpoint, last, new_corpus, tmp_path, source):
    path = trained_checkpoint
    if source == "average":
        path = tmp_path / "average.pt"
        average_files([trained_checkpoint, last], path)
    message = refused(on_corpus(new_corpus, init_from=str(path), init_reset=False), tmp_path / "run")
    assert message.startswith(f"{path}: holds weights only") and "start from a last.pt" in message


def test_init_from_with_a_resume_path_is_ambiguous(trained_checkpoint, last):
    with pytest.raises(NmtError, match=r"^config: train.resume must be auto or none with train.init_from"):
        tiny_config(init_from=str(trained_checkpoint), resume=str(last))
