//! Rx wake-ups: a guest sleeps while its rx ring is empty instead of polling it.
//!
//! The guest makes a datagram socket pair ([`WakePair`]). It keeps one end to wait
//! on (readable once woken: `poll`, `epoll`, DPDK's rx interrupt handle, tokio's
//! `AsyncFd`) and hands the other to the proxy with `QueueStart`
//! ([`QUEUE_FLAG_RX_WAKEUP`](crate::proto::QUEUE_FLAG_RX_WAKEUP)). A socket rather
//! than an eventfd because the two ends are different open files: the proxy sends
//! with `MSG_DONTWAIT`, so nothing the guest does to its end (clearing `O_NONBLOCK`,
//! letting datagrams pile up) can make the proxy's data loop block. A full queue
//! just means a wake-up is already pending.
//!
//! The flag is the status block's `rx_wakeup_requested`, in a cache line only the
//! guest writes (except for the proxy's one store that consumes a request):
//!
//! * guest, to sleep: [`arm`] (flag = 1, full fence), then look at the rx ring once
//!   more; if it has descriptors, [`disarm`] and go on; otherwise wait on its end,
//!   then [`WakePair::drain`] and [`disarm`].
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

/// The guest's socket pair.
#[derive(Debug)]
pub struct WakePair {
    /// Readable when a wake-up arrived; the guest waits on it.
    pub listen: OwnedFd,
    /// What the proxy signals on (a copy goes to the proxy with `QueueStart`; the
    /// guest keeps this one to send it again after reattaching, and to wake
    /// itself).
    pub signal: OwnedFd,
}

impl WakePair {
    /// A fresh pair (`AF_UNIX`, `SOCK_DGRAM`, non-blocking, close-on-exec).
    pub fn new() -> io::Result<WakePair> {
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
        let (listen, signal) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(WakePair { listen, signal })
    }

    /// Reads every pending wake-up; returns how many there were.
    pub fn drain(&self) -> usize {
        drain(self.listen.as_fd())
    }

    /// Makes `listen` readable from our side (for a guest that finds work while
    /// arming on behalf of an application that waits on `listen`).
    pub fn wake_self(&self) -> bool {
        send_wakeup(self.signal.as_fd())
    }
}

/// Reads every pending datagram on a wake-up socket (non-blocking).
pub fn drain(listen: BorrowedFd<'_>) -> usize {
    let mut n = 0;
    let mut buf = [0u8; 8];
    loop {
        // SAFETY: recv into a buffer of the given size, on a descriptor we borrow.
        let rc = unsafe { libc::recv(listen.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return n;
        }
        n += 1;
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

/// The proxy's end of a guest's wake-up pair.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// Takes a descriptor a guest sent; it must be a socket (anything else is
    /// refused, so that a wrong fd is a clear error at `QueueStart`, not silent).
    pub fn from_guest_fd(fd: OwnedFd) -> Result<Waker, String> {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: fstat into a valid out-pointer, on a descriptor we own.
        if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return Err(format!("wake-up descriptor: fstat: {}", io::Error::last_os_error()));
        }
        // SAFETY: fstat succeeded and filled the struct.
        let mode = unsafe { st.assume_init() }.st_mode;
        if mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err("the wake-up descriptor is not a socket".into());
        }
        Ok(Waker { fd })
    }

    /// Sends one wake-up; false if it could not be queued (the guest's queue is
    /// full, so one is pending anyway, or the guest closed its end).
    pub fn wake(&self) -> bool {
        send_wakeup(self.fd.as_fd())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_once_and_wakes_the_listener() {
        let pair = WakePair::new().unwrap();
        let waker = Waker::from_guest_fd(pair.signal.try_clone().unwrap()).unwrap();
        let flag = AtomicU32::new(0);
        assert!(!take_request(&flag));
        arm(&flag);
        assert!(take_request(&flag));
        assert!(!take_request(&flag), "a request is consumed");
        assert!(waker.wake());
        assert!(waker.wake());
        assert_eq!(pair.drain(), 2);
        assert_eq!(pair.drain(), 0);
        arm(&flag);
        disarm(&flag);
        assert!(!take_request(&flag));
    }

    #[test]
    fn a_full_queue_never_blocks_the_proxy() {
        let pair = WakePair::new().unwrap();
        // The guest makes its end blocking; the proxy still never waits.
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(pair.signal.as_raw_fd(), libc::F_SETFL, 0) };
        let waker = Waker::from_guest_fd(pair.signal.try_clone().unwrap()).unwrap();
        let sent = (0..100_000).take_while(|_| waker.wake()).count();
        assert!(sent < 100_000, "the queue filled up at some point");
        assert!(!waker.wake());
        assert_eq!(pair.drain(), sent);
        assert!(waker.wake());
    }

    #[test]
    fn only_sockets_are_accepted() {
        let mut p = [0; 2];
        // SAFETY: pipe2 fills two fresh descriptors.
        let (r, _w) = unsafe {
            assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
            (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
        };
        assert!(Waker::from_guest_fd(r).unwrap_err().contains("not a socket"));
        let closed_peer = WakePair::new().unwrap();
        let waker = Waker::from_guest_fd(closed_peer.signal).unwrap();
        drop(closed_peer.listen);
        assert!(!waker.wake(), "a guest that closed its end costs an error, no signal");
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
