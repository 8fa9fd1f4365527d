"""Issue 14, item 2: the documentation a clone has is whole and true to the code.

- Every link in the repository's Markdown resolves inside the repository (a file that
  exists, a heading that exists), and nothing points outside it (no absolute paths, no
  sibling folders).
- docs/PROTOCOL.md names only message types, error codes, close codes and settings that
  exist, names all of them, and its tables of HTTP and gRPC statuses and of defaults are
  the server's own.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import attrs
import pytest

from presence_actors import protocol
from presence_actors.actors import session
from presence_actors.config import Settings, parse_duration
from presence_actors.gateway import http_api
from presence_actors.gateway.grpc_api import GRPC_CODES

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
MARKDOWN = sorted(
    p
    for p in ROOT.rglob("*.md")
    if not any(part.startswith(".") or part in {"build", "node_modules"} for part in p.parts)
    and ".venv" not in p.parts
)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for match in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE):
        base = slug(match[1])
        anchor, n = base, 1
        while anchor in found:  # repeated headings get -1, -2, ...
            anchor, n = f"{base}-{n}", n + 1
        found.add(anchor)
    return found


def links(path: Path) -> list[str]:
    return _LINK.findall(_FENCE.sub("", path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("document", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(document: Path) -> None:
    # Before: README and ARCHITECTURE linked ../shared/PROTOCOL.md and /work/shared/.
    text = document.read_text(encoding="utf-8")
    assert "/work/" not in text
    assert "../shared" not in text
    for target in links(document):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (document.parent / file).resolve() if file else document
        assert resolved.is_relative_to(ROOT), f"{target} leaves the repository"
        assert resolved.exists(), f"{target}: no such file"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{target}: no such heading"


def test_readme_links_the_protocol_in_the_repository() -> None:
    assert "docs/PROTOCOL.md" in links(ROOT / "README.md")
    assert not (ROOT / "docs" / "PROTOCOL_NOTES.md").exists()  # folded into PROTOCOL.md


# --- docs/PROTOCOL.md against the code ---------------------------------------------------


def protocol_text() -> str:
    return PROTOCOL.read_text(encoding="utf-8")


def table(title_pattern: str) -> list[list[str]]:
    """The rows of the first Markdown table after the line matching ``title_pattern``."""
    text = protocol_text()
    start = re.search(title_pattern, text, re.MULTILINE)
    assert start is not None, title_pattern
    rows = []
    for line in text[start.end() :].splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not set("".join(cells)) <= set("-: "):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


def codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_every_message_type_is_in_the_protocol() -> None:
    client = {c for row in table(r"^Client to server:") for c in codes(row[0])}
    assert client == {m.TYPE for m in protocol.CLIENT_MESSAGES}
    text = protocol_text()
    for message in protocol.SERVER_MESSAGES:
        assert f"`{message.TYPE}" in text, message.TYPE


def test_the_error_table_is_the_servers() -> None:
    rows = {codes(row[0])[0]: row for row in table(r"^### Errors")}
    assert set(rows) == {code.value for code in protocol.ErrorCode}
    for code in protocol.ErrorCode:
        _, _, http_status, grpc_status = rows[code.value]
        assert int(http_status) == http_api._STATUS[code], code
        assert grpc_status.strip("`") == GRPC_CODES[code].name, code


def test_the_close_codes_are_the_servers() -> None:
    listed = {int(row[0]) for row in table(r"^### Close codes")}
    used = {value for name, value in vars(session).items() if name.startswith("CLOSE_")}
    assert used <= listed
    # The frame layer's own: protocol error, bad UTF-8, too big.
    assert listed == used | {1002, 1007, 1009}


def setting_names(text: str) -> set[str]:
    sections = {field.name for field in attrs.fields(Settings)}
    found = set(re.findall(r"`([a-z]+)\.([a-z_0-9]+)`", text))
    return {f"{s}.{k}" for s, k in found if s in sections}


def test_every_setting_named_exists() -> None:
    settings = Settings()
    for name in setting_names(protocol_text()):
        section, key = name.split(".")
        assert hasattr(getattr(settings, section), key), name


def test_the_settings_table_gives_the_defaults_of_config_toml() -> None:
    defaults = tomllib.loads((ROOT / "config.toml").read_text(encoding="utf-8"))
    for keys_cell, values_cell, _ in table(r"^\| setting \| default"):
        keys = codes(keys_cell)
        values = [v.strip() for v in values_cell.split(", ")] if len(keys) > 1 else [values_cell]
        assert len(values) == len(keys), keys_cell
        for key, shown in zip(keys, values, strict=True):
            section, name = key.split(".")
            actual = defaults[section][name]
            text = shown.split(" (")[0].strip().strip("`")
            if text == "empty":
                assert actual in ("", []), key
            elif isinstance(actual, list):
                assert text == str(actual).replace("'", '"'), key
            elif isinstance(actual, str) and re.fullmatch(r"[\d.]+(ms|s|m|h|d)", actual):
                assert parse_duration(text) == parse_duration(actual), key
            else:
                expected = str(actual).lower() if isinstance(actual, bool) else str(actual)
                assert text == expected, key
