"""chrome.json: what scripts/seccomp_profile.py writes, in Docker's format, and what it
allows, checked by evaluating its rules the way Docker and libseccomp do."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "chrome.json"

ALLOW, ERRNO = "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"
EPERM, ENOSYS = 1, 38
# What `docker run` gives a container unless told otherwise.
DEFAULT_CAPS = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
})
CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP = 0x80, 0x20000, 0x2000000
CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER = 0x4000000, 0x8000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
SIGCHLD = 17
THREAD_FLAGS = 0x3D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|*TID, as glibc


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "seccomp_profile", ROOT / "scripts" / "seccomp_profile.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return _load_script()


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PROFILE.read_text(encoding="utf-8"))
    return data


def _arg_matches(arg: dict[str, Any], args: tuple[int, ...]) -> bool:
    value = args[arg["index"]] if arg["index"] < len(args) else 0
    op, want = arg["op"], int(arg["value"])
    return {
        "SCMP_CMP_EQ": lambda: value == want,
        "SCMP_CMP_NE": lambda: value != want,
        "SCMP_CMP_LT": lambda: value < want,
        "SCMP_CMP_LE": lambda: value <= want,
        "SCMP_CMP_GT": lambda: value > want,
        "SCMP_CMP_GE": lambda: value >= want,
        "SCMP_CMP_MASKED_EQ": lambda: value & want == int(arg.get("valueTwo", 0)),
    }[op]()


def _applies(rule: dict[str, Any], caps: frozenset[str], arch: str,
             kernel: tuple[int, int]) -> bool:
    """Docker's filters: every included cap present, no excluded one, arch, min kernel."""
    inc, exc = rule.get("includes", {}), rule.get("excludes", {})
    if not set(inc.get("caps", ())) <= caps or caps & set(exc.get("caps", ())):
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if arch in exc.get("arches", ()):
        return False
    if "minKernel" in inc:
        major, minor = (int(part) for part in inc["minKernel"].split("."))
        if kernel < (major, minor):
            return False
    return True


def evaluate(profile: dict[str, Any], name: str, *args: int,
             caps: frozenset[str] = DEFAULT_CAPS, arch: str = "amd64",
             kernel: tuple[int, int] = (6, 1)) -> tuple[str, int | None]:
    """(action, errno) the container's filter gives syscall `name` with `args`."""
    outcomes = {
        (rule["action"], rule.get("errnoRet"))
        for rule in profile["syscalls"]
        if name in rule["names"] and _applies(rule, caps, arch, kernel)
        and all(_arg_matches(arg, args) for arg in rule.get("args", ()))
    }
    assert len(outcomes) <= 1, f"conflicting rules for {name}: {outcomes}"
    if outcomes:
        return outcomes.pop()
    return profile["defaultAction"], profile["defaultErrnoRet"]


def allowed(profile: dict[str, Any], name: str, *args: int, **kw: Any) -> bool:
    return evaluate(profile, name, *args, **kw)[0] == ALLOW


# -- the file ------------------------------------------------------------------------------

def test_chrome_json_is_what_the_script_writes(script: ModuleType) -> None:
    assert PROFILE.read_text(encoding="utf-8") == script.render(), (
        "chrome.json is stale: run python3 scripts/seccomp_profile.py")


def test_the_script_is_deterministic_and_check_mode_agrees(
        script: ModuleType, tmp_path: Path) -> None:
    assert script.render() == script.render()
    out = tmp_path / "chrome.json"
    assert script.main(["--output", str(out)]) == 0
    assert script.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("chroot", "chown", 1))
    assert script.main(["--check", "--output", str(out)]) == 1


def test_docker_schema_shape(profile: dict[str, Any]) -> None:
    assert set(profile) == {"defaultAction", "defaultErrnoRet", "archMap", "syscalls"}
    assert profile["defaultAction"] == ERRNO
    assert profile["defaultErrnoRet"] == EPERM
    assert profile["archMap"] == [
        {"architecture": "SCMP_ARCH_X86_64",
         "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ]
    ops = {"SCMP_CMP_EQ", "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_GT",
           "SCMP_CMP_GE", "SCMP_CMP_MASKED_EQ"}
    for rule in profile["syscalls"]:
        assert set(rule) <= {"names", "action", "errnoRet", "args", "includes", "excludes",
                             "comment"}, rule
        assert rule["names"], rule
        assert rule["names"] == sorted(set(rule["names"])), rule
        assert all(isinstance(n, str) and n and n.strip() == n for n in rule["names"])
        assert rule["action"] in {ALLOW, ERRNO}
        assert ("errnoRet" in rule) == (rule["action"] == ERRNO)
        assert isinstance(rule["comment"], str)
        assert rule["comment"]
        for arg in rule.get("args", []):
            assert set(arg) <= {"index", "value", "valueTwo", "op"}
            assert arg["op"] in ops
            assert 0 <= arg["index"] <= 5
            assert 0 <= arg["value"] <= 0xFFFFFFFFFFFFFFFF
        for key in ("includes", "excludes"):
            assert set(rule.get(key, {})) <= {"caps", "arches", "minKernel"}


# -- Docker's default, kept ------------------------------------------------------------------

# Denied by Docker's default profile to a container with the default capabilities.
DOCKER_DENIED = [
    "_sysctl", "acct", "add_key", "bpf", "clock_settime", "create_module", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms",
    "get_mempolicy", "init_module", "io_uring_enter", "io_uring_setup", "ioperm", "iopl",
    "kcmp", "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount",
    "mount_setattr", "move_mount", "nfsservctl", "open_by_handle_at", "open_tree",
    "perf_event_open", "pidfd_getfd", "pivot_root", "process_madvise", "query_module",
    "quotactl", "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setdomainname",
    "sethostname", "setns", "settimeofday", "stime", "swapoff", "swapon", "syslog", "sysfs",
    "umount", "umount2", "uselib", "userfaultfd", "ustat", "vhangup", "vm86", "vm86old",
]


@pytest.mark.parametrize("name", DOCKER_DENIED)
def test_what_docker_denies_stays_denied(profile: dict[str, Any], name: str) -> None:
    assert evaluate(profile, name) == (ERRNO, EPERM)


@pytest.mark.parametrize("name", ["read", "openat", "execve", "futex", "rseq", "seccomp",
                                  "prctl", "memfd_create", "setresuid", "chown", "mknod"])
def test_ordinary_syscalls_are_allowed(profile: dict[str, Any], name: str) -> None:
    assert allowed(profile, name)


def test_docker_argument_conditions(profile: dict[str, Any]) -> None:
    af_unix, af_inet, af_netlink, af_alg, af_vsock = 1, 2, 16, 38, 40
    for family in (af_unix, af_inet, af_netlink, 39, 44):
        assert allowed(profile, "socket", family), family
    assert not allowed(profile, "socket", af_alg)
    assert not allowed(profile, "socket", af_vsock)
    for persona in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        assert allowed(profile, "personality", persona)
    assert not allowed(profile, "personality", 0x0040000)  # ADDR_NO_RANDOMIZE
    assert allowed(profile, "ptrace")
    assert not allowed(profile, "ptrace", kernel=(4, 4))
    assert allowed(profile, "arch_prctl")
    assert not allowed(profile, "arch_prctl", arch="arm64")
    assert allowed(profile, "set_tls", arch="arm")


def test_added_capabilities_unlock_what_they_do_in_docker(profile: dict[str, Any]) -> None:
    admin = DEFAULT_CAPS | {"CAP_SYS_ADMIN"}
    assert allowed(profile, "mount", caps=admin)
    assert allowed(profile, "clone3", caps=admin)
    assert allowed(profile, "clone", CLONE_NEWNS, caps=admin)
    assert allowed(profile, "kcmp", caps=DEFAULT_CAPS | {"CAP_SYS_PTRACE"})


# -- Chromium's namespace sandbox --------------------------------------------------------------

@pytest.mark.parametrize("flags", [
    CLONE_NEWUSER | SIGCHLD,                                # CanCreateProcessInNewUserNS
    CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | SIGCHLD,  # the zygote
    CLONE_NEWPID | SIGCHLD,                                 # each renderer, inside
    THREAD_FLAGS,
    SIGCHLD,
])
def test_clone_creates_chromiums_namespaces(profile: dict[str, Any], flags: int) -> None:
    assert allowed(profile, "clone", flags)


@pytest.mark.parametrize("ns", [CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC])
def test_clone_refuses_other_namespaces(profile: dict[str, Any], ns: int) -> None:
    assert not allowed(profile, "clone", ns | SIGCHLD)
    assert not allowed(profile, "clone", ns | CLONE_NEWUSER | CLONE_NEWPID | SIGCHLD)


def test_unshare_creates_user_pid_and_network_namespaces_only(
        profile: dict[str, Any]) -> None:
    assert allowed(profile, "unshare", CLONE_NEWUSER)
    assert allowed(profile, "unshare", CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)
    assert allowed(profile, "unshare", 0x400 | 0x200)  # CLONE_FILES | CLONE_FS
    for ns in (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWTIME):
        assert not allowed(profile, "unshare", CLONE_NEWUSER | ns), hex(ns)


def test_clone3_says_enosys_so_glibc_falls_back_to_clone(profile: dict[str, Any]) -> None:
    assert evaluate(profile, "clone3") == (ERRNO, ENOSYS)


def test_chroot_is_allowed_without_cap_sys_chroot(profile: dict[str, Any]) -> None:
    assert allowed(profile, "chroot")
    assert allowed(profile, "chroot", caps=frozenset())


def test_the_only_additions_to_docker_are_chromiums(script: ModuleType) -> None:
    added = script.chromium_rules()
    assert [rule["names"] for rule in added] == [["clone"], ["unshare"], ["chroot"]]
    assert script.profile()["syscalls"] == script.docker_rules() + added
