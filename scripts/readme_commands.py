"""README's examples of the command line, the configuration and operations.

Each function runs one section's examples and records their output (see
scripts/readme_examples.py for the order and the state they share)."""

# The commands are kept on one line each, as README shows them.
# ruff: noqa: E501

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio
from readme_demo import (
    API,
    BEARER,
    CURL,
    EXAMPLES,
    JSON,
    JWT_SECRET,
    Demo,
    Server,
    connect_json,
    talker,
)

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
            await running.read_until(r"(?m)^me: .*\n")  # not "welcome: "
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
