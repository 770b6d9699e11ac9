/* Sizes and offsets of the DPDK structures our drivers touch, as the C compiler sees
 * them with the installed headers. The layout tests compare the Rust bindings against
 * this table, so a header/library mismatch fails loudly instead of corrupting memory. */
#include <stddef.h>
#include "wrapper.h"

struct dpdk_sys_layout_entry {
	const char *name;
	size_t value;
};

#define SIZE(t) { "sizeof " #t, sizeof(struct t) }
#define OFF(t, f) { #t "." #f, offsetof(struct t, f) }

const struct dpdk_sys_layout_entry dpdk_sys_layout[] = {
	SIZE(rte_mbuf),
	OFF(rte_mbuf, buf_addr), OFF(rte_mbuf, buf_iova), OFF(rte_mbuf, data_off),
	OFF(rte_mbuf, refcnt), OFF(rte_mbuf, nb_segs), OFF(rte_mbuf, port),
	OFF(rte_mbuf, ol_flags), OFF(rte_mbuf, packet_type), OFF(rte_mbuf, pkt_len),
	OFF(rte_mbuf, data_len), OFF(rte_mbuf, vlan_tci), OFF(rte_mbuf, hash),
	OFF(rte_mbuf, buf_len), OFF(rte_mbuf, pool), OFF(rte_mbuf, next),
	OFF(rte_mbuf, tx_offload), OFF(rte_mbuf, shinfo), OFF(rte_mbuf, priv_size),
	OFF(rte_mbuf, dynfield1),
	SIZE(rte_pktmbuf_pool_private),
	SIZE(rte_mempool),
	OFF(rte_mempool, name), OFF(rte_mempool, pool_data), OFF(rte_mempool, pool_config),
	OFF(rte_mempool, mz), OFF(rte_mempool, flags), OFF(rte_mempool, socket_id),
	OFF(rte_mempool, size), OFF(rte_mempool, cache_size), OFF(rte_mempool, elt_size),
	OFF(rte_mempool, header_size), OFF(rte_mempool, trailer_size),
	OFF(rte_mempool, private_data_size), OFF(rte_mempool, ops_index),
	OFF(rte_mempool, local_cache), OFF(rte_mempool, populated_size),
	OFF(rte_mempool, elt_list), OFF(rte_mempool, nb_mem_chunks), OFF(rte_mempool, mem_list),
	SIZE(rte_mempool_objhdr), SIZE(rte_mempool_cache),
	SIZE(rte_mempool_ops),
	OFF(rte_mempool_ops, name), OFF(rte_mempool_ops, alloc), OFF(rte_mempool_ops, free),
	OFF(rte_mempool_ops, enqueue), OFF(rte_mempool_ops, dequeue),
	OFF(rte_mempool_ops, get_count), OFF(rte_mempool_ops, calc_mem_size),
	OFF(rte_mempool_ops, populate), OFF(rte_mempool_ops, get_info),
	OFF(rte_mempool_ops, dequeue_contig_blocks),
	SIZE(rte_eth_dev),
	OFF(rte_eth_dev, rx_pkt_burst), OFF(rte_eth_dev, tx_pkt_burst),
	OFF(rte_eth_dev, tx_pkt_prepare), OFF(rte_eth_dev, rx_queue_count),
	OFF(rte_eth_dev, data), OFF(rte_eth_dev, process_private), OFF(rte_eth_dev, dev_ops),
	OFF(rte_eth_dev, device), OFF(rte_eth_dev, intr_handle), OFF(rte_eth_dev, state),
	OFF(rte_eth_dev, security_ctx),
	SIZE(rte_eth_dev_data),
	OFF(rte_eth_dev_data, name), OFF(rte_eth_dev_data, rx_queues),
	OFF(rte_eth_dev_data, tx_queues), OFF(rte_eth_dev_data, nb_rx_queues),
	OFF(rte_eth_dev_data, nb_tx_queues), OFF(rte_eth_dev_data, dev_private),
	OFF(rte_eth_dev_data, dev_link), OFF(rte_eth_dev_data, dev_conf),
	OFF(rte_eth_dev_data, mtu), OFF(rte_eth_dev_data, mac_addrs),
	OFF(rte_eth_dev_data, port_id), OFF(rte_eth_dev_data, dev_flags),
	OFF(rte_eth_dev_data, numa_node), OFF(rte_eth_dev_data, rx_queue_state),
	OFF(rte_eth_dev_data, tx_queue_state), OFF(rte_eth_dev_data, owner),
	SIZE(eth_dev_ops),
	OFF(eth_dev_ops, dev_configure), OFF(eth_dev_ops, dev_start), OFF(eth_dev_ops, dev_stop),
	OFF(eth_dev_ops, dev_close), OFF(eth_dev_ops, link_update), OFF(eth_dev_ops, stats_get),
	OFF(eth_dev_ops, xstats_get), OFF(eth_dev_ops, dev_infos_get),
	OFF(eth_dev_ops, rx_queue_setup), OFF(eth_dev_ops, tx_queue_setup),
	OFF(eth_dev_ops, rx_queue_release), OFF(eth_dev_ops, tx_queue_release),
	OFF(eth_dev_ops, rx_queue_intr_enable), OFF(eth_dev_ops, mtu_set),
	SIZE(rte_bus),
	OFF(rte_bus, name), OFF(rte_bus, scan), OFF(rte_bus, probe), OFF(rte_bus, find_device),
	OFF(rte_bus, plug), OFF(rte_bus, unplug), OFF(rte_bus, parse),
	OFF(rte_bus, devargs_parse), OFF(rte_bus, dma_map), OFF(rte_bus, dma_unmap),
	OFF(rte_bus, conf), OFF(rte_bus, get_iommu_class), OFF(rte_bus, dev_iterate),
	OFF(rte_bus, hot_unplug_handler), OFF(rte_bus, sigbus_handler), OFF(rte_bus, cleanup),
	SIZE(rte_device),
	OFF(rte_device, name), OFF(rte_device, bus_info), OFF(rte_device, driver),
	OFF(rte_device, bus), OFF(rte_device, numa_node), OFF(rte_device, devargs),
	SIZE(rte_driver),
	SIZE(rte_devargs),
	OFF(rte_devargs, type), OFF(rte_devargs, policy), OFF(rte_devargs, name),
	OFF(rte_devargs, bus), OFF(rte_devargs, cls), OFF(rte_devargs, bus_str),
	OFF(rte_devargs, cls_str), OFF(rte_devargs, data),
	SIZE(rte_eth_dev_info), SIZE(rte_eth_stats), SIZE(rte_eth_link),
	SIZE(rte_eth_conf), SIZE(rte_eth_rxconf), SIZE(rte_eth_txconf),
	SIZE(rte_eth_xstat), SIZE(rte_eth_xstat_name),
};

const size_t dpdk_sys_layout_count = sizeof(dpdk_sys_layout) / sizeof(dpdk_sys_layout[0]);
