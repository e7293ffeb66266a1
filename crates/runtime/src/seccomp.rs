//! bulkhead's default seccomp profile: deny by default (EPERM), allow what ordinary programs use.
//!
//! It is at least as strict as Docker's default for the capabilities we grant (a test compares the
//! two, reading Docker's profile in place), and stricter where that matters most for escapes:
//! - only the native x86_64 ABI: 32-bit and x32 system calls, a long source of kernel bugs, are not
//!   in the filter at all;
//! - io_uring, userfaultfd and the keyring calls (keyctl, add_key, request_key) are denied;
//! - bpf, perf_event_open, kexec, module loading, the whole mount family (mount, umount2, fsopen,
//!   fsconfig, fsmount, fspick, move_mount, open_tree, mount_setattr, pivot_root), unshare, setns and
//!   clone with any namespace flag (CLONE_NEWTIME included) are denied; clone3 answers ENOSYS so C
//!   libraries fall back to clone, whose flags a filter can see;
//! - socket(2) for AF_ALG and AF_VSOCK is denied, and so are ioctl(2)'s TIOCSTI and TIOCLINUX (a
//!   container that holds a terminal of the host's could type commands into it).
//!
//! Arguments that the kernel reads as 32-bit integers (socket's family, ioctl's request,
//! personality's persona) are compared on their low 32 bits only: a comparison of all 64 bits lets
//! `socket(0x1_0000_0028, ...)` pass a "family > AF_VSOCK" rule while the kernel, reading 32 bits,
//! makes an AF_VSOCK socket. Every rule on such an argument is a masked equality
//! (`SCMP_CMP_MASKED_EQ` with the upper 32 bits out of the mask); "any value but these" is written
//! as the set of bit prefixes that cover the rest of the 32-bit range ([`u32_except`]).
//!
//! The list is ours, written from the Linux system call table by purpose; Docker's file is only
//! read by the test that compares them.

use serde_json::{json, Value};

/// System calls allowed whatever their arguments, grouped by what they are for.
pub const ALLOWED: &[&str] = &[
    // file I/O
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "open",
    "openat",
    "openat2",
    "creat",
    "close",
    "close_range",
    "lseek",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "flock",
    "fsync",
    "fdatasync",
    "sync",
    "syncfs",
    "sync_file_range",
    "truncate",
    "ftruncate",
    "fallocate",
    "sendfile",
    "splice",
    "tee",
    "vmsplice",
    "copy_file_range",
    "readahead",
    "fadvise64",
    // file metadata and names
    "stat",
    "fstat",
    "lstat",
    "newfstatat",
    "statx",
    "statfs",
    "fstatfs",
    "access",
    "faccessat",
    "faccessat2",
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "fchown",
    "lchown",
    "fchownat",
    "utime",
    "utimes",
    "utimensat",
    "futimesat",
    "umask",
    "getdents",
    "getdents64",
    "readlink",
    "readlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "unlink",
    "unlinkat",
    "symlink",
    "symlinkat",
    "mknod",
    "mknodat",
    "chdir",
    "fchdir",
    "getcwd",
    "chroot",
    "getxattr",
    "lgetxattr",
    "fgetxattr",
    "setxattr",
    "lsetxattr",
    "fsetxattr",
    "listxattr",
    "llistxattr",
    "flistxattr",
    "removexattr",
    "lremovexattr",
    "fremovexattr",
    // memory
    "brk",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "mlock",
    "mlock2",
    "munlock",
    "mlockall",
    "munlockall",
    "mincore",
    "msync",
    "membarrier",
    "memfd_create",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    // processes and threads
    "fork",
    "vfork",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "getpid",
    "getppid",
    "gettid",
    "getpgid",
    "setpgid",
    "getpgrp",
    "getsid",
    "setsid",
    "prctl",
    "arch_prctl",
    "set_tid_address",
    "set_robust_list",
    "get_robust_list",
    "futex",
    "futex_waitv",
    "sched_yield",
    "sched_getaffinity",
    "sched_setaffinity",
    "sched_getparam",
    "sched_setparam",
    "sched_getscheduler",
    "sched_setscheduler",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_rr_get_interval",
    "sched_getattr",
    "sched_setattr",
    "getpriority",
    "setpriority",
    "nanosleep",
    "clock_nanosleep",
    "pause",
    "alarm",
    "getitimer",
    "setitimer",
    "times",
    "getrusage",
    "getrlimit",
    "setrlimit",
    "prlimit64",
    "uname",
    "sysinfo",
    "capget",
    "capset",
    "rseq",
    "restart_syscall",
    "seccomp",
    "pidfd_open",
    "pidfd_send_signal",
    "getrandom",
    "ioprio_get",
    "ioprio_set",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "getcpu",
    "modify_ldt",
    // credentials (inside the user namespace)
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "setuid",
    "setgid",
    "setreuid",
    "setregid",
    "setresuid",
    "setresgid",
    "getresuid",
    "getresgid",
    "getgroups",
    "setgroups",
    "setfsuid",
    "setfsgid",
    // signals
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigpending",
    "rt_sigtimedwait",
    "rt_sigsuspend",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    // time (reading only: setting clocks needs CAP_SYS_TIME, which we never grant)
    "time",
    "gettimeofday",
    "clock_gettime",
    "clock_getres",
    "timer_create",
    "timer_settime",
    "timer_gettime",
    "timer_getoverrun",
    "timer_delete",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    // waiting for events
    "select",
    "pselect6",
    "poll",
    "ppoll",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "eventfd",
    "eventfd2",
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "inotify_rm_watch",
    // inter-process communication (namespaced)
    "pipe",
    "pipe2",
    "socketpair",
    "shmget",
    "shmat",
    "shmdt",
    "shmctl",
    "semget",
    "semop",
    "semtimedop",
    "semctl",
    "msgget",
    "msgsnd",
    "msgrcv",
    "msgctl",
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
    // sockets (socket(2) itself is below, with its family checked)
    "connect",
    "accept",
    "accept4",
    "bind",
    "listen",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
    "getsockname",
    "getpeername",
    "setsockopt",
    "getsockopt",
    // asynchronous I/O (the old interface; io_uring is denied)
    "io_setup",
    "io_destroy",
    "io_submit",
    "io_cancel",
    "io_getevents",
    "io_pgetevents",
];

/// Calls this profile never allows in any form, whatever else changes: the attack surface of
/// container escapes. The tests check them against the profile and from inside a container.
pub const DENIED: &[&str] = &[
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "pivot_root",
    "unshare",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "acct",
    "quotactl",
    "lookup_dcookie",
    "syslog",
    "iopl",
    "ioperm",
    "vhangup",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "fanotify_init",
    "set_mempolicy",
    "mbind",
    "move_pages",
    "migrate_pages",
];

/// clone(2) flags that create namespaces: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
/// and NEWTIME.
pub const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000 | 0x80;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const AF_ALG: u32 = 38;
const AF_VSOCK: u32 = 40;
/// ioctl requests that push input into a terminal (TIOCSTI) or drive the virtual console (TIOCLINUX).
pub const DENIED_IOCTLS: [u32; 2] = [0x5412, 0x541C];

/// (mask, datum) pairs of masked-equality comparisons that together match every 32-bit value but
/// the `excluded` ones, ignoring the upper 32 bits of the 64-bit argument: the smallest set of
/// aligned bit prefixes that covers the rest of the range (at most 32 per excluded value).
pub fn u32_except(excluded: &[u32]) -> Vec<(u64, u64)> {
    fn cover(prefix: u64, len: u32, excluded: &[u32], out: &mut Vec<(u64, u64)>) {
        let span = 32 - len;
        let inside = |v: &&u32| (u64::from(**v) >> span) == (prefix >> span);
        if !excluded.iter().any(|v| inside(&v)) {
            let mask = if len == 0 { 0 } else { (0xffff_ffffu64 >> span) << span };
            out.push((mask, prefix));
        } else if len < 32 {
            let half = 1u64 << (span - 1);
            cover(prefix, len + 1, excluded, out);
            cover(prefix | half, len + 1, excluded, out);
        }
    }
    let mut out = Vec::new();
    cover(0, 0, excluded, &mut out);
    out
}

/// A masked-equality comparison of argument `index` on its low 32 bits.
fn masked(index: u32, mask: u64, datum: u64) -> Value {
    json!({"index": index, "value": mask, "valueTwo": datum, "op": "SCMP_CMP_MASKED_EQ"})
}

/// The profile in the OCI runtime spec's `linux.seccomp` shape.
pub fn default_profile() -> Value {
    let allow = |names: &[&str]| json!({"names": names, "action": "SCMP_ACT_ALLOW"});
    let allow_if = |name: &str, args: Value| json!({"names": [name], "action": "SCMP_ACT_ALLOW", "args": args});
    let mut syscalls = vec![allow(ALLOWED)];
    // clone only without namespace flags (the flags are argument 0 on x86_64).
    syscalls.push(allow_if(
        "clone",
        json!([{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]),
    ));
    // clone3 passes its flags in memory a filter cannot read: say it does not exist.
    syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    // socket for every family but AF_ALG (kernel crypto) and AF_VSOCK (the host side of VMs).
    for (mask, datum) in u32_except(&[AF_ALG, AF_VSOCK]) {
        syscalls.push(allow_if("socket", json!([masked(0, mask, datum)])));
    }
    // ioctl for every request but those that type into or drive a terminal.
    for (mask, datum) in u32_except(&DENIED_IOCTLS) {
        syscalls.push(allow_if("ioctl", json!([masked(1, mask, datum)])));
    }
    // personality only for the harmless personas (Linux, PER_LINUX32 and UNAME26 variants, query).
    for p in [0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(allow_if("personality", json!([masked(0, 0xffff_ffff, p)])));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": syscalls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_and_denied_do_not_overlap_and_have_no_duplicates() {
        let mut seen = std::collections::BTreeSet::new();
        for n in ALLOWED {
            assert!(seen.insert(*n), "{n} is listed twice");
            assert!(!DENIED.contains(n), "{n} is both allowed and denied");
        }
    }

    /// Evaluates the cover the way the filter does: some (mask, datum) with arg & mask == datum.
    fn allows(rules: &[(u64, u64)], arg: u64) -> bool {
        rules.iter().any(|(m, d)| arg & m == *d)
    }

    #[test]
    fn u32_except_matches_everything_but_the_excluded_low_32_bits() {
        for excluded in [vec![], vec![0], vec![0xffff_ffff], vec![38, 40], DENIED_IOCTLS.to_vec()] {
            let rules = u32_except(&excluded);
            assert!(rules.len() <= 32 * excluded.len().max(1), "{excluded:?}: {} rules", rules.len());
            for (m, d) in &rules {
                assert_eq!(m >> 32, 0, "the upper half must be out of every mask");
                assert_eq!(d & !m, 0);
            }
            for &x in &excluded {
                for high in [0u64, 1 << 32, 0xffff_ffff << 32] {
                    assert!(!allows(&rules, high | u64::from(x)), "{x:#x} with high bits {high:#x} passes");
                }
            }
            for v in (0u64..2000).chain([0x5411, 0x5413, 0x541b, 0x541d, 0x8000_0000, 0xffff_fffe]) {
                if !excluded.contains(&(v as u32)) {
                    assert!(allows(&rules, v), "{v:#x} is refused");
                    assert!(allows(&rules, v | 0x7 << 40), "{v:#x} with high bits is refused");
                }
            }
        }
    }
}
