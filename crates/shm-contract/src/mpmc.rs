//! The free ring of a pool: bounded, multi-producer, multi-consumer, lock-free,
//! in shared memory, after Dmitry Vyukov's bounded MPMC queue.
//!
//! Layout at the pool's ring offset:
//!
//! | offset | size            | contents |
//! | ------ | --------------- | -------- |
//! | 0      | 4 (block 128)   | `enq_pos`, `u32`: next position to fill |
//! | 128    | 4 (block 128)   | `deq_pos`, `u32`: next position to empty |
//! | 256    | `entries * 8`   | cells, `u64`: `sequence << 32 \| value` |
//!
//! Positions are free-running `u32`s (wrapping); position `p` lives in cell
//! `p & (entries - 1)`. A cell's sequence says what it is waiting for:
//!
//! * `seq == p`: empty, ready for the producer of position `p`;
//! * `seq == p + 1`: full, holding the value of position `p`, ready for its consumer;
//! * after consumption the consumer writes `seq = p + entries`: empty for the
//!   producer of the next lap.
//!
//! Initially cell `i` holds sequence `i` (empty for lap 0), and both positions are 0.
//!
//! # Bulk operations: check, then claim with one CAS
//!
//! `enqueue_bulk` of `n` values reads `enq_pos = p` and checks that cells
//! `p .. p + n` are all empty *for their position*. A cell behind its position
//! (`seq < p + k`) still holds last lap's value: the ring is full, return
//! [`FreeRingError::Full`]. A cell ahead of it (`seq > p + k`) has already been
//! filled for that position, so `p` is stale: reload and retry. If all are ready,
//! one CAS `p -> p + n` on `enq_pos` claims the whole range, and only then are the
//! cells written (`seq = p + k + 1`, release). `dequeue_bulk` is the mirror image
//! on `deq_pos`, with "full for its position" (`seq == p + k + 1`); it copies the
//! values during the check and, once its CAS succeeded, marks the cells empty
//! for the next lap.
//!
//! Why checking before claiming is correct:
//!
//! * Positions only move forward, and only by a successful CAS. If our CAS from
//!   `p` succeeds, `enq_pos` was `p` both when we loaded it and at the CAS, so
//!   nobody claimed any position `>= p` in between: `p .. p + n` is ours alone.
//!   (The only exception is the counter wrapping a full `2^32` positions between
//!   our load and our CAS, which cannot happen in the few instructions between
//!   them.)
//! * A claimed cell is written only by its claimer. The sequence we checked
//!   (`seq == p + k`) can only be changed by the producer of `p + k` (us, now) or
//!   by the consumer of `p + k`, who waits for `seq == p + k + 1`, which only we
//!   write. So what we checked still holds when we write. Likewise a value we
//!   copied while checking for a dequeue cannot be replaced before our CAS: its
//!   producer has finished, and the next producer of that cell waits for the
//!   sequence that only we (the consumer of that position) will write.
//! * The acquire loads of the sequences pair with the release stores of the
//!   previous owner of each cell: a producer that sees a cell empty knows the
//!   consumer's read of the old value is done; a consumer that sees a cell full
//!   sees the value (and everything its producer wrote before it).
//!
//! # Nobody waits for anybody for long
//!
//! No party ever waits without bound for another to finish. A party that stalls or
//! dies after its CAS leaves its cells reading "not ready" (an unfilled cell reads
//! as empty, an un-emptied one as full). A stale position, a lost CAS, or such a
//! claimed but unwritten cell is retried, at most `max_retries` times: the proxy
//! passes a small bound, so a hostile guest rewriting `enq_pos`/`deq_pos` or the
//! cells can neither make it spin nor make it touch memory outside the ring. When
//! the retries run out, a lost race or a stale position gives
//! [`FreeRingError::Contended`]; a claimed cell not yet written gives
//! [`FreeRingError::Full`] (enqueue) or [`FreeRingError::Empty`] (dequeue): the room
//! or the values are simply not there yet. That is the usual state of a free ring
//! that runs almost empty (a consumer right behind a producer meets the cell the
//! producer is filling, for as long as the producer's thread is descheduled between
//! its CAS and its store), not anybody's fault: callers must not count it against
//! the other side. Garbage in the cells can at worst hand the proxy garbage values,
//! which it validates ([`PoolLayout::buffer_index`](crate::pool::PoolLayout::buffer_index)).

use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

#[cfg(not(loom))]
use crate::mem::SharedMem;
use crate::spsc::{check_entries, RingSetupError};
use crate::sync::{AtomicU32, AtomicU64};

/// Offset of `enq_pos` from the start of a free ring.
pub const ENQ_POS_OFFSET: u32 = 0;
/// Offset of `deq_pos` from the start of a free ring.
pub const DEQ_POS_OFFSET: u32 = 128;
/// Offset of the first cell from the start of a free ring.
pub const CELLS_OFFSET: u32 = 256;

/// Why a bulk operation on a free ring did nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeRingError {
    /// Not enough empty cells for the whole bulk (also: bulk larger than the ring, or
    /// the retries ran out waiting for a cell whose consumer has claimed it but not yet
    /// emptied it).
    Full,
    /// Not enough full cells for the whole bulk (also: bulk larger than the ring, or
    /// the retries ran out waiting for a cell whose producer has claimed it but not yet
    /// filled it).
    Empty,
    /// `max_retries` exhausted by lost CAS races or stale positions.
    Contended,
}

impl fmt::Display for FreeRingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FreeRingError::Full => "free ring: full",
            FreeRingError::Empty => "free ring: empty",
            FreeRingError::Contended => "free ring: contended, retries exhausted",
        })
    }
}

impl std::error::Error for FreeRingError {}

/// What the cells of a range say about a bulk operation at a position.
enum Range {
    /// Every cell is ready for its position.
    Ready,
    /// Some cell is not ready yet: full (enqueue) or empty (dequeue).
    Blocked,
    /// Some cell is past its position: the position we loaded is stale.
    Stale,
}

#[inline]
fn cell(seq: u32, value: u32) -> u64 {
    (seq as u64) << 32 | value as u64
}

/// Classifies a cell sequence against the one expected: equal, behind
/// (not ready), or ahead (stale position). Sequences and positions wrap, so
/// the difference is read as signed, which is exact while `entries <= 2^30`.
#[inline]
fn compare(seq: u32, expected: u32) -> Range {
    match seq.wrapping_sub(expected) as i32 {
        0 => Range::Ready,
        d if d < 0 => Range::Blocked,
        _ => Range::Stale,
    }
}

/// A view of one free ring.
#[derive(Debug, Clone, Copy)]
pub struct FreeRing<'a> {
    // INVARIANT: `cells.len() == mask + 1`, a power of two `<= MAX_RING_ENTRIES`.
    enq_pos: &'a AtomicU32,
    deq_pos: &'a AtomicU32,
    cells: &'a [AtomicU64],
    mask: u32,
}

impl<'a> FreeRing<'a> {
    /// Bytes a ring of `entries` cells occupies, positions included.
    #[inline]
    pub const fn bytes_for(entries: u32) -> u64 {
        CELLS_OFFSET as u64 + entries as u64 * 8
    }

    /// Creates an empty ring at `offset` (the guest, which lays out the pool,
    /// does this once, before announcing the pool) and returns a view of it.
    #[cfg(not(loom))]
    pub fn init(mem: &SharedMem<'a>, offset: u32, entries: u32) -> Result<Self, RingSetupError> {
        let ring = Self::new(mem, offset, entries)?;
        ring.reset();
        Ok(ring)
    }

    /// Attaches to the ring at `offset` without touching it.
    #[cfg(not(loom))]
    pub fn new(mem: &SharedMem<'a>, offset: u32, entries: u32) -> Result<Self, RingSetupError> {
        check_entries(entries)?;
        let base = offset as usize;
        let enq_pos = mem.atomic_u32(base + ENQ_POS_OFFSET as usize)?;
        let deq_pos = mem.atomic_u32(base + DEQ_POS_OFFSET as usize)?;
        let cells = mem.atomic_u64_slice(base + CELLS_OFFSET as usize, entries as usize)?;
        Self::from_parts(enq_pos, deq_pos, cells)
    }

    /// Attaches to a ring over explicit storage (`cells.len()` entries). Used by
    /// the loom models and by tests.
    pub fn from_parts(
        enq_pos: &'a AtomicU32,
        deq_pos: &'a AtomicU32,
        cells: &'a [AtomicU64],
    ) -> Result<Self, RingSetupError> {
        let entries = u32::try_from(cells.len()).unwrap_or(u32::MAX);
        check_entries(entries)?;
        Ok(FreeRing {
            enq_pos,
            deq_pos,
            cells,
            mask: entries - 1,
        })
    }

    /// Makes the ring empty: positions 0, cell `i` empty for position `i`. Only
    /// valid while nobody else uses the ring.
    pub fn reset(&self) {
        for (i, c) in self.cells.iter().enumerate() {
            c.store(cell(i as u32, 0), Relaxed);
        }
        self.deq_pos.store(0, Relaxed);
        // Release: a party that acquires `enq_pos` sees the initialised cells.
        self.enq_pos.store(0, Release);
    }

    /// Number of cells.
    #[inline]
    pub fn entries(&self) -> u32 {
        self.mask + 1
    }

    #[inline]
    fn cell_at(&self, pos: u32) -> &AtomicU64 {
        &self.cells[(pos & self.mask) as usize]
    }

    /// Enqueues all of `values` or none. A lost CAS or a stale position is
    /// retried at most `max_retries` times.
    #[inline]
    pub fn enqueue_bulk(&self, values: &[u32], max_retries: u32) -> Result<(), FreeRingError> {
        let mut retries_left = max_retries;
        self.enqueue_bulk_within(values, &mut retries_left)
    }

    /// As [`enqueue_bulk`](Self::enqueue_bulk), drawing its retries from
    /// `retries_left` (decremented per retry): one budget can bound the retries of
    /// many operations, e.g. all of one polling round.
    #[inline]
    pub fn enqueue_bulk_within(&self, values: &[u32], retries_left: &mut u32) -> Result<(), FreeRingError> {
        if values.is_empty() {
            return Ok(());
        }
        let n = match u32::try_from(values.len()) {
            Ok(n) if n <= self.entries() => n,
            _ => return Err(FreeRingError::Full),
        };
        let mut pos = self.enq_pos.load(Relaxed);
        loop {
            // What stopped this attempt, if the retries run out now: a lost race or a
            // stale position (Contended), or a cell a consumer claimed and has not
            // emptied yet (Full: that room is not there yet; nobody did anything wrong).
            let mut out_of_retries = FreeRingError::Contended;
            match self.check_empty(pos, n) {
                Range::Ready => {
                    match self
                        .enq_pos
                        .compare_exchange(pos, pos.wrapping_add(n), Relaxed, Relaxed)
                    {
                        Ok(_) => {
                            // Claimed: positions pos..pos+n are ours alone (module docs).
                            for (k, &v) in (0..n).zip(values) {
                                let p = pos.wrapping_add(k);
                                // Release: the consumer that acquires this cell sees
                                // the value and what we wrote before.
                                self.cell_at(p).store(cell(p.wrapping_add(1), v), Release);
                            }
                            return Ok(());
                        }
                        Err(current) => pos = current,
                    }
                }
                Range::Blocked => {
                    // A cell still holds last lap's value. Judge fullness only from a
                    // position that is still current: from a stale one, consumers may
                    // have moved deq_pos past it, and the distance would wrap into a
                    // false "full". Full only if that value is unclaimed; if a consumer
                    // already moved deq_pos past it, it is between its CAS and its
                    // store: retry.
                    let current = self.enq_pos.load(Relaxed);
                    if current == pos {
                        let deq = self.deq_pos.load(Acquire);
                        let used = pos.wrapping_add(n).wrapping_sub(deq) as i32;
                        if used > self.entries() as i32 {
                            return Err(FreeRingError::Full);
                        }
                        out_of_retries = FreeRingError::Full;
                    }
                    pos = current;
                }
                Range::Stale => pos = self.enq_pos.load(Relaxed),
            }
            if *retries_left == 0 {
                return Err(out_of_retries);
            }
            *retries_left -= 1;
        }
    }

    #[inline]
    fn check_empty(&self, pos: u32, n: u32) -> Range {
        for k in 0..n {
            let p = pos.wrapping_add(k);
            // Acquire: pairs with the release store of the consumer that emptied
            // this cell, whose read of the old value must come before our write.
            let seq = (self.cell_at(p).load(Acquire) >> 32) as u32;
            match compare(seq, p) {
                Range::Ready => {}
                other => return other,
            }
        }
        Range::Ready
    }

    /// Dequeues exactly `out.len()` values or none. A lost CAS or a stale
    /// position is retried at most `max_retries` times. On error `out` may have
    /// been partly overwritten. The values are whatever the producers wrote:
    /// validate them.
    #[inline]
    pub fn dequeue_bulk(&self, out: &mut [u32], max_retries: u32) -> Result<(), FreeRingError> {
        let mut retries_left = max_retries;
        self.dequeue_bulk_within(out, &mut retries_left)
    }

    /// As [`dequeue_bulk`](Self::dequeue_bulk), drawing its retries from
    /// `retries_left` (decremented per retry).
    #[inline]
    pub fn dequeue_bulk_within(&self, out: &mut [u32], retries_left: &mut u32) -> Result<(), FreeRingError> {
        if out.is_empty() {
            return Ok(());
        }
        let n = match u32::try_from(out.len()) {
            Ok(n) if n <= self.entries() => n,
            _ => return Err(FreeRingError::Empty),
        };
        let mut pos = self.deq_pos.load(Relaxed);
        loop {
            // As for enqueue: Contended for a lost race or a stale position, Empty for a
            // cell a producer claimed and has not filled yet (its value is not there yet:
            // a consumer that catches up with a producer meets this all the time, e.g.
            // on a free ring that runs almost empty).
            let mut out_of_retries = FreeRingError::Contended;
            match self.check_full_and_copy(pos, out) {
                Range::Ready => {
                    match self
                        .deq_pos
                        .compare_exchange(pos, pos.wrapping_add(n), Relaxed, Relaxed)
                    {
                        Ok(_) => {
                            let lap = self.entries();
                            for k in 0..n {
                                let p = pos.wrapping_add(k);
                                // Release: our read of the value happens before the
                                // next lap's producer (acquiring this) overwrites it.
                                self.cell_at(p).store(cell(p.wrapping_add(lap), 0), Release);
                            }
                            return Ok(());
                        }
                        Err(current) => pos = current,
                    }
                }
                Range::Blocked => {
                    // A cell is not written yet. As for enqueue, judge only from a
                    // current position. Empty only if no producer claimed it; if
                    // enq_pos is past it, that producer is between its CAS and its
                    // store: retry. A distance beyond the ring (only a peer that wrote
                    // the positions makes one) reads as empty too.
                    let current = self.deq_pos.load(Relaxed);
                    if current == pos {
                        let enq = self.enq_pos.load(Acquire);
                        let avail = enq.wrapping_sub(pos) as i32;
                        if avail < n as i32 || avail > self.entries() as i32 {
                            return Err(FreeRingError::Empty);
                        }
                        out_of_retries = FreeRingError::Empty;
                    }
                    pos = current;
                }
                Range::Stale => pos = self.deq_pos.load(Relaxed),
            }
            if *retries_left == 0 {
                return Err(out_of_retries);
            }
            *retries_left -= 1;
        }
    }

    #[inline]
    fn check_full_and_copy(&self, pos: u32, out: &mut [u32]) -> Range {
        for (k, slot) in (0u32..).zip(out.iter_mut()) {
            let p = pos.wrapping_add(k);
            // Acquire: pairs with the producer's release store of this cell.
            let c = self.cell_at(p).load(Acquire);
            match compare((c >> 32) as u32, p.wrapping_add(1)) {
                Range::Ready => *slot = c as u32,
                other => return other,
            }
        }
        Range::Ready
    }

    /// Approximate number of values in the ring (exact when quiescent), clamped
    /// to `0..=entries` whatever the positions say.
    #[inline]
    pub fn count(&self) -> u32 {
        let deq = self.deq_pos.load(Relaxed);
        let enq = self.enq_pos.load(Relaxed);
        let n = enq.wrapping_sub(deq);
        if (n as i32) < 0 {
            0
        } else {
            n.min(self.entries())
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mem::{HeapMem, MemError};
    use std::sync::atomic::Ordering::SeqCst;

    fn ring_mem(entries: u32) -> HeapMem {
        HeapMem::new(FreeRing::bytes_for(entries) as usize)
    }

    #[test]
    fn setup() {
        assert_eq!(FreeRing::bytes_for(8), 256 + 64);
        let heap = ring_mem(8);
        let mem = heap.mem();
        assert_eq!(FreeRing::init(&mem, 0, 6).unwrap_err(), RingSetupError::Entries { entries: 6 });
        assert!(matches!(FreeRing::init(&mem, 0, 16), Err(RingSetupError::Mem(MemError::OutOfBounds { .. }))));
        assert!(matches!(FreeRing::new(&mem, 4, 1), Err(RingSetupError::Mem(MemError::Misaligned { .. }))));
        let ring = FreeRing::init(&mem, 0, 8).unwrap();
        assert_eq!(ring.entries(), 8);
        assert_eq!(ring.count(), 0);
        for i in 0..8 {
            assert_eq!(mem.atomic_u64(256 + i * 8).unwrap().load(SeqCst), (i as u64) << 32);
        }
        let (a, b) = (AtomicU32::new(0), AtomicU32::new(0));
        let cells: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        assert!(FreeRing::from_parts(&a, &b, &cells).is_err());
        for e in [FreeRingError::Full, FreeRingError::Empty, FreeRingError::Contended] {
            assert!(e.to_string().starts_with("free ring"));
        }
    }

    #[test]
    fn a_shared_retry_budget_bounds_many_operations() {
        let heap = ring_mem(8);
        let mem = heap.mem();
        let ring = FreeRing::init(&mem, 0, 8).unwrap();
        // A peer that moved enq_pos behind the cells' sequences: each attempt finds
        // the position stale.
        mem.atomic_u32(ENQ_POS_OFFSET as usize).unwrap().store(0xffff_ff00, SeqCst);
        let mut left = 5;
        assert_eq!(ring.enqueue_bulk_within(&[1], &mut left), Err(FreeRingError::Contended));
        assert_eq!(left, 0);
        // Spent: the next operation makes one attempt and no retry.
        assert_eq!(ring.enqueue_bulk_within(&[1], &mut left), Err(FreeRingError::Contended));
        mem.atomic_u32(DEQ_POS_OFFSET as usize).unwrap().store(0xffff_ff00, SeqCst);
        assert_eq!(ring.dequeue_bulk_within(&mut [0], &mut left), Err(FreeRingError::Contended));
        // Sane positions again: no retry needed, nothing spent.
        ring.reset();
        let mut left = 3;
        ring.enqueue_bulk_within(&[1, 2], &mut left).unwrap();
        ring.dequeue_bulk_within(&mut [0, 0], &mut left).unwrap();
        assert_eq!(left, 3);
    }

    #[test]
    fn bulk_is_all_or_nothing() {
        let heap = ring_mem(8);
        let mem = heap.mem();
        let ring = FreeRing::init(&mem, 0, 8).unwrap();
        ring.enqueue_bulk(&[1, 2, 3, 4, 5], 0).unwrap();
        assert_eq!(ring.enqueue_bulk(&[6, 7, 8, 9], 0), Err(FreeRingError::Full));
        assert_eq!(ring.count(), 5);
        ring.enqueue_bulk(&[6, 7, 8], 0).unwrap();
        assert_eq!(ring.count(), 8);
        assert_eq!(ring.enqueue_bulk(&[9], 0), Err(FreeRingError::Full));
        let mut out = [0u32; 3];
        ring.dequeue_bulk(&mut out, 0).unwrap();
        assert_eq!(out, [1, 2, 3]);
        let mut big = [0u32; 6];
        assert_eq!(ring.dequeue_bulk(&mut big, 0), Err(FreeRingError::Empty));
        assert_eq!(ring.count(), 5);
        let mut rest = [0u32; 5];
        ring.dequeue_bulk(&mut rest, 0).unwrap();
        assert_eq!(rest, [4, 5, 6, 7, 8]);
        assert_eq!(ring.dequeue_bulk(&mut out[..1], 0), Err(FreeRingError::Empty));
        // Empty bulks always succeed; oversize bulks never do.
        ring.enqueue_bulk(&[], 0).unwrap();
        ring.dequeue_bulk(&mut [], 0).unwrap();
        assert_eq!(ring.enqueue_bulk(&[0; 9], 0), Err(FreeRingError::Full));
        assert_eq!(ring.dequeue_bulk(&mut [0; 9], 0), Err(FreeRingError::Empty));
    }

    #[test]
    fn fifo_over_many_laps() {
        let heap = ring_mem(16);
        let mem = heap.mem();
        let ring = FreeRing::init(&mem, 0, 16).unwrap();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        for round in 0..10_000u32 {
            let n = (round % 5 + 1) as usize;
            let vals: Vec<u32> = (next_in..next_in + n as u32).collect();
            if ring.enqueue_bulk(&vals, 0).is_ok() {
                next_in += n as u32;
            }
            let m = (round % 7 + 1) as usize;
            let mut out = vec![0; m];
            if ring.dequeue_bulk(&mut out, 0).is_ok() {
                for v in out {
                    assert_eq!(v, next_out);
                    next_out += 1;
                }
            }
        }
        assert!(next_out > 5000);
    }

    #[test]
    fn positions_wrap_around_u32_max() {
        let heap = ring_mem(8);
        let mem = heap.mem();
        let ring = FreeRing::new(&mem, 0, 8).unwrap();
        // The state of a ring 2^32 - 3 positions into its life, empty.
        let start = u32::MAX - 2;
        for k in 0..8u32 {
            let p = start.wrapping_add(k);
            ring.cell_at(p).store(cell(p, 0), SeqCst);
        }
        ring.enq_pos.store(start, SeqCst);
        ring.deq_pos.store(start, SeqCst);
        for round in 0..20u32 {
            ring.enqueue_bulk(&[round, round + 100, round + 200], 0).unwrap();
            assert_eq!(ring.count(), 3);
            let mut out = [0; 3];
            ring.dequeue_bulk(&mut out, 0).unwrap();
            assert_eq!(out, [round, round + 100, round + 200]);
        }
        assert_eq!(ring.count(), 0);
    }

    #[test]
    fn stale_positions_are_retried_within_the_bound() {
        let heap = ring_mem(8);
        let mem = heap.mem();
        let ring = FreeRing::init(&mem, 0, 8).unwrap();
        ring.enqueue_bulk(&[1, 2], 0).unwrap();
        // Rewind enq_pos as a hostile peer could: cells 0..2 are ahead of it.
        ring.enq_pos.store(0, SeqCst);
        assert_eq!(ring.enqueue_bulk(&[3], 5), Err(FreeRingError::Contended));
        assert_eq!(ring.enqueue_bulk(&[3], 0), Err(FreeRingError::Contended));
        ring.enq_pos.store(2, SeqCst);
        ring.enqueue_bulk(&[3], 0).unwrap();
        let mut out = [0; 3];
        ring.dequeue_bulk(&mut out, 0).unwrap();
        assert_eq!(out, [1, 2, 3]);
        ring.deq_pos.store(0, SeqCst);
        assert_eq!(ring.dequeue_bulk(&mut out[..1], 3), Err(FreeRingError::Contended));
    }

    #[test]
    fn a_cell_claimed_but_not_yet_filled_is_empty_for_now_not_contention() {
        // A consumer right behind a producer: the producer has moved enq_pos past
        // position 2 (its CAS) and not yet written cell 2 (its store), e.g. because its
        // thread was descheduled in between. Nobody misbehaved: the value is just not
        // there yet.
        let heap = ring_mem(8);
        let mem = heap.mem();
        let ring = FreeRing::init(&mem, 0, 8).unwrap();
        ring.enqueue_bulk(&[1, 2], 0).unwrap();
        ring.enq_pos.store(3, SeqCst);
        let mut left = 5;
        let mut out = [0u32; 3];
        assert_eq!(ring.dequeue_bulk_within(&mut out, &mut left), Err(FreeRingError::Empty));
        assert_eq!(left, 0, "the retries were spent waiting for the store");
        assert_eq!(ring.dequeue_bulk(&mut out, 0), Err(FreeRingError::Empty));
        assert_eq!(ring.count(), 3);
        // A bulk that stops short of the claimed cell is served.
        ring.dequeue_bulk(&mut out[..1], 0).unwrap();
        assert_eq!(out[0], 1);
        // The producer's store lands: the value is there.
        ring.cell_at(2).store(cell(3, 7), SeqCst);
        ring.dequeue_bulk(&mut out[..2], 0).unwrap();
        assert_eq!(out[..2], [2, 7]);
    }

    #[test]
    fn a_cell_claimed_but_not_yet_emptied_is_full_for_now_not_contention() {
        // The mirror image on a full ring: a consumer has moved deq_pos past position 0
        // and not yet marked cell 0 empty for the next lap.
        let heap = ring_mem(8);
        let mem = heap.mem();
        let ring = FreeRing::init(&mem, 0, 8).unwrap();
        ring.enqueue_bulk(&[0, 1, 2, 3, 4, 5, 6, 7], 0).unwrap();
        ring.deq_pos.store(1, SeqCst);
        let mut left = 5;
        assert_eq!(ring.enqueue_bulk_within(&[8], &mut left), Err(FreeRingError::Full));
        assert_eq!(left, 0);
        assert_eq!(ring.enqueue_bulk(&[8], 0), Err(FreeRingError::Full));
        // The consumer's store lands: room for one.
        ring.cell_at(0).store(cell(8, 0), SeqCst);
        ring.enqueue_bulk(&[8], 0).unwrap();
        assert_eq!(ring.enqueue_bulk(&[9], 0), Err(FreeRingError::Full));
    }

    #[test]
    fn garbage_never_escapes_the_ring() {
        let heap = ring_mem(8);
        let mem = heap.mem();
        let ring = FreeRing::init(&mem, 0, 8).unwrap();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 4 {
                0 => ring.enq_pos.store(x as u32 >> (x % 32), SeqCst),
                1 => ring.deq_pos.store((x >> 32) as u32 >> (x % 32), SeqCst),
                _ => ring.cell_at(x as u32).store(x.rotate_left(x as u32 % 64), SeqCst),
            }
            let _ = ring.enqueue_bulk(&[1, 2], 3);
            let mut out = [0; 2];
            let _ = ring.dequeue_bulk(&mut out, 3);
            assert!(ring.count() <= 8);
        }
    }

    #[test]
    fn threads_lose_and_duplicate_nothing() {
        const N: u32 = 256;
        let heap = ring_mem(256);
        let mem = heap.mem();
        let ring = FreeRing::init(&mem, 0, 256).unwrap();
        let all: Vec<u32> = (0..N).collect();
        ring.enqueue_bulk(&all, 0).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u32 {
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..50_000u32 {
                        let n = ((i + t) % 4 + 1) as usize;
                        if i % 2 == 0 {
                            let mut out = vec![0; n];
                            if ring.dequeue_bulk(&mut out, u32::MAX).is_ok() {
                                held.extend(out);
                            }
                        } else if held.len() >= n {
                            let back = held.split_off(held.len() - n);
                            ring.enqueue_bulk(&back, u32::MAX).unwrap();
                        }
                    }
                    ring.enqueue_bulk(&held, u32::MAX).unwrap();
                });
            }
        });
        assert_eq!(ring.count(), N);
        let mut out = vec![0; N as usize];
        ring.dequeue_bulk(&mut out, 0).unwrap();
        out.sort_unstable();
        assert_eq!(out, all);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The models never spin: every party makes a bounded number of attempts
    //! (as the proxy does), and after everyone has finished the ring is drained
    //! and the books are balanced: every value that an enqueue reported as done
    //! was dequeued exactly once, and no other value was.
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    const RETRIES: u32 = 2;

    struct Storage {
        enq: AtomicU32,
        deq: AtomicU32,
        cells: Box<[AtomicU64]>,
        // The "buffers" the values name: plain cells that loom checks for
        // races. Whoever holds a value writes its buffer; handing the value
        // over through the ring must order those writes.
        buffers: Box<[UnsafeCell<u32>]>,
    }

    fn storage(entries: u32) -> Arc<Storage> {
        Arc::new(Storage {
            enq: AtomicU32::new(0),
            deq: AtomicU32::new(0),
            cells: (0..entries).map(|i| AtomicU64::new(cell(i, 0))).collect(),
            buffers: (0..16).map(|_| UnsafeCell::new(0)).collect(),
        })
    }

    fn touch(s: &Storage, value: u32) {
        s.buffers[value as usize].with_mut(|b| {
            // SAFETY: only the holder of `value` touches its buffer; loom
            // reports a race if the ring failed to order two holders.
            unsafe { *b += 1 }
        });
    }

    fn ring(s: &Storage) -> FreeRing<'_> {
        FreeRing::from_parts(&s.enq, &s.deq, &s.cells).unwrap()
    }

    /// Enqueues each bulk once; returns the values that went in.
    fn produce(s: &Storage, bulks: &[&[u32]]) -> Vec<u32> {
        let r = ring(s);
        let mut done = Vec::new();
        for bulk in bulks {
            for &v in bulk.iter() {
                touch(s, v);
            }
            if r.enqueue_bulk(bulk, RETRIES).is_ok() {
                done.extend_from_slice(bulk);
            }
        }
        done
    }

    /// Tries each bulk size once; returns the values that came out, in order.
    fn consume(s: &Storage, sizes: &[usize]) -> Vec<u32> {
        let r = ring(s);
        let mut got = Vec::new();
        for &n in sizes {
            let mut out = vec![0u32; n];
            if r.dequeue_bulk(&mut out, RETRIES).is_ok() {
                for &v in &out {
                    touch(s, v);
                }
                got.extend(out);
            }
        }
        got
    }

    /// Quiescent drain: the count is exact, and everything comes out.
    fn drain(s: &Storage) -> Vec<u32> {
        let r = ring(s);
        let n = r.count();
        let mut out = vec![0u32; n as usize];
        r.dequeue_bulk(&mut out, 0).unwrap();
        assert_eq!(r.dequeue_bulk(&mut [0], 0), Err(FreeRingError::Empty));
        out
    }

    fn balanced(mut produced: Vec<u32>, mut consumed: Vec<u32>) {
        produced.sort_unstable();
        consumed.sort_unstable();
        assert_eq!(produced, consumed, "lost or duplicated values");
    }

    fn before(seq: &[u32], a: u32, b: u32) -> bool {
        match (seq.iter().position(|&v| v == a), seq.iter().position(|&v| v == b)) {
            (Some(i), Some(j)) => i < j,
            _ => true,
        }
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = None;
        builder.check(f);
    }

    /// Two producers (bulk 2 on a 2-cell ring, and bulk 1) against one consumer.
    #[test]
    fn loom_mpmc_two_producers_one_consumer() {
        model(|| {
            let s = storage(2);
            let s1 = s.clone();
            let p1 = thread::spawn(move || produce(&s1, &[&[1, 2]]));
            let s2 = s.clone();
            let p2 = thread::spawn(move || produce(&s2, &[&[3]]));
            let mut got = consume(&s, &[1, 1]);
            let mut produced = p1.join().unwrap();
            produced.extend(p2.join().unwrap());
            got.extend(drain(&s));
            assert!(before(&got, 1, 2), "bulk order lost: {got:?}");
            balanced(produced, got);
        });
    }

    /// One producer (bulk 2 then bulk 1) against two consumers (bulk 2, bulk 1).
    #[test]
    fn loom_mpmc_one_producer_two_consumers() {
        model(|| {
            let s = storage(4);
            let sp = s.clone();
            let p = thread::spawn(move || produce(&sp, &[&[1, 2], &[3]]));
            let s1 = s.clone();
            let c1 = thread::spawn(move || consume(&s1, &[2]));
            let c2 = consume(&s, &[1]);
            let produced = p.join().unwrap();
            // A single producer on a ring that never fills always succeeds.
            assert_eq!(produced, [1, 2, 3]);
            let c1 = c1.join().unwrap();
            assert!(before(&c1, 1, 2) && before(&c1, 2, 3), "bulk order lost: {c1:?}");
            let mut got = c1;
            got.extend(c2);
            got.extend(drain(&s));
            balanced(produced, got);
        });
    }

    /// A producer racing a consumer on a full 2-cell ring into the next lap:
    /// `Full` loses nothing, order is kept.
    #[test]
    fn loom_mpmc_full_ring_laps() {
        model(|| {
            let s = storage(2);
            ring(&s).enqueue_bulk(&[10, 11], 0).unwrap();
            let sp = s.clone();
            let p = thread::spawn(move || produce(&sp, &[&[12], &[13]]));
            let mut got = consume(&s, &[1, 1]);
            let mut produced = vec![10, 11];
            produced.extend(p.join().unwrap());
            got.extend(drain(&s));
            let mut sorted = got.clone();
            sorted.sort_unstable();
            assert_eq!(got, sorted, "FIFO order lost");
            balanced(produced, got);
        });
    }
}
