"""Issue 14, item 4: every command-line failure is one line on stderr that names what is
wrong (the option, the setting, the address), never a traceback or a bare errno.
Real ``python -m presence_actors`` processes, as a user runs them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from presence_actors import __version__
from presence_actors.__main__ import _interrupted
from presence_actors.cli.preflight import check_startup

from .engine_harness import make_settings
from .process_harness import run_cli, write_config
from .server_harness import self_signed_certificate

URL_REFUSAL = "is not a server URL: expected http://HOST:PORT (or https://, ws://, wss://)"


async def one_line(tmp_path: Path, *args: str, status: int = 1) -> str:
    """Run the command; it must fail with ``status``, print nothing on stdout and
    exactly one line on stderr. That line, without the program's name."""
    finished = await run_cli(tmp_path, *args)
    assert "Traceback" not in finished.stderr, finished.stderr
    assert finished.stderr.count("\n") == 1, finished.stderr
    assert (finished.returncode, finished.stdout) == (status, ""), finished
    prefix = "presence-actors: "
    assert finished.stderr.startswith(prefix), finished.stderr
    return finished.stderr[len(prefix) :].rstrip("\n")


def serve_with(tmp_path: Path, **sections: dict[str, object]) -> list[str]:
    """``serve`` with a config file holding ``sections`` (the database in tmp_path)."""
    sections.setdefault("persistence", {"path": str(tmp_path / "presence.db")})
    config = write_config(tmp_path / "config.toml", **sections)
    return ["serve", "--config", str(config)]


# --- --url -------------------------------------------------------------------------------


async def test_status_with_a_url_that_is_not_one(tmp_path: Path) -> None:
    # Before: a 20-line traceback ending in "ValueError: unknown url type".
    line = await one_line(tmp_path, "status", "--url", "notaurl", "alice")
    assert line == f"--url 'notaurl' {URL_REFUSAL} (did you mean http://notaurl?)"


async def test_watch_with_a_url_without_its_scheme(tmp_path: Path) -> None:
    # Before: a 50-line exception group around "not a ws://, wss://, http:// or https:// URL".
    line = await one_line(tmp_path, "watch", "--url", "127.0.0.1:8080", "alice")
    assert line == f"--url '127.0.0.1:8080' {URL_REFUSAL} (did you mean http://127.0.0.1:8080?)"


@pytest.mark.parametrize("command", ["status", "watch"])
@pytest.mark.parametrize("url", ["ws://", "http://:8080", "ftp://127.0.0.1:8080", "http://h:x"])
async def test_status_and_watch_refuse_the_same_urls_alike(
    tmp_path: Path, command: str, url: str
) -> None:
    # Before: status said "cannot reach the server at ws://: unknown url type: ws"
    # while watch took ws:// and failed elsewhere.
    assert (
        await one_line(tmp_path, command, "--url", url, "alice") == f"--url {url!r} {URL_REFUSAL}"
    )


@pytest.mark.parametrize("command", ["status", "watch"])
async def test_an_unreachable_server_is_named(tmp_path: Path, command: str) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        line = await one_line(tmp_path, command, "--url", f"ws://127.0.0.1:{port}/ws", "alice")
    assert line.startswith(f"cannot reach the server at http://127.0.0.1:{port}: ")
    assert "Connection refused" in line


# --- options -----------------------------------------------------------------------------


async def test_a_misspelt_option_is_named_not_its_value(tmp_path: Path) -> None:
    # Before: "argument COMMAND: invalid choice: '9000' (choose from 'serve', ...)".
    line = await one_line(tmp_path, "--prot", "9000", status=2)
    assert line == "unknown option --prot (did you mean --port?) (see presence-actors --help)"


async def test_a_misspelt_option_of_a_command_is_named_with_the_command(tmp_path: Path) -> None:
    line = await one_line(tmp_path, "status", "--tokn", "x", "alice", status=2)
    assert line == (
        "unknown option --tokn (did you mean --token?) (see presence-actors status --help)"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port"], "argument --port: expected one argument (see presence-actors --help)"),
        (
            ["serve", "--port", "http"],
            "argument --port: 'http' is not a port (an integer from 0 to 65535)"
            " (see presence-actors serve --help)",
        ),
        (["status"], "the following arguments are required: USER"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
        (["--po", "9000"], "unknown option --po (did you mean --port?)"),
    ],
)
async def test_argparse_own_refusals_are_one_line_too(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    assert message in await one_line(tmp_path, *argv, status=2)


async def test_version(tmp_path: Path) -> None:
    finished = await run_cli(tmp_path, "--version")
    assert (finished.returncode, finished.stdout, finished.stderr) == (
        0,
        f"presence-actors {__version__}\n",
        "",
    )


# --- serve: what it cannot start with ----------------------------------------------------


async def test_a_port_in_use_names_the_address_and_the_settings(tmp_path: Path) -> None:
    # Before: "[Errno 98] Address already in use", after two log lines.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = await one_line(tmp_path, *serve_with(tmp_path), "--port", str(port))
    assert line == (
        f"cannot listen on 127.0.0.1:{port} (server.host, server.port): the port is in use"
        " by another process (stop it, or choose another server.port or --port)"
    )


async def test_a_host_that_does_not_resolve_is_named(tmp_path: Path) -> None:
    # Before: "[Errno -2] Name or service not known".
    argv = serve_with(tmp_path, server={"host": "nosuchhost.invalid", "port": 0})
    line = await one_line(tmp_path, *argv)
    assert line.startswith("server.host = 'nosuchhost.invalid': cannot resolve it to an address")


async def test_a_host_that_is_not_this_machine_is_named(tmp_path: Path) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never a local address.
    line = await one_line(tmp_path, *serve_with(tmp_path, server={"host": "192.0.2.1", "port": 0}))
    assert line == "server.host = '192.0.2.1': not an address of this machine"


async def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    # Before: "[Errno 2] No such file or directory", naming no file.
    cert, _ = self_signed_certificate(tmp_path)
    missing = str(tmp_path / "missing-key.pem")
    argv = serve_with(
        tmp_path, server={"port": 0, "tls_cert_file": str(cert), "tls_key_file": missing}
    )
    line = await one_line(tmp_path, *argv)
    assert line == f"server.tls_key_file = {missing!r}: cannot read it: No such file or directory"


async def test_a_key_that_is_not_the_certificates_is_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = self_signed_certificate(tmp_path / "a")
    _, other_key = self_signed_certificate(tmp_path / "b")
    argv = serve_with(
        tmp_path, server={"port": 0, "tls_cert_file": str(cert), "tls_key_file": str(other_key)}
    )
    line = await one_line(tmp_path, *argv)
    assert line.startswith(
        f"server.tls_cert_file = {str(cert)!r}, server.tls_key_file = {str(other_key)!r}:"
        " not a PEM certificate and its private key"
    )


async def test_a_persistence_path_under_a_file_is_named(tmp_path: Path) -> None:
    # Before: "[Errno 17] File exists: '...'" (or ENOENT), naming no setting.
    (tmp_path / "afile").write_text("")
    database = str(tmp_path / "afile" / "presence.db")
    line = await one_line(
        tmp_path, *serve_with(tmp_path, persistence={"path": database}, server={"port": 0})
    )
    assert line == f"persistence.path = {database!r}: {tmp_path / 'afile'} is not a directory"


async def test_a_persistence_path_that_is_a_directory_is_named(tmp_path: Path) -> None:
    line = await one_line(
        tmp_path, *serve_with(tmp_path, persistence={"path": str(tmp_path)}, server={"port": 0})
    )
    assert (
        line
        == f"persistence.path = {str(tmp_path)!r}: is a directory (name the database file in it)"
    )


async def test_a_log_file_that_cannot_be_opened_is_named(tmp_path: Path) -> None:
    # Before: "[Errno 21] Is a directory: '...'", naming no setting.
    argv = serve_with(tmp_path, logging={"file": str(tmp_path)}, server={"port": 0})
    line = await one_line(tmp_path, *argv)
    assert line == f"logging.file = {str(tmp_path)!r}: cannot open it: Is a directory"


async def test_the_file_names_are_taken_as_written_in_the_config(tmp_path: Path) -> None:
    """A relative path is named as the operator wrote it (it is relative to the
    working directory, which the line does not need to repeat)."""
    (tmp_path / "x").write_text("")
    config = tmp_path / "c.toml"
    config.write_text('[persistence]\npath = "x/p.db"\n[logging]\nfile = ""\n', encoding="utf-8")
    line = await one_line(tmp_path, "serve", "--config", str(config), "--port", "0")
    assert line == "persistence.path = 'x/p.db': x is not a directory"


def test_a_cluster_nodes_start_tries_no_database(tmp_path: Path) -> None:
    """A node with cluster.redis_url opens no SQLite file: the start-up checks leave
    persistence.path alone (no directory, no lock file made)."""
    (tmp_path / "afile").write_text("")
    settings = make_settings(
        tmp_path,
        persistence={"path": str(tmp_path / "afile" / "presence.db")},
        cluster={"redis_url": "redis://127.0.0.1:1"},
        server={"port": 0},
    )
    check_startup(settings)  # the same path fails a single server (test above)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_ctrl_c_inside_task_groups_is_a_quiet_exit_130() -> None:
    """Before: a KeyboardInterrupt wrapped in an exception group (Ctrl-C while a start
    waited, say) printed the whole group as a traceback."""
    group = BaseExceptionGroup("nursery", [BaseExceptionGroup("inner", [KeyboardInterrupt()])])
    assert _interrupted(group)
    assert not _interrupted(BaseExceptionGroup("mixed", [KeyboardInterrupt(), ValueError()]))
    assert not _interrupted(KeyboardInterrupt())  # the bare one is caught on its own
