"""The WebSocket protocol against a real server: every message, every error, abuse.

Timer behaviour is proven on a MockClock in test_engine; here short real
timers only check that the gateway wires them to the socket (close codes).
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from presence_actors.actors import user_state

from .server_harness import RawClient, running_server, ws_client, ws_url


async def closed_with(client: RawClient) -> int | None:
    """Read until the server closes the connection; its close code."""
    with trio.fail_after(5):
        try:
            while True:
                await client.ws.get_message()
        except ConnectionClosed as closed:
            return closed.reason.code


async def test_every_request_type_gets_its_reply(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path) as server,
        ws_client(server, "alice", deviceId="laptop", deviceType="desktop") as alice,
        ws_client(server, "bob") as bob,
    ):
        welcome = alice.received[0]
        assert welcome["userId"] == "alice"
        assert welcome["deviceId"] == "laptop"
        assert (welcome["heartbeatInterval"], welcome["heartbeatTimeout"]) == (1800, 3600)
        assert welcome["timestamp"].endswith("Z")

        count = await alice.request({"type": "get_online_count", "requestId": "c1"}, "online_count")
        assert (count["count"], count["requestId"]) == (2, "c1")

        identified = await bob.request({"type": "identify", "username": "Bob"}, "identified")
        assert identified == {**identified, "userId": "bob", "username": "Bob"}

        updated = await bob.request(
            {"type": "set_status", "status": "busy", "statusMessage": "call"}, "status_updated"
        )
        assert (updated["status"], updated["effectiveStatus"], updated["statusMessage"]) == (
            "busy",
            "busy",
            "call",
        )

        status = await alice.request(
            {"type": "check_user_status", "targetUserId": "bob"}, "user_status"
        )
        assert {
            k: status[k] for k in ("userId", "online", "status", "statusMessage", "username")
        } == {
            "userId": "bob",
            "online": True,
            "status": "busy",
            "statusMessage": "call",
            "username": "Bob",
        }

        everyone = await alice.request({"type": "get_all_users"}, "all_users")
        assert {u["userId"] for u in everyone["users"]} == {"alice", "bob"}
        assert everyone["nextCursor"] is None
        mine = next(u for u in everyone["users"] if u["userId"] == "alice")
        assert mine["devices"] == [
            {"deviceId": "laptop", "deviceType": "desktop", "status": "online"}
        ]

        presence = await alice.request(
            {"type": "get_presence", "userIds": ["zed", "bob"]}, "presence"
        )
        assert [(u["userId"], u["status"]) for u in presence["users"]] == [
            ("zed", "offline"),
            ("bob", "busy"),
        ]

        ack = await alice.request({"type": "heartbeat"}, "heartbeat_ack")
        assert ack["nextHeartbeatInSeconds"] == 1800
        await alice.send({"type": "activity"})  # no reply

        state = await alice.request({"type": "subscribe", "userIds": ["bob"]}, "presence_state")
        assert [u["userId"] for u in state["users"]] == ["bob"]
        gone = await alice.request({"type": "unsubscribe", "userIds": ["bob"]}, "unsubscribed")
        assert gone["userIds"] == ["bob"]

        privacy = await bob.request(
            {"type": "set_privacy", "visibility": "contacts"}, "privacy_updated"
        )
        assert privacy["visibility"] == "contacts"
        blocked = await bob.request({"type": "block", "targetUserId": "alice"}, "blocked")
        assert blocked["targetUserId"] == "alice"
        unblocked = await bob.request({"type": "unblock", "targetUserId": "alice"}, "unblocked")
        assert unblocked["targetUserId"] == "alice"

        await bob.send({"type": "logout"})
        assert await closed_with(bob) == 1000


async def test_pushes_reach_watchers_but_not_the_cause(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path) as server,
        ws_client(server, "watcher") as watcher,
        ws_client(server, "alice", deviceId="phone") as phone,
    ):
        online = await watcher.expect("user_status_change")
        assert (online["userId"], online["status"], online["online"]) == ("alice", "online", True)
        await phone.request({"type": "set_status", "status": "away"}, "status_updated")
        change = await watcher.expect("user_status_change")
        assert (change["userId"], change["status"], change["online"]) == ("alice", "away", True)
        fields = {"type", "timestamp", "userId", "status", "online", "statusMessage", "lastSeen"}
        assert set(change) == {*fields, "username"}
        # The cause got its reply and no push about itself.
        count = await phone.request({"type": "get_online_count"}, "online_count")
        assert count["count"] == 2
        assert [m["type"] for m in phone.received] == ["welcome", "status_updated", "online_count"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "INVALID_JSON"),
        ("[1, 2]", "INVALID_MESSAGE"),
        ('{"no": "type"}', "INVALID_MESSAGE"),
        ('{"type": "teleport", "requestId": "t"}', "UNKNOWN_TYPE"),
        ('{"type": "set_status", "status": "asleep", "requestId": "s"}', "INVALID_STATUS"),
        ('{"type": "set_status", "status": 3}', "INVALID_STATUS"),
        ('{"type": "check_user_status", "targetUserId": "no spaces"}', "INVALID_USER_ID"),
        ('{"type": "check_user_status"}', "INVALID_MESSAGE"),
        ('{"type": "heartbeat", "active": "yes"}', "INVALID_MESSAGE"),
        ('{"type": "get_all_users", "limit": "10"}', "INVALID_MESSAGE"),
        ('{"type": "get_all_users", "limit": 0}', "INVALID_MESSAGE"),
        ('{"type": "get_all_users", "limit": 10001}', "LIMIT_EXCEEDED"),
        ('{"type": "get_all_users", "cursor": "garbage"}', "INVALID_MESSAGE"),
        ('{"type": "get_presence", "userIds": []}', "INVALID_MESSAGE"),
        ('{"type": "identify", "username": ""}', "INVALID_MESSAGE"),
        ('{"type": "set_privacy", "visibility": "friends"}', "INVALID_MESSAGE"),
        ('{"type": "set_status", "status": "busy", "statusMessage": "' + "x" * 141 + '"}',
         "INVALID_MESSAGE"),
        ('{"type": "get_online_count", "userId": "mallory", "requestId": "f"}', "FORBIDDEN"),
        ('{"type": "set_status", "status": "busy", "userId": "mallory"}', "FORBIDDEN"),
    ],
)  # fmt: skip
async def test_bad_messages_get_the_documented_error_and_keep_the_session(
    tmp_path: Path, frame: str, code: str
) -> None:
    async with running_server(tmp_path) as server, ws_client(server, "alice") as alice:
        await alice.ws.send_message(frame)
        error = await alice.expect("error")
        assert error["code"] == code
        assert error["message"]
        sent = json.loads(frame) if frame.startswith("{") and frame.endswith("}") else {}
        if "requestId" in sent:
            assert error["requestId"] == sent["requestId"]
        # Still served.
        count = await alice.request({"type": "get_online_count"}, "online_count")
        assert count["count"] == 1


async def test_binary_frames_are_refused_without_closing(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, ws_client(server, "alice") as alice:
        await alice.ws.send_message(b'{"type": "get_online_count"}')
        assert (await alice.expect("error"))["code"] == "INVALID_MESSAGE"
        await alice.request({"type": "get_online_count"}, "online_count")


async def test_oversized_frames_are_refused_and_closed_with_1009(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, limits={"max_message_bytes": 1024}) as server,
        ws_client(server, "alice") as alice,
        ws_client(server, "bob") as bob,
    ):
        await alice.send({"type": "identify", "username": "a", "padding": "x" * 2000})
        assert (await alice.expect("error"))["code"] == "TOO_LARGE"
        assert await closed_with(alice) == 1009
        await bob.request({"type": "get_online_count"}, "online_count")


async def test_invalid_utf8_is_closed_with_1007_and_others_are_served(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, ws_client(server, "bob") as bob:
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(
                b"GET /ws?userId=eve HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            received = await trio.to_thread.run_sync(raw.recv, 4096)
            assert b" 101 " in received
            # A masked text frame whose payload is not UTF-8.
            payload = b"\xff\xfe\xfd"
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            raw.sendall(b"\x81" + bytes([0x80 | len(payload)]) + mask + masked)
            rest = b""
            while chunk := await trio.to_thread.run_sync(raw.recv, 4096):
                rest += chunk
        close = rest[rest.rindex(b"\x88") :]
        assert int.from_bytes(close[2:4], "big") == 1007
        await bob.request({"type": "get_online_count"}, "online_count")


async def test_a_flood_is_rate_limited_then_closed(tmp_path: Path) -> None:
    limits = {"messages_per_second": 5.0, "burst": 5, "abuse_window": 1.0}
    async with (
        running_server(tmp_path, limits=limits) as server,
        ws_client(server, "flooder") as flooder,
        ws_client(server, "bob") as bob,
    ):
        for _ in range(10):
            await flooder.send({"type": "activity"})
        assert (await flooder.expect("error"))["code"] == "RATE_LIMITED"
        await bob.request({"type": "get_online_count"}, "online_count")

        async def keep_flooding() -> None:
            with trio.move_on_after(3):
                while True:
                    await flooder.send({"type": "activity"})
                    await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_flooding)
            assert await closed_with(flooder) == 1008
            nursery.cancel_scope.cancel()
        await bob.request({"type": "get_online_count"}, "online_count")


async def test_invalid_connection_parameters_get_one_error_and_1008(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        for params, code in [
            ({}, "INVALID_USER_ID"),
            ({"userId": "has space"}, "INVALID_USER_ID"),
            ({"userId": "x" * 129}, "INVALID_USER_ID"),
            ({"userId": "ok", "deviceType": "toaster"}, "INVALID_MESSAGE"),
            ({"userId": "ok", "deviceId": "bad id"}, "INVALID_MESSAGE"),
        ]:
            async with open_websocket_url(ws_url(server, **params)) as ws:
                client = RawClient(ws)
                error = await client.next()
                assert (error["type"], error["code"]) == ("error", code)
                assert await closed_with(client) == 1008


async def test_a_reader_that_never_reads_is_closed_while_others_stay_fast(
    tmp_path: Path,
) -> None:
    async with (
        running_server(
            tmp_path,
            limits={
                "outbound_queue": 20,
                "status_changes_per_10s": 10_000,
                "messages_per_second": 1000.0,
                "burst": 1000,
            },
        ) as server,
        ws_client(server, "watcher") as watcher,
        ws_client(server, "changer") as changer,
    ):
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        stuck = socket.create_connection((host, int(port)))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(
            b"GET /ws?userId=stuck HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            await watcher.expect("user_status_change")  # changer online
            await watcher.expect("user_status_change")  # stuck online
            big = "x" * 140
            stuck_closed = False
            for i in range(400):
                status = ("busy", "away")[i % 2]
                start = trio.current_time()
                await changer.request(
                    {"type": "set_status", "status": status, "statusMessage": f"{i}{big}"[:140]},
                    "status_updated",
                )
                push = await watcher.expect("user_status_change")
                assert push["status"] == status
                assert trio.current_time() - start < 0.5  # the stuck reader delays no one
                metrics = await trio.to_thread.run_sync(_get, server.base_url + "/metrics")
                if (
                    'presence_closes_total{code="1013"}' in metrics
                    or "presence_outbox_drops_total 1.0" in metrics
                ):
                    stuck_closed = True
                    break
            assert stuck_closed
            # The stuck session was lost, not logged out: it shows through the grace period.
            status = await watcher.request(
                {"type": "check_user_status", "targetUserId": "stuck"}, "user_status"
            )
            assert status["online"] is True
        finally:
            stuck.close()


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()  # type: ignore[no-any-return]


async def test_reconnect_within_grace_across_a_socket_drop_shows_no_flap(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, presence={"grace_period": 2.0}) as server,
        ws_client(server, "watcher") as watcher,
    ):
        async with ws_client(server, "alice", deviceId="phone") as alice:
            await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
            await watcher.expect("user_status_change")
            await watcher.expect("user_status_change")
            # The socket goes away without a close handshake.
            alice.ws._stream.socket.close()  # simulating a network drop
        await trio.sleep(0.5)
        async with ws_client(server, "alice", deviceId="phone") as again:
            await trio.sleep(2.5)
            status = await again.request(
                {"type": "check_user_status", "targetUserId": "alice"}, "user_status"
            )
            assert status["status"] == "busy"  # the device kept its status
        pushes = [m for m in watcher.received if m["type"] == "user_status_change"]
        assert [p["status"] for p in pushes] == ["online", "busy"]


async def test_heartbeat_silence_closes_with_4002_then_offline_after_grace(
    tmp_path: Path,
) -> None:
    presence = {"heartbeat_interval": 0.5, "heartbeat_timeout": 1.0, "grace_period": 0.5}
    async with (
        running_server(tmp_path, presence=presence) as server,
        ws_client(server, "watcher") as watcher,
        ws_client(server, "alice") as alice,
    ):

        async def keep_alive() -> None:
            while True:
                await watcher.send({"type": "heartbeat"})
                await trio.sleep(0.3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_alive)
            assert await closed_with(alice) == 4002
            with trio.fail_after(3):
                while True:
                    message = await watcher.next()
                    if message["type"] == "user_status_change" and (
                        message["userId"],
                        message["status"],
                    ) == ("alice", "offline"):
                        break
            nursery.cancel_scope.cancel()


async def test_a_superseded_connection_is_closed_with_4000(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path) as server,
        ws_client(server, "alice", deviceId="phone") as old,
        ws_client(server, "alice", deviceId="phone") as new,
    ):
        assert await closed_with(old) == 4000
        await new.request({"type": "get_online_count"}, "online_count")


async def test_too_many_sessions_get_limit_exceeded(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, presence={"max_sessions_per_user": 1}) as server,
        ws_client(server, "alice", deviceId="a"),
        open_websocket_url(ws_url(server, userId="alice", deviceId="b")) as ws,
    ):
        client = RawClient(ws)
        assert (await client.next())["code"] == "LIMIT_EXCEEDED"
        assert await closed_with(client) == 1008


async def test_a_busy_store_answers_store_error(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, persistence={"queue_size": 1, "batch_size": 1}) as server,
        ws_client(server, "alice") as alice,
    ):
        # Another process holds the database: commits fail and the writer backs up.
        holder = sqlite3.connect(tmp_path / "presence.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            codes = set()
            for _ in range(20):
                await alice.send({"type": "set_privacy", "visibility": "contacts"})
                reply = await alice.next()
                codes.add(reply.get("code", reply["type"]))
                if "STORE_ERROR" in codes:
                    break
            assert "STORE_ERROR" in codes
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        readyz = await trio.to_thread.run_sync(_get, server.base_url + "/readyz")
        assert json.loads(readyz)["status"] == "ready"


async def test_an_actor_crash_answers_internal_and_the_session_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_request = user_state.request

    def faulty(state, handle, message, now, rules):  # type: ignore[no-untyped-def]
        if getattr(message, "username", None) == "boom":
            raise RuntimeError("injected fault")
        return real_request(state, handle, message, now, rules)

    monkeypatch.setattr(user_state, "request", faulty)
    async with running_server(tmp_path) as server, ws_client(server, "alice") as alice:
        await alice.send({"type": "identify", "username": "boom", "requestId": "x"})
        error = await alice.expect("error")
        assert (error["code"], error["requestId"]) == ("INTERNAL", "x")
        assert (await alice.request({"type": "identify", "username": "ok"}, "identified"))[
            "username"
        ] == "ok"
