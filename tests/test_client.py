"""The Python client against a real server, and the client side of the codec."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from presence_actors import codec
from presence_actors import protocol as p
from presence_actors.client import (
    Backoff,
    ClientEvent,
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    Disconnected,
    EventsDropped,
    PresenceClient,
    Reconnected,
    RequestFailed,
    RequestTimeout,
    open_presence_client,
    websocket_url,
)
from presence_actors.gateway.server import RunningServer
from presence_actors.model import DeviceType, DeviceView, Status, UserView, Visibility

from .server_harness import RawClient, running_server, ws_client

# --- the codec's client side ---------------------------------------------------------

_ids = st.from_regex(r"[A-Za-z0-9_.:@-]{1,12}", fullmatch=True)
_timestamps = st.integers(0, 4_102_444_800_000)  # 1970 to 2100, in ms
_views = st.builds(
    UserView,
    user_id=_ids,
    status=st.sampled_from(Status),
    username=st.none() | st.text(max_size=8),
    status_message=st.none() | st.text(max_size=8),
    last_seen=st.none() | _timestamps,
    devices=st.lists(
        st.builds(DeviceView, _ids, st.sampled_from(DeviceType), st.sampled_from(Status)),
        max_size=2,
    ).map(tuple),
)


def _server_message(cls: type[p.ServerMessage]) -> st.SearchStrategy[p.ServerMessage]:
    """Any ``cls`` the server could send: fields by name, else by type."""
    by_name: dict[str, st.SearchStrategy[Any]] = {
        "timestamp": _timestamps,
        "request_id": st.none() | st.text(max_size=64),
        # user_status(_change) frames carry no devices.
        "view": _views.map(lambda view: attrs.evolve(view, devices=())),
        "users": st.lists(_views, max_size=3).map(tuple),
        "user_ids": st.lists(_ids, max_size=3).map(tuple),
    }
    by_type: dict[object, st.SearchStrategy[Any]] = {
        float: st.floats(0, 1e6, allow_nan=False),
        int: st.integers(0, 2**53),
    }
    strategies = {}
    for a in attrs.fields(attrs.resolve_types(cls)):
        strategy = by_name.get(a.name, by_type.get(a.type))
        strategies[a.name] = st.from_type(a.type) if strategy is None else strategy
    return st.builds(cls, **strategies)


@given(st.one_of([_server_message(cls) for cls in p.SERVER_MESSAGES]))
def test_every_server_message_decodes_to_what_was_encoded(message: p.ServerMessage) -> None:
    assert codec.decode_server_message(codec.encode(message)) == message


@pytest.mark.parametrize(
    "message",
    [
        p.GetOnlineCount(request_id="r1"),
        p.CheckUserStatus(target_user_id="bob"),
        p.GetAllUsers(status=Status.AWAY, limit=5, cursor="c"),
        p.GetPresence(user_ids=("a", "b")),
        p.SetStatus(status=Status.BUSY, status_message="call", scope=p.Scope.ALL),
        p.SetStatus(status=Status.ONLINE, status_message=""),
        p.Identify(username="Alice", user_id="alice"),
        p.Heartbeat(active=True),
        p.Activity(),
        p.Subscribe(user_ids=("x",)),
        p.Unsubscribe(user_ids=("x", "y")),
        p.SetPrivacy(visibility=Visibility.NOBODY),
        p.Block(target_user_id="eve"),
        p.Unblock(target_user_id="eve"),
        p.Logout(),
    ],
)
def test_client_messages_decode_to_what_was_encoded(message: p.ClientMessage) -> None:
    assert codec.decode_client_message(codec.encode_client_message(message)) == message


def test_encoding_omits_defaults() -> None:
    assert codec.encode_client_message(p.SetStatus(status=Status.BUSY)) == (
        '{"type":"set_status","status":"busy"}'
    )


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        ('{"type": "shiny_new_thing"}', "unknown server message type 'shiny_new_thing'"),
        ("[1]", "must be a JSON object"),
        ("{", "invalid JSON"),
        (
            '{"type": "online_count", "timestamp": "2026-01-01T00:00:00.000Z"}',
            r"required field missing @ online_count\.count",
        ),
        ('{"type": "online_count", "timestamp": 5, "count": 1}', "expected an ISO-8601"),
    ],
)
def test_undecodable_server_frames_are_named(frame: str, problem: str) -> None:
    with pytest.raises(codec.ServerMessageError, match=problem):
        codec.decode_server_message(frame)


def test_a_status_change_without_devices_decodes() -> None:
    frame = (
        '{"type":"user_status_change","userId":"bob","online":true,"status":"busy",'
        '"statusMessage":null,"lastSeen":"2026-11-23T10:30:00.000Z","username":"Bob",'
        '"timestamp":"2026-11-23T10:30:00.250Z"}'
    )
    message = codec.decode_server_message(frame)
    assert message == p.UserStatusChange(
        timestamp=1795429800250,
        view=UserView("bob", Status.BUSY, "Bob", None, 1795429800000),
    )


# --- small pure parts ----------------------------------------------------------------


def test_backoff_grows_to_its_cap_with_half_of_each_step_random() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    assert [backoff.delay(n, 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [backoff.delay(n, 0.999) for n in (0, 5)] == pytest.approx([0.9995, 7.996])


def test_websocket_url_accepts_a_base_url_or_the_endpoint() -> None:
    assert websocket_url("http://h:1", {"userId": "a b"}) == "ws://h:1/ws?userId=a+b"
    assert websocket_url("wss://h/ws?x=1", {"userId": "a"}) == "wss://h/ws?x=1&userId=a"
    with pytest.raises(ValueError, match="not a ws://"):
        websocket_url("ftp://h", {})


# --- against a server ----------------------------------------------------------------


async def pushes_until(raw: RawClient, about: str, status: str) -> list[str]:
    """Statuses pushed to ``raw`` about ``about``, up to and including ``status``."""
    seen: list[str] = []
    while not seen or seen[-1] != status:
        message = await raw.next()
        if message["type"] == "user_status_change" and message["userId"] == about:
            seen.append(message["status"])
    return seen


async def next_event(client: PresenceClient) -> ClientEvent:
    with trio.fail_after(5):
        return await client.events().receive()


async def test_connects_and_is_welcomed(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        with trio.fail_after(5):
            async with open_presence_client(
                server.base_url, "alice", device_id="laptop", device_type="desktop"
            ) as alice:
                assert alice.welcome is not None
                assert (alice.welcome.user_id, alice.welcome.device_id) == ("alice", "laptop")
                assert alice.connected
                view = await alice.request(p.CheckUserStatus(target_user_id="alice"))
        assert isinstance(view, p.UserStatus)
        assert view.view.devices == ()  # user_status carries no devices
        assert view.view.status is Status.ONLINE


async def test_concurrent_requests_each_get_their_own_reply(tmp_path: Path) -> None:
    names = [f"user{n}" for n in range(8)]
    async with running_server(tmp_path) as server:
        for name in names:  # known users, with distinct usernames
            async with ws_client(server, name) as raw:
                await raw.request({"type": "identify", "username": name.upper()}, "identified")
        replies: dict[str, p.UserStatus] = {}
        with trio.fail_after(5):
            async with open_presence_client(server.base_url, "alice") as alice:

                async def ask(name: str) -> None:
                    reply = await alice.request(p.CheckUserStatus(target_user_id=name))
                    assert isinstance(reply, p.UserStatus)
                    replies[name] = reply

                async with trio.open_nursery() as nursery:
                    for name in names:
                        nursery.start_soon(ask, name)
    assert {name: reply.view.username for name, reply in replies.items()} == {
        name: name.upper() for name in names
    }
    assert len({reply.request_id for reply in replies.values()}) == len(names)


async def test_an_error_reply_raises_request_failed(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        with trio.fail_after(5):
            async with open_presence_client(server.base_url, "alice") as alice:
                with pytest.raises(RequestFailed, match="INVALID_USER_ID") as failed:
                    await alice.request(
                        p.CheckUserStatus(target_user_id="not valid!", request_id="mine")
                    )
                assert (failed.value.code, failed.value.request_id) == (
                    p.ErrorCode.INVALID_USER_ID,
                    "mine",
                )
                # The connection is still good.
                assert isinstance(await alice.request(p.GetOnlineCount()), p.OnlineCount)


async def test_pushes_arrive_as_typed_events(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        with trio.fail_after(5):
            async with (
                open_presence_client(server.base_url, "alice") as alice,
                ws_client(server, "bob") as bob,
            ):
                await bob.request(
                    {"type": "set_status", "status": "busy", "statusMessage": "call"},
                    "status_updated",
                )
                record = [await next_event(alice), await next_event(alice)]
    assert [change_of(event) for event in record] == [
        ("bob", Status.ONLINE, None),
        ("bob", Status.BUSY, "call"),
    ]


def change_of(event: ClientEvent) -> tuple[str, Status, str | None]:
    assert isinstance(event, p.UserStatusChange)
    return (event.view.user_id, event.view.status, event.view.status_message)


async def test_heartbeats_keep_the_session_alive(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    presence = {"heartbeat_interval": 1.0, "heartbeat_timeout": 3.0}
    async with running_server(tmp_path, presence=presence) as server:
        with trio.fail_after(120):
            async with open_presence_client(server.base_url, "alice") as alice:
                await trio.sleep(30)  # ten heartbeat timeouts
                assert alice.connected
                count = await alice.request(p.GetOnlineCount())
        assert isinstance(count, p.OnlineCount)
        assert count.count == 1
        assert server.app.metrics.messages_in["heartbeat"] >= 25
        assert server.app.metrics.closes[4002] == 0


class Proxy:
    """A TCP forwarder to the server that a test can stall or cut (a real socket drop)."""

    def __init__(self, server: RunningServer) -> None:
        self.target = server.port
        self.port = 0
        self.streams: list[trio.SocketStream] = []
        self.flowing = trio.Event()
        self.flowing.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._forward, listeners, task_status=task_status)

    def stall(self) -> None:
        """Stop passing the server's bytes to clients."""
        self.flowing = trio.Event()

    async def drop(self) -> None:
        """Close every connection, both sides, without a WebSocket close."""
        streams, self.streams = self.streams, []
        for stream in streams:
            await stream.aclose()
        self.flowing.set()

    async def _forward(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target)
        self.streams += [client, server]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, False)
            nursery.start_soon(self._pump, server, client, True)

    async def _pump(self, source: trio.SocketStream, sink: trio.SocketStream, gated: bool) -> None:
        try:
            async for data in source:
                if gated:
                    await self.flowing.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await sink.aclose()


@asynccontextmanager
async def proxied(server: RunningServer) -> AsyncIterator[Proxy]:
    proxy = Proxy(server)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        yield proxy
        nursery.cancel_scope.cancel()


async def test_a_dropped_connection_reconnects_as_the_same_device_without_a_flap(
    tmp_path: Path,
) -> None:
    fast = Backoff(initial=0.05, maximum=0.5)
    async with (
        running_server(tmp_path) as server,
        proxied(server) as proxy,
        ws_client(server, "watcher") as watcher,
    ):
        with trio.fail_after(10):
            async with open_presence_client(proxy.url, "alice", backoff=fast) as alice:
                device = alice.device_id
                assert await pushes_until(watcher, "alice", "online") == ["online"]
                await proxy.drop()
                lost, back = await next_event(alice), await next_event(alice)
                await alice.request(p.SetStatus(status=Status.BUSY))
                assert await pushes_until(watcher, "alice", "busy") == ["busy"]
    assert lost == Disconnected(1006, "ABNORMAL_CLOSURE", reconnecting=True)
    assert isinstance(back, Reconnected)
    assert (back.welcome.device_id, back.attempts) == (device, 1)
    assert device is not None
    assert device.startswith("dev-")


async def test_requests_in_flight_fail_when_the_connection_drops(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, proxied(server) as proxy:
        with trio.fail_after(10):
            async with open_presence_client(proxy.url, "alice", reconnect=False) as alice:
                proxy.stall()
                failure: list[ConnectionLost] = []

                async def ask() -> None:
                    with pytest.raises(ConnectionLost) as lost:
                        await alice.request(p.GetOnlineCount())
                    failure.append(lost.value)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask)
                    while not server.app.metrics.messages_in["get_online_count"]:
                        await trio.sleep(0.01)
                    await proxy.drop()
                events = [event async for event in alice.events()]
                with pytest.raises(trio.ClosedResourceError):
                    await alice.request(p.GetOnlineCount())
    assert [(f.code, str(f)) for f in failure] == [(1006, "ABNORMAL_CLOSURE (close code 1006)")]
    assert events == [Disconnected(1006, "ABNORMAL_CLOSURE", reconnecting=False)]


async def test_a_request_without_reply_times_out(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, proxied(server) as proxy:
        with trio.fail_after(10):
            async with open_presence_client(proxy.url, "alice", request_timeout=0.2) as alice:
                proxy.stall()
                with pytest.raises(RequestTimeout, match="no reply to get_online_count"):
                    await alice.request(p.GetOnlineCount())


async def test_a_slow_event_consumer_loses_events_and_is_told(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        with trio.fail_after(5):
            async with (
                open_presence_client(server.base_url, "alice", event_buffer=2) as alice,
                ws_client(server, "bob") as bob,
            ):
                # bob online, then four changes: two fit the buffer, three are dropped.
                for status in ("busy", "away", "busy", "away"):
                    await bob.request({"type": "set_status", "status": status}, "status_updated")
                await alice.request(p.GetOnlineCount())  # every push is in before the reply
                record = [await next_event(alice), await next_event(alice)]
                await bob.request({"type": "set_status", "status": "online"}, "status_updated")
                record += [await next_event(alice), await next_event(alice)]
    assert [e.view.status.value if isinstance(e, p.UserStatusChange) else e for e in record] == [
        "online",
        "busy",
        EventsDropped(3),
        "online",
    ]


async def test_logout_ends_the_client_at_once(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, ws_client(server, "watcher") as watcher:
        with trio.fail_after(5):
            async with open_presence_client(server.base_url, "alice") as alice:
                await alice.request(p.Logout())
                events = [event async for event in alice.events()]
                assert not alice.connected
            assert await pushes_until(watcher, "alice", "offline") == ["online", "offline"]
    assert events == [Disconnected(1000, "logged out", reconnecting=False)]


async def test_aclose_is_safe_twice_and_ends_the_events(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        with trio.fail_after(5):
            async with open_presence_client(server.base_url, "alice") as alice:
                await alice.aclose()
                await alice.aclose()
                assert [event async for event in alice.events()] == []
                with pytest.raises(trio.ClosedResourceError):
                    await alice.request(p.GetOnlineCount())
                await trio.lowlevel.checkpoint()  # aclose does not cancel the caller's block
            await alice.aclose()


async def test_a_refused_connection_raises_at_once(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        with (
            trio.fail_after(5),
            pytest.raises(ConnectionRefused, match="INVALID_USER_ID") as refused,
        ):
            async with open_presence_client(server.base_url, "not valid!"):
                pytest.fail("connected")
    assert refused.value.code is p.ErrorCode.INVALID_USER_ID


async def test_an_observer_watches_as_nobody(tmp_path: Path) -> None:
    async with running_server(tmp_path, web={"observer": True}) as server:
        with trio.fail_after(5):
            async with open_presence_client(server.base_url, None, observer=True) as observer:
                assert observer.welcome is not None
                assert observer.welcome.user_id == ""
                with pytest.raises(RequestFailed, match="FORBIDDEN"):
                    await observer.request(p.SetStatus(status=Status.BUSY))
    with pytest.raises(ValueError, match="an observer is nobody"):
        async with open_presence_client(server.base_url, "alice", observer=True):
            pytest.fail("connected")


async def test_an_unreachable_server_raises_connect_error() -> None:
    with (
        socket_that_refuses() as port,
        trio.fail_after(5),
        pytest.raises(ConnectError, match=f"cannot connect to ws://127.0.0.1:{port}"),
    ):
        async with open_presence_client(f"ws://127.0.0.1:{port}", "alice"):
            pytest.fail("connected")


async def test_an_exception_in_the_block_propagates_unwrapped(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        with trio.fail_after(5), pytest.raises(KeyError, match="mine"):
            async with open_presence_client(server.base_url, "alice"):
                raise KeyError("mine")


@contextmanager
def socket_that_refuses() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
