"""A refused user id says what is wrong with it, on every path (issue 11, item 16).

A space, a slash, 129 characters, a non-ASCII letter or an empty value used to
be answered "userId is required" on the WebSocket (even when one was sent) and
"invalid user id ..." elsewhere. Each path is attacked with the same bad ids
and must name the field and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from presence_actors import model

from .server_harness import running_server, ws_client
from .test_http_api import http
from .test_websocket import closed_with

RULE = "only A-Z a-z 0-9 _ . : @ - are allowed"
# (the bad id, what the message says about it after the field's name)
BAD_IDS = [
    ("a b", f"'a b' has ' ' (U+0020) at position 2: {RULE}"),
    ("team/alice", f"'team/alice' has '/' (U+002F) at position 5: {RULE}"),
    ("x" * 129, "is 129 characters long: at most 128"),
    ("zoë", f"'zoë' has 'ë' (U+00EB) at position 3: {RULE}"),
    ("", "is empty: expected 1-128 characters from A-Z a-z 0-9 _ . : @ -"),
]


@pytest.mark.parametrize(
    ("value", "said"), BAD_IDS, ids=["space", "slash", "129-characters", "non-ascii", "empty"]
)
def test_the_problem_is_named(value: str, said: str) -> None:
    assert model.user_id_problem(value, "userId") == f"userId {said}"


def test_a_missing_id_is_required_and_a_long_one_is_not_echoed() -> None:
    assert model.user_id_problem(None) == (
        "userId is required: 1-128 characters from A-Z a-z 0-9 _ . : @ -"
    )
    message = model.user_id_problem("y" * 60 + " ")
    assert message is not None
    assert message.startswith("userId '" + "y" * 40 + "'... (61 characters) has ' '")


async def test_websocket_query_and_message_fields(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        for value, said in BAD_IDS:
            async with ws_client(server, value, welcome=False) as client:
                error = await client.next()
                assert (error["code"], error["message"]) == ("INVALID_USER_ID", f"userId {said}")
                assert await closed_with(client) == 1008
        async with ws_client(server, None, welcome=False) as client:
            error = await client.next()
            assert error["message"].startswith("userId is required")

        async with ws_client(server, "alice") as alice:
            for value, said in BAD_IDS:
                for message, field in [
                    ({"type": "check_user_status", "targetUserId": value}, "targetUserId"),
                    ({"type": "block", "targetUserId": value}, "targetUserId"),
                    ({"type": "get_presence", "userIds": ["bob", value]}, "userIds[1]"),
                    ({"type": "subscribe", "userIds": [value]}, "userIds[0]"),
                ]:
                    error = await alice.request(message, "error")
                    assert (error["code"], error["message"]) == (
                        "INVALID_USER_ID",
                        f"{field} {said}",
                    ), message
            error = await alice.request({"type": "check_user_status", "targetUserId": 7}, "error")
            assert error["message"] == "targetUserId must be a string, got an integer"


async def test_rest_paths_parameters_and_bodies(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        api = server.base_url + "/api"
        for value, said in BAD_IDS:
            if not value or "/" in value:
                continue  # an empty or slashed path segment is another route
            checks: list[tuple[str, str, Any, str]] = [
                ("GET", f"/users/{quote(value)}", None, "userId"),
                ("GET", f"/users/{quote(value)}/history", None, "userId"),
                ("POST", f"/admin/users/alice/contacts/{quote(value)}", None, "contactId"),
                ("PUT", f"/admin/users/{quote(value)}/privacy", {"visibility": "nobody"}, "userId"),
            ]
            for method, path, body, field in checks:
                status, answer = await http(api + path, method, body)
                assert (status, answer["error"]) == (
                    400,
                    {"code": "INVALID_USER_ID", "message": f"{field} {said}"},
                ), path
        for value, said in BAD_IDS:
            status, answer = await http(api + "/presence?ids=bob," + quote(value))
            if value:  # an empty item of the list is skipped
                assert answer["error"]["message"] == f"ids[1] {said}"
            status, answer = await http(
                api + "/admin/users/alice/contacts", "PUT", {"contacts": ["bob", value]}
            )
            assert (status, answer["error"]["message"]) == (400, f"contacts[1] {said}")


async def test_rpc_fields(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        service = server.base_url + "/presence.v1.PresenceService/"
        json_body = {"Content-Type": "application/json"}
        for value, said in BAD_IDS:
            checks: list[tuple[str, dict[str, Any], str]] = [
                ("GetUserStatus", {"userId": value}, "user_id"),
                ("GetUserStatus", {"userId": "bob", "viewerId": value}, "viewer_id"),
                ("GetMultipleUserStatus", {"userIds": ["bob", value]}, "user_ids[1]"),
                ("SetUserStatus", {"userId": value, "status": "ONLINE"}, "user_id"),
                ("SendHeartbeat", {"userId": value}, "user_id"),
            ]
            for method, fields, field in checks:
                if not value and field == "viewer_id":
                    continue  # no viewer: an anonymous read
                status, answer = await http(service + method, "POST", fields, json_body)
                # proto3 cannot tell an empty string from a field not sent.
                expected = (
                    f"{field} is required: 1-128 characters from A-Z a-z 0-9 _ . : @ -"
                    if not value
                    else f"{field} {said}"
                )
                assert (status, answer["code"], answer["message"]) == (
                    400,
                    "invalid_argument",
                    f"INVALID_USER_ID: {expected}",
                ), (method, json.dumps(fields)[:60])
