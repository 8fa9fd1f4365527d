"""In-process sessions for driving the engine without a network.

A :class:`FakeTransport` is a real transport as far as the engine can tell: a
:class:`SessionHandle` with a bounded memory outbox, recording the closes the
engine asks for. Tests read what the engine sent with ``drain``/``expect``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import trio.testing

from presence_actors.actors import Engine, MemoryOutbox, SessionHandle, WallClock, open_engine
from presence_actors.config import Settings
from presence_actors.model import DeviceType
from presence_actors.protocol import ClientMessage, Push, PushBatch, ServerMessage

M = TypeVar("M", bound=ServerMessage)

# Deterministic wall clock: trio time t is unix second EPOCH + t (MockClock starts at 0).
EPOCH = 1_800_000_000.0

_session_ids = itertools.count(1)


def make_settings(tmp_path: Path, **sections: Mapping[str, Any]) -> Settings:
    """Default settings with the database in ``tmp_path`` and per-section overrides.

    Heartbeat timeout and away detection default to very long here, so tests
    that sleep are not surprised by them; tests of those timers set them.
    """
    base = Settings()
    overrides: dict[str, Any] = {
        "persistence": {"path": str(tmp_path / "presence.db")},
        "presence": {
            "heartbeat_interval": 1800.0,
            "heartbeat_timeout": 3600.0,
            "away_after": 7200.0,
        },
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    changes = {
        name: attrs.evolve(getattr(base, name), **values) for name, values in overrides.items()
    }
    return attrs.evolve(base, **changes)


@asynccontextmanager
async def running_engine(settings: Settings) -> AsyncIterator[Engine]:
    async with open_engine(settings, clock=WallClock(EPOCH)) as engine:
        yield engine


class FakeTransport:
    def __init__(
        self,
        engine: Engine,
        user_id: str,
        device_id: str,
        device_type: DeviceType = DeviceType.WEB,
        capacity: int = 1000,
    ) -> None:
        self.engine = engine
        self.outbox = MemoryOutbox(capacity)
        self.closes: list[tuple[int, str]] = []
        self._stashed: list[ServerMessage | Push] = []
        self.handle = SessionHandle(
            session_id=f"s{next(_session_ids)}",
            user_id=user_id,
            device_id=device_id,
            device_type=device_type,
            outbox=self.outbox,
            on_close=lambda code, reason: self.closes.append((code, reason)),
        )

    @property
    def close_code(self) -> int | None:
        return self.closes[0][0] if self.closes else None

    async def send(self, message: ClientMessage) -> None:
        await self.engine.request(self.handle, message)

    async def drop(self) -> None:
        """The connection is lost (the transport detaches)."""
        await self.engine.detach(self.handle)

    def drain(self) -> list[ServerMessage | Push]:
        """Everything received and not yet consumed by ``expect``, in order."""
        items, self._stashed = self._stashed, []
        while True:
            try:
                item = self.outbox.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return items
            if isinstance(item, PushBatch):
                items.extend(item.pushes)  # one write on a socket; separate pushes here
            else:
                items.append(item)

    def pushes(self, about: str | None = None) -> list[Push]:
        """Pushes received so far (about one user only, if given); other messages are dropped."""
        return [
            item
            for item in self.drain()
            if isinstance(item, Push) and (about is None or item.view.user_id == about)
        ]

    async def expect(self, kind: type[M]) -> M:
        """The next message that is not a push, which must be a ``kind``.

        Pushes on the way are kept for ``drain``/``pushes``.
        """
        with trio.fail_after(5):
            while True:
                item = await self.outbox.receive.receive()
                if isinstance(item, PushBatch):
                    self._stashed.extend(item.pushes)
                    continue
                if not isinstance(item, Push):
                    break
                self._stashed.append(item)
        assert isinstance(item, kind), f"expected {kind.__name__}, got {item!r}"
        return item


async def connect(
    engine: Engine,
    user_id: str,
    device_id: str = "d1",
    device_type: DeviceType = DeviceType.WEB,
    capacity: int = 1000,
) -> FakeTransport:
    """Attach a session and wait until the engine has welcomed it."""
    from presence_actors.protocol import Welcome

    transport = FakeTransport(engine, user_id, device_id, device_type, capacity)
    await engine.attach(transport.handle)
    await transport.expect(Welcome)
    await settle()
    return transport


async def settle() -> None:
    """Let every engine task run until all are waiting."""
    await trio.testing.wait_all_tasks_blocked()
