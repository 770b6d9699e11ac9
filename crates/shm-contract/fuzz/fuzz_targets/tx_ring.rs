//! The proxy's consumption of a hostile guest's tx ring, without DPDK: the data loop's
//! poll (`available` with the proxy's window, at most a burst of packets through
//! `tx::take_packet`, `release`) over a real descriptor ring in memory, with two pools
//! and a model of the proxy's ownership marks, between arbitrary writes of the guest
//! (descriptor words, the producer index, the consumer index it must not touch) and
//! the NIC sending or holding packets.
//!
//! Checked: nothing panics or reads outside the ring; every packet handed on is
//! made of buffers of the pools (exact mbuf offsets), with data inside each data room,
//! at most `MAX_SEGS` segments, and no buffer in two packets at once or in a packet
//! while the proxy holds it otherwise; a packet found invalid or incomplete leaves
//! nothing held; a poll does at most a burst of packets, reads at most its descriptor
//! budget, and never consumes more than was available; a chain
//! published in parts is scanned on from where it stopped (the producer index is read
//! again while it waits) and is only incomplete while it runs to the end of what was
//! published or the budget is spent; a corrupt producer index (also one that moves
//! backwards) is reported, never followed.
#![no_main]

use std::sync::atomic::Ordering::Relaxed;

use libfuzzer_sys::fuzz_target;
use shm_contract::mem::HeapMem;
use shm_contract::spsc::{CONS_INDEX_OFFSET, PROD_INDEX_OFFSET, SLOTS_OFFSET};
use shm_contract::tx::{take_packet, ChainScan, TxPacket, TxSink, MAX_SEGS, TX_DESC_BUDGET};
use shm_contract::{Desc, DescConsumer, DescFlags, DescRing, PoolAdd, PoolLayout, RegionFlags, RegionLayout};

const REGION: u64 = 1 << 20;
/// Most buffers in a pool of this target (pool a; pool b has at most 16).
const MAX_POOL_COUNT: usize = 64;
/// The proxy's number (proxy-app/src/datapath.rs).
const BURST: usize = 32;

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

/// Owner of each buffer, as the proxy's shadows record it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Guest,
    /// Held by the proxy for NIC rx (taken from the free ring).
    ProxyRx,
    /// In a packet on its way to (or held by) the NIC.
    ProxyTx,
}

struct Model {
    pools: [PoolLayout; 2],
    owner: [Vec<Owner>; 2],
    building: Vec<(usize, u32, Desc)>,
    /// Buffers the proxy gave back to the guest's free ring (from dropped packets).
    returned: u64,
}

impl TxSink for Model {
    type Seg = (usize, u32);

    fn find(&self, offset: u32) -> Option<((usize, u32), u16)> {
        self.pools.iter().enumerate().find_map(|(p, l)| l.buffer_index(offset).map(|i| ((p, i), l.data_room())))
    }

    fn claim(&mut self, (p, i): (usize, u32), d: &Desc) -> bool {
        let layout = &self.pools[p];
        assert_eq!(layout.buffer_offset(i), d.offset, "find named another buffer");
        assert!(d.data_off as u32 + d.data_len as u32 <= layout.data_room() as u32, "claim before the length check");
        if self.owner[p][i as usize] != Owner::Guest {
            return false;
        }
        self.owner[p][i as usize] = Owner::ProxyTx;
        self.building.push((p, i, *d));
        assert!(self.building.len() <= MAX_SEGS as usize);
        true
    }

    fn drop_packet(&mut self) {
        assert!(!self.building.is_empty(), "drop_packet with nothing claimed");
        for (p, i, _) in self.building.drain(..) {
            self.owner[p][i as usize] = Owner::Guest;
            self.returned += 1;
        }
    }
}

fn pools(region: &RegionLayout, input: &mut Input<'_>) -> [PoolLayout; 2] {
    let heap = region.heap();
    let stride_a = 192 + 64 * (input.u8() as u32 % 40);
    let count_a = 1 + input.u8() as u32 % MAX_POOL_COUNT as u32;
    let a = PoolAdd {
        pool_id: 0,
        ring_offset: heap.offset,
        ring_entries: count_a.next_power_of_two(),
        first_mbuf_offset: heap.offset + 4096,
        stride: stride_a,
        count: count_a,
        mbuf_size: 128,
        data_room: (stride_a - 128).min(u16::MAX as u32) as u16,
    }
    .validate(region, &[])
    .unwrap();
    let stride_b = 192 + 64 * (input.u8() as u32 % 8);
    let count_b = 1 + input.u8() as u32 % 16;
    let base = (a.objects().end() as u32).next_multiple_of(4096);
    let b = PoolAdd {
        pool_id: 1,
        ring_offset: base,
        ring_entries: count_b.next_power_of_two(),
        first_mbuf_offset: base + 4096,
        stride: stride_b,
        count: count_b,
        mbuf_size: 128,
        data_room: 64 + input.u8() as u16 % (stride_b as u16 - 128 - 63),
    }
    .validate(region, &[a])
    .unwrap();
    [a, b]
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let entries = 64u32 << (input.u8() % 3); // 64..=256
    let region = RegionLayout::new(REGION, 4096, 64, entries, RegionFlags::empty()).unwrap();
    let pools = pools(&region, &mut input);
    // One allocation for the whole run (a fresh one per input is most of the time);
    // only the tx ring is ever touched, and it is reset here.
    thread_local!(static BACKING: HeapMem = HeapMem::new(REGION as usize));
    BACKING.with(|backing| run(&mut input, &region, pools, backing));
});

fn run(input: &mut Input<'_>, region: &RegionLayout, pools: [PoolLayout; 2], backing: &HeapMem) {
    let mem = backing.mem();
    let tx = region.tx_ring();
    // The previous input's slots zeroed (`init` zeroes the indices).
    for word in mem.atomic_u64_slice(tx.offset as usize + SLOTS_OFFSET as usize, tx.entries as usize * 2).unwrap() {
        word.store(0, Relaxed);
    }
    DescRing::init(&mem, tx).unwrap();
    let mut ring = DescConsumer::new(&mem, tx).unwrap();
    let base = tx.offset as usize;
    let prod = mem.atomic_u32(base + PROD_INDEX_OFFSET as usize).unwrap();
    let cons = mem.atomic_u32(base + CONS_INDEX_OFFSET as usize).unwrap();
    let slot = |i: u32| base + SLOTS_OFFSET as usize + (i & (tx.entries - 1)) as usize * Desc::SIZE;
    let mut model = Model {
        owner: [vec![Owner::Guest; pools[0].count() as usize], vec![Owner::Guest; pools[1].count() as usize]],
        pools,
        building: Vec::new(),
        returned: 0,
    };
    // Packets "on the NIC": their buffers are ProxyTx until sent. One flat list of
    // segments and one of packet sizes (no allocation per packet: allocations cost a
    // stack trace each under the sanitizer).
    let mut on_nic: Vec<(usize, u32)> = Vec::new();
    let mut on_nic_packets: Vec<usize> = Vec::new();
    // The guest's own producer position (it may also lie about it).
    let mut guest_prod = 0u32;
    let mut broken = false;
    let mut scan = ChainScan::default();
    let mut steps = 0;
    while !input.0.is_empty() && steps < 2000 && !broken {
        steps += 1;
        match input.u8() % 8 {
            // The guest publishes descriptors: offsets near buffers, or anywhere.
            0 | 1 => {
                let n = input.u8() as u32 % 80;
                for k in 0..n {
                    let sel = input.u8();
                    let p = &model.pools[(sel & 1) as usize];
                    let offset = match sel >> 1 & 3 {
                        0 => input.u32(),
                        1 => p.buffer_offset(input.u8() as u32 % p.count()),
                        _ => p.buffer_offset(input.u8() as u32 % (p.count() + 1)).wrapping_add(input.u8() as u32 % 3 * 64),
                    };
                    let flags = DescFlags::from_bits_retain(input.u16());
                    let d = Desc { offset, data_off: input.u16() % 300, data_len: input.u16(), flags, vlan_tci: 7, rss_hash: 0 };
                    let [w0, w1] = d.to_words();
                    let at = slot(guest_prod.wrapping_add(k));
                    mem.atomic_u64(at).unwrap().store(w0, Relaxed);
                    mem.atomic_u64(at + 8).unwrap().store(w1, Relaxed);
                }
                guest_prod = guest_prod.wrapping_add(n);
                prod.store(guest_prod, Relaxed);
            }
            // The guest lies about its producer index, or rewrites the consumer index.
            2 => {
                guest_prod = input.u32();
                prod.store(guest_prod, Relaxed);
            }
            3 => cons.store(input.u32(), Relaxed),
            // The guest rewrites a published slot while the proxy may be reading.
            4 => {
                let at = slot(input.u32());
                mem.atomic_u64(at + 8 * (input.u8() as usize & 1)).unwrap().store(u64::from_le_bytes(input.bytes()), Relaxed);
            }
            // The proxy's NIC rx takes a free buffer (it then holds it).
            5 => {
                let p = (input.u8() & 1) as usize;
                let i = input.u8() as usize % model.owner[p].len();
                if model.owner[p][i] == Owner::Guest {
                    model.owner[p][i] = Owner::ProxyRx;
                } else if model.owner[p][i] == Owner::ProxyRx {
                    // ... and delivers it to the guest's rx ring.
                    model.owner[p][i] = Owner::Guest;
                }
            }
            // The NIC sends some of what it holds.
            6 => {
                let n = (input.u8() as usize).min(on_nic_packets.len());
                let segs: usize = on_nic_packets.drain(..n).sum();
                for (p, i) in on_nic.drain(..segs) {
                    assert_eq!(model.owner[p][i as usize], Owner::ProxyTx);
                    model.owner[p][i as usize] = Owner::Guest;
                }
            }
            // One poll of the data loop, exactly as `LoopQueue::send_to_nic` does it.
            _ => {
                let pending = scan.waiting();
                let avail = match ring.available((BURST as u32).max(pending + 1)) {
                    Ok(a) => a,
                    Err(_) => {
                        // The proxy stops polling this guest and detaches it.
                        broken = true;
                        continue;
                    }
                };
                assert!(avail <= tx.entries);
                if pending > 0 {
                    // A chain waits for its next part: unless the cached view already
                    // shows more, what the guest published is looked at again (the bug:
                    // a cached view that never moved).
                    assert!(avail >= pending);
                    if avail == pending {
                        assert_eq!(avail, prod.load(Relaxed).wrapping_sub(ring.index()));
                        continue;
                    }
                }
                // (A copy on the stack: pools have at most MAX_POOL_COUNT buffers.)
                let mut held_before = [[Owner::Guest; MAX_POOL_COUNT]; 2];
                for (before, now) in held_before.iter_mut().zip(&model.owner) {
                    before[..now.len()].copy_from_slice(now);
                }
                let mut used = 0u32;
                let mut taken = 0;
                let mut budget = TX_DESC_BUDGET;
                let reads = std::cell::Cell::new(0u32);
                let read = |i: u32| {
                    assert!(i < avail);
                    reads.set(reads.get() + 1);
                    ring.read(i)
                };
                while taken < BURST && used < avail {
                    taken += 1;
                    let before = used;
                    let r = take_packet(read, &mut used, avail, &mut budget, &mut scan, &mut model);
                    assert!(used <= avail);
                    match r {
                        TxPacket::Incomplete => {
                            assert_eq!(used, before);
                            assert!(model.building.is_empty());
                            // Only a chain that runs to the end of what was published,
                            // or a spent budget.
                            assert!(
                                budget == 0 || scan.is_complete() || before + scan.waiting() == avail,
                                "{budget} {before} {scan:?} {avail}"
                            );
                            break;
                        }
                        TxPacket::Invalid(_) => {
                            assert!(used > before && used - before <= MAX_SEGS + 1);
                            assert!(model.building.is_empty());
                            assert_eq!(scan.waiting(), 0);
                        }
                        TxPacket::Valid { segs, len, vlan: _ } => {
                            assert_eq!(segs, used - before);
                            assert!((1..=MAX_SEGS).contains(&segs));
                            assert_eq!(segs as usize, model.building.len());
                            assert_eq!(scan.waiting(), 0);
                            let mut sum = 0u32;
                            for (k, &(p, i, d)) in model.building.iter().enumerate() {
                                let layout = &model.pools[p];
                                assert_eq!(layout.buffer_index(d.offset), Some(i));
                                assert!(d.data_off as u32 + d.data_len as u32 <= layout.data_room() as u32);
                                // (Flags are not checked here: the chain's boundaries
                                // are those its scan found, perhaps on an earlier poll,
                                // and the guest may have rewritten the slots since.)
                                let _ = k;
                                // It was the guest's before this poll.
                                assert_eq!(held_before[p][i as usize], Owner::Guest);
                                sum += d.data_len as u32;
                                on_nic.push((p, i));
                            }
                            assert_eq!(sum, len);
                            model.building.clear();
                            on_nic_packets.push(segs as usize);
                        }
                    }
                }
                assert!(reads.get() <= TX_DESC_BUDGET, "{} descriptor reads in one poll", reads.get());
                assert!(taken <= BURST);
                ring.release(used);
            }
        }
    }
    // Whatever is still on the NIC is the only thing the proxy holds for tx.
    let on_nic_count = on_nic.len();
    let tx_held = model.owner.iter().flatten().filter(|&&o| o == Owner::ProxyTx).count();
    assert_eq!(on_nic_count, tx_held);
}
