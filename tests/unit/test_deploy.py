"""deploy/: the Kubernetes manifests and the Compose file, checked without a cluster.

Every manifest is validated offline against the Kubernetes schemas (kubernetes-validate
ships them), the kustomization and the README's per-user overlay are rendered with
`kubectl kustomize` when kubectl is there, and every flag, environment variable and port
is checked against whaletopd's own options, with the secrets read from files laid out as
the kubelet mounts them.  The PodMonitor example, a custom resource with no schema in
kubernetes-validate, is checked against the fields of the Prometheus Operator's CRD.
The kubelet's secret update (a new
`..<timestamp>` folder, then a `..data` symlink swap) is replayed against whaletopd's
certificate watcher.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import inspect
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bench import certgen
from whaletopd import certs, children, cli, config, files, nginx_conf, watch
from whaletopd.paths import Paths

from .. import tools

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
# The manifests; KUBE renders them as they are, KUBE / "root" with root and sudo.
KUBE_BASE = KUBE / "base"
# Examples beside them, never applied by a kustomization.
KUBE_EXAMPLES = ("secret.yaml", "namespace.yaml", "podmonitor.yaml")
# Examples of custom resources: no schema in kubernetes-validate, checked below.
KUBE_CUSTOM = ("podmonitor.yaml",)
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / "desktops.env.example"
# The oldest release with persistentVolumeClaimRetentionPolicy on by default, and newer.
MIN_KUBERNETES = (1, 27)
# Read by whaletopd besides its WHALETOP_* twins.
EXTRA_ENV = {config.VNC_PASSWORD_ENV, config.TLS_KEY_PASSWORD_ENV}
FLAGS = {opt.flag for opt in config.OPTIONS}
ENVS = {opt.env for opt in config.OPTIONS}
# The secrets whaletopd also reads from the file their NAME_FILE twin names.
SECRET_VARIABLES = frozenset(getattr(config, "SECRET_VARIABLES", (
    config.VNC_PASSWORD_ENV, config.VIEW_ONLY_PASSWORD_ENV, config.WEB_PASSWORD_ENV,
    config.TLS_KEY_PASSWORD_ENV, "METRICS_TOKEN")))
FILE_SUFFIX = "_FILE"
FILE_TWINS = {name + FILE_SUFFIX for name in SECRET_VARIABLES}
# What the secrets hold when a test does not say: valid for whaletopd.
SECRET_VALUES = {"VNC_PASSWORD": "test-pw1", "WEB_PASSWORD": "test-web-pw1",
                 "METRICS_TOKEN": "metrics-token-0123456789abcdef"}


# -- loading -------------------------------------------------------------------------------

def manifest_files() -> list[Path]:
    """Every resource file: the base's and the examples beside it."""
    return sorted(p for folder in (KUBE, KUBE_BASE) for p in folder.glob("*.yaml")
                  if p.name != "kustomization.yaml")


def builtin_manifest_files() -> list[Path]:
    """The files of Kubernetes' own kinds, which the schemas cover."""
    return [p for p in manifest_files() if p.name not in KUBE_CUSTOM]


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in load_docs(path)]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def statefulset() -> dict[str, Any]:
    return find(manifests(), "StatefulSet")


def pod_spec(sts: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = (sts or statefulset())["spec"]["template"]["spec"]
    return spec


def desktop_container(sts: dict[str, Any] | None = None) -> dict[str, Any]:
    containers = pod_spec(sts)["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@functools.cache
def reads_file_twins() -> bool:
    """Whether whaletopd reads NAME from the file NAME_FILE names (asked of whaletopd,
    with a real file)."""
    token = SECRET_VALUES["METRICS_TOKEN"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "token"
        path.write_text(token + "\n")
        try:
            return config.parse([], {"METRICS_TOKEN_FILE": str(path)}).metrics_token == token
        except config.ConfigError:
            return False


def secret_files(container: Mapping[str, Any]) -> dict[str, Path]:
    """Each NAME_FILE of the container's environment: the file it names."""
    return {e["name"].removesuffix(FILE_SUFFIX): Path(e["value"])
            for e in container.get("env", []) if e["name"] in FILE_TWINS}


@contextlib.contextmanager
def secrets_env(container: Mapping[str, Any], values: Mapping[str, str],
                ) -> Iterator[dict[str, str]]:
    """The container's literal environment, its NAME_FILE variables pointing at files
    that hold `values` (as the kubelet writes them: one per key, mode 0400), re-rooted
    in a temporary folder.  Until whaletopd reads NAME_FILE itself, NAME is set to the
    file's content instead, as whaletopd will read it."""
    env = literal_env(container)
    with tempfile.TemporaryDirectory() as folder:
        for name, path in secret_files(container).items():
            value = values[name]
            if reads_file_twins():
                there = Path(folder) / path.relative_to("/")
                there.parent.mkdir(parents=True, exist_ok=True)
                there.write_text(value)
                there.chmod(0o400)
                env[name + FILE_SUFFIX] = str(there)
            else:
                del env[name + FILE_SUFFIX]
                env[name] = value
        yield env


def parse_container_config(container: Mapping[str, Any], password: str = "test-pw1",
                           *, secrets: Mapping[str, str] | None = None,
                           **override: str) -> config.Config:
    """whaletopd's own parser on the container's arguments and environment, its secret
    files holding `secrets` (by default SECRET_VALUES, the VNC password `password`)."""
    args = list(container["args"])
    assert args[0] == "/start.py", "the image's entry point, which runs `whaletopd run`"
    assert not [e for e in container.get("env", []) if "valueFrom" in e], \
        "secrets are files, never variables"
    values = {**SECRET_VALUES, "VNC_PASSWORD": password, **(secrets or {})}
    with secrets_env(container, values) as env:
        return config.parse(args[1:], {**env, **override})


def versions() -> list[str]:
    from kubernetes_validate import utils

    found = {utils.major_minor(v) for v in utils.all_versions()}
    chosen = sorted((v for v in found if tuple(map(int, v.split("."))) >= MIN_KUBERNETES),
                    key=lambda v: tuple(map(int, v.split("."))))
    assert chosen, f"kubernetes-validate has no schemas from {MIN_KUBERNETES}"
    return chosen


def validate(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.fixture(autouse=True)
def _no_host_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user name is judged as in the image, not against this machine's accounts."""
    def missing(name: str) -> Any:
        raise KeyError(name)

    monkeypatch.setattr(config.pwd, "getpwnam", missing)


# -- schemas ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", versions())
@pytest.mark.parametrize("path", builtin_manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    docs = load_docs(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        validate(doc, version)


def test_the_validator_is_strict_and_offline() -> None:
    """A misspelt field must fail: proves the bundled schemas are used, strictly."""
    sts = copy.deepcopy(statefulset())
    desktop_container(sts)["livenesProbe"] = desktop_container(sts).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        validate(sts, versions()[-1])


def test_every_manifest_is_in_the_kustomization_except_the_examples() -> None:
    top = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert top["resources"] == ["base"], "deploy/kubernetes is the base as it is"
    kustomization = yaml.safe_load((KUBE_BASE / "kustomization.yaml").read_text())
    listed = {str(KUBE_BASE / name) for name in kustomization["resources"]}
    assert all(Path(name).is_file() for name in listed)
    examples = {str(KUBE / name) for name in KUBE_EXAMPLES}
    assert listed | examples == {str(p) for p in manifest_files()}
    # Applied as is, the example secrets would overwrite real ones with empty values;
    # a namespace holds many desktops and outlives each.
    assert not listed & examples


# -- flags, variables, ports -----------------------------------------------------------------

def test_every_flag_and_variable_in_the_statefulset_exists() -> None:
    container = desktop_container()
    flags = [a.split("=", 1)[0] for a in container["args"][1:]]
    assert set(flags) <= FLAGS, set(flags) - FLAGS
    names = {e["name"] for e in container["env"]}
    assert names <= ENVS | EXTRA_ENV | FILE_TWINS, names - ENVS - EXTRA_ENV - FILE_TWINS
    parse_container_config(container)  # and whaletopd accepts them together


def _secret_mounts(sts: dict[str, Any]) -> dict[Path, tuple[str, str]]:
    """Every file the pod's secret volumes put in the container: (secret, key)."""
    volumes = {v["name"]: v for v in pod_spec(sts)["volumes"]}
    found: dict[Path, tuple[str, str]] = {}
    for mount in desktop_container(sts)["volumeMounts"]:
        volume = volumes.get(mount["name"], {})  # the home is a claim
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", [])]
        if "secret" in volume:
            sources.append({"name": volume["secret"]["secretName"],
                            "items": volume["secret"].get("items")})
        for source in sources:
            assert "subPath" not in mount, "a subPath mount never sees the kubelet's updates"
            assert mount.get("readOnly") is True
            for item in source.get("items") or []:
                found[Path(mount["mountPath"]) / item["path"]] = (source["name"], item["key"])
    return found


def test_secrets_are_files_from_secrets_never_variables() -> None:
    """The sign-in password, the VNC password and the metrics token: each NAME_FILE
    names a file of a mounted secret volume, and whaletopd reads them from there."""
    sts = statefulset()
    container = desktop_container(sts)
    assert not [e for e in container["env"] if "valueFrom" in e or e["name"] in
                SECRET_VARIABLES], "a secret in a variable shows in `kubectl describe`"
    files = secret_files(container)
    assert set(files) == {"WEB_PASSWORD", "VNC_PASSWORD", "METRICS_TOKEN"}
    mounted = _secret_mounts(sts)
    docs = manifests()
    for name, path in files.items():
        assert path in mounted, f"{name}_FILE={path} is not in a secret volume"
        secret, key = mounted[path]
        assert key in find(docs, "Secret", secret)["stringData"], (secret, key)
    values = {"WEB_PASSWORD": "from-a-file", "VNC_PASSWORD": "vnc-file",
              "METRICS_TOKEN": "token-from-a-file-0123"}
    cfg = parse_container_config(container, secrets=values)
    assert cfg.sign_in
    assert cfg.web_password == "from-a-file"
    assert cfg.vnc_password_from_env
    assert cfg.vnc_password == "vnc-file"
    assert cfg.metrics_token == "token-from-a-file-0123"
    # With sign-in on and no token /metrics is off: the token's file must be there.
    with pytest.raises(config.ConfigError, match="WEB_PASSWORD"):
        parse_container_config(container, secrets={"WEB_PASSWORD": "short"})


def test_the_metrics_token_is_the_namespaces_the_passwords_each_desktops() -> None:
    """Prometheus sends one token to every desktop of a scrape job: the metrics token is
    one secret for the namespace, apart from each desktop's passwords."""
    mounted = _secret_mounts(statefulset())
    files = secret_files(desktop_container())
    secrets = {name: mounted[path][0] for name, path in files.items()}
    assert secrets["WEB_PASSWORD"] == secrets["VNC_PASSWORD"] != secrets["METRICS_TOKEN"]


def test_ports_are_the_daemons() -> None:
    docs = manifests()
    container = desktop_container()
    cfg = parse_container_config(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": cfg.web_port}, "only the web port leaves the pod"
    assert not cfg.expose_vnc
    # No VNC port anywhere: not in the container, the Service, or its environment.
    for doc in docs:
        assert str(cfg.vnc_port) not in yaml.safe_dump(doc), doc["metadata"]["name"]
    env = {e["name"] for e in container["env"]}
    assert not env & {"WHALETOP_VNC_PORT", "WHALETOP_EXPOSE_VNC"}
    assert not [a for a in container["args"] if a.startswith(("--vnc-port", "--expose-vnc"))]
    service = find(docs, "Service")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "web"
    assert port["port"] == cfg.web_port
    ingress = find(docs, "Ingress")
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "web"}}
    assert statefulset()["spec"]["serviceName"] == service["metadata"]["name"]


def test_service_selects_exactly_the_desktop_pod() -> None:
    sts = statefulset()
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    selector = find(manifests(), "Service")["spec"]["selector"]
    assert selector == sts["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()


def test_home_volume_holds_the_users_home() -> None:
    sts = statefulset()
    cfg = parse_container_config(desktop_container(sts))
    mounts = {m["name"]: m for m in desktop_container(sts)["volumeMounts"]}
    assert mounts["home"]["mountPath"] == f"/home/{cfg.username}"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "home"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"


def test_tls_secret_is_mounted_as_a_folder_where_tls_certificate_reads() -> None:
    container = desktop_container()
    cfg = parse_container_config(container)
    cert = Path(cfg.tls_certificate)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount["mountPath"] == str(cert.parent)
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "a subPath mount never sees the kubelet's updates"
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "tls")
    secret = find(manifests(), "Secret", volume["secret"]["secretName"])
    assert secret["type"] == "Opaque"
    assert list(secret["stringData"]) == [cert.name], "one combined PEM, as whaletopd reads"


def test_no_service_links_can_shadow_whaletops_variables() -> None:
    """Kubernetes injects <SERVICE>_PORT=tcp://... variables: a Service named
    whaletop-web would set WHALETOP_WEB_PORT to a URL and the desktop would fail."""
    spec = pod_spec()
    assert spec["enableServiceLinks"] is False
    with pytest.raises(config.ConfigError, match="WHALETOP_WEB_PORT"):
        config.parse([], {"WHALETOP_WEB_PORT": "tcp://10.0.0.1:8080"})
    assert spec["automountServiceAccountToken"] is False


# -- probes, stop, resources -----------------------------------------------------------------

@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WHALETOP_STATE_DIR", str(tmp_path))
    return tmp_path


def _probe(container: Mapping[str, Any], kind: str) -> list[str]:
    command: list[str] = container[kind]["exec"]["command"]
    assert command[:2] == ["whaletopd", "status"], "whaletopd's own word"
    return command


def _run_probe(command: list[str], state_dir: Path, word: str) -> int:
    from whaletopd.status import StatusFile

    StatusFile(state_dir / "status", state_dir / "status.json").write(word, "", {})
    return cli.main(command[1:])


@pytest.mark.parametrize(("word", "startup", "ready", "alive"), [
    ("STARTING", 1, 1, 0),
    ("STARTED", 1, 1, 0),
    ("HEALTHY", 0, 0, 0),
    ("RECOVERING", 1, 1, 0),
    ("RELOADING_TLS", 1, 1, 0),
    ("STOPPING", 1, 1, 0),
    ("UNHEALTHY", 1, 1, 1),
    ("STOPPED", 1, 1, 1),
    ("FAILED", 1, 1, 1),
])
def test_probes_answer_from_the_daemons_state(state_dir: Path, word: str, startup: int,
                                              ready: int, alive: int,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    container = desktop_container()
    assert _run_probe(_probe(container, "startupProbe"), state_dir, word) == startup
    assert _run_probe(_probe(container, "readinessProbe"), state_dir, word) == ready
    assert _run_probe(_probe(container, "livenessProbe"), state_dir, word) == alive
    capsys.readouterr()


def test_startup_probe_outwaits_the_daemons_startup_timeout() -> None:
    """The daemon decides a start took too long (UNHEALTHY, with a reason), not the
    kubelet, and liveness never runs before the first HEALTHY."""
    container = desktop_container()
    cfg = parse_container_config(container)
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] > cfg.startup_timeout
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[kind]["timeoutSeconds"] >= 2, "a python start inside a busy pod"


def _worst_stop_seconds() -> float:
    """whaletopd stops its three children (Xvnc, websockify, session) one after the other,
    each SIGTERM then SIGKILL after `deadline`."""
    deadline = inspect.signature(children.stop).parameters["deadline"].default
    return 3 * float(deadline)


def test_termination_grace_fits_the_stop_time() -> None:
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert _worst_stop_seconds() < grace <= 30, "never cut a clean stop; don't linger"


def _quantity(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", value)
    assert match, value
    return int(match[1]) * units.get(match[2] or "", 1)


def test_resources_leave_room_for_chromium_and_dev_shm() -> None:
    container = desktop_container()
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    shm = next(v for v in pod_spec()["volumes"] if v["name"] == "dshm")["emptyDir"]
    assert shm["medium"] == "Memory"
    assert "/dev/shm" in {m["mountPath"] for m in container["volumeMounts"]}
    idle_measured = 250 * 2**20  # the top of docker stats on an idle HEALTHY desktop
    assert _quantity(requests["memory"]) >= idle_measured
    # The pages of /dev/shm (and of every volume in memory) are charged to the
    # container: the limit holds them and the request.
    in_memory = [v["emptyDir"] for v in pod_spec()["volumes"]
                 if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert all("sizeLimit" in v for v in in_memory), "memory volumes are bounded"
    assert _quantity(limits["memory"]) >= _quantity(requests["memory"]) + sum(
        _quantity(v["sizeLimit"]) for v in in_memory)
    assert _quantity(shm["sizeLimit"]) >= 512 * 2**20


def test_seccomp_profile_is_the_runtimes_default() -> None:
    """Nothing to install on the nodes; the root variant's chrome.json is checked in
    test_pod_security.py."""
    profile = pod_spec()["securityContext"]["seccompProfile"]
    assert profile == {"type": "RuntimeDefault"}
    assert "seccompProfile" not in desktop_container().get("securityContext", {})


def test_ingress_is_websocket_friendly_on_a_sub_path() -> None:
    ingress = find(manifests(), "Ingress")
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert int(notes[prefix + "proxy-read-timeout"]) >= 3600
    assert int(notes[prefix + "proxy-send-timeout"]) >= 3600
    cfg = parse_container_config(desktop_container())
    assert (notes[prefix + "backend-protocol"] == "HTTPS") == cfg.tls
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    pattern = re.compile(path["path"])
    match = pattern.fullmatch("/desktop/websockify")
    assert match, "the WebSocket, relative to the page, is under the sub-path"
    rewritten = notes[prefix + "rewrite-target"].replace("$2", match[2])
    assert rewritten == "/websockify"
    assert pattern.fullmatch("/desktop/")[2] == ""  # type: ignore[index]


# -- metrics -----------------------------------------------------------------------------------

# whaletopd's /metrics: where nginx serves the metrics file.
METRICS_PATH = "/metrics"
SCRAPE = "prometheus.io/"


def test_metrics_path_is_whaletopds() -> None:
    conf = nginx_conf.render(config.Config(), Paths(), nginx_conf.FrontDoorSpec("0" * 32))
    assert f"location = {METRICS_PATH} {{" in conf


def test_pod_template_asks_to_be_scraped_where_metrics_are() -> None:
    """The annotations of Prometheus's kubernetes-pods job: the web port by number (the
    convention has no port names), the path, HTTPS when whaletopd serves it, and a token
    to send, since sign-in turns /metrics off without one."""
    sts = statefulset()
    notes = sts["spec"]["template"]["metadata"]["annotations"]
    container = desktop_container(sts)
    cfg = parse_container_config(container)
    (web,) = [p for p in container["ports"] if p["name"] == "web"]
    assert notes[SCRAPE + "scrape"] == "true"
    assert notes[SCRAPE + "port"] == str(web["containerPort"]) == str(cfg.web_port)
    assert notes[SCRAPE + "path"] == METRICS_PATH
    assert notes[SCRAPE + "scheme"] == ("https" if cfg.tls else "http")
    assert cfg.sign_in
    assert cfg.metrics_token, "with sign-in and no token, /metrics is off"
    assert set(notes) == {SCRAPE + k for k in ("scrape", "port", "path", "scheme")}


# The fields of the Prometheus Operator's PodMonitor (monitoring.coreos.com/v1) that this
# example may use, from the CRD's reference: a field outside them is a typo the API
# server would prune or refuse.  Required ones are marked by the checks below.
PODMONITOR_SPEC = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel",
                   "podTargetLabels", "sampleLimit", "attachMetadata"}
PODMONITOR_ENDPOINT = {"port", "portNumber", "targetPort", "path", "scheme", "interval",
                       "scrapeTimeout", "params", "honorLabels", "honorTimestamps",
                       "bearerTokenSecret", "authorization", "basicAuth", "tlsConfig",
                       "relabelings", "metricRelabelings", "followRedirects",
                       "enableHttp2", "filterRunning", "proxyUrl"}
SECRET_KEY_SELECTOR = {"name", "key", "optional"}
SAFE_TLS_CONFIG = {"ca", "cert", "keySecret", "serverName", "insecureSkipVerify",
                   "minVersion", "maxVersion"}
LABEL_SELECTOR = {"matchLabels", "matchExpressions"}
DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


def podmonitor_problems(doc: Mapping[str, Any]) -> list[str]:
    """What the PodMonitor CRD's schema refuses in `doc`, for the fields used here."""
    problems = []

    def only(where: str, node: Any, allowed: set[str]) -> bool:
        if not isinstance(node, dict):
            problems.append(f"{where}: not an object")
            return False
        problems.extend(f"{where}.{key}: not a field" for key in set(node) - allowed)
        return True

    if (doc.get("apiVersion"), doc.get("kind")) != ("monitoring.coreos.com/v1", "PodMonitor"):
        problems.append("not a monitoring.coreos.com/v1 PodMonitor")
    only("", doc, {"apiVersion", "kind", "metadata", "spec"})
    if not doc.get("metadata", {}).get("name"):
        problems.append("metadata.name: required")
    spec = doc.get("spec")
    if not only("spec", spec, PODMONITOR_SPEC):
        return problems
    selector = spec.get("selector")
    if selector is None:
        problems.append("spec.selector: required")
    elif only("spec.selector", selector, LABEL_SELECTOR):
        labels = selector.get("matchLabels", {})
        if not all(isinstance(v, str) for v in labels.values()):
            problems.append("spec.selector.matchLabels: values are strings")
    endpoints = spec.get("podMetricsEndpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append("spec.podMetricsEndpoints: a list of endpoints")
        return problems
    for n, endpoint in enumerate(endpoints):
        where = f"spec.podMetricsEndpoints[{n}]"
        if not only(where, endpoint, PODMONITOR_ENDPOINT):
            continue
        if not isinstance(endpoint.get("port", ""), str):
            problems.append(f"{where}.port: the name of a pod port (a string)")
        if not str(endpoint.get("path", "/")).startswith("/"):
            problems.append(f"{where}.path: an HTTP path")
        if endpoint.get("scheme", "http").lower() not in ("http", "https"):
            problems.append(f"{where}.scheme: http or https")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not DURATION.fullmatch(str(endpoint[key])):
                problems.append(f"{where}.{key}: a duration, e.g. 30s")
        if "bearerTokenSecret" in endpoint:
            secret = endpoint["bearerTokenSecret"]
            if only(f"{where}.bearerTokenSecret", secret, SECRET_KEY_SELECTOR) and \
                    not secret.get("key"):
                problems.append(f"{where}.bearerTokenSecret.key: required")
        if "tlsConfig" in endpoint:
            only(f"{where}.tlsConfig", endpoint["tlsConfig"], SAFE_TLS_CONFIG)
    return problems


def podmonitor() -> dict[str, Any]:
    return find(manifests(), "PodMonitor")


def podmonitor_endpoint() -> dict[str, Any]:
    (endpoint,) = podmonitor()["spec"]["podMetricsEndpoints"]
    return endpoint


def test_podmonitor_has_the_crds_shape() -> None:
    assert podmonitor_problems(podmonitor()) == []


@pytest.mark.parametrize(("path", "value", "problem"), [
    ("spec.podMetricsEndpoints.0.bearerTokenSecrets", {"name": "x", "key": "y"},
     "bearerTokenSecrets: not a field"),
    ("spec.podMetricsEndpoints.0.bearerTokenSecret", {"name": "whaletop-metrics"},
     "bearerTokenSecret.key: required"),
    ("spec.podMetricsEndpoints.0.bearerTokenSecret", {"key": "k", "secretName": "x"},
     "bearerTokenSecret.secretName: not a field"),
    ("spec.podMetricsEndpoints.0.port", 8080, "port: the name of a pod port"),
    ("spec.podMetricsEndpoints.0.scheme", "ws", "scheme: http or https"),
    ("spec.podMetricsEndpoints.0.path", "metrics", "path: an HTTP path"),
    ("spec.podMetricsEndpoints.0.interval", "30", "interval: a duration"),
    ("spec.podMetricsEndpoints.0.tlsConfig", {"insecure": True}, "insecure: not a field"),
    ("spec.podMetricsEndpoint", [], "podMetricsEndpoint: not a field"),
    ("spec.selector", {"matchLabel": {"a": "b"}}, "matchLabel: not a field"),
    ("spec.podMetricsEndpoints", [], "a list of endpoints"),
    ("kind", "ServiceMonitor", "not a monitoring.coreos.com/v1 PodMonitor"),
])
def test_the_podmonitor_check_refuses_what_the_crd_refuses(path: str, value: Any,
                                                           problem: str) -> None:
    doc = podmonitor()
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[last] = value
    assert any(problem in found for found in podmonitor_problems(doc)), \
        podmonitor_problems(doc)
    del node[last]
    if last in ("selector", "podMetricsEndpoints"):
        assert any(f"spec.{last}: " in found for found in podmonitor_problems(doc))


def test_podmonitor_scrapes_every_desktop_with_the_desktops_token() -> None:
    """The selector matches every desktop's pod (and per-user overlays only add labels),
    the port is the container's web port by name, the path /metrics, HTTPS verified,
    and the token is the one whaletopd reads from METRICS_TOKEN_FILE."""
    sts = statefulset()
    monitor = podmonitor()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "app.kubernetes.io/instance" not in monitor["spec"]["selector"]["matchLabels"]
    assert "namespaceSelector" not in monitor["spec"], "its own namespace: the secret's"
    endpoint = podmonitor_endpoint()
    container = desktop_container(sts)
    cfg = parse_container_config(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[endpoint["port"]] == cfg.web_port
    assert endpoint["path"] == METRICS_PATH
    assert endpoint["scheme"] == ("https" if cfg.tls else "http")
    tls = endpoint.get("tlsConfig", {})
    assert not tls.get("insecureSkipVerify"), "the token goes to a verified desktop only"
    bearer = endpoint["bearerTokenSecret"]
    assert _secret_mounts(sts)[secret_files(container)["METRICS_TOKEN"]] == (
        bearer["name"], bearer["key"])
    assert bearer["key"] in find(manifests(), "Secret", bearer["name"])["stringData"]


# -- rendering -------------------------------------------------------------------------------

KUBECTL = tools.KUBECTL.path
needs_kubectl = tools.KUBECTL.needed


def kustomize(folder: Path) -> list[dict[str, Any]]:
    assert KUBECTL
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True,
                         check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@needs_kubectl
def test_kustomization_renders_and_validates() -> None:
    docs = kustomize(KUBE)
    assert sorted(d["kind"] for d in docs) == ["Ingress", "Service", "StatefulSet"]
    for doc in docs:
        validate(doc, versions()[-1])
    assert desktop_container(find(docs, "StatefulSet"))["image"] == "whaletop:latest"


def readme_overlay() -> str:
    """The per-user overlay as deploy/kubernetes/README.md shows it."""
    text = (KUBE / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    (overlay,) = [b for b in blocks if "kind: Kustomization" in b]
    return overlay


def web_password(vnc_password: str) -> str:
    """The sign-in password write_overlay gives the user of `vnc_password`."""
    return f"web-{vnc_password}"


def write_overlay(folder: Path, user: str, password: str) -> Path:
    overlay = folder / "desktops" / user
    overlay.mkdir(parents=True)
    text = readme_overlay().replace("alice", user)
    base = os.path.relpath(KUBE, overlay)
    assert "  - ../../deploy/kubernetes\n" in text
    text = text.replace("  - ../../deploy/kubernetes\n", f"  - {base}\n")
    (overlay / "kustomization.yaml").write_text(text)
    (overlay / "passwords.env").write_text(
        f"WEB_PASSWORD={web_password(password)}\nVNC_PASSWORD={password}\n")
    cert, key = certgen.make(cn=f"{user}.test")
    (overlay / "tls.pem").write_bytes(certgen.pem(cert, key))
    return overlay


@needs_kubectl
def test_readme_overlays_give_each_user_a_desktop_of_their_own(tmp_path: Path) -> None:
    rendered = {user: kustomize(write_overlay(tmp_path, user, f"{user}-pw1"))
                for user in ("alice", "bob")}
    names: set[tuple[str, str]] = set()
    for user, docs in rendered.items():
        for doc in docs:
            validate(doc, versions()[-1])
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in names, f"{key} is made twice"
            names.add(key)
            assert doc["metadata"]["namespace"] == "desktops"
        sts = find(docs, "StatefulSet")
        assert sts["metadata"]["name"] == f"whaletop-{user}"
        selector = sts["spec"]["selector"]["matchLabels"]
        assert selector["app.kubernetes.io/instance"] == user
        service = find(docs, "Service")
        assert service["spec"]["selector"] == selector
        assert sts["spec"]["serviceName"] == service["metadata"]["name"]
        ingress = find(docs, "Ingress")
        (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
        assert path["path"].startswith(f"/{user}(")
        assert path["backend"]["service"]["name"] == service["metadata"]["name"]
        # Secrets: generated per user, and referenced by their generated names.
        container = desktop_container(sts)
        mounted = _secret_mounts(sts)
        files = secret_files(container)
        name, _ = mounted[files["WEB_PASSWORD"]]
        assert mounted[files["VNC_PASSWORD"]][0] == name
        passwords = find(docs, "Secret", name)
        assert name.startswith(f"whaletop-passwords-{user}-")  # hashed
        values = {key: base64.b64decode(passwords["data"][key]).decode()
                  for key in ("WEB_PASSWORD", "VNC_PASSWORD")}
        assert values == {"WEB_PASSWORD": web_password(f"{user}-pw1"),
                          "VNC_PASSWORD": f"{user}-pw1"}
        cfg = parse_container_config(container, secrets=values)
        assert (cfg.web_password, cfg.vnc_password) == (values["WEB_PASSWORD"],
                                                        values["VNC_PASSWORD"])
        # The namespace's metrics token, made once and never suffixed: the one
        # podmonitor.yaml sends to every desktop.
        token_secret, token_key = mounted[files["METRICS_TOKEN"]]
        bearer = podmonitor_endpoint()["bearerTokenSecret"]
        assert (token_secret, token_key) == (bearer["name"], bearer["key"])
        assert not [d for d in docs if d["kind"] == "Secret"
                    and d["metadata"]["name"].startswith(token_secret)]
        tls_volume = next(v for v in pod_spec(sts)["volumes"] if v["name"] == "tls")
        # Not hashed: a renewal updates this secret in place, and is reloaded live.
        assert tls_volume["secret"]["secretName"] == f"whaletop-tls-{user}"
        find(docs, "Secret", f"whaletop-tls-{user}")


# -- Compose ---------------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, for the values used here."""
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        if op == "-":
            return str(arg)
        raise AssertionError(f"${{{name}}} is required: {arg}")

    return INTERPOLATION.sub(one, value)


def compose_services(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(COMPOSE.read_text())  # resolves the x-desktop anchor
    services: dict[str, dict[str, Any]] = doc["services"]
    return {name: {key: ({k: interpolate(v, env) for k, v in val.items()}
                         if isinstance(val, dict) else val)
                   for key, val in svc.items()} for name, svc in services.items()}


def test_compose_variables_are_all_in_the_env_example() -> None:
    used = {m[1] for m in INTERPOLATION.finditer(COMPOSE.read_text())}
    assert used == set(env_example()), "desktops.env.example names every variable, no more"


def test_compose_refuses_to_start_without_passwords() -> None:
    with pytest.raises(AssertionError, match=r"VNC_PASSWORD\} is required"):
        compose_services(env_example())  # the example's passwords are empty on purpose


@pytest.mark.parametrize("from_example", [True, False], ids=["env-example", "defaults"])
def test_compose_desktops_are_valid_and_apart(from_example: bool) -> None:
    """With the example's values and with the compose file's own defaults."""
    env = {**(env_example() if from_example else {}),
           "ALICE_VNC_PASSWORD": "alice-pw", "BOB_VNC_PASSWORD": "bob-pw1"}
    services = compose_services(env)
    assert len(services) >= 2
    ports: list[int] = []
    for name, svc in services.items():
        environment = {k: str(v) for k, v in svc["environment"].items()}
        assert set(environment) <= ENVS | EXTRA_ENV, set(environment) - ENVS - EXTRA_ENV
        cfg = config.parse([], environment)
        assert cfg.vnc_password == env[f"{name.upper()}_VNC_PASSWORD"]
        ports += [cfg.web_port, cfg.vnc_port]
        # host network: the desktops share the host's ports.
        assert svc["network_mode"] == "host"
        assert "ports" not in svc
        volume, target = svc["volumes"][0].split(":")
        assert target == f"/home/{cfg.username}"
        assert volume in yaml.safe_load(COMPOSE.read_text())["volumes"]
        seccomp = next(o for o in svc["security_opt"] if o.startswith("seccomp="))
        assert (DEPLOY / seccomp.removeprefix("seccomp=")).resolve() == ROOT / "chrome.json"
        grace = float(svc["stop_grace_period"].removesuffix("s"))
        assert _worst_stop_seconds() < grace
    assert len(ports) == len(set(ports)), f"every web and VNC port differs: {ports}"


# -- the kubelet's secret update -------------------------------------------------------------

class KubeletSecretVolume:
    """A secret volume as the kubelet's AtomicWriter lays it out and updates it:

        ..2026_11_26_10_00_00.123456789/tls.pem   the payload, one folder per version
        ..data -> ..2026_11_26_10_00_00.123456789
        tls.pem -> ..data/tls.pem                 what the container opens

    An update writes a new timestamped folder, points `..data_tmp` at it, renames that
    over `..data` (the atomic step), adds user-visible links for new keys and removes
    the old folder."""

    def __init__(self, folder: Path, mode: int = 0o400, group: int | None = None) -> None:
        """`group`: the pod's fsGroup, which the kubelet gives the files, readable."""
        self.folder = folder
        self.mode = mode if group is None else mode | 0o040
        self.group = group
        folder.mkdir(parents=True, exist_ok=True)

    def _timestamped(self) -> Path:
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.")
        for n in range(1000):
            path = self.folder / f"{stamp}{time.time_ns() % 10**9 + n:09d}"
            if not path.exists():
                path.mkdir(mode=0o755)
                return path
        raise AssertionError("no free timestamped folder")

    def write(self, payload: Mapping[str, bytes]) -> None:
        self.stage(payload)
        self.publish(payload)

    def stage(self, payload: Mapping[str, bytes]) -> None:
        """The new version's folder and `..data_tmp` pointing at it: nothing a reader
        of the user-visible names sees yet."""
        new = self._timestamped()
        for key, content in payload.items():
            (new / key).write_bytes(content)
            (new / key).chmod(self.mode)
            if self.group is not None:
                os.chown(new / key, -1, self.group)
        os.symlink(new.name, self.folder / "..data_tmp")

    def publish(self, keys: Iterable[str]) -> None:
        """The atomic step, then the links of new keys and the old version's removal."""
        data = self.folder / "..data"
        old = self.folder / os.readlink(data) if data.is_symlink() else None
        os.rename(self.folder / "..data_tmp", data)
        names = set(keys)
        for key in names:
            link = self.folder / key
            if not link.is_symlink():
                os.symlink(f"..data/{key}", link)
        for link in self.folder.iterdir():
            if not link.name.startswith("..") and link.name not in names:
                link.unlink()
        if old is not None:
            shutil.rmtree(old)


def test_kubelet_layout_is_what_the_kubelet_makes(tmp_path: Path) -> None:
    volume = KubeletSecretVolume(tmp_path / "tls")
    volume.write({"tls.pem": b"one"})
    volume.write({"tls.pem": b"two"})
    entries = sorted(p.name for p in volume.folder.iterdir())
    assert entries[-2:] == ["..data", "tls.pem"]
    (stamped,) = entries[:-2]
    assert re.fullmatch(r"\.\.\d{4}(_\d\d){5}\.\d{9}", stamped)
    assert os.readlink(volume.folder / "..data") == stamped
    assert os.readlink(volume.folder / "tls.pem") == "..data/tls.pem"
    assert (volume.folder / "tls.pem").read_bytes() == b"two"


def _wait(event: threading.Event, timeout: float = 10) -> bool:
    return event.wait(timeout)


@pytest.fixture
def kubelet_tls(tmp_path: Path) -> tuple[KubeletSecretVolume, Path]:
    cfg = parse_container_config(desktop_container())
    cert_path = Path(cfg.tls_certificate)
    # The manifest's layout, re-rooted in a temporary folder.
    volume = KubeletSecretVolume(tmp_path / cert_path.parent.relative_to("/"))
    return volume, volume.folder / cert_path.name


def test_kubelet_secret_swap_is_seen_and_the_new_certificate_loads(
        kubelet_tls: tuple[KubeletSecretVolume, Path], tmp_path: Path) -> None:
    """What whaletopd does with a secret update, without Docker: its folder watcher fires
    on the `..data` swap, the digest changes, and the new bundle validates.  The same,
    through a real container and websockify, is in tests/e2e/test_compose.py (and with a
    simpler swap, tests/e2e/test_tls.py::test_kubernetes_style_symlink_swap_is_seen)."""
    volume, path = kubelet_tls
    first, key = certgen.make(cn="first.test")
    volume.write({path.name: certgen.pem(first, key)})
    in_service = certs.obtain(str(path), tmp_path, None)
    assert in_service.bundle.fingerprint == certgen.fingerprint(first)
    second, key2 = certgen.make(cn="renewed.test")
    volume.stage({path.name: certgen.pem(second, key2)})  # made before the watch: unseen

    changed = threading.Event()
    watcher = watch.Watcher(path.parent, changed.set, tree=False)
    watcher.start()  # returns with the watch in place
    try:
        volume.publish([path.name])
        assert _wait(changed), "the ..data swap was not seen"
    finally:
        watcher.stop()
    assert files.file_digest(path) != in_service.digest
    renewed = certs.obtain(str(path), tmp_path, None)
    assert renewed.bundle.fingerprint == certgen.fingerprint(second)
    assert renewed.source == path


def test_a_key_added_to_the_secret_is_seen_too(
        kubelet_tls: tuple[KubeletSecretVolume, Path]) -> None:
    """Whatever the update, the watched folder is the mount point: every swap is seen."""
    volume, path = kubelet_tls
    cert, key = certgen.make()
    volume.write({path.name: certgen.pem(cert, key)})
    digest = files.file_digest(path)
    changed = threading.Event()
    watcher = watch.Watcher(path.parent, changed.set, tree=False)
    watcher.start()
    try:
        volume.write({path.name: certgen.pem(cert, key), "ca.crt": b"x"})
        assert _wait(changed)
    finally:
        watcher.stop()
    # Same certificate: whaletopd compares digests and reloads nothing.
    assert files.file_digest(path) == digest
