//! Sending and receiving control messages over a `SOCK_SEQPACKET` unix socket,
//! with file descriptors as `SCM_RIGHTS`.
//!
//! Received descriptors are wrapped in [`OwnedFd`] the moment they arrive; they are
//! received with `MSG_CMSG_CLOEXEC`. The control buffer has room for as many as the
//! kernel lets one message carry ([`SCM_MAX_FD`]): descriptors that do not fit would
//! be released by the kernel inside `recvmsg`, in the receiving thread, and the last
//! close of a file can block (a TCP socket with `SO_LINGER`, a file whose server is
//! slow to answer a flush). [`recv_message_and_fds`] hands every descriptor to the
//! caller whatever the message turned out to be, so that the proxy decides where
//! they are closed; [`recv_message`] (guests) refuses more than [`MAX_FDS`].

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::pathwalk::{self, Step, Target, Visitor, WalkFailure, WalkedDir};

use super::{decode, encode, DecodeError, EncodeError, Hello, Message, MessageKind, RefuseCode, Welcome, MAX_MESSAGE};

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 4;

/// Most descriptors the kernel lets a peer attach to one message (Linux `SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// `SO_PASSRIGHTS` (Linux 6.16 and later; not in the libc crate yet): whether a unix
/// socket accepts `SCM_RIGHTS`. Off, a peer's `sendmsg` with descriptors fails with
/// `EPERM` and nothing is queued; a listener's setting is what its connections start
/// with. The proxy's connections have it off except when they ask for a region
/// ([`handshake`]).
pub const SO_PASSRIGHTS: libc::c_int = 83;

const FD_SIZE: usize = std::mem::size_of::<RawFd>();

/// A failure to exchange a message.
#[derive(Debug)]
pub enum TransportError {
    /// A system call failed.
    Io(io::Error),
    /// The peer closed the connection.
    Closed,
    /// Nothing arrived in time.
    Timeout,
    /// The datagram was longer than [`MAX_MESSAGE`].
    Truncated,
    /// More descriptors arrived than [`MAX_FDS`] (they were closed), or than the
    /// control buffer holds.
    ControlTruncated,
    /// More than [`MAX_FDS`] descriptors to send.
    TooManyFds {
        /// How many.
        count: usize,
    },
    /// The message cannot be encoded.
    Encode(EncodeError),
    /// The datagram is not a valid message.
    Decode(DecodeError),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Io(e) => write!(f, "control socket: {e}"),
            TransportError::Closed => write!(f, "control socket: closed by the peer"),
            TransportError::Timeout => write!(f, "control socket: timed out"),
            TransportError::Truncated => write!(f, "control socket: datagram longer than {MAX_MESSAGE} bytes"),
            TransportError::ControlTruncated => {
                write!(f, "control socket: more than {MAX_FDS} descriptors with one message")
            }
            TransportError::TooManyFds { count } => {
                write!(f, "control socket: {count} descriptors to send, at most {MAX_FDS}")
            }
            TransportError::Encode(e) => write!(f, "{e}"),
            TransportError::Decode(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Io(e) => Some(e),
            TransportError::Encode(e) => Some(e),
            TransportError::Decode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for TransportError {
    fn from(e: io::Error) -> Self {
        TransportError::Io(e)
    }
}

impl From<EncodeError> for TransportError {
    fn from(e: EncodeError) -> Self {
        TransportError::Encode(e)
    }
}

impl From<DecodeError> for TransportError {
    fn from(e: DecodeError) -> Self {
        TransportError::Decode(e)
    }
}

/// Control-message buffer, aligned for `cmsghdr`, with room for [`SCM_MAX_FD`]
/// descriptors (and a credentials message besides).
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

const CMSG_BUF_LEN: usize = 1024 + 64;

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE((fds * FD_SIZE) as libc::c_uint) as usize }
}

/// Sends one message, with `fds` attached as `SCM_RIGHTS`.
pub fn send_message(
    fd: BorrowedFd<'_>,
    msg: &Message,
    request_id: u32,
    fds: &[BorrowedFd<'_>],
) -> Result<(), TransportError> {
    if fds.len() > MAX_FDS {
        return Err(TransportError::TooManyFds { count: fds.len() });
    }
    let mut buf = [0u8; MAX_MESSAGE];
    let len = encode(msg, request_id, &mut buf)?;
    send_datagram(fd, &buf[..len], fds)
}

fn send_datagram(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
    let mut cmsg = CmsgBuf([0; CMSG_BUF_LEN]);
    let space = cmsg_space(fds.len());
    if space > cmsg.0.len() {
        return Err(TransportError::TooManyFds { count: fds.len() });
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: `msghdr` is plain data; all-zero is a valid (empty) value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    if !fds.is_empty() {
        hdr.msg_control = cmsg.0.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: `hdr.msg_control` points at `space` bytes of an aligned buffer,
        // enough for one header and `fds.len()` descriptors; CMSG_FIRSTHDR and
        // CMSG_DATA stay inside it, and the descriptors are copied bytewise.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&hdr);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((fds.len() * FD_SIZE) as libc::c_uint) as _;
            let data = libc::CMSG_DATA(c);
            for (i, f) in fds.iter().enumerate() {
                data.add(i * FD_SIZE).cast::<RawFd>().write_unaligned(f.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `hdr` points at the live iovec and control buffer above; the
        // kernel only reads them. MSG_NOSIGNAL: a closed peer is an error, not
        // a SIGPIPE.
        let rc = unsafe { libc::sendmsg(fd.as_raw_fd(), &hdr, libc::MSG_NOSIGNAL) };
        if rc >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EPIPE) | Some(libc::ECONNRESET) => return Err(TransportError::Closed),
            _ => return Err(TransportError::Io(err)),
        }
    }
}

/// Waits until `fd` is readable or `deadline` passes.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> Result<(), TransportError> {
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so we never wake a hair early and spin.
                let ms = left.as_nanos().div_ceil(1_000_000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc > 0 {
            if pfd.revents & libc::POLLNVAL != 0 {
                return Err(TransportError::Io(io::Error::from_raw_os_error(libc::EBADF)));
            }
            // POLLIN, or POLLHUP/POLLERR: recvmsg will say which.
            return Ok(());
        }
        if rc == 0 {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(TransportError::Timeout);
            }
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(TransportError::Io(err));
        }
    }
}

/// Takes ownership of every descriptor in the control messages of `hdr`.
///
/// # Safety
///
/// `hdr` must describe a control buffer just filled by a successful `recvmsg`.
unsafe fn take_fds(hdr: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the libc
    // macros that bound every header by `msg_controllen`.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !c.is_null() {
        // SAFETY: `c` is a header inside the filled control buffer.
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len as usize) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN is pure arithmetic.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / FD_SIZE;
            // SAFETY: the kernel wrote `count` descriptors after the header.
            let data = unsafe { libc::CMSG_DATA(c) };
            for i in 0..count {
                // SAFETY: inside this cmsg's data, which may be unaligned.
                let raw = unsafe { data.add(i * FD_SIZE).cast::<RawFd>().read_unaligned() };
                if raw >= 0 {
                    // SAFETY: the kernel just installed this descriptor for us;
                    // nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: as above; CMSG_NXTHDR returns null past the end.
        c = unsafe { libc::CMSG_NXTHDR(hdr, c) };
    }
    fds
}

/// One received datagram: what it decodes to, and every descriptor that came with
/// it, whether or not the message is valid or expects any.
#[derive(Debug)]
pub struct Received {
    /// The message and its request id, or why there is none.
    pub message: Result<(Message, u32), TransportError>,
    /// The descriptors that came with the datagram (empty on an error before one was
    /// read). The caller decides where they are closed.
    pub fds: Vec<OwnedFd>,
}

/// Receives one message and every descriptor that came with it (up to
/// [`SCM_MAX_FD`], all the kernel allows), waiting at most `timeout` (forever if
/// `None`). Nothing received is closed here.
pub fn recv_message_and_fds(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Received {
    // No wait at all (the proxy's control thread reads what poll found): no poll first,
    // a datagram or EAGAIN (Timeout) straight from recvmsg.
    let at_once = timeout == Some(Duration::ZERO);
    let deadline = if at_once { None } else { timeout.map(|t| Instant::now() + t) };
    let failed = |e: TransportError| Received { message: Err(e), fds: Vec::new() };
    let mut reset_seen = false;
    loop {
        if !at_once {
            if let Err(e) = wait_readable(fd, deadline) {
                return failed(e);
            }
        }
        let mut buf = [0u8; MAX_MESSAGE];
        let mut cmsg = CmsgBuf([0; CMSG_BUF_LEN]);
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `msghdr` is plain data; all-zero is a valid (empty) value.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsg.0.as_mut_ptr().cast();
        hdr.msg_controllen = CMSG_BUF_LEN as _;
        // SAFETY: `hdr` points at live buffers of the sizes it states.
        // MSG_DONTWAIT: never block (with no poll first, or a stale readiness).
        let rc = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut hdr,
                libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) if at_once => return failed(TransportError::Timeout),
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                // A peer that closed with our datagrams unread reports ECONNRESET once;
                // what it sent before closing (a refusal, say) is still queued.
                Some(libc::ECONNRESET) if !reset_seen => {
                    reset_seen = true;
                    continue;
                }
                Some(libc::ECONNRESET) => return failed(TransportError::Closed),
                _ => return failed(TransportError::Io(err)),
            }
        }
        // SAFETY: recvmsg succeeded and filled the control buffer.
        let fds = unsafe { take_fds(&hdr) };
        let message = if hdr.msg_flags & libc::MSG_CTRUNC != 0 {
            Err(TransportError::ControlTruncated)
        } else if hdr.msg_flags & libc::MSG_TRUNC != 0 {
            Err(TransportError::Truncated)
        } else if rc == 0 {
            // End of file (a zero-length datagram is never a valid message either).
            Err(TransportError::Closed)
        } else {
            decode(&buf[..rc as usize]).map_err(TransportError::from)
        };
        return Received { message, fds };
    }
}

/// A guest's connection to its proxy could not be made, or was not to its proxy.
#[derive(Debug)]
pub enum ConnectError {
    /// The socket could not be reached (`connect(2)` failed, or the path is unusable).
    Io(io::Error),
    /// Something serves the socket, but not as a user the guest trusts: nothing was sent
    /// to it (no `Hello`, no descriptor).
    UntrustedServer {
        /// Uids the guest accepts.
        expected: Vec<u32>,
        /// What they are (for the message).
        expected_why: &'static str,
        /// The server's uid (`SO_PEERCRED`: of the process that called `listen(2)`).
        server_uid: u32,
        /// The server's pid (the same).
        server_pid: i32,
    },
    /// The socket's path does not show who the proxy is (someone other than root or the
    /// proxy's user could have made or could change a step of it): nothing connected.
    UntrustedPath {
        /// The socket's path.
        path: std::path::PathBuf,
        /// Which step, and why.
        reason: String,
    },
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(e) => write!(f, "cannot connect: {e}"),
            ConnectError::UntrustedServer { expected, expected_why, server_uid, server_pid } => {
                let list: Vec<String> = expected.iter().map(u32::to_string).collect();
                write!(
                    f,
                    "refusing the server of this socket: server uid {server_uid} (pid {server_pid}), expected uid {} \
                     ({expected_why}); nothing was sent to it (if the proxy runs as another user, say so with \
                     proxy_uid=<uid>)",
                    list.join(" or ")
                )
            }
            ConnectError::UntrustedPath { path, reason } => write!(
                f,
                "refusing the socket {}: {reason}; nothing was sent to it (put the proxy's sockets in a directory only \
                 root or the proxy's user can write, or name the proxy's user with proxy_uid=<uid>)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ConnectError {}

/// `SO_PEERCRED` of a connected unix socket: (pid, uid) of its peer as the kernel recorded
/// them (for a guest's connection: the process that made the server socket listen).
pub fn peer_uid(socket: BorrowedFd<'_>) -> io::Result<(i32, u32)> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid ucred buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cred.pid, cred.uid))
}

/// One directory or symbolic link on the way to a socket, as [`walk_socket_path`] found it.
#[derive(Debug)]
struct PathStep {
    /// Its path as walked (for messages).
    shown: std::path::PathBuf,
    uid: u32,
    /// Its parent directory as walked, and that directory's mode when its group or others
    /// may write it (then anyone could have made this step).
    open_parent: Option<(std::path::PathBuf, u32)>,
}

/// What [`walk_socket_path`] found: every step on the way, and the socket's directory.
#[derive(Debug)]
struct SocketPath {
    steps: Vec<PathStep>,
    /// Owner of the directory the socket is in.
    dir_uid: u32,
}

fn untrusted_path(path: &Path, reason: String) -> ConnectError {
    ConnectError::UntrustedPath { path: path.to_path_buf(), reason }
}

/// The guest's judgement of each step of a socket's path ([`walk_socket_path`]).
struct SocketPathSteps<'a> {
    path: &'a Path,
    steps: Vec<PathStep>,
}

impl SocketPathSteps<'_> {
    fn record(&mut self, step: &Step<'_>) {
        let open_parent = step
            .parent
            .filter(|p| p.stat.writable_by_others())
            .map(|p| (p.shown.clone(), p.stat.mode & 0o7777));
        self.steps.push(PathStep { shown: step.shown.to_path_buf(), uid: step.stat.uid, open_parent });
    }
}

impl Visitor for SocketPathSteps<'_> {
    type Error = ConnectError;

    fn directory(&mut self, step: Step<'_>) -> Result<(), ConnectError> {
        if step.stat.open_to_others() {
            return Err(untrusted_path(
                self.path,
                format!(
                    "{} is writable by its group or others (mode {:04o}) and not sticky: whoever can write it could \
                     replace the socket",
                    step.shown.display(),
                    step.stat.mode & 0o7777
                ),
            ));
        }
        self.record(&step);
        Ok(())
    }

    fn link(&mut self, step: Step<'_>) -> Result<(), ConnectError> {
        self.record(&step);
        Ok(())
    }

    fn cannot_open(&mut self, _: &WalkedDir, _: &std::ffi::OsStr, _: &Path, error: io::Error) -> Result<OwnedFd, ConnectError> {
        Err(ConnectError::Io(error))
    }

    fn failed(&mut self, failure: WalkFailure) -> ConnectError {
        ConnectError::Io(failure.into_io())
    }
}

/// Walks `path` from `/` ([`pathwalk::walk`]: every link is seen), recording the owner
/// of every directory and link and whether others could write the directory it is in.
/// A directory that its group or others may write and that is not sticky is refused
/// here (whoever can write it could replace the socket); the last component must be a
/// socket.
fn walk_socket_path(path: &Path) -> Result<SocketPath, ConnectError> {
    let mut visitor = SocketPathSteps { path, steps: Vec::new() };
    let walked = pathwalk::walk(path, Target::Entry, &mut visitor)?;
    match walked.entry {
        Some((_, stat)) if stat.is_socket() => Ok(SocketPath { steps: visitor.steps, dir_uid: walked.dir.stat.uid }),
        // Not a socket, or the path ended in `/`, `..` or a link to a directory.
        _ => Err(ConnectError::Io(io::Error::from_raw_os_error(libc::ENOTSOCK))),
    }
}

/// The uids a guest accepts as the server of the socket at `path`: `proxy_uid` when given
/// (the path is then only a name: no one else passes `SO_PEERCRED`).
///
/// Otherwise root, and the owner of the socket's directory (the proxy's user, when the
/// proxy made it) if the path vouches for that owner: checked the way the proxy checks
/// it before serving (see `sockpath` in proxy-app), walked from `/` without following a
/// link unseen, every directory and link must belong to root, to that owner or to the
/// guest's own user; no directory may be writable by its group or others unless sticky;
/// and a step of that owner's (when not root or the guest itself) must not be in a
/// directory others can write: in a sticky `/tmp` anyone can make `/tmp/x` first and
/// serve an impostor there, so its owner says nothing about who the proxy is. A path
/// that fails is refused ([`ConnectError::UntrustedPath`]) before anything connects.
pub fn expected_server_uids(path: &Path, proxy_uid: Option<u32>) -> Result<(Vec<u32>, &'static str), ConnectError> {
    if let Some(uid) = proxy_uid {
        return Ok((vec![uid], "proxy_uid"));
    }
    let walked = walk_socket_path(path)?;
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    let owner = walked.dir_uid;
    for step in &walked.steps {
        if step.uid != 0 && step.uid != owner && step.uid != me {
            return Err(untrusted_path(
                path,
                format!(
                    "{} belongs to uid {}: every directory and link on the socket's path must belong to root or to \
                     the owner of the socket's directory (uid {owner}), or its owner could replace the socket",
                    step.shown.display(),
                    step.uid
                ),
            ));
        }
        if step.uid == owner && owner != 0 && owner != me {
            if let Some((parent, mode)) = &step.open_parent {
                return Err(untrusted_path(
                    path,
                    format!(
                        "{} belongs to uid {owner} and is in {}, which others can write (mode {mode:04o}): anyone \
                         could have made it, so its owner is not known to be the proxy",
                        step.shown.display(),
                        parent.display()
                    ),
                ));
            }
        }
    }
    let mut uids = vec![0];
    if owner != 0 {
        uids.push(owner);
    }
    Ok((uids, "root, or the owner of the socket's directory"))
}

/// Checks, before anything is sent on `socket` (connected to `path`), that its server
/// runs as one of the expected users (see [`expected_server_uids`]).
pub fn verify_server(socket: BorrowedFd<'_>, path: &Path, proxy_uid: Option<u32>) -> Result<(), ConnectError> {
    let (expected, expected_why) = expected_server_uids(path, proxy_uid)?;
    check_server(socket, expected, expected_why)
}

fn check_server(socket: BorrowedFd<'_>, expected: Vec<u32>, expected_why: &'static str) -> Result<(), ConnectError> {
    let (server_pid, server_uid) = peer_uid(socket).map_err(ConnectError::Io)?;
    if expected.contains(&server_uid) {
        Ok(())
    } else {
        Err(ConnectError::UntrustedServer { expected, expected_why, server_uid, server_pid })
    }
}

/// Connects a guest to the proxy's `SOCK_SEQPACKET` socket at `path` (close-on-exec,
/// blocking): first the path is checked and the expected server found
/// ([`expected_server_uids`]; a path that fails is not connected to), then, connected,
/// its server is verified with `SO_PEERCRED`: a socket from here is safe to send a
/// `Hello` and a region on. Both guest kinds (the plugins, at first attach and at every
/// reattach, and the Rust guest) connect only through this.
pub fn connect_to_proxy(path: &Path, proxy_uid: Option<u32>) -> Result<OwnedFd, ConnectError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= SUN_PATH_LEN || bytes.contains(&0) {
        return Err(ConnectError::Io(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long or contains NUL")));
    }
    let (expected, expected_why) = expected_server_uids(path, proxy_uid)?;
    // SAFETY: socket(2) with constant arguments; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(ConnectError::Io(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
    let rc = unsafe { libc::connect(socket.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc != 0 {
        return Err(ConnectError::Io(io::Error::last_os_error()));
    }
    check_server(socket.as_fd(), expected, expected_why)?;
    Ok(socket)
}

/// Bytes in `sockaddr_un.sun_path` (the address is the family, then the path).
const SUN_PATH_LEN: usize = std::mem::size_of::<libc::sockaddr_un>() - std::mem::size_of::<libc::sa_family_t>();

/// A uid given as a number or a user name (`getpwnam_r`).
pub fn parse_uid(text: &str) -> Option<u32> {
    if let Ok(n) = text.parse::<u32>() {
        return Some(n);
    }
    let name = std::ffi::CString::new(text).ok()?;
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: passwd is plain data; zero is valid.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: a valid C string, result struct and buffer of the given length; the
        // strings in `pw` point into `buf` and are not read.
        let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return (rc == 0 && !result.is_null()).then_some(pw.pw_uid);
    }
}

/// Receives one message and the descriptors that came with it, waiting at most
/// `timeout` (forever if `None`); more than [`MAX_FDS`] descriptors is an error
/// (they are closed).
pub fn recv_message(
    fd: BorrowedFd<'_>,
    timeout: Option<Duration>,
) -> Result<(Message, u32, Vec<OwnedFd>), TransportError> {
    let Received { message, fds } = recv_message_and_fds(fd, timeout);
    let (msg, request_id) = message?;
    if fds.len() > MAX_FDS {
        return Err(TransportError::ControlTruncated);
    }
    Ok((msg, request_id, fds))
}

/// How a guest's handshake ended when it did not end in a `Welcome`.
#[derive(Debug)]
pub enum HandshakeError {
    /// The proxy said no, and why.
    Refused {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Human-readable reason.
        reason: String,
    },
    /// The socket failed, was closed, or nothing came in time.
    Transport(TransportError),
    /// Something other than a `Welcome` came.
    Unexpected(MessageKind),
}

impl From<TransportError> for HandshakeError {
    fn from(e: TransportError) -> Self {
        HandshakeError::Transport(e)
    }
}

/// The guest's side of the handshake: sends `hello` (with `fds`) and waits up to
/// `timeout` for the proxy's `Welcome`, which it returns with the descriptors that came
/// with it. Link news before the `Welcome` is skipped. A proxy that refuses a peer on
/// sight (not in its allowlist) answers and closes before reading the `Hello`: when the
/// send fails, that answer is read and its reason returned.
///
/// A proxy's connection refuses descriptors until it asks for one (`SO_PASSRIGHTS`
/// off: the send fails with `EPERM`, nothing was queued): then the `Hello` goes without
/// them, and when the proxy answers `RegionWanted` it goes again with them (see the
/// protocol's "Descriptors").
pub fn handshake(
    socket: BorrowedFd<'_>,
    hello: &Hello,
    fds: &[BorrowedFd<'_>],
    timeout: Duration,
) -> Result<(Welcome, Vec<OwnedFd>), HandshakeError> {
    let deadline = Instant::now() + timeout;
    let message = Message::Hello(hello.clone());
    let mut held_back = false;
    let sent = match send_message(socket, &message, 1, fds) {
        Err(TransportError::Io(e)) if e.raw_os_error() == Some(libc::EPERM) && !fds.is_empty() => {
            held_back = true;
            send_message(socket, &message, 1, &[])
        }
        other => other,
    };
    if let Err(e) = sent {
        if let Ok((Message::Refuse { code, reason }, _, _)) = recv_message(socket, Some(Duration::ZERO)) {
            return Err(HandshakeError::Refused { code, reason });
        }
        return Err(e.into());
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransportError::Timeout.into());
        }
        let (reply, _, fds_in) = recv_message(socket, Some(left))?;
        match reply {
            Message::Welcome(w) => return Ok((w, fds_in)),
            Message::Refuse { code, reason } => return Err(HandshakeError::Refused { code, reason }),
            Message::LinkStatus { .. } => continue,
            Message::RegionWanted if held_back => {
                held_back = false;
                send_message(socket, &message, 1, fds)?;
            }
            other => return Err(HandshakeError::Unexpected(other.kind())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::{check_region_fd, create_region_memfd, Mapping};
    use crate::proto::{Welcome, PROTOCOL_VERSION};
    use crate::RegionFlags;
    use std::os::fd::AsFd;
    use std::sync::atomic::Ordering;

    fn pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let rc = unsafe {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: fresh descriptors owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn welcome(size: u64) -> Message {
        Message::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            flags: RegionFlags::empty(),
            region_size: size,
            page_size: 4096,
            port_id: 0,
            queue_id: 1,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            max_rx_frame: 1518,
            link_up: true,
            link_speed_mbps: 10_000,
            queue_pairs: 1,
        })
    }

    #[test]
    fn message_with_memfd_round_trips() {
        let (a, b) = pair();
        let (memfd, backing) = create_region_memfd("transport-test", 1 << 20, false).unwrap();
        let map = Mapping::map(memfd.as_fd(), backing.size as usize).unwrap();
        map.mem().atomic_u64(64).unwrap().store(0xfeed, Ordering::SeqCst);
        let msg = welcome(backing.size);
        send_message(a.as_fd(), &msg, 42, &[memfd.as_fd()]).unwrap();
        let (got, id, fds) = recv_message(b.as_fd(), Some(Duration::from_secs(5))).unwrap();
        assert_eq!((got, id), (msg, 42));
        assert_eq!(fds.len(), 1);
        // Received close-on-exec.
        // SAFETY: plain fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(fds[0].as_raw_fd(), libc::F_GETFD) };
        assert!(flags & libc::FD_CLOEXEC != 0);
        check_region_fd(fds[0].as_fd(), backing.size).unwrap();
        let theirs = Mapping::map(fds[0].as_fd(), backing.size as usize).unwrap();
        assert_eq!(theirs.mem().atomic_u64(64).unwrap().load(Ordering::SeqCst), 0xfeed);
        // And back, without descriptors.
        send_message(b.as_fd(), &Message::Goodbye, 43, &[]).unwrap();
        let (got, id, fds) = recv_message(a.as_fd(), None).unwrap();
        assert_eq!((got, id, fds.len()), (Message::Goodbye, 43, 0));
    }

    #[test]
    fn timeout_and_close() {
        let (a, b) = pair();
        let start = Instant::now();
        assert!(matches!(
            recv_message(b.as_fd(), Some(Duration::from_millis(50))),
            Err(TransportError::Timeout)
        ));
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert!(matches!(recv_message(b.as_fd(), Some(Duration::ZERO)), Err(TransportError::Timeout)));
        drop(a);
        assert!(matches!(recv_message(b.as_fd(), Some(Duration::from_secs(5))), Err(TransportError::Closed)));
        assert!(matches!(send_message(b.as_fd(), &Message::Goodbye, 0, &[]), Err(TransportError::Closed)));
    }

    #[test]
    fn a_zero_timeout_reads_what_is_queued_without_waiting() {
        let (a, b) = pair();
        assert!(matches!(recv_message(b.as_fd(), Some(Duration::ZERO)), Err(TransportError::Timeout)));
        send_message(a.as_fd(), &Message::Goodbye, 7, &[]).unwrap();
        send_message(a.as_fd(), &Message::QueueStopped, 8, &[]).unwrap();
        drop(a);
        // What the peer sent before it closed comes first, then the close.
        let (got, id, _) = recv_message(b.as_fd(), Some(Duration::ZERO)).unwrap();
        assert_eq!((got, id), (Message::Goodbye, 7));
        let (got, id, _) = recv_message(b.as_fd(), Some(Duration::ZERO)).unwrap();
        assert_eq!((got, id), (Message::QueueStopped, 8));
        assert!(matches!(recv_message(b.as_fd(), Some(Duration::ZERO)), Err(TransportError::Closed)));
    }

    #[test]
    fn oversized_and_garbage_datagrams() {
        let (a, b) = pair();
        let big = vec![0u8; MAX_MESSAGE + 1];
        send_datagram(a.as_fd(), &big, &[]).unwrap();
        assert!(matches!(recv_message(b.as_fd(), Some(Duration::from_secs(5))), Err(TransportError::Truncated)));
        send_datagram(a.as_fd(), b"garbage garbage garbage", &[]).unwrap();
        assert!(matches!(
            recv_message(b.as_fd(), Some(Duration::from_secs(5))),
            Err(TransportError::Decode(DecodeError::BadMagic { .. }))
        ));
        // The connection is still usable after both.
        send_message(a.as_fd(), &Message::QueueStop { queue: 0 }, 9, &[]).unwrap();
        assert!(matches!(recv_message(b.as_fd(), None), Ok((Message::QueueStop { .. }, 9, _))));
    }

    #[test]
    fn too_many_descriptors() {
        let (a, b) = pair();
        let five = [a.as_fd(), a.as_fd(), a.as_fd(), a.as_fd(), a.as_fd()];
        assert!(matches!(
            send_message(a.as_fd(), &Message::Goodbye, 0, &five),
            Err(TransportError::TooManyFds { count: 5 })
        ));
        // A peer that sends more anyway: refused, the extra ones never installed.
        let mut buf = [0u8; MAX_MESSAGE];
        let len = encode(&Message::Goodbye, 0, &mut buf).unwrap();
        send_datagram(a.as_fd(), &buf[..len], &five).unwrap();
        assert!(matches!(
            recv_message(b.as_fd(), Some(Duration::from_secs(5))),
            Err(TransportError::ControlTruncated)
        ));
        // Exactly MAX_FDS is fine.
        send_datagram(a.as_fd(), &buf[..len], &five[..4]).unwrap();
        let (_, _, fds) = recv_message(b.as_fd(), Some(Duration::from_secs(5))).unwrap();
        assert_eq!(fds.len(), 4);
    }

    /// A listening seqpacket socket bound at `path`.
    fn listen_at(path: &Path) -> OwnedFd {
        // SAFETY: socket(2) with constant arguments.
        let listener = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)) };
        // SAFETY: sockaddr_un is plain data.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.to_str().unwrap().bytes()) {
            *d = s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: a valid address of `len` bytes.
        assert_eq!(unsafe { libc::bind(listener.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) }, 0);
        // SAFETY: plain call.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4) }, 0);
        listener
    }

    /// A fresh directory for one test, 0755, in a directory that is not world-writable
    /// (the tests' own checks must not trip over `/tmp` itself being sticky).
    struct TestDir(std::path::PathBuf);

    impl TestDir {
        fn new(tag: &str) -> TestDir {
            use std::os::unix::fs::PermissionsExt;
            let dir = std::env::temp_dir().join(format!("shm-transport-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            TestDir(dir)
        }

        fn mkdir(&self, rel: &str, mode: u32, owner: Option<u32>) -> std::path::PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let d = self.0.join(rel);
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            if let Some(uid) = owner {
                std::os::unix::fs::chown(&d, Some(uid), None).unwrap();
            }
            d
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn my_uid() -> u32 {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() }
    }

    /// A uid that is neither root nor the test's (`nobody`).
    const OTHER: u32 = 65534;

    #[test]
    fn a_guest_verifies_its_server_before_sending_anything() {
        let t = TestDir::new("cred");
        let dir = t.mkdir("q", 0o755, None);
        let path = dir.join("sock");
        let listener = listen_at(&path);
        let me = my_uid();
        // Served by the owner of the socket's directory (this test's user): accepted.
        assert!(expected_server_uids(&path, None).unwrap().0.contains(&me));
        let ok = connect_to_proxy(&path, None).unwrap();
        assert_eq!(peer_uid(ok.as_fd()).unwrap(), (std::process::id() as i32, me));
        assert!(connect_to_proxy(&path, Some(me)).is_ok());
        // Another expected uid: refused, and the message says both.
        let err = connect_to_proxy(&path, Some(me + 4242)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConnectError::UntrustedServer { server_uid, .. } if server_uid == me), "{text}");
        assert!(text.contains(&format!("server uid {me}")) && text.contains(&format!("expected uid {}", me + 4242)), "{text}");
        assert!(text.contains("nothing was sent"), "{text}");
        // The server's side of the refused (third) connection: closed, nothing came.
        let accepted: Vec<OwnedFd> = (0..3)
            .map(|_| {
                // SAFETY: accept4(2) without an address buffer; owned right away.
                let c = unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
                assert!(c >= 0, "{}", io::Error::last_os_error());
                // SAFETY: a fresh descriptor.
                unsafe { OwnedFd::from_raw_fd(c) }
            })
            .collect();
        assert!(matches!(recv_message(accepted[2].as_fd(), Some(Duration::from_secs(5))), Err(TransportError::Closed)));
        drop(ok);
        assert!(matches!(connect_to_proxy(&dir.join("none"), None), Err(ConnectError::Io(e)) if e.kind() == io::ErrorKind::NotFound));
        // Not a socket: an error from the walk, nothing connected.
        std::fs::write(dir.join("file"), b"x").unwrap();
        assert!(matches!(connect_to_proxy(&dir.join("file"), None), Err(ConnectError::Io(e)) if e.raw_os_error() == Some(libc::ENOTSOCK)));
        assert_eq!(parse_uid("root"), Some(0));
        assert_eq!(parse_uid("1234"), Some(1234));
        assert_eq!(parse_uid("no-such-user-here"), None);
    }

    /// The squat of the red-team review: in a sticky world-writable directory (as `/tmp`)
    /// another user makes the socket's directory first and serves there. The path does
    /// not vouch for that owner: refused before connecting. A proxy's own directory in a
    /// directory only root writes is vouched for.
    #[test]
    fn a_directory_anyone_could_have_made_does_not_make_its_owner_the_proxy() {
        if my_uid() != 0 {
            eprintln!("skipped: needs root to give directories to another user");
            return;
        }
        let t = TestDir::new("squat");
        t.mkdir("open", 0o1777, None);
        let squatted = t.mkdir("open/socket_0_0", 0o755, Some(OTHER));
        let path = squatted.join("sock");
        let listener = listen_at(&path);
        // SAFETY: plain fcntl on a descriptor we own (non-blocking accept below).
        assert_eq!(unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) }, 0);
        let err = connect_to_proxy(&path, None).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConnectError::UntrustedPath { .. }), "{text}");
        assert!(
            text.contains(&format!(
                "{} belongs to uid {OTHER} and is in {}, which others can write (mode 1777): anyone could have made it",
                squatted.display(),
                t.0.join("open").display()
            )),
            "{text}"
        );
        assert!(text.contains("nothing was sent") && text.contains("proxy_uid="), "{text}");
        // Nothing connected to the impostor.
        // SAFETY: accept4(2) without an address buffer on a non-blocking listener.
        let c = unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
        assert_eq!((c, io::Error::last_os_error().raw_os_error()), (-1, Some(libc::EAGAIN)));
        // Named explicitly, the same server is checked by its uid alone (here: root, not
        // 65534, so refused by SO_PEERCRED after connecting).
        assert!(matches!(connect_to_proxy(&path, Some(OTHER)), Err(ConnectError::UntrustedServer { server_uid: 0, .. })));
        assert!(connect_to_proxy(&path, Some(0)).is_ok());
        // The same user's directory where only root can make one: vouched for.
        let vouched = t.mkdir("proxy", 0o710, Some(OTHER));
        let path = vouched.join("sock");
        let _l = listen_at(&path);
        assert_eq!(expected_server_uids(&path, None).unwrap().0, vec![0, OTHER]);
        assert!(connect_to_proxy(&path, None).is_ok(), "root serves it");
        // A root-owned directory in the sticky one: its owner is root, who made it.
        let rooted = t.mkdir("open/root_made", 0o755, None);
        let _l2 = listen_at(&rooted.join("sock"));
        assert!(connect_to_proxy(&rooted.join("sock"), None).is_ok());
    }

    #[test]
    fn every_step_of_the_path_must_be_root_or_the_proxys() {
        let t = TestDir::new("steps");
        // A directory its group or others can write, not sticky: refused whoever owns it.
        let open = t.mkdir("open", 0o770, None);
        let _l = listen_at(&open.join("sock"));
        let text = connect_to_proxy(&open.join("sock"), None).unwrap_err().to_string();
        assert!(text.contains(&format!("{} is writable by its group or others (mode 0770) and not sticky", open.display())), "{text}");
        // Also when it is only a step on the way.
        let below = t.mkdir("open/below", 0o755, None);
        let _l2 = listen_at(&below.join("sock"));
        let text = connect_to_proxy(&below.join("sock"), None).unwrap_err().to_string();
        assert!(text.contains("(mode 0770) and not sticky"), "{text}");
        if my_uid() != 0 {
            return;
        }
        // A step of a third user (neither root nor the socket directory's owner) could be
        // replaced by that user.
        let theirs = t.mkdir("theirs", 0o755, Some(OTHER));
        let inner = t.mkdir("theirs/q", 0o755, None);
        let _l3 = listen_at(&inner.join("sock"));
        let text = connect_to_proxy(&inner.join("sock"), None).unwrap_err().to_string();
        assert!(text.contains(&format!("{} belongs to uid {OTHER}: every directory and link", theirs.display())), "{text}");
        // Links are steps too: one of another user is refused, root's is followed.
        let target = t.mkdir("target", 0o755, None);
        let _l4 = listen_at(&target.join("sock"));
        let planted = t.0.join("planted");
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        assert!(connect_to_proxy(&planted.join("sock"), None).is_ok(), "a link of root's is followed");
        std::os::unix::fs::lchown(&planted, Some(OTHER), None).unwrap();
        let text = connect_to_proxy(&planted.join("sock"), None).unwrap_err().to_string();
        assert!(text.contains(&format!("{} belongs to uid {OTHER}", planted.display())), "{text}");
        // The socket itself as a link: walked like any other link.
        let sock_link = target.join("alias");
        std::os::unix::fs::symlink("sock", &sock_link).unwrap();
        assert!(connect_to_proxy(&sock_link, None).is_ok());
        std::os::unix::fs::lchown(&sock_link, Some(OTHER), None).unwrap();
        assert!(matches!(connect_to_proxy(&sock_link, None), Err(ConnectError::UntrustedPath { .. })));
        // Relative paths and `..` are walked as the kernel would.
        let rel = format!("{}/theirs/../target/./sock", t.0.display());
        assert!(matches!(connect_to_proxy(Path::new(&rel), None), Err(ConnectError::UntrustedPath { .. })), "the walk passes theirs");
        let rel = format!("{}/target/../target/sock", t.0.display());
        assert!(connect_to_proxy(Path::new(&rel), None).is_ok());
    }

    #[test]
    fn every_descriptor_a_peer_can_attach_is_handed_over() {
        let (a, b) = pair();
        let mut buf = [0u8; MAX_MESSAGE];
        let len = encode(&Message::QueueStop { queue: 0 }, 3, &mut buf).unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..SCM_MAX_FD).map(|_| a.as_fd()).collect();
        send_datagram(a.as_fd(), &buf[..len], &many).unwrap();
        let got = recv_message_and_fds(b.as_fd(), Some(Duration::from_secs(5)));
        assert!(matches!(got.message, Ok((Message::QueueStop { .. }, 3))));
        assert_eq!(got.fds.len(), SCM_MAX_FD, "none released inside recvmsg");
        // Garbage with descriptors: the error and the descriptors both come back.
        send_datagram(a.as_fd(), b"garbage garbage garbage", &many[..7]).unwrap();
        let got = recv_message_and_fds(b.as_fd(), Some(Duration::from_secs(5)));
        assert!(matches!(got.message, Err(TransportError::Decode(_))));
        assert_eq!(got.fds.len(), 7);
        // The guests' receive still refuses more than MAX_FDS.
        send_datagram(a.as_fd(), &buf[..len], &many[..MAX_FDS + 1]).unwrap();
        assert!(matches!(recv_message(b.as_fd(), Some(Duration::from_secs(5))), Err(TransportError::ControlTruncated)));
    }

    #[test]
    fn a_refusal_sent_before_a_close_with_unread_data_is_still_read() {
        let (a, b) = pair();
        // The guest's Hello stays unread; the proxy answers and closes.
        send_message(a.as_fd(), &Message::Goodbye, 1, &[]).unwrap();
        send_message(b.as_fd(), &Message::refuse(RefuseCode::NotAllowed, "uid 1000 is not allowed"), 0, &[]).unwrap();
        drop(b);
        let got = recv_message(a.as_fd(), Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(got.0, Message::Refuse { code: RefuseCode::NotAllowed, .. }), "{:?}", got.0);
        assert!(matches!(recv_message(a.as_fd(), Some(Duration::from_secs(5))), Err(TransportError::Closed)));
    }

    fn set_pass_rights(fd: BorrowedFd<'_>, on: bool) {
        let v: libc::c_int = on as libc::c_int;
        // SAFETY: setsockopt with an int of the stated length.
        let rc = unsafe {
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_PASSRIGHTS, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as libc::socklen_t)
        };
        assert_eq!(rc, 0, "SO_PASSRIGHTS (Linux 6.16+): {}", io::Error::last_os_error());
    }

    /// A proxy whose connection refuses descriptors: the guest's Hello with its memfd
    /// fails at the kernel (`EPERM`, nothing queued), goes again without, and once the
    /// proxy lets descriptors through and answers `RegionWanted`, goes a third time
    /// with the memfd, which arrives.
    #[test]
    fn a_hello_whose_descriptor_is_refused_waits_until_the_proxy_asks_for_it() {
        let (guest, proxy) = pair();
        set_pass_rights(proxy.as_fd(), false);
        let (memfd, _) = create_region_memfd("transport-passrights", 1 << 20, false).unwrap();
        // Refused by the kernel: the sender sees EPERM.
        assert!(matches!(
            send_message(guest.as_fd(), &Message::Goodbye, 0, &[memfd.as_fd()]),
            Err(TransportError::Io(e)) if e.raw_os_error() == Some(libc::EPERM)
        ));
        let hello = Hello {
            version_min: PROTOCOL_VERSION,
            version_max: PROTOCOL_VERSION,
            flags: crate::proto::HELLO_FLAG_REATTACH,
            region_size: 1 << 20,
            rx_ring_entries: 0,
            tx_ring_entries: 0,
            app_name: "t".into(),
            heap_bytes: 0,
        };
        let server = std::thread::spawn(move || {
            let first = recv_message_and_fds(proxy.as_fd(), Some(Duration::from_secs(5)));
            assert!(matches!(first.message, Ok((Message::Hello(_), _))), "{:?}", first.message);
            assert!(first.fds.is_empty(), "nothing got through before it was asked for");
            set_pass_rights(proxy.as_fd(), true);
            send_message(proxy.as_fd(), &Message::RegionWanted, 1, &[]).unwrap();
            let second = recv_message_and_fds(proxy.as_fd(), Some(Duration::from_secs(5)));
            set_pass_rights(proxy.as_fd(), false);
            assert!(matches!(second.message, Ok((Message::Hello(_), _))), "{:?}", second.message);
            assert_eq!(second.fds.len(), 1);
            send_message(proxy.as_fd(), &welcome(1 << 20), 1, &[]).unwrap();
            // The goodbye below carries nothing, and a descriptor now is refused again.
            recv_message(proxy.as_fd(), Some(Duration::from_secs(5))).unwrap();
        });
        let (w, fds) = handshake(guest.as_fd(), &hello, &[memfd.as_fd()], Duration::from_secs(5)).unwrap();
        assert_eq!((w.region_size, fds.len()), (1 << 20, 0));
        assert!(matches!(
            send_message(guest.as_fd(), &Message::Goodbye, 0, &[memfd.as_fd()]),
            Err(TransportError::Io(e)) if e.raw_os_error() == Some(libc::EPERM)
        ));
        send_message(guest.as_fd(), &Message::Goodbye, 0, &[]).unwrap();
        server.join().unwrap();
        // An unasked-for RegionWanted (the Hello went with its descriptor) is unexpected.
        let (guest, proxy) = pair();
        let server = std::thread::spawn(move || {
            let got = recv_message_and_fds(proxy.as_fd(), Some(Duration::from_secs(5)));
            assert_eq!(got.fds.len(), 1);
            send_message(proxy.as_fd(), &Message::RegionWanted, 1, &[]).unwrap();
        });
        let err = handshake(guest.as_fd(), &hello, &[memfd.as_fd()], Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, HandshakeError::Unexpected(MessageKind::RegionWanted)), "{err:?}");
        server.join().unwrap();
    }

    #[test]
    fn errors_display() {
        for e in [
            TransportError::Io(io::Error::from_raw_os_error(libc::EBADF)),
            TransportError::Closed,
            TransportError::Timeout,
            TransportError::Truncated,
            TransportError::ControlTruncated,
            TransportError::TooManyFds { count: 5 },
            TransportError::Encode(EncodeError::StringHasNul { field: "x" }),
            TransportError::Decode(DecodeError::TooShort { len: 0 }),
        ] {
            assert!(!e.to_string().is_empty());
        }
    }
}
