//! The control thread: everything slow lives here; the data loop only sees what this
//! thread publishes ([`Plane::publish`]). It is split by responsibility:
//!
//! - this file: the control loop (poll over stdin, the admin socket, listeners and
//!   connections), the NIC ports (setup, link watching, rx pool switching), what the
//!   data loop polls (`publish`), periodic housekeeping, commands and shutdown;
//! - [`listen`]: the served sockets, accepting connections and the access checks, and
//!   the per-socket limits (peer warnings, queue starts);
//! - [`session`]: one guest's session as a state machine (named states, one handler
//!   per message), the handshake and the connection's transport;
//! - [`guest`]: what an attached guest holds (region, pools, queue), the pool and queue
//!   requests, and teardown (detach, pool deletes and departed guests' buffers that
//!   wait for the NIC);
//! - [`budget`]: what one user (uid) may cost this thread, in CPU time;
//! - [`reports`]: `show stats`, `show sockets` and the telemetry views;
//! - [`reload`]: SIGHUP re-reads the configuration file.
//!
//! docs/architecture.md draws the session's states and transitions.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dpdk::{PktPool, Port};
use shm_contract::Message;

use crate::access::Access;
use crate::cmds::{self, Command};
use crate::datapath::Plane;
use crate::nic::NicPort;
use crate::os;
use crate::quarantine::Leftover;
use crate::reaper;
use crate::{log_info, log_warn};

mod budget;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod guest;
mod listen;
mod release;
mod reload;
mod reports;
mod session;
pub use reload::reload_on_sighup;

/// Set by SIGINT/SIGTERM.
pub static QUIT_SIGNAL: AtomicBool = AtomicBool::new(false);

/// The control loop's periodic checks (sessions, quarantine, links, telemetry) run at
/// most this often.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_millis(10);

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub region_size: u64,
    pub max_region_size: u64,
    /// Packet buffers one guest may announce, all its pools together: each costs the
    /// proxy a shadow mbuf of its own memory.
    pub max_guest_buffers: u64,
    pub try_hugepages: bool,
    /// The hugepages one guest's region may take (`sizing`).
    pub hugepage_share: u64,
    /// Owner, group and mode of sockets and their directories; who may connect.
    pub access: Access,
    pub mtu: Option<u16>,
    pub queues: Option<u16>,
    pub stats_period: Option<Duration>,
    /// The uid the proxy runs as after start-up (`--user`, else its own): it owns the
    /// directories the proxy makes and may own a socket's path.
    pub runs_as: u32,
}

use listen::Endpoint;

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
    /// Our own line buffer over stdin's raw fd: a buffered reader would keep a second
    /// line that arrived in the same read where poll(2) cannot see it ("show stats\nquit\n").
    stdin_pending: Vec<u8>,
    pool_serial: u32,
    last_link_check: Instant,
    last_stats: Instant,
    /// The admin socket (`--ctl`), served from the poll loop like stdin.
    admin: Option<crate::admin::Admin>,
    /// The configuration file that SIGHUP reloads.
    config_file: Option<PathBuf>,
    /// Each uid's budget of this thread's CPU time (budget.rs).
    budgets: budget::UidBudgets,
    /// Rounds of the control loop: where serving starts in the next one rotates, so
    /// that connections of one uid share its budget.
    round: usize,
    /// Housekeeping runs at most this often, not in every round: a peer whose messages
    /// wake the loop thousands of times a second would otherwise make it run that often
    /// too, on this thread's time and charged to nobody.
    housekeeping_period: Duration,
    last_housekeeping: Option<Instant>,
    /// Port restarts for rx-queue switches, and what they cost other guests.
    restarts: RestartStats,
    /// Departed guests' regions, freed a step at a time (release.rs).
    releases: release::Releases,
}

/// Port restarts made to switch an rx queue's pool (devices without runtime rx-queue
/// setup), shown in `show stats` (`port_restarts`, `restart_outage_ms`,
/// `restart_longest_us`).
#[derive(Debug, Default, Clone, Copy)]
struct RestartStats {
    count: u64,
    /// The time other started queues of the restarted ports went unserved, in all.
    outage: Duration,
    /// The longest such outage.
    longest: Duration,
    /// What was charged for them to the budgets of the uids whose queue starts and
    /// stops made them (budget.rs): the outage, on top of the CPU time.
    charged: Duration,
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
            stdin_pending: Vec::new(),
            pool_serial: 0,
            last_link_check: Instant::now(),
            last_stats: Instant::now(),
            admin: None,
            config_file: None,
            budgets: budget::UidBudgets::new(budget::CPU_PER_SEC, budget::CPU_BURST, budget::MAX_WAIT),
            round: 0,
            housekeeping_period: HOUSEKEEPING_PERIOD,
            last_housekeeping: None,
            restarts: RestartStats::default(),
            releases: release::Releases::default(),
        };
        // Every port gets as many queues as the whole file names for it, before its
        // first socket is made.
        let mut wanted: BTreeMap<u16, u16> = BTreeMap::new();
        for (_, cmd) in &startup {
            if let Command::Socket { port, queues, .. } = cmd {
                let q = wanted.entry(*port).or_insert(0);
                *q = queues.iter().fold(*q, |n, &queue| n.max(queue.saturating_add(1)));
            }
        }
        for (line, cmd) in startup {
            let done = match cmd {
                Command::Socket { path, port, queues, access } => {
                    let ports_ok = match wanted.remove(&port) {
                        Some(count) if !ctl.ports.contains_key(&port) => ctl.setup_port(port, count),
                        _ => Ok(()),
                    };
                    ports_ok.and_then(|_| ctl.add_socket(&path, port, &queues, &access))
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


    /// Rebuilds what the data loop polls from the current state.
    fn publish(&self) {
        let mut active = Vec::new();
        let mut busy = BTreeSet::new();
        for ep in &self.endpoints {
            let Some(guest) = ep.guest() else { continue };
            // A guest's NIC queues are never drained as idle, even while its queues are
            // stopped: what arrives waits in the NIC for the guest.
            for &queue in &ep.queues {
                busy.insert((ep.port, queue));
            }
            if !self.paused_ports.contains(&ep.port) {
                active.extend(guest.queues.iter().flatten().cloned());
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
    /// cannot switch a queue while running. Returns how long the port's other started
    /// queues went unserved for it (zero when none was started, or nothing paused).
    fn switch_rx_pool(&mut self, port: u16, queue: u16, pool: &PktPool) -> Result<Duration, String> {
        let runtime = self.ports.get(&port).map(|n| n.runtime_rx_setup).ok_or("no such port")?;
        if runtime {
            // Only this queue must be left alone meanwhile: the caller has already taken
            // it out of the published configuration.
            return self.ports[&port].setup_rx_queue(queue, pool).map(|_| Duration::ZERO);
        }
        // The queues the restart pauses: every started one of the port (the caller's
        // own is already out of the published configuration).
        let others = self
            .endpoints
            .iter()
            .filter(|ep| ep.port == port)
            .filter_map(|ep| ep.guest())
            .map(|g| g.started().count())
            .sum::<usize>();
        // From before the loop lets go of the port's queues until it has taken them up
        // again: an upper bound of their outage (both handshakes included).
        let t = Instant::now();
        self.paused_ports.insert(port);
        self.publish();
        let nic = self.ports.get_mut(&port).ok_or("no such port")?;
        let result = nic.stop().and_then(|_| nic.setup_rx_queue(queue, pool));
        let restarted = nic.start();
        self.paused_ports.remove(&port);
        self.publish();
        let outage = if others > 0 { t.elapsed() } else { Duration::ZERO };
        self.restarts.count += 1;
        self.restarts.outage += outage;
        self.restarts.longest = self.restarts.longest.max(outage);
        result.and(restarted).map(|_| outage)
    }

    /// The control loop; returns when asked to quit.
    pub fn run(&mut self) {
        while !self.quit && !QUIT_SIGNAL.load(Ordering::Relaxed) {
            self.poll_once(100);
        }
        self.shutdown();
    }

    /// One round of the control loop: waits up to `timeout_ms` for stdin, the admin
    /// socket, the listeners and the connections, serves what is ready, then does the
    /// housekeeping.
    pub(crate) fn poll_once(&mut self, timeout_ms: i32) {
        let stdin_fd = std::io::stdin().as_raw_fd();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut owners: Vec<(usize, bool)> = Vec::new(); // (endpoint, is_conn)
        if self.stdin_open {
            fds.push(pollfd(stdin_fd));
            owners.push((usize::MAX, false));
        }
        // A peer whose connection may carry descriptors (a kernel without
        // SO_PASSRIGHTS, or a reattaching guest asked for its region) is read, and a
        // socket whose connections start so accepted, only while the reaper has room
        // for all that one more message or connection can bring (reaper.rs); a
        // reaper stuck on a close holds up only those, never connections that refuse
        // descriptors, commands or the data loop.
        let peers_welcome = reaper::room_for_peer_input(self.endpoints.len());
        // A uid over its CPU budget (budget.rs) is not read, nor accepted on a socket
        // where it went over, until the budget has refilled: what it sends waits in the
        // kernel meanwhile.
        let now = Instant::now();
        // What the reaper spent closing each uid's descriptors, on this thread's CPU:
        // descriptors a peer passed where they were not wanted, or that were refused,
        // and the connections that carried them (a reattaching guest's adopted region
        // is not among them until it leaves): suspect too (budget.rs).
        for (uid, spent) in reaper::take_cpu_owed() {
            self.budgets.charge(uid, spent, now);
            self.budgets.charge_suspect(uid, spent, now);
        }
        for ep in self.endpoints.iter_mut() {
            if ep.listener_held_for.is_some_and(|uid| self.budgets.allows_new(uid, now)) {
                ep.listener_held_for = None;
            }
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            if (peers_welcome || !ep.connections_pass_fds) && ep.listener_held_for.is_none() {
                fds.push(pollfd(ep.listener.as_fd().as_raw_fd()));
                owners.push((i, false));
            }
            if let Some(c) = &ep.conn {
                if (peers_welcome || !c.fd.passes()) && self.budgets.serves(c, now) {
                    fds.push(pollfd(c.fd.as_fd().as_raw_fd()));
                    owners.push((i, true));
                }
            }
        }
        let admin_fds = fds.len();
        if let Some(a) = &self.admin {
            a.poll_fds(&mut fds);
        }
        // Wake up when the first uid held back may be served again, but not sooner than
        // `budget::MIN_WAKEUP`: a round costs this thread too, and one per message
        // would cost more than the messages (the uid is then served a batch at a time).
        let timeout_ms = wake_for(timeout_ms, self.budgets.next_refill(now), budget::MIN_WAKEUP);
        // And for the next step of freeing a departed guest's region (release.rs), which
        // housekeeping takes: not sooner than its period.
        let timeout_ms = wake_for(timeout_ms, self.releases.next_step(now), HOUSEKEEPING_PERIOD);
        let n = os::poll(&mut fds, timeout_ms).unwrap_or(0);
        if n > 0 {
            // Served from a rotating start: peers of one uid take turns at its budget.
            self.round = self.round.wrapping_add(1);
            let ready = owners.len();
            let first = if ready > 0 { self.round % ready } else { 0 };
            let order: Vec<usize> = (0..ready).map(|k| (first + k) % ready).collect();
            for k in order {
                let (pfd, &(idx, is_conn)) = (&fds[k], &owners[k]);
                if pfd.revents == 0 {
                    continue;
                }
                if idx == usize::MAX {
                    let mut chunk = [0u8; 4096];
                    let n = os::read(std::io::stdin().as_fd(), &mut chunk);
                    if let Ok(n @ 1..) = n {
                        self.stdin_pending.extend_from_slice(&chunk[..n]);
                    } else if n.as_ref().map_or_else(|e| e.kind() != std::io::ErrorKind::Interrupted, |_| true) {
                        // End of input: a last line without a newline still counts.
                        self.stdin_open = false;
                        if !self.stdin_pending.is_empty() {
                            self.stdin_pending.push(b'\n');
                        }
                    }
                    while let Some(end) = self.stdin_pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.stdin_pending.drain(..=end).collect();
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
            Command::Socket { path, port, queues, access } => {
                if let Err(e) = self.add_socket(&path, port, &queues, &access) {
                    let _ = writeln!(out, "error: {e}");
                } else {
                    self.publish();
                    let shown = cmds::queues_text(&queues);
                    let _ = writeln!(out, "ok: serving port {port} queue {shown} on {}", path.display());
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
                let _ = write!(out, "{}", self.sockets_text());
            }
            Command::Help => {
                let _ = writeln!(out, "{}", cmds::HELP);
            }
            Command::Quit => self.quit = true,
        }
    }



    fn housekeeping(&mut self) {
        let now = Instant::now();
        if self.last_housekeeping.is_some_and(|t| now.duration_since(t) < self.housekeeping_period) {
            return;
        }
        self.last_housekeeping = Some(now);
        for idx in 0..self.endpoints.len() {
            self.check_session(idx, now);
        }
        self.sweep_quarantine(now);
        self.releases.step(now, &mut self.budgets);
        if now.duration_since(self.last_link_check) >= Duration::from_millis(500) {
            self.last_link_check = now;
            self.check_links();
            self.budgets.forget_idle(now);
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
                if let Some(g) = self.endpoints[idx].guest() {
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
        self.releases.close_all();
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

/// The poll timeout `timeout_ms`, shortened to wake up after `wait` if there is one,
/// but not sooner than `not_before`.
fn wake_for(timeout_ms: i32, wait: Option<Duration>, not_before: Duration) -> i32 {
    match wait {
        Some(wait) => timeout_ms.min(wait.max(not_before).as_millis().min(i32::MAX as u128) as i32),
        None => timeout_ms,
    }
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

