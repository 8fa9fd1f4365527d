"""Run every example README.md shows, top to bottom, on servers this script starts.

    python scripts/readme_examples.py            # print each example
    python scripts/readme_examples.py --check    # compare with README.md (exit 1 if they differ)
    python scripts/readme_examples.py --write    # put the output into README.md

Nothing is assumed to exist: the script makes a temporary directory, starts fresh servers
in it (``python -m presence_actors`` from this checkout, on free ports), builds the state
each example needs, and runs each command as README shows it, through ``bash`` (``curl``,
``sqlite3`` and ``redis-server`` must be installed). The main server runs as README says,
``PRESENCE_AUTH_ADMIN_TOKEN=ops-secret python -m presence_actors``, with its port given as
``PRESENCE_SERVER_PORT``; the commands of its examples run in that same environment, and
README shows its port as 8080. ``--check`` compares without what differs from run to run
(times, ids, ports, tokens): scripts/readme_blocks.py says what, and how README marks its
blocks. tests/test_readme_examples.py runs ``--check``; after changing what a command
prints, run ``--write`` and read the diff.

The order is the one that builds the state, not README's: ``watch`` runs before the
``status`` that shows what dave's watch left behind, for instance.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_blocks import README, differences, rewrite
from readme_cluster import cluster
from readme_commands import cli, client, configuration, jwt_server, operations, restarts
from readme_demo import ADMIN, Demo
from readme_sessions import (
    connect,
    connect_people,
    contacts_mode,
    grpc,
    http,
    privacy,
    start,
    websocket,
)


async def run(base: Path) -> dict[str, str]:
    """Every example's output, by name."""
    demo = Demo(base)
    await start(demo)
    demo_dir = demo.directory("demo")
    env = {"PRESENCE_AUTH_ADMIN_TOKEN": ADMIN, "PRESENCE_SERVER_PORT": str(demo.port)}
    async with demo.server(demo_dir, [], **env) as main:
        await websocket(demo)
        async with AsyncExitStack() as stack:
            await connect_people(demo, main, stack)
            await privacy(demo, main)
            await http(demo, demo_dir)
            await connect(demo, demo_dir)
            await grpc(demo)
            await cli(demo, demo_dir, env)
            await operations(demo, demo_dir, env)
            await client(demo, main)
        await restarts(demo, demo_dir, main, env)
    await contacts_mode(demo)
    await configuration(demo)
    await jwt_server(demo)
    await cluster(demo)
    return demo.out


# --- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with README.md")
    mode.add_argument("--write", action="store_true", help="put the output into README.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="readme-examples-") as base:
        produced = trio.run(run, Path(base))
    text = README.read_text(encoding="utf-8")
    if args.write:
        README.write_text(rewrite(text, produced), encoding="utf-8")
        problems = differences(README.read_text(encoding="utf-8"), produced)
    elif args.check:
        problems = differences(text, produced)
    else:
        for name, output in produced.items():
            print(f"--- {name}\n{output}")
        return 0
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
