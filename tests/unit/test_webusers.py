"""The users file: real hashes made by libxcrypt, real files; nothing mocked."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from whaletopd import webusers
from whaletopd.webusers import WebUser, WebUsersError

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def sha512() -> str:
    return webusers.hash_password(PASSWORD)


def _made_with(prefix: str) -> str:
    hashed = webusers.crypt(PASSWORD, webusers.gensalt(prefix))
    assert hashed is not None
    assert hashed.startswith(prefix)
    return hashed


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$", "$5$", "$6$", "$y$"])
def test_every_accepted_kind_parses_and_verifies(prefix: str) -> None:
    hashed = _made_with(prefix)
    users = webusers.parse(f"alice:{hashed}\n", "users")
    assert users == {"alice": WebUser("alice", hashed, "full")}
    assert webusers.verify(users["alice"], PASSWORD)
    assert not webusers.verify(users["alice"], PASSWORD + "!")


def test_hash_password_is_sha512_crypt_with_rounds_and_a_random_salt(sha512: str) -> None:
    assert sha512.startswith(f"$6$rounds={webusers.ROUNDS}$")
    assert webusers.hash_problem(sha512) is None
    assert webusers.hash_password(PASSWORD) != sha512
    assert webusers.verify(WebUser("a", sha512), PASSWORD)
    assert not webusers.verify(WebUser("a", sha512), "")


def test_verify_an_unknown_user_is_false() -> None:
    assert webusers.verify(None, PASSWORD) is False
    assert webusers.verify(None, "") is False


def test_verify_refuses_what_crypt_cannot_take(sha512: str) -> None:
    user = WebUser("a", sha512)
    assert not webusers.verify(user, PASSWORD + "\0tail")
    assert not webusers.verify(user, "x" * (webusers.MAX_PASSWORD + 1))


def test_empty_password_is_refused() -> None:
    with pytest.raises(WebUsersError, match="empty"):
        webusers.hash_password("")
    with pytest.raises(WebUsersError, match="empty"):
        webusers.from_password("alice", "")


def _des() -> str:
    made = webusers.crypt(PASSWORD, "ab")  # libxcrypt may be built without DES
    return made if made is not None else "abJnggxhB/yWI"


@pytest.mark.parametrize(("hashed", "why"), [
    ("{PLAIN}" + PASSWORD, "plain-text passwords are refused"),
    (PASSWORD, "not a password hash"),
    ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "(unsalted SHA-1) hashes are weak"),
    ("{SSHA}W6ph5Mm5Pz8GgiULbPgzG37mj9gxMjM0", "(salted SHA-1) hashes are weak"),
    ("$apr1$4xk3Sb2r$Xh8bIZ9zV8LC1hZ2e3Rn6/", "$apr1$ (Apache MD5) hashes are weak"),
    (_made_with("$1$"), "$1$ (MD5-crypt) hashes are weak"),
    (_des(), "DES crypt hashes (13 characters) are weak"),
    ("$7$CU..../....abcdefgh$" + "x" * 43, "not supported"),
    ("$6$abc$tooshort", "$6$ hash is malformed"),
    ("$2b$05$tooshort", "$2b$ hash is malformed"),
    ("$6$rounds=999999999$abcdefgh$" + "a" * 86, "take seconds"),
    ("$2b$31$" + "a" * 53, "take seconds"),
])
def test_refused_kinds_say_why_and_how_never_the_hash(hashed: str, why: str) -> None:
    text = f"# users\n\nbob:{webusers.hash_password('x')}\nalice:{hashed}\n"
    with pytest.raises(WebUsersError) as e:
        webusers.parse(text, "/data/users")
    msg = str(e.value)
    assert msg.startswith("/data/users: line 4: user 'alice': ")
    assert why in msg
    assert "htpasswd -nB alice" in msg
    assert "mkpasswd -m sha-512" in msg
    assert hashed not in msg
    assert PASSWORD not in msg
    assert "\n" not in msg


def test_apr1_message_matches_the_documented_example() -> None:
    with pytest.raises(WebUsersError) as e:
        webusers.parse("#\n\nbob:$apr1$4xk3Sb2r$Xh8bIZ9zV8LC1hZ2e3Rn6/\n", "/data/users")
    assert str(e.value).startswith(
        "/data/users: line 3: user 'bob': $apr1$ (Apache MD5) hashes are weak; make one "
        "with htpasswd -nB bob")


def test_roles_and_comments(sha512: str) -> None:
    text = (f"# who may use the desktop\n\n  alice:{sha512}\nbob:{sha512}:viewer\n"
            f"carol:{sha512}:full\r\ndan:{sha512}:\n   # indented comment\n")
    users = webusers.parse(text, "u")
    assert {n: u.role for n, u in users.items()} == {
        "alice": "full", "bob": "viewer", "carol": "full", "dan": "full"}


def test_unknown_role_is_refused(sha512: str) -> None:
    with pytest.raises(WebUsersError, match=r"^u: line 2: user 'bob': unknown role 'admin'"):
        webusers.parse(f"alice:{sha512}\nbob:{sha512}:admin\n", "u")


def test_duplicate_names_are_refused_naming_both_lines(sha512: str) -> None:
    with pytest.raises(WebUsersError,
                       match=r"^u: line 4: user 'bob' appears again \(first on line 2\)"):
        webusers.parse(f"#\nbob:{sha512}\nalice:{sha512}\nbob:{sha512}:viewer\n", "u")


@pytest.mark.parametrize("name", ["Alice.Smith@example.com", "1bob", "_x", "a-b_c",
                                  "x" * 64])
def test_good_names(name: str, sha512: str) -> None:
    assert list(webusers.parse(f"{name}:{sha512}", "u")) == [name]


@pytest.mark.parametrize("name", ["-bob", ".bob", "x" * 65, "bob smith", "", "bøb",
                                  "bob/x", "@bob"])
def test_bad_names_are_refused_without_echoing_them(name: str, sha512: str) -> None:
    with pytest.raises(WebUsersError, match=r"^u: line 1: the user name is not valid"):
        webusers.parse(f"{name}:{sha512}\n", "u")


@pytest.mark.parametrize("line", ["just-a-line", "bob:$6$x:viewer:extra"])
def test_wrong_field_count(line: str) -> None:
    with pytest.raises(WebUsersError, match=r"^u: line 1: expected name:hash\[:role\]") as e:
        webusers.parse(line, "u")
    assert line not in str(e.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_no_users_is_refused(text: str) -> None:
    with pytest.raises(WebUsersError, match=r"^u: no users"):
        webusers.parse(text, "u")


def test_load_reads_a_file_through_a_symlink(tmp_path: Path, sha512: str) -> None:
    # Kubernetes mounts a secret as users -> ..data/users
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "users").write_text(f"alice:{sha512}:viewer\n")
    (tmp_path / "users").symlink_to("..data/users")
    assert webusers.load(tmp_path / "users") == {"alice": WebUser("alice", sha512, "viewer")}


def test_load_size_limit(tmp_path: Path, sha512: str) -> None:
    line = f"alice:{sha512}\n"
    path = tmp_path / "users"
    path.write_text(line + "#" * (webusers.MAX_FILE - len(line) - 1) + "\n")
    assert os.path.getsize(path) == webusers.MAX_FILE
    assert list(webusers.load(path)) == ["alice"]
    path.write_text(line + "#" * (webusers.MAX_FILE - len(line)) + "\n")
    with pytest.raises(WebUsersError, match=r"users: larger than 1 MiB$"):
        webusers.load(path)


def test_load_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(WebUsersError, match="not a regular file"):
        webusers.load(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(WebUsersError, match="not a regular file"):
        webusers.load(fifo)  # and does not wait for a writer
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        with pytest.raises(WebUsersError, match="cannot open"):
            webusers.load(sock_path)
    with pytest.raises(WebUsersError, match=r"missing: cannot open: No such file"):
        webusers.load(tmp_path / "missing")


def test_load_refuses_what_is_not_utf8_naming_the_line(tmp_path: Path, sha512: str) -> None:
    path = tmp_path / "users"
    path.write_bytes(f"alice:{sha512}\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(WebUsersError, match=r"users: line 2: not UTF-8 text$"):
        webusers.load(path)


def test_from_password_round_trip() -> None:
    text = webusers.from_password("alice", PASSWORD)
    assert text.startswith("alice:$6$rounds=")
    assert text.endswith(":full\n")
    users = webusers.parse(text, "WEB_PASSWORD")
    assert webusers.verify(users["alice"], PASSWORD)
    assert not webusers.verify(users["alice"], "wrong")
    viewer = webusers.parse(webusers.from_password("bob", PASSWORD, "viewer"), "x")
    assert viewer["bob"].role == "viewer"


def test_from_password_refuses_bad_names_and_roles() -> None:
    with pytest.raises(WebUsersError, match="user name 'no good' is not valid"):
        webusers.from_password("no good", PASSWORD)
    with pytest.raises(WebUsersError, match="unknown role 'admin'"):
        webusers.from_password("alice", PASSWORD, "admin")


def test_render_round_trip(sha512: str) -> None:
    users = {"alice": WebUser("alice", sha512), "bob": WebUser("bob", sha512, "viewer")}
    assert webusers.parse(webusers.render(users), "x") == users
    assert webusers.render(users.values()) == webusers.render(users)


def test_repr_hides_the_hash(sha512: str) -> None:
    assert sha512 not in repr(WebUser("alice", sha512))
