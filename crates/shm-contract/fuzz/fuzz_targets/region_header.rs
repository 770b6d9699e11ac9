//! Arbitrary bytes as a region header: `read_header` must never panic, and a
//! layout it accepts must satisfy every invariant the rest of the code relies on
//! (`check_invariants`): sizes and page size in range, page-aligned areas inside the
//! region and apart from each other, ring sizes, the status block inside the header,
//! and a header that reads back as itself. Whatever it accepts can be attached to
//! (rings, status block) over a mapping of exactly the claimed size.
//!
//! Input: a control byte, then either the header image itself (raw) or the parameters
//! of a valid layout (`RegionLayout::new`) followed by byte edits of its header. With
//! bit 0 of the control byte set the image is sealed (its checksum made right) before
//! it is read, so the checks behind the checksum are reached by raw and edited images
//! alike; without it, the checksum check itself is what is exercised.
//!
//! Speed: one allocation of `MAX_MAPPED` bytes serves every input (a fresh, zeroed
//! allocation of up to 16 MiB per input was nearly all of the time, in page faults).
//! The header page is the only part anything writes; it is reset per input.
#![no_main]

use std::cell::Cell;

use libfuzzer_sys::fuzz_target;
use shm_contract::layout::{
    seal_header_image, Area, RegionLayout, HEADER_FIELDS_LEN, HEADER_SIZE, MAX_DESC_RING_ENTRIES,
    MAX_PAGE_SIZE, MAX_REGION_SIZE, MIN_DESC_RING_ENTRIES, MIN_PAGE_SIZE, STATUS_BLOCK_SIZE,
};
use shm_contract::mem::HeapMem;
use shm_contract::{DescConsumer, DescProducer, RegionFlags, StatusBlock};

/// Largest mapping the target checks against; larger claimed sizes go to the pure
/// parser only. Big enough for 64 Ki-entry rings and 2 MiB pages.
const MAX_MAPPED: usize = 16 << 20;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = self.0.len().min(N);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
}

/// The memory every input's mapping is a window of, and where the last input's
/// header went and how much of it was not zero.
struct Backing {
    heap: HeapMem,
    header_at: Cell<usize>,
    header_dirty: Cell<usize>,
}

thread_local!(static BACKING: Backing = Backing {
    heap: HeapMem::new(MAX_MAPPED),
    header_at: Cell::new(0),
    header_dirty: Cell::new(0),
});

fn check_invariants(l: &RegionLayout, mapped: u64) {
    assert_eq!(l.region_size(), mapped);
    assert!(l.region_size() <= MAX_REGION_SIZE);
    let page = l.page_size();
    assert!(page.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page));
    assert_eq!(l.region_size() % page, 0);
    let status = l.status_offset();
    assert!(status >= HEADER_FIELDS_LEN && status.is_multiple_of(64));
    assert!(status as u64 + STATUS_BLOCK_SIZE as u64 <= HEADER_SIZE as u64);
    let areas = [
        Area { offset: 0, size: HEADER_SIZE },
        l.rx_ring().area(),
        l.tx_ring().area(),
        l.heap(),
    ];
    for ring in [l.rx_ring(), l.tx_ring()] {
        assert!(ring.entries.is_power_of_two());
        assert!((MIN_DESC_RING_ENTRIES..=MAX_DESC_RING_ENTRIES).contains(&ring.entries));
    }
    assert!(l.heap().size > 0);
    for a in &areas[1..] {
        assert_eq!(a.offset as u64 % page, 0);
        assert!(a.end() <= l.region_size());
    }
    for (i, a) in areas.iter().enumerate() {
        for b in &areas[i + 1..] {
            assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
        }
    }
    // What the guest writes back is what it read.
    let mut image = [0u8; HEADER_SIZE as usize];
    image[..HEADER_FIELDS_LEN as usize].copy_from_slice(&l.header_bytes());
    assert_eq!(RegionLayout::parse_header(&image, mapped), Ok(*l));
}

fuzz_target!(|data: &[u8]| {
    let (&control, rest) = data.split_first().unwrap_or((&0, &[]));
    let mut image = [0u8; HEADER_SIZE as usize];
    // Bytes of the image that may not be zero (counted, not searched for: a scan of
    // the page cost as much as the rest of an input).
    let dirty;
    if control & 2 == 0 {
        let n = rest.len().min(image.len());
        image[..n].copy_from_slice(&rest[..n]);
        dirty = n.max(HEADER_FIELDS_LEN as usize);
    } else {
        dirty = 256;
        // A header the proxy could have written, then edits to it (offsets up to
        // 255: the fields, and bytes a later minor version could append).
        let mut input = Input(rest);
        let page = MIN_PAGE_SIZE << (input.u8() % 19); // 4 KiB ..= 1 GiB
        let rx = MIN_DESC_RING_ENTRIES << (input.u8() % 11); // 64 ..= 65536
        let tx = MIN_DESC_RING_ENTRIES << (input.u8() % 11);
        let pages = input.u16() as u64;
        let flags = RegionFlags::from_bits_retain(input.u32());
        if let Ok(l) = RegionLayout::new(pages * page, page, rx, tx, flags) {
            image[..HEADER_FIELDS_LEN as usize].copy_from_slice(&l.header_bytes());
        }
        while !input.0.is_empty() {
            let at = input.u8() as usize;
            image[at] = input.u8();
        }
    }
    if control & 1 != 0 {
        seal_header_image(&mut image);
    }
    let claimed = u64::from_le_bytes(image[24..32].try_into().unwrap());
    // Any mapped size for the pure parser (no memory needed) ...
    if let Ok(l) = RegionLayout::parse_header(&image, claimed) {
        check_invariants(&l, claimed);
    }
    // ... and a real mapping whenever the claimed size is affordable.
    let len = if (HEADER_SIZE as u64..=MAX_MAPPED as u64).contains(&claimed) {
        claimed as usize
    } else {
        HEADER_SIZE as usize + data.len() % 8192
    };
    BACKING.with(|backing| {
        let whole = backing.heap.mem();
        // The window ends where the allocation ends (but for the rest of a page when
        // the size is not a page multiple, as with a real mapping): an access past
        // the region runs off the allocation, for the sanitizer to see. Its start
        // stays page aligned.
        let at = (MAX_MAPPED - len) / HeapMem::ALIGN * HeapMem::ALIGN;
        let mem = whole.sub(at, len).unwrap();
        // Reset what the last input wrote (only its header), then write this one's
        // dirty bytes (the rest of the page is zero).
        if backing.header_at.get() != at {
            whole.write_bytes(backing.header_at.get(), &[0; HEADER_SIZE as usize][..backing.header_dirty.get()]).unwrap();
            mem.write_bytes(0, &image[..dirty]).unwrap();
        } else {
            mem.write_bytes(0, &image[..dirty.max(backing.header_dirty.get())]).unwrap();
        }
        backing.header_at.set(at);
        backing.header_dirty.set(dirty);
        if let Ok(l) = RegionLayout::read_header(&mem) {
            check_invariants(&l, len as u64);
            // Everything an accepted layout names can be attached to.
            DescProducer::new(&mem, l.rx_ring()).unwrap();
            DescConsumer::new(&mem, l.tx_ring()).unwrap();
            StatusBlock::from_layout(&mem, &l).unwrap();
        }
    });
});
