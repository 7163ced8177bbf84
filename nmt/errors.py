"""The one exception type that entry points turn into a one-line message and a non-zero exit."""

import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NmtError(Exception):
    """A problem with the user's input (files, config, checkpoint) that they can fix."""


class LineError(NmtError):
    """A problem with one of the lines given to translate: `index` is its 0-based position among
    them, so a front end can name the file and line (or the request's item) it came from."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"line {index + 1}: {reason}")
        self.index, self.reason = index, reason


def exit_on_user_error(function: Callable[[], T]) -> T:
    """Run an entry point's body; a user error becomes one line on stderr and exit status 1.

    Set NMT_DEBUG=1 to get the traceback instead.
    """
    try:
        return function()
    except NmtError as error:
        if os.environ.get("NMT_DEBUG") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
