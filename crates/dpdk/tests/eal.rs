//! The safe layer against a real EAL (no hugepages, no shared files, one `net_null` port).
//! EAL can be initialised once per process: everything is one test.

use dpdk::telemetry::{self, TelDict, TelData};
use dpdk::{mempool_count, Eal, ExtMem, Pdump, PktPool, Port};

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
    drop(pool);
    assert_eq!(mempool_count(), baseline + 1, "the queue keeps its pool");
    // External memory: registered, DMA-mapped for the port's device, unregistered
    // on drop (so it can be registered again).
    let len = 1 << 21;
    // SAFETY: a fresh anonymous mapping, unmapped at the end.
    let base = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
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

    // Packet capture: one at a time.
    let capture = Pdump::init(&eal).expect("pdump");
    assert_eq!(Pdump::init(&eal).unwrap_err().errno, libc::EALREADY);
    drop(capture);
    drop(Pdump::init(&eal).expect("pdump again"));

    // The last handle cleans up; EAL cannot come back.
    assert_eq!(eal.handle_count(), 1);
    drop(eal);
    assert!(Eal::current().is_none());
    assert_eq!(mempool_count(), 0);
    assert_eq!(Eal::init(&eal_args()).unwrap_err().errno, libc::EALREADY);
    // EAL keeps its runtime directory after cleanup (for secondaries); ours is ours.
    let _ = std::fs::remove_dir_all(format!("/var/run/dpdk/dpdk-crate-test-{}", std::process::id()));
}
