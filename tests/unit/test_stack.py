"""deploy/stack.yaml checked without a swarm: every desktop's environment is one whaletopd
accepts (its password read from the secret file Swarm mounts), and what the file says
for Swarm (restart, stop-first update, grace period, host network, /dev/shm) holds.
tests/e2e/test_swarm.py deploys it for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit import test_deploy as deploy
from whaletopd import config

STACK = deploy.DEPLOY / "stack.yaml"
SECRETS_DIR = "/run/secrets/"


def stack() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(STACK.read_text())
    return doc


def services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in stack()["services"].items()}


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(deploy.interpolate(v, {})) for k, v in service["environment"].items()}


@pytest.mark.parametrize("name", sorted(services()))
def test_each_desktop_is_a_config_whaletopd_accepts(name: str, tmp_path: Path) -> None:
    service = services()[name]
    env = environment(service)
    assert set(env) <= {opt.env for opt in config.OPTIONS} | {
        v + config.FILE_SUFFIX for v in config.SECRET_VARIABLES}
    # The secret, where Swarm mounts it: its target under /run/secrets.
    (secret,) = service["secrets"]
    assert env["VNC_PASSWORD_FILE"] == SECRETS_DIR + secret["target"]
    assert secret["mode"] == 0o400, "root's alone: whaletopd reads it as root"
    assert secret["source"] in stack()["secrets"]
    mounted = tmp_path / secret["target"]
    mounted.write_text("pass-word\n")
    cfg = config.parse([], {**env, "VNC_PASSWORD_FILE": str(mounted)})
    assert cfg.vnc_password == "pass-word"
    assert cfg.username == name
    # The home volume is the user's home.
    homes = [v for v in service["volumes"] if isinstance(v, str)]
    assert homes == [f"{name}-home:/home/{name}"]
    assert f"{name}-home" in stack()["volumes"]


def test_desktops_have_their_own_ports_secrets_and_homes() -> None:
    envs = [environment(s) for s in services().values()]
    for key in ("WHALETOP_USERNAME", "WHALETOP_WEB_PORT"):
        assert len({e[key] for e in envs}) == len(envs), key
    sources = [s["secrets"][0]["source"] for s in services().values()]
    assert len(set(sources)) == len(sources)
    files = [deploy.interpolate(s["file"], {}) for s in stack()["secrets"].values()]
    assert len(set(files)) == len(files)


@pytest.mark.parametrize("name", sorted(services()))
def test_swarm_runs_a_desktop_as_a_desktop_needs(name: str) -> None:
    service = services()[name]
    deploy_spec = service["deploy"]
    assert deploy_spec["replicas"] == 1, "one X server per home"
    assert deploy_spec["restart_policy"]["condition"] == "any"
    for key in ("update_config", "rollback_config"):
        assert deploy_spec[key]["order"] == "stop-first", "a session, then its successor"
        assert deploy_spec[key]["parallelism"] == 1
    grace = float(service["stop_grace_period"].removesuffix("s"))
    assert deploy._worst_stop_seconds() < grace <= 30
    assert service["networks"] == ["hostnet"]
    assert stack()["networks"]["hostnet"] == {"external": True, "name": "host"}
    (shm,) = [v for v in service["volumes"] if isinstance(v, dict)]
    assert (shm["type"], shm["target"]) == ("tmpfs", "/dev/shm")
    assert shm["tmpfs"]["size"] >= 256 * 2**20, "below 256 MB Chromium leaves /dev/shm"
    # Swarm ignores these, with only a warning: they must not look as if they worked.
    assert not {"security_opt", "shm_size", "network_mode", "restart"} & set(service)
