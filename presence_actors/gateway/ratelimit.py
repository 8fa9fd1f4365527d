"""Per-session rate limiting: a token bucket, and a verdict on sustained abuse."""

from __future__ import annotations

import enum
import math

# A refusal more than this long after the previous one starts a new episode.
_EPISODE_GAP = 1.0


class Verdict(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"  # answer RATE_LIMITED and drop the message
    CLOSE = "close"  # over the rate for the whole abuse window: close (1008)


class RateLimiter:
    """``rate`` messages per second on average, bursts of up to ``burst``.

    A session refused again and again, with no pause of a second or more
    between refusals, for ``abuse_window`` seconds is judged abusive.
    Time is passed in (trio time), so the limiter is tested without a clock.
    """

    __slots__ = (
        "_abusive_since",
        "_burst",
        "_last_refusal",
        "_rate",
        "_tokens",
        "_updated",
        "_window",
    )

    def __init__(self, rate: float, burst: int, abuse_window: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._window = abuse_window
        self._tokens = float(burst)
        self._updated = -math.inf
        self._abusive_since: float | None = None
        self._last_refusal = -math.inf

    def admit(self, now: float) -> Verdict:
        elapsed = now - self._updated
        self._updated = now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return Verdict.ADMIT
        if self._abusive_since is None or now - self._last_refusal > _EPISODE_GAP:
            self._abusive_since = now
        self._last_refusal = now
        if now - self._abusive_since >= self._window:
            return Verdict.CLOSE
        return Verdict.REFUSE
