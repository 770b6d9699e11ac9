//! Arbitrary bytes as a region header: `read_header` must never panic, and a
//! layout it accepts must satisfy every invariant the rest of the code relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shm_contract::layout::{
    Area, RegionLayout, HEADER_FIELDS_LEN, HEADER_SIZE, MAX_DESC_RING_ENTRIES, MAX_PAGE_SIZE,
    MAX_REGION_SIZE, MIN_DESC_RING_ENTRIES, MIN_PAGE_SIZE, STATUS_BLOCK_SIZE,
};
use shm_contract::mem::HeapMem;
use shm_contract::{DescConsumer, DescProducer, StatusBlock};

/// Largest mapping the target allocates (the fuzzer's memory limit is 2 GiB).
const MAX_ALLOC: u64 = 16 << 20;

fn check_invariants(l: &RegionLayout, mapped: u64) {
    assert_eq!(l.region_size(), mapped);
    assert!(l.region_size() <= MAX_REGION_SIZE);
    let page = l.page_size();
    assert!(page.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page));
    assert_eq!(l.region_size() % page, 0);
    let status = l.status_offset();
    assert!(status >= HEADER_FIELDS_LEN && status % 64 == 0);
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
    let mut image = [0u8; HEADER_SIZE as usize];
    let n = data.len().min(image.len());
    image[..n].copy_from_slice(&data[..n]);
    let claimed = u64::from_le_bytes(image[24..32].try_into().unwrap());
    // Any mapped size for the pure parser (no allocation needed) ...
    if let Ok(l) = RegionLayout::parse_header(&image, claimed) {
        check_invariants(&l, claimed);
    }
    // ... and a real mapping whenever the claimed size is affordable.
    let len = if (HEADER_SIZE as u64..=MAX_ALLOC).contains(&claimed) {
        claimed
    } else {
        HEADER_SIZE as u64 + data.len() as u64 % 8192
    };
    let heap = HeapMem::new(len as usize);
    let mem = heap.mem();
    mem.write_bytes(0, &image[..(len as usize).min(image.len())]).unwrap();
    if let Ok(l) = RegionLayout::read_header(&mem) {
        check_invariants(&l, len);
        // Everything an accepted layout names can be attached to.
        DescProducer::new(&mem, l.rx_ring()).unwrap();
        DescConsumer::new(&mem, l.tx_ring()).unwrap();
        StatusBlock::from_layout(&mem, &l).unwrap();
    }
});
