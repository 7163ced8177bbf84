"""Bad input gets a clear error or a consistent, counted treatment, never a silent misalignment."""

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmt.cache import prepare
from nmt.config import Config, DataConfig, TrainConfig
from nmt.corpus import load_split
from nmt.errors import NmtError
from nmt.synthetic import generate_split
from nmt.tokenization import MosesText, clean

REPO = Path(__file__).resolve().parents[1]


def write_corpus(folder: Path, split: str, src: list[bytes], tgt: list[bytes]) -> None:
    for lang, lines in (("en", src), ("de", tgt)):
        (folder / f"{split}.{lang}.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))


def test_invisible_and_control_characters_tokenize_like_plain_spaces():
    moses = MosesText("en")
    plain = moses.tokenize("A dog runs in the park .")
    assert moses.tokenize("\ufeffA dog\truns in\x00the park\u200b .\r") == plain
    assert clean("x\u200by") == "xy"


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_clean_never_leaves_control_characters(text):
    assert not any(ord(ch) < 32 or ord(ch) == 0x7F for ch in clean(text))


def test_invalid_utf8_names_file_and_line_and_can_be_skipped(tmp_path):
    good = [f"a small dog number {i} .".encode() for i in range(30)]
    bad = [*good[:4], b"caf\xe9 au lait", *good[5:]]
    write_corpus(tmp_path, "train", bad, good)
    write_corpus(tmp_path, "val", good[:5], good[:5])
    cfg = DataConfig(corpus="files", dir=str(tmp_path), bpe_vocab_size=100)
    with pytest.raises(NmtError, match=r"train\.en\.gz:5: invalid UTF-8.*on_bad_line=skip"):
        load_split(cfg, "train")
    cfg.on_bad_line = "skip"
    data = prepare(cfg)
    assert data.train_report.empty == 1 and data.train_report.kept == 29
    assert "caf" not in " ".join(data.train.src_text)


def test_empty_and_whitespace_only_lines_drop_their_pairs(tmp_path):
    src = [b"one cat .", b"", b"   ", b"two cats .", b"three cats ."]
    tgt = [b"eine katze .", b"zwei", b"drei", b"", b"drei katzen ."]
    write_corpus(tmp_path, "train", src, tgt)
    write_corpus(tmp_path, "val", src[:1], tgt[:1])
    data = prepare(DataConfig(corpus="files", dir=str(tmp_path), bpe_vocab_size=60))
    assert data.train_report.empty == 3 and data.train.src_text == ["one cat .", "three cats ."]


def test_batch_budget_smaller_than_the_longest_sentence_is_a_config_error():
    with pytest.raises(NmtError, match=r"train.batch_tokens must be > data.max_length \(100\)"):
        Config(data=DataConfig(max_length=100), train=TrainConfig(batch_tokens=80))


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["nmt.evaluate"], "config: checkpoint or checkpoints must be given, one of them (checkpoint=PATH"),
        (["nmt.train", "data=hub"], "config: data.hub_name must be set for data.corpus=hub (the dataset's name"),
        (["nmt.prepare", "data=hub"], "config: data.hub_name must be set for data.corpus=hub (the dataset's name"),
    ],
)
def test_an_entry_point_without_a_required_value_names_it_in_one_line(command, named, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", *command, f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1 and result.stderr.startswith(f"error: {named}")
    assert result.stderr.count("\n") == 1, result.stderr


def translate(checkpoint: Path, input_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nmt.translate", "-m", str(checkpoint), "-i", str(input_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip


def test_empty_input_gives_empty_output(trained_checkpoint, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    result = translate(trained_checkpoint, tmp_path / "empty.txt")
    assert result.returncode == 0 and result.stdout == ""


def test_binary_input_is_a_clear_error(trained_checkpoint, tmp_path):
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 4)
    result = translate(trained_checkpoint, tmp_path / "blob.bin")
    assert result.returncode == 1 and "blob.bin:2: invalid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


def translate_long_line(checkpoint: Path, folder: Path, *options: str) -> tuple[subprocess.CompletedProcess, int]:
    source, _ = generate_split("test", 3000, 1234)
    words = " ".join(source).split()[:5000]
    (folder / "long.txt").write_text("A first line .\n" + " ".join(words) + "\nA short line .\n")
    result = subprocess.run(
        [sys.executable, "-m", "nmt.translate", "-m", str(checkpoint), "-i", str(folder / "long.txt"),
         "-o", str(folder / "out.txt"), "--beam-size", "2", "--max-length-ratio", "0.1", "--max-length-offset", "0",
         "--quiet", *options],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    return result, len(words)


def test_a_five_thousand_word_line_translates_within_the_length_bound(trained_checkpoint, tmp_path):
    result, words = translate_long_line(trained_checkpoint, tmp_path, "--max-source-length", "20000")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "out.txt").read_text().split("\n")
    assert len(lines) == 4 and lines[3] == ""
    assert 0 < len(lines[1].split()) <= 0.1 * words * 3  # at most ratio * subwords, words <= subwords


def test_a_source_over_max_source_length_is_refused_or_cut(trained_checkpoint, tmp_path):
    refused, _ = translate_long_line(trained_checkpoint, tmp_path, "--max-source-length", "200")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "long.txt:2: " in refused.stderr and "over max_source_length=200" in refused.stderr
    assert "--truncate-source" in refused.stderr and not (tmp_path / "out.txt").exists()
    cut, _ = translate_long_line(trained_checkpoint, tmp_path, "--max-source-length", "200", "--truncate-source")
    assert cut.returncode == 0, cut.stderr
    lines = (tmp_path / "out.txt").read_text().split("\n")
    assert len(lines) == 4 and 0 < len(lines[1].split()) <= 0.1 * 200 + 1


def test_training_set_empty_after_filtering_says_why(tmp_path):
    write_corpus(tmp_path, "train", [b"a b c d e f g h", b""], [b"x", b"y"])
    write_corpus(tmp_path, "val", [b"a"], [b"x"])
    cfg = DataConfig(corpus="files", dir=str(tmp_path), bpe_vocab_size=60, max_length_ratio=1.5)
    with pytest.raises(NmtError, match=r"no training pairs left.*1 had an empty side.*1 over data.max_length_ratio"):
        prepare(cfg)


def test_a_language_with_no_files_names_the_missing_file(tmp_path):
    write_corpus(tmp_path, "train", [b"a"], [b"x"])
    cfg = DataConfig(corpus="files", dir=str(tmp_path), src_lang="fr", tgt_lang="de")
    with pytest.raises(NmtError, match=r"train\.fr\}?.*file not found|train\.fr.*\[\.gz\]: file not found"):
        load_split(cfg, "train")
