//! The proxy's side of a guest's tx ring: turning the descriptors a guest published
//! into packets, with every check the proxy makes before a guest buffer goes to a NIC.
//!
//! This is the validation the proxy's data loop runs, kept free of DPDK so that it can
//! be unit-tested and fuzzed (`fuzz/fuzz_targets/tx_ring.rs`). The data loop supplies
//! the buffers through [`TxSink`] (its shadow mbufs); tests and the fuzz target supply
//! a model.
//!
//! A packet is a run of consecutive descriptors, each but the last carrying
//! [`DescFlags::NEXT`]. For every descriptor [`take_packet`] checks, in this order:
//!
//! 1. the chain is at most [`MAX_SEGS`] long ([`TxInvalid::Segments`]); a longer chain
//!    is cut after its 65th descriptor, so a chain that never ends costs a bounded
//!    amount of work and the descriptors after the cut start a new packet;
//! 2. its offset is exactly the `rte_mbuf` of a buffer of one of the guest's pools
//!    ([`TxSink::find`], by [`PoolLayout::buffer_index`](crate::PoolLayout::buffer_index):
//!    out of range, misaligned, inside a buffer, in the ring or header area: all
//!    [`TxInvalid::Offset`]);
//! 3. `data_off + data_len` lies inside that buffer's data room ([`TxInvalid::Length`]);
//! 4. the buffer is the guest's to give: the proxy does not hold it already, from an
//!    earlier descriptor of this packet or of an earlier one, or from the free ring
//!    ([`TxInvalid::Duplicate`]; [`TxSink::claim`]).
//!
//! After the first failure the rest of the chain is still read (so the next packet
//! starts at the right place) but nothing more is claimed; what was claimed goes back
//! to the guest ([`TxSink::drop_packet`]) and the packet counts as one invalid packet.
//! A chain that runs past the published descriptors is not consumed: its claims are
//! undone ([`TxSink::unclaim_packet`]) and it is read again, whole, on a later poll.
//!
//! Nothing here reads shared memory itself: descriptors arrive as copies ([`Desc`],
//! from an atomic load of the ring words), so a guest rewriting the ring meanwhile
//! only changes which (validated) values are seen.

use crate::desc::{Desc, DescFlags};

/// Longest packet chain the proxy accepts from a guest (and hands to one).
pub const MAX_SEGS: u32 = 64;

/// What was wrong with a guest's tx packet. The values are the proxy's log codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TxInvalid {
    /// A descriptor names no buffer of the guest's pools.
    Offset = 2,
    /// A descriptor's data lies outside its buffer's data room.
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

    /// The chain is incomplete: every buffer claimed for the packet being assembled
    /// goes back to the guest's side *without* being returned to its free ring (the
    /// descriptors stay in the tx ring and are read again). Called even when nothing
    /// was claimed.
    fn unclaim_packet(&mut self);

    /// The packet is invalid: every buffer claimed for it is handed back to the guest
    /// (the proxy returns them to the guest's free ring: the guest gave them up).
    /// Called only when at least one buffer was claimed.
    fn drop_packet(&mut self);
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
    /// The chain runs past the `avail` descriptors: nothing consumed, nothing held.
    Incomplete,
}

/// Takes the packet that starts at descriptor `*used` (of `avail` readable ones,
/// `read(i)` being the `i`-th) and advances `*used` past it; on
/// [`TxPacket::Incomplete`] `*used` is left alone. Reads at most `MAX_SEGS + 1`
/// descriptors, never one at or beyond `avail`.
#[inline]
pub fn take_packet<S: TxSink>(read: impl Fn(u32) -> Desc, used: &mut u32, avail: u32, sink: &mut S) -> TxPacket {
    let first = *used;
    let mut at = first;
    let mut segs = 0u32;
    let mut len = 0u32;
    let mut claimed = false;
    let mut bad: Option<TxInvalid> = None;
    let mut vlan = None;
    loop {
        if at >= avail {
            // A chain cut by the window (or not fully published): retry it on a later
            // poll, from its first descriptor.
            sink.unclaim_packet();
            return TxPacket::Incomplete;
        }
        let d = read(at);
        at += 1;
        segs += 1;
        if segs > MAX_SEGS {
            bad.get_or_insert(TxInvalid::Segments);
            break;
        }
        if segs == 1 && d.flags.contains(DescFlags::VLAN) {
            vlan = Some(d.vlan_tci);
        }
        if bad.is_none() {
            match sink.find(d.offset) {
                None => bad = Some(TxInvalid::Offset),
                Some((_, room)) if d.data_off as u32 + d.data_len as u32 > room as u32 => {
                    bad = Some(TxInvalid::Length)
                }
                Some((seg, _)) => {
                    if sink.claim(seg, &d) {
                        claimed = true;
                        len += d.data_len as u32;
                    } else {
                        bad = Some(TxInvalid::Duplicate);
                    }
                }
            }
        }
        if !d.flags.contains(DescFlags::NEXT) {
            break;
        }
    }
    *used = at;
    if let Some(kind) = bad {
        if claimed {
            sink.drop_packet();
        }
        return TxPacket::Invalid(kind);
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
        unclaims: u32,
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
                unclaims: 0,
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

        fn unclaim_packet(&mut self) {
            self.unclaims += 1;
            for (p, i, _) in self.building.drain(..) {
                self.held[p][i as usize] = false;
            }
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

    /// Runs `take_packet` over `ring` until it is used up or a chain is incomplete.
    fn walk(m: &mut Model, ring: &[Desc]) -> Vec<(TxPacket, Vec<u32>)> {
        let mut used = 0;
        let mut out = Vec::new();
        while used < ring.len() as u32 {
            let before = used;
            let r = take_packet(|i| ring[i as usize], &mut used, ring.len() as u32, m);
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
        assert_eq!(m.returned, vec![a]);
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
    fn an_incomplete_chain_holds_nothing_and_is_read_again() {
        let mut m = Model::new();
        let (a, b, c) = (m.buf(0, 1), m.buf(0, 2), m.buf(0, 3));
        let ring = [seg(c, 60, false), seg(a, 60, true), seg(b, 60, true)];
        let mut used = 0;
        assert!(matches!(take_packet(|i| ring[i as usize], &mut used, 3, &mut m), TxPacket::Valid { .. }));
        m.send();
        assert_eq!(take_packet(|i| ring[i as usize], &mut used, 3, &mut m), TxPacket::Incomplete);
        assert_eq!(used, 1);
        assert_eq!(m.held_count(), 0);
        assert!(m.returned.is_empty());
        // The guest publishes the rest.
        let ring = [seg(c, 60, false), seg(a, 60, true), seg(b, 60, true), seg(c, 60, false)];
        assert_eq!(
            take_packet(|i| ring[i as usize], &mut used, 4, &mut m),
            TxPacket::Valid { segs: 3, len: 180, vlan: None }
        );
        assert_eq!(used, 4);
    }
}
