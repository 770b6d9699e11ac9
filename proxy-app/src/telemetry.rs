//! What the proxy shows to DPDK's own tools: telemetry commands (read them with
//! `dpdk-telemetry.py -f <file-prefix>`) and packet capture (`dpdk-dumpcap
//! --file-prefix <file-prefix> -i <port>`).
//!
//! Telemetry commands:
//!
//! | command | answer |
//! | --- | --- |
//! | `/shm_proxy/info` | version, number of sockets and of attached guests, packet capture on or off |
//! | `/shm_proxy/sockets` | the served socket paths; a socket's index is its position |
//! | `/shm_proxy/socket,<index or path>` | one socket: NIC port and queue, counters, guest (connected, pid, application), region (size, hugepages), descriptor ring fill |
//!
//! The commands run on EAL's telemetry thread. They read a snapshot that the control
//! thread refreshes (see [`refresh`]), so they never touch the control thread's state,
//! and the counters themselves, which are single-writer atomics the data loop updates.
//! Ring fill is read from the rings' producer and consumer indices in shared memory
//! (atomic loads, a guest may write anything there: the value is clamped and flagged).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dpdk::telemetry::{Registration, TelData, TelDict};
use dpdk::{Eal, Pdump};
use shm_contract::layout::RingArea;
use shm_contract::spsc::{CONS_INDEX_OFFSET, PROD_INDEX_OFFSET};
use shm_contract::SharedMem;

use crate::datapath::{Plane, SocketStats};
use crate::{log_info, log_warn};

/// How stale the snapshot may get (the control loop refreshes it at most this often).
const REFRESH_PERIOD: Duration = Duration::from_millis(100);

/// One socket as the telemetry commands show it.
pub struct SocketView {
    pub path: String,
    pub port: u16,
    /// The NIC queue of queue pair 0.
    pub queue: u16,
    pub guests_served: u64,
    /// The socket's counters, all queue pairs added up.
    pub stats: Arc<SocketStats>,
    /// Each queue pair's NIC queue and counters, when the socket offers more than one.
    pub pairs: Vec<(u16, Arc<SocketStats>)>,
    /// Validation failures of the pools (counted per pool, added to `stats.invalid`).
    pub pool_invalid: u64,
    pub conn: Option<ConnView>,
}

/// The connection on a socket; `guest` once the handshake is done.
pub struct ConnView {
    pub pid: i32,
    pub connected_for: Duration,
    pub guest: Option<GuestView>,
}

pub struct GuestView {
    pub app: String,
    pub region_size: u64,
    pub hugepages: bool,
    pub pools: usize,
    pub queue_started: bool,
    pub rx_ring: RingFill,
    pub tx_ring: RingFill,
}

/// How many descriptors wait in a ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingFill {
    pub entries: u32,
    pub used: u32,
    /// The indices in shared memory are impossible (`used` is then clamped).
    pub corrupt: bool,
}

impl RingFill {
    /// Reads a ring's indices from shared memory.
    pub fn read(mem: &SharedMem<'_>, area: RingArea) -> RingFill {
        let load = |at: u32| {
            mem.atomic_u32(area.offset as usize + at as usize).map(|a| a.load(Ordering::Relaxed)).ok()
        };
        match (load(PROD_INDEX_OFFSET), load(CONS_INDEX_OFFSET)) {
            (Some(prod), Some(cons)) => Self::from_indices(area.entries, prod, cons),
            _ => RingFill { entries: area.entries, used: 0, corrupt: true },
        }
    }

    fn from_indices(entries: u32, prod: u32, cons: u32) -> RingFill {
        let used = prod.wrapping_sub(cons);
        RingFill { entries, used: used.min(entries), corrupt: used > entries }
    }
}

struct Snapshot {
    sockets: Vec<SocketView>,
    taken: Option<Instant>,
}

static SNAPSHOT: Mutex<Snapshot> = Mutex::new(Snapshot { sockets: Vec::new(), taken: None });
static CAPTURE: AtomicBool = AtomicBool::new(false);

fn snapshot() -> MutexGuard<'static, Snapshot> {
    // A panic while the lock was held cannot leave the snapshot half-written in a way
    // that matters: it is replaced wholesale.
    SNAPSHOT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called by the control loop on every turn: takes a new snapshot with `views` when the
/// last one is older than [`REFRESH_PERIOD`].
pub fn refresh(now: Instant, views: impl FnOnce() -> Vec<SocketView>) {
    let due = snapshot().taken.is_none_or(|t| now.duration_since(t) >= REFRESH_PERIOD);
    if due {
        let sockets = views();
        let mut snap = snapshot();
        snap.sockets = sockets;
        snap.taken = Some(now);
    }
}

/// Registers the telemetry commands; they are answered while the returned
/// registrations live (drop them before the last EAL handle).
pub fn register(eal: &Eal) -> Vec<Registration> {
    type Handler = fn(&str) -> Result<TelData, i32>;
    let commands: [(&str, Handler, &str); 3] = [
        ("/shm_proxy/info", cmd_info, "dpdk-io-proxy: version, sockets, attached guests, packet capture. Takes no parameters"),
        ("/shm_proxy/sockets", cmd_sockets, "dpdk-io-proxy: the served socket paths (index = position). Takes no parameters"),
        (
            "/shm_proxy/socket",
            cmd_socket,
            "dpdk-io-proxy: one socket: port, queue, counters, guest, region, ring fill. Parameters: socket index or path",
        ),
    ];
    let mut registered = Vec::new();
    for (name, handler, help) in commands {
        match dpdk::telemetry::register(eal, name, help, handler) {
            Ok(r) => registered.push(r),
            Err(e) => log_warn!("telemetry: cannot register {name}: {}", dpdk::errno_text(e.errno)),
        }
    }
    registered
}

/// Packet capture with `dpdk-dumpcap`/`dpdk-pdump` (secondary processes that attach to
/// this one). Needs the multi-process channel: not with `--in-memory` or `--no-shconf`.
pub struct Capture(Option<Pdump>);

impl Capture {
    /// Enables packet capture, or says why it is unavailable.
    pub fn init(eal: &Eal, plane: Arc<Plane>) -> Capture {
        // The capture callbacks run inside the data loop's bursts: one removed is freed
        // (and its secondary told) only once the loop has finished the round in progress.
        match Pdump::init(eal, Box::new(move || plane.quiesce())) {
            Ok(pdump) => {
                CAPTURE.store(true, Ordering::Relaxed);
                log_info!("packet capture ready: dpdk-dumpcap --file-prefix <this --file-prefix> -i <port>");
                Capture(Some(pdump))
            }
            Err(e) => {
                log_warn!(
                    "packet capture unavailable (rte_pdump_init: {}); run without --in-memory/--no-shconf for dpdk-dumpcap",
                    dpdk::errno_text(e.errno)
                );
                Capture(None)
            }
        }
    }
}

impl Capture {
    /// Capture left off, for `reason`.
    pub fn off(reason: &str) -> Capture {
        log_warn!("packet capture off: {reason}");
        Capture(None)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.0.is_some() {
            CAPTURE.store(false, Ordering::Relaxed);
            // Then the field drops: rte_pdump_uninit, before EAL cleanup.
        }
    }
}

fn cmd_info(_params: &str) -> Result<TelData, i32> {
    let snap = snapshot();
    let mut out = TelDict::new();
    out.string("version", env!("CARGO_PKG_VERSION"));
    out.int("pid", std::process::id() as i32);
    out.u64("sockets", snap.sockets.len() as u64);
    let guests = snap.sockets.iter().filter(|s| s.conn.as_ref().is_some_and(|c| c.guest.is_some())).count();
    out.u64("guests", guests as u64);
    out.int("capture", CAPTURE.load(Ordering::Relaxed) as i32);
    Ok(out.into())
}

fn cmd_sockets(_params: &str) -> Result<TelData, i32> {
    Ok(TelData::Strings(snapshot().sockets.iter().map(|s| s.path.clone()).collect()))
}

fn cmd_socket(params: &str) -> Result<TelData, i32> {
    let snap = snapshot();
    let wanted = Some(params.trim()).filter(|p| !p.is_empty()).ok_or(libc::EINVAL)?;
    let sock = match wanted.parse::<usize>() {
        Ok(i) => snap.sockets.get(i),
        Err(_) => snap.sockets.iter().find(|s| s.path == wanted),
    }
    .ok_or(libc::ENOENT)?;
    Ok(socket_dict(sock).into())
}

fn socket_dict(s: &SocketView) -> TelDict {
    let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let st = &s.stats;
    let mut out = TelDict::new();
    out.string("path", &s.path);
    out.u64("port", s.port as u64);
    out.u64("queue", s.queue as u64);
    out.u64("guests_served", s.guests_served);
    out.u64("rx_packets", ld(&st.rx_packets));
    out.u64("rx_bytes", ld(&st.rx_bytes));
    out.u64("rx_dropped", ld(&st.rx_dropped));
    out.u64("tx_packets", ld(&st.tx_packets));
    out.u64("tx_bytes", ld(&st.tx_bytes));
    out.u64("tx_dropped", ld(&st.tx_dropped));
    out.u64("tx_refused", ld(&st.tx_refused));
    out.u64("tx_invalid", ld(&st.tx_invalid));
    out.u64("tx_returned", ld(&st.tx_returned));
    out.u64("rx_wakeups", ld(&st.rx_wakeups));
    out.u64("unwanted_fds", ld(&st.unwanted_fds));
    out.u64("penalty_polls", ld(&st.penalty_polls));
    out.u64("copies", ld(&st.copies));
    out.u64("invalid", ld(&st.invalid) + s.pool_invalid);
    if s.pairs.len() > 1 {
        out.u64("queue_pairs", s.pairs.len() as u64);
        for (k, (queue, q)) in s.pairs.iter().enumerate() {
            out.u64(&format!("queue{k}_nic_queue"), *queue as u64);
            out.u64(&format!("queue{k}_rx_packets"), ld(&q.rx_packets));
            out.u64(&format!("queue{k}_rx_dropped"), ld(&q.rx_dropped));
            out.u64(&format!("queue{k}_tx_packets"), ld(&q.tx_packets));
            out.u64(&format!("queue{k}_tx_dropped"), ld(&q.tx_dropped));
        }
    }
    out.int("guest_connected", s.conn.is_some() as i32);
    let Some(conn) = &s.conn else { return out };
    out.int("guest_pid", conn.pid);
    out.u64("guest_connected_ms", conn.connected_for.as_millis() as u64);
    out.int("guest_attached", conn.guest.is_some() as i32);
    let Some(g) = &conn.guest else { return out };
    out.string("guest_app", &g.app);
    out.u64("region_size", g.region_size);
    out.int("region_hugepages", g.hugepages as i32);
    out.u64("pools", g.pools as u64);
    out.int("queue_started", g.queue_started as i32);
    for (prefix, ring) in [("rx_ring", g.rx_ring), ("tx_ring", g.tx_ring)] {
        out.u64(&format!("{prefix}_entries"), ring.entries as u64);
        out.u64(&format!("{prefix}_used"), ring.used as u64);
        out.int(&format!("{prefix}_corrupt"), ring.corrupt as i32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_fill_from_indices() {
        assert_eq!(RingFill::from_indices(1024, 10, 4), RingFill { entries: 1024, used: 6, corrupt: false });
        // Indices wrap around u32.
        assert_eq!(RingFill::from_indices(64, 3, u32::MAX - 1), RingFill { entries: 64, used: 5, corrupt: false });
        // A guest wrote nonsense: clamped and flagged.
        assert_eq!(RingFill::from_indices(64, 1000, 0), RingFill { entries: 64, used: 64, corrupt: true });
        assert_eq!(RingFill::from_indices(64, 0, 1), RingFill { entries: 64, used: 64, corrupt: true });
    }

    #[test]
    fn ring_fill_reads_shared_memory() {
        let heap = shm_contract::mem::HeapMem::new(4096);
        let mem = heap.mem();
        let area = RingArea { offset: 0, entries: 64 };
        mem.atomic_u32(PROD_INDEX_OFFSET as usize).unwrap().store(70, Ordering::Relaxed);
        mem.atomic_u32(CONS_INDEX_OFFSET as usize).unwrap().store(30, Ordering::Relaxed);
        assert_eq!(RingFill::read(&mem, area), RingFill { entries: 64, used: 40, corrupt: false });
        // An area outside the memory reads as corrupt, never out of bounds.
        let outside = RingArea { offset: 8192, entries: 64 };
        assert!(RingFill::read(&mem, outside).corrupt);
    }

    #[test]
    fn refresh_is_rate_limited() {
        let t0 = Instant::now();
        let mut calls = 0;
        refresh(t0, || {
            calls += 1;
            Vec::new()
        });
        refresh(t0 + Duration::from_millis(10), || {
            calls += 1;
            Vec::new()
        });
        refresh(t0 + REFRESH_PERIOD * 2, || {
            calls += 1;
            Vec::new()
        });
        assert_eq!(calls, 2);
    }

    #[test]
    fn socket_commands_check_their_parameter() {
        assert_eq!(cmd_socket("").unwrap_err(), libc::EINVAL);
        assert_eq!(cmd_socket("  ").unwrap_err(), libc::EINVAL);
        assert_eq!(cmd_socket(" /no/such/socket ").unwrap_err(), libc::ENOENT);
    }

    #[test]
    fn a_socket_without_a_guest_shows_its_counters() {
        let view = SocketView {
            path: "/tmp/s".into(),
            port: 1,
            queue: 2,
            guests_served: 3,
            stats: Arc::new(SocketStats::default()),
            pairs: Vec::new(),
            pool_invalid: 4,
            conn: None,
        };
        let d = socket_dict(&view);
        let names: Vec<&str> = d.entries().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"path"));
        assert_eq!(names.last(), Some(&"guest_connected"));
        assert_eq!(names.len(), 19);
        assert!(names.contains(&"penalty_polls"));
        assert!(d.entries().contains(&("invalid".to_string(), dpdk::telemetry::TelValue::U64(4))));
    }

    #[test]
    fn a_socket_with_queue_pairs_shows_each() {
        let pair = |rx: u64| {
            let st = SocketStats::default();
            st.rx_packets.store(rx, Ordering::Relaxed);
            Arc::new(st)
        };
        let view = SocketView {
            path: "/tmp/s".into(),
            port: 0,
            queue: 1,
            guests_served: 0,
            stats: Arc::new(SocketStats::default()),
            pairs: vec![(1, pair(10)), (3, pair(20))],
            pool_invalid: 0,
            conn: None,
        };
        let d = socket_dict(&view);
        let has = |name: &str, v: u64| d.entries().contains(&(name.to_string(), dpdk::telemetry::TelValue::U64(v)));
        assert!(has("queue_pairs", 2));
        assert!(has("queue0_nic_queue", 1) && has("queue0_rx_packets", 10));
        assert!(has("queue1_nic_queue", 3) && has("queue1_rx_packets", 20) && has("queue1_tx_packets", 0));
    }
}
