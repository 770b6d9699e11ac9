//! A hostile peer's view of the rings: arbitrary indices, positions and cell
//! contents written into a descriptor ring and a free ring between random
//! operations on them. Nothing may panic, no operation may touch memory outside
//! its ring, counts stay within the ring size, a count once reported never shrinks
//! under its user (free slots a producer was promised, descriptors a consumer was
//! told it may read: a peer index that moves backwards is corrupt), a retry budget
//! shared by many free-ring operations only ever goes down, and every value that
//! comes out is either a buffer of the pool (by `PoolLayout::buffer_index`) or
//! rejected.
#![no_main]

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;

use libfuzzer_sys::fuzz_target;
use shm_contract::mem::HeapMem;
use shm_contract::mpmc::{CELLS_OFFSET, DEQ_POS_OFFSET, ENQ_POS_OFFSET};
use shm_contract::spsc::{CONS_INDEX_OFFSET, PROD_INDEX_OFFSET, SLOTS_OFFSET};
use shm_contract::{
    Desc, DescConsumer, DescFlags, DescProducer, DescRing, FreeRing, PoolAdd, PoolLayout,
    RegionFlags, RegionLayout, SharedMem,
};

const REGION: u64 = 1 << 20;
const GUARD: u8 = 0xa5;

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
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

/// The reference answer for `buffer_index`.
fn reference_index(p: &PoolLayout, offset: u32) -> Option<u32> {
    let rel = offset.checked_sub(p.first_mbuf_offset())?;
    (rel % p.stride() == 0 && rel / p.stride() < p.count()).then_some(rel / p.stride())
}

fn check_value(p: &PoolLayout, offset: u32) {
    let idx = p.buffer_index(offset);
    assert_eq!(idx, reference_index(p, offset));
    if let Some(i) = idx {
        assert!(i < p.count());
        assert_eq!(p.buffer_offset(i), offset);
        assert!(p.contains(offset));
    }
}

/// Largest free ring an input picks: the free ring's guard zone starts after the
/// input's ring and runs to `GUARD_AFTER` bytes past the largest one.
const MAX_FREE_RING_ENTRIES: u32 = 64;
const GUARD_AFTER: usize = 512;
const GUARD_WORD: u32 = u32::from_ne_bytes([GUARD; 4]);

// Guards are written and checked as 32-bit words (every zone starts and ends on
// one): byte copies cost a sanitizer callback per byte, which was most of the time.
fn fill_guards(mem: &SharedMem<'_>, zones: &[(usize, usize)]) {
    for &(start, end) in zones {
        for at in (start..end).step_by(4) {
            mem.atomic_u32(at).unwrap().store(GUARD_WORD, Relaxed);
        }
    }
}

fn check_guards(mem: &SharedMem<'_>, zones: &[(usize, usize)]) {
    for &(start, end) in zones {
        for at in (start..end).step_by(4) {
            let word = mem.atomic_u32(at).unwrap().load(Relaxed);
            assert!(word == GUARD_WORD, "a ring wrote outside itself at {at} (zone [{start}, {end}))");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let region = RegionLayout::new(REGION, 4096, 64, 64, RegionFlags::empty()).unwrap();
    let ring_entries = MAX_FREE_RING_ENTRIES >> (input.u8() % 4); // 8..=64
    let stride = 192 + 64 * (input.u8() as u32 % 40);
    let count = 1 + input.u8() as u32 % ring_entries;
    let heap = region.heap();
    let add = PoolAdd {
        pool_id: 0,
        ring_offset: heap.offset + 128,
        ring_entries,
        first_mbuf_offset: heap.offset + 4096,
        stride,
        count,
        mbuf_size: 128,
        data_room: 64,
    };
    let pool = add.validate(&region, &[]).unwrap();

    // One allocation for the whole run (a fresh megabyte per input was most of the
    // time, under the sanitizer). Its guard zones are filled once and checked after
    // every input (a failed check ends the run); what an input can change, the two
    // rings, is reset before it, so each input runs the same whatever ran before.
    thread_local!(static BACKING: (HeapMem, Cell<bool>) = (HeapMem::new(REGION as usize), Cell::new(false)));
    BACKING.with(|(backing, guarded)| run(&mut input, &region, pool, ring_entries, backing, guarded));
});

fn run(
    input: &mut Input<'_>,
    region: &RegionLayout,
    pool: PoolLayout,
    ring_entries: u32,
    backing: &HeapMem,
    guarded: &Cell<bool>,
) {
    let mem = backing.mem();
    let rx = region.rx_ring();
    let rx_start = rx.offset as usize;
    let rx_end = rx_start + DescRing::bytes_for(rx.entries) as usize;
    let fr_start = pool.ring_offset() as usize;
    let fr_end = fr_start + FreeRing::bytes_for(ring_entries) as usize;
    let fr_max_end = fr_start + FreeRing::bytes_for(MAX_FREE_RING_ENTRIES) as usize;
    // Guard zones around both rings (between their indices too); the free ring's
    // last one also covers the cells of larger rings than this input's.
    let guards = [
        (rx_start - 512, rx_start),
        (rx_start + 4, rx_start + CONS_INDEX_OFFSET as usize),
        (rx_start + CONS_INDEX_OFFSET as usize + 4, rx_start + SLOTS_OFFSET as usize),
        (rx_end, rx_end + GUARD_AFTER),
        (fr_start - 128, fr_start),
        (fr_start + 4, fr_start + DEQ_POS_OFFSET as usize),
        (fr_start + DEQ_POS_OFFSET as usize + 4, fr_start + CELLS_OFFSET as usize),
        (fr_end, fr_max_end + GUARD_AFTER),
    ];
    if !guarded.replace(true) {
        fill_guards(&mem, &guards);
    }
    // The previous input's rings: the descriptor slots zeroed, the cells of a larger
    // free ring (now guard) refilled; `init` sets the indices and this ring's cells.
    for slot in mem.atomic_u64_slice(rx_start + SLOTS_OFFSET as usize, rx.entries as usize * 2).unwrap() {
        slot.store(0, Relaxed);
    }
    fill_guards(&mem, &[(fr_end, fr_max_end)]);
    DescRing::init(&mem, rx).unwrap();
    let free = FreeRing::init(&mem, pool.ring_offset(), pool.ring_entries()).unwrap();

    let mut producer = DescProducer::new(&mem, rx).unwrap();
    let mut consumer = DescConsumer::new(&mem, rx).unwrap();
    let mut descs = [Desc::default(); 80];
    let mut values = [0u32; 80];
    let mut steps = 0;
    // What the views last reported, less what we used of it since: a peer cannot take
    // it back.
    let (mut promised_free, mut promised_avail) = (0u32, 0u32);
    let mut retries_left = 0u32;
    while !input.0.is_empty() && steps < 10_000 {
        steps += 1;
        let op = input.u8();
        let k = (input.u8() % 80) as usize;
        match op % 12 {
            // The hostile peer.
            0 => mem.atomic_u32(rx_start + PROD_INDEX_OFFSET as usize).unwrap().store(input.u32(), Relaxed),
            1 => mem.atomic_u32(rx_start + CONS_INDEX_OFFSET as usize).unwrap().store(input.u32(), Relaxed),
            2 => {
                let word = input.u32() as usize % (rx.entries as usize * 2);
                mem.atomic_u64(rx_start + SLOTS_OFFSET as usize + word * 8).unwrap().store(input.u64(), Relaxed);
            }
            3 => mem.atomic_u32(fr_start + ENQ_POS_OFFSET as usize).unwrap().store(input.u32(), Relaxed),
            4 => mem.atomic_u32(fr_start + DEQ_POS_OFFSET as usize).unwrap().store(input.u32(), Relaxed),
            5 => {
                let cell = input.u32() as usize % ring_entries as usize;
                mem.atomic_u64(fr_start + CELLS_OFFSET as usize + cell * 8).unwrap().store(input.u64(), Relaxed);
            }
            // Us.
            6 => {
                for d in descs[..k].iter_mut() {
                    *d = Desc { offset: input.u32(), data_len: 60, ..Desc::default() };
                }
                if let Ok(n) = producer.push_burst(&descs[..k]) {
                    assert!(n <= k);
                    // The cached view (no reload for 0 wanted).
                    let now = producer.free_slots(0).unwrap();
                    assert!(now + n as u32 >= promised_free);
                    promised_free = now;
                }
            }
            7 => {
                if let Ok(n) = consumer.pop_burst(&mut descs[..k]) {
                    assert!(n <= k);
                    let now = consumer.available(0).unwrap();
                    assert!(now + n as u32 >= promised_avail);
                    promised_avail = now;
                    for d in &descs[..n] {
                        check_value(&pool, d.offset);
                        let _ = d.flags.has_unknown_bits() || d.flags.contains(DescFlags::NEXT);
                    }
                }
            }
            8 => {
                for v in values[..k].iter_mut() {
                    *v = input.u32();
                }
                if input.u8() & 1 == 0 {
                    let _ = free.enqueue_bulk(&values[..k], input.u8() as u32 % 4);
                } else {
                    let before = retries_left;
                    let _ = free.enqueue_bulk_within(&values[..k], &mut retries_left);
                    assert!(retries_left <= before);
                }
            }
            9 => {
                let ok = if input.u8() & 1 == 0 {
                    free.dequeue_bulk(&mut values[..k], input.u8() as u32 % 4).is_ok()
                } else {
                    let before = retries_left;
                    let ok = free.dequeue_bulk_within(&mut values[..k], &mut retries_left).is_ok();
                    assert!(retries_left <= before);
                    ok
                };
                if ok {
                    for &v in &values[..k] {
                        check_value(&pool, v);
                    }
                }
            }
            10 => {
                let wanted = input.u32();
                if let Ok(free_slots) = producer.free_slots(wanted) {
                    assert!(free_slots <= rx.entries);
                    assert!(free_slots >= promised_free, "free slots shrank: {free_slots} < {promised_free}");
                    promised_free = free_slots;
                }
                if let Ok(avail) = consumer.available(wanted) {
                    assert!(avail <= rx.entries);
                    assert!(avail >= promised_avail, "available shrank: {avail} < {promised_avail}");
                    promised_avail = avail;
                }
                // A new round of the proxy's loop.
                retries_left = input.u8() as u32 % 8;
            }
            _ => {
                assert!(free.count() <= ring_entries);
                check_value(&pool, input.u32());
            }
        }
    }
    check_guards(&mem, &guards);
}
