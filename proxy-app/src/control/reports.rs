//! The reports: `show stats` (one `key=value` line per socket and port, and the
//! process totals), `show sockets`, and the telemetry views (telemetry.rs). They read
//! counters and state; they change nothing.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::guest::Guest;
use super::session::State;
use super::Control;
use crate::quarantine::PendingDelete;
use crate::reaper;

impl Control {
    /// What the telemetry commands show (telemetry.rs), taken on this thread.
    pub(super) fn telemetry_views(&self) -> Vec<crate::telemetry::SocketView> {
        use crate::telemetry::{ConnView, GuestView, RingFill, SocketView};
        let now = Instant::now();
        let view_guest = |g: &Guest| {
            let mem = g.region.mem();
            GuestView {
                app: g.app.clone(),
                region_size: g.region.len() as u64,
                hugepages: g.region.hugepages,
                pools: g.pools.len(),
                queue_started: g.running(),
                rx_ring: RingFill::read(&mem, g.region.layout.rx_ring()),
                tx_ring: RingFill::read(&mem, g.region.layout.tx_ring()),
            }
        };
        self.endpoints
            .iter()
            .map(|ep| SocketView {
                path: ep.path.display().to_string(),
                port: ep.port,
                queue: ep.queues[0],
                guests_served: ep.guests_served,
                stats: Arc::new(ep.totals()),
                pairs: if ep.queues.len() > 1 {
                    ep.queues.iter().copied().zip(ep.queue_stats.iter().cloned()).collect()
                } else {
                    Vec::new()
                },
                pool_invalid: ep.guest().map_or(0, |g| {
                    g.pools.iter().map(|(_, p)| p.ctx.invalid.load(Ordering::Relaxed)).sum()
                }),
                conn: ep.conn.as_ref().map(|c| ConnView {
                    pid: c.pid,
                    connected_for: now.duration_since(c.since),
                    guest: c.guest().map(view_guest),
                }),
            })
            .collect()
    }

    /// `show sockets`: one line per socket, with its guest and access.
    pub(super) fn sockets_text(&self) -> String {
        let mut out = String::new();
        for ep in &self.endpoints {
            let guest = match (ep.state(), ep.guest(), &ep.conn) {
                (_, Some(g), Some(c)) => format!(
                    "guest '{}' pid {}, region {} MiB on {}, queue {}",
                    g.app,
                    c.pid,
                    g.region.len() >> 20,
                    if g.region.hugepages { "hugepages" } else { "4 KiB pages" },
                    queues_state(g)
                ),
                (State::Listening, ..) => "no guest".into(),
                _ => "connecting".into(),
            };
            let _ =
                writeln!(out, "{} port {} queue {}: {guest}; {}", ep.path.display(), ep.port, ep.queues_text(), ep.access.describe());
        }
        if self.endpoints.is_empty() {
            let _ = writeln!(out, "no sockets");
        }
        out
    }

    /// One line per socket and per port, `key=value` pairs; a socket with several queue
    /// pairs has a `pair=` line for each before its own (which adds them up).
    pub fn stats_text(&self) -> String {
        let mut s = String::new();
        for ep in &self.endpoints {
            if ep.queues.len() > 1 {
                for (k, (queue, st)) in ep.queues.iter().zip(&ep.queue_stats).enumerate() {
                    s += &pair_line(&ep.path.display().to_string(), k, ep.port, *queue, st);
                }
            }
            let totals = ep.totals();
            let st = &totals;
            let guest = ep.guest();
            let pool_invalid: u64 =
                guest.map_or(0, |g| g.pools.iter().map(|(_, p)| p.ctx.invalid.load(Ordering::Relaxed)).sum());
            let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            s += &format!(
                "socket={} port={} queue={} guest={} guests_served={} rx_packets={} rx_bytes={} rx_dropped={} \
                 tx_packets={} tx_bytes={} tx_dropped={} tx_refused={} tx_invalid={} tx_returned={} copies={} invalid={} refused={} bad_requests={} \
                 pools={} pool_buffers={} free_ring={} shadow_in_use={} parked={} lost={} rx_wakeups={} unwanted_fds={} deferred={} penalty_polls={}\n",
                ep.path.display(),
                ep.port,
                ep.queues_text(),
                guest.map_or("-".to_string(), |g| g.app.clone()),
                ep.guests_served,
                ld(&st.rx_packets),
                ld(&st.rx_bytes),
                ld(&st.rx_dropped),
                ld(&st.tx_packets),
                ld(&st.tx_bytes),
                ld(&st.tx_dropped),
                ld(&st.tx_refused),
                ld(&st.tx_invalid),
                ld(&st.tx_returned),
                ld(&st.copies),
                ld(&st.invalid) + pool_invalid,
                ld(&st.refused),
                ld(&st.bad_requests),
                guest.map_or(0, |g| g.pools.len()),
                guest.map_or(0, |g| g.pools.iter().map(|(_, p)| p.ctx.layout.count() as u64).sum::<u64>()),
                guest.map_or(0, |g| g.pools.iter().map(|(_, p)| p.free_ring_count() as u64).sum::<u64>()),
                guest.map_or(0, |g| g.pools.iter().map(|(_, p)| p.in_use() as u64).sum::<u64>()),
                guest.map_or(0, |g| g.pools.iter().map(|(_, p)| p.ctx.parked() as u64).sum::<u64>()),
                guest.map_or(0, |g| g.pools.iter().map(|(_, p)| p.ctx.lost.load(Ordering::Relaxed)).sum::<u64>()),
                ld(&st.rx_wakeups),
                ld(&st.unwanted_fds),
                ep.deferred,
                ld(&st.penalty_polls),
            );
        }
        for (&port, nic) in &self.ports {
            if let Ok(ps) = nic.port.stats() {
                s += &format!(
                    "port={port} name={} link={} ipackets={} opackets={} ibytes={} obytes={} imissed={} ierrors={} oerrors={} rx_nombuf={} parking_in_use={}\n",
                    nic.name,
                    if nic.link.up { "up" } else { "down" },
                    ps.ipackets,
                    ps.opackets,
                    ps.ibytes,
                    ps.obytes,
                    ps.imissed,
                    ps.ierrors,
                    ps.oerrors,
                    ps.rx_nombuf,
                    nic.parking_in_use()
                );
            }
        }
        // Every mempool of the process (parking pools, one shadow pool per guest pool):
        // back to its baseline whenever the guests are gone, or something leaked.
        // Departed guests' leftovers and deleted pools that wait for the NIC (quarantine.rs).
        let deleting: Vec<&PendingDelete> = self
            .endpoints
            .iter()
            .filter_map(|ep| ep.guest())
            .flat_map(|g| g.deleting.iter())
            .collect();
        let in_nic: u64 = self.quarantine.iter().map(|l| l.in_nic()).sum::<u64>()
            + deleting.iter().map(|d| u64::from(d.pool.in_nic())).sum::<u64>();
        s += &format!(
            "unclaimed={} mempools={} quarantined={} deleting={} quarantined_in_nic={} {} budget_over={} budget_uids_held={} budget_charged_ms={} budget_suspect_ms={} control_cpu_ms={} port_restarts={} restart_outage_ms={} restart_longest_us={} restarts_charged_ms={} regions_releasing={} regions_released_paced={} regions_left_to_guest={} regions_closed_at_once={} release_freed_mib={} release_charged_ms={}\n",
            self.plane.unclaimed.load(Ordering::Relaxed),
            mempool_count(),
            self.quarantine.len(),
            deleting.len(),
            in_nic,
            reaper::stats_text(),
            self.budgets.times_over,
            self.budgets.over_now(),
            self.budgets.charged.as_millis(),
            self.budgets.suspect_charged.as_millis(),
            // `show stats` runs on the control thread: its own CPU time.
            crate::os::thread_cpu_time().as_millis(),
            self.restarts.count,
            self.restarts.outage.as_millis(),
            self.restarts.longest.as_micros(),
            self.restarts.charged.as_millis(),
            self.releases.waiting(),
            self.releases.stats.paced,
            self.releases.stats.left_to_guest,
            self.releases.stats.closed_at_once,
            self.releases.stats.freed_bytes >> 20,
            self.releases.stats.charged.as_millis()
        );
        s
    }
}

/// `started`/`stopped` for one queue pair, `started 0,1 of 2` for several.
fn queues_state(g: &Guest) -> String {
    if g.queues.len() == 1 {
        return if g.running() { "started" } else { "stopped" }.into();
    }
    let started: Vec<String> = g.started().map(|q| q.pair.to_string()).collect();
    if started.is_empty() {
        format!("stopped (all {})", g.queues.len())
    } else {
        format!("started {} of {}", started.join(","), g.queues.len())
    }
}

/// The counters of queue pair `k` of a socket (what the data loop counts for it).
fn pair_line(socket: &str, k: usize, port: u16, queue: u16, st: &crate::datapath::SocketStats) -> String {
    let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "pair={k} of={socket} port={port} queue={queue} rx_packets={} rx_bytes={} rx_dropped={} tx_packets={} \
         tx_bytes={} tx_dropped={} tx_refused={} tx_invalid={} tx_returned={} copies={} invalid={} rx_wakeups={} penalty_polls={}\n",
        ld(&st.rx_packets),
        ld(&st.rx_bytes),
        ld(&st.rx_dropped),
        ld(&st.tx_packets),
        ld(&st.tx_bytes),
        ld(&st.tx_dropped),
        ld(&st.tx_refused),
        ld(&st.tx_invalid),
        ld(&st.tx_returned),
        ld(&st.copies),
        ld(&st.invalid),
        ld(&st.rx_wakeups),
        ld(&st.penalty_polls),
    )
}

/// How many mempools exist in this process.
pub(super) fn mempool_count() -> usize {
    dpdk::mempool_count()
}
