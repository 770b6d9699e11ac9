//! The 16-byte descriptor carried by the rx and tx rings.
//!
//! A descriptor is stored as two little-endian `u64` words, each written and read
//! with one atomic access:
//!
//! | word | bits    | field      |
//! | ---- | ------- | ---------- |
//! | w0   | 0..32   | `offset`: byte offset of the buffer's `rte_mbuf` in the region |
//! | w0   | 32..48  | `data_off`: start of the data, from the start of the data room |
//! | w0   | 48..64  | `data_len`: bytes of data in this segment |
//! | w1   | 0..16   | `flags` ([`DescFlags`]) |
//! | w1   | 16..32  | `vlan_tci` (valid with [`DescFlags::VLAN`]) |
//! | w1   | 32..64  | `rss_hash` (valid with [`DescFlags::RSS_HASH`]) |

use std::fmt;

use crate::tx::MAX_SEGS;
use std::ops::{BitOr, BitOrAssign};

/// Flags of a descriptor. Bits this build does not know are kept (so they can be
/// reported) but otherwise ignored.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DescFlags(u16);

impl DescFlags {
    /// Another segment of the same packet follows in the next descriptor.
    pub const NEXT: DescFlags = DescFlags(1 << 0);
    /// `rss_hash` is valid.
    pub const RSS_HASH: DescFlags = DescFlags(1 << 1);
    /// `vlan_tci` is valid (the tag was stripped on rx / is to be inserted on tx).
    pub const VLAN: DescFlags = DescFlags(1 << 2);
    /// Every flag this version of the contract defines.
    pub const KNOWN: DescFlags = DescFlags(Self::NEXT.0 | Self::RSS_HASH.0 | Self::VLAN.0);

    /// No flag.
    #[inline]
    pub const fn empty() -> DescFlags {
        DescFlags(0)
    }

    /// Flags from raw bits, unknown bits kept.
    #[inline]
    pub const fn from_bits_retain(bits: u16) -> DescFlags {
        DescFlags(bits)
    }

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every flag of `other` is set.
    #[inline]
    pub const fn contains(self, other: DescFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether a bit outside [`DescFlags::KNOWN`] is set (a newer peer, or garbage).
    #[inline]
    pub const fn has_unknown_bits(self) -> bool {
        self.0 & !Self::KNOWN.0 != 0
    }

    /// Only the known bits.
    #[inline]
    pub const fn known(self) -> DescFlags {
        DescFlags(self.0 & Self::KNOWN.0)
    }
}

impl BitOr for DescFlags {
    type Output = DescFlags;
    #[inline]
    fn bitor(self, rhs: DescFlags) -> DescFlags {
        DescFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for DescFlags {
    #[inline]
    fn bitor_assign(&mut self, rhs: DescFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for DescFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut put = |f: &mut fmt::Formatter<'_>, name: &str| {
            let sep = if first { "" } else { "|" };
            first = false;
            write!(f, "{sep}{name}")
        };
        write!(f, "DescFlags(")?;
        for (flag, name) in [
            (Self::NEXT, "NEXT"),
            (Self::RSS_HASH, "RSS_HASH"),
            (Self::VLAN, "VLAN"),
        ] {
            if self.contains(flag) {
                put(f, name)?;
            }
        }
        if self.has_unknown_bits() {
            put(f, &format!("{:#x}", self.0 & !Self::KNOWN.0))?;
        }
        write!(f, ")")
    }
}

/// One ring entry: a buffer (by region offset of its `rte_mbuf`) and the packet
/// metadata that goes with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Desc {
    /// Byte offset of the buffer's `rte_mbuf` in the region.
    pub offset: u32,
    /// Offset of the data from the start of the buffer's data room.
    pub data_off: u16,
    /// Bytes of data in this segment.
    pub data_len: u16,
    /// See [`DescFlags`].
    pub flags: DescFlags,
    /// VLAN tag control information (with [`DescFlags::VLAN`]).
    pub vlan_tci: u16,
    /// RSS hash (with [`DescFlags::RSS_HASH`]).
    pub rss_hash: u32,
}

impl Desc {
    /// Size of a descriptor in a ring.
    pub const SIZE: usize = 16;

    /// The two ring words of this descriptor.
    #[inline]
    pub const fn to_words(&self) -> [u64; 2] {
        let w0 = self.offset as u64 | (self.data_off as u64) << 32 | (self.data_len as u64) << 48;
        let w1 = self.flags.0 as u64 | (self.vlan_tci as u64) << 16 | (self.rss_hash as u64) << 32;
        [w0, w1]
    }

    /// The descriptor stored in two ring words. Every pair of words is a
    /// descriptor; its fields still have to be validated by the reader.
    #[inline]
    pub const fn from_words(w0: u64, w1: u64) -> Desc {
        Desc {
            offset: w0 as u32,
            data_off: (w0 >> 32) as u16,
            data_len: (w0 >> 48) as u16,
            flags: DescFlags(w1 as u16),
            vlan_tci: (w1 >> 16) as u16,
            rss_hash: (w1 >> 32) as u32,
        }
    }
}

/// The walk over one packet's descriptor chain, for whoever consumes a ring (the guests
/// on rx, the proxy's tx validation, [`crate::tx`]): one descriptor after another until
/// one without [`DescFlags::NEXT`], but never more than [`MAX_SEGS`] + 1 (a longer
/// chain is cut there and is one invalid packet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescChain {
    segs: u32,
}

impl DescChain {
    /// Counts `d`, the chain's next descriptor; true if the packet ends with it.
    #[inline]
    pub fn ends_with(&mut self, d: &Desc) -> bool {
        self.segs += 1;
        !d.flags.contains(DescFlags::NEXT) || self.segs > MAX_SEGS
    }

    /// Descriptors counted so far.
    #[inline]
    pub fn segs(&self) -> u32 {
        self.segs
    }

    /// Whether the chain is longer than the limit (an invalid packet).
    #[inline]
    pub fn too_long(&self) -> bool {
        self.segs > MAX_SEGS
    }

    /// A chain that starts at `first` and has not ended by `avail` (the descriptors
    /// readable now) in a ring of `entries`: whether it never can. The producer
    /// publishes whole packets, so a packet that fills the whole ring from its start
    /// without ending is a broken producer, and the queue must stop rather than wait.
    #[inline]
    pub fn never_ends(first: u32, avail: u32, entries: u32) -> bool {
        first == 0 && avail >= entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(more: bool) -> Desc {
        Desc { flags: if more { DescFlags::NEXT } else { DescFlags::empty() }, ..Desc::default() }
    }

    #[test]
    fn a_chain_ends_at_its_last_descriptor_or_after_the_limit() {
        let mut one = DescChain::default();
        assert!(one.ends_with(&seg(false)));
        assert_eq!((one.segs(), one.too_long()), (1, false));
        let mut three = DescChain::default();
        assert!(!three.ends_with(&seg(true)));
        assert!(!three.ends_with(&seg(true)));
        assert!(three.ends_with(&seg(false)));
        assert_eq!(three.segs(), 3);
        let mut endless = DescChain::default();
        let cut = (1..).find(|_| endless.ends_with(&seg(true))).unwrap();
        assert_eq!(cut, MAX_SEGS + 1);
        assert!(endless.too_long());
        // The 65th descriptor is too many even when it ends the chain.
        let mut longest = DescChain::default();
        (0..MAX_SEGS).for_each(|_| assert!(!longest.ends_with(&seg(true))));
        assert!(!longest.too_long());
        assert!(longest.ends_with(&seg(false)) && longest.too_long());
        assert!(DescChain::never_ends(0, 8, 8));
        assert!(!DescChain::never_ends(1, 8, 8));
        assert!(!DescChain::never_ends(0, 7, 8));
    }

    #[test]
    fn words_round_trip_and_layout() {
        let d = Desc {
            offset: 0x1122_3344,
            data_off: 0x5566,
            data_len: 0x7788,
            flags: DescFlags::NEXT | DescFlags::VLAN,
            vlan_tci: 0x99aa,
            rss_hash: 0xbbcc_ddee,
        };
        let [w0, w1] = d.to_words();
        assert_eq!(w0, 0x7788_5566_1122_3344);
        assert_eq!(w1, 0xbbcc_ddee_99aa_0005);
        assert_eq!(Desc::from_words(w0, w1), d);
        assert_eq!(Desc::from_words(u64::MAX, u64::MAX).to_words(), [u64::MAX, u64::MAX]);
    }

    #[test]
    fn flags() {
        let mut f = DescFlags::empty();
        assert!(!f.contains(DescFlags::NEXT));
        f |= DescFlags::RSS_HASH;
        assert!(f.contains(DescFlags::RSS_HASH));
        assert!(!f.has_unknown_bits());
        let g = DescFlags::from_bits_retain(0x8003);
        assert!(g.has_unknown_bits());
        assert_eq!(g.known(), DescFlags::NEXT | DescFlags::RSS_HASH);
        assert_eq!(g.bits(), 0x8003);
        assert_eq!(format!("{g:?}"), "DescFlags(NEXT|RSS_HASH|0x8000)");
        assert_eq!(format!("{:?}", DescFlags::empty()), "DescFlags()");
    }
}
