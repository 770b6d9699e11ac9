//! `eth_dev_ops`: the ethdev control path, called by the application's threads (and the
//! bus's event thread for the proxy's news). Each entry point catches panics.

use std::ffi::{c_int, c_uint, c_void, CString};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use dpdk_sys as sys;
use shm_contract::layout::DEFAULT_RING_ENTRIES;
use shm_contract::{DescConsumer, DescProducer};
use shm_driver_common::bus::{lock, PoolRecord, RegionHandle};
use shm_driver_common::errno_text;
use shm_driver_common::ffi::guard;

use crate::intr::RxInterrupt;
use crate::offload;
use crate::rxtx::{OwnedMempool, RxQueue, RxQueueConf, TxQueue, MAX_SEGS};
use crate::xstats::{Snapshot, QUEUE_STATS, XSTAT_NAMES};
use crate::{put_queue, Port, LOG};

struct Ops(sys::eth_dev_ops);
// SAFETY: a table of function pointers, immutable once built.
unsafe impl Sync for Ops {}
// SAFETY: as above: nothing in it belongs to one thread.
unsafe impl Send for Ops {}

static OPS: OnceLock<Ops> = OnceLock::new();

pub(crate) fn dev_ops() -> *const sys::eth_dev_ops {
    &OPS.get_or_init(|| {
        Ops(sys::eth_dev_ops {
            dev_configure: Some(dev_configure),
            dev_start: Some(dev_start),
            dev_stop: Some(dev_stop),
            dev_close: Some(dev_close),
            dev_infos_get: Some(dev_infos_get),
            link_update: Some(link_update),
            stats_get: Some(stats_get),
            stats_reset: Some(stats_reset),
            xstats_get: Some(xstats_get),
            xstats_get_names: Some(xstats_get_names),
            xstats_reset: Some(stats_reset),
            rx_queue_setup: Some(rx_queue_setup),
            tx_queue_setup: Some(tx_queue_setup),
            rx_queue_release: Some(rx_queue_release),
            rx_queue_intr_enable: Some(rx_queue_intr_enable),
            rx_queue_intr_disable: Some(rx_queue_intr_disable),
            tx_queue_release: Some(tx_queue_release),
            promiscuous_enable: Some(accept_rx_mode),
            promiscuous_disable: Some(accept_rx_mode),
            allmulticast_enable: Some(accept_rx_mode),
            allmulticast_disable: Some(accept_rx_mode),
            mtu_set: Some(mtu_set),
            mac_addr_set: Some(mac_addr_set),
            ..Default::default()
        })
    })
    .0
}

/// Runs `body` with our port, for an ethdev callback returning an errno code.
fn with_port(entry: &str, dev: *mut sys::rte_eth_dev, body: impl FnOnce(&Port) -> c_int) -> c_int {
    guard(&LOG, entry, -libc::EIO, || {
        // SAFETY: ethdev calls our ops only for ethdevs we created.
        match unsafe { Port::of(dev) } {
            Some(port) => body(port),
            None => -libc::ENODEV,
        }
    })
}

pub(crate) unsafe extern "C" fn rx_burst(q: *mut c_void, pkts: *mut *mut sys::rte_mbuf, n: u16) -> u16 {
    guard(&LOG, "rx_burst", 0, || {
        // SAFETY: `q` is the RxQueue that rx_queue_setup stored; its Arc lives in the port
        // state until release, which DPDK never does while a burst runs.
        let got = unsafe { (*(q as *const RxQueue)).burst(pkts, n) };
        #[cfg(feature = "stage-stamps")]
        crate::stages::count_poll();
        #[cfg(feature = "stage-stamps")]
        // SAFETY: the burst filled `got` valid mbufs, now the application's thread's.
        unsafe { crate::stages::Stamps::of(pkts, got as usize) }.record(latency_stages::Stage::GuestRx);
        got
    })
}

pub(crate) unsafe extern "C" fn tx_burst(q: *mut c_void, pkts: *mut *mut sys::rte_mbuf, n: u16) -> u16 {
    guard(&LOG, "tx_burst", 0, || {
        // Read before the burst: after it the proxy owns the buffers.
        #[cfg(feature = "stage-stamps")]
        // SAFETY: the application's `n` valid mbufs, not handed over yet.
        let stamps = unsafe { crate::stages::Stamps::of(pkts, n as usize) };
        #[cfg(feature = "stage-stamps")]
        stamps.record(latency_stages::Stage::GuestTx);
        // SAFETY: as for rx_burst, with the TxQueue of tx_queue_setup.
        let sent = unsafe { (*(q as *const TxQueue)).burst(pkts, n) };
        #[cfg(feature = "stage-stamps")]
        stamps.record(latency_stages::Stage::GuestTxPublished);
        sent
    })
}

unsafe extern "C" fn dev_configure(dev: *mut sys::rte_eth_dev) -> c_int {
    with_port("dev_configure", dev, |port| {
        // SAFETY: our ethdev's data, as ethdev configured it (within dev_info's maxima).
        let (rx, tx) = unsafe { ((*(*dev).data).nb_rx_queues, (*(*dev).data).nb_tx_queues) };
        // Queue k of each direction is queue pair k, one NIC queue of the proxy (ethdev
        // keeps both counts within max_rx_queues = max_tx_queues = the pairs offered).
        // The counts may differ: a pair beyond the rx queues runs transmit-only. The
        // first rx queue's pool serves such pairs (copies on tx), so one is needed.
        if rx == 0 && tx > 0 {
            LOG.error(format_args!(
                "port {}: {tx} tx queues and no rx queue: a sock: port needs at least one rx queue \
                 (its pool, in the shared region, is where transmitted packets of other pools are copied)",
                port.port_id
            ));
            return -libc::EINVAL;
        }
        0
    })
}

unsafe extern "C" fn dev_infos_get(dev: *mut sys::rte_eth_dev, info: *mut sys::rte_eth_dev_info) -> c_int {
    with_port("dev_infos_get", dev, |port| {
        let (max_frame, rx_entries, tx_entries, pairs) = match &lock(&port.state).attachment {
            Some(a) => (
                a.proxy.max_rx_frame,
                a.region.layout.rx_ring().entries,
                a.region.layout.tx_ring().entries,
                a.offered_pairs(),
            ),
            None => (1518, DEFAULT_RING_ENTRIES, DEFAULT_RING_ENTRIES, 1),
        };
        let overhead = sys::RTE_ETHER_HDR_LEN + sys::RTE_ETHER_CRC_LEN;
        // SAFETY: ethdev passes a zeroed dev_info to fill.
        let info = unsafe { &mut *info };
        info.max_rx_queues = pairs;
        info.max_tx_queues = pairs;
        info.max_mac_addrs = 1;
        info.min_rx_bufsize = 64;
        info.max_rx_pktlen = max_frame;
        info.min_mtu = sys::RTE_ETHER_MIN_MTU as u16;
        info.max_mtu = max_frame.saturating_sub(overhead).min(u16::MAX as u32) as u16;
        // Checksums and VLAN tags are done in software by this driver (crate::offload).
        info.rx_offload_capa =
            (sys::RTE_ETH_RX_OFFLOAD_SCATTER | sys::RTE_ETH_RX_OFFLOAD_RSS_HASH) as u64 | offload::RX_OFFLOAD_CAPA;
        info.tx_offload_capa = sys::RTE_ETH_TX_OFFLOAD_MULTI_SEGS as u64 | offload::TX_OFFLOAD_CAPA;
        // The rings were sized at the handshake (devargs rx_ring/tx_ring): a queue takes any
        // descriptor count up to its ring's entries; a smaller count leaves the ring as it is.
        // A 65536-entry ring is reported as 65535, the most a u16 holds.
        let desc_max = |entries: u32| entries.min(u16::MAX as u32) as u16;
        info.rx_desc_lim.nb_max = desc_max(rx_entries);
        info.rx_desc_lim.nb_min = 1;
        info.rx_desc_lim.nb_align = 1;
        info.tx_desc_lim.nb_max = desc_max(tx_entries);
        info.tx_desc_lim.nb_min = 1;
        info.tx_desc_lim.nb_align = 1;
        info.tx_desc_lim.nb_seg_max = MAX_SEGS as u16;
        info.tx_desc_lim.nb_mtu_seg_max = MAX_SEGS as u16;
        info.default_rxportconf.burst_size = 32;
        info.default_txportconf.burst_size = 32;
        info.default_rxportconf.ring_size = desc_max(rx_entries);
        info.default_txportconf.ring_size = desc_max(tx_entries);
        info.speed_capa = sys::RTE_ETH_LINK_SPEED_FIXED;
        0
    })
}

unsafe extern "C" fn link_update(dev: *mut sys::rte_eth_dev, _wait: c_int) -> c_int {
    with_port("link_update", dev, |port| {
        // ethdev wants 0 when the link changed, -1 when not.
        if port.update_link() {
            0
        } else {
            -1
        }
    })
}

unsafe extern "C" fn dev_start(dev: *mut sys::rte_eth_dev) -> c_int {
    with_port("dev_start", dev, |port| {
        let mut state = lock(&port.state);
        let Some(attachment) = state.attachment.clone().filter(|a| a.is_alive()) else {
            LOG.error(format_args!("port {}: cannot start: not connected to the proxy", port.port_id));
            return -libc::ENOTCONN;
        };
        // SAFETY: our ethdev's data, configured by ethdev before start.
        let (n_rx, n_tx) = unsafe { ((*(*dev).data).nb_rx_queues, (*(*dev).data).nb_tx_queues) };
        let Some(queues) = state.queues_set_up(n_rx, n_tx) else {
            LOG.error(format_args!(
                "port {}: cannot start: set up each of the {n_rx} rx and {n_tx} tx queues first",
                port.port_id
            ));
            return -libc::EINVAL;
        };
        // Pairs beyond the rx queues get hidden rx queues, each read by rx queue
        // `pair % n_rx` after its own ring.
        let mut pairs = Vec::with_capacity(queues.len());
        let mut folded: Vec<Option<Arc<RxQueue>>> = vec![None; queues.len()];
        let mut folds: Vec<Vec<Arc<RxQueue>>> = vec![Vec::new(); n_rx as usize];
        for (pair, (rxq, txq)) in queues.into_iter().enumerate() {
            let (rx, rx_queue) = match rxq {
                Some(rx) => (rx, pair as u16),
                None => {
                    let into = pair % n_rx as usize;
                    // Pairs 0..n_rx (the application's rx queues) are already in `pairs`.
                    let Some(parent) = pairs.get(into).map(|p: &crate::Pair| p.rx.clone()) else { return -libc::EINVAL };
                    let hidden = match parent.folded_queue(pair as u32) {
                        Ok(q) => Arc::new(q),
                        Err(e) => {
                            LOG.error(format_args!("port {}: cannot start: queue pair {pair}: {e}", port.port_id));
                            return -libc::EINVAL;
                        }
                    };
                    folds[into].push(hidden.clone());
                    folded[pair] = Some(hidden.clone());
                    (hidden, into as u16)
                }
            };
            pairs.push(crate::Pair { rx, rx_queue, tx: txq });
        }
        for (q, hidden) in folds.into_iter().enumerate() {
            pairs[q].rx.fold(hidden);
        }
        for queues in &pairs {
            // Both sides start the rings from index 0 on every queue start; the proxy is
            // not polling yet.
            queues.rx.reset();
            if let Some(txq) = &queues.tx {
                txq.reset();
                // Copies of other pools' packets go to the pair's rx pool.
                txq.copy_pool.store(queues.rx.mempool, Ordering::Relaxed);
            }
        }
        // SAFETY: our ethdev's data, configured by ethdev before start.
        let wants_rx_intr = unsafe { (*(*dev).data).dev_conf.intr_conf.rxq() } != 0;
        if wants_rx_intr && state.rx_intr.is_none() {
            // One event descriptor per rx queue the socket offers, made once: the
            // application's epoll registrations outlive restarts and reconfigurations.
            let offered = attachment.offered_pairs();
            match RxInterrupt::new(offered) {
                Ok(intr) => {
                    // SAFETY: our ethdev; the handle lives until close, which clears this.
                    unsafe { (*dev).intr_handle = intr.handle() };
                    state.rx_intr = Some(intr);
                }
                Err(e) => {
                    LOG.error(format_args!("port {}: cannot start with rx interrupts: {e}", port.port_id));
                    return -libc::ENOMEM;
                }
            }
        }
        for (pair, queues) in pairs.iter().enumerate() {
            if let Err(e) = crate::start_pair(&attachment, &state, pair as u16, queues) {
                LOG.error(format_args!("port {}: cannot start queue {pair}: {e}", port.port_id));
                // The pairs started before it are stopped again: the port is not started.
                for earlier in 0..pair as u16 {
                    let _ = attachment.device.queue_stop(earlier);
                }
                return -libc::EIO;
            }
        }
        for (pair, queues) in pairs.iter().enumerate() {
            queues.rx.gate().open();
            if let Some(txq) = &queues.tx {
                txq.gate().open();
            }
            // SAFETY: our ethdev's data; its queue state arrays have RTE_MAX_QUEUES_PER_PORT
            // entries, and each queue below its direction's count exists.
            let data = unsafe { &mut *(*dev).data };
            if pair < n_rx as usize {
                data.rx_queue_state[pair] = sys::RTE_ETH_QUEUE_STATE_STARTED as u8;
            }
            if pair < n_tx as usize {
                data.tx_queue_state[pair] = sys::RTE_ETH_QUEUE_STATE_STARTED as u8;
            }
        }
        if n_rx < n_tx {
            LOG.info(format_args!(
                "port {}: {n_rx} rx and {n_tx} tx queues: the rx rings of queue pairs {n_rx}..{} are read by rx queues \
                 pair % {n_rx}",
                port.port_id,
                n_tx - 1
            ));
        }
        state.rx_queues = n_rx;
        state.folded = folded;
        state.pairs = pairs.len() as u16;
        state.started = true;
        drop(state);
        port.update_link();
        0
    })
}

unsafe extern "C" fn dev_stop(dev: *mut sys::rte_eth_dev) -> c_int {
    with_port("dev_stop", dev, |port| stop(port, dev))
}

fn stop(port: &Port, dev: *mut sys::rte_eth_dev) -> c_int {
    let mut state = lock(&port.state);
    if !state.started {
        return 0;
    }
    #[cfg(feature = "stage-stamps")]
    crate::stages::report();
    // No burst runs past this (the application should not poll a stopping port; one
    // that does finds the queues closed).
    let (rxqs, txqs) = state.all_queues();
    rxqs.for_each(|q| q.gate().stop());
    txqs.for_each(|q| q.gate().stop());
    for pair in 0..state.pairs {
        let mut proxy_stopped = false;
        if let Some(attachment) = &state.attachment {
            match attachment.device.queue_stop(pair) {
                Ok(()) => proxy_stopped = true,
                // Not connected: nothing was asked.
                Err(e) if e.errno == -libc::ENOTCONN => {}
                Err(e) => LOG.warning(format_args!("port {}: stopping the proxy's queue {pair}: {e}", port.port_id)),
            }
        }
        let rxq = match state.rxq.get(pair as usize) {
            Some(Some(own)) if pair < state.rx_queues => Some(own),
            _ => state.folded.get(pair as usize).and_then(Option::as_ref),
        };
        if let Some(rxq) = rxq {
            if proxy_stopped || state.attachment.as_ref().is_none_or(|a| !a.is_alive()) {
                // SAFETY: our queue is stopped and the proxy no longer produces.
                let freed = unsafe { rxq.drain() };
                if freed > 0 {
                    LOG.debug(format_args!("port {}: freed {freed} packets left in rx ring {pair}", port.port_id));
                }
            }
        }
        // SAFETY: our ethdev's data; its queue state arrays have RTE_MAX_QUEUES_PER_PORT
        // entries (a pair's missing side was never started: stopped is what it says).
        unsafe {
            let data = &mut *(*dev).data;
            data.rx_queue_state[pair as usize] = sys::RTE_ETH_QUEUE_STATE_STOPPED as u8;
            data.tx_queue_state[pair as usize] = sys::RTE_ETH_QUEUE_STATE_STOPPED as u8;
        }
    }
    // The hidden queues go (each start makes them anew); the application's queues stay.
    for own in state.rxq.iter().flatten() {
        own.fold(Vec::new());
    }
    state.folded.clear();
    state.pairs = 0;
    state.started = false;
    drop(state);
    port.update_link();
    0
}

unsafe extern "C" fn dev_close(dev: *mut sys::rte_eth_dev) -> c_int {
    guard(&LOG, "dev_close", -libc::EIO, || {
        // SAFETY: ethdev calls our ops only for ethdevs we created; process_private is null
        // or the reference stored at probe, which we take back here exactly once.
        let port = unsafe {
            let ptr = (*dev).process_private as *const Port;
            if ptr.is_null() {
                return 0;
            }
            (*dev).process_private = std::ptr::null_mut();
            Arc::from_raw(ptr)
        };
        stop(&port, dev);
        {
            let mut state = lock(&port.state);
            // SAFETY: our ethdev's queue arrays (nb_*_queues entries); DPDK frees the
            // arrays, we free the queues.
            unsafe {
                let data = &mut *(*dev).data;
                if !data.rx_queues.is_null() {
                    for q in 0..data.nb_rx_queues as usize {
                        *data.rx_queues.add(q) = std::ptr::null_mut();
                    }
                }
                if !data.tx_queues.is_null() {
                    for q in 0..data.nb_tx_queues as usize {
                        *data.tx_queues.add(q) = std::ptr::null_mut();
                    }
                }
            }
            state.rxq.clear();
            state.folded.clear();
            state.txq.clear();
            if state.rx_intr.take().is_some() {
                // SAFETY: our ethdev; the handle is freed right after (with rx_intr).
                unsafe { (*dev).intr_handle = std::ptr::null_mut() };
            }
            // A closed port ends its session now, not when the device is detached: the
            // proxy frees the queue for the next guest (or for `port attach` again).
            if let Some(attachment) = state.attachment.take() {
                attachment.device.close_session();
            }
        }
        crate::forget_port(port.serial);
        LOG.info(format_args!("sock:{}: port {} closed", port.name, port.port_id));
        0
    })
}

/// The application is about to sleep until queue `queue` has packets: ask the proxy for
/// a wake-up, and wake the application at once if packets are already there.
unsafe extern "C" fn rx_queue_intr_enable(dev: *mut sys::rte_eth_dev, queue: u16) -> c_int {
    with_port("rx_queue_intr_enable", dev, |port| {
        let state = lock(&port.state);
        let (Some(intr), Some(Some(rxq))) = (&state.rx_intr, state.rxq.get(queue as usize)) else {
            return -libc::ENOTSUP;
        };
        // Wake-ups that came while the application was polling are stale now; left in
        // the socket they would pile up and could fill it.
        if intr.drain(queue).is_none() {
            return -libc::EINVAL;
        }
        // ethdev's rule: the thread that polls the queue arms its interrupt.
        if rxq.arm_wakeup() {
            intr.wake_self(queue);
        }
        0
    })
}

unsafe extern "C" fn rx_queue_intr_disable(dev: *mut sys::rte_eth_dev, queue: u16) -> c_int {
    with_port("rx_queue_intr_disable", dev, |port| {
        let state = lock(&port.state);
        let Some(Some(rxq)) = state.rxq.get(queue as usize) else { return -libc::ENOTSUP };
        rxq.disarm_wakeup();
        0
    })
}

unsafe extern "C" fn rx_queue_setup(
    dev: *mut sys::rte_eth_dev,
    queue: u16,
    nb_desc: u16,
    socket: c_uint,
    conf: *const sys::rte_eth_rxconf,
    mp: *mut sys::rte_mempool,
) -> c_int {
    with_port("rx_queue_setup", dev, |port| {
        let mut state = lock(&port.state);
        let Some(region) = state.attachment.as_ref().map(|a| a.region.clone()) else { return -libc::ENOTCONN };
        let Some((area, _)) = region.layout.rings_of(queue as u32) else {
            LOG.error(format_args!("port {}: rx queue {queue}: the proxy offers {} queue pair(s)", port.port_id, region.layout.queue_pairs()));
            return -libc::EINVAL;
        };
        let (pool, mempool, own) = match region.pool_of_mempool(mp) {
            Some(pool) => (pool, mp, None),
            None => match internal_pool(port, &region, mp, queue, nb_desc, socket) {
                Ok((pool, owned)) => (pool, owned.0, Some(owned)),
                Err(e) => {
                    LOG.error(format_args!("port {}: rx queue: {e}", port.port_id));
                    return -libc::ENOMEM;
                }
            },
        };
        // Our own copy of the pool's layout, checked against the region's by the
        // contract's rules: every offset the proxy sends is checked against it.
        let pool_layout = match pool.pool.validate(&region.layout, &[]) {
            Ok(layout) => layout,
            Err(e) => {
                LOG.error(format_args!("port {}: rx queue {queue}: the pool's layout is invalid: {e}", port.port_id));
                return -libc::EINVAL;
            }
        };
        // SAFETY: the queue keeps the region handle, so the view stays valid.
        let mem = unsafe { region.mem_static() };
        let ring = match DescConsumer::new(&mem, area) {
            Ok(r) => r,
            Err(e) => {
                LOG.error(format_args!("port {}: rx ring {queue}: {e}", port.port_id));
                return -libc::EINVAL;
            }
        };
        // SAFETY: our ethdev's configured data; `conf` is ethdev's (never null) for this call.
        let offloads = unsafe { (*(*dev).data).dev_conf.rxmode.offloads | conf.as_ref().map_or(0, |c| c.offloads) };
        let conf = RxQueueConf {
            pool: pool_layout,
            pool_id: pool.pool.pool_id,
            depth: nb_desc as u32,
            mempool,
            port_id: port.port_id,
            offloads,
        };
        let rxq = Arc::new(RxQueue::new(region, area, ring, conf, own, queue as u32));
        // SAFETY: ethdev calls this for queue < nb_rx_queues, the length of the array.
        unsafe { *(*(*dev).data).rx_queues.add(queue as usize) = Arc::as_ptr(&rxq) as *mut c_void };
        put_queue(&mut state.rxq, queue, Some(rxq));
        0
    })
}

/// A pool in this port's region for rx, when the application's pool lives elsewhere
/// (another device's region, or private memory). Rx stays zero-copy into it.
fn internal_pool(
    port: &Port,
    region: &RegionHandle,
    app_pool: *mut sys::rte_mempool,
    queue: u16,
    nb_desc: u16,
    socket: c_uint,
) -> Result<(PoolRecord, OwnedMempool), String> {
    // SAFETY: the application's pool is a live pktmbuf pool (ethdev checked it).
    let data_room = unsafe { sys::rte_pktmbuf_data_room_size(app_pool) };
    let count = (region.layout.rx_ring().entries * 2 + nb_desc as u32 + 1024).max(2048);
    // Queue 0's keeps the name it had before ports had several queues.
    let name = if queue == 0 { format!("shm_rx_{}", port.port_id) } else { format!("shm_rx_{}_{queue}", port.port_id) };
    let name = CString::new(name).map_err(|_| "bad name")?;
    // SAFETY: standard pktmbuf pool construction, with our ops and our device as the ops'
    // pool_config so that the pool lands in this port's region.
    unsafe {
        let mp = sys::rte_mempool_create_empty(
            name.as_ptr(),
            count,
            std::mem::size_of::<sys::rte_mbuf>() as u32 + data_room as u32,
            256,
            std::mem::size_of::<sys::rte_pktmbuf_pool_private>() as u32,
            socket as i32,
            0,
        );
        if mp.is_null() {
            return Err(format!("cannot create pool {:?}: {}", name, errno_text(sys::dpdk_sys_errno())));
        }
        let owned = OwnedMempool(mp);
        if sys::rte_mempool_set_ops_byname(mp, c"shm".as_ptr(), port.rte as *mut c_void) != 0 {
            return Err("mempool ops 'shm' not registered (load librte_mempool_shm.so)".into());
        }
        let mut private = sys::rte_pktmbuf_pool_private { mbuf_data_room_size: data_room, mbuf_priv_size: 0, flags: 0 };
        sys::rte_pktmbuf_pool_init(mp, &mut private as *mut _ as *mut c_void);
        if sys::rte_mempool_populate_default(mp) < 0 {
            return Err(format!("cannot place {count} mbufs in the region of sock:{}", port.name));
        }
        sys::rte_mempool_obj_iter(mp, Some(sys::rte_pktmbuf_init), std::ptr::null_mut());
        let pool = region.pool_of_mempool(mp).ok_or("the new pool is not in the region")?;
        LOG.notice(format_args!(
            "port {}: the application's rx pool is not in this port's shared region; \
             receiving into an internal pool of {count} mbufs there (still zero-copy)",
            port.port_id
        ));
        Ok((pool, owned))
    }
}

unsafe extern "C" fn tx_queue_setup(
    dev: *mut sys::rte_eth_dev,
    queue: u16,
    _nb_desc: u16,
    _socket: c_uint,
    _conf: *const sys::rte_eth_txconf,
) -> c_int {
    with_port("tx_queue_setup", dev, |port| {
        let mut state = lock(&port.state);
        let Some(region) = state.attachment.as_ref().map(|a| a.region.clone()) else { return -libc::ENOTCONN };
        let Some((_, area)) = region.layout.rings_of(queue as u32) else {
            LOG.error(format_args!("port {}: tx queue {queue}: the proxy offers {} queue pair(s)", port.port_id, region.layout.queue_pairs()));
            return -libc::EINVAL;
        };
        // SAFETY: the queue keeps the region handle.
        let mem = unsafe { region.mem_static() };
        let ring = match DescProducer::new(&mem, area) {
            Ok(r) => r,
            Err(e) => {
                LOG.error(format_args!("port {}: tx ring {queue}: {e}", port.port_id));
                return -libc::EINVAL;
            }
        };
        let txq = Arc::new(TxQueue::new(region, area, ring));
        // SAFETY: ethdev calls this for queue < nb_tx_queues, the length of the array.
        unsafe { *(*(*dev).data).tx_queues.add(queue as usize) = Arc::as_ptr(&txq) as *mut c_void };
        put_queue(&mut state.txq, queue, Some(txq));
        0
    })
}

unsafe extern "C" fn rx_queue_release(dev: *mut sys::rte_eth_dev, queue: u16) {
    with_port("rx_queue_release", dev, |port| {
        if let Some(slot) = lock(&port.state).rxq.get_mut(queue as usize) {
            *slot = None;
        }
        0
    });
}

unsafe extern "C" fn tx_queue_release(dev: *mut sys::rte_eth_dev, queue: u16) {
    with_port("tx_queue_release", dev, |port| {
        if let Some(slot) = lock(&port.state).txq.get_mut(queue as usize) {
            *slot = None;
        }
        0
    });
}

pub(crate) fn snapshot(port: &Port) -> (Snapshot, Snapshot) {
    let state = lock(&port.state);
    let now = Snapshot::read(&state.rxq, &state.txq, port.link_down_events.load(Ordering::Relaxed));
    (now, state.stats_base)
}

unsafe extern "C" fn stats_get(dev: *mut sys::rte_eth_dev, stats: *mut sys::rte_eth_stats) -> c_int {
    with_port("stats_get", dev, |port| {
        let (now, base) = snapshot(port);
        let s = now.since(&base);
        // SAFETY: ethdev passes a zeroed stats struct to fill.
        let out = unsafe { &mut *stats };
        out.ipackets = s.rx_packets;
        out.ibytes = s.rx_bytes;
        out.ierrors = s.rx_invalid;
        out.opackets = s.tx_packets;
        out.obytes = s.tx_bytes;
        out.oerrors = s.tx_dropped;
        // Per queue (ethdev makes the rx_q<k>_*/tx_q<k>_* xstats of them).
        for q in 0..QUEUE_STATS {
            out.q_ipackets[q] = s.queues[q].rx_packets;
            out.q_ibytes[q] = s.queues[q].rx_bytes;
            out.q_errors[q] = s.queues[q].rx_invalid;
            out.q_opackets[q] = s.queues[q].tx_packets;
            out.q_obytes[q] = s.queues[q].tx_bytes;
        }
        0
    })
}

unsafe extern "C" fn stats_reset(dev: *mut sys::rte_eth_dev) -> c_int {
    with_port("stats_reset", dev, |port| {
        let (now, _) = snapshot(port);
        lock(&port.state).stats_base = now;
        0
    })
}

unsafe extern "C" fn xstats_get_names(dev: *mut sys::rte_eth_dev, names: *mut sys::rte_eth_xstat_name, size: c_uint) -> c_int {
    with_port("xstats_get_names", dev, |_| {
        if names.is_null() || (size as usize) < XSTAT_NAMES.len() {
            return XSTAT_NAMES.len() as c_int;
        }
        for (i, name) in XSTAT_NAMES.iter().enumerate() {
            // SAFETY: ethdev gives room for `size` names of 64 bytes; names are shorter.
            unsafe {
                let dst = &mut (*names.add(i)).name;
                dst.fill(0);
                for (d, s) in dst.iter_mut().zip(name.bytes()) {
                    *d = s as std::ffi::c_char;
                }
            }
        }
        XSTAT_NAMES.len() as c_int
    })
}

unsafe extern "C" fn xstats_get(dev: *mut sys::rte_eth_dev, xstats: *mut sys::rte_eth_xstat, n: c_uint) -> c_int {
    with_port("xstats_get", dev, |port| {
        if xstats.is_null() || (n as usize) < XSTAT_NAMES.len() {
            return XSTAT_NAMES.len() as c_int;
        }
        let (now, base) = snapshot(port);
        for (i, value) in now.since(&base).xstats().iter().enumerate() {
            // SAFETY: ethdev gives room for `n` entries.
            unsafe {
                (*xstats.add(i)).id = i as u64;
                (*xstats.add(i)).value = *value;
            }
        }
        XSTAT_NAMES.len() as c_int
    })
}

/// Filtering is the proxy's NIC's business; these modes are accepted as they are.
unsafe extern "C" fn accept_rx_mode(dev: *mut sys::rte_eth_dev) -> c_int {
    with_port("rx mode", dev, |_| 0)
}

unsafe extern "C" fn mtu_set(dev: *mut sys::rte_eth_dev, mtu: u16) -> c_int {
    with_port("mtu_set", dev, |port| {
        let max_frame = lock(&port.state).attachment.as_ref().map_or(1518, |a| a.proxy.max_rx_frame);
        let overhead = sys::RTE_ETHER_HDR_LEN + sys::RTE_ETHER_CRC_LEN;
        if mtu as u32 + overhead > max_frame {
            LOG.error(format_args!("port {}: MTU {mtu} exceeds the proxy's largest frame ({max_frame})", port.port_id));
            return -libc::EINVAL;
        }
        0
    })
}

unsafe extern "C" fn mac_addr_set(dev: *mut sys::rte_eth_dev, _addr: *mut sys::rte_ether_addr) -> c_int {
    with_port("mac_addr_set", dev, |_| 0)
}
