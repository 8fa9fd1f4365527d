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


@given(view=views, stamp=st.integers(0, 2**42))
def test_a_push_frame_is_the_encoded_status_change(view: UserView, stamp: int) -> None:
    push = codec.make_push(view, stamp)
    expected = codec.to_wire(p.UserStatusChange(timestamp=stamp, view=view))
    assert orjson.loads(push.payload) == expected
    assert push.frame == push.payload.decode()
