"""Secrets as files: each secret variable's NAME_FILE twin (Docker and Kubernetes secrets
are mounted as files), read from real files, and refused with a message that names the
variable and the file, never the secret."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from whaletopd import config
from whaletopd.config import SECRET_VARIABLES, ConfigError, parse

# Each secret, the flag that makes whaletopd read it, a valid value, and where it lands.
USES = {
    "VNC_PASSWORD": (["--vnc-password-from-env"], "s3cret!x", "vnc_password"),
    "VNC_VIEW_ONLY_PASSWORD": (["--view-only-password-from-env"], "watch-me",
                               "view_only_password"),
    "WEB_PASSWORD": (["--web-password-from-env"], "web secret", "web_password"),
    "TLS_KEY_PASSWORD": (["--enable-tls"], "pässword", "tls_key_password"),
    "METRICS_TOKEN": ([], "tok.en-0123456789_abc", "metrics_token"),
}
SECRET = "hunter2-not-shown"


def _value(name: str, cfg: config.Config) -> object:
    got = getattr(cfg, USES[name][2])
    return got.decode() if isinstance(got, bytes) else got


def _refused(argv: list[str], env: dict[str, str], *named: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(argv, env)
    message = str(info.value)
    for name in named:
        assert name in message
    assert message.isprintable(), "one printable line"
    assert "hunter" not in message, "the secret is never shown"
    return message


def test_every_secret_variable_has_a_use() -> None:
    assert set(USES) == set(SECRET_VARIABLES)


@pytest.mark.parametrize("name", SECRET_VARIABLES)
@pytest.mark.parametrize("end", ["\n", "\r\n", ""], ids=["LF", "CRLF", "no-end"])
def test_a_secret_is_read_from_its_file(name: str, end: str, tmp_path: Path) -> None:
    flags, value, _ = USES[name]
    secret = tmp_path / "secret"
    secret.write_bytes((value + end).encode())
    cfg = parse(flags, {f"{name}_FILE": str(secret)})
    assert _value(name, cfg) == value, "one line end (echo secret > file) is stripped"


def test_only_one_line_end_is_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s3cret!x\n\n")
    _refused(["--vnc-password-from-env"], {"VNC_PASSWORD_FILE": str(secret)},
             "VNC_PASSWORD must be printable ASCII", f"read from VNC_PASSWORD_FILE='{secret}'")
    secret.write_bytes(b"  s3cret \n")
    cfg = parse(["--vnc-password-from-env"], {"VNC_PASSWORD_FILE": str(secret)})
    assert cfg.vnc_password == "  s3cret ", "spaces are the password's own"


def test_links_are_followed_as_kubernetes_mounts_them(tmp_path: Path) -> None:
    data = tmp_path / "..2024_01_01"
    data.mkdir()
    (data / "password").write_text("s3cret!x\n")
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "password").symlink_to("..data/password")
    cfg = parse(["--vnc-password-from-env"], {"VNC_PASSWORD_FILE": str(tmp_path / "password")})
    assert cfg.vnc_password == "s3cret!x"


def test_the_file_content_meets_the_variable_rules(tmp_path: Path) -> None:
    """Every rule of NAME applies to the file's content, and the message says where it
    came from."""
    short = tmp_path / "short"
    short.write_text("abc\n")
    message = _refused(["--vnc-password-from-env"], {"VNC_PASSWORD_FILE": str(short)},
                       "VNC_PASSWORD is shorter than 6", "VNC_PASSWORD_FILE", str(short))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    _refused(["--web-password-from-env"], {"WEB_PASSWORD_FILE": str(empty)},
             "WEB_PASSWORD is shorter than 8", "WEB_PASSWORD_FILE")
    bad_token = tmp_path / "token"
    bad_token.write_text("has spaces in the token\n")
    _refused([], {"METRICS_TOKEN_FILE": str(bad_token)}, "METRICS_TOKEN must be",
             "METRICS_TOKEN_FILE")
    same = tmp_path / "same"
    same.write_text("s3cret!x\n")
    _refused(["--vnc-password-from-env", "--view-only-password-from-env"],
             {"VNC_PASSWORD": "s3cret!x", "VNC_VIEW_ONLY_PASSWORD_FILE": str(same)},
             "must differ", "VNC_VIEW_ONLY_PASSWORD_FILE")
    assert "VNC_VIEW_ONLY" not in message


def test_a_token_on_the_command_line_is_refused_not_blamed_on_the_file(
        tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-the-file-0123\n")
    assert parse([], {"METRICS_TOKEN_FILE": str(token)}).metrics_token == "from-the-file-0123"
    message = _refused(["--metrics-token", "hunter2-not-shown0"],
                       {"METRICS_TOKEN_FILE": str(token)}, "--metrics-token", "/proc")
    assert "(read from" not in message


def test_a_file_without_its_flag_is_read_but_not_used(tmp_path: Path) -> None:
    """As VNC_PASSWORD is ignored without --vnc-password-from-env; a broken file is
    still refused: whoever set the variable meant something by it."""
    secret = tmp_path / "secret"
    secret.write_text("s3cret!x\n")
    assert parse([], {"VNC_PASSWORD_FILE": str(secret)}).vnc_password is None
    _refused([], {"VNC_PASSWORD_FILE": str(tmp_path / "missing")}, "VNC_PASSWORD_FILE")


@pytest.mark.parametrize("name", SECRET_VARIABLES)
def test_both_the_variable_and_its_file_is_refused(name: str, tmp_path: Path) -> None:
    flags, value, _ = USES[name]
    secret = tmp_path / "secret"
    secret.write_text(value)
    _refused(flags, {name: SECRET, f"{name}_FILE": str(secret)}, name, f"{name}_FILE",
             "both")


@pytest.mark.parametrize("name", SECRET_VARIABLES)
def test_a_missing_file_is_named(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "secret"
    message = _refused(USES[name][0], {f"{name}_FILE": str(missing)}, f"{name}_FILE",
                       str(missing))
    assert "No such file" in message


@pytest.mark.parametrize("path", ["", "secret", "./secret", "run/secrets/x"])
def test_the_path_must_be_absolute_and_given(path: str) -> None:
    _refused(["--vnc-password-from-env"], {"VNC_PASSWORD_FILE": path}, "VNC_PASSWORD_FILE")


def test_a_directory_is_refused(tmp_path: Path) -> None:
    message = _refused(["--vnc-password-from-env"], {"VNC_PASSWORD_FILE": str(tmp_path)},
                       "VNC_PASSWORD_FILE", str(tmp_path))
    assert "not a regular file" in message


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    message = _refused(["--vnc-password-from-env"], {"VNC_PASSWORD_FILE": str(fifo)},
                       "VNC_PASSWORD_FILE")
    assert "not a regular file" in message


def test_a_device_is_refused() -> None:
    message = _refused(["--vnc-password-from-env"], {"VNC_PASSWORD_FILE": "/dev/zero"},
                       "VNC_PASSWORD_FILE", "/dev/zero")
    assert "not a regular file" in message


def test_a_file_larger_than_the_cap_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * config.MAX_SECRET_FILE)
    assert len(parse([], {"TLS_KEY_PASSWORD_FILE": str(big)}).tls_key_password or b"") \
        == config.MAX_SECRET_FILE, "the cap itself is allowed"
    big.write_bytes(b"x" * (config.MAX_SECRET_FILE + 1))
    message = _refused([], {"TLS_KEY_PASSWORD_FILE": str(big)}, "TLS_KEY_PASSWORD_FILE")
    assert "larger than 64 KiB" in message


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1"
    latin1.write_bytes("hunter2-pässword\n".encode("latin-1"))
    message = _refused(["--web-password-from-env"], {"WEB_PASSWORD_FILE": str(latin1)},
                       "WEB_PASSWORD_FILE", str(latin1))
    assert "not UTF-8" in message


def test_a_file_name_that_is_not_utf8_is_named() -> None:
    _refused([], {"METRICS_TOKEN_FILE": "/run/secrets/caf\udce9"}, "METRICS_TOKEN_FILE",
             "not UTF-8")


@pytest.fixture
def unreadable() -> Iterator[Path]:
    """A root-owned 0600 file in a folder anyone may enter."""
    folder = Path(tempfile.mkdtemp(prefix="whaletop-secret-"))
    try:
        folder.chmod(0o755)
        secret = folder / "secret"
        secret.write_text(SECRET + "\n")
        secret.chmod(0o600)
        yield secret
    finally:
        secret.unlink(missing_ok=True)
        folder.rmdir()


def test_a_file_this_account_may_not_read_is_named(unreadable: Path) -> None:
    """Parsed as another account (a forked child drops to nobody when we are root), as a
    container started with --user reads a secret mounted for another uid."""
    env = {"VNC_PASSWORD_FILE": str(unreadable)}
    if os.geteuid() != 0:
        unreadable.chmod(0)
        message = _refused(["--vnc-password-from-env"], env, "VNC_PASSWORD_FILE")
        assert "Permission denied" in message
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                parse(["--vnc-password-from-env"], env)
                outcome: object = "parsed"
            except ConfigError as exc:
                outcome = str(exc)
            os.write(write_end, pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pickle.loads(pipe.read())
    os.waitpid(pid, 0)
    assert isinstance(outcome, str), outcome
    assert "VNC_PASSWORD_FILE" in outcome
    assert str(unreadable) in outcome
    assert "Permission denied" in outcome
    assert SECRET not in outcome


def test_the_environment_mapping_is_left_as_it_was(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret!x\n")
    env = {"VNC_PASSWORD_FILE": str(secret)}
    parse(["--vnc-password-from-env"], env)
    assert env == {"VNC_PASSWORD_FILE": str(secret)}
