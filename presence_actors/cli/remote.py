"""Asking a running server from the command line: its URL, and ``status``.

``--url`` is checked before anything is sent: the same URLs work for every
command that asks a server (``http://``, ``https://``, ``ws://``, ``wss://``,
with or without the ``/ws`` path), and anything else is refused in one line
saying what would have been accepted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit, urlunsplit
from urllib.request import Request, urlopen

import orjson

from .. import codec
from ..config import ServerSettings
from ..model import UserView
from .errors import CliError

# A presence server answers from memory; this long means it is not answering.
HTTP_TIMEOUT = 10.0
# The largest answer read: 1000 users (the most one request may name) with ten
# devices each are under 3 MB; a bigger answer is not from a presence server.
MAX_ANSWER_BYTES = 8 << 20
# The same scheme for the page, the API and the stream; the WebSocket names are
# accepted because the server prints its /ws URL next to the others.
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def base_url(text: str) -> str:
    """The server's base URL (``http(s)://HOST:PORT[/prefix]``) from a ``--url`` value.

    Raises CliError, naming the value, for anything that is not an HTTP or
    WebSocket URL with a host.
    """
    parts = urlsplit(text)
    scheme = _SCHEMES.get(parts.scheme.lower())
    try:
        valid = scheme is not None and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is not a number, or out of range
        valid = False
    if not valid or parts.query or parts.fragment:
        hint = f" (did you mean http://{text}?)" if text and "://" not in text else ""
        raise CliError(
            f"--url {text!r} is not a server URL: expected http://HOST:PORT"
            f" (or https://, ws://, wss://){hint}"
        )
    assert scheme is not None
    path = parts.path.rstrip("/")
    path = path.removesuffix("/ws")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def configured_url(server: ServerSettings) -> str:
    """Where the configured server listens (a wildcard host means this machine)."""
    host = server.host if server.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls_cert_file else "http"
    return f"{scheme}://{host}:{server.port}"


def fetch_views(base: str, ids: Sequence[str], token: str | None) -> list[UserView]:
    """The users as the caller may see them (``GET /api/presence``), in the order asked.

    Anonymous without ``token``: a ``none``-mode server then shows what anyone
    may see, and a ``jwt``-mode one refuses (the CliError says to give --token).
    """
    url = f"{base}/api/presence?{urlencode({'ids': ','.join(ids)})}"
    body = _get_json(url, base, token)
    users = body.get("users")
    if not isinstance(users, list):
        raise CliError(f"{base} is not a presence server (unexpected answer)")
    try:
        return [codec.view_from_wire(raw) for raw in users]
    except codec.ServerMessageError as exc:
        raise CliError(f"{base} is not a presence server ({exc})") from None


def _get_json(url: str, base: str, token: str | None) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urlopen(Request(url, headers=headers), timeout=HTTP_TIMEOUT) as response:
            data = response.read(MAX_ANSWER_BYTES + 1)
    except HTTPError as exc:
        raise CliError(f"{base} refused the request: {_http_problem(exc, token)}") from None
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the server at {base}: {reason}") from None
    if len(data) > MAX_ANSWER_BYTES:
        raise CliError(f"{base} is not a presence server (its answer is over 8 MiB)")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CliError(f"{base} is not a presence server (its answer is not JSON)") from None
    if not isinstance(body, dict):
        raise CliError(f"{base} is not a presence server (unexpected answer)")
    return body


def _http_problem(exc: HTTPError, token: str | None) -> str:
    try:
        error = orjson.loads(exc.read(64 * 1024))["error"]
        problem = f"HTTP {exc.code} {error['code']}: {error['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        problem = f"HTTP {exc.code} {exc.reason}"
    if exc.code == 401 and token is None:
        problem += " (the server signs users in with tokens: give --token)"
    return problem


def _name(view: UserView) -> str:
    return f"{view.user_id} ({view.username})" if view.username else view.user_id


def status_lines(views: Sequence[UserView], now_ms: int | None = None) -> list[str]:
    """One line per user, the names in one column."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    width = max((len(_name(view)) for view in views), default=0)
    return [describe(view, now, width) for view in views]


def describe(view: UserView, now_ms: int, width: int = 0) -> str:
    """One line about a user: id (and name, in a column ``width`` wide), status,
    when last seen, status message."""
    if view.last_seen is None:
        seen = "never seen"
    elif view.online:
        seen = f"active {ago(now_ms - view.last_seen)}"
    else:
        moment = datetime.fromtimestamp(view.last_seen / 1000)
        seen = f"last seen {moment:%Y-%m-%d %H:%M:%S} ({ago(now_ms - view.last_seen)})"
    message = f'  "{view.status_message}"' if view.status_message else ""
    return f"{_name(view):<{width}}  {view.status.value:<7}  {seen}{message}"


def ago(elapsed_ms: int) -> str:
    """``just now``, ``42 s ago``, ``5 min ago``, ``3 h ago``, ``12 d ago``."""
    seconds = elapsed_ms // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= max(size, 5):
            return f"{seconds // size} {unit} ago"
    return "just now"
