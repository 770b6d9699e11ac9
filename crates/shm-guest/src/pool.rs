//! The guest's packet pool in the shared region, and the buffers it hands out.
//!
//! # Layout
//!
//! The pool is laid out exactly as the proxy validates a DPDK guest's pool
//! ([`PoolAdd::validate`]): at the start of the region's heap the free ring
//! ([`FreeRing`]), then, from the next cache line, `count` objects of `stride` bytes:
//!
//! ```text
//! heap.offset                      free ring (256 + 8 * ring_entries bytes)
//! first_mbuf_offset + i * stride   buffer i: [header area, MBUF_HEADER_SIZE bytes][data room]
//! ```
//!
//! A DPDK guest keeps its `rte_mbuf` in the header area. The proxy never reads or writes
//! it (its shadow mbufs point at the data room: `PoolLayout::data_offset`), so this
//! guest leaves it zeroed and unused; `mbuf_size` is announced as the minimum the
//! contract accepts, [`MBUF_HEADER_SIZE`]. Descriptors name a buffer by the offset of
//! its header area; their `data_off` counts from the start of the data room.
//!
//! # Ownership
//!
//! Each buffer is, at any time, either *held by this process* (a [`Buffer`] exists for
//! it: received and not yet dropped or sent, or allocated and not yet sent) or not (in
//! the free ring, in the tx ring, with the proxy or its NIC). A private table, one
//! `AtomicU8` per buffer in this process's own memory, records which: a buffer enters
//! this process only through a `0 -> 1` transition of its entry (from the rx ring in
//! [`Guest::recv_burst`](crate::Guest::recv_burst), from the free ring in
//! [`BufferPool::alloc`]) and leaves it only by `1 -> 0` (drop, send). An offset the
//! proxy hands over while a `Buffer` for it exists (a duplicate in the rx ring, or a
//! held buffer in the free ring) fails that transition and is counted and dropped, so
//! there is never more than one `Buffer` per buffer and the slices they give out never
//! alias.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shm_contract::client::PoolFootprint;
use shm_contract::freelist::{HeldMarks, ParkLock, Parking};
use shm_contract::layout::{RegionLayout, MBUF_HEADER_SIZE};
use shm_contract::mem::Mapping;
use shm_contract::mpmc::FreeRing;
use shm_contract::pool::{PoolAdd, PoolLayout, MIN_DATA_ROOM};
use shm_contract::SharedMem;

/// Retries on a contended free ring. The proxy shares it (NIC rx takes buffers from
/// it, tx completions return them), so a bounded number of lost races is normal; a
/// proxy that rewrote the ring positions can only make an operation fail.
const RING_RETRIES: u32 = 1 << 12;

/// Headroom left before the data of a buffer from [`BufferPool::alloc`] (DPDK's
/// `RTE_PKTMBUF_HEADROOM`, which is also what the proxy's NIC rx leaves).
pub const DEFAULT_HEADROOM: u16 = 128;

/// Parked buffers returned to the free ring per ring operation.
const UNPARK_CHUNK: usize = 64;

/// How a pool is laid out in a region's heap: the announcement, and how many heap
/// bytes it takes.
pub(crate) fn plan(region: &RegionLayout, count: u32, data_room: u16) -> Result<PoolAdd, String> {
    if count == 0 {
        return Err("a pool needs at least one buffer".into());
    }
    if (data_room as u32) < MIN_DATA_ROOM {
        return Err(format!("data room {data_room} is below the contract's minimum {MIN_DATA_ROOM}"));
    }
    let stride = stride_for(data_room);
    let footprint = PoolFootprint::new(count, stride)?;
    let heap = region.heap();
    let first = heap.offset as u64 + footprint.objects_start;
    let add = PoolAdd {
        pool_id: 0,
        ring_offset: heap.offset,
        ring_entries: footprint.ring_entries,
        first_mbuf_offset: u32::try_from(first).map_err(|_| "pool beyond 4 GiB")?,
        stride,
        count,
        mbuf_size: MBUF_HEADER_SIZE as u16,
        data_room,
    };
    Ok(add)
}

/// Heap bytes a pool of `count` buffers of `data_room` bytes needs (for sizing a region;
/// 0 for a count no pool can have, which `plan` then refuses).
pub(crate) fn heap_bytes(count: u32, data_room: u16) -> u64 {
    PoolFootprint::new(count, stride_for(data_room)).map_or(0, |f| f.bytes)
}

/// Bytes from one buffer to the next: the header area and the data room, in whole
/// cache lines.
fn stride_for(data_room: u16) -> u32 {
    (MBUF_HEADER_SIZE + data_room as u32).next_multiple_of(64)
}

/// Counters of the pool, written by whichever thread drops, sends or allocates.
#[derive(Default)]
pub(crate) struct PoolCounters {
    /// Values taken from the free ring that named no buffer of the pool, or a buffer
    /// this process held: dropped.
    pub(crate) free_ring_invalid: AtomicU64,
    /// Buffers given up on: the free ring refused them while the parking space was
    /// full (only a corrupted ring gets there).
    pub(crate) lost: AtomicU64,
}

/// The pool's shared state: the region mapping (kept alive by every [`Buffer`]), the
/// validated layout, the free ring and the ownership table.
pub(crate) struct Pool {
    // INVARIANT: `ring` and `base` point into `mapping`, which lives as long as `self`;
    // `layout` was validated against the region (`PoolAdd::validate`), so every buffer's
    // `[buffer_offset(i), data_offset(i) + data_room)` lies inside the mapping;
    // `held.len() == layout.count()`.
    ring: FreeRing<'static>,
    pub(crate) layout: PoolLayout,
    base: *mut u8,
    /// Whether a [`Buffer`] exists for each buffer.
    held: HeldMarks,
    /// Free buffers the free ring did not take at once: a thread of ours or the proxy
    /// stopped (preempted, on a loaded machine) between claiming a cell and filling
    /// it, and the bounded retries ran out. They are returned first by the next `put`
    /// and handed out by `get` when the ring is empty.
    parked: Parking,
    pub(crate) counters: PoolCounters,
    /// Declared last: dropped after everything that points into it.
    _mapping: Arc<Mapping>,
}

// SAFETY: `base` points into the mapping owned by the pool; the ring and the table are
// atomics; the data rooms are reached only through `Buffer`, at most one per buffer.
unsafe impl Send for Pool {}
// SAFETY: as above: every shared access is atomic.
unsafe impl Sync for Pool {}

impl Pool {
    /// Lays the pool out in `mapping` (free ring initialised and filled with every
    /// buffer) from a validated layout. Done before the pool is announced, while the
    /// proxy does not know of it.
    pub(crate) fn create(mapping: Arc<Mapping>, layout: PoolLayout) -> Result<Pool, String> {
        // SAFETY: the view covers the mapping, which `_mapping` keeps alive as long as
        // the pool (and so the ring view) exists. Within this process the ring area is
        // only accessed through the ring's atomics; the data rooms, which `Buffer`s
        // reference, are disjoint from every area reached through `SharedMem` views
        // (the layout keeps ring and objects apart).
        let mem: SharedMem<'static> = unsafe { SharedMem::from_raw(mapping.as_ptr(), mapping.len()) };
        let ring = FreeRing::init(&mem, layout.ring_offset(), layout.ring_entries()).map_err(|e| format!("free ring: {e}"))?;
        let mut offsets = [0u32; 64];
        let mut next = 0;
        while next < layout.count() {
            let n = (layout.count() - next).min(64);
            for (k, dst) in offsets[..n as usize].iter_mut().enumerate() {
                *dst = layout.buffer_offset(next + k as u32);
            }
            ring.enqueue_bulk(&offsets[..n as usize], RING_RETRIES).map_err(|e| format!("cannot fill the free ring: {e}"))?;
            next += n;
        }
        Ok(Pool {
            ring,
            layout,
            base: mapping.as_ptr(),
            held: HeldMarks::new(layout.count()),
            parked: Parking::new(layout.count()),
            counters: PoolCounters::default(),
            _mapping: mapping,
        })
    }

    /// Free buffers now: in the free ring (approximate while others use it) or parked.
    pub(crate) fn free_count(&self) -> u32 {
        let parked = self.parked.count() as u32;
        (self.ring.count() + parked).min(self.layout.count())
    }

    /// Keeps a free buffer the ring did not take.
    fn park(&self, offset: u32) {
        if !self.parked.park(&[offset], ParkLock::Wait) {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Puts parked buffers back into the ring, until it refuses again.
    fn unpark(&self) {
        self.parked.give_back(UNPARK_CHUNK, |offsets| self.ring.enqueue_bulk(offsets, RING_RETRIES).is_ok());
    }

    /// Takes a parked buffer (marked held), if there is one.
    fn get_parked(&self) -> Option<u32> {
        while let Some(offset) = self.parked.pop() {
            // Parked offsets are ours and valid; a held one would be a bug here.
            match self.layout.buffer_index(offset) {
                Some(index) if self.take(index) => return Some(index),
                _ => {
                    self.counters.free_ring_invalid.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        None
    }

    /// Takes buffer `index` for this process. False if it is held already.
    #[inline]
    pub(crate) fn take(&self, index: u32) -> bool {
        self.held.take(index)
    }

    /// Gives buffer `index` up (before it is published to the proxy in any way, so that
    /// whoever gets it next finds it not held).
    #[inline]
    pub(crate) fn untake(&self, index: u32) {
        self.held.give_up(index);
    }

    /// Returns a buffer this process held to the free ring.
    #[inline]
    pub(crate) fn put(&self, index: u32) {
        self.untake(index);
        if self.parked.count() > 0 {
            self.unpark();
        }
        let offset = self.layout.buffer_offset(index);
        if self.ring.enqueue_bulk(&[offset], RING_RETRIES).is_err() {
            // The ring has a cell for every buffer, so this is a party stopped between
            // claiming a cell and filling it (or a corrupted ring): keep it for later.
            self.park(offset);
        }
    }

    /// Takes one buffer from the free ring (or the parked ones), validated and marked
    /// held.
    fn get(&self) -> Option<u32> {
        // A few tries: a bad value is dropped and the next one looked at.
        for _ in 0..4 {
            let mut value = [0u32];
            if self.ring.dequeue_bulk(&mut value, RING_RETRIES).is_err() {
                if self.parked.count() > 0 {
                    return self.get_parked();
                }
                return None;
            }
            // The proxy writes this ring too: a value becomes a buffer only if it is
            // exactly one of ours, and one nobody in this process holds.
            match self.layout.buffer_index(value[0]) {
                Some(index) if self.take(index) => return Some(index),
                _ => {
                    self.counters.free_ring_invalid.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        None
    }

    /// First byte of buffer `index`'s data room.
    #[inline]
    fn data_room_ptr(&self, index: u32) -> *mut u8 {
        self.base.wrapping_add(self.layout.data_offset(index) as usize)
    }
}

/// Where [`Buffer::set_len`] and friends found no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityError {
    /// Bytes asked for.
    pub wanted: usize,
    /// Bytes the buffer has from its data offset to the end of its data room.
    pub capacity: usize,
}

impl fmt::Display for CapacityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes do not fit the buffer's {} bytes", self.wanted, self.capacity)
    }
}

impl std::error::Error for CapacityError {}

/// One packet buffer of the shared pool, held by this process: a received packet, or a
/// buffer allocated for sending.
///
/// It dereferences to the packet's bytes (`&[u8]`, `&mut [u8]`) in place, in the shared
/// region: no copy. Dropping it returns the buffer to the pool's free ring (where the
/// proxy's NIC rx takes buffers from); [`Guest::send`](crate::Guest::send) hands it to
/// the proxy for transmission instead, which returns it to the free ring once sent.
pub struct Buffer {
    // INVARIANT: `index < pool.layout.count()`; `pool.held` marks `index` held and this is
    // the only `Buffer` for `index` (see the module docs: a `Buffer` is created only after
    // a successful `Pool::take`, and the mark is given up only when it is consumed);
    // `data_off as usize + len as usize <= data_room`.
    pool: Arc<Pool>,
    index: u32,
    data_off: u16,
    len: u16,
    vlan_tci: Option<u16>,
    rss_hash: Option<u32>,
}

/// A received packet: a [`Buffer`] whose bytes the proxy filled.
pub type RxPacket = Buffer;

impl Buffer {
    /// Wraps buffer `index`, which the caller just took (`Pool::take` returned true).
    /// `data_off + len` must fit the data room (checked by the caller).
    #[inline]
    pub(crate) fn from_taken(pool: Arc<Pool>, index: u32, data_off: u16, len: u16) -> Buffer {
        debug_assert!(index < pool.layout.count());
        debug_assert!(data_off as u32 + len as u32 <= pool.layout.data_room() as u32);
        Buffer { pool, index, data_off, len, vlan_tci: None, rss_hash: None }
    }

    pub(crate) fn set_rx_meta(&mut self, vlan_tci: Option<u16>, rss_hash: Option<u32>) {
        self.vlan_tci = vlan_tci;
        self.rss_hash = rss_hash;
    }

    /// Gives the buffer up for transmission: `held` goes back to not held and the buffer
    /// is not returned to the free ring (the proxy will). Returns what the descriptor
    /// needs: (region offset of the buffer, data offset, length, VLAN tag to insert).
    pub(crate) fn into_tx(self) -> (u32, u16, u16, Option<u16>) {
        let this = std::mem::ManuallyDrop::new(self);
        let out = (this.pool.layout.buffer_offset(this.index), this.data_off, this.len, this.vlan_tci);
        this.pool.untake(this.index);
        // SAFETY: `this` is never used again and its Drop does not run (ManuallyDrop), so
        // the Arc is moved out exactly once and released here.
        drop(unsafe { std::ptr::read(&this.pool) });
        out
    }

    pub(crate) fn pool_is(&self, pool: &Arc<Pool>) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }

    /// Index of the buffer in its pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Bytes of data.
    #[inline]
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the buffer holds no data.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes before the data in the data room.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.data_off as usize
    }

    /// Most bytes of data the buffer can hold from its current data offset.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.pool.layout.data_room() as usize - self.data_off as usize
    }

    /// Sets the length of the data. New bytes (when growing) hold whatever the buffer
    /// held before: earlier packets' bytes, never uninitialised memory.
    pub fn set_len(&mut self, len: usize) -> Result<(), CapacityError> {
        if len > self.capacity() {
            return Err(CapacityError { wanted: len, capacity: self.capacity() });
        }
        // Fits a u16: capacity() <= data_room <= u16::MAX.
        self.len = len as u16;
        Ok(())
    }

    /// Replaces the data with `bytes`.
    pub fn copy_from(&mut self, bytes: &[u8]) -> Result<(), CapacityError> {
        self.set_len(bytes.len())?;
        self.copy_from_slice(bytes);
        Ok(())
    }

    /// The VLAN tag the NIC stripped (rx), or the one to insert (tx, [`set_vlan`](Self::set_vlan)).
    pub fn vlan(&self) -> Option<u16> {
        self.vlan_tci
    }

    /// Asks the proxy's NIC to insert this VLAN tag on transmission (`None`: none).
    pub fn set_vlan(&mut self, tci: Option<u16>) {
        self.vlan_tci = tci;
    }

    /// The RSS hash the NIC computed, if it did.
    pub fn rss_hash(&self) -> Option<u32> {
        self.rss_hash
    }

    #[inline]
    fn data_ptr(&self) -> *mut u8 {
        self.pool.data_room_ptr(self.index).wrapping_add(self.data_off as usize)
    }
}

impl Deref for Buffer {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: by the INVARIANTs of `Buffer` and `Pool`, `data_ptr()..+len` lies inside
        // buffer `index`'s data room, inside the mapping that `self.pool` keeps alive, and
        // no other `Buffer` (so no other reference in this process) covers it. The proxy
        // does not write it either: a buffer that this process holds was handed over by
        // the proxy (rx ring) or taken from the free ring, and by the contract the proxy
        // writes a buffer's data only while it holds it itself (its NIC receives only
        // into buffers it took from the free ring; it gives a buffer up by publishing it
        // on the rx ring, after which it does not touch it); it holds it again only once
        // this process gives it back (drop: free ring; send: tx ring). The bytes are
        // initialised: the region is a memfd, zero-filled when created.
        unsafe { std::slice::from_raw_parts(self.data_ptr(), self.len as usize) }
    }
}

impl DerefMut for Buffer {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only reference to the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.data_ptr(), self.len as usize) }
    }
}

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl AsMut<[u8]> for Buffer {
    fn as_mut(&mut self) -> &mut [u8] {
        self
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("index", &self.index)
            .field("data_off", &self.data_off)
            .field("len", &self.len)
            .field("vlan", &self.vlan_tci)
            .field("rss_hash", &self.rss_hash)
            .finish()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.pool.put(self.index);
    }
}

/// A handle on the guest's pool for allocating buffers to send, from any thread
/// (cheap to clone).
#[derive(Clone)]
pub struct BufferPool {
    pub(crate) pool: Arc<Pool>,
}

impl BufferPool {
    /// Takes a free buffer, empty, with [`DEFAULT_HEADROOM`] bytes of headroom (less
    /// when the data room is smaller); `None` when the free ring is empty. Fill it
    /// ([`Buffer::copy_from`], or [`Buffer::set_len`] and write through `&mut [u8]`)
    /// and send it with [`Guest::send`](crate::Guest::send).
    pub fn alloc(&self) -> Option<Buffer> {
        let index = self.pool.get()?;
        let headroom = DEFAULT_HEADROOM.min(self.pool.layout.data_room() / 2);
        Some(Buffer::from_taken(self.pool.clone(), index, headroom, 0))
    }

    /// Buffers in the pool.
    pub fn capacity(&self) -> u32 {
        self.pool.layout.count()
    }

    /// Buffers in the free ring now (approximate while the proxy uses it).
    pub fn free(&self) -> u32 {
        self.pool.free_count()
    }

    /// Size of each buffer's data room.
    pub fn data_room(&self) -> u16 {
        self.pool.layout.data_room()
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool").field("layout", &self.pool.layout).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm_contract::layout::RegionFlags;
    use shm_contract::mem::create_region_memfd;
    use std::os::fd::AsFd;

    /// A pool in a real (unsealed-by-nobody) memfd region, as `Guest::connect` makes one.
    pub(crate) fn test_pool(count: u32, data_room: u16) -> (Arc<Pool>, RegionLayout) {
        let size = 1 << 20;
        let (fd, backing) = create_region_memfd("shm-guest-test", size + heap_bytes(count, data_room), false).unwrap();
        let layout = RegionLayout::new(backing.size, backing.page_size, 64, 64, RegionFlags::empty()).unwrap();
        let mapping = Arc::new(Mapping::map(fd.as_fd(), backing.size as usize).unwrap());
        let add = plan(&layout, count, data_room).unwrap();
        let pl = add.validate(&layout, &[]).unwrap();
        (Arc::new(Pool::create(mapping, pl).unwrap()), layout)
    }

    #[test]
    fn the_plan_is_what_the_proxy_accepts() {
        let layout = RegionLayout::new(64 << 20, 4096, 1024, 1024, RegionFlags::empty()).unwrap();
        for (count, room) in [(1, 64), (100, 2176), (4096, 2176), (1000, 9344), (3, 65535)] {
            let add = plan(&layout, count, room).unwrap();
            let pl = add.validate(&layout, &[]).unwrap_or_else(|e| panic!("{count} x {room}: {e}"));
            assert_eq!(pl.mbuf_size() as u32, MBUF_HEADER_SIZE);
            assert_eq!(pl.data_offset(0), pl.buffer_offset(0) + MBUF_HEADER_SIZE);
            assert!(pl.objects().end() - layout.heap().offset as u64 <= heap_bytes(count, room));
        }
        assert!(plan(&layout, 0, 2176).is_err());
        assert!(plan(&layout, 10, 63).is_err());
        // Too big for the heap: the contract's validation says so.
        let add = plan(&layout, 1 << 20, 2176).unwrap();
        assert!(add.validate(&layout, &[]).is_err());
    }

    #[test]
    fn buffers_come_from_and_go_back_to_the_free_ring() {
        let (pool, _) = test_pool(8, 256);
        let bp = BufferPool { pool: pool.clone() };
        assert_eq!(bp.free(), 8);
        let mut held: Vec<Buffer> = (0..8).map(|_| bp.alloc().unwrap()).collect();
        assert!(bp.alloc().is_none());
        let mut seen: Vec<u32> = held.iter().map(|b| b.index()).collect();
        seen.sort();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        let b = &mut held[3];
        assert_eq!(b.len(), 0);
        assert_eq!(b.headroom(), 128);
        assert_eq!(b.capacity(), 128);
        b.copy_from(b"hello").unwrap();
        assert_eq!(&b[..], b"hello");
        assert_eq!(b.set_len(129), Err(CapacityError { wanted: 129, capacity: 128 }));
        b[0] = b'j';
        assert_eq!(&b[..], b"jello");
        held.truncate(2);
        assert_eq!(bp.free(), 6);
        drop(held);
        assert_eq!(bp.free(), 8);
        assert_eq!(pool.counters.free_ring_invalid.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_held_buffer_is_never_handed_out_twice() {
        let (pool, _) = test_pool(4, 256);
        let bp = BufferPool { pool: pool.clone() };
        let a = bp.alloc().unwrap();
        let _c = bp.alloc().unwrap();
        // A misbehaving proxy puts a held buffer (and garbage) into the free ring.
        pool.ring.enqueue_bulk(&[pool.layout.buffer_offset(a.index()), 12345], 16).unwrap();
        let mut got = Vec::new();
        let mut kept = Vec::new();
        while let Some(b) = bp.alloc() {
            got.push(b.index());
            kept.push(b);
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(!got.contains(&a.index()));
        assert_eq!(pool.counters.free_ring_invalid.load(Ordering::Relaxed), 2);
        // Taking an index that is held fails: the rx path counts and drops it.
        assert!(!pool.take(a.index()));
    }

    #[test]
    fn into_tx_gives_the_buffer_up_without_freeing_it() {
        let (pool, _) = test_pool(2, 256);
        let bp = BufferPool { pool: pool.clone() };
        let mut b = bp.alloc().unwrap();
        b.copy_from(&[1, 2, 3]).unwrap();
        b.set_vlan(Some(7));
        let index = b.index();
        let (offset, data_off, len, vlan) = b.into_tx();
        assert_eq!(offset, pool.layout.buffer_offset(index));
        assert_eq!((data_off, len, vlan), (128, 3, Some(7)));
        assert_eq!(bp.free(), 1, "a sent buffer is the proxy's to return");
        assert_eq!(Arc::strong_count(&pool), 2);
        assert!(pool.take(index), "no longer held");
    }
}
