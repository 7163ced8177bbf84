"""Mistakes a user makes with nmt-translate end in one line of error or a correct result, and
nothing on disk is lost: outputs that are inputs, errors half-way, endless or damaged input,
planted links."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from nmt import synthetic
from nmt.errors import NmtError
from nmt.files import atomic_output, read_chunks

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tiny_config().data
    lines, _ = synthetic.generate_split("test", data.synthetic_train_pairs, data.synthetic_seed)
    path = tmp_path_factory.mktemp("source") / "in.txt"
    path.write_text("".join(f"{line}\n" for line in lines[:6]), encoding="utf-8")
    return path


def translate(*args: str, **popen: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nmt.translate", "--quiet", *args], capture_output=True, text=True, cwd=REPO,
        timeout=120, **popen,
    )  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


def test_an_output_that_is_the_input_or_the_model_is_refused(trained_checkpoint: Path, source: Path, tmp_path: Path):
    before = source.read_bytes(), trained_checkpoint.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(trained_checkpoint)
    for output in (source, trained_checkpoint, link):
        result = translate("-m", str(trained_checkpoint), "-i", str(source), "-o", str(output))
        assert_one_line_error(result, str(output), "choose another output")
    assert (source.read_bytes(), trained_checkpoint.read_bytes()) == before


def test_an_error_half_way_leaves_the_old_output_and_says_so(trained_checkpoint: Path, source: Path, tmp_path: Path):
    broken = tmp_path / "broken.txt"
    broken.write_bytes(source.read_bytes() + b"bad \xff byte\n")
    output = tmp_path / "out.txt"
    output.write_text("yesterday's translations\n")
    result = translate("-m", str(trained_checkpoint), "-i", str(broken), "-o", str(output), "--chunk-lines", "2")
    assert_one_line_error(result, "broken.txt:7: invalid UTF-8", f"{output} was not written")
    assert output.read_text() == "yesterday's translations\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.txt", "out.txt"]  # no temporary left

    good = translate("-m", str(trained_checkpoint), "-i", str(source), "-o", str(output))
    assert good.returncode == 0 and len(output.read_text().splitlines()) == 6


def test_a_folder_or_an_unwritable_output_is_one_line(trained_checkpoint: Path, source: Path, tmp_path: Path):
    assert_one_line_error(translate("-m", str(trained_checkpoint), "-i", str(source), "-o", str(tmp_path)), "folder")
    nowhere = tmp_path / "no" / "such" / "folder" / "out.txt"
    assert_one_line_error(translate("-m", str(trained_checkpoint), "-i", str(source), "-o", str(nowhere)), str(nowhere))


def test_an_endless_line_is_stopped_at_the_limit(trained_checkpoint: Path) -> None:
    result = translate("-m", str(trained_checkpoint), "-i", "/dev/zero", "--max-line-chars", "1000")
    assert_one_line_error(result, "/dev/zero:1: line longer than 1000 characters", "--max-line-chars")


def test_a_truncated_gzip_input_is_one_line(trained_checkpoint: Path, source: Path, tmp_path: Path):
    packed = gzip.compress(source.read_bytes() * 50)
    (tmp_path / "cut.txt.gz").write_bytes(packed[: len(packed) // 2])
    result = translate("-m", str(trained_checkpoint), "-i", str(tmp_path / "cut.txt.gz"))
    assert_one_line_error(result, "cut.txt.gz: cannot read after line", "is the file complete?")


def test_a_closed_stdin_is_one_line(trained_checkpoint: Path) -> None:
    result = translate("-m", str(trained_checkpoint), preexec_fn=lambda: os.close(0))  # noqa: PLW1509
    assert_one_line_error(result, "standard input is closed", "-i FILE")


def test_heatmaps_replace_planted_links_and_stop_at_the_limit(trained_checkpoint: Path, source: Path, tmp_path):
    maps, victim = tmp_path / "maps", tmp_path / "victim.txt"
    maps.mkdir()
    victim.write_text("keep me\n")
    (maps / "000001.png").symlink_to(victim)
    args = ["-m", str(trained_checkpoint), "-i", str(source), "--attention-dir", str(maps), "--max-heatmaps", "3"]
    result = translate(*args)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "keep me\n"
    assert sorted(path.name for path in maps.iterdir()) == ["000001.png", "000002.png", "000003.png"]
    assert not (maps / "000001.png").is_symlink() and (maps / "000001.png").read_bytes()[:8] == PNG_SIGNATURE


def test_read_chunks_bounds_lines_and_keeps_the_last_one_without_newline() -> None:
    chunks = list(read_chunks(io.BytesIO(b"a\r\nb\n\nc"), "mem", size=2, max_chars=10))
    assert chunks == [["a", "b"], ["", "c"]]
    with pytest.raises(NmtError, match="mem:2: line longer than 3 characters"):
        list(read_chunks(io.BytesIO(b"abc\nabcd\n"), "mem", size=5, max_chars=3))
    with pytest.raises(NmtError, match="mem:1: line longer than 3 characters"):
        list(read_chunks(io.BytesIO(b"x" * 100_000), "mem", size=5, max_chars=3))


def test_atomic_output_keeps_the_old_file_when_the_block_fails(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(NmtError, match="report.json was not written"), atomic_output(target) as file:
        file.write("new, half")
        raise NmtError("input.txt:3: something is wrong")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_output(target) as file:
        file.write("new")
    assert target.read_text() == "new"


def test_a_corrupt_gzip_input_is_one_line(trained_checkpoint: Path, source: Path, tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(source.read_bytes() * 50))
    packed[len(packed) // 2] ^= 0xFF  # a flipped byte: zlib, not EOF, complains
    (tmp_path / "bad.txt.gz").write_bytes(bytes(packed))
    result = translate("-m", str(trained_checkpoint), "-i", str(tmp_path / "bad.txt.gz"))
    assert_one_line_error(result, "bad.txt.gz: cannot read after line")


def test_outputs_keep_their_permissions_and_special_files_are_written_not_replaced(tmp_path: Path) -> None:
    existing = tmp_path / "existing.txt"
    existing.write_text("old")
    existing.chmod(0o640)
    with atomic_output(existing) as file:
        file.write("new")
    assert (existing.stat().st_mode & 0o777) == 0o640 and existing.read_text() == "new"
    umask = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "fresh.txt") as file:
            file.write("x")
    finally:
        os.umask(umask)
    assert ((tmp_path / "fresh.txt").stat().st_mode & 0o777) == 0o644
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    with atomic_output(fifo) as file:
        file.write("through the pipe\n")
    assert reader.communicate(timeout=10)[0] == b"through the pipe\n" and fifo.is_fifo()
