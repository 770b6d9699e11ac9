//! A thin, safe layer over the parts of DPDK 22.11 that applications (the IO proxy) use
//! on the control path: EAL lifetime, ethdev ports and packet-mbuf pools.
//!
//! Ownership follows RAII: [`Eal`] cleans EAL up when dropped, [`PktPool`] frees its
//! mempool. No lcore model is imposed: callers launch their own loops. Data-path calls
//! (`rte_eth_rx_burst`, ...) stay raw `dpdk_sys` calls in the caller's hot loop, where
//! a wrapper would only add a branch.

use std::ffi::{c_char, CStr, CString};
use std::fmt;

pub use dpdk_sys as sys;

/// A failed DPDK call: which call and the errno it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub call: &'static str,
    pub errno: i32,
}

impl Error {
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

/// The initialised EAL. Dropping it calls `rte_eal_cleanup`.
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises EAL with `args` (`args[0]` is the program name). Returns the EAL and
    /// the number of arguments EAL consumed.
    pub fn init(args: &[String]) -> Result<(Eal, usize), Error> {
        let cstrings: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_str()).unwrap_or_else(|_| CString::from(c"?")))
            .collect();
        // EAL may permute argv; it must stay alive for the process (EAL keeps pointers).
        let mut argv: Vec<*mut c_char> = cstrings.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        argv.push(std::ptr::null_mut());
        let argc = args.len() as i32;
        // SAFETY: argv holds argc valid NUL-terminated strings and a final null.
        let rc = unsafe { sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        std::mem::forget(cstrings);
        std::mem::forget(argv);
        if rc < 0 {
            return Err(Error::from_rte_errno("rte_eal_init"));
        }
        Ok((Eal { _private: () }, rc as usize))
    }

    /// Whether packet buffers' IOVAs are their virtual addresses.
    pub fn iova_is_va(&self) -> bool {
        // SAFETY: reads EAL configuration.
        unsafe { sys::rte_eal_iova_mode() == sys::RTE_IOVA_VA }
    }

    /// The main lcore's id.
    pub fn main_lcore(&self) -> u32 {
        // SAFETY: reads EAL configuration.
        unsafe { sys::rte_get_main_lcore() }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: EAL was initialised by `init`; nothing uses it after this value drops.
        unsafe { sys::rte_eal_cleanup() };
    }
}

/// The link of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    pub up: bool,
    pub speed_mbps: u32,
}

/// Per-port counters, as `rte_eth_stats_get` gives them.
#[derive(Debug, Clone, Copy, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub u16);

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

    pub fn is_valid(self) -> bool {
        // SAFETY: a range check on the port table.
        unsafe { sys::rte_eth_dev_is_valid_port(self.0) == 1 }
    }

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

    pub fn socket_id(self) -> i32 {
        // SAFETY: a lookup in the port table.
        unsafe { sys::rte_eth_dev_socket_id(self.0) }
    }

    pub fn mac(self) -> Result<[u8; 6], Error> {
        // SAFETY: plain data filled by the call.
        unsafe {
            let mut addr: sys::rte_ether_addr = std::mem::zeroed();
            check("rte_eth_macaddr_get", sys::rte_eth_macaddr_get(self.0, &mut addr))?;
            Ok(addr.addr_bytes)
        }
    }

    pub fn mtu(self) -> Result<u16, Error> {
        let mut mtu = 0u16;
        // SAFETY: writes one u16.
        check("rte_eth_dev_get_mtu", unsafe { sys::rte_eth_dev_get_mtu(self.0, &mut mtu) })?;
        Ok(mtu)
    }

    pub fn set_mtu(self, mtu: u16) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_set_mtu", unsafe { sys::rte_eth_dev_set_mtu(self.0, mtu) }).map(|_| ())
    }

    pub fn configure(self, nb_rx: u16, nb_tx: u16, conf: &sys::rte_eth_conf) -> Result<(), Error> {
        // SAFETY: conf is a valid configuration; DPDK copies it.
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

    /// Sets up rx queue `queue` to take its buffers from `pool`.
    ///
    /// # Safety
    /// `pool` is a live packet-mbuf mempool that outlives the queue's use of it (until the
    /// queue is set up again with another pool, or the port is closed).
    pub unsafe fn rx_queue_setup(
        self,
        queue: u16,
        nb_desc: u16,
        conf: Option<&sys::rte_eth_rxconf>,
        pool: *mut sys::rte_mempool,
    ) -> Result<(), Error> {
        let conf = conf.map_or(std::ptr::null(), |c| c as *const _);
        // SAFETY: per this function's contract.
        check("rte_eth_rx_queue_setup", unsafe {
            sys::rte_eth_rx_queue_setup(self.0, queue, nb_desc, self.socket_id().max(0) as u32, conf, pool)
        })
        .map(|_| ())
    }

    pub fn tx_queue_setup(self, queue: u16, nb_desc: u16) -> Result<(), Error> {
        // SAFETY: null conf means the device's defaults.
        check("rte_eth_tx_queue_setup", unsafe {
            sys::rte_eth_tx_queue_setup(self.0, queue, nb_desc, self.socket_id().max(0) as u32, std::ptr::null())
        })
        .map(|_| ())
    }

    pub fn start(self) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_start", unsafe { sys::rte_eth_dev_start(self.0) }).map(|_| ())
    }

    pub fn stop(self) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_stop", unsafe { sys::rte_eth_dev_stop(self.0) }).map(|_| ())
    }

    pub fn close(self) -> Result<(), Error> {
        // SAFETY: plain call on a port id; the id is invalid afterwards.
        check("rte_eth_dev_close", unsafe { sys::rte_eth_dev_close(self.0) }).map(|_| ())
    }

    pub fn rx_queue_stop(self, queue: u16) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_rx_queue_stop", unsafe { sys::rte_eth_dev_rx_queue_stop(self.0, queue) }).map(|_| ())
    }

    pub fn rx_queue_start(self, queue: u16) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_dev_rx_queue_start", unsafe { sys::rte_eth_dev_rx_queue_start(self.0, queue) }).map(|_| ())
    }

    /// Frees the mbufs a tx queue still holds after sending them.
    pub fn tx_done_cleanup(self, queue: u16) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_tx_done_cleanup", unsafe { sys::rte_eth_tx_done_cleanup(self.0, queue, 0) }).map(|_| ())
    }

    pub fn promiscuous_enable(self) -> Result<(), Error> {
        // SAFETY: plain call on a port id.
        check("rte_eth_promiscuous_enable", unsafe { sys::rte_eth_promiscuous_enable(self.0) }).map(|_| ())
    }

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

    /// The generic device behind the port (for DMA mapping).
    pub fn device(self) -> Result<*mut sys::rte_device, Error> {
        Ok(self.info()?.device)
    }
}

/// A packet-mbuf pool in this process's own memory, freed on drop.
pub struct PktPool {
    mp: *mut sys::rte_mempool,
}

// SAFETY: a mempool is usable from any thread (per-lcore caches are keyed by lcore id).
unsafe impl Send for PktPool {}
// SAFETY: as above.
unsafe impl Sync for PktPool {}

impl PktPool {
    pub fn new(name: &str, count: u32, cache: u32, data_room: u16, socket: i32) -> Result<PktPool, Error> {
        let cname = CString::new(name).map_err(|_| Error::new("rte_pktmbuf_pool_create", libc_einval()))?;
        // SAFETY: valid arguments; the pool is owned by the returned value.
        let mp = unsafe { sys::rte_pktmbuf_pool_create(cname.as_ptr(), count, cache, 0, data_room, socket) };
        if mp.is_null() {
            return Err(Error::from_rte_errno("rte_pktmbuf_pool_create"));
        }
        Ok(PktPool { mp })
    }

    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.mp
    }
}

impl Drop for PktPool {
    fn drop(&mut self) {
        // SAFETY: created by `new`; its owner guarantees no queue uses it any more.
        unsafe { sys::rte_mempool_free(self.mp) };
    }
}

fn libc_einval() -> i32 {
    22
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
