"""An admin change is acknowledged only once durable, and never waits unboundedly
(issue 11, item 5): a store that cannot commit answers STORE_ERROR (503) after
``persistence.admin_commit_timeout``, and refuses further changes up front until it
recovers. A real server on a loopback port; another connection holds the database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio

from presence_actors.model import Visibility
from presence_actors.persistence import open_reader

from .process_harness import http
from .server_harness import running_server


async def test_an_admin_change_the_store_cannot_commit_is_answered_store_error_in_time(
    tmp_path: Path,
) -> None:
    database = tmp_path / "presence.db"
    async with running_server(tmp_path) as server:
        url = f"{server.base_url}/api/admin/users/alice/privacy"
        with trio.fail_after(5):
            await server.engine.writer.flush()
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another writer: every commit fails
        try:
            with trio.fail_after(15):
                started = trio.current_time()
                code, answer = await http("PUT", url, {"visibility": "contacts"})
                waited = trio.current_time() - started
            assert (code, answer["error"]["code"]) == (503, "STORE_ERROR")
            assert answer["error"]["message"].startswith(
                "the change was not committed within 5 s (database is locked): it is not"
                " acknowledged"
            )
            assert 5 <= waited < 8
            # Now the store is known to fail: refused at once, nothing applied.
            with trio.fail_after(2):
                code, answer = await http("PUT", url, {"visibility": "nobody"})
            assert (code, answer["error"]["code"]) == (503, "STORE_ERROR")
            assert answer["error"]["message"] == (
                "the store cannot be written (database is locked); admin changes are refused"
                " until it recovers (see /readyz)"
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        with trio.fail_after(15):
            while (await http("GET", f"{server.base_url}/readyz"))[0] != 200:
                await trio.sleep(0.05)
        # The refused change was never applied; the unacknowledged one was, and it
        # was committed once the store recovered (documented: retry it to be sure).
        with open_reader(database) as reader:
            [alice] = reader.load_users()
        assert alice.visibility is Visibility.CONTACTS
        code, answer = await http("PUT", url, {"visibility": "everyone"})
        assert code == 200, answer
        # Acknowledged means durable: the row is on disk before the answer.
        with open_reader(database) as reader:
            [alice] = reader.load_users()
        assert alice.visibility is Visibility.EVERYONE
