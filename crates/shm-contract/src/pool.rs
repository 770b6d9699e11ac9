//! Pools: how a guest announces one ([`PoolAdd`]) and the proxy's validated
//! copy of it ([`PoolLayout`]).
//!
//! A pool lives in the heap of a region: a free ring ([`FreeRing`]) and `count`
//! objects at a fixed `stride`. The guest lays objects out as DPDK mempool
//! objects, `[rte_mempool_objhdr][rte_mbuf][priv][data room]`; the contract names
//! an object by the region offset of its `rte_mbuf`, and only cares about
//! `[mbuf, mbuf + mbuf_size + data_room)`: `mbuf_size` is the `rte_mbuf` plus its
//! private area, so the data room starts at `mbuf + mbuf_size`.
//!
//! The proxy turns an offset from the guest into a buffer index with
//! [`PoolLayout::buffer_index`]: one bounds check and one exact division by
//! multiplication, which also rejects any offset that is not the start of an
//! mbuf of the pool.

use std::fmt;

use crate::layout::{Area, RegionLayout, CACHE_LINE, MBUF_HEADER_SIZE};
use crate::mpmc::FreeRing;

/// Pools per region.
pub const MAX_POOLS: u32 = 4;
/// Smallest data room.
pub const MIN_DATA_ROOM: u32 = 64;
/// Largest free ring (2^26 cells: 512 MiB of cells, more than a 4 GiB region
/// can hold mbufs for).
pub const MAX_FREE_RING_ENTRIES: u32 = 1 << 26;

/// A guest's announcement of a pool (the body of the `PoolAdd` message).
///
/// `#[repr(C)]` (28 bytes, no padding): the guest plugins pass it between them inside
/// their versioned interface (`shm_driver_common::bus::PoolRecord`), so a change of its
/// fields is a change of that interface too. On the wire it is encoded field by field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PoolAdd {
    /// Pool number, below [`MAX_POOLS`], unique in the region.
    pub pool_id: u32,
    /// Region offset of the pool's free ring.
    pub ring_offset: u32,
    /// Cells of the free ring (a power of two, at least `count`).
    pub ring_entries: u32,
    /// Region offset of the first object's `rte_mbuf`.
    pub first_mbuf_offset: u32,
    /// Distance between consecutive mbufs.
    pub stride: u32,
    /// Number of objects.
    pub count: u32,
    /// `rte_mbuf` plus private area: the data room starts at `mbuf + mbuf_size`.
    pub mbuf_size: u16,
    /// Size of the data room.
    pub data_room: u16,
}

/// Why a pool announcement is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// `pool_id >= MAX_POOLS`.
    PoolId {
        /// The rejected id.
        pool_id: u32,
    },
    /// Another pool already has this id.
    DuplicatePoolId {
        /// The id.
        pool_id: u32,
    },
    /// `count == 0`.
    Empty,
    /// `ring_entries` is not a power of two in `count..=MAX_FREE_RING_ENTRIES`.
    RingEntries {
        /// Cells.
        ring_entries: u32,
        /// Objects.
        count: u32,
    },
    /// `mbuf_size < MBUF_HEADER_SIZE`.
    MbufSize {
        /// The rejected size.
        mbuf_size: u16,
    },
    /// `data_room < MIN_DATA_ROOM`.
    DataRoom {
        /// The rejected size.
        data_room: u16,
    },
    /// `stride < mbuf_size + data_room`.
    StrideTooSmall {
        /// Stride.
        stride: u32,
        /// `mbuf_size + data_room`.
        needed: u32,
    },
    /// The stride is not a multiple of the cache line.
    StrideMisaligned {
        /// Stride.
        stride: u32,
    },
    /// The first mbuf is not cache-line aligned.
    MbufMisaligned {
        /// Its offset.
        offset: u32,
    },
    /// The free ring is not cache-line aligned.
    RingMisaligned {
        /// Its offset.
        offset: u32,
    },
    /// The free ring is not inside the heap.
    RingOutsideHeap {
        /// Start.
        offset: u32,
        /// Size in bytes.
        size: u64,
    },
    /// Some object is not inside the heap.
    ObjectsOutsideHeap {
        /// Start of the first mbuf.
        start: u32,
        /// End of the last object's data room.
        end: u64,
    },
    /// The free ring overlaps the objects.
    RingOverlapsObjects,
    /// The pool overlaps another pool.
    OverlapsPool {
        /// The other pool.
        other: u32,
    },
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool: ")?;
        match *self {
            PoolError::PoolId { pool_id } => write!(f, "id {pool_id} not below {MAX_POOLS}"),
            PoolError::DuplicatePoolId { pool_id } => write!(f, "id {pool_id} already in use"),
            PoolError::Empty => write!(f, "no objects"),
            PoolError::RingEntries { ring_entries, count } => write!(
                f,
                "free ring of {ring_entries} cells is not a power of two in {count}..={MAX_FREE_RING_ENTRIES}"
            ),
            PoolError::MbufSize { mbuf_size } => {
                write!(f, "mbuf size {mbuf_size} below {MBUF_HEADER_SIZE}")
            }
            PoolError::DataRoom { data_room } => {
                write!(f, "data room {data_room} below {MIN_DATA_ROOM}")
            }
            PoolError::StrideTooSmall { stride, needed } => {
                write!(f, "stride {stride} below mbuf size + data room = {needed}")
            }
            PoolError::StrideMisaligned { stride } => {
                write!(f, "stride {stride} not a multiple of {CACHE_LINE}")
            }
            PoolError::MbufMisaligned { offset } => {
                write!(f, "first mbuf at {offset} not {CACHE_LINE}-byte aligned")
            }
            PoolError::RingMisaligned { offset } => {
                write!(f, "free ring at {offset} not {CACHE_LINE}-byte aligned")
            }
            PoolError::RingOutsideHeap { offset, size } => {
                write!(f, "free ring [{offset}, +{size}) not inside the heap")
            }
            PoolError::ObjectsOutsideHeap { start, end } => {
                write!(f, "objects [{start}, {end}) not inside the heap")
            }
            PoolError::RingOverlapsObjects => write!(f, "free ring overlaps the objects"),
            PoolError::OverlapsPool { other } => write!(f, "overlaps pool {other}"),
        }
    }
}

impl std::error::Error for PoolError {}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl PoolAdd {
    /// Validates the announcement against the region and the pools already
    /// accepted, and returns the proxy's copy of the pool.
    pub fn validate(&self, region: &RegionLayout, others: &[PoolLayout]) -> Result<PoolLayout, PoolError> {
        if self.pool_id >= MAX_POOLS {
            return Err(PoolError::PoolId { pool_id: self.pool_id });
        }
        if others.iter().any(|o| o.pool_id == self.pool_id) {
            return Err(PoolError::DuplicatePoolId { pool_id: self.pool_id });
        }
        if self.count == 0 {
            return Err(PoolError::Empty);
        }
        if !self.ring_entries.is_power_of_two()
            || self.ring_entries < self.count
            || self.ring_entries > MAX_FREE_RING_ENTRIES
        {
            return Err(PoolError::RingEntries {
                ring_entries: self.ring_entries,
                count: self.count,
            });
        }
        if (self.mbuf_size as u32) < MBUF_HEADER_SIZE {
            return Err(PoolError::MbufSize { mbuf_size: self.mbuf_size });
        }
        if (self.data_room as u32) < MIN_DATA_ROOM {
            return Err(PoolError::DataRoom { data_room: self.data_room });
        }
        let object_size = self.mbuf_size as u32 + self.data_room as u32;
        if self.stride < object_size {
            return Err(PoolError::StrideTooSmall {
                stride: self.stride,
                needed: object_size,
            });
        }
        if !self.stride.is_multiple_of(CACHE_LINE) {
            return Err(PoolError::StrideMisaligned { stride: self.stride });
        }
        if !self.first_mbuf_offset.is_multiple_of(CACHE_LINE) {
            return Err(PoolError::MbufMisaligned { offset: self.first_mbuf_offset });
        }
        if !self.ring_offset.is_multiple_of(CACHE_LINE) {
            return Err(PoolError::RingMisaligned { offset: self.ring_offset });
        }
        let heap = region.heap();
        let heap = (heap.offset as u64, heap.end());
        let inside = |r: (u64, u64)| heap.0 <= r.0 && r.1 <= heap.1;
        let ring_size = FreeRing::bytes_for(self.ring_entries);
        let ring = (self.ring_offset as u64, self.ring_offset as u64 + ring_size);
        if !inside(ring) {
            return Err(PoolError::RingOutsideHeap {
                offset: self.ring_offset,
                size: ring_size,
            });
        }
        let last_rel = (self.count as u64 - 1) * self.stride as u64;
        let objects = (
            self.first_mbuf_offset as u64,
            self.first_mbuf_offset as u64 + last_rel + object_size as u64,
        );
        if !inside(objects) {
            return Err(PoolError::ObjectsOutsideHeap {
                start: self.first_mbuf_offset,
                end: objects.1,
            });
        }
        if overlaps(ring, objects) {
            return Err(PoolError::RingOverlapsObjects);
        }
        for other in others {
            let o_ring = other.ring();
            let o_objects = other.objects();
            let o_ring = (o_ring.offset as u64, o_ring.end());
            let o_objects = (o_objects.offset as u64, o_objects.end());
            if [ring, objects]
                .iter()
                .any(|&mine| overlaps(mine, o_ring) || overlaps(mine, o_objects))
            {
                return Err(PoolError::OverlapsPool { other: other.pool_id });
            }
        }
        // Everything is inside the heap, so below 2^32: the narrowing is exact.
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(PoolLayout {
            pool_id: self.pool_id,
            ring_offset: self.ring_offset,
            ring_entries: self.ring_entries,
            ring_size: narrow(ring_size),
            first_mbuf_offset: self.first_mbuf_offset,
            stride: self.stride,
            count: self.count,
            mbuf_size: self.mbuf_size,
            data_room: self.data_room,
            last_rel: narrow(last_rel),
            objects_end: narrow(objects.1),
            // ceil(2^64 / stride) (exactly 2^64 / stride for a power of two):
            // Lemire, Kaser, Kurz, "Faster Remainder by Direct Computation".
            magic: u64::MAX / self.stride as u64 + 1,
        })
    }
}

/// A validated pool: the proxy's private copy of a [`PoolAdd`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLayout {
    // INVARIANT: produced by `PoolAdd::validate`: ring and objects inside the
    // heap and disjoint, `stride >= 192` and a multiple of 64,
    // `last_rel == (count - 1) * stride`, `objects_end == first_mbuf_offset +
    // last_rel + mbuf_size + data_room`, `magic == u64::MAX / stride + 1`.
    pool_id: u32,
    ring_offset: u32,
    ring_entries: u32,
    ring_size: u32,
    first_mbuf_offset: u32,
    stride: u32,
    count: u32,
    mbuf_size: u16,
    data_room: u16,
    last_rel: u32,
    objects_end: u32,
    magic: u64,
}

impl PoolLayout {
    /// The index of the buffer whose `rte_mbuf` is at `offset`, or `None` if
    /// `offset` is not exactly the start of an mbuf of this pool.
    ///
    /// One bounds check and one 64x64->128 multiplication: with
    /// `M = ceil(2^64 / stride)` and `rel = offset - first_mbuf_offset < 2^32`,
    /// the high half of `M * rel` is `rel / stride` and the low half is below
    /// `M` exactly when `stride` divides `rel` (Lemire et al.).
    #[inline]
    pub fn buffer_index(&self, offset: u32) -> Option<u32> {
        let rel = offset.wrapping_sub(self.first_mbuf_offset);
        let product = self.magic as u128 * rel as u128;
        let quotient = (product >> 64) as u32;
        let divisible = (product as u64) < self.magic;
        // Non-short-circuit `&`: both tests are cheap, one branch is enough.
        if (rel <= self.last_rel) & divisible {
            Some(quotient)
        } else {
            None
        }
    }

    /// Region offset of buffer `idx`'s `rte_mbuf`. `idx` must be below
    /// [`count`](Self::count); a larger one yields an unspecified offset.
    #[inline]
    pub fn buffer_offset(&self, idx: u32) -> u32 {
        self.first_mbuf_offset.wrapping_add(idx.wrapping_mul(self.stride))
    }

    /// Region offset of buffer `idx`'s data room (`idx` below `count`).
    #[inline]
    pub fn data_offset(&self, idx: u32) -> u32 {
        self.buffer_offset(idx).wrapping_add(self.mbuf_size as u32)
    }

    /// Whether `offset` falls anywhere within the pool's objects.
    #[inline]
    pub fn contains(&self, offset: u32) -> bool {
        offset >= self.first_mbuf_offset && offset < self.objects_end
    }

    /// Pool id.
    #[inline]
    pub fn pool_id(&self) -> u32 {
        self.pool_id
    }
    /// Number of buffers.
    #[inline]
    pub fn count(&self) -> u32 {
        self.count
    }
    /// Size of each data room.
    #[inline]
    pub fn data_room(&self) -> u16 {
        self.data_room
    }
    /// `rte_mbuf` plus private area.
    #[inline]
    pub fn mbuf_size(&self) -> u16 {
        self.mbuf_size
    }
    /// Distance between mbufs.
    #[inline]
    pub fn stride(&self) -> u32 {
        self.stride
    }
    /// Offset of the first mbuf.
    #[inline]
    pub fn first_mbuf_offset(&self) -> u32 {
        self.first_mbuf_offset
    }
    /// Offset of the free ring.
    #[inline]
    pub fn ring_offset(&self) -> u32 {
        self.ring_offset
    }
    /// Cells of the free ring.
    #[inline]
    pub fn ring_entries(&self) -> u32 {
        self.ring_entries
    }
    /// The bytes of the free ring.
    pub fn ring(&self) -> Area {
        Area {
            offset: self.ring_offset,
            size: self.ring_size,
        }
    }
    /// The bytes from the first mbuf to the end of the last data room.
    pub fn objects(&self) -> Area {
        Area {
            offset: self.first_mbuf_offset,
            size: self.objects_end - self.first_mbuf_offset,
        }
    }
    /// The announcement this layout was validated from.
    pub fn to_pool_add(&self) -> PoolAdd {
        PoolAdd {
            pool_id: self.pool_id,
            ring_offset: self.ring_offset,
            ring_entries: self.ring_entries,
            first_mbuf_offset: self.first_mbuf_offset,
            stride: self.stride,
            count: self.count,
            mbuf_size: self.mbuf_size,
            data_room: self.data_room,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RegionFlags;

    fn region() -> RegionLayout {
        RegionLayout::new(64 << 20, 4096, 1024, 1024, RegionFlags::empty()).unwrap()
    }

    fn pool_at(region: &RegionLayout, pool_id: u32, base: u32, count: u32, stride: u32) -> PoolAdd {
        let ring_entries = count.next_power_of_two();
        let ring_bytes = FreeRing::bytes_for(ring_entries) as u32;
        PoolAdd {
            pool_id,
            ring_offset: region.heap().offset + base,
            ring_entries,
            first_mbuf_offset: region.heap().offset + base + ring_bytes.next_multiple_of(64) + 64,
            stride,
            count,
            mbuf_size: 128,
            data_room: 2048 + 128,
        }
    }

    #[test]
    fn accepts_a_typical_pool() {
        let r = region();
        let add = pool_at(&r, 0, 0, 4096, 2432);
        let p = add.validate(&r, &[]).unwrap();
        assert_eq!(p.to_pool_add(), add);
        assert_eq!(p.count(), 4096);
        assert_eq!(p.pool_id(), 0);
        assert_eq!(p.stride(), 2432);
        assert_eq!(p.data_room(), 2176);
        assert_eq!(p.mbuf_size(), 128);
        assert_eq!(p.ring_entries(), 4096);
        assert_eq!(p.ring_offset(), add.ring_offset);
        assert_eq!(p.first_mbuf_offset(), add.first_mbuf_offset);
        assert_eq!(p.ring().size as u64, FreeRing::bytes_for(4096));
        assert_eq!(p.objects().offset, add.first_mbuf_offset);
        assert_eq!(p.objects().size, 4095 * 2432 + 128 + 2176);
        assert_eq!(p.buffer_offset(0), add.first_mbuf_offset);
        assert_eq!(p.buffer_offset(3), add.first_mbuf_offset + 3 * 2432);
        assert_eq!(p.data_offset(3), add.first_mbuf_offset + 3 * 2432 + 128);
        assert_eq!(p.buffer_index(p.buffer_offset(4095)), Some(4095));
        assert_eq!(p.buffer_index(p.buffer_offset(4096)), None);
        assert_eq!(p.buffer_index(p.buffer_offset(0) - 2432), None);
        assert_eq!(p.buffer_index(p.buffer_offset(7) + 64), None);
        assert!(p.contains(p.data_offset(4095) + 2175));
        assert!(!p.contains(p.data_offset(4095) + 2176));
        assert!(!p.contains(add.first_mbuf_offset - 1));
        // A second pool after it.
        let end = p.objects().end() as u32 - r.heap().offset;
        let q = pool_at(&r, 1, end.next_multiple_of(64), 100, 2304).validate(&r, &[p]).unwrap();
        assert_eq!(q.pool_id(), 1);
    }

    #[test]
    fn every_error_is_reachable() {
        let r = region();
        let good = pool_at(&r, 0, 0, 1000, 2432);
        let check = |f: &dyn Fn(&mut PoolAdd), others: &[PoolLayout]| {
            let mut add = good;
            f(&mut add);
            add.validate(&r, others).unwrap_err()
        };
        assert_eq!(check(&|a| a.pool_id = 4, &[]), PoolError::PoolId { pool_id: 4 });
        let accepted = good.validate(&r, &[]).unwrap();
        assert_eq!(check(&|_| {}, &[accepted]), PoolError::DuplicatePoolId { pool_id: 0 });
        assert_eq!(check(&|a| a.count = 0, &[]), PoolError::Empty);
        assert_eq!(
            check(&|a| a.ring_entries = 1000, &[]),
            PoolError::RingEntries { ring_entries: 1000, count: 1000 }
        );
        assert_eq!(
            check(&|a| a.ring_entries = 512, &[]),
            PoolError::RingEntries { ring_entries: 512, count: 1000 }
        );
        assert!(matches!(
            check(&|a| { a.ring_entries = 1 << 27; a.count = 1 << 26 | 1 }, &[]),
            PoolError::RingEntries { .. }
        ));
        assert_eq!(check(&|a| a.mbuf_size = 127, &[]), PoolError::MbufSize { mbuf_size: 127 });
        assert_eq!(check(&|a| a.data_room = 63, &[]), PoolError::DataRoom { data_room: 63 });
        assert_eq!(
            check(&|a| a.stride = 2240, &[]),
            PoolError::StrideTooSmall { stride: 2240, needed: 2304 }
        );
        assert_eq!(check(&|a| a.stride = 2400, &[]), PoolError::StrideMisaligned { stride: 2400 });
        assert!(matches!(check(&|a| a.first_mbuf_offset += 8, &[]), PoolError::MbufMisaligned { .. }));
        assert!(matches!(check(&|a| a.ring_offset += 8, &[]), PoolError::RingMisaligned { .. }));
        assert!(matches!(check(&|a| a.ring_offset -= 64, &[]), PoolError::RingOutsideHeap { .. }));
        assert!(matches!(check(&|a| a.ring_offset = u32::MAX - 63, &[]), PoolError::RingOutsideHeap { .. }));
        assert!(matches!(
            check(&|a| a.first_mbuf_offset = r.heap().offset - 64, &[]),
            PoolError::ObjectsOutsideHeap { .. }
        ));
        assert!(matches!(check(&|a| a.count = 100_000, &[]), PoolError::RingEntries { .. }));
        assert!(matches!(
            check(&|a| { a.count = 60_000; a.ring_entries = 65536 }, &[]),
            PoolError::ObjectsOutsideHeap { .. }
        ));
        assert!(matches!(
            check(&|a| { a.count = u32::MAX; a.ring_entries = 1 << 26 }, &[]),
            PoolError::RingEntries { .. }
        ));
        assert_eq!(check(&|a| a.first_mbuf_offset = a.ring_offset + 64, &[]), PoolError::RingOverlapsObjects);
        // A second pool whose ring lands in the first one's objects.
        let mut second = pool_at(&r, 1, 0, 10, 2432);
        second.ring_offset = accepted.buffer_offset(10);
        second.first_mbuf_offset = (accepted.objects().end() as u32).next_multiple_of(64);
        assert_eq!(second.validate(&r, &[accepted]).unwrap_err(), PoolError::OverlapsPool { other: 0 });
        // ... or whose objects land on the first one's ring.
        let mut third = pool_at(&r, 2, 0, 10, 2432);
        third.ring_offset = (accepted.objects().end() as u32).next_multiple_of(64);
        third.first_mbuf_offset = accepted.ring_offset();
        assert_eq!(third.validate(&r, &[accepted]).unwrap_err(), PoolError::OverlapsPool { other: 0 });
        for e in [
            PoolError::PoolId { pool_id: 9 },
            PoolError::DuplicatePoolId { pool_id: 1 },
            PoolError::Empty,
            PoolError::RingEntries { ring_entries: 1, count: 2 },
            PoolError::MbufSize { mbuf_size: 1 },
            PoolError::DataRoom { data_room: 1 },
            PoolError::StrideTooSmall { stride: 1, needed: 2 },
            PoolError::StrideMisaligned { stride: 1 },
            PoolError::MbufMisaligned { offset: 1 },
            PoolError::RingMisaligned { offset: 1 },
            PoolError::RingOutsideHeap { offset: 1, size: 2 },
            PoolError::ObjectsOutsideHeap { start: 1, end: 2 },
            PoolError::RingOverlapsObjects,
            PoolError::OverlapsPool { other: 3 },
        ] {
            assert!(e.to_string().starts_with("pool: "));
        }
    }

    fn pool_with(first: u32, stride: u32, count: u32) -> PoolLayout {
        let r = RegionLayout::new(crate::layout::MAX_REGION_SIZE, 4096, 64, 64, RegionFlags::empty()).unwrap();
        let add = PoolAdd {
            pool_id: 0,
            ring_offset: r.heap().offset,
            ring_entries: count.next_power_of_two(),
            first_mbuf_offset: first,
            stride,
            count,
            mbuf_size: 128,
            data_room: 64,
        };
        add.validate(&r, &[]).unwrap()
    }

    fn reference_index(p: &PoolLayout, offset: u32) -> Option<u32> {
        let first = p.first_mbuf_offset();
        if offset < first {
            return None;
        }
        let rel = offset - first;
        let idx = rel / p.stride();
        (rel.is_multiple_of(p.stride()) && idx < p.count()).then_some(idx)
    }

    #[test]
    fn buffer_index_matches_division_exhaustively() {
        // Every offset of a window around each pool, for many strides, including
        // powers of two and odd multiples of 64.
        let mut strides: Vec<u32> = (3..=64).map(|k| k * 64).collect();
        strides.extend([4096, 8192, 9216, 65536, 1 << 20, 64 * 1023, 64 * 12345]);
        for &stride in &strides {
            let count = ((256 << 10) / stride).max(3);
            let first = 1 << 20;
            let p = pool_with(first, stride, count);
            let end = p.objects().end() as u32;
            for offset in (first - 4096)..(end + 4096) {
                assert_eq!(p.buffer_index(offset), reference_index(&p, offset), "stride {stride} offset {offset}");
            }
        }
    }

    #[test]
    fn buffer_index_extremes() {
        // A pool that ends near the top of a maximal region, and offsets across
        // the whole u32 range.
        for &stride in &[192u32, 2432, 1 << 16, 1 << 24, (1 << 24) + 64] {
            // Past the largest free ring the pool can need.
            let first = 1 << 30;
            let room = (crate::layout::MAX_REGION_SIZE as u32 - first - 192) / stride;
            let count = room.min((1 << 26) - 1);
            let p = pool_with(first, stride, count);
            let mut x = 0x2545_f491_4f6c_dd1du64;
            for _ in 0..50_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let offset = x as u32;
                assert_eq!(p.buffer_index(offset), reference_index(&p, offset));
                let on_grid = p.buffer_offset((x >> 32) as u32 % count);
                assert_eq!(p.buffer_index(on_grid), reference_index(&p, on_grid));
                assert!(p.buffer_index(on_grid).is_some());
            }
            for offset in [0, 1, first - 1, first, u32::MAX, u32::MAX - stride + 1, p.buffer_offset(count - 1)] {
                assert_eq!(p.buffer_index(offset), reference_index(&p, offset), "stride {stride} offset {offset}");
            }
        }
    }
}
