"""Who is calling: the user of a WebSocket session or HTTP request, and admin rights.

``auth.mode = "none"``: a WebSocket names its user with ``userId``; HTTP reads
are anonymous. Admin routes need ``auth.admin_token`` when one is set, and are
open otherwise (``none`` mode only).
"""

from __future__ import annotations

import hmac
import logging

from attrs import frozen

from ..config import AuthSettings
from ..model import is_valid_user_id
from ..protocol import ErrorCode

log = logging.getLogger("presence_actors.auth")


class AuthError(Exception):
    """A refused caller, with the code and HTTP status it is told."""

    def __init__(self, code: ErrorCode, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@frozen
class Identity:
    """``user_id`` None is anonymous; ``expires_at`` is the token's exp (unix seconds)."""

    user_id: str | None
    expires_at: float | None = None


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings

    def websocket(self, query: dict[str, str], headers: dict[str, str]) -> Identity:
        """The session's user; raises AuthError (INVALID_USER_ID / UNAUTHORIZED)."""
        self._check_origin(headers)
        user_id = query.get("userId")
        if not is_valid_user_id(user_id):
            raise AuthError(
                ErrorCode.INVALID_USER_ID,
                "userId is required: 1-128 characters from A-Z a-z 0-9 _ . : @ -",
                400,
            )
        assert user_id is not None
        return Identity(user_id)

    def http(self, headers: dict[str, str], query: dict[str, str]) -> Identity:
        """The caller of an /api read: anonymous in ``none`` mode."""
        return Identity(None)

    def acting_user(self, headers: dict[str, str], claimed: str) -> Identity:
        """The user an RPC acts as (gRPC ``user_id`` fields, ``authorization`` metadata).

        ``none`` mode trusts ``claimed``; raises AuthError (INVALID_USER_ID /
        UNAUTHORIZED) when it cannot be the caller.
        """
        if not is_valid_user_id(claimed):
            raise AuthError(ErrorCode.INVALID_USER_ID, f"invalid user id {claimed!r}", 400)
        return Identity(claimed)

    def admin(self, headers: dict[str, str]) -> None:
        """Raises AuthError unless the caller may use /api/admin routes."""
        expected = self.settings.admin_token
        if not expected:
            return
        given = bearer(headers)
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise AuthError(ErrorCode.UNAUTHORIZED, "admin routes need the admin token", 401)

    def _check_origin(self, headers: dict[str, str]) -> None:
        allowed = self.settings.allowed_origins
        origin = headers.get("origin")
        if allowed and origin is not None and origin not in allowed:
            raise AuthError(ErrorCode.FORBIDDEN, f"origin {origin!r} is not allowed", 403)
