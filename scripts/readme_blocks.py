"""README.md's generated blocks: finding them, normalising them, writing and checking them.

A fenced block in README.md is generated when the line before it is a marker:

    <!-- example: NAME -->          the output of example NAME (scripts/readme_examples.py)
    <!-- file: PATH -->             the content of the file PATH (a script the examples run)
    <!-- illustration: WHY -->      not generated, and said why (a full disk, a benchmark)

Every block that shows a shell session (a line starting with ``$ ``) or a log line must
carry one of them, so no example can be added without being run. Comparisons ignore
what changes from run to run (times, ids, ports, tokens; see :func:`normalise`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path

from attrs import frozen

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_MARKER = re.compile(r"^<!-- (example|file|illustration): (.+?) -->$")
_FENCE = re.compile(r"^```")
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@frozen
class Block:
    kind: str  # "example", "file", "illustration" or "" (not marked)
    name: str
    start: int  # index of the first line inside the fence
    end: int  # index of the closing fence
    text: str


def blocks(text: str) -> list[Block]:
    """Every fenced block of ``text``, with the marker on the line before it (if any)."""
    lines = text.split("\n")
    found = []
    index = 0
    while index < len(lines):
        if _FENCE.match(lines[index]):
            close = index + 1
            while close < len(lines) and lines[close] != "```":
                close += 1
            marker = _MARKER.match(lines[index - 1]) if index else None
            kind, name = (marker[1], marker[2]) if marker else ("", "")
            body = "\n".join(lines[index + 1 : close])
            found.append(Block(kind, name, index + 1, close, body))
            index = close + 1
        else:
            index += 1
    return found


def unmarked_sessions(text: str) -> list[str]:
    """The first lines of blocks that show a session or a log line but carry no marker."""
    problems = []
    for block in blocks(text):
        if block.kind:
            continue
        lines = block.text.split("\n")
        if any(line.startswith("$ ") or _LOG_LINE.match(line) for line in lines):
            problems.append(lines[0])
    return problems


# What differs from run to run, and what it becomes in a comparison.
_NORMAL = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"), "<iso-time>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"), "<iso-time>"),
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(,\d{3})?"), "<time>"),
    (re.compile(r"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT"), "<http-date>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<clock>"),
    (re.compile(r"\b1[78]\d{11}\b"), "<unix-ms>"),
    (re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+"), "<jwt>"),
    (re.compile(r'("sessionId": ?)"[0-9a-f]{16}"'), r'\1"<session>"'),
    (re.compile(r"\b(welcome: )[0-9a-f]{16}\b"), r"\1<session>"),
    (re.compile(r"\bdev-[0-9a-f]{12}\b"), "dev-<device>"),
    (re.compile(r'("nextCursor": ?)"[A-Za-z0-9_-]+"'), r'\1"<cursor>"'),
    (re.compile(r'("uptimeSeconds": ?)[\d.]+'), r"\1<seconds>"),
    # Sessions held open heartbeat on a timer, and heartbeats are messages in.
    (re.compile(r'("messagesIn": ?)\d+'), r"\1<n>"),
    (re.compile(r'("node": ?)"[^"]*"'), r'\1"<node>"'),
    (re.compile(r"\bpid \d+\b"), "pid <pid>"),
    (re.compile(r"(just now|\b\d+ (s|min|h|d) ago)"), "<ago>"),
    (re.compile(r"(127\.0\.0\.1|localhost|0\.0\.0\.0):\d{2,5}\b"), r"\1:<port>"),
    (re.compile(r"(accepting at most )\d+( connections \(RLIMIT_NOFILE = )\d+"), r"\1<n>\2<n>"),
    (re.compile(r"(content-length: )\d+"), r"\1<n>"),
]


def normalise(text: str) -> str:
    """``text`` with what changes between runs replaced by placeholders."""
    for pattern, replacement in _NORMAL:
        text = pattern.sub(replacement, text)
    return text.rstrip("\n")


def differences(text: str, expected: Mapping[str, str]) -> list[str]:
    """What keeps README ``text`` from showing ``expected`` (name -> block), as reports."""
    problems = []
    seen = set()
    for block in blocks(text):
        if block.kind == "example":
            seen.add(block.name)
            if block.name not in expected:
                problems.append(f"README shows an example the script has not: {block.name}")
                continue
            want, have = normalise(expected[block.name]), normalise(block.text)
            if want != have:
                diff = difflib.unified_diff(
                    have.split("\n"), want.split("\n"), "README.md", "run", lineterm=""
                )
                problems.append(f"example {block.name} differs:\n" + "\n".join(diff))
        elif block.kind == "file":
            content = (ROOT / block.name).read_text(encoding="utf-8").rstrip("\n")
            if block.text != content:
                problems.append(f"README's copy of {block.name} differs from the file")
    for name in sorted(set(expected) - seen):
        problems.append(f"example {name} is not in README")
    for first in unmarked_sessions(text):
        problems.append(f"a block that is not generated and not marked: {first!r}")
    return problems


def rewrite(text: str, produced: Mapping[str, str]) -> str:
    """README ``text`` with every example and file block replaced by what it shows now.

    A block that already shows the same (times, ids and ports aside) is left as it is,
    so that a run changes only what really changed.
    """
    lines = text.split("\n")
    for block in reversed(blocks(text)):  # from the end: indices stay valid
        if block.kind == "example" and block.name in produced:
            if normalise(block.text) == normalise(produced[block.name]):
                continue
            body = produced[block.name].rstrip("\n").split("\n")
        elif block.kind == "file":
            body = (ROOT / block.name).read_text(encoding="utf-8").rstrip("\n").split("\n")
        else:
            continue
        lines[block.start : block.end] = body
    return "\n".join(lines)
