//! Descriptor rings: single producer, single consumer, in shared memory.
//!
//! The rx ring is produced by the proxy and consumed by the guest; the tx ring
//! the other way round. Layout at [`RingArea::offset`]:
//!
//! | offset | size            | contents |
//! | ------ | --------------- | -------- |
//! | 0      | 4 (block 128)   | producer index, `u32`, written only by the producer |
//! | 128    | 4 (block 128)   | consumer index, `u32`, written only by the consumer |
//! | 256    | `entries * 16`  | descriptors, two `u64` words each ([`Desc`]) |
//!
//! Each index sits in its own 128-byte block so the two writers never share a
//! cache line (128 covers adjacent-line prefetching).
//!
//! Indices are free-running `u32`s that wrap; a slot is `index & (entries - 1)`.
//! Each side keeps its own index privately and only ever *stores* it: reading it
//! back would let the peer rewrite our position. The peer's index is the only
//! thing read from shared memory, and it is checked against ours and against the
//! value last accepted (it only moves forward: `0 <= prod - cons <= entries`, in
//! wrapping arithmetic, and never behind what was seen before) before it is used; a
//! violation is [`RingError::Corrupt`], and the ring state is left untouched. These
//! are plain comparisons, in release builds too, and nothing computed from a peer
//! index can underflow.
//! Each side also caches the peer's index and reloads it only when the cache says
//! there is not enough room / data, which keeps the peer's cache line out of the
//! fast path.
//!
//! Ordering: the producer writes descriptor words with relaxed stores and then
//! publishes with a release store of its index; the consumer's acquire load of
//! that index makes the descriptors (and the packet data written before them)
//! visible. Symmetrically the consumer's release store of its index after
//! reading the descriptors, paired with the producer's acquire load, guarantees
//! a slot is not overwritten before it has been read.
//!
//! A misbehaving peer can at worst make us read descriptors it wrote (which the
//! proxy validates) or see a ring as full/empty/corrupt; it can never make us
//! touch memory outside the ring, loop, or panic.

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::desc::Desc;
use crate::prefetch;
#[cfg(not(loom))]
use crate::layout::RingArea;
#[cfg(not(loom))]
use crate::mem::SharedMem;
use crate::mem::MemError;
use crate::sync::{AtomicU32, AtomicU64};

/// Offset of the producer index from the start of a ring area.
pub const PROD_INDEX_OFFSET: u32 = 0;
/// Offset of the consumer index from the start of a ring area.
pub const CONS_INDEX_OFFSET: u32 = 128;
/// Offset of the first descriptor from the start of a ring area.
pub const SLOTS_OFFSET: u32 = 256;
/// Largest ring (descriptor or free ring) the ring code accepts: indices are
/// compared in wrapping `u32` arithmetic, which needs `entries <= 2^31`; the
/// region layout and pool validation impose smaller limits.
pub const MAX_RING_ENTRIES: u32 = 1 << 30;

/// A peer index that cannot be right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The indices say more than `entries` descriptors are in flight, or fewer
    /// than none: the peer wrote garbage (or the ring was reset under us).
    Corrupt {
        /// Producer index.
        prod: u32,
        /// Consumer index.
        cons: u32,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingError::Corrupt { prod, cons } => write!(
                f,
                "descriptor ring corrupt: producer index {prod}, consumer index {cons}"
            ),
        }
    }
}

impl std::error::Error for RingError {}

/// Why a ring view could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingSetupError {
    /// `entries` is not a power of two in `1..=MAX_RING_ENTRIES`.
    Entries {
        /// The rejected size.
        entries: u32,
    },
    /// The ring does not fit the memory (or is misaligned).
    Mem(MemError),
}

impl fmt::Display for RingSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingSetupError::Entries { entries } => write!(
                f,
                "ring: {entries} entries is not a power of two in 1..={MAX_RING_ENTRIES}"
            ),
            RingSetupError::Mem(e) => write!(f, "ring: {e}"),
        }
    }
}

impl std::error::Error for RingSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RingSetupError::Mem(e) => Some(e),
            RingSetupError::Entries { .. } => None,
        }
    }
}

impl From<MemError> for RingSetupError {
    fn from(e: MemError) -> Self {
        RingSetupError::Mem(e)
    }
}

pub(crate) fn check_entries(entries: u32) -> Result<(), RingSetupError> {
    if entries.is_power_of_two() && entries <= MAX_RING_ENTRIES {
        Ok(())
    } else {
        Err(RingSetupError::Entries { entries })
    }
}

/// Sizes and initialisation of a descriptor ring (the views are
/// [`DescProducer`] and [`DescConsumer`]).
#[derive(Debug)]
pub struct DescRing;

#[cfg(not(loom))]
type RingParts<'a> = (&'a AtomicU32, &'a AtomicU32, &'a [AtomicU64]);

impl DescRing {
    /// Bytes a ring of `entries` descriptors occupies, indices included.
    #[inline]
    pub const fn bytes_for(entries: u32) -> u64 {
        SLOTS_OFFSET as u64 + entries as u64 * Desc::SIZE as u64
    }

    /// Zeroes both indices: done by the proxy when it creates a region and when
    /// it resets a stopped queue, before either side builds its view.
    #[cfg(not(loom))]
    pub fn init(mem: &SharedMem<'_>, area: RingArea) -> Result<(), RingSetupError> {
        let (prod, cons, _) = Self::parts(mem, area)?;
        prod.store(0, Release);
        cons.store(0, Release);
        Ok(())
    }

    #[cfg(not(loom))]
    fn parts<'a>(mem: &SharedMem<'a>, area: RingArea) -> Result<RingParts<'a>, RingSetupError> {
        check_entries(area.entries)?;
        let base = area.offset as usize;
        let prod = mem.atomic_u32(base + PROD_INDEX_OFFSET as usize)?;
        let cons = mem.atomic_u32(base + CONS_INDEX_OFFSET as usize)?;
        let slots = mem.atomic_u64_slice(base + SLOTS_OFFSET as usize, area.entries as usize * 2)?;
        Ok((prod, cons, slots))
    }

    fn check_slots(slots: &[AtomicU64]) -> Result<u32, RingSetupError> {
        let entries = u32::try_from(slots.len() / 2).unwrap_or(u32::MAX);
        if !slots.len().is_multiple_of(2) {
            return Err(RingSetupError::Entries { entries });
        }
        check_entries(entries)?;
        Ok(entries)
    }
}

/// The producer's view of a descriptor ring.
#[derive(Debug)]
pub struct DescProducer<'a> {
    // INVARIANT: `slots.len() == 2 * (mask + 1)`, `mask + 1` a power of two
    // `<= MAX_RING_ENTRIES`; `local_prod - cached_cons <= mask + 1` (wrapping).
    prod: &'a AtomicU32,
    cons: &'a AtomicU32,
    slots: &'a [AtomicU64],
    mask: u32,
    /// At most this many descriptors outstanding (`1..=mask + 1`): what the consumer
    /// asked for, when it holds fewer buffers than the ring has slots.
    fill_limit: u32,
    local_prod: u32,
    cached_cons: u32,
}

impl<'a> DescProducer<'a> {
    /// Attaches to the ring in `area` as its producer. The ring must have been
    /// initialised ([`DescRing::init`]) and not used by a producer since: the
    /// producer starts at index 0 and never reads its index back.
    #[cfg(not(loom))]
    pub fn new(mem: &SharedMem<'a>, area: RingArea) -> Result<Self, RingSetupError> {
        let (prod, cons, slots) = DescRing::parts(mem, area)?;
        Self::from_parts(prod, cons, slots)
    }

    /// Builds a producer over explicit storage: `slots` holds two words per
    /// entry. Used by the loom models and by tests.
    pub fn from_parts(
        prod: &'a AtomicU32,
        cons: &'a AtomicU32,
        slots: &'a [AtomicU64],
    ) -> Result<Self, RingSetupError> {
        let entries = DescRing::check_slots(slots)?;
        Ok(DescProducer {
            prod,
            cons,
            slots,
            mask: entries - 1,
            fill_limit: entries,
            local_prod: 0,
            cached_cons: 0,
        })
    }

    /// Keeps at most `limit` descriptors outstanding (0 or more than the ring's
    /// entries: the entries): [`free_slots`](Self::free_slots) counts from it.
    pub fn set_fill_limit(&mut self, limit: u32) {
        self.fill_limit = if limit == 0 { self.entries() } else { limit.min(self.entries()) };
    }

    /// The most descriptors outstanding at once ([`set_fill_limit`](Self::set_fill_limit)).
    #[inline]
    pub fn fill_limit(&self) -> u32 {
        self.fill_limit
    }

    /// Number of slots in the ring.
    #[inline]
    pub fn entries(&self) -> u32 {
        self.mask + 1
    }

    /// Our producer index (descriptors published so far, wrapping).
    #[inline]
    pub fn index(&self) -> u32 {
        self.local_prod
    }

    #[inline]
    fn cached_free(&self) -> u32 {
        self.fill_limit.saturating_sub(self.local_prod.wrapping_sub(self.cached_cons))
    }

    /// Free slots. The consumer index is reloaded only when the cached view
    /// has fewer than `wanted` free slots.
    #[inline]
    pub fn free_slots(&mut self, wanted: u32) -> Result<u32, RingError> {
        let free = self.cached_free();
        if free >= wanted {
            return Ok(free);
        }
        // Acquire: the consumer read the descriptors before it released these
        // slots; we must not overwrite them before that.
        let cons = self.cons.load(Acquire);
        // The consumer index only moves forward, up to ours: it lies in
        // `cached_cons..=local_prod` (wrapping). Behind the cached value would shrink
        // the free slots under a caller that was already promised them (its
        // `free - used` would underflow); beyond ours is more than was published.
        if cons.wrapping_sub(self.cached_cons) > self.local_prod.wrapping_sub(self.cached_cons) {
            return Err(RingError::Corrupt {
                prod: self.local_prod,
                cons,
            });
        }
        self.cached_cons = cons;
        Ok(self.cached_free())
    }

    /// Writes `d` into the `i`-th slot after the published ones. `i` must be
    /// below what [`free_slots`](Self::free_slots) returned; nothing is visible
    /// to the consumer before [`publish`](Self::publish).
    #[inline]
    pub fn write(&mut self, i: u32, d: &Desc) {
        debug_assert!(i < self.cached_free(), "write beyond free slots");
        let slot = (self.local_prod.wrapping_add(i) & self.mask) as usize * 2;
        let [w0, w1] = d.to_words();
        // The second word first: its index checked against the slice proves the first's
        // (one bounds check, not two). Nothing orders the two before `publish`.
        self.slots[slot + 1].store(w1, Relaxed);
        self.slots[slot].store(w0, Relaxed);
    }

    /// Starts fetching, for writing, the cache lines of the next `n` free slots, so
    /// that taking them from the consumer's core overlaps with other work instead of
    /// stalling the stores of [`write`](Self::write) one line after another. A hint:
    /// any `n` is harmless (it is cut to the ring).
    #[inline]
    pub fn prefetch_slots(&self, n: u32) {
        prefetch_lines(self.slots, self.local_prod, self.mask, n, prefetch::for_write);
    }

    /// Makes the next `n` written slots visible to the consumer. `n` must not
    /// exceed the free slots last reported.
    #[inline]
    pub fn publish(&mut self, n: u32) {
        debug_assert!(n <= self.cached_free(), "publish beyond free slots");
        // Never beyond the free slots, in release builds too: the invariant the range
        // checks rely on.
        let n = n.min(self.cached_free());
        self.local_prod = self.local_prod.wrapping_add(n);
        // Release: the descriptor words (and the packet data behind them) are
        // visible to whoever acquires this index.
        self.prod.store(self.local_prod, Release);
    }

    /// The descriptors we published that the consumer has not released, oldest
    /// first, for a producer whose consumer died: those buffers were never taken
    /// (a consumer releases a slot only after copying its descriptor out, and
    /// takes ownership of a buffer only from a released copy), so they are still
    /// the producer's. The shared consumer index is validated like any peer value.
    /// Nothing is changed; the ring is re-initialised before it is used again.
    pub fn unconsumed(&self, mut f: impl FnMut(Desc)) -> Result<u32, RingError> {
        let cons = self.cons.load(Acquire);
        let pending = self.local_prod.wrapping_sub(cons);
        if pending > self.entries() {
            return Err(RingError::Corrupt {
                prod: self.local_prod,
                cons,
            });
        }
        for i in 0..pending {
            let slot = (cons.wrapping_add(i) & self.mask) as usize * 2;
            f(Desc::from_words(self.slots[slot].load(Relaxed), self.slots[slot + 1].load(Relaxed)));
        }
        Ok(pending)
    }

    /// Writes and publishes as many of `descs` as fit; returns how many.
    #[inline]
    pub fn push_burst(&mut self, descs: &[Desc]) -> Result<usize, RingError> {
        let wanted = u32::try_from(descs.len()).unwrap_or(u32::MAX);
        let n = self.free_slots(wanted)?.min(wanted);
        for (i, d) in (0..n).zip(descs) {
            self.write(i, d);
        }
        if n > 0 {
            self.publish(n);
        }
        Ok(n as usize)
    }
}

/// Descriptors per 64-byte cache line (the slots start line-aligned: page-aligned
/// areas, [`SLOTS_OFFSET`] from their start).
const DESCS_PER_LINE: u32 = 64 / Desc::SIZE as u32;

/// Calls `hint` once per cache line of the `n` slots from index `from` on (wrapping
/// around the ring, at most one lap): on the first slot, then on each line's first
/// slot. Called with every burst, so it walks the lines, not the slots: two runs (up to
/// the ring's end, then from its start) of one hint per line, no index masked or
/// checked per line.
#[inline]
fn prefetch_lines(slots: &[AtomicU64], from: u32, mask: u32, n: u32, mut hint: impl FnMut(*const AtomicU64)) {
    // Within the slice whatever `mask` says (the ring's invariant makes them agree).
    let entries = (mask as usize + 1).min(slots.len() / 2);
    let n = (n as usize).min(entries);
    if n == 0 {
        return;
    }
    let first = (from & mask) as usize;
    let to_end = n.min(entries.saturating_sub(first));
    let mut run = |start: usize, end: usize| {
        let mut slot = start;
        while slot < end {
            // A hint is sound on any address (`prefetch`); this one is a slot of the ring.
            hint(slots.as_ptr().wrapping_add(slot * 2));
            // On to the first slot of the next line.
            slot = (slot | (DESCS_PER_LINE as usize - 1)) + 1;
        }
    };
    run(first, first + to_end);
    run(0, n - to_end);
}

/// The consumer's view of a descriptor ring.
#[derive(Debug)]
pub struct DescConsumer<'a> {
    // INVARIANT: `slots.len() == 2 * (mask + 1)`, `mask + 1` a power of two
    // `<= MAX_RING_ENTRIES`; `cached_prod - local_cons <= mask + 1` (wrapping).
    prod: &'a AtomicU32,
    cons: &'a AtomicU32,
    slots: &'a [AtomicU64],
    mask: u32,
    local_cons: u32,
    cached_prod: u32,
}

impl<'a> DescConsumer<'a> {
    /// Attaches to the ring in `area` as its consumer. The ring must have been
    /// initialised ([`DescRing::init`]) and not used by a consumer since: the
    /// consumer starts at index 0 and never reads its index back.
    #[cfg(not(loom))]
    pub fn new(mem: &SharedMem<'a>, area: RingArea) -> Result<Self, RingSetupError> {
        let (prod, cons, slots) = DescRing::parts(mem, area)?;
        Self::from_parts(prod, cons, slots)
    }

    /// Builds a consumer over explicit storage: `slots` holds two words per
    /// entry. Used by the loom models and by tests.
    pub fn from_parts(
        prod: &'a AtomicU32,
        cons: &'a AtomicU32,
        slots: &'a [AtomicU64],
    ) -> Result<Self, RingSetupError> {
        let entries = DescRing::check_slots(slots)?;
        Ok(DescConsumer {
            prod,
            cons,
            slots,
            mask: entries - 1,
            local_cons: 0,
            cached_prod: 0,
        })
    }

    /// Number of slots in the ring.
    #[inline]
    pub fn entries(&self) -> u32 {
        self.mask + 1
    }

    /// Our consumer index (descriptors released so far, wrapping).
    #[inline]
    pub fn index(&self) -> u32 {
        self.local_cons
    }

    #[inline]
    fn cached_available(&self) -> u32 {
        self.cached_prod.wrapping_sub(self.local_cons)
    }

    /// Descriptors ready to read. The producer index is reloaded only when the
    /// cached view has fewer than `wanted`.
    #[inline]
    pub fn available(&mut self, wanted: u32) -> Result<u32, RingError> {
        let avail = self.cached_available();
        if avail >= wanted {
            return Ok(avail);
        }
        // Acquire: pairs with the producer's release store, so the descriptor
        // words up to `prod` are visible.
        let prod = self.prod.load(Acquire);
        // The producer index only moves forward, at most a ring ahead of us: it lies
        // in `cached_prod..=local_cons + entries` (wrapping). Behind the cached value
        // would take back descriptors a caller was already told it may read.
        let limit = self.local_cons.wrapping_add(self.entries());
        if prod.wrapping_sub(self.cached_prod) > limit.wrapping_sub(self.cached_prod) {
            return Err(RingError::Corrupt {
                prod,
                cons: self.local_cons,
            });
        }
        self.cached_prod = prod;
        Ok(self.cached_available())
    }

    /// Starts loading the producer's index, for an [`available`](Self::available)
    /// call a little later: the line the producer's core keeps writing is on its
    /// way meanwhile.
    #[inline]
    pub fn prefetch_producer_index(&self) {
        prefetch::for_read(self.prod);
    }

    /// Starts loading the cache lines of the next `n` available descriptors, so
    /// that their transfers from the producer's core overlap instead of following
    /// one another as [`read`](Self::read) reaches each line. A hint: any `n` is
    /// harmless (it is cut to the ring).
    #[inline]
    pub fn prefetch_available(&self, n: u32) {
        prefetch_lines(self.slots, self.local_cons, self.mask, n, prefetch::for_read);
    }

    /// Reads the `i`-th available descriptor. `i` must be below what
    /// [`available`](Self::available) returned (otherwise the result is a stale
    /// slot: harmless, but meaningless). The fields are the producer's and must
    /// be validated.
    #[inline]
    pub fn read(&self, i: u32) -> Desc {
        debug_assert!(i < self.cached_available(), "read beyond available");
        let slot = (self.local_cons.wrapping_add(i) & self.mask) as usize * 2;
        // The second word first: one bounds check for both (as in `DescProducer::write`).
        let w1 = self.slots[slot + 1].load(Relaxed);
        Desc::from_words(self.slots[slot].load(Relaxed), w1)
    }

    /// Gives the next `n` read slots back to the producer. `n` must not exceed
    /// the available count last reported.
    #[inline]
    pub fn release(&mut self, n: u32) {
        debug_assert!(n <= self.cached_available(), "release beyond available");
        // Never beyond what was published, in release builds too (as for `publish`).
        let n = n.min(self.cached_available());
        self.local_cons = self.local_cons.wrapping_add(n);
        // Release: our reads of the released slots happen before the producer
        // (acquiring this index) overwrites them.
        self.cons.store(self.local_cons, Release);
    }

    /// Reads and releases up to `out.len()` descriptors; returns how many.
    #[inline]
    pub fn pop_burst(&mut self, out: &mut [Desc]) -> Result<usize, RingError> {
        let wanted = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let n = self.available(wanted)?.min(wanted);
        for (i, d) in (0..n).zip(out.iter_mut()) {
            *d = self.read(i);
        }
        if n > 0 {
            self.release(n);
        }
        Ok(n as usize)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::desc::DescFlags;
    use crate::mem::HeapMem;
    use std::sync::atomic::Ordering::SeqCst;

    fn desc(v: u32) -> Desc {
        Desc {
            offset: v,
            data_off: v as u16,
            data_len: (v >> 16) as u16,
            flags: DescFlags::from_bits_retain(v as u16 & 7),
            vlan_tci: !(v as u16),
            rss_hash: v.rotate_left(7),
        }
    }

    fn ring(entries: u32) -> (HeapMem, RingArea) {
        let area = RingArea {
            offset: 4096,
            entries,
        };
        let heap = HeapMem::new(4096 + DescRing::bytes_for(entries) as usize);
        DescRing::init(&heap.mem(), area).unwrap();
        (heap, area)
    }

    #[test]
    fn prefetch_touches_each_line_once_within_the_ring() {
        let slots: Vec<AtomicU64> = (0..2 * 16).map(|_| AtomicU64::new(0)).collect();
        let lines = |from: u32, n: u32| {
            let mut seen = Vec::new();
            prefetch_lines(&slots, from, 15, n, |p| seen.push((p as usize - slots.as_ptr() as usize) / 16));
            seen
        };
        // Slots are line-aligned in the region; here, slot s is line s / 4.
        assert_eq!(lines(0, 0), Vec::<usize>::new());
        assert_eq!(lines(0, 4), [0]);
        assert_eq!(lines(0, 5), [0, 4]);
        assert_eq!(lines(3, 2), [3, 4]);
        // Wraps around the ring; never more than one lap.
        assert_eq!(lines(14, 4), [14, 0]);
        assert_eq!(lines(5, u32::MAX), [5, 8, 12, 0, 4]);
    }

    #[test]
    fn a_fill_limit_bounds_the_outstanding_descriptors() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let mut prod = DescProducer::new(&mem, area).unwrap();
        let mut cons = DescConsumer::new(&mem, area).unwrap();
        prod.set_fill_limit(0);
        assert_eq!(prod.fill_limit(), 64);
        prod.set_fill_limit(1000);
        assert_eq!(prod.fill_limit(), 64);
        prod.set_fill_limit(16);
        assert_eq!(prod.free_slots(1).unwrap(), 16);
        let descs: Vec<Desc> = (0..40).map(desc).collect();
        assert_eq!(prod.push_burst(&descs).unwrap(), 16);
        assert_eq!(prod.free_slots(1).unwrap(), 0);
        let mut out = [desc(0); 10];
        assert_eq!(cons.pop_burst(&mut out).unwrap(), 10);
        assert_eq!(prod.free_slots(1).unwrap(), 10);
        assert_eq!(prod.push_burst(&descs[16..]).unwrap(), 10);
        assert_eq!(prod.free_slots(1).unwrap(), 0);
    }

    #[test]
    fn bytes_for() {
        assert_eq!(DescRing::bytes_for(64), 256 + 64 * 16);
        assert_eq!(DescRing::bytes_for(65536), 256 + 65536 * 16);
    }

    #[test]
    fn setup_errors() {
        let heap = HeapMem::new(8192);
        let mem = heap.mem();
        let bad = RingArea { offset: 0, entries: 3 };
        assert_eq!(DescProducer::new(&mem, bad).unwrap_err(), RingSetupError::Entries { entries: 3 });
        assert_eq!(DescConsumer::new(&mem, RingArea { offset: 0, entries: 0 }).unwrap_err(),
            RingSetupError::Entries { entries: 0 });
        let too_big = RingArea { offset: 0, entries: 1024 };
        assert!(matches!(DescRing::init(&mem, too_big), Err(RingSetupError::Mem(MemError::OutOfBounds { .. }))));
        let misaligned = RingArea { offset: 2, entries: 64 };
        assert!(matches!(DescProducer::new(&mem, misaligned), Err(RingSetupError::Mem(MemError::Misaligned { .. }))));
        let slots: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        let (p, c) = (AtomicU32::new(0), AtomicU32::new(0));
        assert!(DescProducer::from_parts(&p, &c, &slots).is_err());
        assert!(DescConsumer::from_parts(&p, &c, &slots[..0]).is_err());
        assert!(RingSetupError::Entries { entries: 3 }.to_string().contains("power of two"));
        assert!(RingSetupError::Mem(MemError::Misaligned { offset: 1, align: 4 }).to_string().contains("aligned"));
    }

    #[test]
    fn push_pop_in_order_with_wraparound() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let mut p = DescProducer::new(&mem, area).unwrap();
        let mut c = DescConsumer::new(&mem, area).unwrap();
        assert_eq!(p.entries(), 64);
        assert_eq!(c.entries(), 64);
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        let mut out = [Desc::default(); 50];
        for round in 0..1000u32 {
            let burst: Vec<Desc> = (0..(round % 37 + 1)).map(|k| desc(next_in + k)).collect();
            let pushed = p.push_burst(&burst).unwrap();
            next_in += pushed as u32;
            let want = (round * 7 % 50 + 1) as usize;
            let popped = c.pop_burst(&mut out[..want]).unwrap();
            for d in &out[..popped] {
                assert_eq!(*d, desc(next_out));
                next_out += 1;
            }
        }
        assert!(next_out > 10_000);
        assert_eq!(p.index(), next_in);
        assert_eq!(c.index(), next_out);
    }

    #[test]
    fn full_and_empty() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let mut p = DescProducer::new(&mem, area).unwrap();
        let mut c = DescConsumer::new(&mem, area).unwrap();
        let mut out = [Desc::default(); 8];
        assert_eq!(c.pop_burst(&mut out).unwrap(), 0);
        let many: Vec<Desc> = (0..100).map(desc).collect();
        assert_eq!(p.push_burst(&many).unwrap(), 64);
        assert_eq!(p.push_burst(&many).unwrap(), 0);
        assert_eq!(p.free_slots(1).unwrap(), 0);
        assert_eq!(c.available(1).unwrap(), 64);
        assert_eq!(c.pop_burst(&mut out).unwrap(), 8);
        assert_eq!(p.free_slots(1).unwrap(), 8);
        assert_eq!(p.push_burst(&[]).unwrap(), 0);
        assert_eq!(c.pop_burst(&mut []).unwrap(), 0);
    }

    #[test]
    fn caches_peer_index_until_needed() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let mut p = DescProducer::new(&mem, area).unwrap();
        assert_eq!(p.free_slots(1).unwrap(), 64);
        // A bogus consumer index is not even looked at while the cache suffices.
        mem.atomic_u32(4096 + CONS_INDEX_OFFSET as usize).unwrap().store(12345, SeqCst);
        assert_eq!(p.free_slots(64).unwrap(), 64);
        assert_eq!(p.push_burst(&[desc(1); 10]).unwrap(), 10);
        assert_eq!(p.free_slots(54).unwrap(), 54);
        assert!(matches!(p.free_slots(55), Err(RingError::Corrupt { prod: 10, cons: 12345 })));
    }

    #[test]
    fn wraps_around_u32_max() {
        // Start both sides just below the wrap point (as if 2^32 - 5 descriptors
        // had passed), by giving both views the same starting index.
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let start = u32::MAX - 4;
        mem.atomic_u32(4096).unwrap().store(start, SeqCst);
        mem.atomic_u32(4096 + 128).unwrap().store(start, SeqCst);
        let mut p = DescProducer::new(&mem, area).unwrap();
        let mut c = DescConsumer::new(&mem, area).unwrap();
        p.local_prod = start;
        p.cached_cons = start;
        c.local_cons = start;
        c.cached_prod = start;
        let input: Vec<Desc> = (0..64).map(desc).collect();
        assert_eq!(p.push_burst(&input).unwrap(), 64);
        assert_eq!(p.index(), start.wrapping_add(64));
        let mut out = [Desc::default(); 64];
        assert_eq!(c.pop_burst(&mut out).unwrap(), 64);
        assert_eq!(&out[..], &input[..]);
        assert_eq!(p.free_slots(64).unwrap(), 64);
    }

    #[test]
    fn corrupt_producer_index_is_detected() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let prod = mem.atomic_u32(4096).unwrap();
        let mut c = DescConsumer::new(&mem, area).unwrap();
        prod.store(65, SeqCst);
        assert_eq!(c.available(1).unwrap_err(), RingError::Corrupt { prod: 65, cons: 0 });
        prod.store(u32::MAX, SeqCst); // "behind" the consumer
        assert!(c.available(1).is_err());
        let mut out = [Desc::default(); 4];
        assert!(c.pop_burst(&mut out).is_err());
        // The state is untouched: a sane index works again.
        prod.store(64, SeqCst);
        assert_eq!(c.available(1).unwrap(), 64);
        assert!(RingError::Corrupt { prod: 1, cons: 2 }.to_string().contains("corrupt"));
    }

    #[test]
    fn corrupt_consumer_index_is_detected() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let cons = mem.atomic_u32(4096 + 128).unwrap();
        let mut p = DescProducer::new(&mem, area).unwrap();
        assert_eq!(p.push_burst(&[desc(0); 64]).unwrap(), 64);
        cons.store(1000, SeqCst); // ahead of what was produced
        assert_eq!(p.free_slots(1).unwrap_err(), RingError::Corrupt { prod: 64, cons: 1000 });
        assert!(p.push_burst(&[desc(0)]).is_err());
        cons.store(32, SeqCst);
        assert_eq!(p.free_slots(1).unwrap(), 32);
    }

    #[test]
    fn indices_that_move_backwards_inside_the_window_are_corrupt() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let prod = mem.atomic_u32(4096).unwrap();
        let cons = mem.atomic_u32(4096 + 128).unwrap();
        let mut p = DescProducer::new(&mem, area).unwrap();
        let mut c = DescConsumer::new(&mem, area).unwrap();
        assert_eq!(p.push_burst(&[desc(0); 64]).unwrap(), 64);
        // The consumer read 40: the producer sees 40 free.
        let mut out = [Desc::default(); 40];
        assert_eq!(c.pop_burst(&mut out).unwrap(), 40);
        assert_eq!(p.free_slots(64).unwrap(), 40);
        assert_eq!(p.push_burst(&[desc(1); 10]).unwrap(), 10);
        // A consumer index moved back by 20 is still within `prod - entries ..= prod`,
        // but would take back 20 slots the producer was promised (30 free left: the
        // producer may hold 30 written, unpublished slots).
        cons.store(20, SeqCst);
        assert_eq!(p.free_slots(64).unwrap_err(), RingError::Corrupt { prod: 74, cons: 20 });
        cons.store(40, SeqCst);
        assert_eq!(p.free_slots(64).unwrap(), 30);
        // The same for the producer index, seen by the consumer.
        assert_eq!(c.available(64).unwrap(), 34);
        prod.store(60, SeqCst);
        assert_eq!(c.available(64).unwrap_err(), RingError::Corrupt { prod: 60, cons: 40 });
        prod.store(74, SeqCst);
        assert_eq!(c.available(64).unwrap(), 34);
        // Releasing or publishing more than there is stops at what there is (in a
        // release build; a debug build asserts).
        if cfg!(debug_assertions) {
            return;
        }
        c.release(1000);
        assert_eq!(c.index(), 74);
        p.publish(1000);
        assert_eq!(p.index(), 74 + 30);
    }

    #[test]
    fn unconsumed_lists_what_the_consumer_never_released() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        let mut p = DescProducer::new(&mem, area).unwrap();
        let mut c = DescConsumer::new(&mem, area).unwrap();
        for round in 0..3u32 {
            // Wrap around a few times so the window straddles the end of the slots.
            let base = round * 50;
            let sent: Vec<Desc> = (base..base + 50).map(desc).collect();
            assert_eq!(p.push_burst(&sent).unwrap(), 50);
            let mut out = [Desc::default(); 30];
            assert_eq!(c.pop_burst(&mut out).unwrap(), 30);
            let mut left = Vec::new();
            assert_eq!(p.unconsumed(|d| left.push(d)).unwrap(), 20);
            assert_eq!(left, sent[30..].to_vec());
            let mut rest = [Desc::default(); 20];
            assert_eq!(c.pop_burst(&mut rest).unwrap(), 20);
            assert_eq!(p.unconsumed(|_| panic!("nothing left")).unwrap(), 0);
        }
        // A consumer index the producer never allowed is reported, not followed.
        mem.atomic_u32(4096 + 128).unwrap().store(5000, SeqCst);
        assert!(matches!(p.unconsumed(|_| {}), Err(RingError::Corrupt { .. })));
    }

    #[test]
    fn init_resets_indices() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        mem.atomic_u32(4096).unwrap().store(7, SeqCst);
        mem.atomic_u32(4096 + 128).unwrap().store(9, SeqCst);
        DescRing::init(&mem, area).unwrap();
        assert_eq!(mem.atomic_u32(4096).unwrap().load(SeqCst), 0);
        assert_eq!(mem.atomic_u32(4096 + 128).unwrap().load(SeqCst), 0);
    }

    #[test]
    fn threads_pass_every_descriptor_once_in_order() {
        let (heap, area) = ring(64);
        let mem = heap.mem();
        const N: u32 = 200_000;
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut p = DescProducer::new(&mem, area).unwrap();
                let mut next = 0u32;
                while next < N {
                    let burst: Vec<Desc> = (next..(next + 32).min(N)).map(desc).collect();
                    next += p.push_burst(&burst).unwrap() as u32;
                    std::hint::spin_loop();
                }
            });
            s.spawn(|| {
                let mut c = DescConsumer::new(&mem, area).unwrap();
                let mut out = [Desc::default(); 32];
                let mut next = 0u32;
                while next < N {
                    let n = c.pop_burst(&mut out).unwrap();
                    for d in &out[..n] {
                        assert_eq!(*d, desc(next));
                        next += 1;
                    }
                    std::hint::spin_loop();
                }
            });
        });
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    struct Storage {
        prod: AtomicU32,
        cons: AtomicU32,
        slots: Box<[AtomicU64]>,
        // Plain data that travels with each slot (think: the packet bytes a
        // descriptor stands for). loom reports a race unless publishing orders
        // the producer's write before the consumer's read, and releasing orders
        // the consumer's read before the producer's next-lap write.
        payload: Box<[UnsafeCell<u32>]>,
    }

    fn run(entries: u32, values: u32, burst: u32) {
        let s = Arc::new(Storage {
            prod: AtomicU32::new(0),
            cons: AtomicU32::new(0),
            slots: (0..entries * 2).map(|_| AtomicU64::new(0)).collect(),
            payload: (0..entries).map(|_| UnsafeCell::new(0)).collect(),
        });
        let mask = entries - 1;
        let ps = s.clone();
        let producer = thread::spawn(move || {
            let mut p = DescProducer::from_parts(&ps.prod, &ps.cons, &ps.slots).unwrap();
            let mut next = 0u32;
            while next < values {
                let free = p.free_slots(1).unwrap();
                if free == 0 {
                    thread::yield_now();
                    continue;
                }
                let n = free.min(burst).min(values - next);
                for i in 0..n {
                    let slot = (p.index().wrapping_add(i) & mask) as usize;
                    ps.payload[slot].with_mut(|x| {
                        // SAFETY: the slot is free: its last reader released it.
                        unsafe { *x = next + i + 100 }
                    });
                    p.write(i, &Desc { offset: next + i, ..Desc::default() });
                }
                p.publish(n);
                next += n;
            }
        });
        let mut c = DescConsumer::from_parts(&s.prod, &s.cons, &s.slots).unwrap();
        let mut next = 0u32;
        while next < values {
            let avail = c.available(1).unwrap();
            if avail == 0 {
                thread::yield_now();
                continue;
            }
            let n = avail.min(burst);
            for i in 0..n {
                assert_eq!(c.read(i).offset, next, "lost, duplicated or out of order");
                let slot = (c.index().wrapping_add(i) & mask) as usize;
                let v = s.payload[slot].with(|x| {
                    // SAFETY: the slot was published and is not yet released.
                    unsafe { *x }
                });
                assert_eq!(v, next + 100, "data written before publish not visible");
                next += 1;
            }
            c.release(n);
        }
        producer.join().unwrap();
        assert_eq!(c.available(1).unwrap(), 0);
    }

    #[test]
    fn loom_spsc_single_wraps() {
        loom::model(|| run(2, 3, 1));
    }

    #[test]
    fn loom_spsc_bursts() {
        loom::model(|| run(2, 4, 2));
    }
}
