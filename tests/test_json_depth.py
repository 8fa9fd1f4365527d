"""The nesting check that guards protobuf-py's JSON reader, against a reference."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from presence_actors.gateway.json_depth import nests_deeper_than

# Strings full of what could confuse a scanner: brackets, quotes, backslashes.
TEXT = st.text(alphabet=st.sampled_from('ab[]{}"\\/,:é\n '), max_size=8)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def deepest_prefix(text: str) -> int:
    """How many arrays/objects a parser has open at most reading ``text`` (valid or
    not), stopping where a parser would: an unmatched close or a backslash outside
    a string. The reference: a plain character loop."""
    level = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            if level == 0:
                break
            level -= 1
        elif char == "\\":
            break
    return deepest


@given(VALUES, st.integers(0, 8), st.booleans())
def test_valid_json_is_measured_exactly(value: Any, limit: int, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert nests_deeper_than(text, limit) == (depth(value) > limit)


@given(VALUES, st.data(), st.integers(0, 6))
def test_a_cut_or_spoiled_text_is_never_judged_shallower_than_it_is(
    value: Any, data: st.DataObject, limit: int
) -> None:
    text = json.dumps(value)
    cut = data.draw(st.integers(0, len(text)))
    noise = data.draw(st.text(alphabet='[]{}"\\,', max_size=6))
    spoiled = text[:cut] + noise + text[cut:]
    for candidate in (text[:cut], spoiled):
        if deepest_prefix(candidate) > limit:
            assert nests_deeper_than(candidate.encode(), limit), candidate


@settings(max_examples=200)
@given(st.binary(max_size=200), st.integers(0, 10))
def test_any_bytes_get_an_answer(data: bytes, limit: int) -> None:
    nests_deeper_than(data, limit)


def test_hostile_megabytes_are_judged_in_milliseconds() -> None:
    """The shapes that are slow to parse or to scan, at the RPC body limit (1 MiB)."""
    mib = 1 << 20
    shapes = {
        "deep": b"[" * mib,
        "deep, balanced": b"[" * (mib // 2) + b"]" * (mib // 2),
        "wide": b"[" + b",".join([b"[]"] * (mib // 3)) + b"]",
        "strings": b"[" + b",".join([b'"a"'] * (mib // 4)) + b"]",
        "strings with brackets": b"[" + b",".join([b'"[",[]'] * (mib // 8)) + b"]",
        "escapes": b'"' + b'\\"' * (mib // 2),
    }
    for name, data in shapes.items():
        started = time.perf_counter()
        nests_deeper_than(data, 64)
        elapsed = time.perf_counter() - started
        assert elapsed < 0.25, (name, elapsed)  # ~20 ms here; generous for a busy machine
