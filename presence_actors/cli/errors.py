"""How the command line fails: one line on stderr, ``presence-actors: ...``."""

from __future__ import annotations

import sys

PROG = "presence-actors"
EXIT_USAGE = 2


class CliError(Exception):
    """A failure reported as one line on stderr, with exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def warn(message: str) -> None:
    """One line on stderr, prefixed with the program's name."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
