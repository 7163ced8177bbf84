import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from nmt import checkpoint
from nmt.config import DecodeConfig
from nmt.errors import NmtError
from nmt.synthetic import generate_split
from nmt.translator import Translator


def translations(path: Path, lines: list[str]) -> list[str]:
    return [hyps[0].text for hyps in Translator.from_checkpoints([path], DecodeConfig(beam_size=3)).translate(lines)]


def test_checkpoint_loads_as_plain_data(trained_checkpoint):
    state = torch.load(trained_checkpoint, weights_only=True)
    assert state["format_version"] == checkpoint.FORMAT_VERSION
    assert isinstance(state["src_bpe"], str) and isinstance(state["tgt_vocab"], list)
    assert state["step"] > 0


def test_translations_identical_after_save_and_reload(trained_checkpoint, tmp_path):
    lines, _ = generate_split("test", 3000, 1234)
    before = translations(trained_checkpoint, lines[:40])
    state = checkpoint.load(trained_checkpoint)
    copy = tmp_path / "copy.pt"
    checkpoint.save(copy, state)
    assert translations(copy, lines[:40]) == before
    assert any(before)


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    checkpoint.save(target, {"value": torch.ones(3)})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save(target, {"value": torch.zeros(3)})
    assert torch.equal(torch.load(target, weights_only=True)["value"], torch.ones(3))
    assert list(tmp_path.iterdir()) == [target]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(NmtError, match="checkpoint not found"):
        checkpoint.load(tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(NmtError, match=str(path)):
        checkpoint.load(path)


def test_truncated_checkpoint(trained_checkpoint, tmp_path):
    path = tmp_path / "truncated.pt"
    path.write_bytes(trained_checkpoint.read_bytes()[:5000])
    with pytest.raises(NmtError, match="truncated"):
        checkpoint.load(path)


def test_tensor_file_without_nmt_keys(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(NmtError, match="not an nmt checkpoint"):
        checkpoint.load(path)


def test_newer_format_is_refused(trained_checkpoint, tmp_path):
    state = torch.load(trained_checkpoint, weights_only=True)
    state["format_version"] = checkpoint.FORMAT_VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(state, path)
    with pytest.raises(NmtError, match="newer"):
        checkpoint.load(path)


def test_vocabulary_that_does_not_match_the_weights(trained_checkpoint, tmp_path):
    state = torch.load(trained_checkpoint, weights_only=True)
    state["tgt_vocab"] = state["tgt_vocab"][:-5]
    with pytest.raises(NmtError, match="do not match"):
        checkpoint.restore(state, tmp_path / "x.pt")


class _WritesAFile:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_pickle_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": _WritesAFile(str(marker))}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(NmtError, match="refused"):
        checkpoint.load(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()
