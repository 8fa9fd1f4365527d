"""Checks the command line runs before the server starts.

Each setting that names something outside the process (a file, a directory,
an address to listen on) is tried here, and a problem is reported as one line
that names the setting and the value, instead of an errno raised from deep
inside the start (``[Errno 2] No such file or directory`` says neither which
file nor which setting).

The checks mirror what the start does next and leave nothing behind but the
directories the start would create anyway: the address is bound and released
(with ``SO_REUSEADDR``, and ``SO_REUSEPORT`` when worker processes will share it,
as hypercorn binds it), the TLS pair is loaded into a throwaway context. A race
with another process taking the port in between is possible; the start then
fails with the plain errno.
"""

from __future__ import annotations

import errno
import socket
import ssl
from pathlib import Path

from ..config import LoggingSettings, ServerSettings, Settings
from ..persistence import DatabaseLock


class StartupProblem(Exception):
    """A setting the server cannot start with; the message is one line that names it."""


def check_startup(settings: Settings) -> None:
    """Raise :class:`StartupProblem` for the first setting the start would fail on.

    The order is the start's: the database (a live holder of its lock is
    reported as the start reports it, :class:`~..persistence.DatabaseInUse`),
    the TLS files, then the address.
    (The log file is opened before any of these: :func:`log_file_problem`.)
    """
    if not settings.cluster.redis_url:  # a cluster node opens no database
        _check_database_path(settings.persistence.path)
    _check_tls(settings.server)
    _check_listen(settings.server)


def log_file_problem(settings: LoggingSettings, exc: OSError) -> StartupProblem:
    """What to say when opening ``logging.file`` (or creating its directory) failed."""
    return StartupProblem(f"logging.file = {settings.file!r}: cannot open it: {_reason(exc)}")


def _check_database_path(text: str) -> None:
    path = Path(text)
    name = f"persistence.path = {text!r}"
    if path.is_dir():
        raise StartupProblem(f"{name}: is a directory (name the database file in it)")
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise StartupProblem(f"{name}: {ancestor} is not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupProblem(
            f"{name}: cannot create its directory {parent}: {_reason(exc)}"
        ) from None
    # The lock file is created beside the database (as are its -wal and -shm):
    # taking the lock tries the directory, and a live holder is named first, as
    # the start itself would (DatabaseInUse), before the address is tried.
    try:
        DatabaseLock.acquire(path).release()
    except OSError as exc:
        raise StartupProblem(f"{name}: cannot create files in {parent}: {_reason(exc)}") from None


def _check_tls(server: ServerSettings) -> None:
    if not (server.tls_cert_file or server.tls_key_file):
        return
    pair = (("tls_cert_file", server.tls_cert_file), ("tls_key_file", server.tls_key_file))
    for key, value in pair:
        if not value:
            raise StartupProblem(
                f"server.{key} is empty: TLS needs server.tls_cert_file and server.tls_key_file"
            )
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            raise StartupProblem(
                f"server.{key} = {value!r}: cannot read it: {_reason(exc)}"
            ) from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(server.tls_cert_file, server.tls_key_file)
    except ssl.SSLError as exc:
        raise StartupProblem(
            f"server.tls_cert_file = {server.tls_cert_file!r}, server.tls_key_file = "
            f"{server.tls_key_file!r}: not a PEM certificate and its private key"
            f" ({exc.reason or exc})"
        ) from None


def _check_listen(server: ServerSettings) -> None:
    host, port = server.host, server.port
    # As hypercorn does: an IPv6 socket for a host with a colon, IPv4 otherwise.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.getaddrinfo(host or None, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupProblem(
            f"server.host = {host!r}: cannot resolve it to an address ({exc.strerror})"
        ) from None
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if server.workers > 1:  # worker processes share the port, as they will bind it
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupProblem(_bind_problem(where, server, exc)) from None


def _bind_problem(where: str, server: ServerSettings, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where} (server.host, server.port): the port is in use"
            " by another process (stop it, or choose another server.port or --port)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"server.host = {server.host!r}: not an address of this machine"
    if exc.errno == errno.EACCES and 0 < server.port < 1024:
        return (
            f"cannot listen on {where}: server.port = {server.port} is below 1024, which"
            " needs root or CAP_NET_BIND_SERVICE (or use a port above 1023 behind a proxy)"
        )
    return f"cannot listen on {where} (server.host, server.port): {_reason(exc)}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
