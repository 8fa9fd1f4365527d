"""Run every example README.md shows, top to bottom, on servers this script starts.

    python scripts/readme_examples.py            # print each example
    python scripts/readme_examples.py --check    # compare with README.md (exit 1 if they differ)
    python scripts/readme_examples.py --write    # put the output into README.md

Nothing is assumed to exist: the script makes a temporary directory, starts fresh servers
in it (``python -m presence_actors`` from this checkout, on free ports), builds the state
each example needs, and runs each command as README shows it, through ``bash`` (``curl``
and ``sqlite3`` must be installed). The main server runs as README says,
``PRESENCE_AUTH_ADMIN_TOKEN=ops-secret python -m presence_actors``, with its port given as
``PRESENCE_SERVER_PORT``; the commands of its examples run in that same environment, and
README shows its port as 8080. ``--check`` compares without what differs from run to run
(times, ids, ports, tokens): scripts/readme_blocks.py says what, and how README marks its
blocks. tests/test_readme_examples.py runs ``--check``; after changing what a command
prints, run ``--write`` and read the diff.

The order is the one that builds the state, not README's: ``watch`` runs before the
``status`` that shows what dave's watch left behind, for instance.
"""

# The commands are kept on one line each, as README shows them.
# ruff: noqa: E501

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_blocks import README, ROOT, differences, rewrite
from readme_demo import STEP, Demo, Server, connect_json, free_port, holding, talker

ADMIN = "ops-secret"
JWT_SECRET = "change-me-to-32-bytes-or-more-please"
EXAMPLES = ROOT / "docs" / "examples"


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
    return demo.out


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

CURL = "curl -s -w ' HTTP %{http_code}\\n'"
API = "http://127.0.0.1:8080"
BEARER = f"-H 'Authorization: Bearer {ADMIN}'"
JSON = "-H 'Content-Type: application/json'"
SERVICE = f"{API}/presence.v1.PresenceService"


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


# --- the command line ------------------------------------------------------------------


def refused_port() -> tuple[socket.socket, int]:
    """A port nothing listens on (held, never listening): 8081 if it is free."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 8081))
    except OSError:
        sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


async def cli(demo: Demo, cwd: Path, env: dict[str, str]) -> None:
    await demo.session("help", ["python -m presence_actors --help"], cwd)
    empty = demo.directory("empty")
    demo.out["cli-errors"] = "".join(
        [
            await demo.sh("python -m presence_actors --prot 9000", empty),
            # The main server holds the port (README's 8080).
            await demo.sh(
                "python -m presence_actors --port 8080",
                empty,
                run=f"python -m presence_actors --port {demo.port}",
            ),
            await demo.sh(
                "PRESENCE_SERVER_TLS_CERT_FILE=cert.pem PRESENCE_SERVER_TLS_KEY_FILE=key.pem"
                " python -m presence_actors",
                empty,
            ),
        ]
    )
    await watch(demo, cwd, env)
    sock, port = refused_port()
    with sock:
        await demo.session(
            "status",
            [
                "python -m presence_actors status alice bob carol zed",
                "python -m presence_actors status alice dave",
                f"python -m presence_actors status --url http://127.0.0.1:{port} alice",
            ],
            cwd,
            **env,
        )
    await demo.session(
        "export",
        [
            "python -m presence_actors export-json users.json",
            "python -m presence_actors export-json users.json",
            "head -9 users.json",
        ],
        cwd,
    )
    other = demo.directory("other")
    shutil.copy(cwd / "users.json", other / "users.json")
    await demo.session(
        "import",
        [
            "python -m presence_actors import-json users.json",
            """echo '{"ok": {"lastSeen": "2026-11-20T09:00:00Z"}, "bad id": {}}' > seed.json""",
            "python -m presence_actors import-json seed.json",
        ],
        other,
    )
    await demo.session(
        "token",
        [
            f"PRESENCE_AUTH_JWT_SECRET={JWT_SECRET} python -m presence_actors token alice --ttl 30m",
            "python -m presence_actors token alice",
        ],
        demo.directory("empty"),
    )


async def watch(demo: Demo, cwd: Path, env: dict[str, str]) -> None:
    """dave comes online over Connect, says "back", then leaves."""
    command = "python -m presence_actors watch alice dave"
    process = await trio.lowlevel.open_process(
        command.split(),
        cwd=cwd,
        env={**demo.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    watcher = Server(process)
    try:
        with trio.fail_after(60):
            await watcher.read_until(r"dave  offline\n")
            base = f"http://127.0.0.1:{demo.port}"
            # Two calls, two changes: one call would be one push or two, as the engine's
            # ticks fall.
            await connect_json(base, "SetUserStatus", {"userId": "dave", "status": "ONLINE"})
            await watcher.read_until("dave  online\n")
            await connect_json(
                base,
                "SetUserStatus",
                {"userId": "dave", "status": "ONLINE", "statusMessage": "back"},
            )
            await watcher.read_until('dave  online  "back"\n')
            await connect_json(base, "SetUserStatus", {"userId": "dave", "status": "OFFLINE"})
            await watcher.read_until('dave  offline  "back"\n')
        rest = await watcher.stop(signal.SIGINT)
        assert process.returncode == 0, rest
    finally:
        if process.returncode is None:
            process.kill()
    demo.out["watch"] = f"$ {command}\n{watcher.seen.decode()}^C\n"


async def client(demo: Demo, main: Server) -> None:
    """frank's client; dave sets himself away over Connect while it listens."""
    script = demo.directory("client") / "client.py"
    script.write_text(demo.place((EXAMPLES / "client.py").read_text()))
    process = await trio.lowlevel.open_process(
        [sys.executable, str(script)], env=demo.env, stdout=subprocess.PIPE
    )
    running = Server(process)
    try:
        with trio.fail_after(60):
            await running.read_until(r"me: .*\n")
            await connect_json(main.url, "SetUserStatus", {"userId": "dave", "status": "AWAY"})
            await running.read_until(r"push: dave away\n")
            while chunk := await process.stdout.receive_some():  # type: ignore[union-attr]
                running.seen += chunk
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
    demo.out["client"] = running.seen.decode()


# --- Configuration and Operations ------------------------------------------------------------


async def configuration(demo: Demo) -> None:
    await demo.session(
        "workers-refused", ["python -m presence_actors --workers 2"], demo.directory("empty")
    )
    await demo.session(
        "config-errors",
        [
            "PRESENCE_PRESENCE_GRACE_PERIOD=abc python -m presence_actors",
            "PRESENCE_PRESENCE_FANOUT=friends PRESENCE_LIMITS_BURST=0 python -m presence_actors",
            "USER_STATUS_TTL=10s python -m presence_actors",
            "PRESENCE_SERVER_PROT=9000 PRESENCE_AUTH_MODE=jwt python -m presence_actors",
            "PRESENCE_AUTH_MODE=jwt PRESENCE_AUTH_JWT_SECRET=abc python -m presence_actors",
        ],
        demo.directory("empty"),
    )


async def jwt_server(demo: Demo) -> None:
    cwd = demo.directory("jwt")
    env = {"PRESENCE_AUTH_MODE": "jwt", "PRESENCE_AUTH_JWT_SECRET": JWT_SECRET}
    async with demo.server(cwd, ["serve", "--port", "0"], **env) as server:
        url = server.url
        service = f"{url}/presence.v1.PresenceService"
        demo.out["jwt"] = await demo.script(
            [
                "TOKEN=$(python -m presence_actors token alice)",
                f"{CURL} {url}/api/users",
                f"""curl -s -H "Authorization: Bearer $TOKEN" {url}/api/users""",
                f"""{CURL} -X PUT {url}/api/admin/users/alice/privacy -d '{{"visibility":"nobody"}}'""",
                f"""curl -s {JSON} -H "Authorization: Bearer $TOKEN" -d '{{"status": "ONLINE"}}' {service}/SetUserStatus""",
                f"""python -m presence_actors status --url {url} alice""",
                f"""python -m presence_actors status --url {url} --token "$TOKEN" alice""",
            ],
            cwd,
            **env,
        )


async def operations(demo: Demo, cwd: Path, env: dict[str, str]) -> None:
    await demo.session("health", [f"curl -si {API}/healthz", f"curl -s {API}/readyz"], cwd)
    metrics = "'^presence_(connections|online_users|known_users|errors_total|closes_total)[ {]'"
    await demo.session(
        "metrics",
        [
            f"{CURL} {API}/metrics",
            f"curl -s {BEARER} {API}/metrics | grep -E {metrics}",
        ],
        cwd,
    )
    await demo.session("database-in-use", ["python -m presence_actors --port 8081"], cwd, **env)
    await demo.session(
        "backup",
        [
            'sqlite3 data/presence.db ".backup presence-backup.db"',
            'sqlite3 presence-backup.db "select count(*) from users; pragma integrity_check;"',
        ],
        cwd,
    )


async def restarts(demo: Demo, cwd: Path, main: Server, env: dict[str, str]) -> None:
    """A clean stop, bob back after a restart, a kill -9, and the next start."""
    await main.stop(signal.SIGINT)
    async with (
        demo.server(cwd, [], **env) as again,
        talker(again.url, "userId=bob&deviceId=bob-laptop&deviceType=desktop", "-") as bob,
    ):
        await bob.ws.get_message()
        await trio.sleep(0.5)  # past flush_interval: the connect is committed
        again.process.kill()
        with trio.fail_after(30):
            await again.process.wait()
    async with demo.server(cwd, [], **env) as recovered:
        said = recovered.seen.decode().splitlines()
        [line] = [line for line in said if "recovered from an unclean stop" in line]
        demo.out["logging"] = line + "\n"
        await demo.session(
            "restart-history",
            [f"curl -s {API}/api/users/bob/history | python -m json.tool --compact"],
            cwd,
        )
        await recovered.stop(signal.SIGTERM)


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
