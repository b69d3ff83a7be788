"""Flags and their environment twins, parsed and validated into one immutable Config.

A flag beats its environment variable; the environment beats the default.  Every
problem is a ConfigError whose message names the flag or variable at fault.

Each secret variable (SECRET_VARIABLES) has a NAME_FILE twin, the convention of Docker's
official images, for Docker and Kubernetes secrets mounted as files: the file's content
stands for NAME and meets NAME's rules.  No secret has a flag that takes it: a command
line is readable by every process in the container (/proc/PID/cmdline).
"""

from __future__ import annotations

import argparse
import functools
import grp
import ipaddress
import math
import os
import pwd
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from whaletopd import keyboard
from whaletopd.files import ReadRefused, read_regular

# Debian's split: below 1000 and from 60000 (nobody is 65534) belong to the system.
MIN_USER_UID = 1000
MAX_USER_UID = 59999
VNC_PASSWORD_ENV = "VNC_PASSWORD"
VIEW_ONLY_PASSWORD_ENV = "VNC_VIEW_ONLY_PASSWORD"
WEB_PASSWORD_ENV = "WEB_PASSWORD"
TLS_KEY_PASSWORD_ENV = "TLS_KEY_PASSWORD"
METRICS_TOKEN_ENV = "METRICS_TOKEN"
# Each may instead be read from the file that NAME_FILE names.
SECRET_VARIABLES = (VNC_PASSWORD_ENV, VIEW_ONLY_PASSWORD_ENV, WEB_PASSWORD_ENV,
                    TLS_KEY_PASSWORD_ENV, METRICS_TOKEN_ENV)
FILE_SUFFIX = "_FILE"
# A password or token is a line; anything larger is the wrong file.
MAX_SECRET_FILE = 64 * 1024
# What Debian's useradd accepts, narrowed to names that need no quoting anywhere.
USERNAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# ASCII digits only: int() and float() also take other scripts' digits ('١٢٣'), '_',
# exponents ('1e-300') and words ('nan', 'inf').  Used with fullmatch().
GEOMETRY_RE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")
INT_RE = re.compile(r"-?[0-9]{1,18}")
FLOAT_RE = re.compile(r"-?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})")
ASCII_SPACE = " \t\n\r\v\f"
# Xvnc's RandR accepts 32..32768, RFB carries 16 bits, and browsers draw a canvas of at
# most 16384 x 16384; below 64 pixels no desktop is usable.
MIN_SIDE, MAX_SIDE = 64, 16384
# Timers and socket timeouts overflow on infinite or huge values; a day is plenty.
MAX_SECONDS = 86400.0
# The least each timer may be: below these the daemon would spin (a probe round every
# microsecond) or judge a desktop before it could have answered.
MIN_SECONDS = {"probe_interval": 0.5, "probe_full_interval": 0.5, "probe_timeout": 0.1,
               "startup_timeout": 1.0,
               "sign_in_lockout": 1.0}
MAX_SIGN_IN_ATTEMPTS = 1000
# What libxcrypt hashes (webusers.MAX_PASSWORD).
MAX_WEB_PASSWORD_BYTES = 512
# VNC authentication compares only this many characters of a password.
VNC_PASSWORD_CHARS = 8
# --stop-when-idle: from a few seconds (tests, demos) to a week.
MIN_IDLE_MINUTES, MAX_IDLE_MINUTES = 0.05, 10080.0
# The flag the token once had, now refused: see _parse.
METRICS_FLAG = "--metrics-token"
METRICS_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
# --max-upload: a byte count with an optional 1024-based unit; at most 1 TiB.
SIZE_RE = re.compile(r"([0-9]{1,13})([KMGkmg]?)")
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
MAX_UPLOAD_LIMIT = 1024**4
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


class ConfigError(ValueError):
    """A flag, variable or value the desktop cannot start with.  Its message is one
    printable line, whatever the input held (argparse echoes arguments as given)."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """`text` with every unprintable character escaped: control characters and line
    separators (a log line stays one line), lone surrogates (bytes that were not UTF-8,
    which no encoder takes), bidirectional overrides."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def show(value: str, limit: int = 64) -> str:
    """A value for a message: quoted, escaped and cut short."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + "..."


def _not_utf8(value: str) -> bool:
    """Python hands bytes that are not UTF-8 over as lone surrogates."""
    return any("\ud800" <= c <= "\udfff" for c in value)


@dataclass(frozen=True)
class Option:
    flag: str
    env: str
    kind: type
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("--username", "WHALETOP_USERNAME", str, "user",
           "name of the desktop user (created on first start)"),
    Option("--uid", "WHALETOP_UID", int, None,
           "uid of the desktop user (default: the mounted home's owner, else 1000)"),
    Option("--gid", "WHALETOP_GID", int, None,
           "gid of the desktop user's group (default: the mounted home's group, else the uid)"),
    Option("--no-sudo", "WHALETOP_NO_SUDO", bool, False,
           "do not give the desktop user password-less sudo"),
    Option("--vnc-password-from-env", "WHALETOP_VNC_PASSWORD_FROM_ENV", bool, False,
           f"take the VNC password from ${VNC_PASSWORD_ENV} instead of generating one"),
    Option("--view-only-password-from-env", "WHALETOP_VIEW_ONLY_PASSWORD_FROM_ENV", bool, False,
           f"a second VNC password, ${VIEW_ONLY_PASSWORD_ENV}, that can only watch"),
    Option("--web-password-from-env", "WHALETOP_WEB_PASSWORD_FROM_ENV", bool, False,
           f"sign-in page: --username signs in with ${WEB_PASSWORD_ENV}"),
    Option("--web-users", "WHALETOP_WEB_USERS", str, "",
           "sign-in page: people and hashed passwords (htpasswd format, role full or "
           "viewer), reloaded when the file changes"),
    Option("--sign-in-attempts", "WHALETOP_SIGN_IN_ATTEMPTS", int, 10,
           "failed sign-ins from one address before it is refused for --sign-in-lockout "
           f"(1 to {MAX_SIGN_IN_ATTEMPTS})"),
    Option("--sign-in-lockout", "WHALETOP_SIGN_IN_LOCKOUT", float, 300.0,
           "seconds an address that failed too often is refused "
           f"(at least {MIN_SECONDS['sign_in_lockout']:g})"),
    Option("--connection-rate", "WHALETOP_CONNECTION_RATE", int, 60,
           "new desktop connections per minute from one address (a burst of 20 more is "
           "slowed, then refused)"),
    Option("--trusted-proxy", "WHALETOP_TRUSTED_PROXY", str, "",
           "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed"),
    Option("--no-exit-on-failure", "WHALETOP_NO_EXIT_ON_FAILURE", bool, False,
           "stay up in UNHEALTHY instead of stopping, so files can be recovered"),
    Option("--enable-tls", "WHALETOP_ENABLE_TLS", bool, False,
           "serve the web page over HTTPS only (self-signed unless --tls-certificate)"),
    Option("--tls-certificate", "WHALETOP_TLS_CERTIFICATE", str, "",
           "combined PEM (certificate + private key) for HTTPS; implies --enable-tls"),
    Option("--geometry", "WHALETOP_GEOMETRY", str, "1280x800",
           f"initial desktop size WIDTHxHEIGHT, each {MIN_SIDE} to {MAX_SIDE} (the browser "
           "can resize it)"),
    Option("--depth", "WHALETOP_DEPTH", int, 24, "colour depth: 16, 24 or 32"),
    Option("--keyboard-layout", "WHALETOP_KEYBOARD_LAYOUT", str, "us",
           "the session's keyboard layout, as xkb-data names it: LAYOUT or "
           "LAYOUT(VARIANT), e.g. de, fr, gb, de(nodeadkeys); the person's own, since the "
           "browser sends physical keys"),
    Option("--dpi", "WHALETOP_DPI", int, keyboard.DEFAULT_DPI,
           f"screen density for fonts and panels, {keyboard.MIN_DPI} to {keyboard.MAX_DPI} "
           "(192 for a 2x screen)"),
    Option("--web-port", "WHALETOP_WEB_PORT", int, 8080, "port of the noVNC web page"),
    Option("--vnc-port", "WHALETOP_VNC_PORT", int, 5901,
           "port of the raw VNC server, with --expose-vnc"),
    Option("--expose-vnc", "WHALETOP_EXPOSE_VNC", bool, False,
           "also serve raw VNC on TCP --vnc-port, all interfaces (default: no TCP, only "
           "the web port)"),
    Option("--probe-interval", "WHALETOP_PROBE_INTERVAL", float, 10.0,
           "seconds between health checks once HEALTHY "
           f"(at least {MIN_SECONDS['probe_interval']:g})"),
    Option("--probe-full-interval", "WHALETOP_PROBE_FULL_INTERVAL", float, 300.0,
           "seconds between full health checks once HEALTHY (a VNC login through nginx "
           "and websockify, and noVNC's page); the checks every --probe-interval in "
           "between are cheap ones (the X server answers, the web port accepts), and a "
           "failed cheap check runs a full one at once "
           f"(at least {MIN_SECONDS['probe_full_interval']:g})"),
    Option("--probe-timeout", "WHALETOP_PROBE_TIMEOUT", float, 2.0,
           "seconds one health check may take before it counts as failed "
           f"(at least {MIN_SECONDS['probe_timeout']:g})"),
    Option("--startup-timeout", "WHALETOP_STARTUP_TIMEOUT", float, 60.0,
           "seconds allowed from start to HEALTHY before the desktop is UNHEALTHY "
           f"(at least {MIN_SECONDS['startup_timeout']:g})"),
    Option("--stop-when-idle", "WHALETOP_STOP_WHEN_IDLE", float, 0.0,
           "minutes with no client connected after which the desktop stops itself "
           "(STOPPED, exit 0; IDLE with a warning a minute before, or halfway for 2 "
           "minutes or less); 0: never"),
    Option("--no-file-transfer", "WHALETOP_NO_FILE_TRANSFER", bool, False,
           "turn off /files/ (uploads to ~/Desktop, downloads from ~/Downloads)"),
    Option("--max-upload", "WHALETOP_MAX_UPLOAD", str, "2G",
           "largest file uploaded to ~/Desktop: bytes, or with K, M, G (1024-based), "
           "e.g. 500M"),
    Option("--no-sound", "WHALETOP_NO_SOUND", bool, False,
           "leave sound out: no sound server, no /sound WebSocket, no speaker button"),
    Option("--log-format", "WHALETOP_LOG_FORMAT", str, "json",
           "json (one object per line, the default) or console (for people)"),
    Option("--link", "WHALETOP_LINK", str, "lan",
           "lan (the default: a sharper picture, 60 updates a second) or wan (slow or "
           "metered links: fewer bytes, 30 updates a second); noVNC's settings still win"),
)


@dataclass(frozen=True)
class Config:
    username: str = "user"
    uid: int | None = None
    gid: int | None = None
    no_sudo: bool = False
    vnc_password_from_env: bool = False
    view_only_password_from_env: bool = False
    web_password_from_env: bool = False
    web_users: str = ""
    sign_in_attempts: int = 10
    sign_in_lockout: float = 300.0
    connection_rate: int = 60
    trusted_proxy: str = ""
    no_exit_on_failure: bool = False
    enable_tls: bool = False
    tls_certificate: str = ""
    geometry: str = "1280x800"
    depth: int = 24
    keyboard_layout: str = "us"
    dpi: int = keyboard.DEFAULT_DPI
    web_port: int = 8080
    vnc_port: int = 5901
    expose_vnc: bool = False
    probe_interval: float = 10.0
    probe_full_interval: float = 300.0
    probe_timeout: float = 2.0
    startup_timeout: float = 60.0
    stop_when_idle: float = 0.0
    no_file_transfer: bool = False
    max_upload: str = "2G"
    no_sound: bool = False
    log_format: str = "json"
    link: str = "lan"
    vnc_password: str | None = None
    tls_key_password: bytes | None = None
    view_only_password: str | None = None
    web_password: str | None = None
    metrics_token: str = ""  # METRICS_TOKEN (or its file): never a flag

    @property
    def sudo(self) -> bool:
        return not self.no_sudo

    @property
    def exit_on_failure(self) -> bool:
        return not self.no_exit_on_failure

    @property
    def sound(self) -> bool:
        return not self.no_sound

    @property
    def tls(self) -> bool:
        return self.enable_tls or bool(self.tls_certificate)

    @property
    def sign_in(self) -> bool:
        """People sign in on a page (and scripts with HTTP Basic) before the desktop."""
        return self.web_password_from_env or bool(self.web_users)

    @property
    def file_transfer(self) -> bool:
        return not self.no_file_transfer

    @property
    def max_upload_bytes(self) -> int:
        """--max-upload in bytes (validate() refused any other form)."""
        match = SIZE_RE.fullmatch(self.max_upload.strip(ASCII_SPACE))
        assert match is not None, "validate() checks --max-upload"
        return int(match[1]) * SIZE_UNITS[match[2].upper()]

    @property
    def trusted_proxies(self) -> list[str]:
        return [c.strip() for c in self.trusted_proxy.split(",") if c.strip()]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        # argparse echoes the arguments it could not place, however long.
        raise ConfigError(message if len(message) <= 200 else message[:200] + "...")


@functools.cache
def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="/start.py", add_help=True, allow_abbrev=False,
                     description="Start the whaletop desktop.")
    for opt in OPTIONS:
        if opt.kind is bool:
            parser.add_argument(opt.flag, action="store_true", default=None,
                                help=f"{opt.help} (env {opt.env})")
        else:
            parser.add_argument(opt.flag, default=None, metavar=opt.dest.upper(),
                                help=f"{opt.help} (env {opt.env}, default {opt.default})")
    # Once a flag: known, so that its refusal says what to do instead.
    parser.add_argument(METRICS_FLAG, dest="metrics_token_flag", nargs="?", const="",
                        default=None, help=argparse.SUPPRESS)
    return parser


def _from_env(opt: Option, raw: str) -> Any:
    if opt.kind is bool:
        word = raw.strip(ASCII_SPACE).lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ConfigError(f"{opt.env}={show(raw)} is not a boolean "
                          "(use 1/0, true/false, yes/no)")
    return _convert(opt, raw, opt.env)


def _convert(opt: Option, raw: str, origin: str) -> Any:
    if _not_utf8(raw):
        raise ConfigError(f"{origin}: the value is not UTF-8 text")
    if opt.kind is int:
        if not INT_RE.fullmatch(raw.strip(ASCII_SPACE)):
            raise ConfigError(f"{origin}={show(raw)} is not a whole number (digits 0-9)")
        return int(raw)
    if opt.kind is float:
        if not FLOAT_RE.fullmatch(raw.strip(ASCII_SPACE)):
            raise ConfigError(f"{origin}={show(raw)} is not a number (digits 0-9 and "
                              "one '.', e.g. 2.5)")
        return float(raw)
    return raw


def _env_text(env: Mapping[str, str], name: str) -> str | None:
    """A variable's value, if set; one that is not UTF-8 (a password typed in another
    encoding) is refused here, not when it is first encoded."""
    value = env.get(name)
    if value is not None and _not_utf8(value):
        raise ConfigError(f"{name} is not UTF-8 text (set it in a UTF-8 terminal or file)")
    return value


def read_secret_file(variable: str, path: str) -> str:
    """The secret in the file `variable` names: a regular file (links followed, as
    Kubernetes mounts them) of at most MAX_SECRET_FILE bytes of UTF-8, without the one
    line end `echo secret > file` adds.  Errors name the variable and the path, never
    the content."""
    where = f"{variable}={show(path, 200)}"
    if not path.startswith("/"):
        raise ConfigError(f"{where} is not an absolute path in the container (mount the "
                          "file, e.g. /run/secrets/NAME)")
    try:
        data = read_regular(path, MAX_SECRET_FILE)
    except ReadRefused as e:
        raise ConfigError({
            "open": f"{where}: cannot open: {e.strerror}",
            "kind": f"{where} is not a regular file",
            "read": f"{where}: cannot read: {e.strerror}",
            "size": f"{where} is larger than {MAX_SECRET_FILE // 1024} KiB (it should "
                    "hold one line: the secret)",
        }[e.step]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where} is not UTF-8 text") from None
    for end in ("\r\n", "\n"):
        if text.endswith(end):
            return text[:-len(end)]
    return text


def resolve_secret_files(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """`env` with each secret's NAME_FILE replaced by NAME holding the file's content,
    and for each NAME so read, where it came from (for messages)."""
    resolved = dict(env)
    origins: dict[str, str] = {}
    for name in SECRET_VARIABLES:
        variable = name + FILE_SUFFIX
        path = _env_text(env, variable)
        if path is None:
            continue
        if name in env:
            raise ConfigError(f"{name} and {variable} are both set: use one of them")
        if not path:
            raise ConfigError(f"{variable} is empty (give the path of the file that "
                              f"holds {name})")
        resolved[name] = read_secret_file(variable, path)
        del resolved[variable]
        origins[name] = f"{variable}={show(path, 200)}"
    return resolved, origins


def parse(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Config:
    """Flags, then environment (secrets perhaps from files), then defaults; validated."""
    args = vars(_parser().parse_args(list(argv)))
    if args.pop("metrics_token_flag") is not None:
        raise ConfigError(f"{METRICS_FLAG}: a token on the command line is readable by every "
                          "process in the container (/proc/PID/cmdline); set "
                          f"{METRICS_TOKEN_ENV}, or {METRICS_TOKEN_ENV}{FILE_SUFFIX} naming a "
                          "file that holds it (a Docker or Kubernetes secret)")
    env, origins = resolve_secret_files(os.environ if environ is None else environ)
    try:
        return _parse(args, env)
    except ConfigError as exc:
        # "VNC_PASSWORD is shorter than 6 characters" means the file's content.
        message = str(exc)
        for name, origin in origins.items():
            if re.search(rf"(?<![A-Z_]){name}(?![A-Z_])", message):
                raise ConfigError(f"{message} (read from {origin})") from None
        raise


def _parse(args: dict[str, Any], env: Mapping[str, str]) -> Config:
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        given = args[opt.dest]
        if given is not None and opt.kind is not bool and not isinstance(given, str):
            # argparse's reading of `--flag=--`: the '--' is dropped, a list is left.
            raise ConfigError(f"{opt.flag}: expected one value")
        if given is not None:
            values[opt.dest] = given if opt.kind is bool else _convert(opt, given, opt.flag)
        elif (raw := _env_text(env, opt.env)) is not None:
            values[opt.dest] = _from_env(opt, raw)
        else:
            values[opt.dest] = opt.default
    if values["vnc_password_from_env"]:
        values["vnc_password"] = _password_from_env(env)
    if values["view_only_password_from_env"]:
        values["view_only_password"] = _password_from_env(
            env, VIEW_ONLY_PASSWORD_ENV, "--view-only-password-from-env")
        full = values.get("vnc_password") or ""
        if values["view_only_password"][:VNC_PASSWORD_CHARS] == full[:VNC_PASSWORD_CHARS]:
            # VNC compares only 8 characters: it would be the full-access password.
            raise ConfigError(f"{VIEW_ONLY_PASSWORD_ENV} must differ from {VNC_PASSWORD_ENV} "
                              "in its first 8 characters")
    if values["web_password_from_env"]:
        values["web_password"] = _web_password_from_env(env)
    values["metrics_token"] = _env_text(env, METRICS_TOKEN_ENV) or ""
    # Only for an encrypted private key; never logged, never written.
    values["tls_key_password"] = (_env_text(env, TLS_KEY_PASSWORD_ENV) or "").encode() or None
    config = Config(**values)
    validate(config)
    return config


def _password_from_env(env: Mapping[str, str], name: str = VNC_PASSWORD_ENV,
                       flag: str = "--vnc-password-from-env") -> str:
    password = _env_text(env, name)
    if password is None:
        raise ConfigError(f"{flag} is set but {name} is not")
    if not password:
        raise ConfigError(f"{flag} is set but {name} is empty")
    if len(password) < 6:
        # TigerVNC's vncpasswd refuses shorter ones; say so before Xvnc does.
        raise ConfigError(f"{name} is shorter than 6 characters")
    if any(ord(c) < 32 or ord(c) > 126 for c in password):
        raise ConfigError(f"{name} must be printable ASCII")
    if not password[:VNC_PASSWORD_CHARS].strip(" "):
        raise ConfigError(f"{name} is blank: its first {VNC_PASSWORD_CHARS} characters, "
                          "all that VNC compares, are spaces")
    return password


def _web_password_from_env(env: Mapping[str, str]) -> str:
    password = _env_text(env, WEB_PASSWORD_ENV)
    if password is None:
        raise ConfigError(f"--web-password-from-env is set but {WEB_PASSWORD_ENV} is not")
    if len(password) < 8:
        raise ConfigError(f"{WEB_PASSWORD_ENV} is shorter than 8 characters")
    if any(unicodedata.category(c) == "Cc" for c in password):
        raise ConfigError(f"{WEB_PASSWORD_ENV} must not contain control characters")
    if not password.strip():
        raise ConfigError(f"{WEB_PASSWORD_ENV} is blank (only spaces)")
    if len(password.encode()) > MAX_WEB_PASSWORD_BYTES:
        raise ConfigError(f"{WEB_PASSWORD_ENV} is longer than {MAX_WEB_PASSWORD_BYTES} "
                          "bytes")
    return password


def validate_username(name: str) -> None:
    if name == "root":
        raise ConfigError("--username: the desktop must not run as root")
    if not USERNAME_RE.fullmatch(name):
        raise ConfigError(
            f"--username: {show(name)} is not a valid user name "
            "(lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32)")
    try:
        existing = pwd.getpwnam(name)
    except KeyError:
        return
    if not MIN_USER_UID <= existing.pw_uid <= MAX_USER_UID:
        raise ConfigError(f"--username: {name!r} is a system account (uid {existing.pw_uid})")


def system_group(gid: int) -> str | None:
    """The name of the image's system group with this gid (root, adm, sudo, shadow, ...),
    which must never be the desktop user's own group; None for a group people may use."""
    if MIN_USER_UID <= gid <= MAX_USER_UID:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None if gid != 0 else "root"


def validate(config: Config) -> None:
    validate_username(config.username)
    for flag, ident in (("--uid", config.uid), ("--gid", config.gid)):
        if ident is not None and not 1 <= ident <= 65533:
            raise ConfigError(f"{flag}: {ident} is not between 1 and 65533 (0 is root's)")
    if config.gid is not None and (group := system_group(config.gid)) is not None:
        # Its members read what the group may (shadow: the password hashes; adm: logs).
        raise ConfigError(f"--gid: {config.gid} is the system group {show(group)}; choose "
                          f"a gid of {MIN_USER_UID} or more (e.g. your own group on the "
                          "host, `id -g`)")
    _validate_geometry(config.geometry)
    if config.depth not in (16, 24, 32):
        raise ConfigError(f"--depth: {config.depth} is not one of 16, 24, 32")
    if (why := keyboard.problem(config.keyboard_layout)) is not None:
        raise ConfigError(f"--keyboard-layout: {show(config.keyboard_layout)} {why}")
    if (why := keyboard.dpi_problem(config.dpi)) is not None:
        raise ConfigError(f"--dpi: {config.dpi} {why}")
    for flag, port in (("--web-port", config.web_port), ("--vnc-port", config.vnc_port)):
        if not 1 <= port <= 65535:
            raise ConfigError(f"{flag}: {port} is not a TCP port")
    if config.expose_vnc and config.web_port == config.vnc_port:
        raise ConfigError("--web-port and --vnc-port must differ")
    for dest, least in MIN_SECONDS.items():
        seconds = getattr(config, dest)
        if not (math.isfinite(seconds) and least <= seconds <= MAX_SECONDS):
            raise ConfigError(f"--{dest.replace('_', '-')}: {seconds:g} must be between "
                              f"{least:g} and {MAX_SECONDS:g} seconds")
    for flag, path, example in (("--tls-certificate", config.tls_certificate,
                                 "-v ...:/data/cert.pem"),
                                ("--web-users", config.web_users, "-v ...:/data/users")):
        if path and not path.startswith("/"):
            raise ConfigError(f"{flag}: {show(path)} is not an absolute path in the "
                              f"container (mount the file, e.g. {example})")
        if _not_utf8(path) or not path.isprintable():
            raise ConfigError(f"{flag}: {show(path)} is not a printable UTF-8 path")
    if config.web_users and config.web_password_from_env:
        raise ConfigError("--web-users and --web-password-from-env: use one of them "
                          "(put the --username's hash in the users file)")
    if not 1 <= config.sign_in_attempts <= MAX_SIGN_IN_ATTEMPTS:
        raise ConfigError(f"--sign-in-attempts: {config.sign_in_attempts} must be between 1 "
                          f"and {MAX_SIGN_IN_ATTEMPTS}")
    if not 1 <= config.connection_rate <= 6000:
        raise ConfigError(f"--connection-rate: {config.connection_rate} must be between 1 "
                          "and 6000 per minute")
    for cidr in config.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"--trusted-proxy: {show(cidr)} is not an address or CIDR, "
                              "e.g. 10.0.0.0/8") from None
        if "%" in cidr:
            # A zone's name is free text (';', newlines) and nginx matches no zones.
            raise ConfigError(f"--trusted-proxy: {show(cidr)} has a zone (%...); give the "
                              "address or CIDR alone")
    if config.stop_when_idle and not (MIN_IDLE_MINUTES <= config.stop_when_idle
                                      <= MAX_IDLE_MINUTES):
        raise ConfigError(f"--stop-when-idle: {config.stop_when_idle:g} must be 0 (never) or "
                          f"between {MIN_IDLE_MINUTES:g} and {MAX_IDLE_MINUTES:g} minutes")
    if config.metrics_token and not METRICS_TOKEN_RE.fullmatch(config.metrics_token):
        # It is written into nginx's configuration: a token, never syntax.
        raise ConfigError(f"{METRICS_TOKEN_ENV} must be 16 to 256 characters of A-Z a-z 0-9 "
                          ". _ ~ + / = -")
    match = SIZE_RE.fullmatch(config.max_upload.strip(ASCII_SPACE))
    if match is None or not 1 <= config.max_upload_bytes <= MAX_UPLOAD_LIMIT:
        raise ConfigError(f"--max-upload: {show(config.max_upload)} is not a size from 1 "
                          "byte to 1T: digits with an optional K, M or G, e.g. 500M or 2G")
    if config.log_format not in ("json", "console"):
        raise ConfigError(f"--log-format: {show(config.log_format)} is not json or console")
    if config.link not in ("lan", "wan"):
        raise ConfigError(f"--link: {show(config.link)} is not lan or wan")


def _validate_geometry(geometry: str) -> None:
    match = GEOMETRY_RE.fullmatch(geometry)
    if not match:
        raise ConfigError(f"--geometry: {show(geometry)} is not WIDTHxHEIGHT, e.g. 1280x800")
    for side in match.groups():
        if not MIN_SIDE <= int(side) <= MAX_SIDE:
            raise ConfigError(f"--geometry: {geometry} is not between {MIN_SIDE}x{MIN_SIDE} "
                              f"and {MAX_SIDE}x{MAX_SIDE}")
