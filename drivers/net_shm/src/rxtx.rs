//! The data path: rx and tx bursts over the descriptor rings in the shared region.
//!
//! rx: the proxy publishes one descriptor per segment of each received packet; the
//! descriptor names a buffer of one of our pools by offset. We fill our own mbuf header
//! for it (exactly what a NIC PMD does from a NIC descriptor); the proxy never writes
//! our headers, so every pointer we follow was written by this process.
//!
//! tx: an mbuf whose header lies in this port's region (direct, not shared) is handed
//! over as-is: its offset and lengths go into the tx ring and the proxy returns the
//! buffer to the pool's free ring after the NIC sent it. Any other mbuf is first copied
//! into a region mbuf, and counted.
//!
//! No allocation, no syscall and no lock here; a queue is polled by one thread at a time
//! (DPDK's rule), and the counters are single-writer atomics read by the stats callbacks.
//!
//! Each queue's ring state sits behind a [`PollGate`]: a burst runs only through an open
//! gate, and the control path (stop, a lost proxy's reclaim, a restart) takes the state
//! only after closing the gate and seeing the polling thread acknowledge that it left
//! any burst in progress, however long that thread was descheduled.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use dpdk_sys as sys;
use shm_contract::desc::DescChain;
use shm_contract::handover::PollGate;
use shm_contract::layout::RingArea;
use shm_contract::wake;
use shm_contract::{Desc, DescConsumer, DescFlags, DescProducer, PoolLayout, StatusBlock};
use shm_driver_common::bus::RegionHandle;

use crate::offload;

/// Packets of at most this many segments are accepted from the proxy (the contract's
/// limit, the same both ways).
pub use shm_contract::tx::MAX_SEGS;
/// Bursts larger than this are cut (the ring would be the limit anyway).
const MAX_BURST_DESCS: u32 = 512;

/// Counters of one queue: written by its polling thread only (load + store), read by
/// the stats callbacks.
#[derive(Default)]
pub struct QueueStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// rx: descriptors the proxy got wrong; tx: packets dropped (no buffer to copy into).
    pub errors: AtomicU64,
    /// tx: packets copied into the region because their mbuf was not in it.
    pub copies: AtomicU64,
    /// tx: bursts cut short because the ring was full.
    pub ring_full: AtomicU64,
}

#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    // Single writer: a plain load and store, no locked instruction on the hot path.
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// What an rx queue's polling thread works on: its own ring, and the hidden queues of
/// the queue pairs folded into it.
pub struct RxRings {
    ring: DescConsumer<'static>,
    /// Queue pairs beyond the application's rx queues (it configured fewer rx than tx
    /// queues): their rings are read by this queue's bursts after its own, so what the
    /// proxy's NIC steers to them is received too ([`RxQueue::fold`]). Set at port start.
    folded: Vec<Arc<RxQueue>>,
}

pub struct RxQueue {
    ring: PollGate<RxRings>,
    area: RingArea,
    /// Keeps the mapping alive for `ring` and `base` (one reference to the bus plugin's
    /// region, shared with the folded queues; the burst never calls through it).
    region: Arc<RegionHandle>,
    base: *mut u8,
    /// The pool the proxy fills NIC rx from: every offset it sends must be one of its mbufs.
    pool: PoolLayout,
    pub pool_id: u32,
    /// The descriptors the application asked for: the proxy keeps at most this many
    /// buffers in the ring (the application sized its pool for them).
    pub depth: u32,
    /// A pool this queue created because the application's pool is not in the region;
    /// held only so that it is freed with the queue.
    _own_mempool: Option<OwnedMempool>,
    pub mempool: *mut sys::rte_mempool,
    port_id: u16,
    /// The rx offloads the application enabled (port and queue), done by
    /// [`offload::rx_offload`].
    offloads: u64,
    /// Shared with the queues folded into this one (the same thread writes both).
    pub stats: Arc<QueueStats>,
    /// The status block's `rx_wakeup_requested` of this queue's pair (rx interrupts;
    /// `crate::intr`).
    wakeup_requested: Option<&'static AtomicU32>,
}

// SAFETY: the raw pointers point into the region (kept alive by `region`) or at a mempool
// that outlives the queue; the ring state is behind its gate.
unsafe impl Send for RxQueue {}
// SAFETY: as above.
unsafe impl Sync for RxQueue {}

/// What an rx queue receives into and how: the application's setup of the queue (a
/// hidden queue takes the one of the queue that reads it).
#[derive(Clone, Copy)]
pub struct RxQueueConf {
    /// The pool the proxy fills NIC rx from.
    pub pool: PoolLayout,
    pub pool_id: u32,
    /// The descriptors the application asked for.
    pub depth: u32,
    pub mempool: *mut sys::rte_mempool,
    pub port_id: u16,
    /// The rx offloads the application enabled (port and queue).
    pub offloads: u64,
}

impl RxQueue {
    pub fn new(
        region: Arc<RegionHandle>,
        area: RingArea,
        ring: DescConsumer<'static>,
        conf: RxQueueConf,
        own_mempool: Option<OwnedMempool>,
        pair: u32,
    ) -> RxQueue {
        let RxQueueConf { pool, pool_id, depth, mempool, port_id, offloads } = conf;
        // SAFETY: the view lives in `region`, which the queue holds.
        let mem = unsafe { region.mem_static() };
        let wakeup_requested =
            StatusBlock::from_layout(&mem, &region.layout).ok().and_then(|s| s.rx_wakeup_requested_of(pair));
        RxQueue {
            wakeup_requested,
            ring: PollGate::new(RxRings { ring, folded: Vec::new() }),
            area,
            base: region.base(),
            region,
            pool,
            pool_id,
            depth,
            _own_mempool: own_mempool,
            mempool,
            port_id,
            offloads,
            stats: Arc::new(QueueStats::default()),
        }
    }

    /// A hidden queue on the rx ring of queue pair `pair`, for pairs beyond the
    /// application's rx queues: the same pool, depth, offloads and counters as this
    /// queue, which reads it ([`fold`](Self::fold)); the proxy fills it from this
    /// queue's pool.
    pub fn folded_queue(&self, pair: u32) -> Result<RxQueue, String> {
        let (area, _) = self.region.layout.rings_of(pair).ok_or_else(|| format!("the region has no queue pair {pair}"))?;
        // SAFETY: the new queue keeps the region handle, so the view stays valid.
        let mem = unsafe { self.region.mem_static() };
        let ring = DescConsumer::new(&mem, area).map_err(|e| format!("rx ring {pair}: {e}"))?;
        let conf = RxQueueConf {
            pool: self.pool,
            pool_id: self.pool_id,
            depth: self.depth,
            mempool: self.mempool,
            port_id: self.port_id,
            offloads: self.offloads,
        };
        let mut q = RxQueue::new(self.region.clone(), area, ring, conf, None, pair);
        q.stats = self.stats.clone();
        Ok(q)
    }

    /// Makes this queue's bursts also read `queues` (hidden queues of other pairs, see
    /// [`folded_queue`](Self::folded_queue)). Control path; leaves the gate closed.
    pub fn fold(&self, queues: Vec<Arc<RxQueue>>) {
        self.ring.quiesce(|rings| rings.folded = queues);
    }

    /// The gate bursts pass (`open` after `reset` and the proxy's `QueueStarted`;
    /// `quiesce` to stop them and wait until none runs; `close` from the interrupt
    /// thread, which must not wait for an application thread).
    pub fn gate(&self) -> &PollGate<RxRings> {
        &self.ring
    }

    /// Stops bursts and starts the ring from index 0, as both sides do on every queue
    /// start (the proxy zeroes the shared indices when it accepts `QueueStart`). Call
    /// while the proxy is not producing. Folded queues are reset by their own call.
    pub fn reset(&self) {
        // SAFETY: the region outlives self (the queue holds it).
        let mem = unsafe { self.region.mem_static() };
        self.ring.quiesce(|rings| {
            if let Ok(fresh) = DescConsumer::new(&mem, self.area) {
                rings.ring = fresh;
            }
        });
    }

    /// Asks the proxy for a wake-up at the next rx descriptor; true if descriptors are
    /// already waiting (the caller must not sleep then). A stopped queue has none to
    /// offer: the caller sleeps until a restarted queue's proxy wakes it.
    /// Called by the queue's polling thread (DPDK's rule for `rte_eth_dev_rx_intr_enable`).
    /// Folded queues are armed with it (their wake-ups reach this queue's event fd).
    pub fn arm_wakeup(&self) -> bool {
        let Some(flag) = self.wakeup_requested else { return true };
        wake::arm(flag);
        self.ring
            .poll(|rings| {
                // Every folded queue is armed, even when an earlier one has packets.
                let folded = rings.folded.iter().fold(false, |any, q| q.arm_wakeup() | any);
                rings.ring.available(1).map_or(true, |n| n > 0) || folded
            })
            .unwrap_or(false)
    }

    /// No wake-up wanted: the application polls again.
    pub fn disarm_wakeup(&self) {
        if let Some(flag) = self.wakeup_requested {
            wake::disarm(flag);
        }
        self.ring.poll(|rings| rings.folded.iter().for_each(|q| q.disarm_wakeup()));
    }

    /// The mbuf a descriptor names, after checking it really is one of the rx pool's.
    #[inline]
    fn mbuf_of(&self, d: &Desc) -> Option<*mut sys::rte_mbuf> {
        self.pool.buffer_index(d.offset)?;
        if d.data_off as u32 + d.data_len as u32 > self.pool.data_room() as u32 {
            return None;
        }
        Some(self.base.wrapping_add(d.offset as usize) as *mut sys::rte_mbuf)
    }

    /// # Safety
    /// `pkts` has room for `n` pointers; called by the queue's polling thread.
    #[inline]
    pub unsafe fn burst(&self, pkts: *mut *mut sys::rte_mbuf, n: u16) -> u16 {
        if n == 0 {
            return 0;
        }
        self.ring
            .poll(|rings| {
                // SAFETY: the caller's contract, passed on.
                let mut got = unsafe { self.burst_on(&mut rings.ring, pkts, n) };
                for q in &rings.folded {
                    if got >= n {
                        break;
                    }
                    // SAFETY: room for n - got more pointers; only this thread polls the folded queue.
                    got += unsafe { q.burst(pkts.add(got as usize), n - got) };
                }
                got
            })
            .unwrap_or(0)
    }

    /// # Safety
    /// As for [`burst`](Self::burst), with `n > 0` and the ring state held.
    #[inline]
    unsafe fn burst_on(&self, ring: &mut DescConsumer<'static>, pkts: *mut *mut sys::rte_mbuf, n: u16) -> u16 {
        // The proxy's index (a cache line its core keeps writing) is re-read only when
        // the cached view holds fewer descriptors than packets asked for.
        let Ok(avail) = ring.available(n as u32) else {
            // The proxy's index is impossible: stop trusting this ring until restarted.
            self.ring.close();
            bump(&self.stats.errors, 1);
            return 0;
        };
        let avail = avail.min(MAX_BURST_DESCS);
        // The descriptors' lines come from the proxy's core: asked for together, their
        // transfers overlap instead of each stalling the loop below in turn.
        ring.prefetch_available(avail.min(n as u32));
        let mut used = 0u32;
        let mut out = 0usize;
        let mut bytes = 0u64;
        let mut errors = 0u64;
        let (port, offloads) = (self.port_id, self.offloads);
        let wants_offload = offload::rx_wants(offloads);
        while out < n as usize && used < avail {
            let first = used;
            let d = ring.read(first);
            if !d.flags.contains(DescFlags::NEXT) {
                // The usual packet: one descriptor, so no chain to walk and nothing to
                // link; the filled header is the whole packet (one segment, pkt_len).
                used = first + 1;
                let Some(m) = self.mbuf_of(&d) else {
                    // Names no buffer of ours: nothing to give back.
                    errors += 1;
                    continue;
                };
                // SAFETY: an mbuf of our rx pool the proxy passed to us (as below); room for n pointers, out < n.
                unsafe {
                    fill_rx_mbuf(m, &d, port);
                    *pkts.add(out) = m;
                }
                if wants_offload {
                    // SAFETY: a complete packet of ours, not yet handed to the application.
                    unsafe { offload::rx_offload(m, offloads) };
                }
                bytes += d.data_len as u64;
                out += 1;
                continue;
            }
            // A chain: its first descriptor and every NEXT one after it.
            let mut head: *mut sys::rte_mbuf = std::ptr::null_mut();
            let mut prev: *mut sys::rte_mbuf = std::ptr::null_mut();
            let mut pkt_len = 0u32;
            let mut chain = DescChain::default();
            let mut bad = false;
            // The first descriptor of the packet not linked into `head`.
            let mut bad_from = first;
            loop {
                if used >= avail {
                    // The proxy publishes whole packets: the rest of this one comes later
                    // (read it whole next time), unless it fills the whole ring and so
                    // never can (a broken producer: stop trusting the ring).
                    if DescChain::never_ends(first, avail, ring.entries()) {
                        self.ring.close();
                        errors += 1;
                    }
                    // Its descriptors stay in the ring: the mbufs filled so far are
                    // filled again from them then.
                    used = first;
                    break;
                }
                let d = ring.read(used);
                used += 1;
                let last = chain.ends_with(&d);
                match self.mbuf_of(&d) {
                    Some(m) if !bad && !chain.too_long() => {
                        // SAFETY: `m` is an mbuf of our rx pool inside the mapped region,
                        // owned by this process now that the proxy passed it to us; we
                        // write our own header fields as a NIC PMD does.
                        unsafe { fill_rx_mbuf(m, &d, port) };
                        pkt_len += d.data_len as u32;
                        if head.is_null() {
                            head = m;
                        } else {
                            // SAFETY: prev is a valid mbuf of this packet.
                            unsafe { (*prev).next = m };
                        }
                        prev = m;
                    }
                    // Part of a packet judged bad (or too long): its buffers are given
                    // back once the packet is known whole (a cut one is read again).
                    _ if !bad => {
                        bad = true;
                        bad_from = used - 1;
                    }
                    _ => {}
                }
                if last {
                    break;
                }
            }
            if used == first {
                break;
            }
            if bad || head.is_null() {
                errors += 1;
                if !head.is_null() {
                    // SAFETY: a chain of our own valid mbufs.
                    unsafe { sys::rte_pktmbuf_free(head) };
                }
                for i in bad_from..used {
                    if let Some(m) = self.mbuf_of(&ring.read(i)) {
                        // SAFETY: a valid mbuf of our pool that the proxy passed to us,
                        // not linked into `head`; our own consistent header.
                        unsafe { drop_mbuf(m) };
                    }
                }
                continue;
            }
            // SAFETY: head is a valid mbuf filled above.
            unsafe {
                (*head).pkt_len = pkt_len;
                (*head).nb_segs = chain.segs() as u16;
                *pkts.add(out) = head;
            }
            if wants_offload {
                // SAFETY: a complete packet of ours, not yet handed to the application.
                unsafe { offload::rx_offload(head, offloads) };
            }
            bytes += pkt_len as u64;
            out += 1;
        }
        ring.release(used);
        if out > 0 {
            bump(&self.stats.packets, out as u64);
            bump(&self.stats.bytes, bytes);
        }
        if errors > 0 {
            bump(&self.stats.errors, errors);
        }
        out as u16
    }

    /// Stops bursts and frees every packet still waiting in the ring.
    ///
    /// # Safety
    /// The proxy has acknowledged that it stopped producing (or is gone).
    pub unsafe fn drain(&self) -> u32 {
        self.ring.quiesce(|RxRings { ring, .. }| {
            let mut freed = 0;
            let Ok(avail) = ring.available(u32::MAX) else { return 0 };
            for i in 0..avail {
                if let Some(m) = self.mbuf_of(&ring.read(i)) {
                    // SAFETY: a valid mbuf of our pool that was in flight to us.
                    unsafe { drop_mbuf(m) };
                    freed += 1;
                }
            }
            ring.release(avail);
            freed
        })
    }
}

/// Fills the fields a NIC PMD fills on rx. Pool, buffer address and IOVA were set by our
/// own `rte_pktmbuf_init` and are never written by the proxy.
///
/// # Safety
/// `m` is a valid mbuf owned by the caller.
#[inline]
unsafe fn fill_rx_mbuf(m: *mut sys::rte_mbuf, d: &Desc, port: u16) {
    let mut ol_flags = 0u64;
    if d.flags.contains(DescFlags::RSS_HASH) {
        ol_flags |= sys::RTE_MBUF_F_RX_RSS_HASH as u64;
    }
    if d.flags.contains(DescFlags::VLAN) {
        ol_flags |= (sys::RTE_MBUF_F_RX_VLAN | sys::RTE_MBUF_F_RX_VLAN_STRIPPED) as u64;
    }
    // SAFETY: per the contract.
    unsafe {
        (*m).data_off = d.data_off;
        (*m).refcnt = 1;
        (*m).nb_segs = 1;
        (*m).port = port;
        (*m).ol_flags = ol_flags;
        (*m).__bindgen_anon_1.packet_type = 0;
        (*m).pkt_len = d.data_len as u32;
        (*m).data_len = d.data_len;
        (*m).vlan_tci = d.vlan_tci;
        (*m).__bindgen_anon_2.hash.rss = d.rss_hash;
        // `next` (in the mbuf's second cache line) is left alone: a free mbuf of our pools
        // has next == NULL (rte_pktmbuf_init, DPDK's free path, and our tx path, which
        // unchains a packet before handing it over, all keep that), so rx touches one
        // cache line of the header, as NIC PMDs do.
    }
}

/// Returns one mbuf of ours to its pool with a consistent header.
///
/// # Safety
/// `m` is a valid mbuf of one of our pools that nobody else holds.
unsafe fn drop_mbuf(m: *mut sys::rte_mbuf) {
    // SAFETY: per the contract.
    unsafe {
        (*m).next = std::ptr::null_mut();
        (*m).nb_segs = 1;
        (*m).refcnt = 1;
        sys::rte_pktmbuf_free_seg(m);
    }
}

pub struct TxQueue {
    ring: PollGate<DescProducer<'static>>,
    area: RingArea,
    /// Keeps the mapping alive for `ring` and `base`.
    region: Arc<RegionHandle>,
    /// Where the region is mapped and its length: a packet whose header lies in
    /// `base..base + len` is one of the region's.
    base: *mut u8,
    len: usize,
    /// Where copies of foreign mbufs are allocated (the port's rx pool, in the region).
    pub copy_pool: std::sync::atomic::AtomicPtr<sys::rte_mempool>,
    pub stats: QueueStats,
}

// SAFETY: as for RxQueue.
unsafe impl Send for TxQueue {}
// SAFETY: as for RxQueue.
unsafe impl Sync for TxQueue {}

impl TxQueue {
    pub fn new(region: Arc<RegionHandle>, area: RingArea, ring: DescProducer<'static>) -> TxQueue {
        TxQueue {
            ring: PollGate::new(ring),
            area,
            base: region.base(),
            len: region.len(),
            region,
            copy_pool: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            stats: QueueStats::default(),
        }
    }

    /// As [`RxQueue::gate`].
    pub fn gate(&self) -> &PollGate<DescProducer<'static>> {
        &self.ring
    }

    /// Stops bursts, frees the packets we published that a proxy which went away never
    /// took (see `DescProducer::unconsumed`), then starts the ring over. Returns how
    /// many buffers.
    ///
    /// # Safety
    /// The proxy is gone (not consuming).
    pub unsafe fn reclaim_unsent(&self) -> u32 {
        // The region's pools, each layout checked again here before it is used.
        let pools: Vec<PoolLayout> =
            self.region.pools().iter().filter_map(|p| p.pool.validate(&self.region.layout, &[]).ok()).collect();
        // SAFETY: the region outlives self (the queue holds it).
        let mem = unsafe { self.region.mem_static() };
        self.ring.quiesce(|ring| {
            let mut freed = 0;
            let _ = ring.unconsumed(|d| {
                // Our own descriptors, but in shared memory: free only what names a buffer.
                if pools.iter().any(|p| p.buffer_index(d.offset).is_some()) {
                    // SAFETY: a segment of ours that the proxy never took; nobody else holds it.
                    unsafe { drop_mbuf(self.base.wrapping_add(d.offset as usize) as *mut sys::rte_mbuf) };
                    freed += 1;
                }
            });
            // A second call then finds nothing to free.
            if let Ok(fresh) = DescProducer::new(&mem, self.area) {
                *ring = fresh;
            }
            freed
        })
    }

    /// Stops bursts and starts the ring from index 0 (see [`RxQueue::reset`]).
    pub fn reset(&self) {
        // SAFETY: the region outlives self (the queue holds it).
        let mem = unsafe { self.region.mem_static() };
        self.ring.quiesce(|ring| {
            if let Ok(fresh) = DescProducer::new(&mem, self.area) {
                *ring = fresh;
            }
        });
    }

    /// Whether every segment of `m` can be handed to the proxy as it is: its header lies
    /// in this port's region (so it is one of our pool's mbufs), and it is direct and
    /// not shared (the proxy will recycle the buffer once sent).
    #[inline]
    fn zero_copy_ok(&self, mut m: *mut sys::rte_mbuf) -> bool {
        let indirect = sys::RTE_MBUF_F_INDIRECT | sys::RTE_MBUF_F_EXTERNAL;
        // A one-segment packet has next == NULL (DPDK's mbuf invariant): not reading it
        // keeps the header's second cache line out of the burst. nb_segs is the head's.
        // SAFETY: m is the application's valid packet.
        let single = unsafe { (*m).nb_segs } == 1;
        while !m.is_null() {
            if (m as usize).wrapping_sub(self.base as usize) >= self.len {
                return false;
            }
            // SAFETY: m is a valid mbuf of the application's packet.
            unsafe {
                if (*m).ol_flags & indirect != 0 || (*m).refcnt != 1 {
                    return false;
                }
                m = if single { std::ptr::null_mut() } else { (*m).next };
            }
        }
        true
    }

    /// A packet that cannot be handed over as it is (not in the region, indirect or
    /// shared): copied into a region mbuf, and freed. The copy, if there was a buffer
    /// for it and it fits in `room` ring slots; None if the packet is dropped. Out of
    /// line: it is rare, and the burst's loop keeps its registers.
    ///
    /// # Safety
    /// `m` is a valid packet that the caller owns (and gives up here).
    #[cold]
    #[inline(never)]
    unsafe fn copy_into_region(&self, m: *mut sys::rte_mbuf, room: u32) -> Option<*mut sys::rte_mbuf> {
        let pool = self.copy_pool.load(Relaxed);
        // SAFETY: m is the caller's valid mbuf; pool is a live pktmbuf pool or null.
        let copy = if pool.is_null() { std::ptr::null_mut() } else { unsafe { sys::rte_pktmbuf_copy(m, pool, 0, u32::MAX) } };
        // SAFETY: the caller's packet, ours to free either way.
        unsafe { sys::rte_pktmbuf_free(m) };
        // SAFETY: `copy` is checked non-null first; then it is our fresh, valid copy.
        if copy.is_null() || !self.zero_copy_ok(copy) || unsafe { (*copy).nb_segs } as u32 > room {
            if !copy.is_null() {
                // SAFETY: our own fresh copy.
                unsafe { sys::rte_pktmbuf_free(copy) };
            }
            return None;
        }
        Some(copy)
    }

    /// # Safety
    /// `pkts` holds `n` valid mbufs owned by the caller; called by the polling thread.
    #[inline]
    pub unsafe fn burst(&self, pkts: *mut *mut sys::rte_mbuf, n: u16) -> u16 {
        if n == 0 {
            return 0;
        }
        // SAFETY: the caller's contract, passed on.
        self.ring.poll(|ring| unsafe { self.burst_on(ring, pkts, n) }).unwrap_or(0)
    }

    /// # Safety
    /// As for [`burst`](Self::burst), with `n > 0` and the ring state held.
    #[inline]
    unsafe fn burst_on(&self, ring: &mut DescProducer<'static>, pkts: *mut *mut sys::rte_mbuf, n: u16) -> u16 {
        // As for rx: the proxy's consumer index is re-read only when the cached room is
        // short of one slot per packet (the loop below re-reads once when chains need more).
        let Ok(mut free) = ring.free_slots(n as u32) else {
            self.ring.close();
            return 0;
        };
        // The proxy's core last read these slots: take their lines now, all at once,
        // rather than stall the descriptor stores below one line after another.
        ring.prefetch_slots(free.min(n as u32));
        let mut slot = 0u32;
        let mut sent = 0usize;
        let mut bytes = 0u64;
        let mut copies = 0u64;
        let mut dropped = 0u64;
        let base = self.base as usize;
        while sent < n as usize {
            // SAFETY: the caller gave us n valid mbufs.
            let mut m = unsafe { *pkts.add(sent) };
            // SAFETY: valid mbuf.
            let segs = unsafe { (*m).nb_segs } as u32;
            if segs > free - slot {
                // Try once to see more room (the proxy may have consumed meanwhile).
                free = match ring.free_slots(MAX_BURST_DESCS) {
                    Ok(f) => f,
                    Err(_) => break,
                };
                if segs > free - slot {
                    bump(&self.stats.ring_full, 1);
                    break;
                }
            }
            // The application handed us the packet: from here on it is ours.
            sent += 1;
            if !self.zero_copy_ok(m) {
                // SAFETY: m is the caller's valid mbuf, ours now.
                match unsafe { self.copy_into_region(m, free - slot) } {
                    Some(copy) => {
                        copies += 1;
                        m = copy;
                    }
                    None => {
                        dropped += 1;
                        continue;
                    }
                }
            }
            // SAFETY: m is a valid packet of ours now (the application's direct, unshared
            // region packet, or our copy).
            if unsafe { (*m).ol_flags } & offload::TX_FLAGS != 0 {
                // SAFETY: as above; nobody else reads or writes its data meanwhile.
                if let Err(offload::TxOffloadError::HeadersSplit) = unsafe { offload::tx_offload(m) } {
                    // SAFETY: ours to free.
                    unsafe { sys::rte_pktmbuf_free(m) };
                    dropped += 1;
                    continue;
                }
            }
            // SAFETY: m (and its chain) is a valid region mbuf we now hand to the proxy.
            unsafe {
                bytes += (*m).pkt_len as u64;
                // Still set only when the tag did not fit in the headroom: the proxy's
                // NIC is asked to insert it.
                let vlan = if (*m).ol_flags & sys::RTE_MBUF_F_TX_VLAN != 0 { DescFlags::VLAN } else { DescFlags::empty() };
                let vlan_tci = (*m).vlan_tci;
                if (*m).nb_segs == 1 {
                    // The usual packet: one descriptor. A one-segment mbuf has next == NULL
                    // (DPDK's mbuf invariant), which is also the pool's for a free mbuf:
                    // nothing to unlink, and the header's second cache line stays untouched.
                    let desc = Desc {
                        offset: (m as usize - base) as u32,
                        data_off: (*m).data_off,
                        data_len: (*m).data_len,
                        flags: vlan,
                        vlan_tci,
                        rss_hash: 0,
                    };
                    ring.write(slot, &desc);
                    slot += 1;
                    continue;
                }
                let mut seg = m;
                while !seg.is_null() {
                    let next = (*seg).next;
                    let flags = if next.is_null() { vlan } else { vlan | DescFlags::NEXT };
                    let desc = Desc {
                        offset: (seg as usize - base) as u32,
                        data_off: (*seg).data_off,
                        data_len: (*seg).data_len,
                        flags,
                        vlan_tci,
                        rss_hash: 0,
                    };
                    ring.write(slot, &desc);
                    slot += 1;
                    // Keep the pool's invariant for when the proxy frees it back:
                    // next is null and nb_segs 1 for a free mbuf.
                    (*seg).next = std::ptr::null_mut();
                    (*seg).nb_segs = 1;
                    seg = next;
                }
            }
        }
        if slot > 0 {
            ring.publish(slot);
        }
        bump(&self.stats.packets, (sent as u64).saturating_sub(dropped));
        bump(&self.stats.bytes, bytes);
        if copies > 0 {
            bump(&self.stats.copies, copies);
        }
        if dropped > 0 {
            bump(&self.stats.errors, dropped);
        }
        sent as u16
    }
}

/// A pool this driver created (in the port's region) and must free.
pub struct OwnedMempool(pub *mut sys::rte_mempool);

// SAFETY: a mempool pointer; freed once, by the owner, on the control path.
unsafe impl Send for OwnedMempool {}
// SAFETY: as above.
unsafe impl Sync for OwnedMempool {}

impl Drop for OwnedMempool {
    fn drop(&mut self) {
        // SAFETY: created by us, no queue uses it any more.
        unsafe { sys::rte_mempool_free(self.0) };
    }
}
