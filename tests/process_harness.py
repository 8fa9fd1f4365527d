"""Real ``python -m presence_actors`` processes, for behaviour that belongs to a process:
exit status, signals, locks, a full disk. Children import this checkout."""

from __future__ import annotations

import itertools
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request, urlopen

import trio
from attrs import define, frozen
from trio_websocket import open_websocket_url

from .server_harness import RawClient

ROOT = Path(__file__).resolve().parents[1]
# Python starts slowly on a busy machine; the server itself is up in milliseconds.
STARTUP_TIMEOUT = 30
# A stop is bounded by twice server.graceful_timeout plus a few seconds.
STOP_TIMEOUT = 30
# An answer a server owes at once; a hang shows up as a socket timeout.
HTTP_TIMEOUT = 20
_COMMAND = (sys.executable, "-m", "presence_actors")
_numbers = itertools.count(1)


def child_env() -> dict[str, str]:
    """This environment, with this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def write_config(path: Path, **sections: Mapping[str, object]) -> Path:
    """A config file at ``path``: the given sections, logging to stderr only."""
    sections = {"logging": {"file": ""}, **sections}
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@define
class ServerProcess:
    process: trio.Process
    base_url: str
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and return the exit status (within :data:`STOP_TIMEOUT`)."""
        self.process.send_signal(signum)
        with trio.fail_after(STOP_TIMEOUT):
            return await self.process.wait()


def _limit_descriptors(nofile: int) -> Callable[[], None]:
    def limit() -> None:  # runs in the child, between fork and exec
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    return limit


@asynccontextmanager
async def server_process(
    workdir: Path, config: Path, *, nofile: int | None = None
) -> AsyncIterator[ServerProcess]:
    """``python -m presence_actors serve`` on a free port, once it listens; killed at the end.

    ``nofile`` lowers the child's RLIMIT_NOFILE (its soft limit) before it starts.
    """
    stderr_path = workdir / f"server-{next(_numbers)}.stderr"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [*_COMMAND, "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=workdir,
            env=child_env(),
            preexec_fn=None if nofile is None else _limit_descriptors(nofile),
        )
        try:
            assert process.stdout is not None
            seen = bytearray()
            with trio.fail_after(STARTUP_TIMEOUT):
                while not re.search(rb"api +\S+\n", seen):
                    chunk = await process.stdout.receive_some()
                    if not chunk:
                        with trio.fail_after(5):
                            await process.wait()
                        text = stderr_path.read_text(errors="replace")
                        raise AssertionError(f"the server exited ({process.returncode}): {text}")
                    seen += chunk
            match = re.search(rb"page +(http://127\.0\.0\.1:\d+)/\n", seen)
            assert match is not None, seen
            yield ServerProcess(process, match[1].decode(), stderr_path)
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()


@define
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(workdir: Path, *args: str) -> Finished:
    """Run ``python -m presence_actors ARGS`` to its end; fails if it serves instead.

    A server that should have been refused would run forever: its "listening"
    line ends the wait at once (and the process) rather than a timeout.
    """
    stderr_path = workdir / f"cli-{next(_numbers)}.stderr"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [*_COMMAND, *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=workdir,
            env=child_env(),
        )
        try:
            assert process.stdout is not None
            out = bytearray()
            with trio.fail_after(STARTUP_TIMEOUT):
                while chunk := await process.stdout.receive_some():
                    out += chunk
                    assert b"is listening" not in out, f"it started serving: {out.decode()}"
                returncode = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                with trio.move_on_after(5):
                    await process.wait()
    return Finished(returncode, out.decode(), stderr_path.read_text(errors="replace"))


async def http(method: str, url: str, body: object = None) -> tuple[int, dict[str, Any]]:
    """One HTTP request in a thread: the status and the JSON answer (or a socket timeout)."""

    def call() -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = Request(url, data=data, method=method)
        try:
            with urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except HTTPError as exc:
            return exc.code, json.loads(exc.read())

    return await trio.to_thread.run_sync(call)


async def history(server: ServerProcess, user_id: str) -> list[dict[str, Any]]:
    """The user's committed events, read from the database through the server."""
    status, answer = await http("GET", f"{server.base_url}/api/users/{user_id}/history")
    assert status == 200, answer
    events: list[dict[str, Any]] = answer["events"]
    return events


async def wait_for(predicate: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``predicate`` until it is true; callers bound it with ``trio.fail_after``."""
    while not await predicate():
        await trio.sleep(0.05)


@asynccontextmanager
async def ws_client(server: ServerProcess, user_id: str, **params: str) -> AsyncIterator[RawClient]:
    """A WebSocket session of ``user_id``, past its welcome."""
    url = server.base_url.replace("http://", "ws://", 1) + "/ws?"
    async with open_websocket_url(url + urlencode({"userId": user_id, **params})) as ws:
        client = RawClient(ws)
        await client.expect("welcome")
        yield client


def one_line(stderr: str, pattern: str) -> str:
    """The only line of ``stderr`` matching ``pattern`` (there must be exactly one)."""
    lines = [line for line in stderr.splitlines() if re.search(pattern, line)]
    assert len(lines) == 1, stderr
    return lines[0]


# --- the same, blocking: for tests that talk to the server over plain sockets ------------


@frozen
class BlockingServer:
    """A server process for a synchronous test; see :func:`blocking_server`."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kib(self) -> int:
        """The process's resident set (``VmRSS`` in /proc/PID/status), in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match is not None, status
        return int(match[1])


@contextmanager
def blocking_server(tmp_path: Path, **sections: Mapping[str, Any]) -> Iterator[BlockingServer]:
    """``python -m presence_actors serve`` with ``sections`` as its config (database in
    ``tmp_path``), once it listens; SIGTERM (then SIGKILL) when the block ends."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in sections.items()}
    merged.setdefault("persistence", {}).setdefault("path", str(tmp_path / "presence.db"))
    config = write_config(tmp_path / "config.toml", **merged)
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        process = subprocess.Popen(
            [*_COMMAND, "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
            env=child_env(),
        )
        try:
            yield BlockingServer(process, _port_of(process, tmp_path))
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)
            assert process.stdout is not None
            process.stdout.close()


def _port_of(process: subprocess.Popen[bytes], tmp_path: Path) -> int:
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        chunk = process.stdout.read()
        if chunk:
            seen += chunk
            match = re.search(rb"page +http://127\.0\.0\.1:(\d+)/", seen)
            if match:
                return int(match[1])
        elif process.poll() is not None:
            break
        time.sleep(0.02)
    stderr = (tmp_path / "stderr.txt").read_text(errors="replace")
    raise AssertionError(f"the server did not start: {seen!r} {stderr}")


def import_users(tmp_path: Path, count: int) -> None:
    """``count`` known (offline) users in ``tmp_path``'s database, through
    ``python -m presence_actors import-json`` as an operator would add them."""
    state = {
        f"user-{n:05d}": {
            "userId": f"user-{n:05d}",
            "connectionId": f"c-{n}",
            "status": "offline",
            "lastSeen": "2026-11-01T10:00:00.000Z",
            "username": f"User number {n}",
        }
        for n in range(count)
    }
    (tmp_path / "user_state.json").write_text(json.dumps(state))
    config = write_config(
        tmp_path / "import.toml", persistence={"path": str(tmp_path / "presence.db")}
    )
    subprocess.run(
        [*_COMMAND, "import-json", "--config", str(config), str(tmp_path / "user_state.json")],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env=child_env(),
        timeout=60,
    )
