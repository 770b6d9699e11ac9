//! The proxy's NIC ports: configured once with as many queues as the commands name, each
//! rx queue first fed from a small private "parking" pool until a guest takes it over.

use dpdk::{sys, Device, Link, PktPool, Port};

use crate::datapath::TxLimits;

/// Descriptors per NIC queue asked for (adjusted to the device's limits).
const NB_DESC: u16 = 1024;

pub struct NicPort {
    pub port: Port,
    pub name: String,
    pub queues: u16,
    rx_desc: u16,
    pub mac: [u8; 6],
    pub mtu: u16,
    pub max_rx_frame: u32,
    /// What a guest's packet may be to be sent on this port.
    pub tx_limits: TxLimits,
    pub socket: i32,
    /// The device behind the port, that guests' regions are DMA-mapped for.
    pub device: Option<Device>,
    /// The device can set up an rx queue while the port runs; otherwise a pool switch
    /// stops and restarts the whole port.
    pub runtime_rx_setup: bool,
    /// Feeds rx queues that no guest has taken.
    parking: PktPool,
    pub link: Link,
    pub started: bool,
}

impl NicPort {
    /// Configures `port` with `queues` rx and tx queues and starts it.
    pub fn setup(port: Port, queues: u16, mtu: Option<u16>) -> Result<NicPort, String> {
        let name = port.name();
        let err = |e: dpdk::Error| format!("port {} ({name}): {e}", port.0);
        let info = port.info().map_err(err)?;
        if queues > info.max_rx_queues || queues > info.max_tx_queues {
            return Err(format!(
                "port {} ({name}) has at most {} rx and {} tx queues; the commands name {queues}",
                port.0, info.max_rx_queues, info.max_tx_queues
            ));
        }
        port.configure(queues, queues, &port_conf(&info, queues, mtu)).map_err(err)?;
        if let Some(mtu) = mtu {
            // ethdev recorded the MTU with the configuration; a device with an MTU of its
            // own (a NIC's frame size register, a tap's kernel interface) is told as well.
            // One without that operation (net_pcap, net_ring, net_null) keeps the recorded
            // MTU, which the proxy enforces on what guests send (TxLimits).
            match port.set_mtu(mtu) {
                Err(e) if e.errno != libc::ENOTSUP => {
                    return Err(format!("port {} ({name}): cannot set MTU {mtu}: {e}", port.0));
                }
                _ => {}
            }
        }
        let (rx_desc, tx_desc) = port.adjust_desc(NB_DESC, NB_DESC).map_err(err)?;
        let socket = port.socket_id();
        let parking = PktPool::new(
            &format!("iop_park{}", port.0),
            (rx_desc as u32 * queues as u32 + 1024).next_power_of_two() - 1,
            0,
            sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            socket,
        )
        .map_err(err)?;
        for q in 0..queues {
            port.rx_queue_setup_pool(q, rx_desc, None, &parking).map_err(err)?;
            port.tx_queue_setup(q, tx_desc).map_err(err)?;
        }
        port.start().map_err(err)?;
        if let Err(e) = port.promiscuous_enable() {
            // Virtual devices often cannot; guests still get what the port receives.
            let _ = e;
        }
        let mtu_now = port.mtu().unwrap_or(1500);
        let tx_limits = TxLimits::of(&info, mtu);
        let mac = port.mac().map_err(err)?;
        Ok(NicPort {
            port,
            name: name.clone(),
            queues,
            rx_desc,
            mac,
            mtu: mtu_now,
            max_rx_frame: TxLimits::announced_frame(&info, mtu),
            tx_limits,
            socket,
            device: port.device().ok(),
            runtime_rx_setup: info.dev_capa & sys::RTE_ETH_DEV_CAPA_RUNTIME_RX_QUEUE_SETUP as u64 != 0,
            parking,
            link: port.link(),
            started: true,
        })
    }

    /// The parking pool, to point an rx queue back at with [`NicPort::setup_rx_queue`].
    pub fn parking_pool(&self) -> PktPool {
        self.parking.clone()
    }

    /// Buffers of the parking pool in use (held by the NIC's rx rings, mostly).
    pub fn parking_in_use(&self) -> u32 {
        self.parking.mempool().in_use_count()
    }

    /// Sets rx queue `queue` up with `pool` (the parking pool, or a guest's shadow
    /// pool). The port must not be polled meanwhile (for a device without runtime setup
    /// the caller has paused the whole port and stopped it; the DPDK layer refuses while
    /// the queue has a polling handle). The queue keeps `pool` alive until its next
    /// setup or the port's close.
    pub fn setup_rx_queue(&self, queue: u16, pool: &PktPool) -> Result<(), String> {
        let err = |e: dpdk::Error| format!("port {} ({}) queue {queue}: {e}", self.port.0, self.name);
        let runtime = self.runtime_rx_setup && self.started;
        if runtime {
            // Stop may be unsupported while setup is; either way setup decides.
            let _ = self.port.rx_queue_stop(queue);
        }
        self.port.rx_queue_setup_pool(queue, self.rx_desc, None, pool).map_err(err)?;
        if runtime {
            self.port.rx_queue_start(queue).map_err(err)?;
        }
        Ok(())
    }

    pub fn stop(&mut self) -> Result<(), String> {
        if self.started {
            self.port.stop().map_err(|e| format!("port {} ({}): {e}", self.port.0, self.name))?;
            self.started = false;
        }
        Ok(())
    }

    pub fn start(&mut self) -> Result<(), String> {
        if !self.started {
            self.port.start().map_err(|e| format!("port {} ({}): {e}", self.port.0, self.name))?;
            self.started = true;
        }
        Ok(())
    }

    /// Stops and closes the port (capture files are flushed, tap devices removed).
    pub fn close(mut self) {
        let _ = self.stop();
        let _ = self.port.close();
        // The parking pool drops after the port is closed.
    }
}

/// The configuration a port starts with: RSS over its queues where it has more than one,
/// rx scatter and multi-segment tx where the device offers them, and the MTU the
/// operator asked for (ethdev checks it against the device's largest frame and records
/// it, on devices without an MTU operation too; 0 leaves ethdev's default, 1500).
fn port_conf(info: &sys::rte_eth_dev_info, queues: u16, mtu: Option<u16>) -> sys::rte_eth_conf {
    let mut conf = sys::rte_eth_conf::default();
    if queues > 1 && info.flow_type_rss_offloads != 0 {
        // Spread traffic over the guests' queues by RSS, as the RFC's demo does.
        conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = (sys::RTE_ETH_RSS_IP as u64
            | sys::RTE_ETH_RSS_TCP as u64
            | sys::RTE_ETH_RSS_UDP as u64)
            & info.flow_type_rss_offloads;
    }
    if info.rx_offload_capa & sys::RTE_ETH_RX_OFFLOAD_SCATTER as u64 != 0 {
        // Jumbo frames arrive as chains of guest buffers.
        conf.rxmode.offloads |= sys::RTE_ETH_RX_OFFLOAD_SCATTER as u64;
    }
    if info.tx_offload_capa & sys::RTE_ETH_TX_OFFLOAD_MULTI_SEGS as u64 != 0 {
        conf.txmode.offloads |= sys::RTE_ETH_TX_OFFLOAD_MULTI_SEGS as u64;
    }
    conf.rxmode.mtu = mtu.map_or(0, u32::from);
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtu_asked_for_goes_into_the_configuration() {
        let info = sys::rte_eth_dev_info {
            rx_offload_capa: sys::RTE_ETH_RX_OFFLOAD_SCATTER as u64,
            tx_offload_capa: sys::RTE_ETH_TX_OFFLOAD_MULTI_SEGS as u64,
            flow_type_rss_offloads: sys::RTE_ETH_RSS_IP as u64,
            ..Default::default()
        };
        let jumbo = port_conf(&info, 1, Some(9000));
        assert_eq!(jumbo.rxmode.mtu, 9000);
        assert_eq!(jumbo.rxmode.offloads, sys::RTE_ETH_RX_OFFLOAD_SCATTER as u64);
        assert_eq!(jumbo.txmode.offloads, sys::RTE_ETH_TX_OFFLOAD_MULTI_SEGS as u64);
        assert_eq!(jumbo.rxmode.mq_mode, sys::RTE_ETH_MQ_RX_NONE, "one queue: no RSS");
        // No --mtu: ethdev's default (0 asks for it).
        let plain = port_conf(&sys::rte_eth_dev_info::default(), 2, None);
        assert_eq!(plain.rxmode.mtu, 0);
        assert_eq!((plain.rxmode.offloads, plain.txmode.offloads), (0, 0), "offloads only where offered");
        assert_eq!(plain.rxmode.mq_mode, sys::RTE_ETH_MQ_RX_NONE, "no RSS where the device has none");
        let rss = port_conf(&info, 2, Some(1500));
        assert_eq!(rss.rxmode.mq_mode, sys::RTE_ETH_MQ_RX_RSS);
        assert_eq!(rss.rx_adv_conf.rss_conf.rss_hf, sys::RTE_ETH_RSS_IP as u64);
        assert_eq!(rss.rxmode.mtu, 1500);
    }
}
