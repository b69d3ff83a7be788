"""--link: how the picture is encoded for the network between the desktop and its people.

Two settings, chosen from the curve `python -m bench --only interactive` measures
(bench/results.md, bench/interactive.png): noVNC's quality and compression levels
(sent by the page to Xvnc; they pick the Tight encoding's JPEG quality and zlib level)
and Xvnc's -FrameRate (the most screen updates per second it sends).  The page takes
the two levels from /defaults.json, which nginx answers from this table (noVNC reads
it at start: a level a person set in noVNC's settings panel, or in the address, still
wins); Xvnc takes its frame rate on its command line.

  lan  (default) a fast network: noVNC's own levels, Xvnc's 60 updates a second.
  wan  a slow or metered link: fewer bytes for each update and fewer updates, at the
       cost of a blurrier picture while things move and a slightly later keystroke echo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    quality: int  # noVNC's JPEG quality level, 0 (smallest) to 9 (best)
    compression: int  # noVNC's compression level, 0 (fastest) to 9 (smallest)
    frame_rate: int  # Xvnc's -FrameRate: at most this many updates a second


LINKS: dict[str, Link] = {
    "lan": Link(quality=6, compression=2, frame_rate=60),
    "wan": Link(quality=2, compression=9, frame_rate=30),
}
DEFAULT = "lan"


def xvnc_args(link: str) -> list[str]:
    """Xvnc's arguments for the link."""
    return ["-FrameRate", str(LINKS[link].frame_rate)]


def novnc_defaults(link: str) -> str:
    """noVNC's defaults.json for the link: one line of JSON."""
    chosen = LINKS[link]
    return json.dumps({"quality": chosen.quality, "compression": chosen.compression},
                      separators=(",", ":"))
