"""REST, health and metrics against a real server."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import trio
from prometheus_client.parser import text_string_to_metric_families

from .server_harness import running_server, ws_client


async def http(
    url: str, method: str = "GET", body: object = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request, run in a thread."""

    def call() -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, raw, kind = (
                    response.status,
                    response.read(),
                    response.headers["content-type"],
                )
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers["content-type"]
        return status, json.loads(raw) if "json" in kind else raw.decode()

    with trio.fail_after(10):
        return await trio.to_thread.run_sync(call)


async def test_user_reads(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, presence={"grace_period": 0.0}) as server,
        ws_client(server, "alice") as alice,
        ws_client(server, "bob") as bob,
    ):
        api = server.base_url + "/api"
        await alice.request({"type": "identify", "username": "Alice"}, "identified")
        await bob.request({"type": "set_status", "status": "busy"}, "status_updated")
        async with ws_client(server, "carol") as carol:
            await carol.send({"type": "logout"})
        await trio.sleep(0.2)

        status, body = await http(api + "/users")
        assert status == 200
        assert body["success"] is True
        assert [(u["userId"], u["status"]) for u in body["users"]][2:] == [("carol", "offline")]
        assert {u["userId"] for u in body["users"][:2]} == {"alice", "bob"}
        assert body["nextCursor"] is None

        status, page = await http(api + "/users?limit=2")
        assert (status, len(page["users"])) == (200, 2)
        status, rest = await http(api + f"/users?limit=2&cursor={page['nextCursor']}")
        assert [u["userId"] for u in rest["users"]] == ["carol"]

        status, busy = await http(api + "/users?status=busy")
        assert [u["userId"] for u in busy["users"]] == ["bob"]

        status, one = await http(api + "/users/alice")
        assert status == 200
        assert {k: one["user"][k] for k in ("userId", "username", "status", "online")} == {
            "userId": "alice",
            "username": "Alice",
            "status": "online",
            "online": True,
        }

        status, many = await http(api + "/presence?ids=bob,nobody,alice")
        assert status == 200
        assert [(u["userId"], u["status"]) for u in many["users"]] == [
            ("bob", "busy"),
            ("nobody", "offline"),
            ("alice", "online"),
        ]

        status, stats = await http(api + "/stats")
        assert status == 200
        assert {k: stats[k] for k in ("onlineUsers", "connections", "sessions", "knownUsers")} == {
            "onlineUsers": 2,
            "connections": 2,
            "sessions": 2,
            "knownUsers": 3,
        }
        assert stats["uptimeSeconds"] >= 0
        assert stats["node"]


async def test_history_comes_from_the_audit_log(tmp_path: Path) -> None:
    async with running_server(
        tmp_path, presence={"grace_period": 0.0}, persistence={"flush_interval": 0.01}
    ) as server:
        async with ws_client(server, "alice", deviceId="phone") as alice:
            await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
        await trio.sleep(0.3)
        status, body = await http(server.base_url + "/api/users/alice/history")
        assert status == 200
        events = [(e["status"], e["reason"], e["deviceId"]) for e in body["events"]]
        assert events == [
            ("online", "connect", "phone"),
            ("busy", "set_status", "phone"),
            ("offline", "disconnect", "phone"),
        ]
        first = body["events"][0]["at"]
        status, later = await http(server.base_url + f"/api/users/alice/history?since={first}")
        assert len(later["events"]) == 3
        status, none = await http(
            server.base_url + "/api/users/alice/history?until=2000-01-01T00:00:00Z"
        )
        assert none["events"] == []


async def test_errors_have_the_documented_shape_and_status(tmp_path: Path) -> None:
    async with running_server(tmp_path, limits={"max_ids_per_request": 3}) as server:
        api = server.base_url + "/api"
        for path, expected_status, code in [
            ("/users/ghost", 404, "USER_NOT_FOUND"),
            ("/users/bad%20id", 400, "INVALID_USER_ID"),
            ("/users?status=asleep", 400, "INVALID_STATUS"),
            ("/users?limit=abc", 400, "INVALID_MESSAGE"),
            ("/users?limit=0", 400, "INVALID_MESSAGE"),
            ("/users?limit=20000", 400, "LIMIT_EXCEEDED"),
            ("/users?cursor=nope", 400, "INVALID_MESSAGE"),
            ("/presence", 400, "INVALID_MESSAGE"),
            ("/presence?ids=a,b,c,d", 400, "LIMIT_EXCEEDED"),
            ("/presence?ids=a,b%20c", 400, "INVALID_USER_ID"),
            ("/users/ghost/history", 404, "USER_NOT_FOUND"),
            ("/nowhere", 404, "INVALID_MESSAGE"),
        ]:
            status, body = await http(api + path)
            assert (status, body["success"], body["error"]["code"]) == (
                expected_status,
                False,
                code,
            ), path
            assert body["error"]["message"]
        status, body = await http(api + "/users", method="DELETE")
        assert status == 405


async def test_health_readiness_and_the_page(tmp_path: Path) -> None:
    async with running_server(
        tmp_path, persistence={"flush_interval": 0.01, "batch_size": 1}
    ) as server:
        assert await http(server.base_url + "/healthz") == (200, {"status": "ok"})
        status, ready = await http(server.base_url + "/readyz")
        assert (status, ready["status"]) == (200, "ready")
        status, page = await http(server.base_url + "/")
        assert status == 200
        assert "<html" in page

        # Another process locks the database: commits fail, so the server is not ready.
        holder = sqlite3.connect(tmp_path / "presence.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            async with ws_client(server, "alice"):
                with trio.fail_after(10):
                    while (await http(server.base_url + "/readyz"))[0] != 503:
                        await trio.sleep(0.05)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with trio.fail_after(10):
            while (await http(server.base_url + "/readyz"))[0] != 200:
                await trio.sleep(0.05)


async def test_metrics_parse_and_count(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path) as server,
        ws_client(server, "watcher"),
        ws_client(server, "alice") as alice,
    ):
        await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
        await alice.send({"type": "nope"})
        await alice.expect("error")
        await trio.sleep(0.3)
        status, text = await http(server.base_url + "/metrics")
        assert status == 200
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert samples[("presence_connections", ())] == 2
        assert samples[("presence_sessions", ())] == 2
        assert samples[("presence_online_users", ())] == 2
        assert samples[("presence_messages_in_total", (("type", "set_status"),))] == 1
        assert samples[("presence_messages_out_total", (("type", "welcome"),))] == 2
        assert samples[("presence_errors_total", (("code", "UNKNOWN_TYPE"),))] == 1
        assert samples[("presence_pushes_total", ())] == 2  # alice online, alice busy
        assert samples[("presence_outbox_drops_total", ())] == 0
        assert samples[("presence_actor_restarts_total", ())] == 0
        assert samples[("presence_persistence_batch_size_count", ())] >= 1
        assert samples[("presence_persistence_commit_seconds_count", ())] >= 1


async def test_admin_routes_need_the_admin_token_when_one_is_set(tmp_path: Path) -> None:
    async with running_server(tmp_path, auth={"admin_token": "s3cret"}) as server:
        url = server.base_url + "/api/admin/users/alice/privacy"
        status, body = await http(url, "PUT", {"visibility": "nobody"})
        assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED")
        status, body = await http(
            url, "PUT", {"visibility": "nobody"}, {"Authorization": "Bearer wrong"}
        )
        assert status == 401
        status, body = await http(
            url, "PUT", {"visibility": "nobody"}, {"Authorization": "Bearer s3cret"}
        )
        assert (status, body["success"]) == (200, True)


# --- who may see what: stats and metrics (issue 11, item 11) ----------------------------

ADMIN = {"Authorization": "Bearer ops-secret"}
PUBLIC_STATS = {"success", "onlineUsers", "uptimeSeconds", "node"}


async def test_stats_show_callers_without_the_admin_token_only_what_they_may_see(
    tmp_path: Path,
) -> None:
    async with (
        running_server(tmp_path, auth={"admin_token": "ops-secret"}) as server,
        ws_client(server, "alice") as alice,
        ws_client(server, "bob") as bob,
    ):
        await bob.request({"type": "set_privacy", "visibility": "nobody"}, "privacy_updated")
        url = server.base_url + "/api/stats"
        status, stats = await http(url)
        assert (status, set(stats)) == (200, PUBLIC_STATS)
        # bob is hidden: anonymous callers count what they may see, as the list shows.
        status, listed = await http(server.base_url + "/api/users?status=online")
        assert stats["onlineUsers"] == len(listed["users"]) == 1
        # A wrong token is no admin: the same public figures.
        status, wrong = await http(url, headers={"Authorization": "Bearer guess"})
        assert (status, set(wrong), wrong["onlineUsers"]) == (200, PUBLIC_STATS, 1)
        status, full = await http(url, headers=ADMIN)
        assert status == 200
        assert {k: full[k] for k in ("onlineUsers", "connections", "sessions", "knownUsers")} == {
            "onlineUsers": 2,
            "connections": 2,
            "sessions": 2,
            "knownUsers": 2,
        }
        assert {"pushes", "messagesIn", "uptimeSeconds", "node"} <= set(full)
        own = await alice.request({"type": "get_online_count"}, "online_count")
        assert own["count"] == 1


async def test_stats_in_jwt_mode_need_a_token_and_count_as_its_user_sees(tmp_path: Path) -> None:
    secret = "s" * 32
    auth = {"mode": "jwt", "jwt_secret": secret, "admin_token": "ops-secret"}

    def bearer(user: str) -> dict[str, str]:
        claims = {"sub": user, "exp": int(time.time()) + 600}
        return {"Authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}

    async with running_server(tmp_path, auth=auth) as server:
        alice_token = bearer("alice")["Authorization"].split()[1]
        bob_token = bearer("bob")["Authorization"].split()[1]
        async with (
            ws_client(server, None, token=alice_token),
            ws_client(server, None, token=bob_token) as bob,
        ):
            await bob.request({"type": "set_privacy", "visibility": "nobody"}, "privacy_updated")
            url = server.base_url + "/api/stats"
            status, body = await http(url)
            assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED")
            status, seen = await http(url, headers=bearer("carol"))
            assert (status, set(seen), seen["onlineUsers"]) == (200, PUBLIC_STATS, 1)
            status, own = await http(url, headers=bearer("bob"))
            assert own["onlineUsers"] == 2  # bob sees himself
            status, full = await http(url, headers=ADMIN)
            assert (full["onlineUsers"], full["sessions"]) == (2, 2)


async def test_metrics_need_the_admin_token(tmp_path: Path) -> None:
    async with running_server(tmp_path, auth={"admin_token": "ops-secret"}) as server:
        url = server.base_url + "/metrics"
        status, body = await http(url)
        assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED")
        status, body = await http(url, headers={"Authorization": "Bearer guess"})
        assert status == 401
        status, text = await http(url, headers=ADMIN)
        assert status == 200
        assert "presence_online_users" in text
    # jwt mode without an admin token: closed, like the admin routes.
    auth = {"mode": "jwt", "jwt_secret": "s" * 32}
    async with running_server(tmp_path / "jwt", auth=auth) as server:
        status, body = await http(server.base_url + "/metrics")
        assert (status, body["error"]["code"]) == (403, "FORBIDDEN")


# --- query parameters (issue 11, item 13) --------------------------------------------------


async def test_hostile_numbers_and_times_are_400_naming_the_parameter(tmp_path: Path) -> None:
    superscript = urllib.parse.quote("²")
    fullwidth = urllib.parse.quote("\uff11\uff12")
    cases = [
        ("/users?limit=" + superscript, "limit"),
        ("/users?limit=" + fullwidth, "limit"),
        ("/users?limit=" + "9" * 4301, "LIMIT_EXCEEDED"),
        ("/users?limit=-5", "limit"),
        ("/users?limit=1.5", "limit"),
        ("/users?cursor=" + "A" * 5000, "cursor"),
        ("/users/alice/history?since=" + superscript, "since"),
        ("/users/alice/history?since=" + "9" * 4301, "since"),
        ("/users/alice/history?until=" + "9" * 20, "until"),
        ("/users/alice/history?until=99999-01-01T00:00:00Z", "until"),
        ("/users/alice/history?since=" + "2026-01-01T00:00:00" + "0" * 5000, "since"),
        ("/users/alice/history?limit=" + superscript, "limit"),
        ("/admin/events?limit=" + superscript, "limit"),
        ("/admin/events?limit=" + "9" * 4301, None),  # "at most 1000": the most, not an error
    ]
    async with running_server(tmp_path) as server, ws_client(server, "alice"):
        api = server.base_url + "/api"
        for path, named in cases:
            status, body = await http(api + path)
            if named is None:
                assert status == 200, path
                continue
            assert status == 400, (path[:60], status, body)
            if named == "LIMIT_EXCEEDED":
                assert body["error"]["code"] == "LIMIT_EXCEEDED"
            else:
                assert body["error"]["code"] == "INVALID_MESSAGE", path[:60]
                assert body["error"]["message"].startswith(f"{named} "), body
            assert len(body["error"]["message"]) < 200  # the value is not echoed whole
