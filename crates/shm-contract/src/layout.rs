//! The region: its header, its areas, and the status block.
//!
//! ```text
//! 0              header fields (below), then the status block at `status_offset`
//! page aligned   rx descriptor ring (proxy produces, guest consumes)
//! page aligned   tx descriptor ring (guest produces, proxy consumes)
//! page aligned   ... the rx and tx rings of queue pairs 1.. (contract 1.1)
//! page aligned   heap (the guest's pools), up to the end of the region
//! ```
//!
//! "Page" is the page size of the backing: 4096 for normal memory, the hugepage
//! size for hugetlb. The header page holds the header fields and the status
//! block; [`HEADER_SIZE`] bytes of it are reserved for them.
//!
//! # Header fields (little-endian)
//!
//! | offset | size | field |
//! | ------ | ---- | ----- |
//! | 0      | 8    | magic, `"SHMIOREG"` ([`REGION_MAGIC`]) |
//! | 8      | 2    | contract major version |
//! | 10     | 2    | contract minor version |
//! | 12     | 4    | header size, [`HEADER_SIZE`] |
//! | 16     | 4    | `fields_len`: bytes of header fields, checksum coverage ([`HEADER_FIELDS_LEN`] in 1.0; later minors may append fields and grow it) |
//! | 20     | 4    | checksum: FNV-1a (32 bit) of bytes `0..fields_len`, with these 4 bytes taken as zero |
//! | 24     | 8    | region size in bytes (the size of the memfd) |
//! | 32     | 8    | page size of the backing |
//! | 40     | 4    | flags ([`RegionFlags`]) |
//! | 44     | 4    | status block offset |
//! | 48     | 4    | status block size, [`STATUS_BLOCK_SIZE`] |
//! | 52     | 4    | rx ring offset |
//! | 56     | 4    | rx ring entries |
//! | 60     | 4    | rx ring bytes ([`DescRing::bytes_for`]) |
//! | 64     | 4    | tx ring offset |
//! | 68     | 4    | tx ring entries |
//! | 72     | 4    | tx ring bytes |
//! | 76     | 4    | heap offset |
//! | 80     | 4    | heap size |
//! | 84     | 4    | `queue_pairs`: rx/tx ring pairs, 1..=[`MAX_QUEUE_PAIRS`] (1.1; absent in 1.0: one pair) |
//! | 88     | 24 each | pairs 1..`queue_pairs`: rx offset, entries, bytes, tx offset, entries, bytes (1.1) |
//!
//! Pair 0 is the rx and tx ring above. A region with one pair is written as
//! contract 1.0 (`fields_len` 84), byte for byte what a 1.0 proxy writes; a region
//! with more pairs as 1.1, `fields_len` `88 + 24 * (queue_pairs - 1)`. A 1.0 guest
//! reads a 1.1 header as one pair (the extra fields are covered by the checksum
//! and otherwise ignored), so it runs on pair 0 of a multi-queue socket. Every pair
//! has the same entries; the rings follow each other (rx 0, tx 0, rx 1, tx 1, ...),
//! each page aligned, then the heap.
//!
//! The proxy writes the header once ([`RegionLayout::write_header`]) before it
//! passes the memfd and keeps its own copy of the layout; the guest copies the
//! header out and validates all of it against the size of its mapping
//! ([`RegionLayout::read_header`]). Offsets are `u32`: a region is at most
//! [`MAX_REGION_SIZE`] bytes, so every validated `offset + size` fits a `u32`.
//!
//! # Status block
//!
//! [`STATUS_BLOCK_SIZE`] bytes at `status_offset`, two 128-byte halves so the two
//! writers never share a cache line:
//!
//! | offset | field | writer |
//! | ------ | ----- | ------ |
//! | 0      | `link_up` (`u32`, 0/1) | proxy |
//! | 4      | `link_speed_mbps` (`u32`) | proxy |
//! | 8      | `proxy_generation` (`u32`, bumped when the proxy resets the queue) | proxy |
//! | 128 + 4 q | `rx_wakeup_requested` of queue pair `q` (`u32`; pair 0 at 128) | guest |

use std::fmt;
use std::ops::BitOr;
use std::sync::atomic::AtomicU32;

use crate::mem::{MemError, SharedMem};
use crate::spsc::DescRing;

/// Magic at offset 0 of every region.
pub const REGION_MAGIC: [u8; 8] = *b"SHMIOREG";
/// The version of the region contract this build implements.
pub const CONTRACT_VERSION: Version = Version { major: 1, minor: 1 };
/// Bytes reserved at the start of the region for the header fields and the
/// status block.
pub const HEADER_SIZE: u32 = 4096;
/// Bytes of header fields defined by contract 1.0 (the fewest a header has).
pub const HEADER_FIELDS_LEN: u32 = 84;
/// Most rx/tx ring pairs (queue pairs) a region holds.
pub const MAX_QUEUE_PAIRS: u32 = 16;
/// Bytes of header fields of a contract 1.1 header with one ring pair; each further
/// pair adds [`QUEUE_PAIR_FIELDS_LEN`].
pub const HEADER_FIELDS_LEN_1_1: u32 = 88;
/// Bytes of header fields per ring pair beyond the first (contract 1.1).
pub const QUEUE_PAIR_FIELDS_LEN: u32 = 24;
/// The most header fields this build writes.
pub const MAX_HEADER_FIELDS_LEN: u32 = HEADER_FIELDS_LEN_1_1 + QUEUE_PAIR_FIELDS_LEN * (MAX_QUEUE_PAIRS - 1);
/// Where [`RegionLayout::new`] puts the status block.
pub const STATUS_BLOCK_OFFSET: u32 = 2048;
/// Size of the status block.
pub const STATUS_BLOCK_SIZE: u32 = 256;
/// Largest region: offsets (and ends of areas) are `u32`; this is the largest
/// 4 KiB multiple below 4 GiB, so `region_size` itself fits a `u32` too.
pub const MAX_REGION_SIZE: u64 = u32::MAX as u64 + 1 - 4096;
/// Size of an `rte_mbuf`: the minimum an mbuf header (plus private area) can be.
pub const MBUF_HEADER_SIZE: u32 = 128;
/// Descriptor ring entries when nobody asks for a size: what the proxy gives a guest that
/// asks for none (the Rust guest's default) and what the DPDK plugins ask for unless the
/// devargs say otherwise. Enough for the descriptor counts applications ask for by
/// default (Open vSwitch: 2048; testpmd and most examples: 1024 or less); an entry is 16
/// bytes, so both rings take 128 KiB of the region.
pub const DEFAULT_RING_ENTRIES: u32 = 4096;
/// Cache line size the layout aligns to.
pub const CACHE_LINE: u32 = 64;
/// Smallest page size (normal pages).
pub const MIN_PAGE_SIZE: u64 = 4096;
/// Largest page size (1 GiB hugepages).
pub const MAX_PAGE_SIZE: u64 = 1 << 30;
/// Fewest descriptors in an rx or tx ring.
pub const MIN_DESC_RING_ENTRIES: u32 = 64;
/// Most descriptors in an rx or tx ring.
pub const MAX_DESC_RING_ENTRIES: u32 = 65536;

/// Offset in the status block of `link_up`.
pub const STATUS_LINK_UP: u32 = 0;
/// Offset in the status block of `link_speed_mbps`.
pub const STATUS_LINK_SPEED: u32 = 4;
/// Offset in the status block of `proxy_generation`.
pub const STATUS_PROXY_GENERATION: u32 = 8;
/// Offset in the status block of `rx_wakeup_requested` of queue pair 0 (guest-written
/// half); pair `q`'s is `4 * q` bytes further.
pub const STATUS_RX_WAKEUP: u32 = 128;

// Header field offsets.
const OFF_MAGIC: usize = 0;
const OFF_MAJOR: usize = 8;
const OFF_MINOR: usize = 10;
const OFF_HEADER_SIZE: usize = 12;
const OFF_FIELDS_LEN: usize = 16;
const OFF_CHECKSUM: usize = 20;
const OFF_REGION_SIZE: usize = 24;
const OFF_PAGE_SIZE: usize = 32;
const OFF_FLAGS: usize = 40;
const OFF_STATUS_OFFSET: usize = 44;
const OFF_STATUS_SIZE: usize = 48;
const OFF_RX: usize = 52;
const OFF_TX: usize = 64;
const OFF_HEAP: usize = 76;
const OFF_QUEUE_PAIRS: usize = 84;
const OFF_PAIRS: usize = 88;

/// A contract version. Majors must match; a minor only adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Incompatible changes.
    pub major: u16,
    /// Additive changes.
    pub minor: u16,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Region flags. Bits this build does not know are kept and ignored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RegionFlags(u32);

impl RegionFlags {
    /// The region is hugetlb memory.
    pub const HUGEPAGES: RegionFlags = RegionFlags(1);
    /// Every flag this version defines.
    pub const KNOWN: RegionFlags = Self::HUGEPAGES;

    /// No flag.
    pub const fn empty() -> RegionFlags {
        RegionFlags(0)
    }

    /// Flags from raw bits, unknown bits kept.
    pub const fn from_bits_retain(bits: u32) -> RegionFlags {
        RegionFlags(bits)
    }

    /// Raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: RegionFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether a bit outside [`RegionFlags::KNOWN`] is set.
    pub const fn has_unknown_bits(self) -> bool {
        self.0 & !Self::KNOWN.0 != 0
    }
}

impl BitOr for RegionFlags {
    type Output = RegionFlags;
    fn bitor(self, rhs: RegionFlags) -> RegionFlags {
        RegionFlags(self.0 | rhs.0)
    }
}

/// A byte range of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Area {
    /// Start, from the start of the region.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

impl Area {
    /// One past the last byte (in `u64`, so it cannot overflow).
    pub fn end(&self) -> u64 {
        self.offset as u64 + self.size as u64
    }

    /// Whether the two areas share a byte.
    pub fn overlaps(&self, other: &Area) -> bool {
        self.size != 0
            && other.size != 0
            && (self.offset as u64) < other.end()
            && (other.offset as u64) < self.end()
    }
}

/// Where a descriptor ring is, and its number of entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RingArea {
    /// Start of the ring (its producer index).
    pub offset: u32,
    /// Number of descriptors.
    pub entries: u32,
}

impl RingArea {
    /// The bytes the ring occupies (saturated at `u32::MAX`, which no valid ring
    /// reaches).
    pub fn area(&self) -> Area {
        Area {
            offset: self.offset,
            size: u32::try_from(DescRing::bytes_for(self.entries)).unwrap_or(u32::MAX),
        }
    }
}

/// Names the parts of a region in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AreaKind {
    /// The header page (fields and status block).
    Header,
    /// The status block.
    StatusBlock,
    /// The rx descriptor ring.
    RxRing,
    /// The tx descriptor ring.
    TxRing,
    /// The heap.
    Heap,
}

impl fmt::Display for AreaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AreaKind::Header => "header",
            AreaKind::StatusBlock => "status block",
            AreaKind::RxRing => "rx ring",
            AreaKind::TxRing => "tx ring",
            AreaKind::Heap => "heap",
        })
    }
}

/// A region layout that breaks a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The page size is not a power of two in `MIN_PAGE_SIZE..=MAX_PAGE_SIZE`.
    PageSize {
        /// The rejected page size.
        page_size: u64,
    },
    /// The region is larger than [`MAX_REGION_SIZE`].
    RegionTooLarge {
        /// The rejected size.
        region_size: u64,
    },
    /// The region is not a multiple of the page size.
    RegionNotPageMultiple {
        /// Region size.
        region_size: u64,
        /// Page size.
        page_size: u64,
    },
    /// The region cannot hold the header, both rings and a non-empty heap.
    RegionTooSmall {
        /// Region size.
        region_size: u64,
        /// The smallest size that would do.
        needed: u64,
    },
    /// A ring size is not a power of two in
    /// `MIN_DESC_RING_ENTRIES..=MAX_DESC_RING_ENTRIES`.
    RingEntries {
        /// Which ring.
        ring: AreaKind,
        /// The rejected size.
        entries: u32,
    },
    /// The status block overlaps the header fields, leaves the header page, or
    /// is not cache-line aligned.
    StatusBlock {
        /// Its offset.
        offset: u32,
    },
    /// An area does not start on a page boundary.
    AreaMisaligned {
        /// Which area.
        area: AreaKind,
        /// Its offset.
        offset: u32,
        /// The page size.
        page_size: u64,
    },
    /// An area ends beyond the region.
    AreaOutOfBounds {
        /// Which area.
        area: AreaKind,
        /// Its offset.
        offset: u32,
        /// Its size.
        size: u32,
        /// Region size.
        region_size: u64,
    },
    /// Two areas share bytes.
    AreasOverlap {
        /// One area.
        a: AreaKind,
        /// The other.
        b: AreaKind,
    },
    /// The heap is empty.
    HeapEmpty,
    /// The number of queue pairs is not in `1..=MAX_QUEUE_PAIRS`.
    QueuePairs {
        /// The rejected number.
        queue_pairs: u32,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::PageSize { page_size } => write!(
                f,
                "page size {page_size} is not a power of two in {MIN_PAGE_SIZE}..={MAX_PAGE_SIZE}"
            ),
            LayoutError::RegionTooLarge { region_size } => write!(
                f,
                "region size {region_size} exceeds the maximum of {MAX_REGION_SIZE} bytes"
            ),
            LayoutError::RegionNotPageMultiple { region_size, page_size } => write!(
                f,
                "region size {region_size} is not a multiple of the page size {page_size}"
            ),
            LayoutError::RegionTooSmall { region_size, needed } => write!(
                f,
                "region size {region_size} too small: header, rings and a heap need at least {needed} bytes"
            ),
            LayoutError::RingEntries { ring, entries } => write!(
                f,
                "{ring}: {entries} entries is not a power of two in {MIN_DESC_RING_ENTRIES}..={MAX_DESC_RING_ENTRIES}"
            ),
            LayoutError::StatusBlock { offset } => write!(
                f,
                "status block at {offset} must be {CACHE_LINE}-byte aligned, after the header fields and inside the first {HEADER_SIZE} bytes"
            ),
            LayoutError::AreaMisaligned { area, offset, page_size } => write!(
                f,
                "{area} at offset {offset} is not aligned to the page size {page_size}"
            ),
            LayoutError::AreaOutOfBounds { area, offset, size, region_size } => write!(
                f,
                "{area} [{offset}, +{size}) exceeds the {region_size}-byte region"
            ),
            LayoutError::AreasOverlap { a, b } => write!(f, "{a} overlaps {b}"),
            LayoutError::HeapEmpty => write!(f, "the heap is empty"),
            LayoutError::QueuePairs { queue_pairs } => {
                write!(f, "{queue_pairs} queue pairs is not in 1..={MAX_QUEUE_PAIRS}")
            }
        }
    }
}

impl std::error::Error for LayoutError {}

/// A region header that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The mapping cannot even hold a header.
    TooSmall {
        /// Size of the mapping.
        len: usize,
    },
    /// The magic is not [`REGION_MAGIC`].
    BadMagic {
        /// What was found.
        found: [u8; 8],
    },
    /// The major version is not ours.
    UnsupportedVersion {
        /// The region's version.
        version: Version,
    },
    /// The header size field is not [`HEADER_SIZE`].
    HeaderSize {
        /// The field.
        header_size: u32,
    },
    /// `fields_len` is shorter than this version's fields or reaches into the
    /// status block.
    FieldsLen {
        /// The field.
        fields_len: u32,
    },
    /// The checksum does not match the header bytes.
    Checksum {
        /// Stored in the header.
        stored: u32,
        /// Computed over the header.
        computed: u32,
    },
    /// The header's region size is not the size of the mapping.
    RegionSizeMismatch {
        /// In the header.
        header: u64,
        /// Of the mapping.
        mapped: u64,
    },
    /// A ring's byte size does not match its entries.
    RingSize {
        /// Which ring.
        ring: AreaKind,
        /// In the header.
        size: u32,
        /// Expected for its entries.
        expected: u64,
    },
    /// The status block size is not [`STATUS_BLOCK_SIZE`].
    StatusSize {
        /// The field.
        size: u32,
    },
    /// The layout itself breaks a rule.
    Layout(LayoutError),
    /// Reading the header failed.
    Mem(MemError),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "region header: ")?;
        match *self {
            HeaderError::TooSmall { len } => {
                write!(f, "mapping of {len} bytes cannot hold the {HEADER_SIZE}-byte header")
            }
            HeaderError::BadMagic { found } => write!(
                f,
                "bad magic {:?} (expected {:?})",
                String::from_utf8_lossy(&found),
                String::from_utf8_lossy(&REGION_MAGIC)
            ),
            HeaderError::UnsupportedVersion { version } => write!(
                f,
                "version {version} not supported (this build speaks {}.x)",
                CONTRACT_VERSION.major
            ),
            HeaderError::HeaderSize { header_size } => {
                write!(f, "header size {header_size}, expected {HEADER_SIZE}")
            }
            HeaderError::FieldsLen { fields_len } => write!(
                f,
                "fields length {fields_len} not in {HEADER_FIELDS_LEN}..=status block offset"
            ),
            HeaderError::Checksum { stored, computed } => write!(
                f,
                "checksum {stored:#010x} does not match the contents ({computed:#010x}): corrupted"
            ),
            HeaderError::RegionSizeMismatch { header, mapped } => write!(
                f,
                "says the region is {header} bytes but {mapped} bytes are mapped"
            ),
            HeaderError::RingSize { ring, size, expected } => write!(
                f,
                "{ring} is {size} bytes, its entries need {expected}"
            ),
            HeaderError::StatusSize { size } => {
                write!(f, "status block size {size}, expected {STATUS_BLOCK_SIZE}")
            }
            HeaderError::Layout(e) => write!(f, "{e}"),
            HeaderError::Mem(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for HeaderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HeaderError::Layout(e) => Some(e),
            HeaderError::Mem(e) => Some(e),
            _ => None,
        }
    }
}

impl From<LayoutError> for HeaderError {
    fn from(e: LayoutError) -> Self {
        HeaderError::Layout(e)
    }
}

impl From<MemError> for HeaderError {
    fn from(e: MemError) -> Self {
        HeaderError::Mem(e)
    }
}

/// FNV-1a (32 bit) of the header fields, the checksum field taken as zero:
/// enough to catch a corrupted or half-written header (it is no defence against
/// a hostile writer, and needs not be: the guest trusts its proxy).
fn header_checksum(fields: &[u8]) -> u32 {
    let mut h = 0x811c_9dc5u32;
    for (i, &b) in fields.iter().enumerate() {
        let b = if (OFF_CHECKSUM..OFF_CHECKSUM + 4).contains(&i) { 0 } else { b };
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    h
}

/// Seals a header image: writes the checksum of its first `fields_len` bytes (the
/// field as written, clamped to `HEADER_FIELDS_LEN..=HEADER_SIZE`), whatever the
/// other fields say. For tests and fuzzing: an image sealed so is what a writer with
/// wrong fields (not a corrupted one) would produce, so it reaches the checks
/// behind the checksum.
pub fn seal_header_image(b: &mut [u8; HEADER_SIZE as usize]) {
    let len = get_u32(b, OFF_FIELDS_LEN).clamp(HEADER_FIELDS_LEN, HEADER_SIZE) as usize;
    let sum = header_checksum(&b[..len]);
    b[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
}

fn get_u16(b: &[u8; HEADER_SIZE as usize], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn get_u32(b: &[u8; HEADER_SIZE as usize], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn get_u64(b: &[u8; HEADER_SIZE as usize], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

fn align_up(value: u64, align: u64) -> u64 {
    // Callers keep `value` far below u64::MAX (region sizes are < 2^32).
    value.div_ceil(align) * align
}

/// The validated layout of a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionLayout {
    // INVARIANT: satisfies every rule of `validate` (page size, region size,
    // ring entries, every area page-aligned, in bounds and disjoint, heap
    // non-empty), so every `offset + size` fits a `u32`.
    region_size: u64,
    page_size: u64,
    flags: RegionFlags,
    /// The rx and tx ring of each queue pair; `rings[..queue_pairs]` are the region's,
    /// the rest are zero.
    rings: [(RingArea, RingArea); MAX_QUEUE_PAIRS as usize],
    queue_pairs: u32,
    status_offset: u32,
    heap: Area,
}

/// A queue pair's rings that are not there (beyond `queue_pairs`).
const NO_RINGS: (RingArea, RingArea) = (RingArea { offset: 0, entries: 0 }, RingArea { offset: 0, entries: 0 });

/// The header fields of a layout: [`HeaderFields::len`] bytes (84 for one queue pair,
/// contract 1.0; more for more pairs, 1.1). Dereferences to those bytes.
#[derive(Clone, Copy)]
pub struct HeaderFields {
    bytes: [u8; MAX_HEADER_FIELDS_LEN as usize],
    len: usize,
}

impl std::ops::Deref for HeaderFields {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl RegionLayout {
    /// Where each queue pair's rx and tx ring start, and where the heap starts: the
    /// rings follow the header page in pair order, each page aligned.
    fn offsets(
        page_size: u64,
        rx_entries: u32,
        tx_entries: u32,
        queue_pairs: u32,
    ) -> ([(u64, u64); MAX_QUEUE_PAIRS as usize], u64) {
        let mut offsets = [(0u64, 0u64); MAX_QUEUE_PAIRS as usize];
        let mut next = align_up(HEADER_SIZE as u64, page_size);
        for pair in offsets.iter_mut().take(queue_pairs as usize) {
            let rx_offset = next;
            let tx_offset = align_up(rx_offset + DescRing::bytes_for(rx_entries), page_size);
            next = align_up(tx_offset + DescRing::bytes_for(tx_entries), page_size);
            *pair = (rx_offset, tx_offset);
        }
        (offsets, next)
    }

    /// The smallest region of `page_size` pages whose heap holds `heap_bytes` (a
    /// guest's pool plan) next to the header and one ring pair of these sizes; `None`
    /// beyond [`MAX_REGION_SIZE`] or for sizes [`new`](Self::new) refuses.
    pub fn size_for_heap(page_size: u64, rx_entries: u32, tx_entries: u32, heap_bytes: u64) -> Option<u64> {
        Self::size_for_heap_with_pairs(page_size, rx_entries, tx_entries, 1, heap_bytes)
    }

    /// [`size_for_heap`](Self::size_for_heap) for a region of `queue_pairs` ring pairs.
    pub fn size_for_heap_with_pairs(
        page_size: u64,
        rx_entries: u32,
        tx_entries: u32,
        queue_pairs: u32,
        heap_bytes: u64,
    ) -> Option<u64> {
        check_page_size(page_size).ok()?;
        check_ring_entries(AreaKind::RxRing, rx_entries).ok()?;
        check_ring_entries(AreaKind::TxRing, tx_entries).ok()?;
        check_queue_pairs(queue_pairs).ok()?;
        let (_, heap_offset) = Self::offsets(page_size, rx_entries, tx_entries, queue_pairs);
        let size = align_up(heap_offset.checked_add(heap_bytes.max(1))?.min(u64::MAX - page_size), page_size);
        (size <= MAX_REGION_SIZE).then_some(size)
    }

    /// Lays out a region with one queue pair: header page, rx ring, tx ring, each
    /// page-aligned, and the rest as heap.
    pub fn new(
        region_size: u64,
        page_size: u64,
        rx_entries: u32,
        tx_entries: u32,
        flags: RegionFlags,
    ) -> Result<Self, LayoutError> {
        Self::with_queue_pairs(region_size, page_size, rx_entries, tx_entries, 1, flags)
    }

    /// Lays out a region with `queue_pairs` rx/tx ring pairs (1..=[`MAX_QUEUE_PAIRS`]):
    /// header page, rx 0, tx 0, rx 1, tx 1, ..., each page-aligned, and the rest as heap.
    pub fn with_queue_pairs(
        region_size: u64,
        page_size: u64,
        rx_entries: u32,
        tx_entries: u32,
        queue_pairs: u32,
        flags: RegionFlags,
    ) -> Result<Self, LayoutError> {
        check_page_size(page_size)?;
        check_region_size(region_size, page_size)?;
        check_ring_entries(AreaKind::RxRing, rx_entries)?;
        check_ring_entries(AreaKind::TxRing, tx_entries)?;
        check_queue_pairs(queue_pairs)?;
        // Every value is below `region_size <= MAX_REGION_SIZE < 2^32` once the end
        // is checked against it.
        let to_u32 = |v: u64| u32::try_from(v).map_err(|_| LayoutError::RegionTooLarge { region_size });
        let mut rings = [NO_RINGS; MAX_QUEUE_PAIRS as usize];
        let (offsets, heap_offset) = Self::offsets(page_size, rx_entries, tx_entries, queue_pairs);
        if heap_offset >= region_size {
            return Err(LayoutError::RegionTooSmall {
                region_size,
                needed: heap_offset + page_size,
            });
        }
        for (ring, &(rx, tx)) in rings.iter_mut().zip(&offsets).take(queue_pairs as usize) {
            *ring = (
                RingArea { offset: to_u32(rx)?, entries: rx_entries },
                RingArea { offset: to_u32(tx)?, entries: tx_entries },
            );
        }
        let layout = RegionLayout {
            region_size,
            page_size,
            flags,
            rings,
            queue_pairs,
            status_offset: STATUS_BLOCK_OFFSET,
            heap: Area {
                offset: to_u32(heap_offset)?,
                size: to_u32(region_size - heap_offset)?,
            },
        };
        layout.validate()?;
        Ok(layout)
    }

    /// A layout from its parts: a copy of a layout validated elsewhere (the guest
    /// plugins hand one another a region's layout as plain numbers), checked again by
    /// the same rules as a header. `rings` holds one (rx, tx) entry per queue pair.
    pub fn from_parts(
        region_size: u64,
        page_size: u64,
        flags: RegionFlags,
        rings: &[(RingArea, RingArea)],
        status_offset: u32,
        heap: Area,
    ) -> Result<Self, LayoutError> {
        let queue_pairs = u32::try_from(rings.len()).unwrap_or(u32::MAX);
        check_queue_pairs(queue_pairs)?;
        let mut all = [NO_RINGS; MAX_QUEUE_PAIRS as usize];
        all[..rings.len()].copy_from_slice(rings);
        let layout = RegionLayout { region_size, page_size, flags, rings: all, queue_pairs, status_offset, heap };
        layout.validate()?;
        Ok(layout)
    }

    /// Size of the region in bytes.
    pub fn region_size(&self) -> u64 {
        self.region_size
    }
    /// Page size of the backing.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }
    /// Flags.
    pub fn flags(&self) -> RegionFlags {
        self.flags
    }
    /// The rx descriptor ring (proxy to guest) of queue pair 0.
    pub fn rx_ring(&self) -> RingArea {
        self.rings[0].0
    }
    /// The tx descriptor ring (guest to proxy) of queue pair 0.
    pub fn tx_ring(&self) -> RingArea {
        self.rings[0].1
    }
    /// How many rx/tx ring pairs the region holds (1..=[`MAX_QUEUE_PAIRS`]).
    pub fn queue_pairs(&self) -> u32 {
        self.queue_pairs
    }
    /// The rx and tx ring of queue pair `pair`, if the region has it.
    pub fn rings_of(&self, pair: u32) -> Option<(RingArea, RingArea)> {
        if pair < self.queue_pairs {
            self.rings.get(pair as usize).copied()
        } else {
            None
        }
    }
    /// Offset of the status block.
    pub fn status_offset(&self) -> u32 {
        self.status_offset
    }
    /// The heap.
    pub fn heap(&self) -> Area {
        self.heap
    }

    fn validate(&self) -> Result<(), LayoutError> {
        check_page_size(self.page_size)?;
        check_region_size(self.region_size, self.page_size)?;
        check_queue_pairs(self.queue_pairs)?;
        let pairs = &self.rings[..self.queue_pairs as usize];
        for &(rx, tx) in pairs {
            check_ring_entries(AreaKind::RxRing, rx.entries)?;
            check_ring_entries(AreaKind::TxRing, tx.entries)?;
        }
        let status_ok = self.status_offset.is_multiple_of(CACHE_LINE)
            && self.status_offset >= HEADER_FIELDS_LEN
            && self.status_offset as u64 + STATUS_BLOCK_SIZE as u64 <= HEADER_SIZE as u64;
        if !status_ok {
            return Err(LayoutError::StatusBlock {
                offset: self.status_offset,
            });
        }
        if self.heap.size == 0 {
            return Err(LayoutError::HeapEmpty);
        }
        // On the stack: this runs for every header a guest reads (and in the fuzzers).
        let mut areas = [(AreaKind::Header, Area { offset: 0, size: 0 }); 2 + 2 * MAX_QUEUE_PAIRS as usize];
        areas[0] = (AreaKind::Header, Area { offset: 0, size: HEADER_SIZE });
        for (i, &(rx, tx)) in pairs.iter().enumerate() {
            areas[1 + 2 * i] = (AreaKind::RxRing, rx.area());
            areas[2 + 2 * i] = (AreaKind::TxRing, tx.area());
        }
        areas[1 + 2 * pairs.len()] = (AreaKind::Heap, self.heap);
        let areas = &areas[..2 + 2 * pairs.len()];
        for &(kind, area) in &areas[1..] {
            if !(area.offset as u64).is_multiple_of(self.page_size) {
                return Err(LayoutError::AreaMisaligned {
                    area: kind,
                    offset: area.offset,
                    page_size: self.page_size,
                });
            }
            if area.end() > self.region_size {
                return Err(LayoutError::AreaOutOfBounds {
                    area: kind,
                    offset: area.offset,
                    size: area.size,
                    region_size: self.region_size,
                });
            }
        }
        for (i, &(a, area_a)) in areas.iter().enumerate() {
            for &(b, area_b) in &areas[i + 1..] {
                if area_a.overlaps(&area_b) {
                    return Err(LayoutError::AreasOverlap { a, b });
                }
            }
        }
        Ok(())
    }

    /// The header fields describing this layout: contract 1.0 (84 bytes) for one
    /// queue pair, 1.1 for more.
    pub fn header_bytes(&self) -> HeaderFields {
        let len = self.fields_len();
        let minor: u16 = if self.queue_pairs == 1 { 0 } else { 1 };
        let mut b = [0u8; MAX_HEADER_FIELDS_LEN as usize];
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(OFF_MAGIC, &REGION_MAGIC);
        put(OFF_MAJOR, &CONTRACT_VERSION.major.to_le_bytes());
        put(OFF_MINOR, &minor.to_le_bytes());
        put(OFF_HEADER_SIZE, &HEADER_SIZE.to_le_bytes());
        put(OFF_FIELDS_LEN, &len.to_le_bytes());
        put(OFF_REGION_SIZE, &self.region_size.to_le_bytes());
        put(OFF_PAGE_SIZE, &self.page_size.to_le_bytes());
        put(OFF_FLAGS, &self.flags.bits().to_le_bytes());
        put(OFF_STATUS_OFFSET, &self.status_offset.to_le_bytes());
        put(OFF_STATUS_SIZE, &STATUS_BLOCK_SIZE.to_le_bytes());
        let mut put_ring = |off: usize, ring: RingArea| {
            put(off, &ring.offset.to_le_bytes());
            put(off + 4, &ring.entries.to_le_bytes());
            put(off + 8, &ring.area().size.to_le_bytes());
        };
        put_ring(OFF_RX, self.rings[0].0);
        put_ring(OFF_TX, self.rings[0].1);
        if self.queue_pairs > 1 {
            for (i, &(rx, tx)) in self.rings[1..self.queue_pairs as usize].iter().enumerate() {
                let off = OFF_PAIRS + i * QUEUE_PAIR_FIELDS_LEN as usize;
                put_ring(off, rx);
                put_ring(off + 12, tx);
            }
        }
        let mut put = |off: usize, bytes: &[u8]| b[off..off + bytes.len()].copy_from_slice(bytes);
        put(OFF_HEAP, &self.heap.offset.to_le_bytes());
        put(OFF_HEAP + 4, &self.heap.size.to_le_bytes());
        if self.queue_pairs > 1 {
            put(OFF_QUEUE_PAIRS, &self.queue_pairs.to_le_bytes());
        }
        let sum = header_checksum(&b[..len as usize]);
        b[OFF_CHECKSUM..OFF_CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
        HeaderFields { bytes: b, len: len as usize }
    }

    /// Bytes of header fields of this layout.
    fn fields_len(&self) -> u32 {
        if self.queue_pairs == 1 {
            HEADER_FIELDS_LEN
        } else {
            HEADER_FIELDS_LEN_1_1 + QUEUE_PAIR_FIELDS_LEN * (self.queue_pairs - 1)
        }
    }

    /// Writes the header (proxy side, once, before the memfd is passed). The
    /// status block is left alone.
    pub fn write_header(&self, mem: &SharedMem<'_>) -> Result<(), MemError> {
        mem.write_bytes(0, &self.header_bytes())
    }

    /// Copies the header out of `mem` and validates all of it against the size
    /// of the mapping (guest side).
    pub fn read_header(mem: &SharedMem<'_>) -> Result<Self, HeaderError> {
        if mem.len() < HEADER_SIZE as usize {
            return Err(HeaderError::TooSmall { len: mem.len() });
        }
        let mut b = [0u8; HEADER_SIZE as usize];
        mem.read_bytes(0, &mut b)?;
        Self::parse_header(&b, mem.len() as u64)
    }

    /// Validates a header image (the first [`HEADER_SIZE`] bytes of a region)
    /// for a mapping of `mapped_len` bytes.
    pub fn parse_header(b: &[u8; HEADER_SIZE as usize], mapped_len: u64) -> Result<Self, HeaderError> {
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[OFF_MAGIC..OFF_MAGIC + 8]);
        if magic != REGION_MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let version = Version {
            major: get_u16(b, OFF_MAJOR),
            minor: get_u16(b, OFF_MINOR),
        };
        if version.major != CONTRACT_VERSION.major {
            return Err(HeaderError::UnsupportedVersion { version });
        }
        let header_size = get_u32(b, OFF_HEADER_SIZE);
        if header_size != HEADER_SIZE {
            return Err(HeaderError::HeaderSize { header_size });
        }
        let status_offset = get_u32(b, OFF_STATUS_OFFSET);
        let fields_len = get_u32(b, OFF_FIELDS_LEN);
        // The checksum covers `fields_len` bytes, which must include ours and
        // stay clear of the status block (whose contents change).
        if fields_len < HEADER_FIELDS_LEN || fields_len > status_offset.min(HEADER_SIZE) {
            return Err(HeaderError::FieldsLen { fields_len });
        }
        let stored = get_u32(b, OFF_CHECKSUM);
        let computed = header_checksum(&b[..fields_len as usize]);
        if stored != computed {
            return Err(HeaderError::Checksum { stored, computed });
        }
        let region_size = get_u64(b, OFF_REGION_SIZE);
        if region_size != mapped_len {
            return Err(HeaderError::RegionSizeMismatch {
                header: region_size,
                mapped: mapped_len,
            });
        }
        let status_size = get_u32(b, OFF_STATUS_SIZE);
        if status_size != STATUS_BLOCK_SIZE {
            return Err(HeaderError::StatusSize { size: status_size });
        }
        let ring_at = |off: usize, kind: AreaKind| -> Result<RingArea, HeaderError> {
            let ring = RingArea {
                offset: get_u32(b, off),
                entries: get_u32(b, off + 4),
            };
            check_ring_entries(kind, ring.entries)?;
            let size = get_u32(b, off + 8);
            let expected = DescRing::bytes_for(ring.entries);
            if size as u64 != expected {
                return Err(HeaderError::RingSize {
                    ring: kind,
                    size,
                    expected,
                });
            }
            Ok(ring)
        };
        let mut rings = [NO_RINGS; MAX_QUEUE_PAIRS as usize];
        rings[0] = (ring_at(OFF_RX, AreaKind::RxRing)?, ring_at(OFF_TX, AreaKind::TxRing)?);
        // The pair count is a 1.1 field: a 1.0 header (84 bytes of fields) has one pair.
        let queue_pairs = if fields_len >= HEADER_FIELDS_LEN_1_1 { get_u32(b, OFF_QUEUE_PAIRS) } else { 1 };
        check_queue_pairs(queue_pairs)?;
        let needed = HEADER_FIELDS_LEN_1_1 + QUEUE_PAIR_FIELDS_LEN * (queue_pairs - 1);
        if queue_pairs > 1 && fields_len < needed {
            return Err(HeaderError::FieldsLen { fields_len });
        }
        for (i, pair) in rings.iter_mut().enumerate().take(queue_pairs as usize).skip(1) {
            let off = OFF_PAIRS + (i - 1) * QUEUE_PAIR_FIELDS_LEN as usize;
            *pair = (ring_at(off, AreaKind::RxRing)?, ring_at(off + 12, AreaKind::TxRing)?);
        }
        let layout = RegionLayout {
            region_size,
            page_size: get_u64(b, OFF_PAGE_SIZE),
            flags: RegionFlags::from_bits_retain(get_u32(b, OFF_FLAGS)),
            rings,
            queue_pairs,
            status_offset,
            heap: Area {
                offset: get_u32(b, OFF_HEAP),
                size: get_u32(b, OFF_HEAP + 4),
            },
        };
        layout.validate()?;
        Ok(layout)
    }
}

fn check_page_size(page_size: u64) -> Result<(), LayoutError> {
    if page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
        Ok(())
    } else {
        Err(LayoutError::PageSize { page_size })
    }
}

fn check_region_size(region_size: u64, page_size: u64) -> Result<(), LayoutError> {
    if region_size > MAX_REGION_SIZE {
        return Err(LayoutError::RegionTooLarge { region_size });
    }
    if !region_size.is_multiple_of(page_size) {
        return Err(LayoutError::RegionNotPageMultiple {
            region_size,
            page_size,
        });
    }
    Ok(())
}

fn check_queue_pairs(queue_pairs: u32) -> Result<(), LayoutError> {
    if (1..=MAX_QUEUE_PAIRS).contains(&queue_pairs) {
        Ok(())
    } else {
        Err(LayoutError::QueuePairs { queue_pairs })
    }
}

fn check_ring_entries(ring: AreaKind, entries: u32) -> Result<(), LayoutError> {
    if entries.is_power_of_two() && (MIN_DESC_RING_ENTRIES..=MAX_DESC_RING_ENTRIES).contains(&entries) {
        Ok(())
    } else {
        Err(LayoutError::RingEntries { ring, entries })
    }
}

/// The status block of a region: link state written by the proxy, the rx
/// wake-up request written by the guest. Accessors only: every field is an
/// atomic the other side may change at any time.
#[derive(Clone, Copy, Debug)]
pub struct StatusBlock<'a> {
    link_up: &'a AtomicU32,
    link_speed_mbps: &'a AtomicU32,
    proxy_generation: &'a AtomicU32,
    rx_wakeup_requested: [&'a AtomicU32; MAX_QUEUE_PAIRS as usize],
}

// Every queue pair's wake-up flag fits the guest-written half of the status block.
const _: () = assert!(STATUS_RX_WAKEUP + 4 * MAX_QUEUE_PAIRS <= STATUS_BLOCK_SIZE);
// The header's fields with the largest number of queue pairs end before the status block.
const _: () = assert!(MAX_HEADER_FIELDS_LEN < STATUS_BLOCK_OFFSET);

impl<'a> StatusBlock<'a> {
    /// The status block at `offset` in `mem`.
    pub fn new(mem: &SharedMem<'a>, offset: u32) -> Result<Self, MemError> {
        let at = |field: u32| mem.atomic_u32(offset as usize + field as usize);
        // Touch the last byte too, so a block that does not fit is refused whole.
        mem.read_bytes(offset as usize + STATUS_BLOCK_SIZE as usize - 1, &mut [0])?;
        let first_wakeup = at(STATUS_RX_WAKEUP)?;
        let mut rx_wakeup_requested = [first_wakeup; MAX_QUEUE_PAIRS as usize];
        for (q, flag) in rx_wakeup_requested.iter_mut().enumerate().skip(1) {
            *flag = at(STATUS_RX_WAKEUP + 4 * q as u32)?;
        }
        Ok(StatusBlock {
            link_up: at(STATUS_LINK_UP)?,
            link_speed_mbps: at(STATUS_LINK_SPEED)?,
            proxy_generation: at(STATUS_PROXY_GENERATION)?,
            rx_wakeup_requested,
        })
    }

    /// The status block of `layout`.
    pub fn from_layout(mem: &SharedMem<'a>, layout: &RegionLayout) -> Result<Self, MemError> {
        Self::new(mem, layout.status_offset())
    }

    /// 1 when the link is up (proxy-written).
    pub fn link_up(&self) -> &'a AtomicU32 {
        self.link_up
    }
    /// Link speed in Mbit/s (proxy-written).
    pub fn link_speed_mbps(&self) -> &'a AtomicU32 {
        self.link_speed_mbps
    }
    /// Bumped by the proxy whenever it resets the queue (proxy-written).
    pub fn proxy_generation(&self) -> &'a AtomicU32 {
        self.proxy_generation
    }
    /// Non-zero when the guest wants an rx wake-up on queue pair 0 (guest-written).
    pub fn rx_wakeup_requested(&self) -> &'a AtomicU32 {
        self.rx_wakeup_requested[0]
    }
    /// Non-zero when the guest wants an rx wake-up on queue pair `pair`
    /// (guest-written); `None` beyond [`MAX_QUEUE_PAIRS`].
    pub fn rx_wakeup_requested_of(&self, pair: u32) -> Option<&'a AtomicU32> {
        self.rx_wakeup_requested.get(pair as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::HeapMem;
    use std::sync::atomic::Ordering::SeqCst;

    const MIB: u64 = 1 << 20;

    fn layout_4k() -> RegionLayout {
        RegionLayout::new(4 * MIB, 4096, 1024, 512, RegionFlags::empty()).unwrap()
    }

    #[test]
    fn size_for_heap_is_the_smallest_region_that_holds_the_plan() {
        for page in [4096u64, 2 << 20] {
            for (rx, tx) in [(1024u32, 1024u32), (64, 4096), (65536, 65536)] {
                for heap in [1u64, 4096, 1_234_567, 300 << 20] {
                    let size = RegionLayout::size_for_heap(page, rx, tx, heap).unwrap();
                    let l = RegionLayout::new(size, page, rx, tx, RegionFlags::empty()).unwrap();
                    assert!(l.heap().size as u64 >= heap, "page {page} heap {heap}");
                    // One page less no longer holds it.
                    let smaller = RegionLayout::new(size - page, page, rx, tx, RegionFlags::empty());
                    assert!(smaller.is_err() || (smaller.unwrap().heap().size as u64) < heap);
                }
            }
        }
        // A header page; 1024 descriptors of 16 bytes and the index blocks: five 4 KiB
        // pages per ring; one page of heap.
        assert_eq!(RegionLayout::size_for_heap(4096, 1024, 1024, 4096), Some(12 * 4096));
        assert_eq!(RegionLayout::size_for_heap(4096, 1024, 1024, 0), Some(12 * 4096));
        assert_eq!(RegionLayout::size_for_heap(4096, 1024, 1024, MAX_REGION_SIZE), None);
        assert_eq!(RegionLayout::size_for_heap(4096, 1024, 1024, u64::MAX), None);
        assert_eq!(RegionLayout::size_for_heap(4096, 1000, 1024, 4096), None);
        assert_eq!(RegionLayout::size_for_heap(3000, 1024, 1024, 4096), None);
        // Each further queue pair adds its two rings (5 pages each here).
        assert_eq!(RegionLayout::size_for_heap_with_pairs(4096, 1024, 1024, 2, 4096), Some(22 * 4096));
        let l = RegionLayout::with_queue_pairs(22 * 4096, 4096, 1024, 1024, 2, RegionFlags::empty()).unwrap();
        assert_eq!(l.heap().size, 4096);
        assert_eq!(RegionLayout::size_for_heap_with_pairs(4096, 1024, 1024, 0, 4096), None);
        assert_eq!(RegionLayout::size_for_heap_with_pairs(4096, 1024, 1024, MAX_QUEUE_PAIRS + 1, 4096), None);
    }

    #[test]
    fn a_layout_rebuilt_from_its_parts_is_the_same_and_broken_parts_are_refused() {
        let l = RegionLayout::with_queue_pairs(64 * MIB, 4096, 1024, 512, 3, RegionFlags::HUGEPAGES).unwrap();
        let rings: Vec<_> = (0..l.queue_pairs()).map(|p| l.rings_of(p).unwrap()).collect();
        let again = RegionLayout::from_parts(l.region_size(), l.page_size(), l.flags(), &rings, l.status_offset(), l.heap());
        assert_eq!(again, Ok(l));
        let parts = |rings: &[(RingArea, RingArea)], heap: Area| {
            RegionLayout::from_parts(l.region_size(), l.page_size(), l.flags(), rings, l.status_offset(), heap)
        };
        assert_eq!(parts(&[], l.heap()), Err(LayoutError::QueuePairs { queue_pairs: 0 }));
        assert_eq!(parts(&[rings[0]; MAX_QUEUE_PAIRS as usize + 1], l.heap()), Err(LayoutError::QueuePairs { queue_pairs: MAX_QUEUE_PAIRS + 1 }));
        // Two pairs on the same rings overlap; a heap over the rings overlaps them.
        assert!(parts(&[rings[0], rings[0]], l.heap()).is_err());
        assert!(parts(&rings, Area { offset: 4096, size: l.heap().size }).is_err());
    }

    #[test]
    fn layout_normal_pages() {
        let l = layout_4k();
        assert_eq!(l.rx_ring(), RingArea { offset: 4096, entries: 1024 });
        // rx ring: 256 + 16 KiB -> ends at 4096 + 16640, next page 24576.
        assert_eq!(l.tx_ring(), RingArea { offset: 24576, entries: 512 });
        assert_eq!(l.heap().offset, 24576 + 12288);
        assert_eq!(l.heap().end(), 4 * MIB);
        assert_eq!(l.status_offset(), STATUS_BLOCK_OFFSET);
        assert_eq!(l.page_size(), 4096);
        assert_eq!(l.region_size(), 4 * MIB);
        assert_eq!(l.flags(), RegionFlags::empty());
    }

    #[test]
    fn layout_hugepages() {
        let l = RegionLayout::new(64 * MIB, 2 * MIB, 65536, 65536, RegionFlags::HUGEPAGES).unwrap();
        assert_eq!(l.rx_ring().offset as u64, 2 * MIB);
        // 65536 * 16 + 256 bytes: one 2 MiB page per ring.
        assert_eq!(l.tx_ring().offset as u64, 4 * MIB);
        assert_eq!(l.heap().offset as u64, 6 * MIB);
        assert_eq!(l.heap().size as u64, 58 * MIB);
        assert!(l.flags().contains(RegionFlags::HUGEPAGES));
        let max = MAX_REGION_SIZE / (2 * MIB) * (2 * MIB);
        let big = RegionLayout::new(max, 2 * MIB, 64, 64, RegionFlags::HUGEPAGES).unwrap();
        assert_eq!(big.heap().end(), max);
        let max4k = RegionLayout::new(MAX_REGION_SIZE, 4096, 64, 64, RegionFlags::empty()).unwrap();
        assert_eq!(max4k.heap().end(), MAX_REGION_SIZE);
    }

    #[test]
    fn new_rejects_bad_parameters() {
        let f = RegionFlags::empty();
        assert_eq!(RegionLayout::new(MIB, 3000, 64, 64, f), Err(LayoutError::PageSize { page_size: 3000 }));
        assert_eq!(RegionLayout::new(MIB, 2048, 64, 64, f), Err(LayoutError::PageSize { page_size: 2048 }));
        assert_eq!(RegionLayout::new(MIB, 2 << 30, 64, 64, f), Err(LayoutError::PageSize { page_size: 2 << 30 }));
        assert_eq!(
            RegionLayout::new(1 << 32, 4096, 64, 64, f),
            Err(LayoutError::RegionTooLarge { region_size: 1 << 32 })
        );
        assert_eq!(
            RegionLayout::new(MIB + 1, 4096, 64, 64, f),
            Err(LayoutError::RegionNotPageMultiple { region_size: MIB + 1, page_size: 4096 })
        );
        assert_eq!(
            RegionLayout::new(MIB, 4096, 100, 64, f),
            Err(LayoutError::RingEntries { ring: AreaKind::RxRing, entries: 100 })
        );
        assert_eq!(
            RegionLayout::new(MIB, 4096, 64, 32, f),
            Err(LayoutError::RingEntries { ring: AreaKind::TxRing, entries: 32 })
        );
        assert_eq!(
            RegionLayout::new(MIB, 4096, 64, 131072, f),
            Err(LayoutError::RingEntries { ring: AreaKind::TxRing, entries: 131072 })
        );
        // Header page + two one-page rings: 12 KiB leaves no heap.
        assert_eq!(
            RegionLayout::new(12288, 4096, 64, 64, f),
            Err(LayoutError::RegionTooSmall { region_size: 12288, needed: 16384 })
        );
        assert!(RegionLayout::new(16384, 4096, 64, 64, f).is_ok());
        assert!(matches!(RegionLayout::new(0, 4096, 64, 64, f), Err(LayoutError::RegionTooSmall { .. })));
    }

    #[test]
    fn header_round_trip() {
        let l = layout_4k();
        let heap = HeapMem::new(l.region_size() as usize);
        let mem = heap.mem();
        l.write_header(&mem).unwrap();
        assert_eq!(RegionLayout::read_header(&mem).unwrap(), l);
        let mut magic = [0u8; 8];
        mem.read_bytes(0, &mut magic).unwrap();
        assert_eq!(&magic, b"SHMIOREG");
        // The status block is not part of the header: changing it changes nothing.
        mem.atomic_u32(STATUS_BLOCK_OFFSET as usize).unwrap().store(1, SeqCst);
        assert_eq!(RegionLayout::read_header(&mem).unwrap(), l);
        // write_header into a too-small mapping fails cleanly.
        let small = HeapMem::new(16);
        assert!(l.write_header(&small.mem()).is_err());
    }

    fn image(l: &RegionLayout) -> Box<[u8; HEADER_SIZE as usize]> {
        let mut b = Box::new([0u8; HEADER_SIZE as usize]);
        let fields = l.header_bytes();
        b[..fields.len()].copy_from_slice(&fields);
        b
    }

    /// Patches a header image and re-seals its checksum, like a buggy (but not
    /// corrupted) writer would.
    fn patched(l: &RegionLayout, f: impl FnOnce(&mut [u8; HEADER_SIZE as usize])) -> Box<[u8; HEADER_SIZE as usize]> {
        let mut b = image(l);
        f(&mut b);
        seal_header_image(&mut b);
        b
    }

    fn set32(b: &mut [u8; HEADER_SIZE as usize], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn set64(b: &mut [u8; HEADER_SIZE as usize], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn header_errors_each_reachable() {
        let l = layout_4k();
        let size = l.region_size();
        let parse = |b: &[u8; HEADER_SIZE as usize]| RegionLayout::parse_header(b, size);

        let small = HeapMem::new(100);
        assert_eq!(RegionLayout::read_header(&small.mem()), Err(HeaderError::TooSmall { len: 100 }));

        let b = patched(&l, |b| b[0] = b'X');
        assert!(matches!(parse(&b), Err(HeaderError::BadMagic { .. })));

        let b = patched(&l, |b| b[OFF_MAJOR..OFF_MAJOR + 2].copy_from_slice(&2u16.to_le_bytes()));
        let e = parse(&b).unwrap_err();
        assert_eq!(e, HeaderError::UnsupportedVersion { version: Version { major: 2, minor: 0 } });
        assert_eq!(e.to_string(), "region header: version 2.0 not supported (this build speaks 1.x)");

        // A newer minor with an extra field is accepted (its 1.1 pair count says one).
        let b = patched(&l, |b| {
            b[OFF_MINOR..OFF_MINOR + 2].copy_from_slice(&7u16.to_le_bytes());
            set32(b, OFF_FIELDS_LEN, 100);
            set32(b, OFF_QUEUE_PAIRS, 1);
            b[90] = 0x55;
        });
        assert_eq!(parse(&b), Ok(l));
        // ... and its extra field is covered by the checksum.
        let mut c = b.clone();
        c[90] = 0x56;
        assert!(matches!(parse(&c), Err(HeaderError::Checksum { .. })));

        let b = patched(&l, |b| set32(b, OFF_HEADER_SIZE, 8192));
        assert_eq!(parse(&b), Err(HeaderError::HeaderSize { header_size: 8192 }));

        let b = patched(&l, |b| set32(b, OFF_FIELDS_LEN, 80));
        assert_eq!(parse(&b), Err(HeaderError::FieldsLen { fields_len: 80 }));
        let b = patched(&l, |b| set32(b, OFF_FIELDS_LEN, STATUS_BLOCK_OFFSET + 1));
        assert_eq!(parse(&b), Err(HeaderError::FieldsLen { fields_len: STATUS_BLOCK_OFFSET + 1 }));

        let mut b = image(&l);
        b[OFF_HEAP] ^= 1;
        assert!(matches!(parse(&b), Err(HeaderError::Checksum { .. })));

        assert_eq!(
            RegionLayout::parse_header(&image(&l), size + 4096),
            Err(HeaderError::RegionSizeMismatch { header: size, mapped: size + 4096 })
        );

        let b = patched(&l, |b| set32(b, OFF_STATUS_SIZE, 128));
        assert_eq!(parse(&b), Err(HeaderError::StatusSize { size: 128 }));

        let b = patched(&l, |b| set32(b, OFF_RX + 8, 1));
        assert_eq!(parse(&b), Err(HeaderError::RingSize { ring: AreaKind::RxRing, size: 1, expected: 256 + 1024 * 16 }));

        let b = patched(&l, |b| set32(b, OFF_TX + 4, 3));
        assert_eq!(
            parse(&b),
            Err(HeaderError::Layout(LayoutError::RingEntries { ring: AreaKind::TxRing, entries: 3 }))
        );

        let b = patched(&l, |b| set64(b, OFF_PAGE_SIZE, 4097));
        assert_eq!(parse(&b), Err(HeaderError::Layout(LayoutError::PageSize { page_size: 4097 })));

        let b = patched(&l, |b| set64(b, OFF_PAGE_SIZE, 1 << 30));
        assert!(matches!(
            parse(&b),
            Err(HeaderError::Layout(LayoutError::RegionNotPageMultiple { .. }))
        ));

        let b = patched(&l, |b| set64(b, OFF_REGION_SIZE, 1 << 33));
        assert_eq!(
            RegionLayout::parse_header(&b, 1 << 33),
            Err(HeaderError::Layout(LayoutError::RegionTooLarge { region_size: 1 << 33 }))
        );

        for bad in [STATUS_BLOCK_OFFSET + 4, 4096 - 128] {
            let b = patched(&l, |b| set32(b, OFF_STATUS_OFFSET, bad));
            assert_eq!(parse(&b), Err(HeaderError::Layout(LayoutError::StatusBlock { offset: bad })));
        }
        // A status block over the header fields: fields_len catches it first.
        let b = patched(&l, |b| set32(b, OFF_STATUS_OFFSET, 64));
        assert_eq!(parse(&b), Err(HeaderError::FieldsLen { fields_len: HEADER_FIELDS_LEN }));

        let b = patched(&l, |b| set32(b, OFF_HEAP + 4, 0));
        assert_eq!(parse(&b), Err(HeaderError::Layout(LayoutError::HeapEmpty)));

        let b = patched(&l, |b| set32(b, OFF_TX, 24576 + 100));
        assert_eq!(
            parse(&b),
            Err(HeaderError::Layout(LayoutError::AreaMisaligned {
                area: AreaKind::TxRing,
                offset: 24676,
                page_size: 4096
            }))
        );

        let b = patched(&l, |b| set32(b, OFF_HEAP + 4, l.heap().size + 4096));
        assert!(matches!(
            parse(&b),
            Err(HeaderError::Layout(LayoutError::AreaOutOfBounds { area: AreaKind::Heap, .. }))
        ));

        let b = patched(&l, |b| set32(b, OFF_TX, 4096));
        assert_eq!(
            parse(&b),
            Err(HeaderError::Layout(LayoutError::AreasOverlap { a: AreaKind::RxRing, b: AreaKind::TxRing }))
        );
        let b = patched(&l, |b| set32(b, OFF_RX, 0));
        assert_eq!(
            parse(&b),
            Err(HeaderError::Layout(LayoutError::AreasOverlap { a: AreaKind::Header, b: AreaKind::RxRing }))
        );
        let b = patched(&l, |b| set32(b, OFF_HEAP, 0));
        assert!(matches!(
            parse(&b),
            Err(HeaderError::Layout(LayoutError::AreasOverlap { a: AreaKind::Header, .. }))
        ));
    }

    #[test]
    fn queue_pairs_follow_each_other_and_round_trip() {
        let l = RegionLayout::with_queue_pairs(4 * MIB, 4096, 1024, 512, 3, RegionFlags::empty()).unwrap();
        assert_eq!(l.queue_pairs(), 3);
        // Pair 0 is where a one-pair region has it.
        assert_eq!(l.rings_of(0), Some((layout_4k().rx_ring(), layout_4k().tx_ring())));
        assert_eq!(l.rx_ring(), layout_4k().rx_ring());
        // rx: 5 pages (256 + 16 KiB), tx: 3 pages (256 + 8 KiB); each pair 8 pages.
        assert_eq!(l.rings_of(1), Some((RingArea { offset: 36864, entries: 1024 }, RingArea { offset: 57344, entries: 512 })));
        assert_eq!(l.rings_of(2).unwrap().0.offset, 36864 + 32768);
        assert_eq!(l.rings_of(3), None);
        assert_eq!(l.heap().offset, 4096 + 3 * 32768);
        assert_eq!(l.heap().end(), 4 * MIB);
        let fields = l.header_bytes();
        assert_eq!(fields.len(), 88 + 2 * 24);
        let heap = HeapMem::new(l.region_size() as usize);
        let mem = heap.mem();
        l.write_header(&mem).unwrap();
        assert_eq!(RegionLayout::read_header(&mem).unwrap(), l);
        let mut minor = [0u8; 2];
        mem.read_bytes(OFF_MINOR, &mut minor).unwrap();
        assert_eq!(u16::from_le_bytes(minor), 1);
        // The largest number of pairs fits the header fields.
        let max = RegionLayout::with_queue_pairs(4 * MIB, 4096, 64, 64, MAX_QUEUE_PAIRS, RegionFlags::empty()).unwrap();
        assert_eq!(max.header_bytes().len(), MAX_HEADER_FIELDS_LEN as usize);
        let heap = HeapMem::new(max.region_size() as usize);
        max.write_header(&heap.mem()).unwrap();
        assert_eq!(RegionLayout::read_header(&heap.mem()).unwrap(), max);
    }

    #[test]
    fn one_pair_is_written_as_contract_1_0() {
        // Byte for byte what a 1.0 proxy wrote: 84 bytes of fields, minor 0.
        let fields = layout_4k().header_bytes();
        assert_eq!(fields.len(), HEADER_FIELDS_LEN as usize);
        assert_eq!(&fields[OFF_MINOR..OFF_MINOR + 2], &[0, 0]);
        assert_eq!(layout_4k().queue_pairs(), 1);
        assert_eq!(layout_4k().rings_of(1), None);
    }

    #[test]
    fn a_1_0_reader_sees_pair_0_of_a_1_1_header() {
        // What a 1.0 guest checks: everything below byte 84, the checksum over
        // fields_len. It finds pair 0's rings and the heap where a 1.1 reader does.
        let l = RegionLayout::with_queue_pairs(4 * MIB, 4096, 1024, 512, 2, RegionFlags::empty()).unwrap();
        let b = image(&l);
        assert_eq!(get_u32(&b, OFF_RX), l.rx_ring().offset);
        assert_eq!(get_u32(&b, OFF_TX), l.tx_ring().offset);
        assert_eq!(get_u32(&b, OFF_HEAP), l.heap().offset);
        assert_eq!(get_u32(&b, OFF_CHECKSUM), header_checksum(&b[..get_u32(&b, OFF_FIELDS_LEN) as usize]));
    }

    #[test]
    fn queue_pair_errors() {
        let f = RegionFlags::empty();
        for bad in [0, MAX_QUEUE_PAIRS + 1] {
            assert_eq!(
                RegionLayout::with_queue_pairs(4 * MIB, 4096, 64, 64, bad, f),
                Err(LayoutError::QueuePairs { queue_pairs: bad })
            );
        }
        // Header page, then 2 pages per pair: 3 pairs and a heap page need 8 pages.
        assert_eq!(
            RegionLayout::with_queue_pairs(7 * 4096, 4096, 64, 64, 3, f),
            Err(LayoutError::RegionTooSmall { region_size: 7 * 4096, needed: 8 * 4096 })
        );
        let l = RegionLayout::with_queue_pairs(4 * MIB, 4096, 1024, 512, 2, f).unwrap();
        let size = l.region_size();
        let parse = |b: &[u8; HEADER_SIZE as usize]| RegionLayout::parse_header(b, size);
        let b = patched(&l, |b| set32(b, OFF_QUEUE_PAIRS, 0));
        assert_eq!(parse(&b), Err(HeaderError::Layout(LayoutError::QueuePairs { queue_pairs: 0 })));
        let b = patched(&l, |b| set32(b, OFF_QUEUE_PAIRS, MAX_QUEUE_PAIRS + 1));
        assert_eq!(parse(&b), Err(HeaderError::Layout(LayoutError::QueuePairs { queue_pairs: MAX_QUEUE_PAIRS + 1 })));
        // Three pairs announced, fields for two.
        let b = patched(&l, |b| set32(b, OFF_QUEUE_PAIRS, 3));
        assert_eq!(parse(&b), Err(HeaderError::FieldsLen { fields_len: 112 }));
        // Pair 1's rings are checked like pair 0's.
        let b = patched(&l, |b| set32(b, OFF_PAIRS + 4, 100));
        assert_eq!(parse(&b), Err(HeaderError::Layout(LayoutError::RingEntries { ring: AreaKind::RxRing, entries: 100 })));
        let b = patched(&l, |b| set32(b, OFF_PAIRS + 12 + 8, 1));
        assert_eq!(parse(&b), Err(HeaderError::RingSize { ring: AreaKind::TxRing, size: 1, expected: 256 + 512 * 16 }));
        let b = patched(&l, |b| set32(b, OFF_PAIRS, l.rx_ring().offset));
        assert_eq!(parse(&b), Err(HeaderError::Layout(LayoutError::AreasOverlap { a: AreaKind::RxRing, b: AreaKind::RxRing })));
        let b = patched(&l, |b| set32(b, OFF_PAIRS + 12, l.heap().offset));
        assert_eq!(parse(&b), Err(HeaderError::Layout(LayoutError::AreasOverlap { a: AreaKind::TxRing, b: AreaKind::Heap })));
        let b = patched(&l, |b| set32(b, OFF_PAIRS + 12, (size - 4096) as u32));
        assert!(matches!(parse(&b), Err(HeaderError::Layout(LayoutError::AreaOutOfBounds { area: AreaKind::TxRing, .. }))));
        assert!(!LayoutError::QueuePairs { queue_pairs: 0 }.to_string().is_empty());
    }

    #[test]
    fn each_queue_pair_has_its_wakeup_flag() {
        let l = layout_4k();
        let heap = HeapMem::new(l.region_size() as usize);
        let mem = heap.mem();
        let status = StatusBlock::from_layout(&mem, &l).unwrap();
        for q in 0..MAX_QUEUE_PAIRS {
            status.rx_wakeup_requested_of(q).unwrap().store(q + 1, SeqCst);
        }
        assert!(status.rx_wakeup_requested_of(MAX_QUEUE_PAIRS).is_none());
        assert!(std::ptr::eq(status.rx_wakeup_requested(), status.rx_wakeup_requested_of(0).unwrap()));
        for q in 0..MAX_QUEUE_PAIRS {
            let at = (STATUS_BLOCK_OFFSET + STATUS_RX_WAKEUP + 4 * q) as usize;
            assert_eq!(mem.atomic_u32(at).unwrap().load(SeqCst), q + 1);
        }
        // The proxy-written half is untouched.
        assert_eq!(mem.atomic_u32(STATUS_BLOCK_OFFSET as usize).unwrap().load(SeqCst), 0);
    }

    #[test]
    fn error_messages() {
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(HeaderError::TooSmall { len: 1 }),
            Box::new(HeaderError::BadMagic { found: *b"ABCDEFGH" }),
            Box::new(HeaderError::HeaderSize { header_size: 1 }),
            Box::new(HeaderError::FieldsLen { fields_len: 1 }),
            Box::new(HeaderError::Checksum { stored: 1, computed: 2 }),
            Box::new(HeaderError::RegionSizeMismatch { header: 1, mapped: 2 }),
            Box::new(HeaderError::RingSize { ring: AreaKind::TxRing, size: 1, expected: 2 }),
            Box::new(HeaderError::StatusSize { size: 1 }),
            Box::new(HeaderError::Layout(LayoutError::HeapEmpty)),
            Box::new(HeaderError::Mem(MemError::Misaligned { offset: 1, align: 2 })),
            Box::new(LayoutError::PageSize { page_size: 1 }),
            Box::new(LayoutError::RegionTooLarge { region_size: 1 }),
            Box::new(LayoutError::RegionNotPageMultiple { region_size: 1, page_size: 2 }),
            Box::new(LayoutError::RegionTooSmall { region_size: 1, needed: 2 }),
            Box::new(LayoutError::RingEntries { ring: AreaKind::RxRing, entries: 1 }),
            Box::new(LayoutError::StatusBlock { offset: 1 }),
            Box::new(LayoutError::AreaMisaligned { area: AreaKind::Heap, offset: 1, page_size: 2 }),
            Box::new(LayoutError::AreaOutOfBounds { area: AreaKind::StatusBlock, offset: 1, size: 2, region_size: 3 }),
            Box::new(LayoutError::AreasOverlap { a: AreaKind::Header, b: AreaKind::Heap }),
        ];
        for e in errors {
            assert!(!e.to_string().is_empty());
        }
        assert!(HeaderError::BadMagic { found: *b"ABCDEFGH" }.to_string().contains("ABCDEFGH"));
        assert!(HeaderError::Layout(LayoutError::HeapEmpty).to_string().starts_with("region header: "));
    }

    fn fnv1a(bytes: &[u8]) -> u32 {
        bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ b as u32).wrapping_mul(0x0100_0193))
    }

    #[test]
    fn checksum_is_fnv1a() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        let mut fields = [7u8; 30];
        let with_zero_sum = {
            let mut z = fields;
            z[OFF_CHECKSUM..OFF_CHECKSUM + 4].fill(0);
            fnv1a(&z)
        };
        fields[OFF_CHECKSUM] = 99;
        assert_eq!(header_checksum(&fields), with_zero_sum);
    }

    #[test]
    fn flags_and_versions() {
        let f = RegionFlags::from_bits_retain(0x11);
        assert!(f.contains(RegionFlags::HUGEPAGES));
        assert!(f.has_unknown_bits());
        assert_eq!((RegionFlags::empty() | RegionFlags::HUGEPAGES).bits(), 1);
        assert!(!RegionFlags::HUGEPAGES.has_unknown_bits());
        assert_eq!(CONTRACT_VERSION.to_string(), "1.1");
        assert!(Version { major: 1, minor: 2 } > CONTRACT_VERSION);
        for k in [AreaKind::Header, AreaKind::StatusBlock, AreaKind::RxRing, AreaKind::TxRing, AreaKind::Heap] {
            assert!(!k.to_string().is_empty());
        }
    }

    #[test]
    fn area_overlap() {
        let a = Area { offset: 100, size: 10 };
        assert!(a.overlaps(&Area { offset: 109, size: 1 }));
        assert!(!a.overlaps(&Area { offset: 110, size: 1 }));
        assert!(!a.overlaps(&Area { offset: 90, size: 10 }));
        assert!(a.overlaps(&Area { offset: 0, size: u32::MAX }));
        assert!(!a.overlaps(&Area { offset: 105, size: 0 }));
        assert_eq!(Area { offset: u32::MAX, size: u32::MAX }.end(), 2 * u32::MAX as u64);
    }

    #[test]
    fn status_block_fields() {
        let l = layout_4k();
        let heap = HeapMem::new(l.region_size() as usize);
        let mem = heap.mem();
        let status = StatusBlock::from_layout(&mem, &l).unwrap();
        status.link_up().store(1, SeqCst);
        status.link_speed_mbps().store(25_000, SeqCst);
        status.proxy_generation().store(3, SeqCst);
        status.rx_wakeup_requested().store(1, SeqCst);
        let base = STATUS_BLOCK_OFFSET as usize;
        assert_eq!(mem.atomic_u32(base).unwrap().load(SeqCst), 1);
        assert_eq!(mem.atomic_u32(base + 4).unwrap().load(SeqCst), 25_000);
        assert_eq!(mem.atomic_u32(base + 8).unwrap().load(SeqCst), 3);
        assert_eq!(mem.atomic_u32(base + 128).unwrap().load(SeqCst), 1);
        let small = HeapMem::new(4096);
        assert!(StatusBlock::new(&small.mem(), 4096 - 200).is_err());
        assert!(StatusBlock::new(&small.mem(), 4096 - 256).is_ok());
        assert!(StatusBlock::new(&small.mem(), 2).is_err());
    }
}
