//! The descriptor reaper: the threads that close what peers gave the proxy.
//!
//! The last close of a file runs its release in the closing thread, and some releases
//! wait: a TCP socket with `SO_LINGER` and unsent data waits up to its linger time (any
//! number of seconds its owner chose), a file on FUSE or NFS waits for a server to
//! answer its flush. Closing a unix connection also releases, in the closer's context,
//! every descriptor still queued in unread messages on it (and closing a listener, the
//! connections in its backlog). So nothing a peer passed, no connection that may hold
//! descriptors and no listener is ever closed on the control thread (or the data
//! lcore): they are handed here, as [`PeerFd`]s, whose drop queues them for this thread
//! with the uid of the peer they came from. (A connection that refused descriptors all
//! its life, `SO_PASSRIGHTS` off, holds none and is closed where it is dropped.)
//!
//! Before queueing, a socket is made to abort on close (`os::abort_on_close`), so a
//! lingering TCP socket costs this thread nothing either. That cannot reach sockets
//! nested in a connection's unread messages (or in a passed unix socket's queue), nor
//! one whose owner restores its linger before we close: a watchdog therefore sends the
//! reaper a signal whenever one close has taken more than [`STUCK`] (`os::interrupt`),
//! which ends a linger wait at once (the socket is then reset in the background), and
//! with it every other linger wait of that close.
//!
//! A close that still has not ended after [`WEDGED`] waits uninterruptibly: a FUSE file
//! whose server never answers `FLUSH` (any user can mount FUSE in a user namespace of
//! their own) keeps the closing thread in D state for good; no signal ends it. The
//! watchdog then leaves that thread behind and starts another on the same queue, and
//! the uid whose descriptor it was is wedged: its connections are refused from then on
//! (`is_wedged`, checked at accept), and descriptors of its still queued or handed over
//! later are left open and counted (`leaked`) instead of closed, so that user cannot
//! stop the next thread too. Each wedged uid costs one thread; at most
//! [`MAX_WEDGED_THREADS`] are left behind, after which the queue simply waits (and the
//! control thread stops reading connections that may carry descriptors while it has no
//! room, [`room_for_peer_input`]; connections that refuse descriptors, commands and the
//! data loop never depend on it). A descriptor that finds the queue full is left open
//! and counted (`leaked`), never closed on the spot.

use std::collections::{HashMap, HashSet};
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use shm_contract::proto::transport::SCM_MAX_FD;

use crate::os;

/// Descriptors waiting for the reaper, at most.
pub const CAPACITY: usize = 1024;

/// One descriptor to close, and the uid of the peer it came from.
struct Item {
    fd: OwnedFd,
    owner: u32,
}

/// One reaper thread, as the watchdog sees it.
struct Worker {
    /// When the close in progress began (µs since `EPOCH`, plus 1), 0 while idle.
    busy_since_us: AtomicU64,
    /// Whose descriptor that close is.
    owner: AtomicU32,
    thread: libc::pthread_t,
    /// Left behind by the watchdog: if its close ever ends, the thread ends too (another
    /// serves the queue meanwhile).
    left_behind: std::sync::atomic::AtomicBool,
}

struct Reaper {
    queue: SyncSender<Item>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();
/// Queued and not yet closed.
static PENDING: AtomicUsize = AtomicUsize::new(0);
static CLOSED: AtomicU64 = AtomicU64::new(0);
static LEAKED: AtomicU64 = AtomicU64::new(0);
static SLOWEST_US: AtomicU64 = AtomicU64::new(0);
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
/// CPU time the reaper threads spent closing descriptors, in ns (all uids).
static CPU_NS: AtomicU64 = AtomicU64::new(0);
/// CPU time spent on each uid's descriptors that its budget has not been charged for
/// yet (the control thread takes it: [`take_cpu_owed`]). The reaper runs on the
/// control thread's CPU, so what a close costs is charged like the control thread's
/// own work for that uid (control/budget.rs).
static CPU_OWED: Mutex<Option<HashMap<u32, Duration>>> = Mutex::new(None);
/// Uids whose descriptor's close never ended (see the module's text).
static WEDGED_UIDS: Mutex<Option<HashSet<u32>>> = Mutex::new(None);
static EPOCH: OnceLock<Instant> = OnceLock::new();
/// The watchdog thread, unparked by a worker when a close begins.
static WATCHDOG: OnceLock<Thread> = OnceLock::new();
/// Counts the changes the reaper's counters show (a close ended, a descriptor left open,
/// a uid wedged); waiters (`wait_for`) are woken at each.
static PROGRESS: (Mutex<u64>, Condvar) = (Mutex::new(0), Condvar::new());

/// Tells waiters that the reaper's state changed.
fn progressed() {
    let (count, changed) = &PROGRESS;
    *count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    changed.notify_all();
}

/// Waits until `cond` holds (checked at each change of the reaper's state), at most
/// `timeout`; returns whether it holds. (Tests, and the fuzz target between inputs.)
#[cfg(any(test, feature = "fuzzing"))]
pub fn wait_for(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let (count, changed) = &PROGRESS;
    let guard = count.lock().unwrap_or_else(|e| e.into_inner());
    let (_guard, result) = changed.wait_timeout_while(guard, timeout, |_| !cond()).unwrap_or_else(|e| e.into_inner());
    !result.timed_out() || cond()
}

/// A close that takes longer than this is interrupted (and again every `STUCK`).
pub const STUCK: Duration = Duration::from_millis(20);
/// A close that interrupts have not ended in this long waits uninterruptibly: its
/// thread is left behind and its uid wedged.
pub const WEDGED: Duration = Duration::from_secs(1);
/// Reaper threads that may be left behind in uninterruptible closes, at most.
pub const MAX_WEDGED_THREADS: usize = 16;

fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// Whether a descriptor of uid `owner` once wedged a reaper thread: that uid's
/// connections are refused and its descriptors no longer closed.
pub fn is_wedged(owner: u32) -> bool {
    WEDGED_UIDS.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|s| s.contains(&owner))
}

fn wedge(owner: u32) {
    WEDGED_UIDS.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(HashSet::new).insert(owner);
    progressed();
}

fn wedged_count() -> usize {
    WEDGED_UIDS.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map_or(0, |s| s.len())
}

/// Starts one reaper thread on the shared queue.
fn spawn_worker(incoming: Arc<Mutex<Receiver<Item>>>) -> Result<Arc<Worker>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<Arc<Worker>>();
    let handle = std::thread::Builder::new()
        .name("fd-reaper".into())
        .spawn(move || {
            let Ok(me) = rx.recv() else { return };
            loop {
                // The lock is held only while waiting for the next item, never while
                // closing: a thread left behind in a close holds nothing.
                let next = incoming.lock().unwrap_or_else(|e| e.into_inner()).recv();
                let Ok(Item { fd, owner }) = next else { return };
                if is_wedged(owner) {
                    // That user's descriptors have wedged a thread before: closing
                    // another could wedge this one too.
                    std::mem::forget(fd);
                    LEAKED.fetch_add(1, Ordering::Relaxed);
                    PENDING.fetch_sub(1, Ordering::Release);
                    progressed();
                    continue;
                }
                let t = now_us();
                me.owner.store(owner, Ordering::SeqCst);
                me.busy_since_us.store(t, Ordering::SeqCst);
                // The watchdog sleeps while no close runs: this one starts its clock.
                if let Some(watchdog) = WATCHDOG.get() {
                    watchdog.unpark();
                }
                let cpu0 = os::thread_cpu_time();
                drop(fd);
                owe(owner, os::thread_cpu_time().saturating_sub(cpu0));
                me.busy_since_us.store(0, Ordering::SeqCst);
                SLOWEST_US.fetch_max(now_us() - t, Ordering::Relaxed);
                CLOSED.fetch_add(1, Ordering::Relaxed);
                PENDING.fetch_sub(1, Ordering::Release);
                progressed();
                if me.left_behind.load(Ordering::SeqCst) {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start a descriptor reaper thread: {e}"))?;
    let worker = Arc::new(Worker {
        busy_since_us: AtomicU64::new(0),
        owner: AtomicU32::new(0),
        thread: handle.as_pthread_t(),
        left_behind: Default::default(),
    });
    // The thread runs for the life of the process (the queue's sender is static), or
    // stays in its close forever: its id stays valid. Detached.
    drop(handle);
    tx.send(worker.clone()).map_err(|_| "a descriptor reaper thread ended at once".to_string())?;
    Ok(worker)
}

/// Starts the reaper thread and its watchdog (once; later calls do nothing).
pub fn start() -> Result<(), String> {
    static STARTED: Mutex<bool> = Mutex::new(false);
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    if *started {
        return Ok(());
    }
    os::install_interrupt_handler().map_err(|e| format!("cannot install the reaper's interrupt handler: {e}"))?;
    let (queue, incoming) = sync_channel::<Item>(CAPACITY);
    let incoming = Arc::new(Mutex::new(incoming));
    let mut active = spawn_worker(incoming.clone())?;
    let spare = incoming;
    let watchdog = std::thread::Builder::new()
        .name("fd-reaper-watch".into())
        .spawn(move || {
            let mut left_behind = 0usize;
            loop {
                let since = active.busy_since_us.load(Ordering::SeqCst);
                if since == 0 {
                    // No close runs: wait for the worker to start one (it unparks us
                    // after it stores `busy_since_us`; an unpark that comes before this
                    // park makes it return at once, so none is missed).
                    std::thread::park();
                    continue;
                }
                let busy = now_us().saturating_sub(since);
                if busy < STUCK.as_micros() as u64 {
                    // A deadline on the close in progress, not a wait for another
                    // thread's answer: wake when it would be stuck (or earlier, when
                    // another close starts) and look again.
                    std::thread::park_timeout(Duration::from_micros(STUCK.as_micros() as u64 - busy));
                    continue;
                }
                if busy >= WEDGED.as_micros() as u64 && left_behind < MAX_WEDGED_THREADS {
                    let owner = active.owner.load(Ordering::SeqCst);
                    if let Ok(next) = spawn_worker(spare.clone()) {
                        wedge(owner);
                        active.left_behind.store(true, Ordering::SeqCst);
                        left_behind += 1;
                        crate::log_warn!(
                            "a descriptor from uid {owner} does not close (a FUSE or NFS file whose server does not \
                             answer?): its reaper thread is left behind, uid {owner} is refused from now on"
                        );
                        active = next;
                    }
                } else {
                    // Counted first: the interrupted close ends at once, and whoever
                    // sees it end (`wait_for`) sees the count.
                    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
                    os::interrupt(active.thread);
                }
                // Stuck: interrupted again every STUCK until the close ends or is left
                // behind (a deadline again, see above).
                std::thread::park_timeout(STUCK);
            }
        })
        .map_err(|e| format!("cannot start the descriptor reaper's watchdog: {e}"))?;
    let _ = WATCHDOG.set(watchdog.thread().clone());
    // A close that began before the watchdog's handle was published: look once.
    watchdog.thread().unpark();
    let _ = REAPER.set(Reaper { queue });
    *started = true;
    Ok(())
}

/// Adds `spent` to what uid `owner` owes its budget.
fn owe(owner: u32, spent: Duration) {
    CPU_NS.fetch_add(spent.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    let mut owed = CPU_OWED.lock().unwrap_or_else(|e| e.into_inner());
    *owed.get_or_insert_with(HashMap::new).entry(owner).or_default() += spent;
}

/// The CPU time the reaper spent on each uid's descriptors since the last call, to be
/// charged to the uids' budgets (one entry per uid whose descriptors were closed).
pub fn take_cpu_owed() -> Vec<(u32, Duration)> {
    let mut owed = CPU_OWED.lock().unwrap_or_else(|e| e.into_inner());
    owed.as_mut().map(|m| m.drain().collect()).unwrap_or_default()
}

/// Hands `fd`, which came from (a peer running as) uid `owner`, to the reaper to be
/// closed there.
pub fn discard(fd: OwnedFd, owner: u32) {
    os::abort_on_close(fd.as_fd());
    let Some(reaper) = REAPER.get() else {
        // Unit tests without the thread: only the proxy's own descriptors come here.
        drop(fd);
        return;
    };
    PENDING.fetch_add(1, Ordering::AcqRel);
    match reaper.queue.try_send(Item { fd, owner }) {
        Ok(()) => {}
        Err(TrySendError::Full(item) | TrySendError::Disconnected(item)) => {
            PENDING.fetch_sub(1, Ordering::AcqRel);
            // Closing it here could block this thread; leaving it open costs a
            // descriptor (counted, shown in `show stats`).
            std::mem::forget(item.fd);
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

/// Descriptors handed over and not closed yet.
pub fn pending() -> usize {
    PENDING.load(Ordering::Acquire)
}

/// `reaper_pending=.. reaper_closed=.. reaper_leaked=.. reaper_slowest_us=.. reaper_interrupts=.. reaper_wedged_uids=.. reaper_cpu_ms=..`
pub fn stats_text() -> String {
    format!(
        "reaper_pending={} reaper_closed={} reaper_leaked={} reaper_slowest_us={} reaper_interrupts={} reaper_wedged_uids={} \
         reaper_cpu_ms={}",
        PENDING.load(Ordering::Relaxed),
        CLOSED.load(Ordering::Relaxed),
        LEAKED.load(Ordering::Relaxed),
        SLOWEST_US.load(Ordering::Relaxed),
        INTERRUPTS.load(Ordering::Relaxed),
        wedged_count(),
        CPU_NS.load(Ordering::Relaxed) / 1_000_000
    )
}

/// A descriptor whose close may release what a peer chose: one a peer passed, a
/// connection a peer made (descriptors in its unread messages), or a listening socket
/// (the connections in its backlog). Dropping it hands it to the reaper.
#[derive(Debug)]
pub struct PeerFd {
    fd: ManuallyDrop<OwnedFd>,
    /// Closed by the reaper (true), or right where it is dropped: a connection that has
    /// refused descriptors all its life (`SO_PASSRIGHTS` off from the listener on) has
    /// none queued, and its close releases nothing a peer chose.
    reap: bool,
    /// The uid of the peer it came from (the proxy's own for a listener).
    owner: u32,
}

impl PeerFd {
    /// `fd`, which came from (a peer running as) uid `owner`.
    pub fn new(fd: OwnedFd, owner: u32) -> PeerFd {
        PeerFd { fd: ManuallyDrop::new(fd), reap: true, owner }
    }

    /// A connection just accepted from uid `owner`: closed on the spot while it has
    /// never let a descriptor through (see [`let_pass`](Self::let_pass)), by the
    /// reaper otherwise.
    pub fn connection(fd: OwnedFd, owner: u32) -> PeerFd {
        let reap = os::passes_rights(fd.as_fd());
        PeerFd { fd: ManuallyDrop::new(fd), reap, owner }
    }

    /// The uid it came from.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Whether descriptors may be queued on this connection (it is then closed by the
    /// reaper, and reading it needs room there).
    pub fn passes(&self) -> bool {
        self.reap
    }

    /// Lets the peer pass descriptors (`SO_PASSRIGHTS` on) for one message; from now on
    /// the connection is closed by the reaper (messages may hold descriptors).
    pub fn let_pass(&mut self) -> std::io::Result<()> {
        self.reap = true;
        os::set_pass_rights(self.fd.as_fd(), true)
    }

    /// Refuses descriptors again (what is already queued stays).
    pub fn stop_passing(&self) -> std::io::Result<()> {
        os::set_pass_rights(self.fd.as_fd(), false)
    }

    /// The descriptor itself, for one that has been checked and is kept (its last
    /// close is known not to block).
    pub fn keep(self) -> OwnedFd {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped, so the descriptor is taken exactly once.
        unsafe { ManuallyDrop::take(&mut me.fd) }
    }
}

impl AsFd for PeerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for PeerFd {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `self.fd` is not used after.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        if self.reap {
            discard(fd, self.owner);
        } else {
            drop(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::time::Duration;

    /// The tests that use the reaper threads run one at a time: one of them wedges a
    /// thread for a second on purpose.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_until(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
        assert!(wait_for(timeout, cond), "{what}: not within {timeout:?} ({})", stats_text());
    }

    /// A FUSE file system of one file, `f`, whose server answers everything a lookup and
    /// an open need and never answers `FLUSH`: closing `f` waits uninterruptibly (D
    /// state) until the connection is aborted (the red-team review's attack; any user
    /// can mount one in a user namespace of their own). Talks the kernel's FUSE
    /// protocol on `/dev/fuse` directly (no libfuse here).
    struct NoFlushFs {
        dir: std::path::PathBuf,
        /// fusectl's name of the connection (`/sys/fs/fuse/connections/<id>`).
        conn: u64,
        server: Option<std::thread::JoinHandle<()>>,
    }

    /// FUSE opcodes and sizes (include/uapi/linux/fuse.h).
    const FUSE_LOOKUP: u32 = 1;
    const FUSE_FORGET: u32 = 2;
    const FUSE_GETATTR: u32 = 3;
    const FUSE_OPEN: u32 = 14;
    const FUSE_RELEASE: u32 = 18;
    const FUSE_FLUSH: u32 = 25;
    const FUSE_INIT: u32 = 26;
    const FUSE_INTERRUPT: u32 = 36;
    const FUSE_DESTROY: u32 = 38;
    const FUSE_BATCH_FORGET: u32 = 42;
    const IN_HEADER: usize = 40;
    const ROOT_NODE: u64 = 1;
    const FILE_NODE: u64 = 2;

    /// `fuse_attr` (88 bytes) of the root directory or the file.
    fn fuse_attr(node: u64) -> Vec<u8> {
        let mut a = vec![0u8; 88];
        a[0..8].copy_from_slice(&node.to_le_bytes());
        let (mode, nlink) = if node == ROOT_NODE { (libc::S_IFDIR | 0o755, 2u32) } else { (libc::S_IFREG | 0o644, 1) };
        a[60..64].copy_from_slice(&mode.to_le_bytes());
        a[64..68].copy_from_slice(&nlink.to_le_bytes());
        a[80..84].copy_from_slice(&4096u32.to_le_bytes());
        a
    }

    fn fuse_reply(dev: i32, unique: u64, error: i32, body: &[u8]) {
        let mut out = Vec::with_capacity(16 + body.len());
        out.extend_from_slice(&((16 + body.len()) as u32).to_le_bytes());
        out.extend_from_slice(&error.to_le_bytes());
        out.extend_from_slice(&unique.to_le_bytes());
        out.extend_from_slice(body);
        // SAFETY: write(2) of a buffer we own to the FUSE device.
        unsafe { libc::write(dev, out.as_ptr().cast(), out.len()) };
    }

    fn fuse_serve(dev: OwnedFd) {
        let mut buf = vec![0u8; (1 << 20) + 4096];
        loop {
            // SAFETY: read(2) into a buffer we own.
            let n = unsafe { libc::read(dev.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) | Some(libc::ENOENT) | Some(libc::EAGAIN) => continue,
                    // ENODEV: aborted or unmounted.
                    _ => return,
                }
            }
            let req = &buf[..n as usize];
            if req.len() < IN_HEADER {
                continue;
            }
            let opcode = u32::from_le_bytes(req[4..8].try_into().unwrap());
            let unique = u64::from_le_bytes(req[8..16].try_into().unwrap());
            let node = u64::from_le_bytes(req[16..24].try_into().unwrap());
            let dev_fd = dev.as_raw_fd();
            match opcode {
                FUSE_INIT => {
                    let mut out = vec![0u8; 64];
                    out[0..4].copy_from_slice(&7u32.to_le_bytes());
                    out[4..8].copy_from_slice(&31u32.to_le_bytes());
                    out[8..12].copy_from_slice(&req[IN_HEADER + 8..IN_HEADER + 12]);
                    out[16..18].copy_from_slice(&16u16.to_le_bytes());
                    out[18..20].copy_from_slice(&12u16.to_le_bytes());
                    out[20..24].copy_from_slice(&65536u32.to_le_bytes());
                    out[24..28].copy_from_slice(&1u32.to_le_bytes());
                    fuse_reply(dev_fd, unique, 0, &out);
                }
                FUSE_LOOKUP => {
                    let name = &req[IN_HEADER..];
                    if node == ROOT_NODE && name.starts_with(b"f\0") {
                        let mut out = vec![0u8; 40];
                        out[0..8].copy_from_slice(&FILE_NODE.to_le_bytes());
                        out.extend(fuse_attr(FILE_NODE));
                        fuse_reply(dev_fd, unique, 0, &out);
                    } else {
                        fuse_reply(dev_fd, unique, -libc::ENOENT, &[]);
                    }
                }
                FUSE_GETATTR => {
                    let mut out = vec![0u8; 16];
                    out.extend(fuse_attr(node));
                    fuse_reply(dev_fd, unique, 0, &out);
                }
                FUSE_OPEN => fuse_reply(dev_fd, unique, 0, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                FUSE_RELEASE => fuse_reply(dev_fd, unique, 0, &[]),
                // The attack: never answered.
                FUSE_FLUSH | FUSE_INTERRUPT | FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_DESTROY => {}
                _ => fuse_reply(dev_fd, unique, -libc::ENOSYS, &[]),
            }
        }
    }

    impl NoFlushFs {
        /// Mounted at a fresh directory (needs root); `None` (with the reason printed)
        /// where FUSE or fusectl cannot be had.
        fn mount(tag: &str) -> Option<NoFlushFs> {
            if os::effective_uid() != 0 || !std::path::Path::new("/dev/fuse").exists() {
                eprintln!("skipped: needs root and /dev/fuse");
                return None;
            }
            let ctl = std::path::Path::new("/sys/fs/fuse/connections");
            if std::fs::read_dir(ctl).map_or(true, |mut d| d.next().is_none()) {
                // fusectl (to abort the connection at the end) may not be mounted yet;
                // mounting it changes nothing else.
                let _ = std::process::Command::new("mount").args(["-t", "fusectl", "none"]).arg(ctl).status();
            }
            let dir = std::env::temp_dir().join(format!("reaper-fuse-{tag}-{}", std::process::id()));
            let _ = std::fs::create_dir(&dir);
            // SAFETY: open(2) with a constant path; owned right away.
            let dev = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
            assert!(dev >= 0, "/dev/fuse: {}", io::Error::last_os_error());
            // SAFETY: a fresh descriptor.
            let dev = unsafe { OwnedFd::from_raw_fd(dev) };
            let opts = std::ffi::CString::new(format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd())).unwrap();
            let target = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
            // SAFETY: mount(2) with valid C strings.
            let rc = unsafe {
                libc::mount(c"noflush".as_ptr(), target.as_ptr(), c"fuse".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, opts.as_ptr().cast())
            };
            assert_eq!(rc, 0, "mount fuse: {}", io::Error::last_os_error());
            let server = std::thread::spawn(move || fuse_serve(dev));
            let st = std::fs::metadata(&dir).unwrap();
            use std::os::unix::fs::MetadataExt;
            // fusectl names a connection by the kernel's device number (major << 20 | minor).
            let conn = (libc::major(st.dev()) as u64) << 20 | libc::minor(st.dev()) as u64;
            Some(NoFlushFs { dir, conn, server: Some(server) })
        }

        fn open_file(&self) -> OwnedFd {
            std::fs::File::open(self.dir.join("f")).unwrap().into()
        }
    }

    impl Drop for NoFlushFs {
        fn drop(&mut self) {
            // Aborting the connection fails the pending FLUSH: the stuck close ends.
            let abort = format!("/sys/fs/fuse/connections/{}/abort", self.conn);
            if let Err(e) = std::fs::write(&abort, "1") {
                eprintln!("cannot abort the FUSE connection ({abort}: {e}): a reaper thread stays in D state");
            }
            let target = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
            // SAFETY: umount2(2) with a valid C string.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            if let Some(t) = self.server.take() {
                let _ = t.join();
            }
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    /// The red-team review's R4, with a real FUSE file: its close never ends. The thread
    /// closing it is left behind after `WEDGED`, its owner is wedged (refused from then
    /// on; its further descriptors are left open, counted, never closed), and another
    /// thread closes everyone else's: a lingering socket of another user is closed at
    /// once, and the queue keeps room for peers.
    #[test]
    fn a_descriptor_whose_close_never_ends_wedges_only_its_owner() {
        let _serial = serial();
        start().unwrap();
        let Some(fs) = NoFlushFs::mount("wedge") else { return };
        const ATTACKER: u32 = 4242;
        const OTHER_USER: u32 = 4343;
        // Each file is handed over at once: dropped on this thread (by a failing
        // assertion), its close would wedge the test itself.
        let first = fs.open_file();
        assert!(!is_wedged(ATTACKER));
        let t = Instant::now();
        drop(PeerFd::new(first, ATTACKER));
        assert!(t.elapsed() < Duration::from_millis(50), "handing over never blocks");
        wait_until("the attacker's uid wedged", WEDGED * 5, || is_wedged(ATTACKER));
        assert!(t.elapsed() >= WEDGED, "not before the close had its chance");
        assert!(!is_wedged(OTHER_USER));
        // Another user's descriptor is closed by the thread that took over.
        let closed = CLOSED.load(Ordering::Relaxed);
        let (fd, _server) = lingering_tcp(30);
        drop(PeerFd::new(fd, OTHER_USER));
        wait_until("another user's descriptor closed", Duration::from_secs(2), || CLOSED.load(Ordering::Relaxed) > closed);
        // The attacker's next one is left open (counted), not closed: no second thread
        // goes into D state.
        let leaked = LEAKED.load(Ordering::Relaxed);
        drop(PeerFd::new(fs.open_file(), ATTACKER));
        wait_until("the attacker's second descriptor left open", Duration::from_secs(2), || LEAKED.load(Ordering::Relaxed) > leaked);
        assert!(room_for_peer_input(0));
        assert!(stats_text().contains("reaper_wedged_uids="), "{}", stats_text());
        // Aborting the FUSE connection (root's way out) ends the stuck close; its
        // thread then ends.
        let closed = CLOSED.load(Ordering::Relaxed);
        drop(fs);
        wait_until("the stuck close ended", Duration::from_secs(5), || CLOSED.load(Ordering::Relaxed) > closed);
    }

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
    fn what_closing_costs_is_owed_by_the_descriptor_s_uid() {
        let _serial = serial();
        start().unwrap();
        const OWNER: u32 = 4545;
        let _ = take_cpu_owed();
        let closed = CLOSED.load(Ordering::Relaxed);
        // A connected pair with a message queued: its close has some work to do.
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        a.send(&[0u8; 512]).unwrap();
        drop(PeerFd::new(a.into(), OWNER));
        drop(PeerFd::new(b.into(), OWNER));
        wait_until("both closed", Duration::from_secs(5), || CLOSED.load(Ordering::Relaxed) >= closed + 2);
        let owed = take_cpu_owed();
        assert!(owed.iter().any(|(uid, _)| *uid == OWNER), "nothing owed by {OWNER}: {owed:?}");
        assert!(!take_cpu_owed().iter().any(|(uid, _)| *uid == OWNER), "taken once");
        assert!(stats_text().contains("reaper_cpu_ms="));
    }

    #[test]
    fn a_lingering_socket_blocks_its_closer_unless_disarmed() {
        // Serial: run beside the FUSE wedge test, the first close below was seen to end
        // after 3-99 ms instead of the linger second (2 of 20 runs; cause not found).
        let _serial = serial();
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
        let _serial = serial();
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
        drop(PeerFd::new(conn.into(), 1000));
        wait_until("the connection closed", Duration::from_secs(10), || CLOSED.load(Ordering::Relaxed) > closed);
        assert!(t.elapsed() < Duration::from_secs(2), "the reaper took {:?}", t.elapsed());
        assert!(INTERRUPTS.load(Ordering::Relaxed) > interrupts, "the close was interrupted");
    }

    #[test]
    fn peer_fds_go_to_the_reaper_and_are_closed_there() {
        let _serial = serial();
        start().unwrap();
        let before = CLOSED.load(Ordering::Relaxed);
        let (fd, _server) = lingering_tcp(30);
        let t = Instant::now();
        drop(PeerFd::new(fd, 1000));
        assert!(t.elapsed() < Duration::from_millis(50));
        wait_until("the descriptor closed", Duration::from_secs(5), || CLOSED.load(Ordering::Relaxed) > before);
        assert!(room_for_peer_input(0));
        // A kept descriptor is not closed.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let kept = PeerFd::new(a.into(), 1000).keep();
        // SAFETY: fcntl on an open descriptor.
        assert!(unsafe { libc::fcntl(kept.as_raw_fd(), libc::F_GETFD) } >= 0);
        drop(b);
        // SAFETY: a fresh duplicate we own.
        let _dup = unsafe { OwnedFd::from_raw_fd(libc::dup(kept.as_raw_fd())) };
    }
}
