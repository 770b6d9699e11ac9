//! A thin, safe layer over the parts of DPDK 22.11 that applications (the IO proxy) use
//! on the control path: EAL lifetime, ethdev ports, packet-mbuf pools, external memory
//! and DMA mappings, telemetry commands and packet capture.
//!
//! Ownership follows RAII, and `unsafe` stays in this crate:
//!
//! * [`Eal`] is a reference-counted handle; the last clone to drop cleans EAL up, and
//!   every object below that needs EAL holds a clone.
//! * [`PktPool`] frees its mempool on drop, but not while an rx queue that
//!   [`Port::rx_queue_setup_pool`] pointed at it still uses it; [`Mempool`] is a borrowed
//!   view of a pool ([`Mempool::in_use_count`]), [`mempool_count`] counts the process's.
//! * [`ExtMem`] registers memory the application mapped as external memory and DMA-maps
//!   it for devices; dropping it undoes both.
//! * [`telemetry::register`] adds a telemetry command answered by a safe Rust closure;
//!   [`Pdump`] enables packet capture by `dpdk-dumpcap` while it lives.
//!
//! * The data path works on owned values: an [`Mbuf`] frees itself on drop, an
//!   [`MbufBurst`] is a stack array of them, and [`RxQueue`] / [`TxQueue`] are the one
//!   handle each queue has for polling (reconfiguring a polled queue fails with
//!   `EBUSY`). The wrappers are `#[inline]` calls of the same DPDK functions.
//! * [`mbuf_ring`] is a single-producer, single-consumer ring of packets between two
//!   lcores, as two ends ([`RingProducer`], [`RingConsumer`]) that each move to their
//!   thread.
//! * [`ExtPool`] is a packet pool over buffers the application provides (memory shared
//!   with another process), its free list a safe Rust [`ExtPoolOps`] that deals in
//!   buffer indices; the layer keeps a mark per buffer so that the free list cannot
//!   make two owners of one mbuf.
//!
//! No lcore model is imposed: callers launch their own loops and threads.
//!
//! Every `extern "C"` function this crate hands to DPDK catches panics: none unwinds
//! into C.

// The workspace's lints (root Cargo.toml) apply too; this public API also documents
// every item.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

pub use dpdk_sys as sys;

mod extpool;
mod mbuf;
mod mem;
mod mempool;
mod pdump;
mod ring;
pub mod telemetry;

pub use mem::{virt2phy, Device, ExtMem};
pub use extpool::{ExtBuffer, ExtPool, ExtPoolOps, ExtPoolSpec};
pub use mbuf::{flush_lcore_cache, Drain, IntoSegments, Mbuf, MbufBurst, MbufError, RxQueue, Segment, Segments, TxQueue};
pub use mempool::{mempool_count, Mempool, PktPool};
pub use pdump::{Pdump, Quiesce};
pub use ring::{mbuf_ring, RingConsumer, RingProducer};

/// A failed DPDK call: which call and the errno it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The DPDK function that failed.
    pub call: &'static str,
    /// The (positive) errno value it reported.
    pub errno: i32,
}

impl Error {
    /// An error of `call` with `errno` (either sign).
    pub fn new(call: &'static str, errno: i32) -> Error {
        Error { call, errno: errno.abs() }
    }

    /// From the current thread's `rte_errno`.
    pub fn from_rte_errno(call: &'static str) -> Error {
        // SAFETY: reads a thread-local integer.
        Error::new(call, unsafe { sys::dpdk_sys_errno() })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.call, errno_text(self.errno))
    }
}

impl std::error::Error for Error {}

/// The text of an errno value, as DPDK prints it (`rte_strerror` knows DPDK's own codes).
pub fn errno_text(errno: i32) -> String {
    // SAFETY: rte_strerror returns a static or thread-local NUL-terminated string.
    unsafe { CStr::from_ptr(sys::rte_strerror(errno.abs())) }.to_string_lossy().into_owned()
}

/// Turns a negative-errno return into a `Result`.
pub fn check(call: &'static str, rc: i32) -> Result<i32, Error> {
    if rc < 0 {
        Err(Error::new(call, rc))
    } else {
        Ok(rc)
    }
}

/// The initialised EAL: a cheap, cloneable, reference-counted handle. The last clone
/// to drop calls `rte_eal_cleanup`.
///
/// Everything in this crate that needs EAL alive holds a clone ([`PktPool`], [`ExtMem`],
/// [`Pdump`], [`telemetry::Registration`]; a pool an rx queue takes buffers from until
/// its port is closed), so EAL cannot be cleaned up under them: dropping the
/// application's own handle first only defers the cleanup to the last of them. EAL is initialised once per process: a second [`Eal::init`] after a successful
/// one is an error (`EALREADY`), also after the cleanup (DPDK cannot initialise EAL
/// again).
#[derive(Clone)]
pub struct Eal {
    inner: Arc<EalInner>,
}

/// The one EAL of the process; its drop is the cleanup.
struct EalInner {
    _private: (),
}

/// The argv array given to `rte_eal_init`: pointers into [`EalState::args`].
struct Argv {
    _ptrs: Vec<*mut c_char>,
}

// SAFETY: the pointers are never dereferenced from Rust; they only keep EAL's argv
// (and the strings it points to, owned beside it) alive.
unsafe impl Send for Argv {}

/// Whether EAL was initialised, and the handle while it lives.
struct EalState {
    initialised: bool,
    current: Weak<EalInner>,
    /// The arguments EAL was given: it keeps pointers into them (and may permute the
    /// array), so they live as long as the process, reachable from here (so a leak
    /// checker does not report them).
    args: Vec<CString>,
    argv: Argv,
}

static EAL: Mutex<EalState> =
    Mutex::new(EalState { initialised: false, current: Weak::new(), args: Vec::new(), argv: Argv { _ptrs: Vec::new() } });

fn eal_state() -> MutexGuard<'static, EalState> {
    // The state is two plain fields, each always consistent: a panic elsewhere while
    // the lock was held cannot break it.
    EAL.lock().unwrap_or_else(|e| e.into_inner())
}

impl Eal {
    /// Initialises EAL with `args` (`args[0]` is the program name). Returns the EAL and
    /// the number of arguments EAL consumed.
    ///
    /// Fails with `EALREADY` once EAL was initialised in this process (whether or not
    /// it was cleaned up since). After a failed initialisation DPDK decides whether
    /// another attempt may be made.
    pub fn init(args: &[String]) -> Result<(Eal, usize), Error> {
        let mut state = eal_state();
        if state.initialised {
            return Err(Error::new("rte_eal_init", libc::EALREADY));
        }
        let cstrings: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap_or_else(|_| CString::from(c"?")))
            .collect();
        // EAL may permute argv; it must stay alive for the process (EAL keeps pointers).
        let mut argv: Vec<*mut c_char> = cstrings.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        argv.push(std::ptr::null_mut());
        let argc = args.len() as i32;
        // SAFETY: argv holds argc valid NUL-terminated strings and a final null; the
        // lock on the state serialises initialisations.
        let rc = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        state.args = cstrings;
        state.argv = Argv { _ptrs: argv };
        if rc < 0 {
            return Err(Error::from_rte_errno("rte_eal_init"));
        }
        let inner = Arc::new(EalInner { _private: () });
        state.initialised = true;
        state.current = Arc::downgrade(&inner);
        Ok((Eal { inner }, rc as usize))
    }

    /// A handle to the running EAL, if there is one (initialised, and not cleaned up
    /// nor being cleaned up).
    pub fn current() -> Option<Eal> {
        eal_state().current.upgrade().map(|inner| Eal { inner })
    }

    /// [`Eal::current`], or the error `ENODEV` naming `call`.
    pub(crate) fn require(call: &'static str) -> Result<Eal, Error> {
        Eal::current().ok_or(Error::new(call, libc::ENODEV))
    }

    /// How many handles to this EAL exist (this one included).
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Whether packet buffers' IOVAs are their virtual addresses.
    pub fn iova_is_va(&self) -> bool {
        // SAFETY: reads EAL configuration; EAL lives as long as self.
        unsafe { sys::rte_eal_iova_mode() == sys::RTE_IOVA_VA }
    }

    /// The main lcore's id.
    pub fn main_lcore(&self) -> u32 {
        // SAFETY: reads EAL configuration; EAL lives as long as self.
        unsafe { sys::rte_get_main_lcore() }
    }

    /// The worker lcores (every enabled lcore but the main one), in id order.
    pub fn worker_lcores(&self) -> Vec<u32> {
        let mut out = Vec::new();
        // SAFETY: iterates EAL's lcore table; EAL lives as long as self.
        let mut id = unsafe { sys::rte_get_next_lcore(u32::MAX, 1, 0) };
        while id < sys::RTE_MAX_LCORE {
            out.push(id);
            // SAFETY: as above.
            id = unsafe { sys::rte_get_next_lcore(id, 1, 0) };
        }
        out
    }

    /// Runs `f` on worker lcore `lcore`'s thread (`rte_eal_remote_launch`); wait for it
    /// with [`wait_lcore`](Self::wait_lcore). A panic in `f` ends `f` only (the lcore
    /// reports -1). Fails with `EBUSY` while the lcore runs something, `EINVAL` for the
    /// main lcore or one that is not enabled.
    pub fn launch<F: FnOnce() + Send + 'static>(&self, lcore: u32, f: F) -> Result<(), Error> {
        extern "C" fn trampoline(arg: *mut std::ffi::c_void) -> i32 {
            // SAFETY: `arg` is the box `launch` leaked for this one call.
            let f = unsafe { Box::from_raw(arg as *mut Box<dyn FnOnce() + Send>) };
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(()) => 0,
                Err(_) => -1,
            }
        }
        if lcore == self.main_lcore() || !self.worker_lcores().contains(&lcore) {
            return Err(Error::new("rte_eal_remote_launch", libc::EINVAL));
        }
        let boxed: Box<Box<dyn FnOnce() + Send>> = Box::new(Box::new(f));
        let arg = Box::into_raw(boxed) as *mut std::ffi::c_void;
        // SAFETY: a worker lcore of a live EAL; the trampoline owns `arg` once launched
        // and catches every panic.
        let rc = unsafe { sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
        if rc < 0 {
            // SAFETY: not launched: the box is still ours.
            drop(unsafe { Box::from_raw(arg as *mut Box<dyn FnOnce() + Send>) });
            return Err(Error::new("rte_eal_remote_launch", rc));
        }
        Ok(())
    }

    /// Waits until what [`launch`](Self::launch) started on `lcore` returns; its
    /// result: 0, or -1 after a panic (also 0 for an lcore that runs nothing).
    pub fn wait_lcore(&self, lcore: u32) -> i32 {
        // SAFETY: a plain wait on EAL's lcore table; EAL lives as long as self.
        unsafe { sys::rte_eal_wait_lcore(lcore) }
    }
}

impl fmt::Debug for Eal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eal").field("handles", &self.handle_count()).finish()
    }
}

impl Drop for EalInner {
    fn drop(&mut self) {
        // SAFETY: EAL was initialised by `Eal::init`; this is the last handle, and every
        // object of this crate that needs EAL holds one.
        unsafe { sys::rte_eal_cleanup() };
    }
}

/// The link of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// The link is up.
    pub up: bool,
    /// Its speed in Mbit/s (0 when unknown).
    pub speed_mbps: u32,
}

/// Per-port counters, as `rte_eth_stats_get` gives them.
#[derive(Debug, Clone, Copy, Default)]
#[allow(missing_docs)] // the fields of `rte_eth_stats`, same names
pub struct PortStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

/// An ethdev port, by id. Cheap to copy; validity is checked by every call.
///
/// A port does not hold EAL: its calls must be made while EAL lives (an application
/// keeps its [`Eal`] handle until it has closed its ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub u16);

/// The pools that rx queues set up by [`Port::rx_queue_setup_pool`] take their buffers
/// from, by (port, queue): each is kept alive until its queue is set up again or its
/// port is closed.
static RX_POOLS: Mutex<BTreeMap<(u16, u16), Arc<mempool::PoolInner>>> = Mutex::new(BTreeMap::new());

fn rx_pools() -> MutexGuard<'static, BTreeMap<(u16, u16), Arc<mempool::PoolInner>>> {
    // Insertions and removals are single map operations: a poisoned map is consistent.
    RX_POOLS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replaces the pool kept for rx queue (port, queue); the old one drops after the lock.
fn keep_rx_pool(port: u16, queue: u16, pool: Arc<mempool::PoolInner>) {
    let old = rx_pools().insert((port, queue), pool);
    drop(old);
}

impl Port {
    /// Ports that are probed and not owned by another entity.
    pub fn all() -> Vec<Port> {
        let mut ports = Vec::new();
        // SAFETY: iterates EAL's port table.
        unsafe {
            let mut p = sys::rte_eth_find_next_owned_by(0, sys::RTE_ETH_DEV_NO_OWNER as u64);
            while (p as u32) < sys::RTE_MAX_ETHPORTS {
                ports.push(Port(p as u16));
                p = sys::rte_eth_find_next_owned_by(p as u16 + 1, sys::RTE_ETH_DEV_NO_OWNER as u64);
            }
        }
        ports
    }

    /// Whether the id names a probed port.
    pub fn is_valid(self) -> bool {
        // SAFETY: a range check on the port table.
        unsafe { sys::rte_eth_dev_is_valid_port(self.0) == 1 }
    }

    /// The device's capabilities and limits (`rte_eth_dev_info_get`).
    pub fn info(self) -> Result<sys::rte_eth_dev_info, Error> {
        // SAFETY: dev_info is plain data filled by the call.
        unsafe {
            let mut info: sys::rte_eth_dev_info = std::mem::zeroed();
            check("rte_eth_dev_info_get", sys::rte_eth_dev_info_get(self.0, &mut info))?;
            Ok(info)
        }
    }

    /// The device name (`net_null0`, `0000:3b:00.0`, ...).
    pub fn name(self) -> String {
        let mut buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: buf is large enough for any port name.
        let rc = unsafe { sys::rte_eth_dev_get_name_by_port(self.0, buf.as_mut_ptr()) };
        if rc != 0 {
            return format!("port{}", self.0);
        }
        // SAFETY: NUL-terminated by the call.
        unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
    }

    /// The NUMA socket of the device (negative when unknown).
    pub fn socket_id(self) -> i32 {
        // SAFETY: a lookup in the port table.
        unsafe { sys::rte_eth_dev_socket_id(self.0) }
    }

    /// The port's MAC address.
    pub fn mac(self) -> Result<[u8; 6], Error> {
        // SAFETY: plain data filled by the call.
        unsafe {
            let mut addr: sys::rte_ether_addr = std::mem::zeroed();
            check("rte_eth_macaddr_get", sys::rte_eth_macaddr_get(self.0, &mut addr))?;
            Ok(addr.addr_bytes)
        }
    }

    /// The port's MTU.
    pub fn mtu(self) -> Result<u16, Error> {
        let mut mtu = 0u16;
        // SAFETY: writes one u16.
        check("rte_eth_dev_get_mtu", unsafe { sys::rte_eth_dev_get_mtu(self.0, &mut mtu) })?;
        Ok(mtu)
    }

    /// Sets the port's MTU.
    pub fn set_mtu(self, mtu: u16) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_set_mtu", unsafe { sys::rte_eth_dev_set_mtu(self.0, mtu) }).map(|_| ())
    }

    /// Configures the port with `nb_rx` rx and `nb_tx` tx queues.
    /// Fails with `EBUSY` while a queue of the port has a polling handle.
    ///
    /// `conf.rx_adv_conf.rss_conf.rss_key` must be null (the device's default key): DPDK
    /// would read a key through it; anything else is refused with `EINVAL`.
    pub fn configure(self, nb_rx: u16, nb_tx: u16, conf: &sys::rte_eth_conf) -> Result<(), Error> {
        if !conf.rx_adv_conf.rss_conf.rss_key.is_null() {
            return Err(Error::new("rte_eth_dev_configure", libc::EINVAL));
        }
        mbuf::ensure_not_polled("rte_eth_dev_configure", self.0, None)?;
        // SAFETY: conf is a valid configuration without pointers (checked above); DPDK
        // copies it.
        check("rte_eth_dev_configure", unsafe { sys::rte_eth_dev_configure(self.0, nb_rx, nb_tx, conf) }).map(|_| ())
    }

    /// Adjusts descriptor counts to the device's limits.
    pub fn adjust_desc(self, rx: u16, tx: u16) -> Result<(u16, u16), Error> {
        let (mut rx, mut tx) = (rx, tx);
        // SAFETY: writes two u16.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(self.0, &mut rx, &mut tx)
        })?;
        Ok((rx, tx))
    }

    /// Sets up rx queue `queue` to take its buffers from `pool`, which this crate keeps
    /// alive (a reference to it, and so to EAL) until the queue is set up again or the
    /// port is closed with [`Port::close`]: dropping the [`PktPool`] meanwhile only drops
    /// the application's reference.
    ///
    /// `conf` (None: the device's defaults) must not name buffer-split segments or
    /// extra mempools (`rx_seg`, `rx_nseg`, `rx_mempools`, `rx_nmempool`): refused with
    /// `EINVAL`.
    pub fn rx_queue_setup_pool(
        self,
        queue: u16,
        nb_desc: u16,
        conf: Option<&sys::rte_eth_rxconf>,
        pool: &PktPool,
    ) -> Result<(), Error> {
        if conf.is_some_and(|c| !c.rx_seg.is_null() || c.rx_nseg != 0 || !c.rx_mempools.is_null() || c.rx_nmempool != 0) {
            return Err(Error::new("rte_eth_rx_queue_setup", libc::EINVAL));
        }
        mbuf::ensure_not_polled("rte_eth_rx_queue_setup", self.0, Some((queue, true)))?;
        let conf_ptr = conf.map_or(std::ptr::null(), |c| c as *const _);
        // SAFETY: conf has no pointers (checked above); `pool` is a live packet-mbuf pool,
        // kept alive below for as long as the queue can use it.
        check("rte_eth_rx_queue_setup", unsafe {
            sys::rte_eth_rx_queue_setup(self.0, queue, nb_desc, self.socket_id().max(0) as u32, conf_ptr, pool.as_ptr())
        })?;
        keep_rx_pool(self.0, queue, pool.inner());
        Ok(())
    }

    /// Sets up tx queue `queue` with the device's default configuration.
    /// Fails with `EBUSY` while the queue has a polling handle ([`TxQueue`]).
    pub fn tx_queue_setup(self, queue: u16, nb_desc: u16) -> Result<(), Error> {
        mbuf::ensure_not_polled("rte_eth_tx_queue_setup", self.0, Some((queue, false)))?;
        // SAFETY: null conf means the device's defaults.
        check("rte_eth_tx_queue_setup", unsafe {
            sys::rte_eth_tx_queue_setup(self.0, queue, nb_desc, self.socket_id().max(0) as u32, std::ptr::null())
        })
        .map(|_| ())
    }

    /// Starts the port.
    pub fn start(self) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_start", unsafe { sys::rte_eth_dev_start(self.0) }).map(|_| ())
    }

    /// Stops the port.
    /// Fails with `EBUSY` while a queue of the port has a polling handle.
    pub fn stop(self) -> Result<(), Error> {
        mbuf::ensure_not_polled("rte_eth_dev_stop", self.0, None)?;
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_stop", unsafe { sys::rte_eth_dev_stop(self.0) }).map(|_| ())
    }

    /// Fails with `EBUSY` while a queue of the port has a polling handle. Otherwise
    /// closes the port (its queues release their buffers), then lets go of the pools
    /// its rx queues were set up with by [`Port::rx_queue_setup_pool`].
    pub fn close(self) -> Result<(), Error> {
        mbuf::ensure_not_polled("rte_eth_dev_close", self.0, None)?;
        // SAFETY: plain call on a port id; the id is invalid afterwards.
        let closed = check("rte_eth_dev_close", unsafe { sys::rte_eth_dev_close(self.0) }).map(|_| ());
        if closed.is_ok() {
            let released: Vec<_> = {
                let mut pools = rx_pools();
                let queues: Vec<(u16, u16)> = pools.range((self.0, 0)..=(self.0, u16::MAX)).map(|(k, _)| *k).collect();
                queues.into_iter().filter_map(|k| pools.remove(&k)).collect()
            };
            drop(released);
        }
        closed
    }

    /// Stops one rx queue (where the device can).
    pub fn rx_queue_stop(self, queue: u16) -> Result<(), Error> {
        mbuf::ensure_not_polled("rte_eth_dev_rx_queue_stop", self.0, Some((queue, true)))?;
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_rx_queue_stop", unsafe { sys::rte_eth_dev_rx_queue_stop(self.0, queue) }).map(|_| ())
    }

    /// Starts one rx queue (where the device can).
    pub fn rx_queue_start(self, queue: u16) -> Result<(), Error> {
        mbuf::ensure_not_polled("rte_eth_dev_rx_queue_start", self.0, Some((queue, true)))?;
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_rx_queue_start", unsafe { sys::rte_eth_dev_rx_queue_start(self.0, queue) }).map(|_| ())
    }

    /// Frees the mbufs a tx queue still holds after sending them.
    pub fn tx_done_cleanup(self, queue: u16) -> Result<(), Error> {
        mbuf::ensure_not_polled("rte_eth_tx_done_cleanup", self.0, Some((queue, false)))?;
        // SAFETY: plain call on a port id.
        check("rte_eth_tx_done_cleanup", unsafe { sys::rte_eth_tx_done_cleanup(self.0, queue, 0) }).map(|_| ())
    }

    /// Enables promiscuous mode.
    pub fn promiscuous_enable(self) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_promiscuous_enable", unsafe { sys::rte_eth_promiscuous_enable(self.0) }).map(|_| ())
    }

    /// The link, without waiting for it (down when it cannot be read).
    pub fn link(self) -> Link {
        // SAFETY: plain data filled by the call.
        unsafe {
            let mut link: sys::rte_eth_link = std::mem::zeroed();
            if sys::rte_eth_link_get_nowait(self.0, &mut link) != 0 {
                return Link::default();
            }
            Link { up: link.link_status() != 0, speed_mbps: link.link_speed }
        }
    }

    /// The port's basic counters.
    pub fn stats(self) -> Result<PortStats, Error> {
        // SAFETY: plain data filled by the call.
        unsafe {
            let mut s: sys::rte_eth_stats = std::mem::zeroed();
            check("rte_eth_stats_get", sys::rte_eth_stats_get(self.0, &mut s))?;
            Ok(PortStats {
                ipackets: s.ipackets,
                opackets: s.opackets,
                ibytes: s.ibytes,
                obytes: s.obytes,
                imissed: s.imissed,
                ierrors: s.ierrors,
                oerrors: s.oerrors,
                rx_nombuf: s.rx_nombuf,
            })
        }
    }

    /// The generic device behind the port (for DMA mapping with [`ExtMem::dma_map`]).
    pub fn device(self) -> Result<Device, Error> {
        Device::from_ptr(self.info()?.device).ok_or(Error::new("rte_eth_dev_info_get", libc::ENODEV))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_names_the_call() {
        let e = Error::new("rte_eth_dev_configure", -22);
        assert_eq!(e.errno, 22);
        assert!(e.to_string().starts_with("rte_eth_dev_configure: "), "{e}");
        assert!(check("x", -5).is_err());
        assert_eq!(check("x", 3), Ok(3));
    }
}
