""" "Appear offline" cannot be seen through: an invisible user looks exactly like one who left.

Two users side by side, watched by a third: ``ghost`` goes invisible and then
changes its username and status message; ``gone`` logs out. Every path a
watcher has (pushes, WebSocket queries, REST reads, gRPC-free history) must
show the two the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from trio_websocket import ConnectionClosed

from presence_actors.actors import ViewsQuery
from presence_actors.model import Status
from presence_actors.protocol import Identified, Identify, SetStatus, StatusUpdated

from .engine_harness import connect, make_settings, running_engine
from .server_harness import RawClient, running_server, ws_client
from .test_http_api import http


async def quiet(client: RawClient, seconds: float = 0.3) -> list[dict[str, Any]]:
    """Everything the client is sent within ``seconds`` (or until it is closed)."""
    got: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        try:
            while True:
                got.append(await client.next())
        except ConnectionClosed:
            pass
    return got


def shape(view: dict[str, Any]) -> dict[str, Any]:
    """A view without what differs between any two users (ids, names, times)."""
    return {
        k: v for k, v in view.items() if k not in ("userId", "username", "lastSeen", "timestamp")
    }


async def test_an_invisible_user_is_indistinguishable_from_an_offline_one(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, presence={"fanout": "everyone"}) as server,
        ws_client(server, "watcher") as watcher,
    ):
        async with ws_client(server, "gone") as gone:
            await gone.request({"type": "identify", "username": "Gone"}, "identified")
            await gone.request(
                {"type": "set_status", "status": "busy", "statusMessage": "at lunch"},
                "status_updated",
            )
            await gone.send({"type": "logout"})
            await quiet(gone)
        async with ws_client(server, "ghost") as ghost:
            await ghost.request({"type": "identify", "username": "Ghost"}, "identified")
            await ghost.request(
                {"type": "set_status", "status": "busy", "statusMessage": "at lunch"},
                "status_updated",
            )
            await ghost.request({"type": "set_status", "status": "offline"}, "status_updated")
            await quiet(watcher)
            # What the invisible user does now is its own business.
            renamed = await ghost.request(
                {"type": "identify", "username": "Someone Else"}, "identified"
            )
            assert renamed["username"] == "Someone Else"
            await ghost.request(
                {"type": "set_status", "status": "offline", "statusMessage": "hiding"},
                "status_updated",
            )
            assert await quiet(watcher) == []

            ghost_seen = await watcher.request(
                {"type": "check_user_status", "targetUserId": "ghost"}, "user_status"
            )
            gone_seen = await watcher.request(
                {"type": "check_user_status", "targetUserId": "gone"}, "user_status"
            )
            assert (ghost_seen["username"], ghost_seen["statusMessage"]) == ("Ghost", "at lunch")
            assert shape(ghost_seen) == shape(gone_seen)
            presence = await watcher.request(
                {"type": "get_presence", "userIds": ["ghost", "gone"]}, "presence"
            )
            listed = await watcher.request({"type": "get_all_users"}, "all_users")
            by_id = {u["userId"]: u for u in listed["users"]}
            for ghostly, really in (presence["users"], (by_id["ghost"], by_id["gone"])):
                assert ghostly["username"] == "Ghost"
                assert shape(ghostly) == shape(really)
            count = await watcher.request({"type": "get_online_count"}, "online_count")
            assert count["count"] == 1  # the watcher itself

            # The user itself still sees what it set.
            own = await ghost.request(
                {"type": "check_user_status", "targetUserId": "ghost"}, "user_status"
            )
            assert (own["username"], own["statusMessage"]) == ("Someone Else", "hiding")

            await server.engine.writer.flush()
            api = server.base_url + "/api"
            rest = {}
            for user in ("ghost", "gone"):
                _, one = await http(f"{api}/users/{user}")
                _, history = await http(f"{api}/users/{user}/history")
                rest[user] = (one, [(e["status"], e["reason"]) for e in history["events"]])
            _, bulk = await http(f"{api}/presence?ids=ghost,gone")
            (ghost_one, ghost_history), (gone_one, gone_history) = rest["ghost"], rest["gone"]
            ghost_one, gone_one = ghost_one["user"], gone_one["user"]
            assert ghost_one["username"] == "Ghost"
            assert shape(ghost_one) == shape(gone_one)
            assert (
                ghost_history
                == gone_history
                == [
                    ("online", "connect"),
                    ("busy", "set_status"),
                    ("offline", "logout"),
                ]
            )
            ghost_bulk, gone_bulk = bulk["users"]
            assert ghost_bulk["statusMessage"] == "at lunch"
            assert shape(ghost_bulk) == shape(gone_bulk)

            # Coming back shows what was set meanwhile, like a new login would.
            await ghost.request({"type": "set_status", "status": "online"}, "status_updated")
            pushed = await watcher.expect("user_status_change")
            assert (pushed["status"], pushed["username"], pushed["statusMessage"]) == (
                "online",
                "Someone Else",
                "hiding",
            )
            await server.engine.writer.flush()
            _, history = await http(f"{api}/users/ghost/history")
            assert [e["reason"] for e in history["events"]][-2:] == ["logout", "connect"]


async def test_the_user_itself_and_the_audit_log_keep_the_true_reasons(tmp_path: Path) -> None:
    async with running_server(tmp_path, auth={"admin_token": "a" * 32}) as server:
        async with ws_client(server, "ghost") as ghost:
            await ghost.request({"type": "set_status", "status": "offline"}, "status_updated")
            await ghost.request({"type": "set_status", "status": "online"}, "status_updated")
        await server.engine.writer.flush()
        _, body = await http(
            server.base_url + "/api/admin/events",
            headers={"Authorization": f"Bearer {'a' * 32}"},
        )
        events = body["events"]
        reasons = [e["reason"] for e in events if e["userId"] == "ghost"]
        assert "invisible" in reasons
        assert "visible" in reasons


async def test_what_an_invisible_user_changed_stays_hidden_across_a_restart(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    async with running_engine(settings) as engine:
        ghost = await connect(engine, "ghost")
        await ghost.send(SetStatus(status=Status.BUSY, status_message="at lunch"))
        await ghost.expect(StatusUpdated)
        await ghost.send(SetStatus(status=Status.OFFLINE, status_message="hiding"))
        await ghost.expect(StatusUpdated)
        await ghost.send(Identify(username="Someone Else"))
        await ghost.expect(Identified)
    async with running_engine(settings) as engine:
        [seen] = await engine.ask(ViewsQuery("watcher", ("ghost",)))
        assert (seen.status, seen.username, seen.status_message) == (
            Status.OFFLINE,
            None,
            "at lunch",
        )
        ghost = await connect(engine, "ghost")  # back, visible: what it set is shown
        [seen] = await engine.ask(ViewsQuery("watcher", ("ghost",)))
        assert (seen.status, seen.username, seen.status_message) == (
            Status.ONLINE,
            "Someone Else",
            "hiding",
        )
