/* Everything the bindings cover. rte_config.h first: DPDK headers rely on it. */
#define ALLOW_EXPERIMENTAL_API 1
#define ALLOW_INTERNAL_API 1
#include <rte_config.h>
#include <rte_common.h>
#include <rte_errno.h>
#include <rte_version.h>
#include <rte_eal.h>
#include <rte_log.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_thread.h>
#include <rte_cycles.h>
#include <rte_memory.h>
#include <rte_memzone.h>
#include <rte_malloc.h>
#include <rte_tailq.h>
#include <rte_ring.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_ether.h>
#include <rte_ethdev.h>
#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_devargs.h>
#include <rte_kvargs.h>
#include <rte_interrupts.h>
#include <rte_alarm.h>
#include <rte_telemetry.h>
#include <rte_pdump.h>
/* The proxy serves pdump requests itself and wraps captured packets with pcapng. */
#include <rte_pcapng.h>
#include <rte_bpf.h>
/* Ring-backed ethdev pairs (rte_eth_from_rings): the latency probe of crates/bench.
 * Declarations only; crates/bench links librte_net_ring. */
#include <rte_eth_ring.h>
/* Driver SDK (not installed by Debian; see scripts/setup.sh). */
#include <bus_driver.h>
#include <dev_driver.h>
#include <ethdev_driver.h>
#include <bus_vdev_driver.h>

/* rte_errno is a thread-local macro: bindgen cannot see it. */
int dpdk_sys_errno(void);
void dpdk_sys_set_errno(int value);
