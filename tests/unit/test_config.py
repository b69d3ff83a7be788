"""Flags, their environment twins and validation: what `docker run IMAGE /start.py ...`
and `docker run -e WHALETOP_...` accept, and what they refuse with a useful message."""

from __future__ import annotations

import dataclasses
import grp
import re

import pytest

from whaletopd import config
from whaletopd.config import OPTIONS, Config, ConfigError, parse

OPTION = {opt.dest: opt for opt in OPTIONS}
BOOL_OPTIONS = [opt for opt in OPTIONS if opt.kind is bool]
VALUE_OPTIONS = [opt for opt in OPTIONS if opt.kind is not bool]

# A valid non-default value for every option that takes one, as given on the command line,
# and the value Config should hold.
NON_DEFAULT = {
    "username": ("alice", "alice"),
    "uid": ("1234", 1234),
    "gid": ("2345", 2345),
    "geometry": ("1920x1080", "1920x1080"),
    "depth": ("16", 16),
    "web_port": ("9090", 9090),
    "vnc_port": ("5999", 5999),
    "probe_interval": ("0.5", 0.5),
    "probe_full_interval": ("60", 60.0),
    "probe_timeout": ("1.5", 1.5),
    "startup_timeout": ("120", 120.0),
    "log_format": ("console", "console"),
    "tls_certificate": ("/data/cert.pem", "/data/cert.pem"),
    "web_users": ("/data/users", "/data/users"),
    "sign_in_attempts": ("5", 5),
    "sign_in_lockout": ("60", 60.0),
    "connection_rate": ("120", 120),
    "trusted_proxy": ("10.0.0.0/8,fd00::/8", "10.0.0.0/8,fd00::/8"),
    "stop_when_idle": ("30", 30.0),
    "keyboard_layout": ("de(nodeadkeys)", "de(nodeadkeys)"),
    "dpi": ("192", 192),
    "link": ("wan", "wan"),
    "max_upload": ("500M", "500M"),
}
# What the *-from-env flags read: every boolean flag can be turned on with these.
SECRETS = {"VNC_PASSWORD": "secret1", "VNC_VIEW_ONLY_PASSWORD": "viewer1",
           "WEB_PASSWORD": "web secret"}


def test_defaults_without_flags_or_environment() -> None:
    cfg = parse([], {})
    assert cfg == Config()
    assert cfg.username == "user"
    assert cfg.sudo is True
    assert cfg.exit_on_failure is True
    assert cfg.vnc_password is None
    assert (cfg.geometry, cfg.depth, cfg.web_port, cfg.vnc_port) == ("1280x800", 24, 8080, 5901)
    assert cfg.expose_vnc is False
    assert cfg.log_format == "json"
    assert cfg.tls is False
    assert cfg.tls_key_password is None


def test_option_table_matches_config_defaults() -> None:
    """The --help text shows OPTIONS' defaults; Config must hold the same ones."""
    fields = {f.name: f.default for f in dataclasses.fields(Config)}
    for opt in OPTIONS:
        assert fields[opt.dest] == opt.default, opt.flag
    # Every option's variable is whaletop's own; secrets (METRICS_TOKEN, ...) keep the
    # names people know from other images and are no option: they have no flag.
    assert all(opt.env.startswith("WHALETOP_") for opt in OPTIONS)
    assert not {opt.env for opt in OPTIONS} & set(config.SECRET_VARIABLES)
    assert len({opt.env for opt in OPTIONS}) == len(OPTIONS)


@pytest.mark.parametrize(("flag", "value"), [("--uid", "0"), ("--gid", "0"), ("--uid", "70000"),
                                             ("--uid", "abc")])
def test_uid_and_gid_must_be_ordinary_ids(flag: str, value: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        parse([f"{flag}={value}"], {})


@pytest.mark.parametrize(("flag", "value"), [
    ("--stop-when-idle", "0.01"), ("--stop-when-idle", "20000"), ("--stop-when-idle", "-1")])
def test_idle_minutes_are_checked(flag: str, value: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        parse([f"{flag}={value}"], {})


@pytest.mark.parametrize("value", ["short", "sixteen chars ok", "x" * 16 + ";", "x" * 257])
def test_the_metrics_token_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="METRICS_TOKEN must be 16 to 256") as info:
        parse([], {"METRICS_TOKEN": value})
    assert value not in str(info.value)
    assert parse([], {"METRICS_TOKEN": "s3cret-token_0123"}).metrics_token == (
        "s3cret-token_0123")


@pytest.mark.parametrize("argv", [
    ["--metrics-token", "s3cret-token_0123"], ["--metrics-token=s3cret-token_0123"],
    ["--metrics-token"], ["--metrics-token="],
    ["--username", "alice", "--metrics-token", "s3cret-token_0123", "--no-sudo"]])
def test_the_metrics_token_on_the_command_line_is_refused(argv: list[str]) -> None:
    """Every process in the container reads every command line (/proc/PID/cmdline): the
    token goes in METRICS_TOKEN or the file METRICS_TOKEN_FILE names, never a flag."""
    with pytest.raises(ConfigError) as info:
        parse(argv, {"METRICS_TOKEN": "from-the-env-0123"})
    message = str(info.value)
    assert message.startswith("--metrics-token: a token on the command line is readable")
    assert "METRICS_TOKEN_FILE" in message
    assert "s3cret" not in message
    assert message.isprintable()


def test_idle_stop_is_off_by_default_and_zero_turns_it_off() -> None:
    assert parse([], {}).stop_when_idle == 0
    assert parse(["--stop-when-idle", "0"], {}).stop_when_idle == 0
    assert parse(["--stop-when-idle", "0.05"], {}).stop_when_idle == 0.05


def test_every_value_option_has_a_test_value() -> None:
    assert set(NON_DEFAULT) == {opt.dest for opt in VALUE_OPTIONS}


@pytest.mark.parametrize("opt", VALUE_OPTIONS, ids=lambda o: o.flag)
def test_value_flag(opt: config.Option) -> None:
    raw, expected = NON_DEFAULT[opt.dest]
    assert getattr(parse([opt.flag, raw], {}), opt.dest) == expected


@pytest.mark.parametrize("opt", VALUE_OPTIONS, ids=lambda o: o.env)
def test_value_env(opt: config.Option) -> None:
    raw, expected = NON_DEFAULT[opt.dest]
    assert getattr(parse([], {opt.env: raw}), opt.dest) == expected


@pytest.mark.parametrize("opt", VALUE_OPTIONS, ids=lambda o: o.flag)
def test_flag_beats_env(opt: config.Option) -> None:
    raw, expected = NON_DEFAULT[opt.dest]
    env_value = str(opt.default)
    assert getattr(parse([opt.flag, raw], {opt.env: env_value}), opt.dest) == expected


def test_flag_equals_form() -> None:
    cfg = parse(["--geometry=1024x768", "--depth=32"], {})
    assert (cfg.geometry, cfg.depth) == ("1024x768", 32)


@pytest.mark.parametrize("opt", BOOL_OPTIONS, ids=lambda o: o.flag)
def test_bool_flag(opt: config.Option) -> None:
    env = SECRETS
    assert getattr(parse([opt.flag], env), opt.dest) is True
    assert getattr(parse([], env), opt.dest) is False


@pytest.mark.parametrize("opt", BOOL_OPTIONS, ids=lambda o: o.env)
@pytest.mark.parametrize("word", ["1", "true", "yes", "on", "TRUE", " Yes ", "On"])
def test_bool_env_true_words(opt: config.Option, word: str) -> None:
    assert getattr(parse([], {opt.env: word, **SECRETS}), opt.dest) is True


@pytest.mark.parametrize("opt", BOOL_OPTIONS, ids=lambda o: o.env)
@pytest.mark.parametrize("word", ["0", "false", "no", "off", "FALSE", "Off", ""])
def test_bool_env_false_words(opt: config.Option, word: str) -> None:
    assert getattr(parse([], {opt.env: word}), opt.dest) is False


@pytest.mark.parametrize("opt", BOOL_OPTIONS, ids=lambda o: o.env)
@pytest.mark.parametrize("word", ["2", "maybe", "y", "enabled", "tru"])
def test_bool_env_invalid_word_names_the_variable(opt: config.Option, word: str) -> None:
    with pytest.raises(ConfigError, match=opt.env):
        parse([], {opt.env: word})


def test_bool_flag_beats_false_env() -> None:
    assert parse(["--no-sudo"], {"WHALETOP_NO_SUDO": "0"}).no_sudo is True
    assert parse(["--expose-vnc"], {"WHALETOP_EXPOSE_VNC": "off"}).expose_vnc is True


def test_bool_options_mean_what_they_say() -> None:
    cfg = parse(["--no-sudo", "--no-exit-on-failure"], {})
    assert cfg.sudo is False
    assert cfg.exit_on_failure is False


def test_environ_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHALETOP_WEB_PORT", "8181")
    assert parse([]).web_port == 8181


@pytest.mark.parametrize("argv", [["--bogus"], ["--no-sud"], ["--geometry"], ["positional"]])
def test_unknown_or_malformed_flag_is_config_error(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        parse(argv, {})


def test_bool_flag_takes_no_value() -> None:
    with pytest.raises(ConfigError, match="--no-sudo"):
        parse(["--no-sudo=1"], {})


# -- the desktop user -------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "root",
    "Alice",
    "ALICE",
    "1user",
    "a" * 33,
    "my user",
    "user;rm",
    "user.name",
    "",
    "daemon",
    "nobody",
])
def test_invalid_username_names_the_flag(name: str) -> None:
    with pytest.raises(ConfigError, match="--username"):
        parse(["--username", name], {})


def test_invalid_username_from_env_is_refused_too() -> None:
    with pytest.raises(ConfigError, match="--username"):
        parse([], {"WHALETOP_USERNAME": "root"})


def test_system_account_message_says_why() -> None:
    with pytest.raises(ConfigError, match="system account"):
        parse(["--username", "daemon"], {})


def test_root_message_says_why() -> None:
    with pytest.raises(ConfigError, match="root"):
        parse(["--username", "root"], {})


@pytest.mark.parametrize("name", ["a", "_svc", "dev-1", "x_y", "a" * 32, "alice"])
def test_valid_usernames(name: str) -> None:
    assert parse(["--username", name], {}).username == name


# -- the VNC password -------------------------------------------------------------------

def test_password_from_env() -> None:
    cfg = parse(["--vnc-password-from-env"], {"VNC_PASSWORD": "s3cret!"})
    assert cfg.vnc_password == "s3cret!"


def test_password_from_env_via_env_twin() -> None:
    cfg = parse([], {"WHALETOP_VNC_PASSWORD_FROM_ENV": "yes", "VNC_PASSWORD": "abcdef"})
    assert cfg.vnc_password == "abcdef"


def test_password_env_ignored_without_the_flag() -> None:
    assert parse([], {"VNC_PASSWORD": "abcdef"}).vnc_password is None


@pytest.mark.parametrize(("env", "why"), [
    ({}, "not"),
    ({"VNC_PASSWORD": ""}, "empty"),
    ({"VNC_PASSWORD": "abc"}, "shorter than 6"),
    ({"VNC_PASSWORD": "abcde"}, "shorter than 6"),
    ({"VNC_PASSWORD": "pässwörd"}, "ASCII"),
    ({"VNC_PASSWORD": "good\npass"}, "ASCII"),
    ({"VNC_PASSWORD": "tab\tpass"}, "ASCII"),
], ids=["missing", "empty", "3-chars", "5-chars", "non-ascii", "newline", "tab"])
def test_bad_password_names_the_variable(env: dict[str, str], why: str) -> None:
    with pytest.raises(ConfigError, match="VNC_PASSWORD") as info:
        parse(["--vnc-password-from-env"], env)
    assert why in str(info.value)


def test_password_of_six_printable_characters_is_enough() -> None:
    assert parse(["--vnc-password-from-env"], {"VNC_PASSWORD": "a b~!?"}).vnc_password == "a b~!?"


# -- the view-only VNC password ---------------------------------------------------------

def test_view_only_password_from_env() -> None:
    cfg = parse(["--view-only-password-from-env"], {"VNC_VIEW_ONLY_PASSWORD": "watch1"})
    assert cfg.view_only_password == "watch1"
    assert cfg.vnc_password is None, "the full-access password is still generated"


def test_view_only_password_from_env_via_env_twin() -> None:
    cfg = parse([], {"WHALETOP_VIEW_ONLY_PASSWORD_FROM_ENV": "1",
                     "VNC_VIEW_ONLY_PASSWORD": "watch1"})
    assert cfg.view_only_password == "watch1"


@pytest.mark.parametrize("view_only", ["secret12", "secret12-but-longer"])
def test_a_view_only_password_equal_to_the_full_one_is_refused(view_only: str) -> None:
    """VNC compares 8 characters: such a "view-only" password would give full access."""
    with pytest.raises(ConfigError, match="VNC_VIEW_ONLY_PASSWORD must differ from "
                                          "VNC_PASSWORD in its first 8 characters"):
        parse(["--vnc-password-from-env", "--view-only-password-from-env"],
              {"VNC_PASSWORD": "secret12", "VNC_VIEW_ONLY_PASSWORD": view_only})


def test_view_only_password_env_ignored_without_the_flag() -> None:
    assert parse([], {"VNC_VIEW_ONLY_PASSWORD": "watch1"}).view_only_password is None


@pytest.mark.parametrize(("env", "why"), [
    ({}, "--view-only-password-from-env is set but VNC_VIEW_ONLY_PASSWORD is not"),
    ({"VNC_VIEW_ONLY_PASSWORD": ""}, "empty"),
    ({"VNC_VIEW_ONLY_PASSWORD": "abcde"}, "shorter than 6"),
    ({"VNC_VIEW_ONLY_PASSWORD": "wätcher"}, "ASCII"),
    ({"VNC_VIEW_ONLY_PASSWORD": "watch\n1"}, "ASCII"),
], ids=["missing", "empty", "5-chars", "non-ascii", "newline"])
def test_bad_view_only_password_names_the_variable(env: dict[str, str], why: str) -> None:
    with pytest.raises(ConfigError, match="VNC_VIEW_ONLY_PASSWORD") as info:
        parse(["--view-only-password-from-env"], {"VNC_PASSWORD": "secret1", **env})
    assert why in str(info.value)
    assert "\n" not in str(info.value)


def test_view_only_password_error_does_not_blame_the_vnc_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse(["--view-only-password-from-env"], {"VNC_PASSWORD": "secret1"})
    assert "--vnc-password-from-env" not in str(info.value)
    assert not re.search(r"\bVNC_PASSWORD\b", str(info.value))


# -- sign-in ----------------------------------------------------------------------------

def test_no_sign_in_by_default() -> None:
    cfg = parse([], {"WEB_PASSWORD": "ignored without the flag"})
    assert cfg.sign_in is False
    assert cfg.web_password is None
    assert (cfg.sign_in_attempts, cfg.sign_in_lockout, cfg.connection_rate) == (10, 300.0, 60)
    assert cfg.trusted_proxies == []


def test_web_password_from_env() -> None:
    cfg = parse(["--web-password-from-env"], {"WEB_PASSWORD": "correct horse"})
    assert cfg.web_password == "correct horse"
    assert cfg.sign_in is True


def test_web_password_from_env_via_env_twin() -> None:
    cfg = parse([], {"WHALETOP_WEB_PASSWORD_FROM_ENV": "yes", "WEB_PASSWORD": "pässwörd"})
    assert cfg.web_password == "pässwörd", "hashed, not typed into VNC: any text will do"
    assert cfg.sign_in is True


@pytest.mark.parametrize(("env", "why"), [
    ({}, "--web-password-from-env is set but WEB_PASSWORD is not"),
    ({"WEB_PASSWORD": ""}, "shorter than 8"),
    ({"WEB_PASSWORD": "seven77"}, "shorter than 8"),
    ({"WEB_PASSWORD": "good\npassword"}, "control characters"),
    ({"WEB_PASSWORD": "tab\tpassword"}, "control characters"),
], ids=["missing", "empty", "7-chars", "newline", "tab"])
def test_bad_web_password_names_the_variable(env: dict[str, str], why: str) -> None:
    with pytest.raises(ConfigError, match="WEB_PASSWORD") as info:
        parse(["--web-password-from-env"], env)
    assert why in str(info.value)
    assert "\n" not in str(info.value)
    if env.get("WEB_PASSWORD"):
        assert env["WEB_PASSWORD"] not in str(info.value), "the password is not echoed"


def test_web_users_turns_sign_in_on() -> None:
    cfg = parse(["--web-users", "/data/users"], {})
    assert cfg.sign_in is True
    assert cfg.web_password is None
    assert parse([], {"WHALETOP_WEB_USERS": "/run/secrets/users"}).sign_in is True


@pytest.mark.parametrize("path", ["users", "./users", "~/users", "data/users"])
def test_web_users_must_be_absolute(path: str) -> None:
    with pytest.raises(ConfigError, match="--web-users") as info:
        parse(["--web-users", path], {})
    assert "absolute" in str(info.value)


def test_web_users_and_web_password_are_one_or_the_other() -> None:
    with pytest.raises(ConfigError, match="--web-users and --web-password-from-env"):
        parse(["--web-users", "/data/users", "--web-password-from-env"],
              {"WEB_PASSWORD": "correct horse"})


@pytest.mark.parametrize(("argv", "env", "name"), [
    (["--sign-in-attempts", "0"], {}, "--sign-in-attempts"),
    (["--sign-in-attempts", "-3"], {}, "--sign-in-attempts"),
    ([], {"WHALETOP_SIGN_IN_ATTEMPTS": "0"}, "--sign-in-attempts"),
    (["--sign-in-attempts", "many"], {}, "--sign-in-attempts"),
    ([], {"WHALETOP_SIGN_IN_ATTEMPTS": "1.5"}, "WHALETOP_SIGN_IN_ATTEMPTS"),
    (["--sign-in-lockout", "0"], {}, "--sign-in-lockout"),
    (["--sign-in-lockout", "-1"], {}, "--sign-in-lockout"),
    (["--sign-in-lockout", "nan"], {}, "--sign-in-lockout"),
    (["--sign-in-lockout", "inf"], {}, "--sign-in-lockout"),
    (["--sign-in-lockout", "86401"], {}, "--sign-in-lockout"),
    (["--sign-in-lockout", "0.5"], {}, "--sign-in-lockout"),
    (["--sign-in-attempts", "1001"], {}, "--sign-in-attempts"),
    ([], {"WHALETOP_SIGN_IN_LOCKOUT": "5m"}, "WHALETOP_SIGN_IN_LOCKOUT"),
    (["--connection-rate", "0"], {}, "--connection-rate"),
    (["--connection-rate", "6001"], {}, "--connection-rate"),
    ([], {"WHALETOP_CONNECTION_RATE": "-5"}, "--connection-rate"),
    ([], {"WHALETOP_CONNECTION_RATE": "lots"}, "WHALETOP_CONNECTION_RATE"),
])
def test_bad_sign_in_and_rate_values_name_their_origin(argv: list[str], env: dict[str, str],
                                                       name: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        parse(argv, env)
    assert "\n" not in str(info.value)


def test_sign_in_and_rate_bounds_are_accepted() -> None:
    cfg = parse(["--sign-in-attempts", "1", "--sign-in-lockout", "86400",
                 "--connection-rate", "1"], {})
    assert (cfg.sign_in_attempts, cfg.sign_in_lockout, cfg.connection_rate) == (1, 86400.0, 1)
    assert parse(["--connection-rate", "6000"], {}).connection_rate == 6000
    assert parse(["--sign-in-lockout", "1"], {}).sign_in_lockout == 1.0


# -- trusted proxies --------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("10.0.0.0/8", ["10.0.0.0/8"]),
    ("172.17.0.1", ["172.17.0.1"]),
    ("10.0.0.0/8, 192.168.1.0/24 ,fd00::/8", ["10.0.0.0/8", "192.168.1.0/24", "fd00::/8"]),
    ("::1", ["::1"]),
    ("10.1.2.3/8", ["10.1.2.3/8"]),  # host bits set: the network is meant
    (" , ", []),
    ("", []),
])
def test_trusted_proxies(raw: str, expected: list[str]) -> None:
    assert parse(["--trusted-proxy", raw], {}).trusted_proxies == expected
    assert parse([], {"WHALETOP_TRUSTED_PROXY": raw}).trusted_proxies == expected


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "proxy.example", "10.0.0.0/8;", "fd00::/129",
                                 "10.0.0.0/8,nonsense", "*", "10.0.0.0/8 10.1.0.0/16"])
def test_bad_trusted_proxy_is_named(bad: str) -> None:
    with pytest.raises(ConfigError, match="--trusted-proxy") as info:
        parse(["--trusted-proxy", bad], {})
    assert "CIDR" in str(info.value)
    assert "\n" not in str(info.value)


# -- TLS ------------------------------------------------------------------------------

def test_enable_tls() -> None:
    assert parse(["--enable-tls"], {}).tls is True
    assert parse([], {"WHALETOP_ENABLE_TLS": "yes"}).tls is True


def test_tls_certificate_implies_tls() -> None:
    cfg = parse(["--tls-certificate", "/data/cert.pem"], {})
    assert cfg.tls is True
    assert cfg.enable_tls is False


@pytest.mark.parametrize("path", ["cert.pem", "./cert.pem", "~/cert.pem", "data/cert.pem"])
def test_tls_certificate_must_be_absolute(path: str) -> None:
    with pytest.raises(ConfigError, match="--tls-certificate"):
        parse(["--tls-certificate", path], {})


def test_tls_key_password_from_env_only() -> None:
    cfg = parse(["--tls-certificate", "/data/cert.pem"], {"TLS_KEY_PASSWORD": "pässword"})
    assert cfg.tls_key_password == "pässword".encode()
    assert parse([], {"TLS_KEY_PASSWORD": ""}).tls_key_password is None


# -- display and ports ------------------------------------------------------------------

@pytest.mark.parametrize("geometry", ["1280x800", "800x600", "3840x2160", "10000x10000"])
def test_valid_geometry(geometry: str) -> None:
    assert parse(["--geometry", geometry], {}).geometry == geometry


@pytest.mark.parametrize("geometry", ["1280", "1280X800", "1280x", "x800", "12x8", "1280x800x24",
                                      "-1280x800", "1280 x 800", "big"])
def test_invalid_geometry_names_the_flag(geometry: str) -> None:
    with pytest.raises(ConfigError, match="--geometry"):
        parse(["--geometry", geometry], {})


@pytest.mark.parametrize("depth", ["16", "24", "32"])
def test_valid_depth(depth: str) -> None:
    assert parse(["--depth", depth], {}).depth == int(depth)


@pytest.mark.parametrize("depth", ["8", "15", "0", "-24"])
def test_invalid_depth_names_the_flag(depth: str) -> None:
    with pytest.raises(ConfigError, match="--depth"):
        parse(["--depth", depth], {})


@pytest.mark.parametrize(("argv", "env", "name"), [
    (["--depth", "deep"], {}, "--depth"),
    ([], {"WHALETOP_DEPTH": "deep"}, "WHALETOP_DEPTH"),
    (["--web-port", "http"], {}, "--web-port"),
    ([], {"WHALETOP_VNC_PORT": "5901.5"}, "WHALETOP_VNC_PORT"),
    (["--probe-interval", "soon"], {}, "--probe-interval"),
    ([], {"WHALETOP_STARTUP_TIMEOUT": "1m"}, "WHALETOP_STARTUP_TIMEOUT"),
])
def test_unparsable_number_names_its_origin(argv: list[str], env: dict[str, str],
                                            name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        parse(argv, env)


@pytest.mark.parametrize("flag", ["--web-port", "--vnc-port"])
@pytest.mark.parametrize("port", ["0", "65536", "-1", "100000"])
def test_port_out_of_range_names_the_flag(flag: str, port: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        parse([flag, port], {})


def test_port_bounds_are_accepted() -> None:
    cfg = parse(["--web-port", "1", "--vnc-port", "65535"], {})
    assert (cfg.web_port, cfg.vnc_port) == (1, 65535)


def test_web_and_vnc_port_must_differ_when_vnc_is_exposed() -> None:
    with pytest.raises(ConfigError, match="--web-port and --vnc-port"):
        parse(["--expose-vnc", "--web-port", "5901"], {})
    with pytest.raises(ConfigError, match="--web-port and --vnc-port"):
        parse([], {"WHALETOP_VNC_PORT": "8080", "WHALETOP_EXPOSE_VNC": "1"})


def test_vnc_port_is_not_a_tcp_port_without_expose_vnc() -> None:
    """Xvnc listens on a UNIX socket only: --vnc-port cannot clash with the web port."""
    cfg = parse(["--web-port", "5901"], {})
    assert cfg.web_port == cfg.vnc_port == 5901


@pytest.mark.parametrize("flag", ["--probe-interval", "--probe-timeout", "--startup-timeout"])
@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_seconds_must_be_positive(flag: str, seconds: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        parse([flag, seconds], {})


@pytest.mark.parametrize("flag", ["--probe-interval", "--probe-timeout", "--startup-timeout"])
def test_seconds_must_be_finite(flag: str) -> None:
    """Infinity passes `> 0`, but threading and socket timeouts overflow on it
    (OverflowError: timestamp out of range): the prober thread or the startup timer
    would die, and the desktop would never be judged healthy or unhealthy again."""
    with pytest.raises(ConfigError, match=flag):
        parse([flag, "inf"], {})


@pytest.mark.parametrize("fmt", ["xml", "JSON", "text"])
def test_invalid_log_format_names_the_flag(fmt: str) -> None:
    with pytest.raises(ConfigError, match="--log-format"):
        parse(["--log-format", fmt], {})


def test_config_is_immutable() -> None:
    cfg = parse([], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.username = "other"  # type: ignore[misc]


# -- every bad input: one line naming its origin ------------------------------------------

NOT_UTF8 = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python hands over Latin-1
ARABIC_INDIC_123 = "\u0661\u0662\u0663"  # int() reads these as 123
FULLWIDTH_123 = "\uff11\uff12\uff13"
INT_OPTIONS = [opt for opt in OPTIONS if opt.kind is int]
FLOAT_OPTIONS = [opt for opt in OPTIONS if opt.kind is float]


def _refused(argv: list[str], env: dict[str, str], name: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(argv, env)
    message = str(info.value)
    assert name in message
    assert message.isprintable(), "one printable line"
    message.encode("utf-8")  # a log or status file can carry it
    return message


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.env)
def test_an_option_variable_that_is_not_utf8_is_named(opt: config.Option) -> None:
    message = _refused([], {opt.env: NOT_UTF8}, opt.env)
    assert "not UTF-8" in message


@pytest.mark.parametrize("opt", VALUE_OPTIONS, ids=lambda o: o.flag)
def test_a_flag_value_that_is_not_utf8_is_named(opt: config.Option) -> None:
    _refused([opt.flag, NOT_UTF8], {}, opt.flag)


@pytest.mark.parametrize(("flag", "name"), [
    ("--vnc-password-from-env", "VNC_PASSWORD"),
    ("--view-only-password-from-env", "VNC_VIEW_ONLY_PASSWORD"),
    ("--web-password-from-env", "WEB_PASSWORD"),
    ("--enable-tls", "TLS_KEY_PASSWORD"),
])
def test_a_password_that_is_not_utf8_is_named_not_shown(flag: str, name: str) -> None:
    """Today's traceback (UnicodeEncodeError, exit 1) becomes FAILED with this line."""
    secret = "secret" + NOT_UTF8 + "word"
    message = _refused([flag], {**SECRETS, name: secret}, name)
    assert "not UTF-8" in message
    assert "secret" not in message
    assert "caf" not in message


@pytest.mark.parametrize("name", ["alice\n", "alice\r\n", "\nalice", "al\nice"])
def test_a_username_with_a_newline_is_refused(name: str) -> None:
    """`$` matches before a final newline: the whole name must match."""
    _refused(["--username", name], {}, "--username")
    _refused([], {"WHALETOP_USERNAME": name}, "--username")


@pytest.mark.parametrize("opt", INT_OPTIONS + FLOAT_OPTIONS, ids=lambda o: o.flag)
@pytest.mark.parametrize("raw", [ARABIC_INDIC_123, FULLWIDTH_123, "1_000", "1e3", "0x10",
                                 "nan", "inf", "Infinity", "", " ", "--", "5-", "9" * 30,
                                 "1.5.5"])
def test_numbers_are_ascii_digits_only(opt: config.Option, raw: str) -> None:
    """int() and float() read other scripts' digits, '_' and exponents; a flag reads
    what a person can check by eye, and its twin the same."""
    _refused([f"{opt.flag}={raw}"], {}, opt.flag)
    _refused([], {opt.env: raw}, opt.env)


@pytest.mark.parametrize(("opt", "raw", "expected"), [
    (OPTION["web_port"], " 9090\n", 9090),
    (OPTION["probe_timeout"], "1.", 1.0),
    (OPTION["probe_timeout"], ".5", 0.5),
    (OPTION["startup_timeout"], "90.25", 90.25),
], ids=lambda v: repr(v) if isinstance(v, str) else "")
def test_plain_numbers_with_ascii_space_are_read(opt: config.Option, raw: str,
                                                 expected: float) -> None:
    assert getattr(parse([], {opt.env: raw}), opt.dest) == expected


@pytest.mark.parametrize("geometry", ["0x0", "1x1", "63x800", "800x63", "16385x800",
                                      "800x16385", "99999x99999", ARABIC_INDIC_123 + "0x800",
                                      "1280x800\n", "1280x800 ", "+1280x800", "1280x-800"])
def test_geometry_beyond_what_xvnc_and_browsers_carry_is_refused(geometry: str) -> None:
    _refused(["--geometry", geometry], {}, "--geometry")
    _refused([], {"WHALETOP_GEOMETRY": geometry}, "--geometry")


@pytest.mark.parametrize("geometry", ["64x64", "16384x16384", "16384x64", "1366x768"])
def test_geometry_bounds_are_accepted(geometry: str) -> None:
    assert parse(["--geometry", geometry], {}).geometry == geometry


@pytest.mark.parametrize(("flag", "too_short", "least"), [
    ("--probe-interval", "0.49", "0.5"),
    ("--probe-interval", "0.000000000000001", "0.5"),
    ("--probe-timeout", "0.09", "0.1"),
    ("--startup-timeout", "0.9", "1"),
    ("--sign-in-lockout", "0.99", "1"),
])
def test_each_timer_has_a_least_value(flag: str, too_short: str, least: str) -> None:
    """A probe interval of 1e-300 s was a busy loop."""
    message = _refused([flag, too_short], {}, flag)
    assert f"between {least} and 86400 seconds" in message
    dest = flag[2:].replace("-", "_")
    assert getattr(parse([flag, least], {}), dest) == float(least)
    assert f"at least {least}" in OPTION[dest].help


@pytest.mark.parametrize("opt", FLOAT_OPTIONS, ids=lambda o: o.flag)
@pytest.mark.parametrize("raw", ["-1", "-0.5", "86400.5", "999999999999999"])
def test_timers_out_of_range_are_refused(opt: config.Option, raw: str) -> None:
    _refused([opt.flag, raw], {}, opt.flag)


@pytest.mark.parametrize(("flag", "name", "password"), [
    ("--vnc-password-from-env", "VNC_PASSWORD", " " * 6),
    ("--vnc-password-from-env", "VNC_PASSWORD", " " * 12),
    ("--vnc-password-from-env", "VNC_PASSWORD", " " * 8 + "real"),
    ("--view-only-password-from-env", "VNC_VIEW_ONLY_PASSWORD", " " * 6),
    ("--web-password-from-env", "WEB_PASSWORD", " " * 8),
    ("--web-password-from-env", "WEB_PASSWORD", "\u3000" * 8),
])
def test_a_blank_password_is_refused(flag: str, name: str, password: str) -> None:
    """VNC compares 8 characters: eight spaces and then anything is a blank password."""
    message = _refused([flag], {**SECRETS, name: password}, name)
    assert "blank" in message


def test_a_password_with_spaces_inside_is_fine() -> None:
    cfg = parse(["--vnc-password-from-env", "--web-password-from-env"],
                {"VNC_PASSWORD": "  ab  cd", "WEB_PASSWORD": " correct horse "})
    assert (cfg.vnc_password, cfg.web_password) == ("  ab  cd", " correct horse ")


@pytest.mark.parametrize("password", ["del\x7fpassword", "c1\x85password"])
def test_web_password_control_characters_beyond_ascii_are_refused(password: str) -> None:
    message = _refused(["--web-password-from-env"], {"WEB_PASSWORD": password},
                       "WEB_PASSWORD")
    assert "control characters" in message


def test_web_password_longer_than_libxcrypt_hashes_is_refused() -> None:
    ok = parse(["--web-password-from-env"], {"WEB_PASSWORD": "ä" * 256})
    assert ok.web_password == "ä" * 256
    message = _refused(["--web-password-from-env"], {"WEB_PASSWORD": "ä" * 256 + "x"},
                       "WEB_PASSWORD")
    assert "longer than 512 bytes" in message


SYSTEM_GROUPS = sorted((g.gr_gid, g.gr_name) for g in grp.getgrall() if 0 < g.gr_gid < 1000)


@pytest.mark.parametrize(("gid", "name"), SYSTEM_GROUPS, ids=[n for _, n in SYSTEM_GROUPS])
def test_gid_of_a_system_group_is_refused(gid: int, name: str) -> None:
    """--gid 42 --no-sudo gave the desktop user the shadow group (the password hashes)."""
    message = _refused(["--gid", str(gid), "--no-sudo"], {}, "--gid")
    assert repr(name) in message
    assert "1000 or more" in message
    _refused([], {"WHALETOP_GID": str(gid)}, "--gid")


def test_system_groups_the_issue_named_are_among_them() -> None:
    names = {name for _, name in SYSTEM_GROUPS}
    assert {"adm", "sudo", "shadow"} <= names, "a Debian host: the test covers them"


@pytest.mark.parametrize("gid", ["1000", "2345", "59999", "60001"])
def test_gid_of_a_user_group_or_none_is_accepted(gid: str) -> None:
    assert parse(["--gid", gid], {}).gid == int(gid)


@pytest.mark.parametrize("proxy", ["fe80::1%eth0", "fe80::1%a;b", "fe80::%x/64",
                                   "fe80::1%a\nset_real_ip_from 0.0.0.0/0"])
def test_trusted_proxy_with_a_zone_is_refused(proxy: str) -> None:
    """A zone is free text that would reach nginx's configuration as given."""
    _refused(["--trusted-proxy", proxy], {}, "--trusted-proxy")


@pytest.mark.parametrize("flag", ["--tls-certificate", "--web-users"])
@pytest.mark.parametrize("path", ["/data/cert\n.pem", "/data/\x1b[31mred", "/data/\u202eevil"])
def test_paths_with_unprintable_characters_are_refused(flag: str, path: str) -> None:
    _refused([flag, path], {}, flag)


@pytest.mark.parametrize("argv", [["--bo\ngus"], ["--no-sudo", "extra\r\nline"],
                                  ["--geometry"], ["--\udcff"]])
def test_argparse_errors_are_one_printable_line(argv: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse(argv, {})
    assert str(info.value).isprintable()


def test_long_values_are_cut_short_in_messages() -> None:
    message = _refused(["--log-format", "x" * 100_000], {}, "--log-format")
    assert len(message) < 200
