"""Keyboard layouts and screen density: what --keyboard-layout and --dpi may be, and the
commands that apply them to the X server before each session starts.

noVNC sends QEMU extended key events (physical scancodes) when the server supports
them, as TigerVNC's Xvnc does; Xvnc then maps each scancode through its X server's XKB
layout.  So the layout that makes a key type what its cap says is the person's, set in
the session: `--keyboard-layout de` or with a variant in XKB's own syntax,
`de(nodeadkeys)`.  Only layouts and variants that xkb-data lists are accepted: the
value reaches setxkbmap's command line and nginx's configuration (the page reads it).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

# xkb-data's list of layouts and variants (the evdev rules: Xvnc's, like Xorg's).
XKB_RULES = Path("/usr/share/X11/xkb/rules/evdev.lst")
# XKB's syntax: LAYOUT or LAYOUT(VARIANT).  Used with fullmatch().
LAYOUT_RE = re.compile(r"([a-z][a-z0-9_-]{0,15})(?:\(([A-Za-z0-9_-]{1,40})\))?")
DEFAULT_DPI = 96
# From half of the usual 96 to 5x (a phone's density); Xvnc takes any, GTK's fonts
# become unreadable or one letter per screen outside.
MIN_DPI, MAX_DPI = 48, 480


def split(spec: str) -> tuple[str, str]:
    """'de(nodeadkeys)' -> ('de', 'nodeadkeys'); 'us' -> ('us', '')."""
    match = LAYOUT_RE.fullmatch(spec)
    if match is None:
        raise ValueError(f"not LAYOUT or LAYOUT(VARIANT): {spec!r}")
    return match.group(1), match.group(2) or ""


@functools.cache
def known(rules: Path = XKB_RULES) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """xkb-data's layouts, and its (layout, variant) pairs."""
    layouts: set[str] = set()
    variants: set[tuple[str, str]] = set()
    section = ""
    for line in rules.read_text(encoding="utf-8").splitlines():
        if line.startswith("! "):
            section = line[2:].strip()
            continue
        fields = line.split()
        if section == "layout" and fields:
            layouts.add(fields[0])
        elif section == "variant" and len(fields) >= 2 and fields[1].endswith(":"):
            variants.add((fields[1][:-1], fields[0]))
    return frozenset(layouts), frozenset(variants)


def problem(spec: str, rules: Path = XKB_RULES) -> str | None:
    """Why `spec` is no layout of xkb-data, or None when it is one."""
    match = LAYOUT_RE.fullmatch(spec)
    if match is None:
        return "is not LAYOUT or LAYOUT(VARIANT), e.g. us, de, fr, de(nodeadkeys)"
    try:
        layouts, variants = known(rules)
    except OSError as e:
        return f"cannot be checked: {rules}: {e.strerror} (is xkb-data installed?)"
    layout, variant = match.group(1), match.group(2)
    if layout not in layouts:
        return f"names no layout of xkb-data ({rules}), e.g. us, de, fr, gb, es, it"
    if variant and (layout, variant) not in variants:
        choices = sorted(v for lay, v in variants if lay == layout)[:8]
        return (f"names no variant of {layout} in xkb-data"
                + (f" (some: {', '.join(choices)})" if choices else " (it has none)"))
    return None


def dpi_problem(dpi: int) -> str | None:
    if not MIN_DPI <= dpi <= MAX_DPI:
        return f"must be between {MIN_DPI} and {MAX_DPI} (96 is usual, 192 for 2x screens)"
    return None


# LXDE's panel: its height and icon size in pixels (lxpanel's defaults), and where its
# system-wide configuration is.
PANEL_HEIGHT, PANEL_ICONS = 26, 24
PANEL_CONF = "/etc/xdg/lxpanel/LXDE/panels/panel"

# Run as the desktop user once Xvnc is ready, before each session (a fresh session after
# a crash gets them again): the layout into the X server, Xft.dpi into its resources
# (GTK and LXDE's fonts; xrdb without cpp, which need not be in the image).  Off 96 dpi,
# the panel (sized in pixels) is scaled too: a scaled copy of its configuration, in the
# session's runtime folder, comes first on XDG_CONFIG_DIRS (a panel the person set up
# in their home wins).  Then the session itself, in the same process (exec): its exit
# codes are the session's.
PREPARE = (
    'setxkbmap -layout "$1" -variant "$2" -option "" && '
    'printf "Xft.dpi: %s\\n" "$3" | xrdb -nocpp -merge - && '
    'if [ "$3" != 96 ] && [ -n "$XDG_RUNTIME_DIR" ] && [ -r "$6" ]; then '
    'd="$XDG_RUNTIME_DIR/whaletop-xdg" && mkdir -p "$d/lxpanel/LXDE/panels" && '
    'sed "s/^    height=.*/    height=$4\\n    iconsize=$5/" "$6" '
    '> "$d/lxpanel/LXDE/panels/panel" && '
    'export XDG_CONFIG_DIRS="$d:${XDG_CONFIG_DIRS:-/etc/xdg}"; fi && '
    'shift 6 && exec "$@"')


def session_prefix(spec: str, dpi: int, panel_conf: str = PANEL_CONF) -> list[str]:
    """The command line before the session's own: applies layout and density."""
    layout, variant = split(spec)
    return ["sh", "-c", PREPARE, "whaletop-session", layout, variant, str(dpi),
            str(PANEL_HEIGHT * dpi // DEFAULT_DPI), str(PANEL_ICONS * dpi // DEFAULT_DPI),
            panel_conf]
