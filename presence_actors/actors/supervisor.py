"""One-for-one supervision of user actors.

A crashing actor is logged with its traceback and run again from the last
state it committed; the other actors never notice. An actor that keeps
crashing escalates instead of looping: :class:`RestartIntensityExceeded`
propagates out of the registry's nursery and the engine stops, loudly.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio
from attrs import frozen

log = logging.getLogger("presence_actors.supervisor")


class Restartable(Protocol):
    @property
    def name(self) -> str: ...

    async def run(self) -> None: ...


@frozen
class RestartPolicy:
    max_restarts: int = 5
    window: float = 10.0


class RestartIntensityExceeded(Exception):
    """An actor crashed more than the policy allows; the supervisor gives up."""


async def supervise(
    actor: Restartable,
    policy: RestartPolicy,
    on_restart: Callable[[str], None] | None = None,
) -> None:
    """Run ``actor.run()`` until it returns, restarting it after each crash.

    Cancellation is never caught: it ends the actor like any other task.
    Raises RestartIntensityExceeded once more than ``policy.max_restarts``
    crashes fall within ``policy.window`` seconds.
    """
    crashes: deque[float] = deque()
    while True:
        try:
            await actor.run()
            return
        except Exception as exc:
            now = trio.current_time()
            crashes.append(now)
            while crashes[0] <= now - policy.window:
                crashes.popleft()
            if len(crashes) > policy.max_restarts:
                log.critical(
                    "actor %s crashed %d times within %ss; escalating",
                    actor.name,
                    len(crashes),
                    policy.window,
                    exc_info=exc,
                )
                raise RestartIntensityExceeded(
                    f"actor {actor.name} crashed {len(crashes)} times within {policy.window}s"
                ) from exc
            log.error("actor %s crashed; restarting from its last state", actor.name, exc_info=exc)
            if on_restart is not None:
                on_restart(actor.name)
