"""--keyboard-layout and --dpi: validated against xkb-data, and applied by the session's
command line (setxkbmap, xrdb) and Xvnc's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from whaletopd import keyboard, nginx_conf
from whaletopd.config import Config, ConfigError, parse
from whaletopd.paths import Paths
from whaletopd.programs import Launch, session_argv, xvnc_argv

from .. import tools

needs_xkb = tools.XKB_DATA.needed


def test_defaults() -> None:
    config = parse([], {})
    assert (config.keyboard_layout, config.dpi) == ("us", 96)


@needs_xkb
@pytest.mark.parametrize("spec", ["us", "de", "fr", "gb", "de(nodeadkeys)", "fr(oss)",
                                  "us(intl)", "ch(fr)"])
def test_layouts_of_xkb_data_are_taken(spec: str) -> None:
    assert parse(["--keyboard-layout", spec], {}).keyboard_layout == spec
    assert parse([], {"WHALETOP_KEYBOARD_LAYOUT": spec}).keyboard_layout == spec


@needs_xkb
@pytest.mark.parametrize(("spec", "says"), [
    ("xx", "names no layout of xkb-data"),
    ("de(nope)", "names no variant of de"),
    ("us(nodeadkeys)", "names no variant of us"),
    ("", "is not LAYOUT or LAYOUT(VARIANT)"),
    ("DE", "is not LAYOUT"),
    ("de:nodeadkeys", "is not LAYOUT"),
    ("de(nodeadkeys", "is not LAYOUT"),
    ("us,de", "is not LAYOUT"),
    ("us;", "is not LAYOUT"),
    ("us'", "is not LAYOUT"),
    ("us(a b)", "is not LAYOUT"),
    ("us\n", "is not LAYOUT"),
    ("-option", "is not LAYOUT"),
])
def test_other_layouts_are_refused_by_name(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=r"^--keyboard-layout: .*" + says.replace("(", r"\(")
                       .replace(")", r"\)")):
        parse(["--keyboard-layout=" + spec], {})


def test_a_missing_xkb_data_is_named(tmp_path: Path) -> None:
    why = keyboard.problem("de", tmp_path / "evdev.lst")
    assert why is not None
    assert "is xkb-data installed?" in why


def test_variants_are_read_per_layout(tmp_path: Path) -> None:
    rules = tmp_path / "evdev.lst"
    rules.write_text("! layout\n  de  German\n  fr  French\n! variant\n"
                     "  nodeadkeys  de: German (no dead keys)\n  oss  fr: French (alt.)\n")
    assert keyboard.problem("de(nodeadkeys)", rules) is None
    assert keyboard.problem("fr(oss)", rules) is None
    assert keyboard.problem("fr(nodeadkeys)", rules) == (
        "names no variant of fr in xkb-data (some: oss)")


@pytest.mark.parametrize(("value", "ok"), [("96", True), ("48", True), ("480", True),
                                           ("192", True), ("47", False), ("481", False),
                                           ("0", False), ("-96", False)])
def test_dpi_range(value: str, ok: bool) -> None:
    if ok:
        assert parse(["--dpi", value], {}).dpi == int(value)
        assert parse([], {"WHALETOP_DPI": value}).dpi == int(value)
    else:
        with pytest.raises(ConfigError, match=r"^--dpi: -?\d+ must be between 48 and 480"):
            parse(["--dpi=" + value], {})


def test_dpi_is_a_whole_number() -> None:
    with pytest.raises(ConfigError, match=r"WHALETOP_DPI='1\.5' is not a whole number"):
        parse([], {"WHALETOP_DPI": "1.5"})


def test_xvnc_gets_the_dpi(paths: Paths) -> None:
    argv = xvnc_argv(Launch(Config(dpi=192), paths))
    assert argv[argv.index("-dpi") + 1] == "192"
    assert "-RawKeyboard" in argv  # physical keys through the session's layout


def test_the_session_applies_layout_and_dpi_then_becomes_the_session(paths: Paths) -> None:
    argv = session_argv(Launch(Config(keyboard_layout="de(nodeadkeys)", dpi=144), paths))
    assert argv[:2] == ["sh", "-c"]
    assert argv[3:] == ["whaletop-session", "de", "nodeadkeys", "144", "39", "36",
                        keyboard.PANEL_CONF, "dbus-run-session", "--", "startlxde"]


def _fake(bin_dir: Path, name: str, record: Path) -> None:
    script = bin_dir / name
    script.write_text(f'#!/bin/sh\nprintf "%s|" {name} "$@" >> {record}\n'
                      f'[ {name} = xrdb ] && cat >> {record}\nexit 0\n')
    script.chmod(0o755)


def test_the_prefix_runs_setxkbmap_and_xrdb_then_execs(tmp_path: Path) -> None:
    """The real shell runs the prefix; setxkbmap and xrdb are stand-ins that record
    their arguments (the real ones need an X server: the e2e tests run them)."""
    record = tmp_path / "record"
    for name in ("setxkbmap", "xrdb"):
        _fake(tmp_path, name, record)
    argv = [*keyboard.session_prefix("fr(oss)", 96), "sh", "-c",
            'echo "session $$ ${XDG_CONFIG_DIRS:-unset}"']
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin",
                              "XDG_RUNTIME_DIR": str(tmp_path)})
    assert out.stdout.startswith("session ")
    assert out.stdout.endswith(" unset\n")  # at 96 dpi, LXDE's own panel
    assert record.read_text() == ("setxkbmap|-layout|fr|-variant|oss|-option||"
                                  "xrdb|-nocpp|-merge|-|Xft.dpi: 96\n")


def test_off_96_dpi_the_panel_is_scaled_in_a_copy(tmp_path: Path) -> None:
    for name in ("setxkbmap", "xrdb"):
        _fake(tmp_path, name, tmp_path / "record")
    panel = tmp_path / "panel"
    panel.write_text("Global {\n    edge=bottom\n    height=26\n}\n")
    runtime = tmp_path / "run"
    runtime.mkdir()
    argv = [*keyboard.session_prefix("us", 192, str(panel)), "sh", "-c",
            'echo "$XDG_CONFIG_DIRS"']
    out = subprocess.run(argv, capture_output=True, text=True, check=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin",
                              "XDG_RUNTIME_DIR": str(runtime)})
    assert out.stdout == f"{runtime}/whaletop-xdg:/etc/xdg\n"
    scaled = runtime / "whaletop-xdg/lxpanel/LXDE/panels/panel"
    assert scaled.read_text() == ("Global {\n    edge=bottom\n    height=52\n"
                                  "    iconsize=48\n}\n")
    assert panel.read_text().count("height=26")  # the image's own is untouched


def test_a_failing_setxkbmap_starts_no_session(tmp_path: Path) -> None:
    fail = tmp_path / "setxkbmap"
    fail.write_text("#!/bin/sh\nexit 1\n")
    fail.chmod(0o755)
    argv = [*keyboard.session_prefix("de", 96), "echo", "session"]
    out = subprocess.run(argv, capture_output=True, text=True,
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert out.returncode == 1
    assert "session" not in out.stdout


def _location(conf: str) -> str:
    lines = conf.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.strip() == "location = /whaletop/keyboard {")
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    end = next(i for i in range(start, len(lines)) if lines[i] == indent + "}")
    return "\n".join(lines[start:end])


def test_the_page_reads_the_layout_behind_the_same_gate(paths: Paths) -> None:
    """The layout is whaletopd's file (kbswitch.py rewrites it when the page switches
    it), never a word of nginx's configuration."""
    config = parse(["--dpi", "144"], {})
    conf = nginx_conf.render(config, paths,
                             nginx_conf.FrontDoorSpec(probe_token="abc"))
    block = _location(conf)
    assert f"alias {paths.keyboard_file};" in block
    assert "auth_request" not in block
    signed = nginx_conf.render(
        Config(keyboard_layout="de", web_password_from_env=True, web_password="x" * 8),
        paths, nginx_conf.FrontDoorSpec(probe_token="abc"))
    assert "auth_request /auth/check;" in _location(signed)


def test_nginx_never_gets_the_layout(paths: Paths) -> None:
    conf = nginx_conf.render(Config(keyboard_layout="us'; return 200 'x"), paths,
                             nginx_conf.FrontDoorSpec(probe_token="abc"))
    assert "return 200 'x" not in conf


@tools.NODE.needed
def test_the_page_guesses_layouts_from_the_browsers_key_map(tmp_path: Path) -> None:
    """whaletop-keys.js's guessLayout, run by node on key maps as Chromium reports them."""
    source = (Path(__file__).parents[2] / "docker/web/whaletop-keys.js").read_text()
    start = source.index("export function guessLayout")
    end = source.index("\n}\n", start) + 3
    script = source[start:end].replace("export ", "") + """
const maps = {
  us: {KeyQ: "q", KeyZ: "z", KeyY: "y", Semicolon: ";", Backslash: "\\\\"},
  gb: {KeyQ: "q", KeyZ: "z", KeyY: "y", Semicolon: ";", Backslash: "#"},
  de: {KeyQ: "q", KeyZ: "y", KeyY: "z", Semicolon: "ö", Backslash: "#"},
  ch: {KeyQ: "q", KeyZ: "y", KeyY: "z", Semicolon: "é", Backslash: "$"},
  fr: {KeyQ: "a", KeyZ: "w", KeyY: "y", Semicolon: "m", Backslash: "*"},
  none: {},
};
const out = {};
for (const [name, keys] of Object.entries(maps)) {
  out[name] = guessLayout(new Map(Object.entries(keys)));
}
console.log(JSON.stringify(out));
"""
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        '{"us":"us","gb":null,"de":"de","ch":null,"fr":"fr","none":null}')
