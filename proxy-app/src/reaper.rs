//! The descriptor reaper: the one thread that closes what peers gave the proxy.
//!
//! The last close of a file runs its release in the closing thread, and some releases
//! wait: a TCP socket with `SO_LINGER` and unsent data waits up to its linger time (any
//! number of seconds its owner chose), a file on FUSE or NFS waits for a server to
//! answer its flush. Closing a unix connection also releases, in the closer's context,
//! every descriptor still queued in unread messages on it (and closing a listener, the
//! connections in its backlog). So nothing a peer passed, no connection a peer made and
//! no listener is ever closed on the control thread (or the data lcore): they are
//! handed here, as [`PeerFd`]s, whose drop queues them for this thread.
//!
//! Before queueing, a socket is made to abort on close (`os::abort_on_close`), so a
//! lingering TCP socket costs this thread nothing either. That cannot reach sockets
//! nested in a connection's unread messages (or in a passed unix socket's queue), nor
//! one whose owner restores its linger before we close: a watchdog therefore sends the
//! reaper a signal whenever one close has taken more than [`STUCK`] (`os::interrupt`),
//! which ends a linger wait at once (the socket is then reset in the background), and
//! with it every other linger wait of that close. A file whose close still blocks
//! uninterruptibly (a FUSE or NFS file whose server does not answer a flush) holds up
//! this thread only: the queue is bounded
//! ([`CAPACITY`]) and the control thread reads from peers and accepts connections only
//! while the queue has room for everything one more message or connection can bring
//! ([`room_for_peer_input`]); meanwhile it keeps answering commands, and the data loop
//! never depends on it. A descriptor that finds the queue full anyway is left open and
//! counted (`leaked`), never closed on the spot.

use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::os::unix::thread::JoinHandleExt;
use std::time::{Duration, Instant};

use shm_contract::proto::transport::SCM_MAX_FD;

use crate::os;

/// Descriptors waiting for the reaper, at most.
pub const CAPACITY: usize = 1024;

struct Reaper {
    queue: SyncSender<OwnedFd>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();
/// Queued and not yet closed.
static PENDING: AtomicUsize = AtomicUsize::new(0);
static CLOSED: AtomicU64 = AtomicU64::new(0);
static LEAKED: AtomicU64 = AtomicU64::new(0);
static SLOWEST_US: AtomicU64 = AtomicU64::new(0);
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// When the close in progress began (µs since `EPOCH`, plus 1), 0 while idle. Set
/// under `WATCH_LOCK`, so that the watchdog, which waits on `WATCH` while the reaper is
/// idle, never misses the start of a close.
static BUSY_SINCE_US: AtomicU64 = AtomicU64::new(0);
static WATCH_LOCK: Mutex<()> = Mutex::new(());
static WATCH: Condvar = Condvar::new();
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// A close that takes longer than this is interrupted (and again every `STUCK`).
pub const STUCK: Duration = Duration::from_millis(20);

/// The watchdog's lock (nothing in it can be left inconsistent by a panic).
fn watch_lock() -> MutexGuard<'static, ()> {
    WATCH_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// Starts the reaper thread (once; later calls do nothing).
pub fn start() -> Result<(), String> {
    if REAPER.get().is_some() {
        return Ok(());
    }
    os::install_interrupt_handler().map_err(|e| format!("cannot install the reaper's interrupt handler: {e}"))?;
    let (queue, incoming) = sync_channel::<OwnedFd>(CAPACITY);
    let reaper = std::thread::Builder::new()
        .name("fd-reaper".into())
        .spawn(move || {
            for fd in incoming {
                let t = now_us();
                {
                    let _watch = watch_lock();
                    BUSY_SINCE_US.store(t, Ordering::SeqCst);
                }
                WATCH.notify_one();
                drop(fd);
                BUSY_SINCE_US.store(0, Ordering::SeqCst);
                SLOWEST_US.fetch_max(now_us() - t, Ordering::Relaxed);
                CLOSED.fetch_add(1, Ordering::Relaxed);
                PENDING.fetch_sub(1, Ordering::Release);
            }
        })
        .map_err(|e| format!("cannot start the descriptor reaper thread: {e}"))?;
    let reaper_thread = reaper.as_pthread_t();
    std::thread::Builder::new()
        .name("fd-reaper-watch".into())
        .spawn(move || {
            // The reaper runs for the life of the process (its queue's sender is static),
            // so its thread id stays valid.
            let _keep = reaper;
            // Idle: wait for the reaper to begin a close (it signals). Busy: wait until
            // that close has taken STUCK, interrupt it, and again every STUCK after.
            let mut watch = watch_lock();
            loop {
                let since = BUSY_SINCE_US.load(Ordering::SeqCst);
                if since == 0 {
                    watch = WATCH.wait(watch).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                let taken = Duration::from_micros(now_us().saturating_sub(since));
                let wait = if taken >= STUCK {
                    os::interrupt(reaper_thread);
                    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
                    STUCK
                } else {
                    STUCK - taken
                };
                watch = WATCH.wait_timeout(watch, wait).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
            }
        })
        .map_err(|e| format!("cannot start the descriptor reaper's watchdog: {e}"))?;
    let _ = REAPER.set(Reaper { queue });
    Ok(())
}

/// Hands `fd` to the reaper to be closed there.
pub fn discard(fd: OwnedFd) {
    os::abort_on_close(fd.as_fd());
    let Some(reaper) = REAPER.get() else {
        // Unit tests without the thread: only the proxy's own descriptors come here.
        drop(fd);
        return;
    };
    PENDING.fetch_add(1, Ordering::AcqRel);
    match reaper.queue.try_send(fd) {
        Ok(()) => {}
        Err(TrySendError::Full(fd) | TrySendError::Disconnected(fd)) => {
            PENDING.fetch_sub(1, Ordering::AcqRel);
            // Closing it here could block this thread; leaving it open costs a
            // descriptor (counted, shown in `show stats`).
            std::mem::forget(fd);
            LEAKED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether the queue has room for everything one more message (up to
/// [`SCM_MAX_FD`] descriptors) and the connection it came on can bring, with
/// `reserve` more for connections other paths may close meanwhile.
pub fn room_for_peer_input(reserve: usize) -> bool {
    PENDING.load(Ordering::Acquire) + SCM_MAX_FD + 1 + reserve <= CAPACITY
}

/// `reaper_pending=.. reaper_closed=.. reaper_leaked=.. reaper_slowest_us=.. reaper_interrupts=..`
pub fn stats_text() -> String {
    format!(
        "reaper_pending={} reaper_closed={} reaper_leaked={} reaper_slowest_us={} reaper_interrupts={}",
        PENDING.load(Ordering::Relaxed),
        CLOSED.load(Ordering::Relaxed),
        LEAKED.load(Ordering::Relaxed),
        SLOWEST_US.load(Ordering::Relaxed),
        INTERRUPTS.load(Ordering::Relaxed)
    )
}

/// A descriptor whose close may release what a peer chose: one a peer passed, a
/// connection a peer made (descriptors in its unread messages), or a listening socket
/// (the connections in its backlog). Dropping it hands it to the reaper.
#[derive(Debug)]
pub struct PeerFd(ManuallyDrop<OwnedFd>);

impl PeerFd {
    pub fn new(fd: OwnedFd) -> PeerFd {
        PeerFd(ManuallyDrop::new(fd))
    }

    /// The descriptor itself, for one that has been checked and is kept (its last
    /// close is known not to block).
    pub fn keep(self) -> OwnedFd {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped, so the descriptor is taken exactly once.
        unsafe { ManuallyDrop::take(&mut me.0) }
    }
}

impl AsFd for PeerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Drop for PeerFd {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `self.0` is not used after.
        discard(unsafe { ManuallyDrop::take(&mut self.0) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::time::Duration;

    /// A TCP connection with unsent data whose peer never reads, lingering `secs`.
    fn lingering_tcp(secs: i32) -> (OwnedFd, std::net::TcpStream) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let linger = libc::linger { l_onoff: 1, l_linger: secs };
        // SAFETY: setsockopt with a valid struct on our own socket.
        unsafe {
            libc::setsockopt(
                client.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        client.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while client.write(&chunk).is_ok() {}
        (client.into(), server)
    }

    #[test]
    fn a_lingering_socket_blocks_its_closer_unless_disarmed() {
        // The attack: the last close waits for the linger time.
        let (fd, _server) = lingering_tcp(1);
        let t = Instant::now();
        drop(fd);
        assert!(t.elapsed() >= Duration::from_millis(900), "close took only {:?}", t.elapsed());
        // Disarmed, the close is a reset.
        let (fd, _server) = lingering_tcp(30);
        os::abort_on_close(fd.as_fd());
        let t = Instant::now();
        drop(fd);
        assert!(t.elapsed() < Duration::from_millis(100), "close took {:?}", t.elapsed());
        // Not a socket: left alone, no error.
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        os::abort_on_close(file.as_fd());
    }

    #[test]
    fn a_lingering_socket_nested_in_an_unread_message_is_interrupted() {
        start().unwrap();
        // A connection whose unread message holds a lingering socket: closing the
        // connection releases it in the closer, where disarming cannot reach it.
        let (conn, peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let (fd, _server) = lingering_tcp(30);
        shm_contract::proto::transport::send_message(peer.as_fd(), &shm_contract::Message::Goodbye, 0, &[fd.as_fd()]).unwrap();
        drop(fd);
        let closed = CLOSED.load(Ordering::Relaxed);
        let interrupts = INTERRUPTS.load(Ordering::Relaxed);
        let t = Instant::now();
        drop(PeerFd::new(conn.into()));
        while CLOSED.load(Ordering::Relaxed) == closed && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(t.elapsed() < Duration::from_secs(2), "the reaper took {:?}", t.elapsed());
        assert!(INTERRUPTS.load(Ordering::Relaxed) > interrupts, "the close was interrupted");
    }

    #[test]
    fn peer_fds_go_to_the_reaper_and_are_closed_there() {
        start().unwrap();
        let before = CLOSED.load(Ordering::Relaxed);
        let (fd, _server) = lingering_tcp(30);
        let t = Instant::now();
        drop(PeerFd::new(fd));
        assert!(t.elapsed() < Duration::from_millis(50));
        let deadline = Instant::now() + Duration::from_secs(5);
        while CLOSED.load(Ordering::Relaxed) == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(CLOSED.load(Ordering::Relaxed) > before);
        assert!(room_for_peer_input(0));
        // A kept descriptor is not closed.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let kept = PeerFd::new(a.into()).keep();
        // SAFETY: fcntl on an open descriptor.
        assert!(unsafe { libc::fcntl(kept.as_raw_fd(), libc::F_GETFD) } >= 0);
        drop(b);
        // SAFETY: a fresh duplicate we own.
        let _dup = unsafe { OwnedFd::from_raw_fd(libc::dup(kept.as_raw_fd())) };
    }
}
