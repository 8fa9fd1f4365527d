"""A real server on an ephemeral loopback port, and raw WebSocket clients for it."""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import WebSocketConnection, open_websocket_url

from presence_actors.gateway.server import RunningServer, open_server

from .engine_harness import make_settings


@asynccontextmanager
async def running_server(
    tmp_path: Path, **sections: Mapping[str, Any]
) -> AsyncIterator[RunningServer]:
    """A server on 127.0.0.1 with a free port, its database in ``tmp_path``."""
    sections = {**sections}
    sections["server"] = {"port": 0, **sections.get("server", {})}
    sections["logging"] = {"file": "", **sections.get("logging", {})}
    async with open_server(make_settings(tmp_path, **sections)) as server:
        yield server


class RawClient:
    """A WebSocket connection speaking JSON, with helpers to wait for message types."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []

    async def send(self, message: Mapping[str, Any]) -> None:
        await self.ws.send_message(json.dumps(message))

    async def next(self) -> dict[str, Any]:
        with trio.fail_after(5):
            return await self.next_any()

    async def next_any(self) -> dict[str, Any]:
        """The next message, however long it takes (the caller bounds the wait)."""
        message: dict[str, Any] = json.loads(await self.ws.get_message())
        self.received.append(message)
        return message

    async def expect(self, kind: str, *, skip_pushes: bool = True) -> dict[str, Any]:
        """The next message of type ``kind``; pushes in between are kept in ``pushes``."""
        while True:
            message = await self.next()
            if message["type"] == kind:
                return message
            if not (skip_pushes and message["type"] == "user_status_change"):
                raise AssertionError(f"expected {kind}, got {message}")

    async def request(self, message: Mapping[str, Any], reply: str) -> dict[str, Any]:
        await self.send(message)
        return await self.expect(reply)


def ws_url(server: RunningServer, **params: str) -> str:
    return server.base_url.replace("http://", "ws://", 1) + "/ws?" + urlencode(params)


@asynccontextmanager
async def ws_client(
    server: RunningServer, user_id: str | None, welcome: bool = True, **params: str
) -> AsyncIterator[RawClient]:
    """Connected as ``user_id`` (and ``deviceId`` etc. from ``params``), past the welcome."""
    if user_id is not None:
        params["userId"] = user_id
    async with open_websocket_url(ws_url(server, **params)) as ws:
        client = RawClient(ws)
        if welcome:
            await client.expect("welcome")
        yield client


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` and its key, as PEM files in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file
