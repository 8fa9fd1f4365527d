"""Issue 14, item 5: deploy/nginx.conf in front of a real server, with a real nginx.

The test renders deploy/nginx.conf with its own names, loopback ports and a
self-signed certificate (every value it replaces must be found exactly where the
file says, so the file cannot drift from what is tested), starts the OS's nginx
on it in the foreground, and talks through it: WebSocket (upgrade over TLS),
REST, Connect (HTTP/1.1) and gRPC (HTTP/2 to nginx, h2c to the server). nginx is
stopped by its pid. Skipped where no nginx is installed (.ci/run installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import attrs
import grpc
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from presence_actors.config import parse_duration

from .process_harness import ServerProcess, server_process, write_config
from .server_harness import RawClient, self_signed_certificate

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
ADMIN_TOKEN = "proxy-ops-secret"
# Every bounded wait: nginx starts in milliseconds; a busy machine is slower.
WAIT = 20

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="needs nginx (apt-get install -y nginx); .ci/run installs it"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(template: str, *, plain: int, tls: int, upstream: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with this test's values; each must be where the file has it."""
    replacements = [
        ("listen 80;", f"listen 127.0.0.1:{plain};", 1),
        ("listen [::]:80;", "", 1),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{tls} ssl http2;", 1),
        ("listen [::]:443 ssl http2;", "", 1),
        ("server_name presence.example.com;", "server_name localhost;", 2),
        ("/etc/letsencrypt/live/presence.example.com/fullchain.pem", str(cert), 1),
        ("/etc/letsencrypt/live/presence.example.com/privkey.pem", str(key), 1),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};", 2),
    ]
    for old, new, count in replacements:
        assert template.count(old) == count, f"deploy/nginx.conf no longer has {old!r} x{count}"
        template = template.replace(old, new)
    return template


def main_config(directory: Path, site: Path) -> str:
    """The main nginx.conf around the site: everything in ``directory``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read tmp_path
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n    access_log {directory / 'access.log'};\n{temp}\n"
        f"    include {site};\n}}\n"
    )


@attrs.frozen
class Proxy:
    server: ServerProcess
    https: str  # https://localhost:PORT
    plain: str  # http://127.0.0.1:PORT
    tls_port: int
    cert: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


async def wait_for_port(port: int, nginx: trio.Process, log: Path) -> None:
    with trio.fail_after(WAIT):
        while True:
            if nginx.returncode is not None:
                text = await trio.Path(log).read_text(errors="replace")
                raise AssertionError(f"nginx exited: {text}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def proxied(tmp_path: Path, **server: dict[str, object]) -> AsyncIterator[Proxy]:
    """A server process behind nginx (deploy/nginx.conf), TLS ending at nginx."""
    assert NGINX is not None
    plain, tls = free_port(), free_port()
    origin = f"https://localhost:{tls}"
    sections: dict[str, dict[str, object]] = {
        "persistence": {"path": str(tmp_path / "presence.db")},
        "auth": {"admin_token": ADMIN_TOKEN, "allowed_origins": [origin]},
        **server,
    }
    config = write_config(tmp_path / "config.toml", **sections)
    cert, key = self_signed_certificate(tmp_path)
    nginx_dir = tmp_path / "nginx"
    nginx_dir.mkdir()
    async with server_process(tmp_path, config) as upstream:
        site = nginx_dir / "presence-actors.conf"
        site.write_text(
            render(
                TEMPLATE.read_text(),
                plain=plain,
                tls=tls,
                upstream=upstream.port,
                cert=cert,
                key=key,
            )
        )
        main = nginx_dir / "nginx.conf"
        main.write_text(main_config(nginx_dir, site))
        log = nginx_dir / "error.log"
        argv = [NGINX, "-e", str(log), "-p", str(nginx_dir), "-c", str(main)]
        with trio.fail_after(WAIT):
            test = await trio.run_process([*argv, "-t"], capture_stderr=True, check=False)
        assert test.returncode == 0, test.stderr.decode()
        nginx = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL)
        try:
            await wait_for_port(tls, nginx, log)
            yield Proxy(upstream, origin, f"http://127.0.0.1:{plain}", tls, cert)
        finally:
            nginx.send_signal(signal.SIGQUIT)  # graceful stop, by its pid
            with trio.move_on_after(10):
                await nginx.wait()
            if nginx.returncode is None:
                nginx.kill()
                with trio.move_on_after(5):
                    await nginx.wait()
        assert "[emerg]" not in await trio.Path(log).read_text(errors="replace")


def request(
    proxy: Proxy, method: str, path: str, body: object = None, **headers: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One HTTPS request through nginx (blocking): status, JSON answer, headers."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    call = urllib.request.Request(f"{proxy.https}{path}", data=data, method=method)
    for name, value in headers.items():
        call.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(call, timeout=WAIT, context=proxy.ssl_context()) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@asynccontextmanager
async def ws_through(
    proxy: Proxy, user_id: str, origin: str | None = None
) -> AsyncIterator[RawClient]:
    headers = [(b"origin", (origin or proxy.https).encode())]
    url = f"wss://localhost:{proxy.tls_port}/ws?userId={user_id}"
    async with open_websocket_url(
        url, ssl_context=proxy.ssl_context(), extra_headers=headers
    ) as ws:
        client = RawClient(ws)
        await client.expect("welcome")
        yield client


def grpc_stub(proxy: Proxy, stubs: SimpleNamespace) -> Any:
    credentials = grpc.ssl_channel_credentials(root_certificates=proxy.cert.read_bytes())
    channel = grpc.secure_channel(f"localhost:{proxy.tls_port}", credentials)
    return channel, stubs.rpc.PresenceServiceStub(channel)


# --- the tests --------------------------------------------------------------------------


async def test_websocket_rest_connect_and_grpc_through_nginx(
    tmp_path: Path,
    stubs: SimpleNamespace,
) -> None:
    async with proxied(tmp_path) as proxy:
        channel, presence = grpc_stub(proxy, stubs)
        pb = stubs.pb
        with channel:
            # A gRPC stream over HTTP/2 through nginx, watching alice.
            stream = presence.SubscribeStatusUpdates(
                pb.SubscribeStatusUpdatesRequest(watch_user_ids=["alice"]), timeout=WAIT
            )
            first = await trio.to_thread.run_sync(next, stream)
            assert (first.user_id, first.status) == ("alice", pb.OFFLINE)
            async with ws_through(proxy, "alice") as alice, ws_through(proxy, "bob") as bob:
                reply = await alice.request(
                    {"type": "set_status", "status": "busy", "statusMessage": "proxied"},
                    "status_updated",
                )
                assert reply["effectiveStatus"] == "busy"
                pushed = await bob.expect("user_status_change")
                assert (pushed["userId"], pushed["status"]) == ("alice", "busy")
                seen = [await trio.to_thread.run_sync(next, stream) for _ in range(2)]
                assert [pb.UserStatus.Name(e.status) for e in seen] == ["ONLINE", "BUSY"]
                assert seen[1].status_message == "proxied"

                # REST through nginx, and an admin change with the token.
                status, body, _ = await trio.to_thread.run_sync(
                    request, proxy, "GET", "/api/users/alice"
                )
                assert (status, body["user"]["status"]) == (200, "busy")
                status, body, _ = await trio.to_thread.run_sync(
                    lambda: request(
                        proxy,
                        "PUT",
                        "/api/admin/users/alice/contacts",
                        {"contacts": ["bob"]},
                        Authorization=f"Bearer {ADMIN_TOKEN}",
                    )
                )
                assert (status, body["contacts"]) == (200, ["bob"])
                # Connect (JSON over HTTP/1.1) takes the proxy_pass side of the location.
                status, body, _ = await trio.to_thread.run_sync(
                    lambda: request(
                        proxy,
                        "POST",
                        "/presence.v1.PresenceService/GetUserStatus",
                        {"userId": "alice"},
                        Content_Type="application/json",
                    )
                )
                assert (status, body["data"]["status"]) == (200, "BUSY")
                # gRPC unary calls (h2c upstream).
                answer = await trio.to_thread.run_sync(
                    lambda: presence.SetUserStatus(
                        pb.SetUserStatusRequest(user_id="carol", status=pb.AWAY), timeout=WAIT
                    )
                )
                assert pb.UserStatus.Name(answer.data.status) == "AWAY"
                many = await trio.to_thread.run_sync(
                    lambda: presence.GetMultipleUserStatus(
                        pb.GetMultipleUserStatusRequest(user_ids=["alice", "carol"]),
                        timeout=WAIT,
                    )
                )
                assert [pb.UserStatus.Name(u.status) for u in many.data] == ["BUSY", "AWAY"]
            stream.cancel()


async def test_bodies_over_the_server_limit_get_the_servers_own_answer(tmp_path: Path) -> None:
    """nginx's client_max_body_size sits above the server's 1 MiB: the client reads the
    server's JSON TOO_LARGE, not an nginx HTML page."""
    async with proxied(tmp_path) as proxy:
        body = b'{"contacts": ["' + b"a" * (1 << 20) + b'"]}'
        status, answer, _ = await trio.to_thread.run_sync(
            lambda: request(
                proxy,
                "PUT",
                "/api/admin/users/alice/contacts",
                body,
                Authorization=f"Bearer {ADMIN_TOKEN}",
            )
        )
    assert (status, answer["error"]["code"]) == (413, "TOO_LARGE")


async def test_the_proxy_passes_origin_for_allowed_origins(tmp_path: Path) -> None:
    """auth.allowed_origins holds the site's https origin; nginx passes Origin as sent."""
    async with proxied(tmp_path) as proxy:
        async with ws_through(proxy, "alice") as alice:
            reply = await alice.request({"type": "get_online_count"}, "online_count")
            assert reply["count"] == 1
        url = f"wss://localhost:{proxy.tls_port}/ws?userId=mallory"
        headers = [(b"origin", b"https://evil.example")]
        async with open_websocket_url(
            url, ssl_context=proxy.ssl_context(), extra_headers=headers
        ) as ws:
            refusal = json.loads(await ws.get_message())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
    assert (refusal["code"], refusal["message"]) == (
        "FORBIDDEN",
        "origin 'https://evil.example' is not allowed",
    )
    assert closed.value.reason.code == 1008


async def test_plain_http_is_redirected_to_https(tmp_path: Path) -> None:
    async with proxied(tmp_path) as proxy:

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        def get() -> tuple[int, str]:
            opener = urllib.request.build_opener(NoRedirect)
            try:
                opener.open(f"{proxy.plain}/api/users?limit=1", timeout=WAIT)
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers["Location"]
            raise AssertionError("no redirect")

        code, location = await trio.to_thread.run_sync(get)
    assert (code, location) == (308, "https://127.0.0.1/api/users?limit=1")


def test_the_proxy_waits_longer_than_the_servers_heartbeat_timeout() -> None:
    """nginx must never be the one that hangs up an idle but healthy session."""
    defaults = tomllib.loads((ROOT / "config.toml").read_text())["presence"]
    timeout = parse_duration(defaults["heartbeat_timeout"])
    interval = parse_duration(defaults["heartbeat_interval"])
    text = TEMPLATE.read_text()
    ws = text[text.index("location = /ws") :]
    ws = ws[: ws.index("}")]
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        match = re.search(rf"{directive} (\d+)s;", ws)
        assert match is not None, directive
        assert int(match[1]) > timeout > interval


def test_nginx_is_the_one_the_test_means() -> None:
    """What ran: the OS package's nginx, with the modules the file needs."""
    assert NGINX is not None
    version = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=WAIT).stderr
    assert "--with-http_ssl_module" in version
    assert "--with-http_v2_module" in version
    assert "--without-http_grpc_module" not in version
    assert sys.platform.startswith("linux")
