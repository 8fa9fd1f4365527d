"""What an RPC may send, checked before connectrpc's parsers see it.

protobuf-py's JSON reader recurses natively: ~15,000 nested arrays (30 KB) in a
Connect or gRPC-Web JSON body overflow the C stack and kill the process. Every
JSON message is therefore measured first (:mod:`.json_depth`, a byte scan, no
parse) and refused past :data:`MAX_JSON_DEPTH` levels; protobuf-py was measured
to survive 2,000 levels in every message of this service. Binary messages need
no gate: protobuf-py stops unknown groups at 100 levels.

Every refusal is a ConnectError whose message starts with the protocol's error
code, like the service's own (``INVALID_JSON: ...``, ``TOO_LARGE: ...``): the
body's size and pace (:func:`.asgi.bounded_receive`), the decompressed size,
the depth, and messages that do not parse.
"""

from __future__ import annotations

from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.codec import Codec, proto_binary_codec, proto_json_codec
from connectrpc.compression import Compression
from connectrpc.compression.gzip import GzipCompression
from connectrpc.errors import ConnectError

from ..protocol import ErrorCode
from .asgi import BodyRefused, Message, Receive
from .json_depth import nests_deeper_than

T = TypeVar("T")

# The service's messages nest two levels (an object holding a list); this leaves room
# for fields a newer client may send, far below what protobuf-py survives (2,000),
# and bounds the depth check's passes.
MAX_JSON_DEPTH = 64
# The gRPC status of each refusal of a body (the protocol's table in grpc_api).
_BODY_CODES = {413: Code.RESOURCE_EXHAUSTED, 408: Code.DEADLINE_EXCEEDED}


class GuardedJsonCodec:
    """protobuf JSON, parsed only when it nests at most :data:`MAX_JSON_DEPTH` levels."""

    def __init__(self) -> None:
        self._inner: Codec[Any, Any] = proto_json_codec()

    def name(self) -> str:
        return self._inner.name()

    def encode(self, message: Any) -> bytes:
        return self._inner.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[T]) -> T:
        if nests_deeper_than(data, MAX_JSON_DEPTH):
            raise _invalid(
                ErrorCode.INVALID_JSON, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            )
        try:
            return self._inner.decode(data, message_class)  # type: ignore[no-any-return]
        except ConnectError:
            raise
        except Exception as exc:
            raise _invalid(ErrorCode.INVALID_JSON, _unfit(message_class, exc)) from None


class GuardedBinaryCodec:
    """protobuf binary, with parse errors told as INVALID_MESSAGE."""

    def __init__(self) -> None:
        self._inner: Codec[Any, Any] = proto_binary_codec()

    def name(self) -> str:
        return self._inner.name()

    def encode(self, message: Any) -> bytes:
        return self._inner.encode(message)

    def decode(self, data: bytes | bytearray, message_class: type[T]) -> T:
        try:
            return self._inner.decode(data, message_class)  # type: ignore[no-any-return]
        except ConnectError:
            raise
        except Exception as exc:
            raise _invalid(ErrorCode.INVALID_MESSAGE, _unfit(message_class, exc)) from None


class GuardedGzip:
    """gzip whose refusal of a message that inflates past the limit says TOO_LARGE."""

    def __init__(self) -> None:
        self._inner = GzipCompression()

    def name(self) -> str:
        return self._inner.name()

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._inner.compress(data)

    def decompress(
        self, data: bytes | bytearray | memoryview, read_max_bytes: int | None = None
    ) -> bytes:
        try:
            return self._inner.decompress(data, read_max_bytes)
        except ConnectError as exc:
            if exc.code is Code.RESOURCE_EXHAUSTED:
                raise ConnectError(
                    exc.code,
                    f"{ErrorCode.TOO_LARGE.value}: a message inflates past {read_max_bytes} bytes",
                ) from None
            raise


CODECS: list[Codec[Any, Any]] = [GuardedBinaryCodec(), GuardedJsonCodec()]
COMPRESSIONS: list[Compression] = [GuardedGzip()]


def rpc_receive(receive: Receive) -> Receive:
    """``receive`` whose refusals of the body (size, pace) are gRPC statuses."""

    async def receive_for_rpc() -> Message:
        try:
            return await receive()
        except BodyRefused as exc:
            raise ConnectError(
                _BODY_CODES[exc.status], f"{exc.code.value}: {exc.message}"
            ) from None

    return receive_for_rpc


def _invalid(code: ErrorCode, message: str) -> ConnectError:
    return ConnectError(Code.INVALID_ARGUMENT, f"{code.value}: {message}")


def _unfit(message_class: type, exc: Exception) -> str:
    return f"not a {message_class.__name__}: {str(exc)[:200]}"
