"""Who is calling: the user of a WebSocket session, HTTP request or RPC, and admin rights.

``auth.mode = "none"`` (the embedded default): a WebSocket names its user with
``userId``, HTTP reads are anonymous, an RPC acts as the user it names.
``auth.mode = "jwt"``: the user is the ``sub`` of a JWT (PyJWT) signed with
``auth.jwt_secret`` (HS*) or the key in ``auth.jwt_public_key_file`` (RS*/ES*/PS*),
only with the algorithms in ``auth.jwt_algorithms``; ``exp`` is required and
checked with ``auth.jwt_leeway``. Admin routes need ``auth.admin_token``; without
one they are open in ``none`` mode only.
"""

from __future__ import annotations

import hmac
import logging
import time
from pathlib import Path

import jwt
from attrs import frozen

from ..config import AuthSettings, ConfigError
from ..model import user_id_problem
from ..protocol import ErrorCode

log = logging.getLogger("presence_actors.auth")


class AuthError(Exception):
    """A refused caller, with the code and HTTP status it is told."""

    def __init__(self, code: ErrorCode, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _unauthorized(message: str) -> AuthError:
    return AuthError(ErrorCode.UNAUTHORIZED, message, 401)


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
        self.jwt = settings.mode == "jwt"
        self._key: str | bytes = settings.jwt_secret
        if self.jwt and settings.jwt_public_key_file:
            try:
                self._key = Path(settings.jwt_public_key_file).read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"auth.jwt_public_key_file = {settings.jwt_public_key_file!r}: {exc.strerror}"
                ) from None
        if self.jwt:
            self._check_key_fits()

    def _check_key_fits(self) -> None:
        """ConfigError unless at least one of ``auth.jwt_algorithms`` can check tokens
        with the configured key (the default HS256 with a public key file, say, would
        refuse every token)."""
        reasons = []
        for name in self.settings.jwt_algorithms:
            try:
                jwt.get_algorithm_by_name(name).prepare_key(self._key)
            except jwt.PyJWTError as exc:
                reasons.append(f"{name}: {exc}")
            else:
                return
        source = (
            f"auth.jwt_public_key_file = {self.settings.jwt_public_key_file!r}"
            if self.settings.jwt_public_key_file
            else "auth.jwt_secret"
        )
        raise ConfigError(
            f"auth.jwt_algorithms = {list(self.settings.jwt_algorithms)!r}: none can check"
            f" tokens with {source} ({'; '.join(reasons)})"
        )

    # --- callers -------------------------------------------------------------------

    def websocket(self, query: dict[str, str], headers: dict[str, str]) -> Identity:
        """The session's user; raises AuthError (INVALID_USER_ID / UNAUTHORIZED / FORBIDDEN)."""
        self.check_origin(headers)
        if self.jwt:
            claimed = query.get("userId") or None  # optional: the token names the user
            identity = self._verify(query.get("token") or bearer(headers))
            if claimed is not None and claimed != identity.user_id:
                raise _unauthorized("userId does not match the token's subject")
            return identity
        return Identity(_user_id(query.get("userId"), "userId"))

    def http(self, headers: dict[str, str], query: dict[str, str]) -> Identity:
        """The caller of an /api read: the token's user in ``jwt`` mode, else anonymous."""
        if self.jwt:
            return self._verify(bearer(headers) or query.get("token"))
        return Identity(None)

    def acting_user(self, headers: dict[str, str], claimed: str, name: str = "user_id") -> Identity:
        """The user an RPC acts as (gRPC ``user_id`` fields, ``authorization`` metadata).

        ``none`` mode trusts ``claimed``; ``jwt`` mode takes the token's subject,
        and a non-empty ``claimed`` must equal it. Raises AuthError; ``name`` is the
        field ``claimed`` came from, for its messages.
        """
        if self.jwt:
            identity = self._verify(bearer(headers))
            if claimed and claimed != identity.user_id:
                raise _unauthorized(f"{name} does not match the token's subject")
            return identity
        return Identity(_user_id(claimed or None, name))

    def admin(self, headers: dict[str, str]) -> None:
        """Raises AuthError unless the caller may use /api/admin routes."""
        expected = self.settings.admin_token
        if not expected:
            if self.jwt:
                raise AuthError(
                    ErrorCode.FORBIDDEN, "admin routes are closed: no auth.admin_token is set", 403
                )
            return
        given = bearer(headers)
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise _unauthorized("admin routes need the admin token")

    def admits_admin(self, headers: dict[str, str]) -> bool:
        """Whether :meth:`admin` would let this caller in."""
        try:
            self.admin(headers)
        except AuthError:
            return False
        return True

    # --- tokens --------------------------------------------------------------------

    def _verify(self, token: str | None) -> Identity:
        if not token:
            raise _unauthorized("a token is required (token parameter or Authorization: Bearer)")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=list(self.settings.jwt_algorithms),
                leeway=self.settings.jwt_leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("the token is not valid yet") from None
        except jwt.InvalidAlgorithmError:
            raise _unauthorized("the token's algorithm is not accepted") from None
        except jwt.PyJWTError as exc:
            # Every refusal PyJWT has, not only InvalidTokenError: an HS256 token
            # checked against an RSA public key raises InvalidKeyError, which is
            # the caller's fault as much as a bad signature is.
            raise _unauthorized(f"invalid token: {exc}") from None
        subject = claims["sub"]
        problem = user_id_problem(subject, "the token's subject (sub)")
        if problem is not None:
            raise _unauthorized(problem)
        return Identity(subject, float(claims["exp"]))

    def check_origin(self, headers: dict[str, str]) -> None:
        # Browsers always send Origin; other clients have no page to be hijacked from.
        allowed = self.settings.allowed_origins
        origin = headers.get("origin")
        if allowed and origin is not None and origin not in allowed:
            raise AuthError(ErrorCode.FORBIDDEN, f"origin {origin!r} is not allowed", 403)


def _user_id(value: str | None, name: str) -> str:
    """``value`` if it is a valid user id, else AuthError INVALID_USER_ID saying why."""
    problem = user_id_problem(value, name)
    if problem is not None:
        raise AuthError(ErrorCode.INVALID_USER_ID, problem, 400)
    assert value is not None
    return value


def mint_token(settings: AuthSettings, user_id: str, ttl: float) -> str:
    """A development token for ``user_id`` signed with ``auth.jwt_secret`` (HS256)."""
    if not settings.jwt_secret:
        raise ConfigError("auth.jwt_secret is empty: set it to mint tokens (HS256)")
    problem = user_id_problem(user_id, "user id")
    if problem is not None:
        raise ValueError(problem)
    now = int(time.time())
    algorithm = next((a for a in settings.jwt_algorithms if a.startswith("HS")), "HS256")
    claims = {"sub": user_id, "iat": now, "exp": now + int(ttl)}
    return jwt.encode(claims, settings.jwt_secret, algorithm=algorithm)
