"""Unknown options, named as such before argparse reads the command line.

argparse collects an option it does not know and goes on; the value after it
is then read as the command, so ``--prot 9000`` is reported as "invalid
choice: '9000'", blaming the value. :func:`unknown_option` walks the command
line the way argparse will and names the option instead.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping, Sequence

# A negative number is a value, never an option (argparse reads it so too).
_NUMBER = re.compile(r"-\d|-\.\d")


def unknown_option(
    parser: argparse.ArgumentParser,
    commands: Mapping[str, argparse.ArgumentParser],
    argv: Sequence[str],
    *,
    free_form: frozenset[str] = frozenset(),
) -> tuple[argparse.ArgumentParser, str] | None:
    """The first option no parser on the way knows: that parser and what to say, or None.

    ``commands`` are the subcommands' parsers by name; after a command in
    ``free_form`` the rest belongs to something else (``bench`` passes it on)
    and is not checked. Parsers must not allow abbreviations.
    """
    current = parser
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            return None
        if token.startswith("-") and token != "-" and not _NUMBER.match(token):
            name, equals, _ = token.partition("=")
            known = current._option_string_actions
            action = known.get(name)
            if action is None:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                return current, f"unknown option {name}{hint}"
            if not equals and action.nargs != 0:
                next(tokens, None)  # its value, whatever it looks like
            continue
        if current is parser:
            if token not in commands:
                return None  # argparse says "invalid choice", naming it
            if token in free_form:
                return None
            current = commands[token]
    return None
