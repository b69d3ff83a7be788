"""kill -9 the desktop's Xvnc and time how long the daemon takes to leave HEALTHY.

Both instants are taken here, next to the kill, so the figure measures the daemon, not
`docker exec`.  Prints {"t_kill", "t_left", "word", "xvnc_pid"}.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

STATE = Path("/opt/whaletop")


def status_word(state: Path) -> str:
    try:
        return (state / "status").read_text().strip()
    except FileNotFoundError:
        return ""


def kill_and_watch(state: Path = STATE, limit: float = 10.0) -> dict[str, Any]:
    doc = json.loads((state / "status.json").read_text())
    pid = int(doc["children"]["xvnc"]["pid"])
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    word = "HEALTHY"
    while word == "HEALTHY" and time.time() - t_kill < limit:
        time.sleep(0.001)
        word = status_word(state)
    return {"t_kill": t_kill, "t_left": time.time(), "word": word, "xvnc_pid": pid}


if __name__ == "__main__":
    print(json.dumps(kill_and_watch()), flush=True)
