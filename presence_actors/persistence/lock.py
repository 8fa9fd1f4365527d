"""One process per database: an exclusive ``flock`` on a lock file beside it.

The lock is taken before the database is opened, so a second server (or an
``import-json``) never reads or writes a file that a live server owns: no crash
recovery over a running server's users, no second writer. The kernel releases a
``flock`` when its holder exits, however it exits (``kill -9`` included), so
there is never a stale lock to clean up; the file itself stays (deleting a lock
file races with the next process opening it). The holder's pid is written into
it, for the refusal message only: the ``flock`` is what counts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

# Wide enough for any pid, and always this wide, so that rewriting it in an
# existing lock file needs no new disk space (a full disk must not stop a start).
_PID_WIDTH = 10


class DatabaseInUse(Exception):
    """Another process holds the database; the message names it and its pid."""


def lock_path(database: str | Path) -> Path:
    """The lock file of ``database``: ``presence.db`` -> ``presence.db.lock``."""
    database = Path(database)
    return database.with_name(database.name + ".lock")


class DatabaseLock:
    """An exclusive ``flock`` held for the lifetime of this object (until :meth:`release`)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, database: str | Path) -> Self:
        """Lock ``database`` for this process, or raise :class:`DatabaseInUse` at once.

        Never waits: a held lock means a live process is using the database. The
        lock file's directory must exist.
        """
        path = lock_path(database)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "a process whose pid is not recorded"
            raise DatabaseInUse(
                f"the database {database} is in use by another process ({who}, holding"
                f" {path}): stop it first, or give this one another persistence.path"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Best effort: the pid only makes the message above better. A new lock file
        # on a full disk cannot take it, and that must not stop a start.
        with contextlib.suppress(OSError):
            os.pwrite(fd, f"{os.getpid():>{_PID_WIDTH}}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Release the lock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock

    def __del__(self) -> None:
        # Like a file object: a lock nobody can release any more is released, so a
        # Store dropped without close() (or its connection closed alone) frees the database.
        self.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
