//! The safe layer against a real EAL (no hugepages, no shared files, one `net_null` port).
//! EAL can be initialised once per process: everything is one test.

use dpdk::telemetry::{self, TelData, TelDict};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use dpdk::{
    mempool_count, Eal, ExtBuffer, ExtMem, ExtPool, ExtPoolOps, ExtPoolSpec, Mbuf, MbufBurst, MbufError, Pdump,
    PktPool, Port,
};

fn eal_args() -> Vec<String> {
    [
        "dpdk-crate-test",
        "--no-huge",
        "-m",
        "64",
        "--no-shconf",
        "--no-pci",
        "--vdev=net_null0",
        "--log-level=lib.eal:error",
        "--no-telemetry",
        // Two lcores on CPU 0, so that the launch checks always have a worker lcore
        // (whatever CPUs the machine has).
        "--lcores=0@0,1@0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--file-prefix=dpdk-crate-test-{}", std::process::id())])
    .collect()
}

#[test]
fn the_safe_layer_over_a_live_eal() {
    // Before EAL: nothing that needs it can be made.
    assert!(Eal::current().is_none());
    assert_eq!(mempool_count(), 0);
    assert_eq!(PktPool::new("before", 63, 0, 2048, -1).unwrap_err().errno, libc::ENODEV);

    let (eal, consumed) = Eal::init(&eal_args()).expect("EAL init");
    assert!(consumed > 0);
    assert_eq!(Eal::init(&eal_args()).unwrap_err().errno, libc::EALREADY, "a second init is an error");
    assert_eq!(eal.handle_count(), 1);
    let other = Eal::current().expect("EAL is current");
    assert_eq!(eal.handle_count(), 2);
    drop(other);

    // Pools: a view with counters, counted by the walk, holding EAL.
    let baseline = mempool_count();
    let pool = PktPool::new("dpdk_test_pool", 511, 0, 2048, -1).expect("pool");
    assert_eq!(mempool_count(), baseline + 1);
    assert_eq!(pool.mempool().name(), "dpdk_test_pool");
    assert_eq!(pool.mempool().in_use_count(), 0);
    assert_eq!(pool.mempool().avail_count(), 511);
    assert_eq!(eal.handle_count(), 2, "the pool holds EAL");

    // A pool made with raw calls, adopted: freed by its last reference.
    // SAFETY: valid arguments; the C string lives through the call.
    let raw = unsafe { dpdk::sys::rte_pktmbuf_pool_create(c"dpdk_test_raw".as_ptr(), 63, 0, 0, 2048, -1) };
    assert!(!raw.is_null());
    // SAFETY: a live packet-mbuf pool that nothing else frees.
    let adopted = unsafe { PktPool::from_raw(raw) }.expect("adopt");
    assert_eq!(adopted.as_ptr(), raw);
    assert_eq!(mempool_count(), baseline + 2);
    drop(adopted);
    assert_eq!(mempool_count(), baseline + 1);

    // A port whose rx queue keeps its pool until the port is closed.
    let port = Port::all().into_iter().next().expect("net_null0");
    assert!(port.is_valid());
    // SAFETY: rte_eth_conf is plain data; zero is the default configuration.
    let mut conf: dpdk::sys::rte_eth_conf = unsafe { std::mem::zeroed() };
    let mut key = [0u8; 40];
    conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
    assert_eq!(port.configure(1, 1, &conf).unwrap_err().errno, libc::EINVAL, "a pointer in the configuration");
    conf.rx_adv_conf.rss_conf.rss_key = std::ptr::null_mut();
    port.configure(1, 1, &conf).expect("configure");
    // SAFETY: rte_eth_rxconf is plain data; zero is valid.
    let mut rxconf: dpdk::sys::rte_eth_rxconf = unsafe { std::mem::zeroed() };
    rxconf.rx_nseg = 2;
    assert_eq!(port.rx_queue_setup_pool(0, 256, Some(&rxconf), &pool).unwrap_err().errno, libc::EINVAL);
    port.rx_queue_setup_pool(0, 256, None, &pool).expect("rx queue");
    port.tx_queue_setup(0, 256).expect("tx queue");
    port.start().expect("start");
    packets_as_owned_values(port, &pool);
    packet_rings_between_lcores(&eal, &pool);
    drop(pool);
    assert_eq!(mempool_count(), baseline + 1, "the queue keeps its pool");
    // External memory: registered, DMA-mapped for the port's device, unregistered
    // on drop (so it can be registered again).
    let len = 1 << 21;
    // SAFETY: a fresh anonymous mapping, unmapped at the end.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    for _ in 0..2 {
        // SAFETY: the mapping stays until after the ExtMem drops.
        let mut ext = unsafe { ExtMem::register(base.cast(), len, 4096) }.expect("extmem");
        assert_eq!(eal.handle_count(), 3, "the queue's pool and the memory hold EAL");
        assert_eq!((ext.base(), ext.len()), (base.cast(), len));
        let dev = port.device().expect("the port's device");
        // A vdev without DMA ops accepts (and ignores) the mapping; others say ENOTSUP.
        match ext.dma_map(dev) {
            Ok(()) => assert_eq!(ext.dma_devices(), &[dev]),
            Err(e) => assert_eq!(e.errno, libc::ENOTSUP, "{e}"),
        }
        drop(ext);
    }
    // SAFETY: unmaps the mapping made above; nothing refers to it any more.
    unsafe { libc::munmap(base, len) };
    let on_stack = 0u64;
    let _ = dpdk::virt2phy(&on_stack as *const u64 as *const u8);

    port.stop().expect("stop");
    port.close().expect("close");
    assert_eq!(mempool_count(), baseline, "closing the port frees the pool");
    assert_eq!(eal.handle_count(), 1);

    external_buffer_pool(&eal);

    // Telemetry registrations hold EAL and refuse duplicates and bad names.
    fn answer(_params: &str) -> Result<TelData, i32> {
        let mut d = TelDict::new();
        d.u64("n", 1);
        Ok(TelData::from(d))
    }
    let reg = telemetry::register(&eal, "/dpdk_test/info", "a test command", answer).expect("register");
    assert_eq!(reg.name(), "/dpdk_test/info");
    assert_eq!(telemetry::register(&eal, "/dpdk_test/info", "again", answer).unwrap_err().errno, libc::EEXIST);
    assert_eq!(telemetry::register(&eal, "no-slash", "bad", answer).unwrap_err().errno, libc::EINVAL);
    assert_eq!(eal.handle_count(), 2);
    drop(reg);
    // Registered again after the drop (DPDK already lists it).
    let reg = telemetry::register(&eal, "/dpdk_test/info", "a test command", answer).expect("register again");
    drop(reg);

    // Packet capture answers dpdk-dumpcap over EAL's multi-process channel, which this
    // EAL has not (--no-shconf): a clear error, and a failed start leaves nothing
    // behind (the second try fails the same way, not as "already started").
    let quiesced = || -> dpdk::Quiesce { Box::new(|| true) };
    assert_eq!(Pdump::init(&eal, quiesced()).unwrap_err().errno, libc::ENOTSUP);
    assert_eq!(Pdump::init(&eal, quiesced()).unwrap_err().errno, libc::ENOTSUP);

    // The last handle cleans up; EAL cannot come back.
    assert_eq!(eal.handle_count(), 1);
    drop(eal);
    assert!(Eal::current().is_none());
    assert_eq!(mempool_count(), 0);
    assert_eq!(Eal::init(&eal_args()).unwrap_err().errno, libc::EALREADY);
    // EAL keeps its runtime directory after cleanup (for secondaries); ours is ours.
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/dpdk-crate-test-{}", std::process::id()));
}

/// Packets through a single-producer single-consumer ring, in order and owned at every
/// step; a worker lcore launched with a closure; the MAC swap.
fn packet_rings_between_lcores(eal: &Eal, pool: &PktPool) {
    let in_use = || pool.mempool().in_use_count();
    let (mut producer, mut consumer) = dpdk::mbuf_ring("dpdk_test_ring", 64, -1).expect("ring");
    assert_eq!(dpdk::mbuf_ring("dpdk_test_ring", 64, -1).err().map(|e| e.errno), Some(libc::EEXIST));
    assert_eq!(producer.free_count(), 64, "exactly the size asked for");
    let mut burst = MbufBurst::<128>::new();
    assert_eq!(burst.alloc_from(pool, 80), 80);
    let sent: Vec<*const dpdk::sys::rte_mbuf> = burst.as_slice().iter().map(|m| m.as_ptr()).collect();
    assert_eq!(producer.enqueue_burst(&mut burst), (64, 0), "as many as fit, no room left");
    assert_eq!(burst.len(), 16, "the rest stays in the burst");
    assert_eq!(burst.as_slice()[0].as_ptr(), sent[64], "moved to its front");
    let mut out = MbufBurst::<128>::new();
    assert_eq!(consumer.dequeue_burst(&mut out, 10), 10, "at most max");
    assert_eq!(consumer.dequeue_burst(&mut out, 128), 54);
    assert_eq!(consumer.dequeue_burst(&mut out, 128), 0);
    let got: Vec<_> = out.as_slice().iter().map(|m| m.as_ptr()).collect();
    assert_eq!(got, sent[..64], "first in, first out");
    assert_eq!(in_use(), 80);
    drop(out);
    drop(burst);
    assert_eq!(in_use(), 0);

    // The MAC swap: the first 12 bytes, 6 and 6; too short a packet is left alone.
    let mut m = Mbuf::alloc(pool).expect("mbuf");
    m.append(&[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 9, 9]).expect("room");
    assert!(m.swap_ether_addrs());
    let mut bytes = [0u8; 14];
    m.read(0, &mut bytes);
    assert_eq!(bytes, [2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 9, 9]);
    let mut short = Mbuf::alloc(pool).expect("mbuf");
    short.append(&[7; 11]).expect("room");
    assert!(!short.swap_ether_addrs());
    drop((m, short));

    // Launch: not on the main lcore; a closure on a worker, which takes the consumer
    // end with it; a panic ends the closure only.
    assert_eq!(eal.launch(eal.main_lcore(), || {}).err().map(|e| e.errno), Some(libc::EINVAL));
    let mut burst = MbufBurst::<8>::new();
    assert_eq!(burst.alloc_from(pool, 8), 8);
    assert_eq!(producer.enqueue_burst(&mut burst).0, 8);
    {
        let worker = *eal.worker_lcores().first().expect("--lcores gives a worker lcore");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        eal.launch(worker, move || {
            let mut got = MbufBurst::<8>::new();
            let n = consumer.dequeue_burst(&mut got, 8);
            done_tx.send(n).expect("the test waits");
        })
        .expect("launch");
        assert_eq!(eal.wait_lcore(worker), 0);
        assert_eq!(done_rx.recv().expect("ran"), 8);
        assert_eq!(in_use(), 0, "the worker's burst freed its packets");
        // The panic below is expected: without a hook of our own the default one would
        // print it as if the test had failed. Only for the launch and the wait (nothing
        // else panics meanwhile), then the default hook is back for the asserts.
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let launched = eal.launch(worker, || panic!("a panic on an lcore (expected by the test)"));
        let result = launched.is_ok().then(|| eal.wait_lcore(worker));
        std::panic::set_hook(default_hook);
        launched.expect("launch");
        assert_eq!(result, Some(-1), "the panic is caught");
    }
    // Packets left in a ring are freed with its last end.
    let before = in_use();
    assert_eq!(burst.alloc_from(pool, 8), 8);
    let (mut producer2, consumer2) = dpdk::mbuf_ring("dpdk_test_ring2", 16, -1).expect("ring");
    assert_eq!(producer2.enqueue_burst(&mut burst).0, 8);
    drop(consumer2);
    assert_eq!(in_use(), before + 8, "one end keeps the ring");
    drop(producer2);
    assert_eq!(in_use(), before);
    drop(producer);
    assert_eq!(in_use(), 0);
}

/// The data path of the layer on a started net_null port whose rx queue 0 fills from
/// `pool` (no cache, so its in-use count is exact).
fn packets_as_owned_values(port: Port, pool: &PktPool) {
    let in_use = || pool.mempool().in_use_count();
    // One handle per queue; a polled queue cannot be reconfigured or its port stopped.
    let mut rxq = port.rx_queue(0).expect("rx handle");
    assert_eq!(rxq.id(), (port.0, 0));
    assert_eq!(port.rx_queue(0).err().map(|e| e.errno), Some(libc::EBUSY));
    assert_eq!(port.rx_queue(1).err().map(|e| e.errno), Some(libc::EINVAL), "the port has one rx queue");
    assert_eq!(port.stop().unwrap_err().errno, libc::EBUSY);
    assert_eq!(port.rx_queue_setup_pool(0, 256, None, pool).unwrap_err().errno, libc::EBUSY);
    assert_eq!(port.close().unwrap_err().errno, libc::EBUSY);

    // A burst owns what it received; dropping it frees the packets.
    let mut burst = MbufBurst::<32>::new();
    assert_eq!(rxq.rx_burst(&mut burst, 8), 8);
    assert_eq!(rxq.rx_burst(&mut burst, 64), 24, "never more than the burst has room for");
    assert_eq!(rxq.rx_burst(&mut burst, 64), 0);
    assert_eq!((burst.len(), burst.room()), (32, 0));
    assert_eq!(in_use(), 32);
    drop(burst);
    assert_eq!(in_use(), 0, "a dropped burst frees its packets");

    let mut burst = MbufBurst::<4>::new();
    rxq.rx_burst(&mut burst, 4);
    let mut pkts: Vec<Mbuf> = burst.drain().collect();
    assert!(burst.is_empty());
    assert_eq!(in_use(), 4, "drained packets are owned by the caller");
    let (mut a, b) = (pkts.remove(0), pkts.remove(0));
    drop(pkts);
    assert_eq!(in_use(), 2);
    assert_eq!((a.pkt_len(), a.nb_segs()), (64, 1), "net_null's default packet");
    assert!(a.all_segments_from(pool.as_ptr()));
    assert_eq!(a.set_data(a.data_off(), a.buf_len()), Err(MbufError::OutOfBuffer));
    a.set_data(128, 4).expect("inside the buffer");
    a.append(b"wxyz").expect("room");
    assert_eq!((a.pkt_len(), a.data_len()), (8, 8));
    // Chains: lengths add up, bytes read across segments, split back into singles.
    let mut b = b;
    b.set_data(128, 0).expect("empty");
    b.append(b"0123").expect("room");
    let mut head = a;
    head.chain(b).expect("chain");
    assert_eq!((head.pkt_len(), head.nb_segs()), (12, 2));
    assert_eq!(head.set_data(0, 1), Err(MbufError::Chained));
    let mut out = [0u8; 8];
    assert_eq!(head.read(6, &mut out), 6);
    assert_eq!(&out[..6], b"yz0123");
    let segs: Vec<_> = head.segments().map(|s| (s.data_len, s.has_next)).collect();
    assert_eq!(segs, vec![(8, true), (4, false)]);
    let copy = head.copy_to(pool.mempool()).expect("copy");
    assert_eq!(copy.pkt_len(), 12);
    assert_eq!(in_use(), 2 + copy.nb_segs() as u32);
    drop(copy);
    let singles: Vec<Mbuf> = head.into_segments().collect();
    assert_eq!(singles.iter().map(|m| (m.pkt_len(), m.nb_segs())).collect::<Vec<_>>(), vec![(8, 1), (4, 1)]);
    drop(singles);
    assert_eq!(in_use(), 0);
    // Splitting and dropping the rest frees what was not taken.
    let (mut c, d) = (Mbuf::alloc(pool).expect("alloc"), Mbuf::alloc(pool).expect("alloc"));
    c.chain(d).expect("chain");
    let mut split = c.into_segments();
    let first = split.next().expect("a segment");
    drop(split);
    assert_eq!(in_use(), 1);
    // A packet given up with into_raw is the caller's to free.
    let raw = first.into_raw();
    assert_eq!(in_use(), 1);
    // SAFETY: the packet just given up, owned by nothing else.
    drop(unsafe { Mbuf::from_raw(raw) });
    assert_eq!(in_use(), 0);

    // Bursts of fresh packets, written in place.
    let mut burst = MbufBurst::<4>::new();
    assert_eq!(burst.alloc_from(pool, 8), 4, "as many as there is room for");
    assert_eq!(burst.alloc_from(pool, 1), 0);
    for m in burst.as_mut_slice() {
        m.extend(10).expect("room");
        assert_eq!(m.write(2, b"abc"), 3);
        assert_eq!(m.write(9, b"xyz"), 1, "only as far as the data goes");
    }
    let mut out = [0u8; 8];
    assert_eq!(burst.as_slice()[3].read(2, &mut out), 8);
    // Bytes 3..7 are whatever the buffer held before.
    assert_eq!((&out[..3], out[7]), (&b"abc"[..], b'x'));
    assert_eq!(in_use(), 4);
    drop(burst);
    assert_eq!(in_use(), 0);

    // Transmit: net_null takes (and frees) everything; what a driver leaves stays owned.
    let mut txq = port.tx_queue(0).expect("tx handle");
    assert_eq!(port.tx_queue(0).err().map(|e| e.errno), Some(libc::EBUSY));
    assert_eq!(port.tx_queue_setup(0, 256).unwrap_err().errno, libc::EBUSY);
    let mut burst = MbufBurst::<16>::new();
    rxq.rx_burst(&mut burst, 16);
    assert_eq!(txq.tx_burst(&mut burst), 16);
    assert!(burst.is_empty());
    assert_eq!(in_use(), 0);
    let full = MbufBurst::<1>::new();
    let mut one = full;
    one.push(Mbuf::alloc(pool).expect("alloc")).expect("room");
    let extra = Mbuf::alloc(pool).expect("alloc");
    assert!(one.push(extra).is_err(), "a full burst hands the packet back");
    assert_eq!(in_use(), 1, "the refused packet was dropped by the assertion");
    drop(one);
    assert_eq!(in_use(), 0);

    // This thread is EAL's main lcore; the pool has no cache, so there is nothing to flush.
    dpdk::flush_lcore_cache(pool.mempool());
    drop((rxq, txq));
    port.stop().expect("stops once no handle is left");
    port.start().expect("starts again");
}

/// A free list in a Vec, that can be told to hand out garbage.
struct ListOps {
    free: Mutex<Vec<u32>>,
    refused: AtomicU32,
}

impl ExtPoolOps for ListOps {
    fn put(&self, idx: &[u32]) {
        self.free.lock().unwrap().extend_from_slice(idx);
    }
    fn get(&self, out: &mut [u32]) -> usize {
        let mut free = self.free.lock().unwrap();
        let n = out.len().min(free.len());
        for slot in &mut out[..n] {
            *slot = free.pop().unwrap_or(u32::MAX);
        }
        n
    }
    fn count(&self) -> u32 {
        self.free.lock().unwrap().len() as u32
    }
    fn refused(&self, n: u32) {
        self.refused.fetch_add(n, Ordering::Relaxed);
    }
}

/// A pool over the test's own buffers with a Rust free list: the layer hands out only
/// indices that are outside, once.
fn external_buffer_pool(eal: &Eal) {
    const COUNT: u32 = 64;
    const ROOM: u16 = 2048;
    let ops = Arc::new(ListOps { free: Mutex::new((0..COUNT).collect()), refused: AtomicU32::new(0) });
    let mut memory = vec![0u8; COUNT as usize * ROOM as usize];
    let base = memory.as_mut_ptr();
    let spec = ExtPoolSpec { name: "ext_test", count: COUNT, data_room: ROOM, priv_size: 8, cache: 0, socket: -1 };
    let buffer = |i: u32| ExtBuffer { addr: base.wrapping_add(i as usize * ROOM as usize), iova: 0 };
    // SAFETY: distinct ROOM-byte pieces of `memory`, which the pool keeps.
    let early = unsafe { ExtPool::new(&spec, buffer, ops.clone(), Box::new(())) };
    assert_eq!(early.err().map(|e| e.errno), Some(libc::ENOENT), "no ops registered yet");
    ExtPool::register_ops(eal, c"ext_test_ops").expect("register");
    assert_eq!(ExtPool::register_ops(eal, c"ext_test_ops").unwrap_err().errno, libc::EINVAL, "once");
    // SAFETY: as above.
    let pool = unsafe { ExtPool::new(&spec, buffer, ops.clone(), Box::new(memory)) }.expect("ext pool");
    assert!(pool.strided(), "256-byte headers");
    assert_eq!(pool.mempool().avail_count(), COUNT);

    // DPDK allocates from the free list; the index comes back from the address.
    let m = Mbuf::alloc(pool.pkt_pool()).expect("alloc");
    let idx = pool.index_of_addr(m.as_ptr()).expect("one of the pool's");
    assert_eq!(idx, COUNT - 1, "the list pops its last");
    assert_eq!(m.buf_len(), ROOM);
    assert!(pool.take(idx).is_none(), "held already");
    assert_eq!(ops.count(), COUNT - 1);
    // Released without a free: outside again, not in the free list; then taken back.
    assert_eq!(pool.release(m).ok(), Some(idx));
    assert_eq!(ops.count(), COUNT - 1);
    let again = pool.take(idx).expect("outside, so it can be taken");
    assert!(pool.take(idx).is_none());
    drop(again);
    assert_eq!(ops.count(), COUNT, "a free puts it back in the list");

    // A free list handing out garbage and duplicates: refused, and DPDK gets none of it.
    let held = Mbuf::alloc(pool.pkt_pool()).expect("alloc");
    let held_idx = pool.index_of_addr(held.as_ptr()).expect("ours");
    *ops.free.lock().unwrap() = vec![COUNT + 5, held_idx];
    assert!(Mbuf::alloc(pool.pkt_pool()).is_none());
    assert_eq!(ops.refused.load(Ordering::Relaxed), 2);
    // The other pool's mbufs are not this one's.
    let foreign = PktPool::new("ext_test_other", 63, 0, 2048, -1).expect("pool");
    let other = Mbuf::alloc(&foreign).expect("alloc");
    assert!(pool.index_of_addr(other.as_ptr()).is_none());
    let other = pool.release(other).expect_err("not ours");
    drop((other, foreign, held));
    assert_eq!(ops.count(), 1, "only the held one went back to the (emptied) list");
    drop(pool);
}
