"""Keyboards, clipboard and screen density as a person meets them in Chromium.

Keys are dispatched with CDP's Input.dispatchKeyEvent, as a German, French or US
keyboard sends them: the physical `code` and the `key` that layout puts on it.  noVNC
sends the code as a QEMU extended key event; Xvnc maps it through the session's layout
(--keyboard-layout).  What arrives is read back from a terminal on the desktop that
runs `cat > FILE`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests import tools
from tests.e2e import browser
from tests.e2e import test_front_door as front
from tests.e2e.conftest import Container, wait_until
from tests.e2e.test_lifecycle import _lxsession_pid

pytestmark = [pytest.mark.e2e,
              tools.CHROMIUM.needed]

URL = "http://127.0.0.1:8080/"
# CDP's modifier bits.
ALT, CTRL, SHIFT = 1, 2, 8
MODIFIER_KEYS = {"ShiftLeft": ("Shift", SHIFT), "ControlLeft": ("Control", CTRL),
                 "AltLeft": ("Alt", ALT), "AltRight": ("AltGraph", 0)}
# (modifiers held, physical code, the key the layout's cap shows): one stroke each.
# A dead key is a stroke whose key is "Dead"; the next stroke completes it.
Stroke = tuple[tuple[str, ...], str, str]
AltGr, Shift = ("AltRight",), ("ShiftLeft",)
STROKES: dict[str, tuple[list[Stroke], str]] = {
    "de": ([(AltGr, "KeyQ", "@"), (AltGr, "KeyE", "€"), (AltGr, "Digit7", "{"),
            (AltGr, "Digit0", "}"), (AltGr, "Digit8", "["), (AltGr, "Digit9", "]"),
            ((), "Quote", "ä"), ((), "Equal", "Dead"), ((), "KeyE", "e"),
            ((), "Minus", "ß"), ((), "Backquote", "Dead"), ((), "KeyE", "e"),
            ((), "KeyZ", "y"), ((), "KeyY", "z")],
           "@€{}[]äéßêyz"),
    "fr": ([(AltGr, "Digit0", "@"), (AltGr, "KeyE", "€"), (AltGr, "Digit4", "{"),
            (AltGr, "Equal", "}"), (AltGr, "Digit5", "["), (AltGr, "Minus", "]"),
            (Shift, "BracketLeft", "Dead"), ((), "KeyQ", "a"), ((), "Digit2", "é"),
            (AltGr, "KeyS", "ß"), ((), "BracketLeft", "Dead"), ((), "KeyE", "e"),
            ((), "KeyQ", "a"), ((), "KeyW", "z")],
           "@€{}[]äéßêaz"),
    "us": ([(Shift, "Digit2", "@"), (Shift, "BracketLeft", "{"), (Shift, "BracketRight", "}"),
            ((), "BracketLeft", "["), ((), "BracketRight", "]"), ((), "KeyQ", "q"),
            ((), "KeyZ", "z"), ((), "KeyY", "y")],
           "@{}[]qzy"),
}
ENTER: Stroke = ((), "Enter", "Enter")
# Both ways through the clipboard: accents, CJK, an emoji (outside the BMP), two lines.
TEXT_OUT = "Grüße aus dem Desktop: é 漢字 🐳\nzweite Zeile"
TEXT_IN = "from the browser: naïve 日本語 🎉 ß"


def _connected(page: Any) -> bool:
    return bool(page.evaluate(
        "() => !!document.querySelector('#noVNC_container canvas') &&"
        " document.documentElement.classList.contains('noVNC_connected')"))


def _open(c: Container, page: Any) -> Any:
    """Logged in, connected; CDP for the keys."""
    browser.log_in(page, URL, c.password())
    wait_until(lambda: _connected(page), "noVNC connected")
    return page.context.new_cdp_session(page)


def _x(c: Container, command: str, check: bool = True) -> str:
    return c.exec("sh", "-c", f"DISPLAY=:1 {command}", user="user", check=check).stdout


def _terminal(c: Container, title: str, command: str) -> None:
    """An lxterminal on the desktop running `command` (in the home), focused."""
    c.exec("sh", "-c", 'printf "%s\\n" "$1" > "$HOME/$2.sh"', "sh", command, title,
           user="user")
    c.exec("sh", "-c", f"cd && DISPLAY=:1 exec lxterminal --title={title} -e sh {title}.sh"
           " >/dev/null 2>&1 &", user="user")
    wait_until(lambda: _x(c, f"xdotool search --onlyvisible --name {title}", check=False)
               .strip(), f"the terminal {title} on the desktop", timeout=30)
    _x(c, f"xdotool search --onlyvisible --name {title} windowactivate --sync")


def _key(cdp: Any, kind: str, code: str, key: str, modifiers: int) -> None:
    cdp.send("Input.dispatchKeyEvent", {"type": kind, "code": code, "key": key,
                                        "modifiers": modifiers})


def _stroke(cdp: Any, stroke: Stroke) -> None:
    held, code, key = stroke
    bits = 0
    for modifier in held:
        name, bit = MODIFIER_KEYS[modifier]
        bits |= bit
        _key(cdp, "rawKeyDown", modifier, name, bits)
    _key(cdp, "rawKeyDown", code, key, bits)
    _key(cdp, "keyUp", code, key, bits)
    for modifier in reversed(held):
        name, bit = MODIFIER_KEYS[modifier]
        bits &= ~bit
        _key(cdp, "keyUp", modifier, name, bits)


def _focus_desktop(page: Any) -> None:
    """Keyboard focus on noVNC's canvas, without a click (it would click the desktop)."""
    page.evaluate("() => document.querySelector('#noVNC_container canvas').focus()")


def _read(c: Container, path: str) -> str:
    return c.exec("cat", path, user="user", check=False).stdout  # "" until it exists


@pytest.mark.parametrize("layout", ["us", "de", "fr"])
def test_keys_type_what_the_layout_says(desktop, tmp_path, layout):
    c = desktop(f"--keyboard-layout={layout}")
    c.wait_status("HEALTHY")
    assert f"layout:     {layout}\n" in _x(c, "setxkbmap -query")
    strokes, expected = STROKES[layout]
    with browser.browser(tmp_path) as page:
        cdp = _open(c, page)
        # noVNC sends physical codes: QEMU extended key events, once Xvnc offers them
        # (in its first update).
        wait_until(lambda: page.evaluate("() => import('./app/ui.js').then(m => "
                                         "m.default.rfb._qemuExtKeyEventSupported)") is True,
                   "Xvnc offered QEMU extended key events")
        _terminal(c, "typed", "cat > typed")
        _focus_desktop(page)
        for stroke in [*strokes, ENTER]:
            _stroke(cdp, stroke)
        try:
            wait_until(lambda: _read(c, "/home/user/typed") == expected + "\n",
                       f"the terminal got {expected!r}")
        finally:
            page.screenshot(path=str(browser.artifact(f"keys-{layout}.png")))
        assert _read(c, "/home/user/typed") == expected + "\n"
        # The page compares the browser's layout (where it can tell) with the desktop's.
        guess = page.evaluate("() => Promise.all([import('./whaletop-keys.js'),"
                              " navigator.keyboard.getLayoutMap()])"
                              ".then(([m, map]) => m.guessLayout(map))")
        note = page.locator("#whaletop_keyboard_note")
        if guess is not None and guess != layout:
            note.wait_for()
            # Full access (the VNC password): it offers to switch; a viewer gets the flag.
            assert f"Use {guess} on the desktop" in note.inner_text()
            assert f'the desktop\'s layout is "{layout}"' in note.inner_text()
        else:
            assert note.count() == 0


def test_shortcuts_ctrl_c_and_ctrl_alt_t(desktop, tmp_path):
    c = desktop("--keyboard-layout=de")
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        cdp = _open(c, page)
        _terminal(c, "interrupt", "trap 'echo interrupted > interrupted' INT; cat")
        _focus_desktop(page)
        _stroke(cdp, (("ControlLeft",), "KeyC", "c"))
        wait_until(lambda: _read(c, "/home/user/interrupted") == "interrupted\n",
                   "Ctrl+C interrupted cat in the terminal")

        def terminals() -> int:
            return len(_x(c, "xdotool search --onlyvisible --class lxterminal",
                          check=False).split())

        before = terminals()
        _stroke(cdp, (("ControlLeft", "AltLeft"), "KeyT", "t"))
        wait_until(lambda: terminals() > before, "Ctrl+Alt+T opened a terminal")


def test_clipboard_both_ways_without_the_panel(desktop, tmp_path):
    c = desktop()
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        page.context.grant_permissions(["clipboard-read", "clipboard-write"],
                                       origin=URL.rstrip("/"))
        _open(c, page)

        def page_clipboard() -> str:
            return str(page.evaluate("() => navigator.clipboard.readText()"
                                     ".catch(e => 'unreadable: ' + e)"))

        # Copied on the desktop -> the person's clipboard (noVNC 1.6 alone has only
        # its panel: this is whaletop-keys.js).
        c.exec("sh", "-c", "printf '%s' \"$1\" | DISPLAY=:1 xclip -selection clipboard "
               "-loops 1 >/dev/null 2>&1 &", "sh", TEXT_OUT, user="user")
        wait_until(lambda: page_clipboard() == TEXT_OUT, "the desktop's text on the clipboard")
        assert not page.evaluate("() => document.getElementById('noVNC_clipboard')"
                                 ".classList.contains('noVNC_open')"), "the panel stayed shut"

        # Copied on the person's machine -> the desktop, when the pointer enters it.
        page.evaluate("t => navigator.clipboard.writeText(t)", TEXT_IN)
        page.mouse.move(5, 5)
        box = page.locator("#noVNC_container canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

        def desktop_clipboard() -> str:
            return _x(c, "timeout 2 xclip -o -selection clipboard", check=False)

        wait_until(lambda: desktop_clipboard() == TEXT_IN, "the browser's text on the desktop")


def _resolution(c: Container) -> tuple[int, int]:
    """xdpyinfo's dots per inch (from whole millimetres: within a dot or two)."""
    line = next(x for x in _x(c, "xdpyinfo").splitlines() if "resolution:" in x)
    across, down = line.split()[1].split("x")
    return int(across), int(down)


def _panel_height(c: Container) -> int | None:
    out = _x(c, "xdotool search --onlyvisible --class lxpanel getwindowgeometry %@",
             check=False)
    heights = [int(line.split("x")[-1]) for line in out.splitlines() if "Geometry:" in line]
    return max(heights) if heights else None


@pytest.mark.parametrize("dpi", [96, 192])
def test_dpi_scales_the_session(desktop, tmp_path, dpi):
    c = desktop(f"--dpi={dpi}")
    c.wait_status("HEALTHY")
    assert f"Xft.dpi:\t{dpi}\n" in _x(c, "xrdb -query")
    with browser.browser(tmp_path) as page:
        _open(c, page)
        # Also once the desktop took the browser's size (noVNC's remote resize).
        wait_until(lambda: "1200x760 pixels" in _x(c, "xdpyinfo"), "the desktop resized")
        assert all(abs(d - dpi) <= 2 for d in _resolution(c)), _resolution(c)
        # LXDE's panel (26 pixels high at 96 dpi) scaled with the fonts.
        wait_until(lambda: _panel_height(c) == 26 * dpi // 96, f"a panel {26 * dpi // 96} high")
        _terminal(c, "density", "echo whaletop at $(xrdb -query | grep dpi); cat")
        shot = browser.artifact(f"dpi-{dpi}.png")
        wait_until(lambda: page.screenshot(path=str(shot)) is not None, "a screenshot")


# -- switching the desktop's layout from the page ------------------------------------------

LAYOUT_PATH = "/whaletop/keyboard/layout"


def _layout_served(cookie: str | None = None) -> dict[str, Any]:
    headers = {"Cookie": f"{front.COOKIE}={cookie}"} if cookie else {}
    answer = front.request("GET", "/whaletop/keyboard", headers)
    assert answer.status == 200, answer.status
    doc: dict[str, Any] = json.loads(answer.body)
    return doc


def _put_layout(body: bytes, cookie: str | None = None) -> int:
    headers = {"Content-Type": "text/plain"}
    if cookie:
        headers["Cookie"] = f"{front.COOKIE}={cookie}"
    return front.request("PUT", LAYOUT_PATH, headers, body).status


def _query_layout(c: Container, user: str = "user") -> str:
    out = c.exec("sh", "-c", "DISPLAY=:1 setxkbmap -query", user=user).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("layout:"))


@pytest.fixture
def users_dir(tmp_path):
    """Sign-in: alice has full access, bob is a viewer."""
    path = tmp_path / "users"
    path.mkdir()
    (path / "users").write_text(front.users_text(alice="full", bob="viewer"))
    return path


def test_the_page_switches_the_desktops_layout_for_full_access_only(desktop, users_dir,
                                                                     tmp_path):
    # Headless Chromium's keyboard is a US one: the desktop starts German.
    c = front.signed_in_desktop(desktop, users_dir, "--keyboard-layout=de")
    assert _query_layout(c) == "de"
    with browser.browser(tmp_path) as page:
        page.goto(URL)
        assert front.submit(page, "alice", front.PASSWORDS["alice"]) == 303
        page.wait_for_url("**/vnc.html*")
        wait_until(lambda: _connected(page), "noVNC connected")
        use = page.locator("#whaletop_keyboard_use")
        use.wait_for()
        assert use.inner_text() == "Use us on the desktop"
        page.screenshot(path=str(browser.artifact("keys-switch.png")))
        use.click()
        page.wait_for_selector("#whaletop_keyboard_note[data-state=done]")
        page.screenshot(path=str(browser.artifact("keys-switched.png")))
        assert _query_layout(c) == "us"
        cookie = next(k["value"] for k in page.context.cookies() if k["name"] == front.COOKIE)
        assert _layout_served(cookie)["layout"] == "us"
        changed = [e for e in c.log_lines() if e.get("event") == "keyboard_layout_changed"]
        assert [(e["old"], e["new"], e["who"]) for e in changed] == [("de", "us", "alice")]

        # Keys typed now give the US characters.
        cdp = page.context.new_cdp_session(page)
        wait_until(lambda: page.evaluate("() => import('./app/ui.js').then(m => "
                                         "m.default.rfb._qemuExtKeyEventSupported)") is True,
                   "Xvnc offered QEMU extended key events")
        _terminal(c, "typed", "cat > typed")
        _focus_desktop(page)
        strokes, expected = STROKES["us"]
        for stroke in [*strokes, ENTER]:
            _stroke(cdp, stroke)
        wait_until(lambda: _read(c, "/home/user/typed") == expected + "\n",
                   f"the terminal got {expected!r}")

    # A session restarted after a crash keeps the layout the page chose.
    session = c.status_json()["children"]["session"]["pid"]
    c.exec("kill", "-KILL", str(_lxsession_pid(c)), user="user")
    wait_until(lambda: c.status_json()["children"]["session"]["pid"] != session,
               "a new session")
    c.wait_status("HEALTHY")
    assert _query_layout(c) == "us"

    # A viewer may not switch it: 403 before anything is written.
    viewer = front.sign_in("bob", front.PASSWORDS["bob"]).cookie()
    assert viewer
    assert _put_layout(b"de", viewer) == 403
    assert _put_layout(b"de") == 401  # nobody signed in
    full = front.sign_in("alice", front.PASSWORDS["alice"]).cookie()
    assert full
    # A bad layout: one warning line, nothing changes, the request gone.
    before = len(c.log_lines())
    assert _put_layout(b"xx'; -option", full) in (201, 204)
    wait_until(lambda: [e for e in c.log_lines()[before:]
                        if e.get("event") == "keyboard_request_refused"], "the refusal")
    assert _put_layout(b"gb", full) in (201, 204)  # a layout, but not one the page asks for
    wait_until(lambda: len([e for e in c.log_lines()[before:]
                            if e.get("event") == "keyboard_request_refused"]) == 2,
               "the second refusal")
    assert _put_layout(b"d" * 100, full) == 413
    assert _query_layout(c) == "us"
    assert _layout_served(full)["layout"] == "us"
    assert c.exec("ls", "-A", "/run/whaletop/requests").stdout == ""
    assert front.request("GET", LAYOUT_PATH, {"Cookie": f"{front.COOKIE}={full}"}).status == 403
    assert c.status().strip() == "HEALTHY"


def test_by_default_the_page_switches_it_with_the_vnc_password(desktop, tmp_path):
    """No sign-in: the page sends HTTP Basic with the VNC password typed into noVNC, as
    for files; without it, or with another, nothing changes."""
    c = desktop("--keyboard-layout=de")
    c.wait_status("HEALTHY")
    assert _layout_served() == {"layout": "de", "dpi": 96, "switch": True,
                                "choices": ["us", "de", "fr"], "auth": "vnc-password",
                                "user": "user"}
    assert _put_layout(b"us") == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"user:wrong1").decode()}
    assert front.request("PUT", LAYOUT_PATH, wrong, b"us").status == 401
    assert _query_layout(c) == "de"
    assert not [e for e in c.log_lines() if e.get("event", "").startswith("keyboard_")]
    with browser.browser(tmp_path) as page:
        _open(c, page)
        use = page.locator("#whaletop_keyboard_use")
        use.wait_for()
        use.click()
        page.wait_for_selector("#whaletop_keyboard_note[data-state=done]")
    assert _query_layout(c) == "us"
    assert _layout_served()["layout"] == "us"
    changed = [e for e in c.log_lines() if e.get("event") == "keyboard_layout_changed"]
    assert [(e["old"], e["new"], e["who"]) for e in changed] == [("de", "us", "user")]


def test_without_root_nginx_and_whaletopd_share_the_requests_folder(desktop, users_dir):
    """--user: nginx's worker is whaletopd's own uid."""
    c = desktop("--web-users=/users/users", "--keyboard-layout=fr",
                extra=("--user", "1000:1000"), volumes=(f"{users_dir}:/users:ro",))
    c.wait_status("HEALTHY")
    full = front.sign_in("alice", front.PASSWORDS["alice"]).cookie()
    assert full
    assert _put_layout(b"de", full) in (201, 204)
    wait_until(lambda: _layout_served(full)["layout"] == "de", "the layout switched")
    assert _query_layout(c, "1000:1000") == "de"
    assert c.exec("stat", "-c", "%u %a", "/run/whaletop/requests").stdout == "1000 700\n"
