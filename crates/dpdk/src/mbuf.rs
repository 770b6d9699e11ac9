//! The data path as owned values: a packet is an [`Mbuf`] that frees itself on drop, a
//! burst is an [`MbufBurst`] (a fixed-capacity array on the stack, no allocation), and
//! the right to poll a queue is an [`RxQueue`] or [`TxQueue`] that only one value in
//! the process holds at a time.
//!
//! What DPDK leaves to the application's discipline becomes a rule of the types:
//!
//! * one thread polls a queue at a time: a queue handle is unique (claimed from a
//!   process-wide table, released on drop), and polling takes `&mut self`;
//! * a queue is not reconfigured, stopped or closed while it is polled: those calls on
//!   [`Port`](crate::Port) fail with `EBUSY` while a handle of the queue (for port-wide
//!   calls, of any queue of the port) exists;
//! * EAL outlives every packet and handle: handles hold an [`Eal`] clone, and packets
//!   exist only between a handle's burst and their drop, send or hand-over.
//!
//! Packet memory is never exposed as a Rust slice: buffers may lie in memory another
//! process writes (a guest's shared region), where a reference would be undefined
//! behaviour. Bytes go in and out by copy ([`Mbuf::append`], [`Mbuf::read`]).

use std::collections::BTreeSet;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use crate::{sys, Eal, Error};

/// A packet: the head of a chain of segments that this value owns exclusively.
/// Dropping it frees every segment back to its mempool (`rte_pktmbuf_free`).
///
/// `Mbuf` has the layout of a `*mut rte_mbuf` that is never null.
// INVARIANT: `m` is a valid packet (consistent `next`, `nb_segs`, `pkt_len`) whose
// segments nothing else reads or writes, each with reference count 1, direct
// (its buffer is its own), from a live mempool.
#[repr(transparent)]
pub struct Mbuf {
    m: NonNull<sys::rte_mbuf>,
}

// SAFETY: the packet is owned by this value alone; DPDK lets any thread free an mbuf
// (to the mempool's shared ring, or to the freeing lcore's own cache).
unsafe impl Send for Mbuf {}

/// Why a packet could not take a change; the packet is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbufError {
    /// The data would not fit in the segment's buffer.
    OutOfBuffer,
    /// The packet would have more segments than an mbuf can count.
    TooManySegments,
    /// The change applies to a single-segment packet only.
    Chained,
}

impl Mbuf {
    /// Takes ownership of a raw packet.
    ///
    /// # Safety
    /// `m` is null or a valid packet whose segments the caller owns exclusively (nothing
    /// else reads, writes or frees them from now on), each with reference count 1 and
    /// direct, from a mempool that outlives the returned value.
    #[inline]
    pub unsafe fn from_raw(m: *mut sys::rte_mbuf) -> Option<Mbuf> {
        NonNull::new(m).map(|m| Mbuf { m })
    }

    /// Gives up ownership without freeing: the caller now answers for the packet (for
    /// example a mempool driver that hands the buffer to another process).
    #[inline]
    pub fn into_raw(self) -> *mut sys::rte_mbuf {
        let m = self.m.as_ptr();
        std::mem::forget(self);
        m
    }

    /// The packet's address, for identity only (which of a pool's objects it is).
    #[inline]
    pub fn as_ptr(&self) -> *const sys::rte_mbuf {
        self.m.as_ptr()
    }

    /// Allocates an empty packet from `pool` (None when the pool is empty).
    pub fn alloc(pool: &crate::PktPool) -> Option<Mbuf> {
        // SAFETY: a live packet-mbuf pool; a fresh mbuf is owned by the caller, with
        // reference count 1, direct and reset.
        unsafe { Mbuf::from_raw(sys::rte_pktmbuf_alloc(pool.as_ptr())) }
    }

    #[inline]
    fn head(&self) -> &sys::rte_mbuf {
        // SAFETY: per the invariant the header is valid and only this value uses it.
        // The header is the process's own memory (a buffer in shared memory is reached
        // only through `buf_addr`, never through a reference).
        unsafe { self.m.as_ref() }
    }

    #[inline]
    fn head_mut(&mut self) -> &mut sys::rte_mbuf {
        // SAFETY: as in `head`; `&mut self` makes the access exclusive.
        unsafe { self.m.as_mut() }
    }

    /// Bytes in the whole packet.
    #[inline]
    pub fn pkt_len(&self) -> u32 {
        self.head().pkt_len
    }

    /// Bytes in the first segment.
    #[inline]
    pub fn data_len(&self) -> u16 {
        self.head().data_len
    }

    /// Where the first segment's data starts in its buffer.
    #[inline]
    pub fn data_off(&self) -> u16 {
        self.head().data_off
    }

    /// Size of the first segment's buffer.
    #[inline]
    pub fn buf_len(&self) -> u16 {
        self.head().buf_len
    }

    /// Segments in the packet.
    #[inline]
    pub fn nb_segs(&self) -> u16 {
        self.head().nb_segs
    }

    /// The offload flags (`RTE_MBUF_F_*`).
    #[inline]
    pub fn ol_flags(&self) -> u64 {
        self.head().ol_flags
    }

    /// The VLAN tag the NIC stripped (valid with `RTE_MBUF_F_RX_VLAN_STRIPPED`).
    #[inline]
    pub fn vlan_tci(&self) -> u16 {
        self.head().vlan_tci
    }

    /// The RSS hash (valid with `RTE_MBUF_F_RX_RSS_HASH`).
    #[inline]
    pub fn rss_hash(&self) -> u32 {
        // SAFETY: every variant of the union is plain integers; `rss` is its first word.
        unsafe { self.head().__bindgen_anon_2.hash.rss }
    }

    /// The mempool of the first segment, for identity only.
    #[inline]
    pub fn pool(&self) -> *const sys::rte_mempool {
        self.head().pool
    }

    /// Whether every segment comes from mempool `mp`.
    #[inline]
    pub fn all_segments_from(&self, mp: *const sys::rte_mempool) -> bool {
        self.segments().all(|s| s.pool == mp)
    }

    /// Where each segment lies: its address (identity), mempool, data offset and length.
    #[inline]
    pub fn segments(&self) -> Segments<'_> {
        Segments { next: self.m.as_ptr(), _packet: std::marker::PhantomData }
    }

    /// A copy of the whole packet in buffers from `pool` (None when the pool runs out).
    /// Metadata is copied too.
    pub fn copy_to(&self, pool: crate::Mempool<'_>) -> Option<Mbuf> {
        // SAFETY: a valid packet read only; the copy is a fresh chain from a live pool,
        // owned by the caller, reference count 1, direct.
        unsafe { Mbuf::from_raw(sys::rte_pktmbuf_copy(self.m.as_ptr(), pool.as_ptr(), 0, u32::MAX)) }
    }

    /// Makes this single-segment packet `data_len` bytes at `data_off` of its buffer
    /// (the bytes are whatever the buffer holds). Fails, changing nothing, if that is
    /// outside the buffer or the packet is chained.
    #[inline]
    pub fn set_data(&mut self, data_off: u16, data_len: u16) -> Result<(), MbufError> {
        let h = self.head_mut();
        // nb_segs == 1 means next is null (a packet's invariant): the header's second
        // cache line stays untouched.
        if h.nb_segs != 1 {
            return Err(MbufError::Chained);
        }
        if data_off as u32 + data_len as u32 > h.buf_len as u32 {
            return Err(MbufError::OutOfBuffer);
        }
        h.data_off = data_off;
        h.data_len = data_len;
        h.pkt_len = data_len as u32;
        Ok(())
    }

    /// Swaps the Ethernet destination and source addresses (what testpmd's macswap
    /// forwarding does); false, changing nothing, when the first segment holds fewer
    /// than 12 bytes.
    #[inline]
    pub fn swap_ether_addrs(&mut self) -> bool {
        let h = self.head();
        if h.data_len < 12 {
            return false;
        }
        let at = (h.buf_addr as *mut u8).wrapping_add(h.data_off as usize);
        // SAFETY: 12 bytes of the first segment's data, inside its buffer (a valid
        // packet's data_off + data_len <= buf_len); byte copies, never a reference, in
        // case another process writes the buffer; `&mut self` owns the packet.
        unsafe {
            let dst = std::ptr::read_unaligned(at as *const [u8; 6]);
            let src = std::ptr::read_unaligned(at.add(6) as *const [u8; 6]);
            std::ptr::write_unaligned(at as *mut [u8; 6], src);
            std::ptr::write_unaligned(at.add(6) as *mut [u8; 6], dst);
        }
        true
    }

    /// Clears what a transmit would act on: offload flags, packet type and offload
    /// lengths; sets the input port.
    #[inline]
    pub fn reset_tx_metadata(&mut self, port: u16) {
        let h = self.head_mut();
        h.ol_flags = 0;
        h.port = port;
        h.__bindgen_anon_1.packet_type = 0;
        h.__bindgen_anon_3.tx_offload = 0;
    }

    /// Asks the NIC to insert VLAN tag `tci` on transmit.
    #[inline]
    pub fn set_tx_vlan(&mut self, tci: u16) {
        let h = self.head_mut();
        h.ol_flags |= sys::RTE_MBUF_F_TX_VLAN;
        h.vlan_tci = tci;
    }

    /// Appends `tail`'s segments to this packet (`rte_pktmbuf_chain`). On failure (too
    /// many segments) both packets are unchanged and `tail` is handed back.
    #[inline]
    pub fn chain(&mut self, tail: Mbuf) -> Result<(), (Mbuf, MbufError)> {
        // SAFETY: two distinct valid packets owned by us (`tail` by value); on success the
        // head owns tail's segments, so tail must not be freed separately.
        let rc = unsafe { sys::rte_pktmbuf_chain(self.m.as_ptr(), tail.m.as_ptr()) };
        if rc != 0 {
            return Err((tail, MbufError::TooManySegments));
        }
        std::mem::forget(tail);
        Ok(())
    }

    /// Appends `bytes` to the last segment's data. Fails if its buffer has no room.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), MbufError> {
        let len = u16::try_from(bytes.len()).map_err(|_| MbufError::OutOfBuffer)?;
        // SAFETY: a valid packet we own; `rte_pktmbuf_append` returns room for `len`
        // bytes inside the last segment's buffer (or null), written by byte copy.
        unsafe {
            let dst = sys::rte_pktmbuf_append(self.m.as_ptr(), len);
            if dst.is_null() {
                return Err(MbufError::OutOfBuffer);
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, bytes.len());
        }
        Ok(())
    }

    /// Grows the last segment's data by `len` bytes, which hold whatever the buffer
    /// held (write them with [`Mbuf::write`]). Fails if its buffer has no room.
    pub fn extend(&mut self, len: u16) -> Result<(), MbufError> {
        // SAFETY: a valid packet we own; only lengths change.
        let room = unsafe { sys::rte_pktmbuf_append(self.m.as_ptr(), len) };
        if room.is_null() {
            Err(MbufError::OutOfBuffer)
        } else {
            Ok(())
        }
    }

    /// Copies up to `out.len()` bytes of the packet from `offset` into `out`, across
    /// segments; returns how many were copied.
    pub fn read(&self, offset: u32, out: &mut [u8]) -> usize {
        let mut copied = 0usize;
        for (at, n) in self.spans(offset, out.len()) {
            // SAFETY: `at` is `n` bytes of a segment's data inside its buffer (`spans`);
            // a byte copy, never a reference, in case another process writes the buffer.
            unsafe { std::ptr::copy_nonoverlapping(at, out.as_mut_ptr().add(copied), n) };
            copied += n;
        }
        copied
    }

    /// Copies `bytes` over the packet's data from `offset`, across segments, as far as
    /// the data goes; returns how many were written.
    pub fn write(&mut self, offset: u32, bytes: &[u8]) -> usize {
        let mut written = 0usize;
        for (at, n) in self.spans(offset, bytes.len()) {
            // SAFETY: as in `read`; `&mut self` owns the packet and its data.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().add(written), at, n) };
            written += n;
        }
        written
    }

    /// The data of the packet from `offset`, up to `len` bytes, as (address, length)
    /// pieces, one per segment it touches.
    fn spans(&self, offset: u32, len: usize) -> impl Iterator<Item = (*mut u8, usize)> + '_ {
        let mut skip = offset as usize;
        let mut left = len;
        self.segments().filter_map(move |seg| {
            let seg_len = seg.data_len as usize;
            if left == 0 || skip >= seg_len {
                skip = skip.saturating_sub(seg_len);
                return None;
            }
            let n = (seg_len - skip).min(left);
            // Inside the buffer: data_off + data_len <= buf_len for a valid mbuf.
            let at = (seg.buf_addr as *mut u8).wrapping_add(seg.data_off as usize + skip);
            skip = 0;
            left -= n;
            Some((at, n))
        })
    }

    /// Splits the packet into its segments, each a single-segment packet of its own
    /// (`next` cleared, one segment, `pkt_len` = its `data_len`), first to last.
    #[inline]
    pub fn into_segments(self) -> IntoSegments {
        let left = self.nb_segs();
        IntoSegments { next: self.into_raw(), left }
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: per the invariant, ours to free.
        unsafe { sys::rte_pktmbuf_free(self.m.as_ptr()) };
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mbuf").field("pkt_len", &self.pkt_len()).field("nb_segs", &self.nb_segs()).finish()
    }
}

/// One segment of a packet, as read: values, not references into the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The segment's address (identity within its mempool).
    pub addr: *const sys::rte_mbuf,
    /// Its mempool (identity).
    pub pool: *const sys::rte_mempool,
    /// The buffer's address in this process.
    pub buf_addr: *const std::ffi::c_void,
    /// Where the data starts in the buffer.
    pub data_off: u16,
    /// Bytes of data.
    pub data_len: u16,
    /// Whether another segment follows.
    pub has_next: bool,
}

/// The segments of a borrowed packet.
pub struct Segments<'a> {
    next: *mut sys::rte_mbuf,
    _packet: std::marker::PhantomData<&'a Mbuf>,
}

impl Iterator for Segments<'_> {
    type Item = Segment;

    #[inline]
    fn next(&mut self) -> Option<Segment> {
        // SAFETY: a segment of a packet borrowed for 'a (the Mbuf invariant).
        let s = unsafe { self.next.as_ref() }?;
        self.next = s.next;
        Some(Segment {
            addr: s,
            pool: s.pool,
            buf_addr: s.buf_addr,
            data_off: s.data_off,
            data_len: s.data_len,
            has_next: !s.next.is_null(),
        })
    }
}

/// The segments of a packet, split off one by one ([`Mbuf::into_segments`]). Segments
/// not taken are freed when this drops.
pub struct IntoSegments {
    next: *mut sys::rte_mbuf,
    left: u16,
}

// SAFETY: owns the rest of a packet, like `Mbuf`.
unsafe impl Send for IntoSegments {}

impl Iterator for IntoSegments {
    type Item = Mbuf;

    #[inline]
    fn next(&mut self) -> Option<Mbuf> {
        let m = NonNull::new(self.next)?;
        // SAFETY: a segment of the packet this value owns; unlinked here so that it is a
        // packet of its own.
        unsafe {
            let s = &mut *m.as_ptr();
            self.next = s.next;
            s.next = std::ptr::null_mut();
            s.nb_segs = 1;
            s.pkt_len = s.data_len as u32;
        }
        self.left = self.left.saturating_sub(1);
        Some(Mbuf { m })
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl Drop for IntoSegments {
    #[inline]
    fn drop(&mut self) {
        for seg in self.by_ref() {
            drop(seg);
        }
    }
}

/// Up to `N` packets, in a plain array (on the stack, no allocation): what a burst
/// receives into and sends from. Packets still in it when it drops are freed.
pub struct MbufBurst<const N: usize> {
    pkts: [*mut sys::rte_mbuf; N],
    len: usize,
}

// INVARIANT: `pkts[..len]` are owned packets (each satisfies `Mbuf`'s invariant);
// `len <= N`.

// SAFETY: owns its packets, like `Mbuf`.
unsafe impl<const N: usize> Send for MbufBurst<N> {}

impl<const N: usize> Default for MbufBurst<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> MbufBurst<N> {
    /// An empty burst.
    pub const fn new() -> Self {
        MbufBurst { pkts: [std::ptr::null_mut(); N], len: 0 }
    }

    /// Packets in the burst.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    #[inline]
    pub fn room(&self) -> usize {
        N - self.len
    }

    /// Adds a packet at the end; hands it back when the burst is full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.len == N {
            return Err(m);
        }
        self.pkts[self.len] = m.into_raw();
        self.len += 1;
        Ok(())
    }

    /// The packets, in order.
    #[inline]
    pub fn as_slice(&self) -> &[Mbuf] {
        // SAFETY: `Mbuf` is a transparent non-null pointer and `pkts[..len]` are owned
        // packets (the invariant), so they are valid `Mbuf`s borrowed from the burst.
        unsafe { std::slice::from_raw_parts(self.pkts.as_ptr() as *const Mbuf, self.len) }
    }

    /// Takes every packet out, first to last; those the iterator does not yield are
    /// freed when it drops.
    #[inline]
    pub fn drain(&mut self) -> Drain<'_> {
        let len = std::mem::replace(&mut self.len, 0);
        Drain { pkts: &self.pkts[..len], at: 0 }
    }

    /// Fills the room left with fresh empty packets from `pool`, up to `n`
    /// (`rte_pktmbuf_alloc_bulk`: all or none); returns how many were added.
    pub fn alloc_from(&mut self, pool: &crate::PktPool, n: usize) -> usize {
        let n = n.min(self.room());
        if n == 0 {
            return 0;
        }
        // SAFETY: room for `n` pointers after `len`; fresh mbufs are the caller's, with
        // reference count 1, direct and reset.
        let rc = unsafe { sys::rte_pktmbuf_alloc_bulk(pool.as_ptr(), self.pkts.as_mut_ptr().add(self.len), n as u32) };
        if rc != 0 {
            return 0;
        }
        self.len += n;
        n
    }

    /// The packets, in order, to change.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: as in `as_slice`; borrowed mutably from the burst.
        unsafe { std::slice::from_raw_parts_mut(self.pkts.as_mut_ptr() as *mut Mbuf, self.len) }
    }

    /// Frees every packet.
    #[inline]
    pub fn clear(&mut self) {
        if self.len > 0 {
            // SAFETY: the owned packets (the invariant); forgotten by setting len to 0.
            unsafe { sys::rte_pktmbuf_free_bulk(self.pkts.as_mut_ptr(), self.len as u32) };
            self.len = 0;
        }
    }

    /// The array's free tail (where a driver writes up to `room()` packets), for
    /// [`add_tail`](Self::add_tail).
    #[inline]
    pub(crate) fn tail_ptr(&mut self) -> *mut *mut sys::rte_mbuf {
        // In bounds: len <= N (the invariant).
        self.pkts.as_mut_ptr().wrapping_add(self.len)
    }

    /// The array's packets, for a call that takes the first of them; then
    /// [`consumed`](Self::consumed).
    #[inline]
    pub(crate) fn head_ptr(&mut self) -> *mut *mut sys::rte_mbuf {
        self.pkts.as_mut_ptr()
    }

    /// Counts `n` packets a driver wrote at [`tail_ptr`](Self::tail_ptr) as the burst's.
    ///
    /// # Safety
    /// `n <= room()`, and the `n` pointers after `len` are packets the burst now owns.
    #[inline]
    pub(crate) unsafe fn add_tail(&mut self, n: usize) {
        self.len += n;
    }

    /// Takes the packet at `i` out (the rest move up one).
    #[inline]
    pub fn remove(&mut self, i: usize) -> Option<Mbuf> {
        if i >= self.len {
            return None;
        }
        let p = self.pkts[i];
        self.pkts.copy_within(i + 1..self.len, i);
        self.len -= 1;
        // SAFETY: `p` was an owned packet of the burst (the invariant), no longer in it.
        unsafe { Mbuf::from_raw(p) }
    }

    /// Drops the first `n` entries without freeing them (the driver took them), moving
    /// the rest to the front.
    pub(crate) fn consumed(&mut self, n: usize) {
        let n = n.min(self.len);
        self.pkts.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

impl<const N: usize> Drop for MbufBurst<N> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Packets taken out of a burst ([`MbufBurst::drain`]).
pub struct Drain<'a> {
    pkts: &'a [*mut sys::rte_mbuf],
    at: usize,
}

impl Iterator for Drain<'_> {
    type Item = Mbuf;

    #[inline]
    fn next(&mut self) -> Option<Mbuf> {
        let &m = self.pkts.get(self.at)?;
        self.at += 1;
        // SAFETY: an owned packet of the burst (its invariant), which gave up ownership
        // of all of them when the drain began; each is yielded once.
        Some(Mbuf { m: unsafe { NonNull::new_unchecked(m) } })
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.pkts.len() - self.at;
        (left, Some(left))
    }
}

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        for m in self.by_ref() {
            drop(m);
        }
    }
}

/// Which way a queue moves packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Rx,
    Tx,
}

/// The queues that have a handle now: (port, queue, direction).
static POLLED: Mutex<BTreeSet<(u16, u16, Dir)>> = Mutex::new(BTreeSet::new());

fn polled() -> MutexGuard<'static, BTreeSet<(u16, u16, Dir)>> {
    // Single set operations: a poisoned set is consistent.
    POLLED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails with `EBUSY` naming `call` while a handle of port `port` exists (of queue
/// `queue` in direction `dir` only, when given).
pub(crate) fn ensure_not_polled(call: &'static str, port: u16, queue: Option<(u16, bool)>) -> Result<(), Error> {
    let set = polled();
    let busy = match queue {
        Some((q, rx)) => set.contains(&(port, q, if rx { Dir::Rx } else { Dir::Tx })),
        None => set.range((port, 0, Dir::Rx)..=(port, u16::MAX, Dir::Tx)).next().is_some(),
    };
    if busy {
        Err(Error::new(call, libc::EBUSY))
    } else {
        Ok(())
    }
}

/// The claim of one queue; released on drop.
struct Claim {
    key: (u16, u16, Dir),
    _eal: Eal,
}

impl Claim {
    fn take(call: &'static str, port: crate::Port, queue: u16, dir: Dir) -> Result<Claim, Error> {
        let eal = Eal::require(call)?;
        let info = port.info().map_err(|e| Error::new(call, e.errno))?;
        let queues = match dir {
            Dir::Rx => info.nb_rx_queues,
            Dir::Tx => info.nb_tx_queues,
        };
        if queue >= queues {
            return Err(Error::new(call, libc::EINVAL));
        }
        let key = (port.0, queue, dir);
        if !polled().insert(key) {
            return Err(Error::new(call, libc::EBUSY));
        }
        Ok(Claim { key, _eal: eal })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        polled().remove(&self.key);
    }
}

/// The right to receive from one rx queue: one handle per queue in the process
/// ([`Port::rx_queue`](crate::Port::rx_queue)). While it lives, the queue (and its
/// port) cannot be set up, stopped, reconfigured or closed through this crate.
pub struct RxQueue {
    port: u16,
    queue: u16,
    _claim: Claim,
}

/// The right to transmit on one tx queue; like [`RxQueue`].
pub struct TxQueue {
    port: u16,
    queue: u16,
    _claim: Claim,
}

impl crate::Port {
    /// Claims rx queue `queue` for polling. Fails with `EBUSY` if it has a handle
    /// already, `EINVAL` if the port has no such queue, `ENODEV` without EAL.
    pub fn rx_queue(self, queue: u16) -> Result<RxQueue, Error> {
        let claim = Claim::take("rx_queue", self, queue, Dir::Rx)?;
        Ok(RxQueue { port: self.0, queue, _claim: claim })
    }

    /// Claims tx queue `queue` for transmitting; like [`Port::rx_queue`](crate::Port::rx_queue).
    pub fn tx_queue(self, queue: u16) -> Result<TxQueue, Error> {
        let claim = Claim::take("tx_queue", self, queue, Dir::Tx)?;
        Ok(TxQueue { port: self.0, queue, _claim: claim })
    }
}

impl RxQueue {
    /// The port and queue.
    pub fn id(&self) -> (u16, u16) {
        (self.port, self.queue)
    }

    /// Receives up to `max` packets (and no more than the burst has room for),
    /// appended to `burst`; returns how many.
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>, max: u16) -> usize {
        let want = (N - burst.len).min(max as usize) as u16;
        if want == 0 {
            return 0;
        }
        // SAFETY: this handle is the only poller of the queue, which cannot be
        // reconfigured while it lives; the array has room for `want` pointers after
        // `len`. The driver returns packets the caller owns.
        let n = unsafe {
            sys::rte_eth_rx_burst(self.port, self.queue, burst.pkts.as_mut_ptr().add(burst.len), want)
        } as usize;
        burst.len += n.min(want as usize);
        n
    }
}

impl TxQueue {
    /// The port and queue.
    pub fn id(&self) -> (u16, u16) {
        (self.port, self.queue)
    }

    /// Lets the driver check the burst's packets against what its device can send
    /// (`rte_eth_tx_prepare`: the driver's own limits and offload fix-ups; nothing for a
    /// driver without such checks). A packet it refuses is taken out of the burst and
    /// freed; returns how many were.
    #[inline]
    pub fn tx_prepare<const N: usize>(&mut self, burst: &mut MbufBurst<N>) -> usize {
        let mut refused = 0;
        let mut from = 0;
        while from < burst.len {
            // SAFETY: this handle is the only user of the tx queue; `pkts[from..len]` are
            // owned packets the driver may inspect and adjust (not take).
            let ok = unsafe {
                sys::rte_eth_tx_prepare(self.port, self.queue, burst.pkts.as_mut_ptr().add(from), (burst.len - from) as u16)
            } as usize;
            from += ok;
            if burst.remove(from).is_none() {
                break;
            }
            refused += 1;
        }
        refused
    }

    /// Hands the burst's packets to the driver, first to last; returns how many it took.
    /// Those it did not take stay in the burst, moved to its front.
    #[inline]
    pub fn tx_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>) -> usize {
        if burst.len == 0 {
            return 0;
        }
        // SAFETY: this handle is the only user of the tx queue, which cannot be
        // reconfigured while it lives; `pkts[..len]` are owned packets, and the driver
        // owns the first `sent` of them afterwards.
        let sent = unsafe { sys::rte_eth_tx_burst(self.port, self.queue, burst.pkts.as_mut_ptr(), burst.len as u16) }
            as usize;
        burst.consumed(sent);
        sent
    }
}

/// Empties the calling lcore's cache of `pool` into the pool (`rte_mempool_cache_flush`),
/// so that objects this thread freed are visible to the pool's other users. Does nothing
/// on a thread without an lcore id or for a pool without caches.
pub fn flush_lcore_cache(pool: crate::Mempool<'_>) {
    // SAFETY: a live mempool (the view's lifetime); the cache returned for this thread's
    // lcore id is used only by this thread (DPDK's one-thread-per-lcore-id rule).
    unsafe {
        let cache = sys::rte_mempool_default_cache(pool.as_ptr(), sys::rte_lcore_id());
        if !cache.is_null() {
            sys::rte_mempool_cache_flush(cache, pool.as_ptr());
        }
    }
}
