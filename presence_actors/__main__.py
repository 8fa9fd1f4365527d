"""The command line: ``presence-actors [COMMAND] ...`` (``python -m presence_actors``).

Without a command it serves. Every command is one entry of :data:`COMMANDS`.
Expected failures (bad arguments, configuration, files, an unreachable server)
print one line on stderr and exit non-zero; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import urlopen

import attrs
import orjson
import trio
from attrs import frozen

from . import codec
from .client import (
    ConnectionRefused,
    Disconnected,
    EventsDropped,
    PresenceClient,
    PresenceClientError,
    Reconnected,
    open_presence_client,
)
from .config import ConfigError, Settings, load_settings, parse_duration
from .gateway.auth import mint_token
from .gateway.server import EXIT_WRITES_LOST, RunningServer, serve_until_signalled
from .logs import configure_logging
from .model import Status, UserView, is_valid_user_id
from .persistence import DatabaseInUse, Store, WritesLost, open_reader
from .protocol import ErrorCode, PresenceState, Subscribe, UserStatusChange
from .transfer import (
    TransferError,
    import_records,
    read_state,
    state_document,
    write_state,
)
from .workers import Supervisor, check_workers, serve_worker, worker_settings

PROG = "presence-actors"
DEFAULT_CONFIG = Path("config.toml")
# A presence server answers from memory; this long means it is not answering.
HTTP_TIMEOUT = 10.0
# Exit status after Ctrl-C outside a command that expects it (128 + SIGINT).
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2


class CliError(Exception):
    """A failure reported as one line on stderr, with exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# Failures that are the environment's, not the program's: reported in one line.
_EXPECTED = (
    CliError,
    ConfigError,
    TransferError,
    PresenceClientError,
    OSError,
    sqlite3.Error,
    DatabaseInUse,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)", EXIT_USAGE)


@frozen
class Command:
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --- settings ------------------------------------------------------------------------


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (an integer from 0 to 65535)")
    return int(text)


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"settings file (default: ./{DEFAULT_CONFIG} if present, else built-in defaults)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    """The file (``--config``, else ./config.toml if present), the environment, then flags."""
    path = args.config
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    settings = load_settings(path)
    flags = {
        name: value
        for name in ("host", "port", "workers")
        if (value := getattr(args, name, None)) is not None
    }
    return attrs.evolve(settings, server=attrs.evolve(settings.server, **flags))


def _server_url(args: argparse.Namespace) -> str:
    """``--url``, else where the configured server listens (a wildcard host means this one)."""
    if args.url is not None:
        return str(args.url).rstrip("/")
    server = _settings(args).server
    host = server.host if server.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if server.tls_cert_file else "http"
    return f"{scheme}://{host}:{server.port}"


def _user_ids(values: Sequence[str]) -> tuple[str, ...]:
    for value in values:
        if not is_valid_user_id(value):
            raise CliError(
                f"{value!r} is not a userId (1-128 characters from A-Z a-z 0-9 _ . : @ -)"
            )
    return tuple(dict.fromkeys(values))


# --- serve ---------------------------------------------------------------------------


def _workers(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1 to 256)")
    return int(text)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("--host", help="address to listen on (overrides server.host)")
    parser.add_argument("--port", type=_port, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="worker processes sharing the port, each a node (overrides server.workers;"
        " more than 1 needs cluster.redis_url)",
    )
    # Set by the supervising process on the workers it starts (see workers/).
    parser.add_argument("--worker", type=_workers, help=argparse.SUPPRESS)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.worker is not None:
        settings = worker_settings(settings, args.worker, os.getpid())
    check_workers(settings)  # before anything is created, like any other setting
    configure_logging(settings.logging, "" if args.worker is None else f"worker {args.worker}")
    if args.worker is None and settings.server.workers > 1:
        supervisor = Supervisor(
            settings,
            lambda index, port: _worker_command(args, settings.server.workers, index, port),
            lambda base: print(_banner(base, settings), flush=True),
        )
        return trio.run(supervisor.run)
    lost = False
    try:
        trio.run(_serve_until_signalled if args.worker is None else serve_worker, settings)
    except* WritesLost:
        lost = True  # the writer logged what was lost, in one line
    return EXIT_WRITES_LOST if lost else 0


def _worker_command(args: argparse.Namespace, workers: int, index: int, port: int) -> list[str]:
    """How the supervisor starts worker ``index`` of ``workers``: this command line (the
    same settings file, environment and flags), serving on ``port``."""
    command = [sys.executable, "-m", "presence_actors", "serve", "--worker", str(index)]
    command += ["--port", str(port), "--workers", str(workers)]
    config = args.config if args.config is not None else DEFAULT_CONFIG
    if config.is_file():
        command += ["--config", str(config.resolve())]
    if args.host is not None:
        command += ["--host", args.host]
    return command


async def _serve_until_signalled(settings: Settings) -> None:
    async with trio.open_nursery() as nursery:
        server: RunningServer = await nursery.start(serve_until_signalled, settings)
        print(_banner(server.base_url, settings), flush=True)


def _banner(base: str, settings: Settings) -> str:
    websocket = base.replace("http", "ws", 1)
    # In jwt mode the token names the user (a userId, if given, must match it).
    identity = "token=YOUR_JWT" if settings.auth.mode == "jwt" else "userId=YOUR_USER_ID"
    return (
        f"presence_actors is listening (Ctrl-C to stop)\n"
        f"  page       {base}/\n"
        f"  websocket  {websocket}/ws?{identity}\n"
        f"  api        {base}/api/users"
    )


# --- status --------------------------------------------------------------------------


def _url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="the server (default: server.host and server.port of the configuration)"
    )


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    _url_argument(parser)
    parser.add_argument("users", nargs="+", metavar="USER")


def _status(args: argparse.Namespace) -> int:
    ids = _user_ids(args.users)
    base = _server_url(args)
    body = _get_json(f"{base}/api/presence?{urlencode({'ids': ','.join(ids)})}", base)
    users = body.get("users")
    if not isinstance(users, list):
        raise CliError(f"{base} is not a presence server (unexpected answer)")
    views = [codec.view_from_wire(raw) for raw in users]
    width = max((len(_name(view)) for view in views), default=0)
    now_ms = time.time_ns() // 1_000_000
    for view in views:
        print(describe(view, now_ms, width))
    return 0


def _get_json(url: str, base: str) -> dict[str, object]:
    try:
        with urlopen(url, timeout=HTTP_TIMEOUT) as response:
            data = response.read()
    except HTTPError as exc:
        raise CliError(f"{base} refused the request: {_http_problem(exc)}") from None
    except (URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"cannot reach the server at {base}: {reason}") from None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise CliError(f"{base} is not a presence server (its answer is not JSON)") from None
    if not isinstance(body, dict):
        raise CliError(f"{base} is not a presence server (unexpected answer)")
    return body


def _http_problem(exc: HTTPError) -> str:
    try:
        error = orjson.loads(exc.read())["error"]
        return f"HTTP {exc.code} {error['code']}: {error['message']}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"HTTP {exc.code} {exc.reason}"


def _name(view: UserView) -> str:
    return f"{view.user_id} ({view.username})" if view.username else view.user_id


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


# --- watch ---------------------------------------------------------------------------


def _watch_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    _url_argument(parser)
    parser.add_argument(
        "--as",
        dest="as_user",
        metavar="USER",
        help="connect as USER (default: a read-only observer if the server allows it"
        " (web.observer), else cli-<random>)",
    )
    parser.add_argument("users", nargs="+", metavar="USER")


def _watch(args: argparse.Namespace) -> int:
    ids = _user_ids(args.users)
    if args.as_user is not None and not is_valid_user_id(args.as_user):
        raise CliError(f"--as {args.as_user!r} is not a userId")
    return trio.run(_watch_until_signalled, _server_url(args), args.as_user, ids)


async def _watch_until_signalled(url: str, as_user: str | None, ids: tuple[str, ...]) -> int:
    status = 0  # a signal is the normal way out
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
            status = await _watch_as(url, as_user, ids)
            nursery.cancel_scope.cancel()
    return status


async def _watch_as(url: str, as_user: str | None, ids: tuple[str, ...]) -> int:
    """Watch as ``as_user``; without one, as an observer, so as to be nobody's
    device, or as a throwaway user if the server has observers disabled."""
    if as_user is None:
        try:
            async with open_presence_client(url, None, observer=True) as client:
                return await Watcher(client, ids).run()
        except ConnectionRefused as exc:
            if exc.code is not ErrorCode.FORBIDDEN:
                raise
            as_user = f"cli-{secrets.token_hex(3)}"
            _warn(f"{exc.message}; watching as {as_user}")
    async with open_presence_client(url, as_user) as client:
        return await Watcher(client, ids).run()


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


class Watcher:
    """Prints the watched users' state, then each visible change, as it happens."""

    def __init__(self, client: PresenceClient, ids: tuple[str, ...]) -> None:
        self.client = client
        self.ids = ids
        self.shown: dict[str, tuple[Status, str | None, str | None]] = {}

    async def run(self) -> int:
        """Until the client gives up (1) or the caller cancels."""
        await self._subscribe()
        async for event in self.client.events():
            match event:
                case UserStatusChange(view=view) if view.user_id in self.ids:
                    self._show(view, event.timestamp)
                case Disconnected(reconnecting=True):
                    _warn(f"connection lost ({event.reason}); reconnecting")
                case Disconnected():
                    _warn(f"disconnected: {event.reason}")
                case Reconnected():
                    _warn("reconnected")
                    await self._subscribe()  # subscriptions belong to a connection
                case EventsDropped():
                    await self._subscribe()  # some changes were missed: resynchronise
        return 1

    async def _subscribe(self) -> None:
        reply = await self.client.request(Subscribe(user_ids=self.ids))
        if isinstance(reply, PresenceState):
            for view in reply.users:
                self._show(view, reply.timestamp)

    def _show(self, view: UserView, timestamp: int) -> None:
        if self.shown.get(view.user_id) == view.pushed_part():
            return
        self.shown[view.user_id] = view.pushed_part()
        moment = datetime.fromtimestamp(timestamp / 1000)
        message = f'  "{view.status_message}"' if view.status_message else ""
        print(f"{moment:%H:%M:%S}  {view.user_id}  {view.status.value}{message}", flush=True)


# --- import-json / export-json ---------------------------------------------------------


def _file_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("file", type=Path, metavar="FILE")


def _import_json(args: argparse.Namespace) -> int:
    settings = _settings(args)
    state = read_state(args.file)
    if state.problems:
        _warn(f"{'; '.join(state.problems)}: reading the backup {state.path} instead")
    for skipped in state.skipped:
        _warn(f"skipped {skipped}")
    database = settings.persistence.path
    with Store.open(database) as store:
        count = import_records(store, state.records, time.time_ns() // 1_000_000)
    print(f"imported {_count(count, 'user')} from {state.path} into {database} (all offline)")
    return 0


def _export_json(args: argparse.Namespace) -> int:
    database = Path(_settings(args).persistence.path)
    if not database.is_file():
        raise CliError(f"no database at {database} (see persistence.path)")
    with open_reader(database) as reader:
        users = reader.load_users()
    kept = write_state(args.file, state_document(users))
    backup = " (the previous file is kept as its _backup)" if kept else ""
    print(f"exported {_count(len(users), 'user')} from {database} to {args.file}{backup}")
    return 0


# --- token ---------------------------------------------------------------------------


def _ttl(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the token must live longer than 0 s")
    return seconds


def _token_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("user", metavar="USER", help="the token's subject (its userId)")
    parser.add_argument(
        "--ttl", type=_ttl, default=3600.0, help="lifetime such as 30m, 1h, 7d (default 1h)"
    )


def _token(args: argparse.Namespace) -> int:
    [user] = _user_ids([args.user])
    print(mint_token(_settings(args).auth, user, args.ttl))
    return 0


# --- bench ---------------------------------------------------------------------------

# The benchmarks are not part of the installed package: they live beside it in
# a source checkout (``bench/``), with their own load-generator processes.
_BENCH_RUNNER = Path(__file__).resolve().parent.parent / "bench" / "run.py"


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "scenario",
        metavar="SCENARIO",
        help="connections, fanout, query, persistence or broadcast",
    )
    parser.add_argument(
        "options",
        nargs=argparse.REMAINDER,
        help="the scenario's options (see: bench SCENARIO --help)",
    )


def _bench(args: argparse.Namespace) -> int:
    if not _BENCH_RUNNER.exists():
        raise CliError(f"the benchmarks need a source checkout: {_BENCH_RUNNER} does not exist")
    argv = [sys.executable, str(_BENCH_RUNNER), args.scenario, *args.options]
    return subprocess.run(argv, check=False).returncode


# --- simulate --------------------------------------------------------------------------


def _count_argument(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not (text.isascii() and text.isdigit()) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {minimum}")
        return int(text)

    return parse


def _pace(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    from .testing.schedule import FAULTS, MAX_USERS

    parser.add_argument("--seed", type=_count_argument(0), required=True, help="the seed")
    parser.add_argument(
        "--steps", type=_count_argument(1), required=True, help="scheduled events to play"
    )
    parser.add_argument(
        "--users", type=_count_argument(1), default=8, help=f"1 to {MAX_USERS} (default 8)"
    )
    parser.add_argument(
        "--faults",
        default="none",
        help="all, none (the default) or a comma-separated list of: " + ", ".join(FAULTS),
    )
    parser.add_argument(
        "--only", metavar="N,N,...", help="play only these events (as a shrunk trace prints)"
    )
    parser.add_argument(
        "--pace",
        type=_pace,
        metavar="SECONDS",
        help="mean time between two scheduled events (default 0.05: busy clients)",
    )
    parser.add_argument(
        "--fanout", choices=("everyone", "contacts"), help="presence.fanout (default everyone)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="engine settings (default: the built-in defaults; the environment is ignored)",
    )
    parser.add_argument(
        "--no-shrink", action="store_true", help="report a violation without shrinking it"
    )


def _simulate(args: argparse.Namespace) -> int:
    from .testing.command import Invocation, parse_numbers, simulate
    from .testing.schedule import MAX_USERS, parse_faults

    try:
        faults = parse_faults(args.faults)
        only = None if args.only is None else parse_numbers(args.only)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.users > MAX_USERS:
        raise CliError(f"--users {args.users}: at most {MAX_USERS}", EXIT_USAGE)
    invocation = Invocation(
        args.seed, args.steps, args.users, faults, only, args.fanout, args.config, args.pace
    )
    if os.environ.get("PYTHONHASHSEED") != "0":
        # The engine iterates sets of user ids, whose order follows str hashing,
        # which Python salts per process: run again with it fixed.
        argv = [sys.executable, "-m", "presence_actors", "simulate", *invocation.argv()]
        if args.no_shrink:
            argv.append("--no-shrink")
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        return subprocess.run(argv, env=env, check=False).returncode
    settings = load_settings(args.config, environ={})
    if args.fanout is not None:
        settings = attrs.evolve(
            settings, presence=attrs.evolve(settings.presence, fanout=args.fanout)
        )
    started = time.perf_counter()
    lines, result = simulate(invocation, settings, shrinking=not args.no_shrink)
    print("\n".join(lines), flush=True)
    seconds = time.perf_counter() - started
    rate = result.counters.simulated / result.wall_seconds if result.wall_seconds else 0.0
    _warn(
        f"wall time {result.wall_seconds:.3f} s for the run ({rate:,.0f} simulated events/s),"
        f" {seconds:.3f} s in all"
    )
    return 0 if result.ok else 1


# --- dispatch ------------------------------------------------------------------------

COMMANDS: dict[str, Command] = {
    "serve": Command("run the server (the default command)", _serve_arguments, _serve),
    "status": Command(
        "show users' presence, asked of a running server", _status_arguments, _status
    ),
    "watch": Command("print users' presence changes as they happen", _watch_arguments, _watch),
    "import-json": Command(
        "import users from a seed-000 user_state.json file (refused while a server runs)",
        _file_arguments,
        _import_json,
    ),
    "export-json": Command(
        "export users to a seed-000 user_state.json file", _file_arguments, _export_json
    ),
    "token": Command(
        "mint a development JWT signed with auth.jwt_secret", _token_arguments, _token
    ),
    "bench": Command(
        "run a benchmark scenario against its own server (needs the source checkout)",
        _bench_arguments,
        _bench,
    ),
    "simulate": Command(
        "run the engine under a seeded, reproducible schedule with faults, and check it",
        _simulate_arguments,
        _simulate,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Real-time 'who is online' server and tools.")
    parser.set_defaults(run=_serve, config=None, host=None, port=None, workers=None, worker=None)
    # Without a command it serves, so serve's options work here too.
    _serve_arguments(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        status: int = args.run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:
        message = _expected_failure(exc)
        if message is None:
            raise
        _warn(message)
        return exc.status if isinstance(exc, CliError) else 1
    return status


def _expected_failure(exc: BaseException) -> str | None:
    """The one-line report of an expected failure, even inside exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        reports = [_expected_failure(inner) for inner in exc.exceptions]
        return reports[0] if all(reports) else None
    if isinstance(exc, _EXPECTED):
        return str(exc).strip() or type(exc).__name__
    return None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _warn(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
