"""The server answers on every route it serves (a quick end-to-end check)."""

from __future__ import annotations

from pathlib import Path

from .server_harness import running_server, ws_client


async def test_a_session_round_trip(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server, ws_client(server, "alice") as alice:
        reply = await alice.request(
            {"type": "set_status", "status": "busy", "requestId": "r"}, "status_updated"
        )
        assert (reply["status"], reply["effectiveStatus"], reply["requestId"]) == (
            "busy",
            "busy",
            "r",
        )
