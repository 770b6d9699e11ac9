//! Least privilege after start-up (docs/threat-model.md, "Least privilege"): the proxy
//! starts as root, initialises EAL, configures its ports and makes the sockets of its
//! startup commands, then becomes a dedicated user with only the capabilities it still
//! needs and puts every thread under a seccomp allowlist. This module is that OS edge
//! (prctl, capset, set*id, seccomp), behind safe functions.
//!
//! Order matters and follows what the kernel allows: the bounding set can only be cut
//! while CAP_SETPCAP is still effective (before the uid changes), the kept capabilities
//! survive the uid change only with PR_SET_KEEPCAPS, and the filter goes on last (it
//! forbids every call made before it).

use std::ffi::c_int;
use std::io;

/// A Linux capability number (`linux/capability.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u32);

impl Cap {
    /// Interface configuration of kernel-backed ports: `net_tap` brings its interface up
    /// (`SIOCSIFFLAGS`) at every port start, and the proxy restarts a port when a
    /// guest's queue starts or stops.
    pub const NET_ADMIN: Cap = Cap(12);

    pub fn name(self) -> &'static str {
        match self.0 {
            12 => "CAP_NET_ADMIN",
            _ => "CAP_?",
        }
    }
}

/// The capabilities the proxy still needs after start-up, given the names of its ports:
/// CAP_NET_ADMIN if one is a tap device (its port restarts set the interface's flags);
/// otherwise none (docs/threat-model.md, "Least privilege", says what was tried).
pub fn needed_capabilities(port_names: &[String]) -> Vec<Cap> {
    if port_names.iter().any(|n| n.starts_with("net_tap")) {
        vec![Cap::NET_ADMIN]
    } else {
        Vec::new()
    }
}

/// Who the proxy becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the groups the proxy must still be able to give the
    /// sockets it makes later (`--socket-group`), which needs no capability for a
    /// group the process is a member of.
    pub groups: Vec<u32>,
}

/// The user and primary group of `name` (`getpwnam_r`).
pub fn identity_of(name: &str) -> Option<(u32, u32)> {
    crate::os::user_ids(name)
}

fn check(what: &str, rc: c_int) -> Result<(), String> {
    if rc != 0 {
        return Err(format!("{what}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// The highest capability number the kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets this thread's effective and permitted capabilities to `keep`, inheritable to none.
fn capset(keep: &[Cap]) -> Result<(), String> {
    let mut data = [CapData::default(); 2];
    for c in keep {
        let (word, bit) = ((c.0 / 32) as usize, 1u32 << (c.0 % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
    }
    let mut header = CapHeader { version: CAP_VERSION_3, pid: 0 };
    // SAFETY: capset(2) with a version-3 header and the two data words that version reads.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapHeader, data.as_ptr()) };
    check("capset", rc as c_int)
}

fn prctl(what: &str, option: c_int, arg: libc::c_ulong) -> Result<(), String> {
    // SAFETY: prctl(2) options that take integer arguments only.
    check(what, unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong) })
}

/// Becomes `who` with only `keep` left of the capabilities; nothing can be gained back
/// (bounding set cut, no ambient capabilities, no_new_privs). Call from the main thread
/// before the threads the proxy starts itself, which inherit the result. EAL's threads
/// (interrupt, telemetry, multi-process) exist already: glibc applies the uid and gid
/// change to every thread, and there, without PR_SET_KEEPCAPS, the change empties
/// their capabilities.
pub fn drop_privileges(who: &Identity, keep: &[Cap]) -> Result<(), String> {
    // VFIO pins DMA-mapped regions against RLIMIT_MEMLOCK; the limit is raised while
    // raising it is still allowed, so CAP_IPC_LOCK need not be kept for that.
    // Best effort: without CAP_SYS_RESOURCE (some containers) the limit stays, which
    // only matters to a VFIO device.
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit(2) with a valid rlimit.
    if let Err(e) = check("setrlimit(RLIMIT_MEMLOCK)", unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) }) {
        crate::log_warn!("{e}: the memlock limit stays as it is (VFIO DMA mappings of guest regions count against it)");
    }
    // Cut the bounding set first: dropping needs CAP_SETPCAP in the effective set, which
    // the uid change below empties (dropping CAP_SETPCAP itself from the bounding set
    // leaves it effective until then).
    for cap in 0..=last_cap() {
        if !keep.iter().any(|k| k.0 == cap) {
            prctl("prctl(PR_CAPBSET_DROP)", libc::PR_CAPBSET_DROP, cap as libc::c_ulong)?;
        }
    }
    prctl("prctl(PR_SET_KEEPCAPS)", libc::PR_SET_KEEPCAPS, 1)?;
    // SAFETY: setgroups(2) with a slice of the given length.
    check("setgroups", unsafe { libc::setgroups(who.groups.len(), who.groups.as_ptr()) })?;
    // SAFETY: plain id arguments.
    check("setresgid", unsafe { libc::setresgid(who.gid, who.gid, who.gid) })?;
    // SAFETY: plain id arguments.
    check("setresuid", unsafe { libc::setresuid(who.uid, who.uid, who.uid) })?;
    capset(keep)?;
    prctl("prctl(PR_CAP_AMBIENT)", libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong)?;
    prctl("prctl(PR_SET_KEEPCAPS)", libc::PR_SET_KEEPCAPS, 0)?;
    prctl("prctl(PR_SET_NO_NEW_PRIVS)", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    // Check rather than trust: no way back to root.
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    check("getresuid", unsafe { libc::getresuid(&mut r, &mut e, &mut s) })?;
    if who.uid != 0 && (r == 0 || e == 0 || s == 0) {
        return Err("the uid change did not take".into());
    }
    Ok(())
}

/// What the syscall filter does with a call outside the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// Print the call's number to stderr and end the proxy with SIGSYS.
    Kill,
    /// Let the call through; the kernel logs it (audit `type=1326`, in `dmesg`). For
    /// finding what a new driver or DPDK version needs.
    Log,
    /// No filter.
    Off,
}

impl SeccompMode {
    pub fn parse(s: &str) -> Result<SeccompMode, String> {
        match s {
            "kill" | "on" => Ok(SeccompMode::Kill),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!("'{s}': expected kill, log or off")),
        }
    }
}

/// Every system call the proxy's threads and EAL's threads make after start-up, with
/// why (found by running every end-to-end suite with the filter on; see
/// docs/threat-model.md). Absent on purpose, among others: execve, fork, ptrace,
/// process_vm_*, mount, setuid and friends, capset, bpf, perf_event_open, keyctl,
/// kexec, module loading, userfaultfd, io_uring, open_by_handle_at.
pub const ALLOWED: &[(&str, i64)] = &[
    // Memory: allocators, thread stacks, region mappings, DPDK memory.
    ("brk", libc::SYS_brk),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("mlock", libc::SYS_mlock),
    ("munlock", libc::SYS_munlock),
    ("get_mempolicy", libc::SYS_get_mempolicy),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("mbind", libc::SYS_mbind),
    // Guest regions: memfds (hugetlb too), their size and seals.
    ("memfd_create", libc::SYS_memfd_create),
    ("ftruncate", libc::SYS_ftruncate),
    ("fallocate", libc::SYS_fallocate),
    ("fcntl", libc::SYS_fcntl),
    // Files: /proc and /sys reads of EAL and the drivers, runtime directory.
    ("openat", libc::SYS_openat),
    ("open", libc::SYS_open),
    ("close", libc::SYS_close),
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("lseek", libc::SYS_lseek),
    ("fstat", libc::SYS_fstat),
    ("newfstatat", libc::SYS_newfstatat),
    ("statx", libc::SYS_statx),
    ("statfs", libc::SYS_statfs),
    ("fstatfs", libc::SYS_fstatfs),
    ("readlink", libc::SYS_readlink),
    ("readlinkat", libc::SYS_readlinkat),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    ("access", libc::SYS_access),
    ("getdents64", libc::SYS_getdents64),
    ("getcwd", libc::SYS_getcwd),
    ("flock", libc::SYS_flock),
    ("dup", libc::SYS_dup),
    ("dup3", libc::SYS_dup3),
    ("pipe2", libc::SYS_pipe2),
    ("ioctl", libc::SYS_ioctl),
    // Sockets typed later: directories, socket files, owner and mode on descriptors.
    ("mkdir", libc::SYS_mkdir),
    ("mkdirat", libc::SYS_mkdirat),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("rmdir", libc::SYS_rmdir),
    ("renameat2", libc::SYS_renameat2),
    ("fchown", libc::SYS_fchown),
    ("fchmod", libc::SYS_fchmod),
    ("fchownat", libc::SYS_fchownat),
    ("fchmodat", libc::SYS_fchmodat),
    // glibc's fchmodat(AT_SYMLINK_NOFOLLOW) without the fchmodat2 call changes the
    // mode through /proc/self/fd/N of an O_PATH descriptor (sockpath.rs).
    ("chmod", libc::SYS_chmod),
    // ... and what a newer glibc calls instead.
    ("fchmodat2", libc::SYS_fchmodat2),
    ("umask", libc::SYS_umask),
    // Unix sockets (guests, telemetry, the multi-process channel), netlink/inet
    // sockets the tap driver configures its interface through.
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    ("bind", libc::SYS_bind),
    ("listen", libc::SYS_listen),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("connect", libc::SYS_connect),
    ("shutdown", libc::SYS_shutdown),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("getsockname", libc::SYS_getsockname),
    ("getpeername", libc::SYS_getpeername),
    // Waiting: poll loops, EAL's interrupt thread, alarms, sleeps.
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("select", libc::SYS_select),
    ("pselect6", libc::SYS_pselect6),
    // EAL's interrupt thread makes a new epoll set with epoll_create(1) whenever its
    // sources change (the first alarm a secondary process such as dpdk-dumpcap causes).
    ("epoll_create", libc::SYS_epoll_create),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("eventfd2", libc::SYS_eventfd2),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    ("nanosleep", libc::SYS_nanosleep),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_getres", libc::SYS_clock_getres),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("futex", libc::SYS_futex),
    ("sched_yield", libc::SYS_sched_yield),
    // Threads: the control thread, telemetry's per-client threads.
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("rseq", libc::SYS_rseq),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("prctl", libc::SYS_prctl),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    // Signals: quit flag, SIGBUS guard of regions, this filter's own report.
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("tgkill", libc::SYS_tgkill),
    // Who am I.
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    ("getuid", libc::SYS_getuid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid),
    ("getresuid", libc::SYS_getresuid),
    ("getresgid", libc::SYS_getresgid),
    ("getrandom", libc::SYS_getrandom),
    // A pidfd of each guest's process, taken at accept: a departed guest's region is
    // freed in steps only once its process has exited (control/release.rs).
    ("pidfd_open", libc::SYS_pidfd_open),
    ("uname", libc::SYS_uname),
    ("getrlimit", libc::SYS_getrlimit),
    ("prlimit64", libc::SYS_prlimit64),
    ("getrusage", libc::SYS_getrusage),
    ("sysinfo", libc::SYS_sysinfo),
];

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Syscall numbers at or above this are the x32 ABI: never allowed.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt, jf, k }
}

/// Low 32 bits of a call's first and second argument in `struct seccomp_data`
/// (little-endian).
const DATA_ARG0_LOW: u32 = 16;
const DATA_ARG1_LOW: u32 = 24;
/// `clone` flags that make a new namespace: a new user namespace would give the child
/// every capability in it (CAP_NET_ADMIN over a new network namespace, for one).
const CLONE_NEW_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u32;
/// The socket families the proxy makes sockets of after start-up: unix (guests,
/// telemetry, EAL's multi-process channel), netlink (the tap driver's link events and
/// EAL's hotplug monitor), XDP (the af_xdp driver makes its sockets when a port starts).
/// Internet and packet sockets are made, if at all, while EAL probes (tap's and pcap's
/// interface ioctls), before the filter: after it, a compromised proxy cannot open a
/// connection to the network.
const SOCKET_FAMILIES: [c_int; 3] = [libc::AF_UNIX, libc::AF_NETLINK, libc::AF_XDP];
/// The terminal ioctl that pushes bytes into a terminal's input: the proxy may share a
/// terminal with root's shell.
const TIOCSTI: u32 = 0x5412;

/// The BPF program: the architecture must be x86-64, the number not x32; `clone` with a
/// namespace flag and `ioctl(TIOCSTI)` fail with EPERM, `clone3` (whose flags live in
/// memory a filter cannot read) with ENOSYS, so that glibc makes threads with `clone`,
/// `socket` of a family not in `SOCKET_FAMILIES` with EAFNOSUPPORT (the driver that
/// tried says so, the proxy goes on); then the number must be in `ALLOWED`; anything
/// else gets `miss`.
fn program(miss: u32) -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let errno = |e: c_int| libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA);
    let mut p = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
        jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        // clone: no new namespaces.
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone as u32, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARG0_LOW),
        jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEW_NAMESPACES, 0, 1),
        stmt(BPF_RET | BPF_K, errno(libc::EPERM)),
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
        // clone3: not at all.
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(BPF_RET | BPF_K, errno(libc::ENOSYS)),
        // ioctl: no TIOCSTI.
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_ioctl as u32, 0, 3),
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARG1_LOW),
        jump(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 0, 1),
        stmt(BPF_RET | BPF_K, errno(libc::EPERM)),
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
        // socket: only the families in SOCKET_FAMILIES (each equal jumps to the reload).
        jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_socket as u32, 0, 5),
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_ARG0_LOW),
        jump(BPF_JMP | BPF_JEQ | BPF_K, SOCKET_FAMILIES[0] as u32, 3, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, SOCKET_FAMILIES[1] as u32, 2, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, SOCKET_FAMILIES[2] as u32, 1, 0),
        stmt(BPF_RET | BPF_K, errno(libc::EAFNOSUPPORT)),
        stmt(BPF_LD | BPF_W | BPF_ABS, DATA_NR),
    ];
    // One test per allowed call: equal jumps to the ALLOW at the end.
    let n = ALLOWED.len();
    for (i, (_, nr)) in ALLOWED.iter().enumerate() {
        let to_allow = (n - i) as u8; // skips the rest of the tests and the miss
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *nr as u32, to_allow, 0));
    }
    p.push(stmt(BPF_RET | BPF_K, miss));
    p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    p
}

extern "C" fn on_sigsys(_sig: c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Async-signal-safe: formats into a stack buffer, one write(2), one tgkill(2).
    // SAFETY: the kernel passes a valid siginfo; for SIGSYS from seccomp the word after
    // si_addr holds si_syscall (siginfo_t's _sigsys layout: addr, syscall, arch).
    let nr = unsafe {
        let base = info as *const u8;
        let addr_off = std::mem::offset_of!(SigsysLayout, syscall);
        std::ptr::read_unaligned(base.add(addr_off) as *const i32)
    } as i64;
    let mut buf = [0u8; 200];
    let mut len = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if len < buf.len() {
                buf[len] = b;
                len += 1;
            }
        }
    };
    put(b"IO_PROXY: seccomp: system call ");
    let mut digits = [0u8; 20];
    let mut v = nr.unsigned_abs();
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[d..]);
    put(b" is not in the allowlist (ausyscall ");
    put(&digits[d..]);
    put(b" names it); stopping with SIGSYS (--seccomp log lets it through and logs it)\n");
    // SAFETY: write(2) of a stack buffer; tgkill(2) to this thread with the signal whose
    // handler was reset to the default by SA_RESETHAND, so it ends the process when this
    // handler returns and the signal is unblocked.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), len);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::syscall(libc::SYS_gettid), libc::SIGSYS);
    }
}

/// The head of `siginfo_t` for SIGSYS (`_sigsys`): signo, errno, code, padding, then
/// the union with call_addr, syscall, arch.
#[repr(C)]
struct SigsysLayout {
    signo: c_int,
    errno: c_int,
    code: c_int,
    _pad: c_int,
    call_addr: *mut libc::c_void,
    syscall: c_int,
    arch: u32,
}

/// Puts every thread of the process under the allowlist (`SECCOMP_FILTER_FLAG_TSYNC`:
/// EAL's threads too; threads started later inherit it). Needs no_new_privs or
/// CAP_SYS_ADMIN; `drop_privileges` sets the former, and it is set here too.
pub fn install_filter(mode: SeccompMode) -> Result<(), String> {
    Filter::new(mode).install()
}

/// A filter built and ready to install: installing allocates nothing (what a test
/// needs in a forked child).
struct Filter {
    mode: SeccompMode,
    program: Vec<libc::sock_filter>,
}

impl Filter {
    fn new(mode: SeccompMode) -> Filter {
        let miss = match mode {
            SeccompMode::Kill => libc::SECCOMP_RET_TRAP,
            _ => libc::SECCOMP_RET_LOG,
        };
        Filter { mode, program: program(miss) }
    }

    fn install(&self) -> Result<(), String> {
        match self.mode {
            SeccompMode::Off => return Ok(()),
            SeccompMode::Log => {}
            SeccompMode::Kill => {
                // SAFETY: sigaction is plain data; zero is valid.
                let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
                sa.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
                // SAFETY: installs a handler that only formats into a stack buffer and
                // makes two async-signal-safe calls.
                check("sigaction(SIGSYS)", unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) })?;
            }
        }
        prctl("prctl(PR_SET_NO_NEW_PRIVS)", libc::PR_SET_NO_NEW_PRIVS, 1)?;
        let filter = &self.program;
        let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
        // SAFETY: seccomp(2) with a program that lives across the call (the kernel copies it).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_TSYNC,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(if rc > 0 {
                format!("seccomp: thread {rc} cannot take the filter")
            } else {
                format!("seccomp: {e}")
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_fits_and_jumps_stay_inside_it() {
        let p = program(libc::SECCOMP_RET_TRAP);
        assert!(p.len() < 4096, "BPF_MAXINSNS");
        for (i, ins) in p.iter().enumerate().filter(|(_, ins)| ins.code as u32 & 0x07 == libc::BPF_JMP) {
            assert!(i + 1 + (ins.jt.max(ins.jf) as usize) < p.len(), "jump out of the program at {i}");
        }
        // Each allowed call's test jumps exactly to the final ALLOW.
        let first = p.len() - 2 - ALLOWED.len();
        for i in 0..ALLOWED.len() {
            assert_eq!(first + i + 1 + p[first + i].jt as usize, p.len() - 1);
        }
        assert_eq!(p[p.len() - 2].k, libc::SECCOMP_RET_TRAP);
        assert_eq!(p[p.len() - 1].k, libc::SECCOMP_RET_ALLOW);
    }

    fn name_of(nr: i64) -> &'static str {
        ALLOWED.iter().find(|(_, n)| *n == nr).map_or("?", |(name, _)| name)
    }

    #[test]
    fn the_allowlist_has_no_duplicates_and_no_dangerous_calls() {
        for (i, (name, nr)) in ALLOWED.iter().enumerate() {
            assert!(ALLOWED[i + 1..].iter().all(|(_, n)| n != nr), "{name} twice");
        }
        for nr in [libc::SYS_execve, libc::SYS_execveat, libc::SYS_ptrace, libc::SYS_setuid, libc::SYS_setresuid, libc::SYS_capset, libc::SYS_mount, libc::SYS_lchown, libc::SYS_fork, libc::SYS_vfork, libc::SYS_process_vm_writev, libc::SYS_bpf] {
            assert_eq!(name_of(nr), "?", "syscall {nr} must not be allowed");
        }
        assert_eq!(name_of(libc::SYS_openat), "openat");
    }

    #[test]
    fn sigsys_layout_matches_the_kernel() {
        // si_syscall is at offset 24 on x86-64 (siginfo_t: 3 ints, padding, the pointer).
        assert_eq!(std::mem::offset_of!(SigsysLayout, syscall), 24);
    }

    #[test]
    fn only_a_tap_port_keeps_net_admin() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(needed_capabilities(&names(&["net_null0", "0000:01:00.0", "net_ring0"])), vec![]);
        assert_eq!(needed_capabilities(&names(&["net_null0", "net_tap0"])), vec![Cap::NET_ADMIN]);
        assert_eq!(Cap::NET_ADMIN.name(), "CAP_NET_ADMIN");
    }

    /// Forks a child that installs `filter` and then calls getppid(2), which is not in
    /// the allowlist; its wait status.
    fn child_calls_getppid_under(filter: &Filter) -> c_int {
        assert_eq!(name_of(libc::SYS_getppid), "?", "the probe call must be outside the list");
        // SAFETY: the child only makes system calls (the filter was built before the
        // fork, installing it allocates nothing) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = match filter.install() {
                // SAFETY: a plain system call.
                Ok(()) => if unsafe { libc::syscall(libc::SYS_getppid) } > 0 { 0 } else { 3 },
                Err(_) => 2,
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn a_call_outside_the_list_ends_the_process_with_sigsys_and_log_mode_lets_it_through() {
        let status = child_calls_getppid_under(&Filter::new(SeccompMode::Kill));
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS, "wait status {status:#x}");
        let status = child_calls_getppid_under(&Filter::new(SeccompMode::Log));
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "wait status {status:#x}");
    }

    /// Forks a child that installs `filter` and makes `call`; the child's exit code is
    /// the call's errno (0: it succeeded).
    fn child_errno_under(filter: &Filter, call: fn() -> libc::c_long) -> c_int {
        // SAFETY: the child only makes system calls and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = match filter.install() {
                Ok(()) => {
                    if call() < 0 {
                        std::io::Error::last_os_error().raw_os_error().unwrap_or(255)
                    } else {
                        0
                    }
                }
                Err(_) => 254,
            };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "wait status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn no_new_namespaces_no_clone3_no_terminal_input() {
        let kill = Filter::new(SeccompMode::Kill);
        // SAFETY: a clone that would make a user and a network namespace; refused before
        // it runs (a child it made would _exit at once: no stack is shared, SIGCHLD only).
        let new_ns = || unsafe {
            libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0)
        };
        assert_eq!(child_errno_under(&kill, new_ns), libc::EPERM);
        // SAFETY: clone3 with a null argument: refused by the filter before the kernel reads it.
        let clone3 = || unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
        assert_eq!(child_errno_under(&kill, clone3), libc::ENOSYS);
        // SAFETY: TIOCSTI on stdin with a byte on the stack; refused by the filter.
        let sti = || unsafe {
            let c: u8 = b'x';
            libc::syscall(libc::SYS_ioctl, 0, TIOCSTI as libc::c_ulong, &c as *const u8)
        };
        assert_eq!(child_errno_under(&kill, sti), libc::EPERM);
        // Threads are still made (glibc falls back from clone3 to clone).
        let thread = || match std::thread::spawn(|| 7).join() {
            Ok(7) => 0,
            _ => -1,
        };
        assert_eq!(child_errno_under(&kill, thread), 0);
    }

    #[test]
    fn sockets_of_unix_netlink_and_xdp_only() {
        let kill = Filter::new(SeccompMode::Kill);
        fn made(family: c_int, kind: c_int, protocol: c_int) -> libc::c_long {
            // SAFETY: socket(2) with integer arguments; the child exits right after.
            let fd = unsafe { libc::syscall(libc::SYS_socket, family, kind | libc::SOCK_CLOEXEC, protocol) };
            fd.min(0)
        }
        assert_eq!(child_errno_under(&kill, || made(libc::AF_INET, libc::SOCK_STREAM, 0)), libc::EAFNOSUPPORT);
        assert_eq!(child_errno_under(&kill, || made(libc::AF_INET6, libc::SOCK_DGRAM, 0)), libc::EAFNOSUPPORT);
        assert_eq!(child_errno_under(&kill, || made(libc::AF_PACKET, libc::SOCK_RAW, 0)), libc::EAFNOSUPPORT);
        assert_eq!(child_errno_under(&kill, || made(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0)), 0);
        assert_eq!(child_errno_under(&kill, || made(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)), 0);
        // AF_XDP passes the filter; the kernel may still refuse it (no CAP_NET_RAW here
        // is fine: the filter's answer would be EAFNOSUPPORT).
        assert_ne!(child_errno_under(&kill, || made(libc::AF_XDP, libc::SOCK_RAW, 0)), libc::EAFNOSUPPORT);
    }

    #[test]
    fn modes_parse() {
        assert_eq!(SeccompMode::parse("kill"), Ok(SeccompMode::Kill));
        assert_eq!(SeccompMode::parse("log"), Ok(SeccompMode::Log));
        assert_eq!(SeccompMode::parse("off"), Ok(SeccompMode::Off));
        assert!(SeccompMode::parse("maybe").unwrap_err().contains("expected kill, log or off"));
    }
}
