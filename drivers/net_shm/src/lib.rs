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
#[cfg(feature = "stage-stamps")]
mod stages;
mod xstats;

use std::ffi::c_int;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dpdk_sys as sys;
use shm_contract::proto::QUEUE_FLAG_RX_WAKEUP;
use shm_driver_common::bus::{
    lock, BusInterface, DeviceEvent, DeviceEventRecord, DeviceHandle, DeviceInfo, DriverInterface, Handle, ProxyRecord,
    QueueStartRequest, RegionHandle,
};
use shm_driver_common::ffi::guard;
use shm_driver_common::log::{LogType, INFO};
use shm_driver_common::plugin_constructor;

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
        Err(e) => LOG.error(format_args!("cannot register the net_shm driver: {e}")),
    }
}
plugin_constructor!(NET_SHM_CONSTRUCTOR, init);

/// The ports of this driver by the serial number of their device
/// (`DeviceInfo::serial`), from probe until close: how the bus's calls about a device
/// find its port.
static PORTS: Mutex<Vec<(u64, Arc<Port>)>> = Mutex::new(Vec::new());

fn port_of(serial: u64) -> Option<Arc<Port>> {
    lock(&PORTS).iter().find(|(s, _)| *s == serial).map(|(_, p)| p.clone())
}

/// This driver's state for one ethdev. The ethdev's `process_private` holds one strong
/// reference from probe until close, and so does [`PORTS`].
pub(crate) struct Port {
    pub name: String,
    pub port_id: u16,
    pub eth_dev: *mut sys::rte_eth_dev,
    /// EAL's device of the port's `sock:` device (owned by the vdev bus); only compared
    /// and handed to DPDK (as `pool_config`, which names the device to the mempool ops).
    pub rte: *mut sys::rte_device,
    /// The device's `DeviceInfo::serial`.
    pub serial: u64,
    pub state: Mutex<PortState>,
    pub link_down_events: AtomicU64,
}

/// What a port has of its device while it is attached: the device (whose session with
/// the proxy the bus plugin runs), the region of that session (fetched once: the queues
/// keep what they need of it), and what the proxy said at the handshake.
#[derive(Clone)]
pub(crate) struct Attachment {
    pub device: DeviceHandle,
    pub region: Arc<RegionHandle>,
    pub proxy: ProxyRecord,
}

impl Attachment {
    fn info(&self) -> Option<DeviceInfo> {
        self.device.info()
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.info().is_some_and(|i| i.alive != 0)
    }

    /// The link as the proxy reports it (down while the connection is lost).
    pub(crate) fn link(&self) -> (bool, u32) {
        self.info().map_or((false, 0), |i| (i.link_up != 0, i.link_speed_mbps))
    }

    /// The queue pairs the socket offers and the region holds rings for.
    pub(crate) fn offered_pairs(&self) -> u16 {
        (self.proxy.queue_pairs as u32).min(self.region.layout.queue_pairs()).max(1) as u16
    }
}

// SAFETY: `eth_dev` points into DPDK's static array of ethdevs and `rte` is only
// compared and passed to DPDK; mutable state is behind the mutex.
unsafe impl Send for Port {}
// SAFETY: as above.
unsafe impl Sync for Port {}

#[derive(Default)]
pub(crate) struct PortState {
    /// From probe until close.
    pub attachment: Option<Attachment>,
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

    pub(crate) fn attachment(&self) -> Option<Attachment> {
        let state = lock(&self.state);
        state.attachment.clone()
    }

    /// Publishes the link as DPDK sees it and returns whether it changed.
    pub(crate) fn update_link(&self) -> bool {
        let (up, speed) = {
            let state = lock(&self.state);
            match &state.attachment {
                Some(a) if state.started => a.link(),
                _ => (false, 0),
            }
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

/// The device behind a handle the bus passed for this call.
fn device_info(device: Handle) -> Option<DeviceInfo> {
    let bus = BUS.get()?;
    let mut info = DeviceInfo::empty();
    // SAFETY: a checked table; `info` is ours to fill; the bus looks the handle up.
    (unsafe { (bus.device_info)(device, &mut info) } == 0).then_some(info)
}

unsafe extern "C" fn probe_entry(dev: Handle) -> c_int {
    guard(&LOG, "probe", -libc::EIO, || {
        let Some(info) = device_info(dev) else { return -libc::EINVAL };
        match probe(dev, &info) {
            Ok(()) => 0,
            Err(e) => {
                LOG.error(format_args!("sock:{}: {e}", info.name()));
                -libc::EIO
            }
        }
    })
}

unsafe extern "C" fn remove_entry(dev: Handle) -> c_int {
    guard(&LOG, "remove", -libc::EIO, || {
        let Some(info) = device_info(dev) else { return -libc::EINVAL };
        match remove(&info) {
            Ok(()) => 0,
            Err(e) => {
                LOG.warning(format_args!("sock:{}: remove: {e}", info.name()));
                -libc::EIO
            }
        }
    })
}

unsafe extern "C" fn event_entry(dev: Handle, event: DeviceEventRecord) {
    guard(&LOG, "event", (), || {
        let (Some(info), Some(event)) = (device_info(dev), event.event()) else { return };
        on_event(&info, event)
    })
}

/// `handle` is the device as the bus passed it (for a reference of our own to it).
fn probe(handle: Handle, info: &DeviceInfo) -> Result<(), String> {
    let bus = BUS.get().ok_or("probed by a bus this driver did not register with")?;
    if info.attached == 0 {
        return Err("probed without a session".into());
    }
    let device = bus.retain_device(handle).ok_or("the bus does not know the device it probes")?;
    let region = Arc::new(device.region().ok_or("probed without a shared region")?);
    let proxy = info.proxy;
    let name = CString::new(info.name()).map_err(|_| "device name contains NUL")?;
    // SAFETY: EAL call with a valid name; returns null when the name is taken.
    let eth_dev = unsafe { sys::rte_eth_dev_allocate(name.as_ptr()) };
    if eth_dev.is_null() {
        return Err(format!("cannot allocate an ethdev named '{}' (already used?)", info.name()));
    }
    // SAFETY: DPDK allocation; the ethdev frees mac_addrs with rte_free on release.
    let mac = unsafe { sys::rte_zmalloc_socket(c"net_shm mac".as_ptr(), 6, 0, info.numa_node) } as *mut u8;
    if mac.is_null() {
        // SAFETY: our fresh ethdev, never published.
        unsafe { sys::rte_eth_dev_release_port(eth_dev) };
        return Err("no DPDK memory for the MAC address".into());
    }
    // SAFETY: `eth_dev` and its data are ours until probing finishes; mac has 6 bytes.
    let port_id = unsafe {
        std::ptr::copy_nonoverlapping(proxy.mac.as_ptr(), mac, 6);
        let data = &mut *(*eth_dev).data;
        data.mac_addrs = mac as *mut sys::rte_ether_addr;
        data.dev_flags |= sys::RTE_ETH_DEV_INTR_LSC | sys::RTE_ETH_DEV_AUTOFILL_QUEUE_XSTATS;
        data.numa_node = info.numa_node;
        data.mtu = proxy.mtu;
        data.dev_private = std::ptr::null_mut();
        (*eth_dev).device = info.rte;
        (*eth_dev).dev_ops = ops::dev_ops();
        (*eth_dev).rx_pkt_burst = Some(ops::rx_burst);
        (*eth_dev).tx_pkt_burst = Some(ops::tx_burst);
        data.port_id
    };
    LOG.debug(format_args!(
        "port {port_id}: proxy port {} queue {}, rx ring {} / tx ring {} entries, MTU {}, max rx frame {}",
        proxy.port_id,
        proxy.queue_id,
        region.layout.rx_ring().entries,
        region.layout.tx_ring().entries,
        proxy.mtu,
        proxy.max_rx_frame
    ));
    let port = Arc::new(Port {
        name: info.name().to_string(),
        port_id,
        eth_dev,
        rte: info.rte,
        serial: info.serial,
        state: Mutex::new(PortState { attachment: Some(Attachment { device, region, proxy }), ..Default::default() }),
        link_down_events: AtomicU64::new(0),
    });
    // SAFETY: stores one strong reference, taken back in dev_close.
    unsafe { (*eth_dev).process_private = Arc::into_raw(port.clone()) as *mut std::ffi::c_void };
    {
        let mut ports = lock(&PORTS);
        ports.retain(|(s, _)| *s != info.serial);
        ports.push((info.serial, port));
    }
    // SAFETY: the ethdev is fully set up.
    unsafe { sys::rte_eth_dev_probing_finish(eth_dev) };
    LOG.info(format_args!("sock:{}: ethdev port {port_id} created", info.name()));
    Ok(())
}

/// Forgets the port of device `serial` (closed, or its device removed).
pub(crate) fn forget_port(serial: u64) {
    lock(&PORTS).retain(|(s, _)| *s != serial);
}

/// The bus is unplugging the device (`port detach`, exit): close the ethdev if the
/// application has not.
fn remove(info: &DeviceInfo) -> Result<(), String> {
    let Some(port) = port_of(info.serial) else { return Ok(()) };
    forget_port(info.serial);
    // SAFETY: rte_eth_devices is DPDK's static array; we only read two fields.
    let (state, device) = unsafe { ((*port.eth_dev).state, (*port.eth_dev).device) };
    let still_ours = state != sys::RTE_ETH_DEV_UNUSED && std::ptr::eq(device, info.rte);
    if still_ours {
        // SAFETY: closing our own port; runs dev_close and releases the ethdev.
        let rc = unsafe { sys::rte_eth_dev_close(port.port_id) };
        if rc != 0 {
            return Err(format!("closing port {}: {}", port.port_id, shm_driver_common::errno_text(-rc)));
        }
    }
    Ok(())
}

/// News about the proxy, from the bus's event thread for the device (which holds no lock
/// of the session: a request of ours that holds the port state ends and lets it on).
fn on_event(info: &DeviceInfo, event: DeviceEvent) {
    let Some(port) = port_of(info.serial) else { return };
    match event {
        DeviceEvent::ProxyLost => {
            let state = lock(&port.state);
            // Close the queues, do not wait for a burst in progress (`Reclaim`, told
            // next, waits for it).
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
        // SAFETY: our live ethdev; the application's LSC callbacks run on a control thread (the event thread).
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
    // Each queue's gate waits for a burst that began before the loss to leave (the
    // reconnect thread waits for this, never the interrupt thread).
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
    let Some(attachment) = state.attachment.clone() else { return };
    if !state.started {
        return;
    }
    for (pair, queues) in state.running_pairs().iter().enumerate() {
        // The queues are closed since the loss; their gates wait for any burst to leave.
        queues.rx.reset();
        if let Some(q) = &queues.tx {
            q.reset();
        }
        match start_pair(&attachment, &state, pair as u16, queues) {
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
pub(crate) fn start_pair(attachment: &Attachment, state: &PortState, pair: u16, queues: &Pair) -> Result<(), String> {
    let wake = state.rx_intr.as_ref();
    let flags = if wake.is_some() { QUEUE_FLAG_RX_WAKEUP } else { 0 };
    let request =
        QueueStartRequest { queue: pair, _reserved: 0, flags, rx_pool_id: queues.rx.pool_id, rx_depth: queues.rx.depth };
    // The bus plugin checks the answer and its descriptors (one wake-up end if asked for).
    let fd = attachment.device.queue_start(&request).map_err(|e| e.to_string())?;
    match (wake, fd) {
        (Some(intr), Some(fd)) => intr.attach(queues.rx_queue, fd, queues.rx_queue != pair),
        (None, None) => Ok(()),
        (Some(_), None) => Err("QueueStarted came without the wake-up socket".into()),
        (None, Some(_)) => Err("QueueStarted came with a descriptor none asked for".into()),
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
