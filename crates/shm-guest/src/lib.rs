//! A guest of `dpdk-io-proxy` without DPDK: no EAL, no libdpdk, only the contract crate
//! and libc.
//!
//! [`Guest::connect`] does what the three DPDK plugins do together for `-a sock:<path>`:
//! it connects to the proxy's socket, handshakes (`Hello` / `Welcome`, the region memfd
//! arrives by `SCM_RIGHTS`), maps the region and validates its header, lays out one
//! packet pool in the region's heap exactly as the proxy validates a DPDK guest's pool
//! (see "Layout" below), announces it (`PoolAdd`) and starts the queue (`QueueStart`).
//! From then on:
//!
//! * [`Guest::recv_burst`] / [`Guest::recv`] take packets from the rx ring as owned
//!   [`Buffer`]s that dereference to the packet's bytes in the shared region (no copy)
//!   and return to the pool's free ring when dropped;
//! * [`Guest::pool`] hands out a [`BufferPool`] to [`alloc`](BufferPool::alloc) free
//!   buffers; [`Guest::send`] / [`Guest::send_burst`] hand buffers (allocated ones, or
//!   received ones modified in place) to the proxy for transmission (zero copy: the
//!   descriptor names the buffer; the proxy returns it to the free ring once sent).
//!
//! ```no_run
//! use shm_guest::{Config, Guest};
//! let mut guest = Guest::connect("/run/dpdk-io-proxy/q0/sock", &Config::default())?;
//! let mut burst = Vec::with_capacity(32);
//! loop {
//!     burst.clear();
//!     guest.recv_burst(&mut burst, 32)?;
//!     for pkt in burst.drain(..) {
//!         println!("{} bytes", pkt.len()); // dropping `pkt` returns its buffer
//!     }
//! }
//! # Ok::<(), shm_guest::Error>(())
//! ```
//!
//! # Layout
//!
//! The pool takes the start of the region's heap: its free ring (the contract's
//! [`FreeRing`](shm_contract::FreeRing), filled with every buffer before the pool is
//! announced), then from the next cache line `buffers` objects at a stride of
//! `128 + data_room` rounded up to 64 bytes: a 128-byte header area
//! ([`MBUF_HEADER_SIZE`](shm_contract::layout::MBUF_HEADER_SIZE), where a DPDK guest
//! keeps its `rte_mbuf`) followed by the data room. Descriptors name a buffer by the
//! offset of its header area, and their `data_off` counts from the start of the data
//! room. The proxy never reads or writes the header area (its shadow mbufs point at
//! the data room), so this guest leaves it zeroed. The announcement is checked with the
//! proxy's own validation (`PoolAdd::validate`) before it is sent.
//!
//! # Ownership of buffers
//!
//! A buffer is either held by this process (a [`Buffer`] exists for it) or not (free
//! ring, rings, proxy, NIC). A private table, one atomic byte per buffer, records which;
//! a buffer enters only through a "not held -> held" transition of its entry, so an
//! offset the proxy hands over twice is refused and two `Buffer`s never alias. The
//! bytes of a held buffer are reached through plain `&[u8]`/`&mut [u8]`: by the
//! contract the proxy writes a buffer only while it holds it (its NIC receives only
//! into buffers taken from the free ring, and it lets go of one by publishing it on the
//! rx ring), so nothing else writes those bytes while the reference lives.
//!
//! # Trust
//!
//! Everything the proxy writes is validated as carefully as the proxy validates its
//! guests: ring indices (`0 <= prod - cons <= entries`, by the contract's ring views; a
//! violation stops the queue, [`Error::RingCorrupt`]), every rx descriptor (its offset
//! must be exactly a buffer of our pool, `data_off + data_len` inside its data room, the
//! buffer not already held by this process), every free-ring value (same checks). A bad
//! descriptor or value is counted ([`Stats`]) and dropped; it can never make this process
//! touch memory outside its pool or hand out two [`Buffer`]s for one buffer.
//!
//! # Limits
//!
//! * **Multi-segment packets are counted and dropped** ([`Stats::rx_multiseg_dropped`]),
//!   their buffers returned to the free ring: a packet arrives as one [`Buffer`] or not
//!   at all. The proxy's NIC splits a frame into segments only when it does not fit one
//!   data room: for jumbo frames, give [`Config::data_room`] room for them (the default,
//!   2176 bytes with 128 of headroom, takes frames up to 2048 bytes).
//! * One queue, one pool, one thread on the rings at a time (`&mut self`); buffers
//!   themselves may be dropped or allocated on any thread.
//! * No reconnection: when the proxy goes away the calls return
//!   [`Error::Disconnected`]; connect again for a fresh region.
//! * The control socket is read every [`CONTROL_POLL_EVERY`] calls of
//!   [`Guest::recv_burst`] (one non-blocking `poll` + `recvmsg`), whenever
//!   [`Guest::poll_control`] is called, and by the waits below when it becomes
//!   readable: a guest that never receives should call it now and then, or the proxy
//!   disconnects it when its socket buffer fills.
//!
//! # Sleeping instead of polling
//!
//! By default a guest finds packets by polling its rx ring, which costs a CPU even when
//! nothing arrives. With [`Config::rx_wakeup`] the guest can sleep while the ring is
//! empty: the proxy makes a socket pair at `QueueStart` and hands the guest one end
//! with `QueueStarted` (checked to be a unix datagram socket), and it sends a datagram
//! on its own end after publishing rx descriptors, but only when the guest
//! asked for one (a flag in the region's status block; the protocol and why no wake-up
//! is lost: `shm_contract::wake`). A busy guest never asks, so the proxy's data path
//! pays nothing for it then.
//!
//! * [`Guest::wait_rx`] blocks (`poll(2)` on the wake-up listener and the control socket)
//!   until the rx ring has descriptors, a timeout passes, a signal arrives, or the
//!   connection ends;
//! * [`Guest::wait_rx_hybrid`] polls the ring for a short, adaptive time
//!   ([`AdaptiveSpin`]: about the gap between packets, when that is at most
//!   [`DEFAULT_MAX_SPIN`], within a share of the CPU) before it sleeps in `wait_rx`: no
//!   wake-up for most packets that follow closely, no spinning for packets far apart;
//! * with the cargo feature `tokio`, `AsyncGuest` offers `recv().await` and
//!   `recv_burst(..).await` under a tokio runtime (no thread of its own); it waits the
//!   hybrid way by default ([`SpinPolicy::SLEEP_AT_ONCE`] turns the polling off);
//! * an application with its own event loop waits on [`Guest::listen_fd`] (and
//!   [`Guest::control_fd`]) between [`Guest::arm_rx_wakeup`] and
//!   [`Guest::disarm_rx_wakeup`].
//!
//! The cost is latency: a sleeping guest answers after a datagram and a scheduler
//! wake-up (tens of microseconds) instead of at once. Poll while busy, sleep when idle.

// The workspace's lints (root Cargo.toml) apply too; this public API also documents
// every item.
#![warn(missing_docs)]

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_contract::client::{self, Listener, RequestIds, Unsolicited};
use shm_contract::desc::DescChain;
use shm_contract::layout::{RegionLayout, StatusBlock};
use shm_contract::mem::Mapping;
use shm_contract::proto::transport::send_message;
use shm_contract::proto::{Hello, MAX_APP_NAME, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, QUEUE_FLAG_RX_WAKEUP};
use shm_contract::wake::{self, WakeListener};
use shm_contract::{Desc, DescConsumer, DescFlags, DescProducer, Message, SharedMem};

pub use shm_contract::client::ClientError;
pub use shm_contract::proto::Welcome;

mod hybrid;
mod pool;
#[cfg(feature = "tokio")]
mod tokio_rx;

#[cfg(feature = "tokio")]
pub use tokio_rx::AsyncGuest;
pub use hybrid::{AdaptiveSpin, SpinPolicy, DEFAULT_MAX_SHARE_PERCENT, DEFAULT_MAX_SPIN, MAX_BACKOFF};
pub use pool::{Buffer, BufferPool, CapacityError, RxPacket, DEFAULT_HEADROOM};
use pool::Pool;

/// Longest chain of rx descriptors looked at for one packet (the contract's limit); a
/// longer one is cut there and dropped.
pub const MAX_SEGS: u32 = shm_contract::tx::MAX_SEGS;
/// Most packets one [`Guest::recv_burst`] takes.
pub const MAX_BURST: usize = 512;
/// The control socket is polled once every this many [`Guest::recv_burst`] calls.
pub const CONTROL_POLL_EVERY: u32 = 4096;

/// What to ask of the proxy, and how to lay out the pool.
#[derive(Clone, Debug)]
pub struct Config {
    /// Name the proxy shows for this guest (at most 32 bytes; longer is cut). Empty:
    /// the program's name.
    pub app_name: String,
    /// Buffers in the pool. The proxy's NIC rx queue keeps up to 1024 of them posted
    /// and its cache up to 256 more; the rest are in the rings or with the application.
    pub buffers: u32,
    /// Size of each buffer's data room, headroom included (the proxy's NIC leaves 128
    /// bytes of headroom).
    pub data_room: u16,
    /// Size of the region to ask for. 0: just enough for the pool and the rings: the
    /// `Hello` states the pool's heap bytes and the proxy sizes the region for its page
    /// size.
    pub region_size: u64,
    /// rx and tx descriptor ring entries (0: the proxy's default,
    /// `shm_contract::layout::DEFAULT_RING_ENTRIES`, 4096).
    pub rx_ring: u32,
    /// See [`rx_ring`](Self::rx_ring).
    pub tx_ring: u32,
    /// How long to wait for each answer of the proxy.
    pub timeout: Duration,
    /// Ask the proxy for rx wake-ups, so that the guest can sleep while its rx ring is
    /// empty ([`Guest::wait_rx`], `AsyncGuest` with the `tokio` feature). Off: the
    /// guest polls (no wake-up socket is made).
    pub rx_wakeup: bool,
    /// The uid the proxy must run as: the server of the socket is checked with
    /// `SO_PEERCRED` before anything is sent to it, and refused
    /// ([`ClientError::UntrustedServer`] in [`Error::Client`]) if it runs as anyone else. None: root or the owner of
    /// the socket's directory.
    pub proxy_uid: Option<u32>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            app_name: String::new(),
            buffers: 4096,
            data_room: 2048 + DEFAULT_HEADROOM,
            region_size: 0,
            rx_ring: 0,
            tx_ring: 0,
            timeout: Duration::from_secs(5),
            rx_wakeup: false,
            proxy_uid: None,
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum Error {
    /// What the client core says (connecting, verifying the server, the handshake, the
    /// region, a request and its answer): one error type for both guest kinds. A closed
    /// or ended connection is [`Error::Disconnected`] instead.
    Client(ClientError),
    /// The configuration cannot work (the pool does not fit the region, ...).
    Config(String),
    /// The connection to the proxy is gone (why).
    Disconnected(String),
    /// The proxy wrote an impossible ring index; the queue is unusable.
    RingCorrupt(String),
    /// The queue is not started (sending after [`Guest::stop`]).
    NotRunning,
    /// The tx ring has no free slot.
    RingFull,
    /// The buffer belongs to another connection's pool.
    ForeignBuffer,
    /// A system call failed (making or waiting on the rx wake-up socket).
    Io(io::Error),
}

impl Error {
    /// The region the proxy sent is unusable.
    fn region(what: impl fmt::Display) -> Error {
        Error::Client(ClientError::Region(what.to_string()))
    }

    /// The proxy answered something unexpected.
    fn protocol(what: impl fmt::Display) -> Error {
        Error::Client(ClientError::Protocol(what.to_string()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Client(e) => write!(f, "{e}"),
            Error::Config(what) => write!(f, "configuration: {what}"),
            Error::Disconnected(why) => write!(f, "disconnected from the proxy: {why}"),
            Error::RingCorrupt(what) => write!(f, "descriptor ring corrupt: {what}"),
            Error::NotRunning => write!(f, "the queue is not started"),
            Error::RingFull => write!(f, "the tx ring is full"),
            Error::ForeignBuffer => write!(f, "the buffer belongs to another connection's pool"),
            Error::Io(e) => write!(f, "rx wake-up: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ClientError> for Error {
    fn from(e: ClientError) -> Error {
        match e {
            ClientError::Closed => Error::Disconnected("the proxy closed the connection".into()),
            ClientError::Ended(why) => Error::Disconnected(why),
            other => Error::Client(other),
        }
    }
}

/// A buffer that could not be sent, given back with the reason.
#[derive(Debug)]
pub struct SendError {
    /// The buffer, still held: send it later, or drop it.
    pub buffer: Buffer,
    /// Why: [`Error::RingFull`], [`Error::NotRunning`], [`Error::ForeignBuffer`],
    /// [`Error::RingCorrupt`], [`Error::Disconnected`].
    pub error: Error,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot send: {}", self.error)
    }
}

impl std::error::Error for SendError {}

/// Counters of a [`Guest`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets received (handed out as [`Buffer`]s).
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// rx descriptors that failed validation (offset not a buffer of the pool, data
    /// outside the data room, a buffer this process held): dropped.
    pub rx_invalid: u64,
    /// Multi-segment packets dropped (see the crate docs).
    pub rx_multiseg_dropped: u64,
    /// Packets handed to the proxy for transmission.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Sends refused because the tx ring was full.
    pub tx_ring_full: u64,
    /// Free-ring values that named no buffer of the pool or a held one: dropped.
    pub free_ring_invalid: u64,
    /// Buffers given up on: the free ring refused them and the parking space (room for
    /// every buffer) was full, which only a corrupted ring causes. Out of the pool.
    pub lost: u64,
    /// Times the guest slept on an empty rx ring ([`Guest::wait_rx`], the async API).
    pub rx_sleeps: u64,
    /// Wake-ups received from the proxy (datagrams read from the wake-up socket).
    pub rx_wakeups: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Running,
    Stopped,
    /// The connection is gone or unusable: why.
    Failed(String),
}

/// A connection to a proxy socket, with its queue and pool.
pub struct Guest {
    // INVARIANT: `rx`, `tx` and `status` view `mapping`, which `mapping` (and `pool`)
    // keep alive as long as `self`; within this process the ring and status areas are
    // accessed only through those views' atomics.
    rx: DescConsumer<'static>,
    tx: DescProducer<'static>,
    status: StatusBlock<'static>,
    socket: OwnedFd,
    pool: Arc<Pool>,
    layout: RegionLayout,
    info: Welcome,
    state: State,
    stats: Stats,
    timeout: Duration,
    requests: RequestIds,
    polls: u32,
    closed: bool,
    /// With [`Config::rx_wakeup`]: what we sleep on, one descriptor for the guest's
    /// life, behind which sits the wake-up end of the latest `QueueStarted`.
    wake: Option<WakeListener>,
    /// Declared last: the views above point into it.
    mapping: Arc<Mapping>,
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest").field("info", &self.info).field("state", &self.state).field("stats", &self.stats).finish()
    }
}

impl Guest {
    /// Connects to the proxy socket at `path`, handshakes, lays out and announces the
    /// pool, and starts the queue: packets flow when this returns.
    pub fn connect(path: impl AsRef<Path>, config: &Config) -> Result<Guest, Error> {
        // Made before connecting: failing here (out of descriptors) costs the proxy nothing.
        let wake = if config.rx_wakeup { Some(WakeListener::new().map_err(Error::Io)?) } else { None };
        let hello = Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION,
            flags: 0,
            region_size: config.region_size,
            rx_ring_entries: config.rx_ring,
            tx_ring_entries: config.tx_ring,
            app_name: app_name(&config.app_name),
            // The pool plan: with region_size 0 the proxy sizes the region to fit it on
            // the pages it picks.
            heap_bytes: pool::heap_bytes(config.buffers, config.data_room),
        };
        // The server is verified (SO_PEERCRED) before the Hello: never a word to an impostor.
        let client::Attached { socket, welcome, fds } =
            client::attach(path.as_ref(), config.proxy_uid, &hello, &[], config.timeout)?;
        let client::MappedRegion { mapping, memfd, layout } = client::map_region(&welcome, fds)?;
        drop(memfd);
        let mapping = Arc::new(mapping);
        let add = pool::plan(&layout, config.buffers, config.data_room).map_err(Error::Config)?;
        let pool_layout = add.validate(&layout, &[]).map_err(|e| {
            Error::Config(format!(
                "{} buffers of {} bytes do not fit the region's {} KiB heap ({e}); ask for a larger region_size",
                config.buffers,
                config.data_room,
                layout.heap().size >> 10
            ))
        })?;
        let pool = Arc::new(Pool::create(mapping.clone(), pool_layout).map_err(Error::region)?);
        // SAFETY: the view covers the mapping, kept alive by `mapping` in the Guest (and
        // by the pool) for as long as the views built from it; the ring and status areas
        // are only ever accessed through atomics in this process (the `Buffer`s reference
        // data rooms only, which the validated layout keeps apart from them).
        let mem: SharedMem<'static> = unsafe { SharedMem::from_raw(mapping.as_ptr(), mapping.len()) };
        let status = StatusBlock::from_layout(&mem, &layout).map_err(Error::region)?;
        // Not started yet: views from index 0, rebuilt after QueueStarted anyway.
        let rx = DescConsumer::new(&mem, layout.rx_ring()).map_err(Error::region)?;
        let tx = DescProducer::new(&mem, layout.tx_ring()).map_err(Error::region)?;
        let mut guest = Guest {
            rx,
            tx,
            status,
            socket,
            pool,
            layout,
            info: welcome,
            state: State::Stopped,
            stats: Stats::default(),
            timeout: config.timeout,
            requests: RequestIds::default(),
            polls: 0,
            closed: false,
            wake,
            mapping,
        };
        match guest.transact(&Message::PoolAdd(add))? {
            Message::PoolAck { pool_id } if pool_id == add.pool_id => {}
            other => return Err(Error::protocol(format!("expected PoolAck, got {}", other.kind()))),
        }
        guest.start()?;
        Ok(guest)
    }

    /// What the proxy said about its NIC queue.
    pub fn info(&self) -> &Welcome {
        &self.info
    }

    /// Entries of the rx and tx descriptor rings the proxy made.
    pub fn ring_entries(&self) -> (u32, u32) {
        (self.layout.rx_ring().entries, self.layout.tx_ring().entries)
    }

    /// A handle for allocating buffers to send (from any thread).
    pub fn pool(&self) -> BufferPool {
        BufferPool { pool: self.pool.clone() }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.pool.counters;
        Stats {
            free_ring_invalid: c.free_ring_invalid.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            ..self.stats
        }
    }

    /// Whether the queue is started and the connection healthy.
    pub fn is_running(&self) -> bool {
        self.state == State::Running
    }

    /// The port's link: up, speed in Mbit/s (from the proxy's status block, which it
    /// keeps current; `false` once the connection is gone).
    pub fn link(&self) -> (bool, u32) {
        if matches!(self.state, State::Failed(_)) {
            return (false, 0);
        }
        // The proxy stores the link into the status block before it sends LinkStatus.
        let up = self.status.link_up().load(Ordering::Acquire) != 0;
        (up, self.status.link_speed_mbps().load(Ordering::Relaxed))
    }

    fn fail(&mut self, why: String) -> Error {
        if !matches!(self.state, State::Failed(_)) {
            self.state = State::Failed(why.clone());
        }
        Error::Disconnected(why)
    }

    /// The connection failed with `e`: the guest stops.
    fn fail_with(&mut self, e: ClientError) -> Error {
        let why = match e {
            ClientError::Ended(why) => why,
            other => Error::from(other).to_string(),
        };
        self.fail(why)
    }

    fn failed(&self) -> Option<Error> {
        match &self.state {
            State::Failed(why) => Some(Error::Disconnected(why.clone())),
            _ => None,
        }
    }

    /// Reads everything the proxy sent on its own (link news, goodbye), without
    /// blocking. Returns an error once the connection is gone.
    pub fn poll_control(&mut self) -> Result<(), Error> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        client::read_unsolicited(self.socket.as_fd(), &mut GuestListener).map_err(|e| self.fail_with(e))
    }

    /// Sends `request` and waits for its answer; unsolicited messages meanwhile are
    /// handled. A `Refuse` answer is [`ClientError::Refused`] in [`Error::Client`].
    fn transact(&mut self, request: &Message) -> Result<Message, Error> {
        self.transact_with_fds(request).map(|(answer, _)| answer)
    }

    /// As [`transact`](Self::transact), also returning the descriptors that came with
    /// the answer (the caller checks them).
    fn transact_with_fds(&mut self, request: &Message) -> Result<(Message, Vec<OwnedFd>), Error> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        let id = self.requests.next_id();
        match client::transact(self.socket.as_fd(), request, id, self.timeout, &mut GuestListener) {
            Ok(answer) => Ok(answer),
            Err(e @ (ClientError::Refused { .. } | ClientError::Timeout)) => Err(e.into()),
            Err(e) => Err(self.fail_with(e)),
        }
    }

    /// Starts the queue (done by [`connect`](Self::connect); again after
    /// [`stop`](Self::stop)). Packets left in the rx ring since the stop are dropped.
    pub fn start(&mut self) -> Result<(), Error> {
        match self.state {
            State::Running => return Ok(()),
            State::Failed(_) => return Err(self.failed().unwrap_or(Error::NotRunning)),
            State::Stopped => {}
        }
        // The proxy is not producing: what is still in the rx ring is ours; the rings
        // start from index 0 on both sides at every queue start.
        self.drain_rx();
        // With wake-ups, every start brings a fresh wake-up end from the proxy (it
        // closes its own when the queue stops).
        let flags = if self.wake.is_some() { QUEUE_FLAG_RX_WAKEUP } else { 0 };
        let (answer, mut fds) = self.transact_with_fds(&Message::QueueStart { rx_pool_id: 0, flags, rx_depth: 0, queue: 0 })?;
        if answer != Message::QueueStarted {
            return Err(Error::protocol(format!("expected QueueStarted, got {}", answer.kind())));
        }
        match &mut self.wake {
            Some(listener) if fds.len() == 1 => listener.attach(fds.remove(0)).map_err(Error::protocol)?,
            Some(_) => {
                return Err(Error::protocol(format!(
                    "QueueStarted came with {} descriptors, not the one wake-up socket",
                    fds.len()
                )))
            }
            None if fds.is_empty() => {}
            None => return Err(Error::protocol(format!("QueueStarted came with {} descriptors, none asked for", fds.len()))),
        }
        // SAFETY: as in `connect`: the mapping outlives the views (INVARIANT of Guest).
        let mem: SharedMem<'static> = unsafe { SharedMem::from_raw(self.mapping.as_ptr(), self.mapping.len()) };
        // The proxy zeroed both rings before answering.
        self.rx = DescConsumer::new(&mem, self.layout.rx_ring()).map_err(Error::region)?;
        self.tx = DescProducer::new(&mem, self.layout.tx_ring()).map_err(Error::region)?;
        self.state = State::Running;
        Ok(())
    }

    /// Stops the queue: the proxy stops delivering (its NIC queue keeps no buffer of
    /// ours) and returns what it had not yet sent from the tx ring. Packets it delivered
    /// before stopping stay in the rx ring and can still be received; sending fails
    /// with [`Error::NotRunning`] until [`start`](Self::start).
    pub fn stop(&mut self) -> Result<(), Error> {
        match self.state {
            State::Running => {}
            State::Stopped => return Ok(()),
            State::Failed(_) => return Err(self.failed().unwrap_or(Error::NotRunning)),
        }
        match self.transact(&Message::QueueStop { queue: 0 })? {
            Message::QueueStopped => {
                self.state = State::Stopped;
                if let Some(listener) = &mut self.wake {
                    listener.detach();
                }
                Ok(())
            }
            other => Err(Error::protocol(format!("expected QueueStopped, got {}", other.kind()))),
        }
    }

    /// Says goodbye: stops the queue, gives back what the rx ring still holds and closes
    /// the connection (also done on drop, errors ignored).
    pub fn close(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let stopped = if self.state == State::Running { self.stop() } else { Ok(()) };
        if self.state == State::Stopped {
            self.drain_rx();
            let _ = send_message(self.socket.as_fd(), &Message::Goodbye, 0, &[]);
        }
        // SAFETY: shutdown(2) of our own open socket.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        if !matches!(self.state, State::Failed(_)) {
            self.state = State::Failed("closed".into());
        }
        stopped
    }

    /// Returns every buffer still in the rx ring to the free ring (the proxy is not
    /// producing). Validated like any rx descriptor.
    fn drain_rx(&mut self) -> u32 {
        let Ok(avail) = self.rx.available(u32::MAX) else { return 0 };
        let mut freed = 0;
        for i in 0..avail {
            let d = self.rx.read(i);
            if let Some(index) = self.valid_rx(&d) {
                if self.pool.take(index) {
                    self.pool.put(index);
                    freed += 1;
                }
            }
        }
        self.rx.release(avail);
        freed
    }

    /// The buffer an rx descriptor names, if it is one of our pool and its data lies in
    /// its data room. (Whether this process holds it is checked by `Pool::take`.)
    #[inline]
    fn valid_rx(&self, d: &Desc) -> Option<u32> {
        let index = self.pool.layout.buffer_index(d.offset)?;
        if d.data_off as u32 + d.data_len as u32 > self.pool.layout.data_room() as u32 {
            return None;
        }
        Some(index)
    }

    /// Receives up to `max` packets (at most [`MAX_BURST`]), appended to `out`; returns
    /// how many. Reserve capacity in `out` to keep this free of allocation. Also works
    /// after [`stop`](Self::stop), for the packets still in the ring.
    pub fn recv_burst(&mut self, out: &mut Vec<Buffer>, max: usize) -> Result<usize, Error> {
        self.recv_with(max, |b| out.push(b))
    }

    /// Receives one packet, if one is waiting.
    pub fn recv(&mut self) -> Result<Option<Buffer>, Error> {
        let mut got = None;
        self.recv_with(1, |b| got = Some(b))?;
        Ok(got)
    }

    fn recv_with(&mut self, max: usize, mut deliver: impl FnMut(Buffer)) -> Result<usize, Error> {
        self.polls = self.polls.wrapping_add(1);
        if self.polls.is_multiple_of(CONTROL_POLL_EVERY) {
            self.poll_control()?;
        }
        if let Some(e) = self.failed() {
            return Err(e);
        }
        let want = max.min(MAX_BURST) as u32;
        if want == 0 {
            return Ok(0);
        }
        // The proxy's producer index (a line its core keeps writing) is re-read only when
        // the cached view holds fewer than `want` descriptors, or ends inside a packet.
        let mut avail = self.rx_available(want)?;
        let mut used = 0u32;
        let mut got = 0u32;
        while got < want && used < avail {
            // Find the packet's end first: nothing is taken from a chain that is not
            // complete yet (it is read again, whole, next time).
            let first = used;
            let mut end = first;
            let mut chain = DescChain::default();
            let complete = loop {
                if end >= avail {
                    break false;
                }
                let d = self.rx.read(end);
                end += 1;
                if chain.ends_with(&d) {
                    break true;
                }
            };
            if !complete {
                // The cached view may end inside this packet: look at the index again
                // (asking for more than the cache holds reloads it) and read it whole.
                let fresh = self.rx_available(avail + 1)?;
                if fresh > avail {
                    avail = fresh;
                    continue;
                }
                if DescChain::never_ends(first, avail, self.rx.entries()) {
                    // A full ring whose first packet never ends: the proxy can never
                    // publish the rest.
                    self.state = State::Failed("rx ring: a packet chain fills the whole ring".into());
                    return Err(Error::RingCorrupt("a packet chain fills the whole rx ring".into()));
                }
                break;
            }
            used = end;
            if chain.segs() == 1 {
                let d = self.rx.read(first);
                match self.valid_rx(&d) {
                    Some(index) if self.pool.take(index) => {
                        let mut b = Buffer::from_taken(self.pool.clone(), index, d.data_off, d.data_len);
                        b.set_rx_meta(
                            d.flags.contains(DescFlags::VLAN).then_some(d.vlan_tci),
                            d.flags.contains(DescFlags::RSS_HASH).then_some(d.rss_hash),
                        );
                        self.stats.rx_packets += 1;
                        self.stats.rx_bytes += d.data_len as u64;
                        got += 1;
                        deliver(b);
                    }
                    _ => self.stats.rx_invalid += 1,
                }
            } else {
                // Multi-segment (or over-long) packet: not supported, see the crate docs.
                // Its valid buffers go back to the free ring.
                self.stats.rx_multiseg_dropped += 1;
                for i in first..end {
                    match self.valid_rx(&self.rx.read(i)) {
                        Some(index) if self.pool.take(index) => self.pool.put(index),
                        _ => self.stats.rx_invalid += 1,
                    }
                }
            }
        }
        self.rx.release(used);
        Ok(got as usize)
    }

    /// Descriptors ready in the rx ring (see `DescConsumer::available`); an impossible
    /// producer index fails the queue for good.
    fn rx_available(&mut self, wanted: u32) -> Result<u32, Error> {
        self.rx.available(wanted).map_err(|e| {
            // Nothing in the ring can be trusted any more.
            let why = e.to_string();
            self.state = State::Failed(format!("rx ring: {why}"));
            Error::RingCorrupt(why)
        })
    }

    /// Whether the rx ring has descriptors (re-reads the proxy's index when the cached
    /// view is empty).
    fn rx_ready(&mut self) -> Result<bool, Error> {
        Ok(self.rx_available(1)? > 0)
    }

    /// The wake-up listener, or why there is none.
    pub(crate) fn wake_listener(&self) -> Result<&WakeListener, Error> {
        self.wake.as_ref().ok_or_else(|| Error::Config("rx wake-ups are off (Config::rx_wakeup)".into()))
    }

    /// The status block's wake-up request flag.
    ///
    /// `'static` only as far as the status view is (INVARIANT of Guest): callers keep it
    /// no longer than they borrow `self`.
    pub(crate) fn rx_wakeup_flag(&self) -> &'static AtomicU32 {
        self.status.rx_wakeup_requested()
    }

    /// The descriptor that becomes readable when the proxy wakes this guest (the same
    /// for the guest's life, across queue stops and starts); `None` without
    /// [`Config::rx_wakeup`]. For applications with their
    /// own event loop (`epoll`, an async runtime): see
    /// [`arm_rx_wakeup`](Self::arm_rx_wakeup). Do not read from it yourself; the guest
    /// drains it in [`disarm_rx_wakeup`](Self::disarm_rx_wakeup).
    pub fn listen_fd(&self) -> Option<BorrowedFd<'_>> {
        self.wake.as_ref().map(|w| w.fd())
    }

    /// The control socket to the proxy. It becomes readable when the proxy sends
    /// something on its own (link news, goodbye) or goes away; then call
    /// [`poll_control`](Self::poll_control), which reads it without blocking (and
    /// returns [`Error::Disconnected`] once the connection is gone). Watch it next to
    /// [`listen_fd`](Self::listen_fd) so that a proxy that dies wakes a sleeping guest.
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Asks the proxy to wake this guest at its next rx descriptor, for an application
    /// that waits on [`listen_fd`](Self::listen_fd) itself ([`wait_rx`](Self::wait_rx)
    /// and `AsyncGuest` do all of this for you).
    ///
    /// `Ok(true)`: the rx ring already has descriptors, nothing is armed; receive
    /// instead of waiting. `Ok(false)`: armed on a ring seen empty *after* arming, so no
    /// wake-up can be lost: wait until `listen_fd` is readable, then call
    /// [`disarm_rx_wakeup`](Self::disarm_rx_wakeup) (also when the wait ends for
    /// another reason: while armed, the proxy pays a system call per rx burst).
    ///
    /// Errors: [`Error::Config`] without [`Config::rx_wakeup`]; [`Error::NotRunning`]
    /// when the queue is stopped and the ring empty (nobody would wake the guest); the
    /// connection's failure.
    pub fn arm_rx_wakeup(&mut self) -> Result<bool, Error> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        self.wake_listener()?;
        if self.rx_ready()? {
            return Ok(true);
        }
        if self.state != State::Running {
            return Err(Error::NotRunning);
        }
        let flag = self.rx_wakeup_flag();
        // Flag, full fence, then the producer index once more (shm_contract::wake): if
        // the proxy published before it could see the flag, we see its descriptors here.
        wake::arm(flag);
        match self.rx_ready() {
            Ok(false) => Ok(false),
            ready => {
                wake::disarm(flag);
                ready
            }
        }
    }

    /// Ends a wait begun with [`arm_rx_wakeup`](Self::arm_rx_wakeup): reads the pending
    /// wake-ups and withdraws the request. Returns how many wake-ups there were.
    pub fn disarm_rx_wakeup(&mut self) -> usize {
        let Some(listener) = &self.wake else { return 0 };
        let n = listener.drain();
        wake::disarm(self.rx_wakeup_flag());
        self.stats.rx_wakeups += n as u64;
        n
    }

    /// Sleeps until the rx ring has descriptors: returns `Ok(true)` then (at once if it
    /// already has some). `Ok(false)`: `timeout` passed (`None`: no limit) or a signal
    /// interrupted the wait, with the ring still empty. Needs [`Config::rx_wakeup`].
    ///
    /// One `poll(2)` watches the wake-up socket and the control socket: link news is
    /// handled on the way, and a proxy that says goodbye or dies ends the wait with
    /// [`Error::Disconnected`]. Errors as [`arm_rx_wakeup`](Self::arm_rx_wakeup).
    pub fn wait_rx(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.arm_rx_wakeup()? {
                return Ok(true);
            }
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Rounded up: a wait of 0 ms for 0.5 ms left would spin.
                    i32::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX)
                }
            };
            if ms == 0 {
                self.disarm_rx_wakeup();
                return self.rx_ready();
            }
            let listen = self.wake_listener()?.fd().as_raw_fd();
            let mut fds = [
                libc::pollfd { fd: listen, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            self.stats.rx_sleeps += 1;
            // SAFETY: poll(2) on an array of two pollfd that lives across the call; both
            // descriptors are open (owned by `self`).
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            let err = (rc < 0).then(io::Error::last_os_error);
            self.disarm_rx_wakeup();
            match err {
                Some(e) if e.kind() == io::ErrorKind::Interrupted => return self.rx_ready(),
                Some(e) => return Err(Error::Io(e)),
                None => {}
            }
            if fds[1].revents != 0 {
                // Link news is read here; a goodbye or a hang-up is an error.
                self.poll_control()?;
            }
            if rc == 0 {
                return self.rx_ready();
            }
            // Woken (or link news): look at the ring again, sleep again if need be.
        }
    }

    fn check_send(&mut self, buffer: &Buffer) -> Result<(), Error> {
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if self.state != State::Running {
            return Err(Error::NotRunning);
        }
        if !buffer.pool_is(&self.pool) {
            return Err(Error::ForeignBuffer);
        }
        Ok(())
    }

    fn tx_room(&mut self, wanted: u32) -> Result<u32, Error> {
        self.tx.free_slots(wanted).map_err(|e| {
            let why = e.to_string();
            self.state = State::Failed(format!("tx ring: {why}"));
            Error::RingCorrupt(why)
        })
    }

    /// Writes the descriptor of `buffer` into tx slot `slot` (not yet published) and
    /// gives the buffer up.
    #[inline]
    fn write_tx(&mut self, slot: u32, buffer: Buffer) {
        let (offset, data_off, data_len, vlan) = buffer.into_tx();
        let flags = if vlan.is_some() { DescFlags::VLAN } else { DescFlags::empty() };
        self.tx.write(
            slot,
            &Desc { offset, data_off, data_len, flags, vlan_tci: vlan.unwrap_or(0), rss_hash: 0 },
        );
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += data_len as u64;
    }

    /// Hands `buffer` to the proxy for transmission; it goes back to the free ring once
    /// sent. On failure the buffer comes back in the error.
    pub fn send(&mut self, buffer: Buffer) -> Result<(), SendError> {
        if let Err(error) = self.check_send(&buffer) {
            return Err(SendError { buffer, error });
        }
        match self.tx_room(1) {
            Ok(0) => {
                self.stats.tx_ring_full += 1;
                Err(SendError { buffer, error: Error::RingFull })
            }
            Ok(_) => {
                self.write_tx(0, buffer);
                self.tx.publish(1);
                Ok(())
            }
            Err(error) => Err(SendError { buffer, error }),
        }
    }

    /// Hands as many of `buffers` (from the front) as the tx ring has room for to the
    /// proxy, with one publication; those stay in `buffers` that did not fit. Returns
    /// how many were sent. A buffer of another connection's pool stops the burst there
    /// ([`Error::ForeignBuffer`], after sending the ones before it).
    pub fn send_burst(&mut self, buffers: &mut Vec<Buffer>) -> Result<usize, Error> {
        if buffers.is_empty() {
            return Ok(0);
        }
        if let Some(e) = self.failed() {
            return Err(e);
        }
        if self.state != State::Running {
            return Err(Error::NotRunning);
        }
        let wanted = u32::try_from(buffers.len()).unwrap_or(u32::MAX);
        let room = self.tx_room(wanted)?.min(wanted) as usize;
        let n = buffers[..room].iter().position(|b| !b.pool_is(&self.pool)).unwrap_or(room);
        for (slot, b) in (0u32..).zip(buffers.drain(..n)) {
            self.write_tx(slot, b);
        }
        if n > 0 {
            self.tx.publish(n as u32);
        }
        if n < room {
            return Err(Error::ForeignBuffer);
        }
        if !buffers.is_empty() {
            self.stats.tx_ring_full += 1;
        }
        Ok(n)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// What the guest does with the messages the proxy sends on its own: link news is
/// read from the status block instead (the proxy keeps it current); a goodbye or a
/// `Refuse` ends the connection; anything else unasked for is ignored (a later protocol
/// minor may add some).
struct GuestListener;

impl Listener for GuestListener {
    fn unsolicited(&mut self, msg: Unsolicited) -> Result<(), ClientError> {
        match msg {
            Unsolicited::Link { .. } => Ok(()),
            Unsolicited::Goodbye => Err(ClientError::Ended("the proxy said goodbye".into())),
            Unsolicited::Refused { code, reason } => {
                Err(ClientError::Ended(format!("the proxy ended the connection ({code:?}): {reason}")))
            }
        }
    }
}

fn app_name(configured: &str) -> String {
    let name = if configured.is_empty() {
        std::fs::read_to_string("/proc/self/comm").map(|s| s.trim().to_string()).unwrap_or_default()
    } else {
        configured.to_string()
    };
    let mut name: String = name.chars().filter(|&c| c != '\0').collect();
    while name.len() > MAX_APP_NAME {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests;
