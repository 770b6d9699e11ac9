//! The admin socket (`--ctl PATH`): the commands of stdin for a proxy that runs as a
//! service, sent by `dpdk-io-proxy-ctl` (protocol: `ctl_proto.rs`).
//!
//! It is an attack surface like the guests' sockets: only root, the proxy's own user
//! and the configured owner get an answer (`SO_PEERCRED`, checked on accept besides the
//! file's owner and mode); a command line is at most `MAX_REQUEST` bytes; every
//! descriptor is non-blocking and served from the control thread's poll loop, at most
//! `MAX_CONNS` at a time, each for at most `CONN_DEADLINE`: a client that does not send
//! or does not read never blocks the control thread. One command per connection.
//!
//! No descriptor comes in: the listener has `SO_PASSRIGHTS` off (a peer's send with one
//! fails with `EPERM`), so closing a connection, a refused peer's too, releases nothing
//! that peer chose (a TCP socket lingering on close, a FUSE file); on a kernel without
//! that switch a connection is closed by the reaper (`PeerFd`), never here.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::access::Access;
use crate::ctl_proto::MAX_REQUEST;
use crate::os;
use crate::sockpath::{ProxyUser, SocketFile, SocketKind};
use crate::reaper::PeerFd;
use crate::{log_info, log_warn};

/// Connections served at once; more are closed unanswered.
const MAX_CONNS: usize = 8;
/// A connection must have sent its command and read the answer within this time.
const CONN_DEADLINE: Duration = Duration::from_secs(5);
/// At most one warning about refused peers this often.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Where and how the admin socket is made.
#[derive(Debug, Clone)]
pub struct AdminSpec {
    pub path: PathBuf,
    /// Besides root (and the proxy's own user): the user who may use it; it owns the file.
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub mode: u32,
}

struct AdminConn {
    fd: PeerFd,
    since: Instant,
    input: Vec<u8>,
    /// The answer and how much of it is sent; None while the command is being read.
    output: Option<(Vec<u8>, usize)>,
}

/// The listening admin socket and its connections.
pub struct Admin {
    /// Closed by the reaper: its backlog may hold connections with descriptors (a kernel
    /// without `SO_PASSRIGHTS`).
    listener: PeerFd,
    /// Removed at exit only if it is still the file this proxy made.
    file: SocketFile,
    allowed: Vec<u32>,
    conns: Vec<AdminConn>,
    refused: u64,
    last_refusal_log: Option<Instant>,
}

impl Admin {
    /// Makes the socket as the guests' sockets are made ([`SocketFile::create_kind`]):
    /// its path walked from `/` without following links, every step owned by root or the
    /// proxy's user and writable by nobody else unless sticky; missing directories made
    /// for the proxy's user; the socket bound, listening and given its owner, group and
    /// mode in a private directory, then moved into place. A socket file left behind by
    /// a proxy that is gone is replaced, one a live proxy listens on is an error,
    /// anything else at the path is an error.
    pub fn bind(spec: &AdminSpec, who: ProxyUser) -> Result<Admin, String> {
        let shown = spec.path.display();
        let access = Access { owner: spec.owner, group: spec.group, mode: spec.mode & 0o777, allow_uids: vec![], allow_gids: vec![] };
        let (file, listener) = SocketFile::create_kind(&spec.path, &access, who, SocketKind::Stream { backlog: MAX_CONNS as i32 })
            .map_err(|e| format!("--ctl {shown}: {e}"))?;
        // Connections take no descriptors (inherited from the listener, even before
        // they are accepted). A kernel before 6.16 has no such switch: `PeerFd` below.
        let _ = os::set_pass_rights(listener.as_fd(), false);
        let euid = os::effective_uid();
        log_info!("admin socket {shown} (mode {:04o}; dpdk-io-proxy-ctl --ctl {shown} <command>)", spec.mode & 0o777);
        Ok(Admin {
            listener: PeerFd::new(listener, euid),
            file,
            allowed: [0, euid].into_iter().chain(spec.owner).collect(),
            conns: Vec::new(),
            refused: 0,
            last_refusal_log: None,
        })
    }

    /// Adds what to poll: the listener, then each connection (reading or writing).
    pub fn poll_fds(&self, fds: &mut Vec<libc::pollfd>) {
        fds.push(libc::pollfd { fd: self.listener.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 });
        for c in &self.conns {
            let events = if c.output.is_some() { libc::POLLOUT } else { libc::POLLIN };
            fds.push(libc::pollfd { fd: c.fd.as_fd().as_raw_fd(), events, revents: 0 });
        }
    }

    /// Serves what `poll` reported in `fds` (the entries `poll_fds` added, in order):
    /// accepts, reads command lines, runs each complete one through `execute` (which
    /// returns the answer), writes answers, and drops connections that are done or
    /// past their deadline.
    pub fn service(&mut self, fds: &[libc::pollfd], mut execute: impl FnMut(&str) -> String) {
        let now = Instant::now();
        for (c, pfd) in self.conns.iter_mut().zip(fds.iter().skip(1)) {
            if pfd.revents != 0 {
                serve_conn(c, &mut execute);
            }
        }
        self.conns.retain(|c| match &c.output {
            Some((out, sent)) if *sent >= out.len() => false,
            _ => now.duration_since(c.since) < CONN_DEADLINE,
        });
        if fds.first().is_some_and(|p| p.revents != 0) {
            self.accept(now);
        }
    }

    fn accept(&mut self, now: Instant) {
        // A bounded number per round: the poll loop comes back for the rest.
        for _ in 0..MAX_CONNS {
            let fd = match os::accept(self.listener.as_fd()) {
                Ok(fd) => fd,
                Err(_) => return,
            };
            let peer = os::peer_credentials(fd.as_fd());
            // Dropped here when refused: closed by the reaper if it may hold descriptors.
            let fd = PeerFd::connection(fd, peer.as_ref().map_or(u32::MAX, |p| p.uid));
            let admitted = peer.as_ref().is_some_and(|p| self.allowed.contains(&p.uid));
            if !admitted || self.conns.len() >= MAX_CONNS {
                self.refused += 1;
                if self.last_refusal_log.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_PERIOD) {
                    self.last_refusal_log = Some(now);
                    let who = peer.map_or("an unknown peer".to_string(), |p| format!("pid {} uid {}", p.pid, p.uid));
                    let why = if admitted { "too many admin connections" } else { "not an allowed user" };
                    log_warn!("admin socket: refused {who} ({why}; {} refused so far)", self.refused);
                }
                continue;
            }
            self.conns.push(AdminConn { fd, since: now, input: Vec::new(), output: None });
        }
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.file.remove();
    }
}

/// Reads what arrived (up to the first newline, `MAX_REQUEST` at most), runs the
/// command once it is complete, and sends what the socket takes of the answer.
fn serve_conn(c: &mut AdminConn, execute: &mut impl FnMut(&str) -> String) {
    if c.output.is_none() {
        let mut buf = [0u8; 1024];
        let mut eof = false;
        loop {
            match os::read(c.fd.as_fd(), &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.input.extend_from_slice(&buf[..n]);
                    if c.input.contains(&b'\n') || c.input.len() > MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let line_end = c.input.iter().position(|&b| b == b'\n');
        let answer = match line_end {
            Some(end) if end < MAX_REQUEST => match std::str::from_utf8(&c.input[..end]) {
                Ok(line) => execute(line),
                Err(_) => "error: the command is not UTF-8\n".to_string(),
            },
            _ if c.input.len() >= MAX_REQUEST => format!("error: a command is at most {MAX_REQUEST} bytes\n"),
            // A last line without its newline, at the end of input.
            None if eof && !c.input.is_empty() => match std::str::from_utf8(&c.input) {
                Ok(line) => execute(line),
                Err(_) => "error: the command is not UTF-8\n".to_string(),
            },
            None if eof => "error: no command\n".to_string(),
            _ => return,
        };
        c.input = Vec::new();
        c.output = Some((answer.into_bytes(), 0));
    }
    if let Some((out, sent)) = &mut c.output {
        while *sent < out.len() {
            // SAFETY: sends from a live buffer; MSG_NOSIGNAL: a gone peer is an error,
            // not a SIGPIPE; MSG_DONTWAIT: never blocks.
            let n = unsafe {
                libc::send(
                    c.fd.as_fd().as_raw_fd(),
                    out[*sent..].as_ptr().cast(),
                    out.len() - *sent,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                *sent += n as usize;
            } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
                return;
            } else {
                // The peer is gone: done.
                *sent = out.len();
            }
        }
    }
}

/// A new non-blocking, close-on-exec unix stream socket.
#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("admin-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    /// The proxy as these tests run it: it keeps its user.
    fn me() -> ProxyUser {
        ProxyUser { runs_as: os::effective_uid() }
    }

    /// Runs the admin's poll loop on this thread until `done` returns true.
    fn pump(admin: &mut Admin, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() && Instant::now() < deadline {
            let mut fds = Vec::new();
            admin.poll_fds(&mut fds);
            os::poll(&mut fds, 10).unwrap();
            admin.service(&fds, |line| format!("ran '{line}'\n"));
        }
    }

    #[test]
    fn one_command_per_connection_and_bounded_lines() {
        let dir = scratch("cmd");
        let path = dir.join("ctl.sock");
        let mut admin = Admin::bind(&AdminSpec { path: path.clone(), owner: None, group: None, mode: 0o600 }, me()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        // A second proxy on the same path is refused while this one lives.
        assert!(Admin::bind(&AdminSpec { path: path.clone(), owner: None, group: None, mode: 0o600 }, me())
            .err()
            .unwrap()
            .contains("is served by another process"));

        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut s = UnixStream::connect(&path).unwrap();
                s.write_all(b"show sockets\nquit\n").unwrap();
                let mut answer = String::new();
                s.read_to_string(&mut answer).unwrap();
                let mut long = UnixStream::connect(&path).unwrap();
                // Never a newline: refused once the limit is passed.
                let _ = long.write_all(&vec![b'x'; MAX_REQUEST + 10]);
                let mut refusal = String::new();
                long.read_to_string(&mut refusal).unwrap();
                (answer, refusal)
            }
        });
        pump(&mut admin, || client.is_finished());
        let (answer, refusal) = client.join().unwrap();
        assert_eq!(answer, "ran 'show sockets'\n");
        assert_eq!(refusal, format!("error: a command is at most {MAX_REQUEST} bytes\n"));
        drop(admin);
        assert!(!path.exists(), "the socket file is removed at exit");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_silent_client_does_not_block_and_is_dropped() {
        let dir = scratch("silent");
        let path = dir.join("ctl.sock");
        let mut admin = Admin::bind(&AdminSpec { path: path.clone(), owner: None, group: None, mode: 0o600 }, me()).unwrap();
        let _silent = UnixStream::connect(&path).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while admin.conns.is_empty() && Instant::now() < deadline {
            let mut fds = Vec::new();
            admin.poll_fds(&mut fds);
            os::poll(&mut fds, 10).unwrap();
            let start = Instant::now();
            admin.service(&fds, |_| unreachable!("no command was sent"));
            assert!(start.elapsed() < Duration::from_secs(1), "serving a silent client returns at once");
        }
        assert_eq!(admin.conns.len(), 1);
        admin.conns[0].since = Instant::now() - CONN_DEADLINE;
        admin.service(&[], |_| String::new());
        assert!(admin.conns.is_empty(), "dropped at its deadline");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Nobody can pass the admin socket a descriptor: closing a connection (a refused
    /// peer's is closed on the control thread) then releases nothing a peer chose.
    #[test]
    fn the_admin_socket_takes_no_descriptors() {
        use shm_contract::proto::transport::send_message;
        let dir = scratch("nofds");
        let path = dir.join("ctl.sock");
        let admin = Admin::bind(&AdminSpec { path: path.clone(), owner: None, group: None, mode: 0o600 }, me()).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
        // Before the proxy accepts: the connection has its listener's setting already.
        let err = send_message(client.as_fd(), &shm_contract::Message::Goodbye, 0, &[pipe_r.as_fd()]).unwrap_err();
        assert!(err.to_string().contains("os error 1)"), "refused by the kernel (EPERM): {err}");
        drop(admin);
        let _ = fs::remove_dir_all(&dir);
    }

    /// The admin socket's path is checked as a guest socket's: a directory another user
    /// owns (who could swap the socket or put a link for root's chmod there) is refused,
    /// and nothing is made in it. (The tests run as root: uid 65534 is `nobody`.)
    #[test]
    fn a_directory_another_user_owns_is_refused() {
        let dir = scratch("theirs");
        let theirs = dir.join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let path = theirs.join("ctl.sock");
        let e = Admin::bind(&AdminSpec { path: path.clone(), owner: None, group: None, mode: 0o600 }, me()).err().unwrap();
        assert!(e.starts_with(&format!("--ctl {}", path.display())), "{e}");
        assert!(e.contains("belongs to uid 65534"), "{e}");
        assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0, "nothing made there");
        // A missing directory is made search-only for others (guest sockets may go there too).
        let made = dir.join("made");
        let admin = Admin::bind(&AdminSpec { path: made.join("ctl.sock"), owner: None, group: None, mode: 0o600 }, me()).unwrap();
        assert_eq!(fs::metadata(&made).unwrap().permissions().mode() & 0o7777, 0o711);
        assert_eq!(fs::metadata(made.join("ctl.sock")).unwrap().permissions().mode() & 0o777, 0o600);
        drop(admin);
        assert!(!made.exists(), "the socket and the directory made for it are removed at exit");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_other_files_are_not() {
        let dir = scratch("stale");
        let path = dir.join("ctl.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let admin = Admin::bind(&AdminSpec { path: path.clone(), owner: None, group: None, mode: 0o600 }, me()).unwrap();
        drop(admin);
        fs::write(&path, b"not a socket").unwrap();
        let e = Admin::bind(&AdminSpec { path: path.clone(), owner: None, group: None, mode: 0o600 }, me()).err().unwrap();
        assert!(e.contains("exists and is not a socket"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"not a socket");
        let _ = fs::remove_dir_all(&dir);
    }
}
