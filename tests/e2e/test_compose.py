"""deploy/ for real: the Compose file's desktops, and the StatefulSet's container.

Both with the real engine, host network, 127.0.0.1 only, on ports 8480/8481 (web) and
5941/5942 (VNC, opened only with --expose-vnc, which neither uses), which nothing else on
the machine may hold while these tests run.

- Compose: two desktops reach HEALTHY each on its own, with their own users, passwords
  and web ports, and nothing else listening; stopping one (STOPPED, exit 0) leaves the
  other's processes, state and connections untouched; the stopped one comes back with
  its home (a named volume).
- Kubernetes, without a cluster: the StatefulSet's container (its arguments, environment,
  memory limit, /dev/shm, seccomp profile) runs under Docker with the TLS secret folder
  laid out as the kubelet lays it; its probe commands answer as the kubelet needs; a
  renewed certificate arrives by `..data` swap and is served (nginx reloads) without
  touching the session; it stops well inside terminationGracePeriodSeconds.

A raw VNC client reaches each desktop's Xvnc through a bridge to its UNIX socket
(conftest.vnc_bridge); a browser's path (WebSocket through nginx) is tried too.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import certgen
from tests.e2e import vnc
from tests.e2e.conftest import ROOT, docker, tcp_listeners, vnc_bridge
from tests.unit import test_deploy as deploy

pytestmark = pytest.mark.e2e

DEPLOY = ROOT / "deploy"
USERS = {"alice": {"web": 8480, "vnc": 5941, "password": "alice-pw"},
         "bob": {"web": 8481, "vnc": 5942, "password": "bob-pw12"}}
PORTS = [p for u in USERS.values() for p in (int(u["web"]), int(u["vnc"]))]


# -- a Compose that works with this engine ---------------------------------------------------

def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run([*cmd, "version"], capture_output=True, timeout=60,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _locate_compose() -> list[str] | None:
    candidates = [["docker", "compose"]]
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    return next((c for c in candidates if _works(c)), None)


@pytest.fixture(scope="session")
def compose() -> list[str]:
    """`docker compose` (v2 plugin) or `docker-compose`; installed from Debian if neither."""
    found = _locate_compose()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "docker-compose"]
        if subprocess.run(install, capture_output=True, env=env, check=False,
                          timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env,
                           check=False, timeout=600)
            subprocess.run(install, capture_output=True, env=env, check=False, timeout=600)
        found = _locate_compose()
    if found is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed, and "
                    "Debian's docker-compose package could not be installed (not root, "
                    "or no package registry)")
    return found


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_port_closed(port: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _port_busy(port):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def free_ports() -> None:
    """Never mistake someone else's server for ours."""
    busy = [p for p in PORTS if _port_busy(p)]
    if busy:
        pytest.fail(f"ports {busy} on 127.0.0.1 are taken: these tests need "
                    f"{PORTS} free (another desktop still running?)")


def _last_state(container: str) -> str:
    """The last transition's destination, from the container's JSON log."""
    events = [json.loads(line) for line in docker("logs", container).stdout.splitlines()]
    return str([e["dest"] for e in events if e.get("event") == "transition"][-1])


def _page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/vnc.html", timeout=10) as resp:
        return str(resp.read().decode())


# -- the Compose project ---------------------------------------------------------------------

class Project:
    def __init__(self, cmd: list[str], name: str, env_file: Path, image: str) -> None:
        self.cmd, self.name, self.env_file, self.image = cmd, name, env_file, image
        # The env file decides what the compose file interpolates, not our environment.
        used = set(deploy.env_example())
        self.env = {k: v for k, v in os.environ.items() if k not in used}

    def run(self, *args: str, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [*self.cmd, "-p", self.name, "-f", "compose.yaml", "--env-file",
             str(self.env_file), *args],
            cwd=DEPLOY, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}: {out.returncode}\n"
                                 f"{out.stdout}\n{out.stderr}")
        return out

    def container(self, service: str) -> str:
        ids = self.run("ps", "-a", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: {ids}"
        return ids[0]

    def status(self, service: str) -> dict[str, Any]:
        out = docker("exec", self.container(service), "whaletopd", "status", "--json",
                     check=False)
        try:
            doc: dict[str, Any] = json.loads(out.stdout)
        except ValueError:
            return {}
        return doc

    def wait_healthy(self, service: str, timeout: float = 60) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.status(service).get("state") == "HEALTHY":
                return time.monotonic() - t0
            time.sleep(0.1)
        logs = docker("logs", self.container(service), check=False).stdout
        raise AssertionError(f"{service} never HEALTHY: {self.status(service)}\n{logs[-3000:]}")

    def exit_code(self, service: str) -> int:
        out = docker("inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}",
                     self.container(service)).stdout.split()
        assert out[0] == "false", f"{service} is still running"
        return int(out[1])

    def last_state(self, service: str) -> str:
        return _last_state(self.container(service))


@pytest.fixture
def project(compose: list[str], image: str, tmp_path: Path, free_ports: None) -> Iterator[Project]:
    env_file = tmp_path / "desktops.env"
    lines = [f"WHALETOP_IMAGE={image}"]
    for user, conf in USERS.items():
        lines += [f"{user.upper()}_VNC_PASSWORD={conf['password']}",
                  f"{user.upper()}_WEB_PORT={conf['web']}",
                  f"{user.upper()}_VNC_PORT={conf['vnc']}"]
    env_file.write_text("\n".join(lines) + "\n")
    assert {line.split("=")[0] for line in lines} == set(deploy.env_example())
    proj = Project(compose, f"whaletop-e2e-{uuid.uuid4().hex[:8]}", env_file, image)
    try:
        yield proj
    finally:
        proj.run("down", "-v", "--remove-orphans", "-t", "10", check=False)
        volumes = docker("volume", "ls", "-q", "--filter", f"name={proj.name}",
                         check=False).stdout.split()
        assert not volumes, f"volumes left behind: {volumes}"


def _identity(doc: dict[str, Any]) -> tuple[Any, ...]:
    """What changes if anything in a desktop was restarted."""
    kids = doc["children"]
    return (doc["pid"], doc["since"], kids["xvnc"]["pid"], kids["websockify"]["pid"],
            kids["nginx"]["pid"], kids["session"]["pid"])


def test_compose_desktops_are_healthy_apart_and_stop_alone(project: Project,
                                                          tmp_path: Path) -> None:
    # Each reaches HEALTHY on its own: alice first, then bob beside her.
    project.run("up", "-d", "alice")
    project.wait_healthy("alice")
    alice = project.status("alice")
    project.run("up", "-d", "bob")
    project.wait_healthy("bob")
    assert _identity(project.status("alice")) == _identity(alice), "bob's start touched alice"

    for user, conf in USERS.items():
        doc = project.status(user)
        assert (doc["username"], doc["web_port"], doc["vnc_port"]) == (user, conf["web"], None)
        # Each desktop's only TCP listener is its own web port.
        listeners = tcp_listeners(project.container(user))
        assert [(e["port"], e["programs"]) for e in listeners] == [(conf["web"], ["nginx"])]
        assert not _port_busy(int(conf["vnc"])), "no VNC port without --expose-vnc"
        assert "noVNC" in _page(int(conf["web"]))
        vnc.WebVNC(int(conf["web"]), str(conf["password"])).close()
        shot = tmp_path / f"{user}.png"
        login = vnc.capture(str(conf["password"]), shot, vnc_bridge(project.container(user)))
        assert login.returncode == 0, f"{user}'s own password: {login.stderr}"
        home = docker("exec", project.container(user), "stat", "-c", "%U",
                      f"/home/{user}").stdout.strip()
        assert home == user, "the named volume is the user's home"
    docker("exec", "-u", "alice", project.container("alice"), "sh", "-c",
           "echo kept > /home/alice/kept.txt")

    # Stopping alice: a clean STOPPED, exit 0, her ports closed; bob untouched.
    bob = project.status("bob")
    t0 = time.monotonic()
    project.run("stop", "-t", "10", "alice")
    stop_s = time.monotonic() - t0
    assert project.exit_code("alice") == 0
    assert project.last_state("alice") == "STOPPED"
    assert _wait_port_closed(int(USERS["alice"]["web"]))
    after = project.status("bob")
    assert after["state"] == "HEALTHY"
    assert _identity(after) == _identity(bob), "stopping alice touched bob"
    assert "noVNC" in _page(int(USERS["bob"]["web"]))
    vnc.WebVNC(int(USERS["bob"]["web"]), str(USERS["bob"]["password"])).close()
    login = vnc.capture(str(USERS["bob"]["password"]), tmp_path / "bob2.png",
                        vnc_bridge(project.container("bob")))
    assert login.returncode == 0, login.stderr
    assert stop_s < 10, f"compose stop took {stop_s:.1f} s"

    # Alice again, even in a new container: her home is still there; bob still untouched.
    project.run("up", "-d", "--force-recreate", "alice")
    project.wait_healthy("alice")
    kept = docker("exec", project.container("alice"), "cat", "/home/alice/kept.txt")
    assert kept.stdout == "kept\n"
    assert _identity(project.status("bob")) == _identity(bob)


# -- the StatefulSet's container under Docker ------------------------------------------------

def _docker_run_args(container: dict[str, Any], pod: dict[str, Any], name: str,
                     mounts: dict[str, Path], env: dict[str, str], scratch: Path) -> list[str]:
    """`docker run` for the manifest's container: what Docker can mirror of the pod.
    Its emptyDirs (but /dev/shm) are folders made in `scratch`."""
    limits = container["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = volumes["dshm"]["emptyDir"]
    args = ["run", "-d", "--name", name, "--network", "host",
            "--memory", str(deploy._quantity(limits["memory"])),
            "--cpus", str(limits["cpu"]),
            "--shm-size", str(deploy._quantity(shm["sizeLimit"])),
            *_security_args(pod, container)]
    for mount in container["volumeMounts"]:
        if mount["name"] in mounts:
            ro = ",readonly" if mount.get("readOnly") else ""
            args += ["--mount", f"type=bind,src={mounts[mount['name']]},"
                                f"dst={mount['mountPath']}{ro}"]
        elif mount["name"] != "dshm" and "emptyDir" in volumes[mount["name"]]:
            # A folder as the kubelet makes an emptyDir: root's, writable by all (0777),
            # and with fsGroup that group's (setgid); not a Docker tmpfs, which takes the
            # owner and mode of the image's folder.
            folder = scratch / mount["name"]
            folder.mkdir()
            fs_group = pod.get("securityContext", {}).get("fsGroup")
            if fs_group is not None:
                os.chown(folder, -1, fs_group)
            folder.chmod(0o777 if fs_group is None else 0o2777)
            args += ["--mount", f"type=bind,src={folder},dst={mount['mountPath']}"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return args


def _security_args(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The pod's and the container's security contexts as Docker options."""
    pod_context = pod.get("securityContext", {})
    context = {**pod_context, **container.get("securityContext", {})}
    args = []
    profile = context["seccompProfile"]
    if profile["type"] == "Localhost":
        args += ["--security-opt", f"seccomp={ROOT / Path(profile['localhostProfile']).name}"]
    else:
        assert profile["type"] == "RuntimeDefault"  # Docker's own default profile
    if "runAsUser" in context:
        args += ["--user", f"{context['runAsUser']}:{context.get('runAsGroup', 0)}"]
    if "fsGroup" in pod_context:  # the kubelet adds it to the container's groups
        args += ["--group-add", str(pod_context["fsGroup"])]
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    capabilities = context.get("capabilities", {})
    for cap in capabilities.get("drop", []):
        args += ["--cap-drop", cap]
    for cap in capabilities.get("add", []):
        args += ["--cap-add", cap]
    return args


def _probe(name: str, container: dict[str, Any], kind: str) -> int:
    command = container[kind]["exec"]["command"]
    timeout = container[kind]["timeoutSeconds"]
    return docker("exec", name, *command, check=False, timeout=timeout + 5).returncode


def _mem_bytes(name: str) -> int:
    usage = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name).stdout
    match = re.match(r"([\d.]+)([KMG]i?B)", usage.strip())
    assert match, usage
    scale = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 10**3, "MB": 10**6, "GB": 10**9}
    return int(float(match[1]) * scale[match[2]])


@pytest.fixture
def pod_container(image: str, free_ports: None) -> Iterator[str]:
    name = f"whaletop-e2e-pod-{uuid.uuid4().hex[:8]}"
    yield name
    docker("rm", "-f", name, check=False)


def test_statefulset_container_runs_with_a_kubelet_secret_volume(
        image: str, tmp_path: Path, pod_container: str) -> None:
    sts = deploy.statefulset()
    pod, container = deploy.pod_spec(sts), deploy.desktop_container(sts)
    cfg = deploy.parse_container_config(container, password="pod-pass")
    cert_path = Path(cfg.tls_certificate)

    # What the kubelet does with fsGroup: the secret's files and the home volume are
    # that group's, readable (the secret) and writable (the home) by it.
    fs_group = pod["securityContext"].get("fsGroup")
    volume = deploy.KubeletSecretVolume(tmp_path / "secret-volume", group=fs_group)
    first, key = certgen.make(cn="first.test")
    volume.write({cert_path.name: certgen.pem(first, key)})
    # The passwords and the metrics token, files of the `secrets` volume (NAME_FILE).
    secrets = deploy.KubeletSecretVolume(tmp_path / "secrets-volume", group=fs_group)
    values = {**deploy.SECRET_VALUES, "VNC_PASSWORD": "pod-pass"}
    secrets.write({name: values[name].encode()
                   for name in deploy.secret_files(container)})
    home = tmp_path / "home"
    home.mkdir()
    if fs_group is not None:
        os.chown(home, -1, fs_group)
        home.chmod(0o2775)

    # The pod has its own network; here the host's is shared: only the ports move.
    web, vnc_port = int(USERS["alice"]["web"]), int(USERS["alice"]["vnc"])
    env = {**deploy.literal_env(container),
           "WHALETOP_WEB_PORT": str(web), "WHALETOP_VNC_PORT": str(vnc_port)}
    run = _docker_run_args(container, pod, pod_container,
                           {"tls": volume.folder, "home": home, "secrets": secrets.folder},
                           env, tmp_path)
    docker(*run, image, *container["args"])

    # Startup: liveness passes from the first moment; startup and readiness pass
    # exactly when whaletopd says HEALTHY.
    deadline = time.monotonic() + 60
    while _probe(pod_container, container, "startupProbe") != 0:
        assert time.monotonic() < deadline, docker("logs", pod_container).stdout[-3000:]
        assert _probe(pod_container, container, "livenessProbe") == 0
        time.sleep(0.1)
    assert _probe(pod_container, container, "readinessProbe") == 0
    assert _probe(pod_container, container, "livenessProbe") == 0
    assert "tls" in docker("exec", pod_container, "whaletopd", "status", "--json").stdout
    assert certgen.served_fingerprint(web) == certgen.fingerprint(first)
    assert [(e["port"], e["programs"]) for e in tcp_listeners(pod_container)] == [
        (web, ["nginx"])], "only the web port (the Service's) listens"
    assert vnc.capture("pod-pass", tmp_path / "pod.png",
                       vnc_bridge(pod_container)).returncode == 0
    # A script's, through the Ingress: sign-in is on, HTTP Basic is what scripts send;
    # the relay logs in to Xvnc for it (no VNC password on this path).
    basic = base64.b64encode(f"{cfg.username}:{cfg.web_password}".encode()).decode()
    session = vnc.WebVNC(web, None, tls=True, headers={"Authorization": f"Basic {basic}"})
    session.log_in(None)

    # Sized from the measurement: an idle desktop stays well under the request.
    requested = deploy._quantity(container["resources"]["requests"]["memory"])
    assert _mem_bytes(pod_container) < requested

    # The kubelet renews the secret: new folder, ..data swapped, old folder removed.
    status = json.loads(docker("exec", pod_container, "whaletopd", "status", "--json").stdout)
    pids = {name: info["pid"] for name, info in status["children"].items()}
    second, key2 = certgen.make(cn="renewed.test")
    volume.write({cert_path.name: certgen.pem(second, key2)})
    deadline = time.monotonic() + 30
    while True:
        try:
            if certgen.served_fingerprint(web) == certgen.fingerprint(second):
                break
        except OSError:
            pass  # nginx is reloading
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.05)
    deadline = time.monotonic() + 30
    while _probe(pod_container, container, "readinessProbe") != 0:
        assert time.monotonic() < deadline
        assert _probe(pod_container, container, "livenessProbe") == 0
        time.sleep(0.1)
    status = json.loads(docker("exec", pod_container, "whaletopd", "status", "--json").stdout)
    assert status["tls"]["fingerprint_sha256"] == certgen.fingerprint(second)
    assert {name: info["pid"] for name, info in status["children"].items()} == pids, \
        "nginx reloaded in place; nothing restarted"
    assert len(session.framebuffer_update()) == 4, "the connected session stayed"
    session.close()
    events = [json.loads(line) for line in docker("logs", pod_container).stdout.splitlines()]
    assert "RELOADING_TLS" in [e["dest"] for e in events if e.get("event") == "transition"]

    # SIGTERM, as the kubelet sends it: STOPPED, exit 0, well inside the grace period.
    grace = pod["terminationGracePeriodSeconds"]
    t0 = time.monotonic()
    docker("stop", "-t", str(grace), pod_container)
    took = time.monotonic() - t0
    code = docker("inspect", "-f", "{{.State.ExitCode}}", pod_container).stdout.strip()
    assert code == "0"
    assert took < grace / 2, f"stop took {took:.2f} s of a {grace} s grace period"
    assert _last_state(pod_container) == "STOPPED"
