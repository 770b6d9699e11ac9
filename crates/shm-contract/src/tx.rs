//! The proxy's side of a guest's tx ring: turning the descriptors a guest published
//! into packets, with every check the proxy makes before a guest buffer goes to a NIC.
//!
//! This is the validation the proxy's data loop runs, kept free of DPDK so that it can
//! be unit-tested and fuzzed (`fuzz/fuzz_targets/tx_ring.rs`). The data loop supplies
//! the buffers through [`TxSink`] (its shadow mbufs); tests and the fuzz target supply
//! a model.
//!
//! A packet is a run of consecutive descriptors, each but the last carrying
//! [`DescFlags::NEXT`]. A one-descriptor packet is checked and taken in one pass. A
//! chain is first *scanned* to its end, each descriptor checked (offset and length,
//! below) without taking anything:
//!
//! - a chain longer than [`MAX_SEGS`] is cut after its 65th descriptor and is one
//!   invalid packet ([`TxInvalid::Segments`]); the descriptors after the cut start a
//!   new packet.
//! - a chain with a descriptor that fails a check is one invalid packet, consumed to
//!   its end. Like an over-long one, nothing of it was taken: its buffers stay the
//!   guest's, and its cost is one read per descriptor.
//! - a chain that runs past the published descriptors (published in parts, or cut by
//!   the window) is not consumed. How far the scan got is kept ([`ChainScan`]) and the
//!   next call goes on from there once more is published: however many parts a chain
//!   comes in, each of its descriptors is scanned once and nothing is claimed until
//!   its last part is there.
//!
//! Then, for a one-descriptor packet or a complete chain that passed its scan, every
//! descriptor is read again, checked, in this order, and its buffer claimed:
//!
//! 1. its offset is exactly the `rte_mbuf` of a buffer of one of the guest's pools
//!    ([`TxSink::find`], by [`PoolLayout::buffer_index`](crate::PoolLayout::buffer_index):
//!    out of range, misaligned, inside a buffer, in the ring or header area: all
//!    [`TxInvalid::Offset`]);
//! 2. `data_off + data_len` lies inside that buffer's data room, and a segment of a
//!    chain is not empty ([`TxInvalid::Length`]; an empty one-segment packet is the
//!    proxy's to refuse, as a frame too short for its port);
//! 3. the buffer is the guest's to give: the proxy does not hold it already, from an
//!    earlier descriptor of this packet or of an earlier one, or from the free ring
//!    ([`TxInvalid::Duplicate`]; [`TxSink::claim`]).
//!
//! At the first failure (in the taking pass: a duplicate, or a descriptor the guest
//! rewrote since the scan) the packet is one invalid packet: what was claimed of it
//! goes back to the guest ([`TxSink::drop_packet`]: the guest gave those buffers up),
//! the rest is not looked at, and the next packet starts after the chain's end as the
//! scan found it.
//!
//! # Bounded work
//!
//! Every call draws from a budget of descriptor reads that the caller sets per poll
//! ([`TX_DESC_BUDGET`]): each descriptor scanned, or checked and claimed, costs one,
//! valid or not, and nothing is read without budget. A scan stops when the budget runs
//! out and goes on from there on a later call; a scanned chain is taken only when the
//! budget left covers all of it (otherwise it waits, scanned, for the next poll's
//! budget, which always does: the budget is at least [`MAX_SEGS`]). So one poll of one
//! guest reads at most `TX_DESC_BUDGET` descriptors and claims at most that many
//! buffers, however the guest fills its ring.
//!
//! Nothing here reads shared memory itself: descriptors arrive as copies ([`Desc`],
//! from an atomic load of the ring words), so a guest rewriting the ring meanwhile
//! only changes which (validated) values are seen.

use crate::desc::{Desc, DescChain, DescFlags};

/// Longest packet chain the proxy accepts from a guest (and hands to one).
pub const MAX_SEGS: u32 = 64;

/// Descriptor reads per poll of one guest's tx ring (scans and checks, valid or not):
/// two per packet of a full burst of 32 one-segment packets, and enough to take a
/// maximal chain of [`MAX_SEGS`] in one poll (scanned on the poll before). Chained
/// packets are large (a chain of five 2 KiB segments is a jumbo frame), so the fewer
/// packets per poll they allow still carry more bytes than a burst of small ones.
pub const TX_DESC_BUDGET: u32 = 2 * 32;

const _: () = assert!(TX_DESC_BUDGET >= MAX_SEGS, "a maximal chain must fit one poll's budget");

/// What was wrong with a guest's tx packet. The values are the proxy's log codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TxInvalid {
    /// A descriptor names no buffer of the guest's pools.
    Offset = 2,
    /// A descriptor's data lies outside its buffer's data room (or a chain's segment
    /// has none).
    Length = 3,
    /// The chain is longer than [`MAX_SEGS`].
    Segments = 4,
    /// A buffer the proxy already holds (listed twice, or never given back).
    Duplicate = 5,
}

/// The buffers a [`take_packet`] call works on: lookup, ownership, and the packet
/// being assembled.
pub trait TxSink {
    /// A guest buffer, as the sink names it (the proxy: its shadow mbuf).
    type Seg: Copy;

    /// The buffer whose `rte_mbuf` is at region offset `offset` and the size of its
    /// data room, or `None` when `offset` is not exactly a buffer of the guest's pools.
    fn find(&self, offset: u32) -> Option<(Self::Seg, u16)>;

    /// Takes `seg` for the proxy and appends it, with `d`'s data, to the packet being
    /// assembled. Returns false, changing nothing, when the proxy already holds it.
    fn claim(&mut self, seg: Self::Seg, d: &Desc) -> bool;

    /// The packet is invalid: every buffer claimed for it is handed back to the guest
    /// (the proxy returns them to the guest's free ring: the guest gave them up).
    /// Called only when at least one buffer was claimed.
    fn drop_packet(&mut self);
}

/// How far the scan of a chain that is not complete yet got, kept between calls of
/// [`take_packet`] for the chain at the ring's read position. The caller keeps one per
/// ring, passes it to every call and resets it ([`ChainScan::reset`]) only when it
/// drops the ring's contents (queue stop).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainScan {
    /// The walk over the chain at the read position: its descriptors already scanned.
    chain: DescChain,
    /// The last of them ends the chain: it waits for budget to be taken.
    complete: bool,
    /// The first check one of them failed: the chain is invalid, scanned to its end.
    bad: Option<TxInvalid>,
}

impl ChainScan {
    /// Descriptors of an unfinished chain already scanned: the caller has nothing new
    /// to look at until more than this many are available (0: no chain waits for its
    /// next part).
    #[inline]
    pub fn waiting(&self) -> u32 {
        if self.complete {
            0
        } else {
            self.chain.segs()
        }
    }

    /// A chain was scanned to its end and waits for budget to be taken.
    #[inline]
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Forgets the pending chain.
    #[inline]
    pub fn reset(&mut self) {
        *self = ChainScan::default();
    }
}

/// The outcome of [`take_packet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxPacket {
    /// A valid packet: `segs` buffers claimed and assembled, `len` bytes in all, the
    /// VLAN tag of its first descriptor if that one carries [`DescFlags::VLAN`].
    Valid {
        /// Segments (descriptors).
        segs: u32,
        /// Sum of the segments' `data_len`.
        len: u32,
        /// Tag to insert.
        vlan: Option<u16>,
    },
    /// An invalid packet: its descriptors are consumed, nothing of it is held.
    Invalid(TxInvalid),
    /// Nothing consumed, nothing held: the chain runs past the `avail` descriptors, or
    /// the budget ran out (the chain goes on from where it stopped on the next call).
    Incomplete,
}

/// Takes the packet that starts at descriptor `*used` (of `avail` readable ones,
/// `read(i)` being the `i`-th) and advances `*used` past it; on
/// [`TxPacket::Incomplete`] `*used` is left alone and `scan` says how far the chain
/// was scanned. Each descriptor read costs one of `budget`, and none is read without;
/// never reads one at or beyond `avail`. `scan` must be the state the previous call
/// left for this ring (its pending chain starts at `*used`).
#[inline]
pub fn take_packet<S: TxSink>(
    read: impl Fn(u32) -> Desc,
    used: &mut u32,
    avail: u32,
    budget: &mut u32,
    scan: &mut ChainScan,
    sink: &mut S,
) -> TxPacket {
    let first = *used;
    if first >= avail || *budget == 0 {
        return TxPacket::Incomplete;
    }
    if scan.chain.segs() == 0 {
        // A packet that starts here: its first descriptor says which kind.
        let d = read(first);
        if !d.flags.contains(DescFlags::NEXT) {
            // The usual packet: one descriptor, checked and taken in one pass.
            *budget -= 1;
            *used = first + 1;
            return match take_segment(&d, sink) {
                Ok(len) => TxPacket::Valid { segs: 1, len, vlan: vlan_of(&d) },
                Err(kind) => TxPacket::Invalid(kind),
            };
        }
        // A chain: this is the first descriptor of its scan.
        *budget -= 1;
        let mut chain = DescChain::default();
        chain.ends_with(&d);
        *scan = ChainScan { chain, complete: false, bad: check_segment(&d, sink).err() };
    }
    take_chain(read, used, avail, budget, scan, sink)
}

#[inline]
fn vlan_of(d: &Desc) -> Option<u16> {
    d.flags.contains(DescFlags::VLAN).then_some(d.vlan_tci)
}

/// The buffer `d` names, if it is exactly a buffer of the guest's pools and `d`'s data
/// lies inside its data room.
#[inline(always)]
fn locate<S: TxSink>(d: &Desc, sink: &S) -> Result<S::Seg, TxInvalid> {
    match sink.find(d.offset) {
        None => Err(TxInvalid::Offset),
        Some((_, room)) if d.data_off as u32 + d.data_len as u32 > room as u32 => Err(TxInvalid::Length),
        Some((seg, _)) => Ok(seg),
    }
}

/// Checks one descriptor of a chain without taking anything: a segment of a chain must
/// also carry data (a NIC may hang on an empty one).
#[inline]
fn check_segment<S: TxSink>(d: &Desc, sink: &S) -> Result<(), TxInvalid> {
    if d.data_len == 0 {
        return Err(TxInvalid::Length);
    }
    locate(d, sink).map(|_| ())
}

/// Checks one descriptor and claims its buffer; its data length on success. Always
/// inlined: it is the whole work on a one-descriptor packet, and as a call its prologue,
/// epilogue and the `Result` passed back cost a quarter of it.
#[inline(always)]
fn take_segment<S: TxSink>(d: &Desc, sink: &mut S) -> Result<u32, TxInvalid> {
    let seg = locate(d, sink)?;
    if sink.claim(seg, d) {
        Ok(d.data_len as u32)
    } else {
        Err(TxInvalid::Duplicate)
    }
}

/// [`take_packet`] for a chain (or the rest of one scanned before).
fn take_chain<S: TxSink>(
    read: impl Fn(u32) -> Desc,
    used: &mut u32,
    avail: u32,
    budget: &mut u32,
    scan: &mut ChainScan,
    sink: &mut S,
) -> TxPacket {
    let first = *used;
    // 1. To its end, each descriptor checked, nothing taken; resumed where an earlier
    // call stopped.
    let mut at = first.saturating_add(scan.chain.segs());
    while !scan.complete {
        if at >= avail || *budget == 0 {
            return TxPacket::Incomplete;
        }
        let d = read(at);
        at += 1;
        *budget -= 1;
        let ends = scan.chain.ends_with(&d);
        if scan.chain.too_long() {
            // Cut after the 65th: a chain that never ends costs a bounded amount.
            scan.reset();
            *used = at;
            return TxPacket::Invalid(TxInvalid::Segments);
        }
        if scan.bad.is_none() {
            scan.bad = check_segment(&d, sink).err();
        }
        scan.complete = ends;
    }
    let segs = scan.chain.segs();
    if let Some(kind) = scan.bad {
        scan.reset();
        *used = at;
        return TxPacket::Invalid(kind);
    }
    if *budget < segs {
        // Scanned whole; taken with the next poll's budget.
        return TxPacket::Incomplete;
    }
    scan.reset();
    *used = at;
    *budget -= segs;
    // 2. Every descriptor read again (these copies are what is taken), checked, and
    // its buffer claimed, in order, within the boundaries the scan found.
    let head = read(first);
    let vlan = vlan_of(&head);
    let mut len = 0u32;
    for i in first..at {
        let d = if i == first { head } else { read(i) };
        let taken = if d.data_len == 0 { Err(TxInvalid::Length) } else { take_segment(&d, sink) };
        match taken {
            Ok(l) => len += l,
            Err(kind) => {
                if i > first {
                    sink.drop_packet();
                }
                return TxPacket::Invalid(kind);
            }
        }
    }
    TxPacket::Valid { segs, len, vlan }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{RegionFlags, RegionLayout};
    use crate::pool::{PoolAdd, PoolLayout};

    /// A model of the proxy's buffers: pools, an owner bit per buffer, the packet
    /// being assembled, and what went back to the free ring.
    struct Model {
        pools: Vec<PoolLayout>,
        held: Vec<Vec<bool>>,
        building: Vec<(usize, u32, Desc)>,
        returned: Vec<u32>,
    }

    impl Model {
        fn new() -> Model {
            let region = RegionLayout::new(16 << 20, 4096, 64, 64, RegionFlags::empty()).unwrap();
            let heap = region.heap().offset;
            let a = PoolAdd {
                pool_id: 0,
                ring_offset: heap,
                ring_entries: 64,
                first_mbuf_offset: heap + 4096,
                stride: 2432,
                count: 64,
                mbuf_size: 128,
                data_room: 2176,
            }
            .validate(&region, &[])
            .unwrap();
            let b = PoolAdd {
                pool_id: 1,
                ring_offset: heap + (1 << 20),
                ring_entries: 8,
                first_mbuf_offset: heap + (1 << 20) + 4096,
                stride: 320,
                count: 8,
                mbuf_size: 128,
                data_room: 192,
            }
            .validate(&region, &[a])
            .unwrap();
            Model {
                held: vec![vec![false; 64], vec![false; 8]],
                pools: vec![a, b],
                building: Vec::new(),
                returned: Vec::new(),
            }
        }

        fn buf(&self, pool: usize, idx: u32) -> u32 {
            self.pools[pool].buffer_offset(idx)
        }

        fn held_count(&self) -> usize {
            self.held.iter().flatten().filter(|&&h| h).count()
        }

        /// The NIC sent the assembled packet: its buffers go back to the guest.
        fn send(&mut self) -> Vec<u32> {
            let segs: Vec<u32> = self.building.iter().map(|&(p, i, _)| self.pools[p].buffer_offset(i)).collect();
            for (p, i, _) in self.building.drain(..) {
                self.held[p][i as usize] = false;
            }
            segs
        }
    }

    impl TxSink for Model {
        type Seg = (usize, u32);

        fn find(&self, offset: u32) -> Option<((usize, u32), u16)> {
            self.pools
                .iter()
                .enumerate()
                .find_map(|(p, l)| l.buffer_index(offset).map(|i| ((p, i), l.data_room())))
        }

        fn claim(&mut self, (p, i): (usize, u32), d: &Desc) -> bool {
            let h = &mut self.held[p][i as usize];
            if *h {
                return false;
            }
            *h = true;
            self.building.push((p, i, *d));
            true
        }

        fn drop_packet(&mut self) {
            assert!(!self.building.is_empty());
            for (p, i, _) in self.building.drain(..) {
                self.held[p][i as usize] = false;
                self.returned.push(self.pools[p].buffer_offset(i));
            }
        }
    }

    fn seg(offset: u32, len: u16, more: bool) -> Desc {
        Desc {
            offset,
            data_off: 128,
            data_len: len,
            flags: if more { DescFlags::NEXT } else { DescFlags::empty() },
            ..Desc::default()
        }
    }

    /// Runs `take_packet` over `ring` until it is used up or a chain is incomplete
    /// (with an unlimited budget).
    fn walk(m: &mut Model, ring: &[Desc]) -> Vec<(TxPacket, Vec<u32>)> {
        let mut used = 0;
        let mut out = Vec::new();
        let mut scan = ChainScan::default();
        let mut unlimited = u32::MAX;
        while used < ring.len() as u32 {
            let before = used;
            let r = take_packet(|i| ring[i as usize], &mut used, ring.len() as u32, &mut unlimited, &mut scan, m);
            let segs = if matches!(r, TxPacket::Valid { .. }) { m.send() } else { Vec::new() };
            out.push((r, segs));
            if r == TxPacket::Incomplete {
                assert_eq!(used, before);
                break;
            }
            assert!(used > before);
        }
        out
    }

    #[test]
    fn valid_single_and_chained_packets() {
        let mut m = Model::new();
        let (a, b, c) = (m.buf(0, 0), m.buf(0, 5), m.buf(1, 7));
        let mut vlan_head = seg(a, 60, false);
        vlan_head.flags |= DescFlags::VLAN;
        vlan_head.vlan_tci = 42;
        let ring = [vlan_head, seg(b, 2000, true), seg(c, 64, false)];
        let got = walk(&mut m, &ring);
        assert_eq!(
            got,
            vec![
                (TxPacket::Valid { segs: 1, len: 60, vlan: Some(42) }, vec![a]),
                (TxPacket::Valid { segs: 2, len: 2064, vlan: None }, vec![b, c]),
            ]
        );
        assert_eq!(m.held_count(), 0);
        assert!(m.returned.is_empty());
    }

    #[test]
    fn offsets_that_are_not_buffers() {
        let m0 = Model::new();
        let p = m0.pools[0];
        let first = p.first_mbuf_offset();
        for offset in [
            0,
            64,                                   // region header
            first - 4096,                         // free ring
            first + 8,                            // misaligned
            first + 128,                          // inside (the data room)
            first + p.stride() - 64,              // between two mbufs
            p.buffer_offset(p.count()),           // one past the last
            u32::MAX,
            u32::MAX - 63,
        ] {
            let mut m = Model::new();
            let got = walk(&mut m, &[seg(offset, 60, false)]);
            assert_eq!(got, vec![(TxPacket::Invalid(TxInvalid::Offset), vec![])], "offset {offset}");
            assert_eq!(m.held_count(), 0);
        }
    }

    #[test]
    fn lengths_beyond_the_data_room() {
        let mut m = Model::new();
        let a = m.buf(1, 0); // data room 192
        let ok = Desc { data_off: 0, data_len: 192, ..seg(a, 0, false) };
        let over = Desc { data_off: 1, data_len: 192, ..seg(a, 0, false) };
        let huge = Desc { data_off: u16::MAX, data_len: u16::MAX, ..seg(a, 0, false) };
        let got = walk(&mut m, &[over, huge, ok]);
        assert_eq!(got[0].0, TxPacket::Invalid(TxInvalid::Length));
        assert_eq!(got[1].0, TxPacket::Invalid(TxInvalid::Length));
        assert_eq!(got[2].0, TxPacket::Valid { segs: 1, len: 192, vlan: None });
    }

    #[test]
    fn duplicates_in_a_chain_and_across_packets() {
        let mut m = Model::new();
        let (a, b) = (m.buf(0, 1), m.buf(0, 2));
        // A chain that names a buffer twice (a loop): invalid; what it claimed goes
        // back to the guest's free ring once.
        let got = walk(&mut m, &[seg(a, 60, true), seg(b, 60, true), seg(a, 60, false)]);
        assert_eq!(got, vec![(TxPacket::Invalid(TxInvalid::Duplicate), vec![])]);
        assert_eq!(m.returned, vec![a, b]);
        assert_eq!(m.held_count(), 0);
        // A buffer the proxy holds (e.g. from the free ring, or queued on the NIC).
        m.returned.clear();
        m.held[0][1] = true;
        let got = walk(&mut m, &[seg(b, 60, true), seg(a, 60, false), seg(b, 60, false)]);
        assert_eq!(got[0].0, TxPacket::Invalid(TxInvalid::Duplicate));
        assert_eq!(m.returned, vec![b]);
        // b was given back, so the next packet may use it.
        assert_eq!(got[1].0, TxPacket::Valid { segs: 1, len: 60, vlan: None });
        assert_eq!(m.held_count(), 1);
    }

    #[test]
    fn the_first_failure_is_reported_and_the_chain_still_consumed() {
        let mut m = Model::new();
        let (a, b) = (m.buf(0, 1), m.buf(0, 2));
        let ring = [seg(a, 60, true), seg(7, 60, true), seg(b, 60000, true), seg(b, 60, false), seg(b, 60, false)];
        let got = walk(&mut m, &ring);
        assert_eq!(got[0].0, TxPacket::Invalid(TxInvalid::Offset));
        assert_eq!(got[1].0, TxPacket::Valid { segs: 1, len: 60, vlan: None });
        assert_eq!(got.len(), 2);
        // Found by the scan: nothing of it was taken, so nothing goes back.
        assert!(m.returned.is_empty());
    }

    #[test]
    fn chains_longer_than_max_segs_are_cut() {
        let mut m = Model::new();
        // Every descriptor says "more follows": 65 descriptors are one invalid packet,
        // the rest is an incomplete chain that waits for more.
        let ring: Vec<Desc> = (0..64 + 65 + 10).map(|i| seg(m.buf(0, i % 64), 60, true)).collect();
        let got = walk(&mut m, &ring);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].0, TxPacket::Invalid(TxInvalid::Segments));
        assert_eq!(got[1].0, TxPacket::Invalid(TxInvalid::Segments));
        assert_eq!(got[2].0, TxPacket::Incomplete);
        assert_eq!(m.held_count(), 0);
        // Exactly MAX_SEGS distinct buffers is fine.
        let mut m = Model::new();
        let mut ring: Vec<Desc> = (0..MAX_SEGS).map(|i| seg(m.buf(0, i), 10, true)).collect();
        ring.last_mut().unwrap().flags = DescFlags::empty();
        let got = walk(&mut m, &ring);
        assert_eq!(got, vec![(TxPacket::Valid { segs: 64, len: 640, vlan: None }, (0..64).map(|i| m.buf(0, i)).collect())]);
    }

    #[test]
    fn a_chain_published_in_parts_is_taken_when_its_last_part_arrives() {
        let mut m = Model::new();
        let c = m.buf(0, 63);
        // A one-segment packet, then a chain of 50 published in parts: 40, 9, 1.
        let mut ring = vec![seg(c, 60, false)];
        ring.extend((0..50).map(|i| seg(m.buf(0, i), 10, i < 49)));
        let reads = std::cell::Cell::new(0u32);
        let read = |i: u32| {
            reads.set(reads.get() + 1);
            ring[i as usize]
        };
        let (mut used, mut scan, mut budget) = (0, ChainScan::default(), u32::MAX);
        assert!(matches!(take_packet(read, &mut used, 41, &mut budget, &mut scan, &mut m), TxPacket::Valid { .. }));
        m.send();
        // The first part: scanned, nothing taken, nothing consumed.
        assert_eq!(take_packet(read, &mut used, 41, &mut budget, &mut scan, &mut m), TxPacket::Incomplete);
        assert_eq!((used, scan.waiting()), (1, 40));
        assert_eq!(m.held_count(), 0);
        // Asked again with nothing new: nothing is read.
        let before = reads.get();
        assert_eq!(take_packet(read, &mut used, 41, &mut budget, &mut scan, &mut m), TxPacket::Incomplete);
        assert_eq!(reads.get(), before);
        // The second part: only the new descriptors are scanned.
        assert_eq!(take_packet(read, &mut used, 50, &mut budget, &mut scan, &mut m), TxPacket::Incomplete);
        assert_eq!((used, scan.waiting()), (1, 49));
        assert_eq!(reads.get(), before + 9);
        // The last one: the chain is taken whole (one scan read + 50 checks).
        assert_eq!(
            take_packet(read, &mut used, 51, &mut budget, &mut scan, &mut m),
            TxPacket::Valid { segs: 50, len: 500, vlan: None }
        );
        assert_eq!(reads.get(), before + 9 + 1 + 50);
        assert_eq!((used, scan.waiting()), (51, 0));
        assert_eq!(m.held_count(), 50);
        assert!(m.returned.is_empty());
    }

    #[test]
    fn a_scan_cut_by_the_budget_goes_on_where_it_stopped() {
        let mut m = Model::new();
        let ring: Vec<Desc> = (0..30).map(|i| seg(m.buf(0, i), 10, i < 29)).collect();
        let (mut used, mut scan) = (0, ChainScan::default());
        let mut budget = 20;
        assert_eq!(take_packet(|i| ring[i as usize], &mut used, 30, &mut budget, &mut scan, &mut m), TxPacket::Incomplete);
        assert_eq!((used, scan.waiting(), budget), (0, 20, 0));
        // Nothing at all with an empty budget.
        assert_eq!(take_packet(|_| unreachable!(), &mut used, 30, &mut budget, &mut scan, &mut m), TxPacket::Incomplete);
        // The next poll: 10 more scanned, the end found, but 10 left do not cover 30.
        let mut budget = 20;
        assert_eq!(take_packet(|i| ring[i as usize], &mut used, 30, &mut budget, &mut scan, &mut m), TxPacket::Incomplete);
        assert_eq!((used, scan.waiting(), scan.is_complete(), budget), (0, 0, true, 10));
        assert_eq!(m.held_count(), 0);
        // The poll after: taken, with nothing scanned again.
        let mut budget = TX_DESC_BUDGET;
        assert_eq!(
            take_packet(|i| ring[i as usize], &mut used, 30, &mut budget, &mut scan, &mut m),
            TxPacket::Valid { segs: 30, len: 300, vlan: None }
        );
        assert_eq!((used, budget), (30, TX_DESC_BUDGET - 30));
        assert_eq!(scan, ChainScan::default());
    }

    /// Polls `ring` to its end with a fresh `TX_DESC_BUDGET` each time, checking that no
    /// poll reads more; returns the packets' outcomes and the number of polls.
    fn poll_all(m: &mut Model, ring: &[Desc]) -> (Vec<TxPacket>, u32) {
        let (mut used, mut scan, mut out, mut polls) = (0, ChainScan::default(), Vec::new(), 0);
        while used < ring.len() as u32 {
            let reads = std::cell::Cell::new(0u32);
            let read = |i: u32| {
                reads.set(reads.get() + 1);
                ring[i as usize]
            };
            let mut budget = TX_DESC_BUDGET;
            loop {
                match take_packet(read, &mut used, ring.len() as u32, &mut budget, &mut scan, m) {
                    TxPacket::Incomplete => break,
                    TxPacket::Valid { .. } => {
                        m.send();
                        out.push(TxPacket::Valid { segs: 0, len: 0, vlan: None });
                    }
                    other => out.push(other),
                }
            }
            assert!(reads.get() <= TX_DESC_BUDGET, "{} reads in one poll", reads.get());
            polls += 1;
            assert!(polls < 10_000);
        }
        (out, polls)
    }

    #[test]
    fn a_poll_reads_at_most_its_budget() {
        // The ring of an attacker: chains of 63 good segments and one bad descriptor.
        let mut m = Model::new();
        let good: Vec<Desc> = (0..63).map(|i| seg(m.buf(0, i), 10, true)).collect();
        // A bad offset or length is found by the scan: nothing is claimed.
        for bad in [seg(7, 10, false), Desc { data_len: 5000, ..seg(m.buf(0, 63), 0, false) }] {
            let ring: Vec<Desc> = (0..8).flat_map(|_| good.iter().copied().chain([bad])).collect();
            let (got, polls) = poll_all(&mut m, &ring);
            assert_eq!(got.len(), 8);
            assert!(got.iter().all(|p| matches!(p, TxPacket::Invalid(TxInvalid::Offset | TxInvalid::Length))));
            assert_eq!(polls, 8);
            assert_eq!(m.held_count(), 0);
            assert!(m.returned.is_empty());
        }
        // A duplicate is found when taking: 63 claimed, then given back, one chain per
        // two polls (the scan, then the taking).
        let dup = seg(m.buf(0, 0), 10, false);
        let ring: Vec<Desc> = (0..8).flat_map(|_| good.iter().copied().chain([dup])).collect();
        let (got, polls) = poll_all(&mut m, &ring);
        assert_eq!(got, vec![TxPacket::Invalid(TxInvalid::Duplicate); 8]);
        assert_eq!(polls, 16);
        assert_eq!(m.held_count(), 0);
        assert_eq!(m.returned.len(), 8 * 63);
        // Honest traffic: a full burst of one-segment packets fits one poll, and so
        // does a maximal chain once scanned.
        let mut m = Model::new();
        let ring: Vec<Desc> = (0..32).map(|i| seg(m.buf(0, i), 60, false)).collect();
        assert_eq!(poll_all(&mut m, &ring), (vec![TxPacket::Valid { segs: 0, len: 0, vlan: None }; 32], 1));
        let ring: Vec<Desc> = (0..64).map(|i| seg(m.buf(0, i), 60, i < 63)).collect();
        assert_eq!(poll_all(&mut m, &ring), (vec![TxPacket::Valid { segs: 0, len: 0, vlan: None }], 2));
    }

    #[test]
    fn an_empty_segment_makes_a_chain_invalid() {
        let mut m = Model::new();
        let (a, b, c) = (m.buf(0, 1), m.buf(0, 2), m.buf(0, 3));
        let got = walk(&mut m, &[seg(a, 60, true), seg(b, 0, true), seg(c, 60, false), seg(c, 0, false)]);
        // The chain: invalid, nothing taken. A one-segment packet of no bytes is valid
        // here (the proxy refuses it against its port's limits).
        assert_eq!(got[0].0, TxPacket::Invalid(TxInvalid::Length));
        assert_eq!(got[1].0, TxPacket::Valid { segs: 1, len: 0, vlan: None });
        assert!(m.returned.is_empty());
    }

    #[test]
    fn an_over_long_chain_takes_nothing() {
        let mut m = Model::new();
        let ring: Vec<Desc> = (0..65).map(|i| seg(m.buf(0, i % 64), 10, true)).collect();
        let got = walk(&mut m, &ring);
        assert_eq!(got, vec![(TxPacket::Invalid(TxInvalid::Segments), vec![])]);
        assert!(m.returned.is_empty());
        assert_eq!(m.held_count(), 0);
    }

    #[test]
    fn an_incomplete_chain_holds_nothing_and_is_read_again() {
        let mut m = Model::new();
        let (a, b, c) = (m.buf(0, 1), m.buf(0, 2), m.buf(0, 3));
        let ring = [seg(c, 60, false), seg(a, 60, true), seg(b, 60, true)];
        let (mut used, mut scan, mut budget) = (0, ChainScan::default(), u32::MAX);
        assert!(matches!(take_packet(|i| ring[i as usize], &mut used, 3, &mut budget, &mut scan, &mut m), TxPacket::Valid { .. }));
        m.send();
        assert_eq!(take_packet(|i| ring[i as usize], &mut used, 3, &mut budget, &mut scan, &mut m), TxPacket::Incomplete);
        assert_eq!(used, 1);
        assert_eq!(m.held_count(), 0);
        assert!(m.returned.is_empty());
        // The guest publishes the rest.
        let ring = [seg(c, 60, false), seg(a, 60, true), seg(b, 60, true), seg(c, 60, false)];
        assert_eq!(
            take_packet(|i| ring[i as usize], &mut used, 4, &mut budget, &mut scan, &mut m),
            TxPacket::Valid { segs: 3, len: 180, vlan: None }
        );
        assert_eq!(used, 4);
    }
}
