from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence_actors import config
from presence_actors.config import ConfigError, Settings, load_settings, parse_duration
from presence_actors.model import Visibility

CONFIG_TOML = Path(__file__).resolve().parent.parent / "config.toml"
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path, environ={} if environ is None else environ)


def error_lines(excinfo: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(excinfo.value).splitlines()


# --- defaults and config.toml ------------------------------------------------


def test_no_file_and_empty_environment_give_the_defaults() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.persistence.path == "data/presence.db"
    assert settings.persistence.flush_interval == 0.1
    assert settings.presence.grace_period == 10.0
    assert settings.auth.jwt_algorithms == ("HS256",)
    assert settings.logging.file == "logs/presence.log"


def test_config_toml_loads_to_exactly_the_defaults() -> None:
    assert load_settings(CONFIG_TOML, environ={}) == Settings()


def test_config_toml_lists_every_section_and_setting() -> None:
    document = tomllib.loads(CONFIG_TOML.read_text(encoding="utf-8"))
    expected = {
        section.name: [key.name for key in attrs.fields(type(getattr(Settings(), section.name)))]
        for section in attrs.fields(Settings)
    }
    assert {name: list(table) for name, table in document.items()} == expected


def test_environ_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PRESENCE_") or name in {"REDIS_URL", "USER_STATUS_TTL"}:
            monkeypatch.delenv(name)
    monkeypatch.delenv("HEARTBEAT_INTERVAL", raising=False)
    monkeypatch.setenv("PRESENCE_SERVER_PORT", "9001")
    assert load_settings().server.port == 9001


# --- durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("30", 30.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("250ms", 0.25),
        ("100ms", 0.1),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        (" 5m ", 300.0),
        (30, 30.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration_accepts(written: object, seconds: float) -> None:
    result = parse_duration(written)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    "written",
    ["10x", "", "s", "-5s", "5 m", "5M", "1e3", "1.s", ".5s", "inf", True, None, -1, [30],
     math.nan, math.inf],
)  # fmt: skip
def test_parse_duration_refuses(written: object) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: expected .* 30, 30s, 5m or 250ms"):
        parse_duration(written)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(UNIT_SECONDS)))
def test_parse_duration_round_trips_whole_numbers(number: int, unit: str) -> None:
    seconds = parse_duration(f"{number}{unit}")
    expected = number / 1000 if unit == "ms" else float(number * UNIT_SECONDS[unit])
    assert seconds == expected
    # And back: the seconds divided by the unit give the number written.
    assert round(seconds / UNIT_SECONDS[unit]) == number


@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=999),
    st.sampled_from(sorted(UNIT_SECONDS)),
)
def test_parse_duration_fractions(whole: int, thousandths: int, unit: str) -> None:
    seconds = parse_duration(f"{whole}.{thousandths:03d}{unit}")
    assert seconds == pytest.approx((whole + thousandths / 1000) * UNIT_SECONDS[unit], rel=1e-12)


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_parse_duration_keeps_numbers_of_seconds(number: float) -> None:
    assert parse_duration(number) == number


@given(st.text())
def test_parse_duration_gives_seconds_or_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 <= seconds < math.inf


@pytest.mark.parametrize("written", ['"30"', '"30s"', '"5m"', '"250ms"', '"1h"', '"7d"', '"1.5s"'])
def test_every_duration_syntax_works_in_the_file(tmp_path: Path, written: str) -> None:
    settings = load(tmp_path, f"[presence]\naway_after = {written}\n")
    assert settings.presence.away_after == parse_duration(tomllib.loads(f"v = {written}")["v"])


def test_durations_may_be_plain_numbers_in_the_file(tmp_path: Path) -> None:
    settings = load(tmp_path, "[persistence]\nflush_interval = 0.5\nretention = 0\n")
    assert (settings.persistence.flush_interval, settings.persistence.retention) == (0.5, 0.0)


# --- environment ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "text", "section", "key", "value"),
    [
        # int
        ("PRESENCE_SERVER_PORT", "9000", "server", "port", 9000),
        ("PRESENCE_LIMITS_BURST", "7", "limits", "burst", 7),
        # number
        ("PRESENCE_LIMITS_MESSAGES_PER_SECOND", "2.5", "limits", "messages_per_second", 2.5),
        # str: the text itself, even when it would read as another TOML value
        ("PRESENCE_SERVER_HOST", "0.0.0.0", "server", "host", "0.0.0.0"),
        ("PRESENCE_AUTH_ADMIN_TOKEN", "12345", "auth", "admin_token", "12345"),
        ("PRESENCE_SERVER_NODE", "true", "server", "node", "true"),
        ("PRESENCE_SERVER_NODE", '"quoted"', "server", "node", "quoted"),
        ("PRESENCE_CLUSTER_REDIS_URL", "redis://r:6379/0", "cluster", "redis_url",
         "redis://r:6379/0"),
        # list
        ("PRESENCE_AUTH_JWT_ALGORITHMS", '["RS256"]', "auth", "jwt_algorithms", ("RS256",)),
        ("PRESENCE_AUTH_JWT_ALGORITHMS", "RS256, ES256", "auth", "jwt_algorithms",
         ("RS256", "ES256")),
        ("PRESENCE_AUTH_ALLOWED_ORIGINS", "https://a.example", "auth", "allowed_origins",
         ("https://a.example",)),
        ("PRESENCE_AUTH_ALLOWED_ORIGINS", "", "auth", "allowed_origins", ()),
        # duration
        ("PRESENCE_PRESENCE_GRACE_PERIOD", "3s", "presence", "grace_period", 3.0),
        ("PRESENCE_PRESENCE_GRACE_PERIOD", "3", "presence", "grace_period", 3.0),
        ("PRESENCE_PERSISTENCE_FLUSH_INTERVAL", "250ms", "persistence", "flush_interval", 0.25),
        # choices and the enum, case-insensitive, stored lowercase
        ("PRESENCE_PRESENCE_DEFAULT_VISIBILITY", "contacts", "presence", "default_visibility",
         Visibility.CONTACTS),
        ("PRESENCE_PRESENCE_FANOUT", "Contacts", "presence", "fanout", "contacts"),
        ("PRESENCE_LOGGING_LEVEL", "DEBUG", "logging", "level", "debug"),
    ],
)  # fmt: skip
def test_environment_sets_each_kind_of_value(
    variable: str, text: str, section: str, key: str, value: object
) -> None:
    settings = load_settings(environ={variable: text})
    assert getattr(getattr(settings, section), key) == value
    assert attrs.evolve(settings, **{section: getattr(Settings(), section)}) == Settings()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    settings = load(
        tmp_path, "[server]\nport = 1234\nhost = '::1'\n", {"PRESENCE_SERVER_PORT": "0"}
    )
    assert (settings.server.host, settings.server.port) == ("::1", 0)


def test_unrelated_environment_variables_are_ignored() -> None:
    assert load_settings(environ={"PATH": "/bin", "PRESENCEX": "1", "HOME": "/"}) == Settings()


def test_seed_names() -> None:
    settings = load_settings(
        environ={
            "REDIS_URL": "redis://localhost:6379",
            "USER_STATUS_TTL": "60s",
            "HEARTBEAT_INTERVAL": "20",
        }
    )
    assert settings.cluster.redis_url == "redis://localhost:6379"
    assert settings.presence.heartbeat_timeout == 60.0
    assert settings.presence.heartbeat_interval == 20.0


def test_seed_names_override_the_file(tmp_path: Path) -> None:
    settings = load(tmp_path, "[presence]\nheartbeat_timeout = '40s'\n", {"USER_STATUS_TTL": "1m"})
    assert settings.presence.heartbeat_timeout == 60.0


def test_presence_variables_win_over_seed_names() -> None:
    settings = load_settings(
        environ={
            "USER_STATUS_TTL": "60s",
            "PRESENCE_PRESENCE_HEARTBEAT_TIMEOUT": "45s",
            "REDIS_URL": "redis://seed",
            "PRESENCE_CLUSTER_REDIS_URL": "redis://presence",
        }
    )
    assert settings.presence.heartbeat_timeout == 45.0
    assert settings.cluster.redis_url == "redis://presence"


# --- unknown names -----------------------------------------------------------------


def test_unknown_section_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^unknown section 'serverr' \(known: auth, cluster, "):
        load(tmp_path, "[serverr]\nport = 1\n")


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^unknown setting presence\.grace_perod \(known: away_after, default_visibility, "
        r"fanout, grace_period, heartbeat_interval, heartbeat_timeout, max_sessions_per_user\)$",
    ):
        load(tmp_path, "[presence]\ngrace_perod = '3s'\n")


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^server = 5: expected a table \[server\]$"):
        load(tmp_path, "server = 5\n")


def test_unknown_section_in_environment() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^PRESENCE_SERVERR_PORT: unknown section; expected PRESENCE_<SECTION>_<KEY> "
        r"with SECTION one of auth, cluster, ",
    ):
        load_settings(environ={"PRESENCE_SERVERR_PORT": "1"})


def test_unknown_setting_in_environment() -> None:
    with pytest.raises(
        ConfigError, match=r"^PRESENCE_SERVER_PROT: unknown setting server\.prot \(known: "
    ):
        load_settings(environ={"PRESENCE_SERVER_PROT": "1"})


# --- wrong values ------------------------------------------------------------------

WRONG_VALUES = [
    ("[server]\nport = 70000", "server.port = 70000: expected an integer from 0 to 65535"),
    ("[server]\nport = -1", "server.port = -1: expected an integer from 0 to 65535"),
    ("[server]\nport = '8080'", "server.port = '8080': expected an integer from 0 to 65535"),
    ("[server]\nport = 80.0", "server.port = 80.0: expected an integer from 0 to 65535"),
    ("[server]\nport = true", "server.port = True: expected an integer from 0 to 65535"),
    ("[server]\nhost = 5", "server.host = 5: expected a string"),
    ("[server]\ngraceful_timeout = 0", "server.graceful_timeout = 0: expected a positive "
     "duration such as 30, 30s, 5m or 250ms"),
    ("[presence]\ngrace_period = '10x'", "presence.grace_period = '10x': expected a duration "
     "such as 30, 30s, 5m or 250ms"),
    ("[presence]\ngrace_period = -1", "presence.grace_period = -1: expected a duration such as "
     "30, 30s, 5m or 250ms"),
    ("[presence]\naway_after = '0s'", "presence.away_after = '0s': expected a positive duration "
     "such as 30, 30s, 5m or 250ms"),
    ("[presence]\nfanout = 'friends'", "presence.fanout = 'friends': expected one of everyone, "
     "contacts"),
    ("[presence]\ndefault_visibility = 'friends'", "presence.default_visibility = 'friends': "
     "expected one of everyone, contacts, nobody"),
    ("[presence]\nmax_sessions_per_user = 0", "presence.max_sessions_per_user = 0: expected an "
     "integer >= 1"),
    ("[persistence]\nbatch_size = '5'", "persistence.batch_size = '5': expected an integer >= 1"),
    ("[limits]\nmessages_per_second = 0", "limits.messages_per_second = 0: expected a number > 0"),
    ("[limits]\nmessages_per_second = 'fast'", "limits.messages_per_second = 'fast': expected a "
     "number > 0"),
    ("[limits]\nburst = 0", "limits.burst = 0: expected an integer >= 1"),
    ("[auth]\nmode = 'oauth'", "auth.mode = 'oauth': expected one of none, jwt"),
    ("[auth]\njwt_algorithms = ['none']", "auth.jwt_algorithms = ['none']: expected a non-empty "
     "array of algorithms from HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384, ES512, "
     "PS256, PS384, PS512"),
    ("[auth]\njwt_algorithms = []", "auth.jwt_algorithms = []: expected a non-empty array of "
     "algorithms from HS256, "),
    # A comma-separated string is for the environment; the file has arrays.
    ("[auth]\njwt_algorithms = 'HS256'", "auth.jwt_algorithms = 'HS256': expected a non-empty "
     "array of algorithms from HS256, "),
    ("[auth]\nallowed_origins = [1]", "auth.allowed_origins = [1]: expected an array of strings"),
    ("[logging]\nlevel = 'verbose'", "logging.level = 'verbose': expected one of debug, info, "
     "warning, error, critical"),
    ("[logging]\nbackup_count = -1", "logging.backup_count = -1: expected an integer >= 0"),
    ("[supervision]\nmax_restarts = 0", "supervision.max_restarts = 0: expected an integer >= 1"),
]  # fmt: skip


@pytest.mark.parametrize(("toml", "message"), WRONG_VALUES)
def test_wrong_value_names_key_value_and_what_is_allowed(
    tmp_path: Path, toml: str, message: str
) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load(tmp_path, toml + "\n")


def test_wrong_value_from_environment_names_the_variable() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^PRESENCE_SERVER_PORT: server\.port = 'abc': expected an integer from 0 to 65535$",
    ):
        load_settings(environ={"PRESENCE_SERVER_PORT": "abc"})


def test_true_is_not_a_number_from_environment() -> None:
    with pytest.raises(ConfigError, match=r"^PRESENCE_LIMITS_BURST: limits\.burst = True: "):
        load_settings(environ={"PRESENCE_LIMITS_BURST": "true"})


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load(tmp_path, "[logging]\nlevel = 'WARNING'\n").logging.level == "warning"


def test_bool_rule_is_strict() -> None:
    # No setting is a bool yet; the rule is registered so that the first one is strict.
    assert config._CONVERTER.structure(False, bool) is False
    with pytest.raises(ValueError, match="true or false"):
        config._CONVERTER.structure("false", bool)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    toml = """
[server]
port = 70000
hots = "x"

[presence]
grace_period = "soon"
fanout = "friends"

[limits]
burst = 0

[nope]
"""
    environ = {"PRESENCE_LOGGING_LEVEL": "loud", "PRESENCE_NOPE_X": "1"}
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, toml, environ)
    lines = error_lines(excinfo)
    assert [line.split(" (known")[0].split("; expected")[0] for line in lines] == [
        "PRESENCE_NOPE_X: unknown section",
        "unknown section 'nope'",
        "server.port = 70000: expected an integer from 0 to 65535",
        "unknown setting server.hots",
        "presence.grace_period = 'soon': expected a duration such as 30, 30s, 5m or 250ms",
        "presence.fanout = 'friends': expected one of everyone, contacts",
        "limits.burst = 0: expected an integer >= 1",
        "PRESENCE_LOGGING_LEVEL: logging.level = 'loud': expected one of debug, info, warning, "
        "error, critical",
    ]


# --- checks between settings -------------------------------------------------------------


def test_heartbeat_interval_must_be_below_timeout(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^presence\.heartbeat_interval = '30s': expected less than "
        r"presence\.heartbeat_timeout = '30s'$",
    ):
        load(tmp_path, "[presence]\nheartbeat_interval = '30s'\nheartbeat_timeout = '30s'\n")


def test_heartbeat_check_names_the_variables_involved() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^USER_STATUS_TTL: presence\.heartbeat_interval = 15\.0: expected less than "
        r"presence\.heartbeat_timeout = '10s'$",
    ):
        load_settings(environ={"USER_STATUS_TTL": "10s"})


def test_cross_checks_are_reported_with_other_sections_errors(tmp_path: Path) -> None:
    toml = "[server]\nport = 'x'\n[presence]\nheartbeat_interval = '1m'\n"
    with pytest.raises(ConfigError) as excinfo:
        load(tmp_path, toml)
    assert [line.split(":")[0] for line in error_lines(excinfo)] == [
        "server.port = 'x'",
        "presence.heartbeat_interval = '1m'",
    ]


def test_jwt_mode_needs_a_secret_or_a_public_key(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^auth\.mode = 'jwt': expected auth\.jwt_secret or auth\.jwt_public_key_file "
        r"to be set$",
    ):
        load(tmp_path, "[auth]\nmode = 'jwt'\n")
    with pytest.raises(ConfigError, match=r"^PRESENCE_AUTH_MODE: auth\.mode = 'JWT': "):
        load_settings(environ={"PRESENCE_AUTH_MODE": "JWT"})


@pytest.mark.parametrize("key", ["jwt_secret", "jwt_public_key_file"])
def test_jwt_mode_with_a_secret_or_a_public_key(tmp_path: Path, key: str) -> None:
    value = "k" * 32
    settings = load(
        tmp_path, f"[auth]\nmode = 'jwt'\n{key} = '{value}'\njwt_algorithms = ['RS256']\n"
    )
    assert settings.auth.mode == "jwt"
    assert getattr(settings.auth, key) == value


# --- the file itself -------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"^config file {re.escape(str(path))} not found$"):
        load_settings(path, environ={})


def test_broken_toml_names_the_path_and_the_place(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = \n", encoding="utf-8")
    with pytest.raises(
        ConfigError,
        match=f"^config file {re.escape(str(path))} is not valid TOML: .*line 2",
    ):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("name", "content"),
    [("a-directory", None), ("latin1.toml", "node = 'caf\xe9'".encode("latin-1"))],
)
def test_unreadable_file_names_the_path(tmp_path: Path, name: str, content: bytes | None) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"^config file {re.escape(str(path))} cannot be read: "):
        load_settings(path, environ={})
