"""How many VNC clients are connected: what --stop-when-idle and /metrics go by.

A client is a connection Xvnc accepted on its UNIX socket (every web client comes
through nginx and websockify, which opens one there), plus, with --expose-vnc, an
established TCP connection to its VNC port.

The UNIX ones are counted with the kernel's sock_diag (what `ss -x` uses), not from
Xvnc's /proc/PID/fd: root in a container has no CAP_SYS_PTRACE, so it cannot read the
desktop user's fds.  An accepted UNIX socket carries the listener's path, and
sock_diag names the file (inode and device) behind it; matching those against a stat()
of our own socket file is exact even with --network host, where the host's and other
containers' sockets share the listing (their files are other files).

The health checks log in through the same socket every few seconds.  A check lasts
milliseconds, so a connection counts only once it was seen in an earlier count at
least MIN_AGE ago: a check would have to straddle two counts a second apart (a hung
one, which fails and says so anyway).  The price: a new client is counted one
interval later.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

MIN_AGE = 1.0

# linux/sock_diag.h, linux/unix_diag.h, linux/netlink.h
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCP_ESTABLISHED = 1
_UDIAG_SHOW_VFS = 0x2
_UNIX_DIAG_VFS = 1
_NLMSG = struct.Struct("=IHHII")
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")
_RTATTR = struct.Struct("=HH")
_VFS = struct.Struct("=II")
_VFS_KIND = struct.pack("=H", _UNIX_DIAG_VFS)
_VFS_SIZE = struct.pack("=H", _RTATTR.size + _VFS.size)


def _align(n: int) -> int:
    return (n + 3) & ~3


def _kernel_dev(dev: int) -> tuple[int, int]:
    """sock_diag reports the superblock's dev_t as the kernel keeps it (MKDEV)."""
    return dev >> 20, dev & 0xFFFFF


def connected_unix(path: Path) -> set[int]:
    """Inodes of the connected sockets a listener on `path` accepted.  OSError when the
    socket file is gone or the kernel will not dump its UNIX sockets."""
    st = os.stat(path)
    wanted = (st.st_ino, os.major(st.st_dev), os.minor(st.st_dev))
    # The attribute's payload as the kernel writes it (ino, then MKDEV(major, minor)).
    target = _VFS.pack(st.st_ino & 0xFFFFFFFF,
                       (os.major(st.st_dev) << 20) | os.minor(st.st_dev))
    request = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 1 << _TCP_ESTABLISHED, 0,
                                  _UDIAG_SHOW_VFS, 0, 0)
    header = _NLMSG.pack(_NLMSG.size + len(request), _SOCK_DIAG_BY_FAMILY,
                         _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
    found: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.sendto(header + request, (0, 0))
        while True:
            data = nl.recv(1 << 16)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind = _NLMSG.unpack_from(data, offset)[:2]
                if kind == _NLMSG_DONE:
                    return found
                if kind == _NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                    raise OSError(errno, f"sock_diag: {os.strerror(errno)}")
                attr = offset + _NLMSG.size + _UNIX_DIAG_MSG.size
                # Asked for nothing else, the kernel puts the VFS attribute first: one
                # comparison of bytes rules out the host's other sockets (with
                # --network host, hundreds) without unpacking them.
                if data[attr + 2:attr + 4] == _VFS_KIND and data[attr:attr + 2] == _VFS_SIZE:
                    if data[attr + _RTATTR.size:attr + _RTATTR.size + _VFS.size] == target:
                        found.add(_UNIX_DIAG_MSG.unpack_from(data, offset + _NLMSG.size)[4])
                    offset += _align(length)
                    continue
                inode = _UNIX_DIAG_MSG.unpack_from(data, offset + _NLMSG.size)[4]
                while attr + _RTATTR.size <= offset + length:
                    size, kind = _RTATTR.unpack_from(data, attr)
                    if size < _RTATTR.size:
                        break
                    if kind == _UNIX_DIAG_VFS:
                        vfs_ino, vfs_dev = _VFS.unpack_from(data, attr + _RTATTR.size)
                        if (vfs_ino, *_kernel_dev(vfs_dev)) == wanted:
                            found.add(inode)
                    attr += _align(size)
                offset += _align(length)
            if not data:
                return found


def connected_tcp(port: int, proc_net: Path = Path("/proc/net")) -> set[int]:
    """Inodes of the established TCP connections whose local port is `port`."""
    found: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc_net / table).read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(fields[9]))
    return found


class ClientCounter:
    """Counts the clients connected now, as explained above.  count() raises OSError
    when it cannot tell."""

    def __init__(self, vnc_socket: Path, tcp_port: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.vnc_socket = vnc_socket
        self.tcp_port = tcp_port
        self._clock = clock
        self._first_seen: dict[tuple[str, int], float] = {}

    def count(self) -> int:
        """Connections that have been open at least MIN_AGE: clients."""
        now = self._look()
        return sum(1 for t in self._first_seen.values() if now - t >= MIN_AGE)

    def connected_now(self) -> int:
        """Every connection open now, however young (a check's too)."""
        self._look()
        return len(self._first_seen)

    def _look(self) -> float:
        now = self._clock()
        seen = {("unix", inode) for inode in connected_unix(self.vnc_socket)}
        if self.tcp_port is not None:
            seen |= {("tcp", inode) for inode in connected_tcp(self.tcp_port)}
        self._first_seen = {key: self._first_seen.get(key, now) for key in seen}
        return now
