//! Rx wake-ups: a guest sleeps while its rx ring is empty instead of polling it.
//!
//! The proxy makes a datagram socket pair for every queue started with
//! [`QUEUE_FLAG_RX_WAKEUP`](crate::proto::QUEUE_FLAG_RX_WAKEUP) ([`Waker::pair`]): it
//! keeps one end to signal on and hands the guest the other with `QueueStarted`. The
//! guest never chooses what the proxy signals on: a guest that could pass any socket
//! could make the proxy write into its own control connection or hold a socket whose
//! last close blocks. The proxy's end is shut down for reading at once, so nothing (no
//! datagram, no descriptor) can ever be queued to it, and closing it cannot release
//! anything a guest sent. A socket rather than an eventfd because the two ends are
//! different open files: the proxy sends with `MSG_DONTWAIT`, so nothing the guest
//! does to its end (clearing `O_NONBLOCK`, letting datagrams pile up) can make the
//! proxy's data loop block. A full queue just means a wake-up is already pending.
//!
//! The guest waits on a [`WakeListener`]: an epoll descriptor that stays the same for
//! the guest's whole life (an application registers it once, in its own epoll or in
//! DPDK's rx interrupt handle), watching the end the proxy handed over at the latest
//! queue start ([`WakeListener::attach`] checks it is a unix datagram socket) and a
//! private eventfd the guest can wake itself with.
//!
//! The flag is the status block's `rx_wakeup_requested`, in a cache line only the
//! guest writes (except for the proxy's one store that consumes a request):
//!
//! * guest, to sleep: [`arm`] (flag = 1, full fence), then look at the rx ring once
//!   more; if it has descriptors, [`disarm`] and go on; otherwise wait on the
//!   listener, then [`WakeListener::drain`] and [`disarm`].
//! * proxy, after publishing rx descriptors: [`take_request`] (full fence, then the
//!   flag); if it was set, it is cleared and one datagram is sent ([`Waker::wake`]).
//!
//! No wake-up is lost: each side stores (flag, producer index), fences, and loads
//! the other's; with both fences `SeqCst`, at least one side sees the other's
//! store, so either the guest sees the descriptors and does not sleep, or the proxy
//! sees the request and signals (model-checked below with loom). The proxy pays
//! the fence only for queues started with wake-ups, and a syscall only when the
//! guest is asleep, that is, when it is idle.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::sync::{fence, AtomicU32};

/// Guest: asks to be woken at the next rx descriptor. Follow it with one more look
/// at the rx ring before sleeping.
#[inline]
pub fn arm(flag: &AtomicU32) {
    flag.store(1, Ordering::Relaxed);
    fence(Ordering::SeqCst);
}

/// Guest: no wake-up wanted (it is awake and polling).
#[inline]
pub fn disarm(flag: &AtomicU32) {
    flag.store(0, Ordering::Relaxed);
}

/// Proxy, after publishing rx descriptors: whether the guest asked to be woken.
/// A request is consumed (the flag cleared) by the answer `true`.
#[inline]
pub fn take_request(flag: &AtomicU32) -> bool {
    fence(Ordering::SeqCst);
    // A plain load first: the line stays shared while the guest does not sleep.
    if flag.load(Ordering::Relaxed) == 0 {
        return false;
    }
    flag.store(0, Ordering::Relaxed);
    true
}

/// An `AF_UNIX` `SOCK_DGRAM` socket pair, non-blocking and close-on-exec.
fn dgram_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds` on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Datagrams one `recvmmsg` call reads while draining a wake-up socket. The proxy sends
/// at most one per request, so one call empties the socket almost always.
const DRAIN_BATCH: usize = 8;

/// Reads (and discards) every pending datagram on a wake-up socket, non-blocking: one
/// `recvmmsg` per [`DRAIN_BATCH`] datagrams, and none after a call that found fewer (a
/// wait pays one system call here, not one per datagram and one more for `EAGAIN`).
fn drain_socket(listen: BorrowedFd<'_>) -> usize {
    let mut n = 0;
    loop {
        // No buffers: a datagram is consumed whole whatever its length (MSG_TRUNC).
        // SAFETY: mmsghdr is plain old data; all-zero is a header with no name, no
        // buffers and no control data.
        let mut msgs: [libc::mmsghdr; DRAIN_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: recvmmsg into DRAIN_BATCH headers that point at nothing, on a
        // descriptor we borrow; MSG_DONTWAIT: never blocks, whatever the file's flags.
        let rc = unsafe {
            libc::recvmmsg(listen.as_raw_fd(), msgs.as_mut_ptr(), DRAIN_BATCH as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return n;
        }
        n += rc as usize;
        if (rc as usize) < DRAIN_BATCH {
            return n;
        }
    }
}

fn send_wakeup(fd: BorrowedFd<'_>) -> bool {
    let one = 1u64.to_ne_bytes();
    // SAFETY: send of an 8-byte buffer; MSG_DONTWAIT: never blocks, whatever the
    // file's flags; MSG_NOSIGNAL: a closed peer is an error, not a SIGPIPE.
    let rc = unsafe {
        libc::send(fd.as_raw_fd(), one.as_ptr().cast(), one.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    rc == one.len() as isize
}

fn sock_opt_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into an int of the stated length, on a borrowed descriptor.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Whether `fd` is what a wake-up end must be: an `AF_UNIX` `SOCK_DGRAM` socket.
/// (`getsockopt` answers `ENOTSOCK` for anything else without touching the file.)
pub fn check_wake_socket(fd: BorrowedFd<'_>) -> Result<(), String> {
    let kind = sock_opt_int(fd, libc::SO_TYPE).map_err(|e| format!("the wake-up descriptor is not a socket ({e})"))?;
    let domain = sock_opt_int(fd, libc::SO_DOMAIN).map_err(|e| format!("the wake-up socket: SO_DOMAIN: {e}"))?;
    if kind != libc::SOCK_DGRAM || domain != libc::AF_UNIX {
        return Err(format!("the wake-up socket is of domain {domain} type {kind}, not a unix datagram socket"));
    }
    Ok(())
}

/// The proxy's end of a queue's wake-up pair.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A fresh pair: the proxy's end, and the guest's end to send with
    /// `QueueStarted`. The proxy's end is shut down for reading, so the guest can
    /// never queue a datagram or a descriptor to it (its sends fail with `EPIPE`);
    /// dropping it therefore never releases anything the guest chose.
    pub fn pair() -> io::Result<(Waker, OwnedFd)> {
        let (ours, guests) = dgram_pair()?;
        // SAFETY: shutdown on a descriptor we own.
        if unsafe { libc::shutdown(ours.as_raw_fd(), libc::SHUT_RD) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((Waker { fd: ours }, guests))
    }

    /// Sends one wake-up; false if it could not be queued (the guest's queue is
    /// full, so one is pending anyway, or the guest closed its end).
    pub fn wake(&self) -> bool {
        send_wakeup(self.fd.as_fd())
    }
}

/// What a guest waits on: one epoll descriptor for its whole life, watching the
/// wake-up end of the current queue start (or the ends of several queue pairs one
/// receive queue reads, see [`attach_also`](WakeListener::attach_also)) and a private
/// eventfd for waking itself.
#[derive(Debug)]
pub struct WakeListener {
    epoll: OwnedFd,
    self_wake: OwnedFd,
    /// Set after each write to `self_wake`: [`drain`](WakeListener::drain) reads the
    /// eventfd only then, so a wait woken by the proxy pays no read of it.
    self_woken: std::sync::atomic::AtomicBool,
    /// The ends the proxy handed over with the latest `QueueStarted`(s).
    current: Vec<OwnedFd>,
}

fn epoll_ctl(epoll: BorrowedFd<'_>, op: libc::c_int, fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd.as_raw_fd() as u64 };
    // SAFETY: epoll_ctl with a valid event struct, on descriptors we borrow.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl WakeListener {
    /// A listener with no wake-up end yet (readable only by [`wake_self`](Self::wake_self)).
    pub fn new() -> io::Result<WakeListener> {
        // SAFETY: plain syscalls; each result is checked before it is owned.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: as above.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        let self_wake = unsafe { OwnedFd::from_raw_fd(efd) };
        epoll_ctl(epoll.as_fd(), libc::EPOLL_CTL_ADD, self_wake.as_fd())?;
        Ok(WakeListener { epoll, self_wake, self_woken: false.into(), current: Vec::new() })
    }

    /// The descriptor to wait on (readable once woken); the same for the listener's life.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    /// Takes the wake-up end the proxy sent with `QueueStarted` in place of the
    /// previous one. It must be a unix datagram socket ([`check_wake_socket`]);
    /// anything else is refused and closed.
    pub fn attach(&mut self, end: OwnedFd) -> Result<(), String> {
        check_wake_socket(end.as_fd())?;
        self.detach();
        self.watch(end)
    }

    /// Takes one more wake-up end besides those attached (checked as in
    /// [`attach`](Self::attach)): for a receive queue that also reads the rings of other
    /// queue pairs, each started with wake-ups of its own.
    pub fn attach_also(&mut self, end: OwnedFd) -> Result<(), String> {
        check_wake_socket(end.as_fd())?;
        self.watch(end)
    }

    fn watch(&mut self, end: OwnedFd) -> Result<(), String> {
        // Ours to read without ever blocking, whatever flags it came with.
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(end.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        epoll_ctl(self.epoll.as_fd(), libc::EPOLL_CTL_ADD, end.as_fd()).map_err(|e| format!("epoll_ctl: {e}"))?;
        self.current.push(end);
        Ok(())
    }

    /// Forgets the current wake-up ends (the queue stopped: no proxy signals on them).
    pub fn detach(&mut self) {
        for old in self.current.drain(..) {
            let _ = epoll_ctl(self.epoll.as_fd(), libc::EPOLL_CTL_DEL, old.as_fd());
        }
    }

    /// Whether an end from the proxy is attached.
    pub fn is_attached(&self) -> bool {
        !self.current.is_empty()
    }

    /// Reads every pending wake-up (the proxy's and our own); returns how many came
    /// from the proxy.
    pub fn drain(&self) -> usize {
        // A write not yet flagged is read at the next drain (its wait ends at once, one
        // spurious turn); the flag is cleared before the read, so no flagged write is
        // left unread.
        if self.self_woken.swap(false, Ordering::Acquire) {
            let mut counter = [0u8; 8];
            // SAFETY: read of 8 bytes from our non-blocking eventfd.
            unsafe { libc::read(self.self_wake.as_raw_fd(), counter.as_mut_ptr().cast(), counter.len()) };
        }
        self.current.iter().map(|c| drain_socket(c.as_fd())).sum()
    }

    /// Makes the listener readable now (for a guest that finds work while arming on
    /// behalf of an application that waits on [`fd`](Self::fd)).
    pub fn wake_self(&self) -> bool {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write of 8 bytes to our non-blocking eventfd.
        let written = unsafe { libc::write(self.self_wake.as_raw_fd(), one.as_ptr().cast(), one.len()) == 8 };
        // Flagged after the write (see `drain`); also when the write failed because the
        // counter is full, which leaves it readable.
        self.self_woken.store(true, Ordering::Release);
        written
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn readable(fd: BorrowedFd<'_>) -> bool {
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn a_request_is_taken_once_and_wakes_the_listener() {
        let (waker, end) = Waker::pair().unwrap();
        let mut listener = WakeListener::new().unwrap();
        listener.attach(end).unwrap();
        let flag = AtomicU32::new(0);
        assert!(!take_request(&flag));
        arm(&flag);
        assert!(take_request(&flag));
        assert!(!take_request(&flag), "a request is consumed");
        assert!(!readable(listener.fd()));
        assert!(waker.wake());
        assert!(readable(listener.fd()), "the epoll descriptor reports the wake-up");
        assert!(waker.wake());
        assert_eq!(listener.drain(), 2);
        assert_eq!(listener.drain(), 0);
        assert!(!readable(listener.fd()));
        assert!(listener.wake_self());
        assert!(readable(listener.fd()));
        assert_eq!(listener.drain(), 0, "our own wake-up is not the proxy's");
        assert!(!readable(listener.fd()));
        arm(&flag);
        disarm(&flag);
        assert!(!take_request(&flag));
    }

    #[test]
    fn a_new_end_replaces_the_old_one_behind_the_same_descriptor() {
        let mut listener = WakeListener::new().unwrap();
        let fd = listener.fd().as_raw_fd();
        let (old, end) = Waker::pair().unwrap();
        listener.attach(end).unwrap();
        let (new, end) = Waker::pair().unwrap();
        listener.attach(end).unwrap();
        assert_eq!(listener.fd().as_raw_fd(), fd);
        assert!(!old.wake(), "the old end is closed");
        assert!(new.wake());
        assert!(readable(listener.fd()));
        assert_eq!(listener.drain(), 1);
        listener.detach();
        assert!(!listener.is_attached());
    }

    #[test]
    fn ends_attached_also_wake_the_same_descriptor_until_a_new_attach() {
        let mut listener = WakeListener::new().unwrap();
        let (own, end) = Waker::pair().unwrap();
        listener.attach(end).unwrap();
        let (folded, end) = Waker::pair().unwrap();
        listener.attach_also(end).unwrap();
        assert!(folded.wake());
        assert!(readable(listener.fd()), "a folded pair's wake-up reaches the queue's descriptor");
        assert!(own.wake());
        assert_eq!(listener.drain(), 2);
        assert!(!readable(listener.fd()));
        let (next, end) = Waker::pair().unwrap();
        listener.attach(end).unwrap();
        assert!(!own.wake() && !folded.wake(), "attach closed every earlier end");
        assert!(next.wake());
        assert_eq!(listener.drain(), 1);
        assert!(listener.attach_also(OwnedFd::from(std::fs::File::open("/dev/null").unwrap())).is_err(), "checked as attach");
        listener.detach();
        assert!(!listener.is_attached());
    }

    #[test]
    fn drain_reads_more_than_a_batch_and_every_wake_up_of_our_own() {
        let (waker, end) = Waker::pair().unwrap();
        let mut listener = WakeListener::new().unwrap();
        listener.attach(end).unwrap();
        let sent = (0..DRAIN_BATCH * 3).take_while(|_| waker.wake()).count();
        assert!(sent > DRAIN_BATCH, "only {sent} datagrams queued (net.unix.max_dgram_qlen)");
        assert!(listener.wake_self() && listener.wake_self());
        assert_eq!(listener.drain(), sent);
        assert!(!readable(listener.fd()), "the socket and the eventfd are both drained");
        assert!(listener.wake_self());
        assert_eq!(listener.drain(), 0);
        assert!(!readable(listener.fd()));
        assert!(waker.wake());
        assert_eq!(listener.drain(), 1, "a drain without a wake-up of our own");
        assert!(!readable(listener.fd()));
    }

    #[test]
    fn a_full_queue_never_blocks_the_proxy() {
        let (waker, end) = Waker::pair().unwrap();
        // The guest makes its end blocking and never reads; the proxy still never waits.
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(end.as_raw_fd(), libc::F_SETFL, 0) };
        let sent = (0..100_000).take_while(|_| waker.wake()).count();
        assert!(sent < 100_000, "the queue filled up at some point");
        assert!(!waker.wake());
        assert_eq!(drain_socket(end.as_fd()), sent);
        assert!(waker.wake());
        drop(end);
        assert!(!waker.wake(), "a guest that closed its end costs an error, no signal");
    }

    #[test]
    fn nothing_can_be_queued_to_the_proxys_end() {
        let (waker, end) = Waker::pair().unwrap();
        let (a, _b) = dgram_pair().unwrap();
        // The guest tries to hand the proxy a descriptor (or just a datagram) on its end.
        let one = [1u8];
        // SAFETY: send of a 1-byte buffer on our own descriptor.
        let rc = unsafe { libc::send(end.as_raw_fd(), one.as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        assert_eq!(rc, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPIPE));
        let sent = crate::proto::transport::send_message(end.as_fd(), &crate::Message::Goodbye, 0, &[a.as_fd()]);
        assert!(sent.is_err(), "a descriptor cannot be queued either");
        drop(waker);
    }

    #[test]
    fn only_unix_datagram_sockets_are_attached() {
        let mut p = [0; 2];
        // SAFETY: pipe2 fills two fresh descriptors.
        let (r, _w) = unsafe {
            assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
            (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
        };
        let mut listener = WakeListener::new().unwrap();
        assert!(listener.attach(r).unwrap_err().contains("not a socket"));
        let mut s = [0; 2];
        // SAFETY: socketpair fills two fresh descriptors.
        let (sa, _sb) = unsafe {
            assert_eq!(libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, s.as_mut_ptr()), 0);
            (OwnedFd::from_raw_fd(s[0]), OwnedFd::from_raw_fd(s[1]))
        };
        assert!(listener.attach(sa).unwrap_err().contains("not a unix datagram socket"));
        // SAFETY: a fresh UDP socket.
        let udp = unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)) };
        assert!(listener.attach(udp).unwrap_err().contains("not a unix datagram socket"));
        assert!(!listener.is_attached());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// The guest arms and looks at the ring once more; the proxy publishes and
    /// looks at the flag. Whatever the interleaving, the guest either sees the
    /// descriptor or gets the wake-up.
    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let shared = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
            let proxy_side = shared.clone();
            let proxy = thread::spawn(move || {
                let (prod, flag) = &*proxy_side;
                prod.store(1, Ordering::Release);
                take_request(flag)
            });
            let (prod, flag) = &*shared;
            arm(flag);
            let sees_descriptor = prod.load(Ordering::Acquire) != 0;
            let woken = proxy.join().unwrap();
            assert!(sees_descriptor || woken, "the guest would sleep on a non-empty ring");
        });
    }
}
