"""Memory bounds of a WebSocket session under attack (issue 11, items 7, 8 and 12).

Against a real server process: its resident memory is read from
/proc/PID/status while one client misbehaves, and what that client reads
afterwards is checked byte by byte.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .process_harness import BlockingServer, blocking_server, import_users
from .raw_ws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_TEXT,
    Frame,
    RawSocket,
    client_frame,
    text,
    upgrade_head,
)

USERS = 10_000
# A 10,000-user all_users answer is ~2 MB; growing 40 MB a second (the old code)
# passes this within seconds, a bounded outbox never comes near it.
RSS_BOUND_KIB = 64 * 1024


def _closes(server: BlockingServer, code: int) -> int:
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        metrics = response.read().decode()
    for line in metrics.splitlines():
        if line.startswith(f'presence_closes_total{{code="{code}"}}'):
            return int(float(line.split()[-1]))
    return 0


def test_a_client_that_never_reads_big_answers_is_closed_1013_with_bounded_memory(
    tmp_path: Path,
) -> None:
    import_users(tmp_path, USERS)
    with blocking_server(tmp_path) as server:
        # Warm the caches a big answer uses (each user's encoded view) with a
        # client that reads, so the baseline holds them.
        with RawSocket(server.port, timeout=10) as reader:
            reader.open("/ws?userId=reader")
            reader.send(text({"type": "get_all_users", "limit": USERS}))
            answer = reader.next_message()
            assert (answer["type"], len(answer["users"])) == ("all_users", USERS)
        baseline = server.rss_kib()

        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.settimeout(10)
        stuck.connect(("127.0.0.1", server.port))
        slow = RawSocket.__new__(RawSocket)
        slow.sock, slow.timeout, slow.buffer = stuck, 10.0, bytearray()
        slow.send(upgrade_head("/ws?userId=stuck"))
        peak = baseline
        deadline = time.monotonic() + 15
        sent = 0
        # The allowed rate (20 a second after a burst of 50), never reading.
        while _closes(server, 1013) == 0:
            assert peak - baseline < RSS_BOUND_KIB, f"{baseline} KiB -> {peak} KiB"
            assert time.monotonic() < deadline, f"not closed after {sent} requests"
            burst = 40 if sent == 0 else 2
            for _ in range(burst):
                slow.send(text({"type": "get_all_users", "limit": USERS, "requestId": str(sent)}))
                sent += 1
            peak = max(peak, server.rss_kib())
            time.sleep(0.1)
        peak = max(peak, server.rss_kib())
        assert peak - baseline < RSS_BOUND_KIB, f"{baseline} KiB -> {peak} KiB"

        # Unaware, it keeps its heartbeat going: input nobody reads any more,
        # which must not turn the close into a reset that loses the close frame.
        for _ in range(5):
            slow.send(text({"type": "heartbeat"}))
            time.sleep(0.05)
        # It reads now: whole frames, the last one a close frame with 1013.
        head = slow.read_head()
        assert head.startswith(b"HTTP/1.1 101 ")
        frames = slow.frames_to_end()  # fails on a frame cut short
        stuck.close()
        assert frames[0].json()["type"] == "welcome"
        assert frames[-1].opcode == OP_CLOSE
        assert frames[-1].close_code == 1013
        kinds = {f.json()["type"] for f in frames[1:-1]}
        assert kinds <= {"all_users", "error"}, kinds
        assert any(f.json()["type"] == "all_users" for f in frames[1:-1])
        # Everyone else is still served.
        with RawSocket(server.port) as other:
            other.open("/ws?userId=other")
            other.send(text({"type": "get_online_count"}))
            assert other.next_message()["type"] == "online_count"


def _fragmented_attack(server: BlockingServer, frames: bytes) -> tuple[float, list[int]]:
    """Send ``frames`` after a handshake; seconds until the server answered, and the
    codes of what it answered (error codes as -1, TOO_LARGE errors as 1, closes as is)."""
    with RawSocket(server.port, timeout=10) as attacker:
        attacker.open("/ws?userId=attacker")
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            attacker.send(frames)  # may be refused before it all arrived
        answers = []
        for found in attacker.frames_to_end():
            if found.opcode == OP_CLOSE:
                answers.append(found.close_code or 0)
            else:
                answers.append(1 if found.json().get("code") == "TOO_LARGE" else -1)
        return time.monotonic() - started, answers


@pytest.mark.parametrize(
    "attack",
    [
        # 65,000 one-byte fragments of one text message (455 KB on the wire).
        pytest.param(
            client_frame(OP_TEXT, b"[", fin=False)
            + client_frame(OP_CONTINUATION, b" ", fin=False) * 64_999,
            id="65000-one-byte-fragments",
        ),
        # 30 MB of empty fragments (5 million frames), which no size count saw.
        pytest.param(
            client_frame(OP_TEXT, b"", fin=False)
            + client_frame(OP_CONTINUATION, b"", fin=False) * 5_000_000,
            id="30MB-of-empty-fragments",
        ),
    ],
)
def test_fragment_floods_are_refused_quickly_with_bounded_memory(
    tmp_path: Path, attack: bytes
) -> None:
    with blocking_server(tmp_path) as server:
        baseline = server.rss_kib()
        seconds, answers = _fragmented_attack(server, attack)
        assert answers == [1, 1009]  # TOO_LARGE, then close 1009
        assert seconds < 5
        assert server.rss_kib() - baseline < 16 * 1024


def test_binary_frames_are_rate_limited_and_a_flood_of_them_is_closed(tmp_path: Path) -> None:
    limits = {"messages_per_second": 20, "burst": 50, "abuse_window": "1s"}
    with blocking_server(tmp_path, limits=limits) as server, RawSocket(server.port) as flooder:
        flooder.open("/ws?userId=flooder")
        received: list[Frame] = []
        reading = threading.Thread(target=lambda: received.extend(flooder.frames_to_end()))
        reading.start()
        deadline = time.monotonic() + 10
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # closed, as it should be
            while reading.is_alive() and time.monotonic() < deadline and sent < 10_000:
                flooder.send(client_frame(OP_BINARY, b'{"type":"get_online_count"}') * 10)
                sent += 10
                time.sleep(0.01)
        reading.join(timeout=10)
        codes = [f.close_code if f.opcode == OP_CLOSE else f.json()["code"] for f in received]
        assert "RATE_LIMITED" in codes
        assert codes[-1] == 1008
        assert codes.count("INVALID_MESSAGE") <= 50 + 20 * 3  # the burst, then the rate
