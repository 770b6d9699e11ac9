#![cfg_attr(test, allow(dead_code))]
//! `librte_net_shm.so`: the ethdev of a `sock:` device.
//!
//! The bus probes a device once it is connected to its proxy; this driver then creates
//! an ethdev named after the socket path with one rx and one tx queue (one NIC queue of
//! the proxy). Starting the port tells the proxy which pool to fill NIC rx from; the
//! bursts in [`rxtx`] move descriptors over the rings in the shared region.

mod ops;
mod rxtx;
mod xstats;

use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use dpdk_sys as sys;
use shm_driver_common::bus::{lock, DeviceEvent, ShmBus, ShmDriver};
use shm_driver_common::device::ShmDevice;
use shm_driver_common::log::{LogType, INFO};
use shm_driver_common::plugin_constructor;
use shm_driver_common::session::Session;

pub(crate) static LOG: LogType = LogType::new("pmd.net.shm", "net_shm");

static DRIVER: ShmDriver = ShmDriver::new(c"net_shm", probe, remove, on_event);

fn init() {
    LOG.register(INFO);
    match ShmBus::find_or_load() {
        Ok(bus) => bus.register_driver(&DRIVER),
        Err(e) => LOG.error(format_args!("cannot register the net_shm driver: {e}")),
    }
}
plugin_constructor!(NET_SHM_CONSTRUCTOR, init);

/// This driver's state for one ethdev. The ethdev's `process_private` holds one strong
/// reference from probe until close.
pub(crate) struct Port {
    pub device: Weak<ShmDevice>,
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
    pub rxq: Option<Arc<rxtx::RxQueue>>,
    pub txq: Option<Arc<rxtx::TxQueue>>,
    pub started: bool,
    /// Counter values at the last stats reset.
    pub stats_base: xstats::Snapshot,
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
        let mut link = sys::rte_eth_link::default();
        link.link_speed = if up { speed } else { sys::RTE_ETH_SPEED_NUM_NONE };
        // link_duplex, link_autoneg, link_status are bitfields.
        link.set_link_duplex(sys::RTE_ETH_LINK_FULL_DUPLEX as u16);
        link.set_link_autoneg(sys::RTE_ETH_LINK_FIXED as u16);
        link.set_link_status(up as u16);
        // SAFETY: our live ethdev; rte_eth_linkstatus_set stores the link atomically.
        unsafe { sys::rte_eth_linkstatus_set(self.eth_dev, &link) == 0 }
    }
}

fn probe(dev: &Arc<ShmDevice>) -> Result<(), String> {
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
        device: Arc::downgrade(dev),
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
    Ok(())
}

/// The bus is unplugging the device (`port detach`, exit): close the ethdev if the
/// application has not.
fn remove(dev: &Arc<ShmDevice>) -> Result<(), String> {
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
fn on_event(dev: &Arc<ShmDevice>, event: DeviceEvent) {
    let Some(port) = dev.driver_data::<Port>() else { return };
    if let DeviceEvent::ProxyLost = event {
        let state = lock(&port.state);
        for active in [state.rxq.as_ref().map(|q| &q.active), state.txq.as_ref().map(|q| &q.active)].into_iter().flatten() {
            active.store(false, Ordering::Relaxed);
        }
        port.link_down_events.fetch_add(1, Ordering::Relaxed);
    }
    if port.update_link() {
        // SAFETY: our live ethdev; LSC callbacks are meant to run from the interrupt thread.
        unsafe {
            sys::rte_eth_dev_callback_process(port.eth_dev, sys::RTE_ETH_EVENT_INTR_LSC, std::ptr::null_mut());
        }
    }
}
