"""Nothing is ever written into a socket its connection does not own (issue 11, item 1).

Against a real server process under load: a client floods requests and drops
its connection; clients that connect right after it (their socket may get the
dropped one's file descriptor number) must read their own answer first and
nothing of the dropped session, ever.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

from .process_harness import blocking_server
from .raw_ws import OP_CLOSE, OP_TEXT, RawSocket, client_frame, close_payload, text, upgrade_head

CYCLES = 40
TIME_BOUND = 25.0  # seconds for all cycles; the old code leaked within a few
FLOOD = 600  # requests a dropping client leaves queued in the server
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
LIMITS = {"messages_per_second": 100000.0, "burst": 100000, "abuse_window": "60s"}


def _flood(index: int) -> bytes:
    requests = []
    for n in range(FLOOD):
        match n % 3:
            case 0:
                requests.append(text({"type": "get_online_count", "requestId": f"A{index}-{n}"}))
            case 1:
                status = ("busy", "away")[n % 2]
                requests.append(text({"type": "set_status", "status": status}))
            case _:
                requests.append(text({"type": "check_user_status", "targetUserId": "bystander"}))
    return b"".join(requests)


def _drain(sock: socket.socket) -> None:
    """Read whatever comes until the server ends the stream (or 10 s pass)."""
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def _background_load(port: int, stop: threading.Event) -> None:
    """A watcher that keeps the server busy: every flooder's status changes are pushed to it."""
    with RawSocket(port) as watcher:
        watcher.open("/ws?userId=bystander")
        watcher.sock.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                watcher.sock.recv(65536)


def _first_answer(port: int, request: bytes) -> tuple[RawSocket, bytes]:
    """Connect, send ``request`` and read the head of the answer."""
    try:
        client = RawSocket(port)
    except ConnectionRefusedError:
        raise AssertionError("the server died (connection refused)") from None
    client.send(request)
    return client, client.read_head()


def test_a_dropped_sessions_frames_never_reach_the_next_connection(tmp_path: Path) -> None:
    with blocking_server(tmp_path, limits=LIMITS, presence={"grace_period": "50ms"}) as server:
        stop = threading.Event()
        load = threading.Thread(target=_background_load, args=(server.port, stop), daemon=True)
        load.start()
        leaks: list[tuple[str, int, bytes]] = []

        def check(kind: str, cycle: int, head: bytes, expected: bytes) -> bool:
            if head.startswith(expected):
                return True
            leaks.append((kind, cycle, head[:160]))
            return False

        try:
            started = time.monotonic()
            cycles = 0
            while cycles < CYCLES and time.monotonic() - started < TIME_BOUND:
                cycle, cycles = cycles, cycles + 1
                if server.process.poll() is not None:
                    leaks.append(("the server died", cycle, b""))
                    break
                flooder, head = _first_answer(server.port, upgrade_head(f"/ws?userId=f{cycle}"))
                if not check("flooder", cycle, head, b"HTTP/1.1 101 "):
                    flooder.sock.close()
                    continue
                # It ends the session while the replies to its flood are still on
                # their way through the engine: by a half-close or a Close frame,
                # reading everything; or by a half-close, reading nothing (the
                # server's writes to it then have to wait).
                draining = threading.Thread(target=_drain, args=(flooder.sock,), daemon=True)
                if cycle % 3 != 2:
                    draining.start()
                flooder.send(_flood(cycle))
                if cycle % 3 == 1:
                    flooder.send(client_frame(OP_CLOSE, close_payload(1000)))
                else:
                    flooder.sock.shutdown(socket.SHUT_WR)

                following, head = _first_answer(server.port, upgrade_head(f"/ws?userId=n{cycle}"))
                with following:
                    if check("websocket", cycle, head, b"HTTP/1.1 101 "):
                        first = following.next_frame()
                        if first.opcode != OP_TEXT or (
                            first.json()["type"],
                            first.json().get("userId"),
                        ) != ("welcome", f"n{cycle}"):
                            leaks.append(("websocket frames", cycle, first.payload[:160]))
                plain, head = _first_answer(server.port, HEALTHZ)
                with plain:
                    check("healthz", cycle, head, b"HTTP/1.1 200 ")
                if cycle % 3 != 2:
                    draining.join(timeout=10)
                flooder.sock.close()
            assert cycles >= 10, "too few cycles ran to mean anything"
            assert leaks == []
            assert server.process.poll() is None, "the server died"
        finally:
            stop.set()
            load.join(timeout=5)
