"""README's examples of the protocol: Set up, WebSocket, HTTP, Connect and gRPC.

Each function runs one section's examples and records their output (see
scripts/readme_examples.py for the order and the state they share)."""

# The commands are kept on one line each, as README shows them.
# ruff: noqa: E501

from __future__ import annotations

import contextlib
import json
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path

import trio
from readme_demo import (
    API,
    BEARER,
    CURL,
    EXAMPLES,
    JSON,
    ROOT,
    SERVICE,
    STEP,
    Demo,
    Server,
    free_port,
    holding,
    talker,
)
from trio_websocket import ConnectionClosed

# --- Set up and WebSocket ---------------------------------------------------------------


async def start(demo: Demo) -> None:
    """Starting in an empty directory, then Ctrl-C."""
    cwd = demo.directory("setup")
    async with demo.server(cwd, [], PRESENCE_SERVER_PORT=str(demo.port)) as server:
        said = server.seen.decode()
        rest = await server.stop(signal.SIGINT)
        assert server.process.returncode == 0, rest
    listing = await demo.sh("ls data logs", cwd)
    demo.out["start"] = demo.shown(f"$ python -m presence_actors\n{said}^C{rest}") + listing


async def websocket(demo: Demo) -> None:
    script = demo.directory("ws") / "websocket.py"
    script.write_text(demo.place((EXAMPLES / "websocket.py").read_text()))
    done = await trio.run_process(
        [sys.executable, str(script)], env=demo.env, capture_stdout=True, check=True
    )
    demo.out["websocket"] = demo.shown(done.stdout.decode())


async def connect_people(demo: Demo, main: Server, stack: AsyncExitStack) -> None:
    """bob back on his laptop within the grace period, carol (away, web), alice (busy)."""
    for query, steps in (
        (
            "userId=bob&deviceId=bob-laptop&deviceType=desktop",
            [{"type": "identify", "username": "Bob Kowalski"}],
        ),
        (
            "userId=carol&deviceId=carol-web&deviceType=web",
            [
                {"type": "identify", "username": "Carol Diaz"},
                {"type": "set_status", "status": "away"},
            ],
        ),
        (
            "userId=alice&deviceId=alice-phone&deviceType=mobile",
            [{"type": "set_status", "status": "busy"}],
        ),
    ):
        person = await stack.enter_async_context(holding(main.url, query))
        for step in steps:
            await person.tell(step)


async def privacy(demo: Demo, main: Server) -> None:
    lines: list[str] = []
    async with talker(
        main.url, "userId=erin&deviceId=erin-web&deviceType=web", "erin", lines
    ) as erin:
        await erin.drain()
        for message in (
            {"type": "set_privacy", "visibility": "contacts", "requestId": "a"},
            {"type": "block", "targetUserId": "bob", "requestId": "b"},
            {"type": "get_all_users", "status": "online", "limit": 2, "requestId": "c"},
            {"type": "unsubscribe", "userIds": ["alice"], "requestId": "d"},
            {"type": "set_status", "status": "online", "userId": "alice", "requestId": "e"},
        ):
            await erin.send(message)
        await erin.ws.send_message(json.dumps({"type": "logout"}))
        with contextlib.suppress(ConnectionClosed):  # read until the server's close
            while True:
                await erin.ws.get_message()
    demo.out["privacy"] = "\n".join(lines) + "\n"


async def contacts_mode(demo: Demo) -> None:
    cwd = demo.directory("contacts")
    port = str(free_port())
    async with demo.server(
        cwd, [], PRESENCE_PRESENCE_FANOUT="contacts", PRESENCE_SERVER_PORT=port
    ) as server:
        await admin(server.url, "PUT", "/api/admin/users/alice/contacts", {"contacts": ["bob"]})
        lines: list[str] = []
        async with holding(server.url, "userId=bob"):
            await trio.sleep(STEP)
            async with talker(
                server.url, "userId=alice&deviceId=alice-phone&deviceType=mobile", "alice", lines
            ) as alice:
                await alice.drain()
    demo.out["contacts-mode"] = "\n".join(lines) + "\n"


async def admin(base: str, method: str, path: str, body: object) -> None:
    def call() -> None:
        from urllib.request import Request, urlopen

        request = Request(f"{base}{path}", data=json.dumps(body).encode(), method=method)
        with urlopen(request, timeout=30) as answer:
            answer.read()

    await trio.to_thread.run_sync(call)


# --- HTTP, Connect, gRPC ----------------------------------------------------------------


async def http(demo: Demo, cwd: Path) -> None:
    await demo.session(
        "http-refusals",
        [
            f"{CURL} '{API}/api/users?limit=%C2%B2'",
            f"{CURL} '{API}/api/users/alice/history?since=99999999999999999999'",
            f"{CURL} '{API}/api/presence?ids=alice,zo%C3%AB'",
        ],
        cwd,
    )
    await demo.session(
        "http-reads",
        [
            f"curl -s {API}/api/users/carol",
            f"curl -s '{API}/api/users?limit=1'",
            f"{CURL} '{API}/api/users/zed'",
            f"curl -s '{API}/api/presence?ids=alice,zed' | python -m json.tool",
        ],
        cwd,
    )
    await demo.session(
        "http-admin",
        [
            f"""{CURL} -X PUT {API}/api/admin/users/alice/contacts -d '{{"contacts": ["bob"]}}'""",
            f"""curl -s -X PUT {BEARER} {API}/api/admin/users/alice/contacts -d '{{"contacts": ["bob", "carol"]}}'""",
            f"curl -s -X POST {BEARER} {API}/api/admin/users/bob/contacts/carol",
            f"curl -s -X DELETE {BEARER} {API}/api/admin/users/alice/contacts/carol",
            f"""curl -s -X PUT {BEARER} {API}/api/admin/users/carol/privacy -d '{{"visibility": "contacts"}}'""",
            f"curl -s {BEARER} {API}/api/admin/users/carol",
            f"{CURL} {API}/api/users/carol",
            f"curl -s '{API}/api/presence?ids=carol'",
            f"""{CURL} -X PUT {BEARER} {API}/api/admin/users/carol/privacy -d '{{"visibility": "secret"}}'""",
        ],
        cwd,
    )
    await demo.session(
        "http-history",
        [
            f"curl -s {API}/api/users/alice/history | python -m json.tool --compact",
            f"curl -s {API}/api/users/bob/history | python -m json.tool --compact",
            f"curl -s {API}/api/stats",
            f"curl -s {BEARER} {API}/api/stats | python -m json.tool",
            f"curl -s {BEARER} '{API}/api/admin/events?limit=3' | python -m json.tool",
        ],
        cwd,
    )
    await demo.session("http-unknown-route", [f"{CURL} -X POST {API}/api/users"], cwd)


async def connect(demo: Demo, cwd: Path) -> None:
    await demo.session(
        "connect",
        [
            f"""curl -s {JSON} -d '{{"userId": "alice"}}' {SERVICE}/GetUserStatus""",
            f"""curl -s {JSON} -d '{{"userIds": ["alice", "carol", "zed"]}}' {SERVICE}/GetMultipleUserStatus""",
            f"""curl -s {JSON} -d '{{"userId": "erin", "status": "AWAY", "statusMessage": "on the train"}}' {SERVICE}/SetUserStatus""",
            f"""curl -s {JSON} -d '{{"userId": "erin"}}' {SERVICE}/SendHeartbeat""",
            f"""curl -s {JSON} -d '{{"userId": "erin", "status": "OFFLINE"}}' {SERVICE}/SetUserStatus""",
            f"""{CURL} {JSON} -d '{{"userId": "erin"}}' {SERVICE}/SendHeartbeat""",
            f"""{CURL} {JSON} -d '{{"userId": "erin", "status": "USER_STATUS_UNSPECIFIED"}}' {SERVICE}/SetUserStatus""",
            f"""{CURL} {JSON} -d '{{"userId": "team/alice"}}' {SERVICE}/GetUserStatus""",
            f"""python -c 'print("[" * 15000 + "]" * 15000)' | {CURL} {JSON} --data-binary @- {SERVICE}/GetUserStatus""",
        ],
        cwd,
    )
    await demo.session(
        "connect-get",
        [f"curl -s '{SERVICE}/GetUserStatus?encoding=json&message=%7B%22userId%22%3A%22bob%22%7D'"],
        cwd,
    )


STUBS = (
    "mkdir -p stubs && python -m grpc_tools.protoc -I proto --python_out=stubs"
    " --grpc_python_out=stubs presence/v1/presence.proto"
)


async def grpc(demo: Demo) -> None:
    checkout = demo.directory("checkout")  # where README's commands run: a checkout
    (checkout / "proto").symlink_to(ROOT / "proto")
    generated = await demo.sh(STUBS, checkout)
    assert generated == f"$ {STUBS}\n", generated
    demo.out["grpc-stubs"] = STUBS + "\n"
    script = checkout / "stubs" / "grpc_example.py"
    script.write_text(demo.place((EXAMPLES / "grpc_example.py").read_text()))
    done = await trio.run_process(
        [sys.executable, "grpc_example.py"],
        cwd=checkout / "stubs",
        env=demo.env,
        capture_stdout=True,
        check=True,
    )
    demo.out["grpc"] = done.stdout.decode()
