/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * An application that makes the pools DPDK applications make besides their packet pool,
 * the way they make them: an indirect-mbuf pool (data room 0, as ip_fragmentation and
 * ipv4_multicast do) and a plain, non-packet mempool with the best mempool ops (as
 * rte_mempool_create callers that follow the mbuf library's choice do). Neither can live
 * in the shared region. It then sends packets made of indirect mbufs from the first one,
 * attached to direct mbufs of the packet pool, and uses the plain pool's objects.
 *
 * usage: shm_pool_check [EAL options] -- PACKETS
 * prints "pool_check: sent=N plain_objects=M" when everything worked.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_mempool.h>

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		fprintf(stderr, "pool_check: FAIL: " __VA_ARGS__);                                 \
		fprintf(stderr, "\n");                                                             \
		exit(1);                                                                           \
	} while (0)

#define PLAIN_OBJECTS 256
#define BURST 32

int main(int argc, char **argv)
{
	int used = rte_eal_init(argc, argv);
	if (used < 0)
		FAIL("rte_eal_init: %s", rte_strerror(rte_errno));
	argc -= used;
	argv += used;
	unsigned int packets = argc > 1 ? (unsigned int)atoi(argv[1]) : 1000;
	uint16_t port = 0;
	if (rte_eth_dev_count_avail() != 1)
		FAIL("expected one port, found %u", rte_eth_dev_count_avail());

	struct rte_mempool *direct = rte_pktmbuf_pool_create("pc_direct", 2047, 32, 0,
							     RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
	if (direct == NULL)
		FAIL("direct pool: %s", rte_strerror(rte_errno));
	struct rte_mempool *indirect =
		rte_pktmbuf_pool_create("pc_indirect", 1023, 32, 0, 0, rte_socket_id());
	if (indirect == NULL)
		FAIL("indirect pool: %s", rte_strerror(rte_errno));

	struct rte_mempool *plain = rte_mempool_create_empty("pc_plain", PLAIN_OBJECTS, 200, 0, 0,
							     rte_socket_id(), 0);
	if (plain == NULL)
		FAIL("plain pool: %s", rte_strerror(rte_errno));
	if (rte_mempool_set_ops_byname(plain, rte_mbuf_best_mempool_ops(), NULL) != 0)
		FAIL("plain pool: cannot set ops %s", rte_mbuf_best_mempool_ops());
	if (rte_mempool_populate_default(plain) < 0)
		FAIL("plain pool: populate: %s", rte_strerror(rte_errno));
	void *objs[PLAIN_OBJECTS];
	if (rte_mempool_get_bulk(plain, objs, PLAIN_OBJECTS) != 0)
		FAIL("plain pool: cannot take all %d objects", PLAIN_OBJECTS);
	for (unsigned int i = 0; i < PLAIN_OBJECTS; i++)
		memset(objs[i], (int)i, 200);
	rte_mempool_put_bulk(plain, objs, PLAIN_OBJECTS);
	if (rte_mempool_avail_count(plain) != PLAIN_OBJECTS)
		FAIL("plain pool: %u of %d objects back", rte_mempool_avail_count(plain), PLAIN_OBJECTS);

	struct rte_eth_conf conf;
	memset(&conf, 0, sizeof(conf));
	if (rte_eth_dev_configure(port, 1, 1, &conf) != 0)
		FAIL("configure");
	if (rte_eth_rx_queue_setup(port, 0, 512, rte_eth_dev_socket_id(port), NULL, direct) != 0)
		FAIL("rx queue");
	if (rte_eth_tx_queue_setup(port, 0, 512, rte_eth_dev_socket_id(port), NULL) != 0)
		FAIL("tx queue");
	if (rte_eth_dev_start(port) != 0)
		FAIL("start");
	printf("pool_check: ready\n");
	fflush(stdout);

	unsigned int sent = 0, tries = 0;
	while (sent < packets && tries++ < 1000000) {
		struct rte_mbuf *burst[BURST];
		unsigned int n = packets - sent < BURST ? packets - sent : BURST;
		for (unsigned int i = 0; i < n; i++) {
			struct rte_mbuf *d = rte_pktmbuf_alloc(direct);
			struct rte_mbuf *m = rte_pktmbuf_alloc(indirect);
			if (d == NULL || m == NULL)
				FAIL("out of mbufs after %u packets", sent);
			uint8_t frame[64] = {0};
			memset(frame, 0xff, 6);             /* broadcast destination */
			frame[12] = 0x88, frame[13] = 0xb5; /* local experimental ethertype */
			memcpy(frame + 14, &sent, sizeof(sent));
			char *data = rte_pktmbuf_append(d, sizeof(frame));
			if (data == NULL)
				FAIL("no room for a frame");
			memcpy(data, frame, sizeof(frame));
			rte_pktmbuf_attach(m, d);
			rte_pktmbuf_free(d); /* the indirect mbuf holds the last reference */
			burst[i] = m;
		}
		uint16_t done = rte_eth_tx_burst(port, 0, burst, (uint16_t)n);
		for (unsigned int i = done; i < n; i++)
			rte_pktmbuf_free(burst[i]);
		sent += done;
	}
	if (sent < packets)
		FAIL("sent only %u of %u packets", sent, packets);

	struct rte_eth_stats stats;
	rte_eth_stats_get(port, &stats);
	if (rte_mempool_avail_count(indirect) != indirect->size)
		FAIL("indirect pool: %u of %u mbufs back", rte_mempool_avail_count(indirect), indirect->size);
	printf("pool_check: sent=%u opackets=%lu plain_objects=%u\n", sent, (unsigned long)stats.opackets,
	       rte_mempool_avail_count(plain));
	fflush(stdout);
	rte_eth_dev_stop(port);
	rte_eth_dev_close(port);
	rte_mempool_free(plain);
	rte_mempool_free(indirect);
	rte_eal_cleanup();
	return 0;
}
