"""Issue #6 as a user meets it: Chromium in the image, run as the desktop user (uid 1000),
is sandboxed under chrome.json (and unconfined), has no usable sandbox under Docker's
default profile, where the launcher falls back to --no-sandbox and says so; and
chrome.json keeps the rest of the desktop working and the rest of Docker's refusals.

Chromium is asked itself: a small probe (PROBE below) starts it over
--remote-debugging-pipe, reads chrome://sandbox's text and the renderers'
/proc/PID/status and uid_map. Containers: --network none, except the full desktop
(--network host on the web port set aside for this suite, 8380: its only TCP port).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import vnc
from tests.e2e.conftest import ROOT, Container, docker

pytestmark = pytest.mark.e2e

PROFILE = ROOT / "chrome.json"
LAUNCHER = ROOT / "docker" / "chromium-launcher"
WEB_PORT = 8380
USER = "1000:1000"
CHROME_JSON = ("--security-opt", f"seccomp={PROFILE}")
UNCONFINED = ("--security-opt", "seccomp=unconfined")
# uid_map of a process in the container's own (here: the initial) user namespace.
HOST_UID_MAP = "0 0 4294967295"

PROBE = r'''
import json, os, subprocess, sys, tempfile, time

chrome = sys.argv[1:]
headless = os.environ.get("PROBE_HEADLESS", "1") == "1"
flags = ["--headless=new", "--disable-gpu"] if headless else []
flags += ["--no-first-run", "--disable-background-networking", "--disable-component-update",
          "--disable-sync", "--user-data-dir=" + tempfile.mkdtemp(), "--remote-debugging-pipe",
          "about:blank"]
to_chrome, from_chrome = os.pipe(), os.pipe()

def pipes_on_3_and_4():
    a, b = os.dup(to_chrome[0]), os.dup(from_chrome[1])
    os.dup2(a, 3)
    os.dup2(b, 4)

browser = subprocess.Popen(chrome + flags, preexec_fn=pipes_on_3_and_4, close_fds=False)
os.close(to_chrome[0])
os.close(from_chrome[1])
buf, serial = b"", 0

def call(method, params=None, session=None):
    global buf, serial
    serial += 1
    msg = {"id": serial, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    os.write(to_chrome[1], json.dumps(msg).encode() + b"\0")
    while True:
        while b"\0" not in buf:
            chunk = os.read(from_chrome[0], 65536)
            if not chunk:
                print(json.dumps({"error": "browser exited", "returncode": browser.wait()}))
                sys.exit(0)
            buf += chunk
        raw, buf = buf.split(b"\0", 1)
        reply = json.loads(raw)
        if reply.get("id") == serial:
            return reply.get("result", reply.get("error"))

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return "unreadable: " + e.strerror

target = call("Target.createTarget", {"url": "chrome://sandbox"})["targetId"]
session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
text, deadline = "", time.monotonic() + 20
while "sandboxed" not in text and time.monotonic() < deadline:
    time.sleep(0.1)
    res = call("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                    "returnByValue": True}, session)
    text = res.get("result", {}).get("value", "")
renderers = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    # Zygote children rename themselves (setproctitle): one string, spaces between words.
    if "--type=renderer" in read(f"/proc/{pid}/cmdline").replace("\0", " ").split():
        status = dict(line.split(":\t", 1) for line in read(f"/proc/{pid}/status").splitlines()
                      if ":\t" in line)
        renderers.append({"pid": int(pid), "seccomp": status.get("Seccomp"),
                          "seccomp_filters": status.get("Seccomp_filters"),
                          "nspid": status.get("NSpid", "").split(),
                          "uid_map": " ".join(read(f"/proc/{pid}/uid_map").split())})
own = dict(line.split(":\t", 1) for line in read("/proc/self/status").splitlines()
           if ":\t" in line)
browser_argv = read(f"/proc/{browser.pid}/cmdline").split("\0")
call("Browser.close")
print(json.dumps({"page": text, "renderers": renderers, "browser_argv": browser_argv,
                  "own_seccomp_filters": own.get("Seccomp_filters"),
                  "returncode": browser.wait(timeout=20)}))
'''


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("chromium-probe")
    (folder / "probe.py").write_text(PROBE)
    folder.chmod(0o755)
    return folder


def _name() -> str:
    return f"whaletop-seccomp-{uuid.uuid4().hex[:8]}"


def _run(image: str, *opts: str, cmd: tuple[str, ...],
         timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """A throwaway container, no network, as the desktop's uid; removed even on timeout."""
    name = _name()
    try:
        return docker("run", "--rm", "--name", name, "--network", "none", "--user", USER,
                      "-e", "HOME=/tmp", *opts, image, *cmd, check=False, timeout=timeout)
    finally:
        docker("rm", "-f", name, check=False)


def _probe(image: str, probe_dir: Path, *opts: str) -> tuple[dict[str, Any], str]:
    """Chromium through the repository's launcher (as /usr/local/bin/chromium, as in the
    image): chrome://sandbox, renderers and the browser's command line; and stderr."""
    out = _run(image, "-v", f"{probe_dir}:/probe:ro",
               "-v", f"{LAUNCHER}:/usr/local/bin/chromium:ro", *opts,
               cmd=("python3", "/probe/probe.py", "/usr/local/bin/chromium"))
    assert out.stdout.strip(), f"probe printed nothing; stderr:\n{out.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result, out.stderr


def _assert_sandboxed(result: dict[str, Any], stderr: str) -> None:
    page = result["page"]
    assert "Layer 1 Sandbox\tNamespace" in page, (page, stderr[-3000:])
    assert "PID namespaces\tYes" in page
    assert "Network namespaces\tYes" in page
    assert "Seccomp-BPF sandbox\tYes" in page
    assert "You are adequately sandboxed." in page
    assert "--no-sandbox" not in result["browser_argv"]
    assert result["renderers"], "no renderer process found"
    for renderer in result["renderers"]:
        assert renderer["seccomp"] == "2", renderer  # filter mode
        if renderer["seccomp_filters"] is not None:  # Linux >= 5.9: count them
            # Chromium's own filter on top of the container's (if any).
            assert int(renderer["seccomp_filters"]) > int(result["own_seccomp_filters"])
        assert len(renderer["nspid"]) >= 2, renderer  # a PID namespace of its own
        assert renderer["uid_map"] != HOST_UID_MAP, renderer  # a user namespace of its own
    assert "whaletop-chromium: namespace sandbox usable: starting with the sandbox" in stderr


# -- Chromium's sandbox, three ways -------------------------------------------------------------

@pytest.mark.parametrize("security", [CHROME_JSON, UNCONFINED], ids=["chrome.json", "unconfined"])
def test_chromium_is_sandboxed(image: str, probe_dir: Path, security: tuple[str, ...]) -> None:
    result, stderr = _probe(image, probe_dir, "--shm-size", "512m", *security)
    _assert_sandboxed(result, stderr)
    assert "--disable-dev-shm-usage (docker" not in stderr  # 512 MB is enough


def test_docker_default_profile_leaves_chromium_no_usable_sandbox(image: str) -> None:
    out = _run(image, cmd=(
        "timeout", "60", "/usr/bin/chromium", "--headless=new", "--disable-gpu",
        "--no-first-run", "--user-data-dir=/tmp/profile", "--dump-dom", "about:blank"))
    assert out.returncode != 0
    assert "No usable sandbox!" in out.stderr


def test_launcher_falls_back_to_no_sandbox_and_warns(image: str, probe_dir: Path) -> None:
    result, stderr = _probe(image, probe_dir)  # Docker's default profile, 64 MB /dev/shm
    assert "whaletop-chromium: WARNING: the namespace sandbox is not usable here" in stderr
    assert "--security-opt seccomp=chrome.json" in stderr
    assert "--no-sandbox" in result["browser_argv"]
    assert "Layer 1 Sandbox\tNone" in result["page"]
    assert "You are NOT adequately sandboxed." in result["page"]
    assert ("whaletop-chromium: /dev/shm is 64 MB (< 256 MB): adding --disable-dev-shm-usage"
            in stderr)
    assert "--disable-dev-shm-usage" in result["browser_argv"]


# -- chrome.json refuses what Docker refuses ---------------------------------------------------

REFUSALS = r'''
import ctypes, errno, json, platform, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)

def syscall(number, *args):
    if libc.syscall(number, *(ctypes.c_long(a) for a in args)) >= 0:
        return "ok"
    return errno.errorcode[ctypes.get_errno()]

def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True).returncode

out = {"chromium's namespaces": sh("unshare --user --map-current-user --pid --net --fork "
                                   "--root=/ true")}
for ns in ("mount", "uts", "ipc", "cgroup", "time"):
    out[ns] = sh(f"unshare --user --map-current-user --{ns} true")
try:
    socket.socket(40, socket.SOCK_STREAM).close()
    out["AF_VSOCK"] = "ok"
except OSError as e:
    out["AF_VSOCK"] = errno.errorcode[e.errno]
out["clone3"] = syscall(435, 0, 0)  # same numbers on x86_64 and aarch64
out["keyctl"] = syscall({"x86_64": 250, "aarch64": 219}[platform.machine()], 0, 0, 0, 0, 0)
out["io_uring_setup"] = syscall(425, 0, 0)
print(json.dumps(out))
'''


def test_chrome_json_refuses_other_namespaces_and_what_docker_refuses(image: str) -> None:
    def refusals(*opts: str) -> dict[str, Any]:
        out = _run(image, *opts, cmd=("python3", "-c", REFUSALS))
        assert out.returncode == 0, out.stderr
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    confined = refusals(*CHROME_JSON)
    assert confined["chromium's namespaces"] == 0
    for ns in ("mount", "uts", "ipc", "cgroup", "time"):
        assert confined[ns] != 0, ns
    assert confined["AF_VSOCK"] == "EPERM"
    assert confined["clone3"] == "ENOSYS"
    assert confined["keyctl"] == "EPERM"
    assert confined["io_uring_setup"] == "EPERM"
    # The same calls pass the kernel when no profile stands in the way: it is chrome.json
    # that refuses them, not this host.
    unconfined = refusals(*UNCONFINED)
    assert unconfined["mount"] == 0
    assert unconfined["clone3"] not in ("ENOSYS", "EPERM")


# -- the desktop under chrome.json ------------------------------------------------------------

APT = r'''
set -e
repo=$(mktemp -d /tmp/repo.XXXXXX)
mkdir -p "$repo/pkg/DEBIAN" "$repo/pkg/usr/share/whaletop-probe" "$repo/lists/partial"
printf 'Package: whaletop-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: w <w@localhost>\n' \
    > "$repo/pkg/DEBIAN/control"
echo installed > "$repo/pkg/usr/share/whaletop-probe/ok"
deb="$repo/whaletop-probe_1.0_all.deb"
dpkg-deb --root-owner-group --build "$repo/pkg" "$deb" >/dev/null
{ cat "$repo/pkg/DEBIAN/control"
  echo "Filename: ./$(basename "$deb")"
  echo "Size: $(stat -c %s "$deb")"
  echo "SHA256: $(sha256sum "$deb" | cut -d' ' -f1)"
  echo "Description: seccomp probe"; } > "$repo/Packages"
chmod -R a+rX "$repo"
echo "deb [trusted=yes] file:$repo ./" > "$repo/sources.list"
set -- -q -o Dir::Etc::SourceList="$repo/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
    -o Dir::State::Lists="$repo/lists"
apt-get "$@" update >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get "$@" install -y whaletop-probe >/dev/null
cat /usr/share/whaletop-probe/ok
DEBIAN_FRONTEND=noninteractive apt-get "$@" purge -y whaletop-probe >/dev/null
'''

PYTHON = r'''
import asyncio, concurrent.futures, multiprocessing, subprocess, threading
threads = [threading.Thread(target=lambda: None) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
with concurrent.futures.ProcessPoolExecutor(2) as pool:
    assert sum(pool.map(abs, [-1, -2])) == 3
assert subprocess.run(["true"]).returncode == 0
async def main():
    proc = await asyncio.create_subprocess_exec("echo", "async", stdout=subprocess.PIPE)
    return (await proc.communicate())[0]
print(asyncio.run(main()).decode().strip(), "threads processes")
'''


@pytest.fixture(scope="module")
def desktop_under_chrome_json(image: str, probe_dir: Path,
                              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The full desktop as the README runs it, with chrome.json and a 512 MB /dev/shm."""
    state = tmp_path_factory.mktemp("seccomp-desktop")
    c = Container(name=_name(), state_dir=state)
    try:
        docker("run", "-d", "--name", c.name, "--network", "host", "--shm-size", "512m",
               *CHROME_JSON, "-v", f"{state}:/opt/whaletop", "-v", f"{probe_dir}:/probe:ro",
               "-v", f"{LAUNCHER}:/usr/local/bin/chromium:ro", image,
               "/start.py", f"--web-port={WEB_PORT}")
        c.wait_status("HEALTHY", timeout=60)
        yield c
    finally:
        docker("rm", "-f", c.name, check=False)


def test_desktop_is_healthy_under_chrome_json(desktop_under_chrome_json: Container) -> None:
    c = desktop_under_chrome_json
    out = c.exec("whaletopd", "status", check=False)
    assert out.returncode == 0, out
    assert out.stdout.startswith("HEALTHY")
    # The browser's whole path (nginx, websockify, Xvnc) works under the profile.
    session = vnc.WebVNC(WEB_PORT, c.password())
    assert len(session.framebuffer_update()) == 4
    session.close()


def test_apt_and_python_work_under_chrome_json(desktop_under_chrome_json: Container) -> None:
    c = desktop_under_chrome_json
    assert c.exec("sh", "-c", APT).stdout == "installed\n"
    assert c.exec("python3", "-c", PYTHON, user="user").stdout == "async threads processes\n"


def test_chromium_in_the_desktop_is_sandboxed(desktop_under_chrome_json: Container) -> None:
    """As the user starts it from the menu: the launcher, on the desktop's display."""
    out = docker("exec", "-u", "user", "-e", "DISPLAY=:1", "-e", "HOME=/home/user",
                 "-e", "PROBE_HEADLESS=0", desktop_under_chrome_json.name,
                 "python3", "/probe/probe.py", "chromium", check=False)
    assert out.stdout.strip(), out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    _assert_sandboxed(result, out.stderr)


def test_fallback_warning_is_shown_on_the_desktop(image: str, tmp_path: Path) -> None:
    """Without chrome.json, starting Chromium on the desktop opens a warning window."""
    c = Container(name=_name(), state_dir=tmp_path)
    try:
        # Its own network namespace: the default ports do not collide with anyone's.
        docker("run", "-d", "--name", c.name, "--network", "none",
               "-v", f"{tmp_path}:/opt/whaletop",
               "-v", f"{LAUNCHER}:/usr/local/bin/chromium:ro", image)
        c.wait_status("HEALTHY", timeout=60)
        run = docker("exec", "-u", "user", "-e", "DISPLAY=:1", "-e", "HOME=/home/user", c.name,
                     "chromium", "--headless=new", "--disable-gpu", "--dump-dom", "about:blank",
                     check=False)
        assert "WARNING: the namespace sandbox is not usable here" in run.stderr
        found = docker("exec", "-u", "user", "-e", "DISPLAY=:1", c.name, "xdotool", "search",
                       "--sync", "--name", "Chromium: sandbox unavailable", check=False,
                       timeout=20)
        assert found.stdout.strip(), found
    finally:
        docker("rm", "-f", c.name, check=False)


def test_menu_and_default_browser_start_the_launcher(image: str) -> None:
    """Needs the image's Dockerfile lines for docker/chromium-launcher (README)."""
    out = _run(image, cmd=("sh", "-c", "grep ^Exec= /usr/share/applications/chromium.desktop;"
                                       "readlink -f /usr/bin/x-www-browser; command -v chromium"))
    assert out.stdout.splitlines() == [
        "Exec=/usr/local/bin/chromium %U", "/usr/local/bin/chromium", "/usr/local/bin/chromium",
    ], out
    image_copy = _run(image, cmd=("cat", "/usr/local/bin/chromium")).stdout
    assert image_copy == LAUNCHER.read_text(), "image's launcher != docker/chromium-launcher"
