//! Counters of a port: the basic ethdev stats and the driver's own xstats.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use dpdk_sys as sys;

use crate::rxtx::{RxQueue, TxQueue};

/// Queues with counters of their own in `rte_eth_stats` (DPDK's
/// `RTE_ETHDEV_QUEUE_STAT_CNTRS`; at least a region's queue pairs).
pub const QUEUE_STATS: usize = sys::RTE_ETHDEV_QUEUE_STAT_CNTRS as usize;
const _: () = assert!(QUEUE_STATS >= shm_contract::layout::MAX_QUEUE_PAIRS as usize);

/// One queue's share of the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_invalid: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl QueueCounters {
    fn since(&self, base: &QueueCounters) -> QueueCounters {
        QueueCounters {
            rx_packets: self.rx_packets.saturating_sub(base.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(base.rx_bytes),
            rx_invalid: self.rx_invalid.saturating_sub(base.rx_invalid),
            tx_packets: self.tx_packets.saturating_sub(base.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(base.tx_bytes),
        }
    }
}

/// Every counter of a port at one moment (all queues added up, and per queue); a stats
/// reset stores one as the new zero.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_invalid: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub tx_copies: u64,
    pub tx_ring_full: u64,
    pub link_down_events: u64,
    /// Queue k's share (k below [`QUEUE_STATS`]).
    pub queues: [QueueCounters; QUEUE_STATS],
}

impl Snapshot {
    /// The counters of the queues set up, by queue id.
    pub fn read(rxqs: &[Option<Arc<RxQueue>>], txqs: &[Option<Arc<TxQueue>>], link_down_events: u64) -> Snapshot {
        let mut s = Snapshot { link_down_events, ..Default::default() };
        for (k, q) in rxqs.iter().enumerate() {
            let Some(q) = q else { continue };
            let (packets, bytes, errors) =
                (q.stats.packets.load(Relaxed), q.stats.bytes.load(Relaxed), q.stats.errors.load(Relaxed));
            s.rx_packets += packets;
            s.rx_bytes += bytes;
            s.rx_invalid += errors;
            if let Some(c) = s.queues.get_mut(k) {
                (c.rx_packets, c.rx_bytes, c.rx_invalid) = (packets, bytes, errors);
            }
        }
        for (k, q) in txqs.iter().enumerate() {
            let Some(q) = q else { continue };
            let (packets, bytes) = (q.stats.packets.load(Relaxed), q.stats.bytes.load(Relaxed));
            s.tx_packets += packets;
            s.tx_bytes += bytes;
            s.tx_dropped += q.stats.errors.load(Relaxed);
            s.tx_copies += q.stats.copies.load(Relaxed);
            s.tx_ring_full += q.stats.ring_full.load(Relaxed);
            if let Some(c) = s.queues.get_mut(k) {
                (c.tx_packets, c.tx_bytes) = (packets, bytes);
            }
        }
        s
    }

    /// `self - base`, counter by counter (counters only grow; a queue re-setup starts new
    /// counters, hence the saturation).
    pub fn since(&self, base: &Snapshot) -> Snapshot {
        Snapshot {
            rx_packets: self.rx_packets.saturating_sub(base.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(base.rx_bytes),
            rx_invalid: self.rx_invalid.saturating_sub(base.rx_invalid),
            tx_packets: self.tx_packets.saturating_sub(base.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(base.tx_bytes),
            tx_dropped: self.tx_dropped.saturating_sub(base.tx_dropped),
            tx_copies: self.tx_copies.saturating_sub(base.tx_copies),
            tx_ring_full: self.tx_ring_full.saturating_sub(base.tx_ring_full),
            link_down_events: self.link_down_events.saturating_sub(base.link_down_events),
            queues: std::array::from_fn(|k| self.queues[k].since(&base.queues[k])),
        }
    }

    /// The driver-specific xstats, in the order of [`XSTAT_NAMES`].
    pub fn xstats(&self) -> [u64; XSTAT_NAMES.len()] {
        [self.rx_invalid, self.tx_copies, self.tx_packets.saturating_sub(self.tx_copies), self.tx_ring_full, self.tx_dropped, self.link_down_events]
    }
}

/// Driver-specific xstats (the generic ones come from the basic stats).
pub const XSTAT_NAMES: [&str; 6] = [
    "rx_invalid_descriptors",
    "tx_copied_packets",
    "tx_zero_copy_packets",
    "tx_ring_full",
    "tx_dropped_no_buffer",
    "link_down_events",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_subtracts_and_saturates() {
        let base = Snapshot { rx_packets: 10, tx_copies: 5, ..Default::default() };
        let now = Snapshot { rx_packets: 15, tx_packets: 7, tx_copies: 2, ..Default::default() };
        let d = now.since(&base);
        assert_eq!(d.rx_packets, 5);
        assert_eq!(d.tx_copies, 0);
        assert_eq!(d.tx_packets, 7);
        let mut base = Snapshot::default();
        base.queues[1].rx_packets = 4;
        let mut now = Snapshot::default();
        now.queues[1].rx_packets = 10;
        now.queues[3].tx_bytes = 9;
        let d = now.since(&base);
        assert_eq!((d.queues[1].rx_packets, d.queues[3].tx_bytes, d.queues[0].rx_packets), (6, 9, 0));
    }

    #[test]
    fn zero_copy_count_is_packets_minus_copies() {
        let s = Snapshot { tx_packets: 100, tx_copies: 30, ..Default::default() };
        let x = s.xstats();
        assert_eq!(x[1], 30);
        assert_eq!(x[2], 70);
        assert!(XSTAT_NAMES.iter().all(|n| n.len() < 64));
    }
}
