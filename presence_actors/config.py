"""Settings: ``config.toml`` plus environment, structured into attrs classes.

Precedence, lowest first: the defaults below, the TOML file, the seed variable
names (``REDIS_URL``, ``USER_STATUS_TTL``, ``HEARTBEAT_INTERVAL``), then
``PRESENCE_<SECTION>_<KEY>`` variables.

Durations are float seconds in these classes; files and environment may write
them as ``30``, ``30s``, ``5m``, ``250ms``, ``1h``, ``7d`` or ``1.5s``.

What each field accepts is part of its annotation (``Annotated[..., _Accepts]``
or a strict rule for its plain type), so one cattrs hook both type-checks and
range-checks every value and a wrong file is reported whole, not one error per run.
The classes themselves trust their arguments: :func:`load_settings` is the gate.
"""

from __future__ import annotations

import enum
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import attrs
from attrs import field, frozen
from cattrs import Converter
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError

from .model import Visibility


@frozen
class _Accepts:
    """What a setting accepts: ``parse`` turns a TOML value into the setting's value
    or raises ValueError; ``expected`` says in words what would have been accepted."""

    expected: str
    parse: Callable[[object], object]


def _at_least(minimum: int, maximum: int | None = None) -> _Accepts:
    def parse(value: object) -> int:
        # bool is an int subclass, but `port = true` is a mistake, never a 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("not an integer")
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError("out of range")
        return value

    bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
    return _Accepts(f"an integer {bound}", parse)


def _one_of(*choices: str) -> _Accepts:
    def parse(value: object) -> str:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise ValueError("not a choice")

    return _Accepts("one of " + ", ".join(choices), parse)


def _strings(expected: str, allowed: tuple[str, ...] = (), non_empty: bool = False) -> _Accepts:
    def parse(value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or (non_empty and not value):
            raise ValueError("not an array")
        for item in value:
            if not isinstance(item, str) or (allowed and item not in allowed):
                raise ValueError("bad item")
        return tuple(value)

    return _Accepts(expected, parse)


def _plain(kind: type, expected: str) -> _Accepts:
    def parse(value: object) -> object:
        if type(value) is not kind:
            raise ValueError(f"not {expected}")
        return value

    return _Accepts(expected, parse)


def _enum(kind: type[enum.Enum]) -> _Accepts:
    choice = _one_of(*(member.value for member in kind))
    return _Accepts(choice.expected, lambda value: kind(choice.parse(value)))


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a number")
    return float(value)


def _positive_number(value: object) -> float:
    number = _number(value)
    if not 0 < number < math.inf:
        raise ValueError("not positive")
    return number


# Decimal, so that a value is rounded to float once: "100ms" is exactly 0.1.
_UNIT_SECONDS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a number of seconds, or a string such as ``30``,
    ``30s``, ``5m``, ``250ms``, ``1h``, ``7d`` or ``1.5s``.

    Returns a finite float >= 0, the nearest to the exact decimal value (so
    ``"100ms"`` is exactly ``0.1``). Anything else — a negative or non-finite
    number, a bool, an unknown unit, a space inside — raises ValueError naming it.
    """
    seconds = math.nan
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match:
            seconds = float(Decimal(match[1]) * _UNIT_SECONDS[match[2] or "s"])
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(Decimal(value))
    if not 0 <= seconds < math.inf:
        raise ValueError(
            f"{value!r} is not a duration: expected seconds as a number, or a number with"
            " a unit ms, s, m, h or d, such as 30, 30s, 5m or 250ms"
        )
    return seconds


def _duration(allow_zero: bool) -> _Accepts:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds == 0 and not allow_zero:
            raise ValueError("zero")
        return seconds

    bound = "" if allow_zero else "positive "
    return _Accepts(f"a {bound}duration such as 30, 30s, 5m or 250ms", parse)


# A duration in seconds, written as a number or a string with a unit; > 0.
Duration = Annotated[float, _duration(allow_zero=False)]
# Like Duration, where 0 means "off" (no retention pruning, no grace period).
DurationOrZero = Annotated[float, _duration(allow_zero=True)]
# Sizes and counts that make no sense below one.
Count = Annotated[int, _at_least(1)]

# RFC 7518 3.2: an HMAC key must be at least as long as the hash output (256 bits
# for HS256); a token signed with a shorter one can be brute-forced offline.
MIN_JWT_SECRET = 32

# "none" is left out on purpose: it would accept unsigned tokens.
_JWT_ALGORITHMS = tuple(
    f"{kind}{bits}" for kind in ("HS", "RS", "ES", "PS") for bits in (256, 384, 512)
)

# Rules for fields with an unannotated type: strict, because cattrs' defaults
# would turn "5" into 5 and "false" into True.
_PLAIN_RULES: dict[object, _Accepts] = {
    str: _plain(str, "a string"),
    int: _plain(int, "an integer"),
    float: _Accepts("a number", _number),
    bool: _plain(bool, "true or false"),
    tuple[str, ...]: _strings("an array of strings"),
    Visibility: _enum(Visibility),
}


@frozen
class ServerSettings:
    host: str = "127.0.0.1"
    # 0 asks the OS for a free port (tests).
    port: Annotated[int, _at_least(0, 65535)] = 8080
    # Time given to open sessions to close and to the final flush on shutdown.
    graceful_timeout: Duration = 5.0
    # Name reported by /api/stats; empty means the host name.
    node: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Open connections at most; 0 derives it from the process's descriptor limit
    # (see gateway.admission). Past it a new connection gets a short 503 and is closed.
    max_connections: Annotated[int, _at_least(0)] = 0
    # Longest time a request body may take to arrive, from the end of its head.
    body_timeout: Duration = 10.0
    # Longest silence while a request body is arriving.
    body_idle_timeout: Duration = 5.0
    # Worker processes sharing the port, each a node (more than 1 needs Redis).
    workers: Annotated[int, _at_least(1, 256)] = 1


@frozen
class PersistenceSettings:
    path: str = "data/presence.db"
    flush_interval: Duration = 0.1
    batch_size: Count = 500
    # Presence events and policy changes held uncommitted (the store slow or failing)
    # before further events are dropped (counted) and policy changes refused.
    queue_size: Count = 100_000
    # The same bound in estimated bytes of everything held, rows included.
    queue_bytes: Count = 32 << 20
    retention: DurationOrZero = 30 * 86400.0
    prune_interval: Duration = 3600.0
    # The WAL is checkpointed into the database and truncated at this size.
    checkpoint_bytes: Count = 1 << 20
    # How long an admin change waits for its commit before it is answered STORE_ERROR.
    admin_commit_timeout: Duration = 5.0


@frozen
class PresenceSettings:
    grace_period: DurationOrZero = 10.0
    heartbeat_interval: Duration = 15.0
    heartbeat_timeout: Duration = 30.0
    away_after: Duration = 300.0
    fanout: Annotated[str, _one_of("everyone", "contacts")] = "everyone"
    max_sessions_per_user: Count = 10
    default_visibility: Visibility = Visibility.EVERYONE


@frozen
class LimitSettings:
    max_message_bytes: Count = 65536
    messages_per_second: Annotated[float, _Accepts("a number > 0", _positive_number)] = 20.0
    burst: Count = 50
    # A session over its rate for this long is closed (1008).
    abuse_window: Duration = 5.0
    outbound_queue: Count = 1000
    # Bytes waiting behind the frame being written before a session counts as a
    # slow consumer (1013); see config.toml for why this value.
    outbound_bytes: Count = 1 << 20
    # Frames one WebSocket message may be split into (frames.MAX_FRAGMENTS).
    max_fragments: Count = 1024
    status_changes_per_10s: Count = 10
    max_subscriptions: Count = 5000
    max_ids_per_request: Count = 1000


@frozen
class AuthSettings:
    mode: Annotated[str, _one_of("none", "jwt")] = "none"
    jwt_secret: str = ""
    jwt_public_key_file: str = ""
    jwt_algorithms: Annotated[
        tuple[str, ...],
        _strings(
            "a non-empty array of algorithms from " + ", ".join(_JWT_ALGORITHMS),
            allowed=_JWT_ALGORITHMS,
            non_empty=True,
        ),
    ] = ("HS256",)
    jwt_leeway: Duration = 5.0
    admin_token: str = ""
    allowed_origins: tuple[str, ...] = ()


@frozen
class LoggingSettings:
    level: Annotated[str, _one_of("debug", "info", "warning", "error", "critical")] = "info"
    file: str = "logs/presence.log"
    # 0 never rotates, as in logging.handlers.RotatingFileHandler.
    max_bytes: Annotated[int, _at_least(0)] = 10 * 1024 * 1024
    backup_count: Annotated[int, _at_least(0)] = 5


@frozen
class ClusterSettings:
    redis_url: str = ""
    # A node silent for this long is taken for dead (its sessions count as lost).
    node_ttl: Duration = 3.0


@frozen
class WebSettings:
    # Let the page (and any WebSocket client) connect read-only with ?observer=1.
    observer: bool = False


@frozen
class SupervisionSettings:
    # A user actor that crashes more than max_restarts times within
    # restart_window escalates: the engine stops instead of looping.
    max_restarts: Count = 5
    restart_window: Duration = 10.0


@frozen
class Settings:
    server: ServerSettings = field(factory=ServerSettings)
    persistence: PersistenceSettings = field(factory=PersistenceSettings)
    presence: PresenceSettings = field(factory=PresenceSettings)
    limits: LimitSettings = field(factory=LimitSettings)
    auth: AuthSettings = field(factory=AuthSettings)
    logging: LoggingSettings = field(factory=LoggingSettings)
    cluster: ClusterSettings = field(factory=ClusterSettings)
    supervision: SupervisionSettings = field(factory=SupervisionSettings)
    web: WebSettings = field(factory=WebSettings)


class ConfigError(Exception):
    """A setting is wrong; the message names the key, the value and what is allowed.

    With several problems the message has one line per problem.
    """


def _rule_for(kind: object) -> _Accepts | None:
    if get_origin(kind) is Annotated:
        return next((meta for meta in get_args(kind)[1:] if isinstance(meta, _Accepts)), None)
    return _PLAIN_RULES.get(kind)


def _section_classes() -> dict[str, type]:
    # Annotations are strings (PEP 563) until resolved; the loader needs the
    # types, Annotated metadata included, to pick each field's rule.
    classes = {}
    for section in attrs.fields(attrs.resolve_types(Settings)):
        assert section.type is not None
        kind = attrs.resolve_types(section.type)
        # A field without a rule would get cattrs' lenient hooks ("5" -> 5).
        assert all(_rule_for(key.type) for key in attrs.fields(kind)), section.name
        classes[section.name] = kind
    return classes


_SECTIONS = _section_classes()
_FIELDS: dict[str, dict[str, attrs.Attribute[Any]]] = {
    name: attrs.fields_dict(section) for name, section in _SECTIONS.items()
}

_SEED_NAMES = {
    "REDIS_URL": ("cluster", "redis_url"),
    "USER_STATUS_TTL": ("presence", "heartbeat_timeout"),
    "HEARTBEAT_INTERVAL": ("presence", "heartbeat_interval"),
}
_PREFIX = "PRESENCE_"


def _base_type(kind: object) -> object:
    return get_args(kind)[0] if get_origin(kind) is Annotated else kind


def _make_converter() -> Converter:
    converter = Converter(forbid_extra_keys=True)

    def hook_for(kind: object) -> Callable[[object, object], object]:
        rule = _rule_for(kind)
        assert rule is not None
        return lambda value, _: rule.parse(value)

    converter.register_structure_hook_factory(lambda kind: _rule_for(kind) is not None, hook_for)
    # cattrs dispatches plain classes (str, bool, ...) before any factory.
    for kind in _PLAIN_RULES:
        if isinstance(kind, type):
            converter.register_structure_hook(kind, hook_for(kind))
    return converter


_CONVERTER = _make_converter()


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the defaults, the TOML file at ``path`` (none when None) and
    ``environ`` (``os.environ`` when None).

    Every value is type- and range-checked; any problem raises ConfigError, whose
    message lists every problem found, one per line, each naming the dotted key
    (and the environment variable, when the value came from one), the value and
    what is allowed. Nothing is read but ``path`` and ``environ``.
    """
    document = _read_toml(path) if path is not None else {}
    environ = os.environ if environ is None else environ
    overrides, problems = _environment_targets(environ)
    origins = {f"{section}.{key}": name for (section, key), name in overrides.items()}
    for name in sorted(document.keys() - _SECTIONS.keys()):
        problems.append(f"unknown section {name!r} (known: {', '.join(sorted(_SECTIONS))})")

    tables: dict[str, dict[str, object]] = {}
    for section in _SECTIONS:
        table = document.get(section, {})
        if isinstance(table, dict):
            tables[section] = dict(table)
        else:
            problems.append(f"{section} = {table!r}: expected a table [{section}]")
    for (section, key), name in overrides.items():
        if section in tables:
            kind = _FIELDS[section][key].type if key in _FIELDS[section] else object
            tables[section][key] = _environment_value(environ[name], kind)

    sections: dict[str, Any] = {}
    for section, table in tables.items():
        try:
            sections[section] = _CONVERTER.structure(table, _SECTIONS[section])
        except ClassValidationError as error:
            problems.extend(_describe(error, section, table, origins))
    problems.extend(_relations(sections, tables, origins))
    if problems:
        raise ConfigError("\n".join(problems))
    return Settings(**sections)


def _read_toml(path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path} cannot be read: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _environment_targets(
    environ: Mapping[str, str],
) -> tuple[dict[tuple[str, str], str], list[str]]:
    """Which variable sets which (section, key), a PRESENCE_ name winning over a
    seed name; and the PRESENCE_ names that name no section."""
    targets = {target: name for name, target in _SEED_NAMES.items() if name in environ}
    problems = []
    # Sorted, so that the error lines come in the same order on every run.
    for name in sorted(environ):
        if not name.startswith(_PREFIX):
            continue
        rest = name[len(_PREFIX) :].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            problems.append(
                f"{name}: unknown section; expected PRESENCE_<SECTION>_<KEY> with SECTION"
                f" one of {', '.join(sorted(_SECTIONS))}"
            )
        else:
            targets[section, rest[len(section) + 1 :]] = name
    return targets, problems


def _environment_value(text: str, kind: object) -> object:
    """The TOML value ``text`` spells (``9000``, ``true``, ``["a"]``), else ``text``.

    A string setting keeps the text itself unless it is a quoted TOML string, so a
    numeric token or secret stays a string; an array of strings also accepts
    comma-separated text (``a, b``; empty text is the empty array).
    """
    try:
        value: object = tomllib.loads("v = " + text)["v"]
    except tomllib.TOMLDecodeError:
        value = text
    base = _base_type(kind)
    if base is str and not isinstance(value, str):
        return text
    if base == tuple[str, ...] and isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _problem(
    origins: Mapping[str, str], key: str, value: object, expected: str, *related: str
) -> str:
    """``[VARIABLES: ]key = value: expected ...``, naming the environment
    variables that set ``key`` or ``related`` keys."""
    names = [origins[k] for k in (key, *related) if k in origins]
    prefix = f"{', '.join(names)}: " if names else ""
    return f"{prefix}{key} = {value!r}: expected {expected}"


def _describe(
    error: ClassValidationError,
    section: str,
    table: Mapping[str, object],
    origins: Mapping[str, str],
) -> list[str]:
    lines = []
    with_notes, without_notes = error.group_exceptions()
    for _, note in with_notes:
        rule = _rule_for(note.type)
        assert rule is not None  # every field has one, see _section_classes
        lines.append(_problem(origins, f"{section}.{note.name}", table[note.name], rule.expected))
    for cause in without_notes:
        # Unknown keys are the only error outside a field: the classes have no validators.
        assert isinstance(cause, ForbiddenExtraKeysError), cause
        known = ", ".join(sorted(_FIELDS[section]))
        for name in sorted(cause.extra_fields):
            key = f"{section}.{name}"
            prefix = f"{origins[key]}: " if key in origins else ""
            lines.append(f"{prefix}unknown setting {key} (known: {known})")
    return lines


def _relations(
    sections: Mapping[str, Any],
    tables: Mapping[str, Mapping[str, object]],
    origins: Mapping[str, str],
) -> list[str]:
    """Checks between settings of one section, for the sections that were valid.

    Values are shown as written when they were written, else as the default.
    """

    def shown(section: str, key: str) -> object:
        return tables[section].get(key, getattr(sections[section], key))

    lines = []
    presence = sections.get("presence")
    if presence is not None and presence.heartbeat_interval >= presence.heartbeat_timeout:
        timeout = shown("presence", "heartbeat_timeout")
        lines.append(
            _problem(
                origins,
                "presence.heartbeat_interval",
                shown("presence", "heartbeat_interval"),
                f"less than presence.heartbeat_timeout = {timeout!r}",
                "presence.heartbeat_timeout",
            )
        )
    auth = sections.get("auth")
    if (
        auth is not None
        and auth.mode == "jwt"
        and not (auth.jwt_secret or auth.jwt_public_key_file)
    ):
        lines.append(
            _problem(
                origins,
                "auth.mode",
                shown("auth", "mode"),
                "auth.jwt_secret or auth.jwt_public_key_file to be set",
                "auth.jwt_secret",
                "auth.jwt_public_key_file",
            )
        )
    if auth is not None and auth.jwt_secret:
        lines.extend(_secret_length(auth, origins))
    return lines


def _secret_length(auth: AuthSettings, origins: Mapping[str, str]) -> list[str]:
    """A line when ``auth.jwt_secret`` is shorter than its HMAC's hash (RFC 7518 3.2),
    and never shorter than :data:`MIN_JWT_SECRET`; the value itself is not shown."""
    hmacs = [a for a in auth.jwt_algorithms if a.startswith("HS")] or ["HS256"]
    strongest = max(hmacs, key=lambda a: int(a[2:]))
    needed = max(MIN_JWT_SECRET, int(strongest[2:]) // 8)
    length = len(auth.jwt_secret.encode())
    if length >= needed:
        return []
    prefix = f"{origins['auth.jwt_secret']}: " if "auth.jwt_secret" in origins else ""
    return [
        f"{prefix}auth.jwt_secret is {length} bytes long: expected at least {needed} bytes"
        f" for {strongest} (a shorter secret can be guessed offline from one token)"
    ]
