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

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dpdk::sys;
use shm_contract::layout::RingArea;
use shm_contract::spsc::{CONS_INDEX_OFFSET, PROD_INDEX_OFFSET};
use shm_contract::SharedMem;

use crate::datapath::SocketStats;
use crate::{log_info, log_warn};

/// How stale the snapshot may get (the control loop refreshes it at most this often).
const REFRESH_PERIOD: Duration = Duration::from_millis(100);

/// One socket as the telemetry commands show it.
pub struct SocketView {
    pub path: String,
    pub port: u16,
    pub queue: u16,
    pub guests_served: u64,
    pub stats: Arc<SocketStats>,
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

/// Registers the telemetry commands (EAL must be initialised).
pub fn register() {
    type Cb = unsafe extern "C" fn(*const c_char, *const c_char, *mut sys::rte_tel_data) -> c_int;
    let commands: [(&CStr, Cb, &'static CStr); 3] = [
        (c"/shm_proxy/info", cmd_info, c"dpdk-io-proxy: version, sockets, attached guests, packet capture. Takes no parameters"),
        (c"/shm_proxy/sockets", cmd_sockets, c"dpdk-io-proxy: the served socket paths (index = position). Takes no parameters"),
        (
            c"/shm_proxy/socket",
            cmd_socket,
            c"dpdk-io-proxy: one socket: port, queue, counters, guest, region, ring fill. Parameters: socket index or path",
        ),
    ];
    for (name, cb, help) in commands {
        // SAFETY: `name` and `help` are 'static C strings (DPDK keeps the help pointer);
        // the callback has the telemetry_cb signature.
        let rc = unsafe { sys::rte_telemetry_register_cmd(name.as_ptr(), Some(cb), help.as_ptr()) };
        if rc != 0 {
            log_warn!("telemetry: cannot register {}: {}", name.to_string_lossy(), dpdk::errno_text(rc));
        }
    }
}

/// Packet capture with `dpdk-dumpcap`/`dpdk-pdump` (secondary processes that attach to
/// this one). Needs the multi-process channel: not with `--in-memory` or `--no-shconf`.
pub struct Capture(bool);

impl Capture {
    pub fn init() -> Capture {
        // SAFETY: EAL is initialised; registers pdump's multi-process action.
        let rc = unsafe { sys::rte_pdump_init() };
        if rc != 0 {
            log_warn!(
                "packet capture unavailable (rte_pdump_init: {}); run without --in-memory/--no-shconf for dpdk-dumpcap",
                dpdk::errno_text(rte_errno())
            );
            return Capture(false);
        }
        CAPTURE.store(true, Ordering::Relaxed);
        log_info!("packet capture ready: dpdk-dumpcap --file-prefix <this --file-prefix> -i <port>");
        Capture(true)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.0 {
            CAPTURE.store(false, Ordering::Relaxed);
            // SAFETY: undoes rte_pdump_init, before EAL cleanup.
            unsafe { sys::rte_pdump_uninit() };
        }
    }
}

fn rte_errno() -> i32 {
    // SAFETY: reads this thread's rte_errno.
    unsafe { sys::dpdk_sys_errno() }
}

/// Runs a command body on the telemetry thread: no panic may unwind into C.
fn entry(d: *mut sys::rte_tel_data, body: impl FnOnce(&mut Answer) -> Result<(), c_int>) -> c_int {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut Answer(d)))) {
        Ok(Ok(())) => 0,
        Ok(Err(rc)) => rc,
        Err(_) => -libc::EIO,
    }
}

/// The answer being built (DPDK's `rte_tel_data`).
struct Answer(*mut sys::rte_tel_data);

impl Answer {
    fn start_dict(&mut self) {
        // SAFETY: the telemetry library's buffer for this answer.
        unsafe { sys::rte_tel_data_start_dict(self.0) };
    }
    fn start_string_array(&mut self) {
        // SAFETY: as above.
        unsafe { sys::rte_tel_data_start_array(self.0, sys::RTE_TEL_STRING_VAL) };
    }
    fn push_string(&mut self, value: &str) {
        let v = c_string(value);
        // SAFETY: as above; DPDK copies the string.
        unsafe { sys::rte_tel_data_add_array_string(self.0, v.as_ptr()) };
    }
    fn u64(&mut self, name: &CStr, value: u64) {
        // SAFETY: as above; DPDK copies the name.
        unsafe { sys::rte_tel_data_add_dict_u64(self.0, name.as_ptr(), value) };
    }
    fn int(&mut self, name: &CStr, value: i32) {
        // SAFETY: as above.
        unsafe { sys::rte_tel_data_add_dict_int(self.0, name.as_ptr(), value) };
    }
    fn string(&mut self, name: &CStr, value: &str) {
        let v = c_string(value);
        // SAFETY: as above; DPDK copies (and truncates to its limit) the string.
        unsafe { sys::rte_tel_data_add_dict_string(self.0, name.as_ptr(), v.as_ptr()) };
    }
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "")).unwrap_or_default()
}

unsafe extern "C" fn cmd_info(_cmd: *const c_char, _params: *const c_char, d: *mut sys::rte_tel_data) -> c_int {
    entry(d, |out| {
        let snap = snapshot();
        out.start_dict();
        out.string(c"version", env!("CARGO_PKG_VERSION"));
        out.int(c"pid", std::process::id() as i32);
        out.u64(c"sockets", snap.sockets.len() as u64);
        let guests = snap.sockets.iter().filter(|s| s.conn.as_ref().is_some_and(|c| c.guest.is_some())).count();
        out.u64(c"guests", guests as u64);
        out.int(c"capture", CAPTURE.load(Ordering::Relaxed) as i32);
        Ok(())
    })
}

unsafe extern "C" fn cmd_sockets(_cmd: *const c_char, _params: *const c_char, d: *mut sys::rte_tel_data) -> c_int {
    entry(d, |out| {
        out.start_string_array();
        for s in &snapshot().sockets {
            out.push_string(&s.path);
        }
        Ok(())
    })
}

unsafe extern "C" fn cmd_socket(_cmd: *const c_char, params: *const c_char, d: *mut sys::rte_tel_data) -> c_int {
    // SAFETY: telemetry passes a NUL-terminated parameter string or null.
    let params = (!params.is_null()).then(|| unsafe { CStr::from_ptr(params) }.to_string_lossy().trim().to_string());
    entry(d, |out| {
        let snap = snapshot();
        let wanted = params.as_deref().filter(|p| !p.is_empty()).ok_or(-libc::EINVAL)?;
        let sock = match wanted.parse::<usize>() {
            Ok(i) => snap.sockets.get(i),
            Err(_) => snap.sockets.iter().find(|s| s.path == wanted),
        }
        .ok_or(-libc::ENOENT)?;
        socket_dict(out, sock);
        Ok(())
    })
}

fn socket_dict(out: &mut Answer, s: &SocketView) {
    let ld = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let st = &s.stats;
    out.start_dict();
    out.string(c"path", &s.path);
    out.u64(c"port", s.port as u64);
    out.u64(c"queue", s.queue as u64);
    out.u64(c"guests_served", s.guests_served);
    out.u64(c"rx_packets", ld(&st.rx_packets));
    out.u64(c"rx_bytes", ld(&st.rx_bytes));
    out.u64(c"rx_dropped", ld(&st.rx_dropped));
    out.u64(c"tx_packets", ld(&st.tx_packets));
    out.u64(c"tx_bytes", ld(&st.tx_bytes));
    out.u64(c"tx_dropped", ld(&st.tx_dropped));
    out.u64(c"tx_returned", ld(&st.tx_returned));
    out.u64(c"rx_wakeups", ld(&st.rx_wakeups));
    out.u64(c"copies", ld(&st.copies));
    out.u64(c"invalid", ld(&st.invalid) + s.pool_invalid);
    out.int(c"guest_connected", s.conn.is_some() as i32);
    let Some(conn) = &s.conn else { return };
    out.int(c"guest_pid", conn.pid);
    out.u64(c"guest_connected_ms", conn.connected_for.as_millis() as u64);
    out.int(c"guest_attached", conn.guest.is_some() as i32);
    let Some(g) = &conn.guest else { return };
    out.string(c"guest_app", &g.app);
    out.u64(c"region_size", g.region_size);
    out.int(c"region_hugepages", g.hugepages as i32);
    out.u64(c"pools", g.pools as u64);
    out.int(c"queue_started", g.queue_started as i32);
    for (prefix, ring) in [("rx_ring", g.rx_ring), ("tx_ring", g.tx_ring)] {
        out.u64(&c_string(&format!("{prefix}_entries")), ring.entries as u64);
        out.u64(&c_string(&format!("{prefix}_used")), ring.used as u64);
        out.int(&c_string(&format!("{prefix}_corrupt")), ring.corrupt as i32);
    }
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
}
