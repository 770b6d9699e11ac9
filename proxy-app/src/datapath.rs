//! The data path: one polling loop that moves packets between NIC queues and guests'
//! descriptor rings. While it polls it allocates nothing and takes no lock; its only
//! system calls are the rx wake-ups it sends to a guest that asked for one before it
//! slept (one non-blocking send per sleeping queue that packets arrived for:
//! `shm_contract::wake`) and, when the control thread published a new configuration,
//! the acknowledgement below. (Reading the clock for a penalised queue is a vDSO call.)
//!
//! The control thread changes what the loop polls by publishing a new [`PlaneConfig`]
//! and waiting until the loop has picked it up (it reports the version it runs). Each
//! queue's polling state ([`QueueState`]: ring views, wake-up) and the DPDK handles of
//! its NIC queues are *owned* by the loop while the queue is in the configuration, and
//! handed back (state parked in the [`DataQueue`], handles dropped) when it leaves: so
//! once `publish` returns, the control thread can set the NIC queue up again, stop the
//! port or read the rings, and the DPDK layer refuses (`EBUSY`) if it were otherwise.
//! The loop takes a lock only while it changes configuration, never while it polls; the
//! control thread waits for that acknowledgement on a condition variable that the loop
//! signals (a system call) only when someone waits, never by sleeping.
//!
//! Packets are owned values of the DPDK layer ([`Mbuf`], [`MbufBurst`]): one the loop
//! neither hands over nor sends is freed when it goes out of scope, back to its pool
//! (for a guest buffer: to the guest's free ring).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dpdk::{sys, Mbuf, MbufBurst, Port, RxQueue, TxQueue};
use shm_contract::pool::MAX_POOLS;
use shm_contract::tx::{take_packet, ChainScan, TxInvalid, TxPacket, TxSink, TX_DESC_BUDGET};
use shm_contract::wake::{self, Waker};
use shm_contract::{Desc, DescConsumer, DescFlags, DescProducer, StatusBlock};

use crate::region::GuestRegion;
use crate::shadow::GuestPool;

/// Packets per NIC burst.
pub const BURST: usize = 32;
/// Longest packet chain accepted from a guest (and handed to it).
pub const MAX_SEGS: u32 = shm_contract::tx::MAX_SEGS;
/// A guest queue is not polled for a while after a poll that met invalid input from the
/// guest (on its tx ring an invalid or a refused packet; from its free ring an entry that
/// is no buffer of the pool, a buffer the proxy holds, or positions that used up the
/// round's retries): `PENALTY_FIRST` after the first such poll, twice as long after each
/// further one, at most `PENALTY_MAX`; only `PENALTY_MAX` of polls without invalid input
/// after a penalty start it again from `PENALTY_FIRST` ([`Penalty`]). So a guest that
/// keeps sending bad input, however it times it, gets at most about one poll that meets
/// it per `PENALTY_MAX`: what bad input costs the loop (a chain whose last descriptor is a
/// duplicate: 63 claims given back, their buffers freed; free-ring operations that fail;
/// at most one poll's bounded work) is a few microseconds per millisecond. Time, not a
/// count of polls: the loop polls millions of times a second when it has little to do,
/// so a penalty of a few hundred polls still let such chains take a fifth of it. An
/// honest guest never meets a penalty and never reads the clock for one
/// (docs/threat-model.md, R4).
const PENALTY_FIRST: Duration = Duration::from_micros(2);
const PENALTY_MAX: Duration = Duration::from_millis(1);
/// Ring slots assumed per received packet when the guest's rx ring is nearly full.
const RX_SEGS_ASSUMED: u32 = 8;
const RX_ROOM_FOR_BURST: u32 = BURST as u32 * RX_SEGS_ASSUMED;
/// A guest queue whose polls found nothing to do this many times in a row becomes
/// *cold*: it is no longer polled every round but visited in turn with the other cold
/// queues, one every `COLD_VISIT_EVERY` rounds, so that the loop's cost per round does
/// not grow with idle guests (a visit to an idle guest's rings is a few cache misses,
/// as much as a busy guest's burst of packets costs in all). Work found (packets from
/// the NIC, a packet from the guest, a full rx ring) makes it hot again at once.
const HOT_EMPTY_POLLS: u32 = 1024;
/// One cold queue is visited every this many rounds (every round while no queue is
/// hot), and one NIC queue without a guest is drained as often: with `n` cold queues a
/// cold guest's first packet waits at most `n * COLD_VISIT_EVERY` rounds (docs/proxy.md).
const COLD_VISIT_EVERY: u32 = 4;

/// Per-socket counters, and per queue pair. Written by the data loop (single writer,
/// plain load + store) into each queue pair's own, and by the control thread into the
/// socket's own (handshake, requests; what it does for a queue that the loop no longer
/// polls); read by the control thread, which adds them up ([`SocketStats::add`]).
#[derive(Default)]
pub struct SocketStats {
    /// NIC to guest: packets and bytes delivered.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// NIC to guest: dropped because the guest's rx ring was full (guest too slow).
    pub rx_dropped: AtomicU64,
    /// NIC to guest: packets that arrived in a buffer outside the guest's pool and were
    /// copied into one (only right after the queue switched pools).
    pub copies: AtomicU64,
    /// Guest to NIC: packets and bytes the NIC accepted.
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest to NIC: dropped because the NIC tx queue was full.
    pub tx_dropped: AtomicU64,
    /// Guest to NIC: valid packets the port cannot send (no bytes, more segments or a
    /// longer frame than the port takes, refused by the driver's `rte_eth_tx_prepare`):
    /// freed back to the guest unsent.
    pub tx_refused: AtomicU64,
    /// Guest to NIC: packets whose descriptors failed validation (also in `invalid`).
    pub tx_invalid: AtomicU64,
    /// Guest to NIC: packets still in the tx ring when the queue stopped, whose buffers
    /// went back to the guest's free ring unsent.
    pub tx_returned: AtomicU64,
    /// Descriptors or indices from the guest that failed validation (packet dropped).
    pub invalid: AtomicU64,
    /// Control thread: connections refused or cut during the handshake (busy socket,
    /// no common version, region too large, malformed or no Hello).
    pub refused: AtomicU64,
    /// Control thread: malformed messages and refused requests of a connected guest.
    pub bad_requests: AtomicU64,
    /// NIC to guest: wake-ups sent to a guest sleeping on an empty rx ring.
    pub rx_wakeups: AtomicU64,
    /// Control thread: descriptors peers passed where the protocol passes none (each
    /// such message cuts the connection; the descriptors are closed by the reaper).
    pub unwanted_fds: AtomicU64,
    /// Polls of the guest's queues skipped because earlier polls met invalid input
    /// (`PENALTY_FIRST`).
    pub penalty_polls: AtomicU64,
}

impl SocketStats {
    /// Every counter, in declaration order (for [`SocketStats::add`]).
    fn counters(&self) -> [&AtomicU64; COUNTERS] {
        [
            &self.rx_packets,
            &self.rx_bytes,
            &self.rx_dropped,
            &self.copies,
            &self.tx_packets,
            &self.tx_bytes,
            &self.tx_dropped,
            &self.tx_refused,
            &self.tx_invalid,
            &self.tx_returned,
            &self.invalid,
            &self.refused,
            &self.bad_requests,
            &self.rx_wakeups,
            &self.unwanted_fds,
            &self.penalty_polls,
        ]
    }

    /// Adds `other`'s counters to these (control thread: totals of a socket's queues).
    pub fn add(&self, other: &SocketStats) {
        for (a, b) in self.counters().iter().zip(other.counters().iter()) {
            a.store(a.load(Ordering::Relaxed).wrapping_add(b.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }
}

/// How many counters a [`SocketStats`] has.
const COUNTERS: usize = 16;
// A counter added to the struct but not to `counters` would not be summed: the struct
// is exactly that many counters.
const _: () = assert!(std::mem::size_of::<SocketStats>() == COUNTERS * 8);

/// A guest's rx wake-up: its request flag (status block) and the proxy's end of its
/// wake-up socket pair (protocol: `shm_contract::wake`).
struct RxWake {
    requested: &'static AtomicU32,
    waker: Waker,
}

/// A lock whose data stays consistent across a panic elsewhere (every critical section
/// here is a single assignment or take).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    if by != 0 {
        counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
    }
}

/// What was wrong with something a guest wrote, for the control thread's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Invalid {
    RingIndex = 1,
    Offset = 2,
    Length = 3,
    Segments = 4,
    Duplicate = 5,
}

impl From<TxInvalid> for Invalid {
    fn from(kind: TxInvalid) -> Invalid {
        match kind {
            TxInvalid::Offset => Invalid::Offset,
            TxInvalid::Length => Invalid::Length,
            TxInvalid::Segments => Invalid::Segments,
            TxInvalid::Duplicate => Invalid::Duplicate,
        }
    }
}

impl Invalid {
    pub fn from_u32(v: u32) -> Option<Invalid> {
        Some(match v {
            1 => Invalid::RingIndex,
            2 => Invalid::Offset,
            3 => Invalid::Length,
            4 => Invalid::Segments,
            5 => Invalid::Duplicate,
            _ => return None,
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Invalid::RingIndex => "a ring index moved impossibly (ring corrupted)",
            Invalid::Offset => "a descriptor names no buffer of the guest's pools",
            Invalid::Length => "a descriptor's data lies outside its buffer",
            Invalid::Segments => "a packet has too many segments",
            Invalid::Duplicate => "a buffer was handed over while the proxy held it",
        }
    }
}

/// What a port can be handed: a guest's packet beyond these is not sent (a physical NIC
/// may hang or reset a queue shared with other guests on an empty segment, too many
/// segments or an oversized frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxLimits {
    /// Segments per packet.
    pub max_segs: u32,
    /// Bytes per frame (without the CRC the NIC appends).
    pub max_frame: u32,
}

/// Ethernet header and two VLAN tags: what a frame may carry beyond the MTU.
const L2_OVERHEAD: u32 = 14 + 2 * 4;
/// What ethdev counts beyond the MTU in `max_rx_pktlen`: Ethernet header and CRC.
const ETHER_HDR_AND_CRC_LEN: u32 = 14 + CRC_LEN;
/// The CRC a NIC appends (counted in `max_rx_pktlen`, not in a packet's length).
const CRC_LEN: u32 = 4;

impl TxLimits {
    /// No limit beyond the contract's (tests, and ports that state none).
    pub const UNLIMITED: TxLimits = TxLimits { max_segs: MAX_SEGS, max_frame: u32::MAX };

    /// The limits of a port from its device info: segments (the tx descriptor limits),
    /// frame length (the device's largest
    /// frame, and the MTU the operator set, if any, plus the Ethernet header and two
    /// VLAN tags).
    pub fn of(info: &sys::rte_eth_dev_info, mtu_set: Option<u16>) -> TxLimits {
        let nonzero = |v: u16| if v == 0 { u32::MAX } else { v as u32 };
        // (Not the multi-segment offload flag: DPDK 22.11's virtual devices, net_null
        // and net_ring among them, send chains without declaring it.)
        let max_segs = MAX_SEGS.min(nonzero(info.tx_desc_lim.nb_seg_max)).min(nonzero(info.tx_desc_lim.nb_mtu_seg_max));
        let mut max_frame = if info.max_rx_pktlen == 0 { u32::MAX } else { info.max_rx_pktlen.saturating_sub(CRC_LEN) };
        if info.max_mtu != 0 && info.max_mtu != u16::MAX {
            max_frame = max_frame.min(info.max_mtu as u32 + L2_OVERHEAD);
        }
        if let Some(mtu) = mtu_set {
            max_frame = max_frame.min(mtu as u32 + L2_OVERHEAD);
        }
        TxLimits { max_segs: max_segs.max(1), max_frame }
    }

    /// The largest frame guests are told of (`Welcome::max_rx_frame`, their port's
    /// `max_rx_pktlen`, from which ethdev derives their largest MTU as 18 bytes less:
    /// Ethernet header and CRC): the device's own `max_rx_pktlen`, lowered to the MTU's
    /// frame where the device states a largest MTU or the operator set one, so that a
    /// guest cannot set an MTU above the port's (its frames would be refused here) and
    /// can set the port's (1500 on a 1500 port, as Open vSwitch does).
    pub fn announced_frame(info: &sys::rte_eth_dev_info, mtu_set: Option<u16>) -> u32 {
        let mtu_frame = |mtu: u16| mtu as u32 + ETHER_HDR_AND_CRC_LEN;
        let mut frame = if info.max_rx_pktlen == 0 { u32::MAX } else { info.max_rx_pktlen };
        if info.max_mtu != 0 && info.max_mtu != u16::MAX {
            frame = frame.min(mtu_frame(info.max_mtu));
        }
        if let Some(mtu) = mtu_set {
            frame = frame.min(mtu_frame(mtu));
        }
        frame
    }

    /// Whether a valid packet of `segs` segments and `len` bytes may go to the port
    /// (a chain's segments are never empty: `shm_contract::tx`).
    #[inline]
    fn admit(&self, segs: u32, len: u32) -> bool {
        // `len - 1 < max_frame` is `0 < len <= max_frame` in one comparison.
        len.wrapping_sub(1) < self.max_frame && segs <= self.max_segs
    }
}

/// The guest's pools by pool id, as tx descriptors may name them.
type Pools = [Option<GuestPool>; MAX_POOLS as usize];

/// One queue pair of a guest (its rings in the guest's region, one NIC queue): what
/// the control thread and the data loop share. A guest with several queue pairs has a
/// `DataQueue` for each started one; the loop polls each as a queue of its own.
pub struct DataQueue {
    pub port: u16,
    /// The NIC queue.
    pub queue: u16,
    /// The queue pair in the guest's region.
    pub pair: u32,
    pub stats: Arc<SocketStats>,
    /// The guest broke its ring: stop polling it; the control thread disconnects it.
    pub broken: AtomicBool,
    /// The first kind of invalid input seen (an `Invalid` value), for the log.
    pub first_invalid: AtomicU32,
    /// The mempool NIC rx fills (identity), for the control thread's checks.
    rx_mempool: usize,
    /// The polling state while the loop does not hold it (before the first publish,
    /// and after the loop let go of the queue).
    parked: Mutex<Option<QueueState>>,
    /// Every pool of the guest, for tx descriptors; the loop takes a copy with each
    /// configuration it picks up, so a change needs a publish.
    pools: Mutex<Pools>,
    /// What the port takes ([`DataQueue::with_tx_limits`]).
    tx_limits: TxLimits,
}

/// A queue's polling state: used by one thread at a time, moved between them.
struct QueueState {
    rx_ring: DescProducer<'static>,
    tx_ring: DescConsumer<'static>,
    /// The pool NIC rx fills (its shadows' mempool is the NIC queue's pool).
    rx_pool: GuestPool,
    /// Set when the guest started its queue with rx wake-ups.
    rx_wake: Option<RxWake>,
    /// The tx chain at the ring's read position that is not complete yet: how far it
    /// was scanned (kept across polls, so each descriptor is scanned once).
    tx_scan: ChainScan,
    /// Not polled for a while after polls that met invalid input (`PENALTY_FIRST`).
    penalty: Penalty,
    /// Keeps the mapping the ring views (and the wake-up flag) point into.
    _region: Arc<GuestRegion>,
}

impl DataQueue {
    /// A queue over the freshly initialised rings of queue pair `pair` of the region,
    /// served by NIC queue (`port`, `queue`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        region: &Arc<GuestRegion>,
        port: u16,
        queue: u16,
        pair: u32,
        rx_pool: GuestPool,
        rx_depth: u32,
        stats: Arc<SocketStats>,
        waker: Option<Waker>,
    ) -> Result<DataQueue, String> {
        // SAFETY: `_region` in the state keeps the mapping alive as long as these views.
        let mem = unsafe { region.mem_static() };
        let (rx_area, tx_area) =
            region.layout.rings_of(pair).ok_or_else(|| format!("the region has no queue pair {pair}"))?;
        let mut rx = DescProducer::new(&mem, rx_area).map_err(|e| format!("rx ring: {e}"))?;
        // The guest's rx queue holds no more buffers than it asked descriptors for: its
        // application sized its pool for that, not for the whole ring.
        rx.set_fill_limit(rx_depth);
        let tx = DescConsumer::new(&mem, tx_area).map_err(|e| format!("tx ring: {e}"))?;
        let rx_wake = match waker {
            Some(waker) => {
                let status =
                    StatusBlock::from_layout(&mem, &region.layout).map_err(|e| format!("status block: {e}"))?;
                let requested = status
                    .rx_wakeup_requested_of(pair)
                    .ok_or_else(|| format!("the status block has no wake-up flag for queue pair {pair}"))?;
                Some(RxWake { requested, waker })
            }
            None => None,
        };
        Ok(DataQueue {
            port,
            queue,
            pair,
            stats,
            broken: AtomicBool::new(false),
            first_invalid: AtomicU32::new(0),
            rx_mempool: rx_pool.pool.pkt_pool().as_ptr() as usize,
            parked: Mutex::new(Some(QueueState {
                rx_ring: rx,
                tx_ring: tx,
                rx_pool,
                rx_wake,
                tx_scan: ChainScan::default(),
                penalty: Penalty::default(),
                _region: region.clone(),
            })),
            pools: Mutex::new(Default::default()),
            tx_limits: TxLimits::UNLIMITED,
        })
    }

    /// The queue sends to a port with these limits.
    pub fn with_tx_limits(mut self, limits: TxLimits) -> DataQueue {
        self.tx_limits = limits;
        self
    }

    /// Makes a pool's buffers acceptable in tx descriptors (slot = pool id), or no
    /// longer (None). The loop sees the change with the next published configuration.
    pub fn set_pool(&self, slot: u32, pool: Option<GuestPool>) {
        if let Some(cell) = lock(&self.pools).get_mut(slot as usize) {
            *cell = pool;
        }
    }

    /// Whether NIC rx fills this queue from `pool`.
    pub fn fills_from(&self, pool: &dpdk::PktPool) -> bool {
        self.rx_mempool == pool.as_ptr() as usize
    }

    fn tx_invalid(&self, kind: TxInvalid) {
        bump(&self.stats.tx_invalid, 1);
        self.invalid(kind.into(), 1);
    }

    fn invalid(&self, kind: Invalid, count: u64) {
        bump(&self.stats.invalid, count);
        let _ = self.first_invalid.compare_exchange(0, kind as u32, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn break_ring(&self) {
        self.invalid(Invalid::RingIndex, 1);
        self.broken.store(true, Ordering::Release);
    }

    /// Returns buffers the guest published for tx but the proxy never took (queue stop):
    /// the guest counts them as sent, so they go back to its free ring. Call it after the
    /// queue left the published configuration; returns 0 while the loop still holds it.
    pub fn return_unsent(&self) -> u32 {
        let mut parked = lock(&self.parked);
        let Some(state) = parked.as_mut() else {
            return 0;
        };
        let pools = lock(&self.pools).clone();
        let ring = &mut state.tx_ring;
        let Ok(avail) = ring.available(u32::MAX) else {
            return 0;
        };
        // Claim first, then give back what was claimed: an offset the guest listed twice
        // is claimed once, so it is returned once. A failed claim is a buffer the proxy
        // holds or a duplicate: left alone.
        let claimed: Vec<Mbuf> = (0..avail)
            .filter_map(|i| find_buffer(&pools, ring.read(i).offset))
            .filter_map(|(p, idx)| p.pool.take(idx))
            .collect();
        ring.release(avail);
        state.tx_scan.reset();
        let returned = claimed.len() as u32;
        // Freeing a shadow returns its buffer to the guest's free ring (the mempool ops).
        drop(claimed);
        returned
    }
}

/// What a received packet's first descriptor carries besides its buffer: flags for
/// the offloads the NIC did, the stripped VLAN tag, the RSS hash.
#[inline]
fn rx_metadata(m: &Mbuf) -> (DescFlags, u16, u32) {
    let ol = m.ol_flags();
    let mut flags = DescFlags::empty();
    if ol & sys::RTE_MBUF_F_RX_RSS_HASH as u64 != 0 {
        flags |= DescFlags::RSS_HASH;
    }
    if ol & sys::RTE_MBUF_F_RX_VLAN_STRIPPED as u64 != 0 {
        flags |= DescFlags::VLAN;
    }
    (flags, m.vlan_tci(), m.rss_hash())
}

/// Whether a packet of `segs` segments may go into the rx ring at `slot` (`free` slots
/// known free, `slot <= free`): at most MAX_SEGS, and room for all of them. The guest's
/// index is re-read (into `free`) only when the cached view is short.
#[inline]
fn room_for(ring: &mut DescProducer<'_>, free: &mut u32, slot: u32, segs: u32) -> bool {
    if segs > MAX_SEGS {
        return false;
    }
    // `*free >= slot` stays true: the ring accepts only a consumer index that moves
    // forward, so a re-read never shows fewer free slots than were promised.
    if segs > *free - slot {
        *free = ring.free_slots(u32::MAX).unwrap_or(*free);
    }
    segs <= *free - slot
}

/// Invalid entries met in the guest's free rings so far, all pools (`ShadowCtx::invalid`).
#[inline]
fn pools_invalid(pools: &Pools) -> u64 {
    pools.iter().flatten().map(|p| p.ctx.invalid.load(Ordering::Relaxed)).fold(0, u64::wrapping_add)
}

/// At the end of a queue's poll, in one pass over its pools: what [`pools_invalid`]
/// returns, and each pool's free-ring retries refilled for the next round
/// ([`ShadowCtx::new_round`](crate::shadow::ShadowCtx::new_round)): the operations until
/// this queue's next poll (NIC frees, the next poll's own) share them.
#[inline]
fn end_poll(pools: &Pools) -> u64 {
    pools.iter().flatten().fold(0, |sum, p| {
        p.ctx.new_round();
        sum.wrapping_add(p.ctx.invalid.load(Ordering::Relaxed))
    })
}

/// For how long a guest queue is not polled after polls that met invalid input
/// (`PENALTY_FIRST`): each faulty poll doubles the penalty, up to `PENALTY_MAX`, until the
/// guest was polled without one for `PENALTY_MAX` after its penalty ended. (A reset after
/// one clean poll would let a guest that alternates clean and faulty polls, or whose
/// chains take a poll to scan and one to take, stay at the first penalty.) The clock is
/// read only while a penalty runs or may be reset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Penalty {
    /// Not polled before this.
    until: Option<Instant>,
    /// The last penalty imposed (zero: none since the last reset).
    last: Duration,
}

impl Penalty {
    /// At the start of a poll: whether to skip it (the penalty runs).
    #[inline]
    fn skip(&mut self, now: impl FnOnce() -> Instant) -> bool {
        match self.until {
            None => false,
            Some(until) => now() < until,
        }
    }

    /// After a poll that was not skipped, which met invalid input if `faulty`: returns
    /// the penalty imposed now (zero: none).
    #[inline]
    fn after_poll(&mut self, faulty: bool, now: impl FnOnce() -> Instant) -> Duration {
        if faulty {
            self.last = (self.last * 2).clamp(PENALTY_FIRST, PENALTY_MAX);
            self.until = Some(now() + self.last);
            return self.last;
        }
        if let Some(until) = self.until {
            if now().saturating_duration_since(until) >= PENALTY_MAX {
                *self = Penalty::default();
            }
        }
        Duration::ZERO
    }
}

/// The pool and index of the guest buffer whose mbuf is at `offset`, if it is one.
#[inline]
fn find_buffer(pools: &Pools, offset: u32) -> Option<(&GuestPool, u32)> {
    pools.iter().flatten().find_map(|p| p.ctx.layout.buffer_index(offset).map(|idx| (p, idx)))
}

/// A queue in the configuration the loop runs, owned by the loop while it is: the shared
/// part, its polling state, and the NIC queues' handles (handed back by `apply_config`).
struct LoopQueue {
    q: Arc<DataQueue>,
    state: QueueState,
    pools: Pools,
    rxq: RxQueue,
    txq: TxQueue,
    /// Polls in a row that found nothing to do (`HOT_EMPTY_POLLS`).
    empty_polls: u32,
    /// The pools' invalid free-ring entries ([`pools_invalid`]) after the last poll.
    free_invalid_seen: u64,
    /// This poll's tx met an invalid or a refused packet.
    tx_faulty: bool,
}

impl LoopQueue {
    /// One poll: NIC rx to the guest, then the guest's tx to the NIC. Returns whether
    /// there was work: packets from the NIC, a full rx ring, or packets (or a backoff)
    /// on the guest's tx ring. `hot`: the queue is polled every round, and the ring
    /// lines it will touch are prefetched (a cold queue's visit touches the fewest).
    #[inline]
    fn poll(&mut self, burst: &mut MbufBurst<BURST>, hot: bool) -> bool {
        if self.q.broken.load(Ordering::Relaxed) {
            return false;
        }
        if self.state.penalty.skip(Instant::now) {
            // Skipped polls count as work: the queue stays hot, so it is polled again
            // as soon as its penalty ends.
            bump(&self.q.stats.penalty_polls, 1);
            return true;
        }
        // Take from the NIC only what the guest has room for: the rest waits in the NIC
        // (which counts it as missed when full) instead of costing buffers here.
        // A full burst needs room for chains too (a 9000-byte frame is about 5 buffers).
        let room = match self.state.rx_ring.free_slots(RX_ROOM_FOR_BURST) {
            Ok(room) => room,
            Err(_) => {
                self.q.break_ring();
                return false;
            }
        };
        let want = if room >= RX_ROOM_FOR_BURST { BURST as u32 } else { room / RX_SEGS_ASSUMED };
        // A ring the guest has not emptied yet is work in progress, not idleness.
        let mut busy = want == 0;
        // Every ring line this poll touches was last touched by the guest's core. Asked
        // for now, the transfers overlap with the NIC's rx and with each other, instead
        // of each stalling the loop in turn (the guest's tx index is read after the rx
        // half, the rx slots are written after the NIC burst).
        if hot {
            self.state.tx_ring.prefetch_producer_index();
            self.state.rx_ring.prefetch_slots(want);
        }
        if want > 0 && self.rxq.rx_burst(burst, want as u16) > 0 {
            busy = true;
            #[cfg(feature = "stage-stamps")]
            let stamps = crate::stages::Stamps::of(burst);
            #[cfg(feature = "stage-stamps")]
            stamps.record(latency_stages::Stage::ProxyNicRx);
            self.deliver_to_guest(burst);
            #[cfg(feature = "stage-stamps")]
            stamps.record(latency_stages::Stage::ProxyDelivered);
        }
        busy |= self.send_to_nic(burst);
        // Invalid input from the free ring shows in the pools' counters (NIC rx took
        // buffers from it, buffers went back; or the control thread met some).
        let free_invalid = end_poll(&self.pools);
        let faulty = std::mem::take(&mut self.tx_faulty) || free_invalid != self.free_invalid_seen;
        self.free_invalid_seen = free_invalid;
        self.state.penalty.after_poll(faulty, Instant::now);
        busy
    }

    /// Hands received packets to the guest: their buffers are the guest's already.
    fn deliver_to_guest(&mut self, burst: &mut MbufBurst<BURST>) {
        let q = &*self.q;
        let state = &mut self.state;
        let ring = &mut state.rx_ring;
        let rx_pool = &state.rx_pool;
        // poll() made sure of room for a burst; the guest's index is re-read below only
        // when chains need more than the cached view shows.
        let mut free = match ring.free_slots(burst.len() as u32) {
            Ok(f) => f,
            Err(_) => {
                // Freeing returns the buffers to the guest's free ring.
                burst.clear();
                q.break_ring();
                return;
            }
        };
        let rx_mp = rx_pool.pool.pkt_pool().as_ptr();
        // Each packet is either delivered or dropped: the delivered are counted at the end.
        let received_count = burst.len() as u64;
        let (mut slot, mut bytes, mut dropped, mut copies) = (0u32, 0u64, 0u64, 0u64);
        for received in burst.drain() {
            // Every packet needs a slot: checked first, so that between the packet's
            // checks below and its release nothing but loads happens.
            if !room_for(ring, &mut free, slot, 1) {
                // Dropping it returns its buffers to the guest's free ring.
                dropped += 1;
                continue;
            }
            if received.nb_segs() == 1 && received.pool() == rx_mp {
                // The usual case, one segment of the guest's pool (in the free slot just
                // checked): its index is computed once, and only the header's first cache
                // line is read.
                let (flags, vlan_tci, rss_hash) = rx_metadata(&received);
                let (data_off, data_len) = (received.data_off(), received.data_len());
                // The slot is free, so nothing fails between the release and the write.
                match rx_pool.pool.release(received) {
                    Ok(idx) => {
                        let offset = rx_pool.ctx.layout.buffer_offset(idx);
                        ring.write(slot, &Desc { offset, data_off, data_len, flags, vlan_tci, rss_hash });
                        slot += 1;
                        bytes += data_len as u64;
                    }
                    Err(m) => {
                        // Not a shadow after all (cannot happen: the pool is the mempool's).
                        drop(m);
                        dropped += 1;
                    }
                }
                continue;
            }
            let m = if received.all_segments_from(rx_mp) {
                received
            } else {
                // A buffer from the parking pool (or a driver's own): copy it into a
                // guest buffer so nothing received after the switch is lost.
                let copy = received.copy_to(rx_pool.mempool());
                drop(received);
                match copy {
                    Some(c) => {
                        copies += 1;
                        c
                    }
                    None => {
                        dropped += 1;
                        continue;
                    }
                }
            };
            if !room_for(ring, &mut free, slot, m.nb_segs() as u32) {
                // Dropping it returns its buffers to the guest's free ring.
                dropped += 1;
                continue;
            }
            let (head_flags, vlan, rss) = rx_metadata(&m);
            // Descriptors first (unpublished until the end), then the buffers change hands.
            let first = slot;
            let mut written = true;
            for seg in m.segments() {
                let Some(offset) = rx_pool.offset_of_segment(seg.addr) else {
                    written = false;
                    break;
                };
                let flags = if seg.has_next { head_flags | DescFlags::NEXT } else { head_flags };
                ring.write(
                    slot,
                    &Desc {
                        offset,
                        data_off: seg.data_off,
                        data_len: seg.data_len,
                        flags,
                        vlan_tci: vlan,
                        rss_hash: rss,
                    },
                );
                slot += 1;
            }
            if !written {
                // Not a shadow of the pool after all (checked above; cannot happen).
                slot = first;
                dropped += 1;
                continue;
            }
            bytes += m.pkt_len() as u64;
            for seg in m.into_segments() {
                // Back to the state of a free mbuf in a pool (unlinked), for when the
                // guest returns the buffer and a driver takes it raw.
                if let Err(seg) = rx_pool.pool.release(seg) {
                    // Cannot happen (every segment was found above); freeing is safe.
                    drop(seg);
                }
            }
        }
        if slot > 0 {
            ring.publish(slot);
            if let Some(w) = &state.rx_wake {
                // The guest may be asleep on an empty ring: one datagram if it asked.
                if wake::take_request(w.requested) && w.waker.wake() {
                    bump(&q.stats.rx_wakeups, 1);
                }
            }
        }
        bump(&q.stats.rx_packets, received_count - dropped);
        bump(&q.stats.rx_bytes, bytes);
        bump(&q.stats.rx_dropped, dropped);
        bump(&q.stats.copies, copies);
    }

    /// Takes the guest's published packets, validated, and sends them. Returns whether
    /// the tx ring had descriptors for it; sets `tx_faulty` when one was invalid or
    /// refused.
    fn send_to_nic(&mut self, burst: &mut MbufBurst<BURST>) -> bool {
        let q = &*self.q;
        let ring = &mut self.state.tx_ring;
        let scan = &mut self.state.tx_scan;
        // The guest's producer index is re-read (a cache line the guest's core keeps
        // writing) only when the cached view holds less than a burst, or no more than
        // the chain that waits for its next part.
        let pending = scan.waiting();
        let avail = match ring.available((BURST as u32).max(pending + 1)) {
            // Nothing new; a chain waiting for its next part is not work either.
            Ok(a) if a <= pending => return false,
            Ok(a) => a,
            Err(_) => {
                q.break_ring();
                return false;
            }
        };
        ring.prefetch_available(avail.min(BURST as u32));
        let mut used = 0u32;
        let mut bytes = 0u64;
        // However a guest fills its ring, one poll of it reads at most TX_DESC_BUDGET
        // descriptors and takes at most BURST packets, valid or not (shm_contract::tx),
        // so it cannot starve the other guests' queues of the data loop's time.
        let mut budget = TX_DESC_BUDGET;
        let mut taken = 0usize;
        let (mut invalid, mut refused) = (0u64, 0u64);
        let limits = q.tx_limits;
        let mut chain = TxChain { pools: &self.pools, port: q.port, head: None };
        while taken < BURST && used < avail {
            taken += 1;
            match take_packet(|i| ring.read(i), &mut used, avail, &mut budget, scan, &mut chain) {
                TxPacket::Incomplete => break,
                TxPacket::Invalid(kind) => {
                    invalid += 1;
                    q.tx_invalid(kind);
                }
                TxPacket::Valid { segs, len, vlan } => {
                    let Some(mut head) = chain.head.take() else {
                        continue;
                    };
                    if !limits.admit(segs, len) {
                        // Freed: back to the guest's free ring.
                        refused += 1;
                        continue;
                    }
                    if let Some(tci) = vlan {
                        head.set_tx_vlan(tci);
                    }
                    bytes += len as u64;
                    // Room for BURST; `taken` bounds the packets to BURST.
                    let _ = burst.push(head);
                }
            }
        }
        ring.release(used);
        if !burst.is_empty() {
            // The driver's own checks; what it refuses goes back to the guest.
            let n = self.txq.tx_prepare(burst);
            if n > 0 {
                refused += n as u64;
                bytes = burst.as_slice().iter().map(|m| m.pkt_len() as u64).sum();
            }
        }
        bump(&q.stats.tx_refused, refused);
        if invalid + refused > 0 {
            self.tx_faulty = true;
        }
        if burst.is_empty() {
            return true;
        }
        #[cfg(feature = "stage-stamps")]
        let stamps = crate::stages::Stamps::of(burst);
        #[cfg(feature = "stage-stamps")]
        stamps.record(latency_stages::Stage::ProxyTxTaken);
        let count = burst.len();
        let sent = self.txq.tx_burst(burst);
        #[cfg(feature = "stage-stamps")]
        stamps.record(latency_stages::Stage::ProxyNicTx);
        if sent < count {
            // What the NIC did not take goes back to the guest's free ring.
            let unsent_bytes: u64 = burst.as_slice().iter().map(|m| m.pkt_len() as u64).sum();
            burst.clear();
            bytes -= unsent_bytes;
            bump(&q.stats.tx_dropped, (count - sent) as u64);
        }
        bump(&q.stats.tx_packets, sent as u64);
        bump(&q.stats.tx_bytes, bytes);
        true
    }

    /// Empties this lcore's mempool caches of the queue's pools into the guest's rings.
    fn flush_caches(&self) {
        for p in self.pools.iter().flatten() {
            dpdk::flush_lcore_cache(p.mempool());
        }
    }
}

/// The packet being assembled from a guest's tx descriptors: the shadows claimed so
/// far, chained. The validation itself is `shm_contract::tx::take_packet`.
struct TxChain<'p> {
    pools: &'p Pools,
    port: u16,
    head: Option<Mbuf>,
}

impl<'p> TxSink for TxChain<'p> {
    type Seg = (&'p GuestPool, u32);

    #[inline(always)]
    fn find(&self, offset: u32) -> Option<(Self::Seg, u16)> {
        find_buffer(self.pools, offset).map(|(p, idx)| ((p, idx), p.ctx.layout.data_room()))
    }

    // Always inlined, as `take_segment` that calls it: the work on each packet.
    #[inline(always)]
    fn claim(&mut self, (pool, idx): Self::Seg, d: &Desc) -> bool {
        let Some(mut m) = pool.pool.take(idx) else {
            return false;
        };
        // take_packet checked the data against the buffer; set_data checks again.
        if m.set_data(d.data_off, d.data_len).is_err() {
            let _ = pool.pool.release(m);
            return false;
        }
        m.reset_tx_metadata(self.port);
        match &mut self.head {
            None => self.head = Some(m),
            Some(head) => {
                if let Err((m, _)) = head.chain(m) {
                    let _ = pool.pool.release(m);
                    return false;
                }
            }
        }
        true
    }

    fn drop_packet(&mut self) {
        // Freed: back to the guest's free ring.
        self.head = None;
    }
}

/// What the data loop polls.
pub struct PlaneConfig {
    pub version: u64,
    pub active: Vec<Arc<DataQueue>>,
    /// NIC queues without a guest: drained so that stale packets do not pile up.
    pub idle: Vec<(u16, u16)>,
}

/// The shared state between the control thread and the data loop.
pub struct Plane {
    /// The configuration to run; the loop copies what it needs when `version` moves.
    config: Mutex<Arc<PlaneConfig>>,
    /// Version of `config`.
    version: AtomicU64,
    /// The configuration version the loop is running.
    seen: AtomicU64,
    running: AtomicBool,
    stop: AtomicBool,
    /// Control threads waiting for the loop's acknowledgement (`seen`, `running`); the
    /// loop takes `ack_lock` and signals `ack` only when there is one.
    ack_waiters: AtomicUsize,
    ack_lock: Mutex<()>,
    ack: Condvar,
    /// Packets that arrived on NIC queues without a guest and were dropped.
    pub unclaimed: AtomicU64,
    /// Queues the loop could not take up (a handle refused), for the log.
    pub refused_queues: AtomicUsize,
}

impl Default for Plane {
    fn default() -> Self {
        Self::new()
    }
}

impl Plane {
    pub fn new() -> Plane {
        Plane {
            config: Mutex::new(Arc::new(PlaneConfig { version: 0, active: Vec::new(), idle: Vec::new() })),
            version: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            running: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ack_waiters: AtomicUsize::new(0),
            ack_lock: Mutex::new(()),
            ack: Condvar::new(),
            unclaimed: AtomicU64::new(0),
            refused_queues: AtomicUsize::new(0),
        }
    }

    /// Installs a new configuration and waits until the loop runs it: queues not in it
    /// are then parked again and their NIC queues have no handle.
    pub fn publish(&self, active: Vec<Arc<DataQueue>>, idle: Vec<(u16, u16)>) {
        let version = {
            let mut cfg = lock(&self.config);
            let version = cfg.version + 1;
            *cfg = Arc::new(PlaneConfig { version, active, idle });
            // SeqCst with `running` below and in the loop: either this sees the loop
            // running and waits, or the loop's first look sees this version.
            self.version.store(version, Ordering::SeqCst);
            version
        };
        self.wait_seen(version);
    }

    /// Waits until every NIC burst the loop had started before the call has returned:
    /// the configuration is published again unchanged, and the loop picks a new version
    /// up only between rounds. Packet capture calls it (on EAL's multi-process thread)
    /// after removing a capture callback and before freeing what that callback uses.
    /// False if the loop did not confirm in time (it still runs the old round).
    pub fn quiesce(&self) -> bool {
        let version = {
            let mut cfg = lock(&self.config);
            let version = cfg.version + 1;
            *cfg = Arc::new(PlaneConfig { version, active: cfg.active.clone(), idle: cfg.idle.clone() });
            self.version.store(version, Ordering::SeqCst);
            version
        };
        self.wait_seen(version)
    }

    /// Waits (bounded) until the loop runs configuration `version` or is not running.
    fn wait_seen(&self, version: u64) -> bool {
        let acked = self.wait_ack(|| !self.running.load(Ordering::SeqCst) || self.seen.load(Ordering::SeqCst) >= version);
        if !acked {
            // The loop is stuck inside a driver call; what it holds stays held (and
            // the DPDK layer refuses to set up its queues meanwhile).
            eprintln!("dpdk-io-proxy: data loop did not pick up configuration {version} in 5 s");
        }
        acked
    }

    /// Waits until `done` holds, for at most 5 s, woken by the loop's `acknowledge`.
    /// False if it still does not hold then.
    fn wait_ack(&self, done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut guard = lock(&self.ack_lock);
        // SeqCst with the loop's store and load in `acknowledge`: either the loop sees
        // a waiter and signals under the lock, or this check sees its store.
        self.ack_waiters.fetch_add(1, Ordering::SeqCst);
        let acked = loop {
            if done() {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            guard = self.ack.wait_timeout(guard, left).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        };
        self.ack_waiters.fetch_sub(1, Ordering::SeqCst);
        acked
    }

    /// The loop, after storing `seen` or `running`: wakes the control threads waiting for
    /// that (a lock and a system call, only when one waits: a configuration change).
    fn acknowledge(&self) {
        if self.ack_waiters.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.ack_lock);
            self.ack.notify_all();
        }
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits (bounded) until the loop has returned after `request_stop`.
    pub fn wait_stopped(&self) {
        self.wait_ack(|| !self.running.load(Ordering::SeqCst));
    }

    /// The polling loop; returns after `request_stop`.
    pub fn run(&self) {
        self.run_with(|_| ());
    }

    /// The polling loop, calling `extra` once per round: the latency probe of the
    /// benchmark mode (`--bench-latency`) shares the data loop's lcore this way, and
    /// sees through the [`RoundView`] which pool the NIC's receive queue fills.
    pub fn run_with(&self, mut extra: impl FnMut(&RoundView<'_>)) {
        self.running.store(true, Ordering::SeqCst);
        let mut burst = MbufBurst::<BURST>::new();
        let mut rota: Rota<LoopQueue> = Rota::new();
        let mut idle: Vec<RxQueue> = Vec::new();
        let mut idle_next = 0usize;
        // Offset from the rota's rounds, so that a cold visit and a drain fall apart.
        let mut idle_round = COLD_VISIT_EVERY / 2;
        let mut running_version = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            if self.version.load(Ordering::SeqCst) != running_version {
                // The control thread holds the lock only to swap the configuration: when
                // it does, try again next round.
                if let Ok(cfg) = self.config.try_lock().map(|c| c.clone()) {
                    let mut polled = rota.take_all();
                    self.apply_config(&cfg, &mut polled, &mut idle);
                    rota.set(polled);
                    running_version = cfg.version;
                    self.seen.store(running_version, Ordering::SeqCst);
                    self.acknowledge();
                }
            }
            rota.round(|p, hot| p.poll(&mut burst, hot));
            // NIC queues without a guest: one drained in turn every COLD_VISIT_EVERY
            // rounds, like cold queues (what they cannot hold meanwhile the NIC drops
            // and counts as missed).
            idle_round = idle_round.wrapping_add(1);
            if !idle.is_empty() && idle_round.is_multiple_of(COLD_VISIT_EVERY) {
                if idle_next >= idle.len() {
                    idle_next = 0;
                }
                self.drain_idle(&mut idle[idle_next], &mut burst);
                idle_next += 1;
            }
            extra(&RoundView { rota: &rota });
        }
        let none = PlaneConfig { version: u64::MAX, active: Vec::new(), idle: Vec::new() };
        let mut polled = rota.take_all();
        self.apply_config(&none, &mut polled, &mut idle);
        self.seen.store(u64::MAX, Ordering::SeqCst);
        self.running.store(false, Ordering::SeqCst);
        self.acknowledge();
    }

    /// Drops what arrived on a NIC queue without a guest. Not inlined: it is no part of
    /// moving a guest's packets, and `scripts/profile.sh` subtracts it by this name (a
    /// `net_null` queue fills a burst at every call, so before the guest is attached
    /// and after it left the drain would otherwise count as the data path's cost).
    #[inline(never)]
    fn drain_idle(&self, rxq: &mut RxQueue, burst: &mut MbufBurst<BURST>) {
        let n = rxq.rx_burst(burst, BURST as u16);
        if n > 0 {
            burst.clear();
            bump(&self.unclaimed, n as u64);
        }
    }

    /// Makes the loop's queues those of `cfg`: queues that leave have their buffers
    /// cached on this lcore returned, their state parked and their handles dropped,
    /// before queues that join take theirs.
    fn apply_config(&self, cfg: &PlaneConfig, owned: &mut Vec<LoopQueue>, idle: &mut Vec<RxQueue>) {
        idle.clear();
        let mut kept = Vec::with_capacity(cfg.active.len());
        for mut p in owned.drain(..) {
            if cfg.active.iter().any(|q| Arc::ptr_eq(q, &p.q)) {
                // Pools may have changed: buffers of a pool that left go back first.
                let pools = lock(&p.q.pools).clone();
                for old in p.pools.iter().flatten() {
                    if !pools
                        .iter()
                        .flatten()
                        .any(|n| std::ptr::eq(n.pool.pkt_pool().as_ptr(), old.pool.pkt_pool().as_ptr()))
                    {
                        dpdk::flush_lcore_cache(old.mempool());
                    }
                }
                p.pools = pools;
                p.free_invalid_seen = pools_invalid(&p.pools);
                kept.push(p);
            } else {
                p.flush_caches();
                *lock(&p.q.parked) = Some(p.state);
                // p.rxq and p.txq drop here: the NIC queues are free to set up again.
            }
        }
        for q in &cfg.active {
            if kept.iter().any(|p| Arc::ptr_eq(&p.q, q)) {
                continue;
            }
            let Some(state) = lock(&q.parked).take() else {
                // Held by a loop that did not let go (after a timed-out publish).
                self.refused_queues.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            match (Port(q.port).rx_queue(q.queue), Port(q.port).tx_queue(q.queue)) {
                (Ok(rxq), Ok(txq)) => {
                    let pools = lock(&q.pools).clone();
                    // A queue that joins is hot: its guest just started it.
                    let free_invalid_seen = pools_invalid(&pools);
                    kept.push(LoopQueue {
                        q: q.clone(),
                        state,
                        pools,
                        rxq,
                        txq,
                        empty_polls: 0,
                        free_invalid_seen,
                        tx_faulty: false,
                    });
                }
                _ => {
                    *lock(&q.parked) = Some(state);
                    self.refused_queues.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        *owned = kept;
        for &(port, queue) in &cfg.idle {
            match Port(port).rx_queue(queue) {
                Ok(rxq) => idle.push(rxq),
                Err(_) => {
                    self.refused_queues.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Something the loop polls, with its count of polls in a row that found no work.
trait Heat {
    fn empty_polls(&mut self) -> &mut u32;
}

impl Heat for LoopQueue {
    fn empty_polls(&mut self) -> &mut u32 {
        &mut self.empty_polls
    }
}

/// What [`Plane::run_with`]'s per-round hook may look at: the queues the loop serves.
pub struct RoundView<'a> {
    rota: &'a Rota<LoopQueue>,
}

impl RoundView<'_> {
    /// The pool that NIC queue (`port`, `queue`) receives into while the loop serves a
    /// guest on it (the guest's pool, whose buffers the loop hands over without a copy);
    /// None while no guest is served there. Valid for this round: the loop holds the
    /// queue, so the pool stays.
    pub fn rx_pool(&self, port: u16, queue: u16) -> Option<&dpdk::PktPool> {
        self.rota
            .hot
            .iter()
            .chain(self.rota.cold.iter())
            .find(|p| p.q.port == port && p.q.queue == queue)
            .map(|p| p.state.rx_pool.pool.pkt_pool())
    }
}

/// Which guest queues a round polls: every hot one, and in some rounds one cold one
/// (`HOT_EMPTY_POLLS`, `COLD_VISIT_EVERY`). Both lists have room for every queue, so
/// moving one between them never allocates.
struct Rota<T> {
    hot: Vec<T>,
    cold: Vec<T>,
    /// The cold queue visited next.
    next: usize,
    rounds: u32,
}

impl<T: Heat> Rota<T> {
    fn new() -> Rota<T> {
        Rota { hot: Vec::new(), cold: Vec::new(), next: 0, rounds: 0 }
    }

    /// Every queue, the lists emptied (the loop changes configuration).
    fn take_all(&mut self) -> Vec<T> {
        self.hot.drain(..).chain(self.cold.drain(..)).collect()
    }

    /// Makes `all` the queues, each in the list its count of empty polls says.
    fn set(&mut self, all: Vec<T>) {
        let total = all.len();
        self.hot.clear();
        self.cold.clear();
        for mut p in all {
            if *p.empty_polls() >= HOT_EMPTY_POLLS {
                self.cold.push(p);
            } else {
                self.hot.push(p);
            }
        }
        self.hot.reserve(total - self.hot.len());
        self.cold.reserve(total - self.cold.len());
    }

    /// One round: `poll(queue, hot)` on every hot queue and, every `COLD_VISIT_EVERY`
    /// rounds or while none is hot, on the next cold one; it returns whether the queue
    /// had work.
    #[inline]
    fn round(&mut self, mut poll: impl FnMut(&mut T, bool) -> bool) {
        self.rounds = self.rounds.wrapping_add(1);
        let mut i = 0;
        while i < self.hot.len() {
            let p = &mut self.hot[i];
            if poll(p, true) {
                *p.empty_polls() = 0;
                i += 1;
                continue;
            }
            let empty = p.empty_polls();
            *empty += 1;
            if *empty >= HOT_EMPTY_POLLS {
                self.cold.push(self.hot.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if self.cold.is_empty() || !(self.hot.is_empty() || self.rounds.is_multiple_of(COLD_VISIT_EVERY)) {
            return;
        }
        if self.next >= self.cold.len() {
            self.next = 0;
        }
        if poll(&mut self.cold[self.next], false) {
            let mut p = self.cold.swap_remove(self.next);
            *p.empty_polls() = 0;
            self.hot.push(p);
        } else {
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(nb_seg_max: u16, multi_segs: bool, max_rx_pktlen: u32, max_mtu: u16) -> sys::rte_eth_dev_info {
        let mut info = sys::rte_eth_dev_info::default();
        info.tx_desc_lim.nb_seg_max = nb_seg_max;
        info.tx_desc_lim.nb_mtu_seg_max = u16::MAX;
        if multi_segs {
            info.tx_offload_capa = sys::RTE_ETH_TX_OFFLOAD_MULTI_SEGS as u64;
        }
        info.max_rx_pktlen = max_rx_pktlen;
        info.max_mtu = max_mtu;
        info
    }

    /// The control thread's waits end on the loop's acknowledgement, not on a timer: a
    /// configuration published while the loop runs is seen when `publish` returns, and
    /// `wait_stopped` returns once the loop has (both well inside their 5 s bound).
    #[test]
    fn the_control_thread_waits_for_the_loops_acknowledgement() {
        let plane = Arc::new(Plane::new());
        // Not running: nobody to wait for.
        let t = std::time::Instant::now();
        plane.publish(Vec::new(), Vec::new());
        assert!(t.elapsed() < Duration::from_secs(1));
        let rounds = Arc::new(AtomicU64::new(0));
        let looping = {
            let (plane, rounds) = (plane.clone(), rounds.clone());
            std::thread::spawn(move || {
                plane.run_with(|_| {
                    rounds.fetch_add(1, Ordering::Relaxed);
                })
            })
        };
        while rounds.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        for _ in 0..100 {
            let t = std::time::Instant::now();
            plane.publish(Vec::new(), vec![]);
            let version = plane.version.load(Ordering::SeqCst);
            assert!(plane.seen.load(Ordering::SeqCst) >= version, "publish returned before the loop took it up");
            assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
            assert!(plane.quiesce());
        }
        plane.request_stop();
        let t = std::time::Instant::now();
        plane.wait_stopped();
        assert!(t.elapsed() < Duration::from_secs(4));
        assert!(!plane.running.load(Ordering::SeqCst));
        looping.join().unwrap();
    }

    #[test]
    fn tx_limits_follow_the_device_and_the_mtu_set() {
        // A virtual device that states no limits (DPDK's defaults): the contract's.
        let none = TxLimits::of(&info(u16::MAX, true, u32::MAX, u16::MAX), None);
        assert_eq!(none, TxLimits { max_segs: MAX_SEGS, max_frame: u32::MAX - CRC_LEN });
        // A NIC: 8 segments, 9728-byte frames (CRC included), MTU up to 9702.
        let nic = TxLimits::of(&info(8, true, 9728, 9702), None);
        assert_eq!(nic, TxLimits { max_segs: 8, max_frame: 9724 });
        // The operator set an MTU of 1500: Ethernet header and two VLAN tags more.
        let mtu1500 = TxLimits::of(&info(8, true, 9728, 9702), Some(1500));
        assert_eq!(mtu1500.max_frame, 1522);
        // Guests are told 1518 (their MTU up to 1500): a 1500-byte payload with two
        // VLAN tags is the largest frame they may send, and it is admitted.
        assert_eq!(TxLimits::announced_frame(&info(8, true, 9728, 9702), Some(1500)), 1518);
        assert!(mtu1500.admit(1, 1500 + L2_OVERHEAD) && !mtu1500.admit(1, 1500 + L2_OVERHEAD + 1));
        // Without --mtu: the device's largest MTU's frame, or its max_rx_pktlen (tap:
        // 1522, no largest MTU stated; its guests may set 1504, Open vSwitch sets 1500).
        assert_eq!(TxLimits::announced_frame(&info(8, true, 9728, 9702), None), 9720);
        assert_eq!(TxLimits::announced_frame(&info(8, true, 1522, u16::MAX), None), 1522);
        assert_eq!(TxLimits::announced_frame(&info(0, true, 0, 0), None), u32::MAX);
        // The device's segment limit.
        assert_eq!(TxLimits::of(&info(40, false, 9728, 9702), None).max_segs, 40);
        // Zero means "not stated".
        assert_eq!(TxLimits::of(&info(0, true, 0, 0), None), TxLimits::UNLIMITED);
    }

    struct Fake {
        id: usize,
        empty: u32,
    }

    impl Heat for Fake {
        fn empty_polls(&mut self) -> &mut u32 {
            &mut self.empty
        }
    }

    #[test]
    fn idle_queues_go_cold_and_cost_a_share_of_a_poll_each() {
        let mut rota = Rota::new();
        rota.set((0..64).map(|id| Fake { id, empty: 0 }).collect());
        let capacity = (rota.hot.capacity(), rota.cold.capacity());
        // Queue 0 always has work; the others never.
        for _ in 0..HOT_EMPTY_POLLS {
            rota.round(|p, _| p.id == 0);
        }
        assert_eq!(rota.hot.iter().map(|p| p.id).collect::<Vec<_>>(), vec![0]);
        assert_eq!(rota.cold.len(), 63);
        // From now on a round polls the busy queue, and every COLD_VISIT_EVERY rounds one
        // cold queue: each of the 63 is visited once in 63 * COLD_VISIT_EVERY rounds.
        let mut polls = [0u32; 64];
        let rounds = 63 * COLD_VISIT_EVERY;
        for _ in 0..rounds {
            let mut cold_polls = 0;
            rota.round(|p, hot| {
                polls[p.id] += 1;
                cold_polls += u32::from(!hot);
                p.id == 0
            });
            assert!(cold_polls <= 1);
        }
        assert_eq!(polls[0], rounds);
        assert!(polls[1..].iter().all(|&n| n == 1), "{polls:?}");
        // Work on a cold queue makes it hot at its next visit.
        let mut waited = 0;
        while !rota.hot.iter().any(|p| p.id == 42) {
            rota.round(|p, _| p.id == 0 || p.id == 42);
            waited += 1;
        }
        assert!(waited <= 63 * COLD_VISIT_EVERY, "{waited}");
        assert_eq!(rota.hot.len() + rota.cold.len(), 64);
        // Moving queues between the lists never allocated.
        assert_eq!((rota.hot.capacity(), rota.cold.capacity()), capacity);
        // A new configuration keeps each queue's heat.
        let all = rota.take_all();
        rota.set(all);
        assert_eq!(rota.hot.len(), 2);
        assert_eq!(rota.cold.len(), 62);
    }

    #[test]
    fn with_no_hot_queue_every_round_visits_a_cold_one() {
        let mut rota = Rota::new();
        rota.set((0..200).map(|id| Fake { id, empty: HOT_EMPTY_POLLS }).collect());
        let mut polls = [0u32; 200];
        for _ in 0..400 {
            rota.round(|p, hot| {
                assert!(!hot);
                polls[p.id] += 1;
                false
            });
        }
        assert!(polls.iter().all(|&n| n == 2), "{polls:?}");
    }

    #[test]
    fn a_penalty_doubles_with_each_faulty_poll_and_ends_after_a_clean_stretch() {
        // A loop polling every microsecond, on a clock of its own.
        let t0 = Instant::now();
        let us = |n: u64| t0 + Duration::from_micros(n);
        let mut p = Penalty::default();
        // An honest guest: never skipped, and the clock is never read for it.
        for _ in 0..1000 {
            assert!(!p.skip(|| unreachable!()));
            assert_eq!(p.after_poll(false, || unreachable!()), Duration::ZERO);
        }
        // A guest whose every poll that is done meets invalid input, or every other one
        // (a chain scanned in one poll and taken in the next), or after any number of
        // clean polls short of PENALTY_MAX: the penalty doubles to PENALTY_MAX and stays
        // there, so over a second at most about one poll per PENALTY_MAX meets bad input.
        let max_us = PENALTY_MAX.as_micros() as u64;
        for clean_between in [0, 1, 2, 10, max_us / 2] {
            let mut p = Penalty::default();
            let (mut faulty, mut since, mut imposed) = (0u64, 0u64, Vec::new());
            for t in 0..1_000_000 {
                if p.skip(|| us(t)) {
                    continue;
                }
                let fault = since >= clean_between;
                since = if fault { 0 } else { since + 1 };
                if fault {
                    faulty += 1;
                    imposed.push(p.after_poll(true, || us(t)));
                } else {
                    assert_eq!(p.after_poll(false, || us(t)), Duration::ZERO);
                }
            }
            let first: Vec<u128> = imposed.iter().take(10).map(|d| d.as_micros()).collect();
            assert_eq!(first, [2, 4, 8, 16, 32, 64, 128, 256, 512, 1000], "{clean_between} clean between");
            assert!(imposed.iter().all(|&d| d <= PENALTY_MAX));
            assert!(faulty <= 12 + 1_000_000 / max_us, "{clean_between} clean between: {faulty} faulty polls");
        }
        // Clean for PENALTY_MAX after the penalty ended: the next fault costs the first
        // penalty again, not the cap.
        let mut p = Penalty::default();
        for k in 0..20 {
            p.after_poll(true, || us(k));
        }
        let end = 19 + max_us;
        assert!(p.skip(|| us(end - 1)));
        assert!(!p.skip(|| us(end)));
        assert_eq!(p.after_poll(false, || us(end)), Duration::ZERO);
        assert_eq!(p.after_poll(true, || us(end + 1)), PENALTY_MAX, "not clean for long enough");
        let end = end + 1 + max_us;
        assert_eq!(p.after_poll(false, || us(end + max_us)), Duration::ZERO);
        assert_eq!(p.after_poll(true, || us(end + max_us + 1)), PENALTY_FIRST);
        assert!(p.skip(|| us(end + max_us + 2)));
        assert!(!p.skip(|| us(end + max_us + 3)));
    }

    #[test]
    fn socket_stats_add_every_counter() {
        let a = SocketStats::default();
        let b = SocketStats::default();
        for (i, c) in b.counters().iter().enumerate() {
            c.store(i as u64 + 1, Ordering::Relaxed);
        }
        a.add(&b);
        a.add(&b);
        for (i, c) in a.counters().iter().enumerate() {
            assert_eq!(c.load(Ordering::Relaxed), 2 * (i as u64 + 1));
        }
        // Named fields land where they belong.
        assert_eq!(a.rx_packets.load(Ordering::Relaxed), 2);
        assert_eq!(a.unwanted_fds.load(Ordering::Relaxed), 2 * (COUNTERS as u64 - 1));
        assert_eq!(a.penalty_polls.load(Ordering::Relaxed), 2 * COUNTERS as u64);
    }

    #[test]
    fn admission() {
        let l = TxLimits { max_segs: 4, max_frame: 1522 };
        assert!(l.admit(1, 60));
        assert!(l.admit(4, 1522));
        assert!(!l.admit(1, 0), "no bytes");
        assert!(!l.admit(5, 60), "too many segments");
        assert!(!l.admit(1, 1523), "too long");
        assert!(TxLimits::UNLIMITED.admit(MAX_SEGS, u32::MAX));
    }
}
