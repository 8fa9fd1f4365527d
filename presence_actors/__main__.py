"""The command line: ``presence-actors [COMMAND] ...`` (``python -m presence_actors``).

Without a command it serves. Every command is one entry of :data:`COMMANDS`.
Expected failures (bad arguments, configuration, files, an unreachable server)
print one line on stderr and exit non-zero; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import NoReturn

import attrs
import trio
from attrs import frozen

from . import __version__
from .cli.errors import EXIT_USAGE, PROG, CliError, warn
from .cli.options import unknown_option
from .cli.preflight import StartupProblem, check_startup, log_file_problem
from .cli.remote import base_url, configured_url, fetch_views, status_lines
from .cli.watch import watch_until_signalled
from .client import PresenceClientError
from .config import ConfigError, Settings, load_settings, parse_duration
from .gateway.auth import mint_token
from .gateway.server import EXIT_WRITES_LOST, RunningServer, serve_until_signalled
from .logs import configure_logging
from .model import is_valid_user_id
from .persistence import DatabaseInUse, Store, WritesLost, open_reader
from .transfer import (
    TransferError,
    import_records,
    read_state,
    state_document,
    write_state,
)
from .workers import Supervisor, check_workers, serve_worker, worker_settings

DEFAULT_CONFIG = Path("config.toml")
# Exit status after Ctrl-C outside a command that expects it (128 + SIGINT).
EXIT_INTERRUPTED = 130


# Failures that are the environment's, not the program's: reported in one line.
_EXPECTED = (
    CliError,
    ConfigError,
    TransferError,
    PresenceClientError,
    OSError,
    sqlite3.Error,
    DatabaseInUse,
    StartupProblem,
)


class _Parser(argparse.ArgumentParser):
    """Usage errors as CliError (one line, exit 2); no abbreviated options."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(allow_abbrev=False, **kwargs)  # type: ignore[arg-type]

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
    """``--url`` (checked), else where the configured server listens."""
    if args.url is not None:
        return base_url(args.url)
    return configured_url(_settings(args).server)


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
    try:
        configure_logging(settings.logging, "" if args.worker is None else f"worker {args.worker}")
    except OSError as exc:
        raise log_file_problem(settings.logging, exc) from None
    check_startup(settings)
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


# --- status, watch ---------------------------------------------------------------------


def _remote_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument(
        "--url",
        help="the server: http(s)://HOST:PORT, or its ws(s):// URL"
        " (default: server.host and server.port of the configuration)",
    )
    parser.add_argument(
        "--token", help="a JWT to send (a jwt-mode server needs one; see the token command)"
    )


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    _remote_arguments(parser)
    parser.add_argument("users", nargs="+", metavar="USER")


def _status(args: argparse.Namespace) -> int:
    ids = _user_ids(args.users)
    for line in status_lines(fetch_views(_server_url(args), ids, args.token)):
        print(line)
    return 0


def _watch_arguments(parser: argparse.ArgumentParser) -> None:
    _remote_arguments(parser)
    parser.add_argument(
        "--as",
        dest="as_user",
        metavar="USER",
        help="see what USER may see (none mode; in jwt mode the token's user); the watch"
        " never shows USER online",
    )
    parser.add_argument("users", nargs="+", metavar="USER")


def _watch(args: argparse.Namespace) -> int:
    ids = _user_ids(args.users)
    if args.as_user is not None:
        _user_ids([args.as_user])
    base = _server_url(args)
    return trio.run(watch_until_signalled, base, ids, args.as_user, args.token)


# --- import-json / export-json ---------------------------------------------------------


def _file_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("file", type=Path, metavar="FILE")


def _import_json(args: argparse.Namespace) -> int:
    settings = _settings(args)
    state = read_state(args.file)
    if state.problems:
        warn(f"{'; '.join(state.problems)}: reading the backup {state.path} instead")
    for skipped in state.skipped:
        warn(f"skipped {skipped}")
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
    warn(
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
    parser, _ = _parsers()
    return parser


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line's parser, and each command's own by name."""
    parser = _Parser(prog=PROG, description="Real-time 'who is online' server and tools.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    parser.set_defaults(run=_serve, config=None, host=None, port=None, workers=None, worker=None)
    # Without a command it serves, so serve's options work here too.
    _serve_arguments(parser)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
        commands[name] = sub
    return parser, commands


def _version() -> str:
    """The installed distribution's version (the package's own, from a bare checkout)."""
    try:
        return metadata.version("presence-actors")
    except metadata.PackageNotFoundError:
        return __version__


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; an unknown option is named as such (CliError, exit 2)."""
    parser, commands = _parsers()
    problem = unknown_option(parser, commands, argv, free_form=_FREE_FORM)
    if problem is not None:
        where, message = problem
        where.error(message)
    return parser.parse_args(argv)


# Commands whose options belong to something else (bench passes them to its runner).
_FREE_FORM = frozenset({"bench"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        args = parse_arguments(sys.argv[1:] if argv is None else argv)
        status: int = args.run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:
        if _interrupted(exc):
            return EXIT_INTERRUPTED
        message = _expected_failure(exc)
        if message is None:
            raise
        warn(message)
        return exc.status if isinstance(exc, CliError) else 1
    return status


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C that reached us through task groups: KeyboardInterrupt and nothing else."""
    if not isinstance(exc, BaseExceptionGroup):
        return False
    _, rest = exc.split(KeyboardInterrupt)
    return rest is None


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


if __name__ == "__main__":
    sys.exit(main())
