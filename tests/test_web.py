"""The "who is online" page and the operator view, in a real browser.

Playwright's sync API drives Debian's Chromium from one dedicated thread (its
objects belong to the thread that made them); the test itself runs under trio
next to a real server, and awaits each browser step with a bounded wait.

Set ``PRESENCE_WEB_SCREENSHOTS=docs`` to write the README screenshots
(``screenshot.png``, ``screenshot-narrow.png`` from the showcase test,
``screenshot-ops.png`` from the operator view test).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
import trio

from presence_actors.gateway.server import RunningServer
from presence_actors.model import Status
from presence_actors.persistence.intents import PresenceEvent, PresenceRow
from presence_actors.persistence.store import Batch, Store

from .server_harness import RawClient, running_server, ws_client

CHROMIUM = Path("/usr/bin/chromium")

if CHROMIUM.exists():  # without it the module is skipped, so Playwright is not needed
    from playwright.sync_api import (
        Browser,
        ConsoleMessage,
        Locator,
        Page,
        Playwright,
        expect,
        sync_playwright,
    )

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
)

T = TypeVar("T")

# Bounds on every wait: one browser call, and Playwright's own waits inside it.
CALL_TIMEOUT = 30.0
WAIT_MS = 5000
DESKTOP = {"width": 1100, "height": 900}
ADMIN_TOKEN = "ops-secret"
JWT_SECRET = "page-test-secret-of-at-least-32-bytes"
# Chromium logs the 401 that tells the page a server wants tokens (GET /api/stats).
ASKED_MODE = "the server responded with a status of 401"


class BrowserThread:
    """One headless Chromium, driven from a single worker thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None
        self.run_blocking(self._start)

    def _start(self) -> None:
        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )

    @property
    def browser(self) -> Browser:
        assert self._browser is not None
        return self._browser

    def run_blocking(self, fn: Callable[[], T]) -> T:
        return self._executor.submit(fn).result(CALL_TIMEOUT)

    async def __call__(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the browser thread while trio (and the server) keep running."""
        future = self._executor.submit(fn)
        return await trio.to_thread.run_sync(
            lambda: future.result(CALL_TIMEOUT), abandon_on_cancel=True
        )

    def close(self) -> None:
        def stop() -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        self.run_blocking(stop)
        self._executor.shutdown()


@pytest.fixture(scope="module")
def web() -> Iterator[BrowserThread]:
    thread = BrowserThread()
    yield thread
    thread.close()


@asynccontextmanager
async def open_page(
    web: BrowserThread,
    url: str,
    *,
    viewport: dict[str, int] = DESKTOP,
    before: Callable[[Page], None] | None = None,
    expected_errors: tuple[str, ...] = (),
) -> AsyncIterator[Page]:
    """A page in a fresh context (its own sessionStorage) that logs no unexpected errors.

    Playwright reports events only while its thread is inside a call, so the
    checks use ``expect`` (which polls) rather than lists filled by handlers.
    """
    errors: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" and not any(e in message.text for e in expected_errors):
            errors.append(f"console: {message.text}")

    def start() -> tuple[Any, Page]:
        context = web.browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
        page.on("console", console)
        if before is not None:
            before(page)
        page.goto(url)
        return context, page

    context, page = await web(start)
    try:
        yield page
    finally:
        await web(context.close)
    assert errors == []


@asynccontextmanager
async def serve(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path, **sections) as server:
        yield server


def screenshots() -> Path | None:
    """Where to write the README screenshots, if asked (PRESENCE_WEB_SCREENSHOTS=docs)."""
    target = os.environ.get("PRESENCE_WEB_SCREENSHOTS")
    return Path(target) if target else None


def row(page: Page, user_id: str, group: str = "") -> Locator:
    """The list row of ``user_id``, in ``#online-list``/``#offline-list`` or either."""
    scope = f"#{group}-list " if group else ""
    return page.locator(f'{scope}li[data-user-id="{user_id}"]')


async def identify(client: RawClient, username: str) -> None:
    await client.request({"type": "identify", "username": username}, "identified")


async def set_status(client: RawClient, status: str, message: str | None = None) -> None:
    request: dict[str, Any] = {"type": "set_status", "status": status}
    if message is not None:
        request["statusMessage"] = message
    await client.request(request, "status_updated")


async def push_for(client: RawClient, user_id: str, status: str) -> dict[str, Any]:
    """The next push saying ``user_id`` is now ``status`` (others are skipped)."""
    with trio.fail_after(5):
        while True:
            message = await client.next()
            if (
                message["type"] == "user_status_change"
                and message["userId"] == user_id
                and message["status"] == status
            ):
                return message


def seed_offline(tmp_path: Path, users: list[tuple[str, str, str | None, float]]) -> None:
    """Users last seen ``(user_id, username, statusMessage, seconds ago)``, before start.

    The page words ages in minutes, hours and days; a real server only knows
    the moments it saw, so the history is written to its database first.
    """
    now = int(time.time() * 1000)
    batch = Batch()
    for user_id, username, message, ago in users:
        seen = now - int(ago * 1000)
        batch.add(PresenceRow(user_id, Status.OFFLINE, username, message, seen, seen))
        batch.add(PresenceEvent(user_id, Status.OFFLINE, seen, "logout", "seed"))
    store = Store.open(tmp_path / "presence.db")
    try:
        store.commit(batch)
    finally:
        store.db.close()


# --- the list -----------------------------------------------------------------------


async def test_list_renders_users_from_the_server(tmp_path: Path, web: BrowserThread) -> None:
    seed_offline(
        tmp_path, [("old", "Olga", None, 3 * 3600 + 60), ("older", "Ola", None, 2 * 86400)]
    )
    async with (
        serve(tmp_path) as server,
        ws_client(server, "alice", deviceType="desktop") as alice,
        ws_client(server, "bob", deviceType="mobile") as bob,
    ):
        await identify(alice, "Alice Martin")
        await set_status(bob, "busy", "<b>in a meeting</b>")
        async with ws_client(server, "carol") as carol:
            await carol.send({"type": "logout"})
        async with open_page(web, f"{server.base_url}/?userId=dave") as page:

            def check() -> None:
                expect(page.locator("#connection")).to_have_attribute("data-state", "live")
                expect(page.locator("#online-list li")).to_have_count(3)
                # Online first, then offline by lastSeen, most recent first.
                order = page.locator("li.user").evaluate_all(
                    "rows => rows.map(r => r.dataset.userId)"
                )
                assert order[3:] == ["carol", "old", "older"], order
                assert set(order[:3]) == {"alice", "bob", "dave"}
                expect(row(page, "alice").locator(".name")).to_have_text("Alice Martin")
                expect(row(page, "alice").locator(".uid")).to_have_text("@alice")
                expect(row(page, "alice").locator(".status-text")).to_have_text("Online")
                expect(row(page, "alice").locator(".device-desktop")).to_have_count(1)
                expect(row(page, "bob").locator(".status-text")).to_have_text("Busy")
                expect(row(page, "bob").locator(".device-mobile")).to_have_count(1)
                # Server text is shown as text, never parsed as HTML.
                expect(row(page, "bob").locator(".message")).to_have_text("<b>in a meeting</b>")
                expect(row(page, "bob").locator(".message b")).to_have_count(0)
                expect(row(page, "dave").locator(".you")).to_be_visible()
                expect(row(page, "dave").locator(".device-web")).to_have_count(1)
                expect(row(page, "carol", "offline").locator(".seen")).to_have_text(
                    "was online just now"
                )
                expect(row(page, "old").locator(".seen")).to_have_text("was online 3 hours ago")
                expect(row(page, "older").locator(".seen")).to_have_text("was online 2 days ago")
                expect(row(page, "older").locator(".devices svg")).to_have_count(0)
                expect(page.locator("#count")).to_have_text("3 online")

            await web(check)


async def test_a_user_coming_and_going_updates_the_list_live(
    tmp_path: Path, web: BrowserThread
) -> None:
    async with (
        serve(tmp_path, presence={"grace_period": 0.3}) as server,
        open_page(web, f"{server.base_url}/?userId=dave") as page,
    ):
        await web(lambda: expect(page.locator("#count")).to_have_text("1 online"))
        # A marker that a reload would wipe out.
        await web(lambda: page.evaluate("window.__sameDocument = true"))
        async with ws_client(server, "erin", deviceType="mobile") as erin:
            await web(lambda: expect(row(page, "erin", "online")).to_be_visible(timeout=1000))
            await web(lambda: expect(row(page, "erin").locator(".device-mobile")).to_be_visible())
            await web(lambda: expect(page.locator("#count")).to_have_text("2 online"))
            await erin.send({"type": "logout"})

            def gone() -> None:
                expect(row(page, "erin", "offline")).to_be_visible(timeout=1000)
                expect(row(page, "erin").locator(".seen")).to_have_text("was online just now")
                expect(row(page, "erin").locator(".status-text")).to_have_text("Offline")
                expect(page.locator("#count")).to_have_text("1 online")

            await web(gone)
        # A dropped connection (no logout) goes offline after the grace period.
        async with ws_client(server, "frank"):
            await web(lambda: expect(row(page, "frank", "online")).to_be_visible(timeout=1000))
        await web(lambda: expect(row(page, "frank", "offline")).to_be_visible(timeout=2000))
        order = await web(
            lambda: page.locator("#offline-list li").evaluate_all(
                "rows => rows.map(r => r.dataset.userId)"
            )
        )
        assert order == ["frank", "erin"]
        assert await web(lambda: page.evaluate("window.__sameDocument")) is True


async def test_was_online_is_reworded_in_place_as_time_passes(
    tmp_path: Path, web: BrowserThread
) -> None:
    async with serve(tmp_path) as server:
        async with ws_client(server, "gina") as gina:
            await gina.send({"type": "logout"})
        # A controllable clock in the page; it still flows until fast-forwarded.
        async with open_page(
            web, f"{server.base_url}/?userId=dave", before=lambda page: page.clock.install()
        ) as page:
            seen = row(page, "gina").locator(".seen")
            await web(lambda: expect(seen).to_have_text("was online just now"))
            await web(lambda: page.clock.fast_forward("05:00"))
            await web(lambda: expect(seen).to_have_text("was online 5 minutes ago"))


async def test_search_filters_by_name_and_id(tmp_path: Path, web: BrowserThread) -> None:
    async with (
        serve(tmp_path) as server,
        ws_client(server, "alice") as alice,
        ws_client(server, "bob"),
        ws_client(server, "carol") as carol,
        open_page(web, f"{server.base_url}/?userId=dave") as page,
    ):
        await identify(alice, "Zed Alpha")
        await identify(carol, "Caroline")

        def search() -> None:
            expect(page.locator("li.user:visible")).to_have_count(4)
            page.get_by_label("Search by name or id").fill("zed")
            expect(page.locator("li.user:visible")).to_have_count(1)
            expect(row(page, "alice")).to_be_visible()
            page.get_by_label("Search by name or id").fill("CAR")
            expect(page.locator("li.user:visible")).to_have_count(1)
            expect(row(page, "carol")).to_be_visible()
            page.get_by_label("Search by name or id").fill("nobody-here")
            expect(page.locator("li.user:visible")).to_have_count(0)
            expect(page.locator("#online-empty")).to_contain_text("No one here matches")
            page.get_by_label("Search by name or id").fill("")
            expect(page.locator("li.user:visible")).to_have_count(4)

        await web(search)


# --- me -----------------------------------------------------------------------------


async def test_a_status_change_from_the_page_reaches_another_client(
    tmp_path: Path, web: BrowserThread
) -> None:
    async with (
        serve(tmp_path) as server,
        ws_client(server, "bob") as bob,
        open_page(web, f"{server.base_url}/?userId=alice") as page,
    ):
        await push_for(bob, "alice", "online")

        def update() -> None:
            expect(page.locator("#me-name")).to_have_text("alice")
            page.get_by_label("Status", exact=True).select_option("busy")
            page.get_by_label("Status message").fill("Deep work until 4")
            page.get_by_label("Display name").fill("Alice <script>")
            page.get_by_role("button", name="Update status").click()
            expect(page.locator("#status-note")).to_have_text("Your status: Busy.")

        await web(update)
        push = await push_for(bob, "alice", "busy")
        assert push["statusMessage"] == "Deep work until 4"

        def mine() -> None:
            expect(row(page, "alice").locator(".status-text")).to_have_text("Busy")
            expect(row(page, "alice").locator(".message")).to_have_text("Deep work until 4")
            expect(row(page, "alice").locator(".name")).to_have_text("Alice <script>")

        await web(mine)
        view = await bob.request(
            {"type": "check_user_status", "targetUserId": "alice"}, "user_status"
        )
        assert view["username"] == "Alice <script>"

        await web(lambda: page.get_by_label("Status", exact=True).select_option("offline"))
        await web(lambda: page.get_by_role("button", name="Update status").click())
        await push_for(bob, "alice", "offline")
        await web(lambda: page.get_by_role("button", name="Sign out").click())
        await web(lambda: expect(page.locator("#signin")).to_be_visible())


async def test_activity_on_the_page_brings_me_back_from_away(
    tmp_path: Path, web: BrowserThread
) -> None:
    async with (
        serve(tmp_path, presence={"away_after": 1.0}) as server,
        ws_client(server, "bob") as bob,
        open_page(web, f"{server.base_url}/?userId=alice") as page,
    ):
        await push_for(bob, "alice", "online")
        await push_for(bob, "alice", "away")  # nobody touched the page for a second
        await web(lambda: expect(row(page, "alice").locator(".status-text")).to_have_text("Away"))
        await web(lambda: page.mouse.move(200, 200))
        await push_for(bob, "alice", "online")
        await web(lambda: expect(row(page, "alice").locator(".status-text")).to_have_text("Online"))


async def test_a_reconnect_keeps_the_device_and_hides_the_gap(
    tmp_path: Path, web: BrowserThread
) -> None:
    sockets: list[str] = []

    def watch(page: Page) -> None:
        page.on("websocket", lambda ws: sockets.append(ws.url))

    async def keep_alive(client: RawClient) -> None:
        while True:
            await client.send({"type": "heartbeat"})
            await trio.sleep(0.25)

    async with (
        serve(tmp_path, presence={"heartbeat_interval": 0.25, "heartbeat_timeout": 1.5}) as server,
        ws_client(server, "bob") as bob,
        trio.open_nursery() as nursery,
        open_page(web, f"{server.base_url}/?userId=alice", before=watch) as page,
    ):
        nursery.start_soon(keep_alive, bob)
        await push_for(bob, "alice", "online")
        await web(lambda: expect(page.locator("#connection")).to_have_text("Live"))
        # Heartbeats at the interval from `welcome` keep the session past its timeout.
        await trio.sleep(2.0)
        assert server.app.metrics.messages_in["heartbeat"] >= 10  # bob's and the page's
        assert server.app.metrics.connections == 2
        assert await web(lambda: len(sockets)) == 1
        # The server drops the page's connection (not bob's).
        for session in list(server.app.websockets.sessions):
            if session.handle.user_id == "alice":
                session.close(1012, "restarting")
        await web(lambda: expect(page.locator("#connection")).to_have_text("Reconnecting…"))
        await web(lambda: expect(page.locator("#connection")).to_have_text("Live"))
        assert len(sockets) == 2
        assert sockets[0] == sockets[1]  # the same userId and deviceId
        assert "deviceId=web-" in sockets[0]
        # bob saw no offline flap: the new session came within the grace period.
        with trio.move_on_after(0.5):
            while True:
                message = await bob.next()
                assert message["type"] == "heartbeat_ack", message
        nursery.cancel_scope.cancel()


# --- identity -----------------------------------------------------------------------


async def test_observers_see_the_list_without_signing_in(
    tmp_path: Path, web: BrowserThread
) -> None:
    async with (
        serve(tmp_path, web={"observer": True}) as server,
        ws_client(server, "alice"),
        open_page(web, f"{server.base_url}/") as page,
    ):

        def check() -> None:
            expect(row(page, "alice", "online")).to_be_visible()
            expect(page.locator("#guest")).to_be_visible()
            expect(page.locator("#me")).to_be_hidden()
            expect(page.locator("#signin")).to_be_hidden()
            expect(page.locator("#count")).to_have_text("1 online")

        await web(check)
        # The guest's own session shows nobody: alice is still the only one online.
        async with ws_client(server, "bob"):
            await web(lambda: expect(row(page, "bob", "online")).to_be_visible(timeout=1000))
        await web(lambda: page.get_by_role("button", name="Sign in").click())
        await web(lambda: expect(page.get_by_label("Your user id")).to_be_focused())


async def test_without_observers_the_page_asks_who_you_are(
    tmp_path: Path, web: BrowserThread
) -> None:
    async with (
        serve(tmp_path) as server,
        ws_client(server, "alice"),
        open_page(web, f"{server.base_url}/") as page,
    ):

        def sign_in() -> None:
            expect(page.locator("#signin")).to_be_visible()
            expect(page.locator("#connection")).to_have_text("Not connected")
            page.get_by_label("Your user id").fill("not valid!")
            page.get_by_label("Your user id").press("Enter")
            expect(page.locator("#signin-error")).to_contain_text("1\N{EN DASH}128 characters")
            page.get_by_label("Your user id").fill("zoe")
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url("**/?userId=zoe")
            expect(page.locator("#me-name")).to_have_text("zoe")
            expect(row(page, "alice", "online")).to_be_visible()
            expect(row(page, "zoe", "online")).to_be_visible()

        await web(sign_in)


async def test_a_token_signs_in_in_jwt_mode(tmp_path: Path, web: BrowserThread) -> None:
    token = jwt.encode({"sub": "tina", "exp": int(time.time()) + 600}, JWT_SECRET)
    auth = {"mode": "jwt", "jwt_secret": JWT_SECRET}
    async with (
        serve(tmp_path, auth=auth) as server,
        open_page(web, f"{server.base_url}/?token={token}") as page,
    ):
        await web(lambda: expect(page.locator("#me-name")).to_have_text("tina"))
        await web(lambda: expect(row(page, "tina", "online")).to_be_visible())
    async with (
        serve(tmp_path, auth=auth) as server,
        open_page(web, f"{server.base_url}/?userId=tina", expected_errors=(ASKED_MODE,)) as page,
    ):

        def asks_for_a_token() -> None:
            expect(page.locator("#signin-message")).to_contain_text("a token is required")
            expect(page.get_by_label("Your sign-in token")).to_be_visible()
            expect(page.locator("#signin-token-help")).to_contain_text("?token=")
            expect(page.get_by_label("Your user id")).to_be_hidden()

        await web(asks_for_a_token)


@pytest.mark.parametrize("observers", [False, True])
async def test_without_identity_a_jwt_server_page_asks_for_a_token_not_a_user_id(
    tmp_path: Path, web: BrowserThread, observers: bool
) -> None:
    """Issue 14, item 6. Before: a user-id form that reloaded with ?userId=, which a jwt
    server can only refuse."""
    token = jwt.encode({"sub": "tina", "exp": int(time.time()) + 600}, JWT_SECRET)
    auth = {"mode": "jwt", "jwt_secret": JWT_SECRET}
    async with (
        serve(tmp_path, auth=auth, web={"observer": observers}) as server,
        open_page(web, f"{server.base_url}/", expected_errors=(ASKED_MODE,)) as page,
    ):

        def sign_in() -> None:
            if observers:
                expect(page.locator("#guest")).to_be_visible()
                page.locator("#guest-signin").click()
                expect(page.get_by_label("Your sign-in token")).to_be_focused()
            expect(page.locator("#signin")).to_be_visible()
            expect(page.get_by_label("Your user id")).to_be_hidden()
            expect(page.locator("#signin-token-help")).to_contain_text("?token=")
            field = page.get_by_label("Your sign-in token")
            field.fill("tina")
            field.press("Enter")
            expect(page.locator("#signin-error")).to_contain_text("three parts")
            field.fill(token)
            page.locator("#signin button[type=submit]").click()
            page.wait_for_url("**/?token=*")
            expect(page.locator("#me-name")).to_have_text("tina")
            expect(row(page, "tina", "online")).to_be_visible()

        await web(sign_in)


# Records every moment the badge and the rows under Online disagree, from the
# first render on (MutationObserver callbacks run once a task's changes are done).
BADGE_CHECK = """
document.addEventListener("DOMContentLoaded", () => {
  window.__mismatches = [];
  const check = () => {
    const rows = document.querySelectorAll("#online-list li").length;
    const text = document.getElementById("count").textContent;
    if (text === "" && rows === 0) return;
    if (text !== `${rows} online`) window.__mismatches.push(`${rows} rows, badge "${text}"`);
  };
  new MutationObserver(check).observe(document.getElementById("people"), {
    subtree: true, childList: true, characterData: true,
  });
});
"""


async def test_the_online_badge_never_disagrees_with_the_list(
    tmp_path: Path, web: BrowserThread
) -> None:
    """Issue 14, item 6. Before: the badge was asked of the server 250 ms after each
    push, so it read "1 online" over two users under Online for a while."""
    async with (
        serve(tmp_path, presence={"grace_period": 0.2}) as server,
        open_page(
            web,
            f"{server.base_url}/?userId=dave",
            before=lambda page: page.add_init_script(BADGE_CHECK),
        ) as page,
    ):
        await web(lambda: expect(page.locator("#count")).to_have_text("1 online"))
        async with ws_client(server, "erin") as erin, ws_client(server, "frank"):
            await web(lambda: expect(page.locator("#count")).to_have_text("3 online"))
            await set_status(erin, "offline")  # appear offline: one row moves down
            await web(lambda: expect(row(page, "erin", "offline")).to_be_visible())
            await web(lambda: expect(page.locator("#count")).to_have_text("2 online"))
            await set_status(erin, "busy")
            await web(lambda: expect(row(page, "erin", "online")).to_be_visible())
        await web(lambda: expect(page.locator("#count")).to_have_text("1 online", timeout=3000))
        await trio.sleep(0.5)  # what was still to come of the last change has come
        assert await web(lambda: page.evaluate("window.__mismatches")) == []


# --- operator view --------------------------------------------------------------------


async def test_ops_shows_counts_rate_and_transitions(tmp_path: Path, web: BrowserThread) -> None:
    async with (
        serve(tmp_path, auth={"admin_token": ADMIN_TOKEN}) as server,
        ws_client(server, "alice") as alice,
        ws_client(server, "bob"),
    ):
        async with ws_client(server, "carol") as carol:
            await carol.send({"type": "logout"})
        async with open_page(
            web, f"{server.base_url}/ops?every=1", expected_errors=("status of 401",)
        ) as page:

            def public_counts() -> None:
                # Without the admin token: only what anyone may know.
                expect(page.locator("#stat-online")).to_have_text("2")
                expect(page.locator("#stat-connections")).to_have_text("\N{EN DASH}")
                expect(page.locator("#stat-known")).to_have_text("\N{EN DASH}")
                expect(page.locator("#chart-legend")).to_contain_text("admin token")
                expect(page.locator("#poll-text")).to_have_text("Live")
                expect(page.locator("#token-form")).to_be_visible()
                expect(page.locator("#events-message")).to_contain_text("admin token")
                page.get_by_label("Admin token", exact=True).fill(ADMIN_TOKEN)
                page.get_by_role("button", name="Use token").click()
                expect(page.locator("#token-form")).to_be_hidden()
                expect(page.locator("#stat-connections")).to_have_text("2")
                expect(page.locator("#stat-known")).to_have_text("3")

            await web(public_counts)
            await set_status(alice, "busy")
            await set_status(alice, "online")

            def rate_and_events() -> None:
                expect(page.locator("#chart polyline")).to_have_count(1)
                expect(page.locator("#stat-pushes")).not_to_have_text(
                    "\N{EN DASH}"
                )  # "no rate yet"
                body = page.locator("#events-body")
                expect(body.locator("tr", has_text="carol")).to_have_count(2)  # on, then off
                expect(body.locator("tr", has_text="busy")).to_have_count(1)
                expect(body.locator("tr").first).to_contain_text("alice")

            await web(rate_and_events)
            target = screenshots()
            if target is not None:

                async def snapshot() -> None:
                    path = target / "screenshot-ops.png"
                    await web(lambda: page.screenshot(path=path, full_page=True))

                await make_traffic(server, snapshot)


async def make_traffic(server: RunningServer, snapshot: Callable[[], Awaitable[None]]) -> None:
    """Ten seconds of status changes at a varying rate, then ``snapshot`` (for the chart)."""
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(ws_client(server, f"load{n}")) for n in range(6)]
        for second, busy in enumerate([1, 3, 6, 4, 2, 5, 6, 3, 1, 2]):
            status = "busy" if second % 2 else "online"
            for client in clients[:busy]:
                await set_status(client, status)
            await trio.sleep(1)
        await snapshot()


# --- showcase: every status and device, both widths -------------------------------------


async def test_showcase_at_desktop_and_phone_widths(tmp_path: Path, web: BrowserThread) -> None:
    seed_offline(
        tmp_path,
        [
            ("dara", "Dara O'Neil", None, 12 * 60 + 5),
            ("eli", "Eli Navarro", "Back on Monday", 3 * 3600 + 120),
            ("fatima", "Fatima Zahra", None, 2 * 86400 + 600),
        ],
    )
    async with (
        serve(tmp_path) as server,
        ws_client(server, "alice", deviceType="desktop") as alice,
        ws_client(server, "alice", deviceType="mobile"),
        ws_client(server, "bob", deviceType="desktop") as bob,
        ws_client(server, "chen", deviceType="mobile") as chen,
        ws_client(server, "sam", deviceType="other") as sam,
    ):
        await identify(alice, "Alice Martin")
        await identify(bob, "Bob Kowalski")
        await set_status(bob, "busy", "In a meeting until 3 pm")
        await identify(chen, "Chen Wei")
        await set_status(chen, "away", "Lunch, back at 2")
        await identify(sam, "Build bot")
        async with open_page(web, f"{server.base_url}/?userId=maya") as page:

            def setup() -> None:
                page.get_by_label("Display name").fill("Maya Lin")
                page.get_by_label("Status message").fill("Reviewing the release notes")
                page.get_by_role("button", name="Update status").click()
                expect(row(page, "maya").locator(".name")).to_have_text("Maya Lin")
                expect(row(page, "alice").locator(".device")).to_have_count(2)
                expect(row(page, "chen").locator(".status-text")).to_have_text("Away")
                expect(row(page, "chen").locator(".message")).to_have_text("Lunch, back at 2")
                expect(row(page, "sam").locator(".device-other")).to_have_count(1)
                expect(row(page, "dara").locator(".seen")).to_have_text("was online 12 minutes ago")
                page.get_by_label("Status message").blur()
                page.mouse.move(0, 0)

            await web(setup)
            target = screenshots() or tmp_path
            await web(lambda: page.screenshot(path=target / "screenshot.png", full_page=True))

            def narrow() -> int:
                page.set_viewport_size({"width": 360, "height": 800})
                expect(row(page, "dara")).to_be_visible()
                page.screenshot(path=target / "screenshot-narrow.png", full_page=True)
                # Nothing sticks out sideways at 360 px.
                width: int = page.evaluate("document.documentElement.scrollWidth")
                return width

            assert await web(narrow) <= 360

            def keyboard() -> list[str]:
                # Tab order follows the page: skip link, my status form, then search.
                page.reload()
                expect(page.locator("#me")).to_be_visible()
                order = []
                for _ in range(8):
                    page.keyboard.press("Tab")
                    order.append(
                        page.evaluate("(e => e.id || e.textContent)(document.activeElement)")
                    )
                return order

            assert await web(keyboard) == [
                "Skip to the list",
                "status-select",
                "status-message",
                "display-name",
                "status-save",
                "signout",
                "search",
                "Operator view",
            ]
