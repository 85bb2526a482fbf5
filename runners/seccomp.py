"""The seccomp filter of every container the runners start, on x86_64.

The engine's default profile allows about 300 system calls for three
ABIs at once (x86_64, i386 and x32), and compiling that filter is a
measurable part of starting a container (runc does it each time). Ours
is an allow-list too, and tighter:

- x86_64 calls only. A 32-bit call (`int 0x80`) or an x32 one is
  refused whatever its number: the compat entry points, a kernel
  surface of their own, stay out of reach. A kata's code is built and
  run as x86_64 in the images here; a 32-bit binary fails.
- No io_uring: it bypasses this filter for the work it submits, and it
  has been the way in for many kernel exploits.
- The rest as the engine's default does for a container with no
  capabilities: no mounts, no namespaces (`clone` with a namespace flag
  is refused; `clone3`, whose flags a filter cannot read, answers
  ENOSYS so that libc falls back to `clone`), no kernel keyring, no
  eBPF, no perf events, no userfaultfd, no modules, no clock setting.

Compiled for one ABI instead of three, it costs runc less: runc's share
of a container's start fell from about 15% of the machine's CPU to 9%
under load (perf). The engine's whole create-start-remove cycle is not
measurably faster for it: `benchmarks/bench_engine.py` gave 1.07 times
the default's rate one day and 0.94 the next, both within the rounds'
spread on this noisy 2-core host.

`security_options` picks it for an engine on x86_64 and leaves another
engine's default alone (the list names x86_64 calls).
"""

from __future__ import annotations

import json
import threading
from typing import Final

import docker
import docker.errors
import requests

__all__ = ["PROFILE", "SYSCALL_PROFILES", "security_options"]

#: the values of `ContainerLimits.syscalls`: ours, or the engine's default
SYSCALL_PROFILES: Final = ("tarpipe", "engine")

# Grouped by what they are for; each name once.
_FILES: Final = (
    "access", "chdir", "chmod", "chown", "close", "close_range",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "faccessat",
    "faccessat2", "fadvise64", "fallocate", "fchdir", "fchmod", "fchmodat",
    "fchown", "fchownat", "fcntl", "fdatasync", "fgetxattr", "flistxattr",
    "flock", "fremovexattr", "fsetxattr", "fstat", "fstatfs", "fsync",
    "ftruncate", "futimesat", "getcwd", "getdents", "getdents64",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "fanotify_mark", "lchown", "lgetxattr", "link",
    "linkat", "listxattr", "llistxattr", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "mkdir", "mkdirat", "mknod", "mknodat",
    "name_to_handle_at", "newfstatat", "open", "openat", "openat2",
    "pipe", "pipe2", "pread64", "preadv", "preadv2", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat",
    "readv", "removexattr", "rename", "renameat", "renameat2", "rmdir",
    "sendfile", "setxattr", "splice", "stat", "statfs", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "tee",
    "truncate", "umask", "unlink", "unlinkat", "utime", "utimensat",
    "utimes", "vmsplice", "write", "writev",
)
_WAITING: Final = (
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old",
    "eventfd", "eventfd2", "futex", "futex_waitv", "io_cancel",
    "io_destroy", "io_getevents", "io_pgetevents", "io_setup",
    "io_submit", "nanosleep", "clock_nanosleep", "pause", "poll",
    "ppoll", "pselect6", "select", "sched_yield", "timerfd_create",
    "timerfd_gettime", "timerfd_settime",
)
_MEMORY: Final = (
    "brk", "madvise", "membarrier", "memfd_create", "memfd_secret",
    "mincore", "mlock", "mlock2", "mlockall", "mmap", "mprotect",
    "mremap", "msync", "munlock", "munlockall", "munmap",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
)
_PROCESSES: Final = (
    "arch_prctl", "capget", "capset", "execve", "execveat", "exit",
    "exit_group", "fork", "get_robust_list", "get_thread_area",
    "getcpu", "getegid", "geteuid", "getgid", "getgroups", "getitimer",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getresgid", "getresuid", "getrlimit", "getrusage", "getsid",
    "gettid", "getuid", "ioprio_get", "ioprio_set", "kill",
    "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "modify_ldt", "pidfd_open",
    "pidfd_send_signal", "prctl", "prlimit64", "process_mrelease",
    "process_vm_readv", "process_vm_writev", "ptrace", "restart_syscall",
    "rseq", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getaffinity", "sched_getattr", "sched_getparam",
    "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity",
    "sched_setattr", "sched_setparam", "sched_setscheduler", "seccomp",
    "set_robust_list", "set_thread_area", "set_tid_address", "setfsgid",
    "setfsuid", "setgid", "setgroups", "setitimer", "setpgid",
    "setpriority", "setregid", "setresgid", "setresuid", "setreuid",
    "setrlimit", "setsid", "setuid", "tgkill", "tkill", "vfork",
    "wait4", "waitid",
)
_SIGNALS: Final = (
    "alarm", "rt_sigaction", "rt_sigpending", "rt_sigprocmask",
    "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4",
)
_TIME: Final = (
    "adjtimex", "clock_adjtime", "clock_getres", "clock_gettime",
    "gettimeofday", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_settime", "times",
)
# Sockets reach only the container's own loopback: it has no network.
_SOCKETS_AND_IPC: Final = (
    "accept", "accept4", "bind", "connect", "getpeername", "getsockname",
    "getsockopt", "listen", "recvfrom", "recvmmsg", "recvmsg", "sendmmsg",
    "sendmsg", "sendto", "setsockopt", "shutdown", "socketpair",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedsend", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd",
    "semctl", "semget", "semop", "semtimedop", "shmat", "shmctl", "shmdt",
    "shmget",
)
_SYSTEM: Final = ("getrandom", "ioctl", "sysinfo", "uname")

ALLOWED: Final = tuple(sorted({*_FILES, *_WAITING, *_MEMORY, *_PROCESSES,
                               *_SIGNALS, *_TIME, *_SOCKETS_AND_IPC,
                               *_SYSTEM}))

# Namespace flags of clone(2): CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
# NEWUSER, NEWPID, NEWNET. A call with none of them set is allowed.
_CLONE_NAMESPACES: Final = 0x7E020000
_AF_VSOCK: Final = 40
_EPERM: Final = 1
_ENOSYS: Final = 38
# personality(2) personas allowed: PER_LINUX, UNAME26, ADDR_NO_RANDOMIZE
# (as `setarch -R` asks), the two together, and the query (0xffffffff).
_PERSONAS: Final = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


def _when(index: int, op: str, value: int, second: int = 0) -> dict[str, object]:
    return {"index": index, "op": op, "value": value, "valueTwo": second}


#: the profile, as the engine takes it (`security_opt` "seccomp=...")
PROFILE: Final[dict[str, object]] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": _EPERM,
    "architectures": ["SCMP_ARCH_X86_64"],
    "syscalls": [
        {"names": list(ALLOWED), "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [_when(0, "SCMP_CMP_MASKED_EQ", _CLONE_NAMESPACES)]},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
         "errnoRet": _ENOSYS},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [_when(0, "SCMP_CMP_NE", _AF_VSOCK)]},
        *({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
           "args": [_when(0, "SCMP_CMP_EQ", persona)]}
          for persona in _PERSONAS),
    ],
}
_PROFILE_OPTION: Final = "seccomp=" + json.dumps(PROFILE,
                                                 separators=(",", ":"))

_arches: dict[str, str] = {}
_arches_lock = threading.Lock()


def security_options(client: docker.DockerClient, *,
                     own_profile: bool = True) -> list[str]:
    """The `security_opt` of a container: no new privileges, and our
    seccomp profile if `own_profile` and the engine runs on x86_64
    (asked once per engine); otherwise the engine's default profile."""
    options = ["no-new-privileges"]
    if own_profile and _engine_arch(client) == "amd64":
        options.append(_PROFILE_OPTION)
    return options


def _engine_arch(client: docker.DockerClient) -> str:
    url = str(client.api.base_url)
    with _arches_lock:
        known = _arches.get(url)
    if known is not None:
        return known
    try:
        arch = str(client.version().get("Arch", ""))
    except (docker.errors.DockerException,
            requests.exceptions.RequestException):
        # Not remembered: the container's create will say what is wrong.
        return ""
    with _arches_lock:
        _arches[url] = arch
    return arch
