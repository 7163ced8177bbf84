"""Reading and writing users' files so that no mistake loses data or exhausts the machine.

- Outputs are written to a hidden temporary file in the target's folder and renamed over the
  target only when complete: an error half-way leaves the old file (or none), never a partial
  one, and a symlink at the target is replaced, not followed.
- An output that is the same file as an input or a model is refused before any work.
- Input lines are read in bounded pieces: a line over the limit is an error naming it, so an
  endless line (/dev/zero) cannot fill the memory. Lines are handed on as soon as no more input is
  ready, so a program (or a person) that writes a line and waits for its answer gets it.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import select
import stat
import sys
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from nmt.errors import NmtError

READ_BYTES = 1 << 16  # per read: lines already waiting beyond it are read at once anyway


def check_distinct(output: Path, others: Iterable[Path], what: str = "an input or model") -> None:
    """Refuse an output that is the same file as one of `others` (through any links)."""
    if not output.exists():
        return
    for other in others:
        if other.exists() and os.path.samefile(output, other):
            raise NmtError(
                f"{output}: is the same file as {other}, {what}; writing it would destroy it, choose another output"
            )


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "w", into_special_files: bool = True) -> Iterator[IO]:
    """A file that becomes `path` when the block ends without an error; else `path` is untouched
    and the error says so. It gets the mode the file had (new: 0666 less the umask). A target that
    is not a regular file (/dev/null, a named pipe, /dev/stdout) is written directly, as it cannot
    be replaced, unless `into_special_files` is False: then it is replaced like any file."""
    encoding = {} if "b" in mode else {"encoding": "utf-8"}
    if into_special_files and path.exists() and not stat.S_ISREG(path.stat().st_mode):
        try:
            with path.open(mode, **encoding) as file:
                yield file
            return
        except OSError as error:
            raise NmtError(f"{path}: cannot write ({error.strerror or error})") from None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise NmtError(f"{path}: cannot write ({error.strerror}); check the folder exists and is writable") from None
    try:
        os.fchmod(handle, _file_mode(path))
        with os.fdopen(handle, mode, **encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except NmtError as error:
        Path(temporary).unlink(missing_ok=True)
        raise NmtError(f"{error}; {path} was not written") from None
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise NmtError(f"{path}: cannot write ({error.strerror or error}); it was not written") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _file_mode(path: Path) -> int:
    """The permissions of the file being replaced, or those a new file would get."""
    try:
        return stat.S_IMODE(path.lstat().st_mode) if path.is_file() and not path.is_symlink() else _default_mode()
    except OSError:
        return _default_mode()


def _default_mode() -> int:
    umask = os.umask(0)  # the only way to read it; set back at once
    os.umask(umask)
    return 0o666 & ~umask


def open_input(name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
    """A file (gzipped if it ends in .gz) or, for "-", standard input, as bytes."""
    if name == "-":
        if sys.stdin is None:
            raise NmtError("<stdin>: standard input is closed; give the input with -i FILE")
        return contextlib.nullcontext(sys.stdin.buffer)
    path = Path(name)
    try:
        return gzip.open(path) if path.suffix == ".gz" else path.open("rb")
    except FileNotFoundError:
        raise NmtError(f"{path}: file not found") from None
    except OSError as error:
        raise NmtError(f"{path}: cannot read ({error.strerror or error})") from None


def _more_is_ready(file: IO[bytes]) -> bool:
    """Whether reading `file` now would return data without waiting (always, for a regular file
    or a compressed one; for a pipe or a terminal, only if something was written)."""
    if isinstance(file, gzip.GzipFile):
        return True
    try:
        return bool(select.select([file.fileno()], [], [], 0)[0])
    except (OSError, ValueError):  # no descriptor to ask (an in-memory stream): it is all there
        return True


def read_chunks(file: IO[bytes], label: str, size: int, max_chars: int) -> Iterator[list[str]]:
    """Lines of a UTF-8 stream, split on "\\n" only (a final "\\r" dropped), in chunks of at most
    `size` lines; a chunk ends early when no more input is ready. A line over `max_chars`
    characters, invalid UTF-8 or a damaged stream is an NmtError naming `label` and the line."""
    chunk: list[str] = []
    pending = b""  # the unfinished line
    number = 0  # lines read so far
    while True:
        try:
            data = file.read1(READ_BYTES)
        except (OSError, EOFError, zlib.error) as error:  # a corrupt or truncated gzip stream, a read error
            raise NmtError(f"{label}: cannot read after line {number} ({error}); is the file complete?") from None
        if data:
            *complete, pending = (pending + data).split(b"\n")
        else:  # the end: a last line without "\n" still counts
            complete, pending = [pending] if pending else [], b""
        for raw in complete:
            number += 1
            chunk.append(_decode(raw, label, number, max_chars))
            if len(chunk) == size:
                yield chunk
                chunk = []
        if len(pending) > 4 * max_chars:  # at most 4 bytes a character: surely over the limit
            raise NmtError(_too_long(label, number + 1, max_chars))
        if not data or (chunk and not _more_is_ready(file)):
            if chunk:
                yield chunk
                chunk = []
            if not data:
                return


def _decode(raw: bytes, label: str, number: int, max_chars: int) -> str:
    try:
        line = raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError as error:
        raise NmtError(f"{label}:{number}: invalid UTF-8 at byte {error.start}; convert it to UTF-8") from None
    if len(line) > max_chars:
        raise NmtError(_too_long(label, number, max_chars))
    return line


def _too_long(label: str, number: int, max_chars: int) -> str:
    return (
        f"{label}:{number}: line longer than {max_chars} characters; split it into sentences, or raise "
        "--max-line-chars if it really is one"
    )
