"""README's example of a cluster: two nodes on one Redis, alice's phone on one and her
laptop on the other, watched from the second.

Needs ``redis-server`` (Debian's package). README shows Redis on port 16390 and the nodes
on 8101 and 8102; they run on free ports here (see :meth:`Demo.alias`).
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from readme_demo import START_TIMEOUT, Demo, Server, talker

REDIS = 16390
NODES = {"a": 8101, "b": 8102}
# Between two changes of alice's: each shows in the watch as a line of its own.
PAUSE = 1.0


@asynccontextmanager
async def redis_server(directory: Path, port: int) -> AsyncIterator[None]:
    """``redis-server`` on ``port`` (no persistence), once it accepts connections;
    killed by pid at the end."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(directory)]
    process = await trio.lowlevel.open_process(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(START_TIMEOUT):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
        yield
    finally:
        process.kill()
        with trio.move_on_after(10):
            await process.wait()


async def cluster(demo: Demo) -> None:
    cwd = demo.directory("cluster")
    redis = demo.alias(REDIS)
    lines = []
    async with redis_server(cwd, redis):
        servers: dict[str, Server] = {}
        async with (
            demo.server(
                cwd,
                ["serve", "--port", str(demo.alias(NODES["a"]))],
                REDIS_URL=f"redis://127.0.0.1:{redis}",
                PRESENCE_SERVER_NODE="a",
                PRESENCE_LOGGING_FILE="",
            ) as servers["a"],
            demo.server(
                cwd,
                ["serve", "--port", str(demo.alias(NODES["b"]))],
                REDIS_URL=f"redis://127.0.0.1:{redis}",
                PRESENCE_SERVER_NODE="b",
                PRESENCE_LOGGING_FILE="",
            ) as servers["b"],
        ):
            for name, shown in NODES.items():
                lines.append(
                    f"$ REDIS_URL=redis://127.0.0.1:{REDIS} PRESENCE_SERVER_NODE={name}"
                    f" python -m presence_actors serve --port {shown} &\n"
                )
            lines.append(await watch_alice(demo, cwd, servers))
            lines.append(
                await demo.sh(
                    f"python -m presence_actors status alice --url http://127.0.0.1:{NODES['a']}",
                    cwd,
                )
            )
    demo.out["cluster"] = "".join(lines)


async def watch_alice(demo: Demo, cwd: Path, servers: dict[str, Server]) -> str:
    """The watch from node b while alice's phone (node a) and laptop (node b) come and go."""
    command = f"python -m presence_actors watch alice --as bob --url http://127.0.0.1:{NODES['b']}"
    process = await trio.lowlevel.open_process(
        ["bash", "-c", demo.place(command)],
        cwd=cwd,
        env=demo.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    watcher = Server(process)
    phone = "userId=alice&deviceId=alice-phone&deviceType=mobile"
    laptop = "userId=alice&deviceId=alice-laptop&deviceType=desktop"
    try:
        with trio.fail_after(START_TIMEOUT):
            await watcher.read_until(r"alice  offline\n")
            async with talker(servers["a"].url, phone, "-") as alice_phone:
                await alice_phone.ws.get_message()  # welcome
                await watcher.read_until(r"alice  online\n")
                await trio.sleep(PAUSE)
                await alice_phone.ws.send_message(
                    json.dumps(
                        {"type": "set_status", "status": "busy", "statusMessage": "In a meeting"}
                    )
                )
                await watcher.read_until('alice  busy  "In a meeting"\n')
                await trio.sleep(PAUSE)
                async with talker(servers["b"].url, laptop, "-") as alice_laptop:
                    await alice_laptop.ws.get_message()
                    await watcher.read_until('alice  online  "In a meeting"\n')
                    await trio.sleep(PAUSE)
                await watcher.read_until(r'(?s)(alice  busy  "In a meeting"\n.*?){2}')
                await trio.sleep(PAUSE)
        # The phone is gone too: offline once the grace period (10 s) is over.
        with trio.fail_after(START_TIMEOUT):
            await watcher.read_until('alice  offline  "In a meeting"\n')
        await watcher.stop(signal.SIGINT)
    finally:
        if process.returncode is None:
            process.kill()
    return f"$ {command}\n{watcher.seen.decode()}^C\n"
