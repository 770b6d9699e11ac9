/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A small DPDK application that uses the C API of the net_shm driver (rte_pmd_shm.h)
 * against a live port: it sends packets from a pool inside the shared region (zero copy)
 * and from an ordinary pool (copied by the driver), then checks what
 * rte_pmd_shm_get_counters and rte_pmd_shm_get_region_info report.
 *
 *   shm_capi_check [EAL options] -a sock:/path,region_size=64M -- <region bytes> [zc] [copied]
 *
 * Prints "capi: ..." lines and "capi: OK" on success; exits non-zero on any mismatch.
 * Built by meson (build only) and by the end-to-end tests (built and run).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>

#include <rte_pmd_shm.h>

#define FAIL(...) do { fprintf(stderr, "capi: FAIL: " __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

static int send_from(struct rte_mempool *mp, uint16_t port, unsigned int count)
{
	unsigned int sent = 0, tries = 0;

	while (sent < count && tries++ < 1000) {
		struct rte_mbuf *m = rte_pktmbuf_alloc(mp);
		if (m == NULL)
			return -ENOMEM;
		char *data = rte_pktmbuf_append(m, 64);
		if (data == NULL) {
			rte_pktmbuf_free(m);
			return -ENOSPC;
		}
		memset(data, 0, 64);
		memset(data, 0xff, 6);                 /* broadcast destination */
		data[6] = 0x02;                        /* locally administered source */
		data[12] = 0x88; data[13] = 0xb5;      /* local experimental ethertype */
		if (rte_eth_tx_burst(port, 0, &m, 1) == 1)
			sent++;
		else
			rte_pktmbuf_free(m);
	}
	return (int)sent;
}

int main(int argc, char **argv)
{
	int n = rte_eal_init(argc, argv);
	if (n < 0)
		FAIL("rte_eal_init: %s", rte_strerror(rte_errno));
	argc -= n;
	argv += n;
	if (argc < 2)
		FAIL("usage: shm_capi_check [EAL options] -- <region bytes> [zero-copy count] [copied count]");
	uint64_t want_size = strtoull(argv[1], NULL, 0);
	unsigned int want_zc = argc > 2 ? (unsigned int)atoi(argv[2]) : 64;
	unsigned int want_copied = argc > 3 ? (unsigned int)atoi(argv[3]) : 16;

	if (rte_eth_dev_count_avail() < 1)
		FAIL("no port (is -a sock:... given and the proxy running?)");
	uint16_t port = 0;
	RTE_ETH_FOREACH_DEV(port)
		break;

	struct rte_pmd_shm_region_info info;
	struct rte_pmd_shm_counters c;
	/* Misuse is refused with a clear code. */
	if (rte_pmd_shm_get_region_info(port, NULL) != -EINVAL)
		FAIL("NULL info not refused with -EINVAL");
	if (rte_pmd_shm_get_counters(RTE_MAX_ETHPORTS - 1, &c) != -ENODEV)
		FAIL("an unused port id not refused with -ENODEV");

	int rc = rte_pmd_shm_get_region_info(port, &info);
	if (rc != 0)
		FAIL("rte_pmd_shm_get_region_info: %d", rc);
	printf("capi: port %u region size=%" PRIu64 " heap=%" PRIu64 " hugepages=%u rx_ring=%u tx_ring=%u "
	       "proxy port=%u queue=%u\n", port, info.size, info.heap_size, info.hugepages,
	       info.rx_ring_entries, info.tx_ring_entries, info.proxy_port_id, info.proxy_queue_id);
	if (info.size != want_size)
		FAIL("region size %" PRIu64 ", expected %" PRIu64, info.size, want_size);
	if (info.base == NULL || info.heap_size == 0 || info.heap_size >= info.size || info.rx_ring_entries == 0)
		FAIL("implausible region info");

	/* Platform mempool ops are the driver's: this pool lives in the shared region. */
	struct rte_mempool *zc = rte_pktmbuf_pool_create("capi_zc", 2048, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
							 rte_socket_id());
	/* An ordinary pool: its mbufs must be copied into region buffers on transmit. */
	struct rte_mempool *heap = rte_pktmbuf_pool_create_by_ops("capi_heap", 255, 0, 0,
								  RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id(),
								  "ring_mp_mc");
	if (zc == NULL || heap == NULL)
		FAIL("cannot create the pools: %s", rte_strerror(rte_errno));

	struct rte_eth_conf conf;
	memset(&conf, 0, sizeof(conf));
	if (rte_eth_dev_configure(port, 1, 1, &conf) != 0 ||
	    rte_eth_rx_queue_setup(port, 0, 256, rte_eth_dev_socket_id(port), NULL, zc) != 0 ||
	    rte_eth_tx_queue_setup(port, 0, 256, rte_eth_dev_socket_id(port), NULL) != 0 ||
	    rte_eth_dev_start(port) != 0)
		FAIL("cannot set up port %u", port);

	int zc_sent = send_from(zc, port, want_zc);
	int copied_sent = send_from(heap, port, want_copied);
	if (zc_sent != (int)want_zc || copied_sent != (int)want_copied)
		FAIL("sent %d + %d packets, wanted %u + %u", zc_sent, copied_sent, want_zc, want_copied);

	rc = rte_pmd_shm_get_counters(port, &c);
	if (rc != 0)
		FAIL("rte_pmd_shm_get_counters: %d", rc);
	printf("capi: tx_packets=%" PRIu64 " tx_zero_copy_packets=%" PRIu64 " tx_copied_packets=%" PRIu64
	       " tx_ring_full=%" PRIu64 " tx_dropped=%" PRIu64 " rx_packets=%" PRIu64 "\n",
	       c.tx_packets, c.tx_zero_copy_packets, c.tx_copied_packets, c.tx_ring_full, c.tx_dropped,
	       c.rx_packets);
	if (c.tx_zero_copy_packets != want_zc || c.tx_copied_packets != want_copied ||
	    c.tx_packets != (uint64_t)want_zc + want_copied)
		FAIL("counters do not match what was sent");

	rte_eth_dev_stop(port);
	rte_eth_dev_close(port);
	rte_eal_cleanup();
	printf("capi: OK\n");
	return 0;
}
