//! Shadow mbufs: the proxy's own `rte_mbuf` headers for the buffers of a guest's pool.
//!
//! A guest pool is `[free ring][mbuf, data room][mbuf, data room]...` inside the guest's
//! region. The guest writes those mbuf headers; the proxy never reads or writes them
//! (their pointers are the guest's, and a hostile guest could change them at any time).
//! Instead, for every guest buffer the proxy keeps a *shadow* mbuf in its own memory
//! whose `buf_addr` points at that buffer's data room in the proxy's mapping of the
//! region. NIC drivers only ever see shadows.
//!
//! The shadows are a [`dpdk::ExtPool`] (the DPDK layer's pool over external buffers,
//! with mempool ops named [`OPS_NAME`]) whose free list is the guest's free ring
//! ([`ShadowCtx`]): taking a shadow takes a buffer offset from the guest's free ring,
//! and freeing one (e.g. after the NIC sent it) gives the offset back. A NIC rx queue
//! set up with this pool therefore receives straight into the guest's buffers.
//!
//! Every offset read from the free ring is validated ([`PoolLayout::buffer_index`]); the
//! layer keeps a mark per buffer (held by the proxy or not), so that an offset the guest
//! frees twice, or hands over while the proxy still holds it, is refused and counted.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use dpdk::{Eal, ExtBuffer, ExtPool, ExtPoolOps, ExtPoolSpec, Mempool, PktPool};
use shm_contract::freelist::{ParkLock, Parking};
use shm_contract::{FreeRing, FreeRingError, PoolLayout};

use crate::region::GuestRegion;

/// Name of the proxy's mempool ops.
pub const OPS_NAME: &CStr = c"shm_proxy";

/// Objects moved per free-ring operation: a stack array, no allocation on the hot path.
const CHUNK: usize = 64;
/// Retries on a contended free ring (lost races, stale positions) per pool per round of
/// the data loop, shared by every operation of the round on that pool
/// ([`ShadowCtx::new_round`]). The guest's threads share the ring, so a retry is rare
/// for an honest guest; a guest that rewrites the positions can only make operations
/// fail (buffers given back are parked and retried later, buffers asked for are not
/// there), never make the loop retry more than this many times per round for it.
pub const ROUND_RETRIES: u32 = 32;

/// Bytes of private area behind each shadow: unused, but it makes the shadows 256 bytes
/// apart (a power of two), so the layer computes a shadow's index from its address.
const PRIV_SIZE: u16 = 8;

/// A guest pool's free list as the shadows' pool uses it: the validated layout and the
/// guest's free ring, with what could not be returned yet.
pub struct ShadowCtx {
    pub layout: PoolLayout,
    ring: FreeRing<'static>,
    /// Offsets from the free ring that were not buffers of this pool, or buffers the
    /// proxy already held: the guest's fault; the value is dropped.
    pub invalid: AtomicU64,
    /// Buffers that could not be returned to the free ring right away (a guest thread
    /// preempted between its claim of a cell and its store, for longer than our retries):
    /// kept here and returned first by the next `give_back`.
    parked: Parking,
    /// Buffers given up on: the ring stayed full or corrupted while the parking space
    /// was full too (only a guest that wrote garbage into its own ring gets here).
    pub lost: AtomicU64,
    /// The guest deleted the pool or left while the NIC still held some of its
    /// buffers: the free ring is no longer the guest's to read (it may reuse that memory
    /// at once, or be gone), so buffers coming back are dropped here, never written
    /// into it, and nothing is taken from it.
    retired: AtomicBool,
    /// Free-ring retries left in this round (refilled by [`ShadowCtx::new_round`]).
    retries_left: AtomicU32,
    /// Keeps the mapping the ring view points into.
    _region: Option<Arc<GuestRegion>>,
}

impl ShadowCtx {
    fn new(layout: PoolLayout, ring: FreeRing<'static>, region: Option<Arc<GuestRegion>>) -> ShadowCtx {
        ShadowCtx {
            layout,
            ring,
            invalid: AtomicU64::new(0),
            parked: Parking::new(layout.count()),
            lost: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            retries_left: AtomicU32::new(ROUND_RETRIES),
            _region: region,
        }
    }

    /// A new round of the data loop: the free-ring retries are this round's.
    #[inline]
    pub fn new_round(&self) {
        if self.retries_left.load(Ordering::Relaxed) != ROUND_RETRIES {
            self.retries_left.store(ROUND_RETRIES, Ordering::Relaxed);
        }
    }

    /// Runs a free-ring operation with the round's retries left.
    #[inline]
    fn with_retries<T>(&self, op: impl FnOnce(&mut u32) -> T) -> T {
        // Load and store, not an atomic update: the data loop is the only frequent
        // user; a control-thread operation that overlaps may at worst spend or restore
        // a few retries of one round.
        let before = self.retries_left.load(Ordering::Relaxed);
        let mut left = before;
        let r = op(&mut left);
        if left != before {
            self.retries_left.store(left, Ordering::Relaxed);
        }
        r
    }

    /// Gives buffers back to the guest's free ring; parks them when the ring does not
    /// take them now.
    fn give_back(&self, offsets: &[u32]) {
        if self.parked.count() > 0 {
            self.retry_parked();
        }
        if self.with_retries(|left| self.ring.enqueue_bulk_within(offsets, left)).is_err() {
            self.park(offsets);
        }
    }

    fn park(&self, offsets: &[u32]) {
        // Try: the data loop never waits for the control thread (or the reverse).
        if !self.parked.park(offsets, ParkLock::Try) {
            self.lost.fetch_add(offsets.len() as u64, Ordering::Relaxed);
        }
    }

    /// Returns parked buffers, newest first, until the ring refuses again.
    pub fn retry_parked(&self) {
        self.parked.give_back(CHUNK, |offsets| self.with_retries(|left| self.ring.enqueue_bulk_within(offsets, left)).is_ok());
    }

    /// Buffers parked now (for `show stats`).
    pub fn parked(&self) -> usize {
        self.parked.count()
    }
}

impl ExtPoolOps for ShadowCtx {
    fn put(&self, idx: &[u32]) {
        if self.retired.load(Ordering::Relaxed) {
            // Back from the NIC after the guest let go of the pool: nowhere to return to.
            return;
        }
        let mut offsets = [0u32; CHUNK];
        for chunk in idx.chunks(CHUNK) {
            for (o, &i) in offsets.iter_mut().zip(chunk) {
                *o = self.layout.buffer_offset(i);
            }
            self.give_back(&offsets[..chunk.len()]);
        }
    }

    fn get(&self, out: &mut [u32]) -> usize {
        if self.retired.load(Ordering::Relaxed) {
            return 0;
        }
        let mut offsets = [0u32; CHUNK];
        let want = out.len().min(CHUNK);
        if let Err(e) = self.with_retries(|left| self.ring.dequeue_bulk_within(&mut offsets[..want], left)) {
            if e == FreeRingError::Contended {
                // The round's retries are spent on stale positions or lost races: in
                // practice, positions the guest rewrote. Counted with the guest's invalid
                // input. (A cell the guest has claimed and not filled yet, which a ring
                // that runs almost empty shows all the time, is Empty: not counted.)
                self.invalid.fetch_add(1, Ordering::Relaxed);
            }
            return 0;
        }
        let mut got = 0;
        for &off in &offsets[..want] {
            match self.layout.buffer_index(off) {
                Some(i) => {
                    out[got] = i;
                    got += 1;
                }
                None => {
                    self.invalid.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        got
    }

    fn count(&self) -> u32 {
        if self.retired.load(Ordering::Relaxed) {
            return 0;
        }
        self.ring.count().min(self.layout.count())
    }

    fn refused(&self, n: u32) {
        // The guest freed a buffer the proxy holds (or one twice): the duplicate is ignored.
        self.invalid.fetch_add(u64::from(n), Ordering::Relaxed);
    }
}

/// A guest pool as the proxy sees it: its free list ([`ShadowCtx`]) and the pool of
/// shadows ([`ExtPool`]). The mempool keeps the guest's mapping alive until it is freed,
/// which is when its last user lets go: this value, an rx queue set up with it, the
/// data loop.
pub struct ShadowPool {
    pub ctx: Arc<ShadowCtx>,
    pool: ExtPool,
}

/// A guest pool as a queue uses it: cheap to clone.
#[derive(Clone)]
pub struct GuestPool {
    pub ctx: Arc<ShadowCtx>,
    pub pool: ExtPool,
}

/// Registers the shadows' mempool ops; once, after EAL init.
pub fn register_ops(eal: &Eal) -> Result<(), String> {
    ExtPool::register_ops(eal, OPS_NAME).map_err(|e| format!("{e} (the mempool ops table is full?)"))
}

impl ShadowPool {
    /// Makes the shadows of a validated guest pool.
    pub fn new(region: &Arc<GuestRegion>, layout: PoolLayout, name: &str, socket: i32) -> Result<ShadowPool, String> {
        // SAFETY: the ShadowCtx holding the view keeps `region` (the mapping) alive.
        let mem = unsafe { region.mem_static() };
        let ring =
            FreeRing::new(&mem, layout.ring_offset(), layout.ring_entries()).map_err(|e| format!("free ring: {e}"))?;
        let ctx = Arc::new(ShadowCtx::new(layout, ring, Some(region.clone())));
        let spec = ExtPoolSpec {
            name,
            count: layout.count(),
            data_room: layout.data_room(),
            priv_size: PRIV_SIZE,
            // A per-lcore cache batches the data loop's free-ring operations; the loop
            // flushes it whenever it lets go of a queue.
            cache: match layout.count() {
                n if n >= 1024 => 256,
                n if n >= 128 => 32,
                _ => 0,
            },
            socket,
        };
        let buffer = |idx: u32| {
            let addr = region.base().wrapping_add(layout.data_offset(idx) as usize);
            ExtBuffer { addr, iova: region.iova_of(addr) }
        };
        // SAFETY: each buffer is the data room of guest buffer `idx`: `data_room` bytes
        // inside the region (the layout was validated against it), distinct per index,
        // mapped as long as `region` lives, which the pool keeps (`keep`).
        let pool = unsafe { ExtPool::new(&spec, buffer, ctx.clone(), Box::new(region.clone())) }
            .map_err(|e| format!("{name}: {e}"))?;
        if !pool.strided() {
            crate::log_info!("{name}: shadows not in a few runs of one power-of-two stride; their index is searched for by address (a binary search per packet)");
        }
        Ok(ShadowPool { ctx, pool })
    }

    /// The pool as a queue holds it.
    pub fn guest_pool(&self) -> GuestPool {
        GuestPool { ctx: self.ctx.clone(), pool: self.pool.clone() }
    }

    /// The mempool of shadows.
    pub fn pool(&self) -> &PktPool {
        self.pool.pkt_pool()
    }

    /// Buffers in the guest's free ring now (for `show stats`).
    pub fn free_ring_count(&self) -> u32 {
        self.ctx.count()
    }

    /// Cuts the pool off the guest's free ring (see [`ShadowCtx`]'s `retired`): for a
    /// pool the guest deleted, or whose guest left, once no queue uses it any more.
    pub fn retire(&self) {
        self.ctx.retired.store(true, Ordering::Release);
    }

    /// Buffers of a retired pool that have not come back to it: in a NIC queue (sent,
    /// not yet completed) or in the data loop's hands. The mempool must outlive every
    /// one of them, since freeing one writes into it. Read in this order (held first,
    /// then the per-lcore caches, which hold buffers that came back but were not yet
    /// handed to the ops), a buffer moving meanwhile is counted once too often at worst,
    /// never missed: a retired pool hands out nothing, so nothing enters a cache that
    /// was not held before.
    pub fn in_nic(&self) -> u32 {
        let held = self.pool.held_count();
        // A retired free list counts 0: what remains is the per-lcore caches.
        let cached = self.pool.mempool().avail_count();
        held.saturating_sub(cached)
    }

    /// Buffers in the pool.
    pub fn count(&self) -> u32 {
        self.ctx.layout.count()
    }

    /// Buffers neither in the free ring nor in the proxy's pool cache: held by the guest,
    /// in flight, or held by the proxy's NIC queue (for `show stats`).
    pub fn in_use(&self) -> u32 {
        self.pool.mempool().in_use_count()
    }
}

impl GuestPool {
    /// The mempool of shadows, as a view.
    #[inline]
    pub fn mempool(&self) -> Mempool<'_> {
        self.pool.mempool()
    }

    /// Region offset of the guest buffer behind the segment at `addr` (a
    /// [`dpdk::Segment`]'s address), if that is a shadow of this pool.
    #[inline]
    pub fn offset_of_segment(&self, addr: *const dpdk::sys::rte_mbuf) -> Option<u32> {
        self.pool.index_of_addr(addr).map(|idx| self.ctx.layout.buffer_offset(idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_contract::layout::{RegionFlags, RegionLayout};
    use shm_contract::mem::HeapMem;
    use shm_contract::PoolAdd;

    /// A pool of `count` buffers whose free ring has exactly `count` cells, in heap memory.
    fn ctx(count: u32) -> (ShadowCtx, Vec<u32>) {
        let (ctx, offsets, _) = ctx_in(count);
        (ctx, offsets)
    }

    /// As [`ctx`], with the memory the ring is in.
    fn ctx_in(count: u32) -> (ShadowCtx, Vec<u32>, &'static HeapMem) {
        let region = RegionLayout::new(64 << 20, 4096, 1024, 1024, RegionFlags::empty()).unwrap();
        let ring_bytes = FreeRing::bytes_for(count) as u32;
        let add = PoolAdd {
            pool_id: 0,
            ring_offset: region.heap().offset,
            ring_entries: count,
            first_mbuf_offset: region.heap().offset + ring_bytes.next_multiple_of(64) + 64,
            stride: 2432,
            count,
            mbuf_size: 128,
            data_room: 2176,
        };
        let layout = add.validate(&region, &[]).unwrap();
        let mem: &'static HeapMem = Box::leak(Box::new(HeapMem::new(64 << 20)));
        let ring = FreeRing::init(&mem.mem(), layout.ring_offset(), count).unwrap();
        let offsets = (0..count).map(|i| layout.buffer_offset(i)).collect();
        let ctx = ShadowCtx::new(layout, ring, None);
        (ctx, offsets, mem)
    }

    #[test]
    fn buffers_the_ring_refuses_are_parked_and_returned_first_later() {
        let (ctx, offs) = ctx(8);
        ctx.give_back(&offs[..8]);
        assert_eq!(ctx.ring.count(), 8);
        assert_eq!(ctx.parked(), 0);
        // Full ring (a guest that put garbage in it, or a peer mid-store): parked, not lost.
        ctx.give_back(&offs[..2]);
        assert_eq!(ctx.parked(), 2);
        assert_eq!(ctx.lost.load(Ordering::Relaxed), 0);
        // Room again: the parked ones go back before the new one, which is parked in turn.
        let mut out = [0u32; 2];
        ctx.ring.dequeue_bulk(&mut out, ROUND_RETRIES).unwrap();
        ctx.give_back(&offs[2..3]);
        assert_eq!(ctx.ring.count(), 8);
        assert_eq!(ctx.parked(), 1);
        // The control thread's retry finds room too.
        let mut one = [0u32; 1];
        ctx.ring.dequeue_bulk(&mut one, ROUND_RETRIES).unwrap();
        ctx.retry_parked();
        assert_eq!(ctx.parked(), 0);
        assert_eq!(ctx.ring.count(), 8);
    }

    #[test]
    fn free_ring_retries_are_bounded_per_round_not_per_operation() {
        let (ctx, offs, mem) = ctx_in(8);
        // The guest moved enq_pos behind the cells: every attempt finds it stale.
        let enq_pos = mem.mem().atomic_u32((ctx.layout.ring_offset() + shm_contract::mpmc::ENQ_POS_OFFSET) as usize).unwrap();
        enq_pos.store(0xffff_ff00, Ordering::Relaxed);
        for one in offs.chunks(1) {
            ctx.give_back(one);
        }
        // All eight parked, and the round's retries were all the retrying there was.
        assert_eq!(ctx.parked(), 8);
        assert_eq!(ctx.retries_left.load(Ordering::Relaxed), 0);
        let mut out = [0u32; 1];
        assert_eq!(ctx.get(&mut out), 0);
        // A sane ring and a new round: the parked buffers go back.
        ctx.ring.reset();
        ctx.new_round();
        ctx.retry_parked();
        assert_eq!(ctx.parked(), 0);
        assert_eq!(ctx.ring.count(), 8);
    }

    #[test]
    fn a_guest_caught_between_claiming_a_cell_and_filling_it_is_not_counted_invalid() {
        // A free ring that runs almost empty (a guest whose rx ring can take all its
        // buffers): the proxy's next bulk reaches the cell the guest is giving a buffer
        // back into, claimed (enq_pos moved) and not yet written.
        let (ctx, offs, mem) = ctx_in(4096);
        ctx.give_back(&offs[..4]);
        let enq_pos = mem.mem().atomic_u32((ctx.layout.ring_offset() + shm_contract::mpmc::ENQ_POS_OFFSET) as usize).unwrap();
        enq_pos.store(5, Ordering::Relaxed);
        let mut out = [0u32; 5];
        for _ in 0..3 {
            ctx.new_round();
            assert_eq!(ctx.get(&mut out), 0);
        }
        assert_eq!(ctx.invalid.load(Ordering::Relaxed), 0);
        // The four before it can be had.
        assert_eq!(ctx.get(&mut out[..4]), 4);
        assert_eq!(ctx.invalid.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn parking_is_bounded_by_the_pool_and_counts_the_rest_as_lost() {
        let (ctx, offs) = ctx(8);
        ctx.give_back(&offs);
        ctx.give_back(&offs);
        assert_eq!(ctx.parked(), 8);
        ctx.give_back(&offs[..3]);
        assert_eq!(ctx.parked(), 8);
        assert_eq!(ctx.lost.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_retired_free_list_takes_nothing_from_the_ring_and_writes_nothing_into_it() {
        let (ctx, offs) = ctx(8);
        ctx.give_back(&offs[..4]);
        ctx.retired.store(true, Ordering::Relaxed);
        let mut out = [0u32; 4];
        assert_eq!(ctx.get(&mut out), 0);
        assert_eq!(ExtPoolOps::count(&ctx), 0);
        // A buffer coming back from the NIC after the guest let go: dropped, ring untouched.
        ctx.put(&[5, 6]);
        assert_eq!(ctx.ring.count(), 4);
        assert_eq!(ctx.parked(), 0);
        assert_eq!(ctx.lost.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_free_list_hands_out_indices_of_valid_offsets_only_and_takes_them_back() {
        let (ctx, offs) = ctx(8);
        ctx.give_back(&offs[..4]);
        // The guest wrote a garbage offset into its free ring.
        ctx.ring.enqueue_bulk(&[12345], ROUND_RETRIES).unwrap();
        let mut out = [0u32; 8];
        assert_eq!(ctx.get(&mut out[..5]), 4, "four valid of five");
        assert_eq!(&out[..4], &[0, 1, 2, 3]);
        assert_eq!(ctx.invalid.load(Ordering::Relaxed), 1);
        assert_eq!(ctx.get(&mut out[..1]), 0, "empty ring");
        ctx.put(&[3, 1]);
        assert_eq!(ExtPoolOps::count(&ctx), 2);
        assert_eq!(ctx.get(&mut out[..2]), 2);
        assert_eq!(&out[..2], &[3, 1]);
        ctx.refused(2);
        assert_eq!(ctx.invalid.load(Ordering::Relaxed), 3);
    }
}
