#!/usr/bin/env python3
"""Write chrome.json: Docker's default seccomp profile plus what Chromium's sandbox needs.

The profile is an allow-list in Docker's format (``--security-opt seccomp=chrome.json``):
everything not named below fails with EPERM. It reproduces Docker's default profile
(moby/profiles seccomp v0.2.3, in Docker since 29.5) for the architectures the image is
built for (x86_64/x86/x32, aarch64/arm), rule for rule, including its argument
conditions (socket without AF_ALG/AF_VSOCK, personality, clone without namespace flags)
and its rules that only apply when a capability is added (``--cap-add``). On top of
that it allows what Chromium's layer-1 (namespace) sandbox does as an unprivileged user
(measured with strace: clone(CLONE_NEWUSER), clone(CLONE_NEWUSER|CLONE_NEWPID|
CLONE_NEWNET), unshare(CLONE_NEWUSER), clone(CLONE_NEWPID), chroot("/proc/self/fdinfo/")):

* clone(2) and unshare(2) with CLONE_NEWUSER, CLONE_NEWPID and CLONE_NEWNET (Docker's
  default refuses every namespace flag without CAP_SYS_ADMIN). Mount, cgroup, UTS, IPC
  and time namespaces stay refused: Chromium does not create them, and a mount namespace
  owned by the user is the door to mounting filesystems.
* chroot(2) whatever the container's capabilities: Chromium chroots into an empty
  directory inside its new user namespace (Docker's default allows chroot only with
  CAP_SYS_CHROOT, which a default container has, but not one run with --cap-drop).

clone3(2) keeps Docker's answer, ENOSYS: its flags sit in a struct that seccomp cannot
read, so allowing it would allow every namespace. glibc (pthread_create, posix_spawn)
and Chromium fall back to clone(2), which is filtered.

Run ``python3 scripts/seccomp_profile.py`` to rewrite chrome.json, ``--check`` to fail
when it differs from what this script writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "chrome.json"

ENOSYS = 38

# Flags of clone(2)/unshare(2) (linux/sched.h).
CLONE_NEWTIME = 0x00000080  # unshare(2) only: in clone(2) this bit belongs to CSIGNAL
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# Docker's default: clone(2) only when no namespace flag is set.
DOCKER_CLONE_NS_MASK = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
                        | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)
# Chromium's sandbox: the user, PID and network namespaces become allowed; these not.
REFUSED_CLONE_FLAGS = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
REFUSED_UNSHARE_FLAGS = REFUSED_CLONE_FLAGS | CLONE_NEWTIME

# Address families Docker's default refuses to socket(2) (linux/socket.h).
AF_ALG = 38
AF_VSOCK = 40

# personality(2) values Docker's default allows: PER_LINUX, UNAME26, PER_LINUX32,
# UNAME26|PER_LINUX32, and 0xffffffff (query the current persona).
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

ARCH_MAP = (
    ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
)

# Docker's default allow-list, unconditional (moby/profiles seccomp/default.json v0.2.3).
# Names a kernel or libseccomp does not know are skipped by runc.
DOCKER_ALLOWED = """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod
    chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64
    clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close
    close_range connect copy_file_range creat dup dup2 dup3 epoll_create epoll_create1
    epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd
    eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64
    fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
    fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat
    fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue
    futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents
    getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
    getitimer getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid
    getresgid32 getresuid getresuid32 getrlimit get_robust_list getrusage getsid
    getsockname getsockopt get_thread_area gettid gettimeofday getuid getuid32 getxattr
    getxattrat inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel
    ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
    ioprio_set io_setup io_submit ipc kill landlock_add_rule landlock_create_ruleset
    landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listmount
    listxattr listxattrat llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64
    madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat
    mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify
    mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64
    mq_unlink mremap mseal msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
    name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause
    pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll
    ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
    pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv
    recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr
    removexattrat rename renameat renameat2 restart_syscall riscv_hwprobe rmdir rseq
    rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
    rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_getaffinity
    sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
    sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
    seccomp select semctl semget semop semtimedop semtimedop_time64 send sendfile
    sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32 setfsuid setfsuid32 setgid
    setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32
    setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit
    set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
    setxattr setxattrat shmat shmctl shmdt shmget shutdown sigaltstack signalfd
    signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs
    statfs64 statmount statx symlink symlinkat sync sync_file_range syncfs sysinfo tee
    tgkill time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
    timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
    timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask
    uname unlink unlinkat uretprobe utime utimensat utimensat_time64 utimes vfork
    vmsplice wait4 waitid waitpid write writev

"""

# Docker's default: allowed on every architecture from kernel 4.8 on (before 4.8 ptrace
# could be used to bypass seccomp).
DOCKER_ALLOWED_MIN_KERNEL_4_8 = "process_vm_readv process_vm_writev ptrace"

# Docker's default: allowed only on these architectures (Go's GOARCH names).
DOCKER_ALLOWED_BY_ARCH = (
    (("arm", "arm64"),
     "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
    (("amd64", "x32"), "arch_prctl"),
    (("amd64", "x32", "x86"), "modify_ldt"),
)

# Docker's default: allowed only when the container has the capability (--cap-add).
DOCKER_ALLOWED_BY_CAP = (
    ("CAP_DAC_READ_SEARCH", "open_by_handle_at"),
    ("CAP_SYS_ADMIN", """
        bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
        lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr
        move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname
        sethostname setns syslog umount umount2 unshare
    """),
    ("CAP_SYS_BOOT", "reboot"),
    ("CAP_SYS_CHROOT", "chroot"),
    ("CAP_SYS_MODULE", "delete_module init_module finit_module"),
    ("CAP_SYS_PACCT", "acct"),
    ("CAP_SYS_PTRACE", "kcmp pidfd_getfd process_madvise process_vm_readv "
                       "process_vm_writev ptrace"),
    ("CAP_SYS_RAWIO", "iopl ioperm"),
    ("CAP_SYS_TIME", "settimeofday stime clock_settime clock_settime64"),
    ("CAP_SYS_TTY_CONFIG", "vhangup"),
    ("CAP_SYS_NICE", "get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    ("CAP_SYSLOG", "syslog"),
    ("CAP_BPF", "bpf"),
    ("CAP_PERFMON", "perf_event_open"),
)


def _names(text: str) -> list[str]:
    names = text.split()
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate syscall names in {text!r}")
    return sorted(names)


def _rule(names: str, comment: str, *, action: str = "SCMP_ACT_ALLOW",
          errno: int | None = None, args: list[dict[str, Any]] | None = None,
          includes: dict[str, Any] | None = None,
          excludes: dict[str, Any] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": _names(names), "action": action}
    if errno is not None:
        rule["errnoRet"] = errno
    if args:
        rule["args"] = args
    if includes:
        rule["includes"] = includes
    if excludes:
        rule["excludes"] = excludes
    rule["comment"] = comment
    return rule


def _arg(index: int, value: int, op: str, value_two: int | None = None) -> dict[str, Any]:
    arg: dict[str, Any] = {"index": index, "value": value}
    if value_two is not None:
        arg["valueTwo"] = value_two
    arg["op"] = op
    return arg


def docker_rules() -> list[dict[str, Any]]:
    """Docker's default profile (for the architectures of ARCH_MAP), rule by rule."""
    rules = [
        _rule(DOCKER_ALLOWED, "Docker default: allowed"),
        _rule(DOCKER_ALLOWED_MIN_KERNEL_4_8, "Docker default: allowed from kernel 4.8",
              includes={"minKernel": "4.8"}),
        _rule("socket", "Docker default: socket() below AF_ALG",
              args=[_arg(0, AF_ALG, "SCMP_CMP_LT")]),
        _rule("socket", "Docker default: socket() between AF_ALG and AF_VSOCK",
              args=[_arg(0, AF_ALG + 1, "SCMP_CMP_EQ")]),
        _rule("socket", "Docker default: socket() above AF_VSOCK",
              args=[_arg(0, AF_VSOCK, "SCMP_CMP_GT")]),
    ]
    rules += [
        _rule("personality", f"Docker default: personality({value:#x})",
              args=[_arg(0, value, "SCMP_CMP_EQ")])
        for value in PERSONALITIES
    ]
    rules += [
        _rule(names, f"Docker default: on {'/'.join(arches)} only",
              includes={"arches": list(arches)})
        for arches, names in DOCKER_ALLOWED_BY_ARCH
    ]
    rules.append(_rule(
        "clone", "Docker default: clone() without namespace flags",
        args=[_arg(0, DOCKER_CLONE_NS_MASK, "SCMP_CMP_MASKED_EQ", 0)],
        excludes={"caps": ["CAP_SYS_ADMIN"]}))
    rules.append(_rule(
        "clone3", "Docker default: clone3() says ENOSYS so that glibc falls back to "
        "clone(), whose flags can be checked",
        action="SCMP_ACT_ERRNO", errno=ENOSYS, excludes={"caps": ["CAP_SYS_ADMIN"]}))
    rules += [
        _rule(names, f"Docker default: with {cap}", includes={"caps": [cap]})
        for cap, names in DOCKER_ALLOWED_BY_CAP
    ]
    return rules


def chromium_rules() -> list[dict[str, Any]]:
    """What Chromium's namespace sandbox needs beyond Docker's default."""
    return [
        _rule("clone", "Chromium sandbox: clone() may create user, PID and network "
              "namespaces; never mount, cgroup, UTS or IPC ones",
              args=[_arg(0, REFUSED_CLONE_FLAGS, "SCMP_CMP_MASKED_EQ", 0)]),
        _rule("unshare", "Chromium sandbox: unshare() of user, PID and network "
              "namespaces (and of files/fs/semaphores); never mount, cgroup, UTS, IPC or "
              "time ones",
              args=[_arg(0, REFUSED_UNSHARE_FLAGS, "SCMP_CMP_MASKED_EQ", 0)]),
        _rule("chroot", "Chromium sandbox: chroot() into an empty directory inside its "
              "own user namespace, also when the container has no CAP_SYS_CHROOT"),
    ]


def profile() -> dict[str, Any]:
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": arch, "subArchitectures": list(subs)}
            for arch, subs in ARCH_MAP
        ],
        "syscalls": docker_rules() + chromium_rules(),
    }


def render() -> str:
    return json.dumps(profile(), indent="\t") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 when {PROFILE.name} differs from what would be written")
    parser.add_argument("--output", type=Path, default=PROFILE, help="where to write")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run scripts/seccomp_profile.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
