"""Issue 14, item 1: README's two set-up commands work as written on a stock Debian 12 /
Ubuntu machine: no ``python`` outside a virtual environment, and a system pip that refuses
to install (externally managed).

The start command runs here in a fresh copy of the tree with the system's ``python3`` and
a PATH of ``/usr/bin:/bin`` only; the test command is the one .ci/run runs, verbatim (and
so runs in every CI run).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PATH = "/usr/bin:/bin"
# A new venv and every dependency: some 40 s on a quiet machine.
INSTALL_TIMEOUT = 600


def setup_commands() -> list[str]:
    """The two ```sh blocks of README's "Set up" section: start, then test."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Set up") : text.index("\n## ", text.index("## Set up") + 1)]
    commands = re.findall(r"```sh\n(.*?)\n```", section, re.DOTALL)
    assert len(commands) == 2, commands
    return commands


def test_ci_runs_readmes_test_command_verbatim() -> None:
    _, test = setup_commands()
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test in lines


def test_the_commands_need_no_python_but_python3_and_no_system_pip() -> None:
    for command in setup_commands():
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
        # After the activation `python` and `pip` are the venv's.
        assert "python3" not in command.split("activate", 1)[1]


@pytest.mark.skipif(
    not Path("/usr/bin/python3").exists(), reason="no system python3 (/usr/bin/python3)"
)
def test_the_start_command_works_in_a_fresh_copy_with_the_system_python(tmp_path: Path) -> None:
    check = subprocess.run(
        ["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True, timeout=60
    )
    if check.returncode != 0:
        pytest.skip("the system python3 has no venv (apt-get install python3-venv)")
    if shutil.which("python", path=SYSTEM_PATH):
        pytest.skip("this machine has a `python` outside a venv: not the case the test is for")
    start, _ = setup_commands()
    clone = tmp_path / "clone"
    shutil.copytree(
        ROOT,
        clone,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "data", "logs", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    env = {
        "PATH": SYSTEM_PATH,
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        # Not 8080, which may be taken where the tests run; nothing else is set.
        "PRESENCE_SERVER_PORT": "0",
    }
    # How this machine reaches its package index, if it is told by the environment.
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    process = subprocess.Popen(
        ["bash", "-c", start],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # The reads below block: a timer ends a hung install (and with it the reads).
    watchdog = threading.Timer(INSTALL_TIMEOUT, os.killpg, (process.pid, signal.SIGKILL))
    watchdog.start()
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:
            seen.append(line.decode(errors="replace"))
            if "api " in seen[-1]:
                break
        else:
            process.wait(timeout=INSTALL_TIMEOUT)
            raise AssertionError("".join(seen[-20:]))
        assert any("presence_actors is listening" in line for line in seen), seen[-20:]
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it
        rest = process.stdout.read().decode(errors="replace")
        assert process.wait(timeout=60) == 0, rest
    finally:
        watchdog.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    assert (clone / ".venv" / "bin" / "python").exists()
    assert (clone / "data" / "presence.db").exists()
    assert "received SIGINT; shutting down" in rest
