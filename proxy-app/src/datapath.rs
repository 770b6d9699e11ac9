//! The data path: one polling loop that moves packets between NIC queues and guests'
//! descriptor rings. No allocation, no syscall and no lock happens here.
//!
//! The control thread changes what the loop polls by publishing a new [`PlaneConfig`]
//! and waiting until the loop has picked it up (it reports the version it runs), after
//! which nothing refers to the old configuration and its queues can be torn down.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpdk::sys;
use shm_contract::pool::MAX_POOLS;
use shm_contract::tx::{take_packet, TxInvalid, TxPacket, TxSink};
use shm_contract::wake::{self, Waker};
use shm_contract::{Desc, DescConsumer, DescFlags, DescProducer, StatusBlock};

use crate::region::GuestRegion;
use crate::shadow::ShadowCtx;

/// Packets per NIC burst.
pub const BURST: usize = 32;
/// Longest packet chain accepted from a guest (and handed to it).
pub const MAX_SEGS: u32 = shm_contract::tx::MAX_SEGS;
/// Ring slots assumed per received packet when the guest's rx ring is nearly full.
const RX_SEGS_ASSUMED: u32 = 8;
const RX_ROOM_FOR_BURST: u32 = BURST as u32 * RX_SEGS_ASSUMED;

/// Per-socket counters. Written by the data loop (single writer, plain load + store);
/// read by the control thread.
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
}

/// A guest's rx wake-up: its request flag (status block) and the proxy's end of its
/// wake-up socket pair (protocol: `shm_contract::wake`).
struct RxWake {
    requested: &'static AtomicU32,
    waker: Waker,
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

/// One guest's queue as the data loop sees it.
pub struct DataQueue {
    pub port: u16,
    pub queue: u16,
    rx_ring: UnsafeCell<DescProducer<'static>>,
    tx_ring: UnsafeCell<DescConsumer<'static>>,
    /// The pool NIC rx fills (its shadows' mempool is the NIC queue's pool).
    rx_pool: Arc<ShadowCtx>,
    rx_mempool: *mut sys::rte_mempool,
    /// Every pool of the guest, for tx descriptors. Set by the control thread; the
    /// pointee is kept alive by the guest's state, which outlives this queue.
    pools: [AtomicPtr<ShadowCtx>; MAX_POOLS as usize],
    /// The shadow mempools of those pools, whose per-lcore caches the loop flushes when
    /// it lets go of this queue (so every buffer is back in the guest's free ring).
    mempools: [AtomicPtr<sys::rte_mempool>; MAX_POOLS as usize],
    pub stats: Arc<SocketStats>,
    /// The guest broke its ring: stop polling it; the control thread disconnects it.
    pub broken: AtomicBool,
    /// The first kind of invalid input seen (an `Invalid` value), for the log.
    pub first_invalid: AtomicU32,
    /// Set when the guest started its queue with rx wake-ups.
    rx_wake: Option<RxWake>,
    _region: Arc<GuestRegion>,
}

// SAFETY: the ring state is used only by the data loop (one thread) while the queue is in
// the published configuration, and by the control thread only before publishing or after
// the loop has let go of it; the raw mempool pointer is DPDK's thread-safe object.
unsafe impl Send for DataQueue {}
// SAFETY: as above.
unsafe impl Sync for DataQueue {}

impl DataQueue {
    /// A queue over freshly initialised rings.
    pub fn new(
        region: &Arc<GuestRegion>,
        port: u16,
        queue: u16,
        rx_pool: Arc<ShadowCtx>,
        rx_mempool: *mut sys::rte_mempool,
        stats: Arc<SocketStats>,
        waker: Option<Waker>,
    ) -> Result<DataQueue, String> {
        // SAFETY: `_region` keeps the mapping alive as long as these views.
        let mem = unsafe { region.mem_static() };
        let rx = DescProducer::new(&mem, region.layout.rx_ring()).map_err(|e| format!("rx ring: {e}"))?;
        let tx = DescConsumer::new(&mem, region.layout.tx_ring()).map_err(|e| format!("tx ring: {e}"))?;
        let rx_wake = match waker {
            Some(waker) => {
                let status = StatusBlock::from_layout(&mem, &region.layout).map_err(|e| format!("status block: {e}"))?;
                Some(RxWake { requested: status.rx_wakeup_requested(), waker })
            }
            None => None,
        };
        Ok(DataQueue {
            port,
            queue,
            rx_ring: UnsafeCell::new(rx),
            tx_ring: UnsafeCell::new(tx),
            rx_pool,
            rx_mempool,
            pools: Default::default(),
            mempools: Default::default(),
            stats,
            broken: AtomicBool::new(false),
            first_invalid: AtomicU32::new(0),
            rx_wake,
            _region: region.clone(),
        })
    }

    /// Makes a pool's buffers acceptable in tx descriptors (slot = pool id).
    pub fn set_pool(&self, slot: u32, pool: Option<(&Arc<ShadowCtx>, *mut sys::rte_mempool)>) {
        if let (Some(cell), Some(mp_cell)) = (self.pools.get(slot as usize), self.mempools.get(slot as usize)) {
            let ptr = pool.map_or(std::ptr::null_mut(), |(p, _)| Arc::as_ptr(p) as *mut ShadowCtx);
            cell.store(ptr, Ordering::Release);
            mp_cell.store(pool.map_or(std::ptr::null_mut(), |(_, mp)| mp), Ordering::Release);
        }
    }

    /// Empties this lcore's mempool caches of the queue's pools into the guest's rings.
    ///
    /// # Safety
    /// Called by the data loop, the only lcore that uses these caches.
    unsafe fn flush_caches(&self) {
        for cell in &self.mempools {
            let mp = cell.load(Ordering::Acquire);
            if mp.is_null() {
                continue;
            }
            // SAFETY: a live mempool (the guest state outlives the queue); the cache is
            // this lcore's own.
            unsafe {
                let cache = sys::rte_mempool_default_cache(mp, sys::rte_lcore_id());
                if !cache.is_null() {
                    sys::rte_mempool_cache_flush(cache, mp);
                }
            }
        }
    }

    pub fn rx_mempool(&self) -> *mut sys::rte_mempool {
        self.rx_mempool
    }

    fn invalid(&self, kind: Invalid, count: u64) {
        bump(&self.stats.invalid, count);
        let _ = self.first_invalid.compare_exchange(0, kind as u32, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn break_ring(&self) {
        self.invalid(Invalid::RingIndex, 1);
        self.broken.store(true, Ordering::Release);
    }

    /// One poll: NIC rx to the guest, then the guest's tx to the NIC.
    ///
    /// # Safety
    /// Called only by the data loop while this queue is in the published configuration.
    #[inline]
    unsafe fn poll(&self, pkts: &mut [*mut sys::rte_mbuf; BURST]) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        // Take from the NIC only what the guest has room for: the rest waits in the NIC
        // (which counts it as missed when full) instead of costing buffers here.
        // A full burst needs room for chains too (a 9000-byte frame is about 5 buffers).
        // SAFETY: only the data loop touches the ring state.
        let room = match unsafe { &mut *self.rx_ring.get() }.free_slots(RX_ROOM_FOR_BURST) {
            Ok(room) => room,
            Err(_) => {
                self.break_ring();
                return;
            }
        };
        let want = if room >= RX_ROOM_FOR_BURST { BURST as u32 } else { room / RX_SEGS_ASSUMED };
        let n = if want == 0 {
            0
        } else {
            // SAFETY: the data loop owns the NIC queue; pkts has room for BURST.
            unsafe { sys::rte_eth_rx_burst(self.port, self.queue, pkts.as_mut_ptr(), want as u16) as usize }
        };
        if n > 0 {
            // SAFETY: the NIC gave us n packets.
            unsafe { self.to_guest(&pkts[..n]) };
        }
        // SAFETY: as above.
        unsafe { self.to_nic(pkts) };
    }

    /// Hands received packets to the guest: their buffers are the guest's already.
    ///
    /// # Safety
    /// Data loop only; `pkts` are packets the NIC just returned.
    unsafe fn to_guest(&self, pkts: &[*mut sys::rte_mbuf]) {
        // SAFETY: only the data loop touches the ring state.
        let ring = unsafe { &mut *self.rx_ring.get() };
        // poll() made sure of room for a burst; the guest's index is re-read below only
        // when chains need more than the cached view shows.
        let mut free = match ring.free_slots(pkts.len() as u32) {
            Ok(f) => f,
            Err(_) => {
                // SAFETY: our packets; freeing returns their buffers to the guest's ring.
                unsafe { free_all(pkts) };
                self.break_ring();
                return;
            }
        };
        let (mut slot, mut delivered, mut bytes, mut dropped, mut copies) = (0u32, 0u64, 0u64, 0u64, 0u64);
        for &received in pkts {
            let mut m = received;
            // SAFETY: m is a packet the NIC returned; its segments are ours.
            unsafe {
                if !all_from(m, self.rx_mempool) {
                    // A buffer from the parking pool (or a driver's own): copy it into a
                    // guest buffer so nothing received after the switch is lost.
                    let copy = sys::rte_pktmbuf_copy(m, self.rx_mempool, 0, u32::MAX);
                    sys::rte_pktmbuf_free(m);
                    if copy.is_null() {
                        dropped += 1;
                        continue;
                    }
                    copies += 1;
                    m = copy;
                }
                let segs = (*m).nb_segs as u32;
                if segs <= MAX_SEGS && segs > free - slot {
                    free = ring.free_slots(u32::MAX).unwrap_or(free);
                }
                if segs > MAX_SEGS || segs > free - slot {
                    sys::rte_pktmbuf_free(m);
                    dropped += 1;
                    continue;
                }
                bytes += (*m).pkt_len as u64;
                let ol = (*m).ol_flags;
                let mut head_flags = DescFlags::empty();
                if ol & sys::RTE_MBUF_F_RX_RSS_HASH as u64 != 0 {
                    head_flags |= DescFlags::RSS_HASH;
                }
                if ol & sys::RTE_MBUF_F_RX_VLAN_STRIPPED as u64 != 0 {
                    head_flags |= DescFlags::VLAN;
                }
                let (vlan, rss) = ((*m).vlan_tci, (*m).__bindgen_anon_2.hash.rss);
                let mut seg = m;
                while !seg.is_null() {
                    let next = (*seg).next;
                    let mut flags = head_flags;
                    if !next.is_null() {
                        flags |= DescFlags::NEXT;
                    }
                    ring.write(
                        slot,
                        &Desc {
                            offset: self.rx_pool.offset_of(seg),
                            data_off: (*seg).data_off,
                            data_len: (*seg).data_len,
                            flags,
                            vlan_tci: vlan,
                            rss_hash: rss,
                        },
                    );
                    slot += 1;
                    // Back to the state of a free mbuf in a pool, for when the guest
                    // returns the buffer and a driver takes it raw.
                    (*seg).next = std::ptr::null_mut();
                    (*seg).nb_segs = 1;
                    self.rx_pool.release_to_guest(seg);
                    seg = next;
                }
                delivered += 1;
            }
        }
        if slot > 0 {
            ring.publish(slot);
            if let Some(w) = &self.rx_wake {
                // The guest may be asleep on an empty ring: one datagram if it asked.
                if wake::take_request(w.requested) && w.waker.wake() {
                    bump(&self.stats.rx_wakeups, 1);
                }
            }
        }
        bump(&self.stats.rx_packets, delivered);
        bump(&self.stats.rx_bytes, bytes);
        bump(&self.stats.rx_dropped, dropped);
        bump(&self.stats.copies, copies);
    }

    /// The pool and shadow of the guest buffer whose mbuf is at `offset`, if it is one.
    #[inline]
    fn find_shadow(&self, offset: u32) -> Option<(&ShadowCtx, *mut sys::rte_mbuf)> {
        self.pools.iter().find_map(|cell| {
            // SAFETY: a published pool outlives the queue (set_pool's contract).
            let ctx = unsafe { cell.load(Ordering::Acquire).as_ref() }?;
            ctx.shadow_of(offset).map(|m| (ctx, m))
        })
    }

    /// Takes the guest's published packets, validated, and sends them.
    ///
    /// # Safety
    /// Data loop only; `pkts` is scratch space.
    unsafe fn to_nic(&self, pkts: &mut [*mut sys::rte_mbuf; BURST]) {
        // SAFETY: only the data loop touches the ring state.
        let ring = unsafe { &mut *self.tx_ring.get() };
        // The guest's producer index is re-read (a cache line the guest's core keeps
        // writing) only when the cached view holds less than a burst.
        let avail = match ring.available(BURST as u32) {
            Ok(0) => return,
            Ok(a) => a,
            Err(_) => {
                self.break_ring();
                return;
            }
        };
        let mut used = 0u32;
        let mut count = 0usize;
        let mut bytes = 0u64;
        // Invalid packets count against the burst too: however a guest fills its ring,
        // one poll of it does at most BURST packets' worth of work, so it cannot starve
        // the other guests' queues of the data loop's time.
        let mut taken = 0usize;
        let mut chain = TxChain { q: self, head: std::ptr::null_mut(), tail: std::ptr::null_mut() };
        while taken < BURST && used < avail {
            taken += 1;
            match take_packet(|i| ring.read(i), &mut used, avail, &mut chain) {
                TxPacket::Incomplete => break,
                TxPacket::Invalid(kind) => self.invalid(kind.into(), 1),
                TxPacket::Valid { segs, len, vlan } => {
                    let head = std::mem::replace(&mut chain.head, std::ptr::null_mut());
                    chain.tail = std::ptr::null_mut();
                    // SAFETY: head is a valid chain of claimed shadows.
                    unsafe {
                        (*head).pkt_len = len;
                        (*head).nb_segs = segs as u16;
                        if let Some(tci) = vlan {
                            (*head).ol_flags |= sys::RTE_MBUF_F_TX_VLAN as u64;
                            (*head).vlan_tci = tci;
                        }
                    }
                    pkts[count] = head;
                    count += 1;
                    bytes += len as u64;
                }
            }
        }
        ring.release(used);
        if count == 0 {
            return;
        }
        // SAFETY: the data loop owns the NIC tx queue; pkts[..count] are valid packets.
        let sent = unsafe { sys::rte_eth_tx_burst(self.port, self.queue, pkts.as_mut_ptr(), count as u16) } as usize;
        if sent < count {
            let mut unsent_bytes = 0u64;
            for &m in &pkts[sent..count] {
                // SAFETY: packets the NIC did not take are still ours.
                unsafe {
                    unsent_bytes += (*m).pkt_len as u64;
                    sys::rte_pktmbuf_free(m);
                }
            }
            bytes -= unsent_bytes;
            bump(&self.stats.tx_dropped, (count - sent) as u64);
        }
        bump(&self.stats.tx_packets, sent as u64);
        bump(&self.stats.tx_bytes, bytes);
    }

    /// Returns buffers the guest published for tx but the proxy never took (queue stop):
    /// the guest counts them as sent, so they go back to its free ring.
    ///
    /// # Safety
    /// The queue is not in the published configuration (the loop lets go of it).
    pub unsafe fn return_unsent(&self) -> u32 {
        // SAFETY: per the contract nobody else uses the ring state.
        let ring = unsafe { &mut *self.tx_ring.get() };
        let Ok(avail) = ring.available(u32::MAX) else { return 0 };
        // Claim first, then give back what was claimed: an offset the guest listed twice
        // is claimed once, so it is returned once.
        for i in 0..avail {
            if let Some((ctx, m)) = self.find_shadow(ring.read(i).offset) {
                // SAFETY: m is a shadow of ctx; nobody else uses it now. A failed claim
                // is a buffer the proxy holds or a duplicate: left alone.
                unsafe { ctx.claim(m) };
            }
        }
        let mut returned = 0;
        for i in 0..avail {
            let offset = ring.read(i).offset;
            if let Some((ctx, m)) = self.find_shadow(offset) {
                // SAFETY: as above.
                if unsafe { ctx.unclaim_if_held(m) } {
                    ctx.return_offset(offset);
                    returned += 1;
                }
            }
        }
        ring.release(avail);
        returned
    }
}

/// Whether every segment of `m` comes from `mp`.
///
/// # Safety
/// `m` is a valid packet.
#[inline]
unsafe fn all_from(mut m: *mut sys::rte_mbuf, mp: *mut sys::rte_mempool) -> bool {
    while !m.is_null() {
        // SAFETY: valid segments.
        unsafe {
            if (*m).pool != mp {
                return false;
            }
            m = (*m).next;
        }
    }
    true
}

/// # Safety
/// Each packet is valid and owned by the caller.
unsafe fn free_all(pkts: &[*mut sys::rte_mbuf]) {
    for &m in pkts {
        // SAFETY: per the contract.
        unsafe { sys::rte_pktmbuf_free(m) };
    }
}

/// Gives back the ownership of a chain claimed from the tx ring without sending it (the
/// descriptors stay in the ring and are read again).
///
/// # Safety
/// `m` is a chain of shadows claimed by `DataQueue::claim`.
unsafe fn unclaim_chain(mut m: *mut sys::rte_mbuf) {
    while !m.is_null() {
        // SAFETY: per the contract; the owner mark lives in the shadow's private area.
        unsafe {
            let next = (*m).next;
            (*m).next = std::ptr::null_mut();
            crate::shadow::unclaim(m);
            m = next;
        }
    }
}

/// The packet being assembled from a guest's tx descriptors: the shadows claimed so
/// far, linked. The validation itself is `shm_contract::tx::take_packet`.
struct TxChain<'q> {
    q: &'q DataQueue,
    head: *mut sys::rte_mbuf,
    tail: *mut sys::rte_mbuf,
}

// Used only inside `DataQueue::to_nic`, by the data loop, the only user of the queue's
// shadows while it is published.
impl<'q> TxSink for TxChain<'q> {
    type Seg = (&'q ShadowCtx, *mut sys::rte_mbuf);

    #[inline]
    fn find(&self, offset: u32) -> Option<(Self::Seg, u16)> {
        self.q.find_shadow(offset).map(|(ctx, m)| ((ctx, m), ctx.layout.data_room()))
    }

    #[inline]
    fn claim(&mut self, (ctx, m): Self::Seg, d: &Desc) -> bool {
        // SAFETY: m is a shadow of ctx's pool; the data loop is its only user.
        unsafe {
            if !ctx.claim(m) {
                return false;
            }
            (*m).data_off = d.data_off;
            (*m).data_len = d.data_len;
            (*m).pkt_len = d.data_len as u32;
            (*m).nb_segs = 1;
            (*m).next = std::ptr::null_mut();
            (*m).ol_flags = 0;
            (*m).port = self.q.port;
            (*m).__bindgen_anon_1.packet_type = 0;
            (*m).__bindgen_anon_3.tx_offload = 0;
            if self.head.is_null() {
                self.head = m;
            } else {
                // tail is a segment of this chain.
                (*self.tail).next = m;
            }
        }
        self.tail = m;
        true
    }

    fn unclaim_packet(&mut self) {
        if !self.head.is_null() {
            // SAFETY: the segments claimed so far; their descriptors stay in the ring and
            // are read again, so only the claim is undone.
            unsafe { unclaim_chain(self.head) };
        }
        self.head = std::ptr::null_mut();
        self.tail = std::ptr::null_mut();
    }

    fn drop_packet(&mut self) {
        if !self.head.is_null() {
            // SAFETY: our claimed chain: back to the guest's free ring.
            unsafe { sys::rte_pktmbuf_free(self.head) };
        }
        self.head = std::ptr::null_mut();
        self.tail = std::ptr::null_mut();
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
    current: AtomicPtr<PlaneConfig>,
    /// The configuration version the loop is running.
    seen: AtomicU64,
    running: AtomicBool,
    stop: AtomicBool,
    next_version: AtomicU64,
    /// Packets that arrived on NIC queues without a guest and were dropped.
    pub unclaimed: AtomicU64,
}

impl Plane {
    pub fn new() -> Plane {
        let empty = Box::new(PlaneConfig { version: 0, active: Vec::new(), idle: Vec::new() });
        Plane {
            current: AtomicPtr::new(Box::into_raw(empty)),
            seen: AtomicU64::new(0),
            running: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            next_version: AtomicU64::new(1),
            unclaimed: AtomicU64::new(0),
        }
    }

    /// Installs a new configuration and waits until the loop no longer uses the old one.
    pub fn publish(&self, active: Vec<Arc<DataQueue>>, idle: Vec<(u16, u16)>) {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let new = Box::into_raw(Box::new(PlaneConfig { version, active, idle }));
        let old = self.current.swap(new, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.running.load(Ordering::SeqCst) && self.seen.load(Ordering::Acquire) < version {
            if Instant::now() > deadline {
                // The loop is stuck inside a driver call; leaking the old configuration
                // is the only safe choice.
                eprintln!("dpdk-io-proxy: data loop did not pick up configuration {version} in 5 s");
                return;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        // SAFETY: `old` came from Box::into_raw and the loop has let go of it.
        drop(unsafe { Box::from_raw(old) });
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Waits (bounded) until the loop has returned after `request_stop`.
    pub fn wait_stopped(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.running.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The polling loop; returns after `request_stop`.
    pub fn run(&self) {
        self.run_with(|| ());
    }

    /// The polling loop, calling `extra` once per round: the latency probe of the
    /// benchmark mode (`--bench-latency`) shares the data loop's lcore this way.
    pub fn run_with(&self, mut extra: impl FnMut()) {
        // SeqCst with the swap in `publish`: either `publish` sees the loop running and
        // waits, or the loop's first load sees the new configuration.
        self.running.store(true, Ordering::SeqCst);
        let mut pkts = [std::ptr::null_mut::<sys::rte_mbuf>(); BURST];
        let mut previous: *const PlaneConfig = std::ptr::null();
        while !self.stop.load(Ordering::Relaxed) {
            let cfg = self.current.load(Ordering::SeqCst);
            if !previous.is_null() && previous != cfg as *const PlaneConfig {
                // Before saying we let go of the old configuration: its queues' buffers
                // cached on this lcore go back to their guests.
                // SAFETY: `previous` stays allocated until `seen` moves past it.
                for q in unsafe { &(*previous).active } {
                    // SAFETY: data loop.
                    unsafe { q.flush_caches() };
                }
            }
            previous = cfg;
            // SAFETY: the control thread frees a configuration only after `seen` shows
            // that this loop moved past it.
            let cfg = unsafe { &*cfg };
            self.seen.store(cfg.version, Ordering::Release);
            for q in &cfg.active {
                // SAFETY: q is in the published configuration.
                unsafe { q.poll(&mut pkts) };
            }
            for &(port, queue) in &cfg.idle {
                // SAFETY: the loop owns idle NIC queues too.
                let n = unsafe { sys::rte_eth_rx_burst(port, queue, pkts.as_mut_ptr(), BURST as u16) } as usize;
                if n > 0 {
                    // SAFETY: packets just received, ours to free.
                    unsafe { free_all(&pkts[..n]) };
                    bump(&self.unclaimed, n as u64);
                }
            }
            extra();
        }
        if !previous.is_null() {
            // SAFETY: as above.
            for q in unsafe { &(*previous).active } {
                // SAFETY: data loop.
                unsafe { q.flush_caches() };
            }
        }
        self.seen.store(u64::MAX, Ordering::Release);
        self.running.store(false, Ordering::Release);
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let cfg = *self.current.get_mut();
        // SAFETY: the loop has stopped; the pointer came from Box::into_raw.
        drop(unsafe { Box::from_raw(cfg) });
    }
}
