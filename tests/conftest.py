"""Shared fixtures."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import pytest
import trio
import trio.testing
from grpc_tools import protoc

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def autojump_clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> trio.testing.MockClock:
    """pytest-trio's ``autojump_clock``, held still while a worker thread runs.

    Autojump treats a task waiting for a thread as blocked and would jump to the
    next deadline (a retry backoff, a test's fail_after) in the middle of a real
    commit. With autojump paused during threads, virtual time only passes where
    the code waits on purpose, which keeps these tests deterministic.
    """
    run_sync = trio.to_thread.run_sync
    in_threads = 0

    async def run_sync_holding_clock(fn: Callable[..., T], *args: object) -> T:
        nonlocal in_threads
        in_threads += 1
        autojump_clock.autojump_threshold = math.inf
        try:
            return await run_sync(fn, *args)
        finally:
            in_threads -= 1
            if not in_threads:
                autojump_clock.autojump_threshold = 0

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync_holding_clock)
    return autojump_clock


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """grpcio's messages (``pb``) and stub (``rpc``), generated from proto/ for this session."""
    out = tmp_path_factory.mktemp("grpc_stubs")
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "presence/v1/presence.proto",
    ]
    assert protoc.main(args) == 0
    sys.path.insert(0, str(out))
    try:
        pb = importlib.import_module("presence.v1.presence_pb2")
        rpc = importlib.import_module("presence.v1.presence_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return SimpleNamespace(pb=pb, rpc=rpc)
