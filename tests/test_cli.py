"""The command line: serving and shutting down, asking a server, moving users in and out."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import jwt
import pytest
import trio
from trio_websocket import ConnectionClosed

from presence_actors import protocol as p
from presence_actors.__main__ import _serve, build_parser, main
from presence_actors.cli.remote import ago
from presence_actors.client import Disconnected, open_presence_client
from presence_actors.model import Status
from presence_actors.persistence import open_reader

from .process_harness import child_env
from .server_harness import running_server, ws_client
from .test_client import socket_that_refuses

SEED_STATE = {
    "user-123": {
        "userId": "user-123",
        "connectionId": "conn-456",
        "status": "online",
        "lastSeen": "2023-04-25T10:30:00.000Z",
        "username": "john_doe",
    },
    "user-456": {
        "userId": "user-456",
        "connectionId": "conn-789",
        "status": "offline",
        "lastSeen": "2023-04-25T11:45:00.000Z",
        "username": "jane_smith",
    },
}
# Python starts slowly on a busy machine; the server itself is up in milliseconds.
STARTUP_TIMEOUT = 30


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f"[persistence]\npath = {json.dumps(str(tmp_path / 'presence.db'))}\n"
        '[logging]\nfile = ""\n',
        encoding="utf-8",
    )
    return config


def database_users(tmp_path: Path) -> dict[str, tuple[object, ...]]:
    with open_reader(tmp_path / "presence.db") as reader:
        return {
            u.user_id: (u.username, u.status_message, u.last_status, u.last_seen)
            for u in reader.load_users()
        }


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("presence-actors: ")
    return lines[0]


# --- processes ------------------------------------------------------------------------


async def read_until(stream: trio.abc.ReceiveStream, pattern: str, seen: bytearray) -> str:
    """Read ``stream`` into ``seen`` until its text matches ``pattern``; the text."""
    while not re.search(pattern, seen.decode()):
        chunk = await stream.receive_some()
        assert chunk, f"the process closed its output; it said: {seen.decode()!r}"
        seen += chunk
    return seen.decode()


@asynccontextmanager
async def cli_process(tmp_path: Path, *args: str) -> AsyncIterator[trio.Process]:
    """``python -m presence_actors ARGS`` with stdout piped; killed if still running."""
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "presence_actors", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
            env=child_env(),
        )
        try:
            yield process
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[trio.Process, str, str]]:
    """A server process on a free port, once it listens: the process, its base URL
    and what it printed."""
    config = write_config(tmp_path)
    async with cli_process(tmp_path, "serve", "--config", str(config), "--port", "0") as server:
        assert server.stdout is not None
        with trio.fail_after(STARTUP_TIMEOUT):
            text = await read_until(server.stdout, r"api +\S+\n", bytearray())
        match = re.search(r"page +(http://127\.0\.0\.1:\d+)/\n", text)
        assert match is not None, text
        yield server, match[1], text


async def test_serve_prints_its_urls_and_shuts_down_on_sigterm_keeping_state(
    tmp_path: Path,
) -> None:
    async with served(tmp_path) as (server, base, _):
        assert server.stdout is not None
        with trio.fail_after(10):
            async with open_presence_client(base, "alice", reconnect=False) as alice:
                await alice.request(p.Identify(username="Alice"))
                await alice.request(p.SetStatus(status=Status.BUSY, status_message="call"))
                server.send_signal(signal.SIGTERM)
                with trio.fail_after(5):
                    code = await server.wait()
                events = [event async for event in alice.events()]
        rest = (await server.stdout.receive_some()).decode()
    output = (tmp_path / "stderr.txt").read_text()
    assert code == 0, output
    assert events[-1] == Disconnected(1001, "server shutting down", reconnecting=False)
    assert rest == ""
    username, message, status, last_seen = database_users(tmp_path)["alice"]
    assert (username, message, status) == ("Alice", "call", Status.OFFLINE)
    assert last_seen is not None
    assert "Traceback" not in output


async def test_serve_prints_the_page_websocket_and_api_urls(tmp_path: Path) -> None:
    async with served(tmp_path) as (server, base, text):
        server.send_signal(signal.SIGINT)
        with trio.fail_after(5):
            assert await server.wait() == 0
    assert text.splitlines()[1:] == [
        f"  page       {base}/",
        f"  websocket  {base.replace('http', 'ws')}/ws?userId=YOUR_USER_ID",
        f"  api        {base}/api/users",
    ]


@pytest.mark.parametrize(
    ("observers", "as_user"),
    [(True, []), (False, []), (False, ["--as", "cli"])],
)
async def test_watch_prints_changes_until_terminated(
    tmp_path: Path, observers: bool, as_user: list[str]
) -> None:
    async with running_server(tmp_path, web={"observer": observers}) as server:
        argv = ["watch", "--url", server.base_url, *as_user, "bob"]
        async with cli_process(tmp_path, *argv) as watcher:
            assert watcher.stdout is not None
            seen = bytearray()
            with trio.fail_after(STARTUP_TIMEOUT):
                await read_until(watcher.stdout, r"bob  offline\n", seen)
            with trio.fail_after(5):
                async with ws_client(server, "bob") as bob:
                    await bob.request(
                        {"type": "set_status", "status": "busy", "statusMessage": "call"},
                        "status_updated",
                    )
                    text = await read_until(watcher.stdout, r"bob  busy.*\n", seen)
            watcher.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                code = await watcher.wait()
    assert code == 0
    assert [line.split("  ", 1)[1] for line in text.splitlines()] == [
        "bob  offline",
        "bob  online",
        'bob  busy  "call"',
    ]
    assert (tmp_path / "stderr.txt").read_text() == ""


# --- status ---------------------------------------------------------------------------


async def test_status_prints_one_line_per_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        running_server(tmp_path) as server,
        ws_client(server, "alice") as alice,
    ):
        await alice.request({"type": "identify", "username": "Alice"}, "identified")
        await alice.request(
            {"type": "set_status", "status": "busy", "statusMessage": "in a call"},
            "status_updated",
        )
        async with ws_client(server, "carol") as carol:
            await carol.send({"type": "logout"})
            with pytest.raises(ConnectionClosed):  # logged out: offline at once
                await carol.next()
        argv = ["status", "--url", server.base_url, "alice", "bob", "carol"]
        with trio.fail_after(10):
            code = await trio.to_thread.run_sync(main, argv)
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == 'alice (Alice)  busy     active just now  "in a call"'
    assert out[1] == "bob            offline  never seen"
    assert re.fullmatch(
        r"carol          offline  last seen \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(just now\)", out[2]
    )


def test_ago_speaks_in_the_largest_unit() -> None:
    assert [ago(ms) for ms in (-5, 4_999, 42_000, 300_000, 3 * 3_600_000, 12 * 86_400_000)] == [
        "just now",
        "just now",
        "42 s ago",
        "5 min ago",
        "3 h ago",
        "12 d ago",
    ]


# --- import-json / export-json ------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def import_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, state: Path
) -> tuple[int, str, str]:
    return run_cli(capsys, "import-json", "--config", str(write_config(tmp_path)), str(state))


def test_import_json_reads_the_seed_format_as_offline_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "user_state.json"
    state.write_text(json.dumps({**SEED_STATE, "bad id!": {"username": "x"}}))
    code, out, err = run_cli(
        capsys, "import-json", "--config", str(write_config(tmp_path)), str(state)
    )
    assert code == 0
    assert out == f"imported 2 users from {state} into {tmp_path / 'presence.db'} (all offline)\n"
    assert "skipped 'bad id!': not a valid userId" in one_error_line(err)
    assert database_users(tmp_path) == {
        "user-123": ("john_doe", None, Status.OFFLINE, 1682418600000),
        "user-456": ("jane_smith", None, Status.OFFLINE, 1682423100000),
    }


@pytest.mark.parametrize(
    ("main_file", "problem"),
    [("{ not json", "is not valid JSON"), (None, "does not exist")],
)
def test_import_json_falls_back_to_the_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], main_file: str | None, problem: str
) -> None:
    state = tmp_path / "user_state.json"
    if main_file is not None:
        state.write_text(main_file)
    (tmp_path / "user_state_backup.json").write_text(json.dumps(SEED_STATE))
    code, out, err = run_cli(
        capsys, "import-json", "--config", str(write_config(tmp_path)), str(state)
    )
    assert code == 0
    assert out.startswith(f"imported 2 users from {tmp_path / 'user_state_backup.json'}")
    line = one_error_line(err)
    assert problem in line
    assert "reading the backup" in line
    assert set(database_users(tmp_path)) == {"user-123", "user-456"}


def test_import_json_of_garbage_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "user_state.json"
    state.write_bytes(b"\x00\xff garbage")
    code, out, err = run_cli(
        capsys, "import-json", "--config", str(write_config(tmp_path)), str(state)
    )
    assert (code, out) == (1, "")
    line = one_error_line(err)
    assert "is not valid JSON" in line
    assert "user_state_backup.json does not exist" in line


def test_import_keeps_newer_data_already_in_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path))
    newer = tmp_path / "newer.json"
    newer.write_text(
        json.dumps({"user-123": {"lastSeen": "2024-01-01T00:00:00.000Z", "statusMessage": "hi"}})
    )
    state = tmp_path / "user_state.json"
    state.write_text(json.dumps(SEED_STATE))
    assert run_cli(capsys, "import-json", "--config", config, str(newer))[0] == 0
    assert run_cli(capsys, "import-json", "--config", config, str(state))[0] == 0
    assert database_users(tmp_path)["user-123"] == ("john_doe", "hi", Status.OFFLINE, 1704067200000)


def test_export_json_round_trips_and_keeps_a_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(write_config(tmp_path))
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(SEED_STATE))
    assert run_cli(capsys, "import-json", "--config", config, str(seed))[0] == 0
    exported = tmp_path / "out" / "user_state.json"
    exported.parent.mkdir()
    code, out, _ = run_cli(capsys, "export-json", "--config", config, str(exported))
    assert (code, out) == (0, f"exported 2 users from {tmp_path / 'presence.db'} to {exported}\n")
    first = json.loads(exported.read_text())
    assert first == {
        user_id: {**entry, "connectionId": None, "status": "offline", "statusMessage": None}
        for user_id, entry in SEED_STATE.items()
    }

    # Into a fresh database and out again: nothing changes, the old file is the backup.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fresh_config = str(write_config(fresh))
    assert run_cli(capsys, "import-json", "--config", fresh_config, str(exported))[0] == 0
    code, out, _ = run_cli(capsys, "export-json", "--config", fresh_config, str(exported))
    assert out.endswith("(the previous file is kept as its _backup)\n")
    assert json.loads(exported.read_text()) == first
    assert json.loads((exported.parent / "user_state_backup.json").read_text()) == first
    assert not list(exported.parent.glob("*.tmp"))


def test_export_json_without_a_database_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        capsys, "export-json", "--config", str(write_config(tmp_path)), str(tmp_path / "x.json")
    )
    assert code == 1
    assert "no database at" in one_error_line(err)


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["serve", "--port", "99999"], 2, "'99999' is not a port"),
        (["serve", "--config", "missing.toml"], 1, "config file missing.toml not found"),
        (["status", "--url", "http://127.0.0.1:{port}", "alice"], 1, "cannot reach the server"),
        (["import-json", "nothing.json"], 1, "nothing.json does not exist"),
    ],
)
def test_failures_are_one_line_and_a_non_zero_exit(
    tmp_path: Path, argv: list[str], status: int, message: str
) -> None:
    with socket_that_refuses() as port:
        result = subprocess.run(
            [sys.executable, "-m", "presence_actors", *(a.format(port=port) for a in argv)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
        )
    assert result.returncode == status
    assert message in one_error_line(result.stderr)
    assert result.stdout == ""


def test_an_invalid_config_file_is_reported_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[server]\nport = 'x'\n")
    code, _, err = run_cli(capsys, "status", "--config", str(config), "alice")
    assert code == 1
    assert one_error_line(err) == (
        "presence-actors: server.port = 'x': expected an integer from 0 to 65535"
    )


def test_token_mints_a_jwt_the_server_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[auth]\nmode = "jwt"\njwt_secret = "cli-secret-cli-secret-cli-secret-1"\n')
    status, out, _ = run_cli(capsys, "token", "alice", "--ttl", "2h", "--config", str(config))
    assert status == 0
    claims = jwt.decode(out.strip(), "cli-secret-cli-secret-cli-secret-1", algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert 7190 <= claims["exp"] - claims["iat"] <= 7200
    status, _, err = run_cli(capsys, "token", "alice", "--config", str(tmp_path / "missing.toml"))
    assert status == 1
    assert "missing.toml" in err
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    status, _, err = run_cli(capsys, "token", "alice", "--config", str(empty))
    assert (status, "jwt_secret" in err) == (1, True)
    status, _, err = run_cli(capsys, "token", "alice", "--ttl", "soon", "--config", str(config))
    assert status == 2
    assert "Traceback" not in err


def test_bench_runs_a_scenario_and_prints_its_figures_as_json(tmp_path: Path) -> None:
    """``bench persistence`` is the one scenario without a server: quick enough for a test."""
    argv = ["bench", "persistence", "--rows", "2000", "--json", "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-m", "presence_actors", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["scenario"] == "persistence"
    [figures] = document["runs"]
    # Batching is the point of the PersistenceActor: it must beat a commit per row.
    assert figures["batched_rows_per_s"] > figures["unbatched_rows_per_s"] > 0
    assert figures["mb_per_million_events"] > 0


def test_bench_of_an_unknown_scenario_fails_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "presence_actors", "bench", "nonesuch"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "nonesuch" in result.stderr


def test_serve_options_work_without_the_serve_command() -> None:
    args = build_parser().parse_args(["--port", "0", "--config", "x.toml"])
    assert (args.run, args.port, str(args.config)) == (_serve, 0, "x.toml")
