"""Issue 14, item 5: the systemd unit and the container definition in deploy/, tested as
far as a machine without systemd as init and without a container engine allows.

- deploy/presence-actors.service passes ``systemd-analyze verify`` (where installed), and
  its ExecStart runs with the unit's Environment, working directory and signals, the
  paths of StateDirectory/LogsDirectory mapped into a temporary directory: the database
  and the log land where the unit says, nothing in the working directory.
- deploy/Containerfile: its build step (deploy/install.sh into a new venv, from this
  source tree, not editable) is run into a temporary prefix, then the image's
  ENTRYPOINT + CMD with its ENV, its HEALTHCHECK, and its STOPSIGNAL.
What is not run here: systemd's sandboxing (DynamicUser, ProtectSystem...) and the image
build itself (FROM, useradd, USER, VOLUME).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from presence_actors.persistence import open_reader

from .process_harness import (
    STOP_TIMEOUT,
    child_env,
    http,
    server_process,
    wait_for,
    write_config,
    ws_client,
)

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "presence-actors.service"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
# A fresh venv and every dependency: some 30 s on a quiet machine.
INSTALL_TIMEOUT = 600
STARTUP_TIMEOUT = 30


# --- reading the two files ---------------------------------------------------------------


def unit_entries(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys like Environment repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def containerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, rest = line.partition(" ")
            instructions.append((name.upper(), rest.strip()))
    return instructions


def container_env(instructions: Sequence[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for name, rest in instructions:
        if name == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(instructions: Sequence[tuple[str, str]], name: str) -> list[str]:
    [rest] = [rest for n, rest in instructions if n == name]
    value: list[str] = json.loads(rest)
    return value


def healthcheck(instructions: Sequence[tuple[str, str]]) -> list[str]:
    [rest] = [rest for n, rest in instructions if n == "HEALTHCHECK"]
    command: list[str] = json.loads(rest[rest.index("CMD") + 3 :].strip())
    return command


def mapped(value: str, paths: Mapping[str, Path]) -> str:
    for old, new in paths.items():
        value = value.replace(old, str(new))
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def started(
    argv: list[str], env: Mapping[str, str], cwd: Path, stderr: Path
) -> AsyncIterator[tuple[trio.Process, str]]:
    """The command, once it says it listens: the process and its base URL."""
    with stderr.open("wb") as errors:
        process = await trio.lowlevel.open_process(
            argv, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=errors
        )
        try:
            assert process.stdout is not None
            seen = bytearray()
            with trio.fail_after(STARTUP_TIMEOUT):
                while not re.search(rb"api +\S+\n", seen):
                    chunk = await process.stdout.receive_some()
                    if not chunk:
                        said = await trio.Path(stderr).read_text(errors="replace")
                        raise AssertionError(f"it exited: {said}")
                    seen += chunk
            match = re.search(rb"page +(http://\S+)/\n", seen)
            assert match is not None, seen
            yield process, match[1].decode()
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()


# --- the systemd unit ----------------------------------------------------------------------


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: this checkout's, not /opt's.
    here = f"{sys.executable} -m presence_actors"
    text = UNIT.read_text().replace("/opt/presence-actors/bin/presence-actors", here)
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


async def test_the_units_command_keeps_data_and_log_where_the_unit_says(tmp_path: Path) -> None:
    service = unit_entries(UNIT.read_text())["Service"]
    [state] = service["StateDirectory"]
    [logs] = service["LogsDirectory"]
    [configuration] = service["ConfigurationDirectory"]
    paths = {
        f"/var/lib/{state}": tmp_path / "state",
        f"/var/log/{logs}": tmp_path / "logs",
        f"/etc/{configuration}": tmp_path / "etc",
        "/opt/presence-actors/bin/presence-actors": Path(sys.executable),
    }
    for directory in ("state", "logs", "etc"):  # systemd creates them for the service
        (tmp_path / directory).mkdir()
    shutil.copy(ROOT / "config.toml", tmp_path / "etc" / "config.toml")
    env = child_env()
    for assignment in service["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = mapped(value, paths)
    env["PRESENCE_SERVER_PORT"] = "0"  # as `systemctl edit` would add it
    [exec_start] = service["ExecStart"]
    argv = shlex.split(mapped(exec_start, paths))
    argv[1:1] = ["-m", "presence_actors"]  # this checkout's package
    [workdir] = service["WorkingDirectory"]
    cwd = Path(mapped(workdir, paths))
    async with started(argv, env, cwd, tmp_path / "stderr.txt") as (process, base):
        status, body = await http("GET", f"{base}/readyz")
        assert (status, body["status"]) == (200, "ready")
        [kill] = service["KillSignal"]
        process.send_signal(getattr(signal, kill))
        [stop] = service["TimeoutStopSec"]
        assert int(stop) > STOP_TIMEOUT / 2  # above 2 x graceful_timeout + 5 s
        with trio.fail_after(int(stop)):
            assert await process.wait() == 0
    assert (tmp_path / "state" / "presence.db").is_file()
    assert "shutting down" in (tmp_path / "logs" / "presence.log").read_text()
    # Nothing relative to the working directory: no data/ or logs/ there.
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        "presence.db",
        "presence.db.lock",
    ]


# --- the container ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/install.sh into a new prefix, as the Containerfile's RUN does (not editable)."""
    instructions = containerfile_instructions(CONTAINERFILE.read_text())
    runs = [rest for name, rest in instructions if name == "RUN"]
    assert any(
        run.startswith("/src/deploy/install.sh /opt/presence-actors /src") for run in runs
    ), runs
    # COPY . /src: the tree as the build context has it (.dockerignore applied).
    source = tmp_path_factory.mktemp("context") / "src"
    ignored = [
        line.strip().removeprefix("**/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*ignored))
    prefix = tmp_path_factory.mktemp("opt") / "presence-actors"
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)  # the install must stand on its own
    result = subprocess.run(
        ["sh", str(source / "deploy" / "install.sh"), str(prefix), str(source)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env=env,
        cwd=tmp_path_factory.mktemp("cwd"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("presence-actors ")
    return prefix


async def test_the_images_command_serves_from_the_installed_package(
    tmp_path: Path, installed: Path
) -> None:
    instructions = containerfile_instructions(CONTAINERFILE.read_text())
    env = container_env(instructions)
    port = free_port()
    volume = tmp_path / "volume"
    volume.mkdir()
    paths = {"/opt/presence-actors": installed, "/var/lib/presence-actors": volume}
    environment = {key: mapped(value, paths) for key, value in env.items()}
    assert environment["PRESENCE_LOGGING_FILE"] == ""  # the container's log is stderr
    environment["PRESENCE_SERVER_PORT"] = str(port)  # 8080 may be taken here
    environment["PATH"] = os.environ["PATH"]
    argv = [mapped(a, paths) for a in exec_form(instructions, "ENTRYPOINT")]
    argv += exec_form(instructions, "CMD")
    [workdir] = [rest for name, rest in instructions if name == "WORKDIR"]
    async with started(argv, environment, Path(mapped(workdir, paths)), tmp_path / "err") as (
        process,
        base,
    ):
        assert base == f"http://0.0.0.0:{port}"  # every address: reachable from outside
        local = f"http://127.0.0.1:{port}"
        # The page comes from the installed package's data, not from this checkout.
        page = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [str(installed / "bin" / "python"), "-c", PAGE_CHECK, local],
                capture_output=True,
                text=True,
                timeout=60,
            )
        )
        assert page.returncode == 0, page.stderr
        check = [mapped(a, paths).replace(":8080/", f":{port}/") for a in healthcheck(instructions)]
        health = await trio.run_process(check, check=False)
        assert health.returncode == 0
        [stop] = [rest for name, rest in instructions if name == "STOPSIGNAL"]
        process.send_signal(getattr(signal, stop))
        with trio.fail_after(STOP_TIMEOUT):
            assert await process.wait() == 0
    assert (volume / "presence.db").is_file()
    assert "shutting down" in (tmp_path / "err").read_text()


PAGE_CHECK = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/", timeout=10) as answer:
    assert b"Who is online" in answer.read()
with urllib.request.urlopen(sys.argv[1] + "/app.js", timeout=10) as answer:
    assert answer.status == 200
"""


# --- backup and restore, as docs/DEPLOYMENT.md says ---------------------------------------


def documented_backup_commands() -> list[str]:
    """The two backup commands of DEPLOYMENT.md's "Backup and restore", as written."""
    text = (ROOT / "docs" / "DEPLOYMENT.md").read_text()
    section = text[text.index("## Backup and restore") : text.index("## Upgrade")]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    commands = [block.replace("\\\n", " ").strip() for block in blocks]
    assert len(commands) == 2, commands
    assert commands[0].startswith("sqlite3 "), commands
    return commands


async def test_an_online_backup_restores_users_and_contacts(tmp_path: Path) -> None:
    live, restored = tmp_path / "live", tmp_path / "restored"
    live.mkdir()
    restored.mkdir()
    database = live / "presence.db"
    config = write_config(live / "config.toml", persistence={"path": str(database)})
    copies = []
    async with server_process(live, config) as server:
        status, _ = await http(
            "PUT", f"{server.base_url}/api/admin/users/alice/contacts", {"contacts": ["bob"]}
        )
        assert status == 200  # answered once committed
        async with ws_client(server, "alice") as alice:
            await alice.request({"type": "identify", "username": "Alice"}, "identified")
            with trio.fail_after(10):
                await wait_for(lambda: committed_name(database, "alice", "Alice"))
            # Both documented commands, while the server runs and writes.
            for n, command in enumerate(documented_backup_commands()):
                if command.startswith("sqlite3 ") and shutil.which("sqlite3") is None:
                    continue
                copy = tmp_path / f"backup-{n}.db"
                command = command.replace("/var/lib/presence-actors/presence.db", str(database))
                command = re.sub(r"/backup/presence[^\"']*?\.db", str(copy), command)
                done = await trio.run_process(["sh", "-c", command], check=False)
                assert done.returncode == 0, command
                copies.append(copy)
    assert copies
    for copy in copies:
        with sqlite3.connect(copy) as db:
            assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        target = restored / "presence.db"
        shutil.copy(copy, target)
        config = write_config(restored / "config.toml", persistence={"path": str(target)})
        async with server_process(restored, config) as server:
            status, answer = await http("GET", f"{server.base_url}/api/admin/users/alice")
            assert (status, answer["contacts"]) == (200, ["bob"])
            status, answer = await http("GET", f"{server.base_url}/api/users/alice")
            assert answer["user"]["username"] == "Alice"
        for leftover in restored.iterdir():
            leftover.unlink()


async def committed_name(database: Path, user_id: str, username: str) -> bool:
    """Whether the username is committed to the database file (read from the file)."""

    def read() -> bool:
        with open_reader(database) as reader:
            users = {user.user_id: user.username for user in reader.load_users()}
        return users.get(user_id) == username

    return await trio.to_thread.run_sync(read)
