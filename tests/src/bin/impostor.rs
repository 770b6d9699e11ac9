//! An impostor server for the end-to-end tests (tests/tests/access.rs): run as an
//! unprivileged user who can write a socket's directory, it removes whatever is at the
//! socket path, binds its own seqpacket socket there (mode 0777) and listens. For every
//! connection it records exactly what the guest sent before closing: bytes and file
//! descriptors. A guest that verifies its server sends nothing, so every line reads
//! `0 bytes, 0 fds`.
//!
//! Usage: `impostor <socket path>`; prints `impostor: listening ...` once ready, then one
//! `impostor: connection N: B bytes, F fds, <how it ended>` line per connection.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// How long one connection may stay silent before the impostor gives up on it.
const SILENCE_MS: i32 = 10_000;

fn check(rc: libc::c_int, what: &str) -> libc::c_int {
    if rc < 0 {
        eprintln!("impostor: {what}: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    rc
}

fn main() {
    let path = PathBuf::from(std::env::args().nth(1).expect("usage: impostor <socket path>"));
    let _ = std::fs::remove_file(&path);
    // SAFETY: socket(2) with constant arguments; owned right away.
    let listener = unsafe { OwnedFd::from_raw_fd(check(libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0), "socket")) };
    // SAFETY: sockaddr_un is plain data; zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_encoded_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a valid sockaddr_un of `len` bytes.
    check(unsafe { libc::bind(listener.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) }, "bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // SAFETY: plain call.
    check(unsafe { libc::listen(listener.as_raw_fd(), 8) }, "listen");
    // SAFETY: geteuid cannot fail.
    println!("impostor: listening on {} as uid {}", path.display(), unsafe { libc::geteuid() });
    let _ = std::io::stdout().flush();
    for n in 1.. {
        // SAFETY: accept4(2) without an address buffer; owned right away.
        let conn = unsafe {
            OwnedFd::from_raw_fd(check(
                libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC),
                "accept",
            ))
        };
        let (mut bytes, mut fds) = (0usize, 0usize);
        let ended = loop {
            let mut pfd = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, SILENCE_MS) } == 0 {
                break "silent";
            }
            let mut buf = [0u8; 4096];
            let mut cmsg = [0u64; 32];
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            // SAFETY: msghdr is plain data; zero is valid.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = &mut iov;
            hdr.msg_iovlen = 1;
            hdr.msg_control = cmsg.as_mut_ptr().cast();
            hdr.msg_controllen = std::mem::size_of_val(&cmsg) as _;
            // SAFETY: hdr points at live buffers of the sizes it states.
            let rc = unsafe { libc::recvmsg(conn.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC) };
            if rc < 0 {
                break "error";
            }
            // SAFETY: walking the control buffer recvmsg filled, with the libc macros.
            let mut c = unsafe { libc::CMSG_FIRSTHDR(&hdr) };
            while !c.is_null() {
                // SAFETY: a header inside the filled buffer.
                let (level, kind, clen) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len as usize) };
                if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
                    // SAFETY: CMSG_LEN is arithmetic.
                    let count = (clen - unsafe { libc::CMSG_LEN(0) } as usize) / std::mem::size_of::<libc::c_int>();
                    fds += count;
                    for i in 0..count {
                        // SAFETY: the kernel wrote `count` descriptors after the header.
                        let fd = unsafe { libc::CMSG_DATA(c).cast::<libc::c_int>().add(i).read_unaligned() };
                        // SAFETY: installed for us; closed here.
                        drop(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
                // SAFETY: as above; null past the end.
                c = unsafe { libc::CMSG_NXTHDR(&hdr, c) };
            }
            if rc == 0 {
                break "closed by the guest";
            }
            bytes += rc as usize;
        };
        println!("impostor: connection {n}: {bytes} bytes, {fds} fds, {ended}");
        let _ = std::io::stdout().flush();
    }
}
