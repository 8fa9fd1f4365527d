"""One process per database (issue 11, item 6): a second server or an import-json on a
database a live server uses is refused in one line before it reads or writes anything,
and the lock dies with its holder, ``kill -9`` included. Real processes throughout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from presence_actors.persistence import open_reader

from .process_harness import (
    ServerProcess,
    history,
    run_cli,
    server_process,
    wait_for,
    write_config,
    ws_client,
)


def refusal(database: Path, holder: int) -> str:
    return (
        f"presence-actors: the database {database} is in use by another process (pid {holder},"
        f" holding {database}.lock): stop it first, or give this one another persistence.path"
    )


def config_for(tmp_path: Path) -> tuple[Path, Path]:
    database = tmp_path / "data" / "presence.db"
    return write_config(tmp_path / "config.toml", persistence={"path": str(database)}), database


async def committed(server: ServerProcess, user_id: str, reason: str) -> bool:
    return any(e["reason"] == reason for e in await history(server, user_id))


@pytest.mark.parametrize("port", ["another", "the same"])
async def test_a_second_server_is_refused_and_the_first_ones_users_see_nothing(
    tmp_path: Path, port: str
) -> None:
    config, database = config_for(tmp_path)
    async with server_process(tmp_path, config) as first:
        async with ws_client(first, "alice") as alice, ws_client(first, "bob") as bob:
            with trio.fail_after(10):
                await wait_for(lambda: committed(first, "alice", "connect"))
            port_flag = "0" if port == "another" else first.base_url.rsplit(":", 1)[1]
            second = await run_cli(tmp_path, "serve", "--config", str(config), "--port", port_flag)
            assert second.returncode == 1
            assert second.stderr.splitlines() == [refusal(database, first.pid)]
            # Nothing reached the first server's users, and nothing was written.
            with trio.move_on_after(1) as quiet:
                pushed = await bob.next()
            assert quiet.cancelled_caught, pushed
            reply = await alice.request({"type": "get_online_count"}, "online_count")
            assert reply["count"] == 2
            assert [e["reason"] for e in await history(first, "alice")] == ["connect"]
        # kill -9 ends the holder; the kernel releases its flock with it.
        first.process.kill()
        with trio.fail_after(10):
            await first.process.wait()
    async with server_process(tmp_path, config) as third:
        assert [e["reason"] for e in await history(third, "alice")] == ["connect", "restart"]
        assert await third.stop() == 0


async def test_import_json_is_refused_while_a_server_runs_and_works_after_it_stopped(
    tmp_path: Path,
) -> None:
    config, database = config_for(tmp_path)
    seed = tmp_path / "users.json"
    seed.write_text(json.dumps({"zoe": {"userId": "zoe", "username": "Zoe"}}), encoding="utf-8")
    async with server_process(tmp_path, config) as server:
        refused = await run_cli(tmp_path, "import-json", "--config", str(config), str(seed))
        assert refused.returncode == 1
        assert refused.stderr.splitlines() == [refusal(database, server.pid)]
        # Reading is safe beside the server (WAL): export-json is not refused.
        exported = await run_cli(
            tmp_path, "export-json", "--config", str(config), str(tmp_path / "out.json")
        )
        assert exported.returncode == 0, exported.stderr
        assert await server.stop() == 0
    with open_reader(database) as reader:
        assert reader.load_users() == []
    imported = await run_cli(tmp_path, "import-json", "--config", str(config), str(seed))
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == f"imported 1 user from {seed} into {database} (all offline)\n"
