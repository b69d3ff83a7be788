"""The image's slimming (docker/slim, README "The image: what is left out"): what is left
out is out, what stays still works, and apt is not left broken for later installs.

Containers: `docker run --rm --network none`, no desktop, no port.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import docker

pytestmark = pytest.mark.e2e

LEFT_OUT = ("mesa-libgallium", "libllvm19", "libz3-4", "libgs10", "libspectre1", "cpp",
            "cpp-14", "nodejs", "libnode115", "novnc")
# Libraries that link Mesa's libgallium, left out by design (OpenGL drivers); every other
# program and library must find all it links.
GALLIUM_USERS = ("libGLX_mesa.so", "libGLX_indirect.so", "/gbm/dri_gbm.so")


def sh(image: str, script: str, check: bool = True) -> str:
    result = docker("run", "--rm", "--network", "none", "--user", "root", "--entrypoint",
                    "sh", image, "-ec", script, check=False)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_apt_is_consistent(image: str) -> None:
    """Nothing forced: dpkg's database has no half-installed or broken package and apt
    sees every dependency satisfied, so later `apt-get install`s work."""
    out = sh(image, "apt-get check && dpkg --audit && echo AUDIT-CLEAN")
    assert "AUDIT-CLEAN" in out


def test_left_out_packages_are_not_installed_and_the_stub_says_so(image: str) -> None:
    status = sh(image, "dpkg-query -W -f='${Package} ${db:Status-Status}\\n' "
                + " ".join(LEFT_OUT) + " 2>/dev/null || true")
    installed = [line.split()[0] for line in status.splitlines() if line.endswith(" installed")]
    assert installed == []
    provides = sh(image, "dpkg-query -W -f='${Provides}' whaletop-slim")
    for name in ("mesa-libgallium", "libspectre1", "cpp"):
        assert name in provides


def test_every_program_finds_its_libraries(image: str) -> None:
    """What the stub stands in for is needed by no program that stays: only Mesa's own GL
    libraries miss libgallium."""
    out = sh(image, r"""
for f in /usr/bin/* /usr/sbin/* /usr/lib/chromium/chromium /usr/lib/x86_64-linux-gnu/*.so* \
         /usr/lib/x86_64-linux-gnu/*/*.so /usr/lib/x86_64-linux-gnu/*/*/*.so; do
    [ -f "$f" ] || continue
    missing=$(ldd "$f" 2>/dev/null | grep 'not found' | tr -s '\n\t ' '   ')
    [ -n "$missing" ] && echo "$f: $missing"
done; true""")
    missing = [line for line in out.splitlines()
               if "/systemd/" not in line  # systemd's private libraries: found by its RUNPATH
               and not (any(u in line for u in GALLIUM_USERS) and "libgallium" in line)]
    assert missing == []
    assert "libGLX_mesa.so" in out  # the check itself sees what is missing


def test_novnc_files_without_nodejs(image: str) -> None:
    out = sh(image, "ls /usr/share/novnc/vnc.html /usr/share/novnc/core/rfb.js "
                    "/usr/share/doc/novnc/copyright && ! command -v node && echo NO-NODE")
    assert "NO-NODE" in out


def test_translations_and_manuals_stay_out_of_later_installs(image: str) -> None:
    """dpkg's path-exclude holds for every package, including those installed after:
    lxterminal's own translations are listed by dpkg but not on disk; Chromium's en-US
    pack and the copyright files are."""
    out = sh(image, r"""
test -f /etc/dpkg/dpkg.cfg.d/whaletop-slim
test -f /usr/lib/chromium/locales/en-US.pak
test -f /usr/share/doc/lxterminal/copyright
mo=$(dpkg -L lxterminal | grep -c '^/usr/share/locale/.*\.mo$')
present=$(dpkg -L lxterminal | grep '^/usr/share/locale/.*\.mo$' \
          | while read -r f; do [ -e "$f" ] && echo "$f"; done | wc -l)
echo "listed=$mo present=$present"
""")
    listed, present = (int(part.split("=")[1]) for part in out.split())
    assert listed > 10
    assert present == 0


def test_xrdb_merges_without_cpp(image: str) -> None:
    """lxsession hands its cursor settings to `xrdb -merge`; with no cpp installed xrdb
    reads the text as it is."""
    out = sh(image, r"""
Xvnc :7 -SecurityTypes None -rfbport -1 -rfbunixpath /tmp/vnc7 -nolisten tcp >/tmp/x.log 2>&1 &
for i in $(seq 100); do [ -e /tmp/.X11-unix/X7 ] && break; sleep 0.1; done
test -z "$(command -v cpp)"
printf 'Xcursor.theme: whaletop-test\nXcursor.size: 24\n' | DISPLAY=:7 xrdb -merge
DISPLAY=:7 xrdb -query
""")
    assert "Xcursor.theme:\twhaletop-test" in out
    assert "Xcursor.size:\t24" in out
