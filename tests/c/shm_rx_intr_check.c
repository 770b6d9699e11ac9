/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * An application in the style of DPDK's l3fwd-power: it configures a net_shm port with
 * rx interrupts (intr_conf.rxq = 1), registers the queue's event fd with
 * rte_eth_dev_rx_intr_ctl_q, and whenever a burst comes back empty it sleeps in
 * rte_epoll_wait until the proxy wakes it. It prints what it received, how often it
 * was woken and how much CPU it used, so a test can tell sleeping from polling.
 *
 * With QUEUES > 1 it configures that many rx (and tx) queues, registers each queue's
 * event fd (its queue id as the event's data), polls them all and sleeps only when all
 * were empty, with every queue's interrupt armed; it prints each queue's packets and
 * the wake-ups that named it.
 *
 * usage: shm_rx_intr_check [EAL options] -- SECONDS [QUEUES]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_interrupts.h>
#include <rte_mbuf.h>

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		fprintf(stderr, "rx_intr: FAIL: " __VA_ARGS__);                                    \
		fprintf(stderr, "\n");                                                             \
		exit(1);                                                                           \
	} while (0)

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static long cpu_ms(void)
{
	struct rusage u;
	getrusage(RUSAGE_SELF, &u);
	return (u.ru_utime.tv_sec + u.ru_stime.tv_sec) * 1000L +
	       (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1000L;
}

int main(int argc, char **argv)
{
	int used = rte_eal_init(argc, argv);
	if (used < 0)
		FAIL("rte_eal_init: %s", rte_strerror(rte_errno));
	argc -= used;
	argv += used;
	double seconds = argc > 1 ? atof(argv[1]) : 5.0;
	uint16_t queues = argc > 2 ? (uint16_t)atoi(argv[2]) : 1;
	if (queues < 1 || queues > 16)
		FAIL("QUEUES must be 1..16");
	uint16_t port = 0;
	if (rte_eth_dev_count_avail() != 1)
		FAIL("expected one port, found %u", rte_eth_dev_count_avail());

	/* Platform mempool ops are the driver's: this pool lives in the shared region. */
	struct rte_mempool *mp = rte_pktmbuf_pool_create("rx_intr", 2048, 0, 0,
							 RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
	if (mp == NULL)
		FAIL("cannot create the pool: %s", rte_strerror(rte_errno));
	struct rte_eth_conf conf;
	memset(&conf, 0, sizeof(conf));
	conf.intr_conf.rxq = 1;
	if (rte_eth_dev_configure(port, queues, queues, &conf) != 0)
		FAIL("cannot configure the port with %u queues", queues);
	for (uint16_t q = 0; q < queues; q++)
		if (rte_eth_rx_queue_setup(port, q, 256, rte_socket_id(), NULL, mp) != 0 ||
		    rte_eth_tx_queue_setup(port, q, 256, rte_socket_id(), NULL) != 0)
			FAIL("cannot set up queue %u", q);
	if (rte_eth_dev_start(port) != 0)
		FAIL("cannot start the port");
	int rc;
	for (uint16_t q = 0; q < queues; q++) {
		rc = rte_eth_dev_rx_intr_ctl_q(port, q, RTE_EPOLL_PER_THREAD, RTE_INTR_EVENT_ADD,
					       (void *)(uintptr_t)q);
		if (rc != 0)
			FAIL("rte_eth_dev_rx_intr_ctl_q(queue %u): %s", q, rte_strerror(-rc));
	}
	printf("rx_intr: ready\n");
	fflush(stdout);

	uint64_t packets = 0, wakeups = 0, timeouts = 0, empty_after_wake = 0;
	uint64_t queue_packets[16] = {0}, queue_wakeups[16] = {0};
	long cpu0 = cpu_ms();
	double t0 = now_s(), end = t0 + seconds;
	int woken = 0;
	while (now_s() < end) {
		struct rte_mbuf *pkts[32];
		uint16_t got = 0;
		for (uint16_t q = 0; q < queues; q++) {
			uint16_t n = rte_eth_rx_burst(port, q, pkts, 32);
			queue_packets[q] += n;
			got += n;
			rte_pktmbuf_free_bulk(pkts, n);
		}
		if (got > 0) {
			packets += got;
			woken = 0;
			continue;
		}
		if (woken)
			empty_after_wake++;
		/* Nothing to do: sleep until the proxy has something for us (or 100 ms). */
		for (uint16_t q = 0; q < queues; q++) {
			rc = rte_eth_dev_rx_intr_enable(port, q);
			if (rc != 0)
				FAIL("rte_eth_dev_rx_intr_enable(queue %u): %s", q, rte_strerror(-rc));
		}
		struct rte_epoll_event events[16];
		int k = rte_epoll_wait(RTE_EPOLL_PER_THREAD, events, queues, 100);
		for (uint16_t q = 0; q < queues; q++)
			rte_eth_dev_rx_intr_disable(port, q);
		if (k > 0) {
			wakeups++;
			for (int e = 0; e < k; e++) {
				uintptr_t q = (uintptr_t)events[e].epdata.data;
				if (q < queues)
					queue_wakeups[q]++;
			}
			woken = 1;
		} else {
			timeouts++;
			woken = 0;
		}
	}
	double wall = now_s() - t0;
	long cpu = cpu_ms() - cpu0;
	printf("rx_intr: packets=%lu wakeups=%lu timeouts=%lu empty_after_wake=%lu cpu_ms=%ld wall_ms=%.0f\n",
	       (unsigned long)packets, (unsigned long)wakeups, (unsigned long)timeouts,
	       (unsigned long)empty_after_wake, cpu, wall * 1000.0);
	fflush(stdout);
	for (uint16_t q = 0; q < queues; q++)
		printf("rx_intr: queue %u packets=%lu wakeups=%lu\n", q, (unsigned long)queue_packets[q],
		       (unsigned long)queue_wakeups[q]);
	fflush(stdout);
	rte_eth_dev_stop(port);
	rte_eth_dev_close(port);
	rte_eal_cleanup();
	printf("rx_intr: OK\n");
	return 0;
}
