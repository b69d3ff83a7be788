"""--link: the flag, Xvnc's frame rate on its command line, and the page's noVNC levels
(nginx answers them as defaults.json: tested with a real nginx in test_nginx_conf)."""

from __future__ import annotations

import json

import pytest

from whaletopd import link
from whaletopd.config import Config, ConfigError, parse
from whaletopd.paths import Paths
from whaletopd.programs import Launch, xvnc_argv


def test_lan_is_the_default() -> None:
    assert parse([], {}).link == "lan" == link.DEFAULT == Config().link


@pytest.mark.parametrize("name", ["lan", "wan"])
def test_the_flag_and_its_variable(name: str) -> None:
    assert parse(["--link", name], {}).link == name
    assert parse([], {"WHALETOP_LINK": name}).link == name
    assert parse(["--link", name], {"WHALETOP_LINK": "lan" if name == "wan" else "wan"}
                 ).link == name


@pytest.mark.parametrize("value", ["LAN", "fast", "", "wan ", "lan,wan"])
def test_other_words_are_refused_naming_the_flag(value: str) -> None:
    with pytest.raises(ConfigError, match="--link"):
        parse(["--link", value], {})
    with pytest.raises(ConfigError, match="--link"):
        parse([], {"WHALETOP_LINK": value})


def test_every_accepted_word_has_settings() -> None:
    for name in ("lan", "wan"):
        assert parse(["--link", name], {}).link in link.LINKS
    assert set(link.LINKS) == {"lan", "wan"}


@pytest.mark.parametrize("name", ["lan", "wan"])
def test_xvnc_gets_the_link_s_frame_rate(paths: Paths, name: str) -> None:
    argv = xvnc_argv(Launch(Config(link=name), paths, ready_fd=3))
    assert argv.count("-FrameRate") == 1
    assert argv[argv.index("-FrameRate") + 1] == str(link.LINKS[name].frame_rate)


def test_wan_sends_fewer_bytes_than_lan() -> None:
    lan, wan = link.LINKS["lan"], link.LINKS["wan"]
    assert wan.quality < lan.quality
    assert wan.compression > lan.compression
    assert wan.frame_rate < lan.frame_rate


@pytest.mark.parametrize("name", ["lan", "wan"])
def test_novnc_defaults_are_noVNC_s_setting_names_in_range(name: str) -> None:
    doc = json.loads(link.novnc_defaults(name))
    assert set(doc) == {"quality", "compression"}  # noVNC's UI.initSetting names
    assert all(isinstance(v, int) and 0 <= v <= 9 for v in doc.values())
    assert "\n" not in link.novnc_defaults(name)
