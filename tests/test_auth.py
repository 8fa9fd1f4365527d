"""Authentication (JWT), admin token and the Origin allowlist, against a real server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from trio_websocket import open_websocket_url

from presence_actors.config import AuthSettings
from presence_actors.gateway.auth import mint_token

from .process_harness import child_env
from .server_harness import RawClient, running_server, ws_client, ws_url
from .test_http_api import http
from .test_websocket import closed_with

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def token(sub: str = "alice", key: Any = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + 600, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=algorithm)


def jwt_auth(**overrides: Any) -> dict[str, Any]:
    return {"mode": "jwt", "jwt_secret": SECRET, "jwt_leeway": 1.0, **overrides}


async def refused(
    server: Any, headers: list[tuple[str, str]] | None = None, **params: str
) -> tuple[dict[str, Any], int | None]:
    """The one error a refused connection gets, and its close code."""
    async with open_websocket_url(ws_url(server, **params), extra_headers=headers) as ws:
        client = RawClient(ws)
        error = await client.next()
        return error, await closed_with(client)


def unsigned(sub: str = "alice") -> str:
    """An ``alg: none`` token."""
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, None, algorithm="none")  # type: ignore[arg-type]


async def test_a_valid_token_names_the_user(tmp_path: Path) -> None:
    async with running_server(tmp_path, auth=jwt_auth()) as server:
        async with ws_client(server, None, token=token("alice")) as alice:
            assert alice.received[0]["userId"] == "alice"
        async with ws_client(server, "alice", token=token("alice")) as again:
            assert again.received[0]["userId"] == "alice"
        # Authorization header instead of the query parameter.
        async with open_websocket_url(
            ws_url(server), extra_headers=[("Authorization", f"Bearer {token('bob')}")]
        ) as ws:
            assert (await RawClient(ws).next())["userId"] == "bob"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: None, "no token"),
        (lambda: "not.a.jwt", "garbage"),
        (lambda: unsigned(), "alg none"),
        (lambda: token(key="another-secret-another-secret-another"), "bad signature"),
        (lambda: token(exp=int(time.time()) - 60), "expired"),
        (lambda: token(nbf=int(time.time()) + 60), "not yet valid"),
        (lambda: token(exp=None), "no exp"),
        (lambda: token(sub=None), "no sub"),
        (lambda: token(sub="bad id"), "invalid sub"),
        (lambda: token(algorithm="HS512"), "algorithm not configured"),
    ],
)
async def test_bad_tokens_are_unauthorized_and_closed_with_1008(
    tmp_path: Path, make: Any, why: str
) -> None:
    async with running_server(tmp_path, auth=jwt_auth()) as server:
        value = make()
        params = {"token": value} if value else {}
        error, code = await refused(server, **params)
        assert (error["code"], code) == ("UNAUTHORIZED", 1008), why


async def test_a_user_id_other_than_the_subject_is_refused(tmp_path: Path) -> None:
    async with running_server(tmp_path, auth=jwt_auth()) as server:
        error, code = await refused(server, userId="mallory", token=token("alice"))
        assert (error["code"], code) == ("UNAUTHORIZED", 1008)


async def test_a_session_is_closed_with_4001_when_its_token_expires(tmp_path: Path) -> None:
    async with running_server(tmp_path, auth=jwt_auth(jwt_leeway=0.0)) as server:
        soon = token("alice", exp=int(time.time()) + 2)
        async with ws_client(server, None, token=soon) as alice:
            assert await closed_with(alice) == 4001


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_public_key_tokens(tmp_path: Path, kind: str) -> None:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = {"mode": "jwt", "jwt_public_key_file": str(public_file), "jwt_algorithms": [kind]}
    async with running_server(tmp_path, auth=auth) as server:
        async with ws_client(server, None, token=token("carol", private, kind)) as carol:
            assert carol.received[0]["userId"] == "carol"
        # An HS256 token signed with the public key's text must not pass (key confusion).
        forged = jwt.encode(
            {"sub": "mallory", "exp": int(time.time()) + 60},
            "not the private key",
            algorithm="HS256",
        )
        error, code = await refused(server, token=forged)
        assert (error["code"], code) == ("UNAUTHORIZED", 1008)


async def test_http_reads_need_a_token_in_jwt_mode(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, auth=jwt_auth()) as server,
        ws_client(server, None, token=token("alice")) as alice,
    ):
        await alice.request({"type": "set_privacy", "visibility": "contacts"}, "privacy_updated")
        api = server.base_url + "/api"
        status, body = await http(api + "/users")
        assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED")
        status, body = await http(api + "/users", headers={"Authorization": "Bearer junk"})
        assert status == 401
        # alice sees herself; bob is a stranger to her contacts-only presence.
        status, body = await http(
            api + "/users/alice", headers={"Authorization": f"Bearer {token('alice')}"}
        )
        assert (status, body["user"]["status"]) == (200, "online")
        status, body = await http(
            api + "/users/alice", headers={"Authorization": f"Bearer {token('bob')}"}
        )
        assert (status, body["error"]["code"]) == (404, "USER_NOT_FOUND")
        # Admin routes are closed in jwt mode when no admin token is set.
        status, body = await http(
            api + "/admin/users/alice/contacts/bob",
            "POST",
            headers={"Authorization": f"Bearer {token('alice')}"},
        )
        assert (status, body["error"]["code"]) == (403, "FORBIDDEN")


async def test_origin_allowlist(tmp_path: Path) -> None:
    auth = {"allowed_origins": ["https://chat.example"]}
    async with running_server(tmp_path, auth=auth) as server:
        error, code = await refused(server, [("Origin", "https://evil.example")], userId="alice")
        assert (error["code"], code) == ("FORBIDDEN", 1008)
        async with open_websocket_url(
            ws_url(server, userId="alice"), extra_headers=[("Origin", "https://chat.example")]
        ) as ws:
            assert (await RawClient(ws).next())["type"] == "welcome"
        async with ws_client(server, "bob"):  # no Origin: not a browser, nothing to hijack
            pass


def test_minted_tokens_verify() -> None:
    settings = AuthSettings(mode="jwt", jwt_secret=SECRET)
    value = mint_token(settings, "alice", 3600)
    claims = jwt.decode(value, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert 3590 <= claims["exp"] - time.time() <= 3600


# --- hostile tokens and weak secrets (issue 11, item 12) ----------------------------------


def hs256_signed_with(key: bytes, claims: dict[str, Any]) -> str:
    """An HS256 token whose HMAC key is ``key`` — here the server's RSA public key
    file, the classic key-confusion forgery. Made by hand: PyJWT refuses to."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(key, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


async def test_an_hs256_token_signed_with_the_public_key_is_unauthorized_everywhere(
    tmp_path: Path,
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = {
        "mode": "jwt",
        "jwt_public_key_file": str(public_file),
        "jwt_algorithms": ["RS256", "HS256"],
    }
    forged = hs256_signed_with(
        public_file.read_bytes(), {"sub": "mallory", "exp": int(time.time()) + 600}
    )
    async with running_server(tmp_path, auth=auth) as server:
        error, code = await refused(server, token=forged)
        assert (error["code"], code) == ("UNAUTHORIZED", 1008)
        bearer = {"Authorization": f"Bearer {forged}"}
        status, body = await http(server.base_url + "/api/users", headers=bearer)
        assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED")
        status, body = await http(
            server.base_url + "/presence.v1.PresenceService/GetUserStatus",
            "POST",
            {"userId": "alice"},
            {**bearer, "Content-Type": "application/json"},
        )
        assert (status, body["code"], body["message"].split(":")[0]) == (
            401,
            "unauthenticated",
            "UNAUTHORIZED",
        )
        # The server goes on: a genuine RS256 token still works.
        async with ws_client(server, None, token=token("carol", private, "RS256")) as carol:
            assert carol.received[0]["userId"] == "carol"


def refused_at_start(tmp_path: Path, **variables: str) -> str:
    """The one line ``serve`` prints on stderr when it refuses to start (it must)."""
    environment = {
        **child_env(),
        "PRESENCE_PERSISTENCE_PATH": str(tmp_path / "presence.db"),
        "PRESENCE_LOGGING_FILE": "",
        **variables,
    }
    result = subprocess.run(
        [sys.executable, "-m", "presence_actors", "serve", "--port", "0"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_short_jwt_secret_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    line = refused_at_start(tmp_path, PRESENCE_AUTH_MODE="jwt", PRESENCE_AUTH_JWT_SECRET="abc")
    assert line == (
        "presence-actors: PRESENCE_AUTH_JWT_SECRET: auth.jwt_secret is 3 bytes long:"
        " expected at least 32 bytes for HS256 (a shorter secret can be guessed offline"
        " from one token)"
    )


def test_a_public_key_no_configured_algorithm_can_use_is_refused_at_start(
    tmp_path: Path,
) -> None:
    """A public key file with the default algorithms (HS256): every token would be
    refused; today the server says so at start instead."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    line = refused_at_start(
        tmp_path, PRESENCE_AUTH_MODE="jwt", PRESENCE_AUTH_JWT_PUBLIC_KEY_FILE=str(public_file)
    )
    assert line.startswith(
        "presence-actors: auth.jwt_algorithms = ['HS256']: none can check tokens with"
        f" auth.jwt_public_key_file = {str(public_file)!r} (HS256: "
    )
