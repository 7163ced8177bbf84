import dataclasses
import pickle
import re
import resource
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from nmt import checkpoint
from nmt.config import DecodeConfig
from nmt.errors import NmtError
from nmt.synthetic import generate_split
from nmt.train import run
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
    with pytest.raises(NmtError, match="last.pt: cannot write \\(disk full\\); it was not written"):
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


def altered(trained_checkpoint: Path, tmp_path: Path, change) -> Path:
    """A copy of a real checkpoint with one thing changed by `change(state)`."""
    state = torch.load(trained_checkpoint, weights_only=True)
    change(state)
    path = tmp_path / "altered.pt"
    torch.save(state, path)
    return path


def one_line_error(path: Path) -> str:
    with pytest.raises(NmtError) as error:
        checkpoint.load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


def setter(key: str, value: object, inner: str | None = None):
    def change(state):
        if inner is None:
            state[key] = value
        else:
            state[key][inner] = value

    return change


@pytest.mark.parametrize(
    "change, expected",
    [
        (setter("format_version", "1"), "format '1' is not one nmt writes"),
        (setter("format_version", -1), "format -1 is not one nmt writes"),
        (setter("format_version", 0), "format 0 is not one nmt writes"),
        (setter("format_version", True), "format True is not one nmt writes"),
        (setter("format_version", 1.0), "format 1.0 is not one nmt writes"),
        (setter("model_config", [64, 128]), "model_config is a list, not a dict"),
        (setter("model_config", 2, "layers"), "model_config has an unknown setting 'layers'"),
        (setter("model_config", "64", "embed_size"), "model_config.embed_size is '64', not of type int"),
        (setter("model_config", 64.0, "embed_size"), "model_config.embed_size is 64.0, not of type int"),
        (setter("model_config", True, "dropout"), "model_config.dropout is True, not of type float"),
        (
            setter("model_config", "0.1", "embed_dropout"),
            "model_config.embed_dropout is '0.1', not of type float | None",
        ),
        (
            setter("model_config", 1.5, "embed_dropout"),
            "model_config holds an impossible value (config: model.embed_dropout",
        ),
        (setter("data_config", {"train": 1}, "splits"), "data_config.splits is {'train': 1}, not of type dict"),
        (setter("model_config", 3, "hidden_size"), "model_config holds an impossible value (config: model.hidden_size"),
        (setter("data_config", "tgt", "src_lang"), "data_config holds an impossible value (config: data.tgt_lang"),
        (setter("model_config", 10**6, "encoder_layers"), "model_config.encoder_layers is 1000000, over 64"),
        (setter("src_bpe", "{not json"), "src_bpe is not a BPE model tokenizers can read (key must be a string"),
        (setter("tgt_bpe", "{}"), "tgt_bpe is not a BPE model tokenizers can read"),
        (setter("tgt_bpe", None), "tgt_bpe is a NoneType, not a BPE model"),
        (lambda state: state.update(tgt_vocab=state["tgt_vocab"][4:]), "tgt_vocab does not start with the special"),
        (lambda state: state["src_vocab"].__setitem__(-1, state["src_vocab"][5]), "src_vocab holds"),
        (lambda state: state["src_vocab"].__setitem__(2, "<unk>"), "src_vocab does not start with the special"),
        (lambda state: state["tgt_vocab"].__setitem__(9, 9), "tgt_vocab is not a list of strings"),
        (lambda state: state["model"].pop("output.bias"), "1 missing, such as output.bias"),
        (setter("model", torch.zeros(1), "extra.weight"), "1 unexpected, such as 'extra.weight'"),
        (setter("model", [0.0], "output.bias"), "output.bias is not a floating-point tensor"),
        (lambda state: state["model"].__setitem__("output.bias", state["model"]["output.bias"].long()), "floating"),
        (setter("model", "weights"), "model is a str, not a dict of weights"),
    ],
)
def test_altered_checkpoint_is_refused_in_one_line(trained_checkpoint, tmp_path, change, expected):
    assert expected in one_line_error(altered(trained_checkpoint, tmp_path, change))


def test_huge_sizes_fail_before_anything_is_allocated(trained_checkpoint, tmp_path):
    """embed_size=2**22 would need over 10 GB of weights; the network is first built on the meta device."""
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    path = altered(trained_checkpoint, tmp_path, setter("model_config", 2**22, "embed_size"))
    assert re.search(r"encoder.embed.weight has shape \(\d+, 64\), they need \(\d+, 4194304\)$", one_line_error(path))
    with pytest.raises(NmtError, match="do not match"):
        checkpoint.restore(torch.load(path, weights_only=True), path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 1024**2


def test_checkpoint_older_than_a_setting_loads_with_its_default(trained_checkpoint, tmp_path):
    def drop_newer_settings(state):
        del state["data_config"]["num_proc"], state["model_config"]["tie_embeddings"]

    path = altered(trained_checkpoint, tmp_path, drop_newer_settings)
    assert checkpoint.restore(checkpoint.load(path), path)[3].tie_embeddings is False


def test_a_three_way_tied_run_restores_one_shared_matrix(tmp_path):
    cfg = tiny_config(max_steps=3, valid_metric="loss")
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, joint_vocab=True),
        model=dataclasses.replace(cfg.model, tie_embeddings=True, share_embeddings=True),
    )
    run(cfg, tmp_path)
    path = tmp_path / "checkpoints" / "last.pt"
    model, src, tgt, _ = checkpoint.restore(checkpoint.load(path), path)
    assert model.encoder.embed.weight is model.decoder.embed.weight is model.output.weight
    assert src.vocab.pieces == tgt.vocab.pieces
