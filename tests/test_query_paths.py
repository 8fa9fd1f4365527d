"""Bulk queries (issue 13): the fast paths answer exactly what the generic ones did.

The gRPC answer reuses one protobuf message per user view, REST splices each
view's cached JSON, the engine walks the ids in pieces and the ids are checked in
one pass: each is held equal to the plain builder it replaces, and a real server
shows every path the same users, privacy rules included, before and after they
change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from hypothesis import given
from hypothesis import strategies as st

from presence_actors.actors.queries import without_invisible_devices
from presence_actors.codec import view_to_wire
from presence_actors.gateway.grpc_api import user_status_data, user_status_message
from presence_actors.gateway.grpc_guard import CODECS
from presence_actors.gateway.http_api import presence_body
from presence_actors.gateway.http_params import user_ids_problem
from presence_actors.model import Status, UserView, user_id_problem

from .server_harness import running_server, ws_client
from .test_codec import views
from .test_http_api import http

SERVICE = "/presence.v1.PresenceService/"
CONNECT_JSON = {"Content-Type": "application/json"}


@given(view=views)
def test_a_cached_grpc_message_equals_a_fresh_one(view: UserView) -> None:
    binary, json = CODECS
    cached = user_status_message(view)
    assert binary.encode(cached) == binary.encode(user_status_data(view))
    assert json.encode(cached) == json.encode(user_status_data(view))
    assert user_status_message(view) is cached
    changed = UserView(view.user_id, Status.BUSY, "new name", "changed", 1, ())
    assert binary.encode(user_status_message(changed)) == binary.encode(user_status_data(changed))


@given(users=st.lists(views, max_size=5))
def test_the_rest_presence_body_equals_the_generic_encoding(users: list[UserView]) -> None:
    assert orjson.loads(presence_body(users)) == {
        "success": True,
        "users": [view_to_wire(v) for v in users],
    }


@given(view=views)
def test_stripping_invisible_devices_is_stable_and_complete(view: UserView) -> None:
    shown = without_invisible_devices(view)
    assert shown.devices == tuple(d for d in view.devices if d.status is not Status.OFFLINE)
    assert (shown.user_id, shown.status, shown.username, shown.status_message) == (
        view.user_id,
        view.status,
        view.username,
        view.status_message,
    )
    # The same object for the same view: its cached encodings are reused.
    assert without_invisible_devices(view) is shown


# Ids with every kind of fault, commas and empties too (one gRPC id may hold a comma).
some_ids = st.lists(
    st.from_regex(r"[a-z0-9_.:@-]{1,8}", fullmatch=True)
    | st.sampled_from(["", "a b", "a,b", ",", "x" * 129, "x" * 128, "zoë", "a\nb", "a/b"]),
    min_size=1,
    max_size=8,
)


@given(user_ids=some_ids)
def test_the_one_pass_id_check_names_the_first_bad_id(user_ids: list[str]) -> None:
    expected = next(
        (
            problem
            for index, user_id in enumerate(user_ids)
            if (problem := user_id_problem(user_id or None, f"ids[{index}]")) is not None
        ),
        None,
    )
    assert user_ids_problem(user_ids, "ids") == expected


async def rpc(server: Any, method: str, fields: dict[str, Any]) -> tuple[int, Any]:
    return await http(server.base_url + SERVICE + method, "POST", fields, CONNECT_JSON)


def brief_rest(user: dict[str, Any]) -> tuple[Any, ...]:
    devices = tuple(d["deviceId"] for d in user["devices"])
    return (
        user["userId"],
        user["status"],
        user["statusMessage"],
        user["lastSeen"] is None,
        devices,
    )


def brief_grpc(user: dict[str, Any]) -> tuple[Any, ...]:
    return (
        user["userId"],
        user.get("status", "").lower(),
        user.get("statusMessage") or None,
        "lastSeen" not in user,
    )


async def test_every_bulk_path_shows_the_same_users_as_they_change(tmp_path: Path) -> None:
    names = ["plain", "duo", "hidden", "blocker", "never"]
    async with (
        running_server(tmp_path, presence={"grace_period": 0.0}) as server,
        ws_client(server, "watcher") as watcher,
        ws_client(server, "plain", deviceId="p1") as plain,
        ws_client(server, "duo", deviceId="d1") as duo,
        ws_client(server, "duo", deviceId="d2") as duo_hidden_device,
        ws_client(server, "hidden") as hidden,
        ws_client(server, "blocker", deviceId="b1") as blocker,
    ):
        await plain.request(
            {"type": "set_status", "status": "busy", "statusMessage": "at lunch"},
            "status_updated",
        )
        # duo's second device is invisible: nobody else may learn it exists.
        await duo_hidden_device.request(
            {"type": "set_status", "status": "offline"}, "status_updated"
        )
        await hidden.request({"type": "set_privacy", "visibility": "nobody"}, "privacy_updated")
        await blocker.request({"type": "block", "targetUserId": "watcher"}, "blocked")
        assert duo is not None

        async def answers() -> tuple[list[Any], list[Any], list[Any], list[Any]]:
            ws = await watcher.request({"type": "get_presence", "userIds": names}, "presence")
            status, rest = await http(server.base_url + "/api/presence?ids=" + ",".join(names))
            assert status == 200
            status, as_watcher = await rpc(
                server, "GetMultipleUserStatus", {"userIds": names, "viewerId": "watcher"}
            )
            assert status == 200
            status, anonymous = await rpc(server, "GetMultipleUserStatus", {"userIds": names})
            assert status == 200
            return ws["users"], rest["users"], as_watcher["data"], anonymous["data"]

        ws_users, rest_users, grpc_watcher, grpc_anonymous = await answers()
        assert [brief_rest(u) for u in ws_users] == [
            ("plain", "busy", "at lunch", False, ("p1",)),
            ("duo", "online", None, False, ("d1",)),
            ("hidden", "offline", None, True, ()),
            ("blocker", "offline", None, True, ()),
            ("never", "offline", None, True, ()),
        ]
        # REST reads are anonymous here (auth mode none): the block is on watcher only.
        assert [brief_rest(u) for u in rest_users] == [
            *[brief_rest(u) for u in ws_users[:3]],
            ("blocker", "online", None, False, ("b1",)),
            ("never", "offline", None, True, ()),
        ]
        assert [brief_grpc(u) for u in grpc_watcher] == [brief_rest(u)[:4] for u in ws_users]
        assert [brief_grpc(u) for u in grpc_anonymous] == [brief_rest(u)[:4] for u in rest_users]

        # A change replaces the cached encodings on every path.
        await plain.request({"type": "set_status", "status": "away"}, "status_updated")
        await duo_hidden_device.request(
            {"type": "set_status", "status": "online"}, "status_updated"
        )
        ws_users, rest_users, grpc_watcher, grpc_anonymous = await answers()
        assert brief_rest(ws_users[0]) == ("plain", "away", "at lunch", False, ("p1",))
        assert brief_rest(ws_users[1]) == ("duo", "online", None, False, ("d1", "d2"))
        assert [brief_rest(u) for u in rest_users[:3]] == [brief_rest(u) for u in ws_users[:3]]
        assert [brief_grpc(u) for u in grpc_watcher] == [brief_rest(u)[:4] for u in ws_users]
        assert [brief_grpc(u)[:2] for u in grpc_anonymous[:2]] == [
            ("plain", "away"),
            ("duo", "online"),
        ]


async def test_an_id_holding_a_comma_is_refused_over_grpc(tmp_path: Path) -> None:
    """The one-pass check joins ids with commas: ``"a,b"`` must not pass as two ids."""
    async with running_server(tmp_path) as server:
        status, answer = await rpc(server, "GetMultipleUserStatus", {"userIds": ["bob", "a,b"]})
        assert (status, answer["message"]) == (
            400,
            "INVALID_USER_ID: user_ids[1] 'a,b' has ',' (U+002C) at position 2:"
            " only A-Z a-z 0-9 _ . : @ - are allowed",
        )
        status, answer = await http(server.base_url + "/api/presence?ids=" + quote("bob,a b"))
        assert (status, answer["error"]["message"]) == (
            400,
            "ids[1] 'a b' has ' ' (U+0020) at position 2: only A-Z a-z 0-9 _ . : @ - are allowed",
        )
