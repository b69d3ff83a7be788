"""What the side-by-side comparison (bench/original.py) does inside either desktop's
container, whaletop's or the original project's, the same way in both.

    python3 -c SOURCE kill                      # kill -9 Xvnc, time the status file
    python3 -c SOURCE keys PORT COUNT [--password-file FILE]

`kill`: finds the X server by its process name (Xtigervnc or Xvnc; the original keeps
no pid where the runner can read it), notes the time, kills it and polls
/opt/whaletop/status every 1 ms until it says another word than HEALTHY (an empty
read is the original rewriting the file in place, not a new word).  Prints {"t_kill",
"t_left", "word", "xvnc_pid"}.

`keys`: a VNC client through the web port's WebSocket, as noVNC connects (the password
from /opt/whaletop/vnc_passwd, which both projects write).  It asks for updates of the
whole screen, as noVNC does, and types COUNT letters: before each one it waits until the
screen has been still for QUIET seconds, then sends the key (down and up) and times the
first screen update after it.  Prints {"ms": [...], "missed": N, "screen": [w, h]}.  The
runner starts a terminal (lxterminal) first, so the key lands in its shell.

`keys` needs vnc_sessions.py's client: the runner hands both sources to the image's
python3 (see bench/original.py, `compare_argv`), which registers that one as the module
`vnc_sessions` first.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

STATE = Path("/opt/whaletop")
XVNC_NAMES = ("Xtigervnc", "Xvnc")
QUIET = 0.3  # seconds without an update before a key is typed
KEY_LIMIT = 2.0  # a key without an update within this is "missed"


def status_word(state: Path) -> str:
    try:
        return (state / "status").read_text().strip()
    except FileNotFoundError:
        return ""


def find_xvnc(proc: Path = Path("/proc")) -> int:
    for comm in proc.glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() in XVNC_NAMES:
                return int(comm.parent.name)
        except OSError:
            continue
    raise SystemExit("no Xtigervnc or Xvnc process")


def kill_and_watch(state: Path = STATE, limit: float = 30.0,
                   proc: Path = Path("/proc")) -> dict[str, Any]:
    pid = find_xvnc(proc)
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    word = "HEALTHY"
    # "": a writer that truncates, then writes (the original's open('w')); not a new word
    while word in ("HEALTHY", "") and time.time() - t_kill < limit:
        time.sleep(0.001)
        word = status_word(state)
    return {"t_kill": t_kill, "t_left": time.time(), "word": word, "xvnc_pid": pid}


def keystrokes(port: int, count: int, password: str,
               host: str = "127.0.0.1") -> dict[str, Any]:
    import socket

    from vnc_sessions import Session  # type: ignore[import-not-found]  # the runner's

    class WholeScreen(Session):  # type: ignore[misc,valid-type,unused-ignore]
        """noVNC asks for the whole screen, not vnc_sessions' corner."""

        def request(self, incremental: bool,
                    region: tuple[int, int, int, int] | None = None) -> None:
            super().request(incremental, region or (0, 0, *self.size))

    sock = socket.create_connection((host, port), timeout=10)
    session = WholeScreen(sock)
    session.upgrade(host, port)
    session.login(password)
    session.request(incremental=False)
    session.read_message()
    sock.settimeout(None)
    session.start()
    times: list[float] = []
    missed = 0
    try:
        for n in range(count):
            while True:  # the screen is still: nothing drawn for QUIET seconds
                seen = session.updates
                if not session.wait_update(seen, QUIET):
                    break
            seen = session.updates
            if session.closed:
                raise SystemExit(f"the VNC session ended: {session.error}")
            keysym = ord("a") + n % 26
            t_key = time.time()
            session.send(struct.pack("!BBxxI", 4, 1, keysym))  # KeyEvent down
            session.send(struct.pack("!BBxxI", 4, 0, keysym))  # and up
            if session.wait_update(seen, KEY_LIMIT):
                times.append((session.last_update - t_key) * 1000)
            else:
                missed += 1
    finally:
        session.close()
    return {"ms": [round(t, 3) for t in times], "missed": missed,
            "screen": list(session.size)}


def main(argv: list[str]) -> int:
    if argv[:1] == ["kill"]:
        print(json.dumps(kill_and_watch()), flush=True)
        return 0
    if argv[:1] == ["keys"] and len(argv) >= 3:
        password_file = STATE / "vnc_passwd"
        if "--password-file" in argv:
            password_file = Path(argv[argv.index("--password-file") + 1])
        result = keystrokes(int(argv[1]), int(argv[2]), password_file.read_text().strip())
        print(json.dumps(result), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
