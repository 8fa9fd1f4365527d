"""``presence.v1.PresenceService`` on the server's one port, through real clients.

The official ``grpcio`` client (stubs generated here from the same .proto)
speaks gRPC over HTTP/2 cleartext with prior knowledge and over TLS; ``urllib``
speaks the Connect protocol's JSON and gRPC-Web. grpcio is synchronous, so
every call runs in a worker thread and the trio loop serving the server never
blocks. gRPC runs in real time here: waits are short and bounded.
"""

from __future__ import annotations

import functools
import json
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import jwt
import pytest
import trio

from presence_actors.actors import StatsQuery
from presence_actors.gateway.grpc_api import GRPC_CODES
from presence_actors.gateway.server import RunningServer
from presence_actors.protocol import ErrorCode

from .server_harness import running_server, self_signed_certificate, ws_client

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "presence_actors" / "gateway" / "grpc_gen"
SERVICE = "/presence.v1.PresenceService"
# Deadline of every RPC, so that a broken server fails a test instead of hanging it.
RPC_TIMEOUT = 5.0
JWT_SECRET = "a-test-secret-of-at-least-32-bytes!"  # HS256 wants 32 bytes

Metadata = Sequence[tuple[str, str]]


# --- clients -----------------------------------------------------------------------


class Client:
    """A grpcio stub whose calls run in worker threads."""

    def __init__(self, stub: Any, pb: Any) -> None:
        self.stub = stub
        self.pb = pb

    async def call(self, method: str, metadata: Metadata = (), **fields: Any) -> Any:
        rpc = getattr(self.stub, method)
        request = getattr(self.pb, f"{method}Request")(**fields)
        return await trio.to_thread.run_sync(
            functools.partial(rpc, request, timeout=RPC_TIMEOUT, metadata=metadata),
            abandon_on_cancel=True,
        )

    async def error(
        self, method: str, metadata: Metadata = (), **fields: Any
    ) -> tuple[grpc.StatusCode, str]:
        """The status of a call that must fail."""
        with pytest.raises(grpc.RpcError) as failed:
            await self.call(method, metadata, **fields)
        error: Any = failed.value
        return error.code(), error.details()

    @asynccontextmanager
    async def stream(self, metadata: Metadata = (), **fields: Any) -> AsyncIterator[Stream]:
        request = self.pb.SubscribeStatusUpdatesRequest(**fields)
        call = self.stub.SubscribeStatusUpdates(request, timeout=30, metadata=metadata)
        try:
            yield Stream(call, self.pb)
        finally:
            call.cancel()


class Stream:
    def __init__(self, call: Any, pb: Any) -> None:
        self.call = call
        self.pb = pb

    async def next(self) -> Any:
        with trio.fail_after(RPC_TIMEOUT):
            return await trio.to_thread.run_sync(next, self.call, abandon_on_cancel=True)

    async def error(self) -> tuple[grpc.StatusCode, str]:
        """The status the stream ends with, which must be an error."""
        with pytest.raises(grpc.RpcError) as failed:
            await self.next()
        error: Any = failed.value
        return error.code(), error.details()

    async def take(self, count: int) -> list[tuple[str, str]]:
        """The next ``count`` events as (user_id, status name)."""
        return [self.brief(await self.next()) for _ in range(count)]

    def brief(self, event: Any) -> tuple[str, str]:
        return event.user_id, self.pb.UserStatus.Name(event.status)


@asynccontextmanager
async def grpc_client(
    target: str, stubs: SimpleNamespace, channel: Any = None
) -> AsyncIterator[Client]:
    channel = channel or grpc.insecure_channel(target)
    try:
        yield Client(stubs.rpc.PresenceServiceStub(channel), stubs.pb)
    finally:
        channel.close()


@asynccontextmanager
async def serving(
    tmp_path: Path, stubs: SimpleNamespace, **sections: dict[str, Any]
) -> AsyncIterator[tuple[RunningServer, Client]]:
    async with (
        running_server(tmp_path, **sections) as server,
        grpc_client(f"127.0.0.1:{server.port}", stubs) as client,
    ):
        yield server, client


async def sessions(server: RunningServer) -> int:
    stats = await server.engine.ask(StatsQuery())
    return int(stats.sessions)


async def sessions_become(server: RunningServer, count: int) -> None:
    """Wait (bounded) until the engine holds ``count`` sessions."""
    with trio.fail_after(RPC_TIMEOUT):
        while await sessions(server) != count:
            await trio.sleep(0.01)


def http_post(url: str, body: bytes, content_type: str) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


# --- the generated code ------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def test_generated_code_matches_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--out", str(tmp_path)],
        check=True,
        timeout=60,
    )
    assert _tree(tmp_path) == _tree(GENERATED), "stale: run python scripts/generate_proto.py"


def test_every_error_code_has_a_grpc_status() -> None:
    assert {code: status.name for code, status in GRPC_CODES.items()} == {
        ErrorCode.INVALID_JSON: "INVALID_ARGUMENT",
        ErrorCode.INVALID_MESSAGE: "INVALID_ARGUMENT",
        ErrorCode.UNKNOWN_TYPE: "UNIMPLEMENTED",
        ErrorCode.INVALID_STATUS: "INVALID_ARGUMENT",
        ErrorCode.INVALID_USER_ID: "INVALID_ARGUMENT",
        ErrorCode.USER_NOT_FOUND: "NOT_FOUND",
        ErrorCode.UNAUTHORIZED: "UNAUTHENTICATED",
        ErrorCode.FORBIDDEN: "PERMISSION_DENIED",
        ErrorCode.RATE_LIMITED: "RESOURCE_EXHAUSTED",
        ErrorCode.TOO_LARGE: "RESOURCE_EXHAUSTED",
        ErrorCode.LIMIT_EXCEEDED: "RESOURCE_EXHAUSTED",
        ErrorCode.STORE_ERROR: "UNAVAILABLE",
        ErrorCode.INTERNAL: "INTERNAL",
    }


# --- unary RPCs ----------------------------------------------------------------------


async def test_status_lifecycle_over_grpc(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs, presence={"heartbeat_interval": 15.0}) as (server, grpc_):
        reply = await grpc_.call(
            "SetUserStatus", user_id="alice", status=pb.BUSY, status_message="in a call"
        )
        assert (reply.success, reply.data.user_id, reply.data.status) == (True, "alice", pb.BUSY)
        assert reply.data.status_message == "in a call"
        assert reply.data.last_seen > 0

        beat = await grpc_.call("SendHeartbeat", user_id="alice")
        assert (beat.success, beat.next_heartbeat_in_seconds) == (True, 15)

        one = await grpc_.call("GetUserStatus", user_id="alice")
        assert (one.data.status, one.data.status_message) == (pb.BUSY, "in a call")
        many = await grpc_.call("GetMultipleUserStatus", user_ids=["nobody-here", "alice"])
        assert [(d.user_id, d.status, d.last_seen) for d in many.data] == [
            ("nobody-here", pb.OFFLINE, 0),
            ("alice", pb.BUSY, one.data.last_seen),
        ]
        empty = await grpc_.call("GetMultipleUserStatus", user_ids=[])
        assert (empty.success, list(empty.data)) == (True, [])

        # OFFLINE logs the session out: offline at once, no grace period.
        ended = await grpc_.call("SetUserStatus", user_id="alice", status=pb.OFFLINE)
        assert (ended.message, ended.data.status) == ("gRPC session ended", pb.OFFLINE)
        assert (await grpc_.call("GetUserStatus", user_id="alice")).data.status == pb.OFFLINE
        assert await sessions(server) == 0
        again = await grpc_.call("SetUserStatus", user_id="alice", status=pb.OFFLINE)
        assert again.message == "no gRPC session to end"
        assert await grpc_.error("SendHeartbeat", user_id="alice") == (
            grpc.StatusCode.NOT_FOUND,
            "USER_NOT_FOUND: alice has no gRPC session (it expired or was never opened): "
            "call SetUserStatus first",
        )


async def test_concurrent_calls_share_one_session(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs) as (server, grpc_):
        replies: list[Any] = []

        async def call(method: str, **fields: Any) -> None:
            replies.append(await grpc_.call(method, user_id="alice", **fields))

        async with trio.open_nursery() as nursery:  # all open alice's session at once
            for status in (pb.ONLINE, pb.AWAY, pb.BUSY, pb.ONLINE):
                nursery.start_soon(functools.partial(call, "SetUserStatus", status=status))
        async with trio.open_nursery() as nursery:
            for status in (pb.ONLINE, pb.AWAY, pb.BUSY, pb.ONLINE):
                nursery.start_soon(functools.partial(call, "SetUserStatus", status=status))
                nursery.start_soon(functools.partial(call, "SendHeartbeat", active=True))
        assert [r.success for r in replies] == [True] * 12
        assert len(server.app.grpc.service.ttl_sessions) == 1
        assert await sessions(server) == 1


async def test_error_statuses(
    tmp_path: Path, stubs: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    pb = stubs.pb
    invalid, exhausted = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
    sections = {"presence": {"max_sessions_per_user": 1}, "limits": {"max_ids_per_request": 3}}
    async with serving(tmp_path, stubs, **sections) as (server, grpc_):
        code, message = await grpc_.error("SetUserStatus", user_id="alice")
        assert (code, message) == (
            invalid,
            "INVALID_STATUS: status must be ONLINE (1), OFFLINE (2), AWAY (3) or BUSY (4), got 0",
        )
        code, message = await grpc_.error("SetUserStatus", user_id="alice", status=7)
        assert (code, message.endswith("got 7")) == (invalid, True)
        code, message = await grpc_.error("SetUserStatus", user_id="not valid!", status=pb.ONLINE)
        assert (code, message) == (
            invalid,
            "INVALID_USER_ID: user_id 'not valid!' has ' ' (U+0020) at position 4:"
            " only A-Z a-z 0-9 _ . : @ - are allowed",
        )
        code, message = await grpc_.error(
            "SetUserStatus", user_id="alice", status=pb.ONLINE, status_message="x" * 141
        )
        assert (code, message) == (
            invalid,
            "INVALID_MESSAGE: status_message is limited to 140 characters",
        )
        code, message = await grpc_.error("GetUserStatus", user_id="")
        assert (code, message) == (
            invalid,
            "INVALID_USER_ID: user_id is required: 1-128 characters from A-Z a-z 0-9 _ . : @ -",
        )
        code, message = await grpc_.error("GetMultipleUserStatus", user_ids=["a", "b", "c", "d"])
        assert (code, message) == (exhausted, "LIMIT_EXCEEDED: at most 3 user ids per request")

        async with ws_client(server, "bob"):  # bob's one allowed session
            code, message = await grpc_.error("SetUserStatus", user_id="bob", status=pb.ONLINE)
            assert (code, message) == (exhausted, "LIMIT_EXCEEDED: at most 1 sessions per user")
        assert len(server.app.grpc.service.ttl_sessions) == 0

        async with grpc_.stream(user_id="bob", watch_user_ids=["a", "b", "c", "d"]) as stream:
            assert await stream.error() == (
                exhausted,
                "LIMIT_EXCEEDED: at most 3 user ids per request",
            )
        async with grpc_.stream(user_id="bob") as stream:
            assert await stream.error() == (
                invalid,
                "INVALID_MESSAGE: watch_user_ids must not be empty",
            )

        # Refusals of the authenticator (jwt mode) and an engine that does not answer.
        for refusal, status in [
            (ErrorCode.UNAUTHORIZED, grpc.StatusCode.UNAUTHENTICATED),
            (ErrorCode.FORBIDDEN, grpc.StatusCode.PERMISSION_DENIED),
        ]:
            refuse = _refusing(refusal)
            monkeypatch.setattr(server.app.auth, "acting_user", refuse)
            for method, fields in [
                ("SetUserStatus", {"user_id": "alice", "status": pb.ONLINE}),
                ("SendHeartbeat", {"user_id": "alice"}),
                ("GetUserStatus", {"user_id": "alice", "viewer_id": "bob"}),
            ]:
                assert await grpc_.error(method, **fields) == (status, f"{refusal.value}: no")
        monkeypatch.undo()

        async def too_slow(query: object) -> object:
            raise trio.TooSlowError

        monkeypatch.setattr(server.engine, "ask", too_slow)
        assert await grpc_.error("GetUserStatus", user_id="alice") == (
            grpc.StatusCode.UNAVAILABLE,
            "INTERNAL: the server did not answer in time; try again",
        )


def _refusing(code: ErrorCode) -> Callable[..., Any]:
    from presence_actors.gateway.auth import AuthError

    def acting_user(headers: dict[str, str], claimed: str, name: str = "user_id") -> Any:
        raise AuthError(code, "no", 401)

    return acting_user


# --- the stream ----------------------------------------------------------------------


async def test_stream_sends_the_state_then_changes(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs) as (server, grpc_), ws_client(server, "carol") as carol:
        await grpc_.call("SetUserStatus", user_id="alice", status=pb.AWAY)
        async with grpc_.stream(user_id="bob", watch_user_ids=["alice", "carol", "dave"]) as stream:
            first = await stream.next()
            assert min(first.timestamp, first.last_seen) > 0
            assert [stream.brief(first), *await stream.take(2)] == [
                ("alice", "AWAY"),
                ("carol", "ONLINE"),
                ("dave", "OFFLINE"),
            ]
            await grpc_.call("SetUserStatus", user_id="alice", status=pb.ONLINE)
            assert await stream.take(1) == [("alice", "ONLINE")]
            await carol.request(
                {"type": "set_status", "status": "busy", "statusMessage": "meeting"},
                "status_updated",
            )
            event = await stream.next()
            assert (stream.brief(event), event.status_message) == (("carol", "BUSY"), "meeting")
            await carol.send({"type": "logout"})  # no grace period
            assert await stream.take(1) == [("carol", "OFFLINE")]


async def test_a_status_set_over_grpc_is_pushed_without_a_passing_online(
    tmp_path: Path, stubs: SimpleNamespace
) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs) as (server, grpc_), ws_client(server, "carol") as carol:
        await grpc_.call("SetUserStatus", user_id="alice", status=pb.AWAY, status_message="brb")
        push = await carol.next()
        while push["type"] != "user_status_change":
            push = await carol.next()
        assert (push["userId"], push["status"]) == ("alice", "away")


async def test_cancelling_a_stream_frees_its_watcher(
    tmp_path: Path, stubs: SimpleNamespace
) -> None:
    async with serving(tmp_path, stubs) as (server, grpc_):
        assert await sessions(server) == 0
        for _ in range(2):
            async with grpc_.stream(user_id="bob", watch_user_ids=["alice"]) as stream:
                assert await stream.take(1) == [("alice", "OFFLINE")]
                assert await sessions(server) == 1
            # The stream now waits for a change that never comes: only the reset frees it.
            await sessions_become(server, 0)


@pytest.mark.parametrize(
    ("code", "reason", "details"),
    [
        (1001, "server shutting down", "INTERNAL: server shutting down"),
        (1013, "slow consumer", "LIMIT_EXCEEDED: the stream fell too far behind; subscribe again"),
    ],
)
async def test_a_closed_stream_ends_unavailable(
    tmp_path: Path, stubs: SimpleNamespace, code: int, reason: str, details: str
) -> None:
    async with serving(tmp_path, stubs) as (server, grpc_):
        async with grpc_.stream(user_id="bob", watch_user_ids=["alice"]) as stream:
            await stream.take(1)
            server.app.grpc.close_all(code, reason)
            assert await stream.error() == (grpc.StatusCode.UNAVAILABLE, details)
        await sessions_become(server, 0)


async def test_anonymous_stream_and_reads(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs) as (_server, grpc_):
        await grpc_.call("SetUserStatus", user_id="alice", status=pb.ONLINE)
        async with grpc_.stream(watch_user_ids=["alice"]) as stream:
            assert await stream.take(1) == [("alice", "ONLINE")]
            await grpc_.call("SetUserStatus", user_id="alice", status=pb.BUSY)
            assert await stream.take(1) == [("alice", "BUSY")]


# --- liveness ------------------------------------------------------------------------

SHORT_TTL = {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0, "grace_period": 0.5}


async def test_a_silent_session_expires_then_grace_applies(
    tmp_path: Path, stubs: SimpleNamespace
) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs, presence=SHORT_TTL) as (server, grpc_):
        async with grpc_.stream(user_id="bob", watch_user_ids=["alice"]) as stream:
            await stream.take(1)
            started = trio.current_time()
            await grpc_.call("SetUserStatus", user_id="alice", status=pb.ONLINE)
            assert await stream.take(1) == [("alice", "ONLINE")]
            # Offline only after heartbeat_timeout (1 s) plus the grace period (0.5 s).
            assert await stream.take(1) == [("alice", "OFFLINE")]
            assert trio.current_time() - started >= 1.4
        assert len(server.app.grpc.service.ttl_sessions) == 0
        code, _ = await grpc_.error("SendHeartbeat", user_id="alice")
        assert code == grpc.StatusCode.NOT_FOUND


async def test_heartbeats_keep_a_session_alive(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs, presence=SHORT_TTL) as (_server, grpc_):
        await grpc_.call("SetUserStatus", user_id="alice", status=pb.ONLINE)
        started = trio.current_time()
        while trio.current_time() - started < 2.0:  # twice the heartbeat timeout
            beat = await grpc_.call("SendHeartbeat", user_id="alice")
            assert beat.next_heartbeat_in_seconds == 1  # 0.2 s, rounded to at least 1
            await trio.sleep(0.2)
        assert (await grpc_.call("GetUserStatus", user_id="alice")).data.status == pb.ONLINE


# --- visibility ----------------------------------------------------------------------


async def test_hidden_users_look_unknown(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    async with (
        serving(tmp_path, stubs) as (server, grpc_),
        ws_client(server, "carol") as carol,
        ws_client(server, "dave") as dave,
    ):
        await carol.request({"type": "set_privacy", "visibility": "nobody"}, "privacy_updated")
        await dave.request({"type": "block", "targetUserId": "bob"}, "blocked")
        await carol.request(
            {"type": "set_status", "status": "busy", "statusMessage": "secret"}, "status_updated"
        )

        async def seen_by(viewer: str) -> list[tuple[str, int, int, str]]:
            reply = await grpc_.call(
                "GetMultipleUserStatus", user_ids=["carol", "dave"], viewer_id=viewer
            )
            return [(d.user_id, d.status, d.last_seen, d.status_message) for d in reply.data]

        hidden = ("carol", pb.OFFLINE, 0, "")
        assert await seen_by("bob") == [hidden, ("dave", pb.OFFLINE, 0, "")]
        assert (await seen_by(""))[0] == hidden  # anonymous
        [(_, status, _, text), (_, dave_status, _, _)] = await seen_by("carol")
        assert (status, text, dave_status) == (pb.BUSY, "secret", pb.ONLINE)
        one = await grpc_.call("GetUserStatus", user_id="carol", viewer_id="bob")
        assert (one.data.status, one.data.last_seen) == (pb.OFFLINE, 0)

        await grpc_.call("SetUserStatus", user_id="alice", status=pb.ONLINE)
        async with grpc_.stream(user_id="bob", watch_user_ids=["carol", "dave", "alice"]) as stream:
            assert await stream.take(3) == [
                ("carol", "OFFLINE"),
                ("dave", "OFFLINE"),
                ("alice", "ONLINE"),
            ]
            await carol.request({"type": "set_status", "status": "online"}, "status_updated")
            await dave.request({"type": "set_status", "status": "away"}, "status_updated")
            await grpc_.call("SetUserStatus", user_id="alice", status=pb.BUSY)
            # Nothing about carol or dave came before alice's change.
            assert await stream.take(1) == [("alice", "BUSY")]


async def test_jwt_mode_acts_as_the_token_subject(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    auth = {"mode": "jwt", "jwt_secret": JWT_SECRET}
    async with serving(tmp_path, stubs, auth=auth) as (_server, grpc_):
        alice = _bearer("alice")
        reply = await grpc_.call("SetUserStatus", alice, status=pb.BUSY)  # no user_id needed
        assert (reply.data.user_id, reply.data.status) == ("alice", pb.BUSY)
        assert (await grpc_.call("SendHeartbeat", alice, user_id="alice")).success
        assert await grpc_.error("SetUserStatus", alice, user_id="bob", status=pb.ONLINE) == (
            unauthenticated,
            "UNAUTHORIZED: user_id does not match the token's subject",
        )
        code, message = await grpc_.error("GetUserStatus", user_id="alice")  # no token
        assert (code, message.startswith("UNAUTHORIZED: ")) == (unauthenticated, True)
        seen = await grpc_.call("GetUserStatus", _bearer("bob"), user_id="alice")
        assert seen.data.status == pb.BUSY

        # A stream ends when its token expires (exp is whole seconds: within 1 s here).
        async with grpc_.stream(_bearer("bob", ttl=1), watch_user_ids=["alice"]) as stream:
            assert await stream.take(1) == [("alice", "BUSY")]
            assert await stream.error() == (unauthenticated, "UNAUTHORIZED: token expired")


def _bearer(user_id: str, ttl: int = 60) -> Metadata:
    claims = {"sub": user_id, "exp": int(time.time()) + ttl}
    return [("authorization", f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}")]


# --- other protocols and transports ----------------------------------------------------


async def test_connect_json_over_http1(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs) as (server, grpc_):
        await grpc_.call("SetUserStatus", user_id="alice", status=pb.ONLINE, status_message="hi")
        url = f"{server.base_url}{SERVICE}/GetUserStatus"
        status, body, headers = await trio.to_thread.run_sync(
            http_post, url, b'{"userId": "alice"}', "application/json"
        )
        assert (status, headers["content-type"]) == (200, "application/json")
        data = json.loads(body)["data"]
        assert (data["userId"], data["status"], data["statusMessage"]) == ("alice", "ONLINE", "hi")
        assert int(data["lastSeen"]) > 0  # int64 is a string in protobuf JSON

        query = urllib.parse.quote('{"userIds": ["alice", "zed"]}')
        get_url = f"{server.base_url}{SERVICE}/GetMultipleUserStatus?encoding=json&message={query}"
        reply = await trio.to_thread.run_sync(
            lambda: urllib.request.urlopen(get_url, timeout=RPC_TIMEOUT).read()
        )
        assert [u.get("status") for u in json.loads(reply)["data"]] == ["ONLINE", "OFFLINE"]

        url = f"{server.base_url}{SERVICE}/SetUserStatus"
        status, body, _ = await trio.to_thread.run_sync(
            http_post,
            url,
            b'{"userId": "alice", "status": "USER_STATUS_UNSPECIFIED"}',
            "application/json",
        )
        error = json.loads(body)
        assert (status, error["code"]) == (400, "invalid_argument")
        assert error["message"].startswith("INVALID_STATUS: ")


async def test_grpc_web(tmp_path: Path, stubs: SimpleNamespace) -> None:
    pb = stubs.pb
    async with serving(tmp_path, stubs) as (server, grpc_):
        await grpc_.call("SetUserStatus", user_id="alice", status=pb.AWAY)
        message = pb.GetUserStatusRequest(user_id="alice").SerializeToString()
        frame = struct.pack(">BI", 0, len(message)) + message
        url = f"{server.base_url}{SERVICE}/GetUserStatus"
        status, body, _ = await trio.to_thread.run_sync(
            http_post, url, frame, "application/grpc-web+proto"
        )
        assert status == 200
        frames = list(_grpc_web_frames(body))
        reply = pb.GetUserStatusResponse.FromString(frames[0][1])
        assert (reply.data.user_id, reply.data.status) == ("alice", pb.AWAY)
        flags, trailers = frames[-1]
        assert flags & 0x80  # the trailers frame
        assert b"grpc-status:0" in trailers.replace(b" ", b"").split(b"\r\n")


def _grpc_web_frames(body: bytes) -> Iterator[tuple[int, bytes]]:
    while body:
        flags, size = struct.unpack(">BI", body[:5])
        yield flags, body[5 : 5 + size]
        body = body[5 + size :]


async def test_grpc_over_tls(tmp_path: Path, stubs: SimpleNamespace) -> None:
    cert, key = self_signed_certificate(tmp_path)
    tls = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    async with running_server(tmp_path, server=tls) as server:
        assert server.base_url.startswith("https://")
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        channel = grpc.secure_channel(
            f"127.0.0.1:{server.port}",
            credentials,
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        async with grpc_client("", stubs, channel) as grpc_:
            reply = await grpc_.call("SetUserStatus", user_id="alice", status=stubs.pb.ONLINE)
            assert (reply.success, reply.data.status) == (True, stubs.pb.ONLINE)
