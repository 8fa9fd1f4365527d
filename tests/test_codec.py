"""The codec's fast paths equal its generic encoding."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from presence_actors import codec
from presence_actors import protocol as p
from presence_actors.model import DeviceType, DeviceView, Status, UserView

ids = st.from_regex(r"[a-z0-9_.:@-]{1,12}", fullmatch=True)
views = st.builds(
    UserView,
    user_id=ids,
    status=st.sampled_from(list(Status)),
    username=st.none() | st.text(max_size=20),
    status_message=st.none() | st.text(max_size=40),
    last_seen=st.none() | st.integers(0, 2**42),
    devices=st.lists(
        st.builds(
            DeviceView, ids, st.sampled_from(list(DeviceType)), st.sampled_from(list(Status))
        ),
        max_size=3,
    ).map(tuple),
)


@given(users=st.lists(views, max_size=5), request_id=st.none() | st.text(max_size=10))
def test_user_lists_encode_like_the_generic_path(
    users: list[UserView], request_id: str | None
) -> None:
    stamp = 1_800_000_000_123
    for message in (
        p.Presence(timestamp=stamp, request_id=request_id, users=tuple(users)),
        p.PresenceState(timestamp=stamp, request_id=request_id, users=tuple(users)),
        p.AllUsers(timestamp=stamp, request_id=request_id, users=tuple(users), next_cursor="c"),
    ):
        assert orjson.loads(codec.encode_bytes(message)) == codec.to_wire(message)
        assert codec.encode(message) == codec.encode_bytes(message).decode()


@given(
    stamp=st.integers(0, 2**42),
    request_id=st.none() | st.text(max_size=10),
    interval=st.integers(1, 3600) | st.floats(0.5, 3600),
)
def test_a_heartbeat_ack_encodes_like_the_generic_path(
    stamp: int, request_id: str | None, interval: float
) -> None:
    ack = p.HeartbeatAck(timestamp=stamp, request_id=request_id, next_heartbeat_in_seconds=interval)
    assert orjson.loads(codec.encode_bytes(ack)) == codec.to_wire(ack)


@given(
    stamp=st.integers(0, 2**42),
    request_id=st.none() | st.text(max_size=10),
    status=st.sampled_from(Status),
    effective=st.sampled_from(Status),
    message=st.none() | st.text(max_size=20),
)
def test_a_status_updated_reply_encodes_like_the_generic_path(
    stamp: int, request_id: str | None, status: Status, effective: Status, message: str | None
) -> None:
    reply = p.StatusUpdated(
        timestamp=stamp,
        request_id=request_id,
        status=status,
        effective_status=effective,
        status_message=message,
    )
    assert orjson.loads(codec.encode_bytes(reply)) == codec.to_wire(reply)


@given(view=views, stamp=st.integers(0, 2**42))
def test_a_push_frame_is_the_encoded_status_change(view: UserView, stamp: int) -> None:
    push = codec.make_push(view, stamp)
    expected = codec.to_wire(p.UserStatusChange(timestamp=stamp, view=view))
    assert orjson.loads(push.payload) == expected
    assert push.frame == push.payload.decode()


def _retained_per_object(make: object) -> float:
    """Bytes of memory held per object kept by ``make`` (a callable of an index)."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make(index) for index in range(5_000)]  # type: ignore[operator]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(kept) == 5_000
    return (after - before) / 5_000


def test_cached_view_encodings_cost_their_size_not_a_buffer() -> None:
    # The soak run grew 8 MB a minute: every cached view held a 4 KiB orjson
    # buffer for ~100 bytes of JSON, and the cache kept one per view object.
    codec._fragments.clear()

    def encode(index: int) -> bytes:
        return codec.view_fragment(UserView(f"u{index}", Status.ONLINE, last_seen=1))

    assert _retained_per_object(encode) < 1_000
    # One entry per user: a user's newer view replaces the older one.
    for last_seen in range(50):
        codec.view_fragment(UserView("u0", Status.AWAY, last_seen=last_seen))
    assert len(codec._fragments) == 5_000
    codec._fragments.clear()


def test_pushes_and_replies_cost_their_size_while_they_wait_in_outboxes() -> None:
    view = UserView("alice", Status.BUSY, last_seen=1)
    assert _retained_per_object(lambda i: codec.make_push(view, i)) < 1_500

    def ack(index: int) -> bytes:
        return codec.encode_bytes(p.HeartbeatAck(timestamp=index, next_heartbeat_in_seconds=30))

    assert _retained_per_object(ack) < 600


def test_a_bulk_answer_never_taken_is_freed_with_its_message() -> None:
    # The soak's slow readers were closed before taking the big answers they asked
    # for; the bytes prepared for those answers stayed until the 32 MiB bound.
    import tracemalloc

    views = [UserView(f"user-{index}", Status.ONLINE, last_seen=index) for index in range(200)]
    pieces = [codec.view_fragment(view) for view in views]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for request in range(50):
            answer = p.AllUsers(
                timestamp=1, request_id=str(request), users=tuple(views), next_cursor=None
            )
            codec.prepare_bulk(answer, pieces)
            del answer  # the closed connection's outbox is dropped, and its answer with it
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 50_000, f"{retained:,} bytes kept for 50 answers nobody will send"
    # One that is sent is still taken as prepared.
    answer = p.AllUsers(timestamp=1, request_id="kept", users=tuple(views), next_cursor=None)
    codec.prepare_bulk(answer, pieces)
    assert orjson.loads(codec.encode_bytes(answer))["requestId"] == "kept"


@given(
    extra=st.dictionaries(
        st.sampled_from(["requestId", "active", "userId", "pad"]),
        st.none() | st.booleans() | st.integers() | st.text(max_size=70),
        max_size=2,
    )
)
def test_a_plain_heartbeat_is_structured_like_the_generic_path(extra: dict[str, object]) -> None:
    """The heartbeat shortcut (``type`` and a short string ``requestId`` only) gives what
    the converter gives, and every other shape, refusals included, is the converter's."""
    raw = {"type": "heartbeat", **extra}
    try:
        generic: object = codec.structure(raw, p.Heartbeat, "heartbeat")
    except p.ProtocolError as exc:
        generic = (exc.code, exc.message)
    try:
        fast: object = codec.structure_client_message(raw)
    except p.ProtocolError as exc:
        fast = (exc.code, exc.message)
    assert fast == generic
    assert codec.structure_client_message({"type": "heartbeat"}) is codec.BARE_HEARTBEAT
    assert orjson.loads(codec.BARE_HEARTBEAT_JSON) == {"type": "heartbeat"}
