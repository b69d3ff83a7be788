"""The X display's key: an MIT-MAGIC-COOKIE-1, new at every start, in a file only the
desktop user (and root) can read.  Xvnc takes it with `-auth`, the desktop's programs
find it through XAUTHORITY; a process of any other uid reaches the X socket (0777 by X's
convention) but is refused ("Authorization required").

The file is written here, never by `xauth add` with the secret on its command line
(/proc/PID/cmdline is every uid's to read).  Its one entry is of the family "wild"
(any host name) for this display number, as `xauth nlist` writes it: the container's
host name may change (docker run --hostname, --network host), the display does not.
"""

from __future__ import annotations

import os
import secrets
import stat
import struct
from pathlib import Path

from whaletopd.files import atomic_write

PROTOCOL = b"MIT-MAGIC-COOKIE-1"
FAMILY_WILD = 0xFFFF  # Xauth.h's FamilyWild: matches any address
COOKIE_BYTES = 16  # what xauth's `generate` and display managers use


class XauthError(RuntimeError):
    """The cookie's folder cannot be used (named, with a fix)."""


def entry(display: int, cookie: bytes) -> bytes:
    """One Xauthority record: family, then address, display number, protocol name and
    data, each a big-endian 16-bit length and its bytes (libXau's XauWriteAuth)."""
    fields = (b"", str(display).encode("ascii"), PROTOCOL, cookie)
    return struct.pack(">H", FAMILY_WILD) + b"".join(
        struct.pack(">H", len(field)) + field for field in fields)


def write(path: Path, display: int, owner: tuple[int, int] | None) -> None:
    """A fresh cookie for `display` in `path` (0600, `owner`'s when given), in a folder of
    its own (0700, `owner`'s): nothing of it is on a command line.  Raises XauthError
    or OSError."""
    folder = path.parent
    _own_folder(folder, owner)
    # Made anew at every start, so not worth an fsync (the desktop starts fast).
    atomic_write(path, entry(display, secrets.token_bytes(COOKIE_BYTES)), mode=0o600,
                 owner=owner, durable=False)


def _own_folder(folder: Path, owner: tuple[int, int] | None) -> None:
    """The folder, made or taken over (as root) or checked (without root: another uid's
    folder, in a run folder open to all, would let that uid replace the cookie)."""
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode):
            if owner is None:
                raise XauthError(f"{folder} is not a folder: remove it") from None
            folder.unlink()  # a link or a file where the folder goes (root's run folder)
            folder.mkdir(mode=0o700)
        elif owner is None and st.st_uid != os.getuid():
            raise XauthError(f"{folder} belongs to uid {st.st_uid}, not to uid "
                             f"{os.getuid()} (the desktop user's): remove it, or mount "
                             f"{folder.parent} as a fresh tmpfs") from None
    if owner is not None:
        os.chown(folder, *owner, follow_symlinks=False)
    folder.chmod(0o700)
