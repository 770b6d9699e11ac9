//! The control thread: unix sockets, guests' handshakes and requests, commands on stdin,
//! link watching, NIC queue switching, and teardown. Everything slow lives here; the
//! data loop only sees what this thread publishes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpdk::{PktPool, Port};
use shm_contract::proto::transport::{recv_message_and_fds, send_message, Received, TransportError};
use shm_contract::proto::{negotiate, Hello, Welcome, HELLO_FLAG_REATTACH, PROTOCOL_VERSION_MIN, QUEUE_FLAG_RX_WAKEUP};
use shm_contract::wake::Waker;
use shm_contract::{DescRing, Message, PoolAdd, PoolLayout, RefuseCode, PROTOCOL_VERSION};

use crate::access::{self, Access};
use crate::cmds::{self, Command, SocketAccess};
use crate::datapath::{DataQueue, Invalid, Plane, SocketStats, TxLimits};
use crate::nic::NicPort;
use crate::os;
use crate::quarantine::{self, Leftover, PendingDelete, POOL_DELETE_WAIT};
use crate::reaper::{self, PeerFd};
use crate::region::{GuestRegion, RegionRequest};
use crate::shadow::ShadowPool;
use crate::sockpath::{ProxyUser, SocketFile};
use crate::{log_info, log_warn};

mod reload;
pub use reload::reload_on_sighup;

/// Set by SIGINT/SIGTERM.
pub static QUIT_SIGNAL: AtomicBool = AtomicBool::new(false);

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub region_size: u64,
    pub max_region_size: u64,
    /// Packet buffers one guest may announce, all its pools together: each costs the
    /// proxy a shadow mbuf of its own memory.
    pub max_guest_buffers: u64,
    pub try_hugepages: bool,
    /// Owner, group and mode of sockets and their directories; who may connect.
    pub access: Access,
    pub mtu: Option<u16>,
    pub queues: Option<u16>,
    pub stats_period: Option<Duration>,
    /// The uid the proxy runs as after start-up (`--user`, else its own): it owns the
    /// directories the proxy makes and may own a socket's path.
    pub runs_as: u32,
}

/// A guest must say Hello this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one "invalid input" line per guest this often.
const INVALID_LOG_PERIOD: Duration = Duration::from_secs(10);
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
const QUEUE_STARTS_PER_SEC: f64 = 10.0;

/// A token bucket of queue starts.
struct StartBudget {
    tokens: f64,
    at: Instant,
}

impl StartBudget {
    fn new() -> StartBudget {
        StartBudget { tokens: QUEUE_START_BURST, at: Instant::now() }
    }

    fn take(&mut self, now: Instant) -> bool {
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

struct Endpoint {
    /// Who may connect (checked at accept), and the socket file's owner/group/mode.
    access: Access,
    path: PathBuf,
    port: u16,
    queue: u16,
    /// Closed by the reaper too: closing a listener releases the connections still in its
    /// backlog, and the descriptors in the messages queued on them.
    listener: PeerFd,
    /// The socket file, its directory and the directories the proxy made for it.
    file: SocketFile,
    conn: Option<Conn>,
    stats: Arc<SocketStats>,
    guests_served: u64,
    peer_log: std::cell::RefCell<LogLimit>,
    /// Per socket, not per guest: reconnecting does not refill it.
    queue_starts: StartBudget,
}

struct Conn {
    /// Closed by the reaper when the connection goes: unread messages on it may hold
    /// descriptors, released in the closer's context.
    fd: PeerFd,
    since: Instant,
    pid: i32,
    guest: Option<Guest>,
    /// An answer could not be sent (the guest does not read its socket): the
    /// connection is shut down and detached at the next look at it.
    unanswerable: std::cell::Cell<bool>,
}

struct Guest {
    /// Its application name, escaped (`shown::escape`): safe in logs, stats and JSON.
    app: String,
    region: Arc<GuestRegion>,
    pools: Vec<(u32, ShadowPool)>,
    /// Pools the guest deleted while the NIC held buffers of them (quarantine.rs).
    deleting: Vec<PendingDelete>,
    queue: Option<Arc<DataQueue>>,
    invalid_reported: u64,
    last_invalid_log: Option<Instant>,
}

impl Guest {
    fn invalid_total(&self, stats: &SocketStats) -> u64 {
        stats.invalid.load(Ordering::Relaxed)
            + self.pools.iter().map(|(_, p)| p.ctx.invalid.load(Ordering::Relaxed)).sum::<u64>()
    }
}

pub struct Control {
    opts: Options,
    plane: Arc<Plane>,
    ports: BTreeMap<u16, NicPort>,
    endpoints: Vec<Endpoint>,
    paused_ports: BTreeSet<u16>,
    /// Pools and regions of departed guests whose buffers a NIC still holds.
    quarantine: Vec<Leftover>,
    quit: bool,
    stdin_open: bool,
    pool_serial: u32,
    last_link_check: Instant,
    last_stats: Instant,
    /// The admin socket (`--ctl`), served from the poll loop like stdin.
    admin: Option<crate::admin::Admin>,
    /// The configuration file that SIGHUP reloads.
    config_file: Option<PathBuf>,
}

impl Control {
    /// Sets up the ports the startup commands need, then their sockets. `startup` holds
    /// each command with its line in `source`. An error names the line, and the sockets
    /// made before it are removed again: the proxy refuses to start rather than serve
    /// half of its configuration.
    pub fn new(
        opts: Options,
        plane: Arc<Plane>,
        startup: Vec<(usize, Command)>,
        source: &str,
    ) -> Result<Control, String> {
        let mut ctl = Control {
            opts,
            plane,
            ports: BTreeMap::new(),
            endpoints: Vec::new(),
            paused_ports: BTreeSet::new(),
            quarantine: Vec::new(),
            quit: false,
            stdin_open: true,
            pool_serial: 0,
            last_link_check: Instant::now(),
            last_stats: Instant::now(),
            admin: None,
            config_file: None,
        };
        // Every port gets as many queues as the whole file names for it, before its
        // first socket is made.
        let mut wanted: BTreeMap<u16, u16> = BTreeMap::new();
        for (_, cmd) in &startup {
            if let Command::Socket { port, queue, .. } = cmd {
                let q = wanted.entry(*port).or_insert(0);
                *q = (*q).max(queue + 1);
            }
        }
        for (line, cmd) in startup {
            let done = match cmd {
                Command::Socket { path, port, queue, access } => {
                    let ports_ok = match wanted.remove(&port) {
                        Some(queues) if !ctl.ports.contains_key(&port) => ctl.setup_port(port, queues),
                        _ => Ok(()),
                    };
                    ports_ok.and_then(|_| ctl.add_socket(&path, port, queue, &access))
                }
                other => {
                    ctl.execute(other, &mut std::io::stdout());
                    Ok(())
                }
            };
            if let Err(e) = done {
                for ep in &ctl.endpoints {
                    ep.file.remove();
                }
                ctl.close_ports();
                return Err(format!("{source}:{line}: {e}"));
            }
        }
        ctl.publish();
        Ok(ctl)
    }

    fn setup_port(&mut self, port: u16, queues: u16) -> Result<(), String> {
        let p = Port(port);
        if !p.is_valid() {
            let have: Vec<String> = Port::all().iter().map(|p| format!("{} ({})", p.0, p.name())).collect();
            return Err(format!(
                "port {port} does not exist; probed ports: {}",
                if have.is_empty() { "none (add --vdev or allow a NIC)".into() } else { have.join(", ") }
            ));
        }
        let queues = queues.max(self.opts.queues.unwrap_or(1));
        let nic = NicPort::setup(p, queues, self.opts.mtu)?;
        log_info!(
            "port {port} ({}): {queues} queue(s), MAC {}, MTU {}, link {}, tx up to {} segment(s) and {} bytes a frame",
            nic.name,
            mac_text(&nic.mac),
            nic.mtu,
            link_text(nic.link),
            nic.tx_limits.max_segs,
            nic.tx_limits.max_frame
        );
        self.ports.insert(port, nic);
        Ok(())
    }

    fn add_socket(&mut self, path: &Path, port: u16, queue: u16, overrides: &SocketAccess) -> Result<(), String> {
        let access = self.opts.access.with(overrides)?;
        if self.endpoints.iter().any(|e| e.path == path) {
            return Err(format!("{} is already served", path.display()));
        }
        if let Some(other) = self.endpoints.iter().find(|e| e.port == port && e.queue == queue) {
            return Err(format!("port {port} queue {queue} is already served by {}", other.path.display()));
        }
        if !self.ports.contains_key(&port) {
            self.setup_port(port, queue + 1)?;
        }
        let nic = &self.ports[&port];
        if queue >= nic.queues {
            return Err(format!(
                "port {port} was configured with {} queue(s) at startup; queue {queue} needs a restart \
                 (name it in the startup commands, or use --queues)",
                nic.queues
            ));
        }
        let (file, listener) = SocketFile::create(path, &access, ProxyUser { runs_as: self.opts.runs_as })?;
        log_info!("serving port {port} queue {queue} on {} ({})", path.display(), access.describe());
        self.endpoints.push(Endpoint {
            access,
            path: path.to_path_buf(),
            port,
            queue,
            listener: PeerFd::new(listener),
            file,
            conn: None,
            stats: Arc::new(SocketStats::default()),
            guests_served: 0,
            peer_log: Default::default(),
            queue_starts: StartBudget::new(),
        });
        Ok(())
    }

    /// Rebuilds what the data loop polls from the current state.
    fn publish(&self) {
        let mut active = Vec::new();
        let mut busy = BTreeSet::new();
        for ep in &self.endpoints {
            let Some(guest) = ep.conn.as_ref().and_then(|c| c.guest.as_ref()) else { continue };
            // A guest's NIC queue is never drained as idle, even while its queue is
            // stopped: what arrives waits in the NIC for the guest.
            busy.insert((ep.port, ep.queue));
            if let Some(q) = &guest.queue {
                if !self.paused_ports.contains(&ep.port) {
                    active.push(q.clone());
                }
            }
        }
        let mut idle = Vec::new();
        for (&port, nic) in &self.ports {
            if self.paused_ports.contains(&port) || !nic.started {
                continue;
            }
            for q in 0..nic.queues {
                if !busy.contains(&(port, q)) {
                    idle.push((port, q));
                }
            }
        }
        self.plane.publish(active, idle);
        let refused = self.plane.refused_queues.swap(0, Ordering::Relaxed);
        if refused > 0 {
            log_warn!("the data loop could not take up {refused} queue(s): a NIC queue still had a polling handle");
        }
    }

    /// Points NIC rx queue (port, queue) at `pool`, pausing the port when the device
    /// cannot switch a queue while running.
    fn switch_rx_pool(&mut self, port: u16, queue: u16, pool: &PktPool) -> Result<(), String> {
        let runtime = self.ports.get(&port).map(|n| n.runtime_rx_setup).ok_or("no such port")?;
        if runtime {
            // Only this queue must be left alone meanwhile: the caller has already taken
            // it out of the published configuration.
            return self.ports[&port].setup_rx_queue(queue, pool);
        }
        self.paused_ports.insert(port);
        self.publish();
        let nic = self.ports.get_mut(&port).ok_or("no such port")?;
        let result = nic.stop().and_then(|_| nic.setup_rx_queue(queue, pool));
        let restarted = nic.start();
        self.paused_ports.remove(&port);
        self.publish();
        result.and(restarted)
    }

    /// The control loop; returns when asked to quit.
    pub fn run(&mut self) {
        let stdin_fd = std::io::stdin().as_raw_fd();
        // Our own line buffer over the raw fd: a buffered reader would keep a second line
        // that arrived in the same read where poll(2) cannot see it ("show stats\nquit\n").
        let mut pending: Vec<u8> = Vec::new();
        while !self.quit && !QUIT_SIGNAL.load(Ordering::Relaxed) {
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut owners: Vec<(usize, bool)> = Vec::new(); // (endpoint, is_conn)
            if self.stdin_open {
                fds.push(pollfd(stdin_fd));
                owners.push((usize::MAX, false));
            }
            // Peers are read and accepted only while the reaper has room for all that
            // one more message or connection can bring (reaper.rs); a reaper stuck on
            // a close holds up new peers, never commands or the data loop.
            let peers_welcome = reaper::room_for_peer_input(self.endpoints.len());
            for (i, ep) in self.endpoints.iter().enumerate() {
                if !peers_welcome {
                    break;
                }
                fds.push(pollfd(ep.listener.as_fd().as_raw_fd()));
                owners.push((i, false));
                if let Some(c) = &ep.conn {
                    fds.push(pollfd(c.fd.as_fd().as_raw_fd()));
                    owners.push((i, true));
                }
            }
            let admin_fds = fds.len();
            if let Some(a) = &self.admin {
                a.poll_fds(&mut fds);
            }
            let n = os::poll(&mut fds, 100).unwrap_or(0);
            if n > 0 {
                for (pfd, &(idx, is_conn)) in fds.iter().zip(&owners) {
                    if pfd.revents == 0 {
                        continue;
                    }
                    if idx == usize::MAX {
                        let mut chunk = [0u8; 4096];
                        let n = os::read(std::io::stdin().as_fd(), &mut chunk);
                        if let Ok(n @ 1..) = n {
                            pending.extend_from_slice(&chunk[..n]);
                        } else if n.as_ref().map_or_else(|e| e.kind() != std::io::ErrorKind::Interrupted, |_| true) {
                            // End of input: a last line without a newline still counts.
                            self.stdin_open = false;
                            if !pending.is_empty() {
                                pending.push(b'\n');
                            }
                        }
                        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = pending.drain(..=end).collect();
                            self.command_line(&String::from_utf8_lossy(&line));
                            if self.quit {
                                break;
                            }
                        }
                    } else if idx < self.endpoints.len() {
                        if is_conn {
                            self.service_conn(idx);
                        } else {
                            self.accept(idx);
                        }
                    }
                }
            }
            if let Some(mut admin) = self.admin.take() {
                admin.service(&fds[admin_fds..], |line| self.answer(line));
                self.admin = Some(admin);
            }
            if reload::RELOAD_SIGNAL.swap(false, Ordering::Relaxed) {
                match self.config_file.clone() {
                    Some(file) => self.reload(&file),
                    None => log_warn!("SIGHUP: there is no configuration file (--cmds) to read again"),
                }
            }
            self.housekeeping();
        }
        self.shutdown();
    }

    /// The file SIGHUP reads again (the startup commands).
    pub fn set_config_file(&mut self, file: PathBuf) {
        self.config_file = Some(file);
    }

    /// Serves the admin socket (`--ctl`) from now on.
    pub fn set_admin(&mut self, admin: crate::admin::Admin) {
        self.admin = Some(admin);
    }

    /// Runs one command line of the admin socket; its answer (an `error: ` line when it
    /// failed).
    fn answer(&mut self, line: &str) -> String {
        let mut out: Vec<u8> = Vec::new();
        match cmds::parse(line) {
            Ok(Some(cmd)) => self.execute(cmd, &mut out),
            Ok(None) => out.extend_from_slice(b"error: no command\n"),
            Err(e) => out.extend_from_slice(format!("error: {e}\n").as_bytes()),
        }
        if out.is_empty() {
            // `quit` says nothing on stdin.
            out.extend_from_slice(b"ok\n");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn command_line(&mut self, line: &str) {
        let mut out = std::io::stdout();
        match cmds::parse(line) {
            Ok(Some(cmd)) => self.execute(cmd, &mut out),
            Ok(None) => {}
            Err(e) => {
                let _ = writeln!(out, "error: {e}");
            }
        }
        let _ = out.flush();
    }

    fn execute(&mut self, cmd: Command, out: &mut dyn Write) {
        match cmd {
            Command::Socket { path, port, queue, access } => {
                if let Err(e) = self.add_socket(&path, port, queue, &access) {
                    let _ = writeln!(out, "error: {e}");
                } else {
                    self.publish();
                    let _ = writeln!(out, "ok: serving port {port} queue {queue} on {}", path.display());
                }
            }
            Command::Remove { path } => match self.endpoints.iter().position(|e| e.path == path) {
                Some(i) => {
                    self.disconnect(i, "the socket was removed", true);
                    let ep = self.endpoints.remove(i);
                    ep.file.remove();
                    self.publish();
                    let _ = writeln!(out, "ok: removed {}", path.display());
                }
                None => {
                    let _ = writeln!(out, "error: {} is not served", path.display());
                }
            },
            Command::ShowStats => {
                let _ = write!(out, "{}", self.stats_text());
            }
            Command::ShowSockets => {
                for ep in &self.endpoints {
                    let guest = match &ep.conn {
                        Some(Conn { guest: Some(g), pid, .. }) => format!(
                            "guest '{}' pid {pid}, region {} MiB on {}, queue {}",
                            g.app,
                            g.region.len() >> 20,
                            if g.region.hugepages { "hugepages" } else { "4 KiB pages" },
                            if g.queue.is_some() { "started" } else { "stopped" }
                        ),
                        Some(_) => "connecting".into(),
                        None => "no guest".into(),
                    };
                    let _ = writeln!(out, "{} port {} queue {}: {guest}; {}", ep.path.display(), ep.port, ep.queue, ep.access.describe());
                }
                if self.endpoints.is_empty() {
                    let _ = writeln!(out, "no sockets");
                }
            }
            Command::Help => {
                let _ = writeln!(out, "{}", cmds::HELP);
            }
            Command::Quit => self.quit = true,
        }
    }

    /// What the telemetry commands show (telemetry.rs), taken on this thread.
    fn telemetry_views(&self) -> Vec<crate::telemetry::SocketView> {
        use crate::telemetry::{ConnView, GuestView, RingFill, SocketView};
        let now = Instant::now();
        let view_guest = |g: &Guest| {
            let mem = g.region.mem();
            GuestView {
                app: g.app.clone(),
                region_size: g.region.len() as u64,
                hugepages: g.region.hugepages,
                pools: g.pools.len(),
                queue_started: g.queue.is_some(),
                rx_ring: RingFill::read(&mem, g.region.layout.rx_ring()),
                tx_ring: RingFill::read(&mem, g.region.layout.tx_ring()),
            }
        };
        self.endpoints
            .iter()
            .map(|ep| SocketView {
                path: ep.path.display().to_string(),
                port: ep.port,
                queue: ep.queue,
                guests_served: ep.guests_served,
                stats: ep.stats.clone(),
                pool_invalid: ep.conn.as_ref().and_then(|c| c.guest.as_ref()).map_or(0, |g| {
                    g.pools.iter().map(|(_, p)| p.ctx.invalid.load(Ordering::Relaxed)).sum()
                }),
                conn: ep.conn.as_ref().map(|c| ConnView {
                    pid: c.pid,
                    connected_for: now.duration_since(c.since),
                    guest: c.guest.as_ref().map(view_guest),
                }),
            })
            .collect()
    }

    /// One line per socket and per port, `key=value` pairs.
    pub fn stats_text(&self) -> String {
        let mut s = String::new();
        for ep in &self.endpoints {
            let st = &ep.stats;
            let guest = ep.conn.as_ref().and_then(|c| c.guest.as_ref());
            let pool_invalid: u64 =
                guest.map_or(0, |g| g.pools.iter().map(|(_, p)| p.ctx.invalid.load(Ordering::Relaxed)).sum());
            let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            s += &format!(
                "socket={} port={} queue={} guest={} guests_served={} rx_packets={} rx_bytes={} rx_dropped={} \
                 tx_packets={} tx_bytes={} tx_dropped={} tx_refused={} tx_invalid={} tx_returned={} copies={} invalid={} refused={} bad_requests={} \
                 pools={} pool_buffers={} free_ring={} shadow_in_use={} parked={} lost={} rx_wakeups={} unwanted_fds={}\n",
                ep.path.display(),
                ep.port,
                ep.queue,
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
            .filter_map(|ep| ep.conn.as_ref().and_then(|c| c.guest.as_ref()))
            .flat_map(|g| g.deleting.iter())
            .collect();
        let in_nic: u64 = self.quarantine.iter().map(|l| l.in_nic()).sum::<u64>()
            + deleting.iter().map(|d| u64::from(d.pool.in_nic())).sum::<u64>();
        s += &format!(
            "unclaimed={} mempools={} quarantined={} deleting={} quarantined_in_nic={} {}\n",
            self.plane.unclaimed.load(Ordering::Relaxed),
            mempool_count(),
            self.quarantine.len(),
            deleting.len(),
            in_nic,
            reaper::stats_text()
        );
        s
    }

    fn accept(&mut self, idx: usize) {
        let ep = &mut self.endpoints[idx];
        // Non-blocking: a guest that does not read its socket must never block this
        // thread in a send (see `reply`).
        let Ok(fd) = os::accept(ep.listener.as_fd()) else { return };
        // Messages it queued before we accepted may carry descriptors: whatever happens
        // to this connection, it is closed by the reaper.
        let fd = PeerFd::new(fd);
        let cred = access::peer_cred(fd.as_fd());
        let pid = cred.as_ref().map_or(-1, |c| c.pid);
        let allowed = cred.as_ref().map(|c| ep.access.admits(c));
        if allowed != Some(true) && (ep.access.has_allowlist() || allowed.is_none()) {
            let (uid, gid) = cred.as_ref().map_or((u32::MAX, u32::MAX), |c| (c.uid, c.gid));
            let reason = format!("{}: uid {uid} gid {gid} is not allowed on this socket", ep.path.display());
            // Nothing it sent is read (no descriptor of a refused peer is ever received
            // here); the peer reads the reason after one ECONNRESET (transport.rs).
            let _ = send_message(fd.as_fd(), &Message::refuse(RefuseCode::NotAllowed, &reason), 0, &[]);
            bump(&ep.stats.refused);
            self.warn_peer(idx, &format!("refused a peer (pid {pid} uid {uid} gid {gid}): not in the allowlist"));
            return;
        }
        if let Some(current) = &ep.conn {
            let who = current.guest.as_ref().map_or("a connecting guest".to_string(), |g| format!("guest '{}'", g.app));
            let reason = format!("{} is busy: {who} (pid {}) holds it", ep.path.display(), current.pid);
            let _ = send_message(fd.as_fd(), &Message::refuse(RefuseCode::Busy, &reason), 0, &[]);
            bump(&ep.stats.refused);
            self.warn_peer(idx, &format!("refused a second guest (pid {pid}): busy"));
            return;
        }
        ep.conn = Some(Conn { fd, since: Instant::now(), pid, guest: None, unanswerable: Default::default() });
    }

    /// Reads and answers everything the guest sent.
    fn service_conn(&mut self, idx: usize) {
        loop {
            let Some(conn) = self.endpoints[idx].conn.as_ref() else { return };
            if conn.unanswerable.get() {
                bump(&self.endpoints[idx].stats.bad_requests);
                self.disconnect(idx, "the guest does not read its socket", false);
                return;
            }
            if !reaper::room_for_peer_input(self.endpoints.len()) {
                // Read on when the reaper has caught up (the poll loop skips peers meanwhile).
                return;
            }
            let Received { message, fds } = recv_message_and_fds(conn.fd.as_fd(), Some(Duration::ZERO));
            let fds: Vec<PeerFd> = fds.into_iter().map(PeerFd::new).collect();
            if !fds.is_empty() && !self.expects_fd(idx, &message) {
                self.unwanted_fds(idx, &message, fds);
                return;
            }
            let (msg, id) = match message {
                Ok((msg, id)) => (msg, id),
                Err(TransportError::Timeout) => return,
                Err(TransportError::Closed) => {
                    if !self.has_guest(idx) {
                        // Gone before its Hello (a probe, or a connection flood).
                        bump(&self.endpoints[idx].stats.refused);
                        self.warn_peer(idx, "a connection closed before its Hello");
                    }
                    self.disconnect(idx, "the guest closed the connection", false);
                    return;
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
                        return;
                    }
                    self.warn_peer(idx, &reason);
                    continue;
                }
                Err(e) => {
                    self.disconnect(idx, &format!("control socket error: {e}"), false);
                    return;
                }
            };
            self.handle(idx, msg, id, fds);
        }
    }

    fn reply(&self, idx: usize, msg: &Message, id: u32) {
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

    /// A rate-limited warning about the peer of socket `idx`.
    fn warn_peer(&self, idx: usize, text: &str) {
        let ep = &self.endpoints[idx];
        let admitted = ep.peer_log.borrow_mut().admit(Instant::now());
        if let Some(held) = admitted {
            let more = if held > 0 { format!(" ({held} similar lines suppressed)") } else { String::new() };
            log_warn!("{}: {text}{more}", ep.path.display());
        }
    }

    fn has_guest(&self, idx: usize) -> bool {
        self.endpoints[idx].conn.as_ref().is_some_and(|c| c.guest.is_some())
    }

    fn guest_mut(&mut self, idx: usize) -> Option<&mut Guest> {
        self.endpoints[idx].conn.as_mut().and_then(|c| c.guest.as_mut())
    }

    /// `fds` came with the message: only a reattaching `Hello` carries one (its region),
    /// and `service_conn` has already refused any other message that brought some.
    fn handle(&mut self, idx: usize, msg: Message, id: u32, fds: Vec<PeerFd>) {
        match msg {
            Message::Hello(hello) if !self.has_guest(idx) => self.hello(idx, hello, id, fds),
            Message::Goodbye => self.disconnect(idx, "the guest said goodbye", false),
            _ if !self.has_guest(idx) => {
                let reason = format!("expected Hello first, got {}", msg.kind());
                self.reply(idx, &Message::refuse(RefuseCode::BadRequest, &reason), id);
                bump(&self.endpoints[idx].stats.refused);
                self.warn_peer(idx, &format!("{reason}; disconnected"));
                self.disconnect(idx, &reason, false);
            }
            Message::PoolAdd(add) => {
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
            Message::PoolDel { pool_id } => {
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
            Message::QueueStart { rx_pool_id, flags, rx_depth } => match self.queue_start(idx, rx_pool_id, flags, rx_depth) {
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
            },
            Message::QueueStop => {
                self.queue_stop(idx);
                self.reply(idx, &Message::QueueStopped, id);
            }
            other => {
                let reason = format!("unexpected {} from a guest", other.kind());
                bump(&self.endpoints[idx].stats.bad_requests);
                self.warn_peer(idx, &reason);
                self.reply(idx, &Message::refuse(RefuseCode::BadRequest, &reason), id);
            }
        }
    }

    fn hello(&mut self, idx: usize, hello: Hello, id: u32, mut fds: Vec<PeerFd>) {
        let ep = &self.endpoints[idx];
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
        let size = if hello.region_size == 0 { self.opts.region_size } else { hello.region_size };
        if size > self.opts.max_region_size {
            let reason = format!(
                "region of {} MiB asked; this proxy allows at most {} MiB (--max-region-size)",
                size >> 20,
                self.opts.max_region_size >> 20
            );
            return refuse(self, RefuseCode::TooLarge, reason);
        }
        let or_default = |n: u32| if n == 0 { shm_contract::layout::DEFAULT_RING_ENTRIES } else { n };
        let req = RegionRequest {
            size,
            rx_entries: or_default(hello.rx_ring_entries),
            tx_entries: or_default(hello.tx_ring_entries),
            try_hugepages: self.opts.try_hugepages,
        };
        let (port, queue) = (ep.port, ep.queue);
        let leftovers: Vec<&Leftover> = self.quarantine.iter().filter(|l| l.socket == ep.path).collect();
        let in_nic = leftovers.iter().map(|l| l.in_nic()).sum();
        if let Err(reason) = quarantine::admits(leftovers.len(), in_nic, port, queue) {
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
            "{path}: guest '{app}' (pid {}) {} port {port} queue {queue}: region {} MiB on {}",
            conn.pid,
            if reattach { "reattached its region to" } else { "attached to" },
            region.len() >> 20,
            if region.hugepages { format!("{} KiB hugepages", region.layout.page_size() >> 10) } else { "4 KiB pages".into() }
        );
        let ep = &mut self.endpoints[idx];
        ep.guests_served += 1;
        if let Some(conn) = ep.conn.as_mut() {
            conn.guest = Some(Guest {
                app,
                region: Arc::new(region),
                pools: Vec::new(),
                deleting: Vec::new(),
                queue: None,
                // The socket's count includes earlier guests' (kept at detach): only
                // what this guest adds is reported as its own.
                invalid_reported: ep.stats.invalid.load(Ordering::Relaxed),
                last_invalid_log: None,
            });
        }
    }

    fn pool_add(&mut self, idx: usize, add: &PoolAdd) -> Result<(), String> {
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
        let pool = ShadowPool::new(&guest.region, layout, &format!("iop_sh{serial}"), socket)?;
        let running = guest.queue.as_ref().map(|q| q.set_pool(add.pool_id, Some(pool.guest_pool()))).is_some();
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
    fn pool_del(&mut self, idx: usize, pool_id: u32, request: u32) -> Result<bool, String> {
        let guest = self.guest_mut(idx).ok_or("no guest")?;
        let Some(pos) = guest.pools.iter().position(|(id, _)| *id == pool_id) else {
            if guest.deleting.iter().any(|d| d.pool_id == pool_id && !d.answered) {
                return Err(format!("pool {pool_id} is already being deleted"));
            }
            return Err(format!("no pool {pool_id}"));
        };
        if let Some(q) = &guest.queue {
            if q.fills_from(guest.pools[pos].1.pool()) {
                return Err(format!("pool {pool_id} feeds the running queue; stop the port first"));
            }
            q.set_pool(pool_id, None);
        }
        let had_queue = guest.queue.is_some();
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

    /// Starts the guest's queue; with `QUEUE_FLAG_RX_WAKEUP`, returns the guest's end of
    /// the wake-up pair made here, for `QueueStarted`.
    fn queue_start(
        &mut self,
        idx: usize,
        rx_pool_id: u32,
        flags: u32,
        rx_depth: u32,
    ) -> Result<Option<OwnedFd>, (RefuseCode, String)> {
        let (port, queue) = (self.endpoints[idx].port, self.endpoints[idx].queue);
        let stats = self.endpoints[idx].stats.clone();
        let bad = |s: String| (RefuseCode::BadRequest, s);
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
        if guest.queue.is_some() {
            return Err(bad("the queue is already started".into()));
        }
        let rx_pool = guest
            .pools
            .iter()
            .find(|(id, _)| *id == rx_pool_id)
            .map(|(_, p)| p.guest_pool())
            .ok_or_else(|| bad(format!("no pool {rx_pool_id} was announced")))?;
        // Both sides start the rings from index 0 at every queue start.
        let mem = guest.region.mem();
        DescRing::init(&mem, guest.region.layout.rx_ring()).map_err(|e| bad(e.to_string()))?;
        DescRing::init(&mem, guest.region.layout.tx_ring()).map_err(|e| bad(e.to_string()))?;
        let nic_pool = rx_pool.pool.pkt_pool().clone();
        let q = DataQueue::new(&guest.region, port, queue, rx_pool, rx_depth, stats, waker)
            .map_err(bad)?
            .with_tx_limits(tx_limits);
        for (id, p) in &guest.pools {
            q.set_pool(*id, Some(p.guest_pool()));
        }
        let q = Arc::new(q);
        if let Err(e) = self.switch_rx_pool(port, queue, &nic_pool) {
            let parking = self.ports[&port].parking_pool();
            let _ = self.switch_rx_pool(port, queue, &parking);
            return Err((RefuseCode::Internal, e));
        }
        if let Some(g) = self.guest_mut(idx) {
            g.queue = Some(q);
        }
        self.publish();
        log_info!("{}: queue started", self.endpoints[idx].path.display());
        Ok(guest_end)
    }

    /// Stops the guest's queue: no more polling, NIC queue back on the parking pool
    /// (which frees every guest buffer the NIC held), unsent tx buffers returned.
    fn queue_stop(&mut self, idx: usize) {
        let (port, queue) = (self.endpoints[idx].port, self.endpoints[idx].queue);
        let Some(q) = self.guest_mut(idx).and_then(|g| g.queue.take()) else { return };
        self.publish();
        if let Some(nic) = self.ports.get(&port) {
            let parking = nic.parking_pool();
            if let Err(e) = self.switch_rx_pool(port, queue, &parking) {
                log_warn!("{}: {e}", self.endpoints[idx].path.display());
            }
            let _ = Port(port).tx_done_cleanup(queue);
        }
        let returned = q.return_unsent();
        let st = &self.endpoints[idx].stats;
        st.tx_returned.store(st.tx_returned.load(Ordering::Relaxed) + returned as u64, Ordering::Relaxed);
        log_info!(
            "{}: queue stopped ({returned} unsent tx buffers returned to the guest)",
            self.endpoints[idx].path.display()
        );
    }

    /// Ends the connection on `idx` and reclaims everything of its guest.
    fn disconnect(&mut self, idx: usize, reason: &str, say_goodbye: bool) {
        if self.endpoints[idx].conn.is_none() {
            return;
        }
        self.queue_stop(idx);
        let ep = &mut self.endpoints[idx];
        let Some(conn) = ep.conn.take() else { return };
        if say_goodbye {
            let _ = send_message(conn.fd.as_fd(), &Message::Goodbye, 0, &[]);
        }
        if let Some(guest) = conn.guest {
            let st = &ep.stats;
            log_info!(
                "{}: guest '{}' (pid {}) detached: {reason}; rx {} tx {} packets so far, {} invalid",
                ep.path.display(),
                guest.app,
                conn.pid,
                st.rx_packets.load(Ordering::Relaxed),
                st.tx_packets.load(Ordering::Relaxed),
                guest.invalid_total(st)
            );
            // The pools' own counts of bad free-ring entries go with them: keep them in
            // the socket's `invalid` (the data loop no longer writes it: queue stopped).
            let pool_invalid: u64 = guest.pools.iter().map(|(_, p)| p.ctx.invalid.load(Ordering::Relaxed)).sum();
            st.invalid.store(st.invalid.load(Ordering::Relaxed) + pool_invalid, Ordering::Relaxed);
            // Pools (their mempools) go first, then the region is unmapped with the
            // last reference; but not while the NIC holds buffers of them (freeing one
            // writes into its mempool): then they wait in the quarantine. Either way they
            // no longer touch the guest's free rings.
            let pools: Vec<ShadowPool> =
                guest.pools.into_iter().map(|(_, p)| p).chain(guest.deleting.into_iter().map(|d| d.pool)).collect();
            for p in &pools {
                p.retire();
            }
            let in_nic: u64 = pools.iter().map(|p| u64::from(p.in_nic())).sum();
            let (port, queue) = (ep.port, ep.queue);
            let leftover =
                Leftover { socket: ep.path.clone(), port, queue, app: guest.app, pools, since: Instant::now() };
            // The queue has no guest now: the loop drains it as idle (for a NIC that
            // keeps sent buffers on its rx side, like `net_ring`, that gives them back),
            // and once it has taken that up it no longer frees anything into a pool whose
            // count was 0 above.
            self.publish();
            if in_nic > 0 {
                log_warn!(
                    "{}: guest '{}' left {in_nic} buffers in port {port} queue {queue}: its {} pool(s) and region are \
                     quarantined until the NIC gives them back",
                    leftover.socket.display(),
                    leftover.app,
                    leftover.pools.len()
                );
                self.quarantine.push(leftover);
            }
            drop(guest.region);
        }
    }

    /// Frees what the NIC has given back: answers pool deletes that waited for it (or
    /// refuses them after `POOL_DELETE_WAIT`), releases departed guests' quarantined
    /// pools and regions.
    fn sweep_quarantine(&mut self, now: Instant) {
        let mut queues = BTreeSet::new();
        for l in &self.quarantine {
            queues.insert((l.port, l.queue));
        }
        for ep in &self.endpoints {
            if ep.conn.as_ref().and_then(|c| c.guest.as_ref()).is_some_and(|g| !g.deleting.is_empty()) {
                queues.insert((ep.port, ep.queue));
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

    fn housekeeping(&mut self) {
        let now = Instant::now();
        for idx in 0..self.endpoints.len() {
            let ep = &self.endpoints[idx];
            let Some(conn) = &ep.conn else { continue };
            if conn.unanswerable.get() {
                // An answer from here (link news, a refusal) found its socket full.
                self.disconnect(idx, "the guest does not read its socket", false);
                continue;
            }
            let Some(guest) = &conn.guest else {
                if now.duration_since(conn.since) > HELLO_TIMEOUT {
                    bump(&ep.stats.refused);
                    self.warn_peer(idx, "no Hello within 5 s; disconnected");
                    self.disconnect(idx, "no Hello within 5 s", false);
                }
                continue;
            };
            // Buffers the data loop could not return at once go back from here too when
            // the loop has nothing to give back for a while.
            for (_, pool) in &guest.pools {
                if pool.ctx.parked() > 0 {
                    pool.ctx.retry_parked();
                }
            }
            let broken = guest.queue.as_ref().is_some_and(|q| q.broken.load(Ordering::Acquire));
            let lost_pages = guest.region.lost_pages() > 0;
            let total = guest.invalid_total(&ep.stats);
            if total > guest.invalid_reported
                && guest.last_invalid_log.is_none_or(|t| now.duration_since(t) >= INVALID_LOG_PERIOD)
            {
                let first = guest
                    .queue
                    .as_ref()
                    .and_then(|q| Invalid::from_u32(q.first_invalid.load(Ordering::Relaxed)))
                    .map_or("a free-ring entry named no buffer of its pool, or one the proxy held", |k| k.describe());
                log_warn!(
                    "{}: guest '{}': {} invalid descriptors/buffers dropped so far (first: {first})",
                    ep.path.display(),
                    guest.app,
                    total
                );
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
                continue;
            }
            if broken {
                let reason = "the guest corrupted a ring index";
                self.reply(idx, &Message::refuse(RefuseCode::BadRequest, reason), 0);
                self.disconnect(idx, reason, false);
            }
        }
        self.sweep_quarantine(now);
        if now.duration_since(self.last_link_check) >= Duration::from_millis(500) {
            self.last_link_check = now;
            self.check_links();
        }
        crate::telemetry::refresh(now, || self.telemetry_views());
        if let Some(period) = self.opts.stats_period {
            if now.duration_since(self.last_stats) >= period {
                self.last_stats = now;
                print!("{}", self.stats_text());
                let _ = std::io::stdout().flush();
            }
        }
    }

    fn check_links(&mut self) {
        let mut changed = Vec::new();
        for (&port, nic) in self.ports.iter_mut() {
            if !nic.started {
                continue;
            }
            let link = nic.port.link();
            if link != nic.link {
                nic.link = link;
                log_info!("port {port} ({}): link {}", nic.name, link_text(link));
                changed.push((port, link));
            }
        }
        for (port, link) in changed {
            for idx in 0..self.endpoints.len() {
                if self.endpoints[idx].port != port {
                    continue;
                }
                if let Some(g) = self.endpoints[idx].conn.as_ref().and_then(|c| c.guest.as_ref()) {
                    if let Some(status) = g.region.status() {
                        status.link_up().store(link.up as u32, Ordering::Release);
                        status.link_speed_mbps().store(link.speed_mbps, Ordering::Release);
                    }
                    self.reply(idx, &Message::LinkStatus { up: link.up, speed_mbps: link.speed_mbps }, 0);
                }
            }
        }
    }

    /// Stops the loop, closes the ports (which flushes capture files and frees every guest
    /// buffer the NICs held, back into the guests' rings), then says goodbye to every
    /// guest and removes the sockets. Queues are not switched back to parking pools first:
    /// with some devices that restarts the port (and reopens its capture files).
    fn shutdown(&mut self) {
        self.plane.publish(Vec::new(), Vec::new());
        self.plane.request_stop();
        self.plane.wait_stopped();
        let text = self.stats_text();
        self.close_ports();
        for idx in 0..self.endpoints.len() {
            self.disconnect(idx, "the proxy is shutting down", true);
        }
        // The ports are closed: no NIC gives anything back any more.
        for l in self.quarantine.drain(..) {
            log_info!(
                "{}: quarantine released: port {} is closed ({} buffers of guest '{}' were still in it)",
                l.socket.display(),
                l.port,
                l.in_nic(),
                l.app
            );
        }
        for ep in &self.endpoints {
            ep.file.remove();
        }
        println!("final stats:\n{text}");
        let _ = std::io::stdout().flush();
    }

    /// Closes every port; call after the data loop has returned.
    pub fn close_ports(&mut self) {
        for (_, nic) in std::mem::take(&mut self.ports) {
            nic.close();
        }
    }
}

/// One more on a counter only this thread writes.
fn bump(counter: &std::sync::atomic::AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// How many mempools exist in this process.
fn mempool_count() -> usize {
    dpdk::mempool_count()
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn link_text(link: dpdk::Link) -> String {
    if link.up {
        format!("up {} Mbps", link.speed_mbps)
    } else {
        "down".into()
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
