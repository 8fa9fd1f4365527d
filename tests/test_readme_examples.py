"""Issue 14, item 3: README's examples cannot drift from what the code prints.

scripts/readme_examples.py builds its own state on fresh servers in a temporary directory
and runs every example README.md shows; ``--check`` compares each with README's block
(times, ids, ports and tokens aside) and fails on a block that shows a session without
being generated or marked as an illustration. Needs curl, sqlite3 and redis-server
(.ci/run installs them); about two minutes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .process_harness import child_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "readme_examples.py"
# The script starts some fifteen servers and fifty commands; a quiet machine needs ~70 s.
TIMEOUT = 900


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("curl", "sqlite3", "redis-server")),
    reason="README's examples use curl, sqlite3 and redis-server (apt-get install them)",
)
def test_readme_shows_what_its_examples_print(tmp_path: Path) -> None:
    # Before: ~60 examples whose state was never built, a stale --help, and
    # "imported 1 users" where the command now says "1 user".
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=tmp_path,
        env=child_env(),
    )
    problems = "\n".join(line for line in result.stderr.splitlines() if not line.endswith(": done"))
    assert result.returncode == 0, problems


def test_readme_marks_every_session_it_shows() -> None:
    """Without running anything: no block shows a shell session or a log line unless it
    is generated, or says why not (an illustration)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from readme_blocks import README, unmarked_sessions
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert unmarked_sessions(README.read_text(encoding="utf-8")) == []
