"""The machinery of scripts/readme_examples.py: a temporary world of servers and
commands, and WebSocket sessions printed the way README's transcripts show them.

Commands run through ``bash`` with this interpreter as ``python`` and this checkout
first on the import path. README shows the main server on port 8080: commands run
with the real port in its place (:meth:`Demo.place`) and their output is shown with
8080 again (:meth:`Demo.shown`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

ROOT = Path(__file__).resolve().parent.parent
SHOWN_PORT = 8080
# Names README's commands use.
ADMIN = "ops-secret"
JWT_SECRET = "change-me-to-32-bytes-or-more-please"
EXAMPLES = ROOT / "docs" / "examples"
CURL = "curl -s -w ' HTTP %{http_code}\\n'"
API = "http://127.0.0.1:8080"
BEARER = f"-H 'Authorization: Bearer {ADMIN}'"
JSON = "-H 'Content-Type: application/json'"
SERVICE = f"{API}/presence.v1.PresenceService"
# Waits: a server starts in well under a second; a busy machine is slower.
START_TIMEOUT = 60
QUIET = 0.5  # a WebSocket transcript reads until the line is quiet this long (as websocket.py)
STEP = 0.05  # between changes, so that no two users share a lastSeen millisecond


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    """The examples' shared state: directories, the main server's port, the output."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.ports = {SHOWN_PORT: self.port}  # README's port -> the one used here
        self.out: dict[str, str] = Progress()
        bin_dir = base / "bin"
        bin_dir.mkdir()
        # `python` is this interpreter. A script, not a symlink: a venv's python found
        # through a symlink elsewhere does not know it is in the venv.
        python = bin_dir / "python"
        python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        python.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
            "COLUMNS": "80",  # argparse wraps --help at the terminal's width
            "PYTHONUNBUFFERED": "1",
        }
        for name in list(self.env):
            if name.startswith("PRESENCE_"):
                del self.env[name]

    def place(self, text: str) -> str:
        """README's text as it runs here: the real ports in place of the shown ones."""
        for shown, real in self.ports.items():
            text = text.replace(f"127.0.0.1:{shown}", f"127.0.0.1:{real}")
        return text

    def shown(self, text: str) -> str:
        """Output as README shows it: the main server on 8080, and so on."""
        for shown, real in self.ports.items():
            text = text.replace(f"127.0.0.1:{real}", f"127.0.0.1:{shown}")
        return text

    def alias(self, shown: int) -> int:
        """A free port to run what README shows on port ``shown``."""
        real = self.ports[shown] = free_port()
        return real

    def directory(self, name: str) -> Path:
        path = self.base / name
        path.mkdir(exist_ok=True)
        return path

    async def sh(self, command: str, cwd: Path, *, run: str | None = None, **env: str) -> str:
        """``$ command`` and what it printed (stdout and stderr, as a terminal shows them).

        ``run`` is what runs instead, when README's command cannot run as shown here.
        """
        done = await trio.run_process(
            ["bash", "-c", self.place(command if run is None else run)],
            cwd=cwd,
            env={**self.env, **env},
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
        output = done.stdout.decode().replace("\r\n", "\n")
        if output and not output.endswith("\n"):
            output += "\n"
        return f"$ {command}\n{self.shown(output)}"

    async def script(self, commands: list[str], cwd: Path, **env: str) -> str:
        """Like :meth:`sh` for each command, all in one shell (a variable set by one
        command is there for the next)."""
        marker = "=====presence-actors-example====="
        lines = []
        for command in commands:
            lines += [f"echo {marker}", self.place(command)]
        done = await trio.run_process(
            ["bash", "-c", "\n".join(lines)],
            cwd=cwd,
            env={**self.env, **env},
            capture_stdout=True,
            stderr=subprocess.STDOUT,
            check=False,
        )
        outputs = done.stdout.decode().split(f"{marker}\n")[1:]
        assert len(outputs) == len(commands), done.stdout
        shown = []
        for command, output in zip(commands, outputs, strict=True):
            if output and not output.endswith("\n"):
                output += "\n"
            shown.append(f"$ {command}\n{self.shown(output)}")
        return "".join(shown)

    async def session(self, name: str, commands: list[str], cwd: Path, **env: str) -> None:
        self.out[name] = "".join([await self.sh(c, cwd, **env) for c in commands])

    @asynccontextmanager
    async def server(
        self, cwd: Path, argv: list[str], port: int | None = None, **env: str
    ) -> AsyncIterator[Server]:
        """``python -m presence_actors ARGV`` in ``cwd``, once it listens."""
        environment = {**self.env, **env}
        if port is not None:
            environment["PRESENCE_SERVER_PORT"] = str(port)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "presence_actors", *argv],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        server = Server(process)
        try:
            with trio.fail_after(START_TIMEOUT):
                text = await server.read_until(r"api +\S+\n")
            match = re.search(r"page +(http://\S+)/\n", text)
            assert match is not None, text
            server.url = match[1]
            yield server
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(10):
                await process.wait()


class Progress(dict[str, str]):
    """The examples by name; each says on stderr that it is done (a run takes a minute)."""

    def __setitem__(self, name: str, text: str) -> None:
        print(f"example {name}: done", file=sys.stderr, flush=True)
        super().__setitem__(name, text)


class Server:
    """A server process; everything it prints (stdout and stderr) is kept in ``seen``."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.seen = bytearray()
        self.url = ""

    async def read_until(self, pattern: str) -> str:
        assert self.process.stdout is not None
        while not re.search(pattern, self.seen.decode(errors="replace")):
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"the server exited: {self.seen.decode(errors='replace')}")
            self.seen += chunk
        return self.seen.decode(errors="replace")

    async def stop(self, signum: int = signal.SIGINT) -> str:
        """Stop it; the rest of what it printed."""
        assert self.process.stdout is not None
        before = len(self.seen)
        self.process.send_signal(signum)
        with trio.fail_after(START_TIMEOUT):
            while chunk := await self.process.stdout.receive_some():
                self.seen += chunk
            await self.process.wait()
        return self.seen[before:].decode(errors="replace")


class Talker:
    """A WebSocket session printed as README's transcripts are: ``name > sent``,
    ``name < received``, ``name closed: code reason``."""

    def __init__(self, name: str, ws: WebSocketConnection, lines: list[str]) -> None:
        self.name = name
        self.ws = ws
        self.lines = lines

    async def drain(self) -> None:
        while True:
            with trio.move_on_after(QUIET):
                try:
                    self.lines.append(f"{self.name} < {await self.ws.get_message()}")
                except ConnectionClosed as closed:
                    reason = closed.reason
                    self.lines.append(f"{self.name} closed: {reason.code} {reason.reason}")
                    return
                continue
            return

    async def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message)
        self.lines.append(f"{self.name} > {text}")
        await self.ws.send_message(text)
        await self.drain()

    async def tell(self, message: dict[str, Any]) -> None:
        """Send without printing (state for later examples); see :func:`holding`."""
        await self.ws.send_message(json.dumps(message))
        await trio.sleep(STEP)


@asynccontextmanager
async def talker(
    base_url: str, query: str, name: str, lines: list[str] | None = None
) -> AsyncIterator[Talker]:
    """A session whose every message the caller reads (and prints)."""
    url = f"{base_url.replace('http://', 'ws://', 1)}/ws?{query}"
    async with open_websocket_url(url) as ws:
        yield Talker(name, ws, [] if lines is None else lines)


# Held sessions heartbeat at the pace the server asks (its welcome says 15 s).
HEARTBEAT_INTERVAL = 15.0


@asynccontextmanager
async def holding(base_url: str, query: str) -> AsyncIterator[Talker]:
    """A session kept open for later examples, past its welcome, as a client keeps one:
    it heartbeats, and what it is sent is read and dropped (so that closing it is not
    held up by unread messages)."""
    async with talker(base_url, query, "-") as held, trio.open_nursery() as nursery:
        await held.ws.get_message()  # the welcome

        async def discard() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await held.ws.get_message()

        async def heartbeat() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await trio.sleep(HEARTBEAT_INTERVAL)
                    await held.ws.send_message(json.dumps({"type": "heartbeat"}))

        nursery.start_soon(discard)
        nursery.start_soon(heartbeat)
        yield held
        nursery.cancel_scope.cancel()


async def connect_json(base: str, method: str, body: dict[str, Any]) -> None:
    """A Connect call the examples need as state (not shown)."""

    def call() -> None:
        from urllib.request import Request, urlopen

        request = Request(
            f"{base}/presence.v1.PresenceService/{method}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urlopen(request, timeout=30) as answer:
            answer.read()

    await trio.to_thread.run_sync(call)
    await trio.sleep(STEP)
