"""A real server process (``python -m presence_actors serve``) for behaviour that is
about a process: crashes, descriptor limits, what it logs.

The child imports this repository (PYTHONPATH is its root), listens on a free
loopback port, logs to stderr (kept in a file for the test to read), and is
killed by its pid when the test is done with it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

ROOT = Path(__file__).resolve().parents[1]
# Python starts slowly on a busy machine; the server itself is up in milliseconds.
STARTUP_TIMEOUT = 30
PORT_0 = ("--port", "0")


@attrs.define
class ServerProcess:
    process: trio.Process
    base_url: str
    port: int
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def _toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def child_environment() -> dict[str, str]:
    """The test's environment with this repository first on the import path."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return environment


def _limit_descriptors(nofile: int) -> Callable[[], None]:
    def limit() -> None:  # runs in the child, between fork and exec
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    return limit


@asynccontextmanager
async def server_process(
    tmp_path: Path, *, nofile: int | None = None, **sections: Mapping[str, Any]
) -> AsyncIterator[ServerProcess]:
    """A server process with the settings ``sections``, its database in ``tmp_path``;
    RLIMIT_NOFILE lowered to ``nofile`` when given. Killed (SIGKILL) on exit."""
    settings = {
        "persistence": {"path": str(tmp_path / "presence.db")},
        "logging": {"file": ""},
        **sections,
    }
    config = tmp_path / "config.toml"
    config.write_text(_toml(settings), encoding="utf-8")
    stderr_path = tmp_path / "server-stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "presence_actors", "serve", "--config", str(config), *PORT_0],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
            env=child_environment(),
            preexec_fn=None if nofile is None else _limit_descriptors(nofile),
        )
        try:
            assert process.stdout is not None
            seen = bytearray()
            with trio.fail_after(STARTUP_TIMEOUT):
                while not re.search(rb"api +\S+\n", seen):
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"the server ended: {stderr_path.read_text()}"
                    seen += chunk
            match = re.search(rb"page +(http://127\.0\.0\.1:(\d+))/\n", seen)
            assert match is not None, seen
            yield ServerProcess(process, match[1].decode(), int(match[2]), stderr_path)
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5):
                await process.wait()
