"""The presence engine: user actors, the registry and their supervision.

No I/O here but channels and the clock; transports live in ``gateway``.
"""

from .clock import WallClock
from .engine import Engine, Seams, open_engine
from .messages import (
    EngineStats,
    ListQuery,
    LookupQuery,
    PolicyQuery,
    StatsQuery,
    UserPage,
    ViewsQuery,
)
from .session import ANONYMOUS, MemoryOutbox, Outbox, SessionHandle, Watches

__all__ = [
    "ANONYMOUS",
    "Engine",
    "EngineStats",
    "ListQuery",
    "LookupQuery",
    "MemoryOutbox",
    "Outbox",
    "PolicyQuery",
    "Seams",
    "SessionHandle",
    "StatsQuery",
    "UserPage",
    "ViewsQuery",
    "WallClock",
    "Watches",
    "open_engine",
]
