"""`python -m nmt.average`: the mean of a run's checkpoints, never written over anything it should not be."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from nmt import checkpoint
from nmt.average import average_files, main
from nmt.errors import NmtError


@pytest.fixture
def inputs(trained_checkpoint, tmp_path) -> list[Path]:
    """best.pt and last.pt of one run, copied so a test that fails cannot damage the shared run."""
    copies = [tmp_path / "best.pt", tmp_path / "last.pt"]
    shutil.copy(trained_checkpoint, copies[0])
    shutil.copy(trained_checkpoint.parent / "last.pt", copies[1])
    return copies


def test_average_is_the_mean_and_holds_weights_only(inputs, tmp_path):
    output = tmp_path / "average.pt"
    average_files(inputs, output)
    averaged, best, last = (checkpoint.load(path) for path in (output, *inputs))
    for name, tensor in averaged["model"].items():
        torch.testing.assert_close(tensor, (best["model"][name] + last["model"][name]) / 2)
    assert not {"optimizer", "scheduler", "scaler", "progress", "rng"} & set(averaged)


def test_a_checkpoint_older_than_a_model_setting_averages_with_a_newer_one_of_the_run(inputs, tmp_path):
    """A run resumed across an upgrade: its older checkpoint lacks a key the newer one holds at its default."""
    older = checkpoint.load(inputs[0])
    del older["model_config"]["embed_dropout"]
    torch.save(older, inputs[0])
    average_files(inputs, tmp_path / "average.pt")
    newer = checkpoint.load(inputs[1])
    newer["model_config"]["hidden_dropout"] = 0.5  # a different setting is still refused
    torch.save(newer, inputs[1])
    with pytest.raises(NmtError, match="model_config differs"):
        average_files(inputs, tmp_path / "average.pt")


@pytest.mark.parametrize("alias", ["same path", "symlink", "hard link", "relative path"])
def test_output_that_is_an_input_is_refused(inputs, tmp_path, monkeypatch, alias):
    target = inputs[1]
    if alias == "symlink":
        output = tmp_path / "link.pt"
        output.symlink_to(target)
    elif alias == "hard link":
        output = tmp_path / "hard.pt"
        os.link(target, output)
    elif alias == "relative path":
        monkeypatch.chdir(tmp_path)
        output = Path(".") / ".." / tmp_path.name / target.name
    else:
        output = target
    before = target.read_bytes()
    with pytest.raises(NmtError, match="is also an input"):
        average_files(inputs, output)
    assert target.read_bytes() == before


def test_existing_file_that_is_not_a_checkpoint_is_not_overwritten(inputs, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a week of experiment notes\n")
    with pytest.raises(NmtError, match="exists and is not a checkpoint"):
        average_files(inputs, notes)
    assert notes.read_text() == "a week of experiment notes\n"


def test_previous_average_is_overwritten(inputs, tmp_path):
    output = tmp_path / "average.pt"
    average_files(inputs, output)
    average_files(inputs[:1], output)
    assert torch.equal(
        checkpoint.load(output)["model"]["output.bias"], checkpoint.load(inputs[0])["model"]["output.bias"]
    )


def test_folder_output_is_refused(inputs, tmp_path):
    with pytest.raises(NmtError, match="is a folder; name the averaged checkpoint's file"):
        average_files(inputs, tmp_path)


def test_output_under_a_file_is_refused(inputs, tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(NmtError, match="cannot be written: .*notes.txt is not a folder"):
        average_files(inputs, tmp_path / "notes.txt" / "average.pt")


def test_write_failure_is_one_line(inputs, tmp_path, monkeypatch):
    def refuse(path, state):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(checkpoint, "save", refuse)
    with pytest.raises(NmtError, match=r"average.pt: cannot be written \(Permission denied\)"):
        average_files(inputs, tmp_path / "average.pt")


def test_command_line_error_is_one_line(inputs, capsys):
    with pytest.raises(SystemExit) as exit:
        main([str(inputs[0]), str(inputs[1]), "-o", str(inputs[0])])
    assert exit.value.code == 1
    assert (
        capsys.readouterr().err
        == f"error: {inputs[0]}: is also an input ({inputs[0]}); write the average to a new file\n"
    )
