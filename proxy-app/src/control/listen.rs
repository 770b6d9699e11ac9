//! The served sockets: making them (owner, group, mode: sockpath.rs), accepting
//! connections with the access check (SO_PEERCRED against the allowlist; one guest per
//! socket), and the limits each socket keeps across its guests (peer warnings, queue
//! starts).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_contract::proto::transport::send_message;
use shm_contract::{Message, RefuseCode};

use super::session::Conn;
use super::{bump, Control};
use crate::access::{self, Access};
use crate::cmds::SocketAccess;
use crate::datapath::SocketStats;
use crate::os;
use crate::reaper::PeerFd;
use crate::sockpath::{ProxyUser, SocketFile};
use crate::{log_info, log_warn};

/// Warnings about a socket's misbehaving peers (refused handshakes, malformed messages,
/// refused requests): at most `PEER_LOG_BURST` per `PEER_LOG_PERIOD` per socket; the
/// counters (`refused`, `bad_requests`) count every one.
const PEER_LOG_PERIOD: Duration = Duration::from_secs(10);
const PEER_LOG_BURST: u32 = 5;

/// The rate limit of one socket's peer warnings.
#[derive(Default)]
struct LogLimit {
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogLimit {
    /// Whether a line may go out at `now`, and how many were held back before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.window.is_none_or(|t| now.duration_since(t) >= PEER_LOG_PERIOD) {
            self.window = Some(now);
            self.lines = 0;
        }
        if self.lines < PEER_LOG_BURST {
            self.lines += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Queue starts one socket may make on a port that restarts for each (no runtime
/// rx-queue setup; every restart pauses the port's other queues): a burst of this
/// many, then `QUEUE_STARTS_PER_SEC`.
const QUEUE_START_BURST: f64 = 20.0;
pub(super) const QUEUE_STARTS_PER_SEC: f64 = 10.0;

/// A token bucket of queue starts.
pub(super) struct StartBudget {
    tokens: f64,
    at: Instant,
}

impl StartBudget {
    pub(super) fn new() -> StartBudget {
        StartBudget { tokens: QUEUE_START_BURST, at: Instant::now() }
    }

    pub(super) fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * QUEUE_STARTS_PER_SEC;
        self.tokens = (self.tokens + refill).min(QUEUE_START_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(super) struct Endpoint {
    /// Who may connect (checked at accept), and the socket file's owner/group/mode.
    pub(super) access: Access,
    pub(super) path: PathBuf,
    pub(super) port: u16,
    /// The NIC queue behind each queue pair the socket offers (pair k: `queues[k]`).
    pub(super) queues: Vec<u16>,
    /// Closed by the reaper too: closing a listener releases the connections still in its
    /// backlog, and the descriptors in the messages queued on them.
    pub(super) listener: PeerFd,
    /// Its connections start able to carry descriptors (no `SO_PASSRIGHTS` in this
    /// kernel): accepting needs room in the reaper.
    pub(super) connections_pass_fds: bool,
    /// The socket file, its directory and the directories the proxy made for it.
    pub(super) file: SocketFile,
    pub(super) conn: Option<Conn>,
    /// What the control thread counts for the socket (see [`Endpoint::totals`]).
    pub(super) stats: Arc<SocketStats>,
    /// What the data loop counts, per queue pair (kept across guests, like `stats`).
    pub(super) queue_stats: Vec<Arc<SocketStats>>,
    pub(super) guests_served: u64,
    peer_log: std::cell::RefCell<LogLimit>,
    /// Per socket, not per guest: reconnecting does not refill it.
    pub(super) queue_starts: StartBudget,
    /// The uid whose accept put it over its CPU budget (budget.rs): the listener is not
    /// polled until that uid may be served again (its next connections wait in the
    /// backlog, not on the control thread).
    pub(super) listener_held_for: Option<u32>,
    /// Times the control thread put off this socket's peers for their uid's budget: a
    /// connection left unread, or the listener held.
    pub(super) deferred: u64,
    /// Set by `disconnect` when the session it ended never ran a queue: what its
    /// events had cost, for the uid's suspect budget (`Control::charge_event`).
    pub(super) ended_unran: Option<Duration>,
}

impl Endpoint {
    /// What no legitimate peer makes the socket count: refusals, bad requests and
    /// unwanted descriptors (an event that moves it is charged to the uid's suspect
    /// budget, budget.rs).
    pub(super) fn suspect_count(&self) -> u64 {
        let st = &self.stats;
        st.refused.load(Ordering::Relaxed) + st.bad_requests.load(Ordering::Relaxed) + st.unwanted_fds.load(Ordering::Relaxed)
    }

    /// The socket's counters: the control thread's and every queue pair's, added up.
    pub(super) fn totals(&self) -> SocketStats {
        let total = SocketStats::default();
        total.add(&self.stats);
        for q in &self.queue_stats {
            total.add(q);
        }
        total
    }

    /// The NIC queues, as `show` and the logs write them (`q` or `q0,q1,...`).
    pub(super) fn queues_text(&self) -> String {
        crate::cmds::queues_text(&self.queues)
    }
}

impl Control {
    pub(super) fn add_socket(&mut self, path: &Path, port: u16, queues: &[u16], overrides: &SocketAccess) -> Result<(), String> {
        let access = self.opts.access.with(overrides)?;
        if self.endpoints.iter().any(|e| e.path == path) {
            return Err(format!("{} is already served", path.display()));
        }
        let max = shm_contract::layout::MAX_QUEUE_PAIRS as usize;
        if queues.is_empty() || queues.len() > max {
            return Err(format!("a socket serves 1 to {max} queues, not {}", queues.len()));
        }
        for &queue in queues {
            if let Some(other) = self.endpoints.iter().find(|e| e.port == port && e.queues.contains(&queue)) {
                return Err(format!("port {port} queue {queue} is already served by {}", other.path.display()));
            }
        }
        let highest = queues.iter().copied().max().unwrap_or(0);
        if !self.ports.contains_key(&port) {
            self.setup_port(port, highest.saturating_add(1))?;
        }
        let nic = &self.ports[&port];
        if highest >= nic.queues {
            return Err(format!(
                "port {port} was configured with {} queue(s) at startup; queue {highest} needs a restart \
                 (name it in the startup commands, or use --queues)",
                nic.queues
            ));
        }
        let (file, listener) = SocketFile::create(path, &access, ProxyUser { runs_as: self.opts.runs_as })?;
        let shown = crate::cmds::queues_text(queues);
        log_info!("serving port {port} queue {shown} on {} ({})", path.display(), access.describe());
        self.endpoints.push(Endpoint {
            access,
            path: path.to_path_buf(),
            port,
            queues: queues.to_vec(),
            connections_pass_fds: os::passes_rights(listener.as_fd()),
            listener: PeerFd::new(listener, os::effective_uid()),
            file,
            conn: None,
            stats: Arc::new(SocketStats::default()),
            queue_stats: queues.iter().map(|_| Arc::new(SocketStats::default())).collect(),
            guests_served: 0,
            peer_log: Default::default(),
            queue_starts: StartBudget::new(),
            listener_held_for: None,
            deferred: 0,
            ended_unran: None,
        });
        Ok(())
    }

    /// Accepts one connection on socket `idx`, charging what that took to the peer's
    /// uid (budget.rs); when that puts the uid over its budget, the listener is held
    /// until the uid may be served again.
    pub(super) fn accept(&mut self, idx: usize) {
        let suspect0 = self.endpoints[idx].suspect_count();
        let had_conn = self.endpoints[idx].conn.is_some();
        let t0 = self.budgets.clock();
        let Some(uid) = self.accept_one(idx) else { return };
        let now = Instant::now();
        let spent = self.budgets.clock().saturating_sub(t0);
        self.budgets.charge(uid, spent, now);
        if had_conn || self.endpoints[idx].conn.is_none() {
            // Refused (busy, not allowed): the socket's connection is not this peer's.
            if self.endpoints[idx].suspect_count() != suspect0 {
                self.budgets.charge_suspect(uid, spent, now);
            }
        } else {
            self.endpoints[idx].ended_unran = None;
            self.charge_event(idx, uid, spent, suspect0, now);
        }
        if !self.budgets.allows_new(uid, now) {
            let ep = &mut self.endpoints[idx];
            ep.listener_held_for = Some(uid);
            ep.deferred += 1;
        }
    }

    /// Accepts one connection: the peer's uid (`u32::MAX` when the kernel did not say),
    /// `None` when there was nothing to accept.
    fn accept_one(&mut self, idx: usize) -> Option<u32> {
        let ep = &mut self.endpoints[idx];
        // Non-blocking: a guest that does not read its socket must never block this
        // thread in a send (see `reply`).
        let Ok(fd) = os::accept(ep.listener.as_fd()) else { return None };
        let cred = access::peer_cred(fd.as_fd());
        // Messages it queued before we accepted carry descriptors only where the kernel
        // lets them through (no SO_PASSRIGHTS): then, whatever happens to this
        // connection, it is closed by the reaper, charged to its uid.
        let peer_uid = cred.as_ref().map_or(u32::MAX, |c| c.uid);
        let fd = PeerFd::connection(fd, peer_uid);
        let pid = cred.as_ref().map_or(-1, |c| c.pid);
        if let Some(uid) = cred.as_ref().map(|c| c.uid).filter(|&u| crate::reaper::is_wedged(u)) {
            let reason = format!(
                "{}: uid {uid} passed a descriptor whose close never ended (a FUSE or NFS file whose server does not \
                 answer); it is refused from now on",
                ep.path.display()
            );
            let _ = send_message(fd.as_fd(), &Message::refuse(RefuseCode::NotAllowed, &reason), 0, &[]);
            bump(&ep.stats.refused);
            self.warn_peer(idx, &format!("refused a peer (pid {pid} uid {uid}): its descriptor wedged a reaper thread"));
            return Some(peer_uid);
        }
        let allowed = cred.as_ref().map(|c| ep.access.admits(c));
        if allowed != Some(true) && (ep.access.has_allowlist() || allowed.is_none()) {
            let (uid, gid) = cred.as_ref().map_or((u32::MAX, u32::MAX), |c| (c.uid, c.gid));
            let reason = format!("{}: uid {uid} gid {gid} is not allowed on this socket", ep.path.display());
            // Nothing it sent is read (no descriptor of a refused peer is ever received
            // here); the peer reads the reason after one ECONNRESET (transport.rs).
            let _ = send_message(fd.as_fd(), &Message::refuse(RefuseCode::NotAllowed, &reason), 0, &[]);
            bump(&ep.stats.refused);
            self.warn_peer(idx, &format!("refused a peer (pid {pid} uid {uid} gid {gid}): not in the allowlist"));
            return Some(peer_uid);
        }
        if let Some(current) = &ep.conn {
            // Who holds the socket is told only to that guest's own user: the name and
            // pid of another user's process (a pid of the proxy's namespace, for a peer
            // in a container) are not the second peer's to know. The log names both.
            let reason = if current.fd.owner() == peer_uid && peer_uid != u32::MAX {
                let who = current.guest().map_or("a connecting guest".to_string(), |g| format!("guest '{}'", g.app));
                format!("{} is busy: {who} (pid {}) of the same user holds it", ep.path.display(), current.pid)
            } else {
                format!("{} is busy: another user's guest holds it", ep.path.display())
            };
            let holder = current.pid;
            let _ = send_message(fd.as_fd(), &Message::refuse(RefuseCode::Busy, &reason), 0, &[]);
            bump(&ep.stats.refused);
            self.warn_peer(idx, &format!("refused a second guest (pid {pid} uid {peer_uid}): busy, pid {holder} holds it"));
            return Some(peer_uid);
        }
        ep.conn = Some(Conn::new(fd, pid));
        Some(peer_uid)
    }

    /// A rate-limited warning about the peer of socket `idx`.
    pub(super) fn warn_peer(&self, idx: usize, text: &str) {
        let ep = &self.endpoints[idx];
        let admitted = ep.peer_log.borrow_mut().admit(Instant::now());
        if let Some(held) = admitted {
            let more = if held > 0 { format!(" ({held} similar lines suppressed)") } else { String::new() };
            log_warn!("{}: {text}{more}", ep.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_warnings_are_rate_limited() {
        let mut limit = LogLimit::default();
        let t0 = Instant::now();
        for _ in 0..PEER_LOG_BURST {
            assert_eq!(limit.admit(t0), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(limit.admit(t0 + Duration::from_secs(1)), None);
        }
        // A new period: the next line goes out and says how many were held back.
        assert_eq!(limit.admit(t0 + PEER_LOG_PERIOD), Some(7));
        assert_eq!(limit.admit(t0 + PEER_LOG_PERIOD), Some(0));
    }
}
