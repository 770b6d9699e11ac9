//! The proxy's OS edge: the POSIX calls std does not offer (seqpacket unix sockets,
//! poll, peer credentials, user and group lookups, signals), behind safe functions. The
//! other modules make no libc call themselves.

use std::ffi::{c_int, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

/// The flag the quit signals set (null: none installed yet).
static QUIT_FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_quit_signal(_sig: c_int) {
    // Async-signal-safe: two atomic operations, no allocation, no lock, cannot panic.
    let flag = QUIT_FLAG.load(Ordering::Acquire);
    // SAFETY: null or the `&'static AtomicBool` stored by `set_quit_flag_on_signals`.
    if let Some(flag) = unsafe { flag.as_ref() } {
        flag.store(true, Ordering::Relaxed);
    }
}

/// Makes SIGINT and SIGTERM set `flag` (instead of ending the process).
pub fn set_quit_flag_on_signals(flag: &'static AtomicBool) {
    QUIT_FLAG.store(flag as *const AtomicBool as *mut AtomicBool, Ordering::Release);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only does atomic operations.
        unsafe { libc::signal(sig, on_quit_signal as *const () as libc::sighandler_t) };
    }
}

/// `poll(2)` on `fds` for at most `timeout_ms` (negative: no limit): how many have
/// events in their `revents`.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: fds is a valid, exclusively borrowed array of pollfd of the given length;
    // poll(2) only writes their `revents` (a descriptor that is not open gets POLLNVAL).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `read(2)` from `fd` into `buf`, without buffering (what a poll(2) loop needs:
/// nothing is kept where poll cannot see it). Ok(0): end of input.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: read(2) into a buffer of the given length that we borrow exclusively.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A new unix `SOCK_SEQPACKET` socket (close-on-exec; non-blocking if asked).
pub fn seqpacket_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    unix_socket(libc::SOCK_SEQPACKET, nonblocking)
}

/// A unix stream socket (close-on-exec), non-blocking or not.
pub fn stream_socket(nonblocking: bool) -> io::Result<OwnedFd> {
    unix_socket(libc::SOCK_STREAM, nonblocking)
}

fn unix_socket(kind: libc::c_int, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = kind | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The address of a unix socket at a path.
pub struct UnixAddr(libc::sockaddr_un);

impl UnixAddr {
    /// The address of `path`; it must fit `sun_path` with its terminating NUL.
    pub fn new(path: &Path) -> Result<UnixAddr, String> {
        // SAFETY: sockaddr_un is plain data; zero is valid.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_encoded_bytes();
        if bytes.len() >= addr.sun_path.len() {
            return Err(format!("socket path {} is too long", path.display()));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        Ok(UnixAddr(addr))
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        &self.0 as *const libc::sockaddr_un as *const libc::sockaddr
    }

    const LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
}

/// `bind(2)`s socket `fd` to `addr` (which creates the socket file).
pub fn bind(fd: BorrowedFd<'_>, addr: &UnixAddr) -> io::Result<()> {
    // SAFETY: addr is a valid sockaddr_un of the given length.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr(), UnixAddr::LEN) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `listen(2)` on a bound socket.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain call on a descriptor we borrow.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `connect(2)`s socket `fd` to `addr`.
pub fn connect(fd: BorrowedFd<'_>, addr: &UnixAddr) -> io::Result<()> {
    // SAFETY: addr is a valid sockaddr_un of the given length.
    if unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), UnixAddr::LEN) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts a connection on listening socket `listener`, as a non-blocking,
/// close-on-exec descriptor (a peer that does not read must never block a send).
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: accept4(2) without an address buffer; the flags are constants.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `shutdown(2)` both directions of a socket; it stays open until its owner drops it.
pub fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain call on a descriptor we borrow.
    if unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// If `fd` is a socket, makes its last close abortive (`SO_LINGER` on, 0 s): a TCP
/// socket with unsent data is reset instead of waiting up to its linger time in
/// `close`. Anything else is left alone: `setsockopt` answers `ENOTSOCK` for other files
/// without touching them. Best effort (the reaper closes it either way).
pub fn abort_on_close(fd: BorrowedFd<'_>) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt with a valid linger struct of the stated length, on a
    // descriptor we borrow.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

use shm_contract::proto::transport::SO_PASSRIGHTS;

/// Lets a unix socket receive descriptors, or not (`SO_PASSRIGHTS`). Fails with
/// `ENOPROTOOPT` on kernels before 6.16 (they always let descriptors through).
pub fn set_pass_rights(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let value: c_int = on as c_int;
    // SAFETY: setsockopt with an int of the stated length, on a descriptor we borrow.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            (&value as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    })
}

/// Whether descriptors can arrive on unix socket `fd`: `SO_PASSRIGHTS` on, or a kernel
/// that does not know it (then they always can).
pub fn passes_rights(fd: BorrowedFd<'_>) -> bool {
    let mut value: c_int = 1;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the stated length, on a descriptor we borrow.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_PASSRIGHTS, (&mut value as *mut c_int).cast(), &mut len) };
    rc != 0 || value != 0
}

extern "C" fn on_interrupt_signal(_sig: c_int) {
    // Nothing: the signal only ends an interruptible wait of the thread it was sent to.
}

/// The signal that interrupts a thread stuck in an interruptible wait (`interrupt`).
pub fn interrupt_signal() -> c_int {
    libc::SIGRTMIN() + 4
}

/// Installs a handler that does nothing for `interrupt_signal()`, without
/// `SA_RESTART`, so that the signal ends an interruptible wait of the thread it is
/// sent to (a close waiting for a TCP socket's linger time) and is otherwise harmless.
pub fn install_interrupt_handler() -> io::Result<()> {
    // SAFETY: sigaction is plain data; zero is valid; the handler does nothing.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_interrupt_signal as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(interrupt_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `interrupt_signal()` to thread `thread` of this process.
pub fn interrupt(thread: libc::pthread_t) {
    // SAFETY: the caller passes a thread of this process that has not been joined.
    unsafe { libc::pthread_kill(thread, interrupt_signal()) };
}

/// Raises the soft limit of open descriptors to the hard one; returns the soft limit
/// in force afterwards.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: rlimit is plain data; zero is valid.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur as u64
}

/// The credentials of the peer of a connected unix socket, as the kernel recorded them
/// when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Its process id.
    pub pid: i32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
    /// Its supplementary groups (empty where the kernel cannot say).
    pub groups: Vec<u32>,
}

/// `SO_PEERCRED` and `SO_PEERGROUPS` of a connected unix socket; None when the first
/// cannot be read.
pub fn peer_credentials(fd: BorrowedFd<'_>) -> Option<Credentials> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred is a valid ucred buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred as *mut _ as *mut libc::c_void, &mut len)
    };
    if rc != 0 {
        return None;
    }
    let mut groups = vec![0 as libc::gid_t; 64];
    let mut glen = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
    // SAFETY: groups is a buffer of `glen` bytes.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr() as *mut libc::c_void, &mut glen)
    };
    let n = if rc == 0 { glen as usize / std::mem::size_of::<libc::gid_t>() } else { 0 };
    groups.truncate(n);
    Some(Credentials { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups })
}

/// What `fstat(2)` says about a file, the part the socket-path checks use (the
/// contract's path walk reports the same).
pub use shm_contract::pathwalk::StepStat as FileStat;

/// A file name for the `*at` calls: one path component, no NUL.
fn c_name(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_encoded_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name with a NUL byte"))
}

/// `dir` as an `*at` directory argument (None: the current directory).
fn at(dir: Option<BorrowedFd<'_>>) -> c_int {
    dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd())
}

fn owned(fd: c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: c_int) -> io::Result<()> {
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `name` in `dir` as an `O_PATH` descriptor without following a symbolic link
/// there: a link is opened as itself.
pub fn open_path_at(dir: Option<BorrowedFd<'_>>, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    // SAFETY: openat(2) with a valid C string; the result is owned right away.
    owned(unsafe { libc::openat(at(dir), name.as_ptr(), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) })
}

/// Opens directory `name` in `dir` for reading (what `fchmod` needs), never through a
/// symbolic link.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: openat(2) with a valid C string; the result is owned right away.
    owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// `fstat(2)` of an open descriptor (an `O_PATH` one too).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    // SAFETY: stat is plain data; zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) into a stat buffer we own.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(FileStat::from_stat(&st))
}

/// `fstatat(2)` of `name` in `dir`, not following a symbolic link.
pub fn stat_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<FileStat> {
    let name = c_name(name)?;
    // SAFETY: stat is plain data; zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat(2) with a valid C string into a stat buffer we own.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(FileStat::from_stat(&st))
}

/// `mkdirat(2)`: a directory `name` in `dir` with permissions `mode` (less the umask).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, mode: u32) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: mkdirat(2) with a valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
}

/// `unlinkat(2)`: removes `name` from `dir` (a directory, which must be empty, if asked).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, is_dir: bool) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: unlinkat(2) with a valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), if is_dir { libc::AT_REMOVEDIR } else { 0 }) })
}

/// Gives the file open as `fd` (not an `O_PATH` one) its owner and group (None: keep)
/// and its permissions: changes that file, whatever path leads to it now.
pub fn fchown_fchmod(fd: BorrowedFd<'_>, owner: Option<u32>, group: Option<u32>, mode: u32) -> io::Result<()> {
    if owner.is_some() || group.is_some() {
        let keep = u32::MAX;
        // SAFETY: plain call on a descriptor we borrow (-1: that id unchanged).
        check(unsafe { libc::fchown(fd.as_raw_fd(), owner.unwrap_or(keep), group.unwrap_or(keep)) })?;
    }
    // SAFETY: as above.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

/// Gives `name` in `dir` its owner, group (None: keep) and permissions without following
/// a symbolic link (a link there is an error, never its target changed).
pub fn chown_chmod_at(dir: BorrowedFd<'_>, name: &std::ffi::OsStr, owner: Option<u32>, group: Option<u32>, mode: u32) -> io::Result<()> {
    let cname = c_name(name)?;
    if owner.is_some() || group.is_some() {
        let keep = u32::MAX;
        // SAFETY: fchownat(2) with a valid C string; AT_SYMLINK_NOFOLLOW changes a link
        // itself, never what it points to.
        check(unsafe {
            libc::fchownat(dir.as_raw_fd(), cname.as_ptr(), owner.unwrap_or(keep), group.unwrap_or(keep), libc::AT_SYMLINK_NOFOLLOW)
        })?;
    }
    // SAFETY: fchmodat(2) with a valid C string; with AT_SYMLINK_NOFOLLOW glibc refuses a
    // link (EOPNOTSUPP) instead of changing its target.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), cname.as_ptr(), mode as libc::mode_t, libc::AT_SYMLINK_NOFOLLOW) })
}

/// `renameat2(2)` with `RENAME_NOREPLACE`: moves `from` in `from_dir` to `to` in
/// `to_dir`, failing (EEXIST) rather than replacing anything there.
pub fn rename_noreplace(from_dir: BorrowedFd<'_>, from: &std::ffi::OsStr, to_dir: BorrowedFd<'_>, to: &std::ffi::OsStr) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    // SAFETY: renameat2(2) with valid C strings.
    check(unsafe {
        libc::renameat2(from_dir.as_raw_fd(), from.as_ptr(), to_dir.as_raw_fd(), to.as_ptr(), libc::RENAME_NOREPLACE)
    })
}

/// The path that reaches `name` inside the directory open as `dir` through
/// `/proc/self/fd`: a path for the calls that take no directory descriptor (`bind`,
/// `connect`), which resolves to that very directory whatever its path is now.
pub fn path_in_fd(dir: BorrowedFd<'_>, name: &std::ffi::OsStr) -> std::path::PathBuf {
    Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name)
}

/// `/proc/self/fd/<fd>`: the open file itself, whatever its name now is (an `O_PATH`
/// descriptor of a socket file can be connected to through it).
pub fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string())
}

/// Which lookup `lookup_id` makes.
#[derive(Clone, Copy)]
enum Db {
    Passwd,
    Group,
}

/// The id of a user or group name in the system's databases (`getpwnam_r`,
/// `getgrnam_r`), with the user's primary group (for a group: its id again); None when
/// there is no such name or it cannot be looked up.
fn lookup_id(db: Db, name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        let mut found = false;
        let mut id = (0u32, 0u32);
        let rc = match db {
            Db::Passwd => {
                // SAFETY: passwd is plain data; zero is valid.
                let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
                let mut result: *mut libc::passwd = std::ptr::null_mut();
                // SAFETY: valid C string, result struct and buffer of the given length;
                // the strings in `pw` point into `buf` and are not read.
                let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
                if rc == 0 && !result.is_null() {
                    found = true;
                    id = (pw.pw_uid, pw.pw_gid);
                }
                rc
            }
            Db::Group => {
                // SAFETY: group is plain data; zero is valid.
                let mut gr: libc::group = unsafe { std::mem::zeroed() };
                let mut result: *mut libc::group = std::ptr::null_mut();
                // SAFETY: as above.
                let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut result) };
                if rc == 0 && !result.is_null() {
                    found = true;
                    id = (gr.gr_gid, gr.gr_gid);
                }
                rc
            }
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            // A group with many members: a larger buffer.
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return found.then_some(id);
    }
}

/// The uid of user `name`.
pub fn user_id(name: &str) -> Option<u32> {
    lookup_id(Db::Passwd, name).map(|(uid, _)| uid)
}

/// The uid and primary gid of user `name`.
pub fn user_ids(name: &str) -> Option<(u32, u32)> {
    lookup_id(Db::Passwd, name)
}

/// The gid of group `name`.
pub fn group_id(name: &str) -> Option<u32> {
    lookup_id(Db::Group, name).map(|(gid, _)| gid)
}

/// A pidfd of process `pid` (`pidfd_open(2)`): it stays bound to that process, so
/// asking it later whether the process exited ([`process_exited`]) cannot be fooled by
/// the pid's reuse, as `/proc/<pid>` could.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: plain syscall with integer arguments; the result is checked.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as c_int) })
}

/// Whether the process of `pidfd` has exited (its pidfd polls readable), without
/// waiting.
pub fn process_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    poll(&mut fds, 0).is_ok_and(|n| n > 0 && fds[0].revents & (libc::POLLIN | libc::POLLHUP) != 0)
}

/// The CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): what the
/// control thread charges to the peer whose event it handled.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn users_and_groups_resolve() {
        assert_eq!(user_id("root"), Some(0));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(user_id("no-such-user-here"), None);
        assert_eq!(group_id("no-such-group-here"), None);
        assert_eq!(user_id("a\0b"), None);
    }

    #[test]
    fn seqpacket_sockets_listen_accept_and_know_their_peer() {
        let dir = std::env::temp_dir().join(format!("iop-os-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let addr = UnixAddr::new(&path).unwrap();
        let listener = seqpacket_socket(true).unwrap();
        bind(listener.as_fd(), &addr).unwrap();
        listen(listener.as_fd(), 8).unwrap();
        assert_eq!(accept(listener.as_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let client = seqpacket_socket(false).unwrap();
        connect(client.as_fd(), &addr).unwrap();
        let mut fds = [libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        assert_eq!(poll(&mut fds, 1000).unwrap(), 1);
        let conn = accept(listener.as_fd()).unwrap();
        let cred = peer_credentials(conn.as_fd()).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        // The directory made above belongs to this process's user.
        assert_eq!(cred.uid, std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir).unwrap()));
        shutdown(conn.as_fd()).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(read(client.as_fd(), &mut buf).unwrap(), 0, "end of input after the shutdown");
        assert!(matches!(UnixAddr::new(&dir.join("x".repeat(200))), Err(e) if e.ends_with("is too long")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
