//! Packet capture by `dpdk-dumpcap`/`dpdk-pdump` ([`Pdump`]).
//!
//! DPDK 22.11's own capture server (`rte_pdump_init`) is not safe to use from a process
//! whose data loop runs while captures stop and start, for two reasons found in its
//! source (lib/pdump/rte_pdump.c) and reproduced against the proxy:
//!
//! * On a disable request it removes its rx/tx callbacks and answers at once. ethdev's
//!   `rte_eth_remove_rx_callback` only unlinks a callback: a burst already running it
//!   keeps running it, and the secondary frees its ring and mempool as soon as it has the
//!   answer. The data loop then copies into freed (possibly unmapped) memory.
//! * Its copies come from the secondary's mempool through the mempool's per-lcore cache
//!   of the calling lcore. `dpdk-dumpcap` runs on lcore 0 and frees the copies it wrote
//!   into its cache of lcore 0; a data loop on lcore 0 uses the same cache from the other
//!   process, unsynchronised: the cache is corrupted (crashes in librte_mbuf,
//!   librte_pcapng or the mempool driver).
//!
//! So this module answers pdump's multi-process requests itself (same request and
//! answer as DPDK 22.11's clients send, the `mp_pdump` action): its callbacks take and
//! give back the secondary's buffers without any lcore cache (straight from the
//! pool's MP/MC ops), wrap pcapng in a small pool of this process (made at init), and a disable answers only
//! after the caller's quiescence hook confirmed that no burst still runs the removed
//! callback; only then is the callback's memory freed. Statistics go where dumpcap
//! reads them (`rte_pdump_stats`, in the memzone `rte_pdump_init` reserves).

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::size_of;
use std::ptr::{self, null_mut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::{sys, Eal, Error, PktPool};

/// Set while a [`Pdump`] lives: pdump's state is per process.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The server's state: what the `mp_pdump` action (EAL's multi-process thread) works on.
static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// The multi-process action name DPDK's pdump clients send to.
const ACTION: &CStr = c"mp_pdump";
/// The memzone `rte_pdump_init` reserves for the per-queue statistics dumpcap reads.
const STATS_MEMZONE: &CStr = c"rte_pdump_stats";
/// Request operations and versions of DPDK 22.11's pdump protocol.
const OP_DISABLE: u16 = 1;
const OP_ENABLE: u16 = 2;
const VERSION_PCAP: u16 = 1;
const VERSION_PCAPNG: u16 = 2;
/// `RTE_PDUMP_FLAG_*` (rte_pdump.h).
const FLAG_RX: u32 = sys::RTE_PDUMP_FLAG_RX;
const FLAG_TX: u32 = sys::RTE_PDUMP_FLAG_TX;
const ALL_QUEUES: u16 = sys::RTE_PDUMP_ALL_QUEUES as u16;
const MAX_PORTS: usize = sys::RTE_MAX_ETHPORTS as usize;
const MAX_QUEUES: usize = sys::RTE_MAX_QUEUES_PER_PORT as usize;
/// Packets one callback call copies at a time (a larger burst goes in chunks).
const CHUNK: usize = 32;
/// Longest chain a copy into the secondary's pool may take.
const MAX_COPY_SEGS: usize = 16;
/// Buffers of the pool that pcapng wrapping uses (one at a time per packet).
const WRAP_POOL_SIZE: u32 = 63;
/// Frames up to this size are wrapped in one buffer (9000-byte MTU plus headers).
const WRAP_FRAME_MAX: u32 = 9216;

/// DPDK 22.11's `struct pdump_request` (lib/pdump/rte_pdump.c), as the client sends it.
#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    ver: u16,
    op: u16,
    flags: u32,
    device: [c_char; sys::RTE_DEV_NAME_MAX_LEN as usize],
    queue: u16,
    ring: *mut sys::rte_ring,
    mp: *mut sys::rte_mempool,
    prm: *const sys::rte_bpf_prm,
    snaplen: u32,
}

/// DPDK 22.11's `struct pdump_response`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Response {
    ver: u16,
    res_op: u16,
    err_value: i32,
}

/// Waits until no burst of this process still runs a callback removed before the call
/// (the data loop passed a quiescent point); false if it could not confirm that.
pub type Quiesce = Box<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Dir {
    Rx,
    Tx,
}

/// One capture callback's state; ethdev holds a pointer to it (`user_param`) until the
/// callback is removed and the quiescence hook has confirmed no burst runs it.
struct Tap {
    ring: *mut sys::rte_ring,
    mp: *mut sys::rte_mempool,
    filter: *mut sys::rte_bpf,
    snaplen: u32,
    /// pcapng (dumpcap) rather than a plain copy (dpdk-pdump).
    pcapng: bool,
    /// Null without pcapng.
    wrap_pool: *mut sys::rte_mempool,
    /// This queue's counters in the statistics memzone (shared with the secondary).
    stats: *mut sys::rte_pdump_stats,
    cb: *const sys::rte_eth_rxtx_callback,
}

struct Server {
    quiesce: Quiesce,
    taps: BTreeMap<(u16, u16, Dir), Box<Tap>>,
    /// Where `rte_pdump_stats` reads: rx[ports][queues], then tx[ports][queues].
    stats: *mut sys::rte_pdump_stats,
    /// Made at init (a later allocation could need system calls a sandbox no longer
    /// allows); lives as long as the server.
    wrap_pool: Option<PktPool>,
}

// SAFETY: the raw pointers name DPDK objects shared by all threads of the process
// (memzone, mempools, rings, callbacks); the server is only reached under its mutex.
unsafe impl Send for Server {}

fn server() -> MutexGuard<'static, Option<Server>> {
    SERVER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Packet capture by secondary processes (`dpdk-dumpcap`, `dpdk-pdump`) that attach to
/// this one, served while this value lives (see the module documentation for why this
/// is not DPDK's own server). Needs EAL's multi-process channel (not with `--in-memory`
/// or `--no-shconf`). It holds EAL alive.
pub struct Pdump {
    _eal: Eal,
}

impl std::fmt::Debug for Pdump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdump").finish_non_exhaustive()
    }
}

impl Pdump {
    /// Enables packet capture. `quiesce` is called on EAL's multi-process thread after a
    /// capture callback was removed and before its memory is freed and the secondary is
    /// answered: it must return once every rx/tx burst of this process that started
    /// before the call has returned (bounded; false if it could not confirm that, and
    /// the callback's memory is then never freed). At most one `Pdump` exists at a time:
    /// a second is refused with `EALREADY`.
    pub fn init(eal: &Eal, quiesce: Quiesce) -> Result<Pdump, Error> {
        if ACTIVE.swap(true, Ordering::AcqRel) {
            return Err(Error::new("rte_pdump_init", libc::EALREADY));
        }
        match Self::start(quiesce) {
            Ok(()) => Ok(Pdump { _eal: eal.clone() }),
            Err(e) => {
                ACTIVE.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    fn start(quiesce: Quiesce) -> Result<(), Error> {
        // SAFETY: EAL is initialised (the caller holds it); reserves the statistics
        // memzone and registers pdump's own action, replaced below.
        if unsafe { sys::rte_pdump_init() } != 0 {
            return Err(Error::from_rte_errno("rte_pdump_init"));
        }
        // SAFETY: looks a memzone up by a NUL-terminated name.
        let mz = unsafe { sys::rte_memzone_lookup(STATS_MEMZONE.as_ptr()) };
        let need = 2 * MAX_PORTS * MAX_QUEUES * size_of::<sys::rte_pdump_stats>();
        // SAFETY: a non-null memzone pointer from EAL is valid while the memzone exists.
        let stats = (!mz.is_null()).then(|| unsafe { ((*mz).len as usize, (*mz).__bindgen_anon_1.addr) });
        let stats = match stats {
            Some((len, addr)) if len >= need && !addr.is_null() => addr as *mut sys::rte_pdump_stats,
            _ => {
                // SAFETY: undoes rte_pdump_init.
                unsafe { sys::rte_pdump_uninit() };
                return Err(Error::new("rte_pdump_init", libc::ENOMEM));
            }
        };
        // SAFETY: replaces pdump's action by this module's; both names are NUL-terminated
        // and `serve` is an `extern "C"` function that catches panics.
        let rc = unsafe {
            sys::rte_mp_action_unregister(ACTION.as_ptr());
            sys::rte_mp_action_register(ACTION.as_ptr(), Some(serve))
        };
        if rc != 0 {
            let e = Error::from_rte_errno("rte_mp_action_register");
            // SAFETY: undoes rte_pdump_init.
            unsafe { sys::rte_pdump_uninit() };
            return Err(e);
        }
        // SAFETY: pure computation of a buffer size.
        let room = unsafe { sys::rte_pcapng_mbuf_size(WRAP_FRAME_MAX) };
        let wrap_pool = match PktPool::new("pdump_wrap", WRAP_POOL_SIZE, 0, u16::try_from(room).unwrap_or(u16::MAX), sys::SOCKET_ID_ANY) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: undoes rte_pdump_init (and with it the action registered above).
                unsafe { sys::rte_pdump_uninit() };
                return Err(e);
            }
        };
        *server() = Some(Server { quiesce, taps: BTreeMap::new(), stats, wrap_pool: Some(wrap_pool) });
        Ok(())
    }

    /// Captures running now (one per port, queue and direction).
    pub fn active_taps() -> usize {
        server().as_ref().map_or(0, |s| s.taps.len())
    }
}

impl Drop for Pdump {
    fn drop(&mut self) {
        // SAFETY: the action name is NUL-terminated; no new request reaches `serve`.
        unsafe { sys::rte_mp_action_unregister(ACTION.as_ptr()) };
        let mut guard = server();
        if let Some(mut s) = guard.take() {
            let keys: Vec<_> = s.taps.keys().copied().collect();
            for (port, queue, dir) in keys {
                s.remove(port, queue, dir);
            }
            drop(s.wrap_pool.take());
        }
        drop(guard);
        // SAFETY: undoes the `rte_pdump_init` of `init` (frees the statistics memzone no
        // tap points into any more), while EAL is still alive.
        unsafe { sys::rte_pdump_uninit() };
        ACTIVE.store(false, Ordering::Release);
    }
}

/// The `mp_pdump` action: one request, one answer.
unsafe extern "C" fn serve(msg: *const sys::rte_mp_msg, peer: *const c_void) -> c_int {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: EAL passes a valid message for the duration of the call.
        let msg = unsafe { &*msg };
        let mut answer = Response { ver: 0, res_op: 0, err_value: -libc::EINVAL };
        if msg.len_param as usize == size_of::<Request>() {
            // SAFETY: `param` holds at least `len_param` bytes; an unaligned copy of
            // plain data (pointers are only used once validated by DPDK calls below).
            let req = unsafe { ptr::read_unaligned(msg.param.as_ptr() as *const Request) };
            answer.ver = req.ver;
            answer.res_op = req.op;
            answer.err_value = match server().as_mut() {
                Some(s) => s.handle(&req),
                None => -libc::ENODEV,
            };
        }
        let mut reply = sys::rte_mp_msg::default();
        for (d, s) in reply.name.iter_mut().zip(ACTION.to_bytes()) {
            *d = *s as c_char;
        }
        reply.len_param = size_of::<Response>() as c_int;
        // SAFETY: `param` has room for the answer (256 bytes); unaligned write of plain data.
        unsafe { ptr::write_unaligned(reply.param.as_mut_ptr() as *mut Response, answer) };
        // SAFETY: `peer` is the requester's address EAL passed with the request.
        unsafe { sys::rte_mp_reply(&mut reply, peer as *const c_char) }
    });
    result.unwrap_or(-1)
}

impl Server {
    /// Serves one request; 0 or a negative errno (the client's `rte_errno`).
    fn handle(&mut self, req: &Request) -> i32 {
        if req.ver != VERSION_PCAP && req.ver != VERSION_PCAPNG {
            return -libc::EINVAL;
        }
        if req.flags & (FLAG_RX | FLAG_TX) == 0 {
            return -libc::EINVAL;
        }
        let Ok(device) = CStr::from_bytes_until_nul(
            // SAFETY: reinterprets the name's c_char bytes as u8 (same size).
            unsafe { std::slice::from_raw_parts(req.device.as_ptr() as *const u8, req.device.len()) },
        ) else {
            return -libc::EINVAL;
        };
        let mut port = 0u16;
        // SAFETY: a NUL-terminated name and a valid out pointer.
        if unsafe { sys::rte_eth_dev_get_port_by_name(device.as_ptr(), &mut port) } != 0 {
            return -libc::EINVAL;
        }
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: a valid port and out pointer.
        let rc = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
        if rc != 0 {
            return rc;
        }
        let mut targets = Vec::new();
        for (flag, dir, count) in [(FLAG_RX, Dir::Rx, info.nb_rx_queues), (FLAG_TX, Dir::Tx, info.nb_tx_queues)] {
            if req.flags & flag == 0 {
                continue;
            }
            if req.queue == ALL_QUEUES {
                if count == 0 {
                    return -libc::EINVAL;
                }
                targets.extend((0..count).map(|q| (q, dir)));
            } else if req.queue < count {
                targets.push((req.queue, dir));
            } else {
                return -libc::EINVAL;
            }
        }
        match req.op {
            OP_ENABLE => self.enable(req, port, &targets),
            OP_DISABLE => {
                if targets.iter().any(|&(q, dir)| !self.taps.contains_key(&(port, q, dir))) {
                    return -libc::EINVAL;
                }
                for &(q, dir) in &targets {
                    self.remove(port, q, dir);
                }
                0
            }
            _ => -libc::EINVAL,
        }
    }

    fn enable(&mut self, req: &Request, port: u16, targets: &[(u16, Dir)]) -> i32 {
        if req.ring.is_null() || req.mp.is_null() {
            return -libc::EINVAL;
        }
        if targets.iter().any(|&(q, dir)| self.taps.contains_key(&(port, q, dir))) {
            return -libc::EEXIST;
        }
        let pcapng = req.ver == VERSION_PCAPNG;
        let wrap_pool = if pcapng { self.wrap_pool.as_ref().map_or(null_mut(), |p| p.as_ptr()) } else { null_mut() };
        let snaplen = if req.snaplen == 0 { u32::MAX } else { req.snaplen };
        let mut added = Vec::new();
        for &(queue, dir) in targets {
            // One filter per tap: each is destroyed with its tap.
            let filter = if req.prm.is_null() {
                null_mut()
            } else {
                // SAFETY: `prm` points into the secondary's shared memory, mapped here
                // (as DPDK's own server relies on); rte_bpf_load validates the program.
                let f = unsafe { sys::rte_bpf_load(req.prm) };
                if f.is_null() {
                    self.roll_back(port, &added);
                    return -Error::from_rte_errno("rte_bpf_load").errno;
                }
                f
            };
            let stats_index = match dir {
                Dir::Rx => 0,
                Dir::Tx => MAX_PORTS * MAX_QUEUES,
            } + port as usize * MAX_QUEUES
                + queue as usize;
            let mut tap = Box::new(Tap {
                ring: req.ring,
                mp: req.mp,
                filter,
                snaplen,
                pcapng,
                wrap_pool,
                // SAFETY: inside the memzone (its length was checked at init).
                stats: unsafe { self.stats.add(stats_index) },
                cb: ptr::null(),
            });
            let user = &mut *tap as *mut Tap as *mut c_void;
            // SAFETY: `user` stays valid until the callback is removed and quiescence is
            // confirmed (`remove`); the callbacks catch panics.
            let cb = unsafe {
                match dir {
                    Dir::Rx => sys::rte_eth_add_first_rx_callback(port, queue, Some(tap_rx), user),
                    Dir::Tx => sys::rte_eth_add_tx_callback(port, queue, Some(tap_tx), user),
                }
            };
            if cb.is_null() {
                let e = Error::from_rte_errno("rte_eth_add_rx_callback");
                if !filter.is_null() {
                    // SAFETY: the filter was loaded above and is used by nothing.
                    unsafe { sys::rte_bpf_destroy(filter) };
                }
                self.roll_back(port, &added);
                return -e.errno;
            }
            tap.cb = cb;
            self.taps.insert((port, queue, dir), tap);
            added.push((queue, dir));
        }
        0
    }

    fn roll_back(&mut self, port: u16, added: &[(u16, Dir)]) {
        for &(queue, dir) in added {
            self.remove(port, queue, dir);
        }
    }

    /// Removes a tap: unlinks its callback, waits for quiescence, then frees the callback
    /// and the tap (or keeps both forever if quiescence could not be confirmed).
    fn remove(&mut self, port: u16, queue: u16, dir: Dir) {
        let Some(tap) = self.taps.remove(&(port, queue, dir)) else { return };
        // SAFETY: `cb` was returned by the matching add call for this port and queue.
        let rc = unsafe {
            match dir {
                Dir::Rx => sys::rte_eth_remove_rx_callback(port, queue, tap.cb),
                Dir::Tx => sys::rte_eth_remove_tx_callback(port, queue, tap.cb),
            }
        };
        if !(self.quiesce)() {
            // A burst may still run it: its memory must stay valid.
            Box::leak(tap);
            return;
        }
        if rc == 0 {
            // SAFETY: unlinked and no burst runs it any more; ethdev leaves freeing the
            // callback to the application (rte_ethdev.h).
            unsafe { sys::rte_free(tap.cb as *mut c_void) };
        }
        // (When removal failed the port was closed: ethdev no longer runs its callbacks,
        // and the callback's memory is left alone.)
        if !tap.filter.is_null() {
            // SAFETY: loaded for this tap, which no burst runs any more.
            unsafe { sys::rte_bpf_destroy(tap.filter) };
        }
        drop(tap);
    }
}

unsafe extern "C" fn tap_rx(
    port: u16,
    queue: u16,
    pkts: *mut *mut sys::rte_mbuf,
    nb_pkts: u16,
    _max_pkts: u16,
    user: *mut c_void,
) -> u16 {
    // SAFETY: `user` is the Tap registered with this callback, valid until it is removed
    // and quiescence is confirmed; ethdev passes `nb_pkts` received packets.
    unsafe { run_tap(port, queue, pkts, nb_pkts, user, sys::RTE_PCAPNG_DIRECTION_IN) };
    nb_pkts
}

unsafe extern "C" fn tap_tx(port: u16, queue: u16, pkts: *mut *mut sys::rte_mbuf, nb_pkts: u16, user: *mut c_void) -> u16 {
    // SAFETY: as in `tap_rx`, with the packets about to be sent.
    unsafe { run_tap(port, queue, pkts, nb_pkts, user, sys::RTE_PCAPNG_DIRECTION_OUT) };
    nb_pkts
}

/// # Safety
/// `user` is a live [`Tap`]; `pkts` holds `nb_pkts` valid packets.
unsafe fn run_tap(
    port: u16,
    queue: u16,
    pkts: *mut *mut sys::rte_mbuf,
    nb_pkts: u16,
    user: *mut c_void,
    direction: sys::rte_pcapng_direction,
) {
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: the caller's contract.
        let tap = unsafe { &*(user as *const Tap) };
        // SAFETY: the caller's contract.
        let pkts = unsafe { std::slice::from_raw_parts(pkts, nb_pkts as usize) };
        for chunk in pkts.chunks(CHUNK) {
            // SAFETY: the caller's contract, per chunk.
            unsafe { tap.copy(port, queue, chunk, direction) };
        }
    });
}

/// Adds to a counter that the secondary reads (statistics memzone).
///
/// # Safety
/// `counter` is an aligned u64 in live memory.
unsafe fn count(counter: *mut u64, by: u64) {
    if by != 0 {
        // SAFETY: the caller's contract; AtomicU64 has u64's size and alignment.
        unsafe { AtomicU64::from_ptr(counter) }.fetch_add(by, Ordering::Relaxed);
    }
}

impl Tap {
    /// # Safety
    /// `pkts` are valid packets; the tap's pool, ring and statistics are live.
    unsafe fn copy(&self, port: u16, queue: u16, pkts: &[*mut sys::rte_mbuf], direction: sys::rte_pcapng_direction) {
        let n = pkts.len();
        let mut verdicts = [1u64; CHUNK];
        if !self.filter.is_null() {
            // SAFETY: the filter reads packets (mbuf pointers as its context); n <= CHUNK.
            unsafe { sys::rte_bpf_exec_burst(self.filter, pkts.as_ptr() as *mut *mut c_void, verdicts.as_mut_ptr(), n as u32) };
        }
        // SAFETY: reads the TSC.
        let ts = unsafe { sys::rte_get_tsc_cycles() };
        let mut copies = [null_mut::<sys::rte_mbuf>(); CHUNK];
        let (mut made, mut filtered, mut nombuf) = (0usize, 0u64, 0u64);
        for (i, &m) in pkts.iter().enumerate() {
            if verdicts[i] == 0 {
                filtered += 1;
                continue;
            }
            let c = if self.pcapng {
                // SAFETY: wraps into this process's pool (its own cache-less buffers).
                let wrapped = unsafe { sys::rte_pcapng_copy(port, queue as u32, m, self.wrap_pool, self.snaplen, ts, direction) };
                if wrapped.is_null() {
                    null_mut()
                } else {
                    // SAFETY: `wrapped` is a valid packet of ours, freed right after.
                    let c = unsafe { copy_uncached(wrapped, self.mp, u32::MAX) };
                    // SAFETY: ours, not referenced elsewhere.
                    unsafe { sys::rte_pktmbuf_free(wrapped) };
                    c
                }
            } else {
                // SAFETY: `m` is a valid packet; the pool is live.
                unsafe { copy_uncached(m, self.mp, self.snaplen) }
            };
            if c.is_null() {
                nombuf += 1;
            } else {
                copies[made] = c;
                made += 1;
            }
        }
        let (objs, n) = (copies.as_ptr() as *const *mut c_void, made as u32);
        // SAFETY: the ring is live (MP/MC, as the client checked); `made` pointers.
        let queued = unsafe { sys::rte_ring_enqueue_burst(self.ring, objs, n, null_mut()) } as usize;
        for &c in &copies[queued..made] {
            // SAFETY: copies the ring did not take are still ours.
            unsafe { free_uncached(c, self.mp) };
        }
        // SAFETY: the tap's counters in the live memzone.
        unsafe {
            let s = self.stats;
            count(ptr::addr_of_mut!((*s).accepted), made as u64);
            count(ptr::addr_of_mut!((*s).filtered), filtered);
            count(ptr::addr_of_mut!((*s).nombuf), nombuf);
            count(ptr::addr_of_mut!((*s).ringfull), (made - queued) as u64);
        }
    }
}

/// Copies up to `max_len` bytes of `src` into a chain of buffers of `mp`, taken from the
/// pool's ops directly (no lcore cache: the pool belongs to another process whose lcore
/// ids may be ours). Null when the pool is empty or the chain would be too long.
///
/// # Safety
/// `src` is a valid packet; `mp` is a live packet pool with MP/MC ops.
unsafe fn copy_uncached(src: *const sys::rte_mbuf, mp: *mut sys::rte_mempool, max_len: u32) -> *mut sys::rte_mbuf {
    // SAFETY: the caller's contract.
    let (len, room) = unsafe {
        ((*src).pkt_len.min(max_len), sys::rte_pktmbuf_data_room_size(mp).saturating_sub(sys::RTE_PKTMBUF_HEADROOM as u16) as u32)
    };
    if room == 0 {
        return null_mut();
    }
    let segs = (len.div_ceil(room).max(1)) as usize;
    if segs > MAX_COPY_SEGS {
        return null_mut();
    }
    let mut objs = [null_mut::<c_void>(); MAX_COPY_SEGS];
    // SAFETY: room for `segs` objects; a null cache takes them from the ops directly.
    if unsafe { sys::rte_mempool_generic_get(mp, objs.as_mut_ptr(), segs as u32, null_mut()) } != 0 {
        return null_mut();
    }
    let head = objs[0] as *mut sys::rte_mbuf;
    let mut off = 0u32;
    let mut prev: *mut sys::rte_mbuf = null_mut();
    for &o in &objs[..segs] {
        let m = o as *mut sys::rte_mbuf;
        let chunk = (len - off).min(room);
        // SAFETY: a free mbuf of the pool (refcnt 1): reset to an empty packet, then
        // filled within its data room from the source (rte_pktmbuf_read copies across
        // segments into `dst` or returns a pointer to contiguous source bytes).
        unsafe {
            sys::rte_pktmbuf_reset(m);
            let dst = ((*m).buf_addr as *mut u8).add((*m).data_off as usize);
            let got = sys::rte_pktmbuf_read(src, off, chunk, dst as *mut c_void) as *const u8;
            if got.is_null() {
                // (Cannot happen: len <= pkt_len.) Every buffer goes back unlinked.
                for &o in &objs[..segs] {
                    let m = o as *mut sys::rte_mbuf;
                    (*m).next = null_mut();
                    free_uncached(m, mp);
                }
                return null_mut();
            }
            if !std::ptr::eq(got, dst) {
                ptr::copy_nonoverlapping(got, dst, chunk as usize);
            }
            (*m).data_len = chunk as u16;
            if !prev.is_null() {
                (*prev).next = m;
            }
        }
        prev = m;
        off += chunk;
    }
    // SAFETY: the head of the chain just built.
    unsafe {
        (*head).pkt_len = len;
        (*head).nb_segs = segs as u16;
    }
    head
}

/// Gives a chain made by [`copy_uncached`] back to its pool, without an lcore cache.
///
/// # Safety
/// `m` is a chain of `mp`'s buffers that nothing else references.
unsafe fn free_uncached(mut m: *mut sys::rte_mbuf, mp: *mut sys::rte_mempool) {
    while !m.is_null() {
        // SAFETY: the caller's contract; a buffer goes back unlinked, as a free mbuf is.
        unsafe {
            let next = (*m).next;
            (*m).next = null_mut();
            (*m).nb_segs = 1;
            let obj = m as *mut c_void;
            sys::rte_mempool_generic_put(mp, &obj, 1, null_mut());
            m = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_is_dpdk_22_11s() {
        // The client sends sizeof(struct pdump_request) bytes: 2+2+4+64, queue at 72,
        // then three pointers from 80 and snaplen at 104, padded to 112.
        assert_eq!(size_of::<Request>(), 112);
        assert_eq!(std::mem::offset_of!(Request, queue), 72);
        assert_eq!(std::mem::offset_of!(Request, ring), 80);
        assert_eq!(std::mem::offset_of!(Request, snaplen), 104);
        assert_eq!(size_of::<Response>(), 8);
    }
}
