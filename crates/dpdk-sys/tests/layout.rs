//! The Rust bindings must see every structure our drivers touch exactly as the C compiler
//! does with the installed headers, and those structures must be the DPDK 22.11 ones the
//! drivers were written for. A mismatch fails here, loudly, rather than corrupting memory
//! inside a plugin.

use core::mem::{offset_of, size_of};
use dpdk_sys::*;
use std::collections::HashMap;

macro_rules! rust_layout {
    ($( $key:literal => $value:expr ),* $(,)?) => {
        vec![$( ($key, $value) ),*]
    };
}

fn rust_side() -> Vec<(&'static str, usize)> {
    rust_layout! {
        "sizeof rte_mbuf" => size_of::<rte_mbuf>(),
        "rte_mbuf.buf_addr" => offset_of!(rte_mbuf, buf_addr),
        "rte_mbuf.buf_iova" => offset_of!(rte_mbuf, buf_iova),
        "rte_mbuf.data_off" => offset_of!(rte_mbuf, data_off),
        "rte_mbuf.refcnt" => offset_of!(rte_mbuf, refcnt),
        "rte_mbuf.nb_segs" => offset_of!(rte_mbuf, nb_segs),
        "rte_mbuf.port" => offset_of!(rte_mbuf, port),
        "rte_mbuf.ol_flags" => offset_of!(rte_mbuf, ol_flags),
        "rte_mbuf.packet_type" => offset_of!(rte_mbuf, __bindgen_anon_1),
        "rte_mbuf.pkt_len" => offset_of!(rte_mbuf, pkt_len),
        "rte_mbuf.data_len" => offset_of!(rte_mbuf, data_len),
        "rte_mbuf.vlan_tci" => offset_of!(rte_mbuf, vlan_tci),
        "rte_mbuf.hash" => offset_of!(rte_mbuf, __bindgen_anon_2),
        "rte_mbuf.buf_len" => offset_of!(rte_mbuf, buf_len),
        "rte_mbuf.pool" => offset_of!(rte_mbuf, pool),
        "rte_mbuf.next" => offset_of!(rte_mbuf, next),
        "rte_mbuf.tx_offload" => offset_of!(rte_mbuf, __bindgen_anon_3),
        "rte_mbuf.shinfo" => offset_of!(rte_mbuf, shinfo),
        "rte_mbuf.priv_size" => offset_of!(rte_mbuf, priv_size),
        "rte_mbuf.dynfield1" => offset_of!(rte_mbuf, dynfield1),
        "sizeof rte_pktmbuf_pool_private" => size_of::<rte_pktmbuf_pool_private>(),
        "sizeof rte_mempool" => size_of::<rte_mempool>(),
        "rte_mempool.name" => offset_of!(rte_mempool, name),
        "rte_mempool.pool_data" => offset_of!(rte_mempool, __bindgen_anon_1),
        "rte_mempool.pool_config" => offset_of!(rte_mempool, pool_config),
        "rte_mempool.mz" => offset_of!(rte_mempool, mz),
        "rte_mempool.flags" => offset_of!(rte_mempool, flags),
        "rte_mempool.socket_id" => offset_of!(rte_mempool, socket_id),
        "rte_mempool.size" => offset_of!(rte_mempool, size),
        "rte_mempool.cache_size" => offset_of!(rte_mempool, cache_size),
        "rte_mempool.elt_size" => offset_of!(rte_mempool, elt_size),
        "rte_mempool.header_size" => offset_of!(rte_mempool, header_size),
        "rte_mempool.trailer_size" => offset_of!(rte_mempool, trailer_size),
        "rte_mempool.private_data_size" => offset_of!(rte_mempool, private_data_size),
        "rte_mempool.ops_index" => offset_of!(rte_mempool, ops_index),
        "rte_mempool.local_cache" => offset_of!(rte_mempool, local_cache),
        "rte_mempool.populated_size" => offset_of!(rte_mempool, populated_size),
        "rte_mempool.elt_list" => offset_of!(rte_mempool, elt_list),
        "rte_mempool.nb_mem_chunks" => offset_of!(rte_mempool, nb_mem_chunks),
        "rte_mempool.mem_list" => offset_of!(rte_mempool, mem_list),
        "sizeof rte_mempool_objhdr" => size_of::<rte_mempool_objhdr>(),
        "sizeof rte_mempool_cache" => size_of::<rte_mempool_cache>(),
        "sizeof rte_mempool_ops" => size_of::<rte_mempool_ops>(),
        "rte_mempool_ops.name" => offset_of!(rte_mempool_ops, name),
        "rte_mempool_ops.alloc" => offset_of!(rte_mempool_ops, alloc),
        "rte_mempool_ops.free" => offset_of!(rte_mempool_ops, free),
        "rte_mempool_ops.enqueue" => offset_of!(rte_mempool_ops, enqueue),
        "rte_mempool_ops.dequeue" => offset_of!(rte_mempool_ops, dequeue),
        "rte_mempool_ops.get_count" => offset_of!(rte_mempool_ops, get_count),
        "rte_mempool_ops.calc_mem_size" => offset_of!(rte_mempool_ops, calc_mem_size),
        "rte_mempool_ops.populate" => offset_of!(rte_mempool_ops, populate),
        "rte_mempool_ops.get_info" => offset_of!(rte_mempool_ops, get_info),
        "rte_mempool_ops.dequeue_contig_blocks" => offset_of!(rte_mempool_ops, dequeue_contig_blocks),
        "sizeof rte_eth_dev" => size_of::<rte_eth_dev>(),
        "rte_eth_dev.rx_pkt_burst" => offset_of!(rte_eth_dev, rx_pkt_burst),
        "rte_eth_dev.tx_pkt_burst" => offset_of!(rte_eth_dev, tx_pkt_burst),
        "rte_eth_dev.tx_pkt_prepare" => offset_of!(rte_eth_dev, tx_pkt_prepare),
        "rte_eth_dev.rx_queue_count" => offset_of!(rte_eth_dev, rx_queue_count),
        "rte_eth_dev.data" => offset_of!(rte_eth_dev, data),
        "rte_eth_dev.process_private" => offset_of!(rte_eth_dev, process_private),
        "rte_eth_dev.dev_ops" => offset_of!(rte_eth_dev, dev_ops),
        "rte_eth_dev.device" => offset_of!(rte_eth_dev, device),
        "rte_eth_dev.intr_handle" => offset_of!(rte_eth_dev, intr_handle),
        "rte_eth_dev.state" => offset_of!(rte_eth_dev, state),
        "rte_eth_dev.security_ctx" => offset_of!(rte_eth_dev, security_ctx),
        "sizeof rte_eth_dev_data" => size_of::<rte_eth_dev_data>(),
        "rte_eth_dev_data.name" => offset_of!(rte_eth_dev_data, name),
        "rte_eth_dev_data.rx_queues" => offset_of!(rte_eth_dev_data, rx_queues),
        "rte_eth_dev_data.tx_queues" => offset_of!(rte_eth_dev_data, tx_queues),
        "rte_eth_dev_data.nb_rx_queues" => offset_of!(rte_eth_dev_data, nb_rx_queues),
        "rte_eth_dev_data.nb_tx_queues" => offset_of!(rte_eth_dev_data, nb_tx_queues),
        "rte_eth_dev_data.dev_private" => offset_of!(rte_eth_dev_data, dev_private),
        "rte_eth_dev_data.dev_link" => offset_of!(rte_eth_dev_data, dev_link),
        "rte_eth_dev_data.dev_conf" => offset_of!(rte_eth_dev_data, dev_conf),
        "rte_eth_dev_data.mtu" => offset_of!(rte_eth_dev_data, mtu),
        "rte_eth_dev_data.mac_addrs" => offset_of!(rte_eth_dev_data, mac_addrs),
        "rte_eth_dev_data.port_id" => offset_of!(rte_eth_dev_data, port_id),
        "rte_eth_dev_data.dev_flags" => offset_of!(rte_eth_dev_data, dev_flags),
        "rte_eth_dev_data.numa_node" => offset_of!(rte_eth_dev_data, numa_node),
        "rte_eth_dev_data.rx_queue_state" => offset_of!(rte_eth_dev_data, rx_queue_state),
        "rte_eth_dev_data.tx_queue_state" => offset_of!(rte_eth_dev_data, tx_queue_state),
        "rte_eth_dev_data.owner" => offset_of!(rte_eth_dev_data, owner),
        "sizeof eth_dev_ops" => size_of::<eth_dev_ops>(),
        "eth_dev_ops.dev_configure" => offset_of!(eth_dev_ops, dev_configure),
        "eth_dev_ops.dev_start" => offset_of!(eth_dev_ops, dev_start),
        "eth_dev_ops.dev_stop" => offset_of!(eth_dev_ops, dev_stop),
        "eth_dev_ops.dev_close" => offset_of!(eth_dev_ops, dev_close),
        "eth_dev_ops.link_update" => offset_of!(eth_dev_ops, link_update),
        "eth_dev_ops.stats_get" => offset_of!(eth_dev_ops, stats_get),
        "eth_dev_ops.xstats_get" => offset_of!(eth_dev_ops, xstats_get),
        "eth_dev_ops.dev_infos_get" => offset_of!(eth_dev_ops, dev_infos_get),
        "eth_dev_ops.rx_queue_setup" => offset_of!(eth_dev_ops, rx_queue_setup),
        "eth_dev_ops.tx_queue_setup" => offset_of!(eth_dev_ops, tx_queue_setup),
        "eth_dev_ops.rx_queue_release" => offset_of!(eth_dev_ops, rx_queue_release),
        "eth_dev_ops.tx_queue_release" => offset_of!(eth_dev_ops, tx_queue_release),
        "eth_dev_ops.rx_queue_intr_enable" => offset_of!(eth_dev_ops, rx_queue_intr_enable),
        "eth_dev_ops.mtu_set" => offset_of!(eth_dev_ops, mtu_set),
        "sizeof rte_bus" => size_of::<rte_bus>(),
        "rte_bus.name" => offset_of!(rte_bus, name),
        "rte_bus.scan" => offset_of!(rte_bus, scan),
        "rte_bus.probe" => offset_of!(rte_bus, probe),
        "rte_bus.find_device" => offset_of!(rte_bus, find_device),
        "rte_bus.plug" => offset_of!(rte_bus, plug),
        "rte_bus.unplug" => offset_of!(rte_bus, unplug),
        "rte_bus.parse" => offset_of!(rte_bus, parse),
        "rte_bus.devargs_parse" => offset_of!(rte_bus, devargs_parse),
        "rte_bus.dma_map" => offset_of!(rte_bus, dma_map),
        "rte_bus.dma_unmap" => offset_of!(rte_bus, dma_unmap),
        "rte_bus.conf" => offset_of!(rte_bus, conf),
        "rte_bus.get_iommu_class" => offset_of!(rte_bus, get_iommu_class),
        "rte_bus.dev_iterate" => offset_of!(rte_bus, dev_iterate),
        "rte_bus.hot_unplug_handler" => offset_of!(rte_bus, hot_unplug_handler),
        "rte_bus.sigbus_handler" => offset_of!(rte_bus, sigbus_handler),
        "rte_bus.cleanup" => offset_of!(rte_bus, cleanup),
        "sizeof rte_device" => size_of::<rte_device>(),
        "rte_device.name" => offset_of!(rte_device, name),
        "rte_device.bus_info" => offset_of!(rte_device, bus_info),
        "rte_device.driver" => offset_of!(rte_device, driver),
        "rte_device.bus" => offset_of!(rte_device, bus),
        "rte_device.numa_node" => offset_of!(rte_device, numa_node),
        "rte_device.devargs" => offset_of!(rte_device, devargs),
        "sizeof rte_driver" => size_of::<rte_driver>(),
        "sizeof rte_devargs" => size_of::<rte_devargs>(),
        "rte_devargs.type" => offset_of!(rte_devargs, type_),
        "rte_devargs.policy" => offset_of!(rte_devargs, policy),
        "rte_devargs.name" => offset_of!(rte_devargs, name),
        "rte_devargs.bus" => offset_of!(rte_devargs, bus),
        "rte_devargs.cls" => offset_of!(rte_devargs, cls),
        "rte_devargs.bus_str" => offset_of!(rte_devargs, bus_str),
        "rte_devargs.cls_str" => offset_of!(rte_devargs, cls_str),
        "rte_devargs.data" => offset_of!(rte_devargs, data),
        "sizeof rte_eth_dev_info" => size_of::<rte_eth_dev_info>(),
        "sizeof rte_eth_stats" => size_of::<rte_eth_stats>(),
        "sizeof rte_eth_link" => size_of::<rte_eth_link>(),
        "sizeof rte_eth_conf" => size_of::<rte_eth_conf>(),
        "sizeof rte_eth_rxconf" => size_of::<rte_eth_rxconf>(),
        "sizeof rte_eth_txconf" => size_of::<rte_eth_txconf>(),
        "sizeof rte_eth_xstat" => size_of::<rte_eth_xstat>(),
        "sizeof rte_eth_xstat_name" => size_of::<rte_eth_xstat_name>(),
    }
}

#[test]
fn bindings_match_the_c_compiler_for_every_probed_field() {
    let c: HashMap<String, usize> = dpdk_sys::c_layout().into_iter().collect();
    let rust = rust_side();
    assert_eq!(c.len(), rust.len(), "layout_probe.c and this test must list the same fields");
    let mut mismatches = Vec::new();
    for (name, rust_value) in &rust {
        match c.get(*name) {
            Some(c_value) if c_value == rust_value => {}
            Some(c_value) => mismatches.push(format!("{name}: C says {c_value}, bindings say {rust_value}")),
            None => mismatches.push(format!("{name}: not probed on the C side")),
        }
    }
    assert!(mismatches.is_empty(), "binding layout differs from C:\n{}", mismatches.join("\n"));
}

/// The values the drivers were written and reviewed against (DPDK 22.11, x86_64). A new
/// DPDK series must be reviewed before these are changed.
#[test]
fn layout_is_the_dpdk_22_11_one_the_drivers_expect() {
    assert!(DPDK_VERSION.starts_with("22.11"), "bindings were generated for DPDK {DPDK_VERSION}");
    let expected: &[(&str, usize)] = &[
        ("sizeof rte_mbuf", 128),
        ("rte_mbuf.buf_addr", 0),
        ("rte_mbuf.buf_iova", 8),
        ("rte_mbuf.data_off", 16),
        ("rte_mbuf.refcnt", 18),
        ("rte_mbuf.nb_segs", 20),
        ("rte_mbuf.port", 22),
        ("rte_mbuf.ol_flags", 24),
        ("rte_mbuf.packet_type", 32),
        ("rte_mbuf.pkt_len", 36),
        ("rte_mbuf.data_len", 40),
        ("rte_mbuf.vlan_tci", 42),
        ("rte_mbuf.hash", 44),
        ("rte_mbuf.buf_len", 54),
        ("rte_mbuf.pool", 56),
        ("rte_mbuf.next", 64),
        ("rte_mbuf.tx_offload", 72),
        ("rte_mbuf.priv_size", 88),
        ("sizeof rte_mempool_objhdr", 24),
        ("sizeof rte_pktmbuf_pool_private", 8),
        ("sizeof rte_mempool", 192),
        ("sizeof rte_mempool_ops", 128),
        ("sizeof rte_bus", 144),
        ("sizeof rte_device", 64),
        ("sizeof rte_driver", 32),
        ("sizeof rte_eth_dev", 16512),
        ("sizeof rte_eth_dev_data", 6144),
        ("sizeof eth_dev_ops", 904),
    ];
    let c: HashMap<String, usize> = dpdk_sys::c_layout().into_iter().collect();
    for (name, value) in expected {
        assert_eq!(c.get(*name), Some(value), "{name} is not the DPDK 22.11 value the drivers rely on");
    }
}

#[test]
fn errno_shim_round_trips() {
    // SAFETY: rte_errno is a plain thread-local; setting and reading it has no other effect.
    unsafe {
        dpdk_sys_set_errno(42);
        assert_eq!(dpdk_sys_errno(), 42);
        dpdk_sys_set_errno(0);
    }
}

#[test]
fn static_inline_wrappers_are_callable() {
    // rte_is_power_of_2 is a static inline in rte_common.h; reaching it proves the glue links.
    // SAFETY: pure arithmetic.
    unsafe {
        assert_eq!(rte_is_power_of_2(4096), 1);
        assert_eq!(rte_is_power_of_2(4097), 0);
    }
}
