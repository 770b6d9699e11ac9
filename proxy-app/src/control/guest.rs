//! What an attached guest holds (its region, pools and queue) and the requests that
//! change it: pool add and delete, queue start and stop; and teardown: `disconnect`
//! takes a session back to Listening, and departed guests' pools, or deleted ones, wait
//! in the quarantine until the NIC has given their buffers back (quarantine.rs).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpdk::Port;
use shm_contract::proto::transport::send_message;
use shm_contract::proto::QUEUE_FLAG_RX_WAKEUP;
use shm_contract::wake::Waker;
use shm_contract::{DescRing, Message, PoolAdd, PoolLayout, RefuseCode};

use super::listen::QUEUE_STARTS_PER_SEC;
use super::session::Session;
use super::Control;
use crate::datapath::{DataQueue, SocketStats, TxLimits};
use crate::quarantine::{Leftover, PendingDelete, POOL_DELETE_WAIT};
use crate::region::GuestRegion;
use crate::shadow::ShadowPool;
use crate::{log_info, log_warn};

pub(super) struct Guest {
    /// Its application name, escaped (`shown::escape`): safe in logs, stats and JSON.
    pub(super) app: String,
    pub(super) region: Arc<GuestRegion>,
    pub(super) pools: Vec<(u32, ShadowPool)>,
    /// Pools the guest deleted while the NIC held buffers of them (quarantine.rs).
    pub(super) deleting: Vec<PendingDelete>,
    /// Each queue pair the socket offers: its queue while started.
    pub(super) queues: Vec<Option<Arc<DataQueue>>>,
    pub(super) invalid_reported: u64,
    pub(super) last_invalid_log: Option<Instant>,
}

impl Guest {
    /// The socket's invalid input: `stats` are the socket's totals
    /// (`Endpoint::totals`), the pools count theirs.
    pub(super) fn invalid_total(&self, stats: &SocketStats) -> u64 {
        stats.invalid.load(Ordering::Relaxed)
            + self.pools.iter().map(|(_, p)| p.ctx.invalid.load(Ordering::Relaxed)).sum::<u64>()
    }

    /// The started queues.
    pub(super) fn started(&self) -> impl Iterator<Item = &Arc<DataQueue>> {
        self.queues.iter().flatten()
    }

    /// Whether any queue pair is started.
    pub(super) fn running(&self) -> bool {
        self.started().next().is_some()
    }
}

impl Control {
    pub(super) fn pool_add(&mut self, idx: usize, add: &PoolAdd) -> Result<(), String> {
        self.pool_serial += 1;
        let serial = self.pool_serial;
        let socket = self.ports[&self.endpoints[idx].port].socket;
        let max_buffers = self.opts.max_guest_buffers;
        let guest = self.guest_mut(idx).ok_or("no guest")?;
        if guest.pools.iter().any(|(id, _)| *id == add.pool_id) {
            return Err(format!("pool id {} is already in use", add.pool_id));
        }
        if guest.deleting.iter().any(|d| d.pool_id == add.pool_id && !d.answered) {
            return Err(format!("pool id {} is being deleted (the NIC still holds buffers of it)", add.pool_id));
        }
        let others: Vec<PoolLayout> = guest.pools.iter().map(|(_, p)| p.ctx.layout).collect();
        // Deleted pools whose buffers the NIC still holds cost their shadows until then.
        let held: u64 = others.iter().map(|l| u64::from(l.count())).sum::<u64>()
            + guest.deleting.iter().map(|d| u64::from(d.pool.count())).sum::<u64>();
        if held + u64::from(add.count) > max_buffers {
            return Err(format!(
                "a pool of {} buffers would give this guest {} buffers; this proxy allows at most {} per guest (--max-guest-buffers)",
                add.count,
                held + u64::from(add.count),
                max_buffers
            ));
        }
        let layout = add.validate(&guest.region.layout, &others).map_err(|e| e.to_string())?;
        // Last, the one check that asks the kernel: the proxy never allocates a guest's
        // memory by touching it (region.rs).
        guest.region.check_allocated().map_err(|e| format!("pool {}: {e}", add.pool_id))?;
        let pool = ShadowPool::new(&guest.region, layout, &format!("iop_sh{serial}"), socket)?;
        for q in guest.started() {
            q.set_pool(add.pool_id, Some(pool.guest_pool()));
        }
        let running = guest.running();
        guest.pools.push((add.pool_id, pool));
        if running {
            // The loop takes the new pool with the next configuration.
            self.publish();
        }
        Ok(())
    }

    /// Deletes a pool: `Ok(true)` when it is gone and the answer can go out now,
    /// `Ok(false)` when the NIC still holds buffers of it (answered later, see
    /// `sweep_quarantine`).
    pub(super) fn pool_del(&mut self, idx: usize, pool_id: u32, request: u32) -> Result<bool, String> {
        let guest = self.guest_mut(idx).ok_or("no guest")?;
        let Some(pos) = guest.pools.iter().position(|(id, _)| *id == pool_id) else {
            if guest.deleting.iter().any(|d| d.pool_id == pool_id && !d.answered) {
                return Err(format!("pool {pool_id} is already being deleted"));
            }
            return Err(format!("no pool {pool_id}"));
        };
        if let Some(q) = guest.started().find(|q| q.fills_from(guest.pools[pos].1.pool())) {
            return Err(format!("pool {pool_id} feeds running queue {}; stop the port first", q.pair));
        }
        for q in guest.started() {
            q.set_pool(pool_id, None);
        }
        let had_queue = guest.running();
        let (_, pool) = guest.pools.remove(pos);
        if had_queue {
            // Make sure the loop no longer looks at the pool (and has flushed its cache of
            // it) before it is retired.
            self.publish();
        }
        pool.retire();
        let in_nic = pool.in_nic();
        if in_nic > 0 {
            log_info!(
                "{}: pool {pool_id}: the NIC still holds {in_nic} of its buffers; the delete is answered once they are back",
                self.endpoints[idx].path.display()
            );
            let pending = PendingDelete { pool_id, pool, request, since: Instant::now(), answered: false };
            if let Some(g) = self.guest_mut(idx) {
                g.deleting.push(pending);
            }
            return Ok(false);
        }
        // The loop may still be returning the last buffer into the pool's cache: it is
        // past that once it has taken up a configuration.
        self.publish();
        drop(pool);
        Ok(true)
    }

    /// Starts the guest's queue pair `pair`; with `QUEUE_FLAG_RX_WAKEUP`, returns the
    /// guest's end of the wake-up pair made here, for `QueueStarted`.
    pub(super) fn queue_start(
        &mut self,
        idx: usize,
        rx_pool_id: u32,
        flags: u32,
        rx_depth: u32,
        pair: u16,
    ) -> Result<Option<OwnedFd>, (RefuseCode, String)> {
        let bad = |s: String| (RefuseCode::BadRequest, s);
        let ep = &self.endpoints[idx];
        let Some(&queue) = ep.queues.get(pair as usize) else {
            return Err(bad(format!("queue {pair} does not exist: this socket offers {} queue pair(s)", ep.queues.len())));
        };
        let port = ep.port;
        let stats = ep.queue_stats[pair as usize].clone();
        let (waker, guest_end) = if flags & QUEUE_FLAG_RX_WAKEUP != 0 {
            let (waker, guest_end) =
                Waker::pair().map_err(|e| (RefuseCode::Internal, format!("cannot make the wake-up socket pair: {e}")))?;
            (Some(waker), Some(guest_end))
        } else {
            (None, None)
        };
        let restarts_port = self.ports.get(&port).is_some_and(|n| !n.runtime_rx_setup);
        let tx_limits = self.ports.get(&port).map_or(TxLimits::UNLIMITED, |n| n.tx_limits);
        if restarts_port && !self.endpoints[idx].queue_starts.take(Instant::now()) {
            return Err(bad(format!(
                "more than {QUEUE_STARTS_PER_SEC} queue starts per second; each restarts port {port} (its device \
                 cannot set up a queue while running), pausing the other queues: try again later"
            )));
        }
        let guest = self.guest_mut(idx).ok_or_else(|| bad("no guest".into()))?;
        if guest.queues.get(pair as usize).is_some_and(Option::is_some) {
            return Err(bad(format!("queue {pair} is already started")));
        }
        let rx_pool = guest
            .pools
            .iter()
            .find(|(id, _)| *id == rx_pool_id)
            .map(|(_, p)| p.guest_pool())
            .ok_or_else(|| bad(format!("no pool {rx_pool_id} was announced")))?;
        // Both sides start the pair's rings from index 0 at every queue start.
        let mem = guest.region.mem();
        let (rx_ring, tx_ring) = guest
            .region
            .layout
            .rings_of(u32::from(pair))
            .ok_or_else(|| bad(format!("the region has no ring pair {pair}")))?;
        DescRing::init(&mem, rx_ring).map_err(|e| bad(e.to_string()))?;
        DescRing::init(&mem, tx_ring).map_err(|e| bad(e.to_string()))?;
        let nic_pool = rx_pool.pool.pkt_pool().clone();
        let q = DataQueue::new(&guest.region, port, queue, u32::from(pair), rx_pool, rx_depth, stats, waker)
            .map_err(bad)?
            .with_tx_limits(tx_limits);
        for (id, p) in &guest.pools {
            q.set_pool(*id, Some(p.guest_pool()));
        }
        let q = Arc::new(q);
        match self.switch_rx_pool(port, queue, &nic_pool) {
            Ok(outage) => self.charge_outage(idx, outage),
            Err(e) => {
                let parking = self.ports[&port].parking_pool();
                if let Ok(outage) = self.switch_rx_pool(port, queue, &parking) {
                    self.charge_outage(idx, outage);
                }
                return Err((RefuseCode::Internal, e));
            }
        }
        if let Some(slot) = self.guest_mut(idx).and_then(|g| g.queues.get_mut(pair as usize)) {
            *slot = Some(q);
        }
        self.publish();
        let which = if self.endpoints[idx].queues.len() > 1 {
            format!(" (pair {pair}: port {port} queue {queue})")
        } else {
            String::new()
        };
        log_info!("{}: queue started{which}", self.endpoints[idx].path.display());
        Ok(guest_end)
    }

    /// Charges the uid of the peer on socket `idx` for a port restart its queue start or
    /// stop made: the time the port's other started queues went unserved (R4 in
    /// docs/threat-model.md), on top of the CPU time its message cost. Every other guest
    /// of the port loses that time, so a uid's restarts cost each of them at most its
    /// budget's rate (5%), however cheap a restart is for this thread.
    pub(super) fn charge_outage(&mut self, idx: usize, outage: Duration) {
        if outage.is_zero() {
            return;
        }
        let Some((owner, flapping)) = self.endpoints[idx].conn.as_ref().map(|c| (c.fd.owner(), c.stopped)) else { return };
        let now = Instant::now();
        self.budgets.charge(owner, outage, now);
        if flapping {
            self.budgets.charge_suspect(owner, outage, now);
        }
        self.restarts.charged += outage;
    }

    /// Stops every started queue pair of the guest.
    pub(super) fn queue_stop_all(&mut self, idx: usize) {
        for pair in 0..self.endpoints[idx].queues.len() {
            self.queue_stop(idx, pair as u16);
        }
    }

    /// Stops the guest's queue pair `pair` (nothing if it is not started): no more
    /// polling, NIC queue back on the parking pool (which frees every guest buffer the
    /// NIC held), unsent tx buffers returned.
    pub(super) fn queue_stop(&mut self, idx: usize, pair: u16) {
        let port = self.endpoints[idx].port;
        let Some(&queue) = self.endpoints[idx].queues.get(pair as usize) else { return };
        let Some(q) = self.guest_mut(idx).and_then(|g| g.queues.get_mut(pair as usize)).and_then(Option::take) else {
            return;
        };
        self.publish();
        if let Some(nic) = self.ports.get(&port) {
            let parking = nic.parking_pool();
            match self.switch_rx_pool(port, queue, &parking) {
                Ok(outage) => self.charge_outage(idx, outage),
                Err(e) => log_warn!("{}: {e}", self.endpoints[idx].path.display()),
            }
            let _ = Port(port).tx_done_cleanup(queue);
        }
        let returned = q.return_unsent();
        // The loop no longer writes the pair's counters: this thread may.
        let st = &q.stats;
        st.tx_returned.store(st.tx_returned.load(Ordering::Relaxed) + returned as u64, Ordering::Relaxed);
        let which = if self.endpoints[idx].queues.len() > 1 { format!(" (pair {pair})") } else { String::new() };
        log_info!(
            "{}: queue stopped{which} ({returned} unsent tx buffers returned to the guest)",
            self.endpoints[idx].path.display()
        );
    }

    /// Ends the connection on `idx` and reclaims everything of its guest.
    pub(super) fn disconnect(&mut self, idx: usize, reason: &str, say_goodbye: bool) {
        if self.endpoints[idx].conn.is_none() {
            return;
        }
        self.queue_stop_all(idx);
        let ep = &mut self.endpoints[idx];
        let Some(conn) = ep.conn.take() else { return };
        ep.ended_unran = (!conn.ran && !conn.guest().is_some_and(|g| g.running())).then_some(conn.cost);
        if say_goodbye {
            let _ = send_message(conn.fd.as_fd(), &Message::Goodbye, 0, &[]);
        }
        if let Session::Attached(guest) = conn.session {
            let totals = ep.totals();
            log_info!(
                "{}: guest '{}' (pid {}) detached: {reason}; rx {} tx {} packets so far, {} invalid",
                ep.path.display(),
                guest.app,
                conn.pid,
                totals.rx_packets.load(Ordering::Relaxed),
                totals.tx_packets.load(Ordering::Relaxed),
                guest.invalid_total(&totals)
            );
            // The pools' own counts of bad free-ring entries go with them: keep them in
            // the socket's `invalid` (a control-thread counter).
            let st = &ep.stats;
            let pool_invalid: u64 = guest.pools.iter().map(|(_, p)| p.ctx.invalid.load(Ordering::Relaxed)).sum();
            st.invalid.store(st.invalid.load(Ordering::Relaxed) + pool_invalid, Ordering::Relaxed);
            // Pools (their mempools) go first, then the region (below); but not while
            // the NIC holds buffers of them (freeing one writes into its mempool): then
            // they wait in the quarantine. Either way they no longer touch the guest's
            // free rings.
            let pools: Vec<ShadowPool> =
                guest.pools.into_iter().map(|(_, p)| p).chain(guest.deleting.into_iter().map(|d| d.pool)).collect();
            for p in &pools {
                p.retire();
            }
            let in_nic: u64 = pools.iter().map(|p| u64::from(p.in_nic())).sum();
            let (port, queues) = (ep.port, ep.queues.clone());
            let shown = ep.queues_text();
            let leftover =
                Leftover { socket: ep.path.clone(), owner: conn.fd.owner(), port, queues, app: guest.app, pools, since: Instant::now() };
            // The queue has no guest now: the loop drains it as idle (for a NIC that
            // keeps sent buffers on its rx side, like `net_ring`, that gives them back),
            // and once it has taken that up it no longer frees anything into a pool whose
            // count was 0 above.
            self.publish();
            if in_nic > 0 {
                log_warn!(
                    "{}: guest '{}' left {in_nic} buffers in port {port} queue {shown}: its {} pool(s) and region are \
                     quarantined until the NIC gives them back",
                    leftover.socket.display(),
                    leftover.app,
                    leftover.pools.len()
                );
                self.quarantine.push(leftover);
            }
            // The region is freed a step at a time once nothing holds it and the
            // guest's process has exited, or left to that process (release.rs).
            self.releases.push(guest.region, conn.fd.owner(), conn.pidfd, Instant::now());
        }
    }

    /// Frees what the NIC has given back: answers pool deletes that waited for it (or
    /// refuses them after `POOL_DELETE_WAIT`), releases departed guests' quarantined
    /// pools and regions.
    pub(super) fn sweep_quarantine(&mut self, now: Instant) {
        let mut queues = BTreeSet::new();
        for l in &self.quarantine {
            queues.extend(l.queues.iter().map(|&q| (l.port, q)));
        }
        for ep in &self.endpoints {
            if ep.guest().is_some_and(|g| !g.deleting.is_empty()) {
                queues.extend(ep.queues.iter().map(|&q| (ep.port, q)));
            }
        }
        if queues.is_empty() {
            return;
        }
        // Where the driver can, it frees what it has sent now; it refuses while the loop
        // polls the queue (whose tx bursts then complete them).
        for &(port, queue) in &queues {
            if self.ports.get(&port).is_some_and(|n| n.started) {
                let _ = Port(port).tx_done_cleanup(queue);
            }
        }
        let mut released = Vec::new();
        let mut i = 0;
        while i < self.quarantine.len() {
            if self.quarantine[i].in_nic() == 0 {
                released.push(self.quarantine.remove(i));
            } else {
                i += 1;
            }
        }
        let mut deleted: Vec<(usize, PendingDelete)> = Vec::new();
        let mut overdue: Vec<(usize, u32, u32, u32)> = Vec::new();
        for idx in 0..self.endpoints.len() {
            let Some(g) = self.guest_mut(idx) else { continue };
            let mut k = 0;
            while k < g.deleting.len() {
                let d = &mut g.deleting[k];
                let in_nic = d.pool.in_nic();
                if in_nic == 0 {
                    deleted.push((idx, g.deleting.remove(k)));
                    continue;
                }
                if !d.answered && now.duration_since(d.since) >= POOL_DELETE_WAIT {
                    d.answered = true;
                    overdue.push((idx, d.pool_id, d.request, in_nic));
                }
                k += 1;
            }
        }
        for (idx, pool_id, request, in_nic) in overdue {
            let reason = format!(
                "pool {pool_id}: the NIC still holds {in_nic} of its buffers after {} s; the proxy no longer uses \
                 its free ring or id, and frees the pool once they are back",
                POOL_DELETE_WAIT.as_secs()
            );
            log_warn!("{}: {reason}", self.endpoints[idx].path.display());
            self.reply(idx, &Message::refuse(RefuseCode::Busy, &reason), request);
        }
        if released.is_empty() && deleted.is_empty() {
            return;
        }
        // The loop may be returning the last buffers into the pools' caches right now:
        // it is past that once it has taken up a configuration.
        self.publish();
        for l in released {
            log_info!(
                "{}: quarantine released: the NIC gave back the last buffers of guest '{}' after {} ms; its {} pool(s) \
                 and region are freed",
                l.socket.display(),
                l.app,
                now.duration_since(l.since).as_millis(),
                l.pools.len()
            );
        }
        for (idx, d) in deleted {
            log_info!(
                "{}: pool {}: the NIC gave back its last buffers after {} ms; deleted",
                self.endpoints[idx].path.display(),
                d.pool_id,
                now.duration_since(d.since).as_millis()
            );
            let (pool_id, request, answered) = (d.pool_id, d.request, d.answered);
            drop(d);
            if !answered {
                self.reply(idx, &Message::PoolAck { pool_id }, request);
            }
        }
    }
}
