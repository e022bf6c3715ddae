"""What the scripts share: a user's mistake is reported as one line, ``PROG: error: MESSAGE``, exit status 2."""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

USER_ERRORS = (ValueError, OSError)  # bad values and files (incl. CheckpointError, FileNotFoundError, offline)


@contextlib.contextmanager
def user_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Inside the block, a ValueError or OSError ends the program with ``PROG: error: MESSAGE`` on stderr and
    exit status 2 (as argparse reports a bad option), instead of a traceback."""
    try:
        yield
    except USER_ERRORS as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
