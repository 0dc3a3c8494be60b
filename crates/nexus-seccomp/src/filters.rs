// Copyright 2026 The Nexus Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The allowlists: every system call a kind of thread may make, with the reason.
//!
//! Each kind's list is built from groups: [`BASE`] (what every thread of a Rust process does:
//! allocate, lock, log, sleep, start threads, panic and abort, and what the SIGSYS reporter
//! itself calls), then the kind's own. The filters nest as the threads do — a thread inherits
//! its creator's filter, and Linux lets a system call through only if every filter of the
//! chain does — so a kind that creates threads of another kind allows all they do: the node's
//! [`ThreadKind::NodeApi`] is the union of every list, the backend's engine that of the
//! backend's.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::sys::{PROBE_ERRNO_BASE, PROBE_OPTION};
use crate::{Error, Result, ThreadKind};

/// How a system call is allowed.
#[derive(Clone, Copy)]
enum Allow {
    /// With any arguments.
    Any,
    /// Only if argument `index` (a 32-bit value) is one of `values`.
    Arg(u8, &'static [u64]),
    /// Only if argument `index`, masked with `mask`, is one of `values`.
    Masked(u8, u64, &'static [u64]),
}

/// One allowlist entry: the system call, how, and why.
type Entry = (i64, Allow, &'static str);

const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
/// KVM's ioctl type.
const KVMIO: u64 = 0xAE;
const KVM_RUN: u64 = ioc(0, KVMIO, 0x80, 0);
/// `kvm_regs` is 144 bytes, `kvm_sregs` 312 on x86_64.
const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, 144);
const KVM_SET_REGS: u64 = ioc(IOC_WRITE, KVMIO, 0x82, 144);
const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVMIO, 0x83, 312);
/// `kvm_ioeventfd` is 64 bytes, `kvm_irqfd` 32, `kvm_irq_level` 8, `kvm_msi` 32.
const KVM_IOEVENTFD: u64 = ioc(IOC_WRITE, KVMIO, 0x79, 64);
const KVM_IRQFD: u64 = ioc(IOC_WRITE, KVMIO, 0x76, 32);
const KVM_IRQ_LINE: u64 = ioc(IOC_WRITE, KVMIO, 0x61, 8);
const KVM_SIGNAL_MSI: u64 = ioc(IOC_WRITE, KVMIO, 0xa5, 32);
/// userfaultfd's ioctl type.
const UFFDIO: u64 = 0xAA;
/// The tty / tun / generic fd ioctls' type (`'T'`): `FIONBIO`, `FIOCLEX`, `TCGETS`, `TUNSETIFF`.
const TTY_TUN: u64 = 0x54;
const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;
const FIONCLEX: u64 = 0x5450;
const TCGETS: u64 = 0x5401;
const FIONREAD: u64 = 0x541B;
/// `openat(2)` flags that would write or create: any of them and the open is forbidden.
const OPEN_WRITE_MASK: u64 =
    (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_TMPFILE) as u64;
/// `clone(2)` flags are allowed only for threads.
const CLONE_THREAD: u64 = libc::CLONE_THREAD as u64;

/// Every thread of a Rust process.
const BASE: &[Entry] = &[
    (libc::SYS_read, Allow::Any, "eventfd / pipe / socket reads"),
    (
        libc::SYS_write,
        Allow::Any,
        "log lines and panic messages to stderr, eventfd writes",
    ),
    (libc::SYS_readv, Allow::Any, "vectored reads"),
    (libc::SYS_writev, Allow::Any, "vectored writes (stderr)"),
    (libc::SYS_close, Allow::Any, "dropping descriptors"),
    (
        libc::SYS_futex,
        Allow::Any,
        "std locks, condvars, thread parking, tokio wake-ups",
    ),
    (
        libc::SYS_mmap,
        Allow::Any,
        "the allocator, thread stacks, unwinding tables",
    ),
    (libc::SYS_munmap, Allow::Any, "the allocator, thread stacks"),
    (
        libc::SYS_mprotect,
        Allow::Any,
        "thread stack guard pages, the allocator",
    ),
    (
        libc::SYS_mremap,
        Allow::Any,
        "the allocator (growing large blocks)",
    ),
    (
        libc::SYS_madvise,
        Allow::Any,
        "the allocator and glibc freeing a finished thread's stack",
    ),
    (libc::SYS_brk, Allow::Any, "the allocator (main arena)"),
    (
        libc::SYS_sigaltstack,
        Allow::Any,
        "std's stack-overflow guard, per thread, and unwinding",
    ),
    (
        libc::SYS_rt_sigprocmask,
        Allow::Any,
        "abort and raise, glibc thread start",
    ),
    (
        libc::SYS_rt_sigaction,
        Allow::Any,
        "abort and the SIGSYS reporter restore default actions",
    ),
    (
        libc::SYS_rt_sigreturn,
        Allow::Any,
        "returning from signal handlers (vCPU kicks)",
    ),
    (
        libc::SYS_tgkill,
        Allow::Any,
        "raise (abort, the SIGSYS reporter), kicking vCPU threads",
    ),
    (libc::SYS_getpid, Allow::Any, "raise"),
    (libc::SYS_gettid, Allow::Any, "raise, logging"),
    (libc::SYS_sched_yield, Allow::Any, "spin locks backing off"),
    (
        libc::SYS_sched_getaffinity,
        Allow::Any,
        "available_parallelism",
    ),
    (
        libc::SYS_clock_gettime,
        Allow::Any,
        "time (when the vDSO falls back)",
    ),
    (libc::SYS_clock_getres, Allow::Any, "time"),
    (
        libc::SYS_gettimeofday,
        Allow::Any,
        "time (when the vDSO falls back)",
    ),
    (libc::SYS_nanosleep, Allow::Any, "sleeps"),
    (libc::SYS_clock_nanosleep, Allow::Any, "sleeps"),
    (libc::SYS_getrandom, Allow::Any, "hash map keys"),
    (libc::SYS_exit, Allow::Any, "a thread ends"),
    (libc::SYS_exit_group, Allow::Any, "the process ends"),
    (
        libc::SYS_restart_syscall,
        Allow::Any,
        "a sleep interrupted by a signal resumes",
    ),
    (
        libc::SYS_prctl,
        Allow::Arg(
            0,
            &[
                libc::PR_SET_NAME as u64,
                libc::PR_GET_NAME as u64,
                libc::PR_SET_NO_NEW_PRIVS as u64,
                PROBE_OPTION as u64,
            ],
        ),
        "thread names (set at start, read by the SIGSYS reporter), the kind probe, \
         no_new_privs before a filter of another kind is stacked",
    ),
    (
        libc::SYS_seccomp,
        Allow::Arg(1, &[0]),
        "stacking a filter of another kind on a thread (no flags: this thread only, never \
         TSYNC); a filter only ever adds restrictions",
    ),
    (
        libc::SYS_clone3,
        Allow::Any,
        "starting threads (pool workers start workers)",
    ),
    // A panic's backtrace (RUST_BACKTRACE) reads the executable's debug information.
    (
        libc::SYS_openat,
        Allow::Masked(2, OPEN_WRITE_MASK, &[libc::O_RDONLY as u64]),
        "read-only: a panic's backtrace reads the executable and /proc/self/maps",
    ),
    (
        libc::SYS_getcwd,
        Allow::Any,
        "a panic's backtrace prints paths relative to it",
    ),
    (
        libc::SYS_readlink,
        Allow::Any,
        "a panic's backtrace finds /proc/self/exe",
    ),
    (
        libc::SYS_fstat,
        Allow::Any,
        "a panic's backtrace sizes the executable",
    ),
    (
        libc::SYS_statx,
        Allow::Any,
        "a panic's backtrace sizes the executable",
    ),
    (
        libc::SYS_newfstatat,
        Allow::Any,
        "a panic's backtrace sizes the executable",
    ),
    (
        libc::SYS_lseek,
        Allow::Any,
        "a panic's backtrace reads the executable",
    ),
    (
        libc::SYS_clone,
        Allow::Masked(0, CLONE_THREAD, &[CLONE_THREAD]),
        "starting threads, where clone3 is missing (threads only)",
    ),
    (
        libc::SYS_set_robust_list,
        Allow::Any,
        "glibc at the start of a new thread",
    ),
    (
        libc::SYS_rseq,
        Allow::Any,
        "glibc at the start of a new thread",
    ),
];

/// Event-driven threads: epoll sets, eventfds, poll.
const EVENTS: &[Entry] = &[
    (
        libc::SYS_epoll_create1,
        Allow::Any,
        "a device activated at run time watches its links",
    ),
    (libc::SYS_epoll_wait, Allow::Any, "waiting on an epoll set"),
    (libc::SYS_epoll_pwait, Allow::Any, "waiting on an epoll set"),
    (
        libc::SYS_epoll_ctl,
        Allow::Any,
        "(re-)arming descriptors in an epoll set",
    ),
    (
        libc::SYS_poll,
        Allow::Any,
        "waiting on a few descriptors (a parked vCPU, WAIT registers)",
    ),
    (libc::SYS_ppoll, Allow::Any, "waiting on a few descriptors"),
    (
        libc::SYS_pread64,
        Allow::Any,
        "positional reads (snapshot memory files)",
    ),
    (
        libc::SYS_fadvise64,
        Allow::Any,
        "the snapshot prefetcher's read-ahead of memory files",
    ),
    (libc::SYS_pwrite64, Allow::Any, "positional writes"),
    (
        libc::SYS_sendmsg,
        Allow::Any,
        "vhost-user / control messages (with descriptors)",
    ),
    (
        libc::SYS_recvmsg,
        Allow::Any,
        "vhost-user / control messages (with descriptors)",
    ),
    (libc::SYS_sendto, Allow::Any, "socket writes"),
    (libc::SYS_recvfrom, Allow::Any, "socket reads"),
    (
        libc::SYS_fcntl,
        Allow::Any,
        "descriptor flags of received descriptors",
    ),
    (
        libc::SYS_eventfd2,
        Allow::Any,
        "eventfds of devices activated at run time",
    ),
    (
        libc::SYS_dup,
        Allow::Any,
        "duplicating a descriptor to hand it on",
    ),
    (
        libc::SYS_fstat,
        Allow::Any,
        "the size of a received memory descriptor",
    ),
];

/// A nexus-io device activated by the guest (a register write, on its vCPU's thread)
/// connects to the backend's control socket and sets up its vhost-user connection: Unix
/// sockets only.
const BACKEND_LINK: &[Entry] = &[
    (
        libc::SYS_socket,
        Allow::Arg(0, &[libc::AF_UNIX as u64]),
        "Unix sockets only: the backend's control socket",
    ),
    (
        libc::SYS_connect,
        Allow::Any,
        "connecting to the backend's control socket",
    ),
    (
        libc::SYS_setsockopt,
        Allow::Any,
        "the control connection's timeouts",
    ),
    (libc::SYS_getsockopt, Allow::Any, "socket errors"),
    (
        libc::SYS_shutdown,
        Allow::Any,
        "closing the backend connection",
    ),
];

/// The KVM ioctls a vCPU thread makes.
const VCPU: &[Entry] = &[(
    libc::SYS_ioctl,
    Allow::Arg(
        1,
        &[
            // running the guest (and completing a kicked run with immediate_exit)
            KVM_RUN,
            // a failed / unexpected exit's report (rip, cr2), hypercall registers
            KVM_GET_REGS,
            KVM_SET_REGS,
            KVM_GET_SREGS,
            // a device activated by the guest's register write registers its doorbell and
            // interrupt eventfds on the VM
            KVM_IOEVENTFD,
            KVM_IRQFD,
            // interrupt injection from a register access
            KVM_IRQ_LINE,
            KVM_SIGNAL_MSI,
            // a nexus-net device the guest activates sets its tap's offloads
            libc::TUNSETOFFLOAD,
            // the std's set_nonblocking / cloexec of descriptors a device opens
            FIONBIO,
            FIOCLEX,
        ],
    ),
    "only the KVM ioctls of a vCPU's exits",
)];

/// Device threads' ioctls: userfaultfd (UFFDIO_COPY/ZEROPAGE/WAKE), KVM (interrupts), tty /
/// tun (FIONBIO, FIOCLEX, TUNGETIFF).
const DEVICE: &[Entry] = &[(
    libc::SYS_ioctl,
    Allow::Masked(1, 0xFF00, &[UFFDIO << 8, KVMIO << 8, TTY_TUN << 8]),
    "userfaultfd, KVM and tun/fd ioctls only",
)];

/// File access (the node's snapshots, functions and state; the backend's local store).
const FILES: &[Entry] = &[
    (libc::SYS_open, Allow::Any, "files"),
    (libc::SYS_openat, Allow::Any, "files"),
    (libc::SYS_openat2, Allow::Any, "files"),
    (libc::SYS_creat, Allow::Any, "files"),
    (libc::SYS_stat, Allow::Any, "file metadata"),
    (libc::SYS_lstat, Allow::Any, "file metadata"),
    (libc::SYS_newfstatat, Allow::Any, "file metadata"),
    (libc::SYS_statx, Allow::Any, "file metadata"),
    (libc::SYS_statfs, Allow::Any, "file system metadata"),
    (libc::SYS_fstatfs, Allow::Any, "file system metadata"),
    (libc::SYS_lseek, Allow::Any, "files"),
    (libc::SYS_getdents64, Allow::Any, "directory listings"),
    (libc::SYS_mkdir, Allow::Any, "directories"),
    (libc::SYS_mkdirat, Allow::Any, "directories"),
    (libc::SYS_rmdir, Allow::Any, "directories"),
    (libc::SYS_unlink, Allow::Any, "removing files"),
    (libc::SYS_unlinkat, Allow::Any, "removing files"),
    (libc::SYS_rename, Allow::Any, "atomic replacement of files"),
    (
        libc::SYS_renameat,
        Allow::Any,
        "atomic replacement of files",
    ),
    (
        libc::SYS_renameat2,
        Allow::Any,
        "atomic replacement of files",
    ),
    (libc::SYS_link, Allow::Any, "hard links"),
    (libc::SYS_linkat, Allow::Any, "hard links"),
    (libc::SYS_symlink, Allow::Any, "symbolic links"),
    (libc::SYS_symlinkat, Allow::Any, "symbolic links"),
    (
        libc::SYS_readlink,
        Allow::Any,
        "symbolic links, /proc/self/exe",
    ),
    (libc::SYS_readlinkat, Allow::Any, "symbolic links"),
    (libc::SYS_access, Allow::Any, "file existence"),
    (libc::SYS_faccessat, Allow::Any, "file existence"),
    (libc::SYS_faccessat2, Allow::Any, "file existence"),
    (libc::SYS_chmod, Allow::Any, "file modes"),
    (libc::SYS_fchmod, Allow::Any, "file modes"),
    (libc::SYS_fchmodat, Allow::Any, "file modes"),
    (
        libc::SYS_chown,
        Allow::Any,
        "file owners (sockets of a group)",
    ),
    (libc::SYS_fchown, Allow::Any, "file owners"),
    (libc::SYS_fchownat, Allow::Any, "file owners"),
    (libc::SYS_lchown, Allow::Any, "file owners"),
    (libc::SYS_utimensat, Allow::Any, "file times"),
    (
        libc::SYS_ftruncate,
        Allow::Any,
        "sizing files (memory files, snapshots)",
    ),
    (libc::SYS_truncate, Allow::Any, "sizing files"),
    (libc::SYS_fallocate, Allow::Any, "sizing files"),
    (libc::SYS_fsync, Allow::Any, "durable writes"),
    (libc::SYS_fdatasync, Allow::Any, "durable writes"),
    (libc::SYS_sync_file_range, Allow::Any, "durable writes"),
    (
        libc::SYS_fadvise64,
        Allow::Any,
        "read-ahead hints (the snapshot prefetcher's too)",
    ),
    (libc::SYS_flock, Allow::Any, "lock files"),
    (libc::SYS_preadv, Allow::Any, "positional reads"),
    (libc::SYS_pwritev, Allow::Any, "positional writes"),
    (libc::SYS_preadv2, Allow::Any, "positional reads"),
    (libc::SYS_pwritev2, Allow::Any, "positional writes"),
    (libc::SYS_copy_file_range, Allow::Any, "std::fs::copy"),
    (libc::SYS_sendfile, Allow::Any, "std::fs::copy"),
    (libc::SYS_splice, Allow::Any, "std::io::copy"),
    (libc::SYS_getcwd, Allow::Any, "relative paths"),
    (libc::SYS_chdir, Allow::Any, "relative paths"),
    (libc::SYS_umask, Allow::Any, "file modes"),
    (libc::SYS_memfd_create, Allow::Any, "guest memory"),
    (libc::SYS_dup2, Allow::Any, "descriptors"),
    (libc::SYS_dup3, Allow::Any, "descriptors"),
    (libc::SYS_pipe, Allow::Any, "pipes"),
    (libc::SYS_pipe2, Allow::Any, "pipes"),
    (libc::SYS_inotify_init1, Allow::Any, "watching files"),
    (libc::SYS_inotify_add_watch, Allow::Any, "watching files"),
    (libc::SYS_inotify_rm_watch, Allow::Any, "watching files"),
    (libc::SYS_mincore, Allow::Any, "resident pages"),
    (libc::SYS_mlock, Allow::Any, "pinned memory"),
    (libc::SYS_munlock, Allow::Any, "pinned memory"),
    (libc::SYS_msync, Allow::Any, "shared file mappings"),
];

/// Sockets and event machinery of an async runtime (tokio, hyper, reqwest).
const NETWORK: &[Entry] = &[
    (
        libc::SYS_socket,
        Allow::Any,
        "HTTP servers and clients, Unix sockets, netlink",
    ),
    (libc::SYS_socketpair, Allow::Any, "connected socket pairs"),
    (libc::SYS_bind, Allow::Any, "listening sockets"),
    (libc::SYS_listen, Allow::Any, "listening sockets"),
    (libc::SYS_accept, Allow::Any, "accepting connections"),
    (libc::SYS_accept4, Allow::Any, "accepting connections"),
    (libc::SYS_connect, Allow::Any, "connecting"),
    (libc::SYS_shutdown, Allow::Any, "closing connections"),
    (libc::SYS_getsockname, Allow::Any, "socket addresses"),
    (libc::SYS_getpeername, Allow::Any, "peer addresses"),
    (libc::SYS_setsockopt, Allow::Any, "socket options"),
    (
        libc::SYS_getsockopt,
        Allow::Any,
        "socket options, peer credentials",
    ),
    (libc::SYS_sendmmsg, Allow::Any, "DNS"),
    (libc::SYS_recvmmsg, Allow::Any, "DNS"),
    (
        libc::SYS_epoll_create,
        Allow::Any,
        "the runtime's epoll set",
    ),
    (
        libc::SYS_epoll_create1,
        Allow::Any,
        "the runtime's epoll set",
    ),
    (
        libc::SYS_epoll_pwait2,
        Allow::Any,
        "waiting on an epoll set",
    ),
    (libc::SYS_timerfd_create, Allow::Any, "timers"),
    (libc::SYS_timerfd_settime, Allow::Any, "timers"),
    (libc::SYS_timerfd_gettime, Allow::Any, "timers"),
    (libc::SYS_signalfd4, Allow::Any, "signals as events"),
    (libc::SYS_select, Allow::Any, "waiting on descriptors"),
    (libc::SYS_pselect6, Allow::Any, "waiting on descriptors"),
    (libc::SYS_uname, Allow::Any, "host information"),
    (libc::SYS_sysinfo, Allow::Any, "host memory"),
    (libc::SYS_getuid, Allow::Any, "identity"),
    (libc::SYS_geteuid, Allow::Any, "identity"),
    (libc::SYS_getgid, Allow::Any, "identity"),
    (libc::SYS_getegid, Allow::Any, "identity"),
    (libc::SYS_getgroups, Allow::Any, "identity"),
    (libc::SYS_getresuid, Allow::Any, "identity"),
    (libc::SYS_getresgid, Allow::Any, "identity"),
    (libc::SYS_getppid, Allow::Any, "identity"),
    (libc::SYS_getrusage, Allow::Any, "CPU accounting"),
    (libc::SYS_times, Allow::Any, "CPU accounting"),
    (libc::SYS_getrlimit, Allow::Any, "descriptor limits"),
    (libc::SYS_prlimit64, Allow::Any, "descriptor limits"),
    (libc::SYS_getpriority, Allow::Any, "priorities"),
    (libc::SYS_sched_getparam, Allow::Any, "priorities"),
    (libc::SYS_sched_getscheduler, Allow::Any, "priorities"),
];

/// `nexus-backend --user/--group` drops privileges once its socket is bound, with the
/// control thread's filter and every other thread's installed: glibc makes **every thread**
/// make the `setgroups`/`setgid`/`setuid` calls (its set-ID broadcast), and checks that
/// `setuid(0)` fails afterwards (the kernel refuses it then: no capability is left).
const PRIVILEGE_DROP: &[Entry] = &[
    (
        libc::SYS_setgroups,
        Allow::Any,
        "--user/--group: glibc's set-ID broadcast",
    ),
    (
        libc::SYS_setgid,
        Allow::Any,
        "--user/--group: glibc's set-ID broadcast",
    ),
    (
        libc::SYS_setuid,
        Allow::Any,
        "--user/--group: glibc's set-ID broadcast",
    ),
];

/// The backend engine's ioctls: descriptor flags and terminal checks (env_logger).
const ENGINE_IOCTL: &[Entry] = &[(
    libc::SYS_ioctl,
    Allow::Arg(1, &[FIONBIO, FIOCLEX, FIONCLEX, TCGETS, FIONREAD]),
    "descriptor flags, terminal checks",
)];

/// The node's control plane: everything its VMs, devices and network plane do, plus building
/// them (any ioctl: KVM, tun, userfaultfd), processes (`ip` for the network plane, which runs
/// under this filter too) and namespaces.
const NODE: &[Entry] = &[
    (
        libc::SYS_ioctl,
        Allow::Any,
        "KVM VM set-up, tun devices, userfaultfd, terminals",
    ),
    (
        libc::SYS_userfaultfd,
        Allow::Any,
        "restoring snapshots lazily",
    ),
    // No execve, fork, setns, unshare or mount: the network of net functions — the one
    // part of the node that runs programs (`ip`) and enters a namespace — is built before
    // the filter is installed, and its namespace's thread installs it once inside.
    (
        libc::SYS_umount2,
        Allow::Any,
        "deleting the network plane's namespace at shutdown (detaching its bind mount)",
    ),
    (libc::SYS_sched_setaffinity, Allow::Any, "pinning threads"),
    (libc::SYS_setpriority, Allow::Any, "priorities"),
    (libc::SYS_getxattr, Allow::Any, "file attributes"),
    (libc::SYS_lgetxattr, Allow::Any, "file attributes"),
    (libc::SYS_fgetxattr, Allow::Any, "file attributes"),
];

/// The groups of a kind's allowlist.
fn groups(kind: ThreadKind) -> &'static [&'static [Entry]] {
    match kind {
        ThreadKind::Vcpu => &[BASE, EVENTS, BACKEND_LINK, VCPU],
        // It starts workers (which keep its filter under theirs): all they do.
        ThreadKind::VcpuMonitor => &[BASE, EVENTS, BACKEND_LINK, VCPU],
        ThreadKind::Device => &[BASE, EVENTS, BACKEND_LINK, DEVICE],
        ThreadKind::BackendEventLoop => &[BASE, EVENTS, FILES, ENGINE_IOCTL, PRIVILEGE_DROP],
        ThreadKind::BackendEngine => &[BASE, EVENTS, FILES, NETWORK, ENGINE_IOCTL, PRIVILEGE_DROP],
        ThreadKind::NodeApi => &[
            BASE,
            EVENTS,
            BACKEND_LINK,
            VCPU,
            DEVICE,
            FILES,
            NETWORK,
            PRIVILEGE_DROP,
            NODE,
        ],
    }
}

fn condition(index: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    // Argument indices are 0..=5 here and every comparison is valid for a Dword.
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
        .expect("a valid seccomp condition")
}

/// The rules of `kind`'s allowlist, merged per system call (an unconditional entry wins).
fn rules(kind: ThreadKind) -> BTreeMap<i64, Option<Vec<SeccompRule>>> {
    let mut rules: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for &(nr, allow, _why) in groups(kind).iter().flat_map(|g| g.iter()) {
        let new: Option<Vec<SeccompRule>> = match allow {
            Allow::Any => None,
            Allow::Arg(index, values) => Some(
                values
                    .iter()
                    .map(|&v| {
                        SeccompRule::new(vec![condition(index, SeccompCmpOp::Eq, v)])
                            .expect("one condition")
                    })
                    .collect(),
            ),
            Allow::Masked(index, mask, values) => Some(
                values
                    .iter()
                    .map(|&v| {
                        SeccompRule::new(vec![condition(index, SeccompCmpOp::MaskedEq(mask), v)])
                            .expect("one condition")
                    })
                    .collect(),
            ),
        };
        match rules.get_mut(&nr) {
            None => {
                rules.insert(nr, new);
            }
            Some(existing) => match (existing.as_mut(), new) {
                (Some(old), Some(more)) => old.extend(more),
                _ => *existing = None,
            },
        }
    }
    rules
}

/// `kind`'s allowlist filter: traps every system call it does not list.
pub(crate) fn allowlist(kind: ThreadKind) -> Result<BpfProgram> {
    let rules = rules(kind)
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Build(kind, e))?;
    BpfProgram::try_from(filter).map_err(|e| Error::Build(kind, e))
}

/// `kind`'s marker filter: answers the kind probe with the kind's errno, allows the rest.
pub(crate) fn marker(kind: ThreadKind) -> Result<BpfProgram> {
    let probe = SeccompRule::new(vec![condition(
        0,
        SeccompCmpOp::Eq,
        u64::from(PROBE_OPTION),
    )])
    .expect("one condition");
    let filter = SeccompFilter::new(
        [(libc::SYS_prctl, vec![probe])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(PROBE_ERRNO_BASE + kind.id()),
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Build(kind, e))?;
    BpfProgram::try_from(filter).map_err(|e| Error::Build(kind, e))
}

/// The name of system call `nr`, if it is one of those the filters know (every allowed one
/// and a few commonly forbidden).
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|&&(n, _)| n == nr)
        .map(|&(_, name)| name.strip_prefix("SYS_").unwrap_or(name))
}

macro_rules! names {
    ($($name:ident),* $(,)?) => {
        &[$((libc::$name, stringify!($name))),*]
    };
}

/// System call names (as `libc` spells their numbers): the allowed ones and some others.
const NAMES: &[(i64, &str)] = names![
    SYS_read,
    SYS_write,
    SYS_readv,
    SYS_writev,
    SYS_close,
    SYS_futex,
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_madvise,
    SYS_brk,
    SYS_sigaltstack,
    SYS_rt_sigprocmask,
    SYS_rt_sigaction,
    SYS_rt_sigreturn,
    SYS_tgkill,
    SYS_getpid,
    SYS_gettid,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_clock_gettime,
    SYS_clock_getres,
    SYS_gettimeofday,
    SYS_nanosleep,
    SYS_clock_nanosleep,
    SYS_getrandom,
    SYS_exit,
    SYS_exit_group,
    SYS_restart_syscall,
    SYS_prctl,
    SYS_seccomp,
    SYS_clone3,
    SYS_clone,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_ctl,
    SYS_poll,
    SYS_ppoll,
    SYS_pread64,
    SYS_pwrite64,
    SYS_sendmsg,
    SYS_recvmsg,
    SYS_sendto,
    SYS_recvfrom,
    SYS_fcntl,
    SYS_eventfd2,
    SYS_dup,
    SYS_fstat,
    SYS_ioctl,
    SYS_open,
    SYS_openat,
    SYS_openat2,
    SYS_creat,
    SYS_stat,
    SYS_lstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_statfs,
    SYS_fstatfs,
    SYS_lseek,
    SYS_getdents64,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_rmdir,
    SYS_unlink,
    SYS_unlinkat,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_link,
    SYS_linkat,
    SYS_symlink,
    SYS_symlinkat,
    SYS_readlink,
    SYS_readlinkat,
    SYS_access,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_chmod,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_chown,
    SYS_fchown,
    SYS_fchownat,
    SYS_lchown,
    SYS_utimensat,
    SYS_ftruncate,
    SYS_truncate,
    SYS_fallocate,
    SYS_fsync,
    SYS_fdatasync,
    SYS_sync_file_range,
    SYS_fadvise64,
    SYS_flock,
    SYS_preadv,
    SYS_pwritev,
    SYS_preadv2,
    SYS_pwritev2,
    SYS_copy_file_range,
    SYS_sendfile,
    SYS_splice,
    SYS_getcwd,
    SYS_chdir,
    SYS_umask,
    SYS_memfd_create,
    SYS_dup2,
    SYS_dup3,
    SYS_pipe,
    SYS_pipe2,
    SYS_inotify_init1,
    SYS_inotify_add_watch,
    SYS_inotify_rm_watch,
    SYS_mincore,
    SYS_mlock,
    SYS_munlock,
    SYS_msync,
    SYS_socket,
    SYS_socketpair,
    SYS_bind,
    SYS_listen,
    SYS_accept,
    SYS_accept4,
    SYS_connect,
    SYS_shutdown,
    SYS_getsockname,
    SYS_getpeername,
    SYS_setsockopt,
    SYS_getsockopt,
    SYS_sendmmsg,
    SYS_recvmmsg,
    SYS_epoll_create,
    SYS_epoll_create1,
    SYS_epoll_pwait2,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
    SYS_signalfd4,
    SYS_select,
    SYS_pselect6,
    SYS_uname,
    SYS_sysinfo,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_getgroups,
    SYS_getresuid,
    SYS_getresgid,
    SYS_getppid,
    SYS_getrusage,
    SYS_times,
    SYS_getrlimit,
    SYS_prlimit64,
    SYS_getpriority,
    SYS_sched_getparam,
    SYS_sched_getscheduler,
    SYS_userfaultfd,
    SYS_execve,
    SYS_execveat,
    SYS_fork,
    SYS_vfork,
    SYS_wait4,
    SYS_waitid,
    SYS_kill,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_close_range,
    SYS_setpgid,
    SYS_setsid,
    SYS_set_tid_address,
    SYS_arch_prctl,
    SYS_setns,
    SYS_unshare,
    SYS_mount,
    SYS_umount2,
    SYS_sched_setaffinity,
    SYS_setpriority,
    SYS_capget,
    SYS_getxattr,
    SYS_lgetxattr,
    SYS_fgetxattr,
    // commonly forbidden
    SYS_ptrace,
    SYS_personality,
    SYS_bpf,
    SYS_init_module,
    SYS_finit_module,
    SYS_delete_module,
    SYS_kexec_load,
    SYS_reboot,
    SYS_setuid,
    SYS_setgid,
    SYS_setgroups,
    SYS_capset,
    SYS_chroot,
    SYS_pivot_root,
    SYS_process_vm_readv,
    SYS_process_vm_writev,
    SYS_perf_event_open,
    SYS_keyctl,
    SYS_add_key,
    SYS_swapon,
    SYS_syslog,
    SYS_acct,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_builds() {
        for kind in ThreadKind::ALL {
            assert!(!allowlist(kind).unwrap().is_empty(), "{kind}");
            assert!(!marker(kind).unwrap().is_empty(), "{kind}");
        }
    }

    #[test]
    fn node_api_allows_everything_the_others_do_and_no_program() {
        // The node's threads create every other kind: its filter stays in their chain.
        let node = rules(ThreadKind::NodeApi);
        for kind in ThreadKind::ALL {
            for nr in rules(kind).keys() {
                assert!(node.contains_key(nr), "{kind}: {:?}", syscall_name(*nr));
            }
        }
        // It runs no program and enters no namespace (the network plane does both before
        // the filter is installed).
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_setns,
            libc::SYS_unshare,
            libc::SYS_mount,
        ] {
            assert!(!node.contains_key(&nr), "{:?}", syscall_name(nr));
        }
        // The pool's monitor starts workers; the backend's engine and event loop likewise.
        let monitor = rules(ThreadKind::VcpuMonitor);
        for nr in rules(ThreadKind::Vcpu).keys() {
            assert!(monitor.contains_key(nr), "{:?}", syscall_name(*nr));
        }
        let engine = rules(ThreadKind::BackendEngine);
        for nr in rules(ThreadKind::BackendEventLoop).keys() {
            assert!(engine.contains_key(nr), "{:?}", syscall_name(*nr));
        }
    }

    #[test]
    fn vcpu_ioctls_are_restricted() {
        let vcpu = rules(ThreadKind::Vcpu);
        let ioctl = vcpu.get(&libc::SYS_ioctl).unwrap();
        assert!(ioctl.is_some(), "vCPU ioctls must be restricted by number");
        assert!(
            vcpu.get(&libc::SYS_openat).unwrap().is_some(),
            "read-only opens only"
        );
        assert!(!vcpu.contains_key(&libc::SYS_execve));
        assert!(
            vcpu.get(&libc::SYS_socket).unwrap().is_some(),
            "Unix sockets only"
        );
    }

    #[test]
    fn names_are_known() {
        assert_eq!(syscall_name(libc::SYS_ptrace), Some("ptrace"));
        assert_eq!(syscall_name(libc::SYS_ioctl), Some("ioctl"));
        assert_eq!(syscall_name(100_000), None);
        // Every allowed system call has a name for the report.
        for kind in ThreadKind::ALL {
            for nr in rules(kind).keys() {
                assert!(syscall_name(*nr).is_some(), "{nr}");
            }
        }
    }

    #[test]
    fn kvm_ioctl_numbers() {
        assert_eq!(KVM_RUN, 0xAE80);
        assert_eq!(KVM_GET_REGS, 0x8090_AE81);
        assert_eq!(KVM_SET_REGS, 0x4090_AE82);
        assert_eq!(KVM_GET_SREGS, 0x8138_AE83);
        assert_eq!(KVM_IRQFD, 0x4020_AE76);
        assert_eq!(KVM_IOEVENTFD, 0x4040_AE79);
    }
}
