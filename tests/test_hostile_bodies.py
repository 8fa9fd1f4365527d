"""Deeply nested and oversized bodies on every path that parses one (issue 11, item 2).

A JSON body of ~15,000 nested arrays to an RPC used to kill the process with
SIGSEGV inside protobuf-py's native JSON reader. Each test runs a real server
process, sends the hostile bodies through one transport, and checks both the
documented refusal and that the process is still there serving everyone else.
"""

from __future__ import annotations

import gzip
import json
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from .process_harness import ServerProcess, server_process, write_config

SERVICE = "/presence.v1.PresenceService"
UNARY = ["SetUserStatus", "GetUserStatus", "GetMultipleUserStatus", "SendHeartbeat"]
METHODS = [*UNARY, "SubscribeStatusUpdates"]
# 15,000 levels crashed the server; 10^6 unclosed brackets are 1 MB, just under the
# body limit, so that they reach the JSON check rather than the size check.
DEPTHS = [15_000, 10**6]
TIMEOUT = 20


def nested(depth: int) -> bytes:
    """``depth`` nested arrays: balanced while that stays under 1 MB, else only opened."""
    if 2 * depth <= 1 << 20:
        return b"[" * depth + b"]" * depth
    return b"[" * depth


def post(
    url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": content_type, **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


async def in_thread(call: Any, *args: Any) -> Any:
    with trio.fail_after(TIMEOUT):
        return await trio.to_thread.run_sync(call, *args, abandon_on_cancel=True)


async def still_serving(server: ServerProcess) -> None:
    """The process lives and answers an RPC and a health check."""
    assert server.alive, server.stderr()
    status, body, _ = await in_thread(
        post,
        f"{server.base_url}{SERVICE}/GetUserStatus",
        b'{"userId": "alice"}',
        "application/json",
    )
    assert (status, json.loads(body)["data"]["userId"]) == (200, "alice")
    status, _, _ = await in_thread(post, f"{server.base_url}/healthz", b"", "text/plain")
    assert status == 200


def connect_error(status: int, body: bytes) -> tuple[int, str, str]:
    error = json.loads(body)
    return status, error["code"], error["message"].split(":", 1)[0]


def envelope(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def grpc_web_status(body: bytes, headers: dict[str, str]) -> tuple[str, str]:
    """(grpc-status, the error code prefix of grpc-message) of a gRPC-Web answer."""
    fields = {k.lower(): v for k, v in headers.items()}
    while body and "grpc-status" not in fields:
        flags, size = struct.unpack(">BI", body[:5])
        if flags & 0x80:  # the trailers frame
            for line in body[5 : 5 + size].decode().split("\r\n"):
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        body = body[5 + size :]
    message = urllib.request.unquote(fields.get("grpc-message", ""))
    return fields["grpc-status"], message.split(":", 1)[0]


async def test_deep_json_over_connect_never_reaches_the_parser(tmp_path: Path) -> None:
    async with server_process(tmp_path, write_config(tmp_path / "config.toml")) as server:
        for method in UNARY:
            url = f"{server.base_url}{SERVICE}/{method}"
            for depth in DEPTHS:
                status, body, _ = await in_thread(post, url, nested(depth), "application/json")
                assert connect_error(status, body) == (400, "invalid_argument", "INVALID_JSON"), (
                    method,
                    depth,
                )
        # The streaming method speaks Connect's enveloped JSON.
        url = f"{server.base_url}{SERVICE}/SubscribeStatusUpdates"
        status, body, _ = await in_thread(
            post, url, envelope(nested(15_000)), "application/connect+json"
        )
        assert status == 200
        end = json.loads(body[5:])  # the end-of-stream message carries the error
        assert (end["error"]["code"], end["error"]["message"].split(":")[0]) == (
            "invalid_argument",
            "INVALID_JSON",
        )
        # Compressed, and in a GET's query: the check sees the message itself.
        url = f"{server.base_url}{SERVICE}/GetUserStatus"
        squeezed = gzip.compress(nested(100_000))
        status, body, _ = await in_thread(
            post, url, squeezed, "application/json", {"content-encoding": "gzip"}
        )
        assert connect_error(status, body) == (400, "invalid_argument", "INVALID_JSON")
        bomb = gzip.compress(b" " * (4 << 20))  # 4 KB that inflate to 4 MB
        status, body, _ = await in_thread(
            post, url, bomb, "application/json", {"content-encoding": "gzip"}
        )
        assert connect_error(status, body) == (429, "resource_exhausted", "TOO_LARGE")
        query = urllib.request.quote(nested(5_000).decode())

        def get() -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"{url}?encoding=json&message={query}") as reply:
                    return reply.status, reply.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()

        assert connect_error(*await in_thread(get)) == (400, "invalid_argument", "INVALID_JSON")
        # Past the body limit it is the size that is refused, before any parsing.
        balanced = b"[" * 10**6 + b"]" * 10**6
        status, body, _ = await in_thread(post, url, balanced, "application/json")
        assert connect_error(status, body) == (429, "resource_exhausted", "TOO_LARGE")
        await still_serving(server)


async def test_deep_json_over_grpc_web_never_reaches_the_parser(tmp_path: Path) -> None:
    async with server_process(tmp_path, write_config(tmp_path / "config.toml")) as server:
        for method in METHODS:
            url = f"{server.base_url}{SERVICE}/{method}"
            for depth in DEPTHS:
                status, body, headers = await in_thread(
                    post, url, envelope(nested(depth)), "application/grpc-web+json"
                )
                assert status == 200
                # 3 is INVALID_ARGUMENT
                assert grpc_web_status(body, headers) == ("3", "INVALID_JSON"), (method, depth)
        await still_serving(server)


async def send_then_read_until_closed(ws: WebSocketConnection, message: str) -> None:
    await ws.send_message(message)
    while True:
        await ws.get_message()


def nested_groups(depth: int) -> bytes:
    """Unknown field 15 as ``depth`` nested protobuf groups (start 0x7B, end 0x7C)."""
    return b"\x7b" * depth + b"\x7c" * depth


async def test_deep_protobuf_groups_are_refused_over_grpc_and_grpc_web(tmp_path: Path) -> None:
    async with server_process(tmp_path, write_config(tmp_path / "config.toml")) as server:
        url = f"{server.base_url}{SERVICE}/GetUserStatus"
        for depth in (10_000, 400_000):
            status, body, headers = await in_thread(
                post, url, envelope(nested_groups(depth)), "application/grpc-web+proto"
            )
            assert (status, grpc_web_status(body, headers)) == (200, ("3", "INVALID_MESSAGE"))

        def call_raw(data: bytes) -> tuple[grpc.StatusCode, str]:
            with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                rpc = channel.unary_unary(
                    f"{SERVICE}/GetUserStatus",
                    request_serializer=lambda raw: raw,
                    response_deserializer=lambda raw: raw,
                )
                with pytest.raises(grpc.RpcError) as failed:
                    rpc(data, timeout=TIMEOUT)
                error: Any = failed.value
                return error.code(), error.details()

        code, details = await in_thread(call_raw, nested_groups(400_000))
        assert (code, details.split(":")[0]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_MESSAGE",
        )
        await still_serving(server)


async def test_deep_json_in_rest_bodies_and_websocket_messages(tmp_path: Path) -> None:
    async with server_process(tmp_path, write_config(tmp_path / "config.toml")) as server:
        url = f"{server.base_url}/api/admin/users/alice/contacts"
        for depth in DEPTHS:

            def put(body: bytes) -> tuple[int, Any]:
                request = urllib.request.Request(url, data=body, method="PUT")
                try:
                    with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
                        return reply.status, json.loads(reply.read())
                except urllib.error.HTTPError as error:
                    return error.code, json.loads(error.read())

            status, body = await in_thread(put, nested(depth))
            assert (status, body["error"]["code"]) == (400, "INVALID_JSON"), depth
        status, body = await in_thread(put, b"[" * 10**6 + b"]" * 10**6)
        assert (status, body["error"]["code"]) == (413, "TOO_LARGE")

        ws_url = server.base_url.replace("http", "ws", 1) + "/ws?userId=bob"
        with trio.fail_after(TIMEOUT):
            async with open_websocket_url(ws_url) as ws:
                assert json.loads(await ws.get_message())["type"] == "welcome"
                await ws.send_message(nested(30_000).decode())  # 60 KB: under the frame limit
                assert json.loads(await ws.get_message())["code"] == "INVALID_JSON"
                await ws.send_message('{"type": "get_online_count"}')
                assert json.loads(await ws.get_message())["type"] == "online_count"
                # Past the frame limit the reader stops at the limit and closes (1009).
                # The close races this client's own sending, which may end in a reset
                # (1006 here): how the close reaches a client still sending belongs to
                # the frame layer; what matters here is that nothing parsed the message.
                with pytest.raises(ConnectionClosed) as closed:
                    await send_then_read_until_closed(ws, nested(10**6).decode())
                assert closed.value.reason.code in (1009, 1006)
        await still_serving(server)
