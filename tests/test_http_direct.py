"""``GET /api/presence`` served past hypercorn (issue 13), through raw sockets.

The direct path must answer exactly what hypercorn did (same status, body and
headers, same authentication and refusals), hand every other request on the
connection back to hypercorn in order, keep hypercorn's bounds (head size, a
head's time, requests per connection) and let the server stop at once.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
import trio

from presence_actors.gateway.server import RunningServer

from .server_harness import running_server, ws_client

JWT_SECRET = "a-test-secret-of-at-least-32-bytes!"


def get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Answers:
    """HTTP/1.1 answers read off a raw socket, in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _more(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise EOFError(self.buffer)
        self.buffer += chunk

    async def next(self) -> tuple[int, dict[str, str], Any]:
        with trio.fail_after(5):
            while b"\r\n\r\n" not in self.buffer:
                await self._more()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status_line, *fields = head.decode("latin-1").split("\r\n")
            headers = {}
            for field in fields:
                name, _, value = field.partition(":")
                headers[name.strip().lower()] = value.strip()
            size = int(headers.get("content-length", "0"))
            while len(self.buffer) < size:
                await self._more()
            body, self.buffer = self.buffer[:size], self.buffer[size:]
        return int(status_line.split(" ")[1]), headers, orjson.loads(body) if body else None

    async def closed(self, within: float) -> bool:
        with trio.move_on_after(within):
            while True:
                try:
                    await self._more()
                except (EOFError, trio.BrokenResourceError):
                    return True
        return False


@contextlib.asynccontextmanager
async def connection(server: RunningServer):  # type: ignore[no-untyped-def]
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        yield stream, Answers(stream)


async def test_pipelined_requests_are_answered_in_order_across_both_paths(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path) as server, ws_client(server, "alice"):
        async with connection(server) as (stream, answers):
            await stream.send_all(
                get("/api/presence?ids=alice,bob")  # direct
                + get("/api/presence?ids=bob")  # direct
                + get("/healthz")  # hypercorn from here on
                + get("/api/presence?ids=alice,bob", "Connection: close")
            )
            direct = [await answers.next(), await answers.next()]
            health = await answers.next()
            by_hypercorn = await answers.next()
            assert await answers.closed(5)
        assert health[:1] == (200,)
        assert health[2] == {"status": "ok"}
        assert [(u["userId"], u["online"]) for u in direct[0][2]["users"]] == [
            ("alice", True),
            ("bob", False),
        ]
        assert direct[1][2]["users"][0]["userId"] == "bob"
        # The same answer as hypercorn's, header for header (but the date's value).
        assert direct[0][0] == by_hypercorn[0] == 200
        assert direct[0][2] == by_hypercorn[2]
        assert set(direct[0][1]) == set(by_hypercorn[1]) - {"connection"}
        for name in ("content-type", "cache-control", "server"):
            assert direct[0][1][name] == by_hypercorn[1][name]


async def test_requests_it_does_not_serve_go_to_hypercorn_unchanged(tmp_path: Path) -> None:
    """A body, a malformed or oversized head: hypercorn answers them as it always did."""
    async with running_server(tmp_path) as server:
        cases = [
            # (what is sent, the same for a path hypercorn always served)
            (
                b"GET /api/presence?ids=bob HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
            ),
            (
                b"GET /api/presence?ids=bob HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n",
            ),
            (
                b"GET /api/presence?ids=bob HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
            ),
            (
                get("/api/presence?ids=bob", "X-Big: " + "y" * 20_000),
                get("/healthz", "X-Big: " + "y" * 20_000),
            ),
            (b"GET /api/presence?ids=bob HTTP/1.1\r\n\r\n", b"GET /healthz HTTP/1.1\r\n\r\n"),
        ]
        for request, control in cases:
            statuses = []
            for sent in (get("/api/presence?ids=bob") + request, get("/healthz") + control):
                async with connection(server) as (stream, answers):
                    await stream.send_all(sent)
                    assert (await answers.next())[0] == 200
                    try:
                        statuses.append((await answers.next())[0])
                    except (EOFError, trio.BrokenResourceError):
                        statuses.append(None)  # dropped without an answer
            presence, health = statuses
            if health == 200:
                assert presence == 200, request[:60]
            else:
                assert presence == health, (request[:60], statuses)
                assert presence != 200


async def test_a_head_that_never_ends_is_dropped_after_the_keep_alive_timeout(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path) as server, connection(server) as (stream, answers):
        await stream.send_all(get("/api/presence?ids=bob"))
        assert (await answers.next())[0] == 200
        started = time.monotonic()
        await stream.send_all(b"GET /api/presence?ids=bob HTTP/1.1\r\nHost: t\r\n")
        for _ in range(3):  # a byte now and then does not keep it open
            await trio.sleep(1)
            await stream.send_all(b"X")
        assert await answers.closed(within=5)
        assert time.monotonic() - started < 7  # hypercorn's keep_alive_timeout: 5 s


async def test_the_last_request_a_connection_may_carry_closes_it(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, connection(server) as (stream, answers):
        # keep_alive_max_requests is hypercorn's 1,000.
        await stream.send_all(get("/api/presence?ids=bob") * 1001)
        for _ in range(999):
            status, headers, _ = await answers.next()
            assert status == 200
            assert "connection" not in headers
        status, headers, _ = await answers.next()
        assert (status, headers["connection"]) == (200, "close")
        assert await answers.closed(within=5)


async def test_a_token_is_checked_on_the_direct_path(tmp_path: Path) -> None:
    auth = {"mode": "jwt", "jwt_secret": JWT_SECRET}
    async with running_server(tmp_path, auth=auth) as server:
        token = jwt.encode({"sub": "carol", "exp": int(time.time()) + 60}, JWT_SECRET)
        async with connection(server) as (stream, answers):
            await stream.send_all(
                get("/api/presence?ids=bob")
                + get("/api/presence?ids=bob", "Authorization: Bearer nonsense")
                + get("/api/presence?ids=bob", f"Authorization: Bearer {token}")
                + get(f"/api/presence?ids=bob&token={token}")
            )
            refused, forged, *accepted = [await answers.next() for _ in range(4)]
        assert (refused[0], refused[2]["error"]["code"]) == (401, "UNAUTHORIZED")
        assert (forged[0], forged[2]["error"]["code"]) == (401, "UNAUTHORIZED")
        assert [a[0] for a in accepted] == [200, 200]


async def test_the_server_stops_at_once_with_an_idle_keep_alive_connection(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path, server={"graceful_timeout": 10.0}) as server:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        answers = Answers(stream)
        await stream.send_all(get("/api/presence?ids=bob"))
        assert (await answers.next())[0] == 200
        started = time.monotonic()
    assert time.monotonic() - started < 3  # not graceful_timeout
    assert await answers.closed(within=1)
    await stream.aclose()


async def test_a_client_that_asks_and_never_reads_is_dropped(tmp_path: Path) -> None:
    """Pipelined reads of big answers, never read: the server's write stops for
    good once the socket buffers are full; it drops the connection after the
    keep-alive timeout instead of holding its descriptor for ever."""
    users = [f"user{n:03d}" for n in range(100)]
    request = get("/api/presence?ids=" + ",".join(users))
    sock = trio.socket.socket()
    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    async with running_server(tmp_path) as server:
        await sock.connect(("127.0.0.1", server.port))
        stream = trio.SocketStream(sock)

        async def ask() -> None:
            # The requests themselves stop being read once the server is stuck;
            # a dropped connection breaks this write.
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(request * 999)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.sleep(9)  # hypercorn's keep_alive_timeout of 5 s, and margin
            answers = Answers(stream)
            taken = 0
            with trio.fail_after(10):
                while True:
                    try:
                        await answers.next()
                    except (EOFError, trio.BrokenResourceError):
                        break
                    taken += 1
            nursery.cancel_scope.cancel()
        assert taken < 999, "the server waited for the reader (all answers came)"
