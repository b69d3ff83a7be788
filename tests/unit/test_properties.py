"""Any input, not only the inputs someone thought of: flags, environment variables and
`.desktop` files end in a clean value or the module's one-line refusal, never in
another exception (a traceback, exit 1, instead of FAILED, exit 2)."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from whaletopd import apps_scan, config
from whaletopd.config import OPTIONS, Config, ConfigError

# Modest: the whole file runs in seconds.  No example database in the work tree.
SETTINGS = settings(max_examples=250, deadline=None, database=None)

# Every character, lone surrogates too: Python hands bytes that are not UTF-8 (argv,
# environ) over as surrogates.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)
UNDECODED = st.binary(max_size=30).map(lambda b: b.decode("utf-8", "surrogateescape"))
NEAR_MISSES = st.sampled_from([
    "", " ", "-", "--", "=", "0", "-1", "1e-300", "1e308", "nan", "-inf", "Infinity",
    "\u0661\u0662\u0663", "1_000", "0x10", "65536", "99999999999999999999", "1280x800",
    "0x0", "16385x800", "64x64", "1280x800\n", "alice\n", "root", "/data/cert.pem",
    "fe80::1%eth0", "10.0.0.0/8", "json", "console", "yes", "off", " " * 8, "secret12",
])
VALUES = st.one_of(
    NEAR_MISSES, ANY_TEXT, UNDECODED,
    st.integers().map(str),
    st.floats().map(str),
    st.from_regex(r"-?[0-9]{1,6}x[0-9]{1,6}", fullmatch=True),
    st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){3}(/[0-9]{1,3})?", fullmatch=True),
)
FLAGS = st.sampled_from([opt.flag for opt in OPTIONS])
FLAG_VALUE = st.tuples(FLAGS, VALUES)
ARGS = st.one_of(  # mostly flags with values: stray words only reach argparse's refusal
    FLAGS.map(lambda f: [f]),
    FLAG_VALUE.map(list),
    FLAG_VALUE.map(lambda fv: [f"{fv[0]}={fv[1]}"]),
    FLAG_VALUE.map(lambda fv: [f"{fv[0]}={fv[1]}"]),
    VALUES.map(lambda v: [v]),
)
ARGV = st.lists(ARGS, max_size=4).map(lambda parts: [a for part in parts for a in part])
NAMES = st.sampled_from([opt.env for opt in OPTIONS] + [
    config.VNC_PASSWORD_ENV, config.VIEW_ONLY_PASSWORD_ENV, config.WEB_PASSWORD_ENV,
    config.TLS_KEY_PASSWORD_ENV])
ENVIRON = st.dictionaries(st.one_of(NAMES, ANY_TEXT), VALUES, max_size=8)
# The *-from-env flags, on with a usable password, so the rest of the input is reached.
SWITCHES = st.dictionaries(
    st.sampled_from(["WHALETOP_VNC_PASSWORD_FROM_ENV", "WHALETOP_WEB_PASSWORD_FROM_ENV",
                     "WHALETOP_VIEW_ONLY_PASSWORD_FROM_ENV"]),
    st.just("1"))
PASSWORDS = {config.VNC_PASSWORD_ENV: "secret12", config.VIEW_ONLY_PASSWORD_ENV: "watcher1",
             config.WEB_PASSWORD_ENV: "correct horse"}


def _asks_for_help(argv: list[str]) -> bool:
    """-h and --help print the help and exit 0, as they should."""
    return any(a.startswith("-h") or a.split("=")[0] == "--help" for a in argv)


def assert_one_line(message: str) -> None:
    assert message
    assert message.isprintable(), repr(message)  # no newline, no escape sequence
    message.encode("utf-8")  # no lone surrogate: a log line or status file can hold it
    assert len(message) < 400


def assert_clean(cfg: Config) -> None:
    """What parse() hands the daemon holds no value the issue's inputs could sneak in."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, str):
            value.encode("utf-8")
        if isinstance(value, float):
            assert math.isfinite(value)
            if field.name == "stop_when_idle":  # minutes; 0 is off
                assert value == 0 or (config.MIN_IDLE_MINUTES <= value
                                      <= config.MAX_IDLE_MINUTES)
            else:
                assert 0.1 <= value <= config.MAX_SECONDS
    assert config.USERNAME_RE.fullmatch(cfg.username)
    width, height = (int(side) for side in cfg.geometry.split("x"))
    assert config.MIN_SIDE <= width <= config.MAX_SIDE
    assert config.MIN_SIDE <= height <= config.MAX_SIDE
    assert 1 <= cfg.web_port <= 65535
    assert 1 <= cfg.vnc_port <= 65535
    for ident in (cfg.uid, cfg.gid):
        assert ident is None or 1 <= ident <= 65533
    assert cfg.gid is None or config.system_group(cfg.gid) is None
    for proxy in cfg.trusted_proxies:
        assert "%" not in str(ipaddress.ip_network(proxy, strict=False))
    for path in (cfg.tls_certificate, cfg.web_users):
        assert not path or (path.startswith("/") and path.isprintable())
    for password in (cfg.vnc_password, cfg.view_only_password, cfg.web_password):
        assert password is None or password.strip()
    if cfg.tls_key_password is not None:
        cfg.tls_key_password.decode("utf-8")


def parse_or_refuse(argv: list[str], environ: dict[str, str]) -> None:
    try:
        cfg = config.parse(argv, environ)
    except ConfigError as exc:
        assert_one_line(str(exc))
    else:
        assert_clean(cfg)


# -- flags and environment --------------------------------------------------------------

@SETTINGS
@given(argv=ARGV)
def test_any_flags_parse_or_are_refused_in_one_line(argv: list[str]) -> None:
    assume(not _asks_for_help(argv))
    parse_or_refuse(argv, PASSWORDS)


@SETTINGS
@given(environ=ENVIRON, switches=SWITCHES)
def test_any_environment_parses_or_is_refused_in_one_line(environ: dict[str, str],
                                                          switches: dict[str, str]) -> None:
    parse_or_refuse([], {**PASSWORDS, **switches, **environ})


@SETTINGS
@given(name=NAMES, value=VALUES)
def test_any_one_variable_parses_or_is_refused_in_one_line(name: str, value: str) -> None:
    """Each variable alone, every *-from-env switch on: nothing else refuses first."""
    switches = {"WHALETOP_VNC_PASSWORD_FROM_ENV": "1", "WHALETOP_WEB_PASSWORD_FROM_ENV": "1",
                "WHALETOP_VIEW_ONLY_PASSWORD_FROM_ENV": "1"}
    parse_or_refuse([], {**PASSWORDS, **switches, name: value})


@SETTINGS
@given(argv=ARGV, environ=ENVIRON)
def test_any_flags_and_environment_together(argv: list[str], environ: dict[str, str]) -> None:
    assume(not _asks_for_help(argv))
    parse_or_refuse(argv, environ)


@SETTINGS
@given(opt=st.sampled_from([o for o in OPTIONS if o.kind is not bool]), value=VALUES)
def test_every_value_option_from_flag_and_variable_alike(opt: config.Option,
                                                         value: str) -> None:
    """A flag and its twin accept and refuse the same values."""
    outcomes = []
    for argv, environ in (([f"{opt.flag}={value}"], {}), ([], {opt.env: value})):
        try:
            outcomes.append(getattr(config.parse(argv, environ), opt.dest))
        except ConfigError as exc:
            assert_one_line(str(exc))
            outcomes.append(ConfigError)
    if value.startswith("-") and outcomes[0] is ConfigError:
        return  # `--flag=-x` and `-x` as a value read differently in argparse; fine
    assert outcomes[0] == outcomes[1]


@SETTINGS
@given(name=st.sampled_from([config.VNC_PASSWORD_ENV, config.VIEW_ONLY_PASSWORD_ENV,
                             config.WEB_PASSWORD_ENV]),
       password=st.one_of(ANY_TEXT, UNDECODED, st.text(" \t\u3000", max_size=12)))
def test_passwords_are_taken_clean_or_refused_without_being_shown(name: str,
                                                                  password: str) -> None:
    flag = {config.VNC_PASSWORD_ENV: "--vnc-password-from-env",
            config.VIEW_ONLY_PASSWORD_ENV: "--view-only-password-from-env",
            config.WEB_PASSWORD_ENV: "--web-password-from-env"}[name]
    env = {config.VNC_PASSWORD_ENV: "other-pw", name: password}
    try:
        cfg = config.parse([flag], env)
    except ConfigError as exc:
        message = str(exc)
    else:
        assert_clean(cfg)
        return
    assert_one_line(message)
    assert name in message
    assert config.show(password) not in message, "a refused password is not echoed"


# -- .desktop files ---------------------------------------------------------------------

LINE_ENDS = st.sampled_from(["\n", "\r\n", "\r", "\x85", "\u2028", "\x0b", "\x1c"])
KEYS = st.sampled_from(["Name", "Exec", "Type", "Name[de]", " Name ", "Exec ", "=", ""])
LINES = st.one_of(
    st.sampled_from(["[Desktop Entry]", "  [Desktop Entry]  ", "[Desktop Action x]",
                     "[Desktop Entry", "[]", "[a]b]", "# comment", "", "Type=Application",
                     "Type=Link", "Name=App", "Exec=app", "Exec=", "Name="]),
    st.tuples(KEYS, ANY_TEXT).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(["[", "#", ""]), ANY_TEXT).map("".join),
    ANY_TEXT,
)


def _encoded(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates: bytes not UTF-8


BODIES = st.lists(st.tuples(LINES, LINE_ENDS), max_size=12).map(
    lambda lines: "".join(line + end for line, end in lines))
ENTRIES = st.one_of(
    st.binary(max_size=300),
    BODIES.map(_encoded),
    BODIES.map(lambda body: _encoded("[Desktop Entry]\n" + body)),
)


def assert_reason(reason: str | None) -> None:
    if reason is not None:
        assert_one_line(reason)


@SETTINGS
@given(data=ENTRIES)
def test_any_desktop_file_is_valid_or_skipped_with_one_line(data: bytes) -> None:
    reason = apps_scan.check_entry(data)
    assert_reason(reason)
    if reason is None:
        assert b"[Desktop Entry]" in data


@settings(max_examples=100, deadline=None, database=None)
@given(data=ENTRIES)
def test_any_desktop_file_on_disk_is_valid_or_skipped_with_one_line(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        path = root / "app.desktop"
        path.write_bytes(data)
        assert apps_scan.validate(path, root, max_bytes=256) == (
            apps_scan.check_entry(data) if len(data) <= 256 else "larger than 256 bytes")


def test_line_breaks_other_than_newline_do_not_split_an_entry() -> None:
    """GLib, which the menu reads entries with, ends lines at "\\n" only: an Exec= after a
    U+2028 or a form feed is part of the Name, and the entry has no Exec."""
    for sep in ("\u2028", "\x0c", "\x1c", "\x85"):
        assert apps_scan.check_entry(
            f"[Desktop Entry]\nName=App{sep}Exec=app\n".encode()) == "no Exec="
    assert apps_scan.check_entry(b"[Desktop Entry]\r\nName=App\r\nExec=app\r\n") is None


def test_the_last_of_duplicate_keys_counts() -> None:
    """As in GLib: the later value replaces the earlier."""
    assert apps_scan.check_entry(b"[Desktop Entry]\nName=App\nExec=app\nExec=\n") == "no Exec="
    assert apps_scan.check_entry(b"[Desktop Entry]\nName=App\nExec=\nExec=app\n") is None


def test_lines_glib_refuses_make_the_entry_invalid() -> None:
    assert apps_scan.check_entry(b"[Desktop Entry]\nName=App\nExec=app\njunk\n") == (
        "line 4 is not a key=value, [group] or # comment")
    assert apps_scan.check_entry(b"[Desktop Entry]\nName=App\nExec=app\n[Bad\n") == (
        "line 4 is not a valid [group] header")
    assert apps_scan.check_entry(b"Name=App\n[Desktop Entry]\nName=App\nExec=app\n") == (
        "line 1 is a key before the first [group]")


def test_a_hostile_type_is_shown_short_and_escaped() -> None:
    reason = apps_scan.check_entry(
        b"[Desktop Entry]\nName=A\nExec=a\nType=\x1b[31mX" + b"y" * 500 + b"\n")
    assert reason is not None
    assert_one_line(reason)
    assert "\\x1b" in reason
    assert len(reason) < 120

