"""--link in a real browser: the page's noVNC quality and compression levels and Xvnc's
frame rate follow the flag; a level the person chose in the address still wins."""

from __future__ import annotations

import pytest

from tests import tools
from tests.e2e import browser
from tests.e2e.conftest import Container, wait_until
from whaletopd.link import LINKS

pytestmark = [pytest.mark.e2e,
              tools.CHROMIUM.needed]

LEVELS = """async () => {
  const UI = (await import("./app/ui.js")).default;
  if (!UI.rfb || !UI.connected) return null;
  return {quality: UI.rfb.qualityLevel, compression: UI.rfb.compressionLevel};
}"""


def _frame_rate(c: Container) -> str:
    out = c.exec("vncconfig", "-display", ":1", "-get", "FrameRate", user="user").stdout
    return out.strip()


@pytest.mark.parametrize("name", ["lan", "wan"])
def test_the_page_and_xvnc_follow_the_link(desktop, tmp_path, name):
    c = desktop(*([] if name == "lan" else ["--link", name]))
    c.wait_status("HEALTHY")
    chosen = LINKS[name]
    assert _frame_rate(c) == str(chosen.frame_rate)
    with browser.browser(tmp_path) as page:
        browser.log_in(page, "http://127.0.0.1:8080/", c.password())
        wait_until(lambda: page.evaluate(LEVELS) is not None, "noVNC connected")
        assert page.evaluate(LEVELS) == {"quality": chosen.quality,
                                         "compression": chosen.compression}


def test_the_address_beats_the_link(desktop, tmp_path):
    c = desktop("--link", "wan")
    c.wait_status("HEALTHY")
    with browser.browser(tmp_path) as page:
        browser.log_in(page, "http://127.0.0.1:8080/?quality=7&compression=1", c.password())
        wait_until(lambda: page.evaluate(LEVELS) is not None, "noVNC connected")
        assert page.evaluate(LEVELS) == {"quality": 7, "compression": 1}
