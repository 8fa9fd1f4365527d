"""Contacts mode, watch lists and visibility changes over real sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from .server_harness import RawClient, running_server, ws_client
from .test_http_api import http


async def quiet(*clients: RawClient) -> None:
    """Assert nothing more arrives for these clients for a moment."""
    await trio.sleep(0.3)
    for client in clients:
        with trio.move_on_after(0.05):
            message = await client.ws.get_message()
            raise AssertionError(f"unexpected message: {message}")


def statuses(pushes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(p["userId"], p["status"]) for p in pushes]


async def admin(server: Any, method: str, path: str, body: object = None) -> dict[str, Any]:
    status, reply = await http(server.base_url + "/api/admin" + path, method, body)
    assert status == 200, reply
    return reply  # type: ignore[no-any-return]


async def test_contacts_mode_pushes_reach_exactly_the_right_sessions(tmp_path: Path) -> None:
    async with running_server(tmp_path, presence={"fanout": "contacts"}) as server:
        reply = await admin(server, "PUT", "/users/alice/contacts", {"contacts": ["bob", "carol"]})
        assert reply["contacts"] == ["bob", "carol"]
        assert (await admin(server, "GET", "/users/bob"))["contacts"] == ["alice"]

        async with (
            ws_client(server, "bob", welcome=False) as bob,
            ws_client(server, "carol", welcome=False) as carol,
            ws_client(server, "dave", welcome=False) as dave,
            ws_client(server, "erin", welcome=False) as erin,
        ):
            for client in (bob, carol):
                assert (await client.next())["type"] == "welcome"
                state = await client.next()
                assert state["type"] == "presence_state"
                assert [(u["userId"], u["online"]) for u in state["users"]] == [("alice", False)]
            for client in (dave, erin):
                assert (await client.next())["type"] == "welcome"
                assert (await client.next())["users"] == []  # no contacts
            await erin.request({"type": "subscribe", "userIds": ["alice"]}, "presence_state")

            async with ws_client(server, "alice", welcome=False) as alice:
                assert (await alice.next())["type"] == "welcome"
                state = await alice.next()
                assert [(u["userId"], u["status"]) for u in state["users"]] == [
                    ("bob", "online"),
                    ("carol", "online"),
                ]
                for watcher in (bob, carol, erin):
                    push = await watcher.next()
                    assert (push["type"], push["userId"], push["status"]) == (
                        "user_status_change",
                        "alice",
                        "online",
                    )
                await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
                for watcher in (bob, carol, erin):
                    assert statuses([await watcher.next()]) == [("alice", "busy")]
                await quiet(dave, alice)

                # Contacts-only visibility: the subscriber who is no contact loses sight.
                await alice.request(
                    {"type": "set_privacy", "visibility": "contacts"}, "privacy_updated"
                )
                gone = await erin.next()
                assert (gone["userId"], gone["status"], gone["lastSeen"]) == (
                    "alice",
                    "offline",
                    None,
                )
                await alice.request({"type": "set_status", "status": "away"}, "status_updated")
                for watcher in (bob, carol):
                    assert statuses([await watcher.next()]) == [("alice", "away")]
                await quiet(erin, dave)

                # A block hides alice from carol at once, and nothing follows.
                await alice.request({"type": "block", "targetUserId": "carol"}, "blocked")
                assert statuses([await carol.next()]) == [("alice", "offline")]
                await alice.request({"type": "set_status", "status": "online"}, "status_updated")
                assert statuses([await bob.next()]) == [("alice", "online")]
                await quiet(carol, erin, dave)
                hidden = await carol.request(
                    {"type": "check_user_status", "targetUserId": "alice"}, "user_status"
                )
                assert (hidden["status"], hidden["lastSeen"], hidden["username"]) == (
                    "offline",
                    None,
                    None,
                )

                # Contacts edited while everyone is connected.
                await admin(server, "DELETE", "/users/alice/contacts/bob")
                assert statuses([await bob.next()]) == [("alice", "offline")]
                await admin(server, "POST", "/users/alice/contacts/dave")
                assert statuses([await dave.next()]) == [("alice", "online")]
                await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
                assert statuses([await dave.next()]) == [("alice", "busy")]
                await quiet(bob, carol, erin)


async def test_subscription_limits(tmp_path: Path) -> None:
    limits = {"max_subscriptions": 4, "max_ids_per_request": 3}
    async with running_server(tmp_path, limits=limits) as server, ws_client(server, "w") as w:
        error = await w.request({"type": "subscribe", "userIds": ["a", "b", "c", "d"]}, "error")
        assert error["code"] == "LIMIT_EXCEEDED"
        await w.request({"type": "subscribe", "userIds": ["a", "b", "c"]}, "presence_state")
        error = await w.request({"type": "subscribe", "userIds": ["d", "e"]}, "error")
        assert error["code"] == "LIMIT_EXCEEDED"
        await w.request({"type": "unsubscribe", "userIds": ["a"]}, "unsubscribed")
        await w.request({"type": "subscribe", "userIds": ["d", "e"]}, "presence_state")


async def test_admin_privacy_and_contacts_validate_input(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        api = server.base_url + "/api/admin/users"
        for method, path, body, status, code in [
            ("PUT", "/alice/contacts", {"contacts": ["ok", "bad id"]}, 400, "INVALID_USER_ID"),
            ("PUT", "/alice/contacts", {"contacts": "bob"}, 400, "INVALID_MESSAGE"),
            ("PUT", "/alice/contacts", {}, 400, "INVALID_MESSAGE"),
            ("PUT", "/alice/privacy", {"visibility": "friends"}, 400, "INVALID_MESSAGE"),
            ("PUT", "/bad%20id/privacy", {"visibility": "nobody"}, 400, "INVALID_USER_ID"),
        ]:
            got, reply = await http(api + path, method, body)
            assert (got, reply["error"]["code"]) == (status, code), (path, body)
        got, reply = await http(api + "/alice/privacy", "PUT", None)
        assert (got, reply["error"]["code"]) == (400, "INVALID_JSON")
        await admin(server, "PUT", "/users/alice/privacy", {"visibility": "nobody"})
        assert (await admin(server, "GET", "/users/alice"))["visibility"] == "nobody"
        async with ws_client(server, "alice"), ws_client(server, "bob") as bob:
            reply = await bob.request(
                {"type": "check_user_status", "targetUserId": "alice"}, "user_status"
            )
            assert reply["online"] is False


async def test_observers_watch_read_only_and_only_when_enabled(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path) as server,
        ws_client(server, None, welcome=False, observer="1") as refused,
    ):
        assert (await refused.next())["code"] == "FORBIDDEN"
    async with (
        running_server(tmp_path, web={"observer": True}) as server,
        ws_client(server, "shy") as shy,
    ):
        await shy.request({"type": "set_privacy", "visibility": "contacts"}, "privacy_updated")
        async with ws_client(server, None, observer="1") as observer:
            assert observer.received[0]["userId"] == ""
            async with ws_client(server, "alice") as alice:
                push = await observer.expect("user_status_change")
                assert (push["userId"], push["status"]) == ("alice", "online")
                await shy.request({"type": "set_status", "status": "busy"}, "status_updated")
                await alice.request({"type": "set_status", "status": "away"}, "status_updated")
                push = await observer.expect("user_status_change")
                assert (push["userId"], push["status"]) == ("alice", "away")  # shy never shows
                everyone = await observer.request({"type": "get_all_users"}, "all_users")
                assert [u["userId"] for u in everyone["users"]] == ["alice"]
                count = await observer.request({"type": "get_online_count"}, "online_count")
                assert count["count"] == 1
                error = await observer.request({"type": "set_status", "status": "busy"}, "error")
                assert error["code"] == "FORBIDDEN"
                ack = await observer.request({"type": "heartbeat"}, "heartbeat_ack")
                assert ack["nextHeartbeatInSeconds"] > 0
        _, stats = await http(server.base_url + "/api/stats")
        assert stats["sessions"] == 1  # only shy: observers are nobody's device


async def test_recent_events_for_operators(tmp_path: Path) -> None:
    async with running_server(
        tmp_path, persistence={"flush_interval": 0.01}, presence={"grace_period": 0.0}
    ) as server:
        async with ws_client(server, "alice") as alice:
            await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
        await trio.sleep(0.3)
        reply = await admin(server, "GET", "/events?limit=2")
        assert [(e["userId"], e["status"], e["reason"]) for e in reply["events"]] == [
            ("alice", "offline", "disconnect"),
            ("alice", "busy", "set_status"),
        ]
