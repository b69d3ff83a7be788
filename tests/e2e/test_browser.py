"""The desktop as a person meets it: a real browser opens the page, types the password,
works, resizes the window, copies and pastes; over HTTPS and behind a reverse proxy."""

from __future__ import annotations

import pytest

from tests import tools
from tests.e2e import browser, vnc
from tests.e2e.conftest import Container, wait_until

pytestmark = [pytest.mark.e2e,
              tools.CHROMIUM.needed]


def _screen_size(c: Container) -> str:
    out = c.exec("xdpyinfo", "-display", ":1", user="user").stdout
    return next(line.split()[1] for line in out.splitlines() if "dimensions:" in line)


def _connected(page) -> bool:
    return bool(page.evaluate(
        "() => !!document.querySelector('#noVNC_container canvas') &&"
        " document.documentElement.classList.contains('noVNC_connected')"))


def _settled(page) -> bool:
    """What a user sees once logged in: no dialog, no status message over the desktop."""
    return bool(page.evaluate(
        "() => !document.querySelector('#noVNC_credentials_dlg')"
        ".classList.contains('noVNC_open') &&"
        " !document.querySelector('#noVNC_status').classList.contains('noVNC_open') &&"
        " document.querySelector('#noVNC_status').getBoundingClientRect().bottom <= 0"))


def _windows(c: Container) -> list[str]:
    ids = c.exec("xdotool", "search", "--onlyvisible", "--name", ".", user="user",
                 check=False).stdout.split()
    names = [c.exec("xdotool", "getwindowname", i, user="user", check=False).stdout.strip()
             for i in ids]
    return [n for n in names if n]


def test_open_log_in_see_the_desktop_and_resize(desktop, tmp_path):
    c = desktop()
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        browser.log_in(page, "http://127.0.0.1:8080/", c.password())
        # The root page sent the browser on to noVNC with whaletop's defaults.
        assert page.url == ("http://127.0.0.1:8080/vnc.html"
                            "?autoconnect=true&resize=remote&reconnect=true")
        wait_until(lambda: _connected(page), "noVNC connected")
        # remote resize: the desktop takes the browser's size, no scaling
        wait_until(lambda: _screen_size(c) == "1200x760", "desktop resized to the window")
        wait_until(lambda: _settled(page), "the password dialog and the status bar gone")
        shot = browser.artifact("desktop-in-browser.png")
        wait_until(lambda: page.screenshot(path=str(shot)) is not None and vnc.looks_drawn(shot),
              "the LXDE panel and wallpaper drawn in the browser")
        assert "Error" not in _windows(c), "no error dialog on first paint"
        assert not [w for w in _windows(c) if "VNC" in w], "no stray VNC config window"
        page.set_viewport_size({"width": 1024, "height": 640})
        wait_until(lambda: _screen_size(c) == "1024x640", "the desktop followed the window")
        page.screenshot(path=str(browser.artifact("desktop-resized.png")))


def test_wrong_password_shows_the_failure(desktop, tmp_path):
    c = desktop()
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        browser.log_in(page, "http://127.0.0.1:8080/", "not-" + c.password())
        wait_until(lambda: "Authentication failed" in page.inner_text("#noVNC_status"),
              "noVNC says the authentication failed")
        page.screenshot(path=str(browser.artifact("wrong-password.png")))
        assert not _connected(page)


def test_clipboard_both_ways(desktop, tmp_path):
    c = desktop()
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        browser.log_in(page, "http://127.0.0.1:8080/", c.password())
        wait_until(lambda: _connected(page), "noVNC connected")
        # Copied in the desktop -> noVNC's clipboard panel.
        c.exec("sh", "-c", "printf 'from the desktop' | DISPLAY=:1 xclip -selection clipboard "
               "-loops 1 >/dev/null 2>&1 &", user="user")
        wait_until(lambda: page.input_value("#noVNC_clipboard_text") == "from the desktop",
              "the desktop's clipboard in noVNC's panel")
        # Typed into noVNC's clipboard panel -> the desktop's clipboard.
        page.click("#noVNC_clipboard_button")
        page.fill("#noVNC_clipboard_text", "from the browser")
        page.dispatch_event("#noVNC_clipboard_text", "change")

        def desktop_clipboard() -> str:
            return c.exec("sh", "-c", "DISPLAY=:1 timeout 2 xclip -o -selection clipboard",
                          user="user", check=False).stdout

        wait_until(lambda: desktop_clipboard() == "from the browser", "noVNC's text in the desktop")


def test_bookmarked_parameters_survive_the_root_page(desktop, tmp_path):
    """A bookmark made for noVNC's own page (?password=...&view_only=1) still works on the
    root address: the parameters reach vnc.html, whaletop's defaults are added."""
    c = desktop()
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        page.goto(f"http://127.0.0.1:8080/?password={c.password()}&view_only=1")
        page.wait_for_url("**/vnc.html*")
        assert page.url == (f"http://127.0.0.1:8080/vnc.html?password={c.password()}"
                            "&view_only=1&autoconnect=true&resize=remote&reconnect=true")
        # No dialog: noVNC logged in with the bookmarked password.
        wait_until(lambda: _connected(page), "noVNC connected with the address's password")
        assert page.evaluate("() => document.getElementById('noVNC_setting_view_only')"
                             ".checked") is True


def test_https_and_reverse_proxy_sub_path(desktop, tmp_path):
    c = desktop("--enable-tls")
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        # http:// is sent on to https:// by the desktop itself.
        browser.log_in(page, "http://127.0.0.1:8080/", c.password())
        assert page.url.startswith("https://127.0.0.1:8080/vnc.html?")
        wait_until(lambda: _connected(page), "noVNC connected over HTTPS")
    c2 = desktop("--web-port=8081")
    c2.wait_status("HEALTHY")
    proxy = browser.SubPathProxy(upstream_port=8081)
    try:
        with browser.browser(tmp_path / "p") as page:
            browser.log_in(page, f"http://127.0.0.1:{proxy.port}/desk/", c2.password())
            assert page.url.startswith(f"http://127.0.0.1:{proxy.port}/desk/vnc.html?")
            wait_until(lambda: _connected(page), "noVNC connected through /desk/")
        assert "/websockify" in proxy.rewritten, "the WebSocket went through the sub-path"
        assert "/whaletop-start.js" in proxy.rewritten, "the root page's script, too"
    finally:
        proxy.close()
