"""deploy/kubernetes against the Pod Security Standards, checked without a cluster.

The PodSecurity admission controller refuses, in a namespace labelled
`pod-security.kubernetes.io/enforce: restricted`, any pod that breaks one of the rules
of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (version
"latest": the baseline controls, then the restricted ones).  `violations()` below is
those rules, written from that page, applied to every Pod template of a rendered
kustomization: the default (deploy/kubernetes) must pass "restricted", the root variant
(deploy/kubernetes/root) "baseline" and not "restricted", and every rule is shown to
refuse a manifest that breaks it, so that the checker cannot pass by checking nothing.

What only a cluster shows (the admission controller's own verdict, the kubelet refusing
a root image under runAsNonRoot, fsGroup on a real volume) is listed in
deploy/kubernetes/README.md.
"""

from __future__ import annotations

import copy
import functools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_deploy import (
    KUBE,
    KUBE_BASE,
    KUBECTL,
    ROOT,
    find,
    kustomize,
    load_docs,
    parse_container_config,
    write_overlay,
)
from whaletopd import config
from whaletopd.paths import Paths

from .. import tools

KUBE_ROOT = KUBE / "root"
needs_kubectl = tools.KUBECTL.needed

# -- the standard ----------------------------------------------------------------------------

BASELINE = "baseline"
RESTRICTED = "restricted"

# The controls, named as the standard names them.
HOST_PROCESS = "HostProcess"
HOST_NAMESPACES = "Host Namespaces"
PRIVILEGED = "Privileged Containers"
CAPABILITIES = "Capabilities"
HOST_PATH = "HostPath Volumes"
HOST_PORTS = "Host Ports"
APPARMOR = "AppArmor"
SELINUX = "SELinux"
PROC_MOUNT = "/proc Mount Type"
SECCOMP = "Seccomp"
SYSCTLS = "Sysctls"
HOST_PROBES = "Host Probes / Lifecycle Hooks"
VOLUME_TYPES = "Volume Types"
PRIVILEGE_ESCALATION = "Privilege Escalation"
RUN_AS_NON_ROOT = "Running as Non-root"
RUN_AS_NON_ROOT_USER = "Running as Non-root user"
CONTROLS = {
    BASELINE: {HOST_PROCESS, HOST_NAMESPACES, PRIVILEGED, CAPABILITIES, HOST_PATH, HOST_PORTS,
               APPARMOR, SELINUX, PROC_MOUNT, SECCOMP, SYSCTLS, HOST_PROBES},
    RESTRICTED: {VOLUME_TYPES, PRIVILEGE_ESCALATION, RUN_AS_NON_ROOT, RUN_AS_NON_ROOT_USER,
                 SECCOMP, CAPABILITIES},
}

# Baseline: what may be added to the runtime's default capabilities.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
# Restricted: every capability dropped, this one the only one added back.
RESTRICTED_CAPABILITIES = {"NET_BIND_SERVICE"}
# The namespaced sysctls the standard calls safe (the later ones since 1.27 and 1.29).
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
APPARMOR_TYPES = {"RuntimeDefault", "Localhost"}
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"
SECCOMP_TYPES = {"RuntimeDefault", "Localhost"}
# Restricted: the volume sources a pod may use; `image` is allowed by the admission
# controller since Kubernetes 1.33.  hostPath is a baseline violation on its own.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
                      "persistentVolumeClaim", "projected", "secret"}
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
HANDLERS = ("httpGet", "tcpSocket")


@dataclass(frozen=True)
class Violation:
    level: str
    control: str
    where: str

    def __str__(self) -> str:
        return f"{self.level} / {self.control}: {self.where}"


def _containers(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or []:
            yield f"spec.{field}[{container.get('name')}]", container


def _context(node: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = node.get("securityContext") or {}
    return context


def _contexts(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The pod's security context and each container's."""
    yield "spec.securityContext", _context(spec)
    for where, container in _containers(spec):
        yield f"{where}.securityContext", _context(container)


def _baseline(meta: dict[str, Any], spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for where, context in _contexts(spec):
        if (context.get("windowsOptions") or {}).get("hostProcess"):
            yield HOST_PROCESS, f"{where}.windowsOptions.hostProcess"
        apparmor = (context.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in APPARMOR_TYPES:
            yield APPARMOR, f"{where}.appArmorProfile.type={apparmor}"
        selinux = context.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES:
            yield SELINUX, f"{where}.seLinuxOptions.type={selinux['type']}"
        for key in ("user", "role"):
            if selinux.get(key):
                yield SELINUX, f"{where}.seLinuxOptions.{key}"
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            yield SECCOMP, f"{where}.seccompProfile.type=Unconfined"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            yield HOST_NAMESPACES, f"spec.{key}"
    for where, container in _containers(spec):
        context = _context(container)
        if context.get("privileged"):
            yield PRIVILEGED, f"{where}.securityContext.privileged"
        added = set((context.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            yield CAPABILITIES, f"{where} adds {sorted(added - BASELINE_CAPABILITIES)}"
        if context.get("procMount", "Default") != "Default":
            yield PROC_MOUNT, f"{where}.securityContext.procMount={context['procMount']}"
        for port in container.get("ports") or []:
            if port.get("hostPort", 0) != 0:
                yield HOST_PORTS, f"{where} hostPort {port['hostPort']}"
        handlers = [(f"{where}.{probe}", container.get(probe) or {}) for probe in PROBES]
        lifecycle = container.get("lifecycle") or {}
        handlers += [(f"{where}.lifecycle.{hook}", lifecycle.get(hook) or {})
                     for hook in ("postStart", "preStop")]
        for path, handler in handlers:
            for kind in HANDLERS:
                if (handler.get(kind) or {}).get("host"):
                    yield HOST_PROBES, f"{path}.{kind}.host"
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            yield HOST_PATH, f"spec.volumes[{volume['name']}].hostPath"
    for sysctl in _context(spec).get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            yield SYSCTLS, f"spec.securityContext.sysctls {sysctl['name']}"
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
                value == "runtime/default" or value.startswith("localhost/")):
            yield APPARMOR, f"metadata.annotations[{key}]={value}"


def _restricted(spec: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for volume in spec.get("volumes") or []:
        sources = set(volume) - {"name"}
        if sources - RESTRICTED_VOLUMES:
            yield VOLUME_TYPES, f"spec.volumes[{volume['name']}] {sorted(sources)}"
    pod = _context(spec)
    if pod.get("runAsNonRoot") is False:
        yield RUN_AS_NON_ROOT, "spec.securityContext.runAsNonRoot=false"
    if pod.get("runAsUser") == 0:
        yield RUN_AS_NON_ROOT_USER, "spec.securityContext.runAsUser=0"
    pod_seccomp = (pod.get("seccompProfile") or {}).get("type")
    if pod_seccomp is not None and pod_seccomp not in SECCOMP_TYPES:
        yield SECCOMP, f"spec.securityContext.seccompProfile.type={pod_seccomp}"
    for where, container in _containers(spec):
        context = _context(container)
        # Linux pods: spec.os.name windows is exempt from these, and not a desktop.
        if context.get("allowPrivilegeEscalation") is not False:
            yield PRIVILEGE_ESCALATION, f"{where}: allowPrivilegeEscalation is not false"
        non_root = context.get("runAsNonRoot")
        if non_root is False or (non_root is None and pod.get("runAsNonRoot") is not True):
            yield RUN_AS_NON_ROOT, f"{where}: runAsNonRoot is not true (nor the pod's)"
        if context.get("runAsUser") == 0:
            yield RUN_AS_NON_ROOT_USER, f"{where}.securityContext.runAsUser=0"
        seccomp = (context.get("seccompProfile") or {}).get("type")
        if seccomp is None and pod_seccomp is None:
            yield SECCOMP, f"{where}: no seccompProfile (nor the pod's)"
        elif seccomp is not None and seccomp not in SECCOMP_TYPES:
            yield SECCOMP, f"{where}.securityContext.seccompProfile.type={seccomp}"
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            yield CAPABILITIES, f"{where}: capabilities.drop lacks ALL"
        added = set(capabilities.get("add") or [])
        if added - RESTRICTED_CAPABILITIES:
            yield CAPABILITIES, f"{where} adds {sorted(added - RESTRICTED_CAPABILITIES)}"


def violations(template: dict[str, Any], level: str) -> list[Violation]:
    """What the PodSecurity admission controller would refuse in a Pod (template) at
    `level`; the profiles are cumulative: restricted is baseline and more."""
    meta, spec = template.get("metadata") or {}, template["spec"]
    found = [Violation(BASELINE, control, where) for control, where in _baseline(meta, spec)]
    if level == RESTRICTED:
        found += [Violation(RESTRICTED, control, where) for control, where in _restricted(spec)]
    else:
        assert level == BASELINE, level
    return found


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Every Pod, or Pod template of a workload, with the name of what holds it."""
    found = []
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "Pod":
            found.append((f"Pod/{name}", doc))
        elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
                      "ReplicationController"}:
            found.append((f"{kind}/{name}", doc["spec"]["template"]))
        elif kind == "CronJob":
            found.append((f"{kind}/{name}", doc["spec"]["jobTemplate"]["spec"]["template"]))
    return found


# -- rendering -------------------------------------------------------------------------------

def read_kustomization(folder: Path) -> list[dict[str, Any]]:
    """The resources a kustomization lists, read as they are: enough for a folder that
    only lists resources (the base; images: changes no Pod Security field).  Anything
    else needs kustomize."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    rest = set(kustomization) - {"apiVersion", "kind", "resources", "images"}
    if rest:
        tools.KUBECTL.require()  # to render what this reader cannot
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = folder / resource
        docs += read_kustomization(path) if path.is_dir() else load_docs(path)
    return docs


@functools.cache
def _rendered(folder: Path) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(folder) if KUBECTL else read_kustomization(folder))


def render(folder: Path) -> list[dict[str, Any]]:
    """The kustomization as `kubectl apply -k` would send it (a fresh copy)."""
    return copy.deepcopy(list(_rendered(folder)))


def refused(docs: list[dict[str, Any]], level: str) -> list[Violation]:
    templates = pod_templates(docs)
    assert templates, "no Pod template to check: the checker would pass vacuously"
    return [v for _, template in templates for v in violations(template, level)]


def controls(found: list[Violation]) -> set[str]:
    return {v.control for v in found}


@pytest.fixture(autouse=True)
def _no_host_users(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user name is judged as in the image, not against this machine's accounts."""
    def missing(name: str) -> Any:
        raise KeyError(name)

    monkeypatch.setattr(config.pwd, "getpwnam", missing)


# -- the default: restricted ------------------------------------------------------------------

def test_default_kustomization_passes_restricted() -> None:
    docs = render(KUBE)
    assert [name for name, _ in pod_templates(docs)] == ["StatefulSet/whaletop"]
    found = refused(docs, RESTRICTED)
    assert not found, "\n".join(map(str, found))


@needs_kubectl
def test_reading_the_resources_renders_what_kustomize_renders() -> None:
    """Without kubectl the default is read from its resource files: the same pods."""
    read = pod_templates(read_kustomization(KUBE))
    rendered = pod_templates(kustomize(KUBE))
    assert [name for name, _ in read] == [name for name, _ in rendered]
    for (_, ours), (_, theirs) in zip(read, rendered, strict=True):
        assert ours["spec"]["securityContext"] == theirs["spec"]["securityContext"]
        assert ours["spec"]["volumes"] == theirs["spec"]["volumes"]
        for mine, kust in zip(ours["spec"]["containers"], theirs["spec"]["containers"],
                              strict=True):
            assert mine["securityContext"] == kust["securityContext"]


@needs_kubectl
def test_per_user_overlays_of_the_readme_pass_restricted(tmp_path: Path) -> None:
    docs = kustomize(write_overlay(tmp_path, "alice", "alice-pw1"))
    found = refused(docs, RESTRICTED)
    assert not found, "\n".join(map(str, found))


def _namespaces() -> dict[str, str]:
    """namespace.yaml: each namespace and the level it enforces."""
    docs = load_docs(KUBE / "namespace.yaml")
    return {d["metadata"]["name"]: d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
            for d in docs if d["kind"] == "Namespace"}


def test_the_example_namespace_enforces_restricted() -> None:
    from tests.unit.test_deploy import readme_overlay

    namespace = yaml.safe_load(readme_overlay())["namespace"]
    assert _namespaces()[namespace] == RESTRICTED, "the README's desktops are held to it"
    assert _namespaces()[f"{namespace}-root"] == BASELINE


def test_the_desktop_runs_as_its_own_user_on_a_read_only_root() -> None:
    """Least privilege beyond the standard's letter: no sudo, nothing writable but the
    home and the pod's own scratch volumes, and those cover every path whaletopd and
    the desktop write."""
    sts = find(render(KUBE), "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    pod, context = spec["securityContext"], container["securityContext"]
    assert pod["runAsUser"] > 0
    assert pod["runAsGroup"] > 0
    assert pod["fsGroup"] == pod["runAsGroup"], "the home volume is the user's group's"
    assert context["readOnlyRootFilesystem"] is True
    cfg = parse_container_config(container)
    assert not cfg.sudo
    assert all(port["containerPort"] >= 1024 for port in container["ports"])
    assert spec["automountServiceAccountToken"] is False

    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = {Path(m["mountPath"]): m["name"] for m in container["volumeMounts"]
                if not m.get("readOnly")}
    assert writable.pop(Path(f"/home/{cfg.username}")) == "home"
    claims = [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]]
    assert claims == ["home"], "the home is the one volume that outlives the pod"
    for name in writable.values():
        assert "sizeLimit" in volumes[name]["emptyDir"], f"{name}: scratch, and bounded"
    paths = Paths()
    needed = [paths.state_dir, paths.run_dir, paths.x11_socket_dir, paths.x_lock_dir,
              Path(f"/run/user/{pod['runAsUser']}"),  # provision.runtime_dir
              Path("/dev/shm")]
    for path in needed:
        assert any(path == mount or mount in path.parents for mount in writable), \
            f"{path} is on the read-only root filesystem"


# -- the checker refuses what breaks a rule ---------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]
POD = "spec.securityContext."
DESKTOP = "spec.containers.0."
CONTEXT = DESKTOP + "securityContext."


def _walk(template: dict[str, Any], path: str) -> tuple[Any, str | int]:
    *parents, last = path.split(".")
    node: Any = template
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    return node, (int(last) if isinstance(node, list) else last)


def put(path: str, value: Any) -> Mutation:
    def mutate(template: dict[str, Any]) -> None:
        node, key = _walk(template, path)
        node[key] = value
    return mutate


def add(path: str, value: Any) -> Mutation:
    """Append to the list at `path`."""
    def mutate(template: dict[str, Any]) -> None:
        node, key = _walk(template, path)
        node[key].append(value)
    return mutate


def drop(path: str) -> Mutation:
    def mutate(template: dict[str, Any]) -> None:
        node, key = _walk(template, path)
        del node[key]
    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(template: dict[str, Any]) -> None:
        for one in mutations:
            one(template)
    return mutate


RUNTIME_DEFAULT = {"type": "RuntimeDefault"}
CHROME_JSON = {"type": "Localhost", "localhostProfile": "whaletop/chrome.json"}

# (what, mutation, the level it breaks or None when still allowed, the control)
MUTATIONS: list[tuple[str, Mutation, str | None, str | None]] = [
    # restricted
    ("pod-runAsNonRoot-removed", drop(POD + "runAsNonRoot"), RESTRICTED, RUN_AS_NON_ROOT),
    ("pod-runAsNonRoot-false", put(POD + "runAsNonRoot", False), RESTRICTED, RUN_AS_NON_ROOT),
    ("container-runAsNonRoot-false", put(CONTEXT + "runAsNonRoot", False), RESTRICTED,
     RUN_AS_NON_ROOT),
    ("runAsNonRoot-on-the-container-only",
     both(drop(POD + "runAsNonRoot"), put(CONTEXT + "runAsNonRoot", True)), None, None),
    ("pod-runAsUser-0", put(POD + "runAsUser", 0), RESTRICTED, RUN_AS_NON_ROOT_USER),
    ("container-runAsUser-0", put(CONTEXT + "runAsUser", 0), RESTRICTED,
     RUN_AS_NON_ROOT_USER),
    ("allowPrivilegeEscalation-unset", drop(CONTEXT + "allowPrivilegeEscalation"), RESTRICTED,
     PRIVILEGE_ESCALATION),
    ("allowPrivilegeEscalation-true", put(CONTEXT + "allowPrivilegeEscalation", True),
     RESTRICTED, PRIVILEGE_ESCALATION),
    ("seccomp-unset", drop(POD + "seccompProfile"), RESTRICTED, SECCOMP),
    ("seccomp-on-the-container-only",
     both(drop(POD + "seccompProfile"), put(CONTEXT + "seccompProfile", RUNTIME_DEFAULT)),
     None, None),
    ("seccomp-localhost-chrome-json", put(POD + "seccompProfile", CHROME_JSON), None, None),
    ("capabilities-not-dropped", drop(CONTEXT + "capabilities"), RESTRICTED, CAPABILITIES),
    ("capabilities-drop-some", put(CONTEXT + "capabilities.drop", ["NET_RAW"]), RESTRICTED,
     CAPABILITIES),
    ("add-NET_BIND_SERVICE", put(CONTEXT + "capabilities.add", ["NET_BIND_SERVICE"]), None,
     None),
    ("add-CHOWN", put(CONTEXT + "capabilities.add", ["CHOWN"]), RESTRICTED, CAPABILITIES),
    ("nfs-volume", add("spec.volumes", {"name": "x", "nfs": {"server": "n", "path": "/"}}),
     RESTRICTED, VOLUME_TYPES),
    ("image-volume", add("spec.volumes", {"name": "x", "image": {"reference": "busybox"}}), None,
     None),
    ("init-container-without-context",
     put("spec.initContainers", [{"name": "init", "image": "busybox"}]), RESTRICTED,
     PRIVILEGE_ESCALATION),
    # baseline
    ("add-SYS_ADMIN", put(CONTEXT + "capabilities.add", ["SYS_ADMIN"]), BASELINE,
     CAPABILITIES),
    ("privileged", put(CONTEXT + "privileged", True), BASELINE, PRIVILEGED),
    ("ephemeral-container-privileged",
     put("spec.ephemeralContainers", [{"name": "debug", "image": "busybox",
                                       "securityContext": {"privileged": True}}]),
     BASELINE, PRIVILEGED),
    ("hostNetwork", put("spec.hostNetwork", True), BASELINE, HOST_NAMESPACES),
    ("hostPID", put("spec.hostPID", True), BASELINE, HOST_NAMESPACES),
    ("hostIPC", put("spec.hostIPC", True), BASELINE, HOST_NAMESPACES),
    ("hostPath-volume", add("spec.volumes", {"name": "x", "hostPath": {"path": "/dev/shm"}}),
     BASELINE, HOST_PATH),
    ("hostPort", put(DESKTOP + "ports.0.hostPort", 8080), BASELINE, HOST_PORTS),
    ("unsafe-sysctl", put(POD + "sysctls", [{"name": "kernel.msgmax", "value": "65536"}]),
     BASELINE, SYSCTLS),
    ("safe-sysctl", put(POD + "sysctls", [{"name": "net.ipv4.ip_unprivileged_port_start",
                                          "value": "0"}]), None, None),
    ("apparmor-unconfined", put(CONTEXT + "appArmorProfile", {"type": "Unconfined"}),
     BASELINE, APPARMOR),
    ("apparmor-annotation-unconfined",
     put("metadata.annotations", {APPARMOR_ANNOTATION + "desktop": "unconfined"}),
     BASELINE, APPARMOR),
    ("apparmor-runtime-default", put(POD + "appArmorProfile", RUNTIME_DEFAULT), None, None),
    ("selinux-type", put(POD + "seLinuxOptions", {"type": "spc_t"}), BASELINE, SELINUX),
    ("selinux-user", put(CONTEXT + "seLinuxOptions", {"user": "system_u"}), BASELINE,
     SELINUX),
    ("selinux-level-only", put(POD + "seLinuxOptions", {"level": "s0:c1,c2"}), None, None),
    ("procMount-unmasked", put(CONTEXT + "procMount", "Unmasked"), BASELINE, PROC_MOUNT),
    ("seccomp-unconfined", put(CONTEXT + "seccompProfile", {"type": "Unconfined"}), BASELINE,
     SECCOMP),
    ("windows-hostProcess", put(POD + "windowsOptions", {"hostProcess": True}), BASELINE,
     HOST_PROCESS),
    ("probe-host", put(DESKTOP + "livenessProbe",
                       {"httpGet": {"host": "10.0.0.1", "port": 8080}}), BASELINE,
     HOST_PROBES),
    ("lifecycle-host", put(DESKTOP + "lifecycle",
                           {"preStop": {"tcpSocket": {"host": "10.0.0.1", "port": 22}}}),
     BASELINE, HOST_PROBES),
]


def test_every_control_is_broken_by_some_mutation() -> None:
    """A rule that no mutation breaks is a rule nobody has seen refuse anything."""
    for level, names in CONTROLS.items():
        broken = {control for _, _, at, control in MUTATIONS if at == level}
        assert broken == names, f"{level}: never broken: {names - broken}"


@pytest.mark.parametrize(("mutation", "level", "control"),
                         [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_the_checker_refuses_what_breaks_a_rule(mutation: Mutation, level: str | None,
                                                control: str | None) -> None:
    sts = find(render(KUBE), "StatefulSet")
    template = sts["spec"]["template"]
    assert not violations(template, RESTRICTED), "the default passes before the change"
    mutation(template)
    restricted, baseline = violations(template, RESTRICTED), violations(template, BASELINE)
    if level is None:
        assert not restricted, "\n".join(map(str, restricted))
    elif level == RESTRICTED:
        assert control in controls([v for v in restricted if v.level == RESTRICTED])
        assert not baseline, "baseline allows it"
    else:
        assert control in controls(baseline)
        assert set(baseline) <= set(restricted), "restricted is baseline and more"


def test_a_manifest_without_run_as_non_root_is_refused(tmp_path: Path) -> None:
    """The whole way, from the file: a copy of deploy/kubernetes whose StatefulSet lost
    its runAsNonRoot line is rendered as the real one is, and refused."""
    copy_of = tmp_path / "kubernetes"
    shutil.copytree(KUBE, copy_of)
    statefulset = copy_of / KUBE_BASE.name / "statefulset.yaml"
    text = statefulset.read_text()
    assert text.count("        runAsNonRoot: true\n") == 1
    statefulset.write_text(text.replace("        runAsNonRoot: true\n", ""))
    found = refused(render(copy_of), RESTRICTED)
    assert controls(found) == {RUN_AS_NON_ROOT}, found
    assert not refused(render(copy_of), BASELINE)


# -- the root variant: baseline ---------------------------------------------------------------

@needs_kubectl
def test_root_variant_passes_baseline_and_cannot_pass_restricted() -> None:
    """Root in the container, the runtime's capabilities and sudo's setuid bit: exactly
    what restricted forbids, and nothing baseline forbids."""
    docs = render(KUBE_ROOT)
    assert [name for name, _ in pod_templates(docs)] == ["StatefulSet/whaletop"]
    baseline = refused(docs, BASELINE)
    assert not baseline, "\n".join(map(str, baseline))
    assert controls(refused(docs, RESTRICTED)) == {
        RUN_AS_NON_ROOT, PRIVILEGE_ESCALATION, CAPABILITIES}


@needs_kubectl
def test_root_variant_gives_sudo_and_keeps_the_rest() -> None:
    """Only the security context, sudo and the scratch volumes differ from the default:
    the same desktop, probes, secrets (as files), scrape annotations and home."""
    default, root = find(render(KUBE), "StatefulSet"), find(render(KUBE_ROOT), "StatefulSet")
    (container,) = root["spec"]["template"]["spec"]["containers"]
    cfg = parse_container_config(container)
    assert cfg.sudo
    assert "securityContext" not in container, "the runtime's defaults: root, setuid sudo"
    (plain,) = default["spec"]["template"]["spec"]["containers"]
    for key in ("args", "ports", "resources", "startupProbe", "readinessProbe",
                "livenessProbe", "image"):
        assert container[key] == plain[key], key
    assert [e for e in plain["env"] if e["name"] != "WHALETOP_NO_SUDO"] == container["env"]
    assert root["spec"]["volumeClaimTemplates"] == default["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {f"/home/{cfg.username}", "/dev/shm", "/etc/whaletop/tls",
                      "/etc/whaletop/secrets"}
    volumes = {v["name"]: v for v in root["spec"]["template"]["spec"]["volumes"]}
    for volume in default["spec"]["template"]["spec"]["volumes"]:
        if "emptyDir" not in volume or volume["name"] == "dshm":
            assert volumes[volume["name"]] == volume, "the same secrets, the same files"
    assert (root["spec"]["template"]["metadata"]["annotations"]
            == default["spec"]["template"]["metadata"]["annotations"])


@needs_kubectl
def test_root_variant_seccomp_profile_is_the_repositorys_chrome_json() -> None:
    pod = find(render(KUBE_ROOT), "StatefulSet")["spec"]["template"]["spec"]
    profile = pod["securityContext"]["seccompProfile"]
    assert profile == CHROME_JSON
    assert (ROOT / Path(profile["localhostProfile"]).name).is_file()
    readme = (KUBE / "README.md").read_text()
    assert f"/var/lib/kubelet/seccomp/{profile['localhostProfile']}" in readme


@needs_kubectl
def test_root_variant_per_user_overlay(tmp_path: Path) -> None:
    """The README's overlay with the root variant as its base: names apart, baseline."""
    overlay = write_overlay(tmp_path, "carol", "carol-pw1")
    text = (overlay / "kustomization.yaml").read_text()
    base = next(line for line in text.splitlines() if line.endswith("deploy/kubernetes"))
    (overlay / "kustomization.yaml").write_text(text.replace(base, base + "/root"))
    docs = kustomize(overlay)
    assert find(docs, "StatefulSet")["metadata"]["name"] == "whaletop-carol"
    assert not refused(docs, BASELINE)
    assert refused(docs, RESTRICTED)
