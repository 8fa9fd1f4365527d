"""``python -m presence_actors serve`` as a real process, for tests about processes and sockets.

The process imports this checkout (PYTHONPATH is the repository root), listens
on a free loopback port and is stopped with SIGTERM (then SIGKILL) when the
block ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from attrs import frozen

ROOT = Path(__file__).resolve().parents[1]
# Python starts slowly on a busy machine; the server itself is up in milliseconds.
STARTUP_TIMEOUT = 30.0


@frozen
class ServerProcess:
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


def _toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


@contextmanager
def server_process(tmp_path: Path, **sections: Mapping[str, Any]) -> Iterator[ServerProcess]:
    """A server process with ``sections`` as its config.toml, once it listens."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in sections.items()}
    merged.setdefault("persistence", {}).setdefault("path", str(tmp_path / "presence.db"))
    merged.setdefault("logging", {}).setdefault("file", "")
    config = tmp_path / "config.toml"
    config.write_text(_toml(merged), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (tmp_path / "stderr.txt").open("wb") as stderr:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "presence_actors", "serve"),
                *("--config", str(config), "--port", "0"),
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
            env=env,
        )
        try:
            yield ServerProcess(process, _port_of(process, tmp_path))
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
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
    config = tmp_path / "import.toml"
    config.write_text(
        _toml({"persistence": {"path": str(tmp_path / "presence.db")}, "logging": {"file": ""}})
    )
    subprocess.run(
        [
            *(sys.executable, "-m", "presence_actors", "import-json"),
            *("--config", str(config), str(tmp_path / "user_state.json")),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )
