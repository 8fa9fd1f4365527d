"""How deeply a JSON text nests, found without parsing it.

Parsing is what must not happen to a deeply nested body (protobuf-py's native
reader overflows the C stack), and parsing to find out is slow: orjson spends
~170 ms building the objects of 1 MiB of ``[[],[],...]``, protobuf-py 5 ms. This
check costs ~20 ms at worst on 1 MiB (measured in the tests' figures), all of
it in C loops over bytes: strings are cut out, the brackets that remain are
reduced pair by pair.
"""

from __future__ import annotations

# What matters for nesting: brackets, and quotes (to tell which brackets are text).
_KEPT = b'[]{}"'
_DROPPED = bytes(b for b in range(256) if b not in _KEPT)
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")


def outside_strings(data: bytes) -> bytes:
    """The brackets of ``data`` that are not inside a string, as ``(`` and ``)``.

    Escapes are removed first (``\\\\``, then ``\\"``), so every quote left opens or
    closes a string. Adjacent quotes are removed in pairs: an empty string, or the
    end of one string and the start of the next (nothing between them survived),
    which keeps their contents inside. Outside strings a backslash is invalid
    JSON, where a parser stops; what precedes it is read exactly as JSON reads it.
    """
    kept = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROPPED)
    kept = kept.replace(b'""', b"")
    if b'"' in kept:
        kept = b"".join(kept.split(b'"')[::2])
    return kept.translate(_AS_PARENS)


def nests_deeper_than(data: bytes | bytearray, limit: int) -> bool:
    """Whether a JSON parser could have to open more than ``limit`` arrays or objects
    at once reading ``data`` (valid or not: for unbalanced text the answer errs
    on the side of True).

    Each pass removes every innermost ``()`` pair, so a balanced text is empty
    after as many passes as it is deep; at most ``limit + 1`` passes are made.
    What no pass can reduce is ``)...)(...(``: its opens enclose everything after
    them, adding to the depth the passes found.
    """
    brackets = outside_strings(bytes(data))
    run = b"(" * (limit + 1)
    for passes in range(limit + 1):
        if run in brackets:
            return True
        reduced = brackets.replace(b"()", b"")
        if len(reduced) == len(brackets):
            return passes + brackets.count(b"(") > limit
        brackets = reduced
    return True
