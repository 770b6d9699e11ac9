//! One guest's session on a socket, as a state machine. The states ([`State`]):
//!
//! - `Listening`: no connection; `accept` (listen.rs) checks the peer and opens one.
//! - `AwaitingHello`: connected; Hello must come within `HELLO_TIMEOUT`.
//! - `AwaitingRegion`: a reattaching guest's Hello came without its region memfd (the
//!   connection refused descriptors); the connection now lets one through and the guest
//!   was asked (`RegionWanted`) to send its Hello again with it.
//! - `Attached`: Welcome sent, the region is mapped; pools come and go.
//! - `Running`: at least one of the guest's queue pairs is in the data loop's
//!   configuration.
//! - `Closing`: an answer could not be sent; the connection is detached at the next look.
//!
//! [`Control::handle`] takes one message in the current state to one handler
//! (`on_<message>`); each handler's comment names its transition. Teardown (back to
//! `Listening`) is `disconnect` in guest.rs. docs/architecture.md draws the machine.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_contract::proto::transport::{recv_message_and_fds, send_message, Received, TransportError};
use shm_contract::proto::{negotiate, Hello, Welcome, HELLO_FLAG_REATTACH, PROTOCOL_VERSION_MIN};
use shm_contract::{Message, PoolAdd, RefuseCode, PROTOCOL_VERSION};

use super::guest::Guest;
use super::listen::Endpoint;
use super::{bump, Control};
use crate::datapath::Invalid;
use crate::os;
use crate::quarantine;
use crate::reaper::{self, PeerFd};
use crate::region::{GuestRegion, RegionRequest};
use crate::sizing;
use crate::{log_info, log_warn};

/// A guest must say Hello this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one "invalid input" line per guest this often.
const INVALID_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Where one socket's session is (see the module's comment for each state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Listening,
    AwaitingHello,
    AwaitingRegion,
    Attached,
    Running,
    Closing,
}

/// What a connection holds in each of its states.
pub(super) enum Session {
    AwaitingHello,
    AwaitingRegion,
    /// Attached, or Running when a queue pair of the guest is started (`Guest::queues`).
    Attached(Guest),
}

pub(super) struct Conn {
    /// Closed by the reaper when the connection goes: unread messages on it may hold
    /// descriptors, released in the closer's context.
    pub(super) fd: PeerFd,
    pub(super) since: Instant,
    /// Where its Hello timeout counts from: its accept, or the last time it was held
    /// back for its uid's budget (a session waits for the budget, not against its
    /// timeout).
    hello_clock: Instant,
    pub(super) pid: i32,
    /// A pidfd of the peer's process (`pid`), taken at accept while the process is
    /// surely the peer (a pid can be reused once it exits): tells, after the guest left,
    /// whether its process has exited (control/release.rs). `None` when the kernel gave
    /// no pid (another pid namespace) or no pidfd, and in the fuzzing harness, whose
    /// guests are the fuzzing process itself: no region can wait for its exit, and
    /// each input must leave nothing behind (its regions are closed at detach).
    pub(super) pidfd: Option<OwnedFd>,
    pub(super) session: Session,
    /// An answer could not be sent (the guest does not read its socket): the
    /// connection is shut down and detached at the next look at it.
    pub(super) unanswerable: std::cell::Cell<bool>,
    /// The control-thread CPU time its accept and messages cost so far (budget.rs).
    pub(super) cost: Duration,
    /// A queue of it ran: it came to do what guests come for. A session that ends
    /// without is charged to its uid's suspect budget (budget.rs).
    pub(super) ran: bool,
    /// It stopped a queue while it stayed attached: from then on the port restarts of
    /// its stops and starts, and every message it sends, are charged to its uid's
    /// suspect budget too (flapping; a guest that stops and starts once or twice stays
    /// within that budget's burst).
    pub(super) stopped: bool,
}

impl Conn {
    /// A connection the access check let in.
    pub(super) fn new(fd: PeerFd, pid: i32) -> Conn {
        Conn {
            fd,
            since: Instant::now(),
            hello_clock: Instant::now(),
            pid,
            pidfd: if cfg!(feature = "fuzzing") { None } else { crate::os::pidfd_open(pid).ok() },
            session: Session::AwaitingHello,
            unanswerable: Default::default(),
            cost: Duration::ZERO,
            ran: false,
            stopped: false,
        }
    }

    /// The guest, once the handshake is done.
    pub(super) fn guest(&self) -> Option<&Guest> {
        match &self.session {
            Session::Attached(g) => Some(g),
            Session::AwaitingHello | Session::AwaitingRegion => None,
        }
    }

    pub(super) fn guest_mut(&mut self) -> Option<&mut Guest> {
        match &mut self.session {
            Session::Attached(g) => Some(g),
            Session::AwaitingHello | Session::AwaitingRegion => None,
        }
    }
}

impl Endpoint {
    /// The guest on this socket, once its handshake is done.
    pub(super) fn guest(&self) -> Option<&Guest> {
        self.conn.as_ref().and_then(|c| c.guest())
    }

    /// The session's state, from what the socket holds.
    pub(super) fn state(&self) -> State {
        match &self.conn {
            None => State::Listening,
            Some(c) if c.unanswerable.get() => State::Closing,
            Some(Conn { session: Session::AwaitingHello, .. }) => State::AwaitingHello,
            Some(Conn { session: Session::AwaitingRegion, .. }) => State::AwaitingRegion,
            Some(Conn { session: Session::Attached(g), .. }) if g.running() => State::Running,
            Some(Conn { session: Session::Attached(_), .. }) => State::Attached,
        }
    }
}

impl Control {
    /// Reads and answers what the guest sent, one message at a time while its uid's
    /// budget of control-thread CPU time lasts (budget.rs): each message, and what
    /// answering it took, is charged to the uid; the rest waits in the socket until the
    /// budget has refilled (the poll loop leaves the connection out meanwhile).
    pub(super) fn service_conn(&mut self, idx: usize) {
        loop {
            let Some(conn) = self.endpoints[idx].conn.as_ref() else { return };
            let owner = conn.fd.owner();
            if !self.budgets.serves(conn, Instant::now()) {
                self.endpoints[idx].deferred += 1;
                return;
            }
            let suspect0 = self.endpoints[idx].suspect_count();
            self.endpoints[idx].ended_unran = None;
            let t0 = self.budgets.clock();
            let more = self.service_one(idx);
            let spent = self.budgets.clock().saturating_sub(t0);
            let now = Instant::now();
            self.budgets.charge(owner, spent, now);
            self.charge_event(idx, owner, spent, suspect0, now);
            if !more {
                return;
            }
        }
    }

    /// After an event of the connection on socket `idx` (its accept or a message) that
    /// cost `spent`, already charged to `owner`'s CPU budget: adds it to the
    /// connection's cost, and charges the uid's suspect budget (budget.rs) with it when
    /// it ended in a refusal, a bad request or unwanted descriptors (`suspect0`: the
    /// socket's count of those before it) or came from a guest that is flapping its
    /// queue (`Conn::stopped`: its stops of queues already stopped and its refused
    /// starts alike), and with all the session cost when this event ended a session
    /// that never ran a queue.
    pub(super) fn charge_event(&mut self, idx: usize, owner: u32, spent: Duration, suspect0: u64, now: Instant) {
        let ep = &mut self.endpoints[idx];
        let mut suspect_event = ep.suspect_count() != suspect0;
        if let Some(c) = ep.conn.as_mut() {
            c.cost += spent;
            c.ran |= c.guest().is_some_and(|g| g.running());
            suspect_event |= c.stopped;
        }
        let suspect = match ep.ended_unran.take() {
            // Ended in this event (`disconnect` left what it had cost before).
            Some(before) => before + spent,
            None if suspect_event => spent,
            None => Duration::ZERO,
        };
        if !suspect.is_zero() {
            self.budgets.charge_suspect(owner, suspect, now);
        }
    }

    /// Reads and answers one message; whether the connection may have more to read.
    fn service_one(&mut self, idx: usize) -> bool {
        let Some(conn) = self.endpoints[idx].conn.as_ref() else { return false };
        if conn.unanswerable.get() {
            bump(&self.endpoints[idx].stats.bad_requests);
            self.disconnect(idx, "the guest does not read its socket", false);
            return false;
        }
        if conn.fd.passes() && !reaper::room_for_peer_input(self.endpoints.len()) {
            // Read on when the reaper has caught up (the poll loop skips peers meanwhile).
            return false;
        }
        let Received { message, fds } = recv_message_and_fds(conn.fd.as_fd(), Some(Duration::ZERO));
        let owner = conn.fd.owner();
        let fds: Vec<PeerFd> = fds.into_iter().map(|f| PeerFd::new(f, owner)).collect();
        if !fds.is_empty() && !self.expects_fd(idx, &message) {
            self.unwanted_fds(idx, &message, fds);
            return false;
        }
        let (msg, id) = match message {
            Ok((msg, id)) => (msg, id),
            Err(TransportError::Timeout) => return false,
            Err(TransportError::Closed) => {
                if !self.has_guest(idx) {
                    // Gone before its Hello (a probe, or a connection flood).
                    bump(&self.endpoints[idx].stats.refused);
                    self.warn_peer(idx, "a connection closed before its Hello");
                }
                self.disconnect(idx, "the guest closed the connection", false);
                return false;
            }
            Err(e @ (TransportError::Decode(_) | TransportError::Truncated | TransportError::TooManyFds { .. })) => {
                let reason = format!("malformed message: {e}");
                self.reply(idx, &Message::refuse(RefuseCode::BadRequest, &reason), 0);
                bump(&self.endpoints[idx].stats.bad_requests);
                if !self.has_guest(idx) {
                    // Not even a handshake: nothing to keep this connection for.
                    bump(&self.endpoints[idx].stats.refused);
                    self.warn_peer(idx, &format!("{reason} before Hello; disconnected"));
                    self.disconnect(idx, &reason, false);
                    return false;
                }
                self.warn_peer(idx, &reason);
                return true;
            }
            Err(e) => {
                self.disconnect(idx, &format!("control socket error: {e}"), false);
                return false;
            }
        };
        self.handle(idx, msg, id, fds);
        true
    }

    pub(super) fn reply(&self, idx: usize, msg: &Message, id: u32) {
        self.reply_with_fds(idx, msg, id, &[]);
    }

    fn reply_with_fds(&self, idx: usize, msg: &Message, id: u32, fds: &[std::os::fd::BorrowedFd<'_>]) {
        if let Some(conn) = &self.endpoints[idx].conn {
            if conn.unanswerable.get() {
                return;
            }
            if let Err(e) = send_message(conn.fd.as_fd(), msg, id, fds) {
                // The socket is non-blocking: a full socket is a guest that does not read
                // its answers. No further answer is attempted; the connection is shut down
                // (so its poll wakes up) and detached by `service_conn`/`housekeeping`.
                self.warn_peer(idx, &format!("cannot answer the guest ({e}); closing its connection"));
                conn.unanswerable.set(true);
                // It stays open until dropped.
                let _ = os::shutdown(conn.fd.as_fd());
            }
        }
    }

    /// Whether a message may carry a descriptor: only a reattaching guest's `Hello`
    /// (its region memfd), before the connection has a guest.
    fn expects_fd(&self, idx: usize, message: &Result<(Message, u32), TransportError>) -> bool {
        matches!(message, Ok((Message::Hello(h), _)) if h.flags & HELLO_FLAG_REATTACH != 0) && !self.has_guest(idx)
    }

    /// Descriptors came where the protocol has none: they go to the reaper unlooked-at,
    /// the message is refused and the connection closed (so one connection can bring
    /// at most one message's worth, `SCM_MAX_FD`).
    fn unwanted_fds(&mut self, idx: usize, message: &Result<(Message, u32), TransportError>, fds: Vec<PeerFd>) {
        let count = fds.len();
        drop(fds);
        let what = match message {
            Ok((msg, _)) => msg.kind().to_string(),
            Err(e) => format!("a malformed message ({e})"),
        };
        let id = message.as_ref().map_or(0, |(_, id)| *id);
        let reason = format!("{count} descriptor(s) with {what}, where the protocol passes none; disconnected");
        let st = &self.endpoints[idx].stats;
        st.unwanted_fds.store(st.unwanted_fds.load(Ordering::Relaxed) + count as u64, Ordering::Relaxed);
        bump(if self.has_guest(idx) { &st.bad_requests } else { &st.refused });
        self.reply(idx, &Message::refuse(RefuseCode::BadRequest, &reason), id);
        self.warn_peer(idx, &reason);
        self.disconnect(idx, &reason, false);
    }

    pub(super) fn has_guest(&self, idx: usize) -> bool {
        self.endpoints[idx].conn.as_ref().is_some_and(|c| c.guest().is_some())
    }

    pub(super) fn guest_mut(&mut self, idx: usize) -> Option<&mut Guest> {
        self.endpoints[idx].conn.as_mut().and_then(|c| c.guest_mut())
    }

    /// One message in the session's current state: the transitions of the state
    /// machine (docs/architecture.md draws them). `fds` came with the message: only a
    /// reattaching `Hello` carries one (its region), and `service_conn` has already
    /// refused any other message that brought some.
    fn handle(&mut self, idx: usize, msg: Message, id: u32, fds: Vec<PeerFd>) {
        use State::{Attached, AwaitingHello, Running};
        match (self.endpoints[idx].state(), msg) {
            // `service_conn` reads nothing without a connection, nor from one it closes.
            (State::Listening | State::Closing, _) => {}
            (_, Message::Goodbye) => self.on_goodbye(idx),
            (AwaitingHello, Message::Hello(hello)) => self.on_hello(idx, hello, id, fds),
            (State::AwaitingRegion, Message::Hello(hello)) => self.on_region(idx, hello, id, fds),
            (State::AwaitingRegion, other) => self.on_before_hello(idx, other, id),
            (AwaitingHello, other) => self.on_before_hello(idx, other, id),
            (Attached | Running, Message::PoolAdd(add)) => self.on_pool_add(idx, add, id),
            (Attached | Running, Message::PoolDel { pool_id }) => self.on_pool_del(idx, pool_id, id),
            (Attached | Running, Message::QueueStart { rx_pool_id, flags, rx_depth, queue }) => {
                self.on_queue_start(idx, rx_pool_id, flags, rx_depth, queue, id)
            }
            (Attached | Running, Message::QueueStop { queue }) => self.on_queue_stop(idx, queue, id),
            (Attached | Running, other) => self.on_unexpected(idx, other, id),
        }
    }

    /// Any state -> Listening: the guest leaves (teardown in `disconnect`).
    fn on_goodbye(&mut self, idx: usize) {
        self.disconnect(idx, "the guest said goodbye", false);
    }

    /// AwaitingHello -> Listening: anything but Hello first is refused, and the
    /// connection closed.
    fn on_before_hello(&mut self, idx: usize, msg: Message, id: u32) {
        let reason = format!("expected Hello first, got {}", msg.kind());
        self.reply(idx, &Message::refuse(RefuseCode::BadRequest, &reason), id);
        bump(&self.endpoints[idx].stats.refused);
        self.warn_peer(idx, &format!("{reason}; disconnected"));
        self.disconnect(idx, &reason, false);
    }

    /// Attached/Running, unchanged: a pool is added (or refused, with the reason).
    fn on_pool_add(&mut self, idx: usize, add: PoolAdd, id: u32) {
        let answer = match self.pool_add(idx, &add) {
            Ok(()) => {
                log_info!(
                    "{}: pool {}: {} buffers of {} bytes",
                    self.endpoints[idx].path.display(),
                    add.pool_id,
                    add.count,
                    add.data_room
                );
                Message::PoolAck { pool_id: add.pool_id }
            }
            Err(reason) => {
                bump(&self.endpoints[idx].stats.bad_requests);
                self.warn_peer(idx, &format!("pool {} refused: {reason}", add.pool_id));
                Message::refuse(RefuseCode::BadRequest, &reason)
            }
        };
        self.reply(idx, &answer, id);
    }

    /// Attached/Running, unchanged: a pool is deleted, answered now or once the NIC gave
    /// its buffers back (`sweep_quarantine`).
    fn on_pool_del(&mut self, idx: usize, pool_id: u32, id: u32) {
        let answer = match self.pool_del(idx, pool_id, id) {
            Ok(true) => Message::PoolAck { pool_id },
            // Answered by `sweep_quarantine` once the NIC gave its buffers back.
            Ok(false) => return,
            Err(reason) => {
                bump(&self.endpoints[idx].stats.bad_requests);
                Message::refuse(RefuseCode::BadRequest, &reason)
            }
        };
        self.reply(idx, &answer, id);
    }

    /// Attached -> Running (a refusal leaves the state as it was, Running included).
    fn on_queue_start(&mut self, idx: usize, rx_pool_id: u32, flags: u32, rx_depth: u32, queue: u16, id: u32) {
        match self.queue_start(idx, rx_pool_id, flags, rx_depth, queue) {
            // With wake-ups, the guest's end of the pair the proxy made goes along
            // (and the proxy's copy of it is closed: a fresh socket, nothing queued).
            Ok(guest_end) => {
                let fds: Vec<_> = guest_end.iter().map(|f| f.as_fd()).collect();
                self.reply_with_fds(idx, &Message::QueueStarted, id, &fds);
            }
            Err((code, reason)) => {
                bump(&self.endpoints[idx].stats.bad_requests);
                self.warn_peer(idx, &format!("cannot start the queue: {reason}"));
                self.reply(idx, &Message::refuse(code, &reason), id);
            }
        }
    }

    /// Running -> Attached once no queue pair runs (Attached stays: stopping a stopped
    /// queue is answered too); a queue pair the socket does not offer is refused.
    fn on_queue_stop(&mut self, idx: usize, queue: u16, id: u32) {
        let offered = self.endpoints[idx].queues.len();
        if usize::from(queue) >= offered {
            let reason = format!("queue {queue} does not exist: this socket offers {offered} queue pair(s)");
            bump(&self.endpoints[idx].stats.bad_requests);
            self.warn_peer(idx, &format!("cannot stop the queue: {reason}"));
            self.reply(idx, &Message::refuse(RefuseCode::BadRequest, &reason), id);
            return;
        }
        // A guest that stops its queue and stays is flapping from here on, unless it
        // only does so once or twice (the suspect burst covers that; budget.rs).
        if let Some(c) = self.endpoints[idx].conn.as_mut() {
            c.stopped |= c.guest().is_some_and(|g| g.running());
        }
        self.queue_stop(idx, queue);
        self.reply(idx, &Message::QueueStopped, id);
    }

    /// Attached/Running, unchanged: a message the guest has no business sending (a
    /// second Hello, an answer kind) is refused.
    fn on_unexpected(&mut self, idx: usize, msg: Message, id: u32) {
        let reason = format!("unexpected {} from a guest", msg.kind());
        bump(&self.endpoints[idx].stats.bad_requests);
        self.warn_peer(idx, &reason);
        self.reply(idx, &Message::refuse(RefuseCode::BadRequest, &reason), id);
    }

    /// AwaitingRegion -> AwaitingHello, and on as `on_hello`: the reattaching Hello again,
    /// now with its memfd; the connection refuses descriptors again first.
    fn on_region(&mut self, idx: usize, hello: Hello, id: u32, fds: Vec<PeerFd>) {
        let Some(conn) = self.endpoints[idx].conn.as_mut() else { return };
        conn.session = Session::AwaitingHello;
        if let Err(e) = conn.fd.stop_passing() {
            self.disconnect(idx, &format!("cannot refuse descriptors again: {e}"), false);
            return;
        }
        if fds.is_empty() || hello.flags & HELLO_FLAG_REATTACH == 0 {
            let reason = "asked for its region, the guest sent a Hello without it".to_string();
            bump(&self.endpoints[idx].stats.refused);
            self.warn_peer(idx, &format!("{reason}; disconnected"));
            self.reply(idx, &Message::refuse(RefuseCode::BadRequest, &reason), id);
            self.disconnect(idx, &reason, false);
            return;
        }
        self.on_hello(idx, hello, id, fds);
    }

    /// AwaitingHello -> AwaitingRegion: a reattaching Hello without its memfd on a
    /// connection that refuses descriptors; the connection lets one message's worth
    /// through and the guest is asked for it.
    fn ask_for_region(&mut self, idx: usize, id: u32) {
        let Some(conn) = self.endpoints[idx].conn.as_mut() else { return };
        if let Err(e) = conn.fd.let_pass() {
            self.disconnect(idx, &format!("cannot let the guest pass its region: {e}"), false);
            return;
        }
        conn.session = Session::AwaitingRegion;
        self.reply(idx, &Message::RegionWanted, id);
    }

    /// AwaitingHello -> Attached (Welcome, with the region memfd unless it reattaches),
    /// or -> Listening (refused, with the reason): version negotiation, the region
    /// (made, or the guest's adopted), its DMA registration and status block.
    fn on_hello(&mut self, idx: usize, hello: Hello, id: u32, mut fds: Vec<PeerFd>) {
        let ep = &self.endpoints[idx];
        let refuses_fds = ep.conn.as_ref().is_some_and(|c| !c.fd.passes());
        if hello.flags & HELLO_FLAG_REATTACH != 0 && fds.is_empty() && refuses_fds {
            return self.ask_for_region(idx, id);
        }
        let path = ep.path.display().to_string();
        // The guest chose it: only ever shown escaped (logs, show stats, telemetry).
        let app = crate::shown::escape(&hello.app_name);
        let refuse = |ctl: &mut Control, code: RefuseCode, reason: String| {
            bump(&ctl.endpoints[idx].stats.refused);
            ctl.warn_peer(idx, &format!("refused guest '{app}': {reason}"));
            ctl.reply(idx, &Message::refuse(code, &reason), id);
            ctl.endpoints[idx].conn = None;
        };
        let version = match negotiate(hello.version_min, hello.version_max) {
            Ok(v) => v,
            Err(_) => {
                let reason = format!(
                    "no common protocol version: the proxy speaks {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION}, \
                     the guest {}..={}",
                    hello.version_min, hello.version_max
                );
                return refuse(self, RefuseCode::VersionMismatch, reason);
            }
        };
        let or_default = |n: u32| if n == 0 { shm_contract::layout::DEFAULT_RING_ENTRIES } else { n };
        let (rx_entries, tx_entries) = (or_default(hello.rx_ring_entries), or_default(hello.tx_ring_entries));
        // Every pair the socket offers: the guest's application configures its queues
        // only after the handshake.
        let queue_pairs = ep.queues.len();
        let limits = sizing::Limits {
            default_size: self.opts.region_size,
            max_size: self.opts.max_region_size,
            try_hugepages: self.opts.try_hugepages,
            hugepage_share: self.opts.hugepage_share,
        };
        let meminfo = sizing::MemInfo::read();
        let rings = sizing::Rings { rx_entries, tx_entries, queue_pairs: queue_pairs as u32 };
        let plan = match sizing::plan(hello.region_size, hello.heap_bytes, &rings, &limits, &meminfo) {
            Ok(plan) => plan,
            Err((code, reason)) => return refuse(self, code, reason),
        };
        let req = RegionRequest {
            size: plan.size,
            rx_entries,
            tx_entries,
            queue_pairs: queue_pairs as u32,
            try_hugepages: plan.hugepages,
        };
        let (port, queue, shown) = (ep.port, ep.queues[0], ep.queues_text());
        let uid = ep.conn.as_ref().map_or(u32::MAX, |c| c.fd.owner());
        let leftovers = self.quarantine.iter().filter(|l| l.socket == ep.path);
        if let Err(reason) = quarantine::admits(leftovers, uid, port, &shown) {
            return refuse(self, RefuseCode::Busy, reason);
        }
        let name = format!("dpdk-io-proxy:{path}");
        let reattach = hello.flags & HELLO_FLAG_REATTACH != 0;
        let made = if reattach {
            // The guest's pools live in the region an earlier proxy gave it: it hands
            // that memfd back, and it is checked and laid out again (GuestRegion::adopt).
            if fds.len() != 1 || hello.region_size == 0 {
                let reason = format!("a reattaching Hello must carry its region memfd and size (got {} fds)", fds.len());
                return refuse(self, RefuseCode::BadRequest, reason);
            }
            // Checked before it is kept (a memfd: its close never blocks); refused, it
            // goes to the reaper like any other peer descriptor.
            let memfd = fds.remove(0);
            match GuestRegion::inspect(memfd.as_fd(), &req) {
                Ok(backing) => GuestRegion::adopt(memfd.keep(), backing, &req),
                Err(e) => Err(e),
            }
            .map_err(|e| format!("cannot adopt the guest's region: {e}"))
        } else {
            GuestRegion::create(&name, &req)
        };
        drop(fds);
        let mut region = match made {
            Ok(r) => r,
            Err(reason) => return refuse(self, RefuseCode::BadRequest, reason),
        };
        let nic = &self.ports[&port];
        if let Err(e) = region.register_dma(nic.device) {
            log_warn!("{path}: {e}; a NIC that DMAs by IOVA cannot reach this guest's buffers");
        }
        if let Some(status) = region.status() {
            status.link_up().store(nic.link.up as u32, Ordering::Release);
            status.link_speed_mbps().store(nic.link.speed_mbps, Ordering::Release);
        }
        let welcome = Message::Welcome(Welcome {
            version,
            flags: region.layout.flags(),
            region_size: region.layout.region_size(),
            page_size: region.layout.page_size(),
            port_id: port,
            queue_id: queue,
            mac: nic.mac,
            mtu: nic.mtu,
            max_rx_frame: nic.max_rx_frame,
            link_up: nic.link.up,
            link_speed_mbps: nic.link.speed_mbps,
            queue_pairs: queue_pairs as u16,
        });
        let conn = self.endpoints[idx].conn.as_ref().expect("connection present");
        // A reattaching guest has its memfd mapped already.
        let sent_fds = if reattach { Vec::new() } else { vec![region.memfd.as_fd()] };
        if let Err(e) = send_message(conn.fd.as_fd(), &welcome, id, &sent_fds) {
            log_warn!("{path}: cannot send Welcome: {e}");
            self.endpoints[idx].conn = None;
            return;
        }
        log_info!(
            "{path}: guest '{app}' (pid {}) {} port {port} queue {shown}: region {} KiB on {}{}",
            conn.pid,
            if reattach { "reattached its region to" } else { "attached to" },
            region.len() >> 10,
            if region.hugepages { format!("{} KiB hugepages", region.layout.page_size() >> 10) } else { "4 KiB pages".into() },
            match plan.fallback.filter(|_| !reattach && !region.hugepages) {
                Some(why) => format!(" (not hugepages: {why})"),
                None => String::new(),
            }
        );
        let ep = &mut self.endpoints[idx];
        ep.guests_served += 1;
        // The socket's count includes earlier guests' (kept at detach), on the socket and
        // on its queue pairs: only what this guest adds is reported as its own. The same
        // sum as `check_session` compares with.
        let invalid_before = ep.totals().invalid.load(Ordering::Relaxed);
        if let Some(conn) = ep.conn.as_mut() {
            conn.session = Session::Attached(Guest {
                app,
                region: Arc::new(region),
                pools: Vec::new(),
                deleting: Vec::new(),
                queues: vec![None; queue_pairs],
                invalid_reported: invalid_before,
                last_invalid_log: None,
            });
        }
    }

    /// The session's periodic checks: a connection that cannot be answered or that has
    /// not said Hello in time goes; a guest that broke its ring or lost its region's
    /// pages goes; invalid input is reported (rate-limited); parked buffers are retried.
    pub(super) fn check_session(&mut self, idx: usize, now: Instant) {
        if let Some(c) = self.endpoints[idx].conn.as_mut() {
            if c.guest().is_none() && !self.budgets.allows_new(c.fd.owner(), now) {
                c.hello_clock = now;
            }
        }
        let ep = &self.endpoints[idx];
        let Some(conn) = &ep.conn else { return };
        if conn.unanswerable.get() {
            // An answer from here (link news, a refusal) found its socket full.
            self.disconnect(idx, "the guest does not read its socket", false);
            return;
        }
        let Some(guest) = conn.guest() else {
            if now.duration_since(conn.hello_clock) > HELLO_TIMEOUT {
                bump(&ep.stats.refused);
                self.warn_peer(idx, "no Hello within 5 s; disconnected");
                self.disconnect(idx, "no Hello within 5 s", false);
            }
            return;
        };
        // Buffers the data loop could not return at once go back from here too when
        // the loop has nothing to give back for a while.
        for (_, pool) in &guest.pools {
            if pool.ctx.parked() > 0 {
                pool.ctx.retry_parked();
            }
        }
        let broken = guest.started().any(|q| q.broken.load(Ordering::Acquire));
        let lost_pages = guest.region.lost_pages() > 0;
        let total = guest.invalid_total(&ep.totals());
        if total > guest.invalid_reported
            && guest.last_invalid_log.is_none_or(|t| now.duration_since(t) >= INVALID_LOG_PERIOD)
        {
            let first = guest
                .started()
                .find_map(|q| Invalid::from_u32(q.first_invalid.load(Ordering::Relaxed)))
                .map_or("a free-ring entry named no buffer of its pool, or one the proxy held", |k| k.describe());
            // Rate-limited per socket, not per guest: a peer that reconnects after each
            // bad packet must not get a line per connection.
            let text = format!("guest '{}': {} invalid descriptors/buffers dropped so far (first: {first})", guest.app, total);
            self.warn_peer(idx, &text);
            if let Some(g) = self.guest_mut(idx) {
                g.invalid_reported = total;
                g.last_invalid_log = Some(now);
            }
        }
        if lost_pages {
            // Its memory is already replaced by zeros (shm_contract::fault): whatever
            // the data loop read since then was validated like any other garbage.
            bump(&self.endpoints[idx].stats.invalid);
            let reason = "pages of the guest's region vanished (a hole punched in its memfd); the region is gone";
            self.warn_peer(idx, &format!("{reason}; disconnected"));
            self.reply(idx, &Message::refuse(RefuseCode::BadRequest, reason), 0);
            self.disconnect(idx, reason, false);
            return;
        }
        if broken {
            let reason = "the guest corrupted a ring index";
            self.reply(idx, &Message::refuse(RefuseCode::BadRequest, reason), 0);
            self.disconnect(idx, reason, false);
        }
    }
}

impl super::budget::UidBudgets {
    /// Whether the connection `c` may be read now: an attached guest's while its uid is
    /// not in debt, a session still before its handshake only once its uid owes
    /// nothing (budget.rs).
    pub(super) fn serves(&mut self, c: &Conn, now: Instant) -> bool {
        if c.guest().is_some() {
            self.allows(c.fd.owner(), now)
        } else {
            self.allows_new(c.fd.owner(), now)
        }
    }
}
