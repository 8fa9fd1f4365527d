"""``GetMultipleUserStatus`` answered past connectrpc (issue 13), through grpcio.

The fast path must answer what connectrpc answers — the same message, headers
and trailers — and leave every other call, and every refusal, to connectrpc.
A call sent gzip-compressed is never taken by the fast path: it is the control.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import jwt
import trio

from presence_actors.gateway.server import RunningServer

from .server_harness import running_server, ws_client

RPC_TIMEOUT = 5.0
JWT_SECRET = "a-test-secret-of-at-least-32-bytes!"


async def call(
    server: RunningServer,
    stubs: SimpleNamespace,
    compression: grpc.Compression | None = None,
    metadata: tuple[tuple[str, str], ...] = (),
    **fields: Any,
) -> tuple[Any, grpc.StatusCode, str, dict[str, str], dict[str, str]]:
    """(answer or None, status, details, initial metadata, trailing metadata) of one call."""

    def run() -> tuple[Any, grpc.StatusCode, str, dict[str, str], dict[str, str]]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = stubs.rpc.PresenceServiceStub(channel)
            request = stubs.pb.GetMultipleUserStatusRequest(**fields)
            future = stub.GetMultipleUserStatus.future(
                request, timeout=RPC_TIMEOUT, compression=compression, metadata=metadata
            )
            try:
                answer = future.result()
            except grpc.RpcError:
                answer = None
            return (
                answer,
                future.code(),
                future.details() or "",
                dict(future.initial_metadata() or ()),
                dict(future.trailing_metadata() or ()),
            )

    with trio.fail_after(RPC_TIMEOUT * 2):
        return await trio.to_thread.run_sync(functools.partial(run), abandon_on_cancel=True)


def fast_answers(server: RunningServer) -> int:
    return server.app.grpc.bulk_status.answered


async def test_the_fast_answer_equals_connectrpcs(tmp_path: Path, stubs: SimpleNamespace) -> None:
    async with running_server(tmp_path) as server, ws_client(server, "alice") as alice:
        await alice.request(
            {"type": "set_status", "status": "busy", "statusMessage": "in a call"},
            "status_updated",
        )
        ids = ["alice", "nobody", "alice"]
        before = fast_answers(server)
        fast = await call(server, stubs, user_ids=ids, viewer_id="bob")
        assert fast_answers(server) == before + 1
        control = await call(server, stubs, grpc.Compression.Gzip, user_ids=ids, viewer_id="bob")
        assert fast_answers(server) == before + 1
        assert fast[1] == control[1] == grpc.StatusCode.OK
        assert fast[0].SerializeToString() == control[0].SerializeToString()
        assert [(u.user_id, u.status, u.status_message) for u in fast[0].data] == [
            ("alice", stubs.pb.BUSY, "in a call"),
            ("nobody", stubs.pb.OFFLINE, ""),
            ("alice", stubs.pb.BUSY, "in a call"),
        ]
        assert fast[3:] == control[3:]  # headers and trailers, as grpcio reads them


async def test_refusals_are_connectrpcs(tmp_path: Path, stubs: SimpleNamespace) -> None:
    """Each refusal is answered by connectrpc, as it was before the fast path."""
    async with running_server(tmp_path, limits={"max_ids_per_request": 3}) as server:
        before = fast_answers(server)
        for fields, code, details in [
            ({"user_ids": ["a", "b c"]}, "INVALID_ARGUMENT", "INVALID_USER_ID: user_ids[1] 'b c'"),
            ({"user_ids": ["a"] * 4}, "RESOURCE_EXHAUSTED", "LIMIT_EXCEEDED: at most 3"),
            ({"user_ids": ["a"], "viewer_id": "x/y"}, "INVALID_ARGUMENT", "INVALID_USER_ID"),
            # Past the body bound (1 MiB): refused before it is all read (gzip: inflated).
            ({"user_ids": ["u" * 128] * 9000}, "RESOURCE_EXHAUSTED", ""),
        ]:
            seen = []
            for compression in (None, grpc.Compression.Gzip):
                answer, status, said, _, _ = await call(server, stubs, compression, **fields)
                assert answer is None
                assert (status.name, said[: len(details)]) == (code, details), fields
                seen.append(said)
            if details:
                assert seen[0] == seen[1]
            else:
                assert all("1048576" in said for said in seen), seen
        assert fast_answers(server) == before


async def test_a_token_is_checked_on_the_fast_path(tmp_path: Path, stubs: SimpleNamespace) -> None:
    async with running_server(tmp_path, auth={"mode": "jwt", "jwt_secret": JWT_SECRET}) as server:
        token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, JWT_SECRET)
        good = (("authorization", f"Bearer {token}"),)
        answer, status, _, _, _ = await call(server, stubs, metadata=good, user_ids=["bob"])
        assert (status, [u.user_id for u in answer.data]) == (grpc.StatusCode.OK, ["bob"])
        assert fast_answers(server) == 1
        for metadata, said in [
            ((), "UNAUTHORIZED: a token is required"),
            ((("authorization", "Bearer forged"),), "UNAUTHORIZED: invalid token"),
        ]:
            answer, status, details, _, _ = await call(
                server, stubs, metadata=metadata, user_ids=["bob"]
            )
            assert (answer, status) == (None, grpc.StatusCode.UNAUTHENTICATED)
            assert details.startswith(said)


def test_the_server_messages_are_the_compiled_ones() -> None:
    """protobuf-py's native extension builds and encodes them (not its pure-Python
    fallback); google.protobuf (upb, grpcio's) is not what the server uses."""
    from protobuf_ext import NativeMessage

    from presence_actors.gateway.grpc_gen.presence.v1 import presence_pb as pb

    for message in (pb.UserStatusData, pb.GetMultipleUserStatusResponse):
        assert NativeMessage in message.__mro__
        assert message.to_binary is NativeMessage.to_binary
