#![cfg_attr(test, allow(dead_code))]
//! `librte_net_shm.so`: the ethdev of a `sock:` device.
//!
//! The bus probes a device once it is connected to its proxy; this driver then creates
//! an ethdev named after the socket path with up to as many rx and tx queues as the
//! socket offers queue pairs (each pair: a ring pair in the region and one NIC queue of
//! the proxy; rx queue k and tx queue k are pair k). Starting the port tells the proxy
//! which pool to fill each pair's NIC rx from; the bursts in [`rxtx`] move descriptors
//! over the rings in the shared region.

mod capi;
mod intr;
mod offload;
mod ops;
mod rxtx;
mod xstats;

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::ffi::c_int;
use std::sync::{Arc, Mutex, OnceLock};

use dpdk_sys as sys;
use shm_driver_common::bus::{lock, BusInterface, DeviceEvent, DeviceEventRecord, DevicePtr, DriverInterface, WeakDevice};
use shm_driver_common::device::ShmDevice;
use shm_driver_common::ffi::guard;
use shm_driver_common::log::{LogType, INFO};
use shm_driver_common::plugin_constructor;
use shm_contract::proto::QUEUE_FLAG_RX_WAKEUP;
use shm_contract::Message;
use shm_driver_common::session::Session;

pub(crate) static LOG: LogType = LogType::new("pmd.net.shm", "net_shm");

static DRIVER: DriverInterface = DriverInterface::new(c"net_shm", probe_entry, remove_entry, event_entry);

/// The bus this driver registered with (set once, by the constructor).
static BUS: OnceLock<&'static BusInterface> = OnceLock::new();

/// The driver's name and device arguments where `dpdk-pmdinfo.py` looks for them: a
/// `PMD_INFO_STRING= {json}` string in `.rodata`, what DPDK's buildtools/pmdinfogen
/// makes of `RTE_PMD_REGISTER_PARAM_STRING` for a C driver.
const PMD_INFO_TEXT: &str = concat!(
    "PMD_INFO_STRING= {\"name\": \"net_shm\", \"params\": \"",
    // The same as shm_driver_common::devargs::PARAM_STRING (concat! takes literals only;
    // a unit test below keeps the two equal).
    "region_size=<size> rx_ring=<int> tx_ring=<int> reconnect=0|1 timeout_ms=<int> proxy_uid=<uid|user>",
    "\", \"pci_ids\": []}"
);

/// `text` between two NULs: the tool takes a string from the byte after a non-printable
/// one to the next NUL, and Rust packs its (unterminated) string literals side by side.
const fn nul_delimited<const N: usize>(text: &str) -> [u8; N] {
    let bytes = text.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < bytes.len() {
        out[i + 1] = bytes[i];
        i += 1;
    }
    out
}

#[used]
static PMD_INFO: [u8; PMD_INFO_TEXT.len() + 2] = nul_delimited(PMD_INFO_TEXT);

fn init() {
    LOG.register(INFO);
    // Keeps PMD_INFO through the linker's section garbage collection.
    std::hint::black_box(&PMD_INFO);
    match BusInterface::find_or_load() {
        Ok(bus) => {
            let _ = BUS.set(bus);
            match bus.register_driver(&DRIVER) {
                Ok(true) => {}
                Ok(false) => LOG.notice(format_args!(
                    "a net_shm driver is already registered (another copy of librte_net_shm.so was loaded first); this copy stays inactive"
                )),
                Err(e) => LOG.error(format_args!("the sock bus refused the net_shm driver: {e}")),
            }
        }
        // The bus of another copy (`-d` plus the installed plugins) serves, with its own
        // net driver.
        Err(e @ shm_driver_common::bus::BusLookupError::Refused(shm_driver_common::bus::InterfaceError::OtherBuild { .. })) => {
            LOG.notice(format_args!("this copy of librte_net_shm.so stays inactive: {e}"))
        }
        Err(e) => LOG.error(format_args!("cannot register the net_shm driver: {e}")),
    }
}
plugin_constructor!(NET_SHM_CONSTRUCTOR, init);

/// This driver's state for one ethdev. The ethdev's `process_private` holds one strong
/// reference from probe until close.
pub(crate) struct Port {
    pub device: WeakDevice,
    pub name: String,
    pub port_id: u16,
    pub eth_dev: *mut sys::rte_eth_dev,
    pub state: Mutex<PortState>,
    pub link_down_events: AtomicU64,
}

// SAFETY: `eth_dev` points into DPDK's static array of ethdevs; mutable state is behind
// the mutex.
unsafe impl Send for Port {}
// SAFETY: as above.
unsafe impl Sync for Port {}

#[derive(Default)]
pub(crate) struct PortState {
    pub session: Option<Arc<Session>>,
    /// The rx queues by queue id (= queue pair), as set up.
    pub rxq: Vec<Option<Arc<rxtx::RxQueue>>>,
    /// The tx queues by queue id (= queue pair), as set up.
    pub txq: Vec<Option<Arc<rxtx::TxQueue>>>,
    pub started: bool,
    /// The queue pairs the proxy runs for us (0..this) while `started`: as many as the
    /// larger of the rx and tx queue counts.
    pub pairs: u16,
    /// The application's rx queues while `started`.
    pub rx_queues: u16,
    /// While `started`: the hidden rx queue of each pair beyond the application's rx
    /// queues (by pair), folded into rx queue `pair % rx_queues` ([`rxtx::RxQueue::fold`]).
    pub folded: Vec<Option<Arc<rxtx::RxQueue>>>,
    /// Rx interrupts, once the application started the port with `intr_conf.rxq`; kept
    /// until close (the application's epoll registrations refer to their fds).
    pub rx_intr: Option<intr::RxInterrupt>,
    /// Counter values at the last stats reset.
    pub stats_base: xstats::Snapshot,
}

/// One queue pair as started. Pair k is rx queue k and tx queue k of the application.
/// The counts may differ: a pair beyond the rx queues is received through a hidden
/// queue folded into rx queue `k % rx_queues` (nothing the proxy's NIC steers to it is
/// lost), and a pair beyond the tx queues simply never transmits.
pub(crate) struct Pair {
    /// Its rx queue, the application's or a hidden one.
    pub rx: Arc<rxtx::RxQueue>,
    /// The application's rx queue that receives this pair's packets (the pair itself,
    /// or the one its hidden queue is folded into).
    pub rx_queue: u16,
    pub tx: Option<Arc<rxtx::TxQueue>>,
}

/// One queue pair as the application set it up: its rx side (`None` for a pair beyond
/// the rx queues) and its tx side (`None` for a pair beyond the tx queues).
pub(crate) type PairSides = (Option<Arc<rxtx::RxQueue>>, Option<Arc<rxtx::TxQueue>>);

impl PortState {
    /// Every rx queue (hidden ones included) and every tx queue set up.
    pub(crate) fn all_queues(&self) -> (impl Iterator<Item = &Arc<rxtx::RxQueue>>, impl Iterator<Item = &Arc<rxtx::TxQueue>>) {
        (self.rxq.iter().flatten().chain(self.folded.iter().flatten()), self.txq.iter().flatten())
    }

    /// The application's rx queues `0..rx` and tx queues `0..tx`, each as a pair's
    /// side (`None` for a pair beyond the rx queues: its hidden queue is made at start),
    /// if each of them is set up and there is at least one rx queue.
    pub(crate) fn queues_set_up(&self, rx: u16, tx: u16) -> Option<Vec<PairSides>> {
        if rx == 0 {
            return None;
        }
        (0..rx.max(tx) as usize)
            .map(|q| {
                let rxq = if q < rx as usize { Some(self.rxq.get(q)?.clone()?) } else { None };
                let txq = if q < tx as usize { Some(self.txq.get(q)?.clone()?) } else { None };
                Some((rxq, txq))
            })
            .collect()
    }

    /// The pairs running now (`pairs` of them).
    pub(crate) fn running_pairs(&self) -> Vec<Pair> {
        (0..self.pairs as usize)
            .filter_map(|q| {
                let own = self.rxq.get(q).cloned().flatten().filter(|_| q < self.rx_queues as usize);
                let (rx, rx_queue) = match own {
                    Some(rx) => (rx, q as u16),
                    None => (self.folded.get(q).cloned().flatten()?, (q % self.rx_queues.max(1) as usize) as u16),
                };
                Some(Pair { rx, rx_queue, tx: self.txq.get(q).cloned().flatten() })
            })
            .collect()
    }
}

/// Stores `q` as queue `queue` of `slots`, growing it as needed.
pub(crate) fn put_queue<T>(slots: &mut Vec<Option<T>>, queue: u16, q: Option<T>) {
    let i = queue as usize;
    if slots.len() <= i {
        slots.resize_with(i + 1, || None);
    }
    slots[i] = q;
}

impl Port {
    /// The port behind an ethdev that this driver created.
    ///
    /// # Safety
    /// `dev` is an ethdev whose `dev_ops` are ours (so `process_private` is our Port).
    pub(crate) unsafe fn of<'a>(dev: *const sys::rte_eth_dev) -> Option<&'a Port> {
        // SAFETY: per the contract, process_private is null or our Arc<Port>'s pointer.
        unsafe { ((*dev).process_private as *const Port).as_ref() }
    }

    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        let state = lock(&self.state);
        state.session.clone()
    }

    /// Publishes the link as DPDK sees it and returns whether it changed.
    pub(crate) fn update_link(&self) -> bool {
        let (started, session) = {
            let state = lock(&self.state);
            (state.started, state.session.clone())
        };
        let (up, speed) = match &session {
            Some(s) if started => s.link(),
            _ => (false, 0),
        };
        let mut link = sys::rte_eth_link { link_speed: if up { speed } else { sys::RTE_ETH_SPEED_NUM_NONE }, ..Default::default() };
        // link_duplex, link_autoneg, link_status are bitfields.
        link.set_link_duplex(sys::RTE_ETH_LINK_FULL_DUPLEX as u16);
        link.set_link_autoneg(sys::RTE_ETH_LINK_FIXED as u16);
        link.set_link_status(up as u16);
        // SAFETY: our live ethdev; rte_eth_linkstatus_set stores the link atomically.
        unsafe { sys::rte_eth_linkstatus_set(self.eth_dev, &link) == 0 }
    }
}

unsafe extern "C" fn probe_entry(dev: DevicePtr) -> c_int {
    guard(&LOG, "probe", -libc::EIO, || {
        // SAFETY: the bus passes a device it holds for the call.
        let Some(device) = (unsafe { dev.as_ref() }) else { return -libc::EINVAL };
        match probe(dev, device) {
            Ok(()) => 0,
            Err(e) => {
                LOG.error(format_args!("sock:{}: {e}", device.name()));
                -libc::EIO
            }
        }
    })
}

unsafe extern "C" fn remove_entry(dev: DevicePtr) -> c_int {
    guard(&LOG, "remove", -libc::EIO, || {
        // SAFETY: the bus passes a device it holds for the call.
        let Some(device) = (unsafe { dev.as_ref() }) else { return -libc::EINVAL };
        match remove(device) {
            Ok(()) => 0,
            Err(e) => {
                LOG.warning(format_args!("sock:{}: remove: {e}", device.name()));
                -libc::EIO
            }
        }
    })
}

unsafe extern "C" fn event_entry(dev: DevicePtr, event: DeviceEventRecord) {
    guard(&LOG, "event", (), || {
        // SAFETY: the bus passes a device it holds for the call.
        let (Some(device), Some(event)) = ((unsafe { dev.as_ref() }), event.event()) else { return };
        on_event(device, event)
    })
}

/// `ptr` is `dev` as the bus passed it (for a weak reference to it).
fn probe(ptr: DevicePtr, dev: &ShmDevice) -> Result<(), String> {
    let bus = BUS.get().ok_or("probed by a bus this driver did not register with")?;
    let session = dev.session().ok_or("probed without a session")?;
    let name = CString::new(dev.name()).map_err(|_| "device name contains NUL")?;
    // SAFETY: EAL call with a valid name; returns null when the name is taken.
    let eth_dev = unsafe { sys::rte_eth_dev_allocate(name.as_ptr()) };
    if eth_dev.is_null() {
        return Err(format!("cannot allocate an ethdev named '{}' (already used?)", dev.name()));
    }
    // SAFETY: DPDK allocation; the ethdev frees mac_addrs with rte_free on release.
    let mac = unsafe { sys::rte_zmalloc_socket(c"net_shm mac".as_ptr(), 6, 0, dev.numa_node()) } as *mut u8;
    if mac.is_null() {
        // SAFETY: our fresh ethdev, never published.
        unsafe { sys::rte_eth_dev_release_port(eth_dev) };
        return Err("no DPDK memory for the MAC address".into());
    }
    // SAFETY: `eth_dev` and its data are ours until probing finishes; mac has 6 bytes.
    let port_id = unsafe {
        std::ptr::copy_nonoverlapping(session.proxy.mac.as_ptr(), mac, 6);
        let data = &mut *(*eth_dev).data;
        data.mac_addrs = mac as *mut sys::rte_ether_addr;
        data.dev_flags |= sys::RTE_ETH_DEV_INTR_LSC | sys::RTE_ETH_DEV_AUTOFILL_QUEUE_XSTATS;
        data.numa_node = dev.numa_node();
        data.mtu = session.proxy.mtu;
        data.dev_private = std::ptr::null_mut();
        (*eth_dev).device = dev.rte_ptr();
        (*eth_dev).dev_ops = ops::dev_ops();
        (*eth_dev).rx_pkt_burst = Some(ops::rx_burst);
        (*eth_dev).tx_pkt_burst = Some(ops::tx_burst);
        data.port_id
    };
    let port = Arc::new(Port {
        // SAFETY: the bus holds the device for this call.
        device: unsafe { bus.downgrade(ptr) },
        name: dev.name().to_string(),
        port_id,
        eth_dev,
        state: Mutex::new(PortState { session: Some(session), ..Default::default() }),
        link_down_events: AtomicU64::new(0),
    });
    // SAFETY: stores one strong reference, taken back in dev_close.
    unsafe { (*eth_dev).process_private = Arc::into_raw(port.clone()) as *mut std::ffi::c_void };
    dev.set_driver_data(Some(port));
    // SAFETY: the ethdev is fully set up.
    unsafe { sys::rte_eth_dev_probing_finish(eth_dev) };
    LOG.info(format_args!("sock:{}: ethdev port {port_id} created", dev.name()));
    if let Some(session) = dev.session() {
        LOG.debug(format_args!(
            "port {port_id}: proxy port {} queue {}, rx ring {} / tx ring {} entries, MTU {}, max rx frame {}",
            session.proxy.port_id,
            session.proxy.queue_id,
            session.region.layout.rx_ring().entries,
            session.region.layout.tx_ring().entries,
            session.proxy.mtu,
            session.proxy.max_rx_frame
        ));
    }
    Ok(())
}

/// The bus is unplugging the device (`port detach`, exit): close the ethdev if the
/// application has not.
fn remove(dev: &ShmDevice) -> Result<(), String> {
    let Some(port) = dev.driver_data::<Port>() else { return Ok(()) };
    dev.set_driver_data(None);
    // SAFETY: rte_eth_devices is DPDK's static array; we only compare fields.
    let still_ours = unsafe {
        (*port.eth_dev).state != sys::RTE_ETH_DEV_UNUSED && std::ptr::eq((*port.eth_dev).device, dev.rte_ptr())
    };
    if still_ours {
        // SAFETY: closing our own port; runs dev_close and releases the ethdev.
        let rc = unsafe { sys::rte_eth_dev_close(port.port_id) };
        if rc != 0 {
            return Err(format!("closing port {}: {}", port.port_id, shm_driver_common::errno_text(-rc)));
        }
    }
    Ok(())
}

/// News about the proxy, from the EAL interrupt thread.
fn on_event(dev: &ShmDevice, event: DeviceEvent) {
    let Some(port) = dev.driver_data::<Port>() else { return };
    match event {
        DeviceEvent::ProxyLost => {
            let state = lock(&port.state);
            // From the interrupt thread: close the queues, do not wait for a burst in
            // progress (the reconnect thread's `Reclaim` waits for it).
            let (rx, tx) = state.all_queues();
            rx.for_each(|q| q.gate().close());
            tx.for_each(|q| q.gate().close());
            port.link_down_events.fetch_add(1, Ordering::Relaxed);
        }
        DeviceEvent::Reclaim => reclaim(&port),
        DeviceEvent::ProxyBack => restart_after_reattach(&port),
        DeviceEvent::Link { .. } => {}
    }
    if port.update_link() {
        // SAFETY: our live ethdev; LSC callbacks are meant to run from the interrupt thread.
        unsafe {
            sys::rte_eth_dev_callback_process(port.eth_dev, sys::RTE_ETH_EVENT_INTR_LSC, std::ptr::null_mut());
        }
    }
}

/// The proxy is gone: free what its rings still hold for us, before a new proxy zeroes
/// them. Packets waiting in the rx ring were handed to us; packets in the tx ring that
/// the proxy never took are still ours. Buffers the dead proxy itself held (in its NIC
/// queues, its pool cache, in flight) cannot be told apart from the application's and
/// stay out of the pool (see docs/architecture.md, "Reconnecting").
fn reclaim(port: &Port) {
    let state = lock(&port.state);
    // Each queue's gate waits for a burst that began before the loss to leave (from the
    // reconnect thread, never the interrupt thread).
    // SAFETY: the proxy is gone: it neither produces nor consumes any more.
    let (rx, tx) = unsafe {
        let (rxqs, txqs) = state.all_queues();
        (rxqs.map(|q| q.drain()).sum::<u32>(), txqs.map(|q| q.reclaim_unsent()).sum::<u32>())
    };
    if rx + tx > 0 {
        LOG.info(format_args!(
            "port {}: took back {rx} received and {tx} unsent buffers from the lost proxy's rings",
            port.port_id
        ));
    }
}

/// A new proxy took our region back: if the application had the port started, start
/// the queues again (the rings restart from index 0 on both sides, as on every start).
fn restart_after_reattach(port: &Port) {
    let state = lock(&port.state);
    let Some(session) = state.session.clone() else { return };
    if !state.started {
        return;
    }
    for (pair, queues) in state.running_pairs().iter().enumerate() {
        // The queues are closed since the loss; their gates wait for any burst to leave.
        queues.rx.reset();
        if let Some(q) = &queues.tx {
            q.reset();
        }
        match start_pair(&session, &state, pair as u16, queues) {
            Ok(()) => {
                queues.rx.gate().open();
                if let Some(q) = &queues.tx {
                    q.gate().open();
                }
                LOG.info(format_args!("port {}: queue {pair} restarted after reattaching", port.port_id));
            }
            Err(e) => {
                LOG.error(format_args!("port {}: cannot restart queue {pair} after reattaching: {e}", port.port_id))
            }
        }
    }
}

/// Sends `QueueStart` for queue pair `pair`: the proxy fills its NIC rx from the pool
/// of the pair's rx queue (a hidden queue has its application queue's), keeping at most
/// that queue's descriptor count in the ring. With rx interrupts on, every pair asks for
/// wake-ups; the proxy's `QueueStarted` then carries the wake-up end, which is checked
/// and put behind the event fd of the application's rx queue that receives the pair
/// (a pair of its own replaces what that fd watched, a folded one adds to it: the
/// pairs start in order, own ones first).
pub(crate) fn start_pair(session: &Session, state: &PortState, pair: u16, queues: &Pair) -> Result<(), String> {
    let wake = state.rx_intr.as_ref();
    let flags = if wake.is_some() { QUEUE_FLAG_RX_WAKEUP } else { 0 };
    let request = Message::QueueStart { rx_pool_id: queues.rx.pool_id, flags, rx_depth: queues.rx.depth, queue: pair };
    let (answer, mut fds) = session.transact_with_fds(&request).map_err(|e| e.to_string())?;
    if answer != Message::QueueStarted {
        return Err(format!("the proxy answered {} to QueueStart", answer.kind()));
    }
    match wake {
        Some(intr) if fds.len() == 1 => intr.attach(queues.rx_queue, fds.remove(0), queues.rx_queue != pair),
        Some(_) => Err(format!("QueueStarted came with {} descriptors, not the one wake-up socket", fds.len())),
        None if fds.is_empty() => Ok(()),
        None => Err(format!("QueueStarted came with {} descriptors, none asked for", fds.len())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pmd_info_names_the_driver_and_its_devargs() {
        let info = &super::PMD_INFO;
        assert_eq!((info[0], info[info.len() - 1]), (0, 0));
        let text = std::str::from_utf8(&info[1..info.len() - 1]).unwrap();
        let json = text.strip_prefix("PMD_INFO_STRING= ").unwrap();
        let params = format!("\"params\": \"{}\"", shm_driver_common::devargs::PARAM_STRING);
        assert!(json.contains("\"name\": \"net_shm\""), "{json}");
        assert!(json.contains(&params), "{json}");
        assert!(json.ends_with("\"pci_ids\": []}"), "{json}");
    }
}
